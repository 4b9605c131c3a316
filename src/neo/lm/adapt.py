"""Adapt any Hugging Face causal LM to a SID vocabulary: resize and initialise the new rows.

:func:`adapt_model` grows the input embeddings (and an untied LM head) to ``vocab.vocab_size`` rows
and initialises the SID rows. Two initialisations:

``"mean"`` (default)
    Every new row is the mean of the existing text rows plus tiny Gaussian noise (1% of each
    dimension's standard deviation, so rows are not exactly identical). Why default: with the mean,
    a new token's logit equals the average of the old logits, so the adapted model's text
    distribution stays almost exactly the pre-trained one (Hewitt, "Initializing new word
    embeddings for pretrained language models", 2021) -- nothing is learnt yet about the items, and
    nothing about the language is lost. It needs no catalog text and costs nothing.

``"semantic"``
    Code ``c`` at level ``l`` of type ``t`` starts at the mean, over the items whose level-``l`` code
    is ``c``, of the model's own token embeddings of the item's text (and likewise for the rows of
    an untied LM head, with the head's rows). Items sharing a first-level code are semantically
    close, so alignment training starts with tokens that already "mean" something; deeper levels
    (residual codes) carry less meaning. Use it when the catalog text is informative. Delimiters and
    codes without items get the mean.

Tied embeddings (GPT-2, small Qwen) are detected from the weights themselves: only one matrix is
written and the tie survives the resize. Untied heads (Llama) get their own rows; an LM-head bias, if
any, gets the mean bias.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .vocab import SidVocab, VocabMismatchError

__all__ = ["adapt_model", "check_model", "embeddings_tied", "sid_row_vectors", "INIT_METHODS"]

INIT_METHODS = ("mean", "semantic")


def embeddings_tied(model: Any) -> bool:
    """Whether the LM head shares its weight with the input embeddings."""
    out = model.get_output_embeddings()
    inp = model.get_input_embeddings()
    return out is None or out.weight is inp.weight or out.weight.data_ptr() == inp.weight.data_ptr()


def check_model(model: Any, vocab: SidVocab) -> None:
    """Raise :class:`VocabMismatchError` unless the model has a row for every id of ``vocab``."""
    n_in = model.get_input_embeddings().weight.shape[0]
    out = model.get_output_embeddings()
    n_out = n_in if out is None else out.weight.shape[0]
    if n_in < vocab.vocab_size or n_out < vocab.vocab_size:
        raise VocabMismatchError(
            f"model has {n_in} input / {n_out} output embedding rows but the SID vocabulary needs {vocab.vocab_size}; "
            "call neo.adapt_model(model, vocab) first"
        )


def _text_embedding_of(weight: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    if len(ids) == 0:
        return weight.mean(0)
    return weight[torch.as_tensor(list(ids), dtype=torch.long, device=weight.device)].mean(0)


def sid_row_vectors(
    weight: torch.Tensor,
    vocab: SidVocab,
    tokenizer: Any,
    sid_tokens: Mapping[str, Any],
    texts: Mapping[str, Sequence[str]],
    fallback: torch.Tensor,
) -> dict[int, torch.Tensor]:
    """Semantic initial vectors of the code tokens.

    Parameters
    ----------
    weight : Tensor (V_old, D)
        Embedding matrix whose text rows describe the item text (input embeddings or LM head).
    sid_tokens : mapping type -> int array (N_t, L_t)
        Token ids of each item's SID.
    texts : mapping type -> list of N_t str
        Text of each item (same order as ``sid_tokens``).
    fallback : Tensor (D,)
        Vector for codes no item uses.

    Returns
    -------
    dict token id -> Tensor (D,)
    """
    text_rows = vocab.token_begin
    w = weight.detach().float()[:text_rows]
    out: dict[int, torch.Tensor] = {}
    for t, toks in sid_tokens.items():
        toks = np.asarray(toks)
        tx = list(texts.get(t, []))
        if len(tx) != toks.shape[0]:
            raise ValueError(f"type {t!r}: {len(tx)} texts for {toks.shape[0]} SIDs")
        if toks.shape[0] == 0:
            continue
        enc = tokenizer(tx, add_special_tokens=False)["input_ids"]
        item_vecs = torch.stack([_text_embedding_of(w, [i for i in ids if i < text_rows]) for ids in enc])
        for lvl in range(toks.shape[1]):
            col = torch.as_tensor(toks[:, lvl].astype(np.int64))
            uniq, inv = torch.unique(col, return_inverse=True)
            sums = torch.zeros(len(uniq), w.shape[1]).index_add_(0, inv, item_vecs)
            counts = torch.bincount(inv, minlength=len(uniq)).clamp_min(1).unsqueeze(1)
            for tok, vec in zip(uniq.tolist(), sums / counts):
                out[int(tok)] = vec
    return out


@torch.no_grad()
def _init_rows(weight: torch.Tensor, begin: int, end: int, text_rows: int, noise: float,
               generator: torch.Generator, semantic: dict[int, torch.Tensor] | None) -> None:
    old = weight[:text_rows].float()
    mean = old.mean(0)
    std = old.std(0) if text_rows > 1 else torch.zeros_like(mean)
    n = end - begin
    if n <= 0:
        return
    eps = torch.randn(n, weight.shape[1], generator=generator) * (noise * std.cpu())
    rows = mean.cpu().unsqueeze(0) + eps
    if semantic:
        for tok, vec in semantic.items():
            if begin <= tok < end:
                rows[tok - begin] = vec.cpu()
    weight[begin:end] = rows.to(weight.dtype).to(weight.device)


@torch.no_grad()
def adapt_model(
    model: Any,
    vocab: SidVocab,
    *,
    init: str = "mean",
    tokenizer: Any = None,
    sid_tokens: Mapping[str, Any] | None = None,
    texts: Mapping[str, Sequence[str]] | None = None,
    noise: float = 0.01,
    seed: int = 0,
    pad_to_multiple_of: int | None = None,
) -> dict[str, Any]:
    """Resize ``model`` to the SID vocabulary and initialise the SID rows (in place).

    Parameters
    ----------
    model : PreTrainedModel
        Any causal LM (Llama, Qwen2/3, GPT-2, ...).
    vocab : SidVocab
        The SID block; the model gets ``max(current rows, vocab.vocab_size)`` rows. Rows in the SID
        block that already existed (a model padded past its tokenizer, e.g. Qwen) are re-initialised.
    init : {"mean", "semantic"}
        See the module docstring; ``"mean"`` is the default.
    tokenizer, sid_tokens, texts
        Needed for ``init="semantic"``: the tokenizer that encodes the item texts, the SID token ids
        per type ``(N_t, L_t)`` and the item texts per type (same order).
    noise : float
        Std of the noise added to the mean, relative to each dimension's std over the text rows.
    seed : int
        Seed of that noise.
    pad_to_multiple_of : int, optional
        Round the embedding rows up (padding rows get the mean and are never generated).

    Returns
    -------
    dict
        ``old_rows``, ``new_rows``, ``tied`` and ``init``.

    Raises
    ------
    ValueError
        Unknown ``init``, or ``"semantic"`` without ``tokenizer``/``sid_tokens``/``texts``.
    """
    if init not in INIT_METHODS:
        raise ValueError(f"unknown init {init!r}; use one of {INIT_METHODS}")
    if init == "semantic" and (tokenizer is None or sid_tokens is None or texts is None):
        raise ValueError("init='semantic' needs tokenizer=, sid_tokens= and texts= (the item texts per type)")
    inp = model.get_input_embeddings()
    old_rows = int(inp.weight.shape[0])
    if vocab.token_begin > old_rows:
        raise VocabMismatchError(
            f"the SID block starts at id {vocab.token_begin} but the model has only {old_rows} rows: the vocabulary "
            "was built for a larger tokenizer than this model's"
        )
    tied_before = embeddings_tied(model)
    target = max(old_rows, vocab.vocab_size)
    if pad_to_multiple_of:
        target = -(-target // int(pad_to_multiple_of)) * int(pad_to_multiple_of)
    if target != old_rows:
        # mean_resizing=False: we initialise the rows ourselves (HF's default samples all new rows,
        # including ones we overwrite, from a full-covariance Gaussian: slow at large hidden sizes).
        model.resize_token_embeddings(target, mean_resizing=False)
    inp = model.get_input_embeddings()
    out = model.get_output_embeddings()
    tied = embeddings_tied(model)
    if tied_before and not tied:
        raise RuntimeError("resizing untied the model's input and output embeddings; report this model class")
    gen = torch.Generator().manual_seed(int(seed))
    text_rows = vocab.token_begin
    begin, end = text_rows, target  # SID block plus any padding rows after it
    sem_in = sem_out = None
    if init == "semantic":
        mean_in = inp.weight[:text_rows].float().mean(0)
        sem_in = sid_row_vectors(inp.weight, vocab, tokenizer, sid_tokens, texts, mean_in)
        if not tied and out is not None:
            mean_out = out.weight[:text_rows].float().mean(0)
            sem_out = sid_row_vectors(out.weight, vocab, tokenizer, sid_tokens, texts, mean_out)
    _init_rows(inp.weight, begin, end, text_rows, noise, gen, sem_in)
    if not tied and out is not None:
        _init_rows(out.weight, begin, end, text_rows, noise, gen, sem_out)
        bias = getattr(out, "bias", None)
        if bias is not None:
            bias[begin:end] = bias[:text_rows].mean()
    model.config.vocab_size = target
    check_model(model, vocab)
    return {"old_rows": old_rows, "new_rows": target, "tied": tied, "init": init}
