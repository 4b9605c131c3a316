"""Baselines: popularity, SASRec (beats popularity on a clear sequential pattern), lexical search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neo.evaluation.baselines import BM25Search, Popularity, RandomScorer, SASRec, TfidfSearch
from neo.items.datasets import Interactions
from neo.evaluation import evaluate_scorer, leave_one_out


def _cyclic_world(n_users: int = 120, n_items: int = 30, length: int = 12, seed: int = 0) -> Interactions:
    """Each user walks a cycle i -> i+1 (mod n) from a random start, with popular noise items
    sprinkled in: the next item is predictable from the last one, not from popularity."""
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n_users):
        start = int(rng.integers(n_items))
        seqs.append(np.asarray([(start + j) % n_items for j in range(length)], dtype=np.int64))
    return Interactions([f"u{i}" for i in range(n_users)], [str(i) for i in range(n_items)], seqs)


def test_popularity_counts_and_errors():
    pop = Popularity().fit([np.array([0, 1, 1]), np.array([1, 2])], 4)
    assert pop.score([np.array([0])])[0].tolist() == [1.0, 3.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="outside"):
        Popularity().fit([np.array([5])], 4)
    with pytest.raises(RuntimeError, match="before fit"):
        Popularity().score([np.array([0])])


def test_sasrec_beats_popularity_on_a_sequential_pattern():
    torch.set_num_threads(1)
    inter = _cyclic_world()
    sp = leave_one_out(inter)
    pop = Popularity().fit(sp.train, sp.n_items)
    m_pop = evaluate_scorer(pop.score, sp.test, ks=(1, 5))
    m_rand = evaluate_scorer(RandomScorer(sp.n_items).score, sp.test, ks=(5,))
    model = SASRec(sp.n_items, hidden=32, layers=1, heads=1, max_len=8, dropout=0.0, seed=0)
    model.fit(sp.train, epochs=25, batch_size=32, lr=5e-3)
    m_sas = evaluate_scorer(model.score, sp.test, ks=(1, 5))
    assert model.history[-1]["loss"] < model.history[0]["loss"]
    assert m_sas["hr@1"] > 0.8, m_sas
    assert m_sas["hr@5"] > m_pop["hr@5"] + 0.3 and m_sas["hr@5"] > m_rand["hr@5"]


def test_sasrec_scores_shape_and_empty_history():
    m = SASRec(7, hidden=16, layers=1, heads=1, max_len=4, dropout=0.0)
    s = m.score([np.array([1, 2, 3, 4, 5, 6]), np.array([], dtype=np.int64)])
    assert s.shape == (2, 7) and np.isfinite(s).all()
    with pytest.raises(ValueError, match="2 or more"):
        m.fit([np.array([1])], epochs=1)


def test_bm25_and_tfidf_search():
    texts = ["space opera with robots", "a romantic comedy in paris", "robots fight in space", "a long cooking show with many robots in a big kitchen"]
    for cls in (BM25Search, TfidfSearch):
        s = cls(texts)
        top = s.search(["space robots", "paris romance comedy"], k=2)
        assert set(top[0]) == {0, 2}
        assert top[1][0] == 1
        restricted = cls(texts, candidates=np.array([1, 3]))
        assert restricted.search(["space robots"], k=4)[0] == [3, 1]
    bm = BM25Search(texts)
    sc = bm.score(["robots"])[0]
    # the shorter document with the same term frequency scores higher (length normalisation)
    assert sc[2] > sc[3] > 0 and sc[1] == 0
