"""Staged training on Hugging Face ``Trainer``: stage 0 (from scratch), alignment, instruction tuning.

* :func:`stage0` -- trains a small Llama-style model from scratch on the catalog's text and the prompt
  templates. It stands in for pre-training in the embedded demo (no pre-trained weights ship here);
  with a real pre-trained model, skip it.
* :func:`align` -- stage 1: the backbone is frozen; only the input-embedding rows and LM-head rows of
  the SID tokens learn (alignment examples from :class:`neo.tasks.TaskBuilder`). Every other weight
  is bit-identical afterwards: gradients of the other rows are zeroed by a hook (so clipping sees
  only the SID rows) and :class:`RowMaskedAdamW` applies weight decay to the SID rows only (plain
  AdamW would decay every row of the matrix). Default lr 1e-3, cosine, AdamW(0.9, 0.95), weight
  decay 0.01, gradient clipping 1.0.
* :func:`instruct` -- stage 2: full fine-tuning or LoRA (``peft``) on a weighted mixture of tasks,
  default lr 1e-4 with the same optimiser settings.

All stages use completion-only loss (prompt tokens labelled ``-100``; stage 0 trains on every token),
optional sequence packing (several examples per row with restarting ``position_ids`` and no padding
mask, so transformers builds a block-diagonal causal mask and examples never attend to each other),
checkpointing (``output_dir`` + ``save_steps``) and exact resume (``resume_from_checkpoint``),
``tqdm`` progress bars, and return a :class:`TrainResult` with the loss history.

Scaling out: the functions only build a ``Trainer``, so the usual launchers work unchanged; the
command is ``neo train`` (:mod:`neo.cli.train`)::

    # this CPU
    neo train instruct --system out/neo_system --interactions ratings.csv --output out/instruct
    # 8 GPUs on one node (DDP)
    torchrun --nproc_per_node 8 -m neo.cli train instruct --system out/neo_system --interactions ratings.csv \\
        --output out/instruct --bf16
    # several nodes / DeepSpeed / FSDP: an accelerate config (or --deepspeed ds.json / --fsdp "full_shard")
    accelerate launch --config_file multi_node.yaml -m neo.cli train instruct ...

``--deepspeed`` and ``--fsdp`` are passed to ``TrainingArguments``; any ``TrainingArguments`` field
can also be given to the Python functions as ``training_args={...}``. ``align`` relies on per-row
masking of the embedding parameters, which holds for single-process and DDP runs (and DeepSpeed
ZeRO-1/2 with ``deepspeed`` not overriding the optimiser); with ZeRO-3 or FSDP use
``instruct(..., lora=True, lora_config={"trainable_token_indices": ...})`` style training instead.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from .tasks import ANSWER_SUFFIX, Example, TaskDataError

__all__ = [
    "TrainResult", "EncodedDataset", "CompletionCollator", "RowMaskedAdamW", "encode_examples", "mix_tasks",
    "pack_features", "align", "instruct", "stage0", "stage0_corpus", "train_tokenizer", "small_model",
]


# ============================================================================ data


@dataclass
class TrainResult:
    """What a training stage did.

    Attributes
    ----------
    loss_history : list of dict
        One entry per logging step: ``step``, ``loss``, ``learning_rate``, ``grad_norm``, ``epoch``.
    global_step : int
    train_loss : float
        Mean training loss over the run.
    runtime_s : float
    trainable_params : int
        Parameters the optimiser updated (for ``align``: SID rows only).
    num_examples : int
        Training rows (after mixing and packing).
    output_dir : str or None
        Where checkpoints went (None: a temporary directory, removed).
    model : the trained model (for LoRA: merged unless ``merge=False``).
    data_report : dict
        Examples truncated / skipped while encoding.
    """

    loss_history: list[dict[str, float]]
    global_step: int
    train_loss: float
    runtime_s: float
    trainable_params: int
    num_examples: int
    output_dir: str | None
    model: Any = None
    data_report: dict[str, int] = field(default_factory=dict)

    @property
    def losses(self) -> list[float]:
        """The logged losses in order."""
        return [h["loss"] for h in self.loss_history]


def encode_examples(examples: Iterable[Example], tokenizer: Any, *, max_length: int = 512,
                    add_bos: bool = True, add_eos: bool = True) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """Examples -> ``{"input_ids", "labels"}`` with prompt tokens labelled ``-100``.

    Prompts longer than the room left by the completion are cut from the left after BOS (the oldest
    history goes first); examples whose completion alone does not fit are skipped.

    Returns
    -------
    features, report
        ``report`` counts ``encoded``, ``truncated`` and ``skipped_too_long``.
    """
    feats: list[dict[str, list[int]]] = []
    rep = {"encoded": 0, "truncated": 0, "skipped_too_long": 0}
    for ex in examples:
        p, c = ex.encode(tokenizer, add_bos=add_bos, add_eos=add_eos)
        if not c:
            raise TaskDataError(f"example of task {ex.task!r} has an empty completion: {ex.meta}")
        if len(c) >= max_length:
            rep["skipped_too_long"] += 1
            continue
        room = max_length - len(c)
        if len(p) > room:
            keep_bos = 1 if (add_bos and p and p[0] == getattr(tokenizer, "bos_token_id", None)) else 0
            p = p[:keep_bos] + p[len(p) - (room - keep_bos):]
            rep["truncated"] += 1
        feats.append({"input_ids": p + c, "labels": [-100] * len(p) + list(c)})
        rep["encoded"] += 1
    return feats, rep


def pack_features(feats: Sequence[Mapping[str, list[int]]], max_length: int, *, seed: int = 0,
                  shuffle: bool = True) -> list[dict[str, list[int]]]:
    """Greedy packing (in an order shuffled with ``seed``, or as given) into rows of at most
    ``max_length`` tokens.

    Each row holds whole examples with ``position_ids`` restarting at 0 per example, which
    transformers turns into a block-diagonal causal mask when no attention mask is passed.
    """
    order = np.random.default_rng(seed).permutation(len(feats)) if shuffle else np.arange(len(feats))
    rows: list[dict[str, list[int]]] = []
    cur: dict[str, list[int]] = {"input_ids": [], "labels": [], "position_ids": []}
    for i in order:
        f = feats[int(i)]
        n = len(f["input_ids"])
        if cur["input_ids"] and len(cur["input_ids"]) + n > max_length:
            rows.append(cur)
            cur = {"input_ids": [], "labels": [], "position_ids": []}
        cur["input_ids"] += list(f["input_ids"])
        cur["labels"] += list(f["labels"])
        cur["position_ids"] += list(range(n))
    if cur["input_ids"]:
        rows.append(cur)
    return rows


class EncodedDataset(torch.utils.data.Dataset):
    """A list of encoded features as a map-style dataset."""

    def __init__(self, features: Sequence[Mapping[str, list[int]]]):
        self.features = list(features)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> Mapping[str, list[int]]:
        return self.features[i]


class CompletionCollator:
    """Right-pads features into a batch; padding is labelled ``-100``.

    Packed features (with ``position_ids``) get padding as its own pseudo-sequence (positions from 0)
    and no attention mask, so the block-diagonal packing mask stays in force.
    """

    def __init__(self, pad_token_id: int):
        self.pad = int(pad_token_id)

    def __call__(self, batch: Sequence[Mapping[str, list[int]]]) -> dict[str, torch.Tensor]:
        n = max(len(b["input_ids"]) for b in batch)
        packed = "position_ids" in batch[0]
        ids = torch.full((len(batch), n), self.pad, dtype=torch.long)
        labels = torch.full((len(batch), n), -100, dtype=torch.long)
        out: dict[str, torch.Tensor] = {}
        if packed:
            pos = torch.zeros((len(batch), n), dtype=torch.long)
        else:
            mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, b in enumerate(batch):
            m = len(b["input_ids"])
            ids[i, :m] = torch.as_tensor(b["input_ids"])
            labels[i, :m] = torch.as_tensor(b["labels"])
            if packed:
                pos[i, :m] = torch.as_tensor(b["position_ids"])
                pos[i, m:] = torch.arange(n - m)
            else:
                mask[i, :m] = 1
        out["input_ids"], out["labels"] = ids, labels
        if packed:
            out["position_ids"] = pos
        else:
            out["attention_mask"] = mask
        return out


def mix_tasks(pools: Mapping[str, Sequence[Any]], weights: Mapping[str, float] | None = None, *,
              num_examples: int | None = None, seed: int = 0) -> tuple[list[Any], dict[str, int]]:
    """Draw a task mixture: task ``t`` gets ``round(num_examples * w_t / sum w)`` items, taken from a
    seeded permutation of its pool (cycled when it needs more than the pool holds).

    Parameters
    ----------
    pools : task -> items
    weights : task -> weight (default 1 each; tasks missing from ``weights`` get 0)
    num_examples : total (default: the sum of the pool sizes)

    Returns
    -------
    items, counts per task
    """
    pools = {t: list(v) for t, v in pools.items()}
    if weights is None:
        weights = {t: 1.0 for t in pools}
    if bad := [t for t in weights if t not in pools]:
        raise ValueError(f"weights name task(s) {bad} with no examples; tasks present: {list(pools)}")
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"task weights must be >= 0, got {dict(weights)}")
    live = {t: float(weights.get(t, 0.0)) for t in pools if pools[t] and weights.get(t, 0.0) > 0}
    if not live:
        raise ValueError(f"no task has both examples and a positive weight (pools: "
                         f"{ {t: len(v) for t, v in pools.items()} }, weights: {dict(weights)})")
    total = sum(len(v) for v in pools.values()) if num_examples is None else int(num_examples)
    wsum = sum(live.values())
    rng = np.random.default_rng(seed)
    items: list[Any] = []
    counts: dict[str, int] = {}
    for t in sorted(live):
        n = int(round(total * live[t] / wsum))
        pool = pools[t]
        reps = -(-n // len(pool)) if n else 0
        idx = np.concatenate([rng.permutation(len(pool)) for _ in range(reps)])[:n] if reps else []
        items += [pool[int(i)] for i in idx]
        counts[t] = n
    order = rng.permutation(len(items))
    return [items[int(i)] for i in order], counts


# ============================================================================ alignment masking


class RowMaskedAdamW(torch.optim.AdamW):
    """AdamW that changes only rows ``[begin, end)`` of the listed parameters.

    Decoupled weight decay is applied to those rows only; the other rows get exactly zero gradient
    (also enforced here, should a hook be bypassed), so their Adam update is exactly zero and their
    values stay bit-identical.

    Parameters
    ----------
    params : iterable of parameters or param groups
    row_ranges : list of (parameter, begin, end)
    **kwargs : passed to ``torch.optim.AdamW`` (lr, betas, eps, weight_decay)
    """

    def __init__(self, params: Any, *, row_ranges: Sequence[tuple[torch.nn.Parameter, int, int]], **kwargs: Any):
        super().__init__(params, **kwargs)
        self._rows = {id(p): (int(b), int(e)) for p, b, e in row_ranges}

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        saved = []
        for g in self.param_groups:
            wd = g["weight_decay"]
            for p in g["params"]:
                rr = self._rows.get(id(p))
                if rr is None:
                    continue
                b, e = rr
                if p.grad is not None:
                    p.grad[:b].zero_()
                    p.grad[e:].zero_()
                if wd:
                    p[b:e].mul_(1.0 - g["lr"] * wd)
            if wd and any(id(p) in self._rows for p in g["params"]):
                saved.append((g, wd))
                g["weight_decay"] = 0.0  # decay done above, on the SID rows only
        try:
            return super().step(closure)
        finally:
            for g, wd in saved:
                g["weight_decay"] = wd


def _embedding_params(model: Any) -> list[torch.nn.Parameter]:
    params = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight is not params[0]:
        params.append(out.weight)
    return params


# ============================================================================ trainer plumbing


def _training_args(output_dir: str, *, epochs: float, max_steps: int | None, batch_size: int, lr: float,
                   weight_decay: float, warmup_steps: float, grad_accum: int, logging_steps: int,
                   save_steps: int | None, seed: int, progress: bool, extra: Mapping[str, Any] | None) -> Any:
    from transformers import TrainingArguments

    kw: dict[str, Any] = dict(
        output_dir=output_dir, num_train_epochs=float(epochs), max_steps=int(max_steps) if max_steps else -1,
        per_device_train_batch_size=int(batch_size), gradient_accumulation_steps=int(grad_accum),
        learning_rate=float(lr), lr_scheduler_type="cosine", warmup_steps=warmup_steps,
        weight_decay=float(weight_decay), adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0,
        logging_strategy="steps", logging_steps=int(logging_steps), logging_first_step=True,
        save_strategy="steps" if save_steps else "no", save_steps=int(save_steps) if save_steps else 500,
        seed=int(seed), data_seed=int(seed), disable_tqdm=not progress, report_to="none",
        remove_unused_columns=False, dataloader_num_workers=0, use_cache=False,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    kw.update(extra or {})
    return TrainingArguments(**kw)


def _run(model: Any, tokenizer: Any, features: list[dict[str, list[int]]], *, output_dir: str | os.PathLike | None,
         epochs: float, max_steps: int | None, batch_size: int, lr: float, weight_decay: float,
         warmup_steps: float, grad_accum: int, logging_steps: int, save_steps: int | None, seed: int,
         progress: bool, resume_from_checkpoint: str | bool | None, training_args: Mapping[str, Any] | None,
         optimizer_cls_and_kwargs: tuple[type, dict[str, Any]] | None, data_report: dict[str, int],
         trainable_params: int) -> TrainResult:
    from transformers import Trainer
    from transformers.trainer_callback import PrinterCallback

    if not features:
        raise TaskDataError(f"nothing to train on: no example survived encoding ({data_report})")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither a pad nor an EOS token to pad batches with")
    tmp = None
    if output_dir is None:
        if resume_from_checkpoint not in (None, False):
            raise ValueError("resume_from_checkpoint needs output_dir (where the checkpoints are)")
        tmp = tempfile.TemporaryDirectory(prefix="neo-train-")
        out, save_steps = tmp.name, None
    else:
        out = os.fspath(output_dir)
    args = _training_args(out, epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr,
                          weight_decay=weight_decay, warmup_steps=warmup_steps, grad_accum=grad_accum,
                          logging_steps=logging_steps, save_steps=save_steps, seed=seed, progress=progress,
                          extra=training_args)
    was_training = model.training
    trainer = Trainer(model=model, args=args, data_collator=CompletionCollator(pad),
                      train_dataset=EncodedDataset(features), processing_class=tokenizer,
                      optimizer_cls_and_kwargs=optimizer_cls_and_kwargs)
    if not progress:
        trainer.remove_callback(PrinterCallback)  # quiet: the history is returned instead
    try:
        res = trainer.train(resume_from_checkpoint=resume_from_checkpoint or None)
        hist = [{k: float(v) for k, v in h.items() if k in ("step", "loss", "learning_rate", "grad_norm", "epoch")}
                for h in trainer.state.log_history if "loss" in h]
        return TrainResult(
            loss_history=hist, global_step=int(trainer.state.global_step),
            train_loss=float(res.training_loss), runtime_s=float(res.metrics.get("train_runtime", 0.0)),
            trainable_params=trainable_params, num_examples=len(features),
            output_dir=None if tmp else out, model=model, data_report=data_report)
    finally:
        model.train(was_training)
        if tmp is not None:
            tmp.cleanup()


def _features(examples: Any, tokenizer: Any, *, weights: Mapping[str, float] | None, num_examples: int | None,
              max_length: int, packing: bool, seed: int) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    if isinstance(examples, Mapping):
        chosen, counts = mix_tasks(examples, weights, num_examples=num_examples, seed=seed)
    else:
        chosen = list(examples)
        if weights is not None or num_examples is not None:
            by_task: dict[str, list[Example]] = {}
            for e in chosen:
                by_task.setdefault(e.task, []).append(e)
            chosen, counts = mix_tasks(by_task, weights, num_examples=num_examples, seed=seed)
        else:
            counts = {}
    feats, rep = encode_examples(chosen, tokenizer, max_length=max_length)
    rep = dict(rep, **{f"task_{t}": n for t, n in counts.items()})
    if packing:
        feats = pack_features(feats, max_length, seed=seed)
        rep["packed_rows"] = len(feats)
    return feats, rep


# ============================================================================ stages


def align(model: Any, tokenizer: Any, vocab: Any, examples: Sequence[Example] | Mapping[str, Sequence[Example]], *,
          output_dir: str | os.PathLike | None = None, epochs: float = 1.0, max_steps: int | None = None,
          batch_size: int = 16, lr: float = 1e-3, weight_decay: float = 0.01, warmup_steps: float = 0.03,
          grad_accum: int = 1, max_length: int = 512, packing: bool = False, weights: Mapping[str, float] | None = None,
          logging_steps: int = 10, save_steps: int | None = None, resume_from_checkpoint: str | bool | None = None,
          seed: int = 0, progress: bool = True, training_args: Mapping[str, Any] | None = None) -> TrainResult:
    """Stage 1: learn the SID rows only, with the backbone frozen.

    Parameters
    ----------
    model : PreTrainedModel
        Adapted to ``vocab`` (:func:`neo.adapt_model`); trained in place.
    tokenizer : with the SID tokens installed.
    vocab : SidVocab
        Rows ``[vocab.token_begin, vocab.token_end)`` of the input embeddings and the LM head learn
        (one matrix when they are tied); nothing else changes, bit for bit.
    examples : list of Example, or task -> list
        Usually ``TaskBuilder.alignment()``.
    output_dir : where checkpoints go (None: a temporary directory, no checkpoints kept).
    epochs, max_steps, batch_size, grad_accum : the schedule (``max_steps`` wins over ``epochs``).
    lr, weight_decay, warmup_steps : AdamW(0.9, 0.95) with cosine decay; ``warmup_steps`` < 1 is a ratio.
    max_length, packing : sequence length and optional packing.
    weights : task mixing weights (see :func:`mix_tasks`).
    logging_steps, save_steps : loss logged / checkpoint saved every so many optimiser steps.
    resume_from_checkpoint : a checkpoint path, or True for the latest in ``output_dir``.
    seed : data order, dropout.
    progress : show tqdm bars.
    training_args : extra ``TrainingArguments`` fields (``bf16``, ``deepspeed``, ...).

    Returns
    -------
    TrainResult
    """
    from ..lm.adapt import check_model

    check_model(model, vocab)
    feats, rep = _features(examples, tokenizer, weights=weights, num_examples=None, max_length=max_length,
                           packing=packing, seed=seed)
    b, e = int(vocab.token_begin), int(vocab.token_end)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    emb = _embedding_params(model)
    hooks = []
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in emb:
            p.requires_grad_(True)

            def _mask(g: torch.Tensor, b: int = b, e: int = e) -> torch.Tensor:
                # zero the other rows before clipping and the optimiser see them
                g = g.clone()
                g[:b] = 0
                g[e:] = 0
                return g

            hooks.append(p.register_hook(_mask))
        opt = (RowMaskedAdamW, {"row_ranges": [(p, b, e) for p in emb], "lr": lr, "betas": (0.9, 0.95),
                                "eps": 1e-8, "weight_decay": weight_decay})
        return _run(model, tokenizer, feats, output_dir=output_dir, epochs=epochs, max_steps=max_steps,
                    batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                    grad_accum=grad_accum, logging_steps=logging_steps, save_steps=save_steps, seed=seed,
                    progress=progress, resume_from_checkpoint=resume_from_checkpoint, training_args=training_args,
                    optimizer_cls_and_kwargs=opt, data_report=rep,
                    trainable_params=(e - b) * sum(p.shape[1] for p in emb))
    finally:
        for h in hooks:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, True))


def instruct(model: Any, tokenizer: Any, examples: Sequence[Example] | Mapping[str, Sequence[Example]], *,
             weights: Mapping[str, float] | None = None, num_examples: int | None = None,
             output_dir: str | os.PathLike | None = None, epochs: float = 1.0, max_steps: int | None = None,
             batch_size: int = 16, lr: float = 1e-4, weight_decay: float = 0.01, warmup_steps: float = 0.03,
             grad_accum: int = 1, max_length: int = 512, packing: bool = False, lora: bool = False,
             lora_config: Mapping[str, Any] | None = None, merge: bool = True, logging_steps: int = 10,
             save_steps: int | None = None, resume_from_checkpoint: str | bool | None = None, seed: int = 0,
             progress: bool = True, training_args: Mapping[str, Any] | None = None) -> TrainResult:
    """Stage 2: multi-task instruction tuning, full or LoRA.

    Parameters
    ----------
    model, tokenizer : the aligned model (trained in place when not LoRA).
    examples : task -> list of Example (``TaskBuilder.instruction(split)``), or a flat list.
    weights : task -> mixing weight (default: each task in proportion to its size when ``examples``
        is a flat list without ``num_examples``, else equal weights; see :func:`mix_tasks`).
    num_examples : examples per epoch after mixing (default: all examples).
    lora : train LoRA adapters (``peft``) instead of every weight.
    lora_config : ``peft.LoraConfig`` fields (default ``r=16, lora_alpha=32, lora_dropout=0.05,
        target_modules="all-linear"``, plus ``trainable_token_indices`` for the embedding rows of any
        token ids given as ``sid_rows=(begin, end)``).
    merge : merge the adapters into the weights afterwards (``TrainResult.model`` is then a plain model).
    Other parameters as in :func:`align`.

    Returns
    -------
    TrainResult
        ``model`` is the trained model (merged for LoRA unless ``merge=False``).
    """
    feats, rep = _features(examples, tokenizer, weights=weights, num_examples=num_examples,
                           max_length=max_length, packing=packing, seed=seed)
    train_model = model
    if lora:
        try:
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ImportError("instruct(lora=True) needs peft: pip install peft") from None
        cfg = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear",
               "task_type": "CAUSAL_LM"}
        cfg.update(lora_config or {})
        if "sid_rows" in cfg:
            sb, se = cfg.pop("sid_rows")
            cfg["trainable_token_indices"] = list(range(int(sb), int(se)))
        train_model = get_peft_model(model, LoraConfig(**cfg))
    n_train = sum(p.numel() for p in train_model.parameters() if p.requires_grad)
    opt = (torch.optim.AdamW, {"lr": lr, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": weight_decay})
    res = _run(train_model, tokenizer, feats, output_dir=output_dir, epochs=epochs, max_steps=max_steps,
               batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
               grad_accum=grad_accum, logging_steps=logging_steps, save_steps=save_steps, seed=seed,
               progress=progress, resume_from_checkpoint=resume_from_checkpoint, training_args=training_args,
               optimizer_cls_and_kwargs=opt, data_report=rep, trainable_params=n_train)
    if lora and merge:
        res.model = train_model.merge_and_unload()
    return res


# ============================================================================ stage 0


def stage0_corpus(catalog: Any, *, fields: Sequence[str] | None = None, type_names: Sequence[str] | None = None,
                  seed: int = 0, max_items: int | None = None) -> list[str]:
    """Text standing in for pre-training data: every item's text and type, and every prompt template
    (all tasks, paraphrases and format hints) filled with item titles and attributes, so the model
    knows the words of the catalog and of the prompts before SID tokens exist.

    Parameters
    ----------
    catalog : Catalog
    fields : text fields to use (default: all)
    type_names : item types named in prompts (default: the catalog's)
    max_items : cap on items (sampled with ``seed``)
    """
    from ..lm.prompts import FORMAT_HINTS, TEMPLATES
    from .tasks import ALIGN_TEMPLATES, PROFILE_TEMPLATES, SEARCH_ATTR_TEMPLATES

    rng = np.random.default_rng(seed)
    n = len(catalog)
    rows = np.arange(n) if max_items is None or max_items >= n else np.sort(rng.choice(n, max_items, replace=False))
    fields = list(fields or catalog.text_fields)
    types = list(type_names or catalog.type_names)
    texts = [[catalog.text[f][int(r)] for f in fields] for r in rows]
    titles = [t[0] or catalog.ids[int(r)] for t, r in zip(texts, rows)]
    out = []
    for t, r in zip(texts, rows):
        body = ". ".join(s for s in t if s)
        out.append(f"{body}. It is a {catalog.type_of(int(r))}.")
    hints = [h for hs in FORMAT_HINTS.values() for h in hs]
    for i in range(len(rows)):
        words = [w for w in ", ".join(texts[i][1:]).split(", ") if w][:3] or [titles[i]]
        typ = types[int(rng.integers(len(types)))]
        hist = ", ".join(titles[int(j)] for j in rng.integers(len(rows), size=3))
        task = list(TEMPLATES)[i % len(TEMPLATES)]
        tpl = TEMPLATES[task][int(rng.integers(len(TEMPLATES[task])))]
        s = tpl.replace("{history_clause}", f"History: {hist}. ").format(
            user="", history=hist, types=typ + "s", k=int(rng.integers(1, 11)), query=" ".join(words[:2]),
            item=titles[i], instruction="Explain why.", fmt=hints[int(rng.integers(len(hints)))])
        answer = (f" {titles[i]}" if task in ("recommend", "search", "explain")
                  else " " + PROFILE_TEMPLATES[i % len(PROFILE_TEMPLATES)].format(attrs=", ".join(words)))
        out.append(s + ANSWER_SUFFIX + answer)
        at = list(ALIGN_TEMPLATES)[i % len(ALIGN_TEMPLATES)]
        out.append(ALIGN_TEMPLATES[at][i % len(ALIGN_TEMPLATES[at])].format(item=titles[i], text=titles[i])
                   + ANSWER_SUFFIX + f" {titles[i]}")
        q = SEARCH_ATTR_TEMPLATES[i % len(SEARCH_ATTR_TEMPLATES)].format(a=words[0], b=words[-1], types=typ + "s")
        out.append(f"Find {typ}s matching: {q}.{ANSWER_SUFFIX} {titles[i]}")
    order = rng.permutation(len(out))
    return [out[int(i)] for i in order]


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 4000, min_frequency: int = 2) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained locally (specials ``<pad> <s> </s> <unk>``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=int(vocab_size), min_frequency=int(min_frequency),
                                  special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def small_model(tokenizer: Any, *, hidden: int = 128, layers: int = 4, heads: int = 4, intermediate: int | None = None,
                max_positions: int = 1024, tied: bool = True, seed: int = 0) -> Any:
    """A randomly initialised small Llama for ``tokenizer`` (the stage-0 architecture)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate or 4 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=max_positions, tie_word_embeddings=tied,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    m = LlamaForCausalLM(cfg)
    m.generation_config.pad_token_id = tokenizer.pad_token_id
    m.generation_config.eos_token_id = tokenizer.eos_token_id
    m.generation_config.bos_token_id = tokenizer.bos_token_id
    return m


def stage0(catalog: Any = None, tokenizer: Any = None, model: Any = None, *, texts: Sequence[str] | None = None,
           vocab_size: int = 4000, hidden: int = 128, layers: int = 4, block_size: int = 256,
           output_dir: str | os.PathLike | None = None, epochs: float = 1.0, max_steps: int | None = None,
           batch_size: int = 16, lr: float = 1e-3, weight_decay: float = 0.01, warmup_steps: float = 0.05,
           logging_steps: int = 10, save_steps: int | None = None, resume_from_checkpoint: str | bool | None = None,
           seed: int = 0, progress: bool = True, training_args: Mapping[str, Any] | None = None,
           ) -> tuple[Any, Any, TrainResult]:
    """Stage 0: train a small model from scratch (language modelling on every token), standing in for
    pre-training in the demo. With a real pre-trained model, skip this stage.

    Parameters
    ----------
    catalog : Catalog, optional
        Source of :func:`stage0_corpus` (needed unless ``texts`` is given).
    tokenizer : optional
        Default: :func:`train_tokenizer` on the corpus with ``vocab_size``.
    model : optional
        Default: :func:`small_model` with ``hidden``/``layers``.
    texts : the corpus (default :func:`stage0_corpus(catalog)`).
    block_size : documents are packed into rows of this many tokens (each attends only to itself).
    Other parameters as in :func:`align`.

    Returns
    -------
    model, tokenizer, TrainResult
    """
    if texts is None:
        if catalog is None:
            raise ValueError("stage0 needs a catalog or texts=")
        texts = stage0_corpus(catalog, seed=seed)
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("stage0 corpus is empty")
    if tokenizer is None:
        tokenizer = train_tokenizer(texts, vocab_size=vocab_size)
    if model is None:
        model = small_model(tokenizer, hidden=hidden, layers=layers, max_positions=max(1024, block_size), seed=seed)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    feats = []
    for ids in enc:
        ids = ([bos] if bos is not None else []) + list(ids)[: block_size - 2] + ([eos] if eos is not None else [])
        feats.append({"input_ids": ids, "labels": list(ids)})
    rows = pack_features(feats, block_size, seed=seed)
    res = _run(model, tokenizer, rows, output_dir=output_dir, epochs=epochs, max_steps=max_steps,
               batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps, grad_accum=1,
               logging_steps=logging_steps, save_steps=save_steps, seed=seed, progress=progress,
               resume_from_checkpoint=resume_from_checkpoint, training_args=training_args,
               optimizer_cls_and_kwargs=(torch.optim.AdamW, {"lr": lr, "betas": (0.9, 0.95), "eps": 1e-8,
                                                             "weight_decay": weight_decay}),
               data_report={"documents": len(feats), "packed_rows": len(rows)},
               trainable_params=sum(p.numel() for p in model.parameters()))
    return model, tokenizer, res
