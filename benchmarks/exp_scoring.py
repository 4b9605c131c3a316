"""Experiment: rank catalog items with the LM head vs a classifier head (Tamborrino et al. 2020, on MovieLens).

Task (built from the catalog, no pre-trained weights needed): given a movie's genre description, which of
4 titles fits? Written as full text ``"<title> is a <genres> movie."`` the premise ``" is a <genres>
movie."`` comes after the candidate title, so a causal LM can give the *target-premise* score (every
candidate explains the same premise tokens).

1. Pick the ``--movies`` most-rated movies of MovieLens ``ml-latest-small``; split them into train and test
   movies (questions about test movies are never fine-tuned on).
2. Train a BPE tokenizer and a tiny GPT-2 (4 layers, hidden 128) from scratch on the catalog text of all
   these movies, in both word orders (``"<title> is a <genres> movie."`` and ``"a <genres> movie:
   <title>."``) — the analogue of pre-training text that mentions the facts a benchmark later asks about.
3. Zero-shot accuracy of the pretrained LM: target-premise score and candidate score (mean log-prob of
   the title given ``"a <genres> movie:"``).
4. Fine-tune, over ``--seeds`` seeds and fractions 10/30/100% of the training questions: (a) the LM on the
   score with the margin loss (eta 0.5, no new parameters); (b) a random linear head on the last hidden
   state with cross-entropy. Report test accuracy mean/std/max.

Run: ``python benchmarks/exp_scoring.py --data /work/shared/data/ml-latest-small``
Writes ``benchmarks/results/scoring.json``, ``scoring.md`` and ``scoring_data_efficiency.png``;
``--render NAME`` re-renders the page and plot from ``benchmarks/results/NAME.json``.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS_DIR, machine_info, markdown_table, write_results  # noqa: E402

from neo.scoring import (ClassifierHead, MultipleChoiceCollator, evaluate_choices, fine_tune,  # noqa: E402
                         restart_summary)
from neo.scoring.datasets import build_description_choice_task  # noqa: E402


def load_movies(data: Path, n: int) -> tuple[list[str], list[str]]:
    """Titles and genre descriptions of the n most-rated movies (ties by id), skipping '(no genres listed)'."""
    counts: Counter[str] = Counter()
    with (data / "ratings.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            counts[row["movieId"]] += 1
    movies = {}
    with (data / "movies.csv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["genres"] != "(no genres listed)":
                movies[row["movieId"]] = row
    ranked = sorted(movies, key=lambda m: (-counts[m], int(m)))[:n]
    titles = [movies[m]["title"].strip() for m in ranked]
    genres = [", ".join(g.lower() for g in movies[m]["genres"].split("|")) for m in ranked]
    return titles, genres


def train_tokenizer(corpus: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def pretrain(corpus: list[str], tok, *, layers: int, hidden: int, steps: int, seed: int, batch: int = 32):
    """Train a tiny GPT-2 from scratch with next-token loss for a fixed number of steps (reproducible)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=hidden, n_layer=layers, n_head=4, n_positions=64,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg)
    enc = [[tok.bos_token_id] + tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for t in corpus]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    rng = np.random.default_rng(seed)
    model.train()
    t0, step, losses = time.perf_counter(), 0, []
    while step < steps:
        idx = rng.choice(len(enc), size=batch, replace=False)
        seqs = [enc[i] for i in idx]
        T = max(map(len, seqs))
        ids = torch.full((batch, T), tok.pad_token_id)
        am = torch.zeros((batch, T), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            am[i, :len(s)] = 1
        labels = ids.masked_fill(am == 0, -100)
        loss = model(input_ids=ids, attention_mask=am, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
    model.eval()
    return model, {"steps": step, "seconds": time.perf_counter() - t0, "final_loss": float(np.mean(losses[-50:])),
                   "first_loss": float(np.mean(losses[:10])), "params": sum(p.numel() for p in model.parameters()),
                   "epochs": step * batch / len(enc)}


def premise_features(examples, *, title_first: bool = True) -> list[dict]:
    """Target-premise layout: candidate = title, premise = ' is a <genres> movie.'.

    With ``title_first=False`` the candidate layout instead: premise 'a <genres> movie:', candidate ' <title>.'.
    """
    if title_first:
        return [{"premise": f" is a {e.premise} movie.", "candidates": e.choices, "label": e.label}
                for e in examples]
    return [{"premise": f"a {e.premise} movie:", "candidates": [f" {c}." for c in e.choices], "label": e.label}
            for e in examples]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/ml-latest-small"))
    ap.add_argument("--movies", type=int, default=800)
    ap.add_argument("--test-movies", type=int, default=250)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    ap.add_argument("--pretrain-steps", type=int, default=600)
    ap.add_argument("--cache", type=Path, default=None,
                    help="directory to save the pretrained LM + tokenizer in, or load them from if present")
    ap.add_argument("--methods", nargs="+", default=["margin", "classifier"], choices=["margin", "classifier"])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--min-steps", type=int, default=30, help="small fractions train for more epochs up to this")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--head-lr", type=float, default=None, help="lr for the classifier baseline (default --lr)")
    ap.add_argument("--eta", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    ap.add_argument("--name", default="scoring")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    titles, genres = load_movies(args.data, args.movies)
    N = len(titles)
    rng = np.random.default_rng(1234)
    perm = rng.permutation(N)
    test_rows, train_rows = perm[:args.test_movies], perm[args.test_movies:]
    corpus = [f"{t} is a {g} movie." for t, g in zip(titles, genres)] + \
             [f"a {g} movie: {t}." for t, g in zip(titles, genres)]
    if args.cache is not None and (args.cache / "config.json").is_file():
        from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

        tok = PreTrainedTokenizerFast.from_pretrained(args.cache)
        base = GPT2LMHeadModel.from_pretrained(args.cache).eval()
        pt = json.loads((args.cache / "pretrain.json").read_text())
        pt["loaded_from"] = str(args.cache)
    else:
        tok = train_tokenizer(corpus, args.vocab)
        base, pt = pretrain(corpus, tok, layers=args.layers, hidden=args.hidden, steps=args.pretrain_steps, seed=0)
        if args.cache is not None:
            base.save_pretrained(args.cache)
            tok.save_pretrained(args.cache)
            (args.cache / "pretrain.json").write_text(json.dumps(pt))
    print(f"pretrained: {pt}", flush=True)

    # distractors for both splits come from all movies; only the asked-about movie is split
    train_q = build_description_choice_task(titles, genres, items=train_rows, seed=1, id_prefix="train")
    test_q = build_description_choice_task(titles, genres, items=test_rows, seed=2, id_prefix="test")
    train_f, test_f = premise_features(train_q), premise_features(test_q)
    col_p = MultipleChoiceCollator(tok, direction="premise")
    col_c = MultipleChoiceCollator(tok, direction="candidate")

    zs = {
        "target_premise_sum": evaluate_choices(base, col_p, test_f, normalize="sum")[0],
        "candidate_mean": evaluate_choices(base, col_c, premise_features(test_q, title_first=False),
                                           normalize="mean")[0],
        "candidate_sum": evaluate_choices(base, col_c, premise_features(test_q, title_first=False),
                                          normalize="sum")[0],
    }
    print(f"zero-shot: {zs}", flush=True)

    rows = []
    for frac in args.fractions:
        for method in args.methods:
            accs, secs = [], []
            for seed in range(args.seeds):
                sub_rng = np.random.default_rng(100 + seed)
                k = max(1, int(round(frac * len(train_f))))
                sub = [train_f[i] for i in sub_rng.choice(len(train_f), size=k, replace=False)]
                steps_per_epoch = math.ceil(k / args.batch)
                epochs = max(args.epochs, math.ceil(args.min_steps / steps_per_epoch))
                model = copy.deepcopy(base)
                t0 = time.perf_counter()
                if method == "margin":
                    fine_tune(model, col_p, sub, loss="margin", eta=args.eta, normalize="sum", epochs=epochs,
                              batch_size=args.batch, lr=args.lr, seed=seed)
                    acc = evaluate_choices(model, col_p, test_f, normalize="sum")[0]
                else:
                    head = ClassifierHead(model, seed=seed)
                    fine_tune(head, col_p, sub, loss="ce", epochs=epochs, batch_size=args.batch,
                              lr=args.head_lr or args.lr, seed=seed)
                    acc = evaluate_choices(head, col_p, test_f)[0]
                secs.append(time.perf_counter() - t0)
                accs.append(acc)
                print(f"frac {frac} {method} seed {seed}: acc {acc:.3f} ({secs[-1]:.1f}s, {epochs} epochs)", flush=True)
            summ = restart_summary(accs)
            rows.append({"fraction": frac, "method": method, "train_questions": k, "epochs": epochs,
                         "acc_mean": summ["mean"], "acc_std": summ["std"], "acc_max": summ["max"],
                         "acc_min": summ["min"], "seeds": summ["n"], "accs": accs,
                         "seconds_per_run": float(np.mean(secs))})
    total = time.perf_counter() - t_start
    cmd = "python benchmarks/exp_scoring.py " + " ".join(sys.argv[1:])
    extra = {"command": cmd, "zero_shot": zs, "pretrain": pt, "total_seconds": total,
             "task": {"movies": N, "train_questions": len(train_f), "train_movies": len(train_rows),
                      "test_questions": len(test_f), "test_movies": len(test_rows), "choices": 4, "chance": 0.25,
                      "vocab": len(tok)},
             "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    path = write_results(args.name, rows, extra, out_dir=args.out)
    print(f"wrote {path}")
    print(render(path))


def render(json_path: Path) -> str:
    """Write ``<name>.md`` and ``<name>_data_efficiency.png`` beside a results JSON; returns the markdown."""
    d = json.loads(Path(json_path).read_text())
    out, name = Path(json_path).parent, d["benchmark"]
    rows, zs, pt, task, a, m = d["rows"], d["zero_shot"], d["pretrain"], d["task"], d["args"], d["machine"]
    fractions = sorted({r["fraction"] for r in rows})
    png = None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for method, label in (("margin", "LM score + margin loss"), ("classifier", "random head + CE")):
            r = [x for x in rows if x["method"] == method]
            if not r:
                continue
            ax.errorbar([x["fraction"] * 100 for x in r], [x["acc_mean"] for x in r],
                        yerr=[x["acc_std"] for x in r], marker="o", capsize=3, label=label)
        ax.axhline(zs["target_premise_sum"], ls="--", c="gray", label="zero-shot target premise")
        ax.axhline(task["chance"], ls=":", c="k", label="chance")
        ax.set_xscale("log")
        ax.set_xticks([f * 100 for f in fractions], [f"{f:.0%}" for f in fractions])
        ax.set_xlabel(f"fraction of {task['train_questions']} training questions")
        ax.set_ylabel("test accuracy (4 choices)")
        ax.set_ylim(0, 1)
        ax.set_title(f"MovieLens genres -> title, tiny GPT-2, {a['seeds']} seeds")
        ax.legend(fontsize=8)
        fig.tight_layout()
        png = out / f"{name}_data_efficiency.png"
        fig.savefig(png, dpi=120)
        plt.close(fig)
    except ImportError:
        pass
    table = markdown_table(rows, ["fraction", "method", "train_questions", "epochs", "acc_mean", "acc_std",
                                  "acc_max", "acc_min", "seeds", "seconds_per_run"], floatfmt=".3f")
    notes = []
    for f in fractions:
        by = {r["method"]: r for r in rows if r["fraction"] == f}
        parts = [f"{meth} {r['acc_mean']:.3f} ({r['acc_mean'] - zs['target_premise_sum']:+.3f} vs zero-shot)"
                 for meth, r in by.items()]
        notes.append(f"- {f:.0%} of the training questions: " + "; ".join(parts))
    head_lr = a.get("head_lr")
    others = sorted(p for p in out.glob(f"{name}_*.json"))
    related = "" if not others else "\nRelated runs (same script and pretrained LM, other settings): " + ", ".join(
        f"[`{p.stem}`]({p.stem}.md)" for p in others) + ".\n"
    pre = (f"loaded from `{pt['loaded_from']}`, where an earlier run with the same `--cache` had trained and saved it"
           if "loaded_from" in pt else f"trained here in {pt['seconds']:.0f} s")
    md = f"""# Plausibility scoring vs classifier head (issue 8)

Command: `{d['command']}` (from the repository root; {d['total_seconds'] / 60:.1f} min in total, {a['threads']}
thread(s)). Re-render this page and the plot from the JSON: `python benchmarks/exp_scoring.py --render {name}`.

Machine: {m.get('cpu', '?')}, {m.get('cpu_count')} cores shared with other jobs (timings are noisy), torch
{m.get('torch')}, commit {m.get('commit')}, {m.get('date')}.

**Task.** MovieLens ml-latest-small, the {task['movies']} most-rated movies. Question: a movie's genre list; 4
candidate titles (the right one and 3 whose genre list differs; chance {task['chance']:.0%}). {task['train_questions']}
training questions (one per train movie), {task['test_questions']} test questions about {task.get('test_movies', task['test_questions'])} held-out
movies. Full text `"<title> is a <genres> movie."`, scored as *target premise*: summed log-prob of
`" is a <genres> movie."` given the title, so all 4 candidates explain the same tokens.

**LM.** Tiny GPT-2 ({a['layers']} layers, hidden {a['hidden']}, {pt['params'] / 1e6:.2f} M params, byte-level BPE vocab
{task.get('vocab', a['vocab'])}) trained from scratch, {pt['steps']} steps of 32 lines ({pt['epochs']:.0f} epochs), loss
{pt['first_loss']:.2f} -> {pt['final_loss']:.2f}, {pre}, on the catalog text of all {task['movies']} movies in both word
orders (`"<title> is a <genres> movie."`, `"a <genres> movie: <title>."`). Test movies are in that text, as
facts are in a real LM's pre-training data: the task measures whether scoring and fine-tuning *use* what the LM
knows, not generalisation to items it never saw.

## Zero-shot (pretrained LM, no fine-tuning), {task['test_questions']} test questions

| score | accuracy |
|---|---|
| target premise, sum log p(`" is a <genres> movie."` \\| title) | {zs['target_premise_sum']:.3f} |
| candidate, mean log p(`" <title>."` \\| `"a <genres> movie:"`) | {zs['candidate_mean']:.3f} |
| candidate, sum log p(`" <title>."` \\| `"a <genres> movie:"`) | {zs['candidate_sum']:.3f} |

## Fine-tuned: test accuracy over {a['seeds']} seeds (mean / std with ddof=1 / max / min)

(a) `margin`: the LM fine-tuned on the target-premise score with the margin loss (eta {a['eta']}), no new
parameters. (b) `classifier`: random linear head on the last token's final hidden state, cross-entropy over the 4
candidates, whole model trained. AdamW, lr {a['lr']}{'' if not head_lr else f' ({head_lr} for the classifier)'}, batch {a['batch']}
questions, {a['epochs']} epochs, more for small fractions so each run takes >= {a['min_steps']} steps. Seeds vary the
training subset, order and head initialisation; the pretrained LM is the same for all runs.

{table}

{chr(10).join(notes)}

![data efficiency]({png.name if png else 'matplotlib not installed: no plot'})

Raw numbers, per-seed accuracies and the full argument list: `{name}.json`.
{related}"""
    (out / f"{name}.md").write_text(md)
    return md


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--render":
        print(render(RESULTS_DIR / f"{sys.argv[2]}.json"))
    else:
        main()
