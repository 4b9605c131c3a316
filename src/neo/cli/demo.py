"""``neo demo``: the whole system end to end on the bundled MovieLens.

``neo demo`` runs, CPU-only and with no downloads: bundled data -> offline TF-IDF/SVD embeddings ->
semantic IDs (quality report) -> a locally trained tokenizer and a small model (stage 0; or
``--model PATH``, a local pre-trained causal LM) -> alignment -> instruction tuning -> evaluation
against popularity, SASRec and BM25 in the same run -> example outputs per task and format -> a
summary table, a saved system directory, a PNG plot and (``--json``) machine-readable metrics.

The pipeline is :func:`run_demo` (callable from Python); :func:`add_parser` wires it into ``neo demo``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import numpy as np

__all__ = ["DemoConfig", "QUICK", "FULL", "run_demo", "add_parser", "format_table"]


@dataclass
class DemoConfig:
    """Sizes and schedules of a demo run.

    ``FULL`` (the default) took 626 s on one thread of a busy 2-core machine (stage 0 67 s, align
    49 s, instruct 391 s, evaluation with SASRec 114 s); ``QUICK`` is the CI configuration, about
    1-2 minutes on an otherwise idle 2-core machine (more when other jobs share the cores).

    The catalog is the ``max_movies`` most-rated movies and ``max_tags`` most-used tags of the
    bundled ml-latest-small, so the model, SIDs and evaluation stay CPU-sized; the evaluation ranks
    over every movie of that catalog. ``max_history`` is the number of recent items the model reads
    (the protocol's history cap of 20 still decides which items are excluded from the ranking).
    """

    max_movies: int = 1000
    max_tags: int = 100
    max_users: int | None = None
    levels: int = 2
    codebook_size: int = 32
    vocab_size: int = 2000
    hidden: int = 96
    layers: int = 3
    stage0_steps: int = 120
    align_steps: int = 100
    instruct_steps: int = 300
    batch_size: int = 16
    max_per_user: int = 8
    eval_cases: int = 300
    search_queries: int = 100
    num_beams: int = 30
    sasrec_epochs: int = 40
    probe_prompts: int = 10
    max_history: int = 10
    instruct_lr: float = 2e-3
    packing: bool = True
    task_weights: dict[str, float] = field(default_factory=lambda: {
        "recommend": 6.0, "recommend_list": 2.0, "recommend_mixed": 0.5, "search": 1.5, "describe_user": 0.5,
        "recommend_explain": 0.25, "explain": 0.25})
    seed: int = 0


QUICK = DemoConfig(max_movies=120, max_tags=30, max_users=200, levels=2, codebook_size=8, vocab_size=800,
                   hidden=64, layers=2, stage0_steps=20, align_steps=20, instruct_steps=100, batch_size=16,
                   max_per_user=10, eval_cases=100, search_queries=30, num_beams=20, sasrec_epochs=20,
                   probe_prompts=5, max_history=10, instruct_lr=3e-3,
                   task_weights={"recommend": 8.0, "recommend_list": 2.0, "recommend_mixed": 0.5, "search": 1.0,
                                 "describe_user": 0.5, "recommend_explain": 0.25, "explain": 0.25})
FULL = DemoConfig()


def _say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, flush=True)


def format_table(rows: dict[str, dict[str, float]], cols: Sequence[str]) -> str:
    """A Markdown table: one row per model, one column per metric."""
    head = "| model | " + " | ".join(cols) + " |"
    sep = "|---|" + "|".join("---:" for _ in cols) + "|"
    lines = [head, sep]
    for name, m in rows.items():
        vals = [f"{m[c]:.4f}" if isinstance(m.get(c), float) else str(m.get(c, "")) for c in cols]
        lines.append(f"| {name} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


# ============================================================================ demo


def _load_model(path: str) -> tuple[Any, Any]:
    """A local pre-trained causal LM and its tokenizer (never downloaded)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"--model {p}: not a local Hugging Face model directory (no config.json); "
                                "neo never downloads models")
    tok = AutoTokenizer.from_pretrained(p)
    model = AutoModelForCausalLM.from_pretrained(p)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def _separator_ids(tokenizer: Any) -> list[int]:
    from ..training.tasks import ITEM_SEPARATOR

    return list(dict.fromkeys(tokenizer(ITEM_SEPARATOR, add_special_tokens=False)["input_ids"] +
                              tokenizer(ITEM_SEPARATOR.strip(), add_special_tokens=False)["input_ids"]))


def _examples(system: Any, cases: Any, queries: list[Any]) -> tuple[list[dict[str, Any]], list[Any]]:
    """A few outputs per task and format (constraints on); returns printable records and every
    item generated (to check validity)."""
    from ..lm.prompts import Prompt

    cat = system.catalog
    sep = _separator_ids(system.tokenizer)
    out, items = [], []
    hist = [int(x) for x in cases.histories[0][-10:]]
    hist_titles = [cat.text["title"][r] for r in hist]
    asks: list[tuple[str, Prompt, int]] = [
        ("recommend movies (ids)", Prompt(task="recommend", target_types="movie", format="ids", history=hist, k=5,
                                          template=0), 40),
        ("recommend tags (ids)", Prompt(task="recommend", target_types="tag", format="ids", history=hist, k=3,
                                        template=0), 24),
        ("user profile (text)", Prompt(task="describe_user", history=hist, template=0), 32),
        ("recommend + explain (mixed)", Prompt(task="recommend", target_types="movie", format="mixed", history=hist,
                                               k=1, template=0, instruction="Explain why."), 48),
    ]
    if queries:
        asks.insert(2, ("search (ids)", Prompt(task="search", target_types="movie", query=queries[0].query, k=5,
                                               template=0), 40))
    for name, p, n in asks:
        g = system.generate([p], max_new_tokens=n, separator_token_ids=sep)[0]
        items += g.items
        rec = {"task": name, "output": g.text.strip(), "status": g.status,
               "items": [{"id": it.id, "type": it.type, "title": it.title, "valid": it.valid} for it in g.items]}
        if p.query:
            rec["query"] = p.query
        else:
            rec["history"] = hist_titles
        out.append(rec)
    return out, items


def _popular_lists(counts: np.ndarray, candidates: np.ndarray) -> Any:
    """A search function that ignores the query and returns the most popular candidates."""
    import numpy as np

    order = np.asarray(candidates, dtype=np.int64)[np.argsort(-counts[candidates], kind="stable")]

    def fn(queries: list[str], k: int) -> list[list[int]]:
        return [order[:k].tolist() for _ in queries]

    return fn


def _plot(path: Path, losses: dict[str, list[dict[str, float]]], table: dict[str, dict[str, float]],
          search: dict[str, dict[str, float]]) -> Path | None:
    import numpy as np

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    offset = 0
    for name, hist in losses.items():
        if not hist:
            continue
        steps = [offset + h["step"] for h in hist]
        axes[0].plot(steps, [h["loss"] for h in hist], label=name)
        offset = steps[-1]
    axes[0].set_title("training loss (stages back to back)")
    axes[0].set_xlabel("optimizer step")
    axes[0].set_yscale("log")
    axes[0].legend()
    for ax, data, title in ((axes[1], table, "recommendation (leave-one-out)"), (axes[2], search, "search (held-out queries)")):
        names = list(data)
        cols = ["hr@5", "hr@10", "ndcg@10"] if data is table else ["recall@10", "hr@10", "ndcg@10"]
        x = np.arange(len(names))
        for j, c in enumerate(cols):
            ax.bar(x + (j - 1) * 0.27, [data[n].get(c, 0.0) for n in names], 0.27, label=c)
        ax.set_xticks(x, names, rotation=15)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(config: DemoConfig = FULL, *, out_dir: str | os.PathLike = "neo-demo", model_path: str | None = None,
             data: str | None = None, json_path: str | os.PathLike | None = None, progress: bool = True,
             quiet: bool = False) -> dict[str, Any]:
    """Run the end-to-end demo; returns every metric and example (also written to ``out_dir``).

    Parameters
    ----------
    config : DemoConfig
        :data:`QUICK` or :data:`FULL` (or your own).
    out_dir : path
        Receives ``system/`` (the trained :class:`~neo.NeoSystem`), ``demo.png``, ``metrics.json``.
    model_path : str, optional
        A local pre-trained HF causal LM used instead of stage 0.
    data : str, optional
        A MovieLens directory instead of the bundled copy.
    json_path : path, optional
        Also write the metrics JSON here.
    """
    import numpy as np

    import torch

    from ..evaluation.baselines import BM25Search, Popularity, SASRec
    from ..items.datasets import load_movielens
    from ..items.embeddings import embed_catalog
    from ..evaluation import (KS, evaluate_scorer, evaluate_search, evaluate_topk, format_compliance, leave_one_out,
                             neo_search_fn, neo_topk_fn, random_expectation, sid_validity_and_steering)
    from ..lm.prompts import PromptBuilder
    from ..items.sids import build_sids
    from ..lm.system import NeoSystem
    from ..training.tasks import TaskBuilder
    from ..training.train import align, instruct, stage0

    cfg = config
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)

    def lap(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 2)
        _say(f"   done in {timings[name]:.1f} s", quiet)

    # 1. data
    t0 = time.perf_counter()
    _say("[1/8] data: MovieLens ml-latest-small (bundled; GroupLens, cite Harper & Konstan 2015)", quiet)
    full = load_movielens(data)
    ds = full.subset(max_items=cfg.max_movies, max_other=cfg.max_tags, max_users=cfg.max_users, seed=cfg.seed)
    cat = ds.catalog
    split = leave_one_out(ds.interactions)
    n_cases = min(cfg.eval_cases, len(split.test))
    case_idx = np.sort(rng.choice(len(split.test), size=n_cases, replace=False))
    test = split.test.subset(case_idx)
    test_queries = [q for q in ds.queries if q.split == "test"]
    test_queries = [test_queries[i] for i in np.sort(rng.choice(len(test_queries), size=min(cfg.search_queries,
                                                                                              len(test_queries)),
                                                                 replace=False))] if test_queries else []
    _say(f"   {ds.summary()['types']} items, {ds.interactions.n_users} users, "
         f"{ds.interactions.n_interactions} interactions; {len(test)} test cases, {len(test_queries)} held-out queries",
         quiet)
    lap("data", t0)

    # 2. embeddings + SIDs
    t0 = time.perf_counter()
    _say("[2/8] offline embeddings (TF-IDF + SVD) and semantic IDs (residual k-means per type)", quiet)
    emb = embed_catalog(cat, "tfidf")
    sids = build_sids(cat, emb, levels=cfg.levels, codebook_size=cfg.codebook_size, seed=cfg.seed)
    sid_report = json.loads(sids.report.to_json()) if hasattr(sids.report, "to_json") else dict(sids.report)
    _say(str(sids.report), quiet)
    lap("sids", t0)

    # 3. stage 0 (or a given model)
    t0 = time.perf_counter()
    losses: dict[str, list[dict[str, float]]] = {}
    if model_path:
        _say(f"[3/8] loading the local model {model_path} (stage 0 skipped)", quiet)
        model, tok = _load_model(model_path)
    else:
        _say("[3/8] stage 0: tokenizer trained here + a small Llama trained from scratch on catalog text", quiet)
        model, tok, r0 = stage0(cat, vocab_size=cfg.vocab_size, hidden=cfg.hidden, layers=cfg.layers,
                                max_steps=cfg.stage0_steps, batch_size=cfg.batch_size, seed=cfg.seed,
                                progress=progress)
        losses["stage0"] = r0.loss_history
    lap("stage0", t0)

    # 4. vocabulary + model adaptation + alignment
    t0 = time.perf_counter()
    _say("[4/8] SID tokens installed; alignment (SID rows only, backbone frozen)", quiet)
    system = NeoSystem.build(model, tok, cat, sids)
    tb = TaskBuilder(PromptBuilder(system.tokenizer, system.vocab, system.index, cat), cat, seed=cfg.seed,
                     max_history=cfg.max_history)
    r1 = align(system.model, system.tokenizer, system.vocab, tb.alignment(), max_steps=cfg.align_steps,
               batch_size=cfg.batch_size, seed=cfg.seed, progress=progress, logging_steps=5, packing=cfg.packing,
               max_length=256)
    losses["align"] = r1.loss_history
    lap("align", t0)

    # 5. instruction tuning
    t0 = time.perf_counter()
    _say("[5/8] instruction tuning (recommend, lists, mixed, search, profiles, explanations)", quiet)
    # side events (tag applications) before each user's validation target join the training sequences
    val_time = [float(t[-2]) if t.size >= 3 else float("inf") for t in ds.interactions.timestamps]
    train_seqs = {u: s for u, s in ds.training_sequences(split.train, val_time).items() if len(s) >= 2}
    pools = tb.instruction(train_seqs, max_per_user=cfg.max_per_user,
                           search_examples=cfg.max_movies + cfg.max_tags)
    train_q = [(q.query, int(r)) for q in ds.queries if q.split == "train" for r in q.relevant[:3]]
    pools["search"] = pools.get("search", []) + tb.search(rows=[], queries=train_q)
    weights = {k: v for k, v in cfg.task_weights.items() if pools.get(k) and v > 0}
    r2 = instruct(system.model, system.tokenizer, {k: pools[k] for k in weights}, weights=weights,
                  num_examples=cfg.instruct_steps * cfg.batch_size, max_steps=cfg.instruct_steps,
                  batch_size=cfg.batch_size, lr=cfg.instruct_lr if not model_path else 1e-4, seed=cfg.seed,
                  progress=progress, logging_steps=10, packing=cfg.packing, max_length=512)
    system.model = r2.model
    system.model.eval()
    losses["instruct"] = r2.loss_history
    pool_sizes = {k: len(v) for k, v in pools.items()}
    lap("instruct", t0)

    # 6. evaluation, baselines in the same run
    t0 = time.perf_counter()
    _say(f"[6/8] evaluation: leave-one-out, full ranking over {len(ds.candidate_rows())} movies, "
         f"{len(test)} users; search on {len(test_queries)} held-out tag queries", quiet)
    cand = ds.candidate_rows()
    table: dict[str, dict[str, float]] = {}
    table["random (expected)"] = random_expectation(test, split.n_items, candidates=cand)
    pop = Popularity().fit(split.train, split.n_items)
    table["popularity"] = evaluate_scorer(pop.score, test, candidates=cand)
    sas = SASRec(split.n_items, seed=cfg.seed).fit(split.train, epochs=cfg.sasrec_epochs, valid=split.valid,
                                                   progress=progress)
    table["SASRec (full CE)"] = evaluate_scorer(sas.score, test, candidates=cand)
    table["neo"] = evaluate_topk(neo_topk_fn(system, target_type="movie", num_beams=cfg.num_beams,
                                             max_history=cfg.max_history), test,
                                 batch_size=8, progress=progress, desc="neo top-K")
    search: dict[str, dict[str, float]] = {}
    if test_queries:
        texts = [cat.item_text(r) for r in range(len(cat))]
        bm25 = BM25Search(texts, candidates=cand)
        search["BM25"] = evaluate_search(lambda qs, k: bm25.search(qs, k), test_queries)
        # query-blind popularity: how much of a search score a popularity prior alone earns
        search["popularity (query-blind)"] = evaluate_search(_popular_lists(pop.counts, cand), test_queries)
        search["neo"] = evaluate_search(neo_search_fn(system, target_type="movie", num_beams=cfg.num_beams),
                                        test_queries, batch_size=8)
    probe = [test.histories[i][-cfg.max_history:] for i in range(min(cfg.probe_prompts, len(test)))]
    steering = sid_validity_and_steering(system, probe, num_beams=10, max_prompts=cfg.probe_prompts)
    fmt_free = format_compliance(system, probe, constrained=False, max_prompts=cfg.probe_prompts)
    fmt_con = format_compliance(system, probe, constrained=True, max_prompts=cfg.probe_prompts)
    lap("evaluation", t0)

    # 7. examples
    t0 = time.perf_counter()
    _say("[7/8] example outputs (constrained decoding)", quiet)
    examples, gen_items = _examples(system, test, test_queries)
    topk_items = neo_topk_fn(system, target_type="movie", num_beams=cfg.num_beams,
                                             max_history=cfg.max_history)(test.histories[:4], 10)
    n_items_checked = len(gen_items) + sum(len(x) for x in topk_items)
    all_valid = all(it.valid for it in gen_items) and all(r >= 0 for x in topk_items for r in x)
    for ex in examples:
        _say(f"   - {ex['task']}: {ex.get('query', '') and 'query ' + repr(ex['query']) + ' -> '}{ex['output'][:200]}",
             quiet)
    lap("examples", t0)

    # 8. save, plot, summary
    t0 = time.perf_counter()
    _say("[8/8] saving the system, plot and metrics", quiet)
    sys_dir = system.save(out / "system")
    png = _plot(out / "demo.png", losses, table, search)
    result: dict[str, Any] = {
        "dataset": {k: v for k, v in ds.summary().items() if k != "license_text_chars"},
        "config": asdict(cfg),
        "model": model_path or f"stage0 Llama (hidden {cfg.hidden}, {cfg.layers} layers, trained here)",
        "sid_report": sid_report,
        "recommendation": table,
        "search": search,
        "sid_validity_constraints_off": steering["sid_validity"],
        "type_steering_constraints_off": steering["steering"],
        "format_compliance": {"constraints_off": fmt_free, "constraints_on": fmt_con},
        "generated_items_checked": n_items_checked,
        "generated_items_all_valid": bool(all_valid),
        "examples": examples,
        "training": {"stage0_loss": losses.get("stage0", [{}])[-1].get("loss") if losses.get("stage0") else None,
                     "align_loss": r1.train_loss, "instruct_loss": r2.train_loss, "instruct_pools": pool_sizes},
        "sasrec_history": sas.history,
        "timings_s": timings,
        "system_dir": str(sys_dir),
        "plot": str(png) if png else None,
    }
    lap("save", t0)
    result["timings_s"]["total"] = round(time.perf_counter() - t_start, 2)
    (out / "metrics.json").write_text(json.dumps(result, indent=1, default=float))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1, default=float))
    cols = [f"{m}@{k}" for k in KS for m in ("hr", "ndcg")]
    _say("\nRecommendation (leave-one-out, full ranking, history <= 20):\n" + format_table(table, cols), quiet)
    if search:
        _say("\nSearch (held-out tag queries):\n" + format_table(search, ["recall@10", "hr@10", "ndcg@10", "ndcg@30"]),
             quiet)
    _say(f"\nSID validity with constraints off: {steering['sid_validity']:.3f}; type steering (constraints off): "
         + ", ".join(f"{t} {v:.3f}" for t, v in steering["steering"].items()), quiet)
    _say(f"format compliance, constraints off: {fmt_free}; on: {fmt_con}", quiet)
    _say(f"every generated item valid: {all_valid} ({n_items_checked} checked); "
         f"system saved to {sys_dir}; plot {png}; total {result['timings_s']['total']:.0f} s", quiet)
    return result


# ============================================================================ CLI hooks

HELP = "end-to-end demo on the bundled MovieLens (CPU, no downloads)"


def add_parser(subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """Register ``neo demo`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser("demo", help=HELP, parents=list(parents),
                              description="Bundled MovieLens -> embeddings -> SIDs -> small model -> align -> "
                                          "instruct -> evaluation vs popularity/SASRec/BM25 -> examples.")
    p.add_argument("--quick", action="store_true", help="small configuration (<= 2 minutes on 2 CPU cores)")
    p.add_argument("--out", default="neo-demo", help="output directory (system/, demo.png, metrics.json)")
    p.add_argument("--model", help="local pre-trained HF causal LM directory to use instead of stage 0")
    p.add_argument("--data", help="a MovieLens directory instead of the bundled ml-latest-small")
    p.add_argument("--json", help="also write the metrics JSON to this path")
    p.add_argument("--seed", type=int, default=0, help="random seed of every stage (default 0)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the demo's small models run fastest on one thread, and "
                        "more threads slow down sharply on a busy machine; 0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """``neo demo``: run :func:`run_demo` with the parsed options; 1 if a generated item was invalid."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = replace(QUICK if args.quick else FULL, seed=args.seed)
    res = run_demo(cfg, out_dir=args.out, model_path=args.model, data=args.data, json_path=args.json,
                   progress=not args.no_progress)
    return 0 if res["generated_items_all_valid"] else 1
