"""``neo eval``: evaluate baselines (and a saved neo system with ``--system``) on a dataset with the
leave-one-out or temporal protocol (HR / Recall / NDCG at 5, 10, 30, full ranking).

The pipeline is :func:`run_eval` (callable from Python); :func:`add_parser` wires it into ``neo eval``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Sequence

from .demo import _popular_lists, _say, format_table

__all__ = ["run_eval", "add_parser"]


def run_eval(data: str | None = None, *, item_text: str | None = None, catalog: str | None = None,
             protocol: str = "loo", system_dir: str | None = None, baselines: Sequence[str] = ("popularity", "sasrec"),
             sasrec_epochs: int = 60, sasrec_kwargs: dict[str, Any] | None = None, max_cases: int | None = None,
             num_beams: int = 30, max_history: int | None = None, seed: int = 0, json_path: str | None = None, progress: bool = True,
             quiet: bool = False) -> dict[str, Any]:
    """Evaluate baselines (and a saved neo system) on a dataset.

    Parameters
    ----------
    data : str, optional
        Dataset spec for :func:`neo.items.datasets.load_dataset` (default: bundled MovieLens).
    protocol : {"loo", "temporal"}
    system_dir : str, optional
        A saved :class:`~neo.NeoSystem`; the interactions are re-indexed to its catalog
        (interactions with items outside it are dropped) and it is evaluated on the same cases.
    baselines : names among ``popularity``, ``sasrec``, ``random``.
    max_cases : int, optional
        Evaluate on a random subset of the test cases (same subset for every model).
    num_beams, max_history : int
        neo's beam width and prompt history window (the protocol's cap of 20 applies first).
    """
    import numpy as np
    import torch

    from ..evaluation.baselines import BM25Search, Popularity, SASRec
    from ..items.datasets import Dataset, SearchQuery, load_dataset
    from ..evaluation import (KS, evaluate_scorer, evaluate_search, evaluate_topk, leave_one_out, neo_search_fn,
                             neo_topk_fn, random_expectation, temporal_split)

    unknown = [b for b in baselines if b not in ("popularity", "sasrec", "random")]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; use popularity, sasrec, random")
    if protocol not in ("loo", "temporal"):
        raise ValueError(f"unknown protocol {protocol!r}; use 'loo' or 'temporal'")
    t_start = time.perf_counter()
    ds = load_dataset(data, item_text=item_text, catalog=catalog)
    system = None
    if system_dir:
        from ..lm.system import NeoSystem

        system = NeoSystem.load(system_dir)
        if system.catalog is None:
            raise ValueError(f"{system_dir} holds no catalog; neo eval needs one to map items")
        inter = ds.interactions.reindex(system.catalog.ids, drop_unknown=True, min_length=3)
        new_row = {s: i for i, s in enumerate(system.catalog.ids)}
        queries = []
        for q in ds.queries:
            ids = [ds.catalog.ids[r] for r in q.relevant] if ds.catalog is not None else []
            rel = np.asarray([new_row[i] for i in ids if i in new_row], dtype=np.int64)
            if rel.size:
                queries.append(SearchQuery(q.query, rel, q.target_type, q.split))
        ds = Dataset(ds.name, inter, system.catalog, ds.target_type, queries, ds.info)
    split = leave_one_out(ds.interactions) if protocol == "loo" else temporal_split(ds.interactions)
    test = split.test
    if max_cases is not None and len(test) > max_cases:
        test = test.subset(np.sort(np.random.default_rng(seed).choice(len(test), size=max_cases, replace=False)))
    cand = ds.candidate_rows()
    _say(f"{ds.name}: {ds.interactions.n_users} users, {ds.interactions.n_items} items "
         f"({len(cand)} candidates), {ds.interactions.n_interactions} interactions; protocol {split.name}; "
         f"{len(test)} test cases", quiet)
    table: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    torch.manual_seed(seed)
    for b in baselines:
        t0 = time.perf_counter()
        if b == "random":
            table["random (expected)"] = random_expectation(test, split.n_items, candidates=cand)
        elif b == "popularity":
            table["popularity"] = evaluate_scorer(Popularity().fit(split.train, split.n_items).score, test,
                                                  candidates=cand)
        else:
            kw = dict(sasrec_kwargs or {})
            m = SASRec(split.n_items, seed=seed, **kw).fit(split.train, epochs=sasrec_epochs,
                                                           valid=split.valid if len(split.valid) else None,
                                                           progress=progress)
            table["SASRec (full CE)"] = evaluate_scorer(m.score, test, candidates=cand)
            table["SASRec (full CE)"]["epochs_run"] = len(m.history)
        timings[b] = round(time.perf_counter() - t0, 2)
        _say(f"  {b}: {timings[b]:.1f} s", quiet)
    search: dict[str, dict[str, float]] = {}
    held = [q for q in ds.queries if q.split == "test"]
    if held and ds.catalog is not None:
        texts = [ds.catalog.item_text(r) for r in range(len(ds.catalog))]
        bm25 = BM25Search(texts, candidates=cand)
        search["BM25"] = evaluate_search(lambda qs, k: bm25.search(qs, k), held)
        counts = Popularity().fit(split.train, split.n_items).counts
        search["popularity (query-blind)"] = evaluate_search(_popular_lists(counts, cand), held)
    if system is not None:
        t0 = time.perf_counter()
        table["neo"] = evaluate_topk(neo_topk_fn(system, target_type=ds.target_type, num_beams=num_beams,
                                                 max_history=max_history), test,
                                     batch_size=8, progress=progress, desc="neo top-K")
        if held:
            search["neo"] = evaluate_search(neo_search_fn(system, target_type=ds.target_type, num_beams=num_beams),
                                            held, batch_size=8)
        timings["neo"] = round(time.perf_counter() - t0, 2)
    cols = [f"{m}@{k}" for k in KS for m in ("hr", "ndcg")]
    _say(format_table(table, cols), quiet)
    if search:
        _say("search (held-out queries):\n" + format_table(search, ["recall@10", "hr@10", "ndcg@10", "ndcg@30"]),
             quiet)
    result = {"dataset": ds.summary(), "protocol": split.name, "test_cases": len(test),
              "candidates": int(len(cand)), "recommendation": table, "search": search, "timings_s": timings,
              "total_s": round(time.perf_counter() - t_start, 2)}
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1, default=float))
    return result


HELP = "evaluate baselines and a saved neo system on a dataset"


def add_parser(subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """Register ``neo eval`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser("eval", help=HELP, parents=list(parents),
                              description="Leave-one-out (last item test, second-to-last validation, history <= 20, "
                                          "full ranking) or temporal evaluation; HR/Recall/NDCG@{5,10,30}.")
    p.add_argument("--data", help="'movielens' (bundled, default), a MovieLens directory, an interactions CSV "
                                  "(user,item,timestamp) or a P5/S3-Rec sequence file")
    p.add_argument("--item-text", help="item text for a sequence file (.jsonl catalog, .json map or id<TAB>text)")
    p.add_argument("--catalog", help="catalog file for an interactions CSV")
    p.add_argument("--protocol", choices=["loo", "temporal"], default="loo",
                   help="loo: leave-one-out (default); temporal: global time cut-offs")
    p.add_argument("--system", help="a saved neo system directory to evaluate alongside the baselines")
    p.add_argument("--baselines", default="popularity,sasrec", help="comma list of popularity,sasrec,random")
    p.add_argument("--sasrec-epochs", type=int, default=60, help="SASRec training epochs (default 60)")
    p.add_argument("--max-cases", type=int, help="evaluate a random subset of test cases")
    p.add_argument("--num-beams", type=int, default=30, help="neo's beam width for top-K items (default 30)")
    p.add_argument("--max-history", type=int, default=0,
                   help="items of history in neo's prompt (0: all, up to the protocol's 20; the demo trains with 10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (case subset, SASRec)")
    p.add_argument("--json", help="write the metrics JSON here")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """``neo eval`` with the parsed options."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    run_eval(args.data, item_text=args.item_text, catalog=args.catalog, protocol=args.protocol,
             system_dir=args.system, baselines=[b for b in args.baselines.split(",") if b],
             sasrec_epochs=args.sasrec_epochs, max_cases=args.max_cases, num_beams=args.num_beams,
             max_history=args.max_history or None, seed=args.seed,
             json_path=args.json, progress=not args.no_progress)
    return 0
