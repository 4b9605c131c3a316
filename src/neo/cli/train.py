"""``neo train [align|instruct|all]``: staged training of a saved neo system on Hugging Face ``Trainer``.

Without a stage (``all``): alignment first when the backbone is pre-trained (the new SID rows learn while
the rest stays frozen), then the instruction stage; a backbone trained from scratch (``neo build`` without
``--model``) skips alignment, since the instruction stage trains every weight anyway.

neo's own options come first; any Hugging Face ``TrainingArguments`` field may follow the stage, with its
own name (``--gradient_checkpointing true``, ``--report_to tensorboard``, ``--bf16``, ``--torch_compile``,
...; ``neo train --help-training-args`` lists them all). They are parsed by ``HfArgumentParser`` only when
given, so ``neo train --help`` stays instant. Fields neo also sets (schedule, learning rate, batch size,
seed, output directory) map onto neo's options, and a field given explicitly wins.

Runs unchanged under the usual launchers, for example
``torchrun --nproc_per_node 8 -m neo.cli train instruct ...`` or
``accelerate launch -m neo.cli train instruct ...`` (see :mod:`neo.training.train`).

``instruct`` trains for ``--epochs`` with early stopping on validation HR/NDCG@10 (constrained beam
search over ``--valid-users`` validation users: their second-to-last event, never a test target), keeps
the best weights, and stops at ``--max-minutes``. The trained system goes to ``OUTPUT/system`` and a
log (loss curve, validation history, tokens/s, share of tokens with loss) to ``OUTPUT/train_log.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Sequence

from ._data_args import add_interaction_args

__all__ = ["add_parser", "run", "parse_training_args"]

HELP = "staged training of a saved system (align: new SID rows only; instruct: the tasks)"

#: TrainingArguments fields that are neo options (given with the HF name, they set the neo option)
HF_TO_NEO = {"num_train_epochs": "epochs", "max_steps": "max_steps", "per_device_train_batch_size": "batch_size",
             "learning_rate": "lr", "seed": "seed", "save_steps": "save_steps", "output_dir": "output"}


def _training_args_parser() -> Any:
    """``HfArgumentParser(TrainingArguments)`` under the name ``neo train`` (imports transformers)."""
    from transformers import HfArgumentParser, TrainingArguments

    return HfArgumentParser(TrainingArguments, prog="neo train",
                            description="Hugging Face TrainingArguments accepted by `neo train` after the stage "
                                        "(neo's own options are listed by `neo train --help`).")


def parse_training_args(argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Parse ``TrainingArguments`` options out of ``argv``.

    Returns
    -------
    given, rest
        The fields given explicitly (converted by ``HfArgumentParser``) and the arguments it did not
        recognise.
    """
    hf = _training_args_parser()
    for action in hf._actions:
        if action.dest != "help":
            action.default = argparse.SUPPRESS  # keep only what the user gave
            action.required = False
    ns, rest = hf.parse_known_args(list(argv))
    return vars(ns), rest


class _HelpTrainingArgs(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: Any = None) -> None:
        _training_args_parser().print_help()
        parser.exit()


def _train_parser_class(base: type) -> type:
    class TrainParser(base):  # type: ignore[misc, valid-type]
        """``neo train``'s parser: what argparse leaves over goes to ``HfArgumentParser(TrainingArguments)``."""

        def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
            ns, rest = super().parse_known_args(args, namespace)
            given: dict[str, Any] = {}
            if rest:
                given, rest = parse_training_args(rest)
            ns.training_args = given
            return ns, rest

    return TrainParser


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse ``type`` that converts and range-checks a value, naming what was expected."""
    def parse(text: str) -> Any:
        try:
            x = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(x):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text}")
        return x

    return parse


_positive_int = _checked(int, lambda n: n >= 1, "a whole number >= 1")
_unit_interval = _checked(float, lambda x: 0.0 < x < 1.0, "a number between 0 and 1 (exclusive)")
_smoothing = _checked(float, lambda x: x == 0.0 or 0.0 < x < 1.0, "0 (off) or a number between 0 and 1 (exclusive)")


def add_parser(subparsers: Any, parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """Register ``neo train`` on an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser("train", help=HELP, parents=list(parents), description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.__class__ = _train_parser_class(type(p))
    p.add_argument("stage", nargs="?", default="all", choices=["align", "instruct", "all"],
                   help="align: train only the SID rows of the embeddings and LM head; instruct: the task mixture; "
                        "all (default): align when the backbone is pre-trained, then instruct")
    p.add_argument("--system", required=True, help="a saved neo system directory (NeoSystem.save)")
    add_interaction_args(p, help="user-item interactions (needed by instruct), items named as in the system's "
                                 "catalog; CSV, TSV, JSONL, JSON or Parquet, read as neo build and neo eval read them")
    p.add_argument("--split", default="leave_one_out", choices=["leave_one_out", "temporal"],
                   help="how interactions are split so that validation/test targets never train (default "
                        "leave_one_out)")
    p.add_argument("--output", required=True, help="directory for checkpoints, the trained system (output/system) "
                                                   "and train_log.json")
    p.add_argument("--epochs", type=float, default=None,
                   help="training epochs (default: 1 for align, 20 for instruct, which stops earlier when "
                        "validation stops improving)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (overrides --epochs)")
    p.add_argument("--max-minutes", type=float, help="time budget of the stage in minutes (the best validated "
                                                     "weights are kept)")
    p.add_argument("--batch-size", type=int, default=16, help="examples per device per step (default 16)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: by stage and backbone, see "
                                            "neo.training.train.HPARAMS)")
    p.add_argument("--backbone", default="auto", choices=["auto", "scratch", "pretrained"],
                   help="picks the learning-rate defaults: a model trained from scratch needs a higher rate "
                        "(default auto: from the model config)")
    p.add_argument("--window", type=int, default=20,
                   help="history items each recommendation target is predicted from (default 20)")
    p.add_argument("--valid-users", type=int, default=300,
                   help="validation users for early stopping (instruct; 0: no validation, default 300)")
    p.add_argument("--patience", type=int, default=3,
                   help="validations without improvement before stopping (default 3)")
    p.add_argument("--num-beams", type=int, default=20, help="beams of the validation's constrained beam search "
                                                             "(default 20)")
    p.add_argument("--max-length", type=int, default=512, help="truncate examples to this many tokens (default 512)")
    p.add_argument("--packing", action="store_true", help="pack several examples per row (exact, no padding)")
    p.add_argument("--pack-length", type=_positive_int, metavar="N",
                   help="pack into rows of N tokens (implies --packing; default --max-length; about 2-3x a "
                        "typical example is cheapest)")
    p.add_argument("--average-decay", type=_unit_interval, metavar="D",
                   help="instruct: validate, keep and save an exponential moving average of the weights (decay "
                        "per step, e.g. 0.999)")
    p.add_argument("--sid-smoothing", type=_smoothing, default=0.0, metavar="EPS",
                   help="instruct: label smoothing kept inside each target code's band (default 0: off)")
    p.add_argument("--lora", action="store_true", help="instruct with LoRA adapters (needs peft) instead of full "
                                                       "fine-tuning")
    p.add_argument("--save-steps", type=int, default=500, help="checkpoint every N steps (default 500)")
    p.add_argument("--logging-steps", type=int, default=10, help="log the loss every N steps (default 10)")
    p.add_argument("--resume", action="store_true", help="resume from the latest checkpoint in --output")
    p.add_argument("--bf16", action="store_true", help="bfloat16 mixed precision")
    p.add_argument("--deepspeed", help="DeepSpeed JSON config (passed to TrainingArguments)")
    p.add_argument("--fsdp", help="TrainingArguments.fsdp, e.g. 'full_shard auto_wrap'")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (validation lines still print)")
    p.add_argument("--help-training-args", action=_HelpTrainingArgs,
                   help="list the Hugging Face TrainingArguments options neo train also accepts, and exit")
    p.set_defaults(run=run, training_args={})
    return p


def _load_split(a: argparse.Namespace, catalog: Any) -> Any:
    """The interactions of ``--interactions`` split so that validation and test targets never train."""
    from ..training.tasks import load_interactions, split_interactions
    from ._data_args import describe_interactions, load_interactions as read_interactions_file

    events = read_interactions_file(a, catalog)
    print(describe_interactions(events))
    inter = load_interactions(events.as_events(), catalog)
    return split_interactions(inter, a.split, seed=a.seed)


def _validation(system: Any, split: Any, a: argparse.Namespace) -> Any:
    """Early stopping on HR/NDCG@10 of ``--valid-users`` validation cases (None when there are none)."""
    import numpy as np

    from ..evaluation.protocols import EvalCases
    from ..evaluation.runners import neo_validation_fn
    from ..training.train import Validation

    cases = list(split.valid)
    if a.valid_users <= 0 or not cases:
        return None
    rng = np.random.default_rng(a.seed)
    pick = np.sort(rng.choice(len(cases), size=min(a.valid_users, len(cases)), replace=False))
    chosen = [cases[int(i)] for i in pick]
    ev = EvalCases(np.arange(len(chosen), dtype=np.int64),
                   [np.asarray(c.history, dtype=np.int64)[-a.window:] for c in chosen],
                   np.asarray([c.target for c in chosen], dtype=np.int64))
    types = {system.catalog.type_of(int(t)) for t in ev.targets}
    fn = neo_validation_fn(system, ev, target_type=types.pop() if len(types) == 1 else None,
                           num_beams=a.num_beams, max_history=a.window)
    return Validation(fn, metric="ndcg@10", patience=a.patience)


def run(a: argparse.Namespace) -> int:
    """``neo train`` with the parsed options: load the system, build the tasks, train, save ``output/system``."""
    from ..lm.prompts import PromptBuilder
    from ..lm.system import NeoSystem
    from ..training.tasks import TaskBuilder
    from ..core.errors import NeoDataError
    from ..training.train import align, backbone_kind, instruct

    hf = dict(getattr(a, "training_args", {}) or {})
    for k, neo_name in HF_TO_NEO.items():
        if k in hf:
            setattr(a, neo_name, hf.pop(k))
    if a.stage in ("instruct", "all") and not a.interactions:
        raise NeoDataError(f"neo train {a.stage} needs --interactions (the user-item events to train on)")
    system = NeoSystem.load(a.system)
    if system.catalog is None:
        raise NeoDataError(f"{a.system}: the system holds no catalog, and the task builders need one; "
                           "build it with `neo build --catalog ...`")
    tb = TaskBuilder(PromptBuilder(system.tokenizer, system.vocab, system.index, system.catalog), system.catalog,
                     seed=a.seed, max_history=a.window)
    extra: dict[str, Any] = {}
    if a.bf16:
        extra["bf16"] = True
    if a.deepspeed:
        extra["deepspeed"] = a.deepspeed
    if a.fsdp:
        extra["fsdp"] = a.fsdp
    extra.update(hf)
    common = dict(output_dir=a.output, max_steps=a.max_steps, batch_size=a.batch_size, lr=a.lr,
                  max_length=a.max_length, packing=a.packing, pack_length=a.pack_length, save_steps=a.save_steps,
                  logging_steps=a.logging_steps, resume_from_checkpoint=True if a.resume else None, seed=a.seed,
                  training_args=extra, max_minutes=a.max_minutes, backbone=a.backbone, progress=not a.no_progress)
    stages = [a.stage] if a.stage != "all" else (
        ["align", "instruct"] if backbone_kind(system.model, a.backbone) == "pretrained" else ["instruct"])
    if "align" in stages:
        where = {"output_dir": os.path.join(a.output, "align")} if len(stages) > 1 else {}
        res = align(system.model, system.tokenizer, system.vocab, tb.alignment(),
                    epochs=(a.epochs if a.stage == "align" else None) or 1.0, **{**common, **where})
        if len(stages) > 1:
            print(f"align: {res.global_step} steps, train loss {res.train_loss:.4f}")
    if "instruct" in stages:
        split = _load_split(a, system.catalog)
        res = instruct(system.model, system.tokenizer, tb.instruction(split, window=a.window), lora=a.lora,
                       epochs=a.epochs or 20.0, validation=_validation(system, split, a),
                       average_decay=a.average_decay, sid_smoothing=a.sid_smoothing, vocab=system.vocab, **common)
        system.model = res.model
    if int(os.environ.get("RANK", "0")) == 0:
        system.save(os.path.join(a.output, "system"))
        log = {"stage": "+".join(stages), "global_step": res.global_step, "train_loss": res.train_loss,
               "loss_history": res.loss_history, "eval_history": res.eval_history, "best": res.best,
               "stop_reason": res.stop_reason, "tokens": res.tokens, "loss_tokens": res.loss_tokens,
               "tokens_per_s": res.tokens_per_s, "loss_token_share": res.loss_token_share,
               "runtime_s": res.runtime_s, "world_size": int(os.environ.get("WORLD_SIZE", "1")),
               "data_report": res.data_report}
        with open(os.path.join(a.output, "train_log.json"), "w") as f:
            json.dump(log, f, indent=1, default=float)
        best = f"; best {res.best}" if res.best else ""
        print(f"{stages[-1]}: {res.global_step} steps ({res.stop_reason}), train loss {res.train_loss:.4f}, "
              f"{res.tokens_per_s:,.0f} tokens/s, {res.loss_token_share:.0%} of tokens with loss{best}; "
              f"saved {a.output}/system", file=sys.stdout)
    return 0
