"""The C++ core against the pure-Python oracle on random catalogs: masks and transitions identical."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import neo
from neo import DecodeState, SidIndex, TokenLayout

from _oracle import DONE, ERROR, SPAN, TEXT, Oracle, OracleRow

TEXT_VOCAB = 40
_WALK_TOTALS = {"completions": 0}
EOS, SEPS = [1], [5, 6]


def random_catalog(rng: np.random.Generator, sharing: str):
    """A random multi-type catalog; returns layout, per-type tokens, per-type item rows."""
    ntypes = int(rng.integers(1, 4))
    sizes = {}
    for t in range(ntypes):
        levels = int(rng.integers(2, 7))
        sizes[f"t{t}"] = [int(rng.choice([2, 3, 5, 8, 31, 32, 33, 64, 200, 1024])) for _ in range(levels)]
    layout = TokenLayout.contiguous(TEXT_VOCAB, sizes, pad_to_multiple_of=int(rng.choice([1, 32])))
    tokens, rows = [], []
    next_row = 0
    for t, tb in enumerate(layout.types):
        n = int(rng.integers(0 if t else 1, 120))
        cols = []
        for k in tb.codebook_sizes:
            # heavy sharing: few distinct codes per level (deep common prefixes); light: uniform.
            hi = min(k, 3) if sharing == "heavy" else k
            cols.append(rng.integers(0, hi, size=n))
        codes = np.stack(cols, 1) if n else np.zeros((0, tb.levels), np.int64)
        codes = np.unique(codes, axis=0) if n else codes
        rng.shuffle(codes)
        tokens.append(layout.codes_to_tokens(t, codes) if len(codes) else np.zeros((0, tb.levels), np.int32))
        # sparse, shuffled item rows, unique across types
        rows.append(next_row + rng.permutation(len(codes)) * 2)
        next_row += 2 * len(codes) + 3
    return layout, tokens, rows


def random_options(rng, layout, all_items):
    opts = {"format": str(rng.choice(["mixed", "ids", "text", "mixed", "ids"]))}
    if rng.random() < 0.4:
        k = int(rng.integers(1, layout.num_types + 1))
        opts["allowed_types"] = sorted(rng.choice(layout.num_types, size=k, replace=False).tolist())
    if rng.random() < 0.5 and all_items:
        opts["exclude"] = rng.choice(all_items, size=int(rng.integers(1, len(all_items) + 1)), replace=True).tolist()
    if rng.random() < 0.3 and all_items:
        opts["allow"] = rng.choice(all_items, size=int(rng.integers(0, len(all_items) + 1)), replace=False).tolist()
    opts["exclude_emitted"] = bool(rng.random() < 0.7)
    if rng.random() < 0.3:
        opts["max_items"] = int(rng.integers(0, 4))
    return opts


def oracle_row(opts) -> OracleRow:
    return OracleRow(
        format=opts["format"],
        allowed_types=set(opts["allowed_types"]) if "allowed_types" in opts else None,
        exclude=set(opts.get("exclude", [])),
        allow=set(opts["allow"]) if "allow" in opts else None,
        exclude_emitted=opts["exclude_emitted"],
        max_items=opts.get("max_items"),
    )


def unpack(bitmask: np.ndarray, vocab: int) -> np.ndarray:
    bits = (bitmask[:, :, None].view(np.uint32) >> np.arange(32, dtype=np.uint32)) & 1
    return bits.reshape(bitmask.shape[0], -1)[:, :vocab].astype(bool)


@pytest.mark.parametrize("seed", range(40))
def test_random_walks_match_oracle(seed):
    rng = np.random.default_rng(seed)
    layout, tokens, rows = random_catalog(rng, "heavy" if seed % 2 else "light")
    index = SidIndex.build(layout, tokens, rows)
    oracle = Oracle(layout, tokens, rows, EOS, SEPS)
    all_items = sorted(oracle.sid)
    assert index.num_items == len(all_items)

    R = int(rng.integers(1, 9))
    state = DecodeState(index, R, EOS, SEPS, num_threads=int(rng.choice([0, 1])))
    orows = []
    for r in range(R):
        opts = random_options(rng, layout, all_items)
        state.set_row_options(r, **opts)
        orows.append(oracle_row(opts))
    V = layout.vocab_size
    W = (V + 31) // 32
    pitch = W + int(rng.integers(0, 3))
    buf = np.full((R + 2, pitch), 12345, dtype=np.int32)  # garbage: fill must overwrite it
    incremental = bool(rng.random() < 0.5)

    could_open = any(oracle.can_open(o) for o in orows)
    span_steps = completions = 0
    for step in range(60):
        state.fill_next_token_bitmask(buf[:R], incremental=incremental)
        span_steps += int((state.status == SPAN).sum())
        got = unpack(buf[:R, :W], V)
        for r in range(R):
            want = oracle.mask(orows[r])
            if not np.array_equal(got[r], want):
                diff = np.flatnonzero(got[r] != want)[:10]
                raise AssertionError(f"seed {seed} step {step} row {r} status {orows[r].status}: mask differs at {diff}")
            assert (buf[r, W:] == 0).all(), "words past the vocabulary must be 0"
            assert state.status[r] == orows[r].status
        # choose tokens: mostly allowed, sometimes anything (rule breaks must error, not crash)
        toks = []
        for r in range(R):
            allowed = np.flatnonzero(oracle.mask(orows[r]))
            u = rng.random()
            if u < 0.96 and len(allowed):
                # open spans often so walks reach deep states (text offers ~40 other tokens)
                if layout.open_id in allowed and rng.random() < 0.5:
                    toks.append(layout.open_id)
                else:
                    toks.append(int(rng.choice(allowed)))
            elif u < 0.98:
                toks.append(int(rng.integers(0, V)))
            else:
                toks.append(int(rng.choice([-3, V, V + 100, layout.open_id, layout.close_id])))
        completed = state.advance(np.asarray(toks, dtype=np.int64))
        for r in range(R):
            want_item = oracle.advance(orows[r], toks[r]) if 0 <= toks[r] < V or orows[r].status in (DONE, ERROR) else _oob(orows[r])
            assert completed[r] == want_item, (seed, step, r)
            completions += int(want_item >= 0)
            assert state.status[r] == orows[r].status, (seed, step, r, state.error(r))
            if orows[r].status == ERROR:
                assert state.error(r), "an ERROR row must say why"
            assert list(state.emitted(r)) == orows[r].emitted
        # beam-search style reorder / resize, and resets
        u = rng.random()
        if u < 0.2:
            newR = int(rng.integers(max(1, R - 1), R + 2)) if R + 2 <= buf.shape[0] else R
            src = rng.integers(0, R, size=newR)
            state.reorder(src)
            orows = [copy.deepcopy(orows[s]) for s in src]
            R = newR
        # restart finished or failed rows (and now and then any row) so walks keep exercising spans
        restart = [r for r in range(R) if orows[r].status in (DONE, ERROR) and rng.random() < 0.5]
        if rng.random() < 0.1:
            restart.append(int(rng.integers(0, R)))
        if restart:
            state.reset(restart)
            for r in set(restart):
                o = orows[r]
                o.status, o.type, o.prefix, o.emitted = TEXT, None, (), []


    if could_open:
        assert span_steps > 0, "the walk never exercised a span"
    _WALK_TOTALS["completions"] += completions


def _oob(row: OracleRow) -> int:
    row.status = ERROR
    return -1


def test_indices_fill_and_advance_match_full():
    rng = np.random.default_rng(7)
    layout, tokens, rows = random_catalog(rng, "light")
    index = SidIndex.build(layout, tokens, rows)
    a = DecodeState(index, 6, EOS, SEPS)
    b = DecodeState(index, 6, EOS, SEPS)
    V = layout.vocab_size
    full = np.zeros(a.bitmask_shape, np.int32)
    part = np.zeros(a.bitmask_shape, np.int32)
    for _ in range(20):
        a.fill_next_token_bitmask(full)
        b.fill_next_token_bitmask(part, indices=np.array([5, 0, 3]))
        b.fill_next_token_bitmask(part, indices=[1, 2, 4])
        assert np.array_equal(full, part)
        m = unpack(full, V)
        toks = np.array([rng.choice(np.flatnonzero(m[r])) for r in range(6)])
        ca = a.advance(toks)
        cb = np.empty(6, np.int32)
        cb[[4, 1]] = b.advance(toks[[4, 1]], indices=[4, 1])
        cb[[0, 2, 3, 5]] = b.advance(toks[[0, 2, 3, 5]], indices=[0, 2, 3, 5])
        assert np.array_equal(ca, cb)
        assert np.array_equal(a.status, b.status)


def test_fully_excluded_subtree_is_not_offered():
    # two items share prefix (a, b); excluding both must close that prefix, not strand the row.
    layout = TokenLayout.contiguous(10, {"movie": [4, 4, 4]})
    codes = np.array([[0, 1, 0], [0, 1, 1], [0, 2, 0], [3, 3, 3]])
    toks = layout.codes_to_tokens("movie", codes)
    index = SidIndex.build(layout, [toks])
    state = DecodeState(index, 1, [1])
    state.set_row_options(0, format="ids", exclude=[0, 1])
    bm = np.zeros(state.bitmask_shape, np.int32)
    state.advance([layout.open_id])
    state.advance([toks[0, 0]])
    state.fill_next_token_bitmask(bm)
    m = unpack(bm, layout.vocab_size)[0]
    assert not m[toks[0, 1]], "prefix whose items are all excluded must not be offered"
    assert m[toks[2, 1]]
    # excluding everything: [SID] no longer offered at all, EOS still is
    state.set_row_options(0, format="ids", exclude=[0, 1, 2, 3])
    state.fill_next_token_bitmask(bm)
    m = unpack(bm, layout.vocab_size)[0]
    assert not m[layout.open_id] and m[1]
    state.advance([layout.open_id])
    assert state.status[0] == neo.RowStatus.ERROR
    assert "no item" in state.error(0)


def test_exclude_emitted_and_done_state():
    layout = TokenLayout.contiguous(10, {"movie": [2, 2]})
    codes = np.array([[0, 0], [0, 1]])
    toks = layout.codes_to_tokens("movie", codes)
    index = SidIndex.build(layout, [toks], [np.array([10, 20])])
    st = DecodeState(index, 1, eos_token_ids=[1], separator_token_ids=[3])
    st.set_row_options(0, format="ids")
    seq = [layout.open_id, toks[0, 0], toks[0, 1], layout.close_id, 3, layout.open_id, toks[0, 0]]
    out = [int(st.advance([t])[0]) for t in seq]
    assert out == [-1, -1, -1, 10, -1, -1, -1]
    # item 10 was emitted: only the other leaf is offered now
    assert not st.is_allowed(0, toks[0, 1]) and st.is_allowed(0, toks[1, 1])
    st.advance([toks[1, 1]])
    assert st.advance([layout.close_id])[0] == 20
    # every item emitted: no new span, EOS ends the row, DONE allows only EOS
    assert not st.is_allowed(0, layout.open_id) and st.is_allowed(0, 1)
    st.advance([1])
    assert st.status[0] == neo.RowStatus.DONE
    assert [t for t in range(layout.vocab_size) if st.is_allowed(0, t)] == [1]
    st.reset()
    assert st.status[0] == neo.RowStatus.TEXT and len(st.emitted(0)) == 0


def test_walks_completed_items():
    """Guards the walk generator itself: over the seeds above, many spans must have completed."""
    if _WALK_TOTALS["completions"] == 0:
        for seed in range(10):
            test_random_walks_match_oracle(seed)
    assert _WALK_TOTALS["completions"] >= 20
