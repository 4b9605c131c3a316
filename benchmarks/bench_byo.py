"""Bring your own data: ``neo build`` -> ``neo train`` -> ``neo eval`` on MovieLens 100K files, timed.

What a user with their own files runs, on ml-100k from a local path (never copied into the repository;
its license forbids redistribution):

* interactions: ``u.data`` exactly as GroupLens ships it (tab separated, no header: user, item, rating,
  unix time; the loader finds the columns by position);
* catalog: ``u.item`` turned into ``items.csv`` (``id,title,year,genres``), the one preparation step a
  user does here, because ``u.item`` has no header row and spells genres as 19 0/1 flags.

Each command runs as its own process (``python -m neo.cli ...``), as from a shell; the script records the
wall time of each command, the per-step times of ``neo build`` (its report), and the metrics of
``neo eval``, and writes ``benchmarks/results/byo.json`` and ``byo.md``.

    python benchmarks/bench_byo.py --data /work/shared/data/ml-100k --work /tmp/neo-byo
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS_DIR, machine_info  # noqa: E402


def prepare_catalog(data: Path, out: Path) -> Path:
    """``u.item`` + ``u.genre`` -> ``items.csv`` with ``id,title,year,genres``."""
    genres = [ln.split("|")[0] for ln in (data / "u.genre").read_text(encoding="latin-1").splitlines() if ln.strip()]
    path = out / "items.csv"
    with open(data / "u.item", encoding="latin-1") as src, open(path, "w", newline="", encoding="utf-8") as dst:
        w = csv.writer(dst)
        w.writerow(["id", "title", "year", "genres"])
        for line in src:
            f = line.rstrip("\n").split("|")
            if len(f) < 5 + len(genres):
                continue
            m = re.search(r"\((\d{4})\)\s*$", f[1])
            title = f[1][: m.start()].strip() if m else f[1].strip()
            flags = f[5:5 + len(genres)]
            w.writerow([f[0], title, m.group(1) if m else "",
                        ", ".join(g for g, v in zip(genres, flags) if v == "1" and g != "unknown")])
    return path


def run(cmd: list[str], log: Path, threads: int) -> float:
    """Run one ``neo`` command as a process; returns its wall time (s). Output goes to ``log``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        r = subprocess.run([sys.executable, "-m", "neo.cli", *cmd], stdout=fh, stderr=subprocess.STDOUT, env=env)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"neo {cmd[0]} failed (exit {r.returncode}); see {log}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/shared/data/ml-100k", help="the ml-100k directory (read only)")
    ap.add_argument("--work", default="/tmp/neo-byo", help="scratch directory for the catalog, systems and logs")
    ap.add_argument("--stage0-steps", type=int, default=300, help="neo build --stage0-steps")
    ap.add_argument("--train-steps", type=int, default=300, help="neo train instruct --max-steps")
    ap.add_argument("--lr", type=float, default=2e-3, help="neo train instruct --lr (a from-scratch model)")
    ap.add_argument("--max-cases", type=int, default=300, help="neo eval --max-cases")
    ap.add_argument("--sasrec-epochs", type=int, default=20, help="neo eval --sasrec-epochs")
    ap.add_argument("--num-beams", type=int, default=20, help="neo eval --num-beams")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every command")
    ap.add_argument("--out", default=str(RESULTS_DIR), help="where byo.json and byo.md go")
    ap.add_argument("--note", action="append", default=[], help="a line added to the notes of byo.md (repeatable)")
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite byo.md from --out/byo.json and the logs in --work without running anything")
    a = ap.parse_args()
    if a.render_only:
        result = json.loads((Path(a.out) / "byo.json").read_text())
        result["train"] = _train_summary((Path(a.work) / "train.log").read_text())
        result["notes"] = a.note or result.get("notes", [])
        (Path(a.out) / "byo.json").write_text(json.dumps(result, indent=1, default=float))
        (Path(a.out) / "byo.md").write_text(render(result, Path(a.work)))
        return

    data, work = Path(a.data), Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    for d in ("system", "run"):
        if (work / d).exists():
            raise SystemExit(f"{work / d} exists; give a fresh --work directory")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    items = prepare_catalog(data, work)
    t_prep = time.perf_counter() - t0
    inter = data / "u.data"
    th = str(a.threads)
    cmds = {
        "build": ["build", "--catalog", str(items), "--interactions", str(inter), "--output", str(work / "system"),
                  "--stage0-steps", str(a.stage0_steps), "--json", str(work / "build.json"), "--threads", th,
                  "--no-progress"],
        "train": ["train", "instruct", "--system", str(work / "system"), "--interactions", str(inter),
                  "--output", str(work / "run"), "--max-steps", str(a.train_steps), "--lr", str(a.lr),
                  "--batch-size", "16", "--packing", "--save-steps", "100000"],
        "eval": ["eval", "--system", str(work / "run" / "system"), "--interactions", str(inter),
                 "--baselines", "random,popularity,sasrec", "--sasrec-epochs", str(a.sasrec_epochs),
                 "--max-cases", str(a.max_cases), "--num-beams", str(a.num_beams), "--threads", th,
                 "--json", str(work / "eval.json"), "--no-progress"],
    }
    wall = {}
    for name, cmd in cmds.items():
        print(f"neo {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
        wall[name] = round(run(cmd, work / f"{name}.log", a.threads), 1)
        print(f"   {wall[name]:.1f} s", flush=True)
    load_after = os.getloadavg()
    build = json.loads((work / "build.json").read_text())
    ev = json.loads((work / "eval.json").read_text())
    train_log = (work / "train.log").read_text()
    result = {
        "benchmark": "byo", "machine": machine_info(), "load_avg_before": load_before, "load_avg_after": load_after,
        "data": str(data), "prepare_catalog_s": round(t_prep, 2), "commands": {k: "neo " + " ".join(v) for k, v in
                                                                              cmds.items()},
        "wall_s": wall, "build_report": build, "train": _train_summary(train_log), "eval": ev, "notes": a.note,
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "byo.json").write_text(json.dumps(result, indent=1, default=float))
    (out / "byo.md").write_text(render(result, work))
    print((out / "byo.md").read_text())


def _train_summary(log: str) -> dict:
    """Steps, mean training loss and trainer runtime from the ``neo train`` output."""
    m = re.search(r"instruct: (\d+) steps, train loss ([\d.]+)", log)
    rt = re.search(r"'train_runtime': '([\d.]+)'", log)
    steps = int(m.group(1)) if m else None
    runtime = float(rt.group(1)) if rt else None
    return {"steps": steps, "mean_train_loss": float(m.group(2)) if m else None, "trainer_runtime_s": runtime,
            "s_per_step": round(runtime / steps, 3) if runtime and steps else None}


def render(r: dict, work: Path) -> str:
    b, ev, mach = r["build_report"], r["eval"], r["machine"]
    t = b["timings_s"]
    s = b["sids"]["types"]["item"]
    rec = ev["recommendation"]

    def short(cmd: str) -> str:
        return cmd.replace(str(work), "$WORK").replace(r["data"], "$ML100K")

    lines = [
        "# Bring your own data: `neo build` -> `neo train` -> `neo eval` on MovieLens 100K",
        "",
        f"Machine: {mach.get('cpu', '?')}, {mach.get('cpu_count')} cores (shared with other jobs: load average "
        f"{r['load_avg_before'][0]:.1f} before, {r['load_avg_after'][0]:.1f} after), no GPU, "
        f"torch {mach.get('torch')}; "
        f"{mach['date']}, commit {mach['commit']}. Every command ran with one torch thread "
        "(`--threads 1`, `OMP_NUM_THREADS=1`).",
        "",
        "Data: ml-100k from a local path (GroupLens; cite Harper & Konstan 2015, ACM TiiS 5(4):19; not "
        "redistributable, so not in the repository). Interactions: `u.data` as shipped (tab separated, no header; "
        "user, item and unix time found by position). Catalog: `u.item` rewritten as `items.csv` "
        f"(`id,title,year,genres`) by `benchmarks/bench_byo.py`, {r['prepare_catalog_s']:.1f} s.",
        "",
        "Reproduce: `python benchmarks/bench_byo.py --data $ML100K --work $WORK`, which runs:",
        "",
        "```",
        *(short(c) for c in r["commands"].values()),
        "```",
        "",
        "## Time per command and per step",
        "",
        "| command | wall time (s) | steps (s) |",
        "|---|---:|---|",
        f"| `neo build` | {r['wall_s']['build']:.1f} | read {t['read']:.2f}, embeddings {t['embeddings']:.2f}, SIDs "
        f"{t['sids']:.2f}, stage-0 model {t['model']:.2f} ({b['model']['stage0_steps']} steps, "
        f"{b['model']['stage0_s_per_step']:.3f} s/step), vocabulary + adaptation {t['adapt']:.2f}, save "
        f"{t['save']:.2f} |",
        f"| `neo train instruct` | {r['wall_s']['train']:.1f} | {r['train']['steps']} steps, "
        f"{r['train']['s_per_step']} s/step (trainer {r['train']['trainer_runtime_s']:.0f} s), mean train loss "
        f"{r['train']['mean_train_loss']} |",
        f"| `neo eval` | {r['wall_s']['eval']:.1f} | " + ", ".join(f"{k} {v:.1f}" for k, v in ev["timings_s"].items())
        + " |",
        f"| all three | {sum(r['wall_s'].values()):.1f} | |",
        "",
        "Wall times include starting Python and importing torch and transformers (a few seconds per command). "
        "The machine was shared with other jobs (load averages above), which slows every step.",
        "",
        "## Build report",
        "",
        f"- items: {b['catalog']['items']} (type `item`), text fields {b['catalog']['text_fields']}",
        f"- interactions: {b['interactions']['users']} users, {b['interactions']['interactions']} events, "
        f"{b['interactions']['items_interacted']} items interacted; columns {b['interactions']['columns']}",
        f"- SIDs: {s['levels']} levels ({'x'.join(map(str, s['codebook_sizes']))}), collision rate "
        f"{s['collision_rate']:.3f} ({s['items_in_collisions']} items share base codes, largest group "
        f"{s['largest_collision_group']}), unreachable {s['unreachable']}; codebook use "
        + ", ".join(f"L{lv['level']} {lv['used']}/{lv['codebook_size']}" for lv in s["codebook_use"]),
        f"- vocabulary: {b['vocabulary']['total']} ids ({b['vocabulary']['base_tokens']} text + "
        f"{b['vocabulary']['sid_tokens']} SID tokens); model {b['model']['architecture']}, "
        f"{b['model']['parameters'] / 1e6:.2f}M parameters, trained here from scratch",
        "",
        f"## Evaluation ({ev['protocol']}, full ranking over {ev['candidates']} items, {ev['test_cases']} test "
        f"users sampled, history <= 20; {ev['history']})",
        "",
        "| model | HR@5 | NDCG@5 | HR@10 | NDCG@10 | HR@30 | NDCG@30 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in rec.items():
        lines.append(f"| {name} | " + " | ".join(f"{m[f'{x}@{k}']:.4f}" for k in (5, 10, 30) for x in ("hr", "ndcg"))
                     + " |")
    g = ev.get("neo_generated_items", {})
    lines += [
        "",
        f"Every item neo ranked ({g.get('items_checked')} checked) was a catalog item outside the user's history: "
        f"{g.get('all_valid')}.",
        "",
        f"This is the pipeline with its defaults and short schedules ({b['model']['stage0_steps']} stage-0 steps, "
        f"{r['train']['steps']} instruction steps), not a tuned recommender: it shows the three commands working "
        "end to end on a user's files and what each step costs. Issue 13 works on recommendation quality.",
        "",
    ]
    if r.get("notes"):
        lines += ["Notes:", "", *(f"- {n}" for n in r["notes"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
