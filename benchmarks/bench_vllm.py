"""vLLM with and without neo's logits processor: tokens/s on the same requests, and neo's share of a step.

Run it in a virtualenv holding vLLM and neo (the recipe is in .ci/vllm_integration.sh)::

    OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=2 HF_HUB_OFFLINE=1 python benchmarks/bench_vllm.py      # CPU
    python benchmarks/bench_vllm.py --device-note "H100" --text-vocab 151000 --hidden 1024 --layers 8  # GPU

It builds a random Llama over a synthetic word-level tokenizer (``--text-vocab`` words, so the logits are
as wide as a real model's) and a synthetic catalog (``--items`` items, 3 levels of 64 codes), saves it as
a neo system directory, starts ONE offline engine (the processor comes in through the entry point) and
runs the same prompts alternately

* unconstrained: no neo options (the processor is loaded but leaves every row alone);
* constrained: every request with ``neo_format=ids`` (a span at every step but the delimiters);

with ``ignore_eos`` and a fixed ``max_tokens``, so both generate exactly the same number of tokens.
Before timing, it checks that every constrained answer is a chain of valid spans. neo's share of a step
is the time inside the processor (``update_state`` + ``apply``, CPU-side) over the wall time of the
constrained runs. Results: ``benchmarks/results/vllm.json`` and ``vllm.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_info, markdown_table, write_results  # noqa: E402


def build(out: Path, args) -> dict:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from neo.core.index import SidIndex
    from neo.lm.adapt import adapt_model
    from neo.lm.system import NeoSystem
    from neo.lm.vocab import SidVocab

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(args.text_vocab - len(specials))])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    sizes = {"item": [64, 64, 64]}
    sv = SidVocab.for_tokenizer(tok, sizes)
    sv.install(tok)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=sv.token_begin, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                      num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64, num_key_value_heads=max(1, args.hidden // 128),
                      head_dim=64, max_position_embeddings=1024, eos_token_id=2, pad_token_id=0, bos_token_id=1,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    adapt_model(model, sv, seed=0)
    rng = np.random.default_rng(0)
    flat = rng.choice(64 ** 3, size=args.items, replace=False)
    codes = np.stack(np.unravel_index(flat, (64, 64, 64)), 1).astype(np.int32)
    index = SidIndex.build(sv.layout, {"item": sv.layout.codes_to_tokens("item", codes)})
    NeoSystem(model, tok, sv, index).save_pretrained(out)
    return {"vocab": sv.vocab_size, "text_vocab": args.text_vocab, "items": args.items,
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "valid": {tuple(int(x) for x in t) for t in sv.layout.codes_to_tokens("item", codes)},
            "open": sv.open_id, "close": sv.close_id}


def check_spans(tokens: list[int], info: dict, eos: int = 2) -> bool:
    span = None
    for t in tokens:
        if t == eos:
            if span is not None:
                return False
            continue  # ignore_eos: EOS repeats once the answer is over
        if span is None:
            if t != info["open"]:
                return False
            span = []
        elif t == info["close"]:
            if tuple(span) not in info["valid"]:
                return False
            span = None
        else:
            span.append(t)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--text-vocab", type=int, default=32_000)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--max-num-seqs", type=int, default=8)
    ap.add_argument("--runs", type=int, default=5, help="alternating unconstrained/constrained runs each")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device-note", default="", help="what to write as the device (e.g. the GPU)")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: read neo's timers

    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    import neo.integrations.vllm as neo_vllm

    with tempfile.TemporaryDirectory(prefix="neo-bench-vllm-") as td:
        sysdir = Path(td) / "system"
        t = time.time()
        info = build(sysdir, args)
        print(f"system: {info['params_m']} M params, vocab {info['vocab']}, {info['items']} items "
              f"(built in {time.time() - t:.0f} s)", flush=True)
        t = time.time()
        llm = LLM(model=str(sysdir), dtype=args.dtype, enforce_eager=True, max_model_len=512,
                  max_num_seqs=args.max_num_seqs, seed=0)
        print(f"engine up in {time.time() - t:.0f} s", flush=True)
        procs = [p for p in neo_vllm._INSTANCES if p.decoder is not None]
        assert len(procs) == 1, f"expected one active neo processor, found {len(procs)}"
        proc = procs[0]
        rng = np.random.default_rng(1)
        prompts = [TokensPrompt(prompt_token_ids=[1] + [int(x) for x in rng.integers(4, args.text_vocab, 16)]
                                + [info["open"]]) for _ in range(args.requests)]

        def sp(constrained: bool):
            return SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True,
                                  extra_args={"neo_format": "ids"} if constrained else None)

        # correctness first
        outs = llm.generate(prompts, sp(True), use_tqdm=False)
        bad = [i for i, o in enumerate(outs) if not check_spans([info["open"]] + list(o.outputs[0].token_ids), info)]
        assert not bad, f"invalid spans in requests {bad[:5]}"
        llm.generate(prompts, sp(False), use_tqdm=False)  # warm both paths
        rows = []
        for run in range(args.runs):
            for constrained in (False, True):
                t0 = dict(proc.timing)
                t = time.perf_counter()
                outs = llm.generate(prompts, sp(constrained), use_tqdm=False)
                wall = time.perf_counter() - t
                ntok = sum(len(o.outputs[0].token_ids) for o in outs)
                assert ntok == args.requests * args.max_tokens
                neo_s = (proc.timing["update_s"] - t0["update_s"]) + (proc.timing["apply_s"] - t0["apply_s"])
                steps = proc.timing["steps"] - t0["steps"]
                rows.append({"run": run, "mode": "neo ids" if constrained else "unconstrained", "tokens": ntok,
                             "wall_s": wall, "tokens_per_s": ntok / wall, "neo_s": neo_s,
                             "neo_share": neo_s / wall, "neo_us_per_step": 1e6 * neo_s / max(steps, 1),
                             "steps": steps})
                print(rows[-1], flush=True)
        del llm
    base = float(np.median([r["tokens_per_s"] for r in rows if r["mode"] == "unconstrained"]))
    neo = float(np.median([r["tokens_per_s"] for r in rows if r["mode"] != "unconstrained"]))
    share = float(np.median([r["neo_share"] for r in rows if r["mode"] != "unconstrained"]))
    per_step = float(np.median([r["neo_us_per_step"] for r in rows if r["mode"] != "unconstrained"]))
    load = os.getloadavg()[0]

    def spread(mode: str) -> str:
        v = [r["tokens_per_s"] for r in rows if r["mode"] == mode]
        return f"{min(v):.0f} .. {max(v):.0f}"
    summary = {"unconstrained_tokens_per_s": base, "neo_tokens_per_s": neo, "slowdown_pct": 100 * (1 - neo / base),
               "neo_share_of_step_pct": 100 * share, "neo_us_per_step": per_step, "load_avg_1m": load,
               "config": {k: v for k, v in vars(args).items() if k != "out"},
               "model": {k: info[k] for k in ("vocab", "text_vocab", "items", "params_m")}}
    path = write_results("vllm", rows, {"summary": summary}, args.out)
    m = machine_info()
    device = args.device_note or ("GPU " + m["gpu"] if "gpu" in m else f"CPU ({m.get('cpu', '?')}, {m['cpu_count']} cores)")
    md = [
        "# vLLM with and without neo's logits processor",
        "",
        f"Command: `python benchmarks/bench_vllm.py {' '.join(sys.argv[1:])}` (OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}); {m['date']}, commit {m['commit']}, {device}, "
        f"torch {m.get('torch')}, load average {load:.1f} at the end.",
        "",
        f"Model: random Llama, {info['params_m']} M parameters, vocabulary {info['vocab']} "
        f"({args.text_vocab} words + SID tokens), {args.dtype}; catalog {args.items} items x 3 levels of 64 codes. "
        f"{args.requests} requests x {args.max_tokens} tokens (ignore_eos), greedy, max_num_seqs "
        f"{args.max_num_seqs}; runs alternate, medians over {args.runs} each.",
        "",
        "| mode | tokens/s (median) | min .. max over runs | neo share of wall time | neo us per step |",
        "|---|---|---|---|---|",
        f"| unconstrained | {base:.0f} | {spread('unconstrained')} | - | - |",
        f"| neo, ids format | {neo:.0f} | {spread('neo ids')} | {100 * share:.1f}% | {per_step:.0f} |",
        "",
        f"Slowdown with neo (medians): {100 * (1 - neo / base):.1f}% (budget <= 3%); where it is smaller than the "
        "spread between runs of one mode it is noise, and the time measured inside the processor (its share of the "
        "wall time) is the figure to read. GPU: pending (no GPU here).",
        "",
        "All runs:",
        "",
        markdown_table(rows, ["run", "mode", "tokens", "wall_s", "tokens_per_s", "neo_share", "neo_us_per_step"]),
        "",
    ]
    (path.parent / "vllm.md").write_text("\n".join(md))
    print("\n".join(md))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
