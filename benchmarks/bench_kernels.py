"""Benchmark neo.kernels: each Triton kernel vs its torch reference, plus the constrained step.

    python benchmarks/bench_kernels.py            # full run on a GPU; small torch-only run on CPU
    python benchmarks/bench_kernels.py --quick    # fewer sizes

On a GPU: rows in {1, 32, 140, 256, 1024}, V = 151,936, fp32 and bf16, for the bitmask apply, fused
masked sampling and masked log-softmax + beam top-k, with effective bandwidth against the measured
device copy bandwidth (memory-bound limit = bytes read / peak bandwidth). Then the full constrained
step (DeviceTrie step + beam_topk) at 140 rows for 1M and 10M items. Correctness is asserted before
timing. Without a GPU it says so and times only the torch references at small sizes.
Results: benchmarks/results/kernels.json (+ the markdown table printed to stdout).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import markdown_table, time_fn, write_results  # noqa: E402

V = 151_936


def random_trie_arrays(n_items: int, levels: int = 4, K: int = 256, band0: int = 151_000, seed=0):
    """SidIndex-style arrays for ``n_items`` random codes (4 x 256 by default), built vectorised."""
    rng = np.random.default_rng(seed)
    bits = int(np.log2(K))
    key = np.zeros(n_items, np.int64)
    for _ in range(levels):
        key = (key << bits) | rng.integers(0, K, n_items)
    key = np.unique(key)
    prefixes = [np.zeros(1, np.int64)] + [np.unique(key >> (bits * (levels - d)))
                                          for d in range(1, levels)] + [key]
    counts = [len(p) for p in prefixes]
    depth_begin = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    code = np.concatenate([[0]] + [p & (K - 1) for p in prefixes[1:]]).astype(np.uint16)
    cb = []
    for d in range(levels):
        parent = prefixes[d + 1] >> bits
        pos = np.searchsorted(prefixes[d], parent) if d else np.zeros(len(parent), np.int64)
        per = np.bincount(pos, minlength=counts[d])
        cb.append(depth_begin[d + 1] + np.concatenate([[0], np.cumsum(per)[:-1]]))
    child_begin = np.concatenate(cb + [[depth_begin[-1]]]).astype(np.uint32)
    return dict(depth_begin=depth_begin, child_begin=child_begin, code=code,
                leaf_item=rng.permutation(len(key)).astype(np.int32),
                band_start=(band0 + K * np.arange(levels)).astype(np.int32),
                band_size=np.full(levels, K, np.int32))


def copy_bandwidth(dev) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write)."""
    x = torch.empty(256 * 2**20, dtype=torch.uint8, device=dev)
    y = torch.empty_like(x)
    t = time_fn(lambda: y.copy_(x), repeat=20, sync=torch.cuda.synchronize)
    return 2 * x.numel() / (t["median_us"] * 1e-6)


def bench_gpu(quick: bool):
    import neo.kernels as K
    from neo.kernels import DeviceTrie
    from neo.kernels.reference import (apply_token_bitmask_inplace_torch, beam_topk_torch,
                                       sample_masked_torch)

    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    bw = copy_bandwidth(dev)
    print(f"GPU: {torch.cuda.get_device_name(0)}; measured copy bandwidth {bw / 1e9:.0f} GB/s")
    rows_list = [1, 32, 140, 256, 1024] if not quick else [1, 140]
    out = []
    g = torch.Generator(device=dev).manual_seed(0)
    W = (V + 31) // 32
    for dtype in (torch.float32, torch.bfloat16):
        for R in rows_list:
            logits = torch.randn(R, V, device=dev, generator=g).to(dtype)
            bm = torch.randint(-2**31, 2**31 - 1, (R, W), dtype=torch.int32, device=dev, generator=g)
            ebytes = logits.element_size()
            read = R * V * ebytes
            # --- bitmask apply (read + write of masked half, mask read)
            a, b = logits.clone(), logits.clone()
            K.apply_token_bitmask_inplace(a, bm, backend="triton")
            apply_token_bitmask_inplace_torch(b, bm)
            assert torch.equal(a, b)
            work = logits.clone()
            tt = time_fn(lambda: K.apply_token_bitmask_inplace(work, bm, backend="triton"), sync=sync)
            tr = time_fn(lambda: apply_token_bitmask_inplace_torch(work, bm), sync=sync)
            nbytes = read + R * W * 4 + read // 2
            out.append(dict(kernel="bitmask_apply", dtype=str(dtype)[6:], rows=R,
                            triton_us=tt["median_us"], torch_us=tr["median_us"],
                            speedup=tr["median_us"] / tt["median_us"],
                            eff_GBps=nbytes / tt["median_us"] / 1e3,
                            x_mem_bound=tt["median_us"] / (nbytes / bw * 1e6)))
            # --- fused sampling (plain, and top-k 50 + top-p 0.9)
            seeds = torch.arange(R, device=dev)
            for name, kw in (("sample", {}), ("sample_topk_topp", dict(top_k=50, top_p=0.9))):
                s1 = K.sample_masked(logits, bm, seeds=seeds, backend="triton", **kw)
                s2 = sample_masked_torch(logits, bm, seeds=seeds, **kw)
                agree = float((s1 == s2).float().mean())
                assert agree > 0.99, (name, agree)
                tt = time_fn(lambda: K.sample_masked(logits, bm, seeds=seeds, backend="triton", **kw),
                             sync=sync)
                tr = time_fn(lambda: sample_masked_torch(logits, bm, seeds=seeds, **kw), sync=sync,
                             repeat=5)
                nbytes = read + R * W * 4
                out.append(dict(kernel=name, dtype=str(dtype)[6:], rows=R, triton_us=tt["median_us"],
                                torch_us=tr["median_us"], speedup=tr["median_us"] / tt["median_us"],
                                eff_GBps=nbytes / tt["median_us"] / 1e3,
                                x_mem_bound=tt["median_us"] / (nbytes / bw * 1e6)))
            # --- masked log-softmax + band top-k
            nb = 4 if R % 4 == 0 else 1
            bs = torch.full((R,), V - 1024, device=dev, dtype=torch.int64)
            bmap = torch.randint(-2**31, 2**31 - 1, (R, 8), dtype=torch.int32, device=dev, generator=g)
            sc = torch.zeros(R, device=dev)
            r1 = K.beam_topk(logits, sc, bs, bmap, 8, nb, backend="triton")
            r2 = beam_topk_torch(logits, sc, bs, bmap, 8, nb)
            assert torch.equal(r1[2], r2[2]) and torch.allclose(r1[0], r2[0], atol=1e-4)
            tt = time_fn(lambda: K.beam_topk(logits, sc, bs, bmap, 8, nb, backend="triton"), sync=sync)
            tr = time_fn(lambda: beam_topk_torch(logits, sc, bs, bmap, 8, nb), sync=sync)
            out.append(dict(kernel="beam_topk", dtype=str(dtype)[6:], rows=R,
                            triton_us=tt["median_us"], torch_us=tr["median_us"],
                            speedup=tr["median_us"] / tt["median_us"],
                            eff_GBps=read / tt["median_us"] / 1e3,
                            x_mem_bound=tt["median_us"] / (read / bw * 1e6)))
            print(markdown_table(out[-4:], ["kernel", "dtype", "rows", "triton_us", "torch_us",
                                            "speedup", "eff_GBps", "x_mem_bound"]))
    # --- full constrained step at 140 rows
    step_rows = []
    for n_items in ([1_000_000, 10_000_000] if not quick else [1_000_000]):
        t0 = time.perf_counter()
        arrays = random_trie_arrays(n_items)
        dt = DeviceTrie(arrays, device=dev)
        build_s = time.perf_counter() - t0
        R, nb = 140, 4
        logits = torch.randn(R, V, device=dev, generator=g).to(torch.bfloat16)
        excl = torch.randint(0, n_items, (R, 64), device=dev)
        filt = dt.make_filter(R, exclude=excl)
        # rows at random depths: walk a random number of levels from the root
        node = dt.root_state(R)
        st = dt.step(node, None, filt, backend="triton")
        depth = torch.randint(0, 4, (R,), device=dev)
        for lvl in range(3):
            bits = K.reference.unpack_bitmask(st.bitmap, 256)
            first = torch.argmax(bits.int(), 1)
            tok = torch.where(depth > lvl, st.band_start.long() + first, torch.full_like(first, -1))
            st = dt.step(st.node, tok, filt, backend="triton")
        sc = torch.zeros(R, device=dev)
        ref = dt.step(st.node, None, filt, backend="torch")
        assert torch.equal(ref.bitmap, dt.step(st.node, None, filt, backend="triton").bitmap)

        def full_step(backend):
            s = dt.step(st.node, None, filt, backend=backend)
            return K.beam_topk(logits, sc, s.band_start, s.bitmap, 8, nb, backend=backend)

        tt = time_fn(lambda: full_step("triton"), sync=sync)
        tr = time_fn(lambda: full_step("torch"), sync=sync)
        tstep = time_fn(lambda: dt.step(st.node, None, filt, backend="triton"), sync=sync)
        step_rows.append(dict(items=n_items, rows=R, build_s=build_s,
                              trie_mb=dt.nbytes() / 2**20, trie_step_us=tstep["median_us"],
                              full_step_triton_us=tt["median_us"], full_step_torch_us=tr["median_us"],
                              budget_us=33.0))
    print(markdown_table(step_rows, list(step_rows[0])))
    return out, step_rows


def bench_cpu(quick: bool):
    from neo.kernels import DeviceTrie
    from neo.kernels.reference import (apply_token_bitmask_inplace_torch, beam_topk_torch,
                                       sample_masked_torch)

    print("No GPU available: timing the torch references on CPU at small sizes only. Triton kernels "
          "are validated by the test suite in TRITON_INTERPRET mode; GPU numbers are pending.")
    out = []
    W = (V + 31) // 32
    g = torch.Generator().manual_seed(0)
    for R in ([1, 32] if not quick else [1]):
        logits = torch.randn(R, V, generator=g)
        bm = torch.randint(-2**31, 2**31 - 1, (R, W), dtype=torch.int32, generator=g)
        w = logits.clone()
        t1 = time_fn(lambda: apply_token_bitmask_inplace_torch(w, bm), repeat=5)
        t2 = time_fn(lambda: sample_masked_torch(logits, bm, seeds=torch.arange(R)), repeat=5)
        bs = torch.full((R,), V - 1024)
        bmap = torch.randint(-2**31, 2**31 - 1, (R, 8), dtype=torch.int32, generator=g)
        t3 = time_fn(lambda: beam_topk_torch(logits, torch.zeros(R), bs, bmap, 8, 1), repeat=5)
        for name, t in (("bitmask_apply", t1), ("sample", t2), ("beam_topk", t3)):
            out.append(dict(kernel=name, dtype="float32", rows=R, torch_cpu_us=t["median_us"]))
    print(markdown_table(out, ["kernel", "dtype", "rows", "torch_cpu_us"]))
    arrays = random_trie_arrays(1_000_000)
    dt = DeviceTrie(arrays)
    R = 140
    filt = dt.make_filter(R, exclude=torch.randint(0, 1_000_000, (R, 64)))
    t = time_fn(lambda: dt.step(dt.root_state(R), None, filt, backend="torch"), repeat=5)
    step = [dict(items=1_000_000, rows=R, trie_mb=dt.nbytes() / 2**20,
                 trie_step_torch_cpu_us=t["median_us"])]
    print(markdown_table(step, list(step[0])))
    return out, step


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if torch.cuda.is_available():
        rows, step = bench_gpu(args.quick)
        path = write_results("kernels", rows, {"constrained_step": step, "gpu": True})
    else:
        rows, step = bench_cpu(args.quick)
        path = write_results("kernels_cpu", rows, {"constrained_step": step, "gpu": False})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
