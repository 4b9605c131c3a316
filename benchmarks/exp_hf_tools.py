"""Experiment: Hugging Face tools in neo's training, each against what neo does itself (issue 12, part 3).

1. Alignment (SID rows only): neo's row-masked AdamW (gradient hook + :class:`RowMaskedAdamW`) vs peft's
   trainable tokens (``TrainableTokensConfig(token_indices=SID rows)`` on the input embeddings and the LM
   head). Measured: seconds per optimiser step (same data, same batches, interleaved runs), whether every
   non-SID weight is bit-identical afterwards, and the loss after the same number of steps.
2. Packing: padded batches vs neo's per-batch packing into rows of ``max_length`` tokens vs
   ``transformers.DataCollatorWithFlattening`` (the whole batch as one row). Measured: tokens/s of a
   training step and the largest difference of the batch loss from the padded batch (exactness: every
   example must attend only to itself).

Data: the ``neo demo`` catalog (1,000 movies + 100 tags of the bundled ml-latest-small), its alignment
examples (short) and its every-position recommendation windows (about 110 tokens). Model: the demo's small
Llama (d = 64, 2 layers), one thread.

Run: ``python benchmarks/exp_hf_tools.py --json benchmarks/results/hf_tools.json``
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_info  # noqa: E402


def setup(seed: int = 0):
    from neo.evaluation import leave_one_out
    from neo.items.datasets import load_movielens
    from neo.items.embeddings import embed_catalog
    from neo.items.sids import build_sids
    from neo.lm.prompts import PromptBuilder
    from neo.lm.system import NeoSystem
    from neo.training.tasks import TaskBuilder
    from neo.training.train import small_model, stage0_corpus, train_tokenizer

    ds = load_movielens().subset(max_items=1000, max_other=100, seed=seed)
    cat = ds.catalog
    split = leave_one_out(ds.interactions)
    sids = build_sids(cat, embed_catalog(cat, "tfidf"), levels=2, codebook_size=32, seed=seed)
    tok = train_tokenizer(stage0_corpus(cat, seed=seed), vocab_size=1000)
    model = small_model(tok, hidden=64, layers=2, heads=2, tied=False, seed=seed)
    system = NeoSystem.build(model, tok, cat, sids)
    tb = TaskBuilder(PromptBuilder(system.tokenizer, system.vocab, system.index, cat), cat, seed=seed,
                     max_history=20)
    seqs = {ds.interactions.user_ids[u]: s for u, s in enumerate(split.train) if len(s)}
    return system, tb, seqs


def _train_steps(model, params, batches, opt, mask_hook=None) -> tuple[float, float]:
    model.train()
    t = time.perf_counter()
    loss = float("nan")
    for b in batches:
        out = model(**b, use_cache=False)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = float(out.loss.detach())
    return (time.perf_counter() - t) / len(batches), loss


def align_comparison(system, tb, steps: int, batch: int, rounds: int) -> dict:
    from peft import TrainableTokensConfig, get_peft_model

    from neo.training.train import CompletionCollator, RowMaskedAdamW, _embedding_params, encode_examples

    feats, _ = encode_examples(tb.alignment(), system.tokenizer, max_length=256)
    rng = np.random.default_rng(0)
    coll = CompletionCollator(system.tokenizer.pad_token_id)
    batches = [coll([feats[int(i)] for i in rng.choice(len(feats), batch, replace=False)]) for _ in range(steps)]
    b, e = system.vocab.token_begin, system.vocab.token_end
    base = copy.deepcopy(system.model)
    res: dict = {"steps": steps, "batch": batch, "rounds": rounds, "neo_row_masked": [], "peft_trainable_tokens": []}
    for _ in range(rounds):
        # neo: hook + row-masked AdamW on the full embedding matrices
        m = copy.deepcopy(base)
        for p in m.parameters():
            p.requires_grad_(False)
        emb = _embedding_params(m)
        hooks = []
        for p in emb:
            p.requires_grad_(True)

            def _mask(g, b=b, e=e):
                g = g.clone()
                g[:b] = 0
                g[e:] = 0
                return g

            hooks.append(p.register_hook(_mask))
        opt = RowMaskedAdamW(emb, row_ranges=[(p, b, e) for p in emb], lr=1e-3, betas=(0.9, 0.95),
                             weight_decay=0.01)
        s, loss = _train_steps(m, emb, batches, opt)
        for h in hooks:
            h.remove()
        same = all(torch.equal(p, q) if "embed" not in n and "lm_head" not in n else
                   (torch.equal(p[:b], q[:b]) and torch.equal(p[e:], q[e:]))
                   for (n, p), q in zip(m.named_parameters(), base.parameters()))
        res["neo_row_masked"].append({"s_per_step": s, "final_loss": loss, "other_weights_identical": same})
        # peft: trainable tokens on the input embeddings and the (untied) LM head
        m2 = copy.deepcopy(base)
        cfg = TrainableTokensConfig(token_indices=list(range(b, e)), target_modules=["embed_tokens", "lm_head"])
        pm = get_peft_model(m2, cfg)
        params = [p for p in pm.parameters() if p.requires_grad]
        opt2 = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.01)
        s2, loss2 = _train_steps(pm, params, batches, opt2)
        merged = pm.merge_and_unload()
        same2 = all(torch.equal(p, q) if "embed" not in n and "lm_head" not in n else
                    (torch.equal(p[:b], q[:b]) and torch.equal(p[e:], q[e:]))
                    for (n, p), q in zip(merged.named_parameters(), base.parameters()))
        res["peft_trainable_tokens"].append({"s_per_step": s2, "final_loss": loss2, "other_weights_identical": same2,
                                             "trainable_params": int(sum(p.numel() for p in params))})
    for k in ("neo_row_masked", "peft_trainable_tokens"):
        res[k + "_median_s_per_step"] = float(np.median([r["s_per_step"] for r in res[k]]))
    return res


def packing_comparison(system, feats_by_kind: dict, batch: int, steps: int, rounds: int, max_length: int) -> dict:
    from transformers import DataCollatorWithFlattening

    from neo.training.train import CompletionCollator

    pad = system.tokenizer.pad_token_id
    collators = {"padded": CompletionCollator(pad), "neo_packed": CompletionCollator(pad, pack_length=max_length),
                 "hf_flattening": DataCollatorWithFlattening()}
    out: dict = {}
    for kind, feats in feats_by_kind.items():
        rng = np.random.default_rng(1)
        groups = [[feats[int(i)] for i in rng.choice(len(feats), batch, replace=False)] for _ in range(steps)]
        model = copy.deepcopy(system.model)
        model.eval()
        # exactness: the loss of each batch under each collator vs padding (no dropout, same weights)
        diffs = {k: 0.0 for k in collators}
        with torch.no_grad():
            for g in groups[:3]:
                # use_cache=False as in training: with a cache transformers does not split packed rows
                ref = float(model(**collators["padded"]([dict(f) for f in g]), use_cache=False).loss)
                for k, c in collators.items():
                    bb = c([{kk: list(v) for kk, v in f.items()} for f in g])
                    bb = {kk: v for kk, v in bb.items() if kk in ("input_ids", "labels", "attention_mask",
                                                                   "position_ids")}
                    diffs[k] = max(diffs[k], abs(float(model(**bb, use_cache=False).loss) - ref))
        times: dict = {k: [] for k in collators}
        toks = sum(len(f["input_ids"]) for g in groups for f in g)
        for _ in range(rounds):
            for k, c in collators.items():
                m = copy.deepcopy(system.model)
                m.train()
                opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
                bl = []
                for g in groups:
                    bb = c([{kk: list(v) for kk, v in f.items()} for f in g])
                    bl.append({kk: v for kk, v in bb.items() if kk in ("input_ids", "labels", "attention_mask",
                                                                        "position_ids")})
                t = time.perf_counter()
                for bb in bl:
                    loss = m(**bb, use_cache=False).loss
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                times[k].append(time.perf_counter() - t)
        out[kind] = {"examples": len(feats), "mean_tokens": float(np.mean([len(f["input_ids"]) for f in feats])),
                     "batch": batch, "steps": steps, "rounds": rounds,
                     "tokens_per_s": {k: toks / float(np.median(v)) for k, v in times.items()},
                     "max_abs_loss_diff_vs_padded": diffs}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    system, tb, seqs = setup()
    from neo.training.train import encode_examples

    res = {"machine": machine_info(), "args": vars(a)}
    res["align"] = align_comparison(system, tb, a.steps, a.batch, a.rounds)
    print(json.dumps({k: v for k, v in res["align"].items() if "median" in k}), flush=True)
    align_feats, _ = encode_examples(tb.alignment(), system.tokenizer, max_length=256)
    rs = tb.rec_sequences(seqs, window=20)
    rec_feats, _ = encode_examples([rs[i] for i in range(0, len(rs), 4)], system.tokenizer, max_length=512)
    res["packing"] = packing_comparison(system, {"align": align_feats, "rec_windows": rec_feats}, a.batch, a.steps,
                                        a.rounds, 512)
    print(json.dumps(res["packing"], indent=1), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
