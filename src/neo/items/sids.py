"""Semantic IDs: residual k-means codes per item type (DESIGN.md sections 1-2).

Every item type gets its own stack of codebooks. Level 1 clusters the (L2-normalised) item
embeddings, level 2 clusters what level 1 left unexplained (the residuals), and so on, so items that
share a code prefix are similar and the model can generalise across them. Codebooks are fitted on a
sample with k-means++ initialisation and Lloyd iterations in torch (GPU when available), then every
item is assigned in chunks, so memory stays at the embeddings plus one chunk (10M x 256 float32
embeddings fit on a 24 GB machine).

Standard k-means assigns every item to its nearest centroid, so dense regions of the embedding
space (near-identical item texts) crowd into a few leaves. Balanced k-means (``balance=b``) caps
every cluster within its parent prefix at ``max(1, ceil(b * g / K))`` items, on the fitting sample
and on the final assignment, so a leaf holds at most about ``n b^L / K^L`` items: with the default
codebook sizes (:func:`default_sid_config`) no two items share codes. Embeddings with
collaborative signal come from :mod:`neo.items.collaborative`.

Two items may end with the same codes (a collision). Policy ``extra_level`` (default) appends one
disambiguation level (the most popular item of a collision group gets 0, the next 1, ...), so every
item is reachable and all items of a type have the same number of levels. Policy ``popular`` keeps
the codes as they are: the most popular item of each group owns the SID, the others are marked
unreachable and reported. A :class:`SidCollisionWarning` names the collision rate and a codebook
size that fixes it when the rate exceeds ``warn_collision_rate``.

Entry points: :func:`build_sids` and, for codes you already have, :meth:`SemanticIds.from_codes`;
both return :class:`SemanticIds` with a :class:`SidReport`.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

from .catalog import Catalog
from ..core.layout import TokenLayout

if TYPE_CHECKING:  # pragma: no cover
    from .embeddings import Embedder

__all__ = ["SemanticIds", "SidReport", "SidCollisionWarning", "build_sids", "default_sid_config", "COLLISION_POLICIES",
           "ITEM_LEVEL_MODES"]

SIDS_FORMAT_VERSION = 1
COLLISION_POLICIES = ("extra_level", "popular")
ITEM_LEVEL_MODES = ("replace", "append")
MAX_CODEBOOK = 65536  # TokenLayout's per-level limit


# ============================================================================================ config


def default_sid_config(n_items: int, levels: int | None = None, codebook_size: int | None = None, *,
                       balance: float | None = None) -> tuple[int, int]:
    """Default ``(levels, codebook_size)`` for a type with ``n_items`` items, chosen so that
    collisions are rare.

    Standard k-means (``balance=None``): at least ``8 n`` leaves (``K^L >= 8n``; residual k-means
    codes of different levels are correlated and crowd into popular regions, so leaves need
    headroom over the item count): 60 items -> 3 x 8, 1k -> 3 x 32, 9.7k -> 3 x 64, 100k -> 3 x 128,
    1M -> 3 x 256, 10M and 100M -> 4 x 256. Balanced k-means (``balance=b``): the smallest codebook
    whose capacity bound (see :func:`build_sids`) leaves at most one item per leaf: with ``b = 1.1``,
    1k -> 3 x 16, 9.7k -> 3 x 32, 100k -> 3 x 64, 1M -> 3 x 128, 10M -> 3 x 256.

    ``K`` is a power of two, 2 to 256, over 3 levels (fewer for tiny types, more when 256 codes are
    not enough). A given ``levels`` or ``codebook_size`` is kept and the other one derived from it
    (with ``levels`` given, ``K`` may grow up to 65536).
    """
    n = max(int(n_items), 0)
    if levels is not None and codebook_size is not None:
        return int(levels), int(codebook_size)
    if n <= 1:
        return (int(levels) if levels is not None else 1), (int(codebook_size) if codebook_size is not None else 1)
    b = _check_balance(balance)

    def enough(L: int, k: int) -> bool:
        if b is None:
            return float(k) ** L >= 8 * n
        return _leaf_bound(n, [k] * L, b) <= 1

    if codebook_size is not None:
        k = int(codebook_size)
        if k < 2:
            return 1, k
        L = 1
        while not enough(L, k) and L < 64:
            L += 1
        return L, k
    if levels is not None:
        L = int(levels)
        k = 2
        while not enough(L, k) and k < MAX_CODEBOOK:
            k *= 2
        return L, k
    k = 2
    while not enough(3, k) and k < 256:
        k *= 2
    L = 1
    while not enough(L, k) and L < 64:
        L += 1
    return L, k


def _per_type(value: Any, type_name: str, what: str) -> Any:
    if isinstance(value, Mapping):
        return value.get(type_name)
    return value


def _resolve_type_config(type_name: str, n: int, levels: Any, codebook_size: Any,
                         balance: float | None = None) -> list[int]:
    """Codebook size per (base) level for one type."""
    lv = _per_type(levels, type_name, "levels")
    ks = _per_type(codebook_size, type_name, "codebook_size")
    if lv is not None and (not isinstance(lv, (int, np.integer)) or lv < 1):
        raise ValueError(f"type {type_name!r}: levels must be an integer >= 1, got {lv!r}")
    if ks is not None and not isinstance(ks, (int, np.integer)):
        ks = [int(k) for k in ks]
        if lv is not None and len(ks) != lv:
            raise ValueError(f"type {type_name!r}: {len(ks)} codebook sizes given for {lv} levels")
        sizes = ks
    else:
        L, K = default_sid_config(n, lv, ks, balance=balance)
        sizes = [K] * L
    for k in sizes:
        if not 1 <= k <= MAX_CODEBOOK:
            raise ValueError(f"type {type_name!r}: codebook size {k} not in [1, {MAX_CODEBOOK}]")
    return sizes


# ============================================================================================ embeddings access


class _Source:
    """Row access to the embeddings of one type, converting per chunk (never copies the whole matrix)."""

    def __init__(self, emb: np.ndarray | torch.Tensor, rows: np.ndarray, n_total: int, device: torch.device,
                 normalize: bool):
        self.emb, self.device, self.normalize = emb, device, normalize
        self.rows = rows
        # Rows are ascending and unique, so first..last spanning exactly rows.size means a plain range
        # (always true for single-type catalogs): read by slicing, which is cheap on memmaps.
        self.contiguous = rows.size == 0 or int(rows[-1]) - int(rows[0]) + 1 == rows.size

    def get(self, idx: np.ndarray | slice) -> torch.Tensor:
        """``float32[n, D]`` on the device for positions ``idx`` within the type."""
        if isinstance(idx, slice):
            rr = self.rows[idx]
            sel: Any = slice(int(rr[0]), int(rr[-1]) + 1) if (self.contiguous and rr.size) else rr
        else:
            sel = self.rows[idx]
        if isinstance(self.emb, torch.Tensor):
            x = self.emb[sel if isinstance(sel, slice) else torch.as_tensor(sel, device=self.emb.device)]
            x = x.to(self.device, torch.float32)
        else:
            x = torch.from_numpy(np.ascontiguousarray(self.emb[sel], dtype=np.float32)).to(self.device)
        if x.numel() and not bool(torch.isfinite(x).all()):
            bad = int(torch.nonzero(~torch.isfinite(x).all(dim=1))[0, 0])
            row = int(np.asarray(self.rows[idx])[bad])
            raise ValueError(f"embedding of catalog row {row} contains NaN or inf")
        if self.normalize:
            x = torch.nn.functional.normalize(x, dim=1)
        return x


# ============================================================================================ k-means


def _assign(x: torch.Tensor, c: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid per row: ``(int64[n], float32[n] squared distance)``."""
    cn = (c * c).sum(1)
    idx = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    dist = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for s in range(0, x.shape[0], chunk):
        xs = x[s : s + chunk]
        d = torch.addmm(cn.unsqueeze(0), xs, c.T, alpha=-2.0)  # ||c||^2 - 2 x.c
        m, a = d.min(1)
        idx[s : s + chunk] = a
        dist[s : s + chunk] = (m + (xs * xs).sum(1)).clamp_min_(0)
    return idx, dist


def _kmeans_pp(x: torch.Tensor, k: int, rng: np.random.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (as scikit-learn: ``2 + log k`` candidates per step, keep the best).

    Stops early when every point coincides with a chosen centre, so the result may have fewer than
    ``k`` rows (fewer distinct points than codes). Seeds from at most ``max(16384, 32 k)`` points:
    seeding is sequential in ``k`` and reads all points per step, and Lloyd refines on all of them.
    """
    n_all = x.shape[0]
    cap = max(16384, 32 * k)
    if n_all > cap:
        x = x[torch.as_tensor(np.sort(rng.choice(n_all, size=cap, replace=False)), device=x.device)]
    n = x.shape[0]
    trials = 2 + int(math.log(k)) if k > 1 else 1
    xn = (x * x).sum(1)
    centers = [int(rng.integers(n))]
    d2 = torch.addmv(xn + xn[centers[0]], x, x[centers[0]], alpha=-2.0).clamp_min_(0)
    buf = torch.empty((n, trials), dtype=x.dtype, device=x.device)  # reused: no per-step allocation
    for _ in range(1, k):
        cum = torch.cumsum(d2, 0, dtype=torch.float64)
        total = float(cum[-1])
        if total <= 1e-12 * n:
            break
        u = torch.as_tensor(rng.random(trials) * total, dtype=torch.float64, device=x.device)
        cand = torch.searchsorted(cum, u).clamp_(max=n - 1)
        torch.mm(x, x[cand].T, out=buf)
        buf.mul_(-2).add_(xn.unsqueeze(1)).add_(xn[cand].unsqueeze(0)).clamp_min_(0)  # squared distances
        torch.minimum(buf, d2.unsqueeze(1), out=buf)
        best = int(buf.sum(0).argmin())
        centers.append(int(cand[best]))
        d2 = buf[:, best].clone()
    return x[torch.as_tensor(centers, device=x.device)].clone()


def _kmeans(x: torch.Tensor, k: int, iters: int, rng: np.random.Generator, chunk: int, tol: float = 1e-4) -> torch.Tensor:
    """Lloyd's k-means from k-means++ seeds; returns ``float32[k', D]`` with ``k' <= k`` centroids."""
    n = x.shape[0]
    if n == 0:
        return x.new_zeros((0, x.shape[1]))
    c = _kmeans_pp(x, min(k, n), rng)
    kk = c.shape[0]
    var = float(x.var(0).sum()) if n > 1 else 0.0
    prev = None
    for _ in range(iters):
        a, dist = _assign(x, c, chunk)
        if prev is not None and torch.equal(a, prev):
            break
        prev = a
        counts = torch.bincount(a, minlength=kk).to(x.dtype)
        if x.device.type == "cuda":
            # index_add_ uses float atomics on CUDA (order-dependent); a one-hot matmul is deterministic.
            sums = torch.zeros((kk, x.shape[1]), dtype=x.dtype, device=x.device)
            for s in range(0, n, chunk):
                oh = torch.nn.functional.one_hot(a[s : s + chunk], kk).to(x.dtype)
                sums += oh.T @ x[s : s + chunk]
        else:
            sums = torch.zeros((kk, x.shape[1]), dtype=x.dtype, device=x.device).index_add_(0, a, x)
        new = sums / counts.clamp_min(1).unsqueeze(1)
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel():
            # Re-seed empty clusters at the points worst served by their centroid (deterministic).
            far = torch.topk(dist, min(empty.numel(), n)).indices
            new[empty[: far.numel()]] = x[far]
        shift = float(((new - c) ** 2).sum())
        c = new
        # scikit-learn's criterion: stop when the centres move less than tol x mean feature variance
        if shift <= tol * var / x.shape[1]:
            break
    return c


# ============================================================================================ balanced k-means
#
# Balanced codes bound the size of every cluster *within its parent prefix*: at level l, the items
# sharing a prefix of length l (a group of g items; the whole type at level 0) may put at most
# ``cap(g) = max(1, ceil(balance * g / K'))`` items on any one code (K' = centroids of the level).
# Leaves therefore hold about ``n * balance^L / K^L`` items at most, so collisions vanish once
# ``K^L`` comfortably exceeds ``n``, whatever the shape of the embedding distribution. The
# assignment is a capacitated nearest-centroid problem, solved per level by deferred acceptance
# (each item proposes to its nearest centroids in order; a full cluster keeps its closest
# proposers) on the ``m`` nearest centroids, and greedily on the full distance rows for the few
# items whose ``m`` candidates all filled up. Lloyd updates are the usual means.

_CANDIDATES = 16  # nearest centroids kept per item for the deferred-acceptance phase


def _capacity(group_sizes: np.ndarray, k_eff: int, balance: float) -> np.ndarray:
    """Largest allowed cluster per parent group: ``max(1, ceil(balance * g / k_eff))`` (int64[G])."""
    g = np.asarray(group_sizes, dtype=np.float64)
    return np.maximum(1, np.ceil(balance * g / max(int(k_eff), 1) - 1e-9)).astype(np.int64)


def _nearest_candidates(get_x: Any, n: int, c: torch.Tensor, m: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``m`` nearest centroids of every row, nearest first: ``(int32[n, m], float32[n, m])``
    squared distances. ``get_x(slice)`` returns the rows as a tensor."""
    cn = (c * c).sum(1)
    k = int(c.shape[0])
    cand = np.empty((n, m), dtype=np.int32)
    dist = np.empty((n, m), dtype=np.float32)
    for s in range(0, n, chunk):
        xs = get_x(slice(s, min(s + chunk, n)))
        d = torch.addmm(cn.unsqueeze(0), xs, c.T, alpha=-2.0).add_((xs * xs).sum(1, keepdim=True)).clamp_min_(0)
        e = s + xs.shape[0]
        if k <= 64:  # small codebooks: NumPy partition + sort is several times faster than torch.topk on CPU
            dn = d.cpu().numpy()
            part = np.argpartition(dn, m - 1, axis=1)[:, :m] if m < k else np.broadcast_to(np.arange(k), dn.shape)
            pv = np.take_along_axis(dn, part, 1)
            o = np.argsort(pv, axis=1, kind="stable")
            cand[s:e] = np.take_along_axis(part, o, 1)
            dist[s:e] = np.take_along_axis(pv, o, 1)
        else:
            v, i = torch.topk(d, m, dim=1, largest=False, sorted=True)
            cand[s:e] = i.cpu().numpy()
            dist[s:e] = v.cpu().numpy()
    return cand, dist


def _run_starts_rank(keys_sorted: np.ndarray) -> np.ndarray:
    """Position of each element within its run of equal keys (keys already sorted)."""
    n = keys_sorted.size
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.ones(n, dtype=bool)
    first[1:] = keys_sorted[1:] != keys_sorted[:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    return np.arange(n) - start


def _capacitated_assign(cand: np.ndarray, dist: np.ndarray, group: np.ndarray, cap: np.ndarray, k: int,
                        full_dist: Any, chunk: int) -> np.ndarray:
    """Assign every row to a centroid so that no (group, centroid) pair holds more than ``cap[group]``
    rows, preferring near centroids.

    Parameters
    ----------
    cand, dist : int32[n, m], float32[n, m]
        Each row's ``m`` nearest centroids, nearest first, and their squared distances.
    group : int64[n]
        Parent group of each row (``cap`` is per group; ``cap[g] * k >= size of g`` must hold).
    cap : int64[G]
    k : int
        Number of centroids.
    full_dist : callable
        ``full_dist(int64[r] rows) -> float32[r, k]`` squared distances to every centroid (used for
        rows whose ``m`` candidates all filled up).
    chunk : int
        Rows per ``full_dist`` call.

    Returns
    -------
    np.ndarray
        ``int64[n]`` centroid per row. Deterministic: ties are broken by row index.
    """
    n, m = cand.shape
    group = np.asarray(group, dtype=np.int64)
    assign = np.full(n, -1, dtype=np.int64)
    hkey = np.full(n, -1, dtype=np.int64)  # key (group * k + centroid) a row currently holds
    hdist = np.zeros(n, dtype=np.float32)
    ptr = np.zeros(n, dtype=np.int64)  # index into the row's candidate list of its current proposal
    pending = np.arange(n, dtype=np.int64)
    exhausted: list[np.ndarray] = []
    # Phase 1: deferred acceptance over the candidate lists. A full cluster keeps its closest
    # proposers (holders included) and rejects the rest, who propose to their next candidate.
    for _ in range(4 * m + 16):
        if pending.size == 0:
            break
        pc = cand[pending, ptr[pending]].astype(np.int64)
        pd = dist[pending, ptr[pending]]
        pk = group[pending] * k + pc
        touched = np.unique(pk)
        held = np.flatnonzero(hkey >= 0)
        held = held[np.isin(hkey[held], touched)]
        rows = np.concatenate([held, pending])
        keys = np.concatenate([hkey[held], pk])
        d = np.concatenate([hdist[held], pd])
        code = np.concatenate([assign[held], pc])
        o = np.lexsort((rows, d, keys))
        rows, keys, d, code = rows[o], keys[o], d[o], code[o]
        ok = _run_starts_rank(keys) < cap[keys // k]
        acc = rows[ok]
        assign[acc], hkey[acc], hdist[acc] = code[ok], keys[ok], d[ok]
        rej = rows[~ok]
        assign[rej], hkey[rej] = -1, -1
        ptr[rej] += 1
        more = ptr[rej] < m
        exhausted.append(rej[~more])
        pending = rej[more]
    if pending.size:  # round limit reached (rare): the rest are placed greedily below
        exhausted.append(pending)
    left = np.concatenate(exhausted) if exhausted else np.zeros(0, dtype=np.int64)
    if left.size == 0:
        return assign
    # Phase 2: rows whose candidates all filled up take the nearest centroid that still has room
    # (no bumping, so this terminates: each round fills a cluster or places every row; a group
    # always has room left because cap * k >= its size).
    left = np.sort(left)
    ug, inv = np.unique(group[left], return_inverse=True)
    counts = np.zeros((ug.size, k), dtype=np.int64)  # current cluster sizes of the groups involved
    h = np.flatnonzero(assign >= 0)
    gi = np.searchsorted(ug, group[h]).clip(max=ug.size - 1)
    inside = ug[gi] == group[h]
    np.add.at(counts, (gi[inside], assign[h[inside]]), 1)
    capg = cap[ug]
    for s in range(0, left.size, chunk):
        rows, ri = left[s : s + chunk], inv[s : s + chunk]
        dd = np.asarray(full_dist(rows), dtype=np.float64)
        todo = np.arange(rows.size)
        while todo.size:
            g = ri[todo]
            dm = np.where(counts[g] >= capg[g][:, None], np.inf, dd[todo])
            choice = dm.argmin(1)
            ck = g * k + choice
            o = np.lexsort((todo, dm[np.arange(todo.size), choice], ck))
            ck_o = ck[o]
            room = capg[ck_o // k] - counts[ck_o // k, ck_o % k]
            ok = _run_starts_rank(ck_o) < room
            placed = todo[o][ok]
            assign[rows[placed]] = choice[o][ok]
            np.add.at(counts, (ri[placed], choice[o][ok]), 1)
            todo = np.sort(todo[o][~ok])
    return assign


def _balanced_kmeans(x: torch.Tensor, k: int, iters: int, rng: np.random.Generator, chunk: int,
                     group: np.ndarray, balance: float, tol: float = 1e-4) -> tuple[torch.Tensor, np.ndarray]:
    """Lloyd's k-means with capacitated assignment (see above) from k-means++ seeds.

    Returns ``(float32[k', D] centroids, int64[n] assignment under them)``; every (group, code)
    pair holds at most ``_capacity(group size, k', balance)`` rows.
    """
    n = x.shape[0]
    if n == 0:
        return x.new_zeros((0, x.shape[1])), np.zeros(0, dtype=np.int64)
    c = _kmeans_pp(x, min(k, n), rng)
    kk = c.shape[0]
    cap = _capacity(np.bincount(group), kk, balance)
    var = float(x.var(0).sum()) if n > 1 else 0.0

    def assign(cent: torch.Tensor) -> np.ndarray:
        m = min(kk, _CANDIDATES)
        cand, dist = _nearest_candidates(lambda sl: x[sl], n, cent, m, chunk)

        def full(rows: np.ndarray) -> np.ndarray:
            xr = x[torch.as_tensor(rows, device=x.device)]
            return torch.cdist(xr, cent).pow_(2).cpu().numpy()

        return _capacitated_assign(cand, dist, group, cap, kk, full, chunk)

    prev = None
    for _ in range(iters):
        a = assign(c)
        # capacity-bound assignments keep trading a few items between full clusters; stop once
        # fewer than 0.1% of the rows move
        if prev is not None and np.count_nonzero(a != prev) <= 1e-3 * n:
            return c, a
        prev = a
        at = torch.as_tensor(a, device=x.device)
        counts = torch.bincount(at, minlength=kk).to(x.dtype)
        sums = torch.zeros((kk, x.shape[1]), dtype=x.dtype, device=x.device)
        if x.device.type == "cuda":  # deterministic sums on CUDA (see _kmeans)
            for s in range(0, n, chunk):
                sums += torch.nn.functional.one_hot(at[s : s + chunk], kk).to(x.dtype).T @ x[s : s + chunk]
        else:
            sums.index_add_(0, at, x)
        new = sums / counts.clamp_min(1).unsqueeze(1)
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel():
            # re-seed empty clusters at the rows farthest from their centroid (deterministic)
            far = torch.topk(((x - new[at]) ** 2).sum(1), min(empty.numel(), n)).indices
            new[empty[: far.numel()]] = x[far]
        shift = float(((new - c) ** 2).sum())
        c = new
        if shift <= tol * var / x.shape[1]:
            break
    return c, assign(c)


# ============================================================================================ report


class SidReport(dict):
    """Quality report of a SID build: a plain dict (``to_json()``) that prints as a readable summary."""

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self, indent=indent)

    def __str__(self) -> str:
        km = self.get("kmeans")
        lines = [f"SID report: {self.get('n_items', 0)} items, collision policy {self.get('collisions')!r}"
                 + (f", {km} k-means" if km else "") + (f" (balance {self['balance']:g})" if self.get("balance") else "")]
        for name, t in self.get("types", {}).items():
            col = t["collisions"]
            lines.append(
                f"\n[{name}] {t['n_items']} items, levels {t['levels']} "
                f"(codebook sizes {'x'.join(map(str, t['codebook_sizes']))}"
                f"{', last level disambiguates' if t['extra_level'] else ''})"
            )
            lines.append(
                f"  collisions before disambiguation: rate {col['collision_rate']:.4f} ({col['items_in_collisions']} "
                f"items share base codes, largest group {col['max_group_size']}), unreachable {col['n_unreachable']}"
            )
            if col.get("unreachable_ids_sample"):
                lines.append(f"  unreachable (first {len(col['unreachable_ids_sample'])}): {col['unreachable_ids_sample']}")
            lines.append("  level  K      used   util   perplexity  max/mean cluster")
            for lv in t["per_level"]:
                tag = " (disambiguation)" if lv.get("disambiguation") else ""
                bal = f"{lv['max_cluster']}/{lv['mean_cluster']:.1f} = {lv['balance']:.2f}" if "balance" in lv else "-"
                lines.append(f"  {lv['level']:<6} {lv['codebook_size']:<6} {lv['used_codes']:<6} "
                             f"{lv['utilisation']:<6.3f} {lv['perplexity']:<11.1f} {bal}{tag}")
            pc = t.get("prefix_coherence")
            if pc and pc["by_prefix"]:
                parts = ", ".join(f"p{d['prefix_len']}={d['mean_cos']:.3f}" for d in pc["by_prefix"] if d["mean_cos"] is not None)
                lines.append(f"  prefix coherence (mean cosine, same prefix): {parts}; random pairs {pc['random_pairs_cos']:.3f}")
            leaf = t["items_per_leaf"]
            lines.append(f"  items per leaf (base codes): {leaf['n_leaves']} leaves, mean {leaf['mean']:.2f}, "
                         f"p99 {leaf['p99']:.0f}, max {leaf['max']}")
            kmi = t.get("kmeans") or {}
            if kmi.get("leaf_bound") is not None:
                lines.append(f"  balanced k-means (balance {kmi['balance']:g}): a leaf holds at most {kmi['leaf_bound']} "
                             "item(s) by construction")
            fit = t.get("fit", {})
            if fit:
                lines.append(f"  fit: sample {fit['sample_size']}, {fit['seconds_fit']:.2f}s fit + "
                             f"{fit['seconds_assign']:.2f}s assign on {fit['device']}")
            if t.get("source"):
                lines.append(f"  codes: {t['source']}")
        return "\n".join(lines)


def _perplexity(codes: np.ndarray, k: int) -> tuple[int, float]:
    if codes.size == 0:
        return 0, 0.0
    cnt = np.bincount(codes, minlength=k).astype(np.float64)
    p = cnt[cnt > 0] / codes.size
    return int((cnt > 0).sum()), float(np.exp(-(p * np.log(p)).sum()))


def _pack(codes: np.ndarray, sizes: Sequence[int]) -> np.ndarray | None:
    """Codes ``[n, L]`` -> one int64 key per row (mixed radix), or None if it would not fit in 63 bits."""
    if codes.shape[1] == 0:
        return np.zeros(codes.shape[0], dtype=np.int64)
    if sum(math.log2(max(k, 1)) for k in sizes) >= 62:
        return None
    key = np.zeros(codes.shape[0], dtype=np.int64)
    for lvl, k in enumerate(sizes):
        key = key * int(k) + codes[:, lvl].astype(np.int64)
    return key


def _group_ids(codes: np.ndarray, sizes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Group identical code rows: ``(group index per row, count per group)``."""
    key = _pack(codes, sizes)
    if key is None:
        _, inv, cnt = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    else:
        _, inv, cnt = np.unique(key, return_inverse=True, return_counts=True)
    return inv.reshape(-1).astype(np.int64), cnt.astype(np.int64)


def _prefix_coherence(src: _Source, codes: np.ndarray, sizes: Sequence[int], rng: np.random.Generator,
                      n_pairs: int) -> dict:
    """Mean cosine of items sharing a code prefix (per prefix length) vs random pairs."""
    n = codes.shape[0]
    out: dict[str, Any] = {"random_pairs_cos": None, "by_prefix": []}
    if n < 2:
        return out

    def cos(i: np.ndarray, j: np.ndarray) -> float:
        a, b = src.get(i), src.get(j)
        a = torch.nn.functional.normalize(a, dim=1)
        b = torch.nn.functional.normalize(b, dim=1)
        return float((a * b).sum(1).mean())

    m = min(n_pairs, n * 4)
    i = rng.integers(n, size=m)
    j = (i + rng.integers(1, n, size=m)) % n  # j != i
    base = cos(i, j)
    out["random_pairs_cos"] = base
    for p in range(1, codes.shape[1] + 1):
        gid, cnt = _group_ids(codes[:, :p], sizes[:p])
        order = np.argsort(gid, kind="stable")
        starts = np.concatenate([[0], np.cumsum(cnt)[:-1]])
        pos = np.empty(n, dtype=np.int64)
        pos[order] = np.arange(n)
        samp = rng.integers(n, size=m)
        g = gid[samp]
        ok = cnt[g] > 1
        entry: dict[str, Any] = {"prefix_len": p, "mean_cos": None, "lift": None,
                                 "frac_items_with_partner": float(ok.mean())}
        if ok.any():
            s, g = samp[ok], g[ok]
            off = pos[s] - starts[g]
            partner_off = (off + rng.integers(1, cnt[g])) % cnt[g]  # any other member of the group
            partner = order[starts[g] + partner_off]
            mc = cos(s, partner)
            entry.update(mean_cos=mc, lift=mc - base, n_pairs=int(s.size))
        out["by_prefix"].append(entry)
    return out


# ============================================================================================ result


def _code_matrix(v: Any, what: str, name_row: Any = None) -> np.ndarray:
    """User codes -> ``int64[M, L]``; errors name the row (``name_row(i)`` adds the item) and level."""
    def row(i: int) -> str:
        return f"row {i}" + (f" ({name_row(i)})" if name_row is not None else "")

    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    try:
        a = np.asarray(v)
    except ValueError:
        a = np.asarray(v, dtype=object)
    if a.dtype == object:
        lens = [len(r) if hasattr(r, "__len__") else -1 for r in v]
        first = lens[0] if lens else 0
        bad = next((i for i, x in enumerate(lens) if x != first), 0)
        raise ValueError(f"{what}: rows have different lengths (row 0 has {first} codes, row {bad} has {lens[bad]}); "
                         "every item of a type needs the same number of levels")
    if a.ndim != 2:
        raise ValueError(f"{what} must be 2-D (items, levels), got shape {a.shape}"
                         + ("; for one level use codes[:, None]" if a.ndim == 1 else ""))
    if a.shape[1] < 1:
        raise ValueError(f"{what} has 0 levels (shape {a.shape})")
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{what} must hold integers, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.floating):
        frac = ~np.isfinite(a) | (a != np.round(a))
        if frac.any():
            i, lvl = map(int, np.argwhere(frac)[0])
            raise ValueError(f"{what}: {row(i)}, level {lvl} holds {float(a[i, lvl])!r}, not an integer code")
    neg = a < 0
    if neg.any():
        i, lvl = map(int, np.argwhere(neg)[0])
        raise ValueError(f"{what}: {row(i)}, level {lvl} holds the negative code {int(a[i, lvl])}; codes are 0..K-1")
    if a.size and float(a.max()) >= MAX_CODEBOOK:
        i, lvl = map(int, np.argwhere(a >= MAX_CODEBOOK)[0])
        raise ValueError(f"{what}: {row(i)}, level {lvl} holds code {int(a[i, lvl])}, above the largest codebook neo "
                         f"supports ({MAX_CODEBOOK} codes per level)")
    return a.astype(np.int64)


def _item_name(catalog: Catalog, rows: np.ndarray, i: int) -> str:
    if 0 <= i < rows.size:
        r = int(rows[i])
        return f"item {catalog.ids[r]!r}, catalog row {r}"
    return "no such item"


class SemanticIds:
    """Per-type semantic IDs of a catalog.

    Attributes
    ----------
    type_names : list[str]
        Item types, in catalog order.
    codes : dict[str, np.ndarray]
        ``int32[N_t, L_t]`` codes per type; row ``i`` belongs to catalog row ``rows[t][i]``.
    rows : dict[str, np.ndarray]
        ``int64[N_t]`` catalog rows of each type's items, ascending.
    codebook_sizes : dict[str, tuple[int, ...]]
        ``K`` per level per type (including the disambiguation level when there is one).
    reachable : dict[str, np.ndarray]
        ``bool[N_t]``; False for items that lost a collision under the ``popular`` policy.
    extra_level : dict[str, bool]
        Whether the last level of a type is the disambiguation level.
    collisions : str
        Policy used (``"extra_level"`` or ``"popular"``).
    codebooks : dict[str, list[np.ndarray]]
        ``float32[K', D]`` centroids per base level (``K' <= K`` when there were fewer distinct
        points than codes).
    report : SidReport
        Quality report (empty for results loaded without one).
    catalog : Catalog or None
        The catalog the SIDs belong to, when known.
    """

    def __init__(
        self,
        *,
        type_names: Sequence[str],
        codes: Mapping[str, np.ndarray],
        rows: Mapping[str, np.ndarray],
        codebook_sizes: Mapping[str, Sequence[int]],
        reachable: Mapping[str, np.ndarray],
        extra_level: Mapping[str, bool],
        collisions: str,
        n_items: int,
        catalog_fingerprint: str,
        codebooks: Mapping[str, Sequence[np.ndarray]] | None = None,
        report: Mapping | None = None,
        config: Mapping | None = None,
        catalog: Catalog | None = None,
    ):
        self.type_names = list(type_names)
        self.codes = {t: np.asarray(codes[t], dtype=np.int32) for t in self.type_names}
        self.rows = {t: np.asarray(rows[t], dtype=np.int64) for t in self.type_names}
        self.codebook_sizes = {t: tuple(int(k) for k in codebook_sizes[t]) for t in self.type_names}
        self.reachable = {t: np.asarray(reachable[t], dtype=bool) for t in self.type_names}
        self.extra_level = {t: bool(extra_level[t]) for t in self.type_names}
        self.collisions = str(collisions)
        self.n_items = int(n_items)
        self.catalog_fingerprint = str(catalog_fingerprint)
        self.codebooks = {t: [np.asarray(c, dtype=np.float32) for c in (codebooks or {}).get(t, [])] for t in self.type_names}
        self.report = SidReport(report or {})
        self.config = dict(config or {})
        self.catalog = catalog
        self._row_type: np.ndarray | None = None
        self._row_pos: np.ndarray | None = None
        self._lookup: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
        self._validate()

    def _validate(self) -> None:
        if self.collisions not in COLLISION_POLICIES:
            raise ValueError(f"unknown collision policy {self.collisions!r}; use one of {COLLISION_POLICIES}")
        seen = np.zeros(self.n_items, dtype=np.int64)
        for t in self.type_names:
            c, r, ok, ks = self.codes[t], self.rows[t], self.reachable[t], self.codebook_sizes[t]
            if c.ndim != 2 or c.shape[1] != len(ks):
                raise ValueError(f"type {t!r}: codes must have shape (N, {len(ks)}), got {c.shape}")
            if r.shape != (c.shape[0],) or ok.shape != (c.shape[0],):
                raise ValueError(f"type {t!r}: {c.shape[0]} code rows but {r.shape[0]} rows / {ok.shape[0]} reachable flags")
            if c.size:
                bad = (c < 0) | (c >= np.asarray(ks))
                if bad.any():
                    i, lvl = map(int, np.argwhere(bad)[0])
                    raise ValueError(f"type {t!r}: code {int(c[i, lvl])} at row {i}, level {lvl} outside [0, {ks[lvl]})")
            if r.size and (r.min() < 0 or r.max() >= self.n_items):
                raise ValueError(f"type {t!r}: catalog rows outside [0, {self.n_items})")
            seen += np.bincount(r, minlength=self.n_items)[: self.n_items]
            gid, cnt = _group_ids(c[ok], ks)
            if (cnt > 1).any():
                raise ValueError(f"type {t!r}: {int((cnt > 1).sum())} SIDs are shared by several reachable items")
        if (seen != 1).any():
            r = int(np.flatnonzero(seen != 1)[0])
            raise ValueError(f"catalog row {r} has {int(seen[r])} SIDs; every item needs exactly one")

    # ------------------------------------------------------------------ queries
    def levels(self, type_: str) -> int:
        """Number of levels ``L_t`` of a type (including the disambiguation level)."""
        return len(self.codebook_sizes[self._type(type_)])

    def _type(self, type_: str | int) -> str:
        if isinstance(type_, (int, np.integer)):
            if not 0 <= int(type_) < len(self.type_names):
                raise KeyError(f"type index {type_} out of range [0, {len(self.type_names)})")
            return self.type_names[int(type_)]
        if type_ not in self.codes:
            raise KeyError(f"unknown item type {type_!r}; SIDs exist for {self.type_names}")
        return type_

    def _index_rows(self) -> None:
        if self._row_type is None:
            rt = np.empty(self.n_items, dtype=np.int32)
            rp = np.empty(self.n_items, dtype=np.int64)
            for ti, t in enumerate(self.type_names):
                rt[self.rows[t]] = ti
                rp[self.rows[t]] = np.arange(self.rows[t].size)
            self._row_type, self._row_pos = rt, rp

    def sid_of(self, row: int | str) -> tuple[str, np.ndarray]:
        """``(type, int32[L_t] codes)`` of one item, by catalog row or (with a catalog) item id."""
        if isinstance(row, str):
            if self.catalog is None:
                raise ValueError("looking up an item id needs the catalog; pass catalog= when loading")
            row = self.catalog.row(row)
        if not 0 <= int(row) < self.n_items:
            raise IndexError(f"row {row} out of range for {self.n_items} items")
        self._index_rows()
        t = self.type_names[self._row_type[row]]
        return t, self.codes[t][self._row_pos[row]]

    def reachable_mask(self) -> np.ndarray:
        """``bool[N]`` over catalog rows: False for items without a SID of their own."""
        m = np.ones(self.n_items, dtype=bool)
        for t in self.type_names:
            m[self.rows[t][~self.reachable[t]]] = False
        return m

    def reachable_codes(self, type_: str | int) -> tuple[np.ndarray, np.ndarray]:
        """``(int32[M, L_t] codes, int64[M] catalog rows)`` of the reachable items of a type (what a trie indexes)."""
        t = self._type(type_)
        ok = self.reachable[t]
        return self.codes[t][ok], self.rows[t][ok]

    def resolve(self, type_: str | int, codes: np.ndarray) -> np.ndarray:
        """Catalog rows of code tuples ``int[M, L_t]`` of one type; ``-1`` where no reachable item has them."""
        t = self._type(type_)
        ks = self.codebook_sizes[t]
        q = np.asarray(codes)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != len(ks):
            raise ValueError(f"codes for type {t!r} must have shape (M, {len(ks)}), got {q.shape}")
        valid = ((q >= 0) & (q < np.asarray(ks))).all(1)
        qq = np.where(valid[:, None], q, 0)
        if t not in self._lookup:
            c, r = self.reachable_codes(t)
            key = _pack(c, ks)
            if key is None:
                self._lookup[t] = None
            else:
                o = np.argsort(key)
                self._lookup[t] = (key[o], r[o])
        out = np.full(q.shape[0], -1, dtype=np.int64)
        lk = self._lookup[t]
        if lk is None:  # keys too wide to pack: dictionary fallback
            c, r = self.reachable_codes(t)
            d = {tuple(x): int(y) for x, y in zip(c.tolist(), r.tolist())}
            for i, row in enumerate(qq.tolist()):
                if valid[i]:
                    out[i] = d.get(tuple(row), -1)
            return out
        keys, rows = lk
        qk = _pack(qq, ks)
        pos = np.searchsorted(keys, qk).clip(max=max(keys.size - 1, 0))
        hit = valid & (keys.size > 0) & (keys[pos] == qk) if keys.size else np.zeros(q.shape[0], dtype=bool)
        out[hit] = rows[pos[hit]]
        return out

    # ------------------------------------------------------------------ token ids
    def token_layout(self, base_vocab_size: int, *, pad_to_multiple_of: int = 1) -> TokenLayout:
        """A :class:`TokenLayout` with ``[SID]``, ``[/SID]`` and one band per (type, level) after ``base_vocab_size``."""
        return TokenLayout.contiguous(base_vocab_size, {t: self.codebook_sizes[t] for t in self.type_names},
                                      pad_to_multiple_of=pad_to_multiple_of)

    def to_token_ids(self, layout: TokenLayout, type_: str | int | None = None) -> dict[str, np.ndarray] | np.ndarray:
        """Code tokens per type: ``int32[N_t, L_t]`` (one type) or a dict over all types.

        Raises ``ValueError`` when the layout's bands do not match these SIDs' codebook sizes.
        """
        names = self.type_names if type_ is None else [self._type(type_)]
        out = {}
        for t in names:
            try:
                bands = layout.types[layout.type_index(t)]
            except KeyError:
                raise ValueError(f"the token layout has no item type {t!r} (it has {layout.type_names})") from None
            if tuple(bands.codebook_sizes) != self.codebook_sizes[t]:
                raise ValueError(f"type {t!r}: layout codebook sizes {list(bands.codebook_sizes)} differ from the "
                                 f"SIDs' {list(self.codebook_sizes[t])}; build the layout with sids.token_layout()")
            out[t] = layout.codes_to_tokens(t, self.codes[t])
        return out if type_ is None else out[names[0]]

    # ------------------------------------------------------------------ save / load
    def save(self, directory: str | os.PathLike, catalog: Catalog | None = None, *, save_catalog: bool = True) -> Path:
        """Write ``sids.npz`` and ``sids.json`` (and the catalog under ``catalog/``) to ``directory``.

        Raises ``ValueError`` if ``catalog`` is not the catalog these SIDs were built for.
        """
        cat = catalog if catalog is not None else self.catalog
        if cat is not None:
            self._check_catalog(cat)
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {}
        for i, t in enumerate(self.type_names):
            arrays[f"codes_{i}"] = self.codes[t]
            arrays[f"rows_{i}"] = self.rows[t]
            arrays[f"reachable_{i}"] = self.reachable[t]
            for lvl, c in enumerate(self.codebooks[t]):
                arrays[f"codebook_{i}_{lvl}"] = c
        meta = {
            "format": "neo.sids",
            "version": SIDS_FORMAT_VERSION,
            "type_names": self.type_names,
            "codebook_sizes": {t: list(self.codebook_sizes[t]) for t in self.type_names},
            "extra_level": self.extra_level,
            "n_codebooks": {t: len(self.codebooks[t]) for t in self.type_names},
            "collisions": self.collisions,
            "n_items": self.n_items,
            "catalog_fingerprint": self.catalog_fingerprint,
            "config": self.config,
            "report": dict(self.report),
        }
        # temp names + rename: a crash mid-save leaves the previous files intact
        tmp_npz = d / "sids.tmp.npz"
        np.savez_compressed(tmp_npz, **arrays)
        tmp_json = d / "sids.json.tmp"
        tmp_json.write_text(json.dumps(meta, indent=1))
        if cat is not None and save_catalog:
            cat.save(d / "catalog")
        os.replace(tmp_npz, d / "sids.npz")
        os.replace(tmp_json, d / "sids.json")
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike, catalog: Catalog | None = None) -> "SemanticIds":
        """Load SIDs saved by :meth:`save`.

        Parameters
        ----------
        directory : path-like
            Directory with ``sids.json`` and ``sids.npz``.
        catalog : Catalog, optional
            The catalog to attach; default: the one saved beside the SIDs (if any).

        Raises
        ------
        ValueError
            If the catalog is not the one the SIDs were built for (ids, types or order differ).
        """
        d = Path(directory)
        meta_p, npz_p = d / "sids.json", d / "sids.npz"
        if not meta_p.exists() or not npz_p.exists():
            raise FileNotFoundError(f"{d} holds no saved SIDs (expected sids.json and sids.npz)")
        meta = json.loads(meta_p.read_text())
        if meta.get("format") != "neo.sids" or int(meta.get("version", -1)) > SIDS_FORMAT_VERSION:
            raise ValueError(f"{meta_p}: not neo SIDs of a supported version (format {meta.get('format')!r}, "
                             f"version {meta.get('version')!r}; this neo reads <= {SIDS_FORMAT_VERSION})")
        names = meta["type_names"]
        with np.load(npz_p, allow_pickle=False) as z:
            codes = {t: z[f"codes_{i}"] for i, t in enumerate(names)}
            rows = {t: z[f"rows_{i}"] for i, t in enumerate(names)}
            reach = {t: z[f"reachable_{i}"] for i, t in enumerate(names)}
            books = {t: [z[f"codebook_{i}_{lvl}"] for lvl in range(meta["n_codebooks"][t])] for i, t in enumerate(names)}
        if catalog is None and (d / "catalog" / "catalog.json").exists():
            catalog = Catalog.load(d / "catalog")
        sids = cls(type_names=names, codes=codes, rows=rows, codebook_sizes=meta["codebook_sizes"], reachable=reach,
                   extra_level=meta["extra_level"], collisions=meta["collisions"], n_items=meta["n_items"],
                   catalog_fingerprint=meta["catalog_fingerprint"], codebooks=books, report=meta.get("report"),
                   config=meta.get("config"))
        if catalog is not None:
            sids._check_catalog(catalog)
            sids.catalog = catalog
        return sids

    @classmethod
    def from_codes(
        cls,
        catalog: Catalog,
        codes: "np.ndarray | Sequence[Sequence[int]] | Mapping[str, Any]",
        *,
        types: Sequence[str] | None = None,
        ids: Sequence[str] | None = None,
        codebook_size: int | Sequence[int] | Mapping[str, int | Sequence[int]] | None = None,
        collisions: str = "extra_level",
        warn_collision_rate: float | None = 0.05,
        embeddings: Any = None,
        build_options: Mapping[str, Any] | None = None,
    ) -> "SemanticIds":
        """SIDs from codes you already have (published SIDs, your own quantiser).

        neo checks the codes, groups items that share them and applies the collision policy
        itself (``extra_level`` writes the disambiguation level), and reports collisions, codebook
        use and balance as :func:`build_sids` does.

        Parameters
        ----------
        catalog : Catalog
        codes : array-like or mapping type -> array-like
            Non-negative integers. A 2-D array ``(M, L)``: one row per item, in catalog row order
            (``M`` = the number of items of ``types``), or in any order with ``ids``. A mapping
            ``{type: (N_t, L_t)}``: the items of each type in catalog row order; types may have
            different numbers of levels.
        types : sequence of str, optional
            With a 2-D array: the item types it covers (default: every type). Types not covered
            get SIDs from ``embeddings`` via :func:`build_sids`.
        ids : sequence of str, optional
            With a 2-D array: the item id of each row (rows in any order; every item of the
            covered types needs exactly one row).
        codebook_size : int, sequence of int, or mapping type -> either, optional
            ``K`` per level (a sequence: one per level). Default: the largest code + 1 per level.
            A code ``>= K`` is an error.
        collisions : {"extra_level", "popular"}
            As in :func:`build_sids`: ``extra_level`` appends a level numbering the items of a
            collision group by popularity (every item reachable); ``popular``: the most popular
            item keeps the SID, the others are unreachable.
        warn_collision_rate : float, optional
            Warn (:class:`SidCollisionWarning`) when a type's collision rate exceeds this, naming
            the codebook size that would give every item its own codes. ``None``: never warn.
        embeddings : optional
            For types without codes: anything :func:`build_sids` accepts (``float[N, D]`` over
            the whole catalog, an embedder or ``"tfidf"``).
        build_options : mapping, optional
            Keyword arguments of :func:`build_sids` for those types (``balance``, ``levels``,
            ``codebook_size``, ``seed`` ...).

        Returns
        -------
        SemanticIds
            With an empty codebook list for types whose codes were given.

        Raises
        ------
        ValueError
            Naming the type, the item (id and catalog row) and the level of a bad code: wrong
            shape or row count, non-integer, negative, ``>= codebook_size``, unknown type or id.
        """
        if not isinstance(catalog, Catalog):
            raise TypeError(f"catalog must be a neo.Catalog, got {type(catalog).__name__}")
        if collisions not in COLLISION_POLICIES:
            raise ValueError(f"unknown collision policy {collisions!r}; use one of {COLLISION_POLICIES}")
        warn_rate = _check_warn_rate(warn_collision_rate)
        known = list(catalog.type_names)
        per_type: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # type -> (codes in type row order, codes-row index)
        if isinstance(codes, Mapping):
            if types is not None or ids is not None:
                raise ValueError("types= and ids= apply to a 2-D codes array, not to a mapping type -> codes")
            unknown = [str(k) for k in codes if k not in known]
            if unknown:
                raise ValueError(f"codes name unknown item type(s) {unknown}; the catalog's types are {known}")
            for tname, v in codes.items():
                rows = catalog.rows_of_type(tname)
                arr = _code_matrix(v, f"codes[{tname!r}]", lambda i, rows=rows: _item_name(catalog, rows, i))
                if arr.shape[0] != rows.size:
                    raise ValueError(f"codes[{tname!r}] has {arr.shape[0]} rows but the catalog has {rows.size} items "
                                     f"of type {tname!r} (one row per item, in catalog row order)")
                per_type[tname] = (arr, np.arange(rows.size))
        else:
            covered = known if types is None else [str(x) for x in ([types] if isinstance(types, str) else types)]
            if bad := [x for x in covered if x not in known]:
                raise ValueError(f"types names unknown item type(s) {bad}; the catalog's types are {known}")
            if len(set(covered)) != len(covered):
                raise ValueError(f"types lists a type twice: {covered}")
            cov_rows = np.sort(np.concatenate([catalog.rows_of_type(x) for x in covered])) if covered else \
                np.zeros(0, dtype=np.int64)
            if ids is not None:
                ids = [str(i) for i in ids]
            arr = _code_matrix(codes, "codes", (lambda i: f"item {ids[i]!r}" if i < len(ids) else "no id") if ids
                               is not None else (lambda i: _item_name(catalog, cov_rows, i)))
            if ids is not None:
                if len(ids) != arr.shape[0]:
                    raise ValueError(f"{len(ids)} ids for {arr.shape[0]} code rows; give one id per row")
                cov_set = np.zeros(len(catalog), dtype=bool)
                cov_set[cov_rows] = True
                row_of = np.full(len(catalog), -1, dtype=np.int64)  # catalog row -> codes row
                for i, iid in enumerate(ids):
                    if iid not in catalog:
                        raise ValueError(f"codes row {i}: item id {iid!r} is not in the catalog")
                    r = catalog.row(iid)
                    if not cov_set[r]:
                        raise ValueError(f"codes row {i}: item {iid!r} is of type {catalog.type_of(r)!r}, which "
                                         f"types={covered} does not cover")
                    if row_of[r] >= 0:
                        raise ValueError(f"codes rows {int(row_of[r])} and {i} are both for item {iid!r}")
                    row_of[r] = i
                missing = cov_rows[row_of[cov_rows] < 0]
                if missing.size:
                    raise ValueError(f"no codes for {missing.size} item(s) of types {covered}, e.g. "
                                     f"{[catalog.ids[r] for r in missing[:5]]}")
                src_row = row_of
            else:
                if arr.shape[0] != cov_rows.size:
                    what = "catalog items" if types is None else f"items of types {covered}"
                    raise ValueError(f"codes has {arr.shape[0]} rows but there are {cov_rows.size} {what}; give one "
                                     "row per item in catalog row order, or pass ids= (the item id of each row)")
                src_row = np.full(len(catalog), -1, dtype=np.int64)
                src_row[cov_rows] = np.arange(cov_rows.size)
            for x in covered:
                rows = catalog.rows_of_type(x)
                per_type[x] = (arr[src_row[rows]], src_row[rows])
        uncovered = [x for x in known if x not in per_type]
        built = None
        if build_options is not None and not uncovered:
            raise ValueError("build_options apply to types without codes, and every type has codes")
        if uncovered:
            if embeddings is None:
                raise ValueError(f"no codes for item type(s) {uncovered}; give codes for every type, or pass "
                                 "embeddings= (e.g. 'tfidf') to build their SIDs with build_sids")
            sub_rows = np.sort(np.concatenate([catalog.rows_of_type(x) for x in uncovered]))
            sub = catalog.select(rows=sub_rows)
            if isinstance(embeddings, (np.ndarray, torch.Tensor)):
                emb = _as_embeddings(catalog, embeddings)[torch.as_tensor(sub_rows) if isinstance(embeddings, torch.Tensor)
                                                          else sub_rows]
            else:
                emb = embeddings
            opts = {"warn_collision_rate": warn_rate, **dict(build_options or {})}
            if "collisions" in opts and opts["collisions"] != collisions:
                raise ValueError("build_options['collisions'] differs from collisions=; one policy applies to all types")
            opts.pop("collisions", None)
            built = build_sids(sub, emb, collisions=collisions, **opts)

        per_k = None if isinstance(codebook_size, Mapping) else codebook_size
        if isinstance(codebook_size, Mapping) and (bad := [str(k) for k in codebook_size if k not in per_type]):
            raise ValueError(f"codebook_size names item type(s) {bad} without given codes; types with codes: "
                             f"{list(per_type)}")
        codes_out, rows_out, sizes_out, reach_out, extra_out, books_out = {}, {}, {}, {}, {}, {}
        report = SidReport(n_items=len(catalog), collisions=collisions, types={}, kmeans=None, balance=None)
        for tname in known:
            rows = catalog.rows_of_type(tname)
            if tname not in per_type:
                codes_out[tname], rows_out[tname] = built.codes[tname], rows
                sizes_out[tname], reach_out[tname] = built.codebook_sizes[tname], built.reachable[tname]
                extra_out[tname], books_out[tname] = built.extra_level[tname], built.codebooks[tname]
                rep = dict(built.report["types"][tname])
                rep["source"] = "built from embeddings (build_sids)"
                report["types"][tname] = rep
                continue
            arr, src_idx = per_type[tname]
            L = arr.shape[1]
            given = codebook_size.get(tname) if isinstance(codebook_size, Mapping) else per_k
            if given is None:
                sizes = [int(arr[:, lvl].max()) + 1 if arr.shape[0] else 1 for lvl in range(L)]
            elif isinstance(given, (int, np.integer)):
                sizes = [int(given)] * L
            else:
                sizes = [int(k) for k in given]
                if len(sizes) != L:
                    raise ValueError(f"type {tname!r}: {len(sizes)} codebook sizes given for codes with {L} levels")
            for lvl, k in enumerate(sizes):
                if not 1 <= k <= MAX_CODEBOOK:
                    raise ValueError(f"type {tname!r}: codebook size {k} at level {lvl} not in [1, {MAX_CODEBOOK}]")
            if arr.size:
                over = arr >= np.asarray(sizes)
                if over.any():
                    i, lvl = map(int, np.argwhere(over)[0])
                    r = int(rows[i])
                    raise ValueError(f"code {int(arr[i, lvl])} of item {catalog.ids[r]!r} (catalog row {r}, codes row "
                                     f"{int(src_idx[i])}) at level {lvl} is outside the codebook [0, {sizes[lvl]}); "
                                     "raise codebook_size or fix the code")
            pop = catalog.popularity[rows] if catalog.popularity is not None else np.zeros(rows.size)
            res = _resolve_collisions(tname, arr.astype(np.int32), sizes, pop, collisions)
            codes_out[tname], rows_out[tname], sizes_out[tname] = res["codes"], rows, res["sizes"]
            reach_out[tname], extra_out[tname], books_out[tname] = res["reach"], res["extra"], []
            rep = _type_report(catalog, rows, arr, sizes, res, collisions)
            rep["source"] = "given codes (SemanticIds.from_codes)"
            report["types"][tname] = rep
            rate = rep["collisions"]["collision_rate"]
            if warn_rate is not None and rate > warn_rate:
                warnings.warn(_collision_advice(tname, int(rows.size), rep["collisions"], sizes, None, "codes") +
                              f" (warn_collision_rate={warn_rate:g} set this threshold)", SidCollisionWarning,
                              stacklevel=2)
        report["n_unreachable"] = int(sum(v["collisions"]["n_unreachable"] for v in report["types"].values()))
        config = {"source": "codes", "collisions": collisions, "codebook_size": _jsonable(codebook_size),
                  "types_with_codes": list(per_type)}
        if built is not None:
            config["built"] = built.config
        return cls(type_names=known, codes=codes_out, rows=rows_out, codebook_sizes=sizes_out, reachable=reach_out,
                   extra_level=extra_out, collisions=collisions, n_items=len(catalog),
                   catalog_fingerprint=catalog.fingerprint(), codebooks=books_out, report=report, config=config,
                   catalog=catalog)

    def with_item_level(self, mode: str = "replace", types: Sequence[str] | None = None) -> "SemanticIds":
        """These SIDs with a last level unique to each item: the item's own token.

        The shared, semantic levels let the model generalise across similar items; the item level
        gives every item its own input and output row, as an ID-based recommender (SASRec) has. On
        ml-100k and ml-latest-small the 2-level collaborative SIDs with the last level replaced
        this way ranked better than the plain ones on average over four seeds, and above SASRec
        (``benchmarks/results/rec.md``, section 2d).
        It adds one token per item, so it suits types up to tens of thousands of items, not 10M.

        Parameters
        ----------
        mode : {"replace", "append"}
            ``replace``: the first ``L - 1`` base codes stay and the item code takes the last
            level's place (same SID length). ``append``: all base codes stay and the item code
            follows them (one token longer). Either way a disambiguation level (``extra_level``)
            is dropped, since the item code already tells the items apart.
        types : sequence of str, optional
            Item types to change (default: every type with items); the others keep their SIDs.

        Returns
        -------
        SemanticIds
            New SIDs (this object is unchanged): codes ``int32[N_t, L']`` whose last level is the
            item's index within its type (catalog row order), codebook size ``N_t`` there, every
            item reachable; the codebooks of the kept levels and the report of the new codes.

        Raises
        ------
        ValueError
            Unknown ``mode`` or type, a type with more than 65,536 items (the per-level limit of
            the token layout), or SIDs without their catalog.
        """
        if mode not in ITEM_LEVEL_MODES:
            raise ValueError(f"unknown item level mode {mode!r}; use one of {ITEM_LEVEL_MODES}")
        if self.catalog is None:
            raise ValueError("with_item_level needs the SIDs' catalog: load them with SemanticIds.load(dir, catalog)")
        chosen = [t for t in self.type_names if self.codes[t].shape[0]] if types is None else \
            [str(t) for t in ([types] if isinstance(types, str) else types)]
        if bad := [t for t in chosen if t not in self.type_names]:
            raise ValueError(f"types names unknown item type(s) {bad}; the SIDs' types are {self.type_names}")
        if big := {t: int(self.codes[t].shape[0]) for t in chosen if self.codes[t].shape[0] > MAX_CODEBOOK}:
            raise ValueError(f"an item level gives every item its own code, at most {MAX_CODEBOOK} per level; "
                             f"type(s) {big} have more items: keep their plain SIDs (types=...)")
        codes: dict[str, np.ndarray] = {}
        sizes: dict[str, list[int]] = {}
        keep: dict[str, int] = {}  # base levels kept in front of the item code
        for t in self.type_names:
            base_levels = self.levels(t) - int(self.extra_level[t])
            base = self.codes[t][:, :base_levels].astype(np.int64)
            sizes[t] = list(self.codebook_sizes[t][:base_levels])
            if t in chosen:
                keep[t] = base_levels - 1 if mode == "replace" else base_levels
                n = base.shape[0]
                codes[t] = np.concatenate([base[:, :keep[t]], np.arange(n, dtype=np.int64)[:, None]], axis=1)
                sizes[t] = sizes[t][:keep[t]] + [max(1, n)]
            else:
                codes[t] = base  # from_codes re-applies the collision policy to the base codes
        out = SemanticIds.from_codes(self.catalog, codes, codebook_size=sizes, collisions=self.collisions,
                                     warn_collision_rate=None)
        for t in self.type_names:
            if t in chosen:
                out.codebooks[t] = [c.copy() for c in self.codebooks[t][:keep[t]]]
                was = self.report.get("types", {}).get(t, {}).get("source", "residual k-means")
                out.report["types"][t]["source"] = f"item level ({mode}) over {was}"
            else:
                out.codebooks[t] = [c.copy() for c in self.codebooks[t]]
                if t in self.report.get("types", {}):
                    out.report["types"][t] = self.report["types"][t]
        out.config = {**self.config, "item_level": {"mode": mode, "types": chosen}}
        return out

    def _check_catalog(self, catalog: Catalog) -> None:
        if catalog.fingerprint() == self.catalog_fingerprint:
            return
        why = []
        if len(catalog) != self.n_items:
            why.append(f"it has {len(catalog)} items, the SIDs cover {self.n_items}")
        if catalog.type_names != self.type_names:
            why.append(f"its types are {catalog.type_names}, the SIDs' are {self.type_names}")
        if not why:
            why.append("item ids, types or their order differ")
        raise ValueError(
            f"catalog does not match these SIDs ({'; '.join(why)}; fingerprint {catalog.fingerprint()[:12]} != "
            f"{self.catalog_fingerprint[:12]}). Rebuild the SIDs for this catalog with build_sids()."
        )

    def __repr__(self) -> str:
        ts = ", ".join(f"{t}:{self.codes[t].shape[0]}x[{'x'.join(map(str, self.codebook_sizes[t]))}]" for t in self.type_names)
        return f"SemanticIds({self.n_items} items, collisions={self.collisions!r}, types=[{ts}])"


# ============================================================================================ build


def _jsonable(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [int(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    return v


def _as_embeddings(catalog: Catalog, embeddings: Any) -> np.ndarray | torch.Tensor:
    if isinstance(embeddings, torch.Tensor):
        x = embeddings.detach()
        if not x.is_floating_point():
            raise ValueError(f"embeddings must be floating point, got {x.dtype}")
    elif isinstance(embeddings, np.ndarray):
        x = embeddings
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"embeddings must be floating point, got dtype {x.dtype}")
    else:
        from .embeddings import get_embedder

        x = get_embedder(embeddings).embed_catalog(catalog)
    if x.ndim != 2 or x.shape[0] != len(catalog) or x.shape[1] < 1:
        raise ValueError(f"embeddings must have shape ({len(catalog)}, D) for a catalog of {len(catalog)} items, "
                         f"got {tuple(x.shape)}")
    return x


def _collision_free_codebook(n: int, levels: int, balance: float) -> int | None:
    """Smallest power-of-two codebook size for which a balanced build with ``levels`` levels and this
    ``balance`` is guaranteed at most one item per leaf (``None`` if no size up to 65536 is)."""
    k = 2
    while k <= MAX_CODEBOOK:
        g = max(int(n), 1)
        for _ in range(levels):
            g = int(_capacity(np.array([g]), k, balance)[0])
        if g <= 1:
            return k
        k *= 2
    return None


def _leaf_bound(n: int, sizes: Sequence[int], balance: float) -> int:
    """Most items a leaf can hold in a balanced build (the capacity recursion over the levels)."""
    g = max(int(n), 1)
    for k in sizes:
        g = int(_capacity(np.array([g]), k, balance)[0])
    return g


def _levels_word(L: int) -> str:
    return f"{L} level" + ("s" if L != 1 else "")


class SidCollisionWarning(UserWarning):
    """Many items of a type share their base codes (see :func:`build_sids` ``warn_collision_rate``)."""


def _collision_advice(type_name: str, n: int, col: Mapping[str, Any], sizes: Sequence[int], balance: float | None,
                      source: str) -> str:
    L = len(sizes)
    shape = "x".join(map(str, sizes))
    leaves = math.prod(int(k) for k in sizes)
    rate = col["collision_rate"]
    msg = (f"type {type_name!r}: collision rate {rate:.1%} ({n - col['n_unique_base_sids']} of its {n} items need a "
           f"disambiguation code; {col['items_in_collisions']} share their base codes with another item; "
           f"{_levels_word(L)} of {shape} codes, {leaves} leaves). Inside a collision group the last code is only a "
           f"popularity rank, not a meaning")
    b = balance if balance is not None else 1.1
    k_fix = _collision_free_codebook(n, L, b)
    if source == "codes":
        fix = (f"a quantiser with {_levels_word(L)} of {k_fix} codes, balanced (at most {b:g}x the mean cluster size), "
               f"could give every item its own codes" if k_fix else
               f"{_levels_word(L)} cannot give {n} items distinct codes; use more levels")
        return (f"{msg}. {fix[0].upper() + fix[1:]}; or let neo build them: "
                f"build_sids(catalog, embeddings, levels={L}, balance={b:g}).")
    if k_fix is None:
        return f"{msg}. Use more levels (levels={L + 1}) with balance={b:g}."
    parts = []
    if balance is None:
        parts.append(f"pass balance={b:g} (balanced k-means: no cluster above {b:g}x the mean size within its prefix)")
    if max(sizes) < k_fix or balance is not None:
        parts.append(f"codebook_size={k_fix} (with balance={b:g} and {_levels_word(L)} a leaf holds at most one item)")
    return f"{msg}. Fix: " + " and ".join(parts) + "."


def _resolve_collisions(type_name: str, codes: np.ndarray, sizes: Sequence[int], pop: np.ndarray,
                        collisions: str) -> dict[str, Any]:
    """Collision groups of base codes and the policy applied: final codes/sizes, reachability, stats."""
    n = codes.shape[0]
    gid, cnt = _group_ids(codes, sizes)
    neg_pop = np.where(np.isnan(pop), np.inf, -pop)  # unknown popularity ranks last
    order = np.lexsort((np.arange(n), neg_pop, gid))
    starts = np.concatenate([[0], np.cumsum(cnt)[:-1]]).astype(np.int64)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[gid[order]]
    max_group = int(cnt.max()) if n else 0
    reach = np.ones(n, dtype=bool)
    final_codes, final_sizes, extra = codes, [int(k) for k in sizes], False
    if collisions == "extra_level" and max_group > 1:
        if max_group > MAX_CODEBOOK:
            raise ValueError(f"type {type_name!r}: {max_group} items share one SID, more than a disambiguation level "
                             f"can hold ({MAX_CODEBOOK}); use more levels or larger codebooks")
        final_codes = np.concatenate([codes, rank[:, None].astype(np.int32)], axis=1)
        final_sizes.append(max_group)
        extra = True
    elif collisions == "popular":
        reach = rank == 0
    return {"codes": final_codes.astype(np.int32, copy=False), "sizes": tuple(final_sizes), "reach": reach,
            "extra": extra, "cnt": cnt, "max_group": max_group}


def _type_report(catalog: Catalog, rows: np.ndarray, base: np.ndarray, base_sizes: Sequence[int],
                 res: Mapping[str, Any], collisions: str) -> dict[str, Any]:
    """The per-type part of a :class:`SidReport` (everything that needs no embeddings)."""
    n = int(rows.size)
    final_codes, final_sizes, extra, cnt, reach = res["codes"], res["sizes"], res["extra"], res["cnt"], res["reach"]
    L = len(base_sizes)
    per_level = []
    for lvl, k in enumerate(final_sizes):
        used, ppl = _perplexity(final_codes[:, lvl], k)
        # cluster sizes at this depth: items per distinct prefix of length lvl + 1
        _, pc = _group_ids(final_codes[:, : lvl + 1], final_sizes[: lvl + 1]) if n else (None, np.zeros(0, np.int64))
        mean_c = n / pc.size if pc.size else 0.0
        per_level.append({"level": lvl, "codebook_size": int(k), "used_codes": used,
                          "utilisation": used / k if k else 0.0, "perplexity": ppl,
                          "disambiguation": extra and lvl == L,
                          "max_cluster": int(pc.max()) if pc.size else 0, "mean_cluster": mean_c,
                          "balance": (float(pc.max()) / mean_c) if pc.size else 0.0})
    unreach_rows = rows[~reach]
    n_unique = int(cnt.size)
    hist_edges = [1, 2, 3, 5, 10, 100]
    hist = {}
    for lo, hi in zip(hist_edges, hist_edges[1:] + [None]):
        m = (cnt >= lo) & (cnt < hi) if hi else cnt >= lo
        hist[f"{lo}" if hi == lo + 1 else (f"{lo}-{hi - 1}" if hi else f">={lo}")] = int(m.sum())
    return {
        "n_items": n,
        "levels": len(final_sizes),
        "base_levels": L,
        "codebook_sizes": [int(k) for k in final_sizes],
        "extra_level": extra,
        "collisions": {
            "policy": collisions,
            "n_unique_base_sids": n_unique,
            "collision_rate": (n - n_unique) / n if n else 0.0,
            "items_in_collisions": int(cnt[cnt > 1].sum()),
            "max_group_size": res["max_group"],
            "n_unreachable": int(unreach_rows.size),
            "unreachable_ids_sample": [catalog.ids[r] for r in unreach_rows[:20]],
            "popularity_used": catalog.popularity is not None,
        },
        "per_level": per_level,
        "items_per_leaf": {
            "n_leaves": n_unique,
            "mean": float(cnt.mean()) if n else 0.0,
            "median": float(np.median(cnt)) if n else 0.0,
            "p99": float(np.percentile(cnt, 99)) if n else 0.0,
            "max": res["max_group"],
            "histogram": hist,
        },
    }


def _check_balance(balance: float | None) -> float | None:
    if balance is None:
        return None
    if isinstance(balance, bool) or not isinstance(balance, (int, float, np.floating, np.integer)) \
            or not math.isfinite(float(balance)) or float(balance) < 1.0:
        raise ValueError(f"balance must be a number >= 1 (1.0: equal cluster sizes; 1.1: clusters up to 10% above "
                         f"the mean) or None (standard k-means), got {balance!r}")
    return float(balance)


def _check_warn_rate(rate: float | None) -> float | None:
    if rate is None:
        return None
    if not isinstance(rate, (int, float, np.floating)) or not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"warn_collision_rate must be in [0, 1] or None (never warn), got {rate!r}")
    return float(rate)


def _standard_codes(src: _Source, n: int, sizes: Sequence[int], samp: np.ndarray, iters: int, key: list[int],
                    chunk: int, dim: int, dev: torch.device, desc: str, progress: bool):
    """Residual k-means: codebooks fitted on the sample, every item assigned to its nearest centroids."""
    t0 = time.perf_counter()
    resid = src.get(samp) if n else torch.zeros((0, dim), device=dev)
    books: list[torch.Tensor] = []
    fit_err = []
    for lvl, k in enumerate(sizes):
        c = _kmeans(resid, k, iters, np.random.default_rng(key + [lvl]), chunk)
        books.append(c)
        if resid.shape[0]:
            a, dist = _assign(resid, c, chunk)
            resid = resid - c[a]
            fit_err.append(float(dist.mean()))
    del resid
    t_fit = time.perf_counter() - t0
    codes = np.empty((n, len(sizes)), dtype=np.int32)
    from tqdm.auto import tqdm

    for s in tqdm(range(0, n, chunk), desc=desc, disable=not progress, unit="chunk"):
        r = src.get(slice(s, s + chunk))
        for lvl, c in enumerate(books):
            a, _ = _assign(r, c, chunk)
            codes[s : s + r.shape[0], lvl] = a.cpu().numpy()
            r = r - c[a]
    return codes, books, fit_err, t_fit, time.perf_counter() - t0 - t_fit


def _balanced_codes(src: _Source, n: int, sizes: Sequence[int], samp: np.ndarray, iters: int, key: list[int],
                    chunk: int, dim: int, dev: torch.device, balance: float, desc: str, progress: bool):
    """Balanced residual k-means: at every level each (parent prefix, code) pair holds at most
    ``_capacity(parent size, K', balance)`` items, on the sample while fitting and on all items."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    L = len(sizes)
    resid = src.get(samp) if n else torch.zeros((0, dim), device=dev)
    s_group = np.zeros(samp.size, dtype=np.int64)
    s_codes = np.zeros((samp.size, L), dtype=np.int64)
    books: list[torch.Tensor] = []
    fit_err = []
    for lvl, k in enumerate(sizes):
        c, a = _balanced_kmeans(resid, k, iters, np.random.default_rng(key + [lvl]), chunk, s_group, balance)
        books.append(c)
        if resid.shape[0]:
            step = c[torch.as_tensor(a, device=resid.device)]
            fit_err.append(float(((resid - step) ** 2).sum(1).mean()))
            resid = resid - step
            s_codes[:, lvl] = a
            s_group = _group_ids(s_codes[:, : lvl + 1], sizes[: lvl + 1])[0]
    del resid
    t_fit = time.perf_counter() - t0

    codes = np.zeros((n, L), dtype=np.int32)
    group = np.zeros(n, dtype=np.int64)
    for lvl in tqdm(range(L), desc=desc, disable=not progress, unit="level"):
        c = books[lvl]
        kk = int(c.shape[0])
        if n == 0 or kk == 0:
            continue

        def resid_of(idx: Any, lvl: int = lvl) -> torch.Tensor:
            # residuals are recomputed from the codes so far: memory stays at one chunk
            x = src.get(idx)
            for l2 in range(lvl):
                x = x - books[l2][torch.as_tensor(codes[idx, l2].astype(np.int64), device=x.device)]
            return x

        def full(rows: np.ndarray, c: torch.Tensor = c) -> np.ndarray:
            return torch.cdist(resid_of(rows), c).pow_(2).cpu().numpy()

        cand, dist = _nearest_candidates(resid_of, n, c, min(kk, _CANDIDATES), chunk)
        cap = _capacity(np.bincount(group), kk, balance)
        codes[:, lvl] = _capacitated_assign(cand, dist, group, cap, kk, full, chunk)
        del cand, dist
        group = _group_ids(codes[:, : lvl + 1], sizes[: lvl + 1])[0]
    return codes, books, fit_err, t_fit, time.perf_counter() - t0 - t_fit


def build_sids(
    catalog: Catalog,
    embeddings: "np.ndarray | torch.Tensor | Embedder | str",
    levels: int | Mapping[str, int] | None = None,
    codebook_size: int | Sequence[int] | Mapping[str, int | Sequence[int]] | None = None,
    collisions: str = "extra_level",
    seed: int = 0,
    *,
    balance: float | None = None,
    warn_collision_rate: float | None = 0.05,
    sample_size: int | None = None,
    iters: int = 20,
    device: str | torch.device | None = None,
    chunk_size: int = 32768,
    normalize: bool = True,
    report_pairs: int = 20000,
    progress: bool = False,
) -> SemanticIds:
    """Build semantic IDs for every item type with residual k-means (standard or balanced).

    Parameters
    ----------
    catalog : Catalog
        Items; each type gets its own codebooks.
    embeddings : np.ndarray, torch.Tensor, Embedder or str
        ``float[N, D]`` in catalog row order (a NumPy memmap works and is read per chunk), or an
        embedder / spec passed to :func:`neo.items.embeddings.get_embedder` (e.g. ``"tfidf"``).
        Collaborative or hybrid vectors: :func:`neo.items.collaborative.sid_embeddings`.
    levels : int or mapping type -> int, optional
        Base levels per type (before a disambiguation level). Default: :func:`default_sid_config`.
    codebook_size : int, sequence of int, or mapping type -> either, optional
        Codes per level (``K``); a sequence gives one size per level. Default: from the type's size
        (:func:`default_sid_config`: about ``8 n`` leaves, so collisions stay rare).
    collisions : {"extra_level", "popular"}
        ``extra_level``: append a disambiguation level where needed so every item is reachable.
        ``popular``: the most popular item of a collision group keeps the SID, the others are
        unreachable (ties and missing popularity: lowest row wins).
    seed : int
        Same inputs, seed and device -> same SIDs.
    balance : float, optional
        ``None``: standard k-means (nearest centroid). A number ``b >= 1``: balanced k-means. At
        every level, the items sharing a code prefix (a group of ``g`` items; the whole type at
        level 0) put at most ``max(1, ceil(b * g / K'))`` items on any one code (``K'``: centroids
        of the level, ``K' = K`` unless there are fewer distinct points), on the fitting sample
        and on the final assignment alike. So a leaf holds at most about ``n b^L / K^L`` items
        and collisions vanish once ``K^L`` comfortably exceeds ``n``. ``1.0`` gives equal sizes;
        ``1.1`` leaves room for items to stay near their centroid.
    warn_collision_rate : float, optional
        Warn (:class:`SidCollisionWarning`) when a type's collision rate before disambiguation
        exceeds this; the message names the rate and a ``balance`` / ``codebook_size`` that fixes
        it. ``None``: never warn.
    sample_size : int, optional
        Items per type used to fit the codebooks (default ``max(20000, 100 * K)``, capped at the
        type's size); every item is then assigned in chunks.
    iters : int
        Maximum Lloyd iterations per level (stops earlier when assignments settle).
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    chunk_size : int
        Rows per assignment chunk (bounds temporary memory to ``chunk_size * (D + K)`` floats).
    normalize : bool
        L2-normalise embeddings first (cosine geometry, usual for text embeddings).
    report_pairs : int
        Pairs sampled per prefix length for the prefix-coherence statistic.
    progress : bool
        Show a progress bar over assignment chunks (standard) or levels (balanced).

    Returns
    -------
    SemanticIds
        Codes ``int32[N_t, L_t]`` per type with rows, reachability, codebooks and a quality
        ``report`` (a :class:`SidReport`: collision rate before disambiguation, codebook use,
        perplexity and cluster balance per level, items per leaf, prefix coherence, timings).
    """
    if collisions not in COLLISION_POLICIES:
        raise ValueError(f"unknown collision policy {collisions!r}; use one of {COLLISION_POLICIES}")
    if not isinstance(catalog, Catalog):
        raise TypeError(f"catalog must be a neo.Catalog, got {type(catalog).__name__}")
    if isinstance(levels, Mapping) or isinstance(codebook_size, Mapping):
        for what, m in (("levels", levels), ("codebook_size", codebook_size)):
            if isinstance(m, Mapping) and (unknown := set(m) - set(catalog.type_names)):
                raise ValueError(f"{what} names unknown item types {sorted(unknown)}; catalog types: {catalog.type_names}")
    if iters < 1 or chunk_size < 1:
        raise ValueError(f"iters and chunk_size must be >= 1, got {iters}, {chunk_size}")
    balance = _check_balance(balance)
    warn_rate = _check_warn_rate(warn_collision_rate)
    emb = _as_embeddings(catalog, embeddings)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")

    codes_out: dict[str, np.ndarray] = {}
    rows_out: dict[str, np.ndarray] = {}
    sizes_out: dict[str, tuple[int, ...]] = {}
    reach_out: dict[str, np.ndarray] = {}
    extra_out: dict[str, bool] = {}
    books_out: dict[str, list[np.ndarray]] = {}
    report = SidReport(n_items=len(catalog), collisions=collisions, seed=seed, types={},
                       kmeans="standard" if balance is None else "balanced", balance=balance)

    for t in catalog.type_names:
        rows = catalog.rows_of_type(t)
        n = int(rows.size)
        sizes = _resolve_type_config(t, n, levels, codebook_size, balance)
        src = _Source(emb, rows, len(catalog), dev, normalize)
        key = [seed, zlib.crc32(t.encode())]
        base_rng = np.random.default_rng(key)

        s_size = min(n, sample_size if sample_size is not None else max(20000, 100 * max(sizes)))
        samp = np.sort(base_rng.choice(n, size=s_size, replace=False)) if s_size < n else np.arange(n)
        with torch.no_grad():
            if balance is None:
                codes, books, fit_err, t_fit, t_assign = _standard_codes(
                    src, n, sizes, samp, iters, key, chunk_size, emb.shape[1], dev, f"SIDs {t}", progress)
            else:
                codes, books, fit_err, t_fit, t_assign = _balanced_codes(
                    src, n, sizes, samp, iters, key, chunk_size, emb.shape[1], dev, balance, f"SIDs {t}", progress)

        pop = catalog.popularity[rows] if catalog.popularity is not None else np.zeros(n)
        res = _resolve_collisions(t, codes, sizes, pop, collisions)
        codes_out[t], rows_out[t], sizes_out[t] = res["codes"], rows, res["sizes"]
        reach_out[t], extra_out[t] = res["reach"], res["extra"]
        books_out[t] = [b.cpu().numpy() for b in books]

        rep = _type_report(catalog, rows, codes, sizes, res, collisions)
        for lvl, err in enumerate(fit_err):
            rep["per_level"][lvl]["fit_mse"] = err
        rep["kmeans"] = {"method": "standard" if balance is None else "balanced", "balance": balance,
                         "leaf_bound": _leaf_bound(n, [b.shape[0] for b in books], balance) if balance else None}
        rep["prefix_coherence"] = _prefix_coherence(src, codes, sizes, np.random.default_rng([seed, 7]), report_pairs)
        rep["fit"] = {"sample_size": int(s_size), "iters": iters, "seconds_fit": t_fit, "seconds_assign": t_assign,
                      "device": str(dev), "effective_codebook_sizes": [int(b.shape[0]) for b in books]}
        report["types"][t] = rep
        rate = rep["collisions"]["collision_rate"]
        if warn_rate is not None and rate > warn_rate:
            warnings.warn(_collision_advice(t, n, rep["collisions"], sizes, balance, "build") +
                          f" (warn_collision_rate={warn_rate:g} set this threshold)", SidCollisionWarning, stacklevel=2)

    report["n_unreachable"] = int(sum(v["collisions"]["n_unreachable"] for v in report["types"].values()))
    config = {"levels": _jsonable(levels), "codebook_size": _jsonable(codebook_size), "collisions": collisions,
              "seed": seed, "sample_size": sample_size, "iters": iters, "normalize": normalize, "balance": balance}
    return SemanticIds(type_names=catalog.type_names, codes=codes_out, rows=rows_out, codebook_sizes=sizes_out,
                       reachable=reach_out, extra_level=extra_out, collisions=collisions, n_items=len(catalog),
                       catalog_fingerprint=catalog.fingerprint(), codebooks=books_out, report=report, config=config,
                       catalog=catalog)
