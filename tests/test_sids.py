"""Residual k-means SIDs: planted clusters recovered, determinism, collision policies, several types,
token layout mapping, bad input, save/load round trip; balanced k-means (size bound, determinism, no
collisions), the collision warning, and SemanticIds.from_codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neo.items.catalog import Catalog
from neo.core.layout import TokenLayout
from neo.items.sids import SemanticIds, SidCollisionWarning, build_sids, default_sid_config

# most tests build deliberately small codebooks; the warning itself is tested below
pytestmark = pytest.mark.filterwarnings("ignore::neo.items.sids.SidCollisionWarning")


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
    # standard k-means: K^L >= 8n (the old default gave 1,000 items 2 x 32 = 1,024 leaves)
    assert default_sid_config(1000) == (3, 32)
    assert default_sid_config(1475) == (3, 32)
    assert default_sid_config(9742) == (3, 64)
    assert default_sid_config(100_000) == (3, 128)
    assert default_sid_config(1_000_000) == (3, 256)
    assert default_sid_config(10_000_000) == (4, 256)
    assert default_sid_config(100_000_000) == (4, 256)
    assert default_sid_config(1) == (1, 1)
    assert default_sid_config(2) == (2, 4)
    assert default_sid_config(1000, levels=2) == (2, 128)
    assert default_sid_config(1000, codebook_size=10) == (4, 10)
    for n in (2, 60, 1000, 9742, 100_000, 10_000_000):
        L, k = default_sid_config(n)
        assert k ** L >= 8 * n
    # balanced k-means: the smallest codebook whose capacity bound allows one item per leaf
    assert default_sid_config(1000, balance=1.1) == (3, 16)
    assert default_sid_config(9742, balance=1.1) == (3, 32)
    assert default_sid_config(10_000_000, balance=1.1) == (3, 256)
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


# ============================================================================ balanced k-means


def skewed(n_big: int = 300, n_small: int = 20, dim: int = 8, seed: int = 0):
    """One dense blob holding most items plus a few small far clusters: standard k-means crowds the
    blob's near-duplicates into shared leaves."""
    rng = np.random.default_rng(seed)
    big = 0.05 * rng.normal(size=(n_big, dim))
    small = [rng.normal(size=dim) * 3 + 0.1 * rng.normal(size=(n_small, dim)) for _ in range(4)]
    return np.concatenate([big] + small).astype(np.float32)


def assert_within_bound(codes: np.ndarray, balance: float, effective: list[int]) -> None:
    """Every (parent prefix, code) pair holds at most max(1, ceil(balance * parent size / K'))."""
    n, L = codes.shape
    for lvl in range(L):
        parent = [tuple(r) for r in codes[:, :lvl].tolist()]
        size: dict = {}
        for p in parent:
            size[p] = size.get(p, 0) + 1
        cnt: dict = {}
        for p, c in zip(parent, codes[:, lvl].tolist()):
            cnt[(p, c)] = cnt.get((p, c), 0) + 1
        for (p, c), v in cnt.items():
            cap = max(1, int(np.ceil(balance * size[p] / effective[lvl] - 1e-9)))
            assert v <= cap, f"level {lvl}, prefix {p}, code {c}: {v} items > bound {cap}"


@pytest.mark.parametrize("balance", [1.0, 1.1, 1.5])
def test_balanced_cluster_sizes_within_bound_and_deterministic(balance):
    x = skewed()
    cat = make_catalog(["a"] * x.shape[0])
    kw = dict(levels=3, codebook_size=8, balance=balance, sample_size=150)  # fit on a sample, assign all
    a = build_sids(cat, x, seed=3, **kw)
    b = build_sids(cat, x, seed=3, **kw)
    np.testing.assert_array_equal(a.codes["a"], b.codes["a"])
    for ca, cb in zip(a.codebooks["a"], b.codebooks["a"]):
        np.testing.assert_array_equal(ca, cb)
    rep = a.report["types"]["a"]
    base = a.codes["a"][:, : rep["base_levels"]]
    assert_within_bound(base, balance, rep["fit"]["effective_codebook_sizes"])
    # level 0 over the whole type: max/mean reported and within the bound
    n = x.shape[0]
    assert rep["per_level"][0]["max_cluster"] <= int(np.ceil(balance * n / 8))
    assert rep["per_level"][0]["balance"] == pytest.approx(rep["per_level"][0]["max_cluster"] / (n / 8))
    assert rep["kmeans"]["method"] == "balanced" and a.report["balance"] == balance


def test_balanced_removes_collisions_that_standard_keeps():
    x = skewed()
    cat = make_catalog(["a"] * x.shape[0])
    std = build_sids(cat, x, levels=2, codebook_size=32)
    bal = build_sids(cat, x, levels=2, codebook_size=32, balance=1.0)
    rs, rb = std.report["types"]["a"], bal.report["types"]["a"]
    assert rs["collisions"]["collision_rate"] > 0.2  # the dense blob collides under nearest-centroid codes
    assert rb["collisions"]["collision_rate"] == 0.0 and not bal.extra_level["a"]
    assert rb["kmeans"]["leaf_bound"] == 1 and rb["items_per_leaf"]["max"] == 1
    assert rb["per_level"][0]["balance"] <= rs["per_level"][0]["balance"]
    # structure survives: each far cluster of 20 stays on the 2 first codes its size needs (cap 12)
    first = bal.codes["a"][:, 0]
    for c in range(4):
        assert np.unique(first[300 + 20 * c: 320 + 20 * c]).size == 2
    assert "a leaf holds at most 1 item" in str(bal.report)
    # default sizes for balanced k-means: collision-free by construction
    d = build_sids(cat, x, balance=1.1)
    assert d.report["types"]["a"]["collisions"]["collision_rate"] == 0.0


def test_balanced_several_types_and_bad_balance(two_types):
    cat, x, labels = two_types
    sids = build_sids(cat, x, levels={"movie": 2, "tag": 2}, codebook_size={"movie": 8, "tag": 4}, balance=1.0)
    for t in cat.type_names:
        c = sids.codes[t]
        assert np.bincount(c[:, 0]).max() <= int(np.ceil(c.shape[0] / sids.codebook_sizes[t][0]))
        # 200 planted items in 8 clusters of 25 over 8 codes: balanced keeps them apart exactly
        if t == "movie":
            lab = labels[sids.rows[t]]
            assert all(np.unique(c[lab == k, 0]).size == 1 for k in np.unique(lab))
    for bad in (0.9, float("nan"), "1.1", True):
        with pytest.raises(ValueError, match="balance must be a number >= 1"):
            build_sids(cat, x, balance=bad)


def test_capacitated_assignment_respects_capacity_with_groups():
    from neo.items.sids import _capacitated_assign

    rng = np.random.default_rng(0)
    n, k = 500, 6
    d = rng.random((n, k)).astype(np.float32)
    d[:, 0] *= 0.1  # every row prefers centroid 0
    group = rng.integers(0, 7, size=n)
    cap = np.maximum(1, np.ceil(1.0 * np.bincount(group) / k)).astype(np.int64)
    order = np.argsort(d, axis=1, kind="stable")
    m = 2  # short candidate lists force the greedy fallback for many rows
    a = _capacitated_assign(order[:, :m].astype(np.int32), np.take_along_axis(d, order[:, :m], 1), group, cap, k,
                            lambda rows: d[rows], 64)
    assert (a >= 0).all() and (a < k).all()
    cnt = np.zeros((7, k), dtype=np.int64)
    np.add.at(cnt, (group, a), 1)
    assert (cnt <= cap[:, None]).all()
    # with room for everyone (cap = group size) everyone gets their nearest centroid
    a2 = _capacitated_assign(order[:, :m].astype(np.int32), np.take_along_axis(d, order[:, :m], 1), group,
                             np.bincount(group).astype(np.int64), k, lambda rows: d[rows], 64)
    np.testing.assert_array_equal(a2, order[:, 0])


# ============================================================================ collision warning


def test_collision_warning_names_rate_and_a_codebook_that_fixes_it():
    x = skewed()
    cat = make_catalog(["a"] * x.shape[0])
    with pytest.warns(SidCollisionWarning) as rec:
        s = build_sids(cat, x, levels=2, codebook_size=8)
    msg = str(rec[0].message)
    rate = s.report["types"]["a"]["collisions"]["collision_rate"]
    assert f"collision rate {rate:.1%}" in msg and "2 levels of 8x8 codes" in msg and "balance=1.1" in msg
    import re

    k = int(re.search(r"codebook_size=(\d+)", msg).group(1))
    assert k > 8
    # following the advice removes the collisions (and the warning)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", SidCollisionWarning)
        fixed = build_sids(cat, x, levels=2, codebook_size=k, balance=1.1)
    assert fixed.report["types"]["a"]["collisions"]["collision_rate"] == 0.0
    # a threshold above the rate, or None, stays silent
    with warnings.catch_warnings():
        warnings.simplefilter("error", SidCollisionWarning)
        build_sids(cat, x, levels=2, codebook_size=8, warn_collision_rate=None)
        build_sids(cat, x, levels=2, codebook_size=8, warn_collision_rate=min(1.0, rate + 0.01))
    with pytest.raises(ValueError, match="warn_collision_rate must be in"):
        build_sids(cat, x, warn_collision_rate=2.0)


# ============================================================================ from_codes


def test_from_codes_round_trip(two_types, tmp_path):
    cat, x, _ = two_types
    built = build_sids(cat, x, levels=2, codebook_size=4)  # collisions: a disambiguation level is added
    assert all(built.extra_level.values())
    per_type = {t: built.codes[t][:, :2] for t in cat.type_names}  # base codes only
    s = SemanticIds.from_codes(cat, per_type, codebook_size=4)
    for t in cat.type_names:
        np.testing.assert_array_equal(s.codes[t], built.codes[t])
        np.testing.assert_array_equal(s.rows[t], cat.rows_of_type(t))
        assert s.codebook_sizes[t] == built.codebook_sizes[t]
        np.testing.assert_array_equal(s.resolve(t, s.codes[t]), s.rows[t])
    # the same codes as one (N, L) array in catalog row order, and shuffled with ids
    full = np.zeros((len(cat), 2), dtype=np.int64)
    for t in cat.type_names:
        full[built.rows[t]] = built.codes[t][:, :2]
    s2 = SemanticIds.from_codes(cat, full, codebook_size=4)
    perm = np.random.default_rng(0).permutation(len(cat))
    s3 = SemanticIds.from_codes(cat, full[perm], ids=[cat.ids[i] for i in perm], codebook_size=4)
    for t in cat.type_names:
        np.testing.assert_array_equal(s2.codes[t], s.codes[t])
        np.testing.assert_array_equal(s3.codes[t], s.codes[t])
    assert s.report["types"]["movie"]["source"].startswith("given codes")
    s.save(tmp_path / "s")
    back = SemanticIds.load(tmp_path / "s")
    np.testing.assert_array_equal(back.codes["tag"], s.codes["tag"])


def test_from_codes_collisions_both_ways():
    pop = np.array([5.0, 9.0, 1.0, 7.0, 3.0, 2.0])
    cat = make_catalog(["a"] * 6, popularity=pop)
    codes = np.array([[0, 1], [0, 1], [0, 1], [2, 0], [2, 0], [1, 1]])
    with pytest.warns(SidCollisionWarning, match=r"collision rate 50.0% \(3 of its 6 items need a disambiguation code; "
                                                     r"5 share their base codes"):
        s = SemanticIds.from_codes(cat, codes)
    assert s.extra_level["a"] and s.codebook_sizes["a"] == (3, 2, 3)  # K from max code + 1; 3 in a group
    # items 0, 1, 2 share (0, 1): most popular (1) gets 0, then 0, then 2
    assert s.codes["a"][[1, 0, 2], 2].tolist() == [0, 1, 2]
    assert s.codes["a"][[3, 4], 2].tolist() == [0, 1] and s.codes["a"][5, 2] == 0
    assert s.reachable["a"].all()
    col = s.report["types"]["a"]["collisions"]
    assert col["collision_rate"] == pytest.approx(3 / 6) and col["max_group_size"] == 3
    p = SemanticIds.from_codes(cat, codes, collisions="popular", warn_collision_rate=None)
    assert not p.extra_level["a"] and p.codes["a"].shape == (6, 2)
    assert p.reachable["a"].tolist() == [False, True, False, True, False, True]
    assert p.report["types"]["a"]["collisions"]["n_unreachable"] == 3


def test_from_codes_bad_codes_name_the_row(two_types):
    cat, x, _ = two_types
    n = len(cat)
    good = np.zeros((n, 2), dtype=np.int64)
    good[:, 0] = np.arange(n) % 16
    good[:, 1] = np.arange(n) // 16
    r = 17
    with pytest.raises(ValueError, match="must be 2-D"):
        SemanticIds.from_codes(cat, good[:, 0])
    with pytest.raises(ValueError, match="different lengths"):
        SemanticIds.from_codes(cat, [[0, 1], [0]] + [[0, 1]] * (n - 2))
    bad = good.copy()
    bad[r, 1] = -3
    with pytest.raises(ValueError, match=rf"row {r} \(item '{cat.ids[r]}', catalog row {r}\), level 1 holds the negative"):
        SemanticIds.from_codes(cat, bad)
    bad = good.astype(float)
    bad[r, 0] = 2.5
    with pytest.raises(ValueError, match=rf"row {r} .*holds 2.5, not an integer"):
        SemanticIds.from_codes(cat, bad)
    with pytest.raises(ValueError, match=rf"code 1 of item '{cat.ids[16]}' \(catalog row 16.*outside the codebook \[0, 1\)"):
        SemanticIds.from_codes(cat, good, codebook_size=[16, 1])
    with pytest.raises(ValueError, match=f"codes has {n - 1} rows but there are {n} catalog items"):
        SemanticIds.from_codes(cat, good[:-1])
    with pytest.raises(ValueError, match=r"unknown item type\(s\) \['book'\]"):
        SemanticIds.from_codes(cat, {"book": good})
    with pytest.raises(ValueError, match=r"types names unknown item type\(s\) \['book'\]"):
        SemanticIds.from_codes(cat, good, types=["book"])
    with pytest.raises(ValueError, match="codes\\['movie'\\] has 3 rows but the catalog has 200 items"):
        SemanticIds.from_codes(cat, {"movie": good[:3], "tag": good[:60]})
    with pytest.raises(ValueError, match=r"no codes for item type\(s\) \['tag'\]"):
        SemanticIds.from_codes(cat, {"movie": good[:200]})
    with pytest.raises(ValueError, match="above the largest codebook"):
        SemanticIds.from_codes(cat, good + 70000)
    ids = list(cat.ids)
    with pytest.raises(ValueError, match="codes row 3: item id 'nope' is not in the catalog"):
        SemanticIds.from_codes(cat, good, ids=ids[:3] + ["nope"] + ids[4:])
    with pytest.raises(ValueError, match=f"codes rows 0 and 1 are both for item '{ids[0]}'"):
        SemanticIds.from_codes(cat, good, ids=[ids[0]] + ids[:-1])
    with pytest.raises(ValueError, match="unknown collision policy"):
        SemanticIds.from_codes(cat, good, collisions="drop")


def test_from_codes_for_some_types_builds_the_rest(two_types):
    cat, x, labels = two_types
    movies = cat.rows_of_type("movie")
    given = np.stack([np.arange(movies.size) % 8, np.arange(movies.size) // 8], 1)
    s = SemanticIds.from_codes(cat, given, types=["movie"], embeddings=x,
                                build_options={"levels": 2, "codebook_size": 4, "balance": 1.0})
    np.testing.assert_array_equal(s.codes["movie"], given)
    assert s.codebook_sizes["movie"] == (8, 25)
    assert s.report["types"]["tag"]["source"].startswith("built from embeddings")
    assert s.codes["tag"].shape[0] == 60 and s.reachable_mask().all()
    # tags built from their own rows of the embeddings: planted tag clusters share first codes
    lab = labels[s.rows["tag"]]
    assert all(np.unique(s.codes["tag"][lab == k, 0]).size == 1 for k in np.unique(lab))


# ============================================================================ item level


def test_item_level_replace_and_append(two_types, tmp_path):
    cat, x, _ = two_types
    built = build_sids(cat, x, levels=2, codebook_size=4)  # 16 leaves for 200 movies: a disambiguation level
    assert built.extra_level["movie"] and built.levels("movie") == 3
    before = {t: built.codes[t].copy() for t in cat.type_names}
    rep = built.with_item_level("replace")
    app = built.with_item_level("append")
    for t in cat.type_names:
        n = cat.rows_of_type(t).size
        np.testing.assert_array_equal(built.codes[t], before[t])  # the original is unchanged
        # replace: first base code, then the item; append: both base codes, then the item
        np.testing.assert_array_equal(rep.codes[t], np.c_[before[t][:, :1], np.arange(n)])
        np.testing.assert_array_equal(app.codes[t], np.c_[before[t][:, :2], np.arange(n)])
        assert rep.codebook_sizes[t] == (4, n) and app.codebook_sizes[t] == (4, 4, n)
        for s in (rep, app):
            assert not s.extra_level[t] and s.reachable[t].all()
            np.testing.assert_array_equal(s.rows[t], built.rows[t])
            np.testing.assert_array_equal(s.resolve(t, s.codes[t]), s.rows[t])  # every item its own SID
            assert s.report["types"][t]["collisions"]["collision_rate"] == 0
        assert len(rep.codebooks[t]) == 1 and len(app.codebooks[t]) == 2
        np.testing.assert_array_equal(rep.codebooks[t][0], built.codebooks[t][0])
    assert rep.config["item_level"] == {"mode": "replace", "types": ["movie", "tag"]}
    rep.save(tmp_path / "s")
    back = SemanticIds.load(tmp_path / "s")
    np.testing.assert_array_equal(back.codes["movie"], rep.codes["movie"])
    assert back.config["item_level"]["mode"] == "replace" and back.codebook_sizes == rep.codebook_sizes


def test_item_level_for_some_types_and_popular_policy():
    pop = np.array([5.0, 9.0, 1.0, 7.0, 3.0, 2.0, 4.0, 8.0])
    cat = make_catalog(["a"] * 6 + ["b"] * 2, popularity=pop)
    codes = {"a": np.array([[0, 1], [0, 1], [0, 1], [2, 0], [2, 0], [1, 1]]), "b": np.array([[0, 0], [0, 0]])}
    s = SemanticIds.from_codes(cat, codes, collisions="popular", warn_collision_rate=None)
    assert not s.reachable["a"].all() and not s.reachable["b"].all()
    only_a = s.with_item_level("replace", types=["a"])
    assert only_a.reachable["a"].all()  # an item code reaches the items that lost a collision
    np.testing.assert_array_equal(only_a.codes["a"][:, 1], np.arange(6))
    np.testing.assert_array_equal(only_a.codes["b"], s.codes["b"])  # untouched: same codes, same loser
    np.testing.assert_array_equal(only_a.reachable["b"], s.reachable["b"])
    assert only_a.config["item_level"]["types"] == ["a"]


def test_item_level_bad_input_is_named(two_types, monkeypatch):
    import neo.items.sids as sids_mod

    cat, x, _ = two_types
    built = build_sids(cat, x, levels=2, codebook_size=16)
    with pytest.raises(ValueError, match=r"unknown item level mode 'prepend'; use one of \('replace', 'append'\)"):
        built.with_item_level("prepend")
    with pytest.raises(ValueError, match=r"unknown item type\(s\) \['song'\]"):
        built.with_item_level("replace", types=["song"])
    monkeypatch.setattr(sids_mod, "MAX_CODEBOOK", 100)
    with pytest.raises(ValueError, match=r"at most 100 per level; type\(s\) \{'movie': 200\} have more items"):
        built.with_item_level("append")
    assert built.with_item_level("append", types=["tag"]).codebook_sizes["tag"] == (16, 16, 60)
    monkeypatch.undo()
    built.catalog = None
    with pytest.raises(ValueError, match="needs the SIDs' catalog"):
        built.with_item_level()
