"""SID construction: build time and memory at 100k / 1M (/ 10M) synthetic items, standard vs balanced
k-means; and SID quality for ranking on MovieLens (text / collaborative / hybrid embeddings, each with
standard and balanced k-means).

Usage (from the repository root)::

    python benchmarks/bench_sids.py                        # scaling (100k, 1M) + quality, then sids.md
    python benchmarks/bench_sids.py --skip-quality         # scaling only
    python benchmarks/bench_sids.py --skip-scaling         # quality only
    python benchmarks/bench_sids.py --sizes 10000000 --tag 10m --skip-quality
                                  # measure 10M (3x256; ~12 GB RAM) into sids_scale_10m.json
    python benchmarks/bench_sids.py --skip-scaling --skip-quality   # re-render sids.md from the JSON

Scaling: each size runs in a fresh subprocess so its peak memory (VmHWM, reset after the synthetic
embeddings are generated) is the build's own. Synthetic embeddings: rank-32 Gaussian mapped to 256-d
plus isotropic noise, float32 (see ``_synthetic``).

Quality (``sids_quality.json``): for each dataset (bundled ml-latest-small, its 1,000-movie demo
subset, ml-100k read from ``--ml100k``), embeddings ``text`` (TF-IDF + SVD), ``cf`` (co-occurrence
PPMI + SVD, or implicit ALS) and ``hybrid``, each with standard and balanced k-means at their default
codebook sizes, over 3 seeds: collision rate, codebook use, balance, prefix coherence (measured in
the text space and in the cf space, so rows are comparable), build time, and a ranking proxy (see
:class:`SidPrefixScorer`): HR@10 / NDCG@10 of a next-item model that sees items only through their
SID prefixes, on (a) the leave-one-out validation cases and (b) the last 10 items of every user
(10x more cases, less noise). Embeddings, SIDs and counts come from training items only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _harness import RESULTS_DIR, machine_info, markdown_table, time_fn, write_results  # noqa: E402



# ---------------------------------------------------------------------------------------------- scaling


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _synthetic(n: int, dim: int, seed: int = 0, rank: int = 32) -> np.ndarray:
    """Synthetic embeddings float32[n, dim]: a rank-``rank`` Gaussian mapped into ``dim`` dims plus small
    isotropic noise, generated in chunks (no full-size temporaries).

    Real text embeddings concentrate on a low-dimensional subspace, which residual quantisation can
    split level after level. (A mixture of isotropic blobs is a poor stand-in: once the levels have
    named the blob, isotropic 256-d noise cannot be split further, so nearly every item collides.)
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rank, dim, generator=g)
    out = np.empty((n, dim), dtype=np.float32)
    step = 1 << 18
    for s in range(0, n, step):
        m = min(step, n - s)
        out[s : s + m] = (torch.randn(m, rank, generator=g) @ w + 0.2 * torch.randn(m, dim, generator=g)).numpy()
    return out


def worker(n: int, dim: int, levels: int | None, k: int | None, repeat: int, balance: float | None = None) -> dict:
    """Runs in a subprocess: generate data, reset the memory high-water mark, build SIDs, report."""
    import torch

    from neo.items.catalog import Catalog
    from neo.items.sids import build_sids

    start_kb = _rss_kb("VmRSS")  # interpreter + torch, before any per-item data
    x = _synthetic(n, dim)
    cat = Catalog([f"i{i}" for i in range(n)], np.zeros(n, dtype=np.int32), ["item"])
    cat.fingerprint()  # hash ids outside the timed region (done once per catalog anyway)
    base_kb = _rss_kb("VmRSS")
    try:  # reset VmHWM so the peak below is the build's (Linux >= 4.0)
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    box = {}

    def run():
        box["s"] = build_sids(cat, x, levels=levels, codebook_size=k, seed=0, balance=balance,
                              warn_collision_rate=None)

    t = time_fn(run, warmup=0, repeat=repeat)
    peak_kb = _rss_kb("VmHWM")
    s = box["s"]
    # correctness before we believe the timing: every item has a unique, reachable SID
    assert s.reachable_mask().all() and s.codes["item"].shape[0] == n
    rep = s.report["types"]["item"]
    return {
        "n_items": n,
        "dim": dim,
        "codebook_sizes": rep["codebook_sizes"],
        "sample_size": rep["fit"]["sample_size"],
        "fit_s": rep["fit"]["seconds_fit"],
        "assign_s": rep["fit"]["seconds_assign"],
        "total_s": t["median_us"] / 1e6,
        "items_per_s": n / (t["median_us"] / 1e6),
        "embeddings_mb": x.nbytes / 2**20,
        "rss_start_mb": start_kb / 1024,
        "rss_before_build_mb": base_kb / 1024,
        "peak_rss_mb": peak_kb / 1024,
        "build_overhead_mb": (peak_kb - base_kb) / 1024 if reset else None,
        "collision_rate": rep["collisions"]["collision_rate"],
        "max_items_per_leaf": rep["items_per_leaf"]["max"],
        "balance": balance,
        "level0_max_over_mean": rep["per_level"][0]["balance"],
        "level0_perplexity": rep["per_level"][0]["perplexity"],
        "threads": torch.get_num_threads(),
        "repeat": t["n"],
        "loadavg_1m_after": os.getloadavg()[0],  # the machine is shared: high load means noisy times
    }


def run_scaling(sizes: list[int], dim: int, configs: list[tuple[str, int | None, int | None, float | None]],
                threads: int) -> list[dict]:
    rows = []
    for name, levels, k, balance in configs:
        for n in sizes:
            cmd = [sys.executable, __file__, "--worker", str(n), "--dim", str(dim), "--threads", str(threads),
                   "--levels", str(levels or 0), "--k", str(k or 0), "--repeat", "1", "--balance", str(balance or 0)]
            t0 = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise RuntimeError(f"worker for n={n} failed:\n{out.stderr[-3000:]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["config"] = name
            rows.append(row)
            print(f"[{name}] n={n:>10,}: {row['total_s']:.2f} s (fit {row['fit_s']:.2f} + assign {row['assign_s']:.2f}), "
                  f"peak RSS {row['peak_rss_mb']:.0f} MB (embeddings {row['embeddings_mb']:.0f} MB), "
                  f"collision rate {row['collision_rate']:.4f}  [{time.perf_counter() - t0:.0f}s wall]", flush=True)
    return rows


def estimate(rows: list[dict], config: str, n_target: int) -> dict | None:
    """Extrapolate from the largest measured size: fit is per sample (constant), assignment and the
    bookkeeping are linear in N; memory is the embeddings plus a per-item overhead."""
    rs = [r for r in rows if r["config"] == config]
    if not rs:
        return None
    r = max(rs, key=lambda r: r["n_items"])
    f = n_target / r["n_items"]
    rest = r["total_s"] - r["fit_s"]
    emb_mb = r["embeddings_mb"] * f
    over = (r["build_overhead_mb"] or 0) * f
    # everything above the interpreter's own footprint (data, catalog, build) grows linearly with N
    peak = r["rss_start_mb"] + (r["peak_rss_mb"] - r["rss_start_mb"]) * f
    return {"config": config, "n_items": n_target, "from_n": r["n_items"], "estimated": True,
            "fit_s": r["fit_s"], "assign_s": r["assign_s"] * f,
            "total_s": r["fit_s"] + rest * f, "embeddings_mb": emb_mb, "peak_rss_mb": peak, "build_overhead_mb": over}


# ---------------------------------------------------------------------------------------------- quality


def _shared_data() -> Path:
    """``shared/data`` beside the checkout (the main repository or a worktree of it)."""
    for p in Path(__file__).resolve().parents:
        if (p / "shared" / "data").is_dir():
            return p / "shared" / "data"
    return Path("shared") / "data"


def load_ml100k(root: Path):
    """ml-100k as a neo Dataset: movies (title, year, genres; popularity = #ratings) and every rating
    as an interaction, by time. Read in place, never copied."""
    from neo.items.catalog import Catalog
    from neo.items.datasets import Dataset, Interactions

    genres = [ln.split("|")[0] for ln in (root / "u.genre").read_text(encoding="latin-1").splitlines() if ln.strip()]
    data = np.loadtxt(root / "u.data", dtype=np.int64)
    n_ratings = np.bincount(data[:, 1])
    recs = []
    for ln in (root / "u.item").read_text(encoding="latin-1").splitlines():
        if not ln.strip():
            continue
        f = ln.split("|")
        title, date, flags = f[1], f[2], f[5:]
        g = ", ".join(genres[k] for k, v in enumerate(flags) if v == "1" and genres[k] != "unknown")
        mid = int(f[0])
        recs.append({"id": str(mid), "type": "movie", "title": title, "year": date[-4:], "genres": g,
                     "popularity": float(n_ratings[mid]) if mid < n_ratings.size else 0.0})
    cat = Catalog.from_records(recs, text_fields=["title", "year", "genres"])
    inter = Interactions.from_triples(data[:, 0].tolist(), data[:, 1].tolist(), data[:, 3].tolist(), item_ids=cat.ids)
    return Dataset("ml-100k", inter, cat, "movie", [], {"source": str(root)})


def tail_split(inter, tail: int = 10, min_train: int = 10, max_history: int = 20):
    """Per user with at least ``tail + min_train`` items: the last ``tail`` items are cases (each
    predicted from everything before it, capped at ``max_history``), the rest is training data."""
    from neo.evaluation.protocols import EvalCases

    train, users, hists, targets, cut = [], [], [], [], []
    for u, s in enumerate(inter.sequences):
        if s.size < tail + min_train:
            train.append(s.copy())
            cut.append(None)
            continue
        train.append(s[:-tail].copy())
        cut.append(s.size - tail)
        for j in range(s.size - tail, s.size):
            users.append(u)
            hists.append(s[:j][-max_history:].copy())
            targets.append(int(s[j]))
    cases = EvalCases(np.asarray(users, dtype=np.int64), hists, np.asarray(targets, dtype=np.int64))
    return train, cases, cut


class SidPrefixScorer:
    """Next-item scorer that sees items only through their SID prefixes (the ranking proxy).

    It is the generative factorisation neo's LM decodes, estimated by counting: the next item's
    codes are produced level by level, and level ``l`` is predicted from the previous item's prefix
    of the same depth::

        P(c_l(b) | c_<l(b), a) = (N_l[a_l, b_l] + beta P0_l(b_l | b_<l)) / (M_l[a_l, b_<l] + beta)

    where ``a_l`` / ``b_l`` are the depth-``l`` prefixes of the previous / next item, ``N_l`` counts
    training transitions between prefixes, ``M_l`` sums them over the next item's last code, and
    ``P0_l`` is how often each child of ``b_<l`` was a training target (add-``gamma`` smoothed). An
    item's score is the product over levels, mixed over the last ``contexts`` history items (weights
    ``decay^j``). Items sharing prefixes share counts, so SIDs whose prefixes group items that are
    consumed in similar contexts rank better; with one level of ``K = n`` codes this is an
    item-level first-order Markov chain (the reference). Cheap (counting, no training), deterministic.
    """

    def __init__(self, codes: np.ndarray, candidates: np.ndarray, train: list, *, beta: float = 2.0,
                 gamma: float = 1.0, contexts: int = 3, decay: float = 0.5):
        import scipy.sparse as sp

        n, L = codes.shape
        self.cand, self.beta, self.contexts, self.decay = np.asarray(candidates), beta, contexts, decay
        self.pids = []
        key = np.zeros(n, dtype=np.int64)
        for lvl in range(L):  # dense prefix ids per depth
            _, inv = np.unique(np.stack([key, codes[:, lvl]], 1), axis=0, return_inverse=True)
            key = inv.reshape(-1).astype(np.int64)
            self.pids.append(key)
        seqs = [np.asarray(x, dtype=np.int64) for x in train if len(x) > 1]
        a = np.concatenate([x[:-1] for x in seqs])
        b = np.concatenate([x[1:] for x in seqs])
        tgt = np.concatenate([np.asarray(x, dtype=np.int64) for x in train if len(x)])
        self.N, self.M, self.P0, self.cur, self.par = [], [], [], [], []
        for lvl in range(L):
            pid = self.pids[lvl]
            par = self.pids[lvl - 1] if lvl else np.zeros(n, dtype=np.int64)
            npre, npar = int(pid.max()) + 1, int(par.max()) + 1
            self.N.append(sp.csr_matrix((np.ones(a.size), (pid[a], pid[b])), shape=(npre, npre)))
            self.M.append(sp.csr_matrix((np.ones(a.size), (pid[a], par[b])), shape=(npre, npar)))
            cnt = np.bincount(pid[tgt], minlength=npre).astype(float)
            pcnt = np.bincount(par[tgt], minlength=npar).astype(float)
            kids = np.unique(np.stack([par[self.cand], pid[self.cand]], 1), axis=0)
            nkids = np.bincount(kids[:, 0], minlength=npar).astype(float)
            cp, cc = par[self.cand], pid[self.cand]
            self.P0.append((cnt[cc] + gamma / np.maximum(nkids[cp], 1)) / (pcnt[cp] + gamma))
            self.cur.append(cc)
            self.par.append(cp)
        self.n = n

    def score(self, histories: list) -> np.ndarray:
        """``(B, n_items)`` log-probabilities (``-inf`` off the candidates)."""
        ctx, who, wts = [], [], []
        for i, h in enumerate(histories):
            for j, it in enumerate(np.asarray(h)[-self.contexts:][::-1]):
                ctx.append(int(it))
                who.append(i)
                wts.append(self.decay ** j)
        ctx, who, wts = np.asarray(ctx, dtype=np.int64), np.asarray(who), np.asarray(wts)
        logp = np.zeros((ctx.size, self.cand.size))
        for lvl in range(len(self.pids)):
            pa = self.pids[lvl][ctx]
            num = self.N[lvl][pa].toarray()[:, self.cur[lvl]]
            den = self.M[lvl][pa].toarray()[:, self.par[lvl]]
            logp += np.log((num + self.beta * self.P0[lvl][None, :]) / (den + self.beta))
        agg = np.zeros((len(histories), self.cand.size))
        np.add.at(agg, who, np.exp(logp) * wts[:, None])
        out = np.full((len(histories), self.n), -np.inf)
        norm = np.bincount(who, weights=wts, minlength=len(histories))[:, None]
        with np.errstate(divide="ignore"):
            out[:, self.cand] = np.log(agg / np.maximum(norm, 1e-300))
        return out


def codes_by_row(sids, catalog) -> np.ndarray:
    """``int64[N, L_max]`` codes per catalog row; level 0 offset by type so types never share prefixes."""
    L = max(sids.levels(t) for t in catalog.type_names)
    out = np.zeros((len(catalog), L), dtype=np.int64)
    for t in catalog.type_names:
        c = sids.codes[t]
        out[sids.rows[t], : c.shape[1]] = c
        out[sids.rows[t], 0] += 1_000_000 * catalog.type_index(t)
    return out


def coherence(codes: np.ndarray, ref: np.ndarray, rng: np.random.Generator, pairs: int = 20000) -> list:
    """Mean cosine (in ``ref``'s space) of item pairs that share the first p codes, per p."""
    from neo.items.sids import _group_ids

    ref = ref / np.maximum(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    n = codes.shape[0]
    out = []
    for p in range(1, codes.shape[1] + 1):
        gid, cnt = _group_ids(codes[:, :p].astype(np.int32), [int(codes[:, q].max()) + 1 for q in range(p)])
        order = np.argsort(gid, kind="stable")
        starts = np.concatenate([[0], np.cumsum(cnt)[:-1]])
        pos = np.empty(n, dtype=np.int64)
        pos[order] = np.arange(n)
        samp = rng.integers(n, size=pairs)
        g = gid[samp]
        ok = cnt[g] > 1
        if not ok.any():
            out.append(None)
            continue
        s, g = samp[ok], g[ok]
        partner = order[starts[g] + (pos[s] - starts[g] + rng.integers(1, cnt[g])) % cnt[g]]
        out.append(float((ref[s] * ref[partner]).sum(1).mean()))
    return out


def _cutoffs(inter, cut: list) -> list:
    """Per user, the time of the first held-out item (side events from then on stay out)."""
    out = []
    for u, c in enumerate(cut):
        ts = inter.timestamps[u] if inter.timestamps is not None else None
        out.append(float("inf") if c is None or ts is None else float(ts[c]))
    return out


def run_quality(name: str, ds, seeds: list[int], *, extra: list | None = None, progress: bool = True) -> dict:
    """All embeddings x k-means variants on one dataset; see the module docstring."""
    import warnings

    from neo.evaluation.protocols import leave_one_out
    from neo.evaluation.runners import evaluate_scorer
    from neo.items.collaborative import sid_embeddings
    from neo.items.sids import SidCollisionWarning, build_sids

    cat, inter = ds.catalog, ds.interactions
    cand = ds.candidate_rows()
    target = ds.target_type or cat.type_names[0]
    trows = cat.rows_of_type(target)
    t0 = time.perf_counter()
    text = sid_embeddings(cat, kind="text")
    t_text = time.perf_counter() - t0
    loo = leave_one_out(inter)
    loo_cut = [len(tr) if len(s) >= 3 else None for tr, s in zip(loo.train, inter.sequences)]
    tr10, cases10, cut10 = tail_split(inter)
    splits = {"loo": (loo.train, loo.valid, loo_cut), "tail10": (tr10, cases10, cut10)}
    out = {"dataset": name, "summary": {k: v for k, v in ds.summary().items() if k != "license"},
           "text_embed_s": t_text, "cases": {k: len(v[1]) for k, v in splits.items()}, "rows": []}
    rows = out["rows"]

    def proxy(codes: np.ndarray, train: list, cases) -> dict:
        sc = SidPrefixScorer(codes, cand, train)
        return evaluate_scorer(sc.score, cases, candidates=cand, ks=(10,))

    for split, (train, cases, cut) in splits.items():
        # CF inputs: training items, plus side events (MovieLens tag applications) before the cut-off
        seqs = ds.training_sequences(train, _cutoffs(inter, cut)) if ds.side is not None else train
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cold-item notes are in the info dicts
            cf, cf_info = sid_embeddings(cat, seqs, kind="cf", text=text, return_info=True)
            t_cf = time.perf_counter() - t0
            mf = sid_embeddings(cat, seqs, kind="cf", method="mf", text=text)
            hyb = sid_embeddings(cat, seqs, kind="hybrid", text=text)
            hyb75 = sid_embeddings(cat, seqs, kind="hybrid", text=text, cf_weight=0.75)
        embs = {"text": text, "cf (cooc)": cf, "cf (mf)": mf, "hybrid (cooc, w=0.5)": hyb, "hybrid (cooc, w=0.75)": hyb75}
        ref_text, ref_cf = text[trows], cf[trows]
        n_cold = {t: v["n_cold"] for t, v in cf_info["types"].items()}
        # references: item-level Markov chain, and random balanced codes with the balanced default sizes
        from neo.evaluation.baselines import Popularity

        pop = Popularity().fit(train, len(cat))
        m = evaluate_scorer(pop.score, cases, candidates=cand, ks=(10,))
        rows.append({"split": split, "embeddings": "popularity (reference)", "kmeans": "-", "seed": 0, **_m(m)})
        m = proxy(np.arange(len(cat))[:, None], train, cases)
        rows.append({"split": split, "embeddings": "item ids (1 level, K = n)", "kmeans": "-", "seed": 0, **_m(m)})
        configs = [(e, km, None, None) for e in embs for km in (None, 1.1)] + list(extra or [])
        for emb_name, balance, levels, k in configs:
            for seed in seeds:
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", SidCollisionWarning)
                    s = build_sids(cat, embs[emb_name], levels=levels, codebook_size=k, seed=seed, balance=balance)
                t_build = time.perf_counter() - t0
                rep = s.report["types"][target]
                codes = codes_by_row(s, cat)
                base = s.codes[target][:, : rep["base_levels"]]
                rng = np.random.default_rng(seed)
                m = proxy(codes, train, cases)
                rows.append({
                    "split": split, "embeddings": emb_name, "kmeans": "standard" if balance is None else f"balanced {balance:g}",
                    "seed": seed, "default_sizes": levels is None and k is None, "codebooks": "x".join(map(str, rep["codebook_sizes"][: rep["base_levels"]])),
                    "levels_with_disambiguation": rep["levels"],
                    "collision_rate": rep["collisions"]["collision_rate"], "max_leaf": rep["items_per_leaf"]["max"],
                    "util": [lv["utilisation"] for lv in rep["per_level"][: rep["base_levels"]]],
                    "perplexity": [lv["perplexity"] for lv in rep["per_level"][: rep["base_levels"]]],
                    "balance": [lv["balance"] for lv in rep["per_level"][: rep["base_levels"]]],
                    "coh_text": coherence(base, ref_text, rng), "coh_cf": coherence(base, ref_cf, rng),
                    "other_types": {t: s.report["types"][t]["collisions"]["collision_rate"]
                                    for t in cat.type_names if t != target},
                    "build_s": t_build, **_m(m)})
                if progress:
                    r = rows[-1]
                    print(f"[{name} {split}] {emb_name:22s} {r['kmeans']:12s} seed {seed} {r['codebooks']:>10s} "
                          f"coll {r['collision_rate']:.3f} HR@10 {r['hr@10']:.4f} NDCG@10 {r['ndcg@10']:.4f} "
                          f"({t_build:.1f}s)", flush=True)
            # control: random codes shaped like the last config's (same sizes, no structure)
        out.setdefault("cf_seconds", {})[split] = t_cf
        out.setdefault("cold_items", {})[split] = n_cold
        sizes = None
        for r in rows[::-1]:
            if r["split"] == split and r["kmeans"].startswith("balanced") and r["embeddings"] == "text" \
                    and r["default_sizes"]:
                sizes = [int(x) for x in r["codebooks"].split("x")]
                break
        if sizes:
            rng = np.random.default_rng(0)
            n_t = trows.size
            # balanced random codes: a random permutation of a mixed-radix count
            perm = rng.permutation(n_t)
            rc = np.zeros((len(cat), len(sizes)), dtype=np.int64)
            v = perm.copy()
            for q in range(len(sizes) - 1, -1, -1):
                rc[trows, q] = v % sizes[q]
                v //= sizes[q]
            others = np.setdiff1d(np.arange(len(cat)), trows)
            rc[others, 0] = 1_000_000 + np.arange(others.size)
            m = proxy(rc, train, cases)
            rows.append({"split": split, "embeddings": "random codes (control)", "kmeans": "-", "seed": 0,
                         "codebooks": "x".join(map(str, sizes)), "collision_rate": 0.0, **_m(m)})
    return out


def _m(m: dict) -> dict:
    return {"hr@10": m["hr@10"], "ndcg@10": m["ndcg@10"], "n_cases": m["n"]}


# ---------------------------------------------------------------------------------------------- markdown


def _agg(rows: list[dict]) -> list[dict]:
    """Mean (and sd over seeds) per (split, embeddings, kmeans, codebooks)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["split"], r["embeddings"], r["kmeans"], r.get("codebooks", "-")), []).append(r)
    out = []
    for (split, emb, km, cb), rs in groups.items():
        def mean(k: str, idx: int | None = None) -> float:
            vals = [(r[k][idx] if idx is not None else r[k]) for r in rs if k in r]
            vals = [v for v in vals if v is not None]
            return float(np.mean(vals)) if vals else float("nan")

        def pm(k: str) -> str:
            v = np.asarray([r[k] for r in rs])
            return f"{v.mean():.4f}" + (f" ± {v.std(ddof=1):.4f}" if v.size > 1 else "")

        out.append({"split": split, "embeddings": emb, "k-means": km, "codebooks": cb,
                    "collision rate": mean("collision_rate"), "max leaf": mean("max_leaf"),
                    "perplexity L0 / K": (mean("perplexity", 0) / int(cb.split("x")[0])) if "perplexity" in rs[0] else float("nan"),
                    "max/mean L0": mean("balance", 0), "coh. text p1/p2": _pair(rs, "coh_text"),
                    "coh. cf p1/p2": _pair(rs, "coh_cf"), "HR@10": pm("hr@10"), "NDCG@10": pm("ndcg@10"),
                    "build s": mean("build_s"), "seeds": len(rs)})
    for row in out:  # reference rows have no SID statistics
        for k, v in row.items():
            if isinstance(v, float) and v != v:
                row[k] = "-"
    return out


def _findings(d: dict) -> list[str]:
    """One line per split: the proxy HR@10 of the main variants, computed from the rows."""
    lines = []
    for split in ("tail10", "loo"):
        # default codebook sizes only (JSON written before the flag existed: the defaults had 3 levels)
        rs = [r for r in d["rows"] if r["split"] == split and
              (r["kmeans"] == "-" or r.get("default_sizes", r.get("codebooks", "").count("x") == 2))]

        def hr(emb: str, km: str | None = None, cb: str | None = None) -> float | None:
            v = [r["hr@10"] for r in rs if r["embeddings"] == emb and (km is None or r["kmeans"] == km)
                 and (cb is None or r.get("codebooks") == cb)]
            return float(np.mean(v)) if v else None

        t, c = hr("text", "standard"), hr("cf (cooc)", "standard")
        tb, cb_ = hr("text", "balanced 1.1"), hr("cf (cooc)", "balanced 1.1")
        rnd, ids = hr("random codes (control)"), hr("item ids (1 level, K = n)")
        if None in (t, c, tb, cb_):
            continue
        coll: dict = {}
        for r in rs:
            if "collision_rate" in r:
                coll.setdefault((r["embeddings"], r["kmeans"]), []).append(r["collision_rate"])
        coll = {k: float(np.mean(v)) for k, v in coll.items()}
        lines.append(f"- `{split}` proxy HR@10: text {t:.4f} (standard) / {tb:.4f} (balanced); cf (cooc) {c:.4f} / "
                     f"{cb_:.4f} ({(c / t - 1) * 100:+.0f}% / {(cb_ / tb - 1) * 100:+.0f}% over text); random codes "
                     f"{rnd:.4f}; item-level Markov {ids:.4f}. Collision rate standard -> balanced: text "
                     f"{coll.get(('text', 'standard'), float('nan')):.1%} -> "
                     f"{coll.get(('text', 'balanced 1.1'), float('nan')):.1%}, cf "
                     f"{coll.get(('cf (cooc)', 'standard'), float('nan')):.1%} -> "
                     f"{coll.get(('cf (cooc)', 'balanced 1.1'), float('nan')):.1%}.")
    return lines


def _pair(rs: list[dict], k: str) -> str:
    if k not in rs[0]:
        return "-"
    vals = []
    for p in (0, 1):
        v = [r[k][p] for r in rs if len(r[k]) > p and r[k][p] is not None]
        vals.append(f"{np.mean(v):.3f}" if v else "-")
    return " / ".join(vals)


def write_markdown() -> Path:
    """Render ``sids.md`` from the JSON results (``sids.json``, ``sids_scale_*.json``, ``sids_quality.json``)."""
    def load(name: str) -> dict | None:
        p = RESULTS_DIR / name
        return json.loads(p.read_text()) if p.exists() else None

    scaling_files = [d for d in [load("sids.json")] + [json.loads(p.read_text()) for p in
                     sorted(RESULTS_DIR.glob("sids_scale_*.json"))] if d]
    q_file = load("sids_quality.json")
    lines = ["## SID construction (`benchmarks/bench_sids.py`)", ""]
    for d in scaling_files + ([q_file] if q_file else []):
        m = d.get("machine", {})
        lines.append(f"- `{d['command'].strip()}` -> `{d['benchmark']}.json`: {m.get('cpu', '?')}, {m.get('cpu_count')} "
                     f"cores, {m.get('mem_gb')} GB RAM, torch {m.get('torch')}, "
                     f"{'GPU ' + m['gpu'] if 'gpu' in m else 'CPU only'}; commit {m.get('commit')}, {m.get('date')}; "
                     f"threads {d.get('threads', '?')}; 1-min load average {d.get('loadavg_before', '?')} before, "
                     f"{d.get('loadavg_after', '?')} after (the machine is shared: times are upper bounds).")
    lines.append("")
    rows_in = [r for d in scaling_files for r in d["rows"]]
    if rows_in:
        lines += ["### Build time and peak memory (synthetic: rank-32 Gaussian in 256-d + noise, one item type)", "",
                  "Standard = nearest-centroid residual k-means; balanced = `build_sids(..., balance=1.1)` (capacitated "
                  "assignment at every level, on the fitting sample and on all items). `default` = "
                  "`default_sid_config` for that k-means. Peak RSS is the whole process (embeddings and the catalog's "
                  "Python id index included); overhead is peak minus RSS just before the build. Estimated rows "
                  "extrapolate the largest measured size (fit is per sample, the rest linear in N).", ""]
        rows = []
        for r in rows_in:
            rows.append({
                "config": r["config"], "items": f"{r['n_items']:,}" + (" (est.)" if r.get("estimated") else ""),
                "codebooks": "x".join(map(str, r.get("codebook_sizes", []))) or "-",
                "fit s": r.get("fit_s", float("nan")), "assign s": r.get("assign_s", float("nan")),
                "total s": r["total_s"], "embeddings MB": r["embeddings_mb"], "peak RSS MB": r["peak_rss_mb"],
                "overhead MB": r.get("build_overhead_mb") or float("nan"),
                "collision rate": r.get("collision_rate", float("nan")),
                "max/mean L0": r.get("level0_max_over_mean", float("nan")),
                "load avg": r.get("loadavg_1m_after", float("nan")),
            })
        lines += [markdown_table(rows, list(rows[0])), ""]
    if q_file:
        lines += ["### SID quality for ranking", "",
                  "Per dataset and split: embeddings (`text` = TF-IDF + SVD 128-d; `cf (cooc)` = "
                  "`collaborative_embeddings(method='cooc')`: windowed co-occurrence -> PPMI -> SVD, 64-d; `cf (mf)` = "
                  "implicit ALS, 64-d; `hybrid` = `hybrid_embeddings(text, cf, cf_weight=w)`), all from "
                  "`sid_embeddings(catalog, training_sequences, kind=...)`, then `build_sids` with standard or balanced "
                  "(1.1) k-means at the default codebook sizes for each (`default_sid_config`). Mean over the seeds of "
                  "`build_sids` (± sd). Collision rate = share of the target type's items whose base codes another item "
                  "also has (before disambiguation). Coherence = mean cosine of item pairs sharing the first 1 / 2 "
                  "codes, measured in the text space and in the cf space. HR@10 / NDCG@10 = the ranking proxy "
                  "`SidPrefixScorer` (a next-item model that sees items only through their SID prefixes: per level, "
                  "counts of training transitions between the previous item's prefix and the next item's prefix, "
                  "Dirichlet-smoothed, product over levels, mixed over the last 3 history items), full ranking over "
                  "the target type, history items excluded. `item ids` = the same model with one level of K = n "
                  "codes (an item-level Markov chain), `random codes` = balanced random codes with the balanced text "
                  "sizes (structure-free control). Split `loo` = leave-one-out validation cases (one per user; "
                  "embeddings, SIDs and counts from the training prefix); `tail10` = the last 10 items of every user "
                  "with >= 20 items, each predicted from the items before it (10x the cases; everything fitted on "
                  "the earlier items). What the proxy cannot show: it counts, so a disambiguation code (a "
                  "popularity rank shared by unrelated collision groups) costs it nothing, while an LM must learn "
                  "it; and it sees only the previous 3 items. Differences below about 2 sd are noise. The effect on "
                  "neo's own validation HR@10 comes from training the LM (not measured here).", ""]
        for d in q_file["datasets"]:
            lines += [f"#### {d['dataset']}", "",
                      f"{json.dumps(d['summary'].get('types', {}))} items, {d['summary'].get('users')} users, "
                      f"{d['summary'].get('interactions')} interactions; cases: {d['cases']}; text embedding "
                      f"{d['text_embed_s']:.1f} s, cf (cooc) embedding per split "
                      f"{ {k: round(v, 1) for k, v in d.get('cf_seconds', {}).items()} } s; items without "
                      f"collaborative signal (placed by text): {d.get('cold_items')}.", ""]
            agg = _agg(d["rows"])
            lines += _findings(d) + [""]
            lines += [markdown_table(agg, list(agg[0]), floatfmt=".3g"), ""]
    path = RESULTS_DIR / "sids.md"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated catalog sizes to run")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--estimate", type=int, default=10_000_000, help="size to extrapolate to (0: none)")
    ap.add_argument("--datasets", default="ml-latest-small,ml-latest-small-1000,ml-100k",
                    help="quality datasets: ml-latest-small (bundled), ml-latest-small-1000 (the demo's 1,000 movies "
                         "+ 100 tags), ml-100k (read from --ml100k)")
    ap.add_argument("--ml100k", type=Path, default=_shared_data() / "ml-100k")
    ap.add_argument("--seeds", type=int, default=3, help="build_sids seeds per quality configuration")
    ap.add_argument("--update", action="store_true",
                    help="quality: replace only the datasets run now in an existing sids_quality.json")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (pinned; the machine is shared)")
    ap.add_argument("--tag", default="", help="write scaling rows to sids_scale_<tag>.json (kept beside sids.json)")
    ap.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--levels", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--balance", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    if a.worker:
        print(json.dumps(worker(a.worker, a.dim, a.levels or None, a.k or None, a.repeat, a.balance or None)))
        return
    cmd = " ".join(["python benchmarks/bench_sids.py", *sys.argv[1:]])
    if not a.skip_scaling:
        load0 = os.getloadavg()[0]
        sizes = [int(s) for s in a.sizes.split(",") if s]
        # default sizes per k-means (standard: K^L >= 8n; balanced: at most one item per leaf), and the
        # fixed 3x256 configuration at every size, each standard and balanced
        configs = [("standard default", None, None, None), ("balanced default", None, None, 1.1),
                   ("standard 3x256", 3, 256, None), ("balanced 3x256", 3, 256, 1.1)]
        if a.tag:  # extra runs (e.g. 10M) use the 3x256 configurations only
            configs = configs[2:]
        scaling = run_scaling(sizes, a.dim, configs, a.threads)
        estimates = []
        if a.estimate and a.estimate > max(sizes):
            estimates = [e for c in ("standard 3x256", "balanced 3x256") if (e := estimate(scaling, c, a.estimate))]
            for e in estimates:
                print(f"[{e['config']}] n={e['n_items']:,} (estimated from {e['from_n']:,}): {e['total_s']:.1f} s, "
                      f"peak RSS ~{e['peak_rss_mb']:.0f} MB", flush=True)
        write_results(f"sids_scale_{a.tag}" if a.tag else "sids", scaling + estimates,
                      extra={"command": cmd, "threads": a.threads, "loadavg_before": round(load0, 2),
                             "loadavg_after": round(os.getloadavg()[0], 2)})
    if not a.skip_quality:
        from neo.items.datasets import load_movielens

        load0 = os.getloadavg()[0]
        seeds = list(range(a.seeds))
        out = []
        for name in [x for x in a.datasets.split(",") if x]:
            if name == "ml-latest-small":
                out.append(run_quality(name, load_movielens(), seeds))
            elif name == "ml-latest-small-1000":
                ds = load_movielens().subset(max_items=1000, max_other=100, seed=0)
                # the demo's explicit 2 x 32 (69% collisions with text), and the same sizes balanced
                extra = [("text", None, 2, 32), ("text", 1.1, 2, 32), ("cf (cooc)", 1.1, 2, 32)]
                out.append(run_quality(name + " (demo subset: 1,000 movies + 100 tags)", ds, seeds, extra=extra))
            elif name == "ml-100k":
                if not (a.ml100k / "u.data").exists():
                    raise SystemExit(f"ml-100k not found at {a.ml100k} (pass --ml100k DIR)")
                out.append(run_quality(name, load_ml100k(a.ml100k), seeds))
            else:
                raise SystemExit(f"unknown dataset {name!r}")
        extra = {"command": cmd, "datasets": out, "threads": a.threads, "loadavg_before": round(load0, 2),
                 "loadavg_after": round(os.getloadavg()[0], 2)}
        prev_path = RESULTS_DIR / "sids_quality.json"
        if a.update and prev_path.exists():
            prev = json.loads(prev_path.read_text())
            names = {d["dataset"] for d in out}
            fresh = {d["dataset"]: d for d in out}
            merged = [fresh.pop(d["dataset"], d) for d in prev["datasets"]]  # keep the original order
            extra["datasets"] = merged + list(fresh.values())
            extra["command"] = prev["command"] + f"; then `{cmd}` for {sorted(names)}"
            extra["updates"] = prev.get("updates", []) + [{"command": cmd, "datasets": sorted(names),
                                                          "loadavg_before": extra["loadavg_before"],
                                                          "loadavg_after": extra["loadavg_after"]}]
            extra["loadavg_before"], extra["loadavg_after"] = prev.get("loadavg_before"), prev.get("loadavg_after")
        write_results("sids_quality", [], extra=extra)
    print(write_markdown())


if __name__ == "__main__":
    main()
