"""SidIndex / DecodeState: queries, persistence, bad input (clear errors, never a crash)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import neo
from neo import DecodeState, IndexFormatError, SidIndex, TokenLayout


@pytest.fixture()
def small():
    rng = np.random.default_rng(0)
    layout = TokenLayout.contiguous(100, {"movie": [16, 16, 16], "tag": [8, 8]})
    movie = np.unique(rng.integers(0, 16, size=(300, 3)), axis=0)
    tag = np.unique(rng.integers(0, 8, size=(40, 2)), axis=0)
    toks = {"movie": layout.codes_to_tokens("movie", movie), "tag": layout.codes_to_tokens("tag", tag)}
    rows = {"movie": np.arange(len(movie)) * 3, "tag": 100000 + np.arange(len(tag))}
    return layout, toks, rows, SidIndex.build(layout, toks, rows)


def test_lookup_item_tokens_children_stats(small):
    layout, toks, rows, index = small
    assert index.num_items == len(rows["movie"]) + len(rows["tag"])
    np.testing.assert_array_equal(index.lookup(toks["movie"]), rows["movie"])
    np.testing.assert_array_equal(index.lookup(toks["tag"], "tag"), rows["tag"])
    assert index.contains(toks["movie"]).all()
    # a SID that is not in the catalog, a wrong-type lookup, tokens outside the bands
    missing = toks["movie"][:1].copy()
    existing = {tuple(r) for r in toks["movie"].tolist()}
    for c in range(16):
        missing[0, 2] = layout.types[0].band_starts[2] + c
        if tuple(missing[0]) not in existing:
            break
    assert index.lookup(missing)[0] == -1
    assert (index.lookup(toks["movie"][:, :2], "tag") == -1).all()
    assert index.lookup(np.array([[0, 1, 2]]))[0] == -1
    types, back = index.item_tokens(rows["tag"])
    assert (types == 1).all()
    np.testing.assert_array_equal(back[:, :2], toks["tag"])
    assert (back[:, 2] == -1).all()
    root_children = index.children("movie", 0)
    np.testing.assert_array_equal(root_children, np.unique(toks["movie"][:, 0]))
    stats = index.level_stats()
    assert stats[0]["nodes"] == 1 and stats[3]["nodes"] == len(rows["movie"])
    assert index.memory_bytes < 40 * index.num_items + 1000


def test_arrays_are_zero_copy_read_only(small):
    _, _, _, index = small
    a = index.arrays("movie")
    assert a["child_begin"].dtype == np.uint32 and a["code"].dtype == np.uint16
    assert not a["code"].flags.writeable
    with pytest.raises(ValueError):
        a["code"][0] = 1
    db = a["depth_begin"]
    assert db[0] == 0 and db[1] == 1 and a["child_begin"][-1] == db[-1]
    del index  # the views keep the index alive
    assert int(a["leaf_item"].sum()) >= 0


@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_roundtrip(tmp_path, small, mmap):
    layout, toks, rows, index = small
    path = tmp_path / "idx.neoidx"
    index.save(path)
    loaded = SidIndex.load(path, layout, mmap=mmap)
    assert loaded.layout == layout and loaded.num_items == index.num_items
    for t in ("movie", "tag"):
        for k, v in index.arrays(t).items():
            np.testing.assert_array_equal(loaded.arrays(t)[k], v)
    np.testing.assert_array_equal(loaded.lookup(toks["movie"]), rows["movie"])
    # masks from the loaded index are identical
    a, b = DecodeState(index, 1, [1]), DecodeState(loaded, 1, [1])
    ma, mb = np.zeros(a.bitmask_shape, np.int32), np.zeros(b.bitmask_shape, np.int32)
    for tok in [layout.open_id, toks["movie"][5, 0], toks["movie"][5, 1]]:
        a.advance([tok]), b.advance([tok])
        a.fill_next_token_bitmask(ma), b.fill_next_token_bitmask(mb)
        np.testing.assert_array_equal(ma, mb)
    # without a layout: generic type names, same bands
    generic = SidIndex.load(path)
    assert generic.layout.type_names == ["type0", "type1"]
    other = TokenLayout.contiguous(101, {"movie": [16, 16, 16], "tag": [8, 8]})
    with pytest.raises(ValueError, match="differs"):
        SidIndex.load(path, other)


def test_corrupted_files_raise_clear_errors(tmp_path, small):
    _, _, _, index = small
    good = tmp_path / "good.neoidx"
    index.save(good)
    data = good.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "header only": data[:20],
        "empty": b"",
        "bad magic": b"XXXXXXXX" + data[8:],
        "flipped byte": data[:200] + bytes([data[200] ^ 0x40]) + data[201:],
        "trailing junk": data + b"\0" * 8,
        "version 99": data[:8] + (99).to_bytes(4, "little") + data[12:],
    }
    for name, blob in cases.items():
        p = tmp_path / f"{name.replace(' ', '_')}.neoidx"
        p.write_bytes(blob)
        for mmap in (False, True):
            with pytest.raises(IndexFormatError) as e:
                SidIndex.load(p, mmap=mmap)
            assert str(p) in str(e.value) or "neo index" in str(e.value), name
    with pytest.raises(IndexFormatError, match="version 99"):
        SidIndex.load(tmp_path / "version_99.neoidx")
    with pytest.raises(IndexFormatError, match="checksum"):
        SidIndex.load(tmp_path / "flipped_byte.neoidx")
    with pytest.raises(IndexFormatError):
        SidIndex.load(tmp_path / "does-not-exist")
    with pytest.raises(IndexFormatError, match="not a regular file"):
        SidIndex.load(tmp_path)
    assert issubclass(IndexFormatError, ValueError)


def test_failed_save_keeps_existing_file(tmp_path, small):
    _, _, _, index = small
    target = tmp_path / "idx.neoidx"
    index.save(target)
    before = target.read_bytes()
    with pytest.raises(ValueError, match="cannot write"):
        index.save(tmp_path / "no-such-dir" / "idx.neoidx")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["idx.neoidx"], "no temporary file may be left behind"


def test_build_errors_name_the_problem():
    layout = TokenLayout.contiguous(10, {"movie": [4, 4], "tag": [3]})
    t = layout.codes_to_tokens("movie", np.array([[0, 1], [2, 3], [0, 1]]))
    with pytest.raises(ValueError, match=r"duplicate SID.*rows 0 and 2"):
        SidIndex.build(layout, {"movie": t})
    bad = t[:2].copy()
    bad[1, 1] = 3  # a token id of the text vocabulary, not of level 1's band
    with pytest.raises(ValueError, match=r"token 3 at row 1, level 1 is outside"):
        SidIndex.build(layout, {"movie": bad})
    with pytest.raises(ValueError, match="empty catalog"):
        SidIndex.build(layout, {"movie": np.zeros((0, 2), np.int32)})
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        SidIndex.build(layout, {"movie": t[:, :1]})
    with pytest.raises(ValueError, match="unknown item type"):
        SidIndex.build(layout, {"film": t})
    with pytest.raises(TypeError, match="integer dtype"):
        SidIndex.build(layout, {"movie": t[:2].astype(np.float32)})
    with pytest.raises(ValueError, match="more than one SID"):
        SidIndex.build(layout, {"movie": t[:2]}, {"movie": np.array([5, 5])})
    with pytest.raises(ValueError, match="negative"):
        SidIndex.build(layout, {"movie": t[:2]}, {"movie": np.array([5, -1])})
    with pytest.raises(ValueError, match="does not fit int32"):
        SidIndex.build(layout, {"movie": t[:2].astype(np.int64) + 2**33})
    with pytest.raises(ValueError, match="item_rows"):
        SidIndex.build(layout, {"movie": t[:2]}, {"movie": np.array([5])})
    # a non-contiguous view works (copied), torch tensors work
    wide = np.zeros((2, 4), np.int32)
    wide[:, ::2] = t[:2]
    idx = SidIndex.build(layout, {"movie": wide[:, ::2]})
    assert idx.num_items == 2
    assert SidIndex.build(layout, {"movie": torch.from_numpy(t[:2])}).num_items == 2


def test_decode_state_bad_arguments(small):
    layout, toks, rows, index = small
    st = DecodeState(index, 2, eos_token_ids=[1])
    W = st.bitmask_shape[1]
    with pytest.raises(TypeError, match="int32"):
        st.fill_next_token_bitmask(np.zeros((2, W), np.int64))
    with pytest.raises(ValueError, match="2-D"):
        st.fill_next_token_bitmask(np.zeros(2 * W, np.int32))
    with pytest.raises(ValueError, match="words per row"):
        st.fill_next_token_bitmask(np.zeros((2, W - 1), np.int32))
    with pytest.raises(ValueError, match="rows"):
        st.fill_next_token_bitmask(np.zeros((1, W), np.int32))
    with pytest.raises(ValueError, match="contiguous"):
        st.fill_next_token_bitmask(np.zeros((2, 2 * W), np.int32)[:, ::2])
    ro = np.zeros((2, W), np.int32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        st.fill_next_token_bitmask(ro)
    with pytest.raises(ValueError, match=r"indices\[0\] = 5"):
        st.fill_next_token_bitmask(np.zeros((2, W), np.int32), indices=[5])
    with pytest.raises(ValueError, match="tokens has 3 entries"):
        st.advance([1, 2, 3])
    with pytest.raises(ValueError, match=r"src\[1\] = 7"):
        st.reorder([0, 7])
    with pytest.raises(ValueError, match="exclude: item row 1 is not in the index"):
        st.set_row_options(0, exclude=[1])
    with pytest.raises(ValueError, match="format"):
        st.set_row_options(0, format="json")
    with pytest.raises(KeyError, match="unknown item type"):
        st.set_row_options(0, allowed_types=["book"])
    with pytest.raises(ValueError, match="eos_token_ids"):
        DecodeState(index, 1, eos_token_ids=[layout.open_id])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        DecodeState(index, 1, eos_token_ids=[10**6])
    # out-of-vocabulary and rule-breaking tokens poison only their row
    st.advance([layout.vocab_size + 5, 7])
    assert list(st.status) == [neo.RowStatus.ERROR, neo.RowStatus.TEXT]
    assert "outside the vocabulary" in st.error(0)
    st.advance([7, toks["movie"][0, 0]])
    assert st.status[1] == neo.RowStatus.ERROR and "outside a [SID] span" in st.errors()[1]
    # ERROR rows allow only EOS, and stay in ERROR
    bm = np.zeros((2, W), np.int32)
    st.fill_next_token_bitmask(bm)
    assert neo.bitmask_to_bool(torch.from_numpy(bm), layout.vocab_size).sum(1).tolist() == [1, 1]
    # torch CPU bitmask works, a CUDA-only path names the device
    tb = neo.allocate_token_bitmask(2, layout.vocab_size)
    st.fill_next_token_bitmask(tb)
    assert torch.equal(tb, torch.from_numpy(bm))


def test_incremental_fill_equals_full_fill(small):
    layout, toks, rows, index = small
    rng = np.random.default_rng(3)
    R = 16
    a, b = DecodeState(index, R, [1]), DecodeState(index, R, [1])
    full, inc = np.zeros(a.bitmask_shape, np.int32), np.zeros(a.bitmask_shape, np.int32)
    for step in range(40):
        a.fill_next_token_bitmask(full)
        b.fill_next_token_bitmask(inc, incremental=True)
        np.testing.assert_array_equal(full, inc)
        m = neo.bitmask_to_bool(torch.from_numpy(full), layout.vocab_size).numpy()
        toks_ = []
        for r in range(R):
            allowed = np.flatnonzero(m[r])
            toks_.append(layout.open_id if m[r, layout.open_id] and rng.random() < 0.5 else rng.choice(allowed))
        a.advance(toks_), b.advance(toks_)
        if step % 7 == 3:
            src = rng.integers(0, R, size=R)
            a.reorder(src), b.reorder(src)


def test_threaded_fill_matches_single_thread(small):
    layout, toks, rows, index = small
    R = 600  # above the parallel threshold (512 rows)
    a, b = DecodeState(index, R, [1], num_threads=0), DecodeState(index, R, [1], num_threads=1)
    seq = [layout.open_id, *toks["movie"][7]]
    ma, mb = np.zeros(a.bitmask_shape, np.int32), np.zeros(b.bitmask_shape, np.int32)
    for i in range(len(seq)):
        tok = np.array([seq[(i + r) % len(seq)] if r % 3 else seq[i] for r in range(R)])
        a.fill_next_token_bitmask(ma), b.fill_next_token_bitmask(mb)
        np.testing.assert_array_equal(ma, mb)
        np.testing.assert_array_equal(a.advance(tok), b.advance(tok))
        np.testing.assert_array_equal(a.status, b.status)


def test_layout_errors():
    with pytest.raises(ValueError, match="overlap"):
        TokenLayout(100, 50, 51, [neo.TypeBands("m", (10,), (45,))])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        TokenLayout(100, 98, 99, [neo.TypeBands("m", (10,), (95,))])
    lay = TokenLayout.contiguous(10, {"m": [3, 4]})
    with pytest.raises(ValueError, match=r"code 4 at row 0, level 1"):
        lay.codes_to_tokens("m", np.array([[0, 4]]))
    assert TokenLayout.from_json(lay.to_json()) == lay
    assert lay.classify(lay.types[0].band_starts[1] + 2) == (0, 1) and lay.classify(3) is None
