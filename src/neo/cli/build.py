"""neo build: a neo system from your own catalog and interactions files.

    neo build --catalog items.csv --interactions events.jsonl --output my-system
    neo train instruct --system my-system --interactions events.jsonl --output my-run
    neo eval --system my-run/system --interactions events.jsonl

Embeddings -> semantic IDs -> SID vocabulary -> adapted model (--model PATH, a local pre-trained
Hugging Face causal LM, or a small model and tokenizer trained here from scratch) -> a saved system,
then a quality report. The same pipeline from Python: neo.training.build.build_system.
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

from ._data_args import add_catalog_args, add_interaction_args, catalog_options, interaction_options
from ._threads import THREADS_HELP, set_threads

__all__ = ["HELP", "add_parser", "run"]

HELP = "build a neo system from your own catalog and interactions files"


def add_parser(subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """Register ``neo build`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser("build", help=HELP, parents=list(parents), description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_catalog_args(p, required=True)
    add_interaction_args(p)
    p.add_argument("--output", required=True, metavar="DIR",
                   help="directory for the saved system (new or empty; an existing system needs --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace a neo system already saved in --output")
    s = p.add_argument_group("semantic IDs")
    s.add_argument("--sids", default="text", metavar="METHOD",
                   help="how item SIDs are made: 'text' (residual k-means over text embeddings; default), 'cf' "
                        "(over collaborative embeddings learnt from --interactions), 'hybrid' (both), or "
                        "'codes:FILE' (codes you already have: JSON id -> codes, or a table with an id and a codes "
                        "column; neo adds the collision level)")
    s.add_argument("--embedder", default="tfidf", metavar="SPEC",
                   help="text embedder: 'tfidf' (offline, default), a .npy file of vectors in catalog order, or a "
                        "local model directory")
    s.add_argument("--cf-method", choices=["cooc", "mf"], default="cooc",
                   help="collaborative embeddings of cf/hybrid: 'cooc' (co-occurrence PPMI + SVD, default) or 'mf' "
                        "(implicit ALS)")
    s.add_argument("--cf-dim", type=int, default=64, help="dimension of the collaborative embeddings (default 64)")
    s.add_argument("--cf-weight", type=float, default=0.5,
                   help="hybrid: share of the collaborative part in the similarity, 0..1 (default 0.5)")
    s.add_argument("--levels", type=int, help="SID levels per type (default: from the number of items)")
    s.add_argument("--codebook-size", type=int, help="codes per level (default: from the number of items)")
    s.add_argument("--balance", type=float, metavar="B",
                   help="balanced k-means: no cluster above B times the mean size within its prefix (e.g. 1.1; "
                        "default: standard k-means)")
    s.add_argument("--collisions", choices=["extra_level", "popular"], default="extra_level",
                   help="items sharing codes: 'extra_level' adds a level so every item is reachable (default); "
                        "'popular' keeps the most popular one")
    s.add_argument("--item-level", choices=["replace", "append"],
                   help="give every item its own last SID level (one token per item, its own input and output row): "
                        "'replace' the last code with it, or 'append' it (default: plain SIDs)")
    m = p.add_argument_group("model")
    m.add_argument("--model", metavar="PATH",
                   help="a local pre-trained Hugging Face causal LM directory (never downloaded); default: a small "
                        "Llama and tokenizer trained here from scratch on the catalog text")
    m.add_argument("--stage0-steps", type=int, default=300,
                   help="training steps of the from-scratch model (default 300)")
    m.add_argument("--hidden", type=int, default=128, help="hidden size of the from-scratch model (default 128)")
    m.add_argument("--layers", type=int, default=4, help="layers of the from-scratch model (default 4)")
    m.add_argument("--vocab-size", type=int, default=4000,
                   help="text vocabulary of the tokenizer trained from scratch (default 4000)")
    m.add_argument("--batch-size", type=int, default=16, help="batch size of the from-scratch training (default 16)")
    m.add_argument("--init", choices=["mean", "semantic"], default="mean",
                   help="initialisation of the new SID rows (default mean)")
    p.add_argument("--holdout", type=int, default=2,
                   help="last items per user that the build does not learn from (popularity, collaborative "
                        "embeddings): 2 (default) keeps the leave-one-out targets of neo train/eval unseen; 0 for "
                        "a production system")
    p.add_argument("--seed", type=int, default=0, help="random seed of every step (default 0)")
    p.add_argument("--json", metavar="FILE", help="also write the build report JSON here")
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """``neo build`` with the parsed options: build, save, print the quality report."""
    import json
    from pathlib import Path

    from ..training.build import BuildConfig, build_system, parse_sids_spec

    parse_sids_spec(args.sids)  # a bad --sids fails before torch loads
    if not args.interactions and (given := [f for f in _interaction_flags(args)[::2] if f != "--encoding"]):
        from ..core.errors import NeoDataError

        raise NeoDataError(f"{', '.join(given)} name(s) columns of --interactions, which was not given; add "
                           "--interactions FILE or drop them")
    set_threads(args.threads)
    cfg = BuildConfig(sids=args.sids, embedder=args.embedder, cf_method=args.cf_method, cf_dim=args.cf_dim,
                      cf_weight=args.cf_weight, levels=args.levels, codebook_size=args.codebook_size,
                      balance=args.balance, collisions=args.collisions, item_level=args.item_level, model=args.model,
                      vocab_size=args.vocab_size, hidden=args.hidden, layers=args.layers,
                      stage0_steps=args.stage0_steps, batch_size=args.batch_size, init=args.init,
                      holdout=args.holdout, seed=args.seed)
    res = build_system(args.catalog, args.interactions, args.output, config=cfg,
                       catalog_options=catalog_options(args),
                       interaction_options=interaction_options(args) if args.interactions else None,
                       overwrite=args.overwrite, progress=not args.no_progress)
    print("\n" + res.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(res.report, indent=1, default=float))
    same = " ".join([args.interactions or "FILE"] + _interaction_flags(args))
    print(f"\nnext: neo train instruct --system {args.output} --interactions {same} --output RUN_DIR"
          f"\n      neo eval --system RUN_DIR/system --interactions {same}")
    return 0


def _interaction_flags(args: argparse.Namespace) -> list[str]:
    """The interactions options given to ``neo build``, to repeat for ``neo train`` / ``neo eval``."""
    import shlex

    flags = []
    for opt, default in (("user_col", None), ("item_col", None), ("time_col", None), ("item_id", "{}"),
                         ("unknown_items", "error"), ("encoding", "utf-8")):
        v = getattr(args, opt, None)
        if v is not None and v != default:
            flags += ["--" + opt.replace("_", "-"), shlex.quote(str(v))]
    return flags
