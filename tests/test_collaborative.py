"""Collaborative item embeddings: planted communities recovered, cold items, inputs, hybrids, per-type
catalog embeddings, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from neo.items.catalog import Catalog
from neo.items.collaborative import (ColdItemsWarning, collaborative_embeddings, hybrid_embeddings,
                                     sid_embeddings)
from neo.items.datasets import Interactions


def communities(n_items: int = 240, n_comm: int = 6, n_users: int = 300, seed: int = 0, cold: int = 0):
    """Users each draw a sequence from one item community; the last ``cold`` items are never used."""
    rng = np.random.default_rng(seed)
    comm = np.arange(n_items) % n_comm
    warm = np.arange(n_items - cold)
    seqs = []
    for _ in range(n_users):
        c = rng.integers(n_comm)
        pool = warm[comm[warm] == c]
        seqs.append(rng.choice(pool, size=int(rng.integers(6, 15))).astype(np.int64))
    return seqs, comm


def nn_accuracy(emb: np.ndarray, labels: np.ndarray, rows: np.ndarray | None = None) -> float:
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    rows = np.arange(emb.shape[0]) if rows is None else rows
    return float((labels[sim[rows].argmax(1)] == labels[rows]).mean())


@pytest.mark.parametrize("method", ["cooc", "mf"])
def test_planted_communities_recovered(method):
    seqs, comm = communities()
    emb = collaborative_embeddings(seqs, 240, dim=16, method=method, seed=0)
    assert emb.shape == (240, 16) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert nn_accuracy(emb, comm) > 0.95
    sim = emb @ emb.T
    same = comm[:, None] == comm[None, :]
    off = ~np.eye(240, dtype=bool)
    assert sim[same & off].mean() > sim[~same].mean() + 0.25
    # deterministic for a seed
    np.testing.assert_array_equal(emb, collaborative_embeddings(seqs, 240, dim=16, method=method, seed=0))


def test_cooc_window_sees_order():
    # windows of 5 consecutive items along a line of 50: similarity must fall with distance on the line
    rng = np.random.default_rng(0)
    seqs = [np.arange(s, s + 5, dtype=np.int64) for s in rng.integers(0, 46, size=400)]
    emb = collaborative_embeddings(seqs, 50, dim=8)  # window 5
    sim = emb @ emb.T
    by_gap = [np.mean([sim[i, i + d] for i in range(50 - d)]) for d in (1, 3, 5, 10)]
    assert by_gap[0] > 0.8 and by_gap[3] < 0.2
    assert all(a > b for a, b in zip(by_gap, by_gap[1:]))
    # window 1 is second-order: neighbours share no context (i-1, i+1 vs i, i+2); items two apart do
    emb1 = collaborative_embeddings(seqs, 50, dim=8, window=1)
    s1 = emb1 @ emb1.T
    assert np.mean([s1[i, i + 2] for i in range(48)]) > 0.8 > 0.2 > abs(np.mean([s1[i, i + 1] for i in range(49)]))


def test_inputs_interactions_mapping_and_lists_agree():
    seqs, _ = communities(n_items=60, n_comm=3, n_users=80)
    ids = [f"i{i}" for i in range(60)]
    inter = Interactions([f"u{u}" for u in range(len(seqs))], ids, seqs)
    a = collaborative_embeddings(seqs, 60, dim=8)
    b = collaborative_embeddings(inter, dim=8)
    c = collaborative_embeddings({f"u{u}": s.tolist() for u, s in enumerate(seqs)}, 60, dim=8)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    # rows: a subset gets its own SVD, still recovering its communities
    rows = np.arange(0, 60, 2)
    sub = collaborative_embeddings(seqs, 60, dim=8, rows=rows)
    assert sub.shape == (30, 8)


def test_cold_items_fallback_and_report():
    seqs, comm = communities(cold=12)
    cold_rows = np.arange(228, 240)
    with pytest.warns(ColdItemsWarning, match="12 of 240 items have no collaborative signal"):
        emb, info = collaborative_embeddings(seqs, 240, dim=16, return_info=True)
    assert info["n_cold"] == 12 and info["cold_rows"].tolist() == cold_rows.tolist()
    assert info["cold_fill"] == "random unit vectors"
    np.testing.assert_allclose(np.linalg.norm(emb[cold_rows], axis=1), 1, atol=1e-5)
    # a fallback whose geometry knows the communities (e.g. text) places the cold items with theirs
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 10))
    text = (centres[comm] + 0.1 * rng.normal(size=(240, 10))).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ColdItemsWarning)
        emb2, info2 = collaborative_embeddings(seqs, 240, dim=16, fallback=text, return_info=True)
    assert info2["cold_fill"].startswith("fallback projected")
    warm = np.arange(228)
    sim = emb2[cold_rows] @ emb2[warm].T
    assert (comm[warm][sim.argmax(1)] == comm[cold_rows]).mean() > 0.9


def test_hybrid_cosine_mixes_both():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(20, 7)).astype(np.float32)
    c = rng.normal(size=(20, 4)).astype(np.float32)
    w = 0.3
    h = hybrid_embeddings(t, c, cf_weight=w)
    assert h.shape == (20, 11)
    tn = t / np.linalg.norm(t, axis=1, keepdims=True)
    cn = c / np.linalg.norm(c, axis=1, keepdims=True)
    np.testing.assert_allclose(h @ h.T, (1 - w) * tn @ tn.T + w * cn @ cn.T, atol=1e-5)
    np.testing.assert_allclose(hybrid_embeddings(t, c, cf_weight=0.0)[:, :7], tn, atol=1e-6)
    with pytest.raises(ValueError, match="same number of rows"):
        hybrid_embeddings(t, c[:-1])
    with pytest.raises(ValueError, match=r"cf_weight must be in \[0, 1\]"):
        hybrid_embeddings(t, c, cf_weight=1.5)
    bad = c.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="cf_emb: row 3 contains NaN"):
        hybrid_embeddings(t, bad)


def _two_type_catalog():
    """80 'movie' items in 4 communities (text says nothing about them) and 10 'tag' items nobody used."""
    recs = [{"id": f"m{i}", "type": "movie", "title": f"film number {i} {['red', 'blue'][i % 2]}"} for i in range(80)]
    recs += [{"id": f"t{i}", "type": "tag", "title": f"tag {w}"} for i, w in enumerate("abcdefghij")]
    return Catalog.from_records(recs)


def test_sid_embeddings_per_type_with_text_fallback():
    from neo.items.sids import build_sids

    cat = _two_type_catalog()
    movies = cat.rows_of_type("movie")
    seqs, comm = communities(n_items=80, n_comm=4, n_users=200)
    seqs = [movies[s] for s in seqs]
    with pytest.warns(ColdItemsWarning, match="item type 'tag': none of its 10 items"):
        emb, info = sid_embeddings(cat, seqs, kind="hybrid", dim=8, return_info=True)
    assert emb.shape[0] == len(cat) and emb.dtype == np.float32
    assert info["types"]["tag"]["source"] == "text (no interactions)"
    assert info["types"]["movie"]["source"] == "hybrid"
    text = sid_embeddings(cat, kind="text")
    np.testing.assert_allclose(emb[cat.rows_of_type("tag"), : text.shape[1]],
                               text[cat.rows_of_type("tag")], atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ColdItemsWarning)
        cf = sid_embeddings(cat, seqs, kind="cf", dim=8)
    assert nn_accuracy(cf[movies], comm) > 0.95
    # the communities become the first SID code (balanced: 20 items per code)
    sids = build_sids(cat, cf, levels=2, codebook_size=4, balance=1.0, warn_collision_rate=None)
    first = sids.codes["movie"][:, 0]
    assert all(np.unique(first[comm == k]).size == 1 for k in range(4))
    # an Interactions object with the catalog's ids in another order is re-indexed
    order = np.random.default_rng(0).permutation(len(cat))
    ids = [cat.ids[i] for i in order]
    inv = np.argsort(order)
    inter = Interactions([f"u{u}" for u in range(len(seqs))], ids, [inv[s] for s in seqs])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ColdItemsWarning)
        np.testing.assert_allclose(sid_embeddings(cat, inter, kind="cf", dim=8), cf, atol=1e-6)


def test_bad_input_is_named():
    seqs, _ = communities(n_items=30, n_comm=3, n_users=20)
    with pytest.raises(ValueError, match="n_items is required"):
        collaborative_embeddings(seqs)
    with pytest.raises(ValueError, match=r"sequence 2 holds item row 99, outside \[0, 30\)"):
        collaborative_embeddings(seqs[:2] + [np.array([1, 99])], 30)
    with pytest.raises(ValueError, match="sequence 0 must be a 1-D array of integer item rows"):
        collaborative_embeddings([np.array([0.5, 1.0])], 30)
    with pytest.raises(ValueError, match="unknown collaborative method 'pca'"):
        collaborative_embeddings(seqs, 30, method="pca")
    with pytest.raises(ValueError, match="dim must be an integer >= 1"):
        collaborative_embeddings(seqs, 30, dim=0)
    with pytest.raises(ValueError, match=r"fallback must be float\[30, D\]"):
        collaborative_embeddings(seqs, 30, fallback=np.zeros((29, 3), dtype=np.float32))
    with pytest.raises(TypeError, match="must be neo Interactions"):
        collaborative_embeddings("user item", 30)
    cat = _two_type_catalog()
    with pytest.raises(ValueError, match="kind='cf' needs interactions"):
        sid_embeddings(cat, kind="cf")
    with pytest.raises(ValueError, match="unknown embedding kind 'both'"):
        sid_embeddings(cat, [], kind="both")
    with pytest.raises(ValueError, match=r"text embeddings must be float\[90, D\]"):
        sid_embeddings(cat, [], kind="text", text=np.zeros((3, 3), dtype=np.float32))
