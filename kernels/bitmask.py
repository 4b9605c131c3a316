"""Triton kernels on packed int32 token bitmasks (xgrammar-compatible format).

* ``_apply_bitmask_kernel``, grid ``(rows_to_apply, cdiv(ncols, BLOCK))``: each program reads its
  slice of the logits row and the matching bitmask words and writes ``-inf`` where the bit is 0. Only
  masked positions are stored.
* ``_scatter_bands_kernel``, grid ``(rows,)``: ORs a row's SID band (``n_words`` words starting at an
  arbitrary token) into its full-vocabulary bitmask row: the band words are shifted by the start's
  bit offset and written to at most ``n_words + 1`` bitmask words, so the cost is independent of V.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import triton
import triton.language as tl

from .reference import _check_bitmask_args, _check_scatter_args

__all__ = ["apply_token_bitmask_inplace_triton", "scatter_bands_triton"]


@triton.jit
def _apply_bitmask_kernel(
    logits_ptr,
    bitmask_ptr,
    indices_ptr,
    ncols,
    n_words,
    logits_stride,
    bitmask_stride,
    HAS_INDICES: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    if HAS_INDICES:
        row = tl.load(indices_ptr + pid_r).to(tl.int64)
    else:
        row = pid_r.to(tl.int64)
    cols = pid_c * BLOCK + tl.arange(0, BLOCK)
    in_row = cols < ncols
    word_idx = cols // 32
    words = tl.load(bitmask_ptr + row * bitmask_stride + word_idx,
                    mask=in_row & (word_idx < n_words), other=0)
    allowed = ((words >> (cols % 32)) & 1) != 0
    neg_inf = tl.full((BLOCK,), float("-inf"), tl.float32)
    tl.store(logits_ptr + row * logits_stride + cols,
             neg_inf.to(logits_ptr.dtype.element_ty), mask=in_row & (~allowed))


def apply_token_bitmask_inplace_triton(
    logits: torch.Tensor,
    bitmask: torch.Tensor,
    indices: Optional[Union[Sequence[int], torch.Tensor]] = None,
    vocab_size: Optional[int] = None,
) -> None:
    """Triton twin of :func:`neo.kernels.reference.apply_token_bitmask_inplace_torch` (same semantics)."""
    lg, bm, idx, ncols = _check_bitmask_args(logits, bitmask, indices, vocab_size)
    if lg.stride(1) != 1 and lg.shape[1] > 1:
        raise ValueError("logits must be contiguous along the vocabulary dimension")
    if bm.stride(1) != 1 and bm.shape[1] > 1:
        bm = bm.contiguous()
    nrows = lg.shape[0] if idx is None else idx.numel()
    if ncols == 0 or nrows == 0:
        return
    if idx is not None:
        idx = idx.to(device=lg.device, dtype=torch.int32).contiguous()
    BLOCK = 4096 if ncols >= 4096 else max(32, triton.next_power_of_2(ncols))
    grid = (nrows, triton.cdiv(ncols, BLOCK))
    _apply_bitmask_kernel[grid](
        lg, bm, idx if idx is not None else bm, ncols, bm.shape[1], lg.stride(0), bm.stride(0),
        HAS_INDICES=idx is not None, BLOCK=BLOCK, num_warps=8 if BLOCK >= 4096 else 4,
    )


@triton.jit
def _scatter_bands_kernel(bitmask_ptr, band_ptr, bandmap_ptr, W, NB, bitmask_stride, bandmap_stride,
                          NBP: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    bs = tl.load(band_ptr + row).to(tl.int64)
    has = bs >= 0
    bsafe = tl.where(has, bs, 0)
    word0 = bsafe >> 5
    off = bsafe & 31
    j = tl.arange(0, NBP).to(tl.int64)
    base = bandmap_ptr + row * bandmap_stride
    m_cur = tl.where(has, j < NB, False)  # (scalar & vector masks trip the interpreter)
    m_prev = tl.where(has, (j >= 1) & (j <= NB), False)
    cur = tl.load(base + j, mask=m_cur, other=0).to(tl.int64) & 0xFFFFFFFF
    prev = tl.load(base + j - 1, mask=m_prev, other=0).to(tl.int64) & 0xFFFFFFFF
    words = ((cur << off) | (prev >> (32 - off))) & 0xFFFFFFFF
    col = word0 + j
    ok = tl.where(has, (j <= NB) & (col < W) & (words != 0), False)
    ptr = bitmask_ptr + row * bitmask_stride + col
    old = tl.load(ptr, mask=ok, other=0)
    tl.store(ptr, old | words.to(tl.int32), mask=ok)


def scatter_bands_triton(bitmask: torch.Tensor, band_start: torch.Tensor, band_bitmap: torch.Tensor) -> None:
    """Triton twin of :func:`neo.kernels.reference.scatter_bands_torch` (same semantics)."""
    _check_scatter_args(bitmask, band_start, band_bitmap)
    R, W = bitmask.shape
    NB = band_bitmap.shape[1]
    if R == 0 or W == 0 or NB == 0:
        return
    if bitmask.stride(1) != 1:
        raise ValueError("bitmask must be contiguous along the word dimension")
    band_start = band_start.to(device=bitmask.device).contiguous()
    band_bitmap = band_bitmap.to(device=bitmask.device).contiguous()
    _scatter_bands_kernel[(R,)](bitmask, band_start, band_bitmap, W, NB, bitmask.stride(0),
                                band_bitmap.stride(0), NBP=triton.next_power_of_2(NB + 1), num_warps=1)
