"""``neo train {align,instruct}``: staged training of a saved neo system on Hugging Face ``Trainer``.

Runs unchanged under the usual launchers, for example
``torchrun --nproc_per_node 8 -m neo.cli train instruct ...`` or
``accelerate launch -m neo.cli train instruct ...`` (see :mod:`neo.training.train`).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Sequence

__all__ = ["add_parser", "run"]

HELP = "staged training of a saved system (align: new SID rows only; instruct: the tasks)"


def add_parser(subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """Register ``neo train`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser("train", help=HELP, parents=list(parents), description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=["align", "instruct"],
                   help="align: train only the SID rows of the embeddings and LM head; instruct: the task mixture")
    p.add_argument("--system", required=True, help="a saved neo system directory (NeoSystem.save)")
    p.add_argument("--interactions", help="CSV with user, item and timestamp columns (needed by instruct)")
    p.add_argument("--user-col", default="userId", help="user column of --interactions (default userId)")
    p.add_argument("--item-col", default="movieId", help="item column of --interactions (default movieId)")
    p.add_argument("--time-col", default="timestamp", help="time column of --interactions (default timestamp)")
    p.add_argument("--item-id", default="movie:{}",
                   help="format string turning the item column into catalog ids (default 'movie:{}')")
    p.add_argument("--split", default="leave_one_out", choices=["leave_one_out", "temporal"],
                   help="how interactions are split so that validation/test targets never train (default "
                        "leave_one_out)")
    p.add_argument("--output", required=True, help="directory for checkpoints and the trained system (output/system)")
    p.add_argument("--epochs", type=float, default=1.0, help="training epochs (default 1)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=16, help="examples per device per step (default 16)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: 1e-3 for align, 1e-4 for instruct)")
    p.add_argument("--max-length", type=int, default=512, help="truncate examples to this many tokens (default 512)")
    p.add_argument("--packing", action="store_true", help="pack several examples per row (exact, no padding)")
    p.add_argument("--lora", action="store_true", help="instruct with LoRA adapters (needs peft) instead of full "
                                                       "fine-tuning")
    p.add_argument("--save-steps", type=int, default=500, help="checkpoint every N steps (default 500)")
    p.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in --output")
    p.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision")
    p.add_argument("--deepspeed", help="DeepSpeed JSON config (passed to TrainingArguments)")
    p.add_argument("--fsdp", help="TrainingArguments.fsdp, e.g. 'full_shard auto_wrap'")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(run=run)
    return p


def run(a: argparse.Namespace) -> int:
    """``neo train`` with the parsed options: load the system, build the tasks, train, save ``output/system``."""
    import pandas as pd

    from ..lm.prompts import PromptBuilder
    from ..lm.system import NeoSystem
    from ..training.tasks import TaskBuilder, load_interactions, split_interactions
    from ..training.train import align, instruct

    system = NeoSystem.load(a.system)
    if system.catalog is None:
        raise SystemExit(f"neo train: error: {a.system} holds no catalog; task builders need one")
    tb = TaskBuilder(PromptBuilder(system.tokenizer, system.vocab, system.index, system.catalog), system.catalog,
                     seed=a.seed)
    extra: dict[str, Any] = {}
    if a.bf16:
        extra["bf16"] = True
    if a.deepspeed:
        extra["deepspeed"] = a.deepspeed
    if a.fsdp:
        extra["fsdp"] = a.fsdp
    common = dict(output_dir=a.output, epochs=a.epochs, max_steps=a.max_steps, batch_size=a.batch_size,
                  max_length=a.max_length, packing=a.packing, save_steps=a.save_steps,
                  resume_from_checkpoint=True if a.resume else None, seed=a.seed, training_args=extra)
    if a.stage == "align":
        res = align(system.model, system.tokenizer, system.vocab, tb.alignment(), lr=a.lr or 1e-3, **common)
    else:
        if not a.interactions:
            raise SystemExit("neo train: error: instruct needs --interactions")
        inter = load_interactions(pd.read_csv(a.interactions), system.catalog, user_col=a.user_col,
                                  item_col=a.item_col, time_col=a.time_col, item_id=a.item_id, on_missing="skip")
        split = split_interactions(inter, a.split, seed=a.seed)
        res = instruct(system.model, system.tokenizer, tb.instruction(split), lr=a.lr or 1e-4, lora=a.lora, **common)
        system.model = res.model
    if int(os.environ.get("RANK", "0")) == 0:
        system.save(os.path.join(a.output, "system"))
        print(f"{a.stage}: {res.global_step} steps, train loss {res.train_loss:.4f}; saved {a.output}/system")
    return 0
