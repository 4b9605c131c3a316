"""Ranking metrics.

* Recall/HR@K and NDCG@K for K in (5, 10, 30) from full-ranking scores (:func:`ranks_from_scores`)
  or from a top-K list (:func:`ranks_from_topk`). With one target per case Recall@K = HR@K.
  Ties are broken pessimistically (the target ranks after every item with the same score), so a
  constant scorer earns nothing.
* Search: Recall@K, HR@K and NDCG@K with several relevant items per query (:func:`search_metrics`).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np

__all__ = ["KS", "ranks_from_scores", "ranks_from_topk", "metrics_from_ranks", "hit_rate_at_k", "recall_at_k",
           "ndcg_at_k", "search_metrics", "history_policy"]

KS = (5, 10, 30)
_NOT_FOUND = np.iinfo(np.int64).max // 2


def history_policy(exclude_history: bool) -> str:
    """How a results table treats items the user already interacted with, in words.

    Excluding them (neo's default, as SASRec and S3-Rec evaluate) raises every model's numbers over
    keeping them rankable (as TIGER and most generative-retrieval papers do), so a table must say
    which it did before its numbers are compared with a paper's."""
    return ("history items excluded from the ranking" if exclude_history
            else "history items kept in the ranking (rankable, as in TIGER)")


# ============================================================================ ranking metrics


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target: items scored higher, plus other items scored equal (pessimistic
    ties). ``-inf`` scores are never ranked; a target scored ``-inf`` gets a huge rank (a miss).

    Parameters
    ----------
    scores : np.ndarray
        ``(B, n_items)`` float.
    targets : np.ndarray
        ``(B,)`` item indices.
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    if scores.ndim != 2 or scores.shape[0] != targets.shape[0]:
        raise ValueError(f"scores must be (B, n_items) with B = len(targets) = {targets.shape[0]}, got {scores.shape}")
    if targets.size and (targets.min() < 0 or targets.max() >= scores.shape[1]):
        raise ValueError(f"target item outside [0, {scores.shape[1]})")
    t = scores[np.arange(targets.size), targets][:, None]
    ranks = (scores > t).sum(1) + (scores == t).sum(1) - 1
    ranks = ranks.astype(np.int64)
    ranks[np.isneginf(t[:, 0]) | np.isnan(t[:, 0])] = _NOT_FOUND
    return ranks


def ranks_from_topk(topk: Sequence[Sequence[int]], targets: np.ndarray) -> np.ndarray:
    """0-based position of each target in its ranked list (a huge rank when absent)."""
    targets = np.asarray(targets, dtype=np.int64)
    if len(topk) != targets.size:
        raise ValueError(f"{len(topk)} ranked lists for {targets.size} targets")
    out = np.full(targets.size, _NOT_FOUND, dtype=np.int64)
    for i, (lst, t) in enumerate(zip(topk, targets)):
        for pos, it in enumerate(lst):
            if int(it) == int(t):
                out[i] = pos
                break
    return out


def metrics_from_ranks(ranks: np.ndarray, ks: Iterable[int] = KS) -> dict[str, float]:
    """HR@K (= Recall@K with one target), NDCG@K (= 1/log2(rank + 2) inside the top K) and MRR."""
    ranks = np.asarray(ranks, dtype=np.int64)
    out: dict[str, float] = {"n": int(ranks.size)}
    if ranks.size == 0:
        return out
    for k in ks:
        hit = ranks < k
        out[f"hr@{k}"] = float(hit.mean())
        out[f"recall@{k}"] = out[f"hr@{k}"]
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(np.minimum(ranks, k) + 2.0), 0.0).mean())
    out["mrr"] = float(np.where(ranks < _NOT_FOUND, 1.0 / (ranks.astype(np.float64) + 1.0), 0.0).mean())
    return out


def hit_rate_at_k(ranked: Sequence[int], relevant: Iterable[int], k: int) -> float:
    """1.0 if any relevant item is among the first ``k`` of ``ranked``, else 0.0."""
    rel = {int(x) for x in relevant}
    return float(any(int(x) in rel for x in list(ranked)[:k]))


def recall_at_k(ranked: Sequence[int], relevant: Iterable[int], k: int) -> float:
    """Fraction of the relevant items found among the first ``k`` of ``ranked``."""
    rel = {int(x) for x in relevant}
    if not rel:
        raise ValueError("recall is undefined without relevant items")
    return len(rel & {int(x) for x in list(ranked)[:k]}) / len(rel)


def ndcg_at_k(ranked: Sequence[int], relevant: Iterable[int], k: int) -> float:
    """Binary-relevance NDCG@k: DCG of ``ranked[:k]`` over the DCG of an ideal list (all relevant
    items first). Repeated items count once."""
    rel = {int(x) for x in relevant}
    if not rel:
        raise ValueError("NDCG is undefined without relevant items")
    dcg, seen = 0.0, set()
    for pos, x in enumerate(list(ranked)[:k]):
        x = int(x)
        if x in rel and x not in seen:
            dcg += 1.0 / math.log2(pos + 2)
        seen.add(x)
    idcg = sum(1.0 / math.log2(p + 2) for p in range(min(len(rel), k)))
    return dcg / idcg


def search_metrics(ranked: Sequence[Sequence[int]], relevant: Sequence[Iterable[int]],
                   ks: Iterable[int] = KS) -> dict[str, float]:
    """Mean Recall@K, HR@K and NDCG@K over queries with several relevant items each."""
    if len(ranked) != len(relevant):
        raise ValueError(f"{len(ranked)} ranked lists for {len(relevant)} queries")
    out: dict[str, float] = {"n": len(ranked)}
    if not ranked:
        return out
    rels = [list(r) for r in relevant]
    for k in ks:
        out[f"recall@{k}"] = float(np.mean([recall_at_k(a, r, k) for a, r in zip(ranked, rels)]))
        out[f"hr@{k}"] = float(np.mean([hit_rate_at_k(a, r, k) for a, r in zip(ranked, rels)]))
        out[f"ndcg@{k}"] = float(np.mean([ndcg_at_k(a, r, k) for a, r in zip(ranked, rels)]))
    return out
