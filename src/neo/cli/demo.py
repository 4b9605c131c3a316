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

from ._threads import THREADS_HELP, set_threads

if TYPE_CHECKING:
    import numpy as np

__all__ = ["DemoConfig", "QUICK", "FULL", "run_demo", "add_parser", "format_table"]


@dataclass
class DemoConfig:
    """Sizes and schedules of a demo run.

    The catalog is the ``max_movies`` most-rated movies and ``max_tags`` most-used tags of the
    bundled ml-latest-small, so the model, SIDs and evaluation stay CPU-sized; the evaluation ranks
    over every movie of that catalog. ``window`` is the number of recent items the model reads (the
    protocol's history cap of 20; every history item is excluded from the ranking).

    SIDs: ``embedding`` is the :func:`neo.items.collaborative.sid_embeddings` kind (``cf``: co-occurrence
    vectors of the training sequences; ``text``; ``hybrid``), clustered with balanced k-means
    (``balance``), ``levels`` x ``codebook_size`` codes per type: 2 x 32 holds 1,000 movies and 2 x 10 the 100
    tags without a collision, with few empty leaves (an unconstrained model rarely names a code pair that is
    no item).

    Training: a small model trained from scratch (``stage0_steps`` of text; ``arch``/``hidden``/
    ``layers``/``dropout``), ``align_steps`` of alignment (0 skips the stage), then the task mixture led by
    the every-position ``recommend`` task for up to ``instruct_epochs`` epochs (an epoch = one pass over every
    training position plus the other tasks in proportion to ``task_weights``), with early stopping on
    validation NDCG@10 (``valid_users`` validation targets, ``patience``) and a time budget: ``max_minutes``
    for all training stages together. ``instruct_lr`` is 2e-3, above the library's from-scratch default of
    1e-3, chosen while the demo still stopped at its time budget (before packing): on an idle 2-core machine
    (2 threads, 7 minutes) validation NDCG@10 reached 0.071 with 2e-3 and 0.061 with 1e-3
    (``benchmarks/results/rec.md``). ``pack_length``: each batch's examples are packed into rows of that many
    tokens (exact; None pads every example to the batch's longest instead): the task mix's lengths (rec
    windows ~90 tokens, text tasks up to ~250) padded 46% of every batch, and packing into rows of 192 tokens
    ran 1.5-1.8x the steps in the same time. ``average_decay``: validation, early stopping and the saved model
    use an exponential moving average of the weights (with the warm start of
    :class:`~neo.training.train.WeightAverage`, about the last ninth of the steps so far: some 500 steps, 3-4
    epochs, where the demo's validation peaks), which evens out the epoch-to-epoch swings of a small model
    trained at a high learning rate (validation NDCG@10 rose steadily to 0.071-0.075 instead of jumping
    between 0.05 and 0.07). ``sid_smoothing`` (label smoothing inside each code band) is off: it cost test
    NDCG@10 and SID validity here. Measured runs of each: ``benchmarks/results/rec.md``.
    """

    max_movies: int = 1000
    max_tags: int = 100
    max_users: int | None = None
    embedding: str = "cf"
    balance: float | None = 1.0
    levels: int = 2
    codebook_size: int | dict[str, int] = field(default_factory=lambda: {"movie": 32, "tag": 10})
    vocab_size: int = 1000
    arch: str = "llama"
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.1
    stage0_steps: int = 60
    align_steps: int = 0
    instruct_epochs: float = 40.0
    instruct_lr: float | None = 2e-3
    batch_size: int = 32
    pack_length: int | None = 192
    sid_smoothing: float = 0.0
    average_decay: float | None = 0.998
    window: int = 20
    valid_users: int = 1000
    valid_beams: int = 32
    valid_every: float = 2.0
    patience: int = 5
    max_minutes: float | None = 7.0
    max_per_user: int = 4
    eval_cases: int = 300
    search_queries: int = 100
    num_beams: int = 40
    sasrec_epochs: int = 40
    probe_prompts: int = 10
    task_weights: dict[str, float] = field(default_factory=lambda: {
        "recommend": 1.0, "recommend_tag": 0.1, "search": 0.1, "describe_user": 0.04, "recommend_mixed": 0.03,
        "recommend_explain": 0.03, "explain": 0.03})
    seed: int = 0


QUICK = DemoConfig(max_movies=120, max_tags=30, max_users=None, levels=2, codebook_size={"movie": 11, "tag": 6},
                   vocab_size=600, hidden=48, layers=2, heads=2, stage0_steps=20, align_steps=0, instruct_epochs=6.0,
                   instruct_lr=3e-3, batch_size=32, valid_users=200, valid_beams=11, valid_every=2.0, patience=3,
                   max_minutes=None, max_per_user=2, eval_cases=200, search_queries=30, num_beams=20, sasrec_epochs=20,
                   probe_prompts=5)
"""CI configuration: 120 movies, 30 tags, every user; 6 epochs and no time budget, so the result does not
depend on the machine's speed (about 2 minutes on a shared 2-core machine)."""
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


def _examples(system: Any, cases: Any, queries: list[Any], window: int = 10) -> tuple[list[dict[str, Any]], list[Any]]:
    """A few outputs per task and format (constraints on); returns printable records and every
    item generated (to check validity)."""
    from ..lm.prompts import Prompt

    cat = system.catalog
    sep = _separator_ids(system.tokenizer)
    out, items = [], []
    hist = [int(x) for x in cases.histories[0][-window:]]
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
        prose = p.output_format != "ids"
        g = system.generate([p], max_new_tokens=n, separator_token_ids=sep,
                            repetition_penalty=1.3 if prose else 1.0)[0]
        done = g.items[:-1] if g.status == "span" else g.items  # a span cut by the token budget is unfinished
        items += done
        rec = {"task": name, "output": g.text.strip(), "status": g.status,
               "items": [{"id": it.id, "type": it.type, "title": it.title, "valid": it.valid} for it in done]}
        if g.status == "span":
            rec["unfinished_span"] = True
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


def _demo_validation(system: Any, split: Any, cfg: DemoConfig, rng: Any) -> Any:
    """Early stopping on NDCG@10 of ``cfg.valid_users`` validation cases (second-to-last items: never
    trained on, never test targets)."""
    import numpy as np

    from ..evaluation.runners import neo_validation_fn
    from ..training.train import Validation

    n = min(cfg.valid_users, len(split.valid))
    if n <= 0:
        return None
    valid = split.valid.subset(np.sort(rng.choice(len(split.valid), size=n, replace=False)))
    fn = neo_validation_fn(system, valid, target_type="movie", num_beams=cfg.valid_beams, max_history=cfg.window)
    return Validation(fn, metric="ndcg@10", every_epochs=cfg.valid_every, patience=cfg.patience)


def _check_data(data: str | None) -> None:
    """Fail on a bad ``--data`` before anything is printed or created."""
    if data is None:
        return
    from ..items.datasets import DatasetError

    d = Path(data)
    if not d.is_dir():
        raise DatasetError(f"--data {d}: not a directory (give a MovieLens directory with movies.csv, "
                           "ratings.csv and tags.csv, or leave --data out for the bundled ml-latest-small)")
    missing = [f for f in ("movies.csv", "ratings.csv", "tags.csv") if not (d / f).is_file()]
    if missing:
        raise DatasetError(f"--data {d}: not a MovieLens directory ({', '.join(missing)} missing); leave --data "
                           "out for the bundled ml-latest-small")


def run_demo(config: DemoConfig = FULL, *, out_dir: str | os.PathLike = "neo-demo", model_path: str | None = None,
             data: str | None = None, json_path: str | os.PathLike | None = None, progress: bool = True,
             quiet: bool = False, max_minutes: float | None = None) -> dict[str, Any]:
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
        A MovieLens directory instead of the bundled copy (checked before anything is written).
    json_path : path, optional
        Also write the metrics JSON here.
    max_minutes : float, optional
        Time budget of all training stages together (default ``config.max_minutes``); each stage
        stops at its share, keeping the best validated weights.
    """
    _check_data(data)
    from ..items.datasets import load_movielens

    full = load_movielens(data)  # parse the data before printing or creating anything

    import numpy as np

    import torch

    from ..evaluation.baselines import BM25Search, Popularity, SASRec
    from ..items.collaborative import sid_embeddings
    from ..evaluation import (KS, evaluate_scorer, evaluate_search, evaluate_topk, format_compliance, leave_one_out,
                             neo_search_fn, neo_topk_fn, random_expectation, sid_validity_and_steering)
    from ..lm.prompts import PromptBuilder
    from ..items.sids import build_sids
    from ..lm.system import NeoSystem
    from ..training.tasks import INSTRUCTION_TASKS, TaskBuilder
    from ..training.train import align, instruct, stage0

    cfg = config
    budget_min = cfg.max_minutes if max_minutes is None else max_minutes
    t_start = time.perf_counter()
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    timings: dict[str, float] = {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)

    def lap(name: str, t0: float) -> None:
        timings[name] = round(time.perf_counter() - t0, 2)
        _say(f"   done in {timings[name]:.1f} s", quiet)

    t_train0: float | None = None

    def minutes_left(share: float = 1.0) -> float | None:
        """What is left of the training budget (times ``share``), at least a few seconds."""
        if budget_min is None:
            return None
        used = (time.perf_counter() - t_train0) / 60.0 if t_train0 is not None else 0.0
        return max(0.05, (budget_min - used) * share)

    # 1. data
    t0 = time.perf_counter()
    src = "bundled; GroupLens, cite Harper & Konstan 2015" if data is None else str(data)
    _say(f"[1/8] data: MovieLens ({src})", quiet)
    ds = full.subset(max_items=cfg.max_movies, max_other=cfg.max_tags, max_users=cfg.max_users, seed=cfg.seed)
    cat = ds.catalog
    split = leave_one_out(ds.interactions, max_history=max(20, cfg.window))
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
    # side events (tag applications) before each user's validation target join the training sequences; the
    # SIDs' collaborative vectors and every training example come from these (held-out targets never do)
    val_time = [float(t[-2]) if t.size >= 3 else float("inf") for t in ds.interactions.timestamps]
    train_seqs = {u: s for u, s in ds.training_sequences(split.train, val_time).items() if len(s) >= 1}
    _say(f"[2/8] item embeddings ({cfg.embedding}) and semantic IDs ("
         f"{'balanced' if cfg.balance else 'standard'} residual k-means per type)", quiet)
    emb = sid_embeddings(cat, list(train_seqs.values()), kind=cfg.embedding, seed=cfg.seed)
    sids = build_sids(cat, emb, levels=cfg.levels, codebook_size=cfg.codebook_size, seed=cfg.seed,
                      balance=cfg.balance)
    sid_report = json.loads(sids.report.to_json()) if hasattr(sids.report, "to_json") else dict(sids.report)
    _say(str(sids.report), quiet)
    lap("sids", t0)

    # 3. stage 0 (or a given model)
    t0 = t_train0 = time.perf_counter()
    losses: dict[str, list[dict[str, float]]] = {}
    stage_info: dict[str, dict[str, Any]] = {}
    if model_path:
        _say(f"[3/8] loading the local model {model_path} (stage 0 skipped)", quiet)
        model, tok = _load_model(model_path)
    else:
        _say(f"[3/8] stage 0: tokenizer trained here + a small {cfg.arch} (d={cfg.hidden}, {cfg.layers} layers) "
             f"trained from scratch on catalog text", quiet)
        model, tok, r0 = stage0(cat, vocab_size=cfg.vocab_size, hidden=cfg.hidden, layers=cfg.layers,
                                max_steps=cfg.stage0_steps, batch_size=16, seed=cfg.seed,
                                progress=progress, max_minutes=minutes_left(0.15),
                                model_kwargs={"arch": cfg.arch, "heads": cfg.heads, "dropout": cfg.dropout})
        losses["stage0"] = r0.loss_history
        stage_info["stage0"] = _stage_summary(r0)
        if r0.global_step:
            _say(f"   stage 0: {r0.global_step} steps, loss {r0.losses[0]:.2f} -> {r0.losses[-1]:.2f}, "
                 f"{r0.tokens_per_s:,.0f} tokens/s", quiet)
    lap("stage0", t0)

    # 4. vocabulary + model adaptation + alignment
    t0 = time.perf_counter()
    system = NeoSystem.build(model, tok, cat, sids)
    tb = TaskBuilder(PromptBuilder(system.tokenizer, system.vocab, system.index, cat), cat, seed=cfg.seed,
                     max_history=cfg.window)
    if cfg.align_steps:
        _say("[4/8] SID tokens installed; alignment (SID rows only, backbone frozen)", quiet)
        r1 = align(system.model, system.tokenizer, system.vocab, tb.alignment(), max_steps=cfg.align_steps,
                   batch_size=16, seed=cfg.seed, progress=progress, logging_steps=5, packing=True,
                   max_length=256, max_minutes=minutes_left(0.1))
        losses["align"] = r1.loss_history
        stage_info["align"] = _stage_summary(r1)
        _say(f"   align: {r1.global_step} steps, loss {r1.losses[0]:.2f} -> {r1.losses[-1]:.2f}", quiet)
    else:
        _say("[4/8] SID tokens installed (alignment skipped: the model is trained from scratch, so the "
             "instruction stage trains every weight anyway)", quiet)
    lap("align", t0)

    # 5. instruction tuning
    t0 = time.perf_counter()
    tasks = [t for t, wt in cfg.task_weights.items() if wt > 0 and t in INSTRUCTION_TASKS]  # + per-type pools
    pools = tb.instruction(train_seqs, tasks=tasks, max_per_user=cfg.max_per_user,
                           search_examples=cfg.max_movies + cfg.max_tags, window=cfg.window, per_type=True)
    train_q = [(q.query, int(r)) for q in ds.queries if q.split == "train" for r in q.relevant[:3]]
    if "search" in pools:
        pools["search"] = list(pools["search"]) + tb.search(rows=[], queries=train_q)
    weights = {k: v for k, v in cfg.task_weights.items() if len(pools.get(k, [])) and v > 0}
    n_rec = len(pools["recommend"])
    per_epoch = int(round(n_rec * sum(weights.values()) / weights["recommend"]))
    validation = _demo_validation(system, split, cfg, rng)
    _say(f"[5/8] instruction tuning: every position of {len(train_seqs)} users' sequences "
         f"({pools['recommend'].count_targets()} targets in {n_rec} windows) + "
         + ", ".join(f"{k} {len(pools[k])}" for k in weights if k != "recommend")
         + f"; up to {cfg.instruct_epochs:g} epochs of {per_epoch} examples, early stopping on validation "
           f"NDCG@10 ({cfg.valid_users} users)"
         + (f", {minutes_left():.1f} min left of the {budget_min:g}-min budget" if budget_min else ""), quiet)
    r2 = instruct(system.model, system.tokenizer, {k: pools[k] for k in weights}, weights=weights,
                  num_examples=per_epoch, epochs=cfg.instruct_epochs, batch_size=cfg.batch_size,
                  lr=cfg.instruct_lr if not model_path else None, seed=cfg.seed, progress=progress,
                  logging_steps=10, max_length=512, pack_length=cfg.pack_length,  # None: padded batches
                  sid_smoothing=cfg.sid_smoothing, vocab=system.vocab, average_decay=cfg.average_decay,
                  validation=validation, max_minutes=minutes_left())
    system.model = r2.model
    system.model.eval()
    losses["instruct"] = r2.loss_history
    stage_info["instruct"] = _stage_summary(r2)
    pool_sizes = {k: len(v) for k, v in pools.items()}
    best = r2.best or {}
    _say(f"   instruct: {r2.global_step} steps ({r2.stop_reason}), {r2.tokens_per_s:,.0f} tokens/s, "
         f"{r2.loss_token_share:.0%} of tokens with loss; kept epoch {best.get('epoch', float('nan')):.2f} "
         f"(valid HR@10 {best.get('hr@10', float('nan')):.4f}, NDCG@10 {best.get('ndcg@10', float('nan')):.4f})",
         quiet)
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
    neo_fn = neo_topk_fn(system, target_type="movie", num_beams=cfg.num_beams, max_history=cfg.window)
    neo_lists: list[list[int]] = []

    def neo_recorded(hs: list[np.ndarray], k: int) -> list[list[int]]:
        got = neo_fn(hs, k)
        neo_lists.extend(got)
        return got

    table["neo"] = evaluate_topk(neo_recorded, test, batch_size=16, progress=progress, desc="neo top-K")
    sas_first = np.argmax(_masked_scores(sas.score(test.histories), test.histories, cand), axis=1)
    top1 = {"neo": len({lst[0] for lst in neo_lists if lst}), "SASRec (full CE)": len(set(sas_first.tolist())),
            "popularity": 1, "cases": len(test)}
    search: dict[str, dict[str, float]] = {}
    if test_queries:
        texts = [cat.item_text(r) for r in range(len(cat))]
        bm25 = BM25Search(texts, candidates=cand)
        search["BM25"] = evaluate_search(lambda qs, k: bm25.search(qs, k), test_queries)
        # query-blind popularity: how much of a search score a popularity prior alone earns
        search["popularity (query-blind)"] = evaluate_search(_popular_lists(pop.counts, cand), test_queries)
        search["neo"] = evaluate_search(neo_search_fn(system, target_type="movie", num_beams=cfg.num_beams),
                                        test_queries, batch_size=8)
    probe = [test.histories[i][-cfg.window:] for i in range(min(cfg.probe_prompts, len(test)))]
    steering = sid_validity_and_steering(system, probe, num_beams=10, max_prompts=cfg.probe_prompts)
    fmt_free = format_compliance(system, probe, constrained=False, max_prompts=cfg.probe_prompts)
    fmt_con = format_compliance(system, probe, constrained=True, max_prompts=cfg.probe_prompts)
    lap("evaluation", t0)

    # 7. examples
    t0 = time.perf_counter()
    _say("[7/8] example outputs (constrained decoding)", quiet)
    examples, gen_items = _examples(system, test, test_queries, cfg.window)
    topk_items = neo_fn(test.histories[:4], 10)
    n_items_checked = len(gen_items) + sum(len(x) for x in topk_items)
    all_valid = all(it.valid for it in gen_items) and all(r >= 0 for x in topk_items for r in x)
    for ex in examples:
        _say(f"   - {ex['task']}: {ex.get('query', '') and 'query ' + repr(ex['query']) + ' -> '}{ex['output'][:200]}",
             quiet)
    lap("examples", t0)

    # 8. save, plot, summary
    t0 = time.perf_counter()
    _say("[8/8] saving the system, plot and metrics", quiet)
    if not progress:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Writing model shards" bar in a quiet run
    sys_dir = system.save(out / "system")
    png = _plot(out / "demo.png", losses, table, search)
    result: dict[str, Any] = {
        "dataset": {k: v for k, v in ds.summary().items() if k != "license_text_chars"},
        "config": asdict(cfg),
        "model": model_path or f"stage0 {cfg.arch} (hidden {cfg.hidden}, {cfg.layers} layers, trained here)",
        "sid_report": sid_report,
        "recommendation": table,
        "top1_distinct": top1,
        "search": search,
        "sid_validity_constraints_off": steering["sid_validity"],
        "type_steering_constraints_off": steering["steering"],
        "format_compliance": {"constraints_off": fmt_free, "constraints_on": fmt_con},
        "generated_items_checked": n_items_checked,
        "generated_items_all_valid": bool(all_valid),
        "examples": examples,
        "training": {"stages": stage_info, "instruct_pools": pool_sizes, "instruct_weights": weights,
                     "instruct_examples_per_epoch": per_epoch, "max_minutes": budget_min},
        "sasrec_history": sas.history,
        "timings_s": timings,
        "torch_threads": torch.get_num_threads(),
        "load_avg_at_start": load_at_start,
        "system_dir": str(sys_dir),
        "plot": str(png) if png else None,
    }
    lap("save", t0)
    result["timings_s"]["total"] = round(time.perf_counter() - t_start, 2)
    (out / "metrics.json").write_text(json.dumps(result, indent=1, default=float))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1, default=float))
    cols = [f"{m}@{k}" for k in KS for m in ("hr", "ndcg")]
    _say(f"\nRecommendation (leave-one-out, full ranking, history <= {max(20, cfg.window)}):\n"
         + format_table(table, cols), quiet)
    _say(f"distinct top-1 items over {top1['cases']} users: neo {top1['neo']}, SASRec {top1['SASRec (full CE)']}",
         quiet)
    if search:
        _say("\nSearch (held-out tag queries):\n" + format_table(search, ["recall@10", "hr@10", "ndcg@10", "ndcg@30"]),
             quiet)
    _say(f"\nSID validity with constraints off: {steering['sid_validity']:.3f}; type steering (constraints off): "
         + ", ".join(f"{t} {v:.3f}" for t, v in steering["steering"].items()), quiet)
    _say(f"format compliance, constraints off: {fmt_free}; on: {fmt_con}", quiet)
    _say(f"every generated item valid: {all_valid} ({n_items_checked} checked); "
         f"system saved to {sys_dir}; plot {png}; total {result['timings_s']['total']:.0f} s", quiet)
    return result


def _stage_summary(r: Any) -> dict[str, Any]:
    """What a training stage did, for the metrics JSON."""
    return {"steps": r.global_step, "train_loss": r.train_loss, "runtime_s": r.runtime_s,
            "tokens": r.tokens, "loss_tokens": r.loss_tokens, "tokens_per_s": r.tokens_per_s,
            "loss_token_share": r.loss_token_share, "stop_reason": r.stop_reason, "best": r.best,
            "eval_history": r.eval_history, "data": r.data_report,
            "first_loss": r.losses[0] if r.loss_history else None, "last_loss": r.losses[-1] if r.loss_history else None}


def _masked_scores(scores: Any, histories: Any, cand: Any) -> Any:
    """Scores with non-candidates and history items at -inf (the ranking :func:`evaluate_scorer` uses)."""
    import numpy as np

    s = np.array(scores, dtype=np.float64, copy=True)
    mask = np.ones(s.shape[1], dtype=bool)
    mask[np.asarray(cand, dtype=np.int64)] = False
    s[:, mask] = -np.inf
    for i, h in enumerate(histories):
        s[i, np.asarray(h, dtype=np.int64)] = -np.inf
    return s


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
    p.add_argument("--threads", type=int, default=None, help=THREADS_HELP)
    p.add_argument("--max-minutes", type=float,
                   help="time budget of the training stages together, in minutes (default: 7 for the full "
                        "configuration, 2 with --quick); the best validated weights are kept")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """``neo demo``: run :func:`run_demo` with the parsed options; 1 if a generated item was invalid."""
    _check_data(args.data)  # before torch is even imported
    threads = set_threads(args.threads)
    if not args.no_progress:
        print(f"neo demo: {threads} torch thread(s)", flush=True)
    cfg = replace(QUICK if args.quick else FULL, seed=args.seed)
    res = run_demo(cfg, out_dir=args.out, model_path=args.model, data=args.data, json_path=args.json,
                   progress=not args.no_progress, max_minutes=args.max_minutes)
    return 0 if res["generated_items_all_valid"] else 1
