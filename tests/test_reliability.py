"""Regression tests for issue 16: the bitmask fill honours any row pitch and never writes outside the
view it is given (A), special files fail fast in SidIndex.load (B), empty batches (C), non-integer
token ids raise TypeError (D), duplicate fill indices on the thread-pool path (H)."""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
import pytest
import torch

import neo
from neo import DecodeState, IndexFormatError, SidIndex, TokenLayout
from neo.lm.processor import SidLogitsProcessor, SidMasker

GUARD = 0x5A5A5A5A


@pytest.fixture(scope="module")
def tiny():
    """The issue's catalog: vocabulary 50 (2 mask words), two items."""
    lay = TokenLayout.contiguous(40, {"m": [4, 4]})
    ix = SidIndex.build(lay, {"m": lay.codes_to_tokens("m", np.array([[0, 1], [2, 3]]))})
    return lay, ix


@pytest.fixture(scope="module")
def wide():
    """A catalog over a vocabulary of several words (~1,300 tokens), two item types."""
    rng = np.random.default_rng(16)
    lay = TokenLayout.contiguous(1000, {"movie": [16, 16, 8], "tag": [32, 4]})
    movie = np.unique(rng.integers(0, [16, 16, 8], size=(400, 3)), axis=0)
    tag = np.unique(rng.integers(0, [32, 4], size=(60, 2)), axis=0)
    toks = {"movie": lay.codes_to_tokens("movie", movie), "tag": lay.codes_to_tokens("tag", tag)}
    return lay, toks, SidIndex.build(lay, toks)


def _plan(lay: TokenLayout, toks, rows: int, steps: int, seed: int = 0) -> list[np.ndarray]:
    """Tokens for ``steps`` advances of ``rows`` rows: spans of real items, closes and text, shifted per
    row so that the rows sit in different states (and masks) at every step."""
    rng = np.random.default_rng(seed)
    seqs = [[lay.open_id, *toks["movie"][rng.integers(len(toks["movie"]))], lay.close_id, 7] for _ in range(rows)]
    return [np.array([seqs[r][(i + r) % len(seqs[r])] for r in range(rows)]) for i in range(steps)]


# ---------------------------------------------------------------------------------------------- A
def test_issue_repro_slice_keeps_the_words_past_it(tiny):
    lay, ix = tiny
    st = DecodeState(ix, 4, [2], [])
    W = st.bitmask_shape[1]
    big = np.full((4, W + 8), 7, np.int32)
    st.fill_next_token_bitmask(big[:, :W])
    assert (big[:, W:] == 7).all()  # used to be overwritten with 0
    ref = np.zeros((4, W), np.int32)
    st.fill_next_token_bitmask(ref)
    np.testing.assert_array_equal(big[:, :W], ref)


def test_issue_repro_large_column_offset_does_not_crash(tiny):
    # the issue's SIGSEGV: a slice starting 4,000,000 words into each row (here 1,000,000 keeps it small)
    lay, ix = tiny
    st = DecodeState(ix, 4, [2], [])
    W = st.bitmask_shape[1]
    off = 1_000_000
    big = np.full((4, off + W), GUARD, np.int32)
    st.fill_next_token_bitmask(big[:, off:])
    assert (big[:, :off] == GUARD).all()
    ref = np.zeros((4, W), np.int32)
    st.fill_next_token_bitmask(ref)
    np.testing.assert_array_equal(big[:, off:], ref)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("incremental", [False, True])
def test_fill_into_any_view_writes_exactly_the_view(wide, lib, incremental):
    """Column slices at an offset, extra width, strided and reversed rows: every word outside the view
    keeps its guard value and the view equals a contiguous fill of a twin state, step after step."""
    lay, toks, ix = wide
    R = 6
    W = DecodeState(ix, 1, [1]).bitmask_shape[1]
    views = {  # name -> (buffer shape, the view of the buffer to fill)
        "offset": ((R, W + 11), lambda b: b[:, 5:5 + W]),
        "wider than the vocabulary": ((R, W + 11), lambda b: b[:, 3:3 + W + 2]),
        "every other row": ((2 * R, W + 4), lambda b: b[1::2, 2:2 + W]),
        "reversed rows": ((R, W + 3), lambda b: b[::-1, 1:1 + W]),
        "single row": ((1, W + 9), lambda b: b[:, 9:]),
    }
    for name, (shape, view_of) in views.items():
        if lib == "torch" and name == "reversed rows":
            continue  # torch has no negative strides
        buf = np.full(shape, GUARD, np.int32)
        view = view_of(buf if lib == "numpy" else torch.from_numpy(buf))
        owned = np.zeros(shape, bool)
        view_of(owned)[...] = True
        rows = view.shape[0]
        st, ref = DecodeState(ix, rows, [1]), DecodeState(ix, rows, [1])
        want = np.zeros(ref.bitmask_shape, np.int32)
        for step, tokens in enumerate(_plan(lay, toks, rows, 9, seed=len(name))):
            st.fill_next_token_bitmask(view, incremental=incremental)
            ref.fill_next_token_bitmask(want)
            assert (buf[~owned] == GUARD).all(), (name, step)
            got = np.asarray(view)
            np.testing.assert_array_equal(got[:, :W], want, err_msg=f"{name}, step {step}")
            assert (got[:, W:] == 0).all(), name  # words past the vocabulary are written 0
            st.advance(tokens), ref.advance(tokens)


def test_view_fill_equals_contiguous_fill_with_indices(wide):
    lay, toks, ix = wide
    R = 8
    st = DecodeState(ix, R, [1])
    for tokens in _plan(lay, toks, R, 8):
        st.advance(tokens)
    W = st.bitmask_shape[1]
    buf = np.full((R, W + 6), GUARD, np.int32)
    view = buf[:, 3:3 + W]
    want = np.full((R, W), GUARD, np.int32)
    st.fill_next_token_bitmask(want, indices=[1, 4, 6])
    st.fill_next_token_bitmask(view, indices=[1, 4, 6])
    np.testing.assert_array_equal(view, want)  # rows not named keep GUARD in both
    assert (buf[:, :3] == GUARD).all() and (buf[:, 3 + W:] == GUARD).all()


def test_views_the_fill_cannot_honour_are_refused(wide):
    lay, toks, ix = wide
    st = DecodeState(ix, 3, [1])
    W = st.bitmask_shape[1]
    with pytest.raises(ValueError, match="contiguous within a row"):
        st.fill_next_token_bitmask(np.zeros((3, 2 * W), np.int32)[:, ::2])
    with pytest.raises(ValueError, match="contiguous within a row"):
        st.fill_next_token_bitmask(np.zeros((W, 3), np.int32).T)  # Fortran order
    with pytest.raises(ValueError, match="contiguous within a row"):
        st.fill_next_token_bitmask(torch.zeros(3, 2 * W, dtype=torch.int32)[:, ::2])
    with pytest.raises(ValueError, match="overlap"):
        st.fill_next_token_bitmask(np.lib.stride_tricks.as_strided(np.zeros(W + 8, np.int32), (3, W), (8, 4)))
    with pytest.raises(TypeError, match="native-endian int32"):
        st.fill_next_token_bitmask(np.zeros((3, W), ">i4"))
    with pytest.raises(TypeError, match="int32"):
        st.fill_next_token_bitmask(torch.zeros(3, W, dtype=torch.bool))
    raw = np.zeros(3 * W * 4 + 1, np.uint8)
    unaligned = raw[1:].view(np.int32).reshape(3, W)
    assert not unaligned.flags.aligned
    with pytest.raises(ValueError, match="aligned"):
        st.fill_next_token_bitmask(unaligned)
    ro = np.zeros((3, W), np.int32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        st.fill_next_token_bitmask(ro)


def test_input_arrays_of_any_layout_are_read_correctly(wide):
    """tokens, indices, reorder sources, reset rows, exclusions: strided, unaligned, byte-swapped and
    negative-stride arrays give the same result as their contiguous copies."""
    lay, toks, ix = wide

    def odd_layouts(a: np.ndarray):
        a = np.asarray(a, np.int64)
        strided = np.zeros(2 * len(a), np.int64)
        strided[::2] = a
        raw = np.zeros(a.nbytes + 1, np.uint8)
        unaligned = raw[1:].view(np.int64)
        unaligned[:] = a
        assert len(a) == 0 or not unaligned.flags.aligned
        rev = a[::-1].copy()[::-1]
        return {"strided": strided[::2], "unaligned": unaligned, "big-endian": a.astype(">i8"),
                "reversed view": rev, "int16": a.astype(np.int16), "torch": torch.from_numpy(a.copy())}

    R = 5
    base = DecodeState(ix, R, [1])
    tokens = np.array([lay.open_id, 7, lay.open_id, 3, lay.open_id])
    base.advance(tokens)
    for name, t in odd_layouts(tokens).items():
        s = DecodeState(ix, R, [1])
        s.advance(t)
        np.testing.assert_array_equal(s.status, base.status, err_msg=name)
        for r in range(R):
            assert s.is_allowed(r, toks["movie"][0, 0]) == base.is_allowed(r, toks["movie"][0, 0])
    src = np.array([4, 0, 0, 2, 1, 3])
    base.reorder(src)
    for name, a in odd_layouts(src).items():
        s = DecodeState(ix, R, [1])
        s.advance(tokens)
        s.reorder(a)
        np.testing.assert_array_equal(s.status, base.status, err_msg=name)
    idx = np.array([5, 1, 3])
    W = base.bitmask_shape[1]
    want = np.zeros((6, W), np.int32)
    base.fill_next_token_bitmask(want, indices=idx)
    for name, a in odd_layouts(idx).items():
        got = np.zeros((6, W), np.int32)
        base.fill_next_token_bitmask(got, indices=a)
        np.testing.assert_array_equal(got, want, err_msg=name)
    rows = np.array([0, 4])
    for name, a in odd_layouts(rows).items():
        s = DecodeState(ix, R, [1])
        s.advance(tokens)
        s.reset(a)
        assert s.status[0] == neo.RowStatus.TEXT and s.status[2] == neo.RowStatus.SPAN, name
    excl = ix.lookup(toks["movie"][:40])
    s0 = DecodeState(ix, 1, [1])
    s0.set_row_options(0, exclude=excl, allowed_types=["movie"])
    s0.advance([lay.open_id])
    want = np.zeros(s0.bitmask_shape, np.int32)
    s0.fill_next_token_bitmask(want)
    for name, a in odd_layouts(excl).items():
        if name == "int16":
            continue  # item rows above 32767 would not fit; covered by the others
        s = DecodeState(ix, 1, [1])
        s.set_row_options(0, exclude=a, allowed_types=["movie"])
        s.advance([lay.open_id])
        got = np.zeros_like(want)
        s.fill_next_token_bitmask(got)
        np.testing.assert_array_equal(got, want, err_msg=name)
    # lookup and item_tokens read 2-D / 1-D views correctly too
    t2 = np.asfortranarray(toks["movie"][:5].astype(">i4"))
    np.testing.assert_array_equal(ix.lookup(t2), ix.lookup(toks["movie"][:5]))
    np.testing.assert_array_equal(ix.item_tokens(excl[::-1])[1], ix.item_tokens(excl[::-1].copy())[1])


# ---------------------------------------------------------------------------------------------- B
def _load_with_timeout(path, mmap: bool, timeout: float = 20.0):
    """SidIndex.load in a thread; if it blocks (a FIFO opened for reading waits for a writer), open
    the FIFO for writing to release it, then fail: a regression cannot hang the suite."""
    box: dict = {}

    def run():
        try:
            box["result"] = SidIndex.load(path, mmap=mmap)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass
        t.join(5)
        pytest.fail(f"SidIndex.load({path!r}, mmap={mmap}) blocked for {timeout} s")
    return box


@pytest.mark.parametrize("mmap", [False, True])
def test_load_special_files_fails_fast(tmp_path, mmap):
    fifo = tmp_path / "index.neotrie"
    os.mkfifo(fifo)
    link = tmp_path / "link.neotrie"
    link.symlink_to(fifo)
    sock_path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(sock_path))
    try:
        cases = {fifo: "FIFO", link: "FIFO", tmp_path: "directory", sock_path: "socket",
                 "/dev/null": "character device", "/dev/zero": "character device"}
        for path, kind in cases.items():
            box = _load_with_timeout(os.fspath(path), mmap)
            err = box.get("error")
            assert isinstance(err, IndexFormatError), (path, box)
            assert "not a regular file" in str(err) and kind in str(err) and os.fspath(path) in str(err)
    finally:
        sock.close()


def test_load_path_with_nul_byte_is_refused(tmp_path, wide):
    _, _, ix = wide
    good = tmp_path / "idx"
    ix.save(good)
    with pytest.raises(ValueError, match="NUL"):
        SidIndex.load(os.fspath(good) + "\0.evil")
    with pytest.raises(ValueError, match="NUL"):
        ix.save(os.fspath(tmp_path / "x") + "\0y")


# ---------------------------------------------------------------------------------------------- C
@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_empty_batch_fills_as_a_no_op(tiny, lib):
    lay, ix = tiny
    st = DecodeState(ix, 0, [2], [])
    W = st.bitmask_shape[1]
    assert st.bitmask_shape == (0, W)
    empty = np.zeros((0, W), np.int32) if lib == "numpy" else torch.zeros(0, W, dtype=torch.int32)
    st.fill_next_token_bitmask(empty)
    st.fill_next_token_bitmask(empty, incremental=True)
    st.fill_next_token_bitmask(empty, indices=[])
    assert st.advance(np.zeros(0, np.int64)).shape == (0,)
    # reachable from a real batch: reorder to nothing, then fill
    st = DecodeState(ix, 3, [2], [])
    st.reorder([])
    assert st.num_rows == 0
    st.fill_next_token_bitmask(empty)
    # a bitmask with more rows than the (empty) state is left alone
    spare = np.full((2, W), 7, np.int32)
    st.fill_next_token_bitmask(spare)
    assert (spare == 7).all()


def test_zero_word_mask_says_how_many_words_it_needs(tiny):
    lay, ix = tiny
    W = (lay.vocab_size + 31) // 32
    for rows in (0, 3):
        st = DecodeState(ix, rows, [2], [])
        with pytest.raises(ValueError, match=f"needs {W}"):
            st.fill_next_token_bitmask(np.zeros((rows, 0), np.int32))
        with pytest.raises(ValueError, match=f"needs {W}"):
            st.fill_next_token_bitmask(np.zeros((rows, W - 1), np.int32))


# ---------------------------------------------------------------------------------------------- D
def test_float_eos_is_refused(tiny):
    lay, ix = tiny
    with pytest.raises(TypeError, match="eos_token_ids"):
        DecodeState(ix, 2, [2.5], [])  # the issue's repro: silently truncated to 2
    with pytest.raises(TypeError, match="eos_token_ids"):
        DecodeState(ix, 2, [2.0], [])
    with pytest.raises(TypeError, match="eos_token_ids"):
        DecodeState(ix, 2, [True], [])
    with pytest.raises(TypeError, match="separator_token_ids"):
        DecodeState(ix, 2, [2], [3.5])
    with pytest.raises(TypeError, match="eos_token_ids"):
        DecodeState(ix, 2, torch.tensor([2.5]), [])
    with pytest.raises(TypeError, match="num_rows"):
        DecodeState(ix, 2.0, [2], [])
    # integers of any kind are fine
    DecodeState(ix, np.int64(2), np.array([2], np.uint8), (3,))
    DecodeState(ix, 2, 2, [])  # a single id


def test_non_integer_ids_raise_type_error_in_the_decode_state(wide):
    lay, toks, ix = wide
    st = DecodeState(ix, 2, [1])
    W = st.bitmask_shape[1]
    item = int(ix.lookup(toks["movie"][:1])[0])
    bad_calls = {
        "advance float": lambda: st.advance(np.array([lay.open_id, 7.5])),
        "advance float list": lambda: st.advance([float(lay.open_id), 7.0]),
        "advance bool": lambda: st.advance(np.array([True, False])),
        "advance torch float": lambda: st.advance(torch.tensor([1.0, 2.0])),
        "advance indices": lambda: st.advance([7], indices=[0.0]),
        "fill indices": lambda: st.fill_next_token_bitmask(np.zeros((2, W), np.int32), indices=[0.5]),
        "fill bool indices": lambda: st.fill_next_token_bitmask(np.zeros((2, W), np.int32), indices=[True]),
        "reorder": lambda: st.reorder([0.0, 1.0]),
        "reset": lambda: st.reset(np.array([1.5])),
        "row": lambda: st.set_row_options(0.0),
        "exclude": lambda: st.set_row_options(0, exclude=[float(item)]),
        "allow": lambda: st.set_row_options(0, allow=np.array([item], np.float32)),
        "allow bool": lambda: st.set_row_options(0, allow=np.array([True])),
        "max_items": lambda: st.set_row_options(0, max_items=1.5),
        "max_items bool": lambda: st.set_row_options(0, max_items=True),
        "allowed_types": lambda: st.set_row_options(0, allowed_types=[0.0]),
        "allowed_types bool": lambda: st.set_row_options(0, allowed_types=[True]),
        "is_allowed": lambda: st.is_allowed(0, 7.0),
        "error": lambda: st.error(0.0),
        "emitted": lambda: st.emitted(np.float64(0)),
    }
    for name, call in bad_calls.items():
        with pytest.raises(TypeError):
            call()
        assert (st.status == neo.RowStatus.TEXT).all(), name  # nothing advanced by a refused call
    st.set_row_options(0, allowed_types="movie", max_items=np.int32(1))  # a bare name and numpy ints work


def test_non_integer_ids_raise_type_error_in_the_index_and_layout(wide):
    lay, toks, ix = wide
    t = toks["movie"][:4]
    with pytest.raises(TypeError, match="sid_tokens\\['movie'\\]"):
        SidIndex.build(lay, {"movie": t.astype(np.float64) + 0.5})
    with pytest.raises(TypeError, match="sid_tokens"):
        SidIndex.build(lay, {"movie": torch.from_numpy(t).float()})
    with pytest.raises(TypeError, match="item_rows"):
        SidIndex.build(lay, {"movie": t}, {"movie": np.arange(4) + 0.0})
    with pytest.raises(TypeError, match="item_rows"):
        SidIndex.build(lay, {"movie": t}, {"movie": [True, False, True, False]})
    with pytest.raises(TypeError, match="sid_tokens"):
        ix.lookup(t.astype(np.float32))
    with pytest.raises(TypeError, match="item_rows"):
        ix.item_tokens([0.0, 1.0])
    with pytest.raises(TypeError, match="node"):
        ix.children("movie", 0.0)
    with pytest.raises(TypeError):
        ix.num_type_items(0.0)
    with pytest.raises(TypeError, match="vocab_size"):
        TokenLayout(100.0, 50, 51, [neo.TypeBands("m", (10,), (60,))])
    with pytest.raises(TypeError, match="band start"):
        TokenLayout(100, 50, 51, [neo.TypeBands("m", (10,), (60.5,))])
    with pytest.raises(TypeError, match="base_vocab_size"):
        TokenLayout.contiguous(40.5, {"m": [4, 4]})
    with pytest.raises(TypeError, match="codebook size"):
        TokenLayout.contiguous(40, {"m": [4, 4.0]})
    with pytest.raises(TypeError, match="codes"):
        lay.codes_to_tokens("movie", np.array([[0.5, 1, 2]]))
    with pytest.raises(TypeError, match="codes"):
        lay.codes_to_tokens("movie", np.array([[True, False, True]]))
    with pytest.raises(TypeError, match="tokens"):
        lay.tokens_to_codes("movie", t.astype(np.float64))
    with pytest.raises(TypeError, match="token"):
        lay.classify(1000.5)
    with pytest.raises(TypeError, match="item type"):
        lay.type_index(True)
    with pytest.raises(TypeError, match="item type"):
        lay.type_index(1.0)
    d = lay.to_dict()
    d["vocab_size"] = float(d["vocab_size"])
    with pytest.raises(ValueError, match="vocab_size"):
        TokenLayout.from_dict(d)
    assert TokenLayout.from_dict(lay.to_dict()) == lay


def test_non_integer_ids_raise_type_error_in_the_processor(wide):
    lay, toks, ix = wide
    with pytest.raises(TypeError, match="eos_token_id"):
        SidLogitsProcessor(ix, 2.5)
    with pytest.raises(TypeError, match="eos_token_id"):
        SidLogitsProcessor(ix, [2, 2.5])
    with pytest.raises(TypeError, match="separator_token_ids"):
        SidLogitsProcessor(ix, 2, separator_token_ids=[3.0])
    with pytest.raises(TypeError, match="max_items"):
        SidLogitsProcessor(ix, 2, max_items=1.5)
    with pytest.raises(TypeError, match="max_items"):
        SidLogitsProcessor(ix, 2, max_items=[1, True])
    with pytest.raises(TypeError, match="eos_token_ids"):
        SidMasker(ix, 2, [2.5])
    with pytest.raises(TypeError, match="separator_token_ids"):
        SidMasker(ix, 2, [2], [np.float64(3)])
    p = SidLogitsProcessor(ix, 2, exclude=[0.5])
    with pytest.raises(TypeError, match="exclude"):
        p(torch.tensor([[5, 6]]), torch.zeros(1, lay.vocab_size))
    SidLogitsProcessor(ix, np.int64(2), separator_token_ids=np.array([3]), max_items=[1, None])


# ---------------------------------------------------------------------------------------------- H
@pytest.mark.parametrize("rows", [8, 600, 2048])
def test_duplicate_fill_indices_are_refused(wide, rows):
    """>= 512 rows take the thread pool, where two workers would write one row; any batch refuses them."""
    lay, toks, ix = wide
    st = DecodeState(ix, rows, [1], num_threads=0)
    for tokens in _plan(lay, toks, rows, 3):
        st.advance(tokens)
    W = st.bitmask_shape[1]
    idx = np.arange(rows)
    idx[-1] = rows // 3
    mask = np.full((rows, W), 7, np.int32)
    with pytest.raises(ValueError, match=rf"indices\[{rows - 1}\] = {rows // 3} repeats"):
        st.fill_next_token_bitmask(mask, indices=idx)
    assert (mask == 7).all()  # refused before writing anything
    # distinct indices in any order: the same masks as a full fill
    perm = np.random.default_rng(rows).permutation(rows)
    st.fill_next_token_bitmask(mask, indices=perm)
    full = np.zeros_like(mask)
    st.fill_next_token_bitmask(full)
    np.testing.assert_array_equal(mask, full)


def test_non_integer_ids_raise_type_error_in_bitmask_shape_and_vocab(wide):
    with pytest.raises(TypeError, match="batch_size"):
        neo.get_bitmask_shape(2.0, 100)
    with pytest.raises(TypeError, match="vocab_size"):
        neo.get_bitmask_shape(2, 100.5)
    assert neo.get_bitmask_shape(np.int64(3), 65) == (3, 3)
    lay, _, _ = wide
    vocab = neo.SidVocab(lay)
    first = lay.types[0].band_starts[0]
    assert vocab.span_ids([first]) == [vocab.open_id, first, vocab.close_id]
    with pytest.raises(TypeError, match="SID token id"):
        vocab.span_ids([float(first)])
    with pytest.raises(TypeError, match="token id"):
        vocab.span_text([first + 0.5])
    with pytest.raises(TypeError, match="code"):
        vocab.code_token(0, 0, 1.0)
