"""Triton kernel: one GPU trie step (advance every row by its sampled token, emit its allowed band).

One program per row. The trie of one item type lives on the device (:class:`neo.kernels.DeviceTrie`);
a row's state is a node id (or ``OUTSIDE`` / ``ERROR``). A child is *offered* when its leaf range
``[leaf_lo, leaf_hi)`` still holds a leaf that is not excluded and, for rows with an allow-list, is
allowed; both lists are sorted leaf indices, counted with a vectorised binary search (one lane per
child). The band bitmap is packed in registers with an OR-reduction. Nothing goes through the host.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .reference import TrieFilter, TrieStep, TrieTables

__all__ = ["trie_step_triton"]


@triton.jit
def _or(a, b):
    return a | b


@triton.jit
def _lower_bound(base, n, key, LOG: tl.constexpr):
    """First index i in [0, n) with base[i] >= key (elementwise over ``key``)."""
    lo = tl.zeros_like(key)
    hi = tl.zeros_like(key) + n
    for _ in tl.static_range(LOG):
        act = lo < hi
        mid = (lo + hi) // 2
        v = tl.load(base + mid, mask=act, other=0)
        right = act & (v < key)
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(act & (v >= key), mid, hi)
    return lo


@triton.jit
def _offered(lb, le, row, excl_ptr, excl_stride, E, allow_ptr, allow_stride, A, alen,
             LOG_E: tl.constexpr, LOG_A: tl.constexpr, HAS_EXCL: tl.constexpr,
             HAS_ALLOW: tl.constexpr):
    free = le - lb
    if HAS_EXCL:
        base = excl_ptr + row * excl_stride
        free = free - (_lower_bound(base, E, le, LOG_E) - _lower_bound(base, E, lb, LOG_E))
    res = free > 0
    if HAS_ALLOW:
        base_a = allow_ptr + row * allow_stride
        cnt = _lower_bound(base_a, A, le, LOG_A) - _lower_bound(base_a, A, lb, LOG_A)
        res = tl.where(alen >= 0, cnt > 0, res)
    return res


@triton.jit
def _depth(depth_begin_ptr, n, L, LP: tl.constexpr):
    d = tl.arange(0, LP) + 1
    db = tl.load(depth_begin_ptr + d, mask=d <= L, other=2**62)
    return tl.sum((n >= db).to(tl.int32), 0)


@triton.jit
def _trie_step_kernel(
    node_ptr, tok_ptr,
    depth_begin_ptr, child_begin_ptr, code_ptr, leaf_lo_ptr, leaf_hi_ptr, leaf_item_ptr,
    band_start_ptr, band_size_ptr,
    excl_ptr, excl_stride, E, allow_ptr, allow_stride, A, alen_ptr,
    out_node_ptr, out_band_ptr, out_bitmap_ptr, out_leaf_ptr, out_item_ptr, out_nallowed_ptr,
    L, open_id, close_id, NW,
    LP: tl.constexpr, KP: tl.constexpr, NWP: tl.constexpr, LOG_E: tl.constexpr,
    LOG_A: tl.constexpr, HAS_EXCL: tl.constexpr, HAS_ALLOW: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    node = tl.load(node_ptr + row).to(tl.int64)
    tok = tl.load(tok_ptr + row).to(tl.int64)
    if HAS_ALLOW:
        alen = tl.load(alen_ptr + row)
    else:
        alen = -1
    leaf0 = tl.load(depth_begin_ptr + L)
    lanes = tl.arange(0, KP)

    # ---- advance by the sampled token
    adv = (node >= 0) & (tok >= 0)
    is_leaf = node >= leaf0
    int_adv = adv & (node < leaf0)
    d = tl.minimum(_depth(depth_begin_ptr, node, L, LP), L - 1)
    bs = tl.load(band_start_ptr + d, mask=int_adv, other=0).to(tl.int64)
    bz = tl.load(band_size_ptr + d, mask=int_adv, other=0).to(tl.int64)
    c = tok - bs
    nsafe = tl.where(int_adv, node, 0)
    cb = tl.load(child_begin_ptr + nsafe, mask=int_adv, other=0).to(tl.int64)
    ce = tl.load(child_begin_ptr + nsafe + 1, mask=int_adv, other=0).to(tl.int64)
    ch = cb + lanes
    m = tl.where(int_adv, ch < ce, False)  # (scalar & vector masks trip the interpreter)
    codes = tl.load(code_ptr + ch, mask=m, other=-1).to(tl.int64)
    match = tl.where((c >= 0) & (c < bz), m & (codes == c), False)
    child = tl.max(tl.where(match, ch, -1), 0)
    found = child >= 0
    csafe = tl.maximum(child, 0)
    lb = tl.load(leaf_lo_ptr + csafe, mask=found, other=0).to(tl.int64)
    le = tl.load(leaf_hi_ptr + csafe, mask=found, other=0).to(tl.int64)
    off = _offered(lb, le, row, excl_ptr, excl_stride, E, allow_ptr, allow_stride, A, alen,
                   LOG_E, LOG_A, HAS_EXCL, HAS_ALLOW)
    new = node
    new = tl.where(int_adv, tl.where(found & off, child, -2), new)
    new = tl.where(adv & is_leaf, tl.where(tok == close_id, -1, -2), new)
    new = tl.where((node == -1) & (tok == open_id) & (open_id >= 0), 0, new)

    # ---- allowed band of the new node
    internal = (new >= 0) & (new < leaf0)
    d2 = tl.minimum(_depth(depth_begin_ptr, new, L, LP), L - 1)
    bs2 = tl.load(band_start_ptr + d2, mask=internal, other=0)
    nsafe2 = tl.where(internal, new, 0)
    cb2 = tl.load(child_begin_ptr + nsafe2, mask=internal, other=0).to(tl.int64)
    ce2 = tl.load(child_begin_ptr + nsafe2 + 1, mask=internal, other=0).to(tl.int64)
    ch2 = cb2 + lanes
    m2 = tl.where(internal, ch2 < ce2, False)
    codes2 = tl.load(code_ptr + ch2, mask=m2, other=0)
    lb2 = tl.load(leaf_lo_ptr + ch2, mask=m2, other=0).to(tl.int64)
    le2 = tl.load(leaf_hi_ptr + ch2, mask=m2, other=0).to(tl.int64)
    off2 = m2 & _offered(lb2, le2, row, excl_ptr, excl_stride, E, allow_ptr, allow_stride, A, alen,
                         LOG_E, LOG_A, HAS_EXCL, HAS_ALLOW)
    bits = tl.where(off2, 1 << (codes2 & 31), 0)
    wi = codes2 >> 5
    wl = tl.arange(0, NWP)
    tile = tl.where(wl[:, None] == wi[None, :], bits[None, :], 0)
    words = tl.reduce(tile, 1, _or)
    tl.store(out_bitmap_ptr + row * NW + wl, words, mask=wl < NW)
    tl.store(out_node_ptr + row, new)
    tl.store(out_band_ptr + row, tl.where(internal, bs2, -1))
    at_leaf = new >= leaf0
    tl.store(out_leaf_ptr + row, at_leaf.to(tl.int8))
    item = tl.load(leaf_item_ptr + tl.maximum(new - leaf0, 0), mask=at_leaf, other=-1)
    tl.store(out_item_ptr + row, item)
    tl.store(out_nallowed_ptr + row, tl.sum(off2.to(tl.int32), 0))


def _log_steps(n: int) -> int:
    return max(int(n).bit_length(), 1)


def trie_step_triton(
    t: TrieTables,
    node: torch.Tensor,
    tokens: torch.Tensor,
    filt: Optional[TrieFilter] = None,
    open_id: int = -1,
    close_id: int = -1,
) -> TrieStep:
    """Triton twin of :func:`neo.kernels.reference.trie_step_torch` (same outputs)."""
    R = node.shape[0]
    dev = node.device
    node = node.to(torch.int64).contiguous()
    tokens = tokens.to(device=dev, dtype=torch.int64).contiguous()
    out_node = torch.empty(R, dtype=torch.int64, device=dev)
    out_band = torch.empty(R, dtype=torch.int32, device=dev)
    out_bitmap = torch.empty((R, t.n_words), dtype=torch.int32, device=dev)
    out_leaf = torch.empty(R, dtype=torch.int8, device=dev)
    out_item = torch.empty(R, dtype=torch.int32, device=dev)
    out_nall = torch.empty(R, dtype=torch.int32, device=dev)
    if R:
        has_excl = filt is not None and filt.excl is not None and filt.excl.shape[1] > 0
        has_allow = filt is not None and filt.allow is not None
        excl = filt.excl.contiguous() if has_excl else out_band
        allow = filt.allow.contiguous() if has_allow else out_band
        alen = filt.allow_len.contiguous() if has_allow else out_band
        E = excl.shape[1] if has_excl else 0
        A = allow.shape[1] if has_allow else 0
        _trie_step_kernel[(R,)](
            node, tokens, t.depth_begin, t.child_begin, t.code, t.leaf_lo, t.leaf_hi, t.leaf_item,
            t.band_start, t.band_size,
            excl, excl.stride(0) if has_excl else 0, E, allow, allow.stride(0) if has_allow else 0, A,
            alen,
            out_node, out_band, out_bitmap, out_leaf, out_item, out_nall,
            t.levels, int(open_id), int(close_id), t.n_words,
            LP=triton.next_power_of_2(max(t.levels, 1)),
            KP=max(triton.next_power_of_2(max(t.max_children, 1)), 16),
            NWP=triton.next_power_of_2(max(t.n_words, 1)),
            LOG_E=_log_steps(E), LOG_A=_log_steps(A), HAS_EXCL=has_excl, HAS_ALLOW=has_allow,
            num_warps=4,
        )
    return TrieStep(out_node, out_band, out_bitmap, out_leaf.bool(), out_item, out_nall)
