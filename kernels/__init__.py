"""Triton kernels and their torch references (installed as ``neo.kernels``).

Public API (every function takes ``backend="auto" | "triton" | "torch"``; ``"auto"`` runs Triton on
CUDA tensors and the torch reference otherwise):

* :func:`apply_token_bitmask_inplace` — apply a packed int32 bitmask (xgrammar / vLLM format) in place.
* :func:`sample_masked` — fused bitmask + temperature + top-k + top-p + seeded Gumbel-max / greedy.
* :func:`beam_topk` — full-vocabulary log-softmax, SID-band candidates, top-k per request across beams.
* :func:`logsumexp_rows` — full-vocabulary log-sum-exp per row (share it between ``beam_topk`` calls).
* :func:`scatter_bands_` — OR per-row SID bands into a full-vocabulary bitmask in place.
* :class:`DeviceTrie` — the trie of one item type on the device; batched advance + allowed band.
* :func:`band_to_bitmask` — scatter per-row bands into a new full-vocabulary bitmask (torch, any device).

Triton is imported lazily: ``import neo.kernels`` and ``neo.kernels.reference`` never import it, so a
CPU-only install works without it. This package never imports ``neo``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence, Union

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .device_trie import DeviceTrie  # noqa: F401

__all__ = [
    "apply_token_bitmask_inplace",
    "sample_masked",
    "beam_topk",
    "logsumexp_rows",
    "scatter_bands_",
    "band_to_bitmask",
    "DeviceTrie",
    "OUTSIDE",
    "ERROR",
]

OUTSIDE = -1  #: trie state of a row outside any SID span
ERROR = -2  #: trie state of a row in the sticky error state


def _use_triton(backend: str, t: "torch.Tensor") -> bool:
    if backend == "auto":
        return t.is_cuda
    if backend == "triton":
        return True
    if backend == "torch":
        return False
    raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")


def apply_token_bitmask_inplace(
    logits: "torch.Tensor",
    bitmask: "torch.Tensor",
    indices: Optional[Union[Sequence[int], "torch.Tensor"]] = None,
    vocab_size: Optional[int] = None,
    backend: str = "auto",
) -> None:
    """Set masked logits to ``-inf`` in place.

    Parameters
    ----------
    logits : Tensor ``(rows, V)`` or ``(V,)``, float32 / float16 / bfloat16
        Any row stride; the vocabulary dimension must be contiguous for Triton.
    bitmask : Tensor ``(rows, W)`` or ``(W,)``, int32
        Bit ``j`` of word ``w`` = token ``32*w + j``, 1 = allowed. ``W < ceil(V/32)``: the uncovered
        columns are masked; ``W > ceil(V/32)``: extra words are ignored.
    indices : sequence of int or int Tensor, optional
        xgrammar / vLLM semantics: only rows ``indices[i]`` are modified, each with the bitmask row of
        the same index (``bitmask[indices[i]]``), so the bitmask has (at least) as many rows as the
        logits. ``None``: every row, ``bitmask.shape[0] == logits.shape[0]``.
    vocab_size : int, optional
        Touch only columns ``[0, vocab_size)`` (xgrammar's argument: leave padding columns alone).
    backend : ``"auto"``, ``"triton"`` or ``"torch"``.
    """
    if _use_triton(backend, logits):
        from .bitmask import apply_token_bitmask_inplace_triton as fn
    else:
        from .reference import apply_token_bitmask_inplace_torch as fn
    fn(logits, bitmask, indices, vocab_size)


def sample_masked(
    logits: "torch.Tensor",
    bitmask: Optional["torch.Tensor"] = None,
    temperature: Union[float, "torch.Tensor"] = 1.0,
    top_k: Union[int, "torch.Tensor"] = 0,
    top_p: Union[float, "torch.Tensor"] = 1.0,
    seeds: Union[int, "torch.Tensor", None] = 0,
    greedy: Union[bool, "torch.Tensor"] = False,
    return_logprobs: bool = False,
    backend: str = "auto",
):
    """Draw one token per row from masked, tempered, top-k/top-p filtered logits (Gumbel-max).

    Order: bitmask -> temperature -> top-k -> top-p -> Gumbel-max (or argmax for greedy rows).

    Parameters
    ----------
    logits : Tensor ``(rows, V)`` float32 / float16 / bfloat16 (math in float32). Not modified.
    bitmask : Tensor ``(rows, W)`` int32, optional. Allowed tokens (columns past ``32*W`` disallowed).
    temperature : float or Tensor ``(rows,)`` float. ``<= 0`` -> greedy for that row.
    top_k : int or Tensor ``(rows,)`` int. ``0`` or ``>=`` allowed count disables; keeps every token
        whose scaled logit is ``>=`` the k-th largest allowed one (boundary ties kept).
    top_p : float or Tensor ``(rows,)`` float. ``>= 1`` disables; keeps the tokens with scaled logit
        ``>= t``, ``t`` the largest value whose upper probability mass (within top-k) is ``>= p``.
    seeds : int or Tensor ``(rows,)`` int64. Per-row seed of a counter-based hash RNG shared by both
        backends: Gumbel noise of token ``t`` in a row depends only on ``(seed, t)``, so the same seed
        and inputs give the same token on CPU and GPU, in any batch composition. Use a fresh seed per
        decode step (e.g. ``base * 1_000_003 + step``), otherwise consecutive draws share noise.
    greedy : bool or Tensor ``(rows,)`` bool. Argmax (first index on ties), no noise.
    return_logprobs : bool. Also return the chosen token's log-probability under the model's raw
        softmax over all ``V`` tokens (before mask, temperature and filtering), float32.
    backend : ``"auto"``, ``"triton"`` or ``"torch"``.

    Returns
    -------
    tokens : Tensor ``(rows,)`` int64; ``-1`` for a row with no allowed token (empty mask, or every
        allowed logit ``-inf``/NaN). Never NaN-driven, never a silent token 0.
    logprobs : Tensor ``(rows,)`` float32 (if ``return_logprobs``); ``-inf`` for empty rows.
    """
    if _use_triton(backend, logits):
        from .sampling import sample_masked_triton as fn
    else:
        from .reference import sample_masked_torch as fn
    return fn(logits, bitmask, temperature, top_k, top_p, seeds, greedy, return_logprobs)


def beam_topk(
    logits: "torch.Tensor",
    beam_scores: "torch.Tensor",
    band_start: "torch.Tensor",
    band_bitmap: "torch.Tensor",
    k: int,
    num_beams: int,
    backend: str = "auto",
    lse: Optional["torch.Tensor"] = None,
):
    """One constrained beam-search step: masked log-softmax over the SID band + top-k across beams.

    Parameters
    ----------
    logits : Tensor ``(requests * num_beams, V)`` float32 / float16 / bfloat16. Row ``r`` is beam
        ``r % num_beams`` of request ``r // num_beams``.
    beam_scores : Tensor ``(rows,)`` float. Cumulative log-prob per beam; ``-inf`` = dead beam.
    band_start : Tensor ``(rows,)`` int. First token of the row's band; ``< 0`` = empty band.
    band_bitmap : Tensor ``(rows, ceil(K/32))`` int32. Bit ``c`` allows token ``band_start + c``
        (tokens ``>= V`` ignored). Typically ``DeviceTrie.step(...).bitmap``.
    k : int. Candidates returned per request.
    num_beams : int.
    backend : ``"auto"``, ``"triton"`` or ``"torch"``.
    lse : Tensor ``(rows,)`` float, optional. The rows' full-vocabulary log-sum-exp
        (:func:`logsumexp_rows`), to skip recomputing it when several calls share the logits.

    Returns
    -------
    scores : Tensor ``(requests, k)`` float32: ``beam_score + log_softmax(logits)[token]`` with the
        softmax over the full vocabulary, sorted descending (ties: lower ``(beam, code)`` first).
    beams : Tensor ``(requests, k)`` int64: beam index within the request.
    tokens : Tensor ``(requests, k)`` int64: token ids.
        A request with fewer than ``k`` candidates is padded with ``-inf`` / ``-1`` / ``-1``. Rows with
        an empty band contribute nothing; allowed tokens with a ``-inf``/NaN logit are not candidates.
    """
    if _use_triton(backend, logits):
        from .beam import beam_topk_triton as fn
    else:
        from .reference import beam_topk_torch as fn
    return fn(logits, beam_scores, band_start, band_bitmap, k, num_beams, lse)


def logsumexp_rows(logits: "torch.Tensor", backend: str = "auto") -> "torch.Tensor":
    """``(rows,)`` float32 log-sum-exp of each row of ``logits (rows, V)`` (NaN counts as ``-inf``).

    One read of the logits; pass the result to :func:`beam_topk` as ``lse`` when several calls score
    the same logits (e.g. completed and live candidates of a beam search).
    """
    if _use_triton(backend, logits):
        from .beam import logsumexp_rows_triton as fn
    else:
        from .reference import logsumexp_rows_torch as fn
    return fn(logits)


def scatter_bands_(bitmask: "torch.Tensor", band_start: "torch.Tensor", band_bitmap: "torch.Tensor",
                   backend: str = "auto") -> "torch.Tensor":
    """OR each row's SID band into its full-vocabulary bitmask row, in place; returns ``bitmask``.

    Parameters
    ----------
    bitmask : Tensor ``(rows, W)`` int32, contiguous words. Bits already set stay set.
    band_start : Tensor ``(rows,)`` int. Token id of bit 0 of the row's band (any token, not word
        aligned); ``< 0`` = no band, the row is untouched.
    band_bitmap : Tensor ``(rows, n_words)`` int32. Bit ``c`` allows token ``band_start + c``
        (e.g. ``DeviceTrie.step(...).bitmap``). Tokens at or past ``32 * W`` are dropped.
    backend : ``"auto"``, ``"triton"`` or ``"torch"``.

    Touches at most ``n_words + 1`` words per row and never waits for the host (no data-dependent
    shapes), so a device-resident decode loop can build its masks without a round trip.
    """
    if _use_triton(backend, bitmask):
        from .bitmask import scatter_bands_triton as fn
    else:
        from .reference import scatter_bands_torch as fn
    fn(bitmask, band_start, band_bitmap)
    return bitmask


def band_to_bitmask(band_start, band_bitmap, vocab_size, extra_token=None):
    """Scatter bands into a new full ``(rows, ceil(vocab_size/32))`` int32 bitmask (see reference)."""
    from .reference import band_to_bitmask as fn

    return fn(band_start, band_bitmap, vocab_size, extra_token)


def __getattr__(name: str):
    if name == "DeviceTrie":
        from .device_trie import DeviceTrie

        return DeviceTrie
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
