"""Plausibility scoring with a language model's own head (Tamborrino et al., ACL 2020).

A pre-trained LM already knows which continuation is plausible. Instead of putting a freshly initialised
classifier on top of it, neo ranks candidates by the model's likelihood of the full text and can
fine-tune directly on that score with a margin ranking loss.

Two scoring directions for causal LMs (``AutoModelForCausalLM``):

``direction="candidate"``
    The sequence is ``premise + candidate`` and the score is the log-probability of the candidate tokens
    given the premise: summed (``normalize="sum"``) or divided by the candidate's token count
    (``normalize="mean"``, the default for this direction, since longer candidates otherwise lose).
``direction="premise"`` ("target premise")
    The sequence is ``candidate + premise`` and the score is the log-probability of the premise tokens
    given the candidate. Every candidate explains the *same* premise tokens, so there is no length bias;
    the default is ``normalize="sum"``.

Masked LMs (``AutoModelForMaskedLM``) get the paper's target-premise score: each premise token is masked
in turn (or each n-gram span with ``ngram=n``) with the candidate fully visible, and the log-probabilities
of the true tokens are summed. The masked copies are batched.

Premises and candidates are text or pre-tokenized id lists (e.g. catalog items written as SID spans
``[SID] c1 .. cL [/SID]``), so the same call re-ranks beam-search outputs and answers multiple-choice
questions. The two segments are tokenized separately and concatenated (text is never re-joined, so a
candidate usually starts with a space: ``" the sun was rising."``); the formatting helpers
:func:`format_copa` and :func:`format_qa` produce such segments.

Fine-tuning: :func:`margin_ranking_loss` over the scores (no extra head), :class:`ClassifierHead` as the
randomly initialised head baseline, :class:`MultipleChoiceCollator` (causal LMs) or
:class:`MaskedMultipleChoiceCollator` (masked LMs, all masked copies in one batch) + :func:`choice_scores`,
``ScoringTrainer`` (a Hugging Face ``Trainer`` subclass, created on first access so importing neo does not
import the trainer stack) and a small plain-torch loop :func:`fine_tune` / :func:`evaluate_choices`.
"""

from __future__ import annotations

import copy
import functools
import inspect
import random
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "score",
    "score_tokens",
    "score_text",
    "rank",
    "ChoiceText",
    "format_copa",
    "format_qa",
    "encode_pair",
    "sequence_logprobs",
    "margin_ranking_loss",
    "multiple_choice_loss",
    "ClassifierHead",
    "MultipleChoiceCollator",
    "MaskedMultipleChoiceCollator",
    "choice_scores",
    "fine_tune",
    "evaluate_choices",
    "accuracy",
    "restart_summary",
    "ScoringTrainer",
]

Direction = Literal["candidate", "premise"]
Normalize = Literal["sum", "mean"]
Segment = Union[str, Sequence[int], torch.Tensor, np.ndarray]

_ROBERTA_LIKE = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm", "longformer"}


# --------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------

def _encode(tokenizer: Any, x: Segment, what: str) -> list[int]:
    """Token ids of one segment: text is tokenized without special tokens, id sequences pass through."""
    if isinstance(x, str):
        if tokenizer is None:
            raise TypeError(f"{what} is text but no tokenizer was given; pass a tokenizer or token id lists")
        ids = list(tokenizer(x, add_special_tokens=False)["input_ids"])
    elif isinstance(x, (torch.Tensor, np.ndarray)):
        if x.ndim != 1:
            raise ValueError(f"{what} must be text or a 1-D sequence of token ids, got an array of shape "
                             f"{tuple(x.shape)}")
        ids = [int(t) for t in x.tolist()]
    elif isinstance(x, Sequence) and all(isinstance(t, (int, np.integer)) for t in x):
        ids = [int(t) for t in x]
    else:
        raise TypeError(f"{what} must be text or a sequence of token ids, got {type(x).__name__}")
    if not ids:
        raise ValueError(f"{what} is empty (it has no tokens)")
    return ids


def _check_candidates(candidates: Any) -> list:
    if isinstance(candidates, (str, torch.Tensor, np.ndarray)) or not isinstance(candidates, Sequence):
        raise TypeError("candidates must be a list of texts or token id lists, got "
                        f"{type(candidates).__name__}")
    if len(candidates) == 0:
        raise ValueError("candidates is empty: give at least one candidate to score")
    return list(candidates)


def _max_positions(model: nn.Module) -> int | None:
    """Longest sequence the model's position embeddings allow (None if unbounded, e.g. no config)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "max_seq_len"):
        n = getattr(cfg, name, None)
        if isinstance(n, int) and n > 0:
            # RoBERTa-style models offset positions by padding_idx + 1
            if getattr(cfg, "model_type", "") in _ROBERTA_LIKE:
                n -= (getattr(cfg, "pad_token_id", 1) or 1) + 1
            return n
    return None


def _is_masked_lm(model: nn.Module) -> bool:
    cfg = getattr(model, "config", None)
    name = type(model).__name__
    if name.endswith("ForMaskedLM"):
        return True
    if name.endswith("ForCausalLM") or name.endswith("LMHeadModel"):
        return False
    return bool(cfg is not None and not getattr(cfg, "is_decoder", False)
                and getattr(cfg, "model_type", "") in {"bert", "distilbert", "albert", "electra", "deberta",
                                                        "deberta-v2", "modernbert"} | _ROBERTA_LIKE)


@functools.lru_cache(maxsize=64)
def _forward_params(cls: type) -> frozenset[str]:
    try:
        return frozenset(inspect.signature(cls.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _accepts_position_ids(model: nn.Module) -> bool:
    return "position_ids" in _forward_params(type(model))


def _cache_kwarg(model: nn.Module) -> str:
    """Name of the KV-cache argument of ``model.forward`` (``cache`` in recent transformers)."""
    return "cache" if "cache" in _forward_params(type(model)) else "past_key_values"


def _bos_id(tokenizer: Any, add_bos: bool) -> list[int]:
    if not add_bos or tokenizer is None:
        return []
    bos = getattr(tokenizer, "bos_token_id", None)
    return [] if bos is None else [int(bos)]


def encode_pair(tokenizer: Any, premise: Segment, candidate: Segment, *, direction: Direction = "candidate",
                add_bos: bool = True, max_length: int | None = None, index: int | None = None
                ) -> tuple[list[int], list[bool]]:
    """Token ids of one causal-LM scoring sequence and the mask of scored tokens.

    ``direction="candidate"``: ``[bos] + premise + candidate``, candidate tokens scored;
    ``direction="premise"``: ``[bos] + candidate + premise``, premise tokens scored.

    Returns
    -------
    ids : list[int], length T
    target : list[bool], length T — True where the token is scored.

    Raises
    ------
    ValueError
        Empty segment, unknown direction, or ``T > max_length`` (names the candidate and the lengths).
    """
    which = "" if index is None else f" {index}"
    p = _encode(tokenizer, premise, "premise")
    c = _encode(tokenizer, candidate, f"candidate{which}")
    bos = _bos_id(tokenizer, add_bos)
    if direction == "candidate":
        ctx, tgt = bos + p, c
    elif direction == "premise":
        ctx, tgt = bos + c, p
    else:
        raise ValueError(f"direction must be 'candidate' or 'premise', got {direction!r}")
    ids = ctx + tgt
    if max_length is not None and len(ids) > max_length:
        raise ValueError(f"premise ({len(p)} tokens) + candidate{which} ({len(c)} tokens) + "
                         f"{len(bos)} special = {len(ids)} tokens is longer than the model's context of "
                         f"{max_length} positions; shorten the premise or candidate")
    return ids, [False] * len(ctx) + [True] * len(tgt)


def _pad(seqs: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) ids and int64 attention mask, padded on ``side``."""
    if side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(T - len(s), T) if side == "left" else slice(0, len(s))
        ids[i, sl] = torch.tensor(s, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def _positions(attention_mask: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Position ids that count only real tokens, so left and right padding see the same positions."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0) + offset


def _pad_id(tokenizer: Any, model: nn.Module) -> int:
    for src in (tokenizer, getattr(model, "config", None)):
        for name in ("pad_token_id", "eos_token_id"):
            v = getattr(src, name, None) if src is not None else None
            if isinstance(v, int):
                return v
    return 0  # any id works: padded positions are masked out and never scored


def _device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


class _EvalMode:
    """Run in eval mode (no dropout) under no_grad, restoring the training flag afterwards."""

    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training
        self.ng = torch.no_grad()

    def __enter__(self) -> None:
        self.model.eval()
        self.ng.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.ng.__exit__(*exc)
        self.model.train(self.was_training)


# --------------------------------------------------------------------------------------------------
# causal LM scoring
# --------------------------------------------------------------------------------------------------

def _gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens) from (M, V) logits, log-softmax in float32 on the needed rows only."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[:, None]).squeeze(-1)


def sequence_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      target_mask: torch.Tensor, *, normalize: Normalize = "sum",
                      return_tokens: bool = False) -> torch.Tensor:
    """Differentiable log-probability of the target tokens of a padded batch (causal LM).

    Token ``t`` is predicted from the output at the previous real token; position ids count real tokens
    only, so left and right padding give the same result. Used for training and batched evaluation.

    Parameters
    ----------
    input_ids, attention_mask, target_mask : (N, T)
        ``target_mask`` is True where the token is scored; the first real token of a row must not be.
    normalize : "sum" or "mean"
        Summed log-probability, or divided by the number of target tokens of the row.
    return_tokens : bool
        Return the (N, T) per-token log-probabilities (0 where not a target) instead.

    Returns
    -------
    (N,) float32 scores, or (N, T) if ``return_tokens``.
    """
    if normalize not in ("sum", "mean"):
        raise ValueError(f"normalize must be 'sum' or 'mean', got {normalize!r}")
    attention_mask = attention_mask.long()
    target_mask = target_mask.bool() & attention_mask.bool()
    if bool(target_mask[:, 0].any()) or bool((target_mask[:, 1:] & ~attention_mask[:, :-1].bool()).any()):
        raise ValueError("a target token is the first real token of its row: nothing precedes it to predict it")
    # real tokens are contiguous, so the predictor of target t is position t - 1
    rows, cols = target_mask[:, 1:].nonzero(as_tuple=True)
    cols = cols + 1
    kw: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    params = _forward_params(type(model))
    if "position_ids" in params:
        kw["position_ids"] = _positions(attention_mask)
    offset = 0
    if "logits_to_keep" in params and rows.numel():
        # only positions from the first predictor on need logits: saves (N, T, V) memory for long contexts
        offset = int(cols.min()) - 1
        kw["logits_to_keep"] = input_ids.shape[1] - offset
    logits = model(**kw).logits  # (N, T - offset, V)
    lp = _gather_logprobs(logits[rows, cols - 1 - offset], input_ids[rows, cols])
    tok = torch.zeros(input_ids.shape, dtype=lp.dtype, device=lp.device).index_put((rows, cols), lp)
    if return_tokens:
        return tok
    s = tok.sum(-1)
    if normalize == "mean":
        s = s / target_mask.sum(-1).clamp(min=1)
    return s


def _causal_full(model: nn.Module, seqs: list[list[int]], tmask: list[list[bool]], pad_id: int,
                 batch_size: int, padding_side: str) -> list[torch.Tensor]:
    """Per-token target log-probs, one full (context + target) sequence per row, padded in chunks."""
    dev = _device(model)
    out: list[torch.Tensor] = []
    for s in range(0, len(seqs), batch_size):
        chunk = seqs[s:s + batch_size]
        ids, am = _pad(chunk, pad_id, padding_side)
        tm, _ = _pad([[int(b) for b in m] for m in tmask[s:s + batch_size]], 0, padding_side)
        tok = sequence_logprobs(model, ids.to(dev), am.to(dev), tm.bool().to(dev), return_tokens=True)
        for i in range(len(chunk)):
            out.append(tok[i][tm[i].bool().to(dev)].cpu())
    return out


def _causal_shared_prefix(model: nn.Module, context: list[int], targets: list[list[int]], pad_id: int,
                          batch_size: int, padding_side: str) -> list[torch.Tensor] | None:
    """Per-token target log-probs with one forward of the shared context, its KV cache expanded.

    Returns None when the model's cache cannot be expanded over a batch (then the caller falls back
    to full sequences).
    """
    from transformers.cache_utils import DynamicCache

    dev = _device(model)
    P = len(context)
    ctx = torch.tensor([context], dtype=torch.long, device=dev)
    kw: dict[str, Any] = {"input_ids": ctx, "attention_mask": torch.ones_like(ctx)}
    pos_ok = _accepts_position_ids(model)
    if pos_ok:
        kw["position_ids"] = torch.arange(P, device=dev)[None]
    out = model(**kw, use_cache=True)
    cache = getattr(out, "cache", None)
    if cache is None:  # transformers < 5.2x named it past_key_values
        cache = getattr(out, "past_key_values", None)
    if not isinstance(cache, DynamicCache):
        return None
    lp0 = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # predicts every candidate's first token
    res: list[torch.Tensor] = []
    for s in range(0, len(targets), batch_size):
        chunk = targets[s:s + batch_size]
        n = len(chunk)
        ids, am = _pad(chunk, pad_id, padding_side)
        ids, am = ids.to(dev), am.to(dev)
        c = copy.deepcopy(cache)
        c.batch_repeat_interleave(n)
        kw = {"input_ids": ids, "attention_mask": torch.cat([torch.ones(n, P, dtype=torch.long, device=dev), am], 1),
              _cache_kwarg(model): c, "use_cache": True}
        if pos_ok:
            kw["position_ids"] = _positions(am, offset=P)
        logits = model(**kw).logits  # (n, L, V)
        L = ids.shape[1]
        lengths = am.sum(1)
        first = (L - lengths) if padding_side == "left" else torch.zeros_like(lengths)
        rows, cols = am.bool().nonzero(as_tuple=True)
        is_first = cols == first[rows]
        tok = torch.zeros(n, L, device=dev)
        r, k = rows[~is_first], cols[~is_first]
        tok[r, k] = _gather_logprobs(logits[r, k - 1], ids[r, k])
        r0, k0 = rows[is_first], cols[is_first]
        tok[r0, k0] = lp0[ids[r0, k0]]
        for i in range(n):
            res.append(tok[i][am[i].bool()].cpu())
    return res


# --------------------------------------------------------------------------------------------------
# masked LM scoring
# --------------------------------------------------------------------------------------------------

def _special(tokenizer: Any, names: Sequence[str]) -> int | None:
    for n in names:
        v = getattr(tokenizer, n, None)
        if isinstance(v, int):
            return v
    return None


@dataclass(frozen=True)
class _MaskedCopy:
    ids: list[int]        # the sequence with one premise span replaced by the mask token
    positions: list[int]  # masked absolute positions
    truth: list[int]      # the premise tokens that were there
    premise_index: list[int]  # their indices within the premise
    candidate: int


def _masked_copies(tokenizer: Any, premise: list[int], cands: list[list[int]], *, premise_first: bool, ngram: int,
                   max_len: int | None) -> list[_MaskedCopy]:
    """Masked copies for the target-premise score: one per (candidate, n-gram span of the premise).

    Sequence: ``[cls] premise candidate [sep]`` (``premise_first``) or ``[cls] candidate premise [sep]``;
    cls/sep fall back to bos/eos and are left out if the tokenizer has neither.
    """
    if tokenizer is None:
        raise TypeError("masked-LM scoring needs the tokenizer (for its mask, cls and sep tokens)")
    mask_id = _special(tokenizer, ["mask_token_id"])
    if mask_id is None:
        raise ValueError("the tokenizer has no mask token (mask_token_id is None); masked-LM scoring needs one")
    if not isinstance(ngram, int) or ngram < 1:
        raise ValueError(f"ngram must be a positive int, got {ngram!r}")
    cls = _special(tokenizer, ["cls_token_id", "bos_token_id"])
    sep = _special(tokenizer, ["sep_token_id", "eos_token_id"])
    head, tail = ([cls] if cls is not None else []), ([sep] if sep is not None else [])
    P = len(premise)
    spans = [list(range(s, min(s + ngram, P))) for s in range(0, P, ngram)]
    out: list[_MaskedCopy] = []
    for ci, c in enumerate(cands):
        seq = head + (premise + c if premise_first else c + premise) + tail
        if max_len is not None and len(seq) > max_len:
            raise ValueError(f"premise ({P} tokens) + candidate {ci} ({len(c)} tokens) + {len(head) + len(tail)} "
                             f"special = {len(seq)} tokens is longer than the model's context of {max_len} positions")
        off = len(head) + (0 if premise_first else len(c))
        for sp in spans:
            pos = [off + j for j in sp]
            x = list(seq)
            for q in pos:
                x[q] = mask_id
            out.append(_MaskedCopy(x, pos, [premise[j] for j in sp], sp, ci))
    return out


def _masked_forward(model: nn.Module, copies: Sequence[_MaskedCopy], pad_id: int) -> torch.Tensor:
    """log p(true token) at every masked position of a batch of copies, flattened in copy order; differentiable."""
    dev = _device(model)
    ids, am = _pad([c.ids for c in copies], pad_id, "right")
    ids = ids.to(dev)
    logits = model(input_ids=ids, attention_mask=am.to(dev)).logits
    rows = torch.tensor([i for i, c in enumerate(copies) for _ in c.positions], device=dev)
    cols = torch.tensor([q for c in copies for q in c.positions], device=dev)
    truth = torch.tensor([t for c in copies for t in c.truth], device=dev)
    return _gather_logprobs(logits[rows, cols], truth)


def _masked_premise_logprobs(model: nn.Module, tokenizer: Any, premise: list[int], cands: list[list[int]], *,
                             premise_first: bool, ngram: int, batch_size: int, max_len: int | None
                             ) -> list[torch.Tensor]:
    """Per-premise-token log-probs for each candidate: one masked copy per n-gram span, batched."""
    copies = _masked_copies(tokenizer, premise, cands, premise_first=premise_first, ngram=ngram, max_len=max_len)
    pad_id = _pad_id(tokenizer, model)
    tok_lp = [torch.zeros(len(premise)) for _ in cands]
    for s in range(0, len(copies), batch_size):
        chunk = copies[s:s + batch_size]
        lp = _masked_forward(model, chunk, pad_id).cpu()
        k = 0
        for c in chunk:
            for j in c.premise_index:
                tok_lp[c.candidate][j] = lp[k]
                k += 1
    return tok_lp


# --------------------------------------------------------------------------------------------------
# public scoring API
# --------------------------------------------------------------------------------------------------

def score_tokens(model: nn.Module, tokenizer: Any, premise: Segment, candidates: Sequence[Segment], *,
                 direction: Direction = "candidate", batch_size: int = 32, padding_side: str = "right",
                 reuse_prefix: bool = True, add_bos: bool = True, premise_first: bool = False, ngram: int = 1,
                 model_kind: Literal["auto", "causal", "masked"] = "auto") -> list[torch.Tensor]:
    """Per-token log-probabilities of the scored segment, one float32 tensor per candidate.

    The scored tokens are the candidate's (``direction="candidate"``) or the premise's
    (``direction="premise"``; always the case for masked LMs). See :func:`score` for the arguments.

    Returns
    -------
    list of C tensors; tensor c has shape (n_c,), the scored segment's token count for candidate c.
    """
    cands = _check_candidates(candidates)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if direction not in ("candidate", "premise"):
        raise ValueError(f"direction must be 'candidate' or 'premise', got {direction!r}")
    kind = model_kind if model_kind != "auto" else ("masked" if _is_masked_lm(model) else "causal")
    max_len = _max_positions(model)
    with _EvalMode(model):
        if kind == "masked":
            if direction != "premise":
                raise ValueError("masked LMs score the premise given the candidate: use direction='premise' "
                                 "(place the premise with premise_first)")
            p = _encode(tokenizer, premise, "premise")
            cs = [_encode(tokenizer, c, f"candidate {i}") for i, c in enumerate(cands)]
            return _masked_premise_logprobs(model, tokenizer, p, cs, premise_first=premise_first, ngram=ngram,
                                            batch_size=batch_size, max_len=max_len)
        p_ids = _encode(tokenizer, premise, "premise")  # once, not once per candidate
        pairs = [encode_pair(tokenizer, p_ids, c, direction=direction, add_bos=add_bos, max_length=max_len,
                             index=i) for i, c in enumerate(cands)]
        pad_id = _pad_id(tokenizer, model)
        if direction == "candidate" and reuse_prefix:
            n_ctx = pairs[0][1].index(True)
            res = _causal_shared_prefix(model, pairs[0][0][:n_ctx], [ids[n_ctx:] for ids, _ in pairs], pad_id,
                                        batch_size, padding_side)
            if res is not None:
                return res
        return _causal_full(model, [ids for ids, _ in pairs], [m for _, m in pairs], pad_id, batch_size,
                            padding_side)


def score(model: nn.Module, tokenizer: Any, premise: Segment, candidates: Sequence[Segment], *,
          direction: Direction = "candidate", normalize: Normalize | None = None, batch_size: int = 32,
          padding_side: str = "right", reuse_prefix: bool = True, add_bos: bool = True,
          premise_first: bool = False, ngram: int = 1,
          model_kind: Literal["auto", "causal", "masked"] = "auto") -> torch.Tensor:
    """Plausibility score of each candidate for one premise, from the model's own LM head.

    Parameters
    ----------
    model : causal LM (``AutoModelForCausalLM``) or masked LM (``AutoModelForMaskedLM``)
        Run in eval mode under ``no_grad``; the training flag is restored afterwards.
    tokenizer : Hugging Face tokenizer, or None when every segment is a token id list (causal LMs)
    premise : str or sequence of int
    candidates : sequence of (str or sequence of int), length C >= 1
        Texts or token ids (e.g. a catalog item's SID span). Segments are tokenized separately (no special
        tokens) and concatenated, so text candidates usually start with a space.
    direction : "candidate" or "premise"
        Causal LMs: ``"candidate"`` scores the candidate tokens in ``[bos] premise candidate``;
        ``"premise"`` scores the premise tokens in ``[bos] candidate premise`` (target premise).
        Masked LMs only support ``"premise"``.
    normalize : "sum", "mean" or None
        ``"sum"``: summed log-probability of the scored tokens. ``"mean"``: divided by their count.
        None picks ``"mean"`` for ``direction="candidate"`` and ``"sum"`` for ``"premise"``.
    batch_size : int
        Rows per forward (candidates for causal LMs, masked copies for masked LMs).
    padding_side : "left" or "right"
        How candidates of different lengths are padded; scores do not depend on it.
    reuse_prefix : bool
        Causal, ``direction="candidate"``: run the shared premise once and expand its KV cache over the
        candidates (falls back to full sequences for models without a ``DynamicCache``).
    add_bos : bool
        Prepend the tokenizer's BOS token (if it has one), so the first segment has a context too.
    premise_first : bool
        Masked LMs: text is ``premise candidate`` if True, else ``candidate premise``.
    ngram : int
        Masked LMs: mask non-overlapping spans of ``ngram`` premise tokens at once (1 = one token at a
        time, the paper's score). Each premise token is still scored exactly once.
    model_kind : "auto", "causal" or "masked"
        Override the detection from the model class.

    Returns
    -------
    torch.Tensor, shape (C,), float32 on CPU. Higher is more plausible.

    Raises
    ------
    ValueError
        Empty ``candidates``, an empty segment, a sequence longer than the model's context, an unknown
        option (each message names the problem).
    """
    norm = normalize if normalize is not None else ("mean" if direction == "candidate" else "sum")
    if norm not in ("sum", "mean"):
        raise ValueError(f"normalize must be 'sum', 'mean' or None, got {normalize!r}")
    toks = score_tokens(model, tokenizer, premise, candidates, direction=direction, batch_size=batch_size,
                        padding_side=padding_side, reuse_prefix=reuse_prefix, add_bos=add_bos,
                        premise_first=premise_first, ngram=ngram, model_kind=model_kind)
    sums = torch.stack([t.sum() for t in toks])
    if norm == "mean":
        sums = sums / torch.tensor([len(t) for t in toks], dtype=sums.dtype)
    return sums


def rank(model: nn.Module, tokenizer: Any, premise: Segment, candidates: Sequence[Segment], **kwargs: Any
         ) -> tuple[list[int], torch.Tensor]:
    """Candidates ordered from most to least plausible, e.g. to re-rank beam-search outputs.

    ``kwargs`` go to :func:`score`. Ties keep the input order.

    Returns
    -------
    order : list[int], length C — candidate indices, best first
    scores : (C,) float32 tensor — the scores in input order
    """
    s = score(model, tokenizer, premise, candidates, **kwargs)
    order = sorted(range(len(s)), key=lambda i: (-float(s[i]), i))
    return order, s


# --------------------------------------------------------------------------------------------------
# full-text formatting
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChoiceText:
    """A multiple-choice question written as full text: ``premise + candidate`` or ``candidate + premise``.

    Attributes
    ----------
    premise : str
        The premise segment exactly as it appears in the full text (connective and spacing included).
    candidates : list[str]
        Candidate segments exactly as they appear in the full text.
    premise_first : bool
        True: full text is ``premise + candidate`` (causal LMs score the candidate); False: full text is
        ``candidate + premise`` (causal LMs score the premise: the target-premise score).
    """

    premise: str
    candidates: list[str]
    premise_first: bool

    def full_texts(self) -> list[str]:
        """The C full texts."""
        return [self.premise + c if self.premise_first else c + self.premise for c in self.candidates]

    @property
    def direction(self) -> Direction:
        """The causal-LM direction this layout supports."""
        return "candidate" if self.premise_first else "premise"


def _strip_period(s: str) -> str:
    s = s.strip()
    return s[:-1].rstrip() if s.endswith(".") else s


def _lower_first(s: str) -> str:
    """Lowercase a sentence's first letter unless the first word is 'I' or an acronym (e.g. 'TV')."""
    s = s.strip()
    if not s:
        return s
    word = s.split()[0].rstrip(".,;:!?'’s")
    if word == "I" or word.startswith("I'") or (len(word) > 1 and word.isupper()):
        return s
    return s[0].lower() + s[1:]


def format_copa(premise: str, alternatives: Sequence[str], asks_for: str, *,
                reverse_cause: bool = True) -> ChoiceText:
    """COPA question as full text with a connective ("because" / "so").

    Effect questions read ``"<premise> so <alternative>."``; cause questions read
    ``"<premise> because <alternative>."``, or, with ``reverse_cause`` (default), are reversed into effect
    form ``"<alternative> so <premise>."``, so the premise comes last and a causal LM can score it given
    the candidate (target premise). The first segment loses its final period, the second is lowercased
    (except "I" and acronyms).

    Returns
    -------
    ChoiceText
    """
    if asks_for not in ("cause", "effect"):
        raise ValueError(f"asks_for must be 'cause' or 'effect', got {asks_for!r}")
    alts = _check_candidates(list(alternatives))
    if asks_for == "cause" and reverse_cause:
        return ChoiceText(" " + _lower_first(premise), [_strip_period(a) + " so" for a in alts], False)
    conn = " because" if asks_for == "cause" else " so"
    return ChoiceText(_strip_period(premise) + conn, [" " + _lower_first(a) for a in alts], True)


def format_qa(question: str, choices: Sequence[str]) -> ChoiceText:
    """Question answering as full text ``"Q: <question> A: <choice>"`` (candidate scored given question)."""
    cs = _check_candidates(list(choices))
    return ChoiceText(f"Q: {question.strip()} A:", [" " + c.strip() for c in cs], True)


def score_text(model: nn.Module, tokenizer: Any, text: ChoiceText, **kwargs: Any) -> torch.Tensor:
    """:func:`score` a :class:`ChoiceText` in the direction its layout supports.

    Causal LMs score the second segment given the first (``text.direction``); masked LMs always score
    the premise, wherever it is. ``kwargs`` go to :func:`score`.
    """
    kind = kwargs.get("model_kind", "auto")
    masked = kind == "masked" or (kind == "auto" and _is_masked_lm(model))
    if masked:
        return score(model, tokenizer, text.premise, text.candidates, direction="premise",
                     premise_first=text.premise_first, **kwargs)
    return score(model, tokenizer, text.premise, text.candidates, direction=text.direction, **kwargs)


# --------------------------------------------------------------------------------------------------
# losses and heads
# --------------------------------------------------------------------------------------------------

def margin_ranking_loss(scores: torch.Tensor, labels: torch.Tensor, *, eta: float = 0.5,
                        candidate_mask: torch.Tensor | None = None,
                        reduction: Literal["mean", "sum", "none"] = "mean") -> torch.Tensor:
    """Margin ranking loss over candidate scores (Tamborrino et al. 2020), no extra head.

    Per question: ``L = mean over wrong candidates i of max(0, eta - S_correct + S_i)``.

    Parameters
    ----------
    scores : (B, C) float
    labels : (B,) int, index of the correct candidate
    eta : float, margin (0.5 by default)
    candidate_mask : (B, C) bool, optional; False marks padding candidates (questions with fewer choices)
    reduction : "mean" (over questions), "sum" or "none" (returns (B,))
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (B, C), got {tuple(scores.shape)}")
    B, C = scores.shape
    if C < 2:
        raise ValueError("margin ranking needs at least 2 candidates per question")
    labels = labels.long().to(scores.device)
    valid = torch.ones_like(scores, dtype=torch.bool) if candidate_mask is None else candidate_mask.bool()
    if not bool(valid.gather(1, labels[:, None]).all()):
        raise ValueError("a label points at a masked-out candidate")
    wrong = valid.clone()
    wrong[torch.arange(B, device=scores.device), labels] = False
    s_c = scores.gather(1, labels[:, None])
    hinge = torch.relu(eta - s_c + scores) * wrong
    per_q = hinge.sum(1) / wrong.sum(1).clamp(min=1)
    if reduction == "mean":
        return per_q.mean()
    if reduction == "sum":
        return per_q.sum()
    if reduction == "none":
        return per_q
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def multiple_choice_loss(scores: torch.Tensor, labels: torch.Tensor, *, loss: Literal["margin", "ce"] = "margin",
                         eta: float = 0.5, candidate_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``"margin"``: :func:`margin_ranking_loss`; ``"ce"``: cross-entropy over the C scores (softmax)."""
    if loss == "margin":
        return margin_ranking_loss(scores, labels, eta=eta, candidate_mask=candidate_mask)
    if loss == "ce":
        if candidate_mask is not None:
            scores = scores.masked_fill(~candidate_mask.bool(), float("-inf"))
        return F.cross_entropy(scores, labels.long().to(scores.device))
    raise ValueError(f"loss must be 'margin' or 'ce', got {loss!r}")


class ClassifierHead(nn.Module):
    """Baseline: a randomly initialised linear head on the LM's last hidden state (train with CE).

    The pooled state is the final-layer hidden state at each row's last real token (causal LMs) or at the
    first token (masked LMs, [CLS]). One scalar per (question, candidate) row, softmax over candidates,
    as in ``*ForMultipleChoice`` models.

    Parameters
    ----------
    model : the pre-trained LM (its LM head is ignored)
    seed : int, optional; seeds the head's initialisation
    """

    def __init__(self, model: nn.Module, seed: int | None = None):
        super().__init__()
        self.model = model
        cfg = model.config
        hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd")
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            std = getattr(cfg, "initializer_range", 0.02)
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=g) * std)
            self.head.bias.zero_()
        self.head.to(_device(model))
        self.pool_first = _is_masked_lm(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(N, T) ids and mask -> (N,) scores."""
        kw: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask,
                              "output_hidden_states": True}
        if not self.pool_first and _accepts_position_ids(self.model):
            kw["position_ids"] = _positions(attention_mask)
        if not self.pool_first:
            kw["use_cache"] = False
        h = self.model(**kw).hidden_states[-1]  # (N, T, H)
        if self.pool_first:
            idx = attention_mask.long().argmax(1)  # first real token
        else:
            T = attention_mask.shape[1]
            idx = T - 1 - attention_mask.long().flip(1).argmax(1)  # last real token, either padding side
        pooled = h[torch.arange(h.shape[0], device=h.device), idx]
        return self.head(pooled.to(self.head.weight.dtype)).squeeze(-1)


# --------------------------------------------------------------------------------------------------
# batches, training and evaluation
# --------------------------------------------------------------------------------------------------

@dataclass
class MultipleChoiceCollator:
    """Collate multiple-choice examples into padded (B, C, T) causal-LM scoring batches.

    Each feature is a mapping with ``premise`` (str or ids), ``candidates`` (list of str or ids) and
    optionally ``label`` (int). Questions may have different numbers of candidates.

    Returns a dict with ``input_ids``, ``attention_mask``, ``target_mask`` of shape (B, C, T),
    ``candidate_mask`` (B, C) bool and, when all features have one, ``labels`` (B,).
    """

    tokenizer: Any
    direction: Direction = "candidate"
    add_bos: bool = True
    padding_side: str = "right"
    max_length: int | None = None
    pad_token_id: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty list of features")
        seqs, tms, counts = [], [], []
        for qi, f in enumerate(features):
            cands = _check_candidates(f["candidates"])
            counts.append(len(cands))
            p_ids = _encode(self.tokenizer, f["premise"], f"premise of feature {qi}")
            for ci, c in enumerate(cands):
                ids, tm = encode_pair(self.tokenizer, p_ids, c, direction=self.direction,
                                      add_bos=self.add_bos, max_length=self.max_length, index=ci)
                seqs.append(ids)
                tms.append(tm)
        pad = self.pad_token_id if self.pad_token_id is not None else _pad_id(self.tokenizer, None)  # type: ignore[arg-type]
        ids, am = _pad(seqs, pad, self.padding_side)
        tm, _ = _pad([[int(b) for b in m] for m in tms], 0, self.padding_side)
        B, C, T = len(features), max(counts), ids.shape[1]
        out_ids = torch.full((B, C, T), pad, dtype=torch.long)
        out_am = torch.zeros((B, C, T), dtype=torch.long)
        out_tm = torch.zeros((B, C, T), dtype=torch.bool)
        cmask = torch.zeros((B, C), dtype=torch.bool)
        k = 0
        for b, n in enumerate(counts):
            out_ids[b, :n], out_am[b, :n], out_tm[b, :n] = ids[k:k + n], am[k:k + n], tm[k:k + n].bool()
            cmask[b, :n] = True
            # padding candidates: one harmless real token so every row has a valid forward
            out_am[b, n:, -1 if self.padding_side == "left" else 0] = 1
            k += n
        batch = {"input_ids": out_ids, "attention_mask": out_am, "target_mask": out_tm, "candidate_mask": cmask}
        if all("label" in f and f["label"] is not None for f in features):
            batch["labels"] = torch.tensor([int(f["label"]) for f in features], dtype=torch.long)
        return batch


@dataclass
class MaskedMultipleChoiceCollator:
    """Collate multiple-choice examples for a masked LM's target-premise score (differentiable, batched).

    Every (question, candidate) pair becomes one masked copy per n-gram span of the premise (see
    :func:`score`); all copies of the batch are padded together (right padding).

    Returns a dict with ``input_ids``, ``attention_mask`` (R, T) over the R copies, ``masked`` (R, T) bool
    (positions to score), ``true_ids`` (R, T) (the premise tokens there), ``copy_owner`` (R,) (flat index
    ``b * C + c`` of the pair), ``premise_length`` (B,), ``candidate_mask`` (B, C) and ``labels`` (B,) when
    every feature has one.
    """

    tokenizer: Any
    premise_first: bool = False
    ngram: int = 1
    max_length: int | None = None

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("cannot collate an empty list of features")
        cands = [_check_candidates(f["candidates"]) for f in features]
        B, C = len(features), max(len(c) for c in cands)
        copies, owner, plen = [], [], []
        for qi, f in enumerate(features):
            p_ids = _encode(self.tokenizer, f["premise"], f"premise of feature {qi}")
            c_ids = [_encode(self.tokenizer, c, f"candidate {ci}") for ci, c in enumerate(cands[qi])]
            for cp in _masked_copies(self.tokenizer, p_ids, c_ids, premise_first=self.premise_first,
                                     ngram=self.ngram, max_len=self.max_length):
                copies.append(cp)
                owner.append(qi * C + cp.candidate)
            plen.append(len(p_ids))
        ids, am = _pad([c.ids for c in copies], _pad_id(self.tokenizer, None), "right")  # type: ignore[arg-type]
        masked = torch.zeros(ids.shape, dtype=torch.bool)
        true_ids = torch.zeros(ids.shape, dtype=torch.long)
        for r, c in enumerate(copies):
            masked[r, c.positions] = True
            true_ids[r, c.positions] = torch.tensor(c.truth)
        cmask = torch.zeros((B, C), dtype=torch.bool)
        for b, c in enumerate(cands):
            cmask[b, :len(c)] = True
        batch = {"input_ids": ids, "attention_mask": am, "masked": masked, "true_ids": true_ids,
                 "copy_owner": torch.tensor(owner), "premise_length": torch.tensor(plen), "candidate_mask": cmask}
        if all("label" in f and f["label"] is not None for f in features):
            batch["labels"] = torch.tensor([int(f["label"]) for f in features], dtype=torch.long)
        return batch


def choice_scores(model: nn.Module, batch: dict[str, torch.Tensor], *, normalize: Normalize = "mean"
                  ) -> torch.Tensor:
    """(B, C) scores of a :class:`MultipleChoiceCollator` or :class:`MaskedMultipleChoiceCollator` batch,
    differentiable.

    A :class:`ClassifierHead` scores with its head; any other model with its LM head (:func:`sequence_logprobs`
    for causal batches; summed masked-token log-probs for masked batches, divided by the premise length
    with ``normalize="mean"``). Padding candidates get ``-inf``.
    """
    if "copy_owner" in batch:
        dev = _device(model)
        cm = batch["candidate_mask"].to(dev)
        B, C = cm.shape
        ids = batch["input_ids"].to(dev)
        logits = model(input_ids=ids, attention_mask=batch["attention_mask"].to(dev)).logits
        rows, cols = batch["masked"].to(dev).nonzero(as_tuple=True)
        lp = _gather_logprobs(logits[rows, cols], batch["true_ids"].to(dev)[rows, cols])
        s = torch.zeros(B * C, dtype=lp.dtype, device=dev).index_add(0, batch["copy_owner"].to(dev)[rows], lp)
        s = s.view(B, C)
        if normalize == "mean":
            s = s / batch["premise_length"].to(dev)[:, None]
        return s.masked_fill(~cm, float("-inf"))
    ids, am, tm = batch["input_ids"], batch["attention_mask"], batch["target_mask"]
    B, C, T = ids.shape
    dev = _device(model)
    flat = [x.reshape(B * C, T).to(dev) for x in (ids, am, tm)]
    if isinstance(model, ClassifierHead):
        s = model(flat[0], flat[1])
    else:
        s = sequence_logprobs(model, flat[0], flat[1], flat[2], normalize=normalize)
    s = s.view(B, C)
    cm = batch.get("candidate_mask")
    if cm is not None:
        s = s.masked_fill(~cm.to(dev), float("-inf"))
    return s


def _default_loss(model: nn.Module) -> str:
    return "ce" if isinstance(model, ClassifierHead) else "margin"


def fine_tune(model: nn.Module, collator: Any, examples: Sequence[dict[str, Any]], *,
              loss: Literal["margin", "ce"] | None = None, eta: float = 0.5, normalize: Normalize = "mean",
              epochs: int = 1, batch_size: int = 8, lr: float = 1e-4, weight_decay: float = 0.0,
              seed: int = 0, max_grad_norm: float | None = 1.0, progress: bool = False) -> list[float]:
    """Small plain-torch fine-tuning loop (AdamW) on multiple-choice examples.

    ``loss`` defaults to ``"margin"`` for an LM (score fine-tuning) and ``"ce"`` for a
    :class:`ClassifierHead`. Returns the per-step losses. The model is left in train mode.
    """
    if not examples:
        raise ValueError("no training examples")
    loss = loss or _default_loss(model)  # type: ignore[assignment]
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    model.train()
    history: list[float] = []
    order = list(range(len(examples)))
    for _ in range(epochs):
        rng.shuffle(order)
        for s in range(0, len(order), batch_size):
            batch = collator([examples[i] for i in order[s:s + batch_size]])
            scores = choice_scores(model, batch, normalize=normalize)
            lab = batch["labels"].to(scores.device)
            cm = batch["candidate_mask"].to(scores.device)
            l = multiple_choice_loss(scores.masked_fill(~cm, 0.0) if loss == "margin" else scores, lab,
                                     loss=loss, eta=eta, candidate_mask=cm)
            opt.zero_grad(set_to_none=True)
            l.backward()
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
            opt.step()
            history.append(float(l.detach()))
            if progress:
                print(f"step {len(history)} loss {history[-1]:.4f}")
    return history


def evaluate_choices(model: nn.Module, collator: Any, examples: Sequence[dict[str, Any]], *,
                     normalize: Normalize = "mean", batch_size: int = 32) -> tuple[float, np.ndarray]:
    """Accuracy of argmax-score predictions and the (N,) predicted indices (eval mode, no grad)."""
    if not examples:
        raise ValueError("no evaluation examples")
    preds, labels = [], []
    with _EvalMode(model):
        for s in range(0, len(examples), batch_size):
            batch = collator(list(examples[s:s + batch_size]))
            preds.append(choice_scores(model, batch, normalize=normalize).argmax(1).cpu())
            labels.append(batch["labels"])
    p = torch.cat(preds).numpy()
    return accuracy(p, torch.cat(labels).numpy()), p


def accuracy(predictions: Iterable[int] | np.ndarray, labels: Iterable[int] | np.ndarray) -> float:
    """Fraction of predictions equal to labels (predictions may also be (N, C) scores: argmax is taken)."""
    p, y = np.asarray(predictions), np.asarray(labels)
    if p.ndim == 2:
        p = p.argmax(1)
    if p.shape != y.shape or p.size == 0:
        raise ValueError(f"predictions {p.shape} and labels {y.shape} must be non-empty and of the same shape")
    return float((p == y).mean())


def restart_summary(values: Sequence[float]) -> dict[str, float]:
    """mean / std (sample, ddof=1; 0 for one run) / max / min / n over random restarts."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        raise ValueError("no values to summarise")
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "max": float(a.max()), "min": float(a.min()), "n": int(a.size)}


# --------------------------------------------------------------------------------------------------
# Hugging Face Trainer support (class built on first access: importing the trainer stack is slow)
# --------------------------------------------------------------------------------------------------

def _make_trainer_class() -> type:
    from transformers import Trainer

    class ScoringTrainer(Trainer):
        """``Trainer`` that fine-tunes on multiple-choice scores from :class:`MultipleChoiceCollator` batches.

        Extra keyword arguments: ``loss`` (``"margin"``, the default for an LM, or ``"ce"``, the default
        for a :class:`ClassifierHead`), ``eta`` (margin, 0.5) and ``normalize`` (``"mean"`` or ``"sum"``).
        Use ``TrainingArguments(remove_unused_columns=False)`` and ``data_collator=MultipleChoiceCollator(...)``
        (or ``MaskedMultipleChoiceCollator(...)`` for a masked LM).
        Evaluation predictions are the (B, C) scores, so ``compute_metrics`` can take the argmax.
        """

        def __init__(self, *args: Any, loss: str | None = None, eta: float = 0.5, normalize: Normalize = "mean",
                     **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.mc_loss = loss or _default_loss(self.model)
            self.mc_eta = eta
            self.mc_normalize = normalize

        def _mc(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
            scores = choice_scores(model, inputs, normalize=self.mc_normalize)
            cm = inputs["candidate_mask"].to(scores.device)
            s = scores.masked_fill(~cm, 0.0) if self.mc_loss == "margin" else scores
            loss = multiple_choice_loss(s, inputs["labels"], loss=self.mc_loss, eta=self.mc_eta,  # type: ignore[arg-type]
                                        candidate_mask=cm)
            return loss, scores

        def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            loss, scores = self._mc(model, inputs)
            return (loss, {"scores": scores}) if return_outputs else loss

        def prediction_step(self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool,
                            ignore_keys: list[str] | None = None) -> tuple[Any, Any, Any]:
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad():
                loss, scores = self._mc(model, inputs)
            if prediction_loss_only:
                return loss.detach(), None, None
            return loss.detach(), scores.detach(), inputs["labels"]

    ScoringTrainer.__module__ = __name__
    return ScoringTrainer


_lazy: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name == "ScoringTrainer":
        if name not in _lazy:
            _lazy[name] = _make_trainer_class()
        return _lazy[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
