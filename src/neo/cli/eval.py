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

from ._data_args import add_catalog_args, add_interaction_args, catalog_options, interaction_options
from ._threads import set_threads
from .demo import _popular_lists, _say, format_table

__all__ = ["run_eval", "add_parser"]


def run_eval(data: str | None = None, *, interactions: str | None = None, item_text: str | None = None,
             catalog: str | None = None, catalog_options: dict[str, Any] | None = None,
             interaction_options: dict[str, Any] | None = None, target_type: str | None = None,
             protocol: str = "loo", system_dir: str | None = None, baselines: Sequence[str] = ("popularity", "sasrec"),
             exclude_history: bool = True, sasrec_epochs: int = 60, sasrec_kwargs: dict[str, Any] | None = None,
             max_cases: int | None = None, num_beams: int = 30, max_history: int | None = None, seed: int = 0,
             json_path: str | None = None, progress: bool = True, quiet: bool = False) -> dict[str, Any]:
    """Evaluate baselines (and a saved neo system) on a dataset.

    Parameters
    ----------
    data : str, optional
        Dataset spec for :func:`neo.items.datasets.load_dataset` (default: bundled MovieLens).
    interactions : str, optional
        A user's interactions file instead of ``data`` (any format :func:`neo.items.datasets.read_interactions`
        reads, with ``interaction_options``); items are indexed by the system's catalog with
        ``system_dir``, else by ``catalog`` (a file, loaded with ``catalog_options``).
    target_type : str, optional
        The item type ranked (default: the type every interacted item has, else every item).
    protocol : {"loo", "temporal"}
    system_dir : str, optional
        A saved :class:`~neo.NeoSystem`; the interactions are indexed by its catalog (items outside it
        are an error unless ``interaction_options["unknown_items"] == "skip"``, which drops and counts
        them) and it is evaluated on the same cases.
    baselines : names among ``popularity``, ``sasrec``, ``random``.
    exclude_history : bool
        Items of a case's history cannot be ranked (default; SASRec / S3-Rec tables) or stay rankable
        (``False``; TIGER). Every table printed and the metrics JSON say which.
    max_cases : int, optional
        Evaluate on a random subset of the test cases (same subset for every model).
    num_beams, max_history : int
        neo's beam width and prompt history window (the protocol's cap of 20 applies first).
    """
    import numpy as np
    import torch

    from ..evaluation import (KS, evaluate_scorer, evaluate_search, evaluate_topk, leave_one_out, neo_search_fn,
                              neo_topk_fn, random_expectation, temporal_split)
    from ..evaluation.baselines import BM25Search, Popularity, SASRec
    from ..evaluation.metrics import history_policy
    from ..items.datasets import Dataset, DatasetError, SearchQuery, load_dataset, load_user_dataset

    unknown = [b for b in baselines if b not in ("popularity", "sasrec", "random")]
    if unknown:
        raise DatasetError(f"unknown baseline(s) {unknown}; use popularity, sasrec, random (--baselines)")
    if protocol not in ("loo", "temporal"):
        raise DatasetError(f"unknown protocol {protocol!r}; use 'loo' or 'temporal' (--protocol)")
    if data is not None and interactions is not None:
        raise DatasetError("give --data or --interactions, not both")
    if data is not None and Path(data).is_file():  # a data file is read exactly as --interactions reads it
        data, interactions = None, data
    inter_opts = dict(interaction_options or {})
    t_start = time.perf_counter()
    system = None
    if system_dir:
        from ..lm.system import NeoSystem

        system = NeoSystem.load(system_dir)
        if system.catalog is None:
            raise DatasetError(f"{system_dir} holds no catalog; neo eval needs one to map items")
    if interactions is not None:
        cat: Any = catalog
        if system is not None:
            if catalog is not None:
                from ..items.catalog import Catalog

                given = Catalog.load(catalog, **dict(catalog_options or {}))
                if given.fingerprint() != system.catalog.fingerprint():
                    raise DatasetError(f"--catalog {catalog} is not the catalog of the system {system_dir} "
                                       "(different items); drop --catalog: the system's own catalog is used")
            cat = system.catalog
        ds = load_user_dataset(interactions, cat, target_type=target_type, catalog_options=catalog_options,
                               item_text=item_text, **inter_opts)
    else:
        ds = load_dataset(data, item_text=item_text, catalog=catalog, **inter_opts)
        if target_type is not None:
            ds.target_type = target_type
        if system is not None:
            skip = inter_opts.get("unknown_items", "error") == "skip"
            inter = ds.interactions.reindex(system.catalog.ids, drop_unknown=skip, min_length=3)
            new_row = {s: i for i, s in enumerate(system.catalog.ids)}
            queries = []
            for q in ds.queries:
                ids = [ds.catalog.ids[r] for r in q.relevant] if ds.catalog is not None else []
                rel = np.asarray([new_row[i] for i in ids if i in new_row], dtype=np.int64)
                if rel.size:
                    queries.append(SearchQuery(q.query, rel, q.target_type, q.split))
            ds = Dataset(ds.name, inter, system.catalog, ds.target_type, queries, ds.info)
    if ds.target_type is not None and ds.catalog is not None and ds.target_type not in ds.catalog.type_names:
        raise DatasetError(f"--target-type {ds.target_type!r} is not an item type of the catalog "
                           f"{ds.catalog.type_names}")
    if protocol == "temporal" and ds.interactions.timestamps is None:
        raise DatasetError(f"{ds.name}: the temporal protocol needs timestamps and these interactions have none; "
                           "use --protocol loo, or name the time column with --time-col")
    split = leave_one_out(ds.interactions) if protocol == "loo" else temporal_split(ds.interactions)
    test = split.test
    if len(test) == 0:
        raise DatasetError(f"{ds.name}: no test case: leave-one-out needs users with at least 3 interactions "
                           f"({ds.interactions.n_users} users, {ds.interactions.n_interactions} interactions)")
    if max_cases is not None and len(test) > max_cases:
        test = test.subset(np.sort(np.random.default_rng(seed).choice(len(test), size=max_cases, replace=False)))
    cand = ds.candidate_rows()
    policy = history_policy(exclude_history)
    skipped = ds.interactions.info.get("unknown_items", {}).get("rows_skipped", 0)
    _say(f"{ds.name}: {ds.interactions.n_users} users, {ds.interactions.n_items} items "
         f"({len(cand)} candidates{', type ' + ds.target_type if ds.target_type else ''}), "
         f"{ds.interactions.n_interactions} interactions"
         + (f" ({skipped} rows with items outside the catalog skipped)" if skipped else "")
         + f"; protocol {split.name}; {len(test)} test cases; {policy}", quiet)
    table: dict[str, dict[str, float]] = {}
    timings: dict[str, float] = {}
    torch.manual_seed(seed)
    for b in baselines:
        t0 = time.perf_counter()
        if b == "random":
            table["random (expected)"] = random_expectation(test, split.n_items, candidates=cand,
                                                            exclude_history=exclude_history)
        elif b == "popularity":
            table["popularity"] = evaluate_scorer(Popularity().fit(split.train, split.n_items).score, test,
                                                  candidates=cand, exclude_history=exclude_history)
        else:
            kw = dict(sasrec_kwargs or {})
            m = SASRec(split.n_items, seed=seed, **kw).fit(split.train, epochs=sasrec_epochs,
                                                           valid=split.valid if len(split.valid) else None,
                                                           progress=progress)
            table["SASRec (full CE)"] = evaluate_scorer(m.score, test, candidates=cand,
                                                        exclude_history=exclude_history)
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
    validity: dict[str, Any] | None = None
    if system is not None:
        t0 = time.perf_counter()
        topk = neo_topk_fn(system, target_type=ds.target_type, num_beams=num_beams, max_history=max_history,
                           exclude_history=exclude_history)
        checked = {"items": 0, "invalid": 0, "examples": []}
        cand_set = set(int(c) for c in cand)

        def checked_topk(histories: list[Any], k: int) -> list[list[int]]:
            lists = topk(histories, k)
            for h, lst in zip(histories, lists):
                hist = set(int(x) for x in h) if exclude_history else set()
                for r in lst:
                    checked["items"] += 1
                    if int(r) not in cand_set or int(r) in hist:
                        checked["invalid"] += 1
                        if len(checked["examples"]) < 5:
                            checked["examples"].append(int(r))
            return lists

        table["neo"] = evaluate_topk(checked_topk, test, batch_size=8, progress=progress, desc="neo top-K")
        validity = {"items_checked": checked["items"], "invalid": checked["invalid"],
                    "all_valid": checked["invalid"] == 0, "invalid_rows_sample": checked["examples"]}
        if held:
            search["neo"] = evaluate_search(neo_search_fn(system, target_type=ds.target_type, num_beams=num_beams),
                                            held, batch_size=8)
        timings["neo"] = round(time.perf_counter() - t0, 2)
    cols = [f"{m}@{k}" for k in KS for m in ("hr", "ndcg")]
    _say(f"\nRecommendation ({split.name}, full ranking over {len(cand)} candidates, history <= 20; {policy}):\n"
         + format_table(table, cols), quiet)
    if validity is not None:
        _say(f"neo: {validity['items_checked']} ranked items checked, every one a catalog item of the ranked type"
             + (" outside the history" if exclude_history else "")
             + (": yes" if validity["all_valid"] else f": NO ({validity['invalid']} invalid)"), quiet)
    if search:
        _say("\nSearch (held-out queries; no history involved):\n"
             + format_table(search, ["recall@10", "hr@10", "ndcg@10", "ndcg@30"]), quiet)
    result = {"dataset": ds.summary(), "protocol": split.name, "test_cases": len(test),
              "candidates": int(len(cand)), "target_type": ds.target_type, "exclude_history": bool(exclude_history),
              "history": policy, "recommendation": table, "search": search, "timings_s": timings,
              "total_s": round(time.perf_counter() - t_start, 2)}
    if validity is not None:
        result["neo_generated_items"] = validity
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1, default=float))
    return result


HELP = "evaluate baselines and a saved neo system on a dataset or your own files"


def add_parser(subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """Register ``neo eval`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser("eval", help=HELP, parents=list(parents),
                              description="Leave-one-out (last item test, second-to-last validation, history <= 20, "
                                          "full ranking) or temporal evaluation; HR/Recall/NDCG@{5,10,30}. "
                                          "On your files: neo eval --system DIR --interactions FILE.")
    p.add_argument("--data", help="'movielens' (bundled, default), a MovieLens directory, or a data file as "
                                  "--interactions reads it (a P5/S3-Rec sequence file gets its text from --item-text)")
    p.add_argument("--item-text", help="item text for a sequence file (.jsonl catalog, .json map or id<TAB>text)")
    add_interaction_args(p, help="your interactions file (instead of --data); items are named as in the system's "
                                 "catalog (--system) or in --catalog")
    add_catalog_args(p, help="catalog file for --interactions / --data without --system (with --system, the "
                             "system's own catalog is used)")
    p.add_argument("--target-type", help="item type to rank (default: the type every interacted item has, else all)")
    p.add_argument("--protocol", choices=["loo", "temporal"], default="loo",
                   help="loo: leave-one-out (default); temporal: global time cut-offs")
    hist = p.add_mutually_exclusive_group()
    hist.add_argument("--exclude-history", dest="exclude_history", action="store_true", default=True,
                      help="items the user already interacted with cannot be ranked (default; SASRec/S3-Rec tables)")
    hist.add_argument("--keep-history", dest="exclude_history", action="store_false",
                      help="history items stay rankable like any other item (as TIGER and most generative-retrieval "
                           "papers evaluate)")
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
    set_threads(args.threads)  # default 0: torch's default
    run_eval(args.data, interactions=args.interactions, item_text=args.item_text, catalog=args.catalog,
             catalog_options=catalog_options(args), interaction_options=interaction_options(args),
             target_type=args.target_type, protocol=args.protocol, system_dir=args.system,
             baselines=[b for b in args.baselines.split(",") if b], exclude_history=args.exclude_history,
             sasrec_epochs=args.sasrec_epochs, max_cases=args.max_cases, num_beams=args.num_beams,
             max_history=args.max_history or None, seed=args.seed,
             json_path=args.json, progress=not args.no_progress)
    return 0
