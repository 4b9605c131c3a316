"""Triton kernel: fused masked sampling (bitmask, temperature, top-k, top-p, Gumbel-max / greedy).

One program per row streams the logits row:

* sweep 1 (always): raw log-sum-exp (for log-probs), allowed count, min/max of the scaled allowed
  logits (as order-preserving int keys) and the Gumbel-max argmax over every allowed token. Rows without
  top-k / top-p are finished after this single read.
* top-k (only rows where it is active): exact k-th largest value by bisection over the int32 keys of
  the float32 scaled logits (<= 32 counting sweeps, no sort, no scratch memory).
* top-p (only rows where it is active): mass sweep, then bisection of the threshold the same way.
* final sweep (only rows with a filter): Gumbel-max argmax over the kept tokens.

The Gumbel noise is the counter-based hash of ``reference.gumbel_noise`` evaluated with the same integer
steps, so a seeded draw equals the torch reference's draw.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import triton
import triton.language as tl

from .reference import _sampling_params

__all__ = ["sample_masked_triton"]


@triton.jit
def _mulmod32(x, c: tl.constexpr):
    lo = x & 0xFFFF
    hi = x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & 0xFFFFFFFF


@triton.jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = _mulmod32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mulmod32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


@triton.jit
def _gumbel(tok, k1, k2):
    h = _mix32(tok ^ k1)
    h = _mix32((h + k2) & 0xFFFFFFFF)
    u = ((h >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0)
    return -tl.log(-tl.log(u))


@triton.jit
def _key(s):
    """Order-preserving int64 key of float32 values (no NaN; -0.0 must be normalised first)."""
    b = s.to(tl.int32, bitcast=True)
    k = tl.where(b >= 0, b, b ^ 0x7FFFFFFF)
    return k.to(tl.int64)


@triton.jit
def _load_scaled(logits_ptr, bitmask_ptr, row, cols, V, n_words, logits_stride, bitmask_stride, tdiv,
                 HAS_MASK: tl.constexpr):
    inb = cols < V
    x = tl.load(logits_ptr + row * logits_stride + cols, mask=inb, other=float("-inf")).to(tl.float32)
    ok = x > float("-inf")
    if HAS_MASK:
        w = cols // 32
        words = tl.load(bitmask_ptr + row * bitmask_stride + w, mask=inb & (w < n_words), other=0)
        ok = ok & (((words >> (cols % 32)) & 1) != 0)
    s = tl.where(ok, x / tdiv, float("-inf"))
    s = tl.where(s == 0.0, 0.0, s)
    return x, ok, s


@triton.jit
def _sample_kernel(
    logits_ptr, bitmask_ptr, temp_ptr, topk_ptr, topp_ptr, seed_ptr, greedy_ptr,
    tok_out_ptr, lp_out_ptr,
    V, n_words, logits_stride, bitmask_stride,
    HAS_MASK: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    T = tl.load(temp_ptr + row)
    K = tl.load(topk_ptr + row)
    P = tl.load(topp_ptr + row)
    seed = tl.load(seed_ptr + row)
    G = tl.load(greedy_ptr + row) != 0
    tdiv = tl.where(G, 1.0, T)
    gscale = tl.where(G, 0.0, 1.0)
    lo32 = seed & 0xFFFFFFFF
    hi32 = (seed >> 32) & 0xFFFFFFFF
    k1 = _mix32(lo32 ^ _mix32(hi32 ^ 0x9E3779B9))
    k2 = _mix32(k1 ^ 0x85EBCA6B)

    offs = tl.arange(0, BLOCK)
    m_raw = tl.full([], float("-inf"), tl.float32)
    s_raw = tl.full([], 0.0, tl.float32)
    n_allowed = tl.full([], 0, tl.int64)
    kmin = tl.full([], 2**40, tl.int64)
    kmax = tl.full([], -(2**40), tl.int64)
    smax = tl.full([], float("-inf"), tl.float32)
    best = tl.full([], float("-inf"), tl.float32)
    best_idx = tl.full([], -1, tl.int64)
    for start in range(0, V, BLOCK):
        cols = start + offs
        x, ok, s = _load_scaled(logits_ptr, bitmask_ptr, row, cols, V, n_words, logits_stride,
                                bitmask_stride, tdiv, HAS_MASK)
        xr = tl.where(x == x, x, float("-inf"))
        m_new = tl.maximum(m_raw, tl.max(xr, 0))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s_raw = s_raw * tl.exp(m_raw - m_safe) + tl.sum(tl.exp(xr - m_safe), 0)
        m_raw = m_new
        key = _key(s)
        n_allowed += tl.sum(ok.to(tl.int64), 0)
        kmin = tl.minimum(kmin, tl.min(tl.where(ok, key, 2**40), 0))
        kmax = tl.maximum(kmax, tl.max(tl.where(ok, key, -(2**40)), 0))
        smax = tl.maximum(smax, tl.max(s, 0))
        sc = s + gscale * _gumbel(cols.to(tl.int64), k1, k2)
        bmax = tl.max(sc, 0)
        barg = tl.argmax(sc, 0).to(tl.int64) + start
        take = bmax > best
        best_idx = tl.where(take, barg, best_idx)
        best = tl.where(take, bmax, best)

    # ---- top-k threshold (exact k-th largest key by bisection)
    act_k = (not G) & (K > 0) & (K < n_allowed)
    lo = tl.where(act_k, kmin, 0)
    hi = tl.where(act_k, kmax, 0)
    while lo < hi:
        mid = lo + (hi - lo + 1) // 2
        cnt = tl.full([], 0, tl.int64)
        for start in range(0, V, BLOCK):
            cols = start + offs
            x, ok, s = _load_scaled(logits_ptr, bitmask_ptr, row, cols, V, n_words, logits_stride,
                                    bitmask_stride, tdiv, HAS_MASK)
            cnt += tl.sum((ok & (_key(s) >= mid)).to(tl.int64), 0)
        good = cnt >= K
        lo = tl.where(good, mid, lo)
        hi = tl.where(good, hi, mid - 1)
    thr = tl.where(act_k, lo, kmin)

    # ---- top-p threshold
    act_p = (not G) & (P < 1.0) & (n_allowed > 0)
    zsum = tl.full([], 0.0, tl.float32)
    vend = tl.where(act_p, V, 0)
    for start in range(0, vend, BLOCK):
        cols = start + offs
        x, ok, s = _load_scaled(logits_ptr, bitmask_ptr, row, cols, V, n_words, logits_stride,
                                bitmask_stride, tdiv, HAS_MASK)
        kept = ok & (_key(s) >= thr)
        zsum += tl.sum(tl.where(kept, tl.exp(s - smax), 0.0), 0)
    target = P * zsum
    lo = tl.where(act_p, thr, 0)
    hi = tl.where(act_p, kmax, 0)
    while lo < hi:
        mid = lo + (hi - lo + 1) // 2
        mass = tl.full([], 0.0, tl.float32)
        for start in range(0, V, BLOCK):
            cols = start + offs
            x, ok, s = _load_scaled(logits_ptr, bitmask_ptr, row, cols, V, n_words, logits_stride,
                                    bitmask_stride, tdiv, HAS_MASK)
            key = _key(s)
            mass += tl.sum(tl.where(ok & (key >= thr) & (key >= mid), tl.exp(s - smax), 0.0), 0)
        good = mass >= target
        lo = tl.where(good, mid, lo)
        hi = tl.where(good, hi, mid - 1)
    thr = tl.where(act_p, lo, thr)

    # ---- final Gumbel-max over the kept tokens (only rows with a filter)
    refilter = act_k | act_p
    best = tl.where(refilter, float("-inf"), best)
    best_idx = tl.where(refilter, -1, best_idx)
    vend = tl.where(refilter, V, 0)
    for start in range(0, vend, BLOCK):
        cols = start + offs
        x, ok, s = _load_scaled(logits_ptr, bitmask_ptr, row, cols, V, n_words, logits_stride,
                                bitmask_stride, tdiv, HAS_MASK)
        kept = ok & (_key(s) >= thr)
        sc = tl.where(kept, s + gscale * _gumbel(cols.to(tl.int64), k1, k2), float("-inf"))
        bmax = tl.max(sc, 0)
        barg = tl.argmax(sc, 0).to(tl.int64) + start
        take = bmax > best
        best_idx = tl.where(take, barg, best_idx)
        best = tl.where(take, bmax, best)

    empty = not (best > float("-inf"))
    tok = tl.where(empty, -1, best_idx)
    tl.store(tok_out_ptr + row, tok)
    lse = tl.where(m_raw == float("-inf"), float("-inf"), m_raw + tl.log(s_raw))
    xc = tl.load(logits_ptr + row * logits_stride + tl.maximum(tok, 0)).to(tl.float32)
    lp = tl.where(empty, float("-inf"), xc - lse)
    tl.store(lp_out_ptr + row, lp)


def sample_masked_triton(
    logits: torch.Tensor,
    bitmask: Optional[torch.Tensor] = None,
    temperature: Union[float, torch.Tensor] = 1.0,
    top_k: Union[int, torch.Tensor] = 0,
    top_p: Union[float, torch.Tensor] = 1.0,
    seeds: Union[int, torch.Tensor, None] = 0,
    greedy: Union[bool, torch.Tensor] = False,
    return_logprobs: bool = False,
):
    """Triton twin of :func:`neo.kernels.reference.sample_masked_torch` (same semantics and noise)."""
    R, V, T, K, P, S, G = _sampling_params(logits, bitmask, temperature, top_k, top_p, seeds, greedy)
    dev = logits.device
    tokens = torch.empty(R, dtype=torch.int64, device=dev)
    lps = torch.empty(R, dtype=torch.float32, device=dev)
    if R == 0:
        return (tokens, lps) if return_logprobs else tokens
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    if bitmask is not None and bitmask.stride(1) != 1:
        bitmask = bitmask.contiguous()
    BLOCK = 2048 if V >= 2048 else max(32, triton.next_power_of_2(V))
    _sample_kernel[(R,)](
        logits, bitmask if bitmask is not None else tokens, T, K, P, S, G.to(torch.int8), tokens, lps,
        V, bitmask.shape[1] if bitmask is not None else 0, logits.stride(0),
        bitmask.stride(0) if bitmask is not None else 0,
        HAS_MASK=bitmask is not None, BLOCK=BLOCK, num_warps=8 if BLOCK >= 2048 else 4,
    )
    return (tokens, lps) if return_logprobs else tokens
