"""Torch references of every kernel in ``neo.kernels``.

Each function here has the same signature and the same outputs as its Triton twin; they are the CPU
fallback (``backend="torch"`` or ``"auto"`` on CPU tensors), the test oracle and the benchmark baseline.
This module imports only torch (never triton, never ``neo``).

Conventions shared by all kernels
---------------------------------
* Bitmask: packed ``int32`` of shape ``(rows, ceil(V / 32))``; bit ``j`` of word ``w`` is token
  ``32 * w + j``; 1 = allowed (xgrammar / llguidance / vLLM format). Bit 31 is the sign bit.
* Random numbers: a counter-based hash (:func:`gumbel_noise`) of ``(seed, token id)``, computed with
  the same integer arithmetic in torch and in Triton, so a seeded draw is reproducible across backends
  and across calls: same seed, same logits, same parameters -> same token.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch

__all__ = [
    "apply_token_bitmask_inplace_torch",
    "unpack_bitmask",
    "gumbel_noise",
    "sample_masked_torch",
    "beam_topk_torch",
    "logsumexp_rows_torch",
    "scatter_bands_torch",
    "band_to_bitmask",
    "OUTSIDE",
    "ERROR",
    "TrieTables",
    "TrieFilter",
    "TrieStep",
    "trie_step_torch",
]

_M32 = 0xFFFFFFFF
_NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------------- bitmask
def unpack_bitmask(bitmask: torch.Tensor, ncols: int) -> torch.Tensor:
    """Unpack ``(rows, W)`` int32 words into a ``(rows, ncols)`` bool tensor (columns >= 32*W -> False)."""
    W = bitmask.shape[-1]
    cols = torch.arange(ncols, device=bitmask.device)
    word = cols // 32
    bit = (cols % 32).to(torch.int32)
    inside = word < W
    words = bitmask[..., word.clamp(max=max(W - 1, 0))] if W > 0 else torch.zeros(
        (*bitmask.shape[:-1], ncols), dtype=torch.int32, device=bitmask.device)
    return (((words >> bit) & 1) != 0) & inside


def _nan_to_neginf(x: torch.Tensor) -> torch.Tensor:
    """NaN -> -inf, everything else unchanged (``torch.nan_to_num`` would also clamp the infinities)."""
    return torch.where(x != x, torch.full_like(x, _NEG_INF), x)


def _as_index_tensor(indices, device) -> torch.Tensor:
    if isinstance(indices, torch.Tensor):
        return indices.to(device=device, dtype=torch.long).reshape(-1)
    return torch.as_tensor(list(indices), dtype=torch.long, device=device)


def _check_bitmask_args(logits, bitmask, indices, vocab_size):
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating tensor, got {logits.dtype}")
    if bitmask.dtype != torch.int32:
        raise TypeError(f"bitmask must be int32, got {bitmask.dtype}")
    if logits.dim() not in (1, 2) or bitmask.dim() not in (1, 2):
        raise ValueError(f"logits and bitmask must be 1-D or 2-D, got {tuple(logits.shape)} and "
                         f"{tuple(bitmask.shape)}")
    lg = logits.unsqueeze(0) if logits.dim() == 1 else logits
    bm = bitmask.unsqueeze(0) if bitmask.dim() == 1 else bitmask
    ncols = lg.shape[1]
    if vocab_size is not None:
        if not 0 <= vocab_size <= ncols:
            raise ValueError(f"vocab_size {vocab_size} must be in [0, logits.shape[-1]={ncols}]")
        ncols = int(vocab_size)
    if indices is None:
        if bm.shape[0] != lg.shape[0]:
            raise ValueError(f"bitmask has {bm.shape[0]} rows but logits has {lg.shape[0]}")
        idx = None
    else:
        idx = _as_index_tensor(indices, lg.device)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= min(lg.shape[0], bm.shape[0])):
            raise IndexError(f"indices must lie in [0, {min(lg.shape[0], bm.shape[0])}), "
                             f"got range [{int(idx.min())}, {int(idx.max())}]")
    return lg, bm, idx, ncols


def apply_token_bitmask_inplace_torch(
    logits: torch.Tensor,
    bitmask: torch.Tensor,
    indices: Optional[Union[Sequence[int], torch.Tensor]] = None,
    vocab_size: Optional[int] = None,
) -> None:
    """Set ``logits[r, t] = -inf`` wherever bit ``t`` of ``bitmask[r]`` is 0, in place.

    Parameters
    ----------
    logits : Tensor, ``(rows, V)`` or ``(V,)``, float32 / float16 / bfloat16
        Modified in place; any row stride (last dim must be contiguous for the Triton path).
    bitmask : Tensor, ``(rows_b, W)`` or ``(W,)``, int32
        Packed mask, 1 = allowed. ``W`` need not equal ``ceil(V / 32)``: columns beyond ``32 * W``
        count as disallowed (masked), words beyond ``ceil(V / 32)`` are ignored.
    indices : sequence of int or Tensor, optional
        xgrammar / vLLM semantics: only rows ``indices[i]`` are touched, and row ``indices[i]`` of
        the logits uses row ``indices[i]`` of the bitmask (same index into both). ``None``: all rows,
        and ``rows_b`` must equal ``rows``.
    vocab_size : int, optional
        Only columns ``[0, vocab_size)`` are touched (xgrammar compatibility, for logits padded past
        the tokenizer's vocabulary). Default: all columns of ``logits``.
    """
    lg, bm, idx, ncols = _check_bitmask_args(logits, bitmask, indices, vocab_size)
    if ncols == 0:
        return
    if idx is None:
        allowed = unpack_bitmask(bm, ncols)
        lg[:, :ncols].masked_fill_(~allowed, _NEG_INF)
    else:
        if idx.numel() == 0:
            return
        allowed = unpack_bitmask(bm[idx], ncols)
        sub = lg[idx, :ncols].masked_fill(~allowed, _NEG_INF)
        lg[idx, :ncols] = sub


# ---------------------------------------------------------------------------------------------- RNG
def _mulmod32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2**32`` for ``0 <= x < 2**32`` without int64 overflow (same steps as in Triton)."""
    lo = x & 0xFFFF
    hi = x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 integer hash on int64 tensors holding values in ``[0, 2**32)``."""
    x = x ^ (x >> 16)
    x = _mulmod32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mulmod32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


def _row_keys(seeds: torch.Tensor):
    s = seeds.to(torch.int64)
    lo = s & _M32
    hi = (s >> 32) & _M32
    k1 = _mix32(lo ^ _mix32(hi ^ 0x9E3779B9))
    k2 = _mix32(k1 ^ 0x85EBCA6B)
    return k1, k2


def gumbel_noise(seeds: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Standard Gumbel noise ``(rows, num_tokens)`` float32 from per-row int64 ``seeds``.

    ``u = ((h >> 9) + 0.5) / 2**23`` with ``h = mix32((mix32(t ^ k1) + k2) mod 2**32)`` for token
    ``t`` and row keys ``k1, k2`` hashed from the 64-bit seed; ``g = -log(-log(u))``. ``u`` lies in
    ``[2**-24, 1 - 2**-24]`` so ``g`` is always finite. The Triton kernel evaluates the same formula.
    """
    k1, k2 = _row_keys(seeds.reshape(-1))
    t = torch.arange(num_tokens, device=seeds.device, dtype=torch.int64)
    h = _mix32(t[None, :] ^ k1[:, None])
    h = _mix32((h + k2[:, None]) & _M32)
    u = ((h >> 9).to(torch.float32) + 0.5) * (1.0 / 8388608.0)
    return -torch.log(-torch.log(u))


# ---------------------------------------------------------------------------------------------- sampling
def _per_row(value, rows: int, dtype, device, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.to(device=device, dtype=dtype).reshape(-1)
        if t.numel() == 1:
            t = t.expand(rows)
        if t.numel() != rows:
            raise ValueError(f"{name} has {t.numel()} entries, expected 1 or {rows}")
        return t.contiguous()
    return torch.full((rows,), value, dtype=dtype, device=device)


def _sampling_params(logits, bitmask, temperature, top_k, top_p, seeds, greedy):
    if logits.dim() != 2:
        raise ValueError(f"logits must be (rows, V), got {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating tensor, got {logits.dtype}")
    R, V = logits.shape
    dev = logits.device
    if bitmask is not None:
        if bitmask.dtype != torch.int32 or bitmask.dim() != 2 or bitmask.shape[0] != R:
            raise ValueError(f"bitmask must be int32 (rows={R}, W), got {bitmask.dtype} "
                             f"{tuple(bitmask.shape)}")
    T = _per_row(temperature, R, torch.float32, dev, "temperature")
    K = _per_row(top_k, R, torch.int64, dev, "top_k")
    P = _per_row(top_p, R, torch.float32, dev, "top_p")
    S = _per_row(0 if seeds is None else seeds, R, torch.int64, dev, "seeds")
    G = _per_row(greedy, R, torch.bool, dev, "greedy")
    G = G | (T <= 0)
    return R, V, T, K, P, S, G


def sample_masked_torch(
    logits: torch.Tensor,
    bitmask: Optional[torch.Tensor] = None,
    temperature: Union[float, torch.Tensor] = 1.0,
    top_k: Union[int, torch.Tensor] = 0,
    top_p: Union[float, torch.Tensor] = 1.0,
    seeds: Union[int, torch.Tensor, None] = 0,
    greedy: Union[bool, torch.Tensor] = False,
    return_logprobs: bool = False,
):
    """Masked sampling: bitmask -> temperature -> top-k -> top-p -> Gumbel-max (or greedy argmax).

    Parameters
    ----------
    logits : Tensor ``(rows, V)``, float32 / float16 / bfloat16 (computed in float32).
    bitmask : Tensor ``(rows, W)`` int32, optional. Packed allowed-token mask; columns beyond ``32*W``
        are disallowed. ``None``: every token allowed.
    temperature : float or Tensor ``(rows,)``. ``<= 0`` means greedy for that row.
    top_k : int or Tensor ``(rows,)``. ``0`` (or ``>=`` number of allowed tokens) disables. Keeps the
        allowed tokens whose scaled logit is ``>=`` the k-th largest (ties at the boundary all kept).
    top_p : float or Tensor ``(rows,)``. ``>= 1`` disables. Keeps the tokens whose scaled logit is
        ``>= t`` for the largest ``t`` such that the kept probability mass (after top-k) is ``>= p``.
    seeds : int or Tensor ``(rows,)`` int64. Per-row seed of the counter-based Gumbel noise
        (:func:`gumbel_noise`); same seed and inputs -> same token, on every backend. Mix the decode
        step into the seed (e.g. ``seed * 1000003 + step``) to get fresh noise per step.
    greedy : bool or Tensor ``(rows,)`` bool. Argmax of the masked logits (first index on ties).
    return_logprobs : bool. Also return the chosen token's log-probability under the model's raw
        full-vocabulary softmax (unmasked, temperature 1, no filtering), float32.

    Returns
    -------
    tokens : Tensor ``(rows,)`` int64. ``-1`` for a row with no allowed token (every allowed logit is
        ``-inf``/NaN or the mask is empty); never a silent token 0.
    logprobs : Tensor ``(rows,)`` float32, only if ``return_logprobs``; ``-inf`` for empty rows.

    Notes
    -----
    A token is a candidate iff its bit is set and its logit is finite or ``+inf``-free real
    (``-inf`` and NaN logits are never drawn).
    """
    R, V, T, K, P, S, G = _sampling_params(logits, bitmask, temperature, top_k, top_p, seeds, greedy)
    # whether a filter can be active is decided from the arguments on the host, not by reading the
    # device (rows where it is inactive are unchanged either way)
    all_greedy = greedy is True or (not isinstance(temperature, torch.Tensor) and temperature <= 0)
    need_k = not all_greedy and (isinstance(top_k, torch.Tensor) or top_k > 0)
    need_p = not all_greedy and (isinstance(top_p, torch.Tensor) or top_p < 1.0)
    x = logits.float()
    allowed = x > _NEG_INF  # False for NaN too
    if bitmask is not None:
        allowed &= unpack_bitmask(bitmask, V)
    n_allowed = allowed.sum(1)
    tdiv = torch.where(G, torch.ones_like(T), T)
    s = torch.where(allowed, x / tdiv[:, None], torch.full_like(x, _NEG_INF))
    s = torch.where(s == 0, torch.zeros_like(s), s)  # -0.0 -> +0.0 (matches the kernel's keys)

    # top-k: keep s >= k-th largest allowed value
    act_k = (~G) & (K > 0) & (K < n_allowed)
    if need_k:
        srt = torch.sort(s, dim=1, descending=True).values
        kth = srt.gather(1, (K.clamp(1, V) - 1)[:, None])
        s = torch.where(act_k[:, None] & (s < kth), torch.full_like(s, _NEG_INF), s)

    # top-p: keep s >= t, t the largest value whose upper mass is >= p * Z
    act_p = (~G) & (P < 1.0) & (n_allowed > 0)
    if need_p:
        m = s.max(1, keepdim=True).values
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        e = torch.exp(s - m)
        srt, order = torch.sort(s, dim=1, descending=True)
        cum = torch.cumsum(e.gather(1, order), dim=1)
        Z = cum[:, -1:]
        first = (cum < P[:, None] * Z).sum(1, keepdim=True).clamp(max=V - 1)
        thr = srt.gather(1, first)
        s = torch.where(act_p[:, None] & (s < thr), torch.full_like(s, _NEG_INF), s)

    g = gumbel_noise(S, V)
    score = torch.where(G[:, None], s, s + g)
    best = score.max(1).values
    tok = torch.argmax(score, dim=1)  # first maximal index
    empty = ~(best > _NEG_INF)
    tokens = torch.where(empty, torch.full_like(tok, -1), tok)
    if not return_logprobs:
        return tokens
    xr = _nan_to_neginf(x)
    lse = torch.logsumexp(xr, dim=1)
    chosen = xr.gather(1, tok[:, None]).squeeze(1)
    lp = torch.where(empty, torch.full_like(lse, _NEG_INF), chosen - lse)
    return tokens, lp


# ---------------------------------------------------------------------------------------------- beam
def _beam_args(logits, beam_scores, band_start, band_bitmap, k, num_beams, lse=None):
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating (rows, V) tensor, got {logits.dtype} "
                         f"{tuple(logits.shape)}")
    R, V = logits.shape
    if num_beams < 1 or R % num_beams:
        raise ValueError(f"rows ({R}) must be a multiple of num_beams ({num_beams})")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if beam_scores.shape != (R,):
        raise ValueError(f"beam_scores must be ({R},), got {tuple(beam_scores.shape)}")
    if band_start.shape != (R,):
        raise ValueError(f"band_start must be ({R},), got {tuple(band_start.shape)}")
    if band_bitmap.dtype != torch.int32 or band_bitmap.dim() != 2 or band_bitmap.shape[0] != R:
        raise ValueError(f"band_bitmap must be int32 ({R}, ceil(K/32)), got {band_bitmap.dtype} "
                         f"{tuple(band_bitmap.shape)}")
    if lse is not None and (lse.shape != (R,) or not lse.is_floating_point()):
        raise ValueError(f"lse must be a floating ({R},) tensor, got {lse.dtype} {tuple(lse.shape)}")
    return R, V


def beam_topk_torch(
    logits: torch.Tensor,
    beam_scores: torch.Tensor,
    band_start: torch.Tensor,
    band_bitmap: torch.Tensor,
    k: int,
    num_beams: int,
    lse: Optional[torch.Tensor] = None,
):
    """Constrained beam-search step: full-vocab log-softmax, SID-band candidates, top-k per request.

    Parameters
    ----------
    logits : Tensor ``(requests * num_beams, V)`` float32/float16/bfloat16; row ``r`` is beam
        ``r % num_beams`` of request ``r // num_beams``.
    beam_scores : Tensor ``(rows,)`` float32, cumulative log-prob of each beam (``-inf`` = dead beam).
    band_start : Tensor ``(rows,)`` int32/int64, token id of code 0 of the row's band; ``< 0`` = no band
        (the row contributes nothing).
    band_bitmap : Tensor ``(rows, ceil(K/32))`` int32, bit ``c`` = token ``band_start + c`` allowed.
        Tokens ``>= V`` are ignored.
    k : int, candidates per request.
    num_beams : int.
    lse : Tensor ``(rows,)`` float, optional. The rows' full-vocabulary log-sum-exp, when the caller
        already has it (:func:`logsumexp_rows_torch`), e.g. for two calls on the same logits.

    Returns
    -------
    scores : Tensor ``(requests, k)`` float32, ``beam_score + log_softmax(logits)[token]`` sorted
        descending (ties: lower ``beam * 32W + code`` first); ``-inf`` padding.
    beams : Tensor ``(requests, k)`` int64, beam index within the request; ``-1`` padding.
    tokens : Tensor ``(requests, k)`` int64, token id; ``-1`` padding.

    Allowed tokens whose logit is ``-inf`` or NaN are not candidates. The log-softmax normalises over
    all ``V`` columns (NaN treated as ``-inf``).
    """
    R, V = _beam_args(logits, beam_scores, band_start, band_bitmap, k, num_beams, lse)
    NR = R // num_beams
    KW = band_bitmap.shape[1] * 32
    dev = logits.device
    x = _nan_to_neginf(logits.float())
    lse = torch.logsumexp(x, dim=1) if lse is None else lse.to(device=dev, dtype=torch.float32)
    bs = band_start.to(torch.int64)
    codes = torch.arange(KW, device=dev)
    tok = bs[:, None] + codes[None, :]
    valid = (bs[:, None] >= 0) & (tok < V) & unpack_bitmask(band_bitmap, KW)
    xv = x.gather(1, tok.clamp(0, max(V - 1, 0)))
    cand = xv - lse[:, None] + beam_scores.float()[:, None]
    cand = torch.where(valid & (xv > _NEG_INF), cand, torch.full_like(cand, _NEG_INF))
    cand = _nan_to_neginf(cand)
    flat = cand.reshape(NR, num_beams * KW)
    vals, idx = torch.sort(flat, dim=1, descending=True, stable=True)
    n = min(k, flat.shape[1])
    vals, idx = vals[:, :n], idx[:, :n]
    if n < k:
        vals = torch.cat([vals, torch.full((NR, k - n), _NEG_INF, device=dev)], 1)
        idx = torch.cat([idx, torch.zeros((NR, k - n), dtype=torch.long, device=dev)], 1)
    pad = ~(vals > _NEG_INF)
    beam = idx // KW
    rows = torch.arange(NR, device=dev)[:, None] * num_beams + beam
    token = bs[rows.clamp(max=R - 1)] + idx % KW
    beam = torch.where(pad, torch.full_like(beam, -1), beam)
    token = torch.where(pad, torch.full_like(token, -1), token)
    vals = torch.where(pad, torch.full_like(vals, _NEG_INF), vals)
    return vals, beam, token


def logsumexp_rows_torch(logits: torch.Tensor) -> torch.Tensor:
    """``(rows,)`` float32 log-sum-exp of each row over the full vocabulary (NaN counts as ``-inf``)."""
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating (rows, V) tensor, got {logits.dtype} "
                         f"{tuple(logits.shape)}")
    return torch.logsumexp(_nan_to_neginf(logits.float()), dim=1)


# ---------------------------------------------------------------------------------------------- helpers
def _check_scatter_args(bitmask, band_start, band_bitmap):
    if bitmask.dtype != torch.int32 or bitmask.dim() != 2:
        raise ValueError(f"bitmask must be int32 (rows, W), got {bitmask.dtype} {tuple(bitmask.shape)}")
    R = bitmask.shape[0]
    if band_start.shape != (R,) or band_start.is_floating_point():
        raise ValueError(f"band_start must be an integer ({R},) tensor, got {band_start.dtype} "
                         f"{tuple(band_start.shape)}")
    if band_bitmap.dtype != torch.int32 or band_bitmap.dim() != 2 or band_bitmap.shape[0] != R:
        raise ValueError(f"band_bitmap must be int32 ({R}, n_words), got {band_bitmap.dtype} "
                         f"{tuple(band_bitmap.shape)}")


def scatter_bands_torch(bitmask: torch.Tensor, band_start: torch.Tensor, band_bitmap: torch.Tensor) -> None:
    """OR every row's band into a full-vocabulary packed bitmask, in place.

    Parameters
    ----------
    bitmask : Tensor ``(rows, W)`` int32, modified in place (bit ``j`` of word ``w`` = token ``32*w+j``).
    band_start : Tensor ``(rows,)`` int. Token of bit 0 of the row's band; ``< 0`` = no band (the row
        is left untouched).
    band_bitmap : Tensor ``(rows, n_words)`` int32. Bit ``c`` = token ``band_start + c``.

    Tokens at or past ``32 * W`` are dropped. Fixed shapes only (no ``nonzero``), so on a GPU it never
    waits for the host.
    """
    _check_scatter_args(bitmask, band_start, band_bitmap)
    R, W = bitmask.shape
    NB = band_bitmap.shape[1]
    if R == 0 or W == 0 or NB == 0:
        return
    dev = bitmask.device
    bs = band_start.to(device=dev, dtype=torch.int64)
    has = bs >= 0
    bsafe = torch.where(has, bs, torch.zeros_like(bs))
    word0 = bsafe >> 5
    off = (bsafe & 31)[:, None]
    b = band_bitmap.to(device=dev, dtype=torch.int64) & _M32
    zero = torch.zeros((R, 1), dtype=torch.int64, device=dev)
    cur = torch.cat([b, zero], 1)  # word j of the band, j = 0..NB
    prev = torch.cat([zero, b], 1)  # word j-1
    words = ((cur << off) | (prev >> (32 - off))) & _M32
    col = word0[:, None] + torch.arange(NB + 1, device=dev)[None, :]
    ok = has[:, None] & (col < W) & (words != 0)
    ext = torch.zeros((R, W + 1), dtype=torch.int64, device=dev)  # column W collects the dropped words
    ext.scatter_(1, torch.where(ok, col, torch.full_like(col, W)), torch.where(ok, words, torch.zeros_like(words)))
    add = ext[:, :W]
    bitmask |= torch.where(add >= 2**31, add - 2**32, add).to(torch.int32)


def band_to_bitmask(
    band_start: torch.Tensor,
    band_bitmap: torch.Tensor,
    vocab_size: int,
    extra_token: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Scatter per-row bands into a full ``(rows, ceil(vocab_size/32))`` int32 bitmask on the same device.

    ``extra_token`` (``(rows,)`` int64, ``-1`` = none) adds one more allowed token per row (e.g. the
    close token ``[/SID]`` for rows at a leaf). Rows with ``band_start < 0`` get only the extra token.
    """
    R = band_start.shape[0]
    dev = band_start.device
    W = (vocab_size + 31) // 32
    out = torch.zeros((R, W), dtype=torch.int32, device=dev)
    scatter_bands_torch(out, band_start, band_bitmap)
    if vocab_size % 32 and W:  # tokens in [vocab_size, 32*W) are never allowed
        out[:, -1] &= (1 << (vocab_size % 32)) - 1
    if extra_token is not None:
        e = extra_token.to(device=dev, dtype=torch.int64)
        has = (e >= 0) & (e < vocab_size)
        scatter_bands_torch(out, torch.where(has, e, torch.full_like(e, -1)),
                            torch.ones((R, 1), dtype=torch.int32, device=dev))
    return out


# ---------------------------------------------------------------------------------------------- trie step
OUTSIDE = -1  #: node value of a row outside any SID span
ERROR = -2  #: node value of a row in the sticky error state


class TrieTables(NamedTuple):
    """Device-resident trie of one item type (see :class:`neo.kernels.DeviceTrie`)."""

    depth_begin: torch.Tensor  # int64 (L+2,)
    child_begin: torch.Tensor  # int32 (num_internal+1,)
    code: torch.Tensor  # int32 (num_nodes,)
    leaf_lo: torch.Tensor  # int32 (num_nodes,) first leaf index under the node
    leaf_hi: torch.Tensor  # int32 (num_nodes,) one past the last leaf index under the node
    leaf_item: torch.Tensor  # int32 (num_leaves,)
    band_start: torch.Tensor  # int32 (L,)
    band_size: torch.Tensor  # int32 (L,)
    levels: int
    max_children: int  # most children of any node (<= max band size)
    n_words: int  # ceil(max(band_size) / 32): bitmap words per row
    num_nodes: int
    num_internal: int


class TrieFilter(NamedTuple):
    """Per-row exclusions / allow-lists as sorted leaf indices (``-1`` padding sorts first)."""

    excl: Optional[torch.Tensor]  # int32 (rows, E) ascending, excluded leaf indices
    allow: Optional[torch.Tensor]  # int32 (rows, A) ascending, allowed (and not excluded) leaves
    allow_len: Optional[torch.Tensor]  # int32 (rows,) valid entries of allow; -1 = row has no list


class TrieStep(NamedTuple):
    """Result of one trie step for every row."""

    node: torch.Tensor  # int64 (rows,) node after the advance; OUTSIDE (-1) or ERROR (-2)
    band_start: torch.Tensor  # int32 (rows,) token id of code 0 of the allowed band; -1 = no band
    bitmap: torch.Tensor  # int32 (rows, n_words) bit c = token band_start + c allowed
    at_leaf: torch.Tensor  # bool (rows,) row sits on a leaf: only the close token is allowed
    item: torch.Tensor  # int32 (rows,) catalog item of the leaf, -1 elsewhere
    num_allowed: torch.Tensor  # int32 (rows,) number of allowed band tokens


def _depth_of(t: TrieTables, node: torch.Tensor) -> torch.Tensor:
    db = t.depth_begin[1:t.levels + 1]
    return (node[:, None] >= db[None, :]).sum(1)


def _count_in(sorted_: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    s = sorted_.to(torch.int64).contiguous()
    return (torch.searchsorted(s, hi.to(torch.int64).contiguous())
            - torch.searchsorted(s, lo.to(torch.int64).contiguous()))


def _offered_torch(t: TrieTables, f: Optional[TrieFilter], lb: torch.Tensor, le: torch.Tensor):
    """lb, le: (rows, M) leaf ranges -> (rows, M) bool offered."""
    free = (le - lb).to(torch.int64)
    if f is not None and f.excl is not None:
        free = free - _count_in(f.excl, lb, le)
    res = free > 0
    if f is not None and f.allow is not None:
        cnt = _count_in(f.allow, lb, le)
        res = torch.where(f.allow_len[:, None] >= 0, cnt > 0, res)
    return res


def _children(t: TrieTables, node: torch.Tensor, active: torch.Tensor):
    """Children lanes of ``node`` (rows,): (ids (rows, KP) int64, lane mask, codes int64)."""
    KP = max(t.max_children, 1)
    nsafe = torch.where(active, node, torch.zeros_like(node))
    cb = t.child_begin[nsafe].to(torch.int64)
    ce = t.child_begin[nsafe + 1].to(torch.int64)
    ch = cb[:, None] + torch.arange(KP, device=node.device)[None, :]
    m = active[:, None] & (ch < ce[:, None])
    chs = torch.where(m, ch, torch.zeros_like(ch))
    codes = torch.where(m, t.code[chs].to(torch.int64), torch.full_like(ch, -1))
    return chs, m, codes


def trie_step_torch(
    t: TrieTables,
    node: torch.Tensor,
    tokens: torch.Tensor,
    filt: Optional[TrieFilter] = None,
    open_id: int = -1,
    close_id: int = -1,
) -> TrieStep:
    """Torch reference of the GPU trie step (see :meth:`neo.kernels.DeviceTrie.step`)."""
    node = node.to(torch.int64)
    tok = tokens.to(device=node.device, dtype=torch.int64)
    R = node.shape[0]
    leaf0 = t.num_internal  # first leaf id (depth_begin[levels]), known on the host: no device read
    # ---- advance
    adv = (node >= 0) & (tok >= 0)
    is_leaf = node >= leaf0
    int_adv = adv & ~is_leaf
    d = _depth_of(t, node).clamp(max=max(t.levels - 1, 0))
    bs = t.band_start[d].to(torch.int64)
    bz = t.band_size[d].to(torch.int64)
    c = tok - bs
    chs, m, codes = _children(t, node, int_adv)
    match = m & (codes == c[:, None]) & ((c >= 0) & (c < bz))[:, None]
    child = torch.where(match, chs, torch.full_like(chs, -1)).max(1).values if chs.shape[1] else \
        torch.full_like(node, -1)
    found = child >= 0
    csafe = child.clamp(min=0)
    lb = torch.where(found, t.leaf_lo[csafe].to(torch.int64), torch.zeros_like(child))
    le = torch.where(found, t.leaf_hi[csafe].to(torch.int64), torch.zeros_like(child))
    off = _offered_torch(t, filt, lb[:, None], le[:, None])[:, 0]
    new = node.clone()
    new = torch.where(int_adv, torch.where(found & off, child, torch.full_like(node, ERROR)), new)
    new = torch.where(adv & is_leaf, torch.where(tok == close_id, torch.full_like(node, OUTSIDE),
                                                 torch.full_like(node, ERROR)), new)
    if open_id >= 0:
        new = torch.where((node == OUTSIDE) & (tok == open_id), torch.zeros_like(node), new)
    # ---- allowed band of the new node
    internal = (new >= 0) & (new < leaf0)
    d2 = _depth_of(t, new).clamp(max=max(t.levels - 1, 0))
    chs2, m2, codes2 = _children(t, new, internal)
    lb2 = t.leaf_lo[chs2].to(torch.int64)
    le2 = t.leaf_hi[chs2].to(torch.int64)
    off2 = _offered_torch(t, filt, lb2, le2) & m2
    W = t.n_words
    # scatter the offered codes' bits; other lanes go to a spare column (fixed shapes, no nonzero)
    bits = torch.zeros((R, W * 32 + 1), dtype=torch.bool, device=node.device)
    bits.scatter_(1, torch.where(off2, codes2, torch.full_like(codes2, W * 32)), torch.ones_like(off2))
    w = bits[:, :W * 32].reshape(R, W, 32).to(torch.int64) << torch.arange(32, device=node.device, dtype=torch.int64)
    packed = w.sum(-1)
    bitmap = torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
    band = torch.where(internal, t.band_start[d2].to(torch.int64), torch.full_like(new, -1))
    at_leaf = new >= leaf0
    item = torch.where(at_leaf, t.leaf_item[(new - leaf0).clamp(min=0)].to(torch.int64),
                       torch.full_like(new, -1))
    return TrieStep(new, band.to(torch.int32), bitmap, at_leaf, item.to(torch.int32),
                    off2.sum(1).to(torch.int32))
