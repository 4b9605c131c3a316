"""Semantic IDs: residual k-means codes per item type (DESIGN.md sections 1-2).

Every item type gets its own stack of codebooks. Level 1 clusters the (L2-normalised) item
embeddings, level 2 clusters what level 1 left unexplained (the residuals), and so on, so items that
share a code prefix are similar and the model can generalise across them. Codebooks are fitted on a
sample with k-means++ initialisation and Lloyd iterations in torch (GPU when available), then every
item is assigned in chunks, so memory stays at the embeddings plus one chunk (10M x 256 float32
embeddings fit on a 24 GB machine).

Two items may end with the same codes (a collision). Policy ``extra_level`` (default) appends one
disambiguation level (the most popular item of a collision group gets 0, the next 1, ...), so every
item is reachable and all items of a type have the same number of levels. Policy ``popular`` keeps
the codes as they are: the most popular item of each group owns the SID, the others are marked
unreachable and reported.

Entry point: :func:`build_sids`, returning :class:`SemanticIds`.
"""

from __future__ import annotations

import json
import math
import os
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch

from .catalog import Catalog
from ..core.layout import TokenLayout

if TYPE_CHECKING:  # pragma: no cover
    from .embeddings import Embedder

__all__ = ["SemanticIds", "SidReport", "build_sids", "default_sid_config", "COLLISION_POLICIES"]

SIDS_FORMAT_VERSION = 1
COLLISION_POLICIES = ("extra_level", "popular")
MAX_CODEBOOK = 65536  # TokenLayout's per-level limit


# ============================================================================================ config


def default_sid_config(n_items: int, levels: int | None = None, codebook_size: int | None = None) -> tuple[int, int]:
    """Default ``(levels, codebook_size)`` for a type with ``n_items`` items.

    Aims for about ``8 n`` leaves over 3 levels (``K ~ (8n)^(1/3)``, rounded up to a power of two,
    between 2 and 256): residual k-means codes of different levels are correlated, so leaves need
    headroom over the item count to keep collisions low. Levels are added only when 256 codes per
    level do not reach ``n`` leaves: 1.5k items -> 3 x 32, 9.7k -> 3 x 64, 100k -> 3 x 128,
    1M and 10M -> 3 x 256, 100M -> 4 x 256. A given ``levels`` or ``codebook_size`` is kept and the
    other one derived from it.
    """
    n = max(int(n_items), 0)
    if levels is not None and codebook_size is not None:
        return int(levels), int(codebook_size)
    if n <= 1:
        return (int(levels) if levels is not None else 1), (int(codebook_size) if codebook_size is not None else 1)
    if codebook_size is not None:
        k = int(codebook_size)
        return (max(1, math.ceil(math.log(n) / math.log(k) - 1e-9)) if k > 1 else 1), k
    target_levels = int(levels) if levels is not None else 3
    k = min(256, max(2, 2 ** math.ceil(math.log2((8 * n) ** (1.0 / target_levels)) - 1e-9)))
    if levels is not None:
        return int(levels), k
    need = math.ceil(math.log(n) / math.log(k) - 1e-9)
    return (max(1, min(need, 3)) if k < 256 else max(3, need)), k


def _per_type(value: Any, type_name: str, what: str) -> Any:
    if isinstance(value, Mapping):
        return value.get(type_name)
    return value


def _resolve_type_config(type_name: str, n: int, levels: Any, codebook_size: Any) -> list[int]:
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
        L, K = default_sid_config(n, lv, ks)
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


# ============================================================================================ report


class SidReport(dict):
    """Quality report of a SID build: a plain dict (``to_json()``) that prints as a readable summary."""

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self, indent=indent)

    def __str__(self) -> str:
        lines = [f"SID report: {self.get('n_items', 0)} items, collision policy {self.get('collisions')!r}"]
        for name, t in self.get("types", {}).items():
            col = t["collisions"]
            lines.append(
                f"\n[{name}] {t['n_items']} items, levels {t['levels']} "
                f"(codebook sizes {'x'.join(map(str, t['codebook_sizes']))}"
                f"{', last level disambiguates' if t['extra_level'] else ''})"
            )
            lines.append(
                f"  collisions: rate {col['collision_rate']:.4f} ({col['items_in_collisions']} items share base codes, "
                f"largest group {col['max_group_size']}), unreachable {col['n_unreachable']}"
            )
            if col.get("unreachable_ids_sample"):
                lines.append(f"  unreachable (first {len(col['unreachable_ids_sample'])}): {col['unreachable_ids_sample']}")
            lines.append("  level  K      used   util   perplexity")
            for lv in t["per_level"]:
                tag = " (disambiguation)" if lv.get("disambiguation") else ""
                lines.append(f"  {lv['level']:<6} {lv['codebook_size']:<6} {lv['used_codes']:<6} "
                             f"{lv['utilisation']:<6.3f} {lv['perplexity']:.1f}{tag}")
            pc = t["prefix_coherence"]
            if pc["by_prefix"]:
                parts = ", ".join(f"p{d['prefix_len']}={d['mean_cos']:.3f}" for d in pc["by_prefix"] if d["mean_cos"] is not None)
                lines.append(f"  prefix coherence (mean cosine, same prefix): {parts}; random pairs {pc['random_pairs_cos']:.3f}")
            leaf = t["items_per_leaf"]
            lines.append(f"  items per leaf (base codes): {leaf['n_leaves']} leaves, mean {leaf['mean']:.2f}, "
                         f"p99 {leaf['p99']:.0f}, max {leaf['max']}")
            fit = t.get("fit", {})
            if fit:
                lines.append(f"  fit: sample {fit['sample_size']}, {fit['seconds_fit']:.2f}s fit + "
                             f"{fit['seconds_assign']:.2f}s assign on {fit['device']}")
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


def build_sids(
    catalog: Catalog,
    embeddings: "np.ndarray | torch.Tensor | Embedder | str",
    levels: int | Mapping[str, int] | None = None,
    codebook_size: int | Sequence[int] | Mapping[str, int | Sequence[int]] | None = None,
    collisions: str = "extra_level",
    seed: int = 0,
    *,
    sample_size: int | None = None,
    iters: int = 20,
    device: str | torch.device | None = None,
    chunk_size: int = 32768,
    normalize: bool = True,
    report_pairs: int = 20000,
    progress: bool = False,
) -> SemanticIds:
    """Build semantic IDs for every item type with residual k-means.

    Parameters
    ----------
    catalog : Catalog
        Items; each type gets its own codebooks.
    embeddings : np.ndarray, torch.Tensor, Embedder or str
        ``float[N, D]`` in catalog row order (a NumPy memmap works and is read per chunk), or an
        embedder / spec passed to :func:`neo.items.embeddings.get_embedder` (e.g. ``"tfidf"``).
    levels : int or mapping type -> int, optional
        Base levels per type (before a disambiguation level). Default: :func:`default_sid_config`.
    codebook_size : int, sequence of int, or mapping type -> either, optional
        Codes per level (``K``); a sequence gives one size per level. Default: from the type's size.
    collisions : {"extra_level", "popular"}
        ``extra_level``: append a disambiguation level where needed so every item is reachable.
        ``popular``: the most popular item of a collision group keeps the SID, the others are
        unreachable (ties and missing popularity: lowest row wins).
    seed : int
        Same inputs, seed and device -> same SIDs.
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
        Show a progress bar over assignment chunks.

    Returns
    -------
    SemanticIds
        Codes ``int32[N_t, L_t]`` per type with rows, reachability, codebooks and a quality
        ``report`` (a :class:`SidReport`).
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
    emb = _as_embeddings(catalog, embeddings)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")

    codes_out: dict[str, np.ndarray] = {}
    rows_out: dict[str, np.ndarray] = {}
    sizes_out: dict[str, tuple[int, ...]] = {}
    reach_out: dict[str, np.ndarray] = {}
    extra_out: dict[str, bool] = {}
    books_out: dict[str, list[np.ndarray]] = {}
    report = SidReport(n_items=len(catalog), collisions=collisions, seed=seed, types={})

    for t in catalog.type_names:
        rows = catalog.rows_of_type(t)
        n = int(rows.size)
        sizes = _resolve_type_config(t, n, levels, codebook_size)
        L = len(sizes)
        src = _Source(emb, rows, len(catalog), dev, normalize)
        base_rng = np.random.default_rng([seed, zlib.crc32(t.encode())])
        t0 = time.perf_counter()

        # ---- fit codebooks on a sample, level by level on the residuals
        s_size = min(n, sample_size if sample_size is not None else max(20000, 100 * max(sizes)))
        samp = np.sort(base_rng.choice(n, size=s_size, replace=False)) if s_size < n else np.arange(n)
        resid = src.get(samp) if n else torch.zeros((0, emb.shape[1]), device=dev)
        books: list[torch.Tensor] = []
        fit_err = []
        with torch.no_grad():
            for lvl, k in enumerate(sizes):
                c = _kmeans(resid, k, iters, np.random.default_rng([seed, zlib.crc32(t.encode()), lvl]), chunk_size)
                books.append(c)
                if resid.shape[0]:
                    a, dist = _assign(resid, c, chunk_size)
                    resid = resid - c[a]
                    fit_err.append(float(dist.mean()))
            del resid
            t_fit = time.perf_counter() - t0

            # ---- assign every item, chunk by chunk, through all levels
            codes = np.empty((n, L), dtype=np.int32)
            from tqdm.auto import tqdm

            for s in tqdm(range(0, n, chunk_size), desc=f"SIDs {t}", disable=not progress, unit="chunk"):
                r = src.get(slice(s, s + chunk_size))
                for lvl, c in enumerate(books):
                    a, _ = _assign(r, c, chunk_size)
                    codes[s : s + r.shape[0], lvl] = a.cpu().numpy()
                    r = r - c[a]
            t_assign = time.perf_counter() - t0 - t_fit

        # ---- collisions
        gid, cnt = _group_ids(codes, sizes)
        pop = catalog.popularity[rows] if catalog.popularity is not None else np.zeros(n)
        neg_pop = np.where(np.isnan(pop), np.inf, -pop)  # unknown popularity ranks last
        order = np.lexsort((np.arange(n), neg_pop, gid))
        starts = np.concatenate([[0], np.cumsum(cnt)[:-1]]).astype(np.int64)
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n) - starts[gid[order]]
        max_group = int(cnt.max()) if n else 0
        reach = np.ones(n, dtype=bool)
        final_codes, final_sizes, extra = codes, list(sizes), False
        if collisions == "extra_level" and max_group > 1:
            if max_group > MAX_CODEBOOK:
                raise ValueError(f"type {t!r}: {max_group} items share one SID, more than a disambiguation level "
                                 f"can hold ({MAX_CODEBOOK}); use more levels or larger codebooks")
            final_codes = np.concatenate([codes, rank[:, None].astype(np.int32)], axis=1)
            final_sizes.append(max_group)
            extra = True
        elif collisions == "popular":
            reach = rank == 0

        codes_out[t], rows_out[t], sizes_out[t] = final_codes, rows, tuple(final_sizes)
        reach_out[t], extra_out[t] = reach, extra
        books_out[t] = [b.cpu().numpy() for b in books]

        # ---- quality report
        per_level = []
        for lvl, k in enumerate(final_sizes):
            used, ppl = _perplexity(final_codes[:, lvl], k)
            per_level.append({"level": lvl, "codebook_size": int(k), "used_codes": used,
                              "utilisation": used / k if k else 0.0, "perplexity": ppl,
                              "disambiguation": extra and lvl == L,
                              **({"fit_mse": fit_err[lvl]} if lvl < len(fit_err) else {})})
        unreach_rows = rows[~reach]
        n_unique = int(cnt.size)
        hist_edges = [1, 2, 3, 5, 10, 100]
        hist = {}
        for lo, hi in zip(hist_edges, hist_edges[1:] + [None]):
            m = (cnt >= lo) & (cnt < hi) if hi else cnt >= lo
            hist[f"{lo}" if hi == lo + 1 else (f"{lo}-{hi - 1}" if hi else f">={lo}")] = int(m.sum())
        report["types"][t] = {
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
                "max_group_size": max_group,
                "n_unreachable": int(unreach_rows.size),
                "unreachable_ids_sample": [catalog.ids[r] for r in unreach_rows[:20]],
                "popularity_used": catalog.popularity is not None,
            },
            "per_level": per_level,
            "prefix_coherence": _prefix_coherence(src, codes, sizes, np.random.default_rng([seed, 7]), report_pairs),
            "items_per_leaf": {
                "n_leaves": n_unique,
                "mean": float(cnt.mean()) if n else 0.0,
                "median": float(np.median(cnt)) if n else 0.0,
                "p99": float(np.percentile(cnt, 99)) if n else 0.0,
                "max": max_group,
                "histogram": hist,
            },
            "fit": {"sample_size": int(s_size), "iters": iters, "seconds_fit": t_fit, "seconds_assign": t_assign,
                    "device": str(dev), "effective_codebook_sizes": [int(b.shape[0]) for b in books]},
        }

    all_unreach = sum(v["collisions"]["n_unreachable"] for v in report["types"].values())
    report["n_unreachable"] = int(all_unreach)
    config = {"levels": _jsonable(levels), "codebook_size": _jsonable(codebook_size), "collisions": collisions,
              "seed": seed, "sample_size": sample_size, "iters": iters, "normalize": normalize}
    return SemanticIds(type_names=catalog.type_names, codes=codes_out, rows=rows_out, codebook_sizes=sizes_out,
                       reachable=reach_out, extra_level=extra_out, collisions=collisions, n_items=len(catalog),
                       catalog_fingerprint=catalog.fingerprint(), codebooks=books_out, report=report, config=config,
                       catalog=catalog)
