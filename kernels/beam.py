"""Triton kernels: masked log-softmax over the full vocabulary + SID-band top-k for beam search.

Two launches, no host round-trip:

1. ``_lse_partial_kernel`` grid ``(rows, splits)``: each program streams one chunk of a logits row and
   writes a partial ``(max, sum exp)``; splitting the vocabulary keeps every SM busy at small batch.
2. ``_beam_topk_kernel`` grid ``(requests,)``: combines the partials into each beam's log-sum-exp,
   gathers the at most ``32 * W`` band logits of each beam (``W`` bitmap words), adds the beam score and
   extracts the top ``k`` of the ``num_beams x band`` candidates by repeated arg-max (ties: lower
   ``(beam, code)`` first, like a stable sort).

Total memory traffic is one read of the logits plus ``rows * band`` gathered elements.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference import _beam_args

__all__ = ["beam_topk_triton", "logsumexp_rows_triton"]


@triton.jit
def _lse_partial_kernel(logits_ptr, m_ptr, s_ptr, V, logits_stride, chunk, NSPLIT,
                        BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    sp = tl.program_id(1)
    begin = sp * chunk
    end = tl.minimum(begin + chunk, V)
    offs = tl.arange(0, BLOCK)
    m = tl.full([], float("-inf"), tl.float32)
    acc = tl.full([], 0.0, tl.float32)
    for start in range(begin, end, BLOCK):
        cols = start + offs
        x = tl.load(logits_ptr + row * logits_stride + cols, mask=cols < end,
                    other=float("-inf")).to(tl.float32)
        x = tl.where(x == x, x, float("-inf"))
        m_new = tl.maximum(m, tl.max(x, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        acc = acc * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), 0)
        m = m_new
    tl.store(m_ptr + row * NSPLIT + sp, m)
    tl.store(s_ptr + row * NSPLIT + sp, acc)


@triton.jit
def _beam_topk_kernel(
    logits_ptr, m_ptr, s_ptr, beam_ptr, band_ptr, bitmap_ptr,
    out_score_ptr, out_beam_ptr, out_tok_ptr,
    V, logits_stride, bitmap_stride, n_words, NSPLIT, num_beams, k,
    NB: tl.constexpr, NSP: tl.constexpr, KW: tl.constexpr,
):
    req = tl.program_id(0).to(tl.int64)
    b = tl.arange(0, NB)
    bvalid = b < num_beams
    rows = req * num_beams + b
    # full-vocabulary log-sum-exp of every beam row
    sp = tl.arange(0, NSP)
    pmask = bvalid[:, None] & (sp[None, :] < NSPLIT)
    pm = tl.load(m_ptr + rows[:, None] * NSPLIT + sp[None, :], mask=pmask, other=float("-inf"))
    ps = tl.load(s_ptr + rows[:, None] * NSPLIT + sp[None, :], mask=pmask, other=0.0)
    M = tl.max(pm, 1)
    Ms = tl.where(M == float("-inf"), 0.0, M)
    S = tl.sum(ps * tl.exp(pm - Ms[:, None]), 1)
    lse = Ms + tl.log(S)
    # band candidates
    bstart = tl.load(band_ptr + rows, mask=bvalid, other=-1).to(tl.int64)
    bscore = tl.load(beam_ptr + rows, mask=bvalid, other=float("-inf")).to(tl.float32)
    c = tl.arange(0, KW)
    w = c // 32
    words = tl.load(bitmap_ptr + rows[:, None] * bitmap_stride + w[None, :],
                    mask=bvalid[:, None] & (w < n_words)[None, :], other=0)
    bit = ((words >> (c % 32)[None, :]) & 1) != 0
    tok = bstart[:, None] + c[None, :]
    valid = bvalid[:, None] & (bstart[:, None] >= 0) & (tok < V) & bit
    x = tl.load(logits_ptr + rows[:, None] * logits_stride + tok, mask=valid,
                other=float("-inf")).to(tl.float32)
    cand = x - lse[:, None] + bscore[:, None]
    cand = tl.where(valid & (x > float("-inf")) & (cand == cand), cand, float("-inf"))
    fidx = b[:, None] * KW + c[None, :]
    BIG: tl.constexpr = NB * KW
    for i in range(k):
        best = tl.max(tl.max(cand, 1), 0)
        sel = tl.min(tl.min(tl.where(cand == best, fidx, BIG), 1), 0)
        has = best > float("-inf")
        bb = sel // KW
        cc = sel % KW
        bs_sel = tl.load(band_ptr + req * num_beams + bb, mask=has, other=0).to(tl.int64)
        tl.store(out_score_ptr + req * k + i, tl.where(has, best, float("-inf")))
        tl.store(out_beam_ptr + req * k + i, tl.where(has, bb.to(tl.int64), -1))
        tl.store(out_tok_ptr + req * k + i, tl.where(has, bs_sel + cc, -1))
        cand = tl.where(fidx == sel, float("-inf"), cand)


def _lse_partials(logits: torch.Tensor):
    """Per-row partial ``(max, sum exp)`` over vocabulary chunks: ``(rows, nsplit)`` each."""
    R, V = logits.shape
    dev = logits.device
    BLOCK = 2048 if V >= 2048 else max(32, triton.next_power_of_2(V))
    if dev.type == "cuda":
        sms = torch.cuda.get_device_properties(dev).multi_processor_count
        nsplit = max(1, min(triton.cdiv(V, 8 * BLOCK), triton.cdiv(4 * sms, max(R, 1))))
    else:
        nsplit = max(1, min(triton.cdiv(V, BLOCK), 2))
    chunk = triton.cdiv(triton.cdiv(V, nsplit), BLOCK) * BLOCK
    nsplit = triton.cdiv(V, chunk)
    m_part = torch.empty((R, nsplit), dtype=torch.float32, device=dev)
    s_part = torch.empty((R, nsplit), dtype=torch.float32, device=dev)
    if R:
        _lse_partial_kernel[(R, nsplit)](logits, m_part, s_part, V, logits.stride(0), chunk, nsplit,
                                         BLOCK=BLOCK, num_warps=8 if BLOCK >= 2048 else 4)
    return m_part, s_part


def logsumexp_rows_triton(logits: torch.Tensor) -> torch.Tensor:
    """Triton twin of :func:`neo.kernels.reference.logsumexp_rows_torch`: ``(rows,)`` float32."""
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating (rows, V) tensor, got {logits.dtype} "
                         f"{tuple(logits.shape)}")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    if logits.shape[1] == 0:
        return torch.full((logits.shape[0],), float("-inf"), device=logits.device)
    m, s = _lse_partials(logits)
    M = m.max(1).values
    Ms = torch.where(M == float("-inf"), torch.zeros_like(M), M)
    return Ms + torch.log((s * torch.exp(m - Ms[:, None])).sum(1))


def beam_topk_triton(
    logits: torch.Tensor,
    beam_scores: torch.Tensor,
    band_start: torch.Tensor,
    band_bitmap: torch.Tensor,
    k: int,
    num_beams: int,
    lse: torch.Tensor = None,
):
    """Triton twin of :func:`neo.kernels.reference.beam_topk_torch` (same outputs)."""
    R, V = _beam_args(logits, beam_scores, band_start, band_bitmap, k, num_beams, lse)
    NR = R // num_beams
    dev = logits.device
    scores = torch.empty((NR, k), dtype=torch.float32, device=dev)
    beams = torch.empty((NR, k), dtype=torch.int64, device=dev)
    tokens = torch.empty((NR, k), dtype=torch.int64, device=dev)
    if NR == 0:
        return scores, beams, tokens
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    band_bitmap = band_bitmap.contiguous()
    band_start = band_start.contiguous()
    beam_scores = beam_scores.to(torch.float32).contiguous()
    if lse is None:
        m_part, s_part = _lse_partials(logits)
    else:  # a known log-sum-exp is one partial (max = lse, sum = 1)
        m_part = lse.to(device=dev, dtype=torch.float32).reshape(R, 1).contiguous()
        s_part = torch.ones((R, 1), dtype=torch.float32, device=dev)
    nsplit = m_part.shape[1]
    KW = max(32, triton.next_power_of_2(band_bitmap.shape[1] * 32))
    NB = triton.next_power_of_2(num_beams)
    _beam_topk_kernel[(NR,)](
        logits, m_part, s_part, beam_scores, band_start, band_bitmap, scores, beams, tokens,
        V, logits.stride(0), band_bitmap.stride(0), band_bitmap.shape[1], nsplit, num_beams, k,
        NB=NB, NSP=triton.next_power_of_2(nsplit), KW=KW, num_warps=4 if NB * KW <= 4096 else 8,
    )
    return scores, beams, tokens
