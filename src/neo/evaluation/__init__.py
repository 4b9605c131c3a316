"""Evaluation: protocols (leave-one-out, temporal), ranking metrics, drivers over models and neo systems, and
the baselines (popularity, SASRec, BM25)."""

from . import baselines
from .metrics import (KS, hit_rate_at_k, metrics_from_ranks, ndcg_at_k, ranks_from_scores, ranks_from_topk,
                      recall_at_k, search_metrics)
from .protocols import EvalCases, Split, leave_one_out, temporal_split
from .runners import (evaluate_scorer, evaluate_search, evaluate_topk, format_compliance, neo_search_fn, neo_topk_fn,
                      random_expectation, sid_validity_and_steering)

__all__ = ["baselines", "KS", "EvalCases", "Split", "leave_one_out", "temporal_split", "ranks_from_scores",
           "ranks_from_topk", "metrics_from_ranks", "hit_rate_at_k", "recall_at_k", "ndcg_at_k", "search_metrics",
           "evaluate_scorer", "random_expectation", "evaluate_topk", "evaluate_search", "neo_topk_fn",
           "neo_search_fn", "sid_validity_and_steering", "format_compliance"]
