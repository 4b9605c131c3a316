"""Staged training on Hugging Face ``Trainer``: stage 0 (from scratch), alignment, instruction tuning.

* :func:`stage0` -- trains a small Llama-style model from scratch on the catalog's text and the prompt
  templates. It stands in for pre-training in the embedded demo (no pre-trained weights ship here);
  with a real pre-trained model, skip it.
* :func:`align` -- stage 1: the backbone is frozen; only the input-embedding rows and LM-head rows of
  the SID tokens learn (alignment examples from :class:`neo.tasks.TaskBuilder`). Every other weight
  is bit-identical afterwards: by default (untied heads) through peft's trainable tokens (a trainable
  delta for the SID rows only), else by zeroing the other rows' gradients with a hook (so clipping sees only
  the SID rows) and :class:`RowMaskedAdamW`, which applies weight decay to the SID rows only (plain
  AdamW would decay every row of the matrix).
* :func:`instruct` -- stage 2: full fine-tuning or LoRA (``peft``) on a weighted mixture of tasks,
  usually led by the every-position ``recommend`` task (:meth:`TaskBuilder.rec_sequences`), for
  epochs, with early stopping on a validation metric (:class:`Validation`, e.g. HR/NDCG@10 of
  constrained beam search on validation users) that keeps the best weights.

Data is built and encoded lazily: :class:`MixtureDataset` holds the task pools (lists or lazy
sequences such as :class:`neo.training.tasks.RecSequences`) and a per-epoch schedule of
``(task, index)`` pairs, and renders + tokenises an example only when the data loader asks for it,
so training starts at once whatever the size of the data. Each epoch draws every task's share afresh
(cycling through its pool), shuffled with the seed; the schedule is read in order
(``train_sampling_strategy="sequential"``), so a run is exactly reproducible and resumable, and under
``torchrun`` the ranks split every global batch the way one process would see it.

Defaults that depend on the backbone (:data:`HPARAMS`, chosen with ``backbone="auto"`` from
``model.config.neo_backbone``, which :func:`small_model` sets to ``"scratch"``):

=========  ======================  ==========================================================
stage      pre-trained backbone    trained from scratch (the demo's small models)
=========  ======================  ==========================================================
align      lr 1e-3, warmup 3%      lr 1e-3, warmup 3%
instruct   lr 1e-4, warmup 3%,     lr 1e-3, warmup 5% (at most an epoch), no weight decay (chosen
           weight decay 0.01       on validation NDCG@10, d = 64: on ml-100k 3e-3 plateaued at
                                   0.078 where 1e-3 reached 0.088; on the demo catalog weight
                                   decay 0.1 and 0 reach the same validation NDCG@10 (0.080) and
                                   0 tested better (0.066 vs 0.051); 1e-4 barely moves a random
                                   model; see ``benchmarks/results/rec.md``)
=========  ======================  ==========================================================

All stages use a cosine schedule decaying to 10% of the peak (``cosine_with_min_lr``; with a time budget the
decay is re-aimed every 25 steps at the step where the budget will end, so a stage cut by its budget still
finishes its decay), warmup of at most one epoch, AdamW(0.9, 0.95), gradient clipping 1.0, completion-only
loss (prompt and context tokens labelled ``-100``; stage 0 trains on every token), optional packing (several
examples per row with restarting ``position_ids`` and no padding mask, so transformers builds a block-diagonal
causal mask and examples never attend to each other; ``pack_length`` sets the row length), optional weight
averaging for ``instruct`` (``average_decay``: validation, early stopping and the returned model use an
exponential moving average of the weights) and SID-band label smoothing (``sid_smoothing``), checkpointing
(``output_dir`` + ``save_steps``) and exact resume (``resume_from_checkpoint``), a time budget
(``max_minutes``: the stage stops at the next step after it, keeping the best weights when it validates), and
progress a person can read: one ``tqdm`` bar per stage with loss, learning rate and tokens/s, and one line per
validation. They return a :class:`TrainResult` with the loss history, validation history, tokens/s and the
share of tokens that carried loss.

Scaling out: the functions only build a ``Trainer``, so the usual launchers work unchanged; the
command is ``neo train`` (:mod:`neo.cli.train`), which also takes any ``TrainingArguments`` field::

    # this CPU
    neo train instruct --system out/neo_system --interactions ratings.csv --output out/instruct
    # 8 GPUs on one node (DDP)
    torchrun --nproc_per_node 8 -m neo.cli train instruct --system out/neo_system --interactions ratings.csv \\
        --output out/instruct --bf16 --gradient_checkpointing true
    # several nodes / DeepSpeed / FSDP: an accelerate config (or --deepspeed ds.json / --fsdp "full_shard")
    accelerate launch --config_file multi_node.yaml -m neo.cli train instruct ...

``tests/test_torchrun.py`` runs ``neo train`` under ``torchrun --nproc_per_node 2`` (gloo, CPU) and
checks the loss curve against one process with the same global batch. Python callers pass any
``TrainingArguments`` field as ``training_args={...}``. ``align`` relies on per-row masking of the
embedding parameters, which holds for single-process and DDP runs (and DeepSpeed ZeRO-1/2 with
``deepspeed`` not overriding the optimiser); with ZeRO-3 or FSDP use
``instruct(..., lora=True, lora_config={"sid_rows": (begin, end)})`` (peft's
``trainable_token_indices``) instead.
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from .tasks import ANSWER_SUFFIX, Example, TaskDataError

__all__ = [
    "TrainResult", "EncodedDataset", "MixtureDataset", "CompletionCollator", "RowMaskedAdamW", "SidBandSmoothing",
    "Validation", "WeightAverage", "HPARAMS", "backbone_kind", "encode_examples", "mix_tasks", "pack_features",
    "align", "instruct", "stage0", "stage0_corpus", "train_tokenizer", "small_model",
]

#: Defaults per (stage, backbone): peak learning rate, warmup (ratio of the steps) and weight decay.
#: ``scratch`` values were chosen on MovieLens validation HR@10 (benchmarks/results/rec.md).
HPARAMS: dict[tuple[str, str], dict[str, float]] = {
    ("align", "pretrained"): {"lr": 1e-3, "warmup": 0.03, "weight_decay": 0.01},
    ("align", "scratch"): {"lr": 1e-3, "warmup": 0.03, "weight_decay": 0.01},
    ("instruct", "pretrained"): {"lr": 1e-4, "warmup": 0.03, "weight_decay": 0.01},
    ("instruct", "scratch"): {"lr": 1e-3, "warmup": 0.05, "weight_decay": 0.0},
    ("stage0", "scratch"): {"lr": 1e-3, "warmup": 0.05, "weight_decay": 0.01},
}
MIN_LR_RATE = 0.1  # cosine decays to this fraction of the peak


def backbone_kind(model: Any, backbone: str = "auto") -> str:
    """``"scratch"`` or ``"pretrained"``: ``backbone`` itself unless ``"auto"``, then the model's
    ``config.neo_backbone`` (set by :func:`small_model`), else ``"pretrained"``."""
    if backbone not in ("auto", "scratch", "pretrained"):
        raise ValueError(f"backbone must be 'auto', 'scratch' or 'pretrained', got {backbone!r}")
    if backbone != "auto":
        return backbone
    cfg = getattr(model, "config", None)
    base = getattr(model, "base_model", None)
    if getattr(cfg, "neo_backbone", None) is None and base is not None and base is not model:
        cfg = getattr(getattr(base, "model", base), "config", cfg)  # peft wrappers
    return "scratch" if getattr(cfg, "neo_backbone", None) == "scratch" else "pretrained"


def _hp(stage: str, model: Any, backbone: str, lr: float | None, warmup: float | None,
        weight_decay: float | None) -> tuple[float, float, float]:
    d = HPARAMS[(stage, backbone_kind(model, backbone))]
    return (float(d["lr"] if lr is None else lr), float(d["warmup"] if warmup is None else warmup),
            float(d["weight_decay"] if weight_decay is None else weight_decay))


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
        Training rows (after mixing and packing; every epoch counted).
    output_dir : str or None
        Where checkpoints went (None: a temporary directory, removed).
    model : the trained model (for LoRA: merged unless ``merge=False``; with validation: the best weights).
    data_report : dict
        Examples per task and epoch, truncated / skipped while encoding.
    tokens, loss_tokens : int
        Tokens the model read (padding excluded) and tokens that carried loss, over all processes.
    tokens_per_s : float
        ``tokens`` per second of training (validation time excluded).
    eval_history : list of dict
        One entry per validation: ``step``, ``epoch``, ``seconds`` and the metrics.
    best : dict or None
        The validation entry whose weights were kept.
    stop_reason : str
        ``"completed"``, ``"early stopping"`` or ``"time budget"``.
    """

    loss_history: list[dict[str, float]]
    global_step: int
    train_loss: float
    runtime_s: float
    trainable_params: int
    num_examples: int
    output_dir: str | None
    model: Any = None
    data_report: dict[str, Any] = field(default_factory=dict)
    tokens: int = 0
    loss_tokens: int = 0
    tokens_per_s: float = 0.0
    eval_history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] | None = None
    stop_reason: str = "completed"

    @property
    def losses(self) -> list[float]:
        """The logged losses in order."""
        return [h["loss"] for h in self.loss_history]

    @property
    def loss_token_share(self) -> float:
        """Fraction of the tokens read that carried loss."""
        return self.loss_tokens / self.tokens if self.tokens else 0.0


def _fit(ids: list[int], labels: list[int], n_prompt: int, max_length: int, keep_bos: int,
         seq_segments: list[int] | None) -> tuple[list[int], list[int]] | None:
    """Cut an example to ``max_length`` tokens, or None when its loss part alone does not fit.

    Prompt-style examples lose their oldest prompt tokens (after BOS). Sequence examples
    (``seq_segments``: token length of each completion segment) lose whole leading completion
    segments, so the rest stays a valid sequence."""
    if len(ids) <= max_length:
        return ids, labels
    if seq_segments is None:
        c = len(ids) - n_prompt
        if c >= max_length:
            return None
        room = max_length - c
        keep = ids[:keep_bos] + ids[n_prompt - (room - keep_bos):n_prompt]
        return keep + ids[n_prompt:], [-100] * len(keep) + labels[n_prompt:]
    cut, pos = 0, n_prompt
    for n in seq_segments:
        if len(ids) - cut <= max_length:
            break
        cut += n
        pos += n
    if len(ids) - cut > max_length:
        return None
    out_ids, out_labels = ids[:n_prompt] + ids[pos:], labels[:n_prompt] + labels[pos:]
    if not any(x != -100 for x in out_labels):
        return None
    return out_ids, out_labels


def _encode_one(ex: Example, tokenizer: Any, max_length: int, *, add_bos: bool = True, add_eos: bool = True,
                cache: dict[str, list[int]] | None = None) -> tuple[dict[str, list[int]] | None, bool]:
    """``({"input_ids", "labels"} or None if it cannot fit, truncated?)``."""
    if not ex.completion:
        raise TaskDataError(f"example of task {ex.task!r} has an empty completion: {ex.meta}")
    ids, labels, n_prompt = ex.encode_labeled(tokenizer, add_bos=add_bos, add_eos=add_eos, cache=cache)
    if n_prompt == len(ids):
        raise TaskDataError(f"example of task {ex.task!r} has an empty completion: {ex.meta}")
    bos = getattr(tokenizer, "bos_token_id", None)
    keep_bos = 1 if (add_bos and ids and bos is not None and ids[0] == bos) else 0
    segs = None
    if ex.loss is not None:
        from .tasks import _encode_segments

        segs = [len(_encode_segments([sg], tokenizer, cache)) for sg in ex.completion]
    fitted = _fit(ids, labels, n_prompt, max_length, keep_bos, segs)
    if fitted is None:
        return None, False
    return {"input_ids": fitted[0], "labels": fitted[1]}, len(fitted[0]) < len(ids)


def encode_examples(examples: Iterable[Example], tokenizer: Any, *, max_length: int = 512,
                    add_bos: bool = True, add_eos: bool = True) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """Examples -> ``{"input_ids", "labels"}`` with prompt (and context-only) tokens labelled ``-100``.

    Prompts longer than the room left by the completion are cut from the left after BOS (the oldest
    history goes first); sequence examples lose their oldest items instead; examples whose loss
    part alone does not fit are skipped.

    Returns
    -------
    features, report
        ``report`` counts ``encoded``, ``truncated`` and ``skipped_too_long``.
    """
    feats: list[dict[str, list[int]]] = []
    rep = {"encoded": 0, "truncated": 0, "skipped_too_long": 0}
    cache: dict[str, list[int]] = {}
    for ex in examples:
        f, cut = _encode_one(ex, tokenizer, max_length, add_bos=add_bos, add_eos=add_eos, cache=cache)
        if f is None:
            rep["skipped_too_long"] += 1
            continue
        rep["truncated"] += int(cut)
        feats.append(f)
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


def _task_stream(seed: int, task: str, pool_size: int, start: int, n: int) -> np.ndarray:
    """Indices ``[start, start + n)`` of an endless stream of seeded permutations of ``range(pool_size)``
    (one permutation per pass), so successive epochs continue through a pool instead of repeating
    the same subset."""
    out = []
    pos = start
    while len(out) < n:
        cycle, off = divmod(pos, pool_size)
        perm = np.random.default_rng([int(seed), zlib.crc32(task.encode()), cycle]).permutation(pool_size)
        take = perm[off:off + (n - len(out))]
        out.extend(take.tolist())
        pos += len(take)
    return np.asarray(out, dtype=np.int64)


def _mix_counts(sizes: Mapping[str, int], weights: Mapping[str, float] | None,
                num_examples: int | None) -> dict[str, int]:
    if weights is None:
        weights = {t: 1.0 for t in sizes}
    if bad := [t for t in weights if t not in sizes]:
        raise ValueError(f"weights name task(s) {bad} with no examples; tasks present: {list(sizes)}")
    if any(w < 0 for w in weights.values()):
        raise ValueError(f"task weights must be >= 0, got {dict(weights)}")
    live = {t: float(weights.get(t, 0.0)) for t in sizes if sizes[t] and weights.get(t, 0.0) > 0}
    if not live:
        raise ValueError(f"no task has both examples and a positive weight (pools: {dict(sizes)}, "
                         f"weights: {dict(weights)})")
    total = sum(sizes.values()) if num_examples is None else int(num_examples)
    wsum = sum(live.values())
    return {t: int(round(total * live[t] / wsum)) for t in sorted(live)}


def mix_tasks(pools: Mapping[str, Sequence[Any]], weights: Mapping[str, float] | None = None, *,
              num_examples: int | None = None, seed: int = 0) -> tuple[list[Any], dict[str, int]]:
    """Draw a task mixture: task ``t`` gets ``round(num_examples * w_t / sum w)`` items, taken from a
    seeded permutation of its pool (cycled when it needs more than the pool holds).

    Parameters
    ----------
    pools : task -> items (lists or lazy sequences: only the drawn items are read)
    weights : task -> weight (default 1 each; tasks missing from ``weights`` get 0)
    num_examples : total (default: the sum of the pool sizes)

    Returns
    -------
    items, counts per task
    """
    counts = _mix_counts({t: len(v) for t, v in pools.items()}, weights, num_examples)
    pairs = [(t, int(j)) for t, n in counts.items() for j in _task_stream(seed, t, len(pools[t]), 0, n)]
    order = np.random.default_rng([int(seed), 0]).permutation(len(pairs))
    return [pools[pairs[int(i)][0]][pairs[int(i)][1]] for i in order], counts


class MixtureDataset(torch.utils.data.Dataset):
    """A weighted task mixture over several epochs, rendered and tokenised one example at a time.

    Epoch ``e`` holds ``round(num_examples * w_t / sum w)`` examples of each task ``t``, continuing
    through a seeded endless stream of permutations of its pool (so a pool larger than its share is
    covered over the epochs), shuffled with ``(seed, e)``. Items are ``{"input_ids", "labels"}``;
    nothing is encoded before it is read.

    Parameters
    ----------
    pools : task -> sequence of Example (lists or lazy, e.g. :class:`~neo.training.tasks.RecSequences`)
    tokenizer : with the SID tokens installed
    weights : task -> weight (see :func:`mix_tasks`)
    num_examples : examples per epoch (default: the sum of the pool sizes)
    epochs : float
        Epochs in the schedule (a fraction keeps that share of the last epoch).
    max_length : longest example in tokens (see :func:`encode_examples` for how longer ones are cut)
    seed : int

    Attributes
    ----------
    per_epoch : dict task -> examples per epoch
    schedule : int64 array (N, 2)
        ``(task id, pool index)`` of every item, in training order.
    report : dict
        ``truncated`` / ``skipped_too_long`` counts of the items read so far in this process.
    """

    def __init__(self, pools: Mapping[str, Sequence[Example]], tokenizer: Any, *,
                 weights: Mapping[str, float] | None = None, num_examples: int | None = None, epochs: float = 1.0,
                 max_length: int = 512, seed: int = 0, add_bos: bool = True, add_eos: bool = True):
        if epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {epochs}")
        self.pools = dict(pools)
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.add_bos, self.add_eos = add_bos, add_eos
        self.per_epoch = _mix_counts({t: len(v) for t, v in self.pools.items()}, weights, num_examples)
        self.tasks = sorted(self.per_epoch)
        n_epoch = sum(self.per_epoch.values())
        blocks = []
        for e in range(int(math.ceil(epochs))):
            parts = [np.stack([np.full(n, ti, dtype=np.int64),
                               _task_stream(seed, t, len(self.pools[t]), e * n, n)], 1)
                     for ti, (t, n) in enumerate((t, self.per_epoch[t]) for t in self.tasks) if n]
            block = np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.int64)
            blocks.append(block[np.random.default_rng([int(seed), 1, e]).permutation(len(block))])
        sched = np.concatenate(blocks) if blocks else np.zeros((0, 2), dtype=np.int64)
        self.schedule = sched[: int(round(epochs * n_epoch))]
        self.examples_per_epoch = n_epoch
        self.report = {"truncated": 0, "skipped_too_long": 0}
        self._cache: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self.schedule)

    def example(self, i: int) -> Example:
        """The :class:`Example` at schedule position ``i`` (rendered now)."""
        ti, j = self.schedule[int(i)]
        return self.pools[self.tasks[int(ti)]][int(j)]

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ex = self.example(i)
        f, cut = _encode_one(ex, self.tokenizer, self.max_length, add_bos=self.add_bos, add_eos=self.add_eos,
                             cache=self._cache)
        self.report["truncated"] += int(cut)
        if f is None:
            # an example that cannot fit: keep the batch shape, train on nothing from it
            self.report["skipped_too_long"] += 1
            bos = getattr(self.tokenizer, "bos_token_id", None)
            first = int(bos if bos is not None else self.tokenizer.eos_token_id)
            return {"input_ids": [first], "labels": [-100]}
        return f

    def token_stats(self, sample: int = 512, seed: int = 0) -> dict[str, dict[str, float]]:
        """Per task: mean tokens per example and the share of them carrying loss, from ``sample``
        scheduled items (rendered and encoded here; the training run counts exactly)."""
        if not len(self):
            return {}
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(self), size=min(sample, len(self)), replace=False)
        acc: dict[str, list[int]] = {}
        for i in idx:
            t = self.tasks[int(self.schedule[int(i)][0])]
            f = self[int(i)]
            a = acc.setdefault(t, [0, 0, 0])
            a[0] += 1
            a[1] += len(f["input_ids"])
            a[2] += sum(1 for x in f["labels"] if x != -100)
        return {t: {"tokens_per_example": a[1] / a[0], "loss_share": a[2] / max(1, a[1])} for t, a in acc.items()}


class CompletionCollator:
    """Right-pads features into a batch; padding is labelled ``-100``.

    Packed features (with ``position_ids``) get padding as its own pseudo-sequence (positions from 0)
    and no attention mask, so the block-diagonal packing mask stays in force. ``pack_length``
    packs each batch's examples greedily (in order) into rows of at most that many tokens, the same
    way, with no pre-computation. With ``count_tokens`` every batch also carries ``neo_num_tokens``
    (the real, unpadded tokens), which neo's trainer counts and drops before the forward pass.
    """

    def __init__(self, pad_token_id: int, pack_length: int | None = None, count_tokens: bool = False):
        self.pad = int(pad_token_id)
        self.pack_length = int(pack_length) if pack_length else None
        self.count_tokens = bool(count_tokens)

    def __call__(self, batch: Sequence[Mapping[str, list[int]]]) -> dict[str, torch.Tensor]:
        if self.pack_length and "position_ids" not in batch[0]:
            longest = max(len(b["input_ids"]) for b in batch)
            batch = pack_features(batch, max(self.pack_length, longest), shuffle=False)
        n = max(len(b["input_ids"]) for b in batch)
        packed = "position_ids" in batch[0]
        ids = torch.full((len(batch), n), self.pad, dtype=torch.long)
        labels = torch.full((len(batch), n), -100, dtype=torch.long)
        out: dict[str, torch.Tensor] = {}
        if packed:
            pos = torch.zeros((len(batch), n), dtype=torch.long)
        else:
            mask = torch.zeros((len(batch), n), dtype=torch.long)
        real = 0
        for i, b in enumerate(batch):
            m = len(b["input_ids"])
            real += m
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
        if self.count_tokens:
            out["neo_num_tokens"] = torch.tensor(real, dtype=torch.long)
        return out


# ============================================================================ SID-band label smoothing


class SidBandSmoothing:
    """Cross-entropy with label smoothing kept inside each target code's band: a ``compute_loss_func``.

    At a position whose label is code ``c`` of level ``l`` of type ``t``, the target distribution is
    ``1 - epsilon`` on ``c`` plus ``epsilon`` spread evenly over the ``K_{t,l}`` codes of that band
    (DESIGN.md section 2); every other label (text, ``[SID]``, ``[/SID]``, EOS) keeps plain
    cross-entropy. Unlike ordinary label smoothing, no mass goes to tokens that cannot stand there,
    so the model learns to rank every code of the asked-for type above every token of another type
    (type steering without constraints) while the spread regularises the codes' ranking.

    Parameters
    ----------
    layout : TokenLayout
        The SID token layout (``SidVocab.layout``).
    epsilon : float
        Smoothing mass in ``(0, 1)``.

    Call ``(outputs, labels, num_items_in_batch=None)`` with ``outputs.logits`` ``(B, T, V)`` and
    ``labels`` ``(B, T)`` (unshifted, ``-100`` ignored), as Hugging Face ``Trainer`` passes them; returns
    the summed loss over ``num_items_in_batch`` when given (the Trainer's normalisation over
    accumulated batches), else the mean over labelled positions.
    """

    def __init__(self, layout: Any, epsilon: float):
        eps = float(epsilon)
        if not 0.0 < eps < 1.0:
            raise ValueError(f"SID-band smoothing epsilon must be in (0, 1), got {epsilon!r}")
        self.epsilon = eps
        self.begin = int(layout.sid_token_begin)
        self.end = int(layout.sid_token_end)
        lo = np.zeros(self.end - self.begin, dtype=np.int64)
        size = np.zeros(self.end - self.begin, dtype=np.int64)
        for t in layout.types:
            for s0, k in zip(t.band_starts, t.codebook_sizes):
                lo[s0 - self.begin:s0 - self.begin + k] = s0 - self.begin
                size[s0 - self.begin:s0 - self.begin + k] = k
        self._lo, self._size = torch.from_numpy(lo), torch.from_numpy(size)

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        if logits.shape[-1] < self.end:
            raise ValueError(f"logits have {logits.shape[-1]} columns but the SID block ends at {self.end}: "
                             "the model was not adapted to this vocabulary")
        # shift the labels, not the logits (as HF's causal-LM loss does): slicing the logits would copy all of them
        lab = torch.nn.functional.pad(labels.to(logits.device), (0, 1), value=-100)[..., 1:].reshape(-1)
        keep = lab != -100
        x = logits.reshape(-1, logits.shape[-1])[keep]  # (N, V), labelled positions only
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # bf16 / fp16 logits: the loss in float32, as HF's cross-entropy does
        y = lab[keep]
        lse = torch.logsumexp(x, dim=-1)
        nll = lse - x.gather(1, y[:, None])[:, 0]
        rel = y - self.begin
        is_code = (rel >= 0) & (rel < self.end - self.begin)
        is_code &= self._size.to(y.device)[rel.clamp(0, self.end - self.begin - 1)] > 0
        loss = nll
        if bool(is_code.any()):
            r = rel[is_code]
            lo, k = self._lo.to(y.device)[r], self._size.to(y.device)[r]
            # mean log-probability over the target's band, from prefix sums of the SID block's logits
            cs = torch.nn.functional.pad(x[is_code, self.begin:self.end].double().cumsum(-1), (1, 0))
            band_sum = cs.gather(1, (lo + k)[:, None])[:, 0] - cs.gather(1, lo[:, None])[:, 0]
            smooth = lse[is_code] - (band_sum / k).to(x.dtype)
            loss = nll.clone()
            loss[is_code] = (1.0 - self.epsilon) * nll[is_code] + self.epsilon * smooth
        total = loss.sum()
        if num_items_in_batch is None:
            return total / max(1, int(y.numel()))
        return total / (num_items_in_batch.to(total.device) if torch.is_tensor(num_items_in_batch)
                        else float(num_items_in_batch))


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


@dataclass
class Validation:
    """Early stopping on a validation metric; the best weights are kept.

    Parameters
    ----------
    fn : callable
        ``fn(model) -> {metric: value}`` (higher is better), e.g. HR@10 / NDCG@10 of constrained beam
        search on validation users (:func:`neo.evaluation.runners.neo_validation_fn`). It runs with
        the model in eval mode (training mode is restored afterwards) on the first process; the others
        receive its result.
    metric : str
        The metric that decides (default ``"ndcg@10"``).
    every_epochs : float
        Validate after every so many epochs of the schedule (and once at the end of training).
    patience : int
        Stop after this many validations in a row without an improvement larger than ``min_delta``.
    min_delta : float
    """

    fn: Callable[[Any], Mapping[str, float]]
    metric: str = "ndcg@10"
    every_epochs: float = 1.0
    patience: int = 3
    min_delta: float = 0.0


def _dist() -> Any:
    d = torch.distributed
    return d if d.is_available() and d.is_initialized() else None


def _any_rank(flag: bool) -> bool:
    """True on every rank when it is true on any (keeps ranks in lockstep when one decides to stop)."""
    d = _dist()
    if d is None:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    if d.get_backend() == "nccl":
        t = t.cuda()
    d.all_reduce(t, op=d.ReduceOp.MAX)
    return bool(t.item())


def _from_rank0(obj: Any) -> Any:
    d = _dist()
    if d is None:
        return obj
    box = [obj]
    d.broadcast_object_list(box, src=0)
    return box[0]


class WeightAverage:
    """An exponential moving average of a model's trainable weights (Polyak averaging).

    After every optimiser step ``avg <- d * avg + (1 - d) * w`` with ``d = min(decay, (1 + n) / (10 + n))``
    at update ``n`` (the usual warm start, so the first steps do not drag in the initial weights): until
    update ``~9 / (1 - decay)`` the average spans roughly the last ``n / 9`` steps (a ninth of the run so
    far), after that about the last ``1 / (1 - decay)``. Decays of 0.998 and 0.999 therefore differ only
    in runs longer than about 4,500 steps.
    The average is kept in the parameters' dtype and device; it is not part of HF checkpoints, so a
    resumed run starts its average at the resumed weights.

    Parameters
    ----------
    model : torch.nn.Module
    decay : float
        In ``(0, 1)``; ``1 / (1 - decay)`` is roughly the number of recent steps averaged.
    """

    def __init__(self, model: Any, decay: float):
        d = float(decay)
        if not 0.0 < d < 1.0:  # also refuses NaN
            raise ValueError(f"weight average decay must be in (0, 1), got {decay!r}")
        self.decay = d
        self.params = [p for p in model.parameters() if p.requires_grad]
        # taken at the first update, once the trainer has put the weights on their device
        self.average: list[torch.Tensor] | None = None
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current weights into the average."""
        self.updates += 1
        if self.average is None:
            self.average = [p.detach().clone() for p in self.params]
            return
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - d)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Overwrite the trainable weights with the average (nothing before the first update)."""
        for p, a in zip(self.params, self.average or []):
            p.copy_(a)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Inside the block the model holds the averaged weights; its own come back afterwards."""
        if self.average is None:
            yield
            return
        with torch.no_grad():
            own = [p.detach().clone() for p in self.params]
            self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(self.params, own):
                    p.copy_(w)


class _Meter:
    """Token counts and training time shared by the trainer and the callbacks (this process)."""

    def __init__(self) -> None:
        self.tokens = 0
        self.loss_tokens = 0
        self.t0 = time.perf_counter()
        self.eval_s = 0.0
        self.world = 1

    def train_seconds(self) -> float:
        return max(1e-9, time.perf_counter() - self.t0 - self.eval_s)

    def tokens_per_s(self) -> float:
        return self.tokens * self.world / self.train_seconds()


class _Horizon:
    """Linear warmup, then cosine decay to ``min_rate`` of the peak at step ``total``; ``total`` may move
    while training (a time budget re-estimates where training will end, so the decay finishes there
    instead of being cut off at a high learning rate)."""

    def __init__(self, total: int, warmup: int, min_rate: float):
        self.total, self.warmup, self.min_rate = max(1, int(total)), max(0, int(warmup)), float(min_rate)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        span = max(1, self.total - self.warmup)
        t = min(1.0, (step - self.warmup) / span)
        return self.min_rate + (1.0 - self.min_rate) * 0.5 * (1.0 + math.cos(math.pi * t))


def _min_over_ranks(x: float) -> float:
    d = _dist()
    if d is None:
        return x
    t = torch.tensor([x], dtype=torch.float64)
    if d.get_backend() == "nccl":
        t = t.cuda()
    d.all_reduce(t, op=d.ReduceOp.MIN)
    return float(t.item())


def _callbacks() -> tuple[type, type, type, type]:
    """The callback classes (built on first use: transformers is imported lazily)."""
    from transformers import TrainerCallback

    class ProgressBar(TrainerCallback):
        """One tqdm bar per stage: loss, learning rate, tokens/s and the share of tokens with loss."""

        def __init__(self, stage: str, meter: _Meter, show: bool):
            self.stage, self.meter, self.show = stage, meter, show
            self.bar = None
            self.last: dict[str, float] = {}

        def on_train_begin(self, args, state, control, **kw):  # noqa: ANN001
            if self.show and state.is_world_process_zero:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=state.max_steps, desc=self.stage, unit="step", dynamic_ncols=True,
                                initial=state.global_step)

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kw):  # noqa: ANN001
            if self.bar is None or not logs or "loss" not in logs:
                return
            m = self.meter
            self.bar.set_postfix(loss=f"{logs['loss']:.3f}", lr=f"{logs.get('learning_rate', 0.0):.2e}",
                                 tok_s=f"{m.tokens_per_s():,.0f}",
                                 loss_tok=f"{m.loss_tokens / max(1, m.tokens):.0%}", refresh=False)

        def write(self, line: str) -> None:
            """One line a person reads (validation results): above the bar, or on stderr without one."""
            if self.bar is not None:
                self.bar.write(line)
            elif int(os.environ.get("RANK", "0")) == 0:
                print(line, file=sys.stderr, flush=True)

        def on_train_end(self, args, state, control, **kw):  # noqa: ANN001
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    class TimeBudget(TrainerCallback):
        """Stops training at the first step end after ``seconds`` of wall time (all ranks together)."""

        def __init__(self, seconds: float, meter: _Meter, horizon: _Horizon | None = None, every: int = 25):
            self.seconds, self.meter, self.horizon, self.every = float(seconds), meter, horizon, max(1, every)
            self.stopped = False
            self.planned = horizon.total if horizon is not None else None

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            elapsed = time.perf_counter() - self.meter.t0
            if _any_rank(elapsed >= self.seconds):
                self.stopped = True
                control.should_training_stop = True
            elif self.horizon is not None and state.global_step % self.every == 0:
                # where will the budget end training? (validation time so far included in the rate)
                rate = elapsed / max(1, state.global_step)
                end = state.global_step + (self.seconds - elapsed) / max(rate, 1e-9)
                self.horizon.total = int(min(self.planned, _min_over_ranks(end)))

    class Validator(TrainerCallback):
        """Runs a :class:`Validation` every ``every_steps`` steps and at the end; keeps the best weights."""

        def __init__(self, v: Validation, every_steps: int, steps_per_epoch: float, meter: _Meter,
                     say: Callable[[str], None], stage: str):
            self.v, self.every, self.spe, self.meter, self.say, self.stage = v, max(1, every_steps), steps_per_epoch, \
                meter, say, stage
            self.history: list[dict[str, float]] = []
            self.best: dict[str, float] | None = None
            self.best_state: dict[str, torch.Tensor] | None = None
            self.bad = 0
            self.early = False
            self.last_step = -1
            self.average: WeightAverage | None = None  # validate (and keep) the averaged weights when set

        def _validate(self, model: Any, state: Any) -> None:
            if self.average is not None:
                with self.average.applied():
                    self._validate_now(model, state)
            else:
                self._validate_now(model, state)

        def _validate_now(self, model: Any, state: Any) -> None:
            t = time.perf_counter()
            was = model.training
            model.eval()
            try:
                m = dict(self.v.fn(model)) if state.is_world_process_zero else None
            finally:
                model.train(was)
            m = _from_rank0(m)
            if self.v.metric not in m:
                raise KeyError(f"validation returned {sorted(m)}, not the metric {self.v.metric!r}")
            dt = time.perf_counter() - t
            self.meter.eval_s += dt
            rec = {"step": int(state.global_step), "epoch": round(state.global_step / self.spe, 3), "seconds": dt,
                   **{k: float(v) for k, v in m.items()}}
            self.history.append(rec)
            self.last_step = state.global_step
            val = rec[self.v.metric]
            if self.best is None or val > self.best[self.v.metric] + self.v.min_delta:
                self.best, self.bad = rec, 0
                self.best_state = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters()
                                   if p.requires_grad}
                mark = " *"
            else:
                self.bad += 1
                mark = ""
            shown = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float) and k != "n")
            self.say(f"[{self.stage}] epoch {rec['epoch']:.2f} (step {rec['step']}): valid {shown}{mark} "
                     f"(best {self.v.metric} {self.best[self.v.metric]:.4f} at epoch {self.best['epoch']:.2f}; "
                     f"{dt:.0f} s)")

        def on_step_end(self, args, state, control, model=None, **kw):  # noqa: ANN001
            if state.global_step % self.every == 0 and state.global_step != self.last_step:
                self._validate(model, state)
                if self.bad >= self.v.patience:
                    self.early = True
                    control.should_training_stop = True

        def on_train_end(self, args, state, control, model=None, **kw):  # noqa: ANN001
            if state.global_step != self.last_step:
                self._validate(model, state)

        def restore(self, model: Any) -> None:
            if self.best_state is None:
                return
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in self.best_state:
                        p.copy_(self.best_state[n].to(p.device))

    class Averager(TrainerCallback):
        """Folds the weights into a :class:`WeightAverage` after every optimiser step (before validation)."""

        def __init__(self, average: WeightAverage):
            self.average = average

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            self.average.update()

    return ProgressBar, TimeBudget, Validator, Averager


def _trainer_cls() -> type:
    from transformers import Trainer

    class NeoTrainer(Trainer):
        """``Trainer`` that counts the tokens it reads (and those with loss) for tokens/s reports."""

        neo_meter: _Meter | None = None
        neo_horizon: _Horizon | None = None

        def create_scheduler(self, num_training_steps, optimizer=None):  # noqa: ANN001
            if self.neo_horizon is None:
                return super().create_scheduler(num_training_steps, optimizer)
            if self.lr_scheduler is None:
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, self.neo_horizon)
                self._created_lr_scheduler = True
            return self.lr_scheduler

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            n = inputs.pop("neo_num_tokens", None)

            if self.neo_meter is not None and model.training:
                lab = inputs.get("labels")
                self.neo_meter.tokens += int(n) if n is not None else int(inputs["input_ids"].numel())
                if lab is not None:
                    self.neo_meter.loss_tokens += int((lab[..., 1:] != -100).sum())
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)

    return NeoTrainer


def _has_accelerator() -> bool:
    if torch.cuda.is_available():
        return True
    for name in ("xpu", "npu", "mlu", "musa"):
        mod = getattr(torch, name, None)
        if mod is not None and getattr(mod, "is_available", lambda: False)():
            return True
    return False


def _training_args(output_dir: str, *, max_steps: int, batch_size: int, lr: float, weight_decay: float,
                   warmup: float, grad_accum: int, logging_steps: int, save_steps: int | None, seed: int,
                   extra: Mapping[str, Any] | None) -> Any:
    from transformers import TrainingArguments

    kw: dict[str, Any] = dict(
        output_dir=output_dir, num_train_epochs=1.0, max_steps=int(max_steps),
        per_device_train_batch_size=int(batch_size), gradient_accumulation_steps=int(grad_accum),
        learning_rate=float(lr), lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": MIN_LR_RATE},
        weight_decay=float(weight_decay), adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0,
        logging_strategy="steps", logging_steps=int(logging_steps), logging_first_step=True,
        save_strategy="steps" if save_steps else "no", save_steps=int(save_steps) if save_steps else 500,
        seed=int(seed), data_seed=int(seed), disable_tqdm=True, report_to="none",
        remove_unused_columns=False, dataloader_num_workers=0, train_sampling_strategy="sequential",
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not _has_accelerator():
        # several CPU processes (torchrun): without use_cpu, TrainingArguments sets up no DDP at all and every
        # process silently trains alone on the whole data; with it, accelerate runs MULTI_CPU over gloo
        kw["use_cpu"] = True
    if warmup < 1:
        kw["warmup_steps"] = int(math.ceil(float(warmup) * max_steps))
    else:
        kw["warmup_steps"] = int(warmup)
    kw.update(extra or {})
    return TrainingArguments(**kw)


def _run(model: Any, tokenizer: Any, dataset: Any, *, stage: str, output_dir: str | os.PathLike | None,
         epochs: float, max_steps: int | None, batch_size: int, lr: float, weight_decay: float,
         warmup_steps: float, grad_accum: int, logging_steps: int, save_steps: int | None, seed: int,
         progress: bool, resume_from_checkpoint: str | bool | None, training_args: Mapping[str, Any] | None,
         optimizer_cls_and_kwargs: tuple[type, dict[str, Any]] | None, data_report: dict[str, Any],
         trainable_params: int, pack_length: int | None = None, max_minutes: float | None = None,
         validation: Validation | None = None, examples_per_epoch: int | None = None,
         compute_loss_func: Callable[..., torch.Tensor] | None = None,
         average_decay: float | None = None) -> TrainResult:
    """Train ``model`` on ``dataset`` (rows in training order; read sequentially) with HF ``Trainer``."""
    if len(dataset) == 0:
        raise TaskDataError(f"nothing to train on: no example survived encoding ({data_report})")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("tokenizer has neither a pad nor an EOS token to pad batches with")
    if max_minutes is not None and max_minutes <= 0:
        raise ValueError(f"max_minutes must be > 0, got {max_minutes}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    global_batch = batch_size * grad_accum * world
    planned = int(math.ceil(len(dataset) / global_batch))
    steps = int(max_steps) if max_steps else planned
    epoch_rows = examples_per_epoch or len(dataset)
    steps_per_epoch = max(1e-9, epoch_rows / global_batch)
    tmp = None
    if output_dir is None:
        if resume_from_checkpoint not in (None, False):
            raise ValueError("resume_from_checkpoint needs output_dir (where the checkpoints are)")
        tmp = tempfile.TemporaryDirectory(prefix="neo-train-")
        out, save_steps = tmp.name, None
    else:
        out = os.fspath(output_dir)
    if steps > planned:
        # max_steps beyond the schedule: repeat it (Trainer would stop at the end of the data)
        reps = int(math.ceil(steps / planned))
        dataset = torch.utils.data.ConcatDataset([dataset] * reps)
    # warmup: a ratio of the planned steps, but at most one epoch (the plan is a maximum when validation
    # or a time budget may end training early)
    warm = int(warmup_steps) if warmup_steps >= 1 else min(int(math.ceil(warmup_steps * steps)),
                                                           int(math.ceil(steps_per_epoch)))
    args = _training_args(out, max_steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                          warmup=warm, grad_accum=grad_accum, logging_steps=logging_steps,
                          save_steps=save_steps, seed=seed, extra=training_args)
    given = dict(training_args or {})
    if optimizer_cls_and_kwargs is not None and given:
        # TrainingArguments given explicitly win over neo's optimiser settings too
        cls_, okw = optimizer_cls_and_kwargs[0], dict(optimizer_cls_and_kwargs[1])
        if "optim" in given and cls_ is torch.optim.AdamW:
            optimizer_cls_and_kwargs = None  # the user's optimiser choice (Trainer builds it)
        else:
            if "learning_rate" in given:
                okw["lr"] = args.learning_rate
            if "weight_decay" in given:
                okw["weight_decay"] = args.weight_decay
            if "adam_beta1" in given or "adam_beta2" in given:
                okw["betas"] = (args.adam_beta1, args.adam_beta2)
            if "adam_epsilon" in given:
                okw["eps"] = args.adam_epsilon
            optimizer_cls_and_kwargs = (cls_, okw)
    meter = _Meter()
    meter.world = max(1, int(getattr(args, "world_size", world) or 1))
    ProgressBar, TimeBudget, Validator, Averager = _callbacks()
    bar = ProgressBar(stage, meter, progress)
    callbacks: list[Any] = [bar]
    given_sched = any(k in (training_args or {}) for k in ("lr_scheduler_type", "warmup_steps", "warmup_ratio"))
    horizon = _Horizon(steps, warm, MIN_LR_RATE) if max_minutes is not None and not given_sched else None
    budget = TimeBudget(max_minutes * 60.0, meter, horizon) if max_minutes is not None else None
    if budget is not None:
        callbacks.append(budget)
    average = WeightAverage(model, average_decay) if average_decay is not None else None
    if average is not None:
        callbacks.append(Averager(average))  # before the validator: it validates the updated average
    val = None
    if validation is not None:
        every = int(round(validation.every_epochs * steps_per_epoch)) or 1
        val = Validator(validation, every, steps_per_epoch, meter, bar.write, stage)
        val.average = average
        callbacks.append(val)
    was_training = model.training
    trainer = _trainer_cls()(model=model, args=args,
                             data_collator=CompletionCollator(pad, pack_length=pack_length, count_tokens=True),
                             train_dataset=dataset, processing_class=tokenizer,
                             optimizer_cls_and_kwargs=optimizer_cls_and_kwargs, callbacks=callbacks,
                             compute_loss_func=compute_loss_func)
    trainer.neo_meter = meter
    trainer.neo_horizon = horizon
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)  # raw dict lines; the bar and the validation lines replace them
    trainer.remove_callback(ProgressCallback)
    try:
        meter.t0 = time.perf_counter()
        res = trainer.train(resume_from_checkpoint=resume_from_checkpoint or None)
        hist = [{k: float(v) for k, v in h.items() if k in ("step", "loss", "learning_rate", "grad_norm")}
                | {"epoch": round(float(h["step"]) / steps_per_epoch, 4)}
                for h in trainer.state.log_history if "loss" in h]
        tokens, loss_tokens = meter.tokens, meter.loss_tokens
        d = _dist()
        if d is not None:
            t = torch.tensor([tokens, loss_tokens], dtype=torch.float64)
            if d.get_backend() == "nccl":
                t = t.cuda()
            d.all_reduce(t)
            tokens, loss_tokens = int(t[0].item()), int(t[1].item())
        train_s = meter.train_seconds()
        stop = "completed"
        if val is not None and val.early:
            stop = "early stopping"
        elif budget is not None and budget.stopped:
            stop = "time budget"
        if val is not None:
            val.restore(model)  # the best validated (averaged, with average_decay) weights
        elif average is not None:
            average.copy_to_model()
        rep = dict(data_report)
        if hasattr(dataset, "report"):
            rep.update(dataset.report)
        return TrainResult(
            loss_history=hist, global_step=int(trainer.state.global_step),
            train_loss=float(res.training_loss), runtime_s=float(res.metrics.get("train_runtime", 0.0)),
            trainable_params=trainable_params, num_examples=len(dataset),
            output_dir=None if tmp else out, model=model, data_report=rep, tokens=tokens, loss_tokens=loss_tokens,
            tokens_per_s=tokens / train_s, eval_history=list(val.history) if val else [],
            best=val.best if val else None, stop_reason=stop)
    finally:
        model.train(was_training)
        if tmp is not None:
            tmp.cleanup()


def _pack_length(packing: bool, pack_length: int | None, max_length: int) -> int | None:
    """Row length for the collator: ``pack_length`` when given (it turns packing on), else ``max_length``
    with ``packing``, else None (padded batches)."""
    if pack_length is not None:
        if isinstance(pack_length, bool) or int(pack_length) < 1:
            raise ValueError(f"pack_length must be a positive number of tokens, got {pack_length!r}")
        return int(pack_length)
    return int(max_length) if packing else None


def _dataset(examples: Any, tokenizer: Any, *, weights: Mapping[str, float] | None, num_examples: int | None,
             epochs: float, max_length: int, seed: int) -> tuple[MixtureDataset, dict[str, Any]]:
    """A :class:`MixtureDataset` from a task -> examples mapping or a flat list (grouped by task)."""
    if isinstance(examples, Mapping):
        pools = dict(examples)
    else:
        pools = {}
        for e in examples:
            pools.setdefault(e.task, []).append(e)
        if not pools:
            raise TaskDataError("nothing to train on: no examples were given")
        if weights is None and num_examples is None:
            # a flat list keeps its proportions: every example once per epoch
            weights = {t: float(len(v)) for t, v in pools.items()}
    ds = MixtureDataset(pools, tokenizer, weights=weights, num_examples=num_examples, epochs=epochs,
                        max_length=max_length, seed=seed)
    rep: dict[str, Any] = {f"task_{t}": n for t, n in ds.per_epoch.items()}
    rep["examples_per_epoch"] = ds.examples_per_epoch
    return ds, rep


# ============================================================================ stages


def align(model: Any, tokenizer: Any, vocab: Any, examples: Sequence[Example] | Mapping[str, Sequence[Example]], *,
          output_dir: str | os.PathLike | None = None, epochs: float = 1.0, max_steps: int | None = None,
          batch_size: int = 16, lr: float | None = None, weight_decay: float | None = None,
          warmup_steps: float | None = None, grad_accum: int = 1, max_length: int = 512, packing: bool = False,
          pack_length: int | None = None, weights: Mapping[str, float] | None = None, logging_steps: int = 10,
          save_steps: int | None = None,
          resume_from_checkpoint: str | bool | None = None, seed: int = 0, progress: bool = True,
          training_args: Mapping[str, Any] | None = None, max_minutes: float | None = None,
          backbone: str = "auto", method: str = "auto") -> TrainResult:
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
    lr, weight_decay, warmup_steps : AdamW(0.9, 0.95), cosine decay to 10%; ``warmup_steps`` < 1 is a
        ratio; None: :data:`HPARAMS` for the backbone.
    max_length, packing : sequence length and optional packing (each batch's examples packed into
        rows of ``pack_length`` tokens, exact: attention stays within each example).
    pack_length : int, optional
        Row length when packing (giving it turns packing on; default ``max_length``; a row is never
        shorter than the batch's longest example). About two to three times the typical example length wastes little on
        padding without paying for long attention rows.
    weights : task mixing weights (see :func:`mix_tasks`).
    logging_steps, save_steps : loss logged / checkpoint saved every so many optimiser steps.
    resume_from_checkpoint : a checkpoint path, or True for the latest in ``output_dir``.
    seed : data order, dropout.
    progress : show the stage's progress bar (validation lines print either way).
    training_args : extra ``TrainingArguments`` fields (``bf16``, ``deepspeed``, ...).
    max_minutes : stop at the first step after this much wall time.
    backbone : "auto", "scratch" or "pretrained" (picks the defaults; see :func:`backbone_kind`).
    method : {"auto", "trainable_tokens", "row_masked"}
        How only the SID rows learn. ``trainable_tokens``: peft's trainable tokens (a delta for the SID
        rows of the input embeddings and of an untied LM head, merged back afterwards; weight decay
        pulls the rows towards their initial values); ``row_masked``: a gradient hook zeroes the other
        rows and :class:`RowMaskedAdamW` decays the SID rows only (no peft needed). Both leave every
        other weight bit-identical; trainable tokens measured 15% fewer seconds per step on the demo
        (``benchmarks/exp_hf_tools.py``, ``benchmarks/results/hf_tools.json``). ``auto``: trainable
        tokens when peft is installed and the LM head is not tied to the input embeddings (peft warns
        that it does not tie adapters), else row masking.

    Returns
    -------
    TrainResult
    """
    from ..lm.adapt import check_model

    check_model(model, vocab)
    lr, warmup, wd = _hp("align", model, backbone, lr, warmup_steps, weight_decay)
    ds, rep = _dataset(examples, tokenizer, weights=weights, num_examples=None, epochs=epochs,
                       max_length=max_length, seed=seed)
    b, e = int(vocab.token_begin), int(vocab.token_end)
    if method == "auto":
        from ..lm.adapt import embeddings_tied

        try:
            import peft  # noqa: F401

            # peft warns that it does not tie adapters of tied embeddings (peft issue 2777): masked rows there
            method = "row_masked" if embeddings_tied(model) else "trainable_tokens"
        except ImportError:
            method = "row_masked"
    if method not in ("trainable_tokens", "row_masked"):
        raise ValueError(f"method must be 'auto', 'trainable_tokens' or 'row_masked', got {method!r}")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    emb = _embedding_params(model)
    common = dict(stage="align", output_dir=output_dir, epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                  lr=lr, weight_decay=wd, warmup_steps=warmup, grad_accum=grad_accum, logging_steps=logging_steps,
                  save_steps=save_steps, seed=seed, progress=progress, resume_from_checkpoint=resume_from_checkpoint,
                  training_args=training_args, data_report=rep, trainable_params=(e - b) * sum(p.shape[1] for p in emb),
                  pack_length=_pack_length(packing, pack_length, max_length), max_minutes=max_minutes,
                  examples_per_epoch=ds.examples_per_epoch)
    hooks = []
    try:
        if method == "trainable_tokens":
            from peft import TrainableTokensConfig, get_peft_model

            names = {id(mod): n for n, mod in model.named_modules()}
            targets = [names[id(model.get_input_embeddings())]]
            out_mod = model.get_output_embeddings()
            if out_mod is not None and out_mod.weight is not model.get_input_embeddings().weight:
                targets.append(names[id(out_mod)])
            # only the SID rows get a trainable delta; peft ties the LM head of tied models to it
            pm = get_peft_model(model, TrainableTokensConfig(token_indices=list(range(b, e)),
                                                             target_modules=targets))
            opt = (torch.optim.AdamW, {"lr": lr, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": wd})
            res = _run(pm, tokenizer, ds, optimizer_cls_and_kwargs=opt, **common)
            res.model = pm.merge_and_unload()  # the same model object, SID rows updated, nothing else touched
            return res
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
                                "eps": 1e-8, "weight_decay": wd})
        return _run(model, tokenizer, ds, optimizer_cls_and_kwargs=opt, **common)
    finally:
        for h in hooks:
            h.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, True))


def instruct(model: Any, tokenizer: Any, examples: Sequence[Example] | Mapping[str, Sequence[Example]], *,
             weights: Mapping[str, float] | None = None, num_examples: int | None = None,
             output_dir: str | os.PathLike | None = None, epochs: float = 1.0, max_steps: int | None = None,
             batch_size: int = 16, lr: float | None = None, weight_decay: float | None = None,
             warmup_steps: float | None = None, grad_accum: int = 1, max_length: int = 512, packing: bool = False,
             pack_length: int | None = None, lora: bool = False, lora_config: Mapping[str, Any] | None = None,
             merge: bool = True, sid_smoothing: float = 0.0, vocab: Any = None, average_decay: float | None = None,
             logging_steps: int = 10, save_steps: int | None = None,
             resume_from_checkpoint: str | bool | None = None, seed: int = 0, progress: bool = True,
             training_args: Mapping[str, Any] | None = None, max_minutes: float | None = None,
             validation: Validation | Callable[[Any], Mapping[str, float]] | None = None,
             backbone: str = "auto") -> TrainResult:
    """Stage 2: multi-task instruction tuning, full or LoRA, for epochs with optional early stopping.

    Parameters
    ----------
    model, tokenizer : the aligned model (trained in place when not LoRA).
    examples : task -> sequence of Example (``TaskBuilder.instruction(split)``; lazy sequences such as
        the ``recommend`` windows are rendered only when read), or a flat list.
    weights : task -> mixing weight (default: each task in proportion to its size; see :func:`mix_tasks`).
    num_examples : examples per epoch after mixing (default: the sum of the pool sizes).
    epochs : passes over the schedule; with ``validation``, the most it may run.
    lora : train LoRA adapters (``peft``) instead of every weight.
    lora_config : ``peft.LoraConfig`` fields (default ``r=16, lora_alpha=32, lora_dropout=0.05,
        target_modules="all-linear"``, plus ``trainable_token_indices`` for the embedding rows of any
        token ids given as ``sid_rows=(begin, end)``).
    merge : merge the adapters into the weights afterwards (``TrainResult.model`` is then a plain model).
    sid_smoothing : float
        Label smoothing kept inside each target code's band (:class:`SidBandSmoothing`; 0 = plain
        cross-entropy). Needs ``vocab``.
    vocab : SidVocab, optional
        The SID vocabulary (its layout names the bands), for ``sid_smoothing``.
    average_decay : float, optional
        Keep an exponential moving average of the trainable weights (:class:`WeightAverage`, decay per
        optimiser step); validation, early stopping and the returned model then use the averaged
        weights. None: the weights as trained.
    max_minutes : stop at the first step after this much wall time (validation included); with
        ``validation`` the best weights seen are kept.
    validation : a :class:`Validation` (or just its ``fn``): validate every ``every_epochs``, stop
        after ``patience`` validations without improvement, keep the best weights.
    backbone : "auto", "scratch" or "pretrained" (picks ``lr``/``warmup_steps``/``weight_decay`` when
        they are None; see :data:`HPARAMS`).
    Other parameters as in :func:`align`.

    Returns
    -------
    TrainResult
        ``model`` is the trained model (merged for LoRA unless ``merge=False``; the best validated
        weights when ``validation`` is given); ``eval_history``/``best``/``stop_reason`` tell what
        validation did; ``tokens_per_s`` and ``loss_token_share`` what the data cost.
    """
    lr, warmup, wd = _hp("instruct", model, backbone, lr, warmup_steps, weight_decay)
    loss_fn = None
    if sid_smoothing:
        if vocab is None:
            raise ValueError("sid_smoothing needs vocab= (the SidVocab whose bands the smoothing stays in)")
        if (training_args or {}).get("label_smoothing_factor"):
            raise ValueError("give sid_smoothing or training_args['label_smoothing_factor'], not both")
        loss_fn = SidBandSmoothing(vocab.layout, sid_smoothing)
    if isinstance(examples, Mapping) and weights is None and num_examples is None:
        weights = {t: float(len(v)) for t, v in examples.items()}
    ds, rep = _dataset(examples, tokenizer, weights=weights, num_examples=num_examples, epochs=epochs,
                       max_length=max_length, seed=seed)
    if validation is not None and not isinstance(validation, Validation):
        validation = Validation(validation)
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
    opt = (torch.optim.AdamW, {"lr": lr, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": wd})
    res = _run(train_model, tokenizer, ds, stage="instruct", output_dir=output_dir, epochs=epochs,
               max_steps=max_steps, batch_size=batch_size, lr=lr, weight_decay=wd, warmup_steps=warmup,
               grad_accum=grad_accum, logging_steps=logging_steps, save_steps=save_steps, seed=seed,
               progress=progress, resume_from_checkpoint=resume_from_checkpoint, training_args=training_args,
               optimizer_cls_and_kwargs=opt, data_report=rep, trainable_params=n_train,
               pack_length=_pack_length(packing, pack_length, max_length), max_minutes=max_minutes,
               validation=validation, examples_per_epoch=ds.examples_per_epoch, compute_loss_func=loss_fn,
               average_decay=average_decay)
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
            item=titles[i], instruction="" if task == "recommend" else "Explain why.",
            fmt=hints[int(rng.integers(len(hints)))])
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
                max_positions: int = 1024, tied: bool = True, dropout: float = 0.0, arch: str = "llama",
                seed: int = 0) -> Any:
    """A randomly initialised small causal LM for ``tokenizer`` (the stage-0 architecture).

    Parameters
    ----------
    arch : {"llama", "gpt2"}
        ``llama``: RoPE, RMSNorm, SwiGLU (dropout on attention probabilities only, all Llama has);
        ``gpt2``: learned positions, LayerNorm, GELU, with dropout on embeddings, attention and
        residual branches (what small recommenders such as SASRec use at this data size).
    dropout : float
        Dropout probability (training only).

    The config records ``neo_backbone="scratch"``, which picks the from-scratch training defaults
    (:data:`HPARAMS`) in later stages and survives ``save_pretrained``.
    """
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate or 4 * hidden,
                          num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                          max_position_embeddings=max_positions, tie_word_embeddings=tied,
                          attention_dropout=float(dropout), **ids)
        m = LlamaForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=len(tokenizer), n_embd=hidden, n_layer=layers, n_head=heads,
                         n_inner=intermediate or 4 * hidden, n_positions=max_positions, tie_word_embeddings=tied,
                         resid_pdrop=float(dropout), embd_pdrop=float(dropout), attn_pdrop=float(dropout), **ids)
        m = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(f"arch must be 'llama' or 'gpt2', got {arch!r}")
    m.config.neo_backbone = "scratch"
    m.generation_config.pad_token_id = tokenizer.pad_token_id
    m.generation_config.eos_token_id = tokenizer.eos_token_id
    m.generation_config.bos_token_id = tokenizer.bos_token_id
    return m


def stage0(catalog: Any = None, tokenizer: Any = None, model: Any = None, *, texts: Sequence[str] | None = None,
           vocab_size: int = 4000, hidden: int = 128, layers: int = 4, block_size: int = 256,
           output_dir: str | os.PathLike | None = None, epochs: float = 1.0, max_steps: int | None = None,
           batch_size: int = 16, lr: float | None = None, weight_decay: float | None = None,
           warmup_steps: float | None = None, logging_steps: int = 10, save_steps: int | None = None,
           resume_from_checkpoint: str | bool | None = None, seed: int = 0, progress: bool = True,
           training_args: Mapping[str, Any] | None = None, max_minutes: float | None = None,
           model_kwargs: Mapping[str, Any] | None = None) -> tuple[Any, Any, TrainResult]:
    """Stage 0: train a small model from scratch (language modelling on every token), standing in for
    pre-training in the demo. With a real pre-trained model, skip this stage.

    Parameters
    ----------
    catalog : Catalog, optional
        Source of :func:`stage0_corpus` (needed unless ``texts`` is given).
    tokenizer : optional
        Default: :func:`train_tokenizer` on the corpus with ``vocab_size``.
    model : optional
        Default: :func:`small_model` with ``hidden``/``layers`` (and ``model_kwargs``: ``arch``,
        ``dropout``, ``heads``, ...).
    texts : the corpus (default :func:`stage0_corpus(catalog)`).
    block_size : documents are packed into rows of this many tokens (each attends only to itself).
    max_steps : with ``max_steps=0`` the model is only built (no training).
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
        model = small_model(tokenizer, hidden=hidden, layers=layers, max_positions=max(1024, block_size), seed=seed,
                            **dict(model_kwargs or {}))
    lr, warmup, wd = _hp("stage0", model, "scratch", lr, warmup_steps, weight_decay)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    feats = []
    for ids in enc:
        ids = ([bos] if bos is not None else []) + list(ids)[: block_size - 2] + ([eos] if eos is not None else [])
        feats.append({"input_ids": ids, "labels": list(ids)})
    rows = pack_features(feats, block_size, seed=seed)
    if max_steps == 0:
        return model, tokenizer, TrainResult([], 0, float("nan"), 0.0, 0, len(rows), None, model,
                                             {"documents": len(feats), "packed_rows": len(rows)})
    per_epoch = len(rows)
    order = np.concatenate([np.random.default_rng([seed, 2, e]).permutation(per_epoch)
                            for e in range(int(math.ceil(epochs)))])[: int(round(epochs * per_epoch))]
    data = EncodedDataset([rows[int(i)] for i in order])
    res = _run(model, tokenizer, data, stage="stage0", output_dir=output_dir, epochs=epochs, max_steps=max_steps,
               batch_size=batch_size, lr=lr, weight_decay=wd, warmup_steps=warmup, grad_accum=1,
               logging_steps=logging_steps, save_steps=save_steps, seed=seed, progress=progress,
               resume_from_checkpoint=resume_from_checkpoint, training_args=training_args,
               optimizer_cls_and_kwargs=(torch.optim.AdamW, {"lr": lr, "betas": (0.9, 0.95), "eps": 1e-8,
                                                             "weight_decay": wd}),
               data_report={"documents": len(feats), "packed_rows": len(rows)},
               trainable_params=sum(p.numel() for p in model.parameters()), max_minutes=max_minutes,
               examples_per_epoch=per_epoch)
    return model, tokenizer, res
