"""Generation benchmark: SidLogitsProcessor / neo.generate vs unconstrained generate and vs
transformers' PrefixConstrainedLogitsProcessor over a Python dict trie; top-K beam search latency.

Setup: a tiny random Llama (hidden 64, 2 layers) with a Qwen-sized vocabulary (151,936 text ids + 4 x
256 SID codes), 1M items with random 4-level SIDs. Correctness is asserted before timing (every
span of the timed runs is a real item). Writes ``benchmarks/results/generation.json`` and prints a
markdown table.

Run: ``python benchmarks/bench_generation.py [--items 1000000] [--batch 8] [--steps 32]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import markdown_table, time_fn, write_results  # noqa: E402

from neo.lm.generation import generate, topk_items  # noqa: E402
from neo.core.index import SidIndex  # noqa: E402
from neo.core.layout import TokenLayout  # noqa: E402
from neo.lm.processor import SidLogitsProcessor  # noqa: E402
from neo.lm.vocab import SidVocab  # noqa: E402


class _Tok:
    """Minimal tokenizer stand-in (the benchmark feeds token ids; no text is decoded in timing)."""

    eos_token_id = 2
    pad_token_id = 0
    bos_token_id = 1

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))

    def __call__(self, s, add_special_tokens=True):
        return {"input_ids": [1, 10, 11]}


def build(items: int, base_vocab: int, seed: int = 0, model: bool = True):
    """(vocab, index, tiny Llama or None, codes (items, 4), index build seconds) for random 4 x 256 SIDs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    rng = np.random.default_rng(seed)
    layout = TokenLayout.contiguous(base_vocab, {"item": [256, 256, 256, 256]})
    vocab = SidVocab(layout)
    codes = np.unique(rng.integers(0, 256, size=(int(items * 1.02), 4), dtype=np.int32), axis=0)[:items]
    rng.shuffle(codes)
    t0 = time.perf_counter()
    index = SidIndex.build(layout, {"item": layout.codes_to_tokens("item", codes)})
    build_s = time.perf_counter() - t0
    if not model:
        return vocab, index, None, codes, build_s
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=layout.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, eos_token_id=2, pad_token_id=0, bos_token_id=1)
    lm = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # make SID spans likely so the constrained states are exercised
        lm.lm_head.weight[layout.open_id] *= 0
    return vocab, index, lm, codes, build_s


class DictTrie:
    """The peer: a Python dict trie + prefix_allowed_tokens_fn (DESIGN.md section 5)."""

    def __init__(self, tokens: np.ndarray, layout: TokenLayout, eos: int):
        self.root: dict = {}
        for row in tokens.tolist():
            node = self.root
            for t in row:
                node = node.setdefault(t, {})
        self.layout = layout
        self.text = [t for t in range(layout.vocab_size) if not (layout.open_id < t < layout.sid_token_end)]
        self.eos = eos

    def fn(self, prompt_len: int):
        o, c = self.layout.open_id, self.layout.close_id

        def allowed(batch_id: int, ids: torch.Tensor) -> list[int]:
            gen = ids[prompt_len:].tolist()
            if o in gen:
                last = len(gen) - 1 - gen[::-1].index(o)
                if c not in gen[last:]:
                    node = self.root
                    for t in gen[last + 1:]:
                        node = node.get(t, {})
                    return list(node) if node else [c]
            return self.text

        return allowed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--base-vocab", type=int, default=151_936)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="generation")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import LogitsProcessorList, PrefixConstrainedLogitsProcessor

    vocab, index, model, codes, build_s = build(args.items, args.base_vocab)
    lay = vocab.layout
    tok = _Tok()
    B, T = args.batch, args.steps
    prompt = torch.tensor([[1] + list(range(10, 26))] * B)
    attn = torch.ones_like(prompt)
    rows: list[dict] = []

    def run_generate(proc=None, fmt="mixed"):
        lp = LogitsProcessorList([proc]) if proc is not None else None
        return model.generate(prompt, attention_mask=attn, max_new_tokens=T, min_new_tokens=0, do_sample=False,
                              logits_processor=lp, eos_token_id=None, pad_token_id=0)

    # ---- correctness first: every span of a constrained run is a real item
    for fmt in ("mixed", "ids"):
        p = SidLogitsProcessor(index, 2, format=fmt)
        out = run_generate(p)[:, prompt.shape[1]:].numpy()
        n_spans = 0
        for row in out:
            r = row.tolist()
            i = 0
            while vocab.open_id in r[i:]:
                s = r.index(vocab.open_id, i)
                if vocab.close_id not in r[s:]:
                    break
                e = r.index(vocab.close_id, s)
                assert index.lookup(np.asarray([r[s + 1:e]], dtype=np.int32))[0] >= 0
                n_spans += 1
                i = e + 1
        assert not p.errors()
        print(f"[check] {fmt}: {n_spans} spans, all real items")

    # ---- end-to-end tokens/s: unconstrained vs processor vs neo.generate
    base = time_fn(lambda: run_generate(None), warmup=1, repeat=5)
    rows.append({"what": "HF generate, unconstrained", "format": "-", "tok_per_s": B * T / base["median_us"] * 1e6,
                 "step_us": base["median_us"] / T, "overhead_pct": 0.0})
    for fmt in ("mixed", "ids"):
        p = SidLogitsProcessor(index, 2, format=fmt)
        r = time_fn(lambda: run_generate(p), warmup=1, repeat=5)
        rows.append({"what": "HF generate + SidLogitsProcessor", "format": fmt,
                     "tok_per_s": B * T / r["median_us"] * 1e6, "step_us": r["median_us"] / T,
                     "overhead_pct": 100 * (r["median_us"] / base["median_us"] - 1)})
    ids_prompts = [prompt[0].tolist()] * B
    for fmt, constrained in (("mixed", False), ("mixed", True), ("ids", True)):
        def go():
            return generate(model, tok, vocab, index, ids_prompts, max_new_tokens=T, format=fmt,
                            constrained=constrained, eos_token_id=[3])
        outs = go()
        n_tok = sum(len(o.token_ids) for o in outs)
        n_steps = max(len(o.token_ids) for o in outs)
        r = time_fn(go, warmup=1, repeat=5)
        rows.append({"what": "neo.generate" + ("" if constrained else " (unconstrained)"), "format": fmt,
                     "tok_per_s": n_tok / r["median_us"] * 1e6, "step_us": r["median_us"] / n_steps,
                     "overhead_pct": 100 * (r["median_us"] / base["median_us"] - 1)})

    # ---- mask overhead per step alone, on a fixed token script (spans of real items + text)
    script = []
    for i in range(T // 6 + 1):
        script += [vocab.open_id, *index.item_tokens(np.asarray([i * 7919 % args.items], np.int32))[1][0].tolist(),
                   vocab.close_id]
    script = torch.tensor(script[:T])
    seqs = [torch.cat([prompt, script[:s].expand(B, s)], 1) for s in range(T)]
    scores = torch.randn(B, lay.vocab_size)

    def overhead(proc_factory):
        # the processors mask in place; re-masking the same buffer costs the same as a fresh one
        def run():
            p = proc_factory()
            for s in range(T):
                p(seqs[s], scores)
        return time_fn(run, warmup=1, repeat=5)["median_us"] / T

    neo_us = overhead(lambda: SidLogitsProcessor(index, 2, format="mixed"))
    t0 = time.perf_counter()
    trie = DictTrie(index.item_tokens(np.arange(args.items, dtype=np.int32))[1], lay, 2)
    dict_build_s = time.perf_counter() - t0
    peer_us = overhead(lambda: PrefixConstrainedLogitsProcessor(trie.fn(prompt.shape[1]), num_beams=1))
    rows.append({"what": "mask overhead per step: SidLogitsProcessor", "format": "mixed", "step_us": neo_us,
                 "per_row_us": neo_us / B})
    rows.append({"what": "mask overhead per step: PrefixConstrained + dict trie", "format": "mixed",
                 "step_us": peer_us, "per_row_us": peer_us / B, "speedup": peer_us / neo_us})

    # ---- top-K beam search latency
    for beams in (10, 30):
        r = time_fn(lambda: topk_items(model, tok, vocab, index, [prompt[0].tolist()], k=10, num_beams=beams),
                    warmup=1, repeat=5)
        rows.append({"what": f"top-10 beam search, beams={beams}", "format": "ids", "latency_ms": r["median_us"] / 1e3})
        res = topk_items(model, tok, vocab, index, [prompt[0].tolist()], k=10, num_beams=beams)[0]
        assert len({i.row for i in res}) == 10 and all(i.valid for i in res)

    extra = {"config": vars(args), "index_build_s": build_s, "dict_trie_build_s": dict_build_s,
             "vocab_size": lay.vocab_size, "gpu": "pending (no GPU on this machine)"}
    path = write_results(args.out, rows, extra)
    cols = ["what", "format", "tok_per_s", "step_us", "overhead_pct", "per_row_us", "speedup", "latency_ms"]
    print(markdown_table(rows, cols))
    print(f"index build {build_s:.2f}s, dict trie build {dict_build_s:.1f}s -> {path}")


if __name__ == "__main__":
    main()
