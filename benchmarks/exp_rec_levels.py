"""Experiment: where a neo recommender ranks the target's first code, and whether weighting the two SID levels
changes the ranking (issue 13 diagnostic).

For every validation / test case of ml-100k (leave-one-out, history capped at 20) it takes the exact
``log p(item)`` of every catalog item from a saved neo system (constrained top-K with as many beams as
first codes and K = every item, so nothing is pruned), splits it into ``log p(c1)`` (log-sum over the items of
the first code) and ``log p(c2 | c1)``, and reports

- the rank of the target's first code among all first codes (median, share in the top 1 / top 5);
- HR@10 / NDCG@10 when items are ranked by ``alpha * log p(c1) + log p(c2 | c1)`` (history excluded, ties
  against the model); ``alpha = 1`` is the model's own ranking (what beam search returns).

Run (a system saved by ``exp_rec.py --save DIR``)::

    python benchmarks/exp_rec.py --dataset ml-100k --data /work/shared/data/ml-100k --codebook-size 42 \\
        --valid-users 943 --valid-beams 30 --num-beams 50 --pack-length 192 --average-decay 0.999 --lr 2e-3 \\
        --seed 2 --save /tmp/sys_m100k
    python benchmarks/exp_rec_levels.py --system /tmp/sys_m100k --data /work/shared/data/ml-100k --json out.json

About 16 minutes on one thread for the 2 x 943 cases (every item scored for every case).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

ALPHAS = (0.5, 0.7, 0.85, 1.0, 1.15, 1.3, 1.5, 2.0)


def item_scores(system, cases, n_items: int, target_type: str, window: int):
    """Exact ``log p(item)`` ``(cases, n_items)`` and each item's first code ``(n_items,)``."""
    from neo.lm.prompts import Prompt

    scores = np.full((len(cases), n_items), -np.inf)
    first = np.full(n_items, -1, dtype=np.int64)
    n_first = max(t.codebook_sizes[0] for t in system.index.layout.types)
    for s in range(0, len(cases), 32):
        prompts = [Prompt(task="recommend", target_types=target_type, history=[int(x) for x in h[-window:]], k=1,
                          exclude_history=False) for h in cases.histories[s:s + 32]]
        for i, r in enumerate(system.topk_items(prompts, k=n_items, num_beams=n_first)):
            for it in r:
                scores[s + i, it.row] = it.score
                first[it.row] = it.tokens[0]
    return scores, first


def level_report(scores: np.ndarray, first: np.ndarray, cases, window: int) -> dict:
    n = len(cases)
    codes = np.unique(first[first >= 0])
    lp1 = np.full_like(scores, -np.inf)
    per_code = np.zeros((n, len(codes)))
    for j, c in enumerate(codes):
        m = first == c
        per_code[:, j] = np.logaddexp.reduce(scores[:, m], axis=1)
        lp1[:, m] = per_code[:, j:j + 1]
    lp2 = scores - lp1
    tg = np.asarray(cases.targets)
    hidden = np.zeros_like(scores, dtype=bool)
    for i, h in enumerate(cases.histories):
        hidden[i, np.asarray(h[-window:], dtype=np.int64)] = True
    hidden[np.arange(n), tg] = False
    from neo.evaluation.metrics import metrics_from_ranks

    out: dict = {"alpha": {}}
    for a in ALPHAS:
        sc = a * lp1 + lp2
        sc[hidden] = -np.inf
        t = sc[np.arange(n), tg][:, None]
        ranks = (sc > t).sum(1) + (sc == t).sum(1) - 1  # 0-based, ties against the model
        m = metrics_from_ranks(ranks, (10,))
        out["alpha"][str(a)] = {"hr@10": m["hr@10"], "ndcg@10": m["ndcg@10"]}
    code_rank = (per_code > lp1[np.arange(n), tg][:, None]).sum(1)
    out["target_first_code_rank"] = {"median": float(np.median(code_rank)), "top1": float((code_rank < 1).mean()),
                                     "top5": float((code_rank < 5).mean()), "codes": int(len(codes))}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", required=True, help="a neo system saved by exp_rec.py --save")
    ap.add_argument("--data", default="/work/shared/data/ml-100k", help="the ml-100k directory")
    ap.add_argument("--splits", nargs="+", default=["valid", "test"], choices=["valid", "test"])
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--cases", type=int, help="only the first N cases of each split (a quick check)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)

    import torch

    torch.set_num_threads(a.threads)
    from _harness import machine_info
    from exp_rec import load_ml100k

    from neo.evaluation import leave_one_out
    from neo.lm.system import NeoSystem

    ds = load_ml100k(Path(a.data))
    split = leave_one_out(ds.interactions)
    system = NeoSystem.load(a.system)
    system.model.eval()
    res: dict = {"args": vars(a), "machine": machine_info()}
    for name in a.splits:
        cases = getattr(split, name)
        if a.cases:
            cases = cases.subset(np.arange(min(a.cases, len(cases))))
        s, f = item_scores(system, cases, len(ds.catalog), ds.target_type, a.window)
        res[name] = level_report(s, f, cases, a.window)
        print(name, json.dumps(res[name]), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
