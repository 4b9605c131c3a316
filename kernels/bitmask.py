"""Triton kernel: apply a packed int32 token bitmask to logits in place (xgrammar-compatible format).

Grid ``(rows_to_apply, cdiv(ncols, BLOCK))``; each program reads its slice of the logits row and the
matching bitmask words and writes ``-inf`` where the bit is 0. Only masked positions are stored.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import triton
import triton.language as tl

from .reference import _check_bitmask_args

__all__ = ["apply_token_bitmask_inplace_triton"]


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
