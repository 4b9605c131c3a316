"""``neo bench``: constrained-decoding throughput of neo against the decoders people would use otherwise.

One command, one run, on one synthetic catalog per size (DESIGN.md section 5: one item type, 4 levels x
256 codes, vocabulary 151,936 (Qwen-sized), SIDs drawn uniformly without duplicates, given unsorted).
Rows sit at random depths inside a span: depth 0 is right after ``[SID]``, depth 4 has only ``[/SID]``
left. Providers, all computing "which tokens may come next" for every row of a batch:

``neo-cpu``
    The C++ core: :class:`~neo.core.index.DecodeState` filling a packed int32 bitmask incrementally
    (what :class:`~neo.lm.processor.SidLogitsProcessor` does every step).
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
model (vocabulary 151,936): unconstrained vs :class:`~neo.lm.processor.SidLogitsProcessor` vs
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
import gc
import multiprocessing as mp
import time
import traceback
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .workload import CJK_BASE, EOS_ID, PAD_ID, PEER_STEP, RowStates, SyntheticCatalog, _bitmask_bool, _fill_timing, _result_row, _rss_bytes, time_step


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
        from ..core.index import SidIndex

        self.cat = cat
        gc.collect()
        t0 = time.perf_counter()
        self.index = SidIndex.build(cat.layout, [cat.tokens])
        dt = time.perf_counter() - t0
        self.memory_bytes = self.index.memory_bytes
        return dt

    def prepare(self, states: RowStates) -> None:
        from ..core.index import DecodeState

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

        from ..core.index import SidIndex

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
