"""Experiment: neo as a sequential recommender vs SASRec (full CE) and popularity, same run, same protocol.

Protocol: leave-one-out (per user the last item is the test target, the one before it the validation
target, everything earlier trains), history capped at 20 items, full ranking over every candidate item,
history items excluded, ties against the model. neo and SASRec select their weights on validation only
(neo: NDCG@10 of constrained beam search on ``--valid-users`` validation targets; SASRec: NDCG@10 on all
validation targets); the test split is read once, at the end.

neo here: a small causal LM trained from scratch on SID sequences (:meth:`TaskBuilder.rec_sequences`: a
short instruction, the history as SID spans, loss on every next item), optionally mixed with the other
instruction tasks (``--mix``), with early stopping and a time budget; ranking by constrained beam search.

Datasets: ``demo`` (the ``neo demo`` catalog: the 1,000 most-rated movies and 100 most-used tags of the
bundled ml-latest-small, tag applications as side events), ``ml-latest-small`` (all 9,742 movies, bundled
copy), ``ml-100k`` (``--data`` directory with u.data / u.item, read locally, never committed).

Run, e.g.::

    python benchmarks/exp_rec.py --dataset demo --threads 1 --json /tmp/r.json
    python benchmarks/exp_rec.py --dataset ml-100k --data /work/shared/data/ml-100k --max-minutes 25

Prints one summary line (and a Markdown table) and writes the JSON given by ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_info  # noqa: E402


# ============================================================================ data


def load_ml100k(root: Path) -> Any:
    """ml-100k as a neo Dataset: catalog from u.item (title, year, genres), interactions from u.data."""
    from neo.items.catalog import Catalog
    from neo.items.datasets import Dataset, Interactions

    genres = [ln.split("|")[0] for ln in (root / "u.genre").read_text(encoding="latin-1").splitlines() if ln.strip()]
    recs = []
    for ln in (root / "u.item").read_text(encoding="latin-1").splitlines():
        f = ln.split("|")
        if len(f) < 5 + len(genres):
            continue
        flags = f[5:5 + len(genres)]
        g = ", ".join(genres[i] for i, x in enumerate(flags) if x == "1" and genres[i] != "unknown")
        title = f[1].strip() or f"item {f[0]}"
        recs.append({"id": f"movie:{f[0]}", "type": "movie", "title": title, "genres": g or "unknown"})
    users, items, times = [], [], []
    for ln in (root / "u.data").read_text().splitlines():
        u, i, _r, t = ln.split("\t")
        users.append(u)
        items.append(f"movie:{i}")
        times.append(int(t))
    counts: dict[str, int] = {}
    for i in items:
        counts[i] = counts.get(i, 0) + 1
    for r in recs:
        r["popularity"] = float(counts.get(r["id"], 0))
    cat = Catalog.from_records(recs, text_fields=["title", "genres"], types=["movie"], source="ml-100k")
    inter = Interactions.from_triples(users, items, times, item_ids=cat.ids)
    return Dataset("ml-100k", inter, cat, "movie", [], {"source": str(root)})


def load(a: argparse.Namespace) -> Any:
    from neo.items.datasets import load_movielens

    if a.dataset == "demo":
        return load_movielens().subset(max_items=a.max_movies or 1000, max_other=100 if a.max_tags is None else
                                       a.max_tags, seed=a.seed)
    if a.dataset == "ml-latest-small":
        ds = load_movielens(a.data)
        return ds.subset(max_items=a.max_movies, max_other=0 if a.max_tags is None else a.max_tags, seed=a.seed)
    if a.dataset == "ml-100k":
        return load_ml100k(Path(a.data or "/work/shared/data/ml-100k"))
    raise SystemExit(f"unknown dataset {a.dataset}")


# ============================================================================ run


def cooccurrence_embeddings(ds: Any, train: list[np.ndarray], dim: int = 64) -> np.ndarray:
    """Benchmark-local collaborative item vectors (used until neo.items ships its own): a truncated SVD of
    the cosine-normalised item-item co-occurrence of the training sequences (validation and test targets
    are not in them); items of other types (tags) keep their TF-IDF vectors in the same width."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.linalg import svds

    from neo.items.embeddings import embed_catalog

    cat = ds.catalog
    n = len(cat)
    rows = np.concatenate([np.full(len(s), u) for u, s in enumerate(train) if len(s)])
    cols = np.concatenate([s for s in train if len(s)])
    x = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(train), n))
    x.data[:] = 1.0
    c = (x.T @ x).tocsr().astype(np.float64)
    d = np.sqrt(np.maximum(c.diagonal(), 1.0))
    c = c.multiply(1.0 / d[:, None]).multiply(1.0 / d[None, :]).tocsr()
    c.setdiag(0.0)
    k = min(dim, n - 2)
    u, sv, _ = svds(c, k=k, random_state=0)
    emb = np.zeros((n, max(dim, 8)), dtype=np.float32)
    emb[:, :k] = (u * np.sqrt(np.abs(sv))).astype(np.float32)
    if ds.target_type is not None:
        other = np.flatnonzero(np.asarray([cat.type_of(r) != ds.target_type for r in range(n)]))
        if other.size:
            te = embed_catalog(cat, "tfidf")
            w = min(te.shape[1], emb.shape[1])
            emb[other] = 0.0
            emb[other, :w] = te[other, :w]
    return emb


def balanced_codes(x: np.ndarray, k1: int, k2: int, seed: int) -> np.ndarray:
    """Benchmark-local balanced two-level codes (until neo.items.build_sids offers balance=): level 1 is
    k-means with every cluster capped at ceil(n / k1) items (greedy assignment by distance), level 2 gives
    every item of a cluster its own code, the nearest free centroid of a k-means on the residuals. No two
    items share a SID, so no disambiguation level is needed (k1 * k2 >= n)."""
    from sklearn.cluster import KMeans

    n = x.shape[0]
    if k1 * k2 < n:
        raise SystemExit(f"balanced codes: {k1} x {k2} < {n} items")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def assign(dist: np.ndarray, cap: np.ndarray) -> np.ndarray:
        out = np.full(dist.shape[0], -1, dtype=np.int64)
        left = cap.copy()
        for flat in np.argsort(dist, axis=None, kind="stable"):
            i, c = divmod(int(flat), dist.shape[1])
            if out[i] < 0 and left[c] > 0:
                out[i] = c
                left[c] -= 1
        return out

    km1 = KMeans(n_clusters=min(k1, n), n_init=3, random_state=seed).fit(x)
    d1 = ((x[:, None, :] - km1.cluster_centers_[None]) ** 2).sum(-1)
    c1 = assign(d1, np.full(d1.shape[1], int(np.ceil(n / k1))))
    resid = x - km1.cluster_centers_[c1]
    km2 = KMeans(n_clusters=min(k2, n), n_init=3, random_state=seed).fit(resid)
    d2 = ((resid[:, None, :] - km2.cluster_centers_[None]) ** 2).sum(-1)
    c2 = np.full(n, -1, dtype=np.int64)
    for c in np.unique(c1):
        members = np.flatnonzero(c1 == c)
        c2[members] = assign(d2[members], np.ones(d2.shape[1], dtype=np.int64))
    return np.stack([c1, c2], 1).astype(np.int32)


def balanced_sids(cat: Any, emb: np.ndarray, seed: int) -> Any:
    """SemanticIds from :func:`balanced_codes` per item type (k1 = k2 = ceil(sqrt(n)))."""
    from neo.items.sids import SemanticIds

    codes, rows, sizes, reach, extra, report = {}, {}, {}, {}, {}, {"types": {}}
    for t in cat.type_names:
        r = cat.rows_of_type(t).astype(np.int64)
        k = max(2, int(np.ceil(np.sqrt(len(r)))))
        codes[t] = balanced_codes(np.asarray(emb[r], dtype=np.float64), k, k, seed)
        rows[t], sizes[t], reach[t], extra[t] = r, (k, k), np.ones(len(r), bool), False
        report["types"][t] = {"levels": 2, "codebook_sizes": [k, k],
                              "collision_rate": 1 - len({tuple(c) for c in codes[t]}) / len(r)}
    return SemanticIds(type_names=cat.type_names, codes=codes, rows=rows, codebook_sizes=sizes, reachable=reach,
                       extra_level=extra, collisions="extra_level", n_items=len(cat),
                       catalog_fingerprint=cat.fingerprint(), report=report, catalog=cat)


def add_residual_dropout(model: Any, p: float) -> None:
    """Benchmark-local: SASRec/GPT-2-style dropout on a Llama backbone's token embeddings and on the output
    of every attention and MLP branch before it joins the residual stream (forward hooks, active only in
    training mode; Llama's config has attention dropout only)."""
    import torch.nn.functional as F

    def hook(mod: Any, _inp: Any, out: Any) -> Any:
        return F.dropout(out, p, mod.training)

    inner = model.model
    inner.embed_tokens.register_forward_hook(hook)
    for layer in inner.layers:
        layer.self_attn.o_proj.register_forward_hook(hook)
        layer.mlp.down_proj.register_forward_hook(hook)


def embeddings(a: argparse.Namespace, ds: Any, split: Any, seqs: dict[str, np.ndarray]) -> Any:
    """Item vectors for the SIDs, from the training part only (``seqs``: training sequences with side
    events before each user's validation target)."""
    from neo.items.collaborative import sid_embeddings

    if a.embedding == "cooc-local":
        return cooccurrence_embeddings(ds, split.train)
    kind = {"tfidf": "text"}.get(a.embedding, a.embedding)
    return sid_embeddings(ds.catalog, list(seqs.values()), kind=kind, seed=a.seed, cf_weight=a.cf_weight)


def fused_topk_fn(systems: list[Any], target_type: str | None, num_beams: int, window: int) -> Any:
    """Benchmark-local ensemble of neo systems (each with its own SIDs): every system's constrained beam
    search proposes ``num_beams`` items with their probabilities; items are ranked by the mean probability
    over systems (an item outside a system's beams counts 0 there). History items are excluded by each
    search, as in :func:`neo.evaluation.neo_topk_fn` (the protocol caps the history at ``window``)."""
    from neo.lm.prompts import Prompt

    def fn(histories: list[np.ndarray], k: int) -> list[list[int]]:
        prompts = [Prompt(task="recommend", target_types=target_type, history=[int(x) for x in h[-window:]], k=1)
                   for h in histories]
        total = [dict() for _ in histories]
        for s in systems:
            for acc, r in zip(total, s.topk_items(prompts, k=max(k, num_beams), num_beams=max(k, num_beams))):
                for it in r:
                    acc[it.row] = acc.get(it.row, 0.0) + float(np.exp(it.score)) / len(systems)
        return [sorted(acc, key=acc.get, reverse=True)[:k] for acc in total]

    return fn


def run(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(a.threads)
    from neo.evaluation import evaluate_scorer, evaluate_topk, leave_one_out, neo_topk_fn, random_expectation
    from neo.evaluation.baselines import Popularity, SASRec
    from neo.evaluation.runners import neo_validation_fn
    from neo.items.sids import build_sids
    from neo.lm.prompts import PromptBuilder
    from neo.lm.system import NeoSystem
    from neo.training.tasks import TaskBuilder
    from neo.training.train import Validation, instruct, small_model, stage0, stage0_corpus, train_tokenizer

    t_all = time.perf_counter()
    rng = np.random.default_rng(a.seed)
    ds = load(a)
    cat = ds.catalog
    split = leave_one_out(ds.interactions)
    cand = ds.candidate_rows()
    test = split.test if not a.test_users else split.test.subset(
        np.sort(rng.choice(len(split.test), size=min(a.test_users, len(split.test)), replace=False)))
    valid = split.valid.subset(np.sort(rng.choice(len(split.valid), size=min(a.valid_users, len(split.valid)),
                                                  replace=False)))
    out: dict[str, Any] = {"args": vars(a), "machine": machine_info(), "dataset": {
        "name": ds.name, "items": len(cat), "types": {t: int(c) for t, c in zip(cat.type_names, cat.type_counts())},
        "users": ds.interactions.n_users, "interactions": ds.interactions.n_interactions,
        "test_cases": len(test), "valid_cases_for_neo": len(valid), "candidates": int(len(cand))}}
    print(f"data {out['dataset']}", flush=True)

    if ds.side is not None and ds.interactions.timestamps is not None:
        # side events (tag applications) before each user's validation target join the training sequences
        val_time = [float(t[-2]) if t.size >= 3 else float("inf") for t in ds.interactions.timestamps]
        seqs = ds.training_sequences(split.train, val_time)
    else:
        seqs = {ds.interactions.user_ids[u]: s for u, s in enumerate(split.train)}
    seqs = {u: s for u, s in seqs.items() if len(s)}

    def train_neo(a: argparse.Namespace, out: dict[str, Any]) -> Any:
        """SIDs, model and training for one seed (``a.seed``); fills ``out`` and returns the system."""
        # ---- SIDs
        t0 = time.perf_counter()
        kw: dict[str, Any] = {"balance": a.balance} if a.balance else {}
        if a.sid_builder == "balanced-local":
            sids = balanced_sids(cat, embeddings(a, ds, split, seqs), a.seed)
            out["sids"] = {"report": dict(sids.report), "seconds": time.perf_counter() - t0}
        else:
            sids = build_sids(cat, embeddings(a, ds, split, seqs), levels=a.levels,
                              codebook_size=a.codebook_size if len(a.codebook_size) > 1 else a.codebook_size[0],
                              seed=a.seed, **kw)
            out["sids"] = {"report": json.loads(sids.report.to_json()), "seconds": time.perf_counter() - t0}
        print(sids.report if a.sid_builder == "neo" else f"balanced SIDs {dict(sids.report)}", flush=True)
        if a.item_level != "none":
            sids = sids.with_item_level(a.item_level)
            out["sids"]["item_level"] = {"mode": a.item_level, "codebook_sizes": {
                t: list(sids.codebook_sizes[t]) for t in sids.type_names}}
            print(f"item level ({a.item_level}): codebook sizes {out['sids']['item_level']['codebook_sizes']}",
                  flush=True)

        # ---- model
        t_train = time.perf_counter()
        corpus = stage0_corpus(cat, seed=a.seed)
        mk = {"arch": a.arch, "heads": a.heads, "dropout": a.dropout, "intermediate": a.intermediate}
        if a.stage0_steps:
            model, tok, r0 = stage0(texts=corpus, vocab_size=a.vocab_size, hidden=a.hidden, layers=a.layers,
                                    max_steps=a.stage0_steps, batch_size=16, seed=a.seed, progress=a.progress,
                                    model_kwargs=mk)
            out["stage0"] = {"steps": r0.global_step, "tokens_per_s": r0.tokens_per_s}
        else:
            tok = train_tokenizer(corpus, vocab_size=a.vocab_size)
            model = small_model(tok, hidden=a.hidden, layers=a.layers, seed=a.seed, **mk)
        if a.resid_dropout:
            add_residual_dropout(model, a.resid_dropout)
        system = NeoSystem.build(model, tok, cat, sids)
        tb = TaskBuilder(PromptBuilder(system.tokenizer, system.vocab, system.index, cat), cat, seed=a.seed,
                         max_history=a.window)
        tasks = ["recommend"] + (["search", "describe_user", "recommend_mixed", "recommend_explain", "explain"]
                                 if a.mix else [])
        pools = tb.instruction(seqs, tasks=tasks, window=a.window, max_per_user=4, search_examples=len(cat),
                               rec_types=a.rec_types, stride=a.stride)
        if a.rec_task == "sampled":  # ablation: one target position per example (the pre-sequence design)
            pools["recommend"] = tb.recommend(seqs, k=1, max_per_user=a.max_per_user)
        if a.split_rec_types and a.rec_task == "sequences":
            by = {}
            for w in pools["recommend"].windows:
                key = "recommend" if (w.target_types or [None])[0] in (None, ds.target_type) else \
                    f"recommend_{w.target_types[0]}"
                by.setdefault(key, []).append(w)
            from neo.training.tasks import RecSequences

            rec = {k: RecSequences(tb, v) for k, v in by.items()}
            pools = {**{k: v for k, v in pools.items() if k != "recommend"}, **rec}
        weights = {"recommend": 1.0}
        for t in pools:
            if t != "recommend":
                weights[t] = a.other_weight if not t.startswith("recommend_") or t in (
                    "recommend_mixed", "recommend_explain") else a.type_weight
        n_rec = len(pools["recommend"])
        per_epoch = int(round(n_rec * sum(weights.values()) / weights["recommend"]))
        fn = neo_validation_fn(system, valid, target_type=ds.target_type, num_beams=a.valid_beams, max_history=a.window)
        validation = Validation(fn, metric="ndcg@10", every_epochs=a.valid_every, patience=a.patience) \
            if a.valid_users else None
        pool_sizes = {k: len(v) for k, v in pools.items()}
        print(f"pools {pool_sizes}, {per_epoch} examples per epoch", flush=True)
        res = instruct(system.model, system.tokenizer, pools, weights=weights, num_examples=per_epoch, epochs=a.epochs,
                       batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay, seed=a.seed, progress=a.progress,
                       logging_steps=20, max_length=a.max_length, validation=validation,
                       max_minutes=a.max_minutes - (time.perf_counter() - t_train) / 60 if a.max_minutes else None,
                       packing=a.packing, pack_length=a.pack_length,
                       training_args={"label_smoothing_factor": a.label_smoothing} if a.label_smoothing else None,
                       sid_smoothing=a.sid_smoothing, vocab=system.vocab, average_decay=a.average_decay)
        system.model = res.model.eval()
        train_s = time.perf_counter() - t_train
        if validation is not None:  # the returned weights must be the kept ones: validate them once more
            out["valid_returned_model"] = fn(system.model)
            print(f"returned model on validation: {out['valid_returned_model']}", flush=True)
        out["neo_training"] = {"seconds": train_s, "steps": res.global_step, "stop_reason": res.stop_reason,
                               "tokens": res.tokens, "loss_tokens": res.loss_tokens, "tokens_per_s": res.tokens_per_s,
                               "loss_token_share": res.loss_token_share, "best": res.best,
                               "eval_history": res.eval_history, "pools": pool_sizes, "weights": weights,
                               "examples_per_epoch": per_epoch, "loss_first": res.losses[0] if res.losses else None,
                               "loss_last": res.losses[-1] if res.losses else None}
        print(f"neo trained {train_s:.0f} s, {res.global_step} steps ({res.stop_reason}), {res.tokens_per_s:,.0f} tok/s, "
              f"loss tokens {res.loss_token_share:.0%}, best {res.best}", flush=True)
        return system

    members = []
    for j in range(a.ensemble):
        a_j = argparse.Namespace(**{**vars(a), "seed": a.seed + j,
                                    "max_minutes": a.max_minutes / a.ensemble if a.max_minutes else None})
        o_j = out if a.ensemble == 1 else {}
        members.append(train_neo(a_j, o_j))
        if a.ensemble > 1:
            out.setdefault("ensemble", []).append({"seed": a_j.seed, **o_j})
    system = members[0]
    if a.save:
        system.save(a.save)
    out["neo_training_seconds"] = time.perf_counter() - t_all

    # ---- test (read once)
    table: dict[str, dict[str, float]] = {}
    table["random (expected)"] = random_expectation(test, split.n_items, candidates=cand)
    pop = Popularity().fit(split.train, split.n_items)
    table["popularity"] = evaluate_scorer(pop.score, test, candidates=cand)
    t0 = time.perf_counter()
    neo_lists: list[list[int]] = []
    nfn = neo_topk_fn(system, target_type=ds.target_type, num_beams=a.num_beams, max_history=a.window) \
        if a.ensemble == 1 else fused_topk_fn(members, ds.target_type, a.num_beams, a.window)

    def rec(hs: list[np.ndarray], k: int) -> list[list[int]]:
        got = nfn(hs, k)
        neo_lists.extend(got)
        return got

    table["neo" if a.ensemble == 1 else f"neo ensemble of {a.ensemble}"] = evaluate_topk(rec, test, batch_size=32)
    out["neo_test_seconds"] = time.perf_counter() - t0
    top1 = {"neo": len({x[0] for x in neo_lists if x})}
    if a.sasrec_epochs:
        t0 = time.perf_counter()
        sas = SASRec(split.n_items, seed=a.seed).fit(split.train, epochs=a.sasrec_epochs, valid=split.valid,
                                                     progress=a.progress)
        out["sasrec_seconds"] = time.perf_counter() - t0
        table["SASRec (full CE)"] = evaluate_scorer(sas.score, test, candidates=cand)
        s = np.array(sas.score(test.histories), dtype=np.float64)
        mask = np.ones(s.shape[1], dtype=bool)
        mask[cand] = False
        s[:, mask] = -np.inf
        for i, h in enumerate(test.histories):
            s[i, h[h != test.targets[i]]] = -np.inf
        top1["SASRec (full CE)"] = len(set(np.argmax(s, 1).tolist()))
        out["sasrec_history"] = sas.history
        if a.ensemble > 1:  # the same ensemble for SASRec (seeds seed+1, ...), ranked by mean softmax probability
            sases = [sas] + [SASRec(split.n_items, seed=a.seed + j).fit(split.train, epochs=a.sasrec_epochs,
                                                                        valid=split.valid, progress=a.progress)
                             for j in range(1, a.ensemble)]

            def mean_prob(hs: list[np.ndarray]) -> np.ndarray:
                ps = [torch.softmax(torch.as_tensor(np.asarray(m.score(hs), dtype=np.float32)), -1).numpy()
                      for m in sases]
                return np.mean(ps, axis=0)

            table[f"SASRec ensemble of {a.ensemble}"] = evaluate_scorer(mean_prob, test, candidates=cand)
            out["sasrec_ensemble_seconds"] = time.perf_counter() - t0
    out["test"] = table
    out["top1_distinct"] = top1
    out["total_seconds"] = time.perf_counter() - t_all
    cols = ["hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@30", "ndcg@30"]
    print("| model | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols))
    for k, m in table.items():
        print(f"| {k} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + " |")
    print(f"top-1 distinct: {top1}; total {out['total_seconds']:.0f} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="demo", choices=["demo", "ml-latest-small", "ml-100k"])
    ap.add_argument("--data", help="dataset directory (ml-100k; a MovieLens directory for ml-latest-small)")
    ap.add_argument("--max-movies", type=int)
    ap.add_argument("--max-tags", type=int)
    ap.add_argument("--embedding", default="cf", choices=["tfidf", "cf", "hybrid", "cooc-local"],
                    help="item vectors for the SIDs: neo.items.collaborative.sid_embeddings kind (tfidf = text), or "
                         "the benchmark-local co-occurrence SVD used before it existed")
    ap.add_argument("--cf-weight", type=float, default=0.5, help="hybrid: share of the collaborative part")
    ap.add_argument("--balance", type=float, default=1.0,
                    help="build_sids(balance=): 1.0 = equal clusters (collision-free when K^L >= n); 0: standard")
    ap.add_argument("--sid-builder", default="neo", choices=["neo", "balanced-local"],
                    help="neo.build_sids (default) or the benchmark-local balanced two-level codes")
    ap.add_argument("--levels", type=int, default=2)
    ap.add_argument("--item-level", default="none", choices=["none", "replace", "append"],
                    help="last SID level unique per item (replace: instead of the last code; append: after it)")
    ap.add_argument("--codebook-size", type=int, nargs="+", default=[32])
    ap.add_argument("--arch", default="llama", choices=["llama", "gpt2"])
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, help="MLP width (default 4 x hidden)")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--resid-dropout", type=float, default=0.0,
                    help="Llama: dropout on embeddings and on each attention / MLP branch output (forward hooks)")
    ap.add_argument("--vocab-size", type=int, default=1000, help="text vocabulary of the tokenizer trained here")
    ap.add_argument("--stage0-steps", type=int, default=0)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--weight-decay", type=float)
    ap.add_argument("--epochs", type=float, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--window", type=int, default=20)
    ap.add_argument("--stride", type=int, help="targets per rec window (default --window; smaller: overlapping "
                                               "windows, every target with >= window - stride items of context)")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--packing", action="store_true")
    ap.add_argument("--pack-length", type=int, help="pack each batch into rows of this many tokens (implies --packing)")
    ap.add_argument("--label-smoothing", type=float, default=0.0, help="TrainingArguments.label_smoothing_factor")
    ap.add_argument("--sid-smoothing", type=float, default=0.0, help="label smoothing inside each code's band")
    ap.add_argument("--average-decay", type=float, help="validate and keep an EMA of the weights (decay per step)")
    ap.add_argument("--rec-types", default="each")
    ap.add_argument("--rec-task", default="sequences", choices=["sequences", "sampled"],
                    help="every position of every window (default) or one sampled target per example (ablation)")
    ap.add_argument("--max-per-user", type=int, default=8, help="target positions per user with --rec-task sampled")
    ap.add_argument("--split-rec-types", action="store_true", help="one pool per target type (weights)")
    ap.add_argument("--type-weight", type=float, default=0.1)
    ap.add_argument("--mix", action="store_true", help="add search, profiles, explanations, mixed lists")
    ap.add_argument("--other-weight", type=float, default=0.05)
    ap.add_argument("--valid-users", type=int, default=300)
    ap.add_argument("--valid-beams", type=int, default=20)
    ap.add_argument("--valid-every", type=float, default=2.0)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--num-beams", type=int, default=30)
    ap.add_argument("--test-users", type=int, default=0, help="0: every test user")
    ap.add_argument("--max-minutes", type=float, default=30.0, help="neo's training budget (model + SIDs excluded)")
    ap.add_argument("--sasrec-epochs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ensemble", type=int, default=1,
                    help="train this many neo systems (seeds seed, seed+1, ...: own SIDs, init and order), each with "
                         "max-minutes / ensemble, and rank by their mean item probability")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--save", help="save the (first) trained neo system to this directory (NeoSystem.save)")
    a = ap.parse_args(argv)
    res = run(a)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
