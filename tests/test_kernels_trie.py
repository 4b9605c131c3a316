"""GPU trie step (DeviceTrie) vs a pure-Python dict-trie oracle, both backends, random catalogs/walks."""
import os

import numpy as np
import pytest
import torch

from neo.kernels import DeviceTrie
from neo.kernels.reference import ERROR, OUTSIDE, unpack_bitmask

_INTERP = os.environ.get("TRITON_INTERPRET", "0") == "1"
DEVICES = (["cpu"] if _INTERP else []) + (["cuda"] if torch.cuda.is_available() else [])
BACKENDS = [("torch", "cpu")] + [("triton", d) for d in DEVICES] + (
    [("torch", "cuda")] if torch.cuda.is_available() else [])

OPEN, CLOSE = 1, 2


# ----------------------------------------------------------------------------------- catalog builder
def build_arrays(codes: np.ndarray, band_size, band_start):
    """SidIndex-style arrays from per-item codes ``(n_items, L)`` (first item wins on collisions)."""
    n, L = codes.shape
    uniq, first = np.unique(codes, axis=0, return_index=True)
    prefixes = [np.zeros((1, 0), np.int64)] + [np.unique(uniq[:, :d], axis=0) for d in range(1, L)]
    prefixes.append(uniq)
    counts = [p.shape[0] for p in prefixes]
    depth_begin = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    code = np.concatenate([[0]] + [p[:, -1] for p in prefixes[1:]]).astype(np.uint16)
    cb = []
    for d in range(L):
        children = prefixes[d + 1]
        if d == 0:
            inv = np.zeros(children.shape[0], np.int64)
        else:
            _, inv = np.unique(children[:, :d], axis=0, return_inverse=True)
            inv = inv.reshape(-1)
        per_parent = np.bincount(inv, minlength=counts[d])
        cb.append(depth_begin[d + 1] + np.concatenate([[0], np.cumsum(per_parent)[:-1]]))
    child_begin = np.concatenate(cb + [[depth_begin[-1]]]).astype(np.uint32)
    node_of = {}
    for d, p in enumerate(prefixes):
        for j, row in enumerate(p):
            node_of[tuple(int(v) for v in row)] = int(depth_begin[d] + j)
    leaf_item = first.astype(np.int32)
    arrays = dict(depth_begin=depth_begin, child_begin=child_begin, code=code, leaf_item=leaf_item,
                  band_start=np.asarray(band_start, np.int32), band_size=np.asarray(band_size, np.int32))
    leaves = {tuple(int(v) for v in uniq[j]): int(first[j]) for j in range(uniq.shape[0])}
    return arrays, node_of, leaves


def random_catalog(rng, n_items, band_size, shared_prefixes=None):
    L = len(band_size)
    if shared_prefixes:  # strong prefix sharing: few distinct first levels
        heads = rng.integers(0, band_size[0], size=shared_prefixes)
        c0 = heads[rng.integers(0, shared_prefixes, size=n_items)]
        rest = [rng.integers(0, k, size=n_items) for k in band_size[1:]]
        codes = np.stack([c0] + rest, 1)
    else:
        codes = np.stack([rng.integers(0, k, size=n_items) for k in band_size], 1)
    band_start = 10 + np.concatenate([[0], np.cumsum(band_size)[:-1]])
    return codes, band_start


# ----------------------------------------------------------------------------------- oracle
class Oracle:
    """Dict-trie semantics: states are 'out', 'err' or a code-prefix tuple."""

    def __init__(self, leaves, band_start, band_size):
        self.leaves = leaves  # code tuple -> item
        self.L = len(band_size)
        self.band_start = [int(b) for b in band_start]
        self.band_size = [int(b) for b in band_size]

    def _ok(self, item, excl, allow):
        return item not in excl and (allow is None or item in allow)

    def offered(self, prefix, excl, allow):
        d = len(prefix)
        return {t[d] for t, it in self.leaves.items() if t[:d] == prefix and self._ok(it, excl, allow)}

    def step(self, st, tok, excl, allow):
        if tok < 0 or st == "err":
            return st
        if st == "out":
            return () if tok == OPEN else "out"
        if len(st) == self.L:
            return "out" if tok == CLOSE else "err"
        d = len(st)
        c = tok - self.band_start[d]
        if 0 <= c < self.band_size[d] and c in self.offered(st, excl, allow):
            return st + (c,)
        return "err"

    def band(self, st, excl, allow):
        """(band_start, allowed codes, at_leaf, item)."""
        if st in ("out", "err"):
            return -1, set(), False, -1
        if len(st) == self.L:
            return -1, set(), True, self.leaves[st]
        return self.band_start[len(st)], self.offered(st, excl, allow), False, -1


def _check(out, states, oracle, node_of, excls, allows):
    bits = unpack_bitmask(out.bitmap.cpu(), out.bitmap.shape[1] * 32)
    for r, st in enumerate(states):
        exp_node = {"out": OUTSIDE, "err": ERROR}.get(st, None) if isinstance(st, str) else node_of[st]
        assert int(out.node[r]) == exp_node, (r, st)
        bs, codes, leaf, item = oracle.band(st, excls[r], allows[r])
        assert int(out.band_start[r]) == bs, (r, st)
        got = set(torch.nonzero(bits[r]).flatten().tolist())
        assert got == codes, (r, st, sorted(got), sorted(codes))
        assert bool(out.at_leaf[r]) == leaf
        assert int(out.item[r]) == item
        assert int(out.num_allowed[r]) == len(codes)


def _walk(rng, dt, oracle, node_of, excls, allows, rows, steps, backend, device, p_bad=0.12):
    filt = dt.make_filter(rows, exclude=[sorted(e) for e in excls], allow=[
        None if a is None else sorted(a) for a in allows])
    states = ["out" if r % 5 == 4 else () for r in range(rows)]
    node = torch.tensor([OUTSIDE if s == "out" else 0 for s in states], dtype=torch.int64,
                        device=device)
    out = dt.step(node, None, filt, backend=backend)
    _check(out, states, oracle, node_of, excls, allows)
    hi_tok = oracle.band_start[-1] + oracle.band_size[-1] + 3
    for _ in range(steps):
        toks = []
        for r, st in enumerate(states):
            bs, codes, leaf, _ = oracle.band(st, excls[r], allows[r])
            if rng.random() < p_bad or st in ("out", "err"):
                t = int(rng.choice([OPEN, CLOSE, 0, -1, int(rng.integers(0, hi_tok))]))
            elif leaf:
                t = CLOSE
            elif codes:
                t = bs + int(rng.choice(sorted(codes)))
            else:
                t = int(rng.integers(0, hi_tok))
            toks.append(t)
        states = [oracle.step(st, t, excls[r], allows[r]) for r, (st, t) in enumerate(zip(states, toks))]
        out = dt.step(out.node, torch.tensor(toks, dtype=torch.int64, device=device), filt,
                      backend=backend)
        _check(out, states, oracle, node_of, excls, allows)
    return states


CATALOGS = [
    # (n_items, band sizes, shared prefixes)
    (60, [5, 7], None),
    (300, [4, 6, 33], 2),
    (500, [40, 32, 31, 3], None),
    (200, [64, 2, 70], 3),
]


WALKS = [("torch", "cpu", c) for c in range(len(CATALOGS))] + [
    (b, d, c) for b, d in BACKENDS if (b, d) != ("torch", "cpu") for c in (1, 2)]


@pytest.mark.parametrize("backend,device,cat", WALKS)
def test_random_walks_match_oracle(backend, device, cat):
    rng = np.random.default_rng(100 + cat)
    n_items, bsz, shared = CATALOGS[cat]
    codes, band_start = random_catalog(rng, n_items, bsz, shared)
    arrays, node_of, leaves = build_arrays(codes, bsz, band_start)
    oracle = Oracle(leaves, band_start, bsz)
    dt = DeviceTrie(arrays, device=device, open_id=OPEN, close_id=CLOSE)
    rows = 12 if backend == "torch" else 6
    items = sorted(set(leaves.values()))
    excls, allows = [], []
    for r in range(rows):
        kind = r % 4
        ex = set(rng.choice(n_items, size=int(rng.integers(0, n_items // 2)), replace=False).tolist()) \
            if kind in (1, 3) else set()
        if kind == 2:  # small allow-list
            al = set(rng.choice(items, size=min(len(items), 5), replace=False).tolist())
        elif kind == 3:  # allow-list overlapping the exclusions
            al = set(rng.choice(n_items, size=n_items // 3, replace=False).tolist())
        else:
            al = None
        excls.append(ex)
        allows.append(al)
    _walk(rng, dt, oracle, node_of, excls, allows, rows, steps=(3 if backend == "torch" else 2) * len(bsz) + 2,
          backend=backend, device=device)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_exclusions_close_whole_subtrees(backend, device):
    """Excluding every item under a first-level code removes that code; the rest stays."""
    rng = np.random.default_rng(7)
    codes, band_start = random_catalog(rng, 200, [6, 8, 5])
    arrays, node_of, leaves = build_arrays(codes, [6, 8, 5], band_start)
    dt = DeviceTrie(arrays, device=device, open_id=OPEN, close_id=CLOSE)
    under0 = [it for t, it in leaves.items() if t[0] == 0]
    filt = dt.make_filter(2, exclude=[under0, []])
    out = dt.step(dt.root_state(2), None, filt, backend=backend)
    bits = unpack_bitmask(out.bitmap.cpu(), 32)
    assert not bool(bits[0, 0]) and bool(bits[1, 0])
    assert bits[0, 1:6].tolist() == bits[1, 1:6].tolist()
    # a token that is not offered is a sticky error
    out2 = dt.step(out.node, torch.tensor([int(band_start[0]), int(band_start[0])], device=device),
                   filt, backend=backend)
    assert int(out2.node[0]) == ERROR and int(out2.node[1]) >= 0
    out3 = dt.step(out2.node, torch.tensor([OPEN, -1], device=device), filt, backend=backend)
    assert int(out3.node[0]) == ERROR and int(out3.band_start[0]) == -1
    # an empty allow-list offers nothing; no allow-list offers everything
    filt = dt.make_filter(2, allow=[[], None])
    out = dt.step(dt.root_state(2), None, filt, backend=backend)
    assert int(out.num_allowed[0]) == 0 and int(out.num_allowed[1]) == len({t[0] for t in leaves})


def test_backends_agree_and_reject_bad_arrays():
    rng = np.random.default_rng(3)
    codes, band_start = random_catalog(rng, 100, [3, 40])
    arrays, _, _ = build_arrays(codes, [3, 40], band_start)
    bad = dict(arrays, child_begin=arrays["child_begin"][:-1])
    with pytest.raises(ValueError, match="child_begin"):
        DeviceTrie(bad)
    with pytest.raises(KeyError, match="code"):
        DeviceTrie({k: v for k, v in arrays.items() if k != "code"})


def _cpp_index(rng, sizes, n_items):
    from neo import SidIndex, TokenLayout

    layout = TokenLayout.contiguous(40, {"movie": sizes})
    codes = np.unique(np.stack([rng.integers(0, k, size=n_items) for k in sizes], 1), axis=0)
    rows = rng.permutation(len(codes) * 2)[: len(codes)]
    index = SidIndex.build(layout, {"movie": layout.codes_to_tokens("movie", codes)}, {"movie": rows})
    return layout, index, rows


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_matches_cpp_core(backend, device):
    """Same arrays, same options, same tokens: DeviceTrie equals neo.DecodeState (C++ core)."""
    core = pytest.importorskip("neo._core")
    if not hasattr(core, "SidIndex"):
        pytest.skip("neo._core.SidIndex not built")
    from neo import DecodeState
    from neo.core.index import RowStatus

    rng = np.random.default_rng(11)
    sizes = [6, 33, 5]
    layout, index, rows = _cpp_index(rng, sizes, 150)
    dt = DeviceTrie(index.arrays("movie"), device=device, open_id=layout.open_id,
                    close_id=layout.close_id)
    R = 8 if backend == "torch" else 6
    eos = 0
    state = DecodeState(index, R, eos_token_ids=[eos])
    excls, allows = [], []
    for r in range(R):
        ex = rng.choice(rows, size=int(rng.integers(0, 60)), replace=False) if r % 2 else None
        al = rng.choice(rows, size=12, replace=False) if r % 4 == 2 else None
        state.set_row_options(r, format="mixed", allowed_types=["movie"], exclude=ex, allow=al,
                              exclude_emitted=False)
        excls.append(None if ex is None else ex.tolist())
        allows.append(None if al is None else al.tolist())
    filt = dt.make_filter(R, exclude=excls, allow=allows)
    node = torch.full((R,), OUTSIDE, dtype=torch.int64, device=device)
    out = dt.step(node, None, filt, backend=backend)
    bs0 = layout.types[0].band_starts
    W = state.bitmask_shape[1]
    for _ in range(30 if backend == "torch" else 12):
        mask = np.zeros((R, W), np.int32)
        state.fill_next_token_bitmask(mask)
        allowed = unpack_bitmask(torch.from_numpy(mask), layout.vocab_size)
        st = state.status
        for r in range(R):
            if st[r] == RowStatus.SPAN:
                assert int(out.node[r]) >= 0
                got = torch.zeros(layout.vocab_size, dtype=torch.bool)
                if bool(out.at_leaf[r]):
                    got[layout.close_id] = True
                else:
                    b = int(out.band_start[r])
                    bits = unpack_bitmask(out.bitmap[r:r + 1].cpu(), dt.n_words * 32)[0]
                    idx = torch.nonzero(bits).flatten() + b
                    got[idx] = True
                assert torch.equal(got, allowed[r]), r
            elif st[r] == RowStatus.ERROR:
                assert int(out.node[r]) == ERROR
            else:
                assert st[r] == RowStatus.TEXT and int(out.node[r]) == OUTSIDE
        toks = []
        for r in range(R):
            ok = torch.nonzero(allowed[r]).flatten()
            if st[r] == RowStatus.TEXT:  # only [SID] or a plain text token (never EOS)
                t = layout.open_id if rng.random() < 0.7 else int(rng.integers(1, bs0[0] - 2))
            elif rng.random() < 0.1 or len(ok) == 0:
                t = int(rng.integers(bs0[0], layout.vocab_size))
            else:
                t = int(ok[int(rng.integers(0, len(ok)))])
            toks.append(t)
        state.advance(np.asarray(toks, np.int64))
        out = dt.step(out.node, torch.tensor(toks, device=device), filt, backend=backend)
