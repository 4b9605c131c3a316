"""The ``neo bench`` driver: machine and versions, the catalog ladder, the end-to-end ``generate`` comparison,
the budgets and :func:`run_bench`, which runs every provider on every size and returns the JSON document."""

from __future__ import annotations

import gc
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .providers import NeoCpuProvider, NeoDeviceProvider, Provider, PythonTrie, PythonTrieHFProvider, TorchSearchsortedProvider, _peer_version, make_prefix_allowed_tokens_fn, run_peer
from .workload import CODEBOOK, EOS_ID, LEVELS, PAD_ID, PEERS, SCHEMA, SyntheticCatalog, VOCAB, _fill_timing, _result_row, time_step


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    try:
        from .. import __version__

        out["neo"] = __version__
    except ImportError:
        out["neo"] = None
    for name in ("torch", "transformers", "numpy", "triton", "xgrammar", "llguidance", "matplotlib"):
        out[name] = _peer_version(name)
    return out


def _machine(threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "commit": "unknown",
        "cpu": None,
        "mem_gb": None,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True, cwd=here, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=here, timeout=10).stdout.strip()
        info["commit"] = commit + ("-dirty" if dirty else "")
    except Exception:  # noqa: BLE001 - an installed package has no git checkout
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_gb"] = round(int(f.readline().split()[1]) / 1e6, 1)
    except OSError:
        pass
    return info


def ladder(max_items: int, start: int = 1000) -> list[int]:
    """1k, 10k, 100k, ... up to ``max_items``."""
    out, s = [], start
    while s <= max_items:
        out.append(s)
        s *= 10
    return out


# ---------------------------------------------------------------------------------------------- e2e
def _tiny_model(vocab: int, seed: int = 0):
    """A tiny random Qwen2-style causal LM with the benchmark's vocabulary (no download)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, eos_token_id=EOS_ID, pad_token_id=PAD_ID, bos_token_id=None)
    model = Qwen2ForCausalLM(cfg).eval()
    desc = {"arch": "Qwen2ForCausalLM", "hidden": 64, "layers": 2, "vocab": vocab,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    return model, desc


class _TimedProcessor:
    """Wraps a logits processor and accumulates the time spent in its calls."""

    def __init__(self, inner: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.inner(input_ids, scores)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def run_e2e(n: int, batch: int, new_tokens: int, repeats: int, threads: int, seed: int,
            log: Callable[[str], None]) -> dict[str, Any]:
    """Greedy ``generate`` tokens/s: unconstrained vs neo's processor vs ``prefix_allowed_tokens_fn``.

    Prompts end in ``[SID]`` and both constrained runs use the ``ids`` format (spans, then ``[SID]``
    or EOS); ``min_new_tokens`` = ``max_new_tokens`` so every run generates the same number of tokens.
    The two constrained runs must produce identical tokens (same model, same allowed sets), so neo's
    processor runs with ``exclude_emitted=False`` (the dict-trie function may repeat an item too).
    """
    from transformers import LogitsProcessorList
    from transformers.generation.logits_process import PrefixConstrainedLogitsProcessor

    from ..core.index import SidIndex
    from ..lm.processor import SidLogitsProcessor

    cat = SyntheticCatalog(n, seed)
    index = SidIndex.build(cat.layout, [cat.tokens])
    trie = PythonTrie(cat.tokens)
    fn = make_prefix_allowed_tokens_fn(trie, cat.open_id, cat.close_id, EOS_ID, cat.layout.sid_token_begin)
    model, desc = _tiny_model(cat.vocab_size, seed)
    rng = np.random.default_rng(seed)
    prompt = rng.integers(2, cat.layout.sid_token_begin, size=(batch, 8))
    ids = torch.from_numpy(np.concatenate([prompt, np.full((batch, 1), cat.open_id)], 1).astype(np.int64))
    mask = torch.ones_like(ids)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=PAD_ID,
              eos_token_id=EOS_ID, attention_mask=mask)

    proc_s: dict[str, float] = {"neo": 0.0, "prefix_allowed_tokens_fn": 0.0}
    proc_calls: dict[str, int] = {"neo": 0, "prefix_allowed_tokens_fn": 0}

    def gen(mode: str, record: bool = False) -> torch.Tensor:
        with torch.inference_mode():
            if mode == "unconstrained":
                return model.generate(ids, **kw)
            if mode == "neo":
                # exclude_emitted=False: the dict-trie fn has no memory of emitted items, and the outputs must match
                inner: Any = SidLogitsProcessor(index, eos_token_id=EOS_ID, format="ids", exclude_emitted=False,
                                                num_threads=threads)
            else:
                # the processor generate(prefix_allowed_tokens_fn=fn) builds, passed explicitly to time its calls
                inner = PrefixConstrainedLogitsProcessor(fn, num_beams=1)
            timed = _TimedProcessor(inner)
            out = model.generate(ids, logits_processor=LogitsProcessorList([timed]), **kw)
            if record:
                proc_s[mode] += timed.seconds
                proc_calls[mode] += timed.calls
            return out

    modes = ("unconstrained", "neo", "prefix_allowed_tokens_fn")
    outs = {m: gen(m) for m in modes}  # warm-up, and the outputs to compare
    neo_out, hf_out = outs["neo"][:, ids.shape[1]:], outs["prefix_allowed_tokens_fn"][:, ids.shape[1]:]
    agree = bool(torch.equal(neo_out, hf_out))
    # every closed span in neo's output is a real item
    seq = neo_out.numpy()
    for r in range(batch):
        s = np.concatenate([[cat.open_id], seq[r]])
        opens = np.flatnonzero(s == cat.open_id)
        for o in opens:
            span = s[o + 1: o + 1 + cat.levels]
            if len(span) == cat.levels and o + 1 + cat.levels < len(s):
                if s[o + 1 + cat.levels] != cat.close_id or index.lookup(span[None, :])[0] < 0:
                    raise AssertionError(f"e2e: neo emitted a span that is not a catalog item in row {r}: {span}")
    walls: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(repeats):  # interleaved, so drifting machine load hits every mode alike
        for m in modes:
            t0 = time.perf_counter()
            gen(m, record=True)
            walls[m].append(time.perf_counter() - t0)
    med = {m: float(np.median(walls[m])) for m in modes}
    runs = []
    mask_us = {m: (1e6 * proc_s[m] / proc_calls[m] if proc_calls.get(m) else None) for m in modes}
    step_us_unc = 1e6 * med["unconstrained"] / new_tokens  # one decode step of the unconstrained run
    for m in modes:
        runs.append({"mode": m, "wall_s_median": med[m], "tokens_per_s": batch * new_tokens / med[m],
                     "overhead_vs_unconstrained_pct": 100.0 * (med[m] / med["unconstrained"] - 1.0),
                     "mask_us_per_step": mask_us[m],
                     "mask_share_of_unconstrained_step_pct": (100.0 * mask_us[m] / step_us_unc
                                                              if mask_us[m] is not None else None)})
    # processor time measured inside the calls: robust where wall-clock differences drown in noise
    ratio = mask_us["prefix_allowed_tokens_fn"] / mask_us["neo"] if mask_us["neo"] else None
    log(f"  e2e ({n:,} items, batch {batch}, {new_tokens} tokens): " + ", ".join(
        f"{r['mode']} {r['tokens_per_s']:.0f} tok/s ({r['overhead_vs_unconstrained_pct']:+.1f}%"
        + (f", mask {r['mask_us_per_step']:.0f} us/step)" if r["mask_us_per_step"] is not None else ")")
        for r in runs))
    return {"items": n, "batch": batch, "new_tokens": new_tokens, "model": desc, "outputs_agree": agree,
            "runs": runs, "mask_overhead_ratio": ratio}


# ---------------------------------------------------------------------------------------------- budgets
def _find(results: list[dict], provider: str, items: int | None = None, rows: int | None = None) -> dict | None:
    for r in results:
        if r["provider"] == provider and r["status"] == "ok" and (items is None or r["items"] == items) and (
                rows is None or r["rows"] == rows):
            return r
    return None


def evaluate_budgets(results: list[dict], e2e: dict | None) -> list[dict[str, Any]]:
    """DESIGN.md section 5 budgets beside what this run measured (``met`` None = not measured here)."""
    out = []

    def add(what: str, budget: str, measured: str | None, met: bool | None) -> None:
        out.append({"what": what, "budget": budget, "measured": measured, "met": met})

    neo = [r for r in results if r["provider"] == "neo-cpu" and r["status"] == "ok" and r["rows"] == 256]
    big = max(neo, key=lambda r: r["items"]) if neo else None
    if big and big["items"] >= 1_000_000:
        add("CPU bitmask fill, 256 rows inside spans", "<= 1 us per row (beat 5.8 us)",
            f"{big['row_median_us']:.3f} us/row at {big['items']:,} items", big["row_median_us"] <= 1.0)
    else:
        add("CPU bitmask fill, 256 rows inside spans", "<= 1 us per row (beat 5.8 us)",
            f"{big['row_median_us']:.3f} us/row at {big['items']:,} items (budget is for >= 1M)" if big else None,
            None)
    a, b = _find(results, "neo-cpu", 1_000_000, 256), _find(results, "neo-cpu", 10_000_000, 256)
    add("CPU fill 1M vs 10M items", "within 10%",
        f"10M/1M = {b['row_median_us'] / a['row_median_us']:.3f}" if a and b else None,
        (b["row_median_us"] / a["row_median_us"] <= 1.10) if a and b else None)
    ten = [r for r in results if r["provider"] == "neo-cpu" and r["items"] == 10_000_000 and r["build_s"]]
    if ten:
        r = ten[0]
        add("trie build, 10M items x 4 levels, from unsorted codes", "<= 1.5 s single core",
            f"{r['build_s']:.2f} s", r["build_s"] <= 1.5)
        add("trie memory, 10M items", "<= 16 bytes per item", f"{r['memory_bytes_per_item']:.1f} B/item",
            r["memory_bytes_per_item"] <= 16)
    else:
        add("trie build, 10M items x 4 levels, from unsorted codes", "<= 1.5 s single core", None, None)
        add("trie memory, 10M items", "<= 16 bytes per item", None, None)
    gpu = [r for r in results if r["provider"] == "neo-cuda" and r["status"] == "ok" and r["rows"] == 140
           and r["items"] >= 10_000_000]
    if gpu:
        f = gpu[0]["extra"].get("fused_step_median_us")
        add("GPU constrained step, 140 rows, 10-20M items", "<= 33 us per step",
            f"{f:.1f} us (trie step + beam top-k)" if f is not None else None, (f <= 33) if f is not None else None)
    else:
        add("GPU constrained step, 140 rows, 10-20M items", "<= 33 us per step",
            "pending: needs a CUDA device and --rows 140 --sizes 10000000", None)
    add("fused masked log-softmax + top-k", "<= 1.3x one read of the logits",
        "measured by benchmarks/bench_kernels.py on a GPU", None)
    if e2e:
        neo_run = next(r for r in e2e["runs"] if r["mode"] == "neo")
        share = neo_run["mask_share_of_unconstrained_step_pct"]
        add("HF processor vs unconstrained generate", "<= 5% slower",
            f"processor time {share:.2f}% of an unconstrained step; wall clock "
            f"{neo_run['overhead_vs_unconstrained_pct']:+.1f}% (tiny model, batch {e2e['batch']})",
            share <= 5.0)
        ratio = e2e["mask_overhead_ratio"]
        add("HF processor mask overhead vs PrefixConstrainedLogitsProcessor", ">= 100x less",
            f"{ratio:.0f}x less (processor time per step, batch {e2e['batch']})" if ratio is not None else None,
            (ratio >= 100) if ratio is not None else None)
    else:
        add("HF processor vs unconstrained generate", "<= 5% slower", None, None)
        add("HF processor mask overhead vs PrefixConstrainedLogitsProcessor", ">= 100x less", None, None)
    return out


# ---------------------------------------------------------------------------------------------- driver
def run_bench(
    sizes: Sequence[int] = (1_000_000,),
    rows: Sequence[int] = (256,),
    *,
    providers: Sequence[str] | None = None,
    peer_timeout: float = 120.0,
    python_max_items: int = 10_000_000,
    repeat: int = 50,
    min_time_s: float = 0.5,
    max_time_s: float = 10.0,
    threads: int = 1,
    seed: int = 0,
    e2e: bool = True,
    e2e_items: int | None = None,
    e2e_batch: int = 8,
    e2e_tokens: int = 48,
    e2e_repeats: int = 3,
    device_trie_cpu: bool = False,
    quick: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the benchmark and return the JSON document (see :data:`TOP_KEYS`).

    Parameters
    ----------
    sizes : catalog sizes; the measured sizes are the ladder 1k, 10k, ... up to ``max(sizes)`` plus ``sizes``.
    rows : batch rows per step (each measured at every size).
    providers : names to run (default: all available); see the module doc.
    peer_timeout : seconds a peer's grammar compile may take before the peer's ladder stops.
    python_max_items : skip the Python dict trie above this size (about 200 bytes per item).
    repeat, min_time_s, max_time_s : timing samples (see :func:`time_step`).
    threads : CPU threads for every provider (torch, neo core, xgrammar, llguidance).
    e2e, e2e_items, e2e_batch, e2e_tokens, e2e_repeats : the ``generate`` comparison
        (``e2e_items`` default: the largest size up to 1M).
    device_trie_cpu : also run neo's device trie on CPU (torch reference; a wiring check).
    """
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"--sizes must be positive item counts, got {list(sizes)}")
    rows = sorted({int(r) for r in rows})
    if not rows or rows[0] < 1:
        raise ValueError(f"--rows must be positive, got {list(rows)}")
    if peer_timeout <= 0:
        raise ValueError(f"--peer-timeout must be > 0 seconds, got {peer_timeout}")
    all_sizes = sorted(set(ladder(max(sizes))) | set(sizes))
    known = ["neo-cpu", "neo-cuda", "python-trie-hf", "torch-searchsorted", *PEERS]
    if device_trie_cpu:
        known.append("neo-device-trie-torch")
    chosen = list(known) if providers is None else list(providers)
    bad = [p for p in chosen if p not in known + ["neo-device-trie-torch"]]
    if bad:
        raise ValueError(f"unknown provider(s) {bad}; known: {known + ['neo-device-trie-torch']}")
    if device_trie_cpu and "neo-device-trie-torch" not in chosen:
        chosen.append("neo-device-trie-torch")
    cuda = torch.cuda.is_available()
    peer_info: dict[str, dict[str, Any]] = {}
    for p in PEERS:
        ver = _peer_version(p)
        peer_info[p] = {"available": ver is not None, "version": ver, "limit_s": peer_timeout,
                        "largest_items_ok": None,
                        "failure": None if ver is not None else f"not installed (pip install neo-sid[peers])"}
        if p not in chosen:
            peer_info[p]["failure"] = "not selected"
    torch.set_num_threads(threads)
    timing = {"repeat": repeat, "min_time_s": min_time_s, "max_time_s": max_time_s}
    results: list[dict[str, Any]] = []
    stopped: dict[str, str] = {}
    t_start = time.perf_counter()

    def in_process(n: int) -> list[Provider]:
        out: list[Provider] = []
        if "neo-cpu" in chosen:
            out.append(NeoCpuProvider(threads))
        if "neo-cuda" in chosen and cuda:
            out.append(NeoDeviceProvider(threads, "cuda"))
        if "neo-device-trie-torch" in chosen:
            out.append(NeoDeviceProvider(threads, "cpu"))
        if "python-trie-hf" in chosen and n <= python_max_items:
            out.append(PythonTrieHFProvider(threads))
        if "torch-searchsorted" in chosen:
            out.append(TorchSearchsortedProvider(threads))
        return out

    for n in all_sizes:
        log(f"[{n:,} items]")
        cat = SyntheticCatalog(n, seed)
        state_seeds = [(R, seed * 7919 + R) for R in rows]
        expected = {R: cat.oracle_bool(cat.sample_states(R, s)) for R, s in state_seeds}
        for prov in in_process(n):
            build_s = prov.build(cat)
            for R, s in state_seeds:
                states = cat.sample_states(R, s)
                row = _result_row(provider=prov.name, device=prov.device, items=n, rows=R, build_s=build_s,
                                  memory_bytes_per_item=prov.memory_bytes / n, memory_source=prov.memory_source,
                                  checked_rows=R)
                prov.prepare(states)
                prov.step()
                prov.sync()
                row["agree"] = bool(np.array_equal(prov.allowed(), expected[R]))
                if not row["agree"]:
                    row["status"] = "disagree"
                    row["note"] = "allowed sets differ from the oracle; not timed"
                else:
                    _fill_timing(row, time_step(prov.step, sync=prov.sync, **timing))
                    row["extra"] = {"step": prov.what, **prov.extra_timings(**timing)}
                results.append(row)
                log(f"  {prov.name:<22} rows {R:>4}: build {build_s:7.3f}s, {prov.memory_bytes / n:8.1f} B/item, "
                    + (f"{row['row_median_us']:9.3f} us/row (p99 step {row['step_p99_us']:,.0f} us)"
                       if row["status"] == "ok" else row["status"]))
            prov.close()
            del prov
            gc.collect()
        for p in PEERS:
            if p not in chosen or not peer_info[p]["available"]:
                continue
            if p in stopped:
                row = _result_row(provider=p, device="cpu", items=n, rows=rows[0], status="skipped",
                                  note=f"a smaller catalog already failed: {stopped[p]}")
                results.append(row)
                continue
            got, failure = run_peer(p, n, seed, state_seeds, threads, timing, peer_timeout, log)
            for row in got:
                if row["status"] == "ok":
                    log(f"  {p:<22} rows {row['rows']:>4}: compile {row['build_s']:7.3f}s, "
                        f"{row['memory_bytes_per_item']:8.1f} B/item, {row['row_median_us']:9.3f} us/row")
            results.extend(got)
            if failure is not None:
                stopped[p] = failure
                peer_info[p]["failure"] = f"at {n:,} items: {failure}"
                log(f"  {p}: stopped at {n:,} items: {failure}")
            elif all(r["status"] == "ok" for r in got):
                peer_info[p]["largest_items_ok"] = n
        del cat, expected
        gc.collect()

    # neo's speedup over every other provider at the same (items, rows)
    for r in results:
        if r["status"] != "ok" or r["provider"].startswith("neo"):
            continue
        ref = _find(results, "neo-cuda" if r["device"].startswith("cuda") else "neo-cpu", r["items"], r["rows"])
        if ref:
            r["neo_speedup"] = r["step_median_us"] / ref["step_median_us"]

    e2e_doc = None
    if e2e:
        n_e2e = e2e_items or max([s for s in all_sizes if s <= 1_000_000] or [all_sizes[0]])
        e2e_doc = run_e2e(n_e2e, e2e_batch, e2e_tokens, e2e_repeats, threads, seed, log)
    doc = {
        "schema": SCHEMA,
        "machine": _machine(threads),
        "versions": _versions(),
        "config": {"sizes": all_sizes, "requested_sizes": list(sizes), "rows": rows, "vocab_size": VOCAB,
                   "levels": LEVELS, "codebook": CODEBOOK, "threads": threads, "peer_timeout_s": peer_timeout,
                   "python_max_items": python_max_items, "repeat": repeat, "min_time_s": min_time_s,
                   "max_time_s": max_time_s, "seed": seed, "quick": quick, "cuda": cuda,
                   "providers": chosen, "wall_s": None},
        "results": results,
        "peers": peer_info,
        "e2e": e2e_doc,
        "budgets": evaluate_budgets(results, e2e_doc),
    }
    doc["config"]["wall_s"] = time.perf_counter() - t_start
    return doc
