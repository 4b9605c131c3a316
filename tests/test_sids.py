"""Residual k-means SIDs: planted clusters recovered, determinism, collision policies, several types,
token layout mapping, bad input, save/load round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neo.items.catalog import Catalog
from neo.core.layout import TokenLayout
from neo.items.sids import SemanticIds, build_sids, default_sid_config


def planted(n_per: int, n_clusters: int, dim: int = 16, seed: int = 0, spread: float = 0.05):
    """Unit-norm cluster centres plus small noise; returns (embeddings float32[N, dim], labels int[N])."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_clusters), n_per)
    rng.shuffle(labels)
    x = centres[labels] + spread * rng.normal(size=(labels.size, dim))
    return x.astype(np.float32), labels


def make_catalog(types: list[str], popularity=None) -> Catalog:
    recs = []
    for i, t in enumerate(types):
        r = {"id": f"item{i}", "type": t, "title": f"title {i}"}
        if popularity is not None:
            r["popularity"] = float(popularity[i])
        recs.append(r)
    return Catalog.from_records(recs)


@pytest.fixture(scope="module")
def two_types():
    """200 'movie' items in 8 planted clusters, 60 'tag' items in 4, interleaved rows."""
    xm, lm = planted(25, 8, seed=1)
    xt, lt = planted(15, 4, seed=2)
    types = np.array(["movie"] * 200 + ["tag"] * 60)
    order = np.random.default_rng(3).permutation(260)  # rows of a type are not contiguous
    x = np.concatenate([xm, xt])[order]
    labels = np.concatenate([lm, lt + 100])[order]
    pop = np.random.default_rng(4).random(260)
    cat = make_catalog(list(types[order]), popularity=pop)
    return cat, x, labels


def test_planted_clusters_share_first_code(two_types):
    cat, x, labels = two_types
    sids = build_sids(cat, x, levels={"movie": 3, "tag": 2}, codebook_size={"movie": 8, "tag": 4}, seed=0)
    for t, k in (("movie", 8), ("tag", 4)):
        first = sids.codes[t][:, 0]
        lab = labels[sids.rows[t]]
        # same planted cluster -> same first code; different clusters -> different first codes
        mapping = {}
        for c in np.unique(lab):
            codes = np.unique(first[lab == c])
            assert codes.size == 1, f"{t}: planted cluster {c} split over first codes {codes}"
            mapping[int(c)] = int(codes[0])
        assert len(set(mapping.values())) == k
        assert sids.rows[t].tolist() == cat.rows_of_type(t).tolist()
    rep = sids.report["types"]["movie"]
    pc = rep["prefix_coherence"]
    assert pc["by_prefix"][0]["mean_cos"] > 0.95 > pc["random_pairs_cos"] + 0.5
    assert rep["per_level"][0]["used_codes"] == 8
    assert rep["per_level"][0]["perplexity"] == pytest.approx(8, rel=0.05)  # balanced clusters


def test_deterministic_for_seed(two_types):
    cat, x, _ = two_types
    a = build_sids(cat, x, levels=2, codebook_size=4, seed=5, sample_size=100)
    b = build_sids(cat, x, levels=2, codebook_size=4, seed=5, sample_size=100)
    for t in cat.type_names:
        np.testing.assert_array_equal(a.codes[t], b.codes[t])
        for ca, cb in zip(a.codebooks[t], b.codebooks[t]):
            np.testing.assert_array_equal(ca, cb)


def test_chunked_assignment_and_input_kinds_agree(two_types, tmp_path):
    cat, x, _ = two_types
    ref = build_sids(cat, x, levels=3, codebook_size=4, seed=1)
    np.save(tmp_path / "x.npy", x)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    variants = [
        build_sids(cat, x, levels=3, codebook_size=4, seed=1, chunk_size=7),  # many small chunks
        build_sids(cat, mm, levels=3, codebook_size=4, seed=1),  # memory-mapped, read per chunk
        build_sids(cat, torch.from_numpy(x), levels=3, codebook_size=4, seed=1),
        build_sids(cat, x.astype(np.float64), levels=3, codebook_size=4, seed=1),
    ]
    for v in variants:
        for t in cat.type_names:
            np.testing.assert_array_equal(v.codes[t], ref.codes[t])


def test_extra_level_makes_every_item_unique_and_reachable():
    # 40 items, only 5 distinct vectors -> big collision groups
    rng = np.random.default_rng(0)
    base = rng.normal(size=(5, 8)).astype(np.float32)
    which = np.arange(40) % 5
    x = base[which]
    pop = rng.random(40)
    cat = make_catalog(["a"] * 40, popularity=pop)
    sids = build_sids(cat, x, levels=2, codebook_size=8)
    codes = sids.codes["a"]
    assert codes.shape == (40, 3) and sids.extra_level["a"]
    assert sids.codebook_sizes["a"] == (8, 8, 8)  # last level sized by the largest group (8 per vector)
    assert len({tuple(r) for r in codes.tolist()}) == 40  # all unique
    assert sids.reachable["a"].all() and sids.reachable_mask().all()
    # items with the same vector share the base codes; the most popular of a group gets 0, then 1, ...
    for g in range(5):
        members = np.flatnonzero(which == g)
        assert len({tuple(r) for r in codes[members, :2].tolist()}) == 1
        by_pop = members[np.argsort(-pop[members])]
        assert codes[by_pop, 2].tolist() == list(range(members.size))
    col = sids.report["types"]["a"]["collisions"]
    assert col["items_in_collisions"] == 40 and col["n_unreachable"] == 0
    assert col["collision_rate"] == pytest.approx(35 / 40)
    # every item resolves back to itself
    np.testing.assert_array_equal(sids.resolve("a", codes), sids.rows["a"])


def test_no_extra_level_without_collisions():
    # k-means++ with as many codes as distinct points seeds one centre per point: no collisions
    x, _ = planted(1, 8, dim=8)
    sids = build_sids(make_catalog(["a"] * 8), x, levels=1, codebook_size=8)
    assert not sids.extra_level["a"] and sids.codes["a"].shape == (8, 1)
    assert sorted(sids.codes["a"][:, 0].tolist()) == list(range(8))
    assert sids.report["types"]["a"]["collisions"]["collision_rate"] == 0.0


def test_popular_policy_keeps_most_popular():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(4, 8)).astype(np.float32)
    which = np.arange(20) % 4
    pop = rng.random(20)
    cat = make_catalog(["a"] * 20, popularity=pop)
    sids = build_sids(cat, base[which], levels=1, codebook_size=4, collisions="popular")
    assert sids.codes["a"].shape == (20, 1) and not sids.extra_level["a"]
    reach = sids.reachable["a"]
    for g in range(4):
        members = np.flatnonzero(which == g)
        assert reach[members].tolist() == (members == members[np.argmax(pop[members])]).tolist()
    c, r = sids.reachable_codes("a")
    assert len({tuple(v) for v in c.tolist()}) == c.shape[0] == 4
    np.testing.assert_array_equal(sids.resolve("a", c), r)
    col = sids.report["types"]["a"]["collisions"]
    assert col["n_unreachable"] == 16 and sids.report["n_unreachable"] == 16
    lost = [cat.ids[i] for i in np.flatnonzero(~reach)]
    assert col["unreachable_ids_sample"] == lost
    assert "unreachable 16" in str(sids.report)
    assert sids.reachable_mask().sum() == 4


def test_several_types_different_levels_and_token_ids(two_types):
    cat, x, _ = two_types
    sids = build_sids(cat, x, levels={"movie": 3, "tag": 1}, codebook_size={"movie": [8, 4, 4], "tag": 4})
    assert sids.levels("movie") in (3, 4) and sids.levels("tag") in (1, 2)
    assert sids.codebook_sizes["movie"][:3] == (8, 4, 4)
    layout = sids.token_layout(1000)
    assert isinstance(layout, TokenLayout) and layout.open_id == 1000
    toks = sids.to_token_ids(layout)
    for t in cat.type_names:
        assert toks[t].dtype == np.int32 and toks[t].shape == sids.codes[t].shape
        np.testing.assert_array_equal(layout.tokens_to_codes(t, toks[t]), sids.codes[t])
        ti = layout.type_index(t)
        for lvl in range(sids.levels(t)):
            assert {layout.classify(int(tok)) for tok in toks[t][:, lvl]} == {(ti, lvl)}
    np.testing.assert_array_equal(sids.to_token_ids(layout, "tag"), toks["tag"])
    other = TokenLayout.contiguous(1000, {"movie": [8, 8, 8], "tag": [4]})
    with pytest.raises(ValueError, match="differ from the SIDs"):
        sids.to_token_ids(other)
    with pytest.raises(ValueError, match="no item type 'tag'"):
        sids.to_token_ids(TokenLayout.contiguous(10, {"movie": list(sids.codebook_sizes["movie"])}))
    t, c = sids.sid_of(cat.ids[0])
    assert t == cat.type_of(0) and c.tolist() == sids.codes[t][sids.rows[t].tolist().index(0)].tolist()


def test_default_config_and_end_to_end_tfidf():
    assert default_sid_config(1475) == (3, 32)
    assert default_sid_config(9742) == (3, 64)
    assert default_sid_config(100_000) == (3, 128)
    assert default_sid_config(1_000_000) == (3, 256)
    assert default_sid_config(10_000_000) == (3, 256)
    assert default_sid_config(100_000_000) == (4, 256)
    assert default_sid_config(1) == (1, 1)
    assert default_sid_config(2) == (1, 4)
    assert default_sid_config(1000, levels=2) == (2, 128)
    assert default_sid_config(1000, codebook_size=10) == (3, 10)
    words = ["space", "alien", "love", "paris", "war", "horse"]
    recs = [{"id": f"i{i}", "type": "movie" if i % 3 else "book",
             "title": f"{words[i % 6]} {words[(i * 7) % 6]} story {i % 5}"} for i in range(90)]
    recs.append({"id": "solo", "type": "author", "title": "one author"})
    cat = Catalog.from_records(recs)
    sids = build_sids(cat, "tfidf")
    for t in cat.type_names:
        assert sids.codes[t].shape[0] == cat.type_counts()[cat.type_index(t)]
    assert sids.codes["author"].shape == (1, 1)
    assert sids.reachable_mask().all()
    json.loads(sids.report.to_json())  # JSON-serialisable
    assert "collision" in str(sids.report)


def test_bad_input_is_named(two_types):
    cat, x, _ = two_types
    with pytest.raises(ValueError, match=r"shape \(260, D\)"):
        build_sids(cat, x[:-1])
    with pytest.raises(ValueError, match="unknown collision policy 'drop'"):
        build_sids(cat, x, collisions="drop")
    with pytest.raises(ValueError, match=r"levels names unknown item types \['book'\]"):
        build_sids(cat, x, levels={"book": 2})
    with pytest.raises(ValueError, match="codebook size 70000 not in"):
        build_sids(cat, x, codebook_size=70000)
    with pytest.raises(ValueError, match="2 codebook sizes given for 3 levels"):
        build_sids(cat, x, levels=3, codebook_size=[4, 4])
    with pytest.raises(ValueError, match="floating point"):
        build_sids(cat, np.zeros((260, 4), dtype=np.int64))
    bad = x.copy()
    bad[17, 3] = np.inf
    with pytest.raises(ValueError, match="catalog row 17 contains NaN or inf"):
        build_sids(cat, bad, levels=1, codebook_size=2)
    with pytest.raises(TypeError, match="neo.Catalog"):
        build_sids(x, x)


def test_save_load_round_trip_and_catalog_mismatch(two_types, tmp_path):
    cat, x, _ = two_types
    sids = build_sids(cat, x, levels={"movie": 2, "tag": 1}, codebook_size=4, collisions="popular")
    sids.save(tmp_path / "s")
    for loaded in (SemanticIds.load(tmp_path / "s"), SemanticIds.load(tmp_path / "s", catalog=cat)):
        assert loaded.type_names == sids.type_names and loaded.collisions == "popular"
        for t in cat.type_names:
            np.testing.assert_array_equal(loaded.codes[t], sids.codes[t])
            np.testing.assert_array_equal(loaded.rows[t], sids.rows[t])
            np.testing.assert_array_equal(loaded.reachable[t], sids.reachable[t])
            assert loaded.codebook_sizes[t] == sids.codebook_sizes[t]
            for a, b in zip(loaded.codebooks[t], sids.codebooks[t]):
                np.testing.assert_array_equal(a, b)
        assert loaded.report["types"]["movie"]["collisions"] == sids.report["types"]["movie"]["collisions"]
        assert loaded.catalog.fingerprint() == cat.fingerprint()
        assert loaded.token_layout(50) == sids.token_layout(50)
    other = cat.select("movie")
    with pytest.raises(ValueError, match=r"catalog does not match these SIDs \(it has 200 items, the SIDs cover 260"):
        SemanticIds.load(tmp_path / "s", catalog=other)
    with pytest.raises(ValueError, match="catalog does not match"):
        sids.save(tmp_path / "t", catalog=other)
    assert not (tmp_path / "t" / "sids.json").exists()
    with pytest.raises(FileNotFoundError, match="no saved SIDs"):
        SemanticIds.load(tmp_path / "nothing")


def test_semantic_ids_validates_its_arrays():
    kw = dict(type_names=["a"], rows={"a": np.arange(3)}, codebook_sizes={"a": (4,)},
              reachable={"a": np.ones(3, bool)}, extra_level={"a": False}, collisions="extra_level",
              n_items=3, catalog_fingerprint="x")
    with pytest.raises(ValueError, match="code 4 at row 1, level 0 outside"):
        SemanticIds(codes={"a": np.array([[0], [4], [1]])}, **kw)
    with pytest.raises(ValueError, match="shared by several reachable items"):
        SemanticIds(codes={"a": np.array([[0], [0], [1]])}, **kw)
    with pytest.raises(ValueError, match="catalog row 2 has 0 SIDs"):
        SemanticIds(codes={"a": np.array([[0], [1]])}, **{**kw, "rows": {"a": np.arange(2)},
                                                            "reachable": {"a": np.ones(2, bool)}})
