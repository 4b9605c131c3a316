"""C++ core benchmark: trie build, bytes per item, bitmask fill per row; Python-trie baseline.

Synthetic catalog as in DESIGN.md section 5: one item type, 4 levels x 256 codes, vocabulary
151,936 (Qwen-sized), SIDs drawn uniformly without duplicates and given unsorted. Rows sit at
random depths inside spans (depth 0 = right after ``[SID]`` .. depth 4 = only ``[/SID]`` left).

    python benchmarks/bench_core.py                 # 1M and 10M items (needs ~6 GB, a few minutes)
    python benchmarks/bench_core.py --sizes 100000  # quick

The baseline is what most generative-recommendation code does: a Python dict trie and a
``prefix_allowed_tokens_fn`` whose allowed lists become a dense ``(rows, V)`` mask the way
``transformers``' ``PrefixConstrainedLogitsProcessor`` builds it. Correctness (identical allowed
sets on sampled rows) is asserted before anything is timed.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import markdown_table, machine_info, time_fn, write_results  # noqa: E402

import neo  # noqa: E402
from neo.bench import PythonTrie, SyntheticCatalog  # noqa: E402

VOCAB = 151_936
LEVELS, K = 4, 256


def make_catalog(n: int, seed: int = 0):
    """The synthetic catalog of ``neo bench`` (unique, unsorted SIDs): (layout, tokens int32 (n, 4))."""
    cat = SyntheticCatalog(n, seed=seed, vocab_size=VOCAB, levels=LEVELS, codebook=K)
    return cat.layout, cat.tokens


def place_rows(state: neo.DecodeState, layout, tokens: np.ndarray, rows: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Advance each row to a random depth inside a span along a random real SID."""
    depths = rng.integers(0, LEVELS + 1, size=rows)
    picks = tokens[rng.integers(0, len(tokens), size=rows)]
    state.advance(np.full(rows, layout.open_id))
    for d in range(LEVELS):
        idx = np.flatnonzero(depths > d)
        if len(idx):
            state.advance(picks[idx, d], indices=idx)
    return np.concatenate([np.full((rows, 1), layout.open_id), picks], 1), depths


def trie_allowed(trie: PythonTrie, prefix: list[int], close_id: int) -> list[int]:
    """What a ``prefix_allowed_tokens_fn`` over the dict trie returns inside a span."""
    children = trie.allowed(prefix)
    return children if children else [close_id]


def baseline_masks(trie: PythonTrie, prefixes: list[list[int]], close_id: int) -> torch.Tensor:
    # PrefixConstrainedLogitsProcessor: mask = full(-inf); mask[i, allowed] = 0
    mask = torch.full((len(prefixes), VOCAB), -float("inf"))
    for i, p in enumerate(prefixes):
        mask[i, trie_allowed(trie, p, close_id)] = 0
    return mask


def bench_size(n: int, row_counts: list[int], baseline: bool, rng) -> list[dict]:
    out = []
    layout, tokens = make_catalog(n)
    gc.collect()
    t0 = time.perf_counter()
    index = neo.SidIndex.build(layout, [tokens])
    build_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.neoidx")
        t0 = time.perf_counter()
        index.save(path)
        save_s = time.perf_counter() - t0
        file_bytes = os.path.getsize(path)
        t0 = time.perf_counter()
        neo.SidIndex.load(path)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        neo.SidIndex.load(path, mmap=True)
        mmap_s = time.perf_counter() - t0
    base = {"items": n, "build_s": build_s, "bytes_per_item_memory": index.memory_bytes / n,
            "bytes_per_item_file": file_bytes / n, "save_s": save_s, "load_s": load_s, "load_mmap_s": mmap_s}
    print(f"[{n:,} items] build {build_s:.2f}s, {base['bytes_per_item_memory']:.1f} B/item memory, "
          f"{base['bytes_per_item_file']:.1f} B/item file, load {load_s:.2f}s (mmap {mmap_s:.3f}s)", flush=True)

    trie = None
    if baseline:
        t0 = time.perf_counter()
        trie = PythonTrie(tokens)
        base["baseline_build_s"] = time.perf_counter() - t0
        print(f"  python dict trie build {base['baseline_build_s']:.1f}s", flush=True)

    for rows in row_counts:
        state = neo.DecodeState(index, rows, eos_token_ids=[0])
        seqs, depths = place_rows(state, layout, tokens, rows, rng)
        bitmask = np.zeros(state.bitmask_shape, np.int32)
        # correctness before timing: every row's allowed set equals the dict-trie answer
        state.fill_next_token_bitmask(bitmask)
        allowed = neo.bitmask_to_bool(torch.from_numpy(bitmask), VOCAB)
        ref_trie = trie or PythonTrie(seqs[:, 1:])  # rows' own SIDs suffice when no baseline
        for r in range(min(rows, 64)):
            want = set(trie_allowed(ref_trie, seqs[r, 1 : 1 + depths[r]].tolist(), layout.close_id)) if trie else None
            got = set(np.flatnonzero(allowed[r].numpy()).tolist())
            if want is not None:
                assert got == want, f"row {r}: core and baseline disagree"
            else:
                assert got, f"row {r}: empty mask"
        row = dict(base, rows=rows, mean_depth=float(depths.mean()))
        for threads in (1, 0):
            st = neo.DecodeState(index, rows, eos_token_ids=[0], num_threads=threads)
            place_rows(st, layout, tokens, rows, np.random.default_rng(1))
            bm = np.zeros(st.bitmask_shape, np.int32)
            tag = "1t" if threads == 1 else f"{os.cpu_count()}t"
            full = time_fn(lambda: st.fill_next_token_bitmask(bm), warmup=3, repeat=30, min_time_s=0.3)
            st.fill_next_token_bitmask(bm, incremental=True)
            inc = time_fn(lambda: st.fill_next_token_bitmask(bm, incremental=True), warmup=3, repeat=30, min_time_s=0.3)
            row[f"fill_full_us_per_row_{tag}"] = full["median_us"] / rows
            row[f"fill_incremental_us_per_row_{tag}"] = inc["median_us"] / rows
            row[f"fill_incremental_p99_us_step_{tag}"] = inc["p99_us"]
        # advance cost: one token per row (a fresh copy each call so the rows stay mid-span)
        st = neo.DecodeState(index, rows, eos_token_ids=[0], num_threads=1)
        place_rows(st, layout, tokens, rows, np.random.default_rng(1))
        nxt = np.where(depths < LEVELS, seqs[np.arange(rows), np.minimum(depths + 1, LEVELS)], layout.close_id)
        src = np.arange(rows)
        row["advance_us_per_row_1t"] = time_fn(lambda: (st.reorder(src), st.advance(nxt)), repeat=30)["median_us"] / rows
        if trie is not None:
            prefixes = [seqs[r, 1 : 1 + depths[r]].tolist() for r in range(rows)]
            t = time_fn(lambda: baseline_masks(trie, prefixes, layout.close_id), warmup=1, repeat=5)
            row["baseline_us_per_row"] = t["median_us"] / rows
            row["speedup_vs_baseline_1t"] = row["baseline_us_per_row"] / row["fill_incremental_us_per_row_1t"]
        out.append(row)
        print("  " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                               if k.startswith(("rows", "fill", "advance", "baseline_us", "speedup"))), flush=True)
    del index, tokens, trie
    gc.collect()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 32, 256])
    ap.add_argument("--baseline-max-items", type=int, default=1_000_000,
                    help="run the Python dict-trie baseline up to this catalog size (it needs ~200 B/item)")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rows = []
    for n in args.sizes:
        rows += bench_size(n, args.rows, n <= args.baseline_max_items, rng)
    path = write_results("core", rows, out_dir=args.out)
    cols = ["items", "rows", "build_s", "bytes_per_item_memory", "bytes_per_item_file", "fill_full_us_per_row_1t",
            "fill_incremental_us_per_row_1t", f"fill_incremental_us_per_row_{os.cpu_count()}t", "advance_us_per_row_1t",
            "baseline_us_per_row", "speedup_vs_baseline_1t"]
    print(markdown_table(rows, cols))
    print(f"machine: {machine_info()}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
