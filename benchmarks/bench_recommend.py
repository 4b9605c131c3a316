"""Recommendation benchmark: top-10 distinct items by constrained beam search (30 beams).

Sections (``--sections``, default ``batch,step,e2e``; ``device`` and ``sync`` need ``--device cuda``):

* ``batch`` -- ``topk_items`` before (the per-row Python loop at ``--before-rev``, loaded from git) and
  after (vectorised over prompts x beams x band) for batches of 1, 32 and 256 prompts, interleaved in
  one run; results asserted identical first.
* ``step`` -- the constraint work of one beam-search step (rows at one depth inside spans, as in a
  beam search): neo's C++ fill + SID-block mask, and the same fill + the processor's structured apply
  on full logits, vs transformers' ``PrefixConstrainedLogitsProcessor`` over a Python dict trie.
* ``e2e`` -- ``recommend`` end to end (users/s, latency p50/p99): neo ``topk_items`` vs HF
  ``generate(num_beams=30, num_return_sequences=10, prefix_allowed_tokens_fn=...)`` on the same model,
  prompts and catalog; the top-10 lists are asserted equal first.
* ``device`` (GPU) -- the device path's constrained step at 140 rows (decode-state advance + mask +
  fused sampling; and a beam level: trie steps + two ``beam_topk`` + pool merge) vs the 33 us budget,
  and the share of a decode step spent in constraints with a Qwen2-0.5B-shaped model at 30 beams.
* ``sync`` (GPU) -- the device decode loop under ``torch.cuda.set_sync_debug_mode("error")``: any
  host round trip in the constrained part raises.

Model: a tiny random Llama (hidden 64, 2 layers) over a Qwen-sized vocabulary (``--base-vocab``
151,936 text ids + 2 delimiters + 4 x 256 SID codes); catalogs of random 4-level SIDs. Threads pinned
with ``--threads`` (default 1); the load average is recorded before and after each section.

    python benchmarks/bench_recommend.py                                  # CPU sections, 1M and 10M items
    python benchmarks/bench_recommend.py --sections batch --items 1000000
    python benchmarks/bench_recommend.py --device cuda --sections device,sync,e2e   # on a GPU

Writes ``benchmarks/results/recommend[_<suffix>].json`` and prints markdown tables.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import markdown_table, machine_info, write_results  # noqa: E402
from bench_generation import _Tok, build  # noqa: E402

from neo.lm.generation import topk_items  # noqa: E402
from neo.lm.processor import SidMasker  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def stats(samples_s: list[float]) -> dict[str, float]:
    a = np.asarray(samples_s) * 1e3
    return {"p50_ms": float(np.median(a)), "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()),
            "n": int(a.size)}


def interleaved(fns: dict[str, callable], repeat: int, warmup: int = 1, sync=None) -> dict[str, list[float]]:
    """Time several functions in alternation (A B A B ...), so machine load drifts hit all alike."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            if sync:
                sync()
            t0 = time.perf_counter()
            f()
            if sync:
                sync()
            out[k].append(time.perf_counter() - t0)
    return out


def load_before(rev: str):
    """``neo.lm.generation`` as of git revision ``rev`` (the code being replaced), as a module."""
    src = subprocess.run(["git", "show", f"{rev}:src/neo/lm/generation.py"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "generation_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("neo.lm._generation_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def prompts_for(n: int, seed: int, base_vocab: int, length: int = 16) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[1] + rng.integers(10, min(base_vocab, 5000), size=length).tolist() for _ in range(n)]


def same_results(a, b, atol=0.0) -> None:
    for x, y in zip(a, b):
        assert [i.row for i in x] == [i.row for i in y], ([i.row for i in x], [i.row for i in y])
        if atol == 0:
            assert [i.score for i in x] == [i.score for i in y]
        else:
            np.testing.assert_allclose([i.score for i in x], [i.score for i in y], atol=atol)


# ---------------------------------------------------------------------------------------------- batch
def section_batch(args, rows: list[dict]) -> None:
    from neo.lm import generation

    before = load_before(args.before_rev)
    vocab, index, model, codes, _ = build(args.batch_items, args.batch_base_vocab)
    tok = _Tok()
    print(f"[batch] {args.batch_items:,} items, V = {vocab.layout.vocab_size:,}, before = {args.before_rev}")
    # time spent in the model forward, so the search's own cost (masks, selection, bookkeeping) shows
    spent = {"forward": 0.0}

    def timed(fwd):
        def f(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fwd(*a, **kw)
            finally:
                spent["forward"] += time.perf_counter() - t0
        return f

    before._forward = timed(before._forward)
    real_forward = generation._forward
    generation._forward = timed(real_forward)
    try:
        for B in args.batches:
            prompts = prompts_for(B, B, args.batch_base_vocab)
            ld = load()
            fwd: dict[str, list[float]] = {"before": [], "after": []}

            def run(name, fn):
                def go():
                    spent["forward"] = 0.0
                    out = fn()
                    fwd[name].append(spent["forward"])
                    return out
                return go

            old = run("before", lambda: before.topk_items(model, tok, vocab, index, prompts, k=10, num_beams=30))
            new = run("after", lambda: topk_items(model, tok, vocab, index, prompts, k=10, num_beams=30,
                                                  backend="core"))
            same_results(old(), new())
            rep = args.repeat if B < 256 else max(2, args.repeat // 3)
            t = interleaved({"before": old, "after": new}, rep)
            sb, sa = stats(t["before"]), stats(t["after"])
            # search cost = call - model forward, per call, then the median
            ob = float(np.median(np.asarray(t["before"]) - np.asarray(fwd["before"][-rep:]))) * 1e3
            oa = float(np.median(np.asarray(t["after"]) - np.asarray(fwd["after"][-rep:]))) * 1e3
            rows.append(dict(section="batch", items=args.batch_items, vocab=vocab.layout.vocab_size, prompts=B,
                             before_p50_ms=sb["p50_ms"], after_p50_ms=sa["p50_ms"],
                             speedup=sb["p50_ms"] / sa["p50_ms"], before_search_ms=ob, after_search_ms=oa,
                             search_speedup=ob / oa, forward_ms=float(np.median(fwd["after"][-rep:])) * 1e3,
                             before_users_per_s=B / sb["p50_ms"] * 1e3, after_users_per_s=B / sa["p50_ms"] * 1e3,
                             n=sa["n"], load_before=ld, load_after=load()))
            print(markdown_table(rows[-1:], ["prompts", "before_p50_ms", "after_p50_ms", "speedup", "forward_ms",
                                             "before_search_ms", "after_search_ms", "search_speedup",
                                             "load_before", "load_after"]))
    finally:
        generation._forward = real_forward


# ---------------------------------------------------------------------------------------------- HF peer
class DictTrie:
    """The peer's catalog: a Python dict trie over the SIDs + a ``prefix_allowed_tokens_fn``."""

    def __init__(self, tokens: np.ndarray):
        self.root: dict = {}
        for row in tokens.tolist():
            node = self.root
            for t in row:
                node = node.setdefault(t, {})

    def fn(self, prompt_len: int, fallback: int):
        def allowed(batch_id: int, ids: torch.Tensor) -> list[int]:
            node = self.root
            for t in ids[prompt_len:].tolist():
                node = node.get(t, {})
            return list(node) if node else [fallback]
        return allowed


def hf_topk(model, prompts: list[list[int]], trie: DictTrie, close_id: int, levels: int, k: int = 10,
            beams: int = 30):
    """HF beam search constrained by the dict trie: ``(users, k, levels)`` SID tokens."""
    ids = torch.tensor(prompts, device=model.device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), num_beams=beams, num_return_sequences=k,
                         max_new_tokens=levels, do_sample=False, early_stopping=False, length_penalty=1.0,
                         prefix_allowed_tokens_fn=trie.fn(ids.shape[1], close_id), pad_token_id=0)
    return out[:, ids.shape[1]:].reshape(len(prompts), k, -1)


# ---------------------------------------------------------------------------------------------- e2e
def section_e2e(args, rows: list[dict], items: int, device: str) -> None:
    vocab, index, model, codes, build_s = build(items, args.base_vocab)
    model.to(device)
    lay = vocab.layout
    tok = _Tok()
    t0 = time.perf_counter()
    trie = DictTrie(index.item_tokens(np.arange(items, dtype=np.int32))[1])
    dict_s = time.perf_counter() - t0
    print(f"[e2e] {items:,} items on {device}: index build {build_s:.2f}s, dict trie {dict_s:.1f}s")
    backend = "auto"
    for B in args.e2e_batches:
        prompts = [p + [lay.open_id] for p in prompts_for(B, 100 + B, args.base_vocab)]
        neo_res = topk_items(model, tok, vocab, index, prompts, k=10, num_beams=30, backend=backend)
        hf_res = hf_topk(model, prompts, trie, lay.close_id, 4)
        agree = 0
        for r in range(B):
            hf_rows = index.lookup(hf_res[r].to("cpu").numpy().astype(np.int32)).tolist()
            neo_rows = [i.row for i in neo_res[r]]
            assert set(hf_rows) == set(neo_rows), (hf_rows, neo_rows)  # same items (order may differ on ties)
            agree += hf_rows == neo_rows
        sync = torch.cuda.synchronize if device == "cuda" else None
        ld = load()
        t = interleaved({"neo": lambda: topk_items(model, tok, vocab, index, prompts, k=10, num_beams=30,
                                                   backend=backend),
                         "hf": lambda: hf_topk(model, prompts, trie, lay.close_id, 4)},
                        args.repeat if B == 1 else max(3, args.repeat // 3), sync=sync)
        sn, sh = stats(t["neo"]), stats(t["hf"])
        rows.append(dict(section="e2e", device=device, items=items, users=B, neo_p50_ms=sn["p50_ms"],
                         neo_p99_ms=sn["p99_ms"], neo_users_per_s=B / sn["p50_ms"] * 1e3, hf_p50_ms=sh["p50_ms"],
                         hf_p99_ms=sh["p99_ms"], hf_users_per_s=B / sh["p50_ms"] * 1e3,
                         speedup=sh["p50_ms"] / sn["p50_ms"], same_order=f"{agree}/{B}", n=sn["n"],
                         index_build_s=build_s, dict_trie_build_s=dict_s, load_before=ld, load_after=load()))
        print(markdown_table(rows[-1:], ["items", "users", "neo_p50_ms", "neo_p99_ms", "neo_users_per_s", "hf_p50_ms",
                                         "hf_p99_ms", "hf_users_per_s", "speedup", "same_order", "load_after"]))
    del trie


# ---------------------------------------------------------------------------------------------- step
def section_step(args, rows: list[dict], items: int) -> None:
    """Constraint work of one beam-search step at rows x V, rows at one depth (as in a beam step)."""
    from transformers import PrefixConstrainedLogitsProcessor

    vocab, index, _, codes, _ = build(items, args.base_vocab, model=False)
    lay = vocab.layout
    V = lay.vocab_size
    toks = lay.codes_to_tokens("item", codes)
    trie = DictTrie(toks)
    rng = np.random.default_rng(0)
    c0, c1 = lay.sid_token_begin, lay.sid_token_end
    w0 = c0 // 32
    bits = torch.arange(32, dtype=torch.int32)
    for R in args.step_rows:
        per_depth: dict[str, list[float]] = {"neo_beam": [], "neo_apply": [], "hf": []}
        ld = load()
        for depth in range(4):
            picks = toks[rng.integers(0, len(toks), size=R)]
            prompt = np.full((R, 4), 7)
            ids = torch.as_tensor(np.concatenate([prompt, np.full((R, 1), lay.open_id), picks[:, :depth]], 1))
            masker = SidMasker(index, R, [2])
            masker.prime(ids.numpy())
            scores = torch.randn(R, V)
            work = scores.clone()
            proc = PrefixConstrainedLogitsProcessor(trie.fn(5, lay.close_id), num_beams=30)
            # same allowed sets (checked on the full mask)
            ref = proc(ids, scores.clone())
            mine = masker.apply(scores.clone())
            assert torch.equal(torch.isfinite(ref), torch.isfinite(mine))

            def neo_beam():  # what _beam_search_core does per level for the constraint
                masker.fill()
                words = masker.bitmask[:, w0:(c1 + 31) // 32]
                allowed = ((words.unsqueeze(-1) >> bits) & 1).bool().reshape(R, -1)[:, c0 - 32 * w0:c1 - 32 * w0]
                return work[:, c0:c1].masked_fill(~allowed, float("-inf"))

            t = interleaved({"neo_beam": neo_beam, "neo_apply": lambda: masker.apply(work),
                             "hf": lambda: proc(ids, work)}, args.step_repeat)
            for k2, v in t.items():
                per_depth[k2].append(float(np.median(v)))
        nb, na, hf = (np.mean(per_depth[k2]) * 1e6 for k2 in ("neo_beam", "neo_apply", "hf"))
        rows.append(dict(section="step", items=items, rows=R, vocab=V, neo_beam_step_us=nb, neo_apply_step_us=na,
                         hf_prefix_step_us=hf, neo_beam_per_row_us=nb / R, hf_per_row_us=hf / R,
                         speedup_beam=hf / nb, speedup_apply=hf / na, load_before=ld, load_after=load()))
        print(markdown_table(rows[-1:], ["items", "rows", "neo_beam_step_us", "neo_apply_step_us", "hf_prefix_step_us",
                                         "speedup_beam", "speedup_apply", "load_after"]))


# ---------------------------------------------------------------------------------------------- device
def _device_world(items: int, base_vocab: int, device: str):
    vocab, index, _, codes, _ = build(items, base_vocab, model=False)
    from neo.lm.device import DeviceIndex

    t0 = time.perf_counter()
    dx = DeviceIndex.get(index, device)
    return vocab, index, dx, codes, time.perf_counter() - t0


def section_device(args, rows: list[dict], items: int, device: str) -> None:
    """Device path, constraint work only: generate-style step and beam-level step at 140 rows."""
    from neo.kernels import beam_topk, logsumexp_rows, sample_masked
    from neo.lm.device import DeviceDecodeState, build_filters, repeat_filters
    from neo.lm.generation import _merge_pool

    vocab, index, dx, codes, copy_s = _device_world(items, args.base_vocab, device)
    lay = vocab.layout
    V = lay.vocab_size
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    kb = "auto"
    R = args.device_rows
    rng = np.random.default_rng(0)
    toks = lay.codes_to_tokens("item", codes)
    # --- generate-style step: rows at random states (text, span start, every depth, leaf)
    pick_rows = rng.integers(0, len(toks), size=R)
    picks = toks[pick_rows]
    excl = [np.setdiff1d(rng.integers(0, items, 64), [pick_rows[r]]) for r in range(R)]
    n_steps = 5 * args.repeat * 5 + 40  # every step the state may run (warm-ups, eager, graph replays)

    depth = rng.integers(-1, 5, size=R)  # -1 = stays in text, 0 = right after [SID], ..., 4 = on a leaf

    def new_state():
        st = DeviceDecodeState(dx, R, [2], formats=["mixed"] * R, exclude=excl,
                               capacity=n_steps // (dx.min_levels + 1) + 2, kernel_backend=kb)
        st.advance(torch.full((R,), lay.open_id, device=device), torch.as_tensor(depth >= 0, device=device))
        for d in range(4):
            st.advance(torch.as_tensor(picks[:, d], device=device), torch.as_tensor(depth > d, device=device))
        assert not st.errors()
        return st

    st = new_state()
    logits = torch.randn(R, V, device=device).to(torch.bfloat16 if device == "cuda" else torch.float32)
    seeds = torch.arange(R, device=device)

    def gen_core(state):
        t = sample_masked(logits, state.bitmask(), temperature=0.8, seeds=seeds, backend=kb)
        state.advance(t, None)

    # the write-back used for CUDA graph capture must step exactly like the plain step
    a_st, b_st = new_state(), new_state()
    for _ in range(6):
        gen_core(a_st)
        _step_in_place(b_st, gen_core)
    assert torch.equal(a_st.bitmask(), b_st.bitmask()) and torch.equal(a_st.node, b_st.node)
    assert torch.equal(a_st.filters[0].excl, b_st.filters[0].excl) and int(a_st.n_emitted.sum()) > 0

    def gen_step():
        gen_core(st)

    # --- beam-level step: 140 rows = 4 prompts x 35 beams
    nb = 35
    P = R // nb
    filters = repeat_filters(build_filters(dx, [rng.integers(0, items, 64) for _ in range(P)], [None] * P), nb)
    trie = dx.tries[0]
    node = trie.root_state(P * nb)
    s0 = trie.step(node, None, filters[0], backend=kb)
    first = torch.as_tensor(toks[rng.integers(0, len(toks), size=P * nb), 0], device=device)
    s1 = trie.step(s0.node, first, filters[0], backend=kb)
    scores = torch.zeros(P * nb, device=device)
    pool_s = torch.full((P, 10), float("-inf"), device=device)
    pool_t = torch.full((P, 10, 4), -1, dtype=torch.int64, device=device)

    def beam_step():
        s = trie.step(s1.node, None, filters[0], backend=kb)
        lse = logsumexp_rows(logits, backend=kb)
        dv, db, dt = beam_topk(logits, scores, s.band_start, s.bitmap, 10, nb, backend=kb, lse=lse)
        lv, lb, lt = beam_topk(logits, scores, s.band_start, s.bitmap, 30, nb, backend=kb, lse=lse)
        _merge_pool(pool_s, pool_t, dv, pool_t[:, :10].clone(), 10)
        return lv

    fns = {"gen": gen_step, "beam": beam_step}
    if device == "cuda":  # the same steps replayed from CUDA graphs (possible: no host round trip inside)
        g_gen = _capture(lambda: _step_in_place(st, gen_core))
        g_beam = _capture(beam_step)
        fns.update(gen_graph=g_gen.replay, beam_graph=g_beam.replay)
    ld = load()
    t = interleaved(fns, args.repeat * 5, warmup=3, sync=sync)
    us = {k2: stats(v) for k2, v in t.items()}
    row = dict(section="device", device=device, items=items, rows=R, copy_to_device_s=copy_s,
               trie_mb=sum(x.nbytes() for x in dx.tries if x is not None) / 2**20,
               generate_step_us=us["gen"]["p50_ms"] * 1e3, generate_step_p99_us=us["gen"]["p99_ms"] * 1e3,
               beam_level_us=us["beam"]["p50_ms"] * 1e3, beam_level_p99_us=us["beam"]["p99_ms"] * 1e3,
               budget_us=33.0, load_before=ld, load_after=load())
    if device == "cuda":
        row.update(generate_step_graph_us=us["gen_graph"]["p50_ms"] * 1e3,
                   beam_level_graph_us=us["beam_graph"]["p50_ms"] * 1e3)
    rows.append(row)
    print(markdown_table(rows[-1:], ["device", "items", "rows", "generate_step_us", "generate_step_graph_us",
                                     "beam_level_us", "beam_level_graph_us", "budget_us", "trie_mb"]))


def _step_in_place(state, fn) -> None:
    """Run ``fn(state)`` and copy every state tensor it replaced back into the original storage, so a
    captured CUDA graph reads and writes the same buffers on every replay."""
    before = dict(vars(state))
    fn(state)
    for k2, old in before.items():
        new = getattr(state, k2)
        if isinstance(old, torch.Tensor):
            if new is not old:
                old.copy_(new)
            setattr(state, k2, old)
        elif k2 in ("filters", "bands"):
            for o, n in zip(old, new):
                for ox, nx in zip(o or (), n or ()):
                    if isinstance(ox, torch.Tensor) and nx is not ox:
                        ox.copy_(nx)
            setattr(state, k2, old)


def _capture(fn):
    """A CUDA graph of ``fn`` (warmed up on a side stream first, as CUDA graph capture requires)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def section_share(args, rows: list[dict], device: str) -> None:
    """Share of a decode step spent in constraints: a Qwen2-0.5B-shaped random model at 30 beams."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from neo.lm import generation

    vocab, index, _, codes, _ = build(args.share_items, args.base_vocab, model=False)
    lay = vocab.layout
    torch.manual_seed(0)
    shape = (dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14)
             if args.share_model == "qwen2-0.5b" else
             dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4))
    cfg = Qwen2Config(vocab_size=lay.vocab_size, num_key_value_heads=2, tie_word_embeddings=True, eos_token_id=2,
                      pad_token_id=0, bos_token_id=1, **shape)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = Qwen2ForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    tok = _Tok()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for B in args.share_users:
        prompts = [p + [lay.open_id] for p in prompts_for(B, 7, args.base_vocab, length=64)]
        spent = {"forward": 0.0, "total": 0.0}
        real_forward = generation._forward

        def timed_forward(*a, **kw):
            sync()
            t0 = time.perf_counter()
            out = real_forward(*a, **kw)
            sync()
            spent["forward"] += time.perf_counter() - t0
            return out

        generation._forward = timed_forward
        try:
            for _ in range(2):  # warm-up
                topk_items(model, tok, vocab, index, prompts, k=10, num_beams=30)
            spent["forward"] = 0.0
            n = args.repeat
            sync()
            t0 = time.perf_counter()
            for _ in range(n):
                topk_items(model, tok, vocab, index, prompts, k=10, num_beams=30)
            sync()
            spent["total"] = time.perf_counter() - t0
        finally:
            generation._forward = real_forward
        other = spent["total"] - spent["forward"]
        rows.append(dict(section="share", device=device, model=f"{args.share_model}-shaped (random weights)", users=B,
                         beams=30, items=args.share_items, recommend_ms=spent["total"] / n * 1e3,
                         forward_ms=spent["forward"] / n * 1e3, constraint_and_search_ms=other / n * 1e3,
                         share_pct=100 * other / spent["total"], users_per_s=B * n / spent["total"]))
        print(markdown_table(rows[-1:], ["device", "users", "recommend_ms", "forward_ms", "constraint_and_search_ms",
                                         "share_pct", "users_per_s"]))


def section_sync(args, device: str) -> None:
    """The constrained parts of the device loops under ``torch.cuda.set_sync_debug_mode("error")``:
    every synchronising CUDA call raises. Setup before the first model forward and the model forwards
    themselves (HF code) are outside the check."""
    from neo.lm import generation
    from neo.lm.device import DeviceDecodeState
    from neo.kernels import sample_masked

    vocab, index, dx, codes, _ = _device_world(100_000, args.base_vocab, device)
    lay = vocab.layout
    R = 64
    st = DeviceDecodeState(dx, R, [2], separator_token_ids=[5], formats=["mixed"] * R, capacity=8)
    logits = torch.randn(R, lay.vocab_size, device=device)
    logits[:, lay.open_id] += 8  # make spans happen
    seeds = torch.arange(R, device=device)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(20):
            bm = st.bitmask()
            t = sample_masked(logits, bm, seeds=seeds + step)
            st.advance(t, t >= 0)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    print(f"[sync] decode state: 20 steps, no host round trip; statuses {np.bincount(st.status_host())}")

    real_forward, real_loop = generation._forward, generation._decode_loop_device

    def forward_unchecked(*a, **kw):  # HF's forward is not ours to check; the check resumes after it
        torch.cuda.set_sync_debug_mode(0)
        try:
            return real_forward(*a, **kw)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    def loop_checked(*a, **kw):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return real_loop(*a, **kw)
        finally:
            torch.cuda.set_sync_debug_mode(0)

    vocab2, index2, model2, _, _ = build(100_000, 1000)
    model2.to(device)
    tok = _Tok()
    try:
        # beam search: the check starts when the prefill forward returns (setup copies come before it)
        generation._forward = forward_unchecked
        prompts = [[1, 5, 6, vocab2.layout.open_id]] * 3
        generation._beam_search_device(model2, index2, prompts, [dict(allowed_types=None, exclude=[1, 2], allow=None)] * 3,
                                       [2], 0, k=10, W=30, num_threads=1, kernels="auto")
        torch.cuda.set_sync_debug_mode(0)
        print("[sync] beam search: every level without a host round trip")
        # generate: the decode loop is checked, the setup before it and the report after it are not
        generation._forward = lambda *a, **kw: (forward_unchecked(*a, **kw) if torch.cuda.get_sync_debug_mode()
                                                else real_forward(*a, **kw))
        generation._decode_loop_device = loop_checked
        outs = generation.generate(model2, tok, vocab2, index2, [[1, 5, 6, 7]] * 4, max_new_tokens=24,
                                   do_sample=True, eos_token_id=[3], backend="auto")
        print(f"[sync] generate: {sum(len(o.token_ids) for o in outs)} tokens, no host round trip in the loop")
    finally:
        torch.cuda.set_sync_debug_mode(0)
        generation._forward, generation._decode_loop_device = real_forward, real_loop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sections", default="batch,step,e2e")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--items", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--base-vocab", type=int, default=151_936)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32, 256])
    ap.add_argument("--batch-items", type=int, default=1_000_000)
    ap.add_argument("--batch-base-vocab", type=int, default=8192)
    ap.add_argument("--before-rev", default="7e64065")
    ap.add_argument("--e2e-batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--step-rows", type=int, nargs="+", default=[30, 960])
    ap.add_argument("--step-repeat", type=int, default=5)
    ap.add_argument("--device-rows", type=int, default=140)
    ap.add_argument("--share-items", type=int, default=1_000_000)
    ap.add_argument("--share-users", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--share-model", choices=["qwen2-0.5b", "tiny"], default="qwen2-0.5b",
                    help="model shape for the share section (tiny: a quick check of the script on CPU)")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="recommend")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sections = args.sections.split(",")
    rows: list[dict] = []
    info = machine_info()
    print(f"machine: {info.get('cpu')} x{info.get('cpu_count')}, {info.get('gpu', 'no GPU')}; load {load()}; "
          f"threads {args.threads}")
    if "batch" in sections:
        section_batch(args, rows)
    for items in args.items:
        if "step" in sections:
            section_step(args, rows, items)
        if "e2e" in sections:
            section_e2e(args, rows, items, args.device)
        if "device" in sections:
            section_device(args, rows, items, args.device)
    if "share" in sections or ("device" in sections and args.device == "cuda"):
        section_share(args, rows, args.device)
    if "sync" in sections:
        section_sync(args, args.device)
    gpu = "measured" if args.device == "cuda" else "pending (no GPU on this machine)"
    path = write_results(args.out, rows, {"config": vars(args), "gpu": gpu})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
