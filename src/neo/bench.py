"""``neo bench``: constrained-decoding throughput of neo against the decoders people would use otherwise.

One command, one run, on one synthetic catalog per size (DESIGN.md section 5: one item type, 4 levels x
256 codes, vocabulary 151,936 (Qwen-sized), SIDs drawn uniformly without duplicates, given unsorted).
Rows sit at random depths inside a span: depth 0 is right after ``[SID]``, depth 4 has only ``[/SID]``
left. Providers, all computing "which tokens may come next" for every row of a batch:

``neo-cpu``
    The C++ core: :class:`~neo.index.DecodeState` filling a packed int32 bitmask incrementally
    (what :class:`~neo.processor.SidLogitsProcessor` does every step).
``neo-cuda``
    Only with a CUDA device: :class:`neo.kernels.DeviceTrie` stepping on the device (Triton), the
    mask being the per-row SID band bitmap; ``extra.fused_step_*`` also times the full constrained
    step (trie step + fused masked log-softmax / beam top-k over bf16 logits).
``python-trie-hf``
    What most generative-recommendation code does: a Python dict trie behind a
    ``prefix_allowed_tokens_fn``, run through transformers' own ``PrefixConstrainedLogitsProcessor``
    (dense ``-inf`` mask plus the add to the scores, as ``generate`` pays it).
``torch-searchsorted``
    A vectorised torch baseline: packed codes sorted once; per step, every row's 256 candidate
    children are looked up with ``searchsorted`` and scattered into a packed bitmask.
``xgrammar`` / ``llguidance``
    When installed (``pip install neo-sid[peers]``), each given a grammar whose language is exactly
    ``[SID] c1 c2 c3 c4 [/SID]`` over the catalog's SIDs, written as a prefix trie (one rule per node
    above the last two levels; the leaves under a node are one character class / token set).
    xgrammar matches strings, so it gets a synthetic tokenizer: text token ``i`` is ``"w<i>"``,
    ``[SID]`` / ``[/SID]`` are those strings, and SID code ``c`` of level ``l`` is the single CJK
    character ``U+4E00 + 256 l + c`` (no text token shares a byte with a SID token, so the grammar's
    language in tokens is exactly the catalog). llguidance gets a token-id grammar (``<[id]>``, SID
    tokens marked special) over the same vocabulary. Both run in a child process per catalog size
    so that a compile longer than ``--peer-timeout`` can be stopped; the ladder 1k, 10k, 100k, ...
    stops at the first size that fails or exceeds the limit ("largest catalog handled").

Every provider's allowed sets are checked against a numpy oracle (children of each row's prefix in
the sorted catalog) on the very rows that are then timed, before any timing; a provider that
disagrees is reported and not timed. ``--e2e`` adds ``model.generate`` tokens/s with a tiny random
model (vocabulary 151,936): unconstrained vs :class:`~neo.processor.SidLogitsProcessor` vs
``prefix_allowed_tokens_fn``, greedy, same number of new tokens, constrained outputs compared.

Output: a markdown table on stdout (median and p99 per step and per row, build/compile time, bytes
per item, neo's speedup over each provider), ``--json PATH`` (schema :data:`SCHEMA`), ``--plot PATH``
(per-step time vs catalog size per provider) and ``--markdown PATH``. Machine, versions and commit
are recorded. ``--quick`` is a < 60 s smoke run (CI runs it through ``tests/test_bench.py``).

Examples
--------
    neo bench                                   # 1k .. 1M items, 256 rows, peers up to 120 s compile
    neo bench --sizes 1000000 10000000 --json bench.json --plot bench.png
    neo bench --quick --json /tmp/b.json
"""

from __future__ import annotations

import abc
import argparse
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = [
    "SCHEMA",
    "RESULT_KEYS",
    "TOP_KEYS",
    "E2E_KEYS",
    "SyntheticCatalog",
    "RowStates",
    "Provider",
    "NeoCpuProvider",
    "NeoDeviceProvider",
    "PythonTrieHFProvider",
    "TorchSearchsortedProvider",
    "xgrammar_grammar",
    "llguidance_grammar",
    "run_bench",
    "format_table",
    "write_plot",
    "add_bench_parser",
    "main",
]

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
        from .layout import TokenLayout

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
    from .bitmask import bitmask_to_bool

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


# ---------------------------------------------------------------------------------------------- providers
class Provider(abc.ABC):
    """One way of computing the next-token masks of a batch of rows.

    Subclasses implement :meth:`build` (once per catalog), :meth:`prepare` (place rows), :meth:`step`
    (the timed work: every row's mask) and :meth:`allowed` (the last step's masks as bool).
    """

    name = "provider"
    device = "cpu"
    memory_source = "exact"
    what = ""  #: what the timed step computes (recorded as ``extra["step"]``)

    def __init__(self, threads: int = 1):
        self.threads = threads
        self.memory_bytes = 0
        self.extra: dict[str, Any] = {}

    @abc.abstractmethod
    def build(self, cat: SyntheticCatalog) -> float:
        """Build the provider's structure; returns seconds."""

    @abc.abstractmethod
    def prepare(self, states: RowStates) -> None:
        """Place the batch rows at the given states."""

    @abc.abstractmethod
    def step(self) -> None:
        """The timed work: every row's mask."""

    @abc.abstractmethod
    def allowed(self) -> np.ndarray:
        """bool (R, vocab) of the last :meth:`step`."""

    def sync(self) -> None:
        """Wait for asynchronous device work (no-op on CPU)."""

    def extra_timings(self, repeat: int, min_time_s: float, max_time_s: float) -> dict[str, Any]:
        """Further timings recorded under ``extra`` (after the main one)."""
        return {}

    def close(self) -> None:
        """Drop references to big structures."""


class NeoCpuProvider(Provider):
    """neo's C++ core: incremental packed-bitmask fill for all rows."""

    name = "neo-cpu"
    what = "incremental packed int32 bitmask fill, C++ core"

    def build(self, cat: SyntheticCatalog) -> float:
        from .index import SidIndex

        self.cat = cat
        gc.collect()
        t0 = time.perf_counter()
        self.index = SidIndex.build(cat.layout, [cat.tokens])
        dt = time.perf_counter() - t0
        self.memory_bytes = self.index.memory_bytes
        return dt

    def prepare(self, states: RowStates) -> None:
        from .index import DecodeState

        R = states.rows
        st = DecodeState(self.index, R, eos_token_ids=[EOS_ID], num_threads=self.threads)
        st.advance(np.full(R, self.cat.open_id, dtype=np.int64))
        for d in range(self.cat.levels):
            idx = np.flatnonzero(states.depths > d)
            if idx.size:
                st.advance(states.paths[idx, d].astype(np.int64), indices=idx)
        if st.errors():
            raise RuntimeError(f"neo-cpu: rows entered the error state while being placed: {st.errors()}")
        self.state = st
        self.bitmask = np.zeros(st.bitmask_shape, dtype=np.int32)
        st.fill_next_token_bitmask(self.bitmask)  # the first fill writes whole rows

    def step(self) -> None:
        self.state.fill_next_token_bitmask(self.bitmask, incremental=True)

    def allowed(self) -> np.ndarray:
        return _bitmask_bool(self.bitmask, self.cat.vocab_size)

    def close(self) -> None:
        self.state = self.bitmask = self.index = None


class NeoDeviceProvider(Provider):
    """neo's device path: :class:`neo.kernels.DeviceTrie` step (Triton on CUDA).

    The timed step reports every row's allowed band bitmap (``band_start`` + one bit per code, or
    ``at_leaf`` = only ``[/SID]``); it never builds or copies a full-vocabulary mask. ``extra`` adds
    the fused constrained step (trie step + masked log-softmax / beam top-k over bf16 logits).
    On a CPU device (``--device-trie-cpu``) it runs the torch reference: a wiring check, not a speed
    claim.
    """

    name = "neo-cuda"
    what = "DeviceTrie.step: per-row SID band bitmap, device resident"

    def __init__(self, threads: int = 1, device: str = "cuda"):
        super().__init__(threads)
        self.dev = torch.device(device)
        self.device = str(self.dev)
        self.backend = "triton" if self.dev.type == "cuda" else "torch"
        if self.dev.type != "cuda":
            self.name = "neo-device-trie-torch"

    def build(self, cat: SyntheticCatalog) -> float:
        from neo.kernels import DeviceTrie

        from .index import SidIndex

        self.cat = cat
        gc.collect()
        t0 = time.perf_counter()
        index = SidIndex.build(cat.layout, [cat.tokens])
        self.trie = DeviceTrie(index.arrays(0), device=self.dev, open_id=cat.open_id, close_id=cat.close_id)
        self.sync()
        dt = time.perf_counter() - t0
        self.memory_bytes = self.trie.nbytes()
        self.memory_source = "device arrays"
        return dt

    def sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    def prepare(self, states: RowStates) -> None:
        R = states.rows
        node = self.trie.root_state(R)
        depths = torch.as_tensor(states.depths, device=self.dev)
        paths = torch.as_tensor(states.paths.astype(np.int64), device=self.dev)
        for d in range(self.cat.levels):
            tok = torch.where(depths > d, paths[:, d], torch.full_like(paths[:, d], -1))
            node = self.trie.step(node, tok, backend=self.backend).node
        if bool((node < 0).any()):
            raise RuntimeError("neo device trie: rows left the span while being placed")
        self.node = node
        self.no_tokens = torch.full_like(node, -1)
        self.res = None
        g = torch.Generator(device=self.dev).manual_seed(0)
        self.logits = torch.randn(R, self.cat.vocab_size, device=self.dev, generator=g).to(torch.bfloat16)
        self.beam_scores = torch.zeros(R, device=self.dev)
        self.num_beams = 4 if R % 4 == 0 else 1

    def step(self) -> None:
        self.res = self.trie.step(self.node, self.no_tokens, backend=self.backend)

    def allowed(self) -> np.ndarray:
        from neo.kernels import band_to_bitmask

        r = self.res
        extra = torch.where(r.at_leaf, torch.full_like(self.node, self.cat.close_id), torch.full_like(self.node, -1))
        bm = band_to_bitmask(r.band_start, r.bitmap, self.cat.vocab_size, extra)
        return _bitmask_bool(bm, self.cat.vocab_size)

    def extra_timings(self, repeat: int, min_time_s: float, max_time_s: float) -> dict[str, Any]:
        from neo.kernels import beam_topk

        def fused() -> None:
            r = self.trie.step(self.node, self.no_tokens, backend=self.backend)
            beam_topk(self.logits, self.beam_scores, r.band_start, r.bitmap, 2 * self.num_beams, self.num_beams,
                      backend=self.backend)

        t = time_step(fused, repeat=repeat, min_time_s=min_time_s, max_time_s=max_time_s, sync=self.sync)
        return {"fused_step_median_us": t["median_us"], "fused_step_p99_us": t["p99_us"],
                "fused_step_what": f"trie step + beam_topk over bf16 logits, {self.num_beams} beams/request"}

    def close(self) -> None:
        self.trie = self.node = self.res = self.logits = None


class PythonTrie:
    """Nested-dict trie over SID token sequences (the usual generative-recommendation baseline)."""

    def __init__(self, tokens: np.ndarray):
        self.root: dict = {}
        for sid in tokens.tolist():
            node = self.root
            for t in sid:
                node = node.setdefault(t, {})

    def allowed(self, prefix: Sequence[int]) -> list[int] | None:
        """Children tokens of ``prefix``; ``[]`` at a leaf; ``None`` if ``prefix`` is not in the trie."""
        node = self.root
        for t in prefix:
            node = node.get(t)
            if node is None:
                return None
        return list(node.keys())


def make_prefix_allowed_tokens_fn(trie: PythonTrie, open_id: int, close_id: int, eos_id: int,
                                  text_tokens: int) -> Callable[[int, torch.Tensor], list[int]]:
    """A ``prefix_allowed_tokens_fn`` in the usual style: find the open span in the row's tokens and
    walk the dict trie. Outside a span it allows ``[SID]`` and EOS (the ``ids`` output format)."""
    outside = [open_id, eos_id]

    def fn(batch_id: int, sent: torch.Tensor) -> list[int]:
        seq = sent.tolist()
        try:
            start = len(seq) - 1 - seq[::-1].index(open_id)
        except ValueError:
            return outside
        tail = seq[start + 1:]
        if close_id in tail:
            return outside
        nxt = trie.allowed(tail)
        if nxt is None:  # cannot happen under the constraint; keep generation alive
            return [close_id]
        return nxt if nxt else [close_id]

    return fn


class PythonTrieHFProvider(Provider):
    """Python dict trie + ``prefix_allowed_tokens_fn`` through transformers' ``PrefixConstrainedLogitsProcessor``.

    The step is the processor call on ``(R, vocab)`` float scores: dense ``-inf`` mask, per-row
    assignment of the allowed lists, and the add to the scores, as ``generate`` runs it.
    """

    name = "python-trie-hf"
    memory_source = "rss delta"
    what = "PrefixConstrainedLogitsProcessor call: dense -inf mask, allowed lists, add to scores"

    def build(self, cat: SyntheticCatalog) -> float:
        from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

        self.cat = cat
        gc.collect()
        rss0 = _rss_bytes()
        t0 = time.perf_counter()
        self.trie = PythonTrie(cat.tokens)
        dt = time.perf_counter() - t0
        self.memory_bytes = max(_rss_bytes() - rss0, 0)
        fn = make_prefix_allowed_tokens_fn(self.trie, cat.open_id, cat.close_id, EOS_ID, cat.layout.sid_token_begin)
        self.proc = PrefixConstrainedLogitsProcessor(fn, num_beams=1)
        return dt

    def prepare(self, states: RowStates) -> None:
        R, L = states.rows, self.cat.levels
        ids = np.full((R, L + 1), PAD_ID, dtype=np.int64)  # left-padded with a text token
        for r in range(R):
            d = int(states.depths[r])
            ids[r, L - d] = self.cat.open_id
            ids[r, L - d + 1:] = states.paths[r, :d]
        self.input_ids = torch.from_numpy(ids)
        self.scores = torch.zeros(R, self.cat.vocab_size)
        self.out: torch.Tensor | None = None

    def step(self) -> None:
        self.out = self.proc(self.input_ids, self.scores)

    def allowed(self) -> np.ndarray:
        assert self.out is not None
        return (self.out > float("-inf")).numpy()

    def close(self) -> None:
        self.trie = self.proc = self.scores = self.out = None


class TorchSearchsortedProvider(Provider):
    """Vectorised torch: SIDs packed into int64 keys and sorted once; per step, each row's 256
    candidate children are counted with two ``searchsorted`` calls and scattered into a packed bitmask."""

    name = "torch-searchsorted"
    what = "searchsorted of 256 candidates per row + scatter into a zeroed packed int32 bitmask"

    def build(self, cat: SyntheticCatalog) -> float:
        self.cat = cat
        L, V = cat.levels, cat.vocab_size
        toks = torch.from_numpy(cat.tokens.astype(np.int64))
        bands = torch.as_tensor(cat.band_starts)
        gc.collect()
        t0 = time.perf_counter()
        codes = toks - bands[None, :]
        key = torch.zeros(cat.n, dtype=torch.int64)
        for lvl in range(L):
            key = (key << 8) | codes[:, lvl]
        self.keys = torch.sort(key).values
        dt = time.perf_counter() - t0
        self.memory_bytes = self.keys.numel() * 8
        self.bands = bands
        self.W = (V + 31) // 32
        self.cand = torch.arange(256, dtype=torch.int64)
        c = cat.close_id
        bit = 1 << (c & 31)
        self.close_word = c >> 5
        self.close_bit = torch.tensor(bit - 2**32 if bit >= 2**31 else bit, dtype=torch.int32)
        self.zero32 = torch.zeros((), dtype=torch.int32)
        self.win_cols = torch.arange(9)
        return dt

    def prepare(self, states: RowStates) -> None:
        L = self.cat.levels
        R = states.rows
        codes = torch.from_numpy(states.paths.astype(np.int64)) - self.bands[None, :]
        d = torch.from_numpy(states.depths.astype(np.int64))
        pk = torch.zeros(R, dtype=torch.int64)
        for lvl in range(L):  # packed prefix of each row (its codes above its depth)
            pk = torch.where(d > lvl, (pk << 8) | codes[:, lvl], pk)
        self.depth, self.prefix = d, pk
        # the state a decoder keeps per row is (prefix, depth); everything below is per-step work
        self.bitmask = torch.zeros(R, self.W + 1, dtype=torch.int32)  # +1: scatter window spill word
        self.win = torch.zeros(R, 9, dtype=torch.int64)

    def step(self) -> None:
        L = self.cat.levels
        d, pk = self.depth, self.prefix
        inside = d < L
        dc = d.clamp(max=L - 1)
        shift = (8 * (L - 1 - dc))[:, None]
        cand = (pk[:, None] << 8) | self.cand[None, :]
        lo = torch.searchsorted(self.keys, cand << shift)
        hi = torch.searchsorted(self.keys, (cand + 1) << shift)
        exists = (hi > lo) & inside[:, None]
        tok = self.bands[dc][:, None] + self.cand[None, :]
        w0 = self.bands[dc] >> 5
        val = exists.to(torch.int64) << (tok & 31)
        self.win.zero_()
        self.win.scatter_add_(1, (tok >> 5) - w0[:, None], val)  # distinct bits: sum == or
        win32 = torch.where(self.win >= 2**31, self.win - 2**32, self.win).to(torch.int32)
        self.bitmask.zero_()
        # window words past the vocabulary hold no bits; they land in the spill column W
        self.bitmask.scatter_(1, (w0[:, None] + self.win_cols[None, :]).clamp(max=self.W), win32)
        # rows at a leaf: only [/SID]
        self.bitmask[:, self.close_word] |= torch.where(inside, self.zero32, self.close_bit)

    def allowed(self) -> np.ndarray:
        return _bitmask_bool(self.bitmask[:, : self.W], self.cat.vocab_size)

    def close(self) -> None:
        self.keys = self.bitmask = None


# ---------------------------------------------------------------------------------------------- peers
def _trie_groups(cat: SyntheticCatalog):
    """Per depth d < levels-1: for each distinct d-prefix, its children codes, in sorted order.

    Returns ``(levels_lists, leaf_sets)`` where ``levels_lists[d]`` is a list over distinct d-prefixes
    of arrays of (child code, child index among distinct (d+1)-prefixes), and ``leaf_sets`` a list
    over distinct (levels-1)-prefixes of the leaf codes.
    """
    L = cat.levels
    keys = cat.sorted_keys
    prefixes = [np.zeros(1, np.int64)] + [np.unique(keys >> (8 * (L - d))) for d in range(1, L)] + [keys]
    groups = []
    for d in range(L):
        child = prefixes[d + 1]
        parent_pos = np.searchsorted(prefixes[d], child >> 8)
        bounds = np.flatnonzero(np.diff(parent_pos)) + 1
        codes = (child & 255).astype(np.int64)
        idx = np.arange(child.size)
        groups.append((np.split(codes, bounds), np.split(idx, bounds)))
    return groups


def xgrammar_grammar(cat: SyntheticCatalog) -> tuple[list[str], str]:
    """Synthetic string vocabulary and an EBNF trie grammar for xgrammar (see module doc)."""
    L = cat.levels
    vocab = [f"w{i}" for i in range(cat.vocab_size)]
    vocab[cat.open_id], vocab[cat.close_id] = "[SID]", "[/SID]"
    for lvl in range(L):
        b = int(cat.band_starts[lvl])
        for c in range(cat.codebook):
            vocab[b + c] = chr(CJK_BASE + 256 * lvl + c)
    ch = lambda lvl, c: chr(CJK_BASE + 256 * lvl + int(c))  # noqa: E731
    groups = _trie_groups(cat)
    lines = ['root ::= "[SID]" n0_0 "[/SID]"']
    # last internal level (L-2): alternatives "c" [leaf class]
    leaf_codes, _ = groups[L - 1]
    leaf_class = ["[" + "".join(ch(L - 1, c) for c in codes) + "]" for codes in leaf_codes]
    for d in range(L - 1):
        codes_d, idx_d = groups[d]
        for i, (codes, idx) in enumerate(zip(codes_d, idx_d)):
            if d == L - 2:
                alts = [f'"{ch(d, c)}" {leaf_class[j]}' for c, j in zip(codes, idx)]
            else:
                alts = [f'"{ch(d, c)}" n{d + 1}_{j}' for c, j in zip(codes, idx)]
            lines.append(f"n{d}_{i} ::= " + " | ".join(alts))
    if L == 1:
        lines[0] = 'root ::= "[SID]" ' + leaf_class[0] + ' "[/SID]"'
    return vocab, "\n".join(lines) + "\n"


def _token_set(tokens: np.ndarray) -> str:
    """llguidance token set ``<[a-b,c]>`` from ascending ids."""
    parts = []
    t = tokens.tolist()
    i = 0
    while i < len(t):
        j = i
        while j + 1 < len(t) and t[j + 1] == t[j] + 1:
            j += 1
        parts.append(str(t[i]) if i == j else f"{t[i]}-{t[j]}")
        i = j + 1
    return "<[" + ",".join(parts) + "]>"


def llguidance_grammar(cat: SyntheticCatalog) -> str:
    """Lark token-id trie grammar for llguidance (see module doc)."""
    L = cat.levels
    groups = _trie_groups(cat)
    bs = cat.band_starts
    leaf_codes, _ = groups[L - 1]
    leaf_set = [_token_set(codes + bs[L - 1]) for codes in leaf_codes]
    if L == 1:
        return f"start: <[{cat.open_id}]> {leaf_set[0]} <[{cat.close_id}]>\n"
    lines = [f"start: <[{cat.open_id}]> n0_0 <[{cat.close_id}]>"]
    for d in range(L - 1):
        codes_d, idx_d = groups[d]
        for i, (codes, idx) in enumerate(zip(codes_d, idx_d)):
            if d == L - 2:
                alts = [f"<[{int(c + bs[d])}]> {leaf_set[j]}" for c, j in zip(codes, idx)]
            else:
                alts = [f"<[{int(c + bs[d])}]> n{d + 1}_{j}" for c, j in zip(codes, idx)]
            lines.append(f"n{d}_{i}: " + " | ".join(alts))
    return "\n".join(lines) + "\n"


def _peer_version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - not installed
        return None


class _SyntheticHFTokenizer:
    """Minimal tokenizer object for ``llguidance.TokenizerWrapper``: token bytes, EOS, special ids."""

    def __init__(self, vocab: list[str], special: list[int]):
        self.eos_token_id = EOS_ID
        self.bos_token_id = None
        self.tokens = [s.encode("utf-8") for s in vocab]
        self.special_token_ids = special
        self._lookup = {s: i for i, s in enumerate(vocab)}

    def __call__(self, s: bytes | str) -> list[int]:
        # token-id grammars never tokenize text; greedy whole-string lookup is enough for the wrapper's probe
        if isinstance(s, bytes):
            s = s.decode("utf-8", errors="replace")
        i = self._lookup.get(s)
        return [] if i is None else [i]


class _PeerSession:
    """Inside the child process: compile one peer's grammar, place rows, fill masks."""

    def __init__(self, peer: str, cat: SyntheticCatalog, threads: int):
        self.peer, self.cat, self.threads = peer, cat, threads

    def make_grammar(self) -> float:
        t0 = time.perf_counter()
        if self.peer == "xgrammar":
            self.vocab, self.grammar = xgrammar_grammar(self.cat)
        else:
            self.grammar = llguidance_grammar(self.cat)
        return time.perf_counter() - t0

    def make_tokenizer(self) -> float:
        cat = self.cat
        t0 = time.perf_counter()
        if self.peer == "xgrammar":
            import xgrammar as xgr

            self.tok = xgr.TokenizerInfo(self.vocab, vocab_size=cat.vocab_size, stop_token_ids=[EOS_ID])
            self.compiler = xgr.GrammarCompiler(self.tok, max_threads=self.threads, cache_enabled=False)
        else:
            import llguidance as llg

            vocab = [f"w{i}" for i in range(cat.vocab_size)]
            vocab[cat.open_id], vocab[cat.close_id] = "[SID]", "[/SID]"
            for lvl in range(cat.levels):
                b = int(cat.band_starts[lvl])
                for c in range(cat.codebook):
                    vocab[b + c] = f"<sid_{lvl}_{c}>"
            special = list(range(cat.layout.sid_token_begin, cat.layout.sid_token_end))
            wrapper = llg.TokenizerWrapper(_SyntheticHFTokenizer(vocab, special))
            self.tok = llg.LLTokenizer(wrapper, n_vocab=cat.vocab_size)
            self.executor = llg.LLExecutor(num_threads=self.threads)
        return time.perf_counter() - t0

    def compile(self) -> tuple[float, int, str]:
        """Returns (seconds, memory bytes, memory source); raises RuntimeError with the peer's error."""
        gc.collect()
        rss0 = _rss_bytes()
        t0 = time.perf_counter()
        if self.peer == "xgrammar":
            self.compiled = self.compiler.compile_grammar(self.grammar)
            dt = time.perf_counter() - t0
            return dt, int(self.compiled.memory_size_bytes), "CompiledGrammar.memory_size_bytes"
        import llguidance as llg

        self.proto = llg.LLMatcher(self.tok, llg.LLMatcher.grammar_from_lark(self.grammar), log_level=0)
        dt = time.perf_counter() - t0
        if self.proto.is_error():
            err = self.proto.get_error().split("<backtrace>")[0].strip()
            raise RuntimeError(f"llguidance rejected the grammar: {err[:300]}")
        return dt, max(_rss_bytes() - rss0, 0), "rss delta"

    def prepare(self, states: RowStates) -> None:
        R = states.rows
        cat = self.cat
        self.matchers = []
        for r in range(R):
            toks = [cat.open_id] + states.prefix(r)
            if self.peer == "xgrammar":
                import xgrammar as xgr

                m = xgr.GrammarMatcher(self.compiled)
                ok = all(m.accept_token(int(t)) for t in toks)
            else:
                m = self.proto.deep_copy()
                ok = all(m.consume_token(int(t)) for t in toks) and not m.is_error()
            if not ok:
                raise RuntimeError(f"{self.peer} refused the catalog SID prefix {toks} of row {r}")
            self.matchers.append(m)
        self.bitmask = np.zeros((R, (cat.vocab_size + 31) // 32), dtype=np.int32)
        if self.peer == "xgrammar":
            import xgrammar as xgr

            self.batch = xgr.BatchGrammarMatcher(max_threads=self.threads)
            self.bitmask_t = torch.from_numpy(self.bitmask)
        else:
            self.pairs = [(m, i) for i, m in enumerate(self.matchers)]

    def step(self) -> None:
        if self.peer == "xgrammar":
            self.batch.batch_fill_next_token_bitmask(self.matchers, self.bitmask_t)
        else:
            from llguidance.numpy import fill_next_token_bitmask_par

            fill_next_token_bitmask_par(self.executor, self.pairs, self.bitmask)

    def allowed(self) -> np.ndarray:
        return _bitmask_bool(self.bitmask, self.cat.vocab_size)


def _peer_child(conn: Any, peer: str, n: int, seed: int, state_seeds: list[tuple[int, int]], threads: int,
                timing: dict[str, float]) -> None:
    """Child process body: messages ("grammar", s), ("compiled", s, mem, src), ("row", dict)..., ("done",)."""
    try:
        torch.set_num_threads(threads)
        cat = SyntheticCatalog(n, seed)
        sess = _PeerSession(peer, cat, threads)
        gs = sess.make_grammar()
        ts = sess.make_tokenizer()
        conn.send(("grammar", gs, ts, len(sess.grammar)))
        cs, mem, src = sess.compile()
        conn.send(("compiled", cs, mem, src))
        for rows, sseed in state_seeds:
            states = cat.sample_states(rows, sseed)
            sess.prepare(states)
            sess.step()
            agree = bool(np.array_equal(sess.allowed(), cat.oracle_bool(states)))
            res: dict[str, Any] = {"rows": rows, "agree": agree}
            if agree:
                t = time_step(sess.step, repeat=int(timing["repeat"]), min_time_s=timing["min_time_s"],
                              max_time_s=timing["max_time_s"])
                res.update(t)
            conn.send(("row", res))
        conn.send(("done",))
    except BaseException as e:  # noqa: BLE001 - report everything to the parent
        conn.send(("error", f"{type(e).__name__}: {e}", traceback.format_exc(limit=3)))
    finally:
        conn.close()


def run_peer(peer: str, n: int, seed: int, state_seeds: list[tuple[int, int]], threads: int,
             timing: dict[str, float], limit_s: float, log: Callable[[str], None]) -> tuple[list[dict], str | None]:
    """Run one peer at one catalog size in a child process.

    Returns ``(result rows, failure)``; ``failure`` is None when the compile finished within
    ``limit_s`` and every row was processed.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_peer_child, args=(child, peer, n, seed, state_seeds, threads, timing), daemon=True)
    proc.start()
    child.close()
    base = dict(provider=peer, device="cpu", items=n, memory_source="", extra={}, build_s=None,
                memory_bytes_per_item=None)
    rows_out: list[dict] = []
    failure: str | None = None
    # grammar text and tokenizer are prepared before the clock of the limit starts
    stage_limits = {"grammar": 600.0 + n / 1000.0, "compiled": limit_s,
                    "row": 120.0 + 4 * timing["max_time_s"] + n / 2000.0}
    expect = "grammar"
    try:
        while True:
            lim = stage_limits[expect]
            if not parent.poll(lim):
                failure = ("compile exceeded the limit of %.0f s" % limit_s if expect == "compiled"
                           else f"no answer from the {peer} child within {lim:.0f} s (stage {expect})")
                break
            try:
                msg = parent.recv()
            except EOFError:
                failure = f"{peer} child process died (exit code {proc.exitcode}); likely out of memory"
                break
            kind = msg[0]
            if kind == "grammar":
                base["extra"] = {"step": PEER_STEP[peer], "grammar_gen_s": msg[1], "tokenizer_s": msg[2],
                                 "grammar_chars": msg[3]}
                log(f"  {peer}: grammar {msg[3] / 1e6:.1f} M chars in {msg[1]:.1f}s; compiling (limit {limit_s:.0f}s)")
                expect = "compiled"
            elif kind == "compiled":
                base["build_s"] = msg[1]
                base["memory_bytes_per_item"] = msg[2] / n
                base["memory_source"] = msg[3]
                log(f"  {peer}: compiled in {msg[1]:.2f}s")
                expect = "row"
            elif kind == "row":
                r = msg[1]
                row = _result_row(**base, rows=r["rows"], agree=r["agree"], checked_rows=r["rows"])
                if r["agree"]:
                    _fill_timing(row, r)
                else:
                    row["status"] = "disagree"
                    row["note"] = "allowed sets differ from the oracle; not timed"
                rows_out.append(row)
            elif kind == "done":
                break
            elif kind == "error":
                failure = msg[1].split("<backtrace>")[0].strip()[:300]
                break
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
    if failure is not None:
        row = _result_row(**base, rows=state_seeds[0][0] if state_seeds else 0)
        row["status"] = "timeout" if failure.startswith("compile exceeded") else "failed"
        row["note"] = failure
        rows_out.append(row)
    return rows_out, failure


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


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    try:
        from . import __version__

        out["neo"] = __version__
    except ImportError:
        out["neo"] = None
    for name in ("torch", "transformers", "numpy", "triton", "xgrammar", "llguidance", "matplotlib"):
        out[name] = _peer_version(name)
    return out


def _machine(threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "commit": "unknown",
        "cpu": None,
        "mem_gb": None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True, cwd=here, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=here, timeout=10).stdout.strip()
        info["commit"] = commit + ("-dirty" if dirty else "")
    except Exception:  # noqa: BLE001 - an installed package has no git checkout
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_gb"] = round(int(f.readline().split()[1]) / 1e6, 1)
    except OSError:
        pass
    return info


def ladder(max_items: int, start: int = 1000) -> list[int]:
    """1k, 10k, 100k, ... up to ``max_items``."""
    out, s = [], start
    while s <= max_items:
        out.append(s)
        s *= 10
    return out


# ---------------------------------------------------------------------------------------------- e2e
def _tiny_model(vocab: int, seed: int = 0):
    """A tiny random Qwen2-style causal LM with the benchmark's vocabulary (no download)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, eos_token_id=EOS_ID, pad_token_id=PAD_ID, bos_token_id=None)
    model = Qwen2ForCausalLM(cfg).eval()
    desc = {"arch": "Qwen2ForCausalLM", "hidden": 64, "layers": 2, "vocab": vocab,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    return model, desc


class _TimedProcessor:
    """Wraps a logits processor and accumulates the time spent in its calls."""

    def __init__(self, inner: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.inner(input_ids, scores)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def run_e2e(n: int, batch: int, new_tokens: int, repeats: int, threads: int, seed: int,
            log: Callable[[str], None]) -> dict[str, Any]:
    """Greedy ``generate`` tokens/s: unconstrained vs neo's processor vs ``prefix_allowed_tokens_fn``.

    Prompts end in ``[SID]`` and both constrained runs use the ``ids`` format (spans, then ``[SID]``
    or EOS); ``min_new_tokens`` = ``max_new_tokens`` so every run generates the same number of tokens.
    The two constrained runs must produce identical tokens (same model, same allowed sets), so neo's
    processor runs with ``exclude_emitted=False`` (the dict-trie function may repeat an item too).
    """
    from transformers import LogitsProcessorList
    from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

    from .index import SidIndex
    from .processor import SidLogitsProcessor

    cat = SyntheticCatalog(n, seed)
    index = SidIndex.build(cat.layout, [cat.tokens])
    trie = PythonTrie(cat.tokens)
    fn = make_prefix_allowed_tokens_fn(trie, cat.open_id, cat.close_id, EOS_ID, cat.layout.sid_token_begin)
    model, desc = _tiny_model(cat.vocab_size, seed)
    rng = np.random.default_rng(seed)
    prompt = rng.integers(2, cat.layout.sid_token_begin, size=(batch, 8))
    ids = torch.from_numpy(np.concatenate([prompt, np.full((batch, 1), cat.open_id)], 1).astype(np.int64))
    mask = torch.ones_like(ids)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=PAD_ID,
              eos_token_id=EOS_ID, attention_mask=mask)

    proc_s: dict[str, float] = {"neo": 0.0, "prefix_allowed_tokens_fn": 0.0}
    proc_calls: dict[str, int] = {"neo": 0, "prefix_allowed_tokens_fn": 0}

    def gen(mode: str, record: bool = False) -> torch.Tensor:
        with torch.inference_mode():
            if mode == "unconstrained":
                return model.generate(ids, **kw)
            if mode == "neo":
                # exclude_emitted=False: the dict-trie fn has no memory of emitted items, and the outputs must match
                inner: Any = SidLogitsProcessor(index, eos_token_id=EOS_ID, format="ids", exclude_emitted=False,
                                                num_threads=threads)
            else:
                # the processor generate(prefix_allowed_tokens_fn=fn) builds, passed explicitly to time its calls
                inner = PrefixConstrainedLogitsProcessor(fn, num_beams=1)
            timed = _TimedProcessor(inner)
            out = model.generate(ids, logits_processor=LogitsProcessorList([timed]), **kw)
            if record:
                proc_s[mode] += timed.seconds
                proc_calls[mode] += timed.calls
            return out

    modes = ("unconstrained", "neo", "prefix_allowed_tokens_fn")
    outs = {m: gen(m) for m in modes}  # warm-up, and the outputs to compare
    neo_out, hf_out = outs["neo"][:, ids.shape[1]:], outs["prefix_allowed_tokens_fn"][:, ids.shape[1]:]
    agree = bool(torch.equal(neo_out, hf_out))
    # every closed span in neo's output is a real item
    seq = neo_out.numpy()
    for r in range(batch):
        s = np.concatenate([[cat.open_id], seq[r]])
        opens = np.flatnonzero(s == cat.open_id)
        for o in opens:
            span = s[o + 1: o + 1 + cat.levels]
            if len(span) == cat.levels and o + 1 + cat.levels < len(s):
                if s[o + 1 + cat.levels] != cat.close_id or index.lookup(span[None, :])[0] < 0:
                    raise AssertionError(f"e2e: neo emitted a span that is not a catalog item in row {r}: {span}")
    walls: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(repeats):  # interleaved, so drifting machine load hits every mode alike
        for m in modes:
            t0 = time.perf_counter()
            gen(m, record=True)
            walls[m].append(time.perf_counter() - t0)
    med = {m: float(np.median(walls[m])) for m in modes}
    runs = []
    mask_us = {m: (1e6 * proc_s[m] / proc_calls[m] if proc_calls.get(m) else None) for m in modes}
    step_us_unc = 1e6 * med["unconstrained"] / new_tokens  # one decode step of the unconstrained run
    for m in modes:
        runs.append({"mode": m, "wall_s_median": med[m], "tokens_per_s": batch * new_tokens / med[m],
                     "overhead_vs_unconstrained_pct": 100.0 * (med[m] / med["unconstrained"] - 1.0),
                     "mask_us_per_step": mask_us[m],
                     "mask_share_of_unconstrained_step_pct": (100.0 * mask_us[m] / step_us_unc
                                                              if mask_us[m] is not None else None)})
    # processor time measured inside the calls: robust where wall-clock differences drown in noise
    ratio = mask_us["prefix_allowed_tokens_fn"] / mask_us["neo"] if mask_us["neo"] else None
    log(f"  e2e ({n:,} items, batch {batch}, {new_tokens} tokens): " + ", ".join(
        f"{r['mode']} {r['tokens_per_s']:.0f} tok/s ({r['overhead_vs_unconstrained_pct']:+.1f}%"
        + (f", mask {r['mask_us_per_step']:.0f} us/step)" if r["mask_us_per_step"] is not None else ")")
        for r in runs))
    return {"items": n, "batch": batch, "new_tokens": new_tokens, "model": desc, "outputs_agree": agree,
            "runs": runs, "mask_overhead_ratio": ratio}


# ---------------------------------------------------------------------------------------------- budgets
def _find(results: list[dict], provider: str, items: int | None = None, rows: int | None = None) -> dict | None:
    for r in results:
        if r["provider"] == provider and r["status"] == "ok" and (items is None or r["items"] == items) and (
                rows is None or r["rows"] == rows):
            return r
    return None


def evaluate_budgets(results: list[dict], e2e: dict | None) -> list[dict[str, Any]]:
    """DESIGN.md section 5 budgets beside what this run measured (``met`` None = not measured here)."""
    out = []

    def add(what: str, budget: str, measured: str | None, met: bool | None) -> None:
        out.append({"what": what, "budget": budget, "measured": measured, "met": met})

    neo = [r for r in results if r["provider"] == "neo-cpu" and r["status"] == "ok" and r["rows"] == 256]
    big = max(neo, key=lambda r: r["items"]) if neo else None
    if big and big["items"] >= 1_000_000:
        add("CPU bitmask fill, 256 rows inside spans", "<= 1 us per row (beat 5.8 us)",
            f"{big['row_median_us']:.3f} us/row at {big['items']:,} items", big["row_median_us"] <= 1.0)
    else:
        add("CPU bitmask fill, 256 rows inside spans", "<= 1 us per row (beat 5.8 us)",
            f"{big['row_median_us']:.3f} us/row at {big['items']:,} items (budget is for >= 1M)" if big else None,
            None)
    a, b = _find(results, "neo-cpu", 1_000_000, 256), _find(results, "neo-cpu", 10_000_000, 256)
    add("CPU fill 1M vs 10M items", "within 10%",
        f"10M/1M = {b['row_median_us'] / a['row_median_us']:.3f}" if a and b else None,
        (b["row_median_us"] / a["row_median_us"] <= 1.10) if a and b else None)
    ten = [r for r in results if r["provider"] == "neo-cpu" and r["items"] == 10_000_000 and r["build_s"]]
    if ten:
        r = ten[0]
        add("trie build, 10M items x 4 levels, from unsorted codes", "<= 1.5 s single core",
            f"{r['build_s']:.2f} s", r["build_s"] <= 1.5)
        add("trie memory, 10M items", "<= 16 bytes per item", f"{r['memory_bytes_per_item']:.1f} B/item",
            r["memory_bytes_per_item"] <= 16)
    else:
        add("trie build, 10M items x 4 levels, from unsorted codes", "<= 1.5 s single core", None, None)
        add("trie memory, 10M items", "<= 16 bytes per item", None, None)
    gpu = [r for r in results if r["provider"] == "neo-cuda" and r["status"] == "ok" and r["rows"] == 140
           and r["items"] >= 10_000_000]
    if gpu:
        f = gpu[0]["extra"].get("fused_step_median_us")
        add("GPU constrained step, 140 rows, 10-20M items", "<= 33 us per step",
            f"{f:.1f} us (trie step + beam top-k)" if f is not None else None, (f <= 33) if f is not None else None)
    else:
        add("GPU constrained step, 140 rows, 10-20M items", "<= 33 us per step",
            "pending: needs a CUDA device and --rows 140 --sizes 10000000", None)
    add("fused masked log-softmax + top-k", "<= 1.3x one read of the logits",
        "measured by benchmarks/bench_kernels.py on a GPU", None)
    if e2e:
        neo_run = next(r for r in e2e["runs"] if r["mode"] == "neo")
        share = neo_run["mask_share_of_unconstrained_step_pct"]
        add("HF processor vs unconstrained generate", "<= 5% slower",
            f"processor time {share:.2f}% of an unconstrained step; wall clock "
            f"{neo_run['overhead_vs_unconstrained_pct']:+.1f}% (tiny model, batch {e2e['batch']})",
            share <= 5.0)
        ratio = e2e["mask_overhead_ratio"]
        add("HF processor mask overhead vs PrefixConstrainedLogitsProcessor", ">= 100x less",
            f"{ratio:.0f}x less (processor time per step, batch {e2e['batch']})" if ratio is not None else None,
            (ratio >= 100) if ratio is not None else None)
    else:
        add("HF processor vs unconstrained generate", "<= 5% slower", None, None)
        add("HF processor mask overhead vs PrefixConstrainedLogitsProcessor", ">= 100x less", None, None)
    return out


# ---------------------------------------------------------------------------------------------- driver
def run_bench(
    sizes: Sequence[int] = (1_000_000,),
    rows: Sequence[int] = (256,),
    *,
    providers: Sequence[str] | None = None,
    peer_timeout: float = 120.0,
    python_max_items: int = 10_000_000,
    repeat: int = 50,
    min_time_s: float = 0.5,
    max_time_s: float = 10.0,
    threads: int = 1,
    seed: int = 0,
    e2e: bool = True,
    e2e_items: int | None = None,
    e2e_batch: int = 8,
    e2e_tokens: int = 48,
    e2e_repeats: int = 3,
    device_trie_cpu: bool = False,
    quick: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the benchmark and return the JSON document (see :data:`TOP_KEYS`).

    Parameters
    ----------
    sizes : catalog sizes; the measured sizes are the ladder 1k, 10k, ... up to ``max(sizes)`` plus ``sizes``.
    rows : batch rows per step (each measured at every size).
    providers : names to run (default: all available); see the module doc.
    peer_timeout : seconds a peer's grammar compile may take before the peer's ladder stops.
    python_max_items : skip the Python dict trie above this size (about 200 bytes per item).
    repeat, min_time_s, max_time_s : timing samples (see :func:`time_step`).
    threads : CPU threads for every provider (torch, neo core, xgrammar, llguidance).
    e2e, e2e_items, e2e_batch, e2e_tokens, e2e_repeats : the ``generate`` comparison
        (``e2e_items`` default: the largest size up to 1M).
    device_trie_cpu : also run neo's device trie on CPU (torch reference; a wiring check).
    """
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"--sizes must be positive item counts, got {list(sizes)}")
    rows = sorted({int(r) for r in rows})
    if not rows or rows[0] < 1:
        raise ValueError(f"--rows must be positive, got {list(rows)}")
    if peer_timeout <= 0:
        raise ValueError(f"--peer-timeout must be > 0 seconds, got {peer_timeout}")
    all_sizes = sorted(set(ladder(max(sizes))) | set(sizes))
    known = ["neo-cpu", "neo-cuda", "python-trie-hf", "torch-searchsorted", *PEERS]
    if device_trie_cpu:
        known.append("neo-device-trie-torch")
    chosen = list(known) if providers is None else list(providers)
    bad = [p for p in chosen if p not in known + ["neo-device-trie-torch"]]
    if bad:
        raise ValueError(f"unknown provider(s) {bad}; known: {known + ['neo-device-trie-torch']}")
    if device_trie_cpu and "neo-device-trie-torch" not in chosen:
        chosen.append("neo-device-trie-torch")
    cuda = torch.cuda.is_available()
    peer_info: dict[str, dict[str, Any]] = {}
    for p in PEERS:
        ver = _peer_version(p)
        peer_info[p] = {"available": ver is not None, "version": ver, "limit_s": peer_timeout,
                        "largest_items_ok": None,
                        "failure": None if ver is not None else f"not installed (pip install neo-sid[peers])"}
        if p not in chosen:
            peer_info[p]["failure"] = "not selected"
    torch.set_num_threads(threads)
    timing = {"repeat": repeat, "min_time_s": min_time_s, "max_time_s": max_time_s}
    results: list[dict[str, Any]] = []
    stopped: dict[str, str] = {}
    t_start = time.perf_counter()

    def in_process(n: int) -> list[Provider]:
        out: list[Provider] = []
        if "neo-cpu" in chosen:
            out.append(NeoCpuProvider(threads))
        if "neo-cuda" in chosen and cuda:
            out.append(NeoDeviceProvider(threads, "cuda"))
        if "neo-device-trie-torch" in chosen:
            out.append(NeoDeviceProvider(threads, "cpu"))
        if "python-trie-hf" in chosen and n <= python_max_items:
            out.append(PythonTrieHFProvider(threads))
        if "torch-searchsorted" in chosen:
            out.append(TorchSearchsortedProvider(threads))
        return out

    for n in all_sizes:
        log(f"[{n:,} items]")
        cat = SyntheticCatalog(n, seed)
        state_seeds = [(R, seed * 7919 + R) for R in rows]
        expected = {R: cat.oracle_bool(cat.sample_states(R, s)) for R, s in state_seeds}
        for prov in in_process(n):
            build_s = prov.build(cat)
            for R, s in state_seeds:
                states = cat.sample_states(R, s)
                row = _result_row(provider=prov.name, device=prov.device, items=n, rows=R, build_s=build_s,
                                  memory_bytes_per_item=prov.memory_bytes / n, memory_source=prov.memory_source,
                                  checked_rows=R)
                prov.prepare(states)
                prov.step()
                prov.sync()
                row["agree"] = bool(np.array_equal(prov.allowed(), expected[R]))
                if not row["agree"]:
                    row["status"] = "disagree"
                    row["note"] = "allowed sets differ from the oracle; not timed"
                else:
                    _fill_timing(row, time_step(prov.step, sync=prov.sync, **timing))
                    row["extra"] = {"step": prov.what, **prov.extra_timings(**timing)}
                results.append(row)
                log(f"  {prov.name:<22} rows {R:>4}: build {build_s:7.3f}s, {prov.memory_bytes / n:8.1f} B/item, "
                    + (f"{row['row_median_us']:9.3f} us/row (p99 step {row['step_p99_us']:,.0f} us)"
                       if row["status"] == "ok" else row["status"]))
            prov.close()
            del prov
            gc.collect()
        for p in PEERS:
            if p not in chosen or not peer_info[p]["available"]:
                continue
            if p in stopped:
                row = _result_row(provider=p, device="cpu", items=n, rows=rows[0], status="skipped",
                                  note=f"a smaller catalog already failed: {stopped[p]}")
                results.append(row)
                continue
            got, failure = run_peer(p, n, seed, state_seeds, threads, timing, peer_timeout, log)
            for row in got:
                if row["status"] == "ok":
                    log(f"  {p:<22} rows {row['rows']:>4}: compile {row['build_s']:7.3f}s, "
                        f"{row['memory_bytes_per_item']:8.1f} B/item, {row['row_median_us']:9.3f} us/row")
            results.extend(got)
            if failure is not None:
                stopped[p] = failure
                peer_info[p]["failure"] = f"at {n:,} items: {failure}"
                log(f"  {p}: stopped at {n:,} items: {failure}")
            elif all(r["status"] == "ok" for r in got):
                peer_info[p]["largest_items_ok"] = n
        del cat, expected
        gc.collect()

    # neo's speedup over every other provider at the same (items, rows)
    for r in results:
        if r["status"] != "ok" or r["provider"].startswith("neo"):
            continue
        ref = _find(results, "neo-cuda" if r["device"].startswith("cuda") else "neo-cpu", r["items"], r["rows"])
        if ref:
            r["neo_speedup"] = r["step_median_us"] / ref["step_median_us"]

    e2e_doc = None
    if e2e:
        n_e2e = e2e_items or max([s for s in all_sizes if s <= 1_000_000] or [all_sizes[0]])
        e2e_doc = run_e2e(n_e2e, e2e_batch, e2e_tokens, e2e_repeats, threads, seed, log)
    doc = {
        "schema": SCHEMA,
        "machine": _machine(threads),
        "versions": _versions(),
        "config": {"sizes": all_sizes, "requested_sizes": list(sizes), "rows": rows, "vocab_size": VOCAB,
                   "levels": LEVELS, "codebook": CODEBOOK, "threads": threads, "peer_timeout_s": peer_timeout,
                   "python_max_items": python_max_items, "repeat": repeat, "min_time_s": min_time_s,
                   "max_time_s": max_time_s, "seed": seed, "quick": quick, "cuda": cuda,
                   "providers": chosen, "wall_s": None},
        "results": results,
        "peers": peer_info,
        "e2e": e2e_doc,
        "budgets": evaluate_budgets(results, e2e_doc),
    }
    doc["config"]["wall_s"] = time.perf_counter() - t_start
    return doc


# ---------------------------------------------------------------------------------------------- output
def _fmt(v: Any, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            return str(v)
        return format(v, spec)
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def format_table(doc: dict[str, Any]) -> str:
    """Markdown tables: per-provider results, peers' largest catalog, e2e, budgets."""
    cols = [("provider", "provider"), ("items", "items"), ("rows", "rows"), ("status", "status"),
            ("build_s", "build/compile s"), ("memory_bytes_per_item", "B/item"), ("agree", "agree"),
            ("step_median_us", "step median us"), ("step_p99_us", "step p99 us"),
            ("row_median_us", "row median us"), ("row_p99_us", "row p99 us"), ("neo_speedup", "neo speedup")]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in sorted(doc["results"], key=lambda r: (r["items"], r["rows"], r["provider"])):
        cells = []
        for k, _ in cols:
            v = r[k]
            if k == "neo_speedup" and v is not None:
                cells.append(f"{v:.1f}x")
            elif k == "status" and v != "ok":
                cells.append(f"{v}: {r['note']}"[:90])
            else:
                cells.append(_fmt(v))
        lines.append("| " + " | ".join(cells) + " |")
    out = ["\n".join(lines), ""]
    steps: dict[str, str] = {}
    for r in doc["results"]:
        if r["extra"].get("step"):
            steps.setdefault(r["provider"], r["extra"]["step"])
    if steps:
        out += ["\n".join(["| provider | timed step (all rows) |", "|---|---|"]
                          + [f"| {p} | {w} |" for p, w in sorted(steps.items())]), ""]
    peer_lines = ["| peer | version | largest catalog within limit | limit s | stopped by |", "|---|---|---|---|---|"]
    for p, info in doc["peers"].items():
        peer_lines.append(f"| {p} | {info['version'] or '-'} | {_fmt(info['largest_items_ok'])} | "
                          f"{info['limit_s']:.0f} | {info['failure'] or '-'} |")
    out += ["\n".join(peer_lines), ""]
    e = doc["e2e"]
    if e:
        el = [f"e2e generate: {e['items']:,} items, batch {e['batch']}, {e['new_tokens']} new tokens, "
              f"{e['model']['arch']} ({e['model']['params_m']} M params); neo and prefix_allowed_tokens_fn outputs "
              f"identical: {_fmt(e['outputs_agree'])}", "",
              "| mode | tokens/s | wall s | vs unconstrained (wall) | processor us/step | share of a step |",
              "|---|---|---|---|---|---|"]
        for r in e["runs"]:
            el.append(f"| {r['mode']} | {r['tokens_per_s']:.0f} | {r['wall_s_median']:.3f} | "
                      f"{r['overhead_vs_unconstrained_pct']:+.1f}% | {_fmt(r['mask_us_per_step'])} | "
                      + (f"{r['mask_share_of_unconstrained_step_pct']:.2f}% |"
                         if r["mask_share_of_unconstrained_step_pct"] is not None else "- |"))
        ratio = e["mask_overhead_ratio"]
        el.append("")
        el.append(f"processor time per step, prefix_allowed_tokens_fn / neo: {ratio:.0f}x" if ratio is not None
                  else "neo's processor time was not recorded")
        out += ["\n".join(el), ""]
    bl = ["| budget (DESIGN.md 5) | target | measured | met |", "|---|---|---|---|"]
    for b in doc["budgets"]:
        met = "-" if b["met"] is None else ("met" if b["met"] else "not met")
        bl.append(f"| {b['what']} | {b['budget']} | {b['measured'] or '-'} | {met} |")
    out.append("\n".join(bl))
    return "\n".join(out)


def write_plot(doc: dict[str, Any], path: str | os.PathLike) -> Path:
    """PNG: per-step median time vs catalog size, one line per provider (largest rows value)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(doc["config"]["rows"])
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    provs = sorted({r["provider"] for r in doc["results"]})
    for p in provs:
        pts = sorted((r["items"], r["step_median_us"]) for r in doc["results"]
                     if r["provider"] == p and r["rows"] == rows and r["status"] == "ok")
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=p)
        fails = [r for r in doc["results"] if r["provider"] == p and r["status"] in ("timeout", "failed")]
        for f in fails:
            ax.axvline(f["items"], ls=":", lw=0.8, color=ax.lines[-1].get_color() if pts else "gray")
            ax.annotate(f"{p} {f['status']}", (f["items"], ax.get_ylim()[0] if pts else 1), rotation=90,
                        fontsize=7, va="bottom")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("catalog items")
    ax.set_ylabel(f"mask time per step, {rows} rows (us, median)")
    m = doc["machine"]
    ax.set_title(f"neo bench: {m.get('cpu') or m['platform']}, {m['threads']} thread(s), commit {m['commit']}",
                 fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------- CLI
QUICK = dict(sizes=[1000, 5000], rows=[32], repeat=5, min_time_s=0.02, max_time_s=1.0, e2e_items=1000,
             e2e_batch=2, e2e_tokens=12, e2e_repeats=1, peer_timeout=60.0)


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``neo bench`` on an ``argparse`` subparsers object (``set_defaults(func=...)``)."""
    p = subparsers.add_parser("bench", help="constrained-decoding throughput of neo vs peers (tables, JSON, plot)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=_run_from_args)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000],
                   help="catalog sizes; the ladder 1k, 10k, ... up to the largest is always measured (default 1M; "
                        "10M needs about 4 GB with the Python baseline)")
    p.add_argument("--rows", type=int, nargs="+", default=[256], help="batch rows per step (default 256)")
    p.add_argument("--providers", nargs="+", default=None,
                   help="subset of: neo-cpu neo-cuda python-trie-hf torch-searchsorted xgrammar llguidance")
    p.add_argument("--peer-timeout", type=float, default=120.0,
                   help="seconds a peer's grammar compile may take; the peer's ladder stops there (default 120)")
    p.add_argument("--python-max-items", type=int, default=10_000_000,
                   help="largest catalog for the Python dict trie (about 200 B/item)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for every provider (default 1: pinned)")
    p.add_argument("--repeat", type=int, default=50, help="minimum timed steps per measurement")
    p.add_argument("--min-time", type=float, default=0.5, help="minimum seconds per measurement")
    p.add_argument("--max-time", type=float, default=10.0, help="stop a slow measurement after this (>= 5 steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-e2e", action="store_true", help="skip the model.generate comparison")
    p.add_argument("--e2e-items", type=int, default=None, help="catalog for the generate comparison "
                                                             "(default: largest size up to 1M)")
    p.add_argument("--e2e-batch", type=int, default=8)
    p.add_argument("--e2e-tokens", type=int, default=48)
    p.add_argument("--e2e-repeats", type=int, default=3)
    p.add_argument("--device-trie-cpu", action="store_true",
                   help="also run neo's device trie on CPU via its torch reference (wiring check, not a speed claim)")
    p.add_argument("--quick", action="store_true", help="small catalogs, few steps (< 60 s; what CI runs)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", default=None, metavar="PATH", help="write the PNG plot (needs matplotlib)")
    p.add_argument("--markdown", default=None, metavar="PATH", help="write the tables as markdown")


def _run_from_args(args: argparse.Namespace) -> int:
    kw: dict[str, Any] = dict(sizes=args.sizes, rows=args.rows, providers=args.providers,
                              peer_timeout=args.peer_timeout, python_max_items=args.python_max_items,
                              repeat=args.repeat, min_time_s=args.min_time, max_time_s=args.max_time,
                              threads=args.threads, seed=args.seed, e2e=not args.no_e2e, e2e_items=args.e2e_items,
                              e2e_batch=args.e2e_batch, e2e_tokens=args.e2e_tokens, e2e_repeats=args.e2e_repeats,
                              device_trie_cpu=args.device_trie_cpu, quick=args.quick)
    if args.quick:
        kw.update(QUICK)
    log = lambda s: print(s, flush=True)  # noqa: E731
    doc = run_bench(**kw, log=log)
    table = format_table(doc)
    print()
    print(table)
    m = doc["machine"]
    print(f"\nmachine: {m.get('cpu')}, {m['cpu_count']} cores ({m['threads']} thread(s) used), load {m['load_avg']}, "
          f"commit {m['commit']}; total {doc['config']['wall_s']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.json}")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table + "\n")
        print(f"wrote {args.markdown}")
    if args.plot:
        try:
            print(f"wrote {write_plot(doc, args.plot)}")
        except ImportError:
            print("--plot needs matplotlib (pip install neo-sid[peers]); no plot written", file=sys.stderr)
            return 2
    bad = [r for r in doc["results"] if r["agree"] is False]
    e = doc["e2e"]
    if bad or (e is not None and not e["outputs_agree"]):
        print(f"DISAGREEMENT: {[(r['provider'], r['items'], r['rows']) for r in bad]}"
              + ("; e2e outputs differ" if e is not None and not e["outputs_agree"] else ""), file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m neo.bench [options]`` (same options as ``neo bench``)."""
    p = argparse.ArgumentParser(prog="neo bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    return _run_from_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
