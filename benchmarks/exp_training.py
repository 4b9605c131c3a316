"""Experiment: staged training (stage 0 -> align -> instruct) on MovieLens ml-latest-small, one CPU core.

1. Catalog: the movies with at least ``--min-ratings`` ratings (title, genres, up to 8 user tags;
   popularity = number of ratings). SIDs: offline TF-IDF + SVD embedder, residual k-means, default config.
2. Stage 0: a BPE tokenizer and a small Llama (hidden 128, 4 layers) trained from scratch on the catalog
   text and the prompt templates (:func:`neo.train.stage0`), standing in for a pre-trained model.
3. SID vocabulary installed, rows initialised to the mean (:meth:`neo.NeoSystem.build`).
4. Align: alignment tasks (SID -> text, text -> SID, SID -> type) for every item, backbone frozen.
5. Instruct: all instruction tasks from the leave-one-out training part of the ratings (full fine-tuning,
   packing), equal task weights.
6. After each of stage 0 (+ SID rows), align and instruct: UNCONSTRAINED greedy generation on held-out
   users' prompts (``ids`` format, 5 items; ``mixed`` format, 3 items): the SID validity rate is the
   fraction of generated ``[SID] .. [/SID]`` spans that decode to a real catalog item (incomplete spans
   count as invalid). Constrained decoding makes it 100% by construction; this measures what the model
   learnt. Also reported: hit rate of the held-out item in the 5 generated ids.

Run: ``python benchmarks/exp_training.py --data /work/shared/data/ml-latest-small``
Writes ``benchmarks/results/training.json``, ``training.md`` and ``training_loss.png``; ``--render``
re-renders the page and plot from the JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS_DIR, machine_info  # noqa: E402

DEFAULT_DATA = Path("/work/shared/data/ml-latest-small")


def movielens_catalog(root: Path, min_ratings: int):
    import pandas as pd

    from neo import Catalog

    movies = pd.read_csv(root / "movies.csv")
    tags = pd.read_csv(root / "tags.csv")
    ratings = pd.read_csv(root / "ratings.csv")
    n_ratings = ratings["movieId"].value_counts()
    tags["t"] = tags["tag"].astype(str).str.strip().str.lower()
    top_tags = tags.groupby("movieId")["t"].apply(lambda s: ", ".join(s.value_counts().index[:8]))
    recs = []
    for mid, title, genres in zip(movies["movieId"], movies["title"], movies["genres"]):
        if int(n_ratings.get(mid, 0)) < min_ratings:
            continue
        recs.append({"id": f"movie:{mid}", "type": "movie", "title": title,
                     "genres": "" if genres == "(no genres listed)" else genres.replace("|", ", "),
                     "tags": top_tags.get(mid, ""), "popularity": int(n_ratings.get(mid, 0))})
    return Catalog.from_records(recs, text_fields=["title", "genres", "tags"], types=["movie"]), ratings


def sid_validity(system, prompts, builder, *, max_new_tokens: int, targets=None) -> dict:
    from neo import generate

    outs = []
    for i in range(0, len(prompts), 32):
        outs += generate(system.model, system.tokenizer, system.vocab, system.index, prompts[i:i + 32],
                         catalog=system.catalog, builder=builder, max_new_tokens=max_new_tokens, constrained=False)
    spans = [it for o in outs for it in o.items]
    valid = sum(it.valid for it in spans)
    res = {"prompts": len(prompts), "spans": len(spans), "valid_spans": valid,
           "validity": valid / len(spans) if spans else None,
           "outputs_with_span": sum(1 for o in outs if o.items) / len(outs),
           "example": outs[0].text[:200] if outs else ""}
    if targets is not None:
        res["hit_rate"] = float(np.mean([any(it.row == t for it in o.items) for o, t in zip(outs, targets)]))
    return res


def run(a: argparse.Namespace) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    from neo import NeoSystem, PromptBuilder, build_sids
    from neo import train as T
    from neo.training.tasks import TaskBuilder, load_interactions, split_interactions

    t_all = time.perf_counter()
    out: dict = {"config": vars(a) | {"data": str(a.data)}, "stages": {}, "validity": {}}
    cat, ratings = movielens_catalog(a.data, a.min_ratings)
    sids = build_sids(cat, "tfidf", seed=a.seed)
    out["catalog"] = {"items": len(cat), "sid_levels": sids.levels("movie"),
                      "codebook_sizes": list(map(int, sids.codebook_sizes["movie"]))}
    print(cat, sids, flush=True)

    t0 = time.perf_counter()
    model, tok, r0 = T.stage0(cat, vocab_size=a.text_vocab, hidden=a.hidden, layers=a.layers, block_size=256,
                              max_steps=a.stage0_steps, batch_size=16, lr=3e-3, logging_steps=5, seed=a.seed,
                              progress=a.progress)
    out["stages"]["stage0"] = {"loss_history": r0.loss_history, "steps": r0.global_step,
                               "wall_s": time.perf_counter() - t0, "lr": 3e-3, "data": r0.data_report}
    print("stage0", r0.global_step, r0.losses[:2], r0.losses[-2:], flush=True)

    system = NeoSystem.build(model, tok, cat, sids)
    builder = PromptBuilder(tok, system.vocab, system.index, cat)
    tb = TaskBuilder(builder, cat, seed=a.seed, max_history=a.max_history)
    inter = load_interactions(ratings, cat, user_col="userId", item_col="movieId", time_col="timestamp",
                              item_id="movie:{}", on_missing="skip", min_length=5)
    split = split_interactions(inter, "leave_one_out", seed=a.seed)
    out["interactions"] = inter.report.to_dict()
    rng = np.random.default_rng(a.seed)
    cases = [split.test[int(i)] for i in rng.choice(len(split.test), size=min(a.eval_users, len(split.test)),
                                                     replace=False)]
    p_ids = tb.eval_prompts(cases, k=5, format="ids")
    p_mixed = tb.eval_prompts(cases, k=3, format="mixed")
    targets = [c.target for c in cases]

    def evaluate(stage: str) -> None:
        t = time.perf_counter()
        out["validity"][stage] = {
            "ids": sid_validity(system, p_ids, builder, max_new_tokens=48, targets=targets),
            "mixed": sid_validity(system, p_mixed, builder, max_new_tokens=64),
        }
        out["validity"][stage]["eval_s"] = time.perf_counter() - t
        print(stage, json.dumps(out["validity"][stage])[:600], flush=True)

    evaluate("stage0")
    align_ex = tb.alignment()
    t0 = time.perf_counter()
    r1 = T.align(system.model, tok, system.vocab, align_ex, epochs=a.align_epochs, batch_size=32, lr=a.align_lr,
                 logging_steps=5, seed=a.seed, progress=a.progress, max_steps=a.align_steps)
    out["stages"]["align"] = {"loss_history": r1.loss_history, "steps": r1.global_step, "examples": len(align_ex),
                              "wall_s": time.perf_counter() - t0, "lr": a.align_lr, "data": r1.data_report,
                              "trainable_params": r1.trainable_params}
    evaluate("align")

    ins = tb.instruction(split, max_per_user=a.max_per_user, search_examples=a.search_examples)
    out["instruction_examples"] = {k: len(v) for k, v in ins.items()}
    out["skipped"] = dict(tb.skipped)
    t0 = time.perf_counter()
    r2 = T.instruct(system.model, tok, ins, epochs=1, batch_size=8, lr=a.instruct_lr, packing=True, max_length=512,
                    logging_steps=5, seed=a.seed, progress=a.progress, max_steps=a.instruct_steps)
    system.model = r2.model
    out["stages"]["instruct"] = {"loss_history": r2.loss_history, "steps": r2.global_step,
                                 "wall_s": time.perf_counter() - t0, "lr": a.instruct_lr, "data": r2.data_report}
    evaluate("instruct")
    out["total_wall_s"] = time.perf_counter() - t_all
    out["machine"] = machine_info()
    return out


def render(res: dict, cmd: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, (name, st) in zip(axes, res["stages"].items()):
        h = st["loss_history"]
        ax.plot([x["step"] for x in h], [x["loss"] for x in h])
        ax.set_title(f"{name} (lr {st['lr']:g}, {st['steps']} steps, {st['wall_s']:.0f} s)")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("training loss (completion tokens)" if name != "stage0" else "training loss (all tokens)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    png = RESULTS_DIR / "training_loss.png"
    fig.savefig(png, dpi=110)
    m = res["machine"]
    lines = ["# Staged training on MovieLens ml-latest-small", "",
             f"Command: `{cmd}`", "",
             f"Machine: {m.get('cpu', '?')}, {m.get('cpu_count')} cores (run pinned to 1 thread, shared machine), "
             f"{m.get('platform')}, commit {m.get('commit')}, {m.get('date')}. Total wall time "
             f"{res['total_wall_s'] / 60:.1f} min.", "",
             f"Catalog: {res['catalog']['items']} movies with >= {res['config']['min_ratings']} ratings; SIDs "
             f"{res['catalog']['sid_levels']} levels x {res['catalog']['codebook_sizes']} codes (TF-IDF + SVD, "
             f"residual k-means). Interactions: {res['interactions']['n_kept']} ratings kept, "
             f"{res['interactions']['n_missing_items']} skipped (movie outside the catalog), "
             f"{res['interactions']['n_users']} users. Model: Llama, hidden {res['config']['hidden']}, "
             f"{res['config']['layers']} layers, trained from scratch in stage 0.", "",
             f"Instruction examples per task: {res['instruction_examples']}; not built (counted): "
             f"{res['skipped']}.", "",
             "![loss curves](training_loss.png)", "",
             "## SID validity of unconstrained generation (held-out users, greedy)", "",
             "A span is valid when its codes name a real catalog item; incomplete spans count as invalid. "
             "Hit rate: the held-out next movie is among the 5 generated ids (unconstrained).", "",
             "| after | ids: spans | ids: validity | ids: outputs with a span | ids: hit rate@5 | mixed: spans "
             "| mixed: validity |", "|---|---|---|---|---|---|---|"]
    for stage, v in res["validity"].items():
        def pct(x):
            return "n/a" if x is None else f"{100 * x:.1f}%"
        lines.append(f"| {stage} | {v['ids']['spans']} | {pct(v['ids']['validity'])} | "
                     f"{pct(v['ids']['outputs_with_span'])} | {pct(v['ids'].get('hit_rate'))} | "
                     f"{v['mixed']['spans']} | {pct(v['mixed']['validity'])} |")
    lines += ["", "Example outputs (ids prompt, first held-out user):", ""]
    for stage, v in res["validity"].items():
        lines.append(f"- after {stage}: `{v['ids']['example']}`")
    lines += ["", "Notes: the learning rates are the experiment's, chosen for a tiny model trained from scratch "
              "(the library defaults, align 1e-3 and instruct 1e-4, suit pre-trained models). The reference "
              "system reports ~98% validity after training a pre-trained LLM for far longer; this run is bounded "
              "to about 15 minutes on one core."]
    (RESULTS_DIR / "training.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--min-ratings", type=int, default=10)
    ap.add_argument("--text-vocab", type=int, default=3000)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--stage0-steps", type=int, default=400)
    ap.add_argument("--align-epochs", type=float, default=1.0)
    ap.add_argument("--align-steps", type=int, default=None)
    ap.add_argument("--align-lr", type=float, default=5e-3)
    ap.add_argument("--instruct-steps", type=int, default=600)
    ap.add_argument("--instruct-lr", type=float, default=1e-3)
    ap.add_argument("--max-per-user", type=int, default=4)
    ap.add_argument("--max-history", type=int, default=10)
    ap.add_argument("--search-examples", type=int, default=1500)
    ap.add_argument("--eval-users", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--render", action="store_true", help="re-render from benchmarks/results/training.json")
    a = ap.parse_args()
    cmd = "python " + " ".join(sys.argv)
    path = RESULTS_DIR / "training.json"
    if a.render:
        res = json.loads(path.read_text())
        render(res, res.get("command", cmd))
        return
    if not (a.data / "ratings.csv").exists():
        raise SystemExit(f"no MovieLens data at {a.data} (expected ratings.csv, movies.csv, tags.csv)")
    res = run(a)
    res["command"] = cmd
    path.write_text(json.dumps(res, indent=1, default=str))
    render(res, cmd)
    print(f"wrote {path}, {RESULTS_DIR / 'training.md'}, {RESULTS_DIR / 'training_loss.png'}")


if __name__ == "__main__":
    main()
