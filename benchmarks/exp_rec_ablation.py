"""Ablation for issue 13: which change moved neo's recommendation numbers, and by how much.

Every variant is one ``benchmarks/exp_rec.py`` run on the same data, split, seed, budget and thread count;
each removes (or reverts) one ingredient of the final recipe, so a row's difference to ``final`` is what
that ingredient contributes. The final recipe and its baselines (popularity, SASRec) come from the
``final`` row's own run; the other rows skip SASRec.

Run, e.g.::

    python benchmarks/exp_rec_ablation.py --dataset demo --out /tmp/abl --parallel 2 --max-minutes 8
    python benchmarks/exp_rec_ablation.py --report /tmp/abl          # the table again, from the JSON files

Writes ``<out>/<variant>.json`` + ``.log`` per run and prints a Markdown table (also ``<out>/ablation.txt``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: (name, what it changes, extra exp_rec arguments); ``final`` first.
VARIANTS: list[tuple[str, str, list[str]]] = [
    ("final", "collaborative SIDs, balanced k-means, loss on every position, lr 1e-3, no weight decay, rec only", []),
    ("text SIDs", "SIDs from TF-IDF text embeddings instead of collaborative ones", ["--embedding", "tfidf"]),
    ("standard k-means", "unbalanced residual k-means (colliding items get an extra level)", ["--balance", "0"]),
    ("one target per example", "the pre-issue rec task: one sampled target per example, 8 per user",
     ["--rec-task", "sampled"]),
    ("weight decay 0.1", "AdamW weight decay 0.1 instead of 0", ["--weight-decay", "0.1"]),
    ("lr 1e-4", "the pre-issue instruct default (suits pre-trained backbones)", ["--lr", "1e-4"]),
    ("+ other tasks", "search, profiles, explanations and mixed lists mixed in (weight 0.05 each)", ["--mix"]),
]


def report(out: Path) -> str:
    rows = []
    for name, what, _ in VARIANTS:
        f = out / f"{name.replace(' ', '_').replace('+', 'plus')}.json"
        if not f.exists():
            continue
        r = json.loads(f.read_text())
        t = r["test"]["neo"]
        tr = r["neo_training"]
        best = tr.get("best") or {}
        rows.append((name, what, t, tr, best, r))
    if not rows:
        return "(no results yet)"
    base = rows[0][2] if rows[0][0] == "final" else None
    lines = ["| variant | what changes | valid NDCG@10 (best) | test HR@10 | test NDCG@10 | vs final (NDCG@10) | "
             "epochs | tok/s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, what, t, tr, best, _ in rows:
        d = f"{(t['ndcg@10'] / base['ndcg@10'] - 1) * 100:+.0f}%" if base and name != "final" else "-"
        ep = tr["eval_history"][-1]["epoch"] if tr.get("eval_history") else float("nan")
        lines.append(f"| {name} | {what} | {best.get('ndcg@10', float('nan')):.4f} | {t['hr@10']:.4f} | "
                     f"{t['ndcg@10']:.4f} | {d} | {ep:.0f} | {tr['tokens_per_s']:,.0f} |")
    fin = rows[0][5] if rows[0][0] == "final" else None
    if fin:
        for k in ("popularity", "SASRec (full CE)"):
            if k in fin["test"]:
                m = fin["test"][k]
                lines.append(f"| {k} (same split) | baseline | - | {m['hr@10']:.4f} | {m['ndcg@10']:.4f} | - | - | - |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/neo_ablation", help="directory for the runs' JSON and logs")
    ap.add_argument("--report", metavar="DIR", help="only print the table of the runs already in DIR")
    ap.add_argument("--parallel", type=int, default=1, help="runs at once (one torch thread each)")
    ap.add_argument("--only", nargs="+", help="variant names to run (default: all)")
    a, rest = ap.parse_known_args(argv)
    if a.report:
        print(report(Path(a.report)))
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [v for v in VARIANTS if not a.only or v[0] in a.only]
    running: list[tuple[str, subprocess.Popen, float]] = []
    failed = []
    while todo or running:
        while todo and len(running) < a.parallel:
            name, _, extra = todo.pop(0)
            stem = name.replace(" ", "_").replace("+", "plus")
            cmd = [sys.executable, str(HERE / "exp_rec.py"), *rest, *extra, "--threads", "1",
                   "--json", str(out / f"{stem}.json")]
            if name != "final":
                cmd += ["--sasrec-epochs", "0"]
            print(f"start {name}: {' '.join(cmd[1:])}", flush=True)
            log = open(out / f"{stem}.log", "w")
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                   env={**os.environ, "OMP_NUM_THREADS": "1"}),
                            time.perf_counter()))
        time.sleep(5)
        for item in list(running):
            name, proc, t0 = item
            if proc.poll() is not None:
                running.remove(item)
                print(f"done {name}: exit {proc.returncode}, {time.perf_counter() - t0:.0f} s", flush=True)
                if proc.returncode:
                    failed.append(name)
    table = report(out)
    (out / "ablation.txt").write_text(table + "\n")
    print(table)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
