"""Metric functions against hand-computed values; protocols without leakage."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from neo.items.datasets import Interactions
from neo.evaluation import (
    EvalCases,
    evaluate_scorer,
    evaluate_topk,
    hit_rate_at_k,
    leave_one_out,
    metrics_from_ranks,
    ndcg_at_k,
    ranks_from_scores,
    random_expectation,
    ranks_from_topk,
    recall_at_k,
    search_metrics,
    temporal_split,
)


def test_ranks_from_scores_pessimistic_ties_and_neg_inf():
    s = np.array([[0.1, 0.9, 0.5, 0.5],
                  [1.0, 1.0, 1.0, 1.0],
                  [-np.inf, 2.0, 1.0, 0.0]])
    r = ranks_from_scores(s, np.array([2, 0, 0]))
    assert r[0] == 2  # 0.9 above, the other 0.5 ties -> counted ahead
    assert r[1] == 3  # constant scores: the target ranks last
    assert r[2] > 10**9  # a -inf target is a miss
    with pytest.raises(ValueError, match="outside"):
        ranks_from_scores(s, np.array([0, 0, 4]))


def test_metrics_from_ranks_hand_computed():
    m = metrics_from_ranks(np.array([0, 3, 9, 50]), ks=(5, 10))
    assert m["hr@5"] == pytest.approx(2 / 4)
    assert m["hr@10"] == pytest.approx(3 / 4)
    assert m["recall@10"] == m["hr@10"]
    assert m["ndcg@5"] == pytest.approx((1.0 + 1 / math.log2(5)) / 4)
    assert m["ndcg@10"] == pytest.approx((1.0 + 1 / math.log2(5) + 1 / math.log2(11)) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 4 + 1 / 10 + 1 / 51) / 4)


def test_per_query_metrics_hand_computed():
    ranked = [7, 3, 5, 1, 9]
    rel = {3, 9, 4}
    assert hit_rate_at_k(ranked, rel, 1) == 0.0
    assert hit_rate_at_k(ranked, rel, 2) == 1.0
    assert recall_at_k(ranked, rel, 5) == pytest.approx(2 / 3)
    dcg = 1 / math.log2(3) + 1 / math.log2(6)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranked, rel, 5) == pytest.approx(dcg / idcg)
    assert ndcg_at_k([3, 9, 4], rel, 3) == pytest.approx(1.0)
    assert ndcg_at_k([3, 3, 3], {3}, 3) == pytest.approx(1.0)  # repeats count once
    with pytest.raises(ValueError, match="relevant"):
        recall_at_k(ranked, [], 5)
    m = search_metrics([ranked, [4]], [rel, [4]], ks=(5,))
    assert m["recall@5"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["hr@5"] == 1.0


def test_ranks_from_topk():
    r = ranks_from_topk([[4, 2, 7], [1], []], np.array([7, 3, 0]))
    assert r[0] == 2 and r[1] > 10**9 and r[2] > 10**9


def _inter(seqs, times=None):
    n = 1 + max(int(max(s)) for s in seqs)
    return Interactions([f"u{i}" for i in range(len(seqs))], [str(i) for i in range(n)],
                        [np.asarray(s, dtype=np.int64) for s in seqs],
                        None if times is None else [np.asarray(t, dtype=np.int64) for t in times])


def test_leave_one_out_no_leakage():
    rng = np.random.default_rng(0)
    seqs = [rng.choice(50, size=n, replace=False) for n in (2, 3, 5, 30, 40)]
    sp = leave_one_out(_inter(seqs), max_history=20)
    assert len(sp.test) == len(sp.valid) == 4  # the 2-item user only trains
    assert np.array_equal(sp.train[0], seqs[0])
    for c in range(len(sp.test)):
        u = sp.test.users[c]
        s = seqs[u]
        assert sp.test.targets[c] == s[-1] and sp.valid.targets[c] == s[-2]
        assert sp.test.targets[c] not in sp.train[u] and sp.valid.targets[c] not in sp.train[u]
        assert np.array_equal(sp.train[u], s[:-2])
        assert np.array_equal(sp.valid.histories[c], s[:-2][-20:])
        assert np.array_equal(sp.test.histories[c], s[:-1][-20:])
        assert len(sp.test.histories[c]) <= 20
        assert sp.test.targets[c] not in sp.test.histories[c]


def test_temporal_split_never_sees_the_future():
    rng = np.random.default_rng(1)
    seqs, times = [], []
    for u in range(30):
        n = int(rng.integers(3, 15))
        seqs.append(rng.choice(40, size=n, replace=False))
        times.append(np.sort(rng.integers(0, 1000, size=n)))
    inter = _inter(seqs, times)
    sp = temporal_split(inter, valid_frac=0.2, test_frac=0.2)
    t_all = np.concatenate(times)
    t_valid = np.quantile(t_all, 0.6)
    for u in range(30):
        assert (times[u][: len(sp.train[u])] < t_valid).all()
    assert len(sp.test) > 0 and len(sp.valid) > 0
    for cases in (sp.valid, sp.test):
        for h, t, u in zip(cases.histories, cases.targets, cases.users):
            pos = int(np.flatnonzero(seqs[u] == t)[0])
            assert np.array_equal(h, seqs[u][:pos][-20:])  # exactly the past, nothing later
    with pytest.raises(ValueError, match="timestamps"):
        temporal_split(_inter(seqs))


def test_evaluate_scorer_excludes_history_and_masks_candidates():
    cases = EvalCases(np.array([0, 1]), [np.array([0, 1]), np.array([2])], np.array([2, 3]))

    def score(histories):  # item 0 best, then 1, 2, 3
        return np.tile(np.array([4.0, 3.0, 2.0, 1.0]), (len(histories), 1))

    m = evaluate_scorer(score, cases, ks=(1, 2))
    # case 0: 0 and 1 excluded -> target 2 ranks first; case 1: 2 excluded -> 0, 1 above target 3
    assert m["hr@1"] == pytest.approx(0.5)
    m2 = evaluate_scorer(score, cases, ks=(1,), exclude_history=False)
    assert m2["hr@1"] == 0.0
    m3 = evaluate_scorer(score, cases, ks=(1,), candidates=np.array([2, 3]))
    assert m3["hr@1"] == pytest.approx(1.0)  # case 1: 0, 1 are not candidates, 2 is history -> 3 first
    mt = evaluate_topk(lambda hs, k: [[2, 0], [0, 1, 3]], cases, ks=(1, 3))
    assert mt["hr@1"] == 0.5 and mt["hr@3"] == 1.0


def test_random_expectation_matches_hand_count_and_simulation():
    cases = EvalCases(np.array([0, 1]), [np.array([0, 1]), np.array([], dtype=np.int64)], np.array([2, 3]))
    m = random_expectation(cases, 6, ks=(1, 2))
    # case 0: 4 rankable items (0 and 1 excluded); case 1: 6
    assert m["hr@1"] == pytest.approx((1 / 4 + 1 / 6) / 2)
    assert m["hr@2"] == pytest.approx((2 / 4 + 2 / 6) / 2)
    assert m["ndcg@2"] == pytest.approx(((1 + 1 / math.log2(3)) / 4 + (1 + 1 / math.log2(3)) / 6) / 2)
    rng = np.random.default_rng(0)
    sims = [evaluate_scorer(lambda hs: rng.random((len(hs), 6)), cases, ks=(2,))["hr@2"] for _ in range(2000)]
    assert np.mean(sims) == pytest.approx(m["hr@2"], abs=0.02)
    mc = random_expectation(cases, 6, candidates=np.array([2, 3, 4]), ks=(1,))
    assert mc["hr@1"] == pytest.approx(1 / 3)


def test_run_eval_on_a_p5_sequence_file(tmp_path):
    from neo.cli.eval import run_eval

    rng = np.random.default_rng(0)
    lines = []
    for u in range(40):
        start = int(rng.integers(20))
        lines.append(" ".join([f"u{u}"] + [str(1 + (start + j) % 20) for j in range(6)]))
    p = tmp_path / "toy.txt"
    p.write_text("\n".join(lines) + "\n")
    js = tmp_path / "r.json"
    res = run_eval(str(p), baselines=("random", "popularity"), quiet=True, progress=False, json_path=str(js))
    assert res["test_cases"] == 40 and res["candidates"] == 20
    assert res["recommendation"]["random (expected)"]["hr@5"] == pytest.approx(5 / 15)  # 5 history items excluded
    assert 0.0 <= res["recommendation"]["popularity"]["hr@10"] <= 1.0
    assert json.loads(js.read_text())["protocol"] == "leave-one-out"
    with pytest.raises(ValueError, match="unknown baseline"):
        run_eval(str(p), baselines=("bpr",), quiet=True)
    with pytest.raises(ValueError, match="timestamps"):
        run_eval(str(p), protocol="temporal", baselines=("popularity",), quiet=True)
