"""``neo bench``: constrained-decoding throughput of neo against the decoders people would use otherwise.

One run, one synthetic catalog per size (one item type, 4 levels x 256 codes, vocabulary 151,936, SIDs given
unsorted), rows at random depths inside a span. Providers: neo-cpu (the C++ core), neo-cuda (the device trie,
CUDA only), python-trie-hf (a dict trie behind transformers' PrefixConstrainedLogitsProcessor),
torch-searchsorted, and xgrammar / llguidance when installed (pip install "neo-sid[peers]"). Every provider is
checked against an oracle on the rows it is then timed on; a provider that disagrees is reported, not timed,
and the command exits 1. Details of each provider: neo.bench.providers.

Examples:
    neo bench                                   # 1k .. 1M items, 256 rows, peers up to 120 s compile
    neo bench --sizes 1000000 10000000 --json bench.json --plot bench.png
    neo bench --quick --json /tmp/b.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

__all__ = ["add_parser", "run", "main", "QUICK"]

HELP = "constrained-decoding throughput of neo vs peers (tables, JSON, plot)"

QUICK = dict(sizes=[1000, 5000], rows=[32], repeat=5, min_time_s=0.02, max_time_s=1.0, e2e_items=1000,
             e2e_batch=2, e2e_tokens=12, e2e_repeats=1, peer_timeout=60.0)


def add_parser(subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """Register ``neo bench`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser("bench", help=HELP, parents=list(parents), description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(run=run)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000],
                   help="catalog sizes; the ladder 1k, 10k, ... up to the largest is always measured (default 1M; "
                        "10M needs about 4 GB with the Python baseline)")
    p.add_argument("--rows", type=int, nargs="+", default=[256], help="batch rows per step (default 256)")
    p.add_argument("--providers", nargs="+", default=None,
                   help="subset of: neo-cpu neo-cuda python-trie-hf torch-searchsorted xgrammar llguidance")
    p.add_argument("--peer-timeout", type=float, default=120.0,
                   help="seconds a peer's grammar compile may take; the peer's ladder stops there (default 120)")
    p.add_argument("--python-max-items", type=int, default=10_000_000,
                   help="largest catalog for the Python dict trie (about 200 B/item)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for every provider (default 1: pinned)")
    p.add_argument("--repeat", type=int, default=50, help="minimum timed steps per measurement")
    p.add_argument("--min-time", type=float, default=0.5, help="minimum seconds per measurement")
    p.add_argument("--max-time", type=float, default=10.0, help="stop a slow measurement after this (>= 5 steps)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the catalogs and rows (default 0)")
    p.add_argument("--no-e2e", action="store_true", help="skip the model.generate comparison")
    p.add_argument("--e2e-items", type=int, default=None, help="catalog for the generate comparison "
                                                             "(default: largest size up to 1M)")
    p.add_argument("--e2e-batch", type=int, default=8, help="prompts per generate call in the e2e comparison")
    p.add_argument("--e2e-tokens", type=int, default=48, help="new tokens per prompt in the e2e comparison")
    p.add_argument("--e2e-repeats", type=int, default=3, help="timed repeats of each e2e mode (median reported)")
    p.add_argument("--device-trie-cpu", action="store_true",
                   help="also run neo's device trie on CPU via its torch reference (wiring check, not a speed claim)")
    p.add_argument("--quick", action="store_true", help="small catalogs, few steps (< 60 s; what CI runs)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    p.add_argument("--plot", default=None, metavar="PATH", help="write the PNG plot (needs matplotlib)")
    p.add_argument("--markdown", default=None, metavar="PATH", help="write the tables as markdown")


def run(args: argparse.Namespace) -> int:
    """``neo bench`` with the parsed options; 1 if any provider disagreed with the oracle."""
    from ..bench.harness import run_bench
    from ..bench.report import format_table, write_plot

    kw: dict[str, Any] = dict(sizes=args.sizes, rows=args.rows, providers=args.providers,
                              peer_timeout=args.peer_timeout, python_max_items=args.python_max_items,
                              repeat=args.repeat, min_time_s=args.min_time, max_time_s=args.max_time,
                              threads=args.threads, seed=args.seed, e2e=not args.no_e2e, e2e_items=args.e2e_items,
                              e2e_batch=args.e2e_batch, e2e_tokens=args.e2e_tokens, e2e_repeats=args.e2e_repeats,
                              device_trie_cpu=args.device_trie_cpu, quick=args.quick)
    if args.quick:
        kw.update(QUICK)
    log = lambda s: print(s, flush=True)  # noqa: E731
    doc = run_bench(**kw, log=log)
    table = format_table(doc)
    print()
    print(table)
    m = doc["machine"]
    print(f"\nmachine: {m.get('cpu')}, {m['cpu_count']} cores ({m['threads']} thread(s) used), load {m['load_avg']}, "
          f"commit {m['commit']}; total {doc['config']['wall_s']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=1))
        print(f"wrote {args.json}")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(table + "\n")
        print(f"wrote {args.markdown}")
    if args.plot:
        try:
            print(f"wrote {write_plot(doc, args.plot)}")
        except ImportError:
            print("--plot needs matplotlib (pip install neo-sid[peers]); no plot written", file=sys.stderr)
            return 2
    bad = [r for r in doc["results"] if r["agree"] is False]
    e = doc["e2e"]
    if bad or (e is not None and not e["outputs_agree"]):
        print(f"DISAGREEMENT: {[(r['provider'], r['items'], r['rows']) for r in bad]}"
              + ("; e2e outputs differ" if e is not None and not e["outputs_agree"] else ""), file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``neo bench [options]`` called from Python (same options as the command)."""
    p = argparse.ArgumentParser(prog="neo bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    return run(p.parse_args(argv))
