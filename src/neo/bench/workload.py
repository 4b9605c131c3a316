"""The synthetic workload of ``neo bench``: the catalog, rows at random depths inside a span, the timer and
the result rows every measurement fills."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch


SCHEMA = "neo-bench/1"
VOCAB = 151_936
LEVELS = 4
CODEBOOK = 256
EOS_ID = 0  # a text token; the e2e model uses it as EOS
PAD_ID = 1
CJK_BASE = 0x4E00  # SID code (level l, code c) is chr(CJK_BASE + 256 * l + c) in the string tokenizer

#: keys of the JSON document (``--json``); tests assert this exact set
TOP_KEYS = ("schema", "machine", "versions", "config", "results", "peers", "e2e", "budgets")
#: keys of every entry of ``results``
RESULT_KEYS = (
    "provider", "device", "items", "rows", "status", "note", "build_s", "memory_bytes_per_item",
    "memory_source", "agree", "checked_rows", "samples", "step_median_us", "step_p99_us",
    "row_median_us", "row_p99_us", "neo_speedup", "extra",
)
#: keys of ``e2e`` (when it ran)
E2E_KEYS = ("items", "batch", "new_tokens", "model", "outputs_agree", "runs", "mask_overhead_ratio")
E2E_RUN_KEYS = ("mode", "wall_s_median", "tokens_per_s", "overhead_vs_unconstrained_pct", "mask_us_per_step",
                "mask_share_of_unconstrained_step_pct")
BUDGET_KEYS = ("what", "budget", "measured", "met")
PEER_KEYS = ("available", "version", "limit_s", "largest_items_ok", "failure")

PEERS = ("xgrammar", "llguidance")
PEER_STEP = {
    "xgrammar": "BatchGrammarMatcher.batch_fill_next_token_bitmask into a packed int32 bitmask",
    "llguidance": "LLExecutor fill (llguidance.numpy.fill_next_token_bitmask_par) into a packed int32 bitmask",
}


# ---------------------------------------------------------------------------------------------- catalog
@dataclass
class RowStates:
    """Rows placed inside a SID span.

    Attributes
    ----------
    depths : np.ndarray int (R,)
        SID tokens already written in the open span (0 .. levels).
    paths : np.ndarray int32 (R, levels)
        A real SID per row; row r has written ``paths[r, :depths[r]]`` after ``[SID]``.
    """

    depths: np.ndarray
    paths: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.depths.shape[0])

    def prefix(self, r: int) -> list[int]:
        return self.paths[r, : int(self.depths[r])].tolist()


class SyntheticCatalog:
    """Random unique SIDs of one item type (``levels`` x ``codebook`` codes), laid out after text tokens.

    Parameters
    ----------
    n : int
        Number of items (at most ``codebook ** levels``).
    seed : int
    vocab_size : int
        Total vocabulary; the SID block (``[SID]``, ``[/SID]``, then one band per level) ends it.
    levels, codebook : int
    """

    def __init__(self, n: int, seed: int = 0, vocab_size: int = VOCAB, levels: int = LEVELS,
                 codebook: int = CODEBOOK):
        from ..core.layout import TokenLayout

        if n < 1:
            raise ValueError(f"catalog size must be >= 1, got {n}")
        if codebook != 256 or levels > 7:
            raise ValueError(f"the synthetic catalog packs codes in bytes: codebook must be 256 and levels <= 7, "
                             f"got codebook={codebook}, levels={levels}")
        if n > codebook ** levels:
            raise ValueError(f"{n} items do not fit in {levels} levels x {codebook} codes")
        self.n, self.levels, self.codebook, self.vocab_size = int(n), levels, codebook, vocab_size
        rng = np.random.default_rng(seed)
        keys = rng.choice(codebook ** levels, size=n, replace=False).astype(np.int64)  # unique, unsorted
        shifts = np.asarray([8 * (levels - 1 - lvl) for lvl in range(levels)], dtype=np.int64)
        self.codes = ((keys[:, None] >> shifts[None, :]) & 255).astype(np.int32)
        base = vocab_size - 2 - levels * codebook
        if base < 2:
            raise ValueError(f"vocab_size {vocab_size} leaves no room for text tokens")
        self.layout = TokenLayout.contiguous(base, {"item": [codebook] * levels})
        assert self.layout.vocab_size == vocab_size
        self.tokens = self.layout.codes_to_tokens("item", self.codes)  # int32 (n, levels), unsorted
        self.sorted_keys = np.sort(keys)
        self.band_starts = np.asarray(self.layout.types[0].band_starts, dtype=np.int64)

    @property
    def open_id(self) -> int:
        return self.layout.open_id

    @property
    def close_id(self) -> int:
        return self.layout.close_id

    def sample_states(self, rows: int, seed: int) -> RowStates:
        """``rows`` rows at uniform random depths 0..levels along uniformly drawn real SIDs."""
        rng = np.random.default_rng(seed)
        depths = rng.integers(0, self.levels + 1, size=rows)
        paths = self.tokens[rng.integers(0, self.n, size=rows)]
        return RowStates(depths, np.ascontiguousarray(paths))

    def oracle_allowed(self, prefix: Sequence[int]) -> np.ndarray:
        """Token ids allowed after ``[SID] prefix`` (the oracle: a scan of the sorted catalog)."""
        d = len(prefix)
        if d == self.levels:
            return np.asarray([self.close_id], dtype=np.int64)
        p = 0
        for lvl, t in enumerate(prefix):
            p = (p << 8) | (int(t) - int(self.band_starts[lvl]))
        shift = 8 * (self.levels - d)
        lo = np.searchsorted(self.sorted_keys, p << shift, "left")
        hi = np.searchsorted(self.sorted_keys, (p + 1) << shift, "left")
        child = (self.sorted_keys[lo:hi] >> (shift - 8)) & 255  # sorted, since the keys are
        if child.size == 0:
            raise ValueError(f"prefix {list(prefix)} is not a prefix of any catalog SID")
        keep = np.ones(child.size, bool)
        keep[1:] = child[1:] != child[:-1]
        return child[keep] + self.band_starts[d]

    def oracle_bool(self, states: RowStates) -> np.ndarray:
        """bool (R, vocab): the oracle's allowed set of every row."""
        out = np.zeros((states.rows, self.vocab_size), dtype=bool)
        for r in range(states.rows):
            out[r, self.oracle_allowed(states.prefix(r))] = True
        return out


def _bitmask_bool(bitmask: Any, vocab: int) -> np.ndarray:
    from ..core.bitmask import bitmask_to_bool

    t = bitmask if isinstance(bitmask, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(bitmask))
    return bitmask_to_bool(t.cpu(), vocab).numpy()


def _rss_bytes() -> int:
    """Resident set size of this process (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


# ---------------------------------------------------------------------------------------------- timing
def time_step(fn: Callable[[], Any], *, repeat: int, min_time_s: float, max_time_s: float, warmup: int = 2,
              sync: Callable[[], None] | None = None) -> dict[str, float]:
    """Median / p99 (microseconds) of ``fn()``: at least ``repeat`` samples and ``min_time_s``, but stop
    after ``max_time_s`` once 5 samples exist (slow baselines)."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    samples: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append((time.perf_counter() - t0) * 1e6)
        el = time.perf_counter() - start
        if len(samples) >= repeat and el >= min_time_s:
            break
        if len(samples) >= 5 and el >= max_time_s:
            break
    a = np.asarray(samples)
    return {"median_us": float(np.median(a)), "p99_us": float(np.percentile(a, 99)), "n": int(a.size)}


# ---------------------------------------------------------------------------------------------- results
def _result_row(**kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {k: None for k in RESULT_KEYS}
    row.update(status="ok", note="", extra={}, agree=None, checked_rows=0, samples=0)
    for k, v in kw.items():
        if k not in row:
            raise KeyError(f"unknown result key {k!r}")
        row[k] = v
    return row


def _fill_timing(row: dict[str, Any], t: dict[str, float]) -> None:
    R = row["rows"]
    row["step_median_us"] = t["median_us"]
    row["step_p99_us"] = t["p99_us"]
    row["row_median_us"] = t["median_us"] / R
    row["row_p99_us"] = t["p99_us"] / R
    row["samples"] = t["n"]
