"""SID construction: time and peak memory at 100k / 1M (/ 10M) synthetic items, and SID quality on
MovieLens ml-latest-small with the offline TF-IDF + SVD embedder.

Usage (from the repository root)::

    python benchmarks/bench_sids.py                        # 100k and 1M, 10M estimated, MovieLens
    python benchmarks/bench_sids.py --sizes 10000000 --tag 10m --skip-movielens
                                  # measure 10M (3x256; ~12 GB RAM) into sids_scale_10m.json
    python benchmarks/bench_sids.py --skip-scaling         # MovieLens quality only
    python benchmarks/bench_sids.py --skip-scaling --skip-movielens   # re-render sids.md from the JSON

Each scaling size runs in a fresh subprocess so its peak memory (VmHWM, reset after the synthetic
embeddings are generated) is the SID build's own. Synthetic embeddings: rank-32 Gaussian mapped to
256-d plus isotropic noise, float32 (see ``_synthetic``). Writes ``benchmarks/results/sids.json``, ``sids_movielens.json`` and
``sids.md``. The MovieLens data is read in place (``--movielens``), never copied into the repo.
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

DEFAULT_ML = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-latest-small"


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


def worker(n: int, dim: int, levels: int | None, k: int | None, repeat: int) -> dict:
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
        box["s"] = build_sids(cat, x, levels=levels, codebook_size=k, seed=0)

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
        "level0_perplexity": rep["per_level"][0]["perplexity"],
        "threads": torch.get_num_threads(),
        "repeat": t["n"],
        "loadavg_1m_after": os.getloadavg()[0],  # the machine is shared: high load means noisy times
    }


def run_scaling(sizes: list[int], dim: int, configs: list[tuple[str, int | None, int | None]]) -> list[dict]:
    rows = []
    for name, levels, k in configs:
        for n in sizes:
            cmd = [sys.executable, __file__, "--worker", str(n), "--dim", str(dim),
                   "--levels", str(levels or 0), "--k", str(k or 0), "--repeat", "1"]
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


# ---------------------------------------------------------------------------------------------- MovieLens


def movielens_catalog(root: Path):
    """Movies (title, genres, user tags; popularity = #ratings) and tags (tag text + tagged titles;
    popularity = #applications) as two item types of one catalog."""
    import pandas as pd

    from neo.items.catalog import Catalog

    movies = pd.read_csv(root / "movies.csv")
    tags = pd.read_csv(root / "tags.csv")
    ratings = pd.read_csv(root / "ratings.csv", usecols=["movieId"])
    n_ratings = ratings["movieId"].value_counts()
    tags["tag_norm"] = tags["tag"].astype(str).str.strip().str.lower()
    movie_tags = tags.groupby("movieId")["tag_norm"].apply(lambda s: ", ".join(sorted(set(s))))
    title_of = dict(zip(movies["movieId"], movies["title"]))
    recs = []
    for mid, title, genres in zip(movies["movieId"], movies["title"], movies["genres"]):
        recs.append({"id": f"movie:{mid}", "type": "movie", "title": title,
                     "genres": "" if genres == "(no genres listed)" else genres.replace("|", ", "),
                     "tags": movie_tags.get(mid, ""), "popularity": int(n_ratings.get(mid, 0))})
    for tag, grp in tags.groupby("tag_norm"):
        titles = sorted({title_of.get(m, "") for m in grp["movieId"]})
        recs.append({"id": f"tag:{tag}", "type": "tag", "title": tag, "genres": "",
                     "tags": "; ".join(titles[:20]), "popularity": len(grp)})
    return Catalog.from_records(recs, text_fields=["title", "genres", "tags"], types=["movie", "tag"])


def run_movielens(root: Path, dim: int) -> dict:
    from neo.items.embeddings import TfidfSvdEmbedder
    from neo.items.sids import build_sids

    t0 = time.perf_counter()
    cat = movielens_catalog(root)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    emb = TfidfSvdEmbedder(dim=dim, seed=0).embed_catalog(cat)
    t_embed = time.perf_counter() - t0
    out = {"catalog": repr(cat), "load_s": t_load, "embed_s": t_embed, "embed_dim": dim, "policies": {}}
    for policy in ("extra_level", "popular"):
        t0 = time.perf_counter()
        s = build_sids(cat, emb, collisions=policy, seed=0)
        out["policies"][policy] = {"build_s": time.perf_counter() - t0, "report": dict(s.report)}
        print(s.report, flush=True)
    return out


# ---------------------------------------------------------------------------------------------- markdown


def write_markdown() -> Path:
    """Render ``sids.md`` from the JSON results (``sids.json``, ``sids_scale_*.json``, ``sids_movielens.json``)."""
    def load(name: str) -> dict | None:
        p = RESULTS_DIR / name
        return json.loads(p.read_text()) if p.exists() else None

    scaling_files = [d for d in [load("sids.json")] + [json.loads(p.read_text()) for p in
                     sorted(RESULTS_DIR.glob("sids_scale_*.json"))] if d]
    ml_file = load("sids_movielens.json")
    first = (scaling_files or [ml_file])[0] or {}
    m = first.get("machine", machine_info())
    lines = ["## SID construction (`benchmarks/bench_sids.py`)", "",
             f"Machine: {m.get('cpu', '?')}, {m.get('cpu_count')} cores, {m.get('mem_gb')} GB RAM, "
             f"torch {m.get('torch')}, {'GPU ' + m['gpu'] if 'gpu' in m else 'CPU only'}; commit {m.get('commit')}, "
             f"{m.get('date')}. The machine was shared with other jobs while this ran (1-minute load average "
             "is recorded per row in the JSON); times are upper bounds.", "", "Commands:"]
    lines += [f"- `{d['command'].strip()}` -> `{d['benchmark']}.json`" for d in scaling_files + ([ml_file] if ml_file else [])]
    lines.append("")
    rows_in = [r for d in scaling_files for r in d["rows"]]
    if rows_in:
        lines += ["### Build time and peak memory (synthetic: rank-32 Gaussian in 256-d + noise, one item type)", "",
                  "Peak RSS is the whole process (embeddings and the catalog's Python id index included); overhead is "
                  "peak minus RSS just before the build. Estimated rows extrapolate the largest measured size "
                  "(fit is per sample, the rest linear in N).", ""]
        rows = []
        for r in rows_in:
            rows.append({
                "config": r["config"], "items": f"{r['n_items']:,}" + (" (est.)" if r.get("estimated") else ""),
                "codebooks": "x".join(map(str, r.get("codebook_sizes", []))) or "-",
                "fit s": r.get("fit_s", float("nan")), "assign s": r.get("assign_s", float("nan")),
                "total s": r["total_s"], "embeddings MB": r["embeddings_mb"], "peak RSS MB": r["peak_rss_mb"],
                "overhead MB": r.get("build_overhead_mb") or float("nan"),
                "collision rate": r.get("collision_rate", float("nan")),
                "load avg": r.get("loadavg_1m_after", float("nan")),
            })
        lines += [markdown_table(rows, list(rows[0])), ""]
    if ml_file:
        ml = ml_file["movielens"]
        lines += ["### Quality on MovieLens ml-latest-small (offline TF-IDF + SVD embedder, "
                  f"{ml['embed_dim']}-d; default levels/codebooks)", "",
                  f"{ml['catalog']}; load {ml['load_s']:.1f} s, embed {ml['embed_s']:.1f} s. Same-prefix cosine "
                  "is the mean cosine similarity of item pairs sharing the first p codes.", ""]
        rows = []
        for policy, d in ml["policies"].items():
            for t, r in d["report"]["types"].items():
                pc = r["prefix_coherence"]
                coh = " / ".join(f"{p['mean_cos']:.3f}" for p in pc["by_prefix"] if p["mean_cos"] is not None)
                rows.append({
                    "policy": policy, "type": t, "items": r["n_items"],
                    "codebooks": "x".join(map(str, r["codebook_sizes"])),
                    "collision rate": r["collisions"]["collision_rate"],
                    "unreachable": r["collisions"]["n_unreachable"],
                    "used codes / level": " / ".join(str(lv["used_codes"]) for lv in r["per_level"]),
                    "perplexity / level": " / ".join(f"{lv['perplexity']:.1f}" for lv in r["per_level"]),
                    "same-prefix cos (p1/p2/..)": coh, "random-pair cos": pc["random_pairs_cos"],
                    "items/leaf mean (max)": f"{r['items_per_leaf']['mean']:.2f} ({r['items_per_leaf']['max']})",
                    "build s (all types)": d["build_s"],
                })
        lines += [markdown_table(rows, list(rows[0])), ""]
    path = RESULTS_DIR / "sids.md"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated catalog sizes to run")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--estimate", type=int, default=10_000_000, help="size to extrapolate to (0: none)")
    ap.add_argument("--movielens", type=Path, default=DEFAULT_ML)
    ap.add_argument("--ml-dim", type=int, default=128)
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--skip-movielens", action="store_true")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--tag", default="", help="write scaling rows to sids_scale_<tag>.json (kept beside sids.json)")
    ap.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--levels", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--k", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    if a.worker:
        print(json.dumps(worker(a.worker, a.dim, a.levels or None, a.k or None, a.repeat)))
        return
    cmd = " ".join(["python benchmarks/bench_sids.py", *sys.argv[1:]])
    scaling, estimates = [], []
    if not a.skip_scaling:
        sizes = [int(s) for s in a.sizes.split(",") if s]
        # "default": levels/codebooks chosen from N (3x64 at 100k, 3x128 at 1M, 3x256 at 10M);
        # "3x256": the fixed 10M-scale configuration at every size.
        configs = [("default", None, None), ("3x256", 3, 256)]
        if a.tag:  # extra runs (e.g. 10M) use the 10M-scale configuration only
            configs = [("3x256", 3, 256)]
        scaling = run_scaling(sizes, a.dim, configs)
        if a.estimate and a.estimate > max(sizes):
            estimates = [e for e in (estimate(scaling, "3x256", a.estimate),) if e]
            for e in estimates:
                print(f"[{e['config']}] n={e['n_items']:,} (estimated from {e['from_n']:,}): {e['total_s']:.1f} s, "
                      f"peak RSS ~{e['peak_rss_mb']:.0f} MB", flush=True)
        write_results(f"sids_scale_{a.tag}" if a.tag else "sids", scaling + estimates, extra={"command": cmd})
    if not a.skip_movielens:
        if not (a.movielens / "movies.csv").exists():
            raise SystemExit(f"MovieLens not found at {a.movielens} (pass --movielens DIR)")
        ml = run_movielens(a.movielens, a.ml_dim)
        write_results("sids_movielens", [], extra={"command": cmd, "movielens": ml})
    print(write_markdown())


if __name__ == "__main__":
    main()
