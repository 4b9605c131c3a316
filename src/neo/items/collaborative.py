"""Item embeddings with collaborative signal, and hybrids with text (DESIGN.md section 1).

Text embeddings group items that are *described* alike; a recommender needs items that are
*consumed* alike to share SID prefixes, so that the first codes of the next item are predictable
from the history. This module derives item vectors from the interactions:

* ``method="cooc"`` (default) -- item-item co-occurrence within a sliding window over each user's
  sequence (weight ``1/distance``), positive PMI with context-distribution smoothing (alpha 0.75),
  then truncated SVD (``U sqrt(S)``; Levy, Goldberg & Dagan 2015). Sequential and local: items
  that follow each other end up close. No iterations; seconds at 100k items.
* ``method="mf"`` -- implicit-feedback matrix factorisation (Hu, Koren & Volinsky 2008) by
  alternating least squares with a few conjugate-gradient steps per sweep (Takacs et al. 2011);
  whole-history taste, no order.

Items without interactions (or, for ``cooc``, never within a window of another item) get a
fallback: a ridge-regression projection of a second embedding (e.g. text) into the collaborative
space, fitted on the items that have interactions; without one, a seeded random unit vector (so
cold items spread over the codes instead of piling into one cluster) and a warning. Which items
fell back is in the ``info`` dict (``return_info=True``).

:func:`hybrid_embeddings` joins text and collaborative vectors; :func:`sid_embeddings` builds the
``text`` / ``cf`` / ``hybrid`` embeddings of a whole catalog per item type (a type without
interactions falls back to text), ready for :func:`neo.items.sids.build_sids`.

Use training interactions only (e.g. ``Split.train`` of a leave-one-out split), or the embeddings
leak the evaluation targets into the SIDs.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from .datasets import Interactions

if TYPE_CHECKING:  # pragma: no cover
    from .catalog import Catalog
    from .embeddings import Embedder

__all__ = ["CF_METHODS", "EMBEDDING_KINDS", "ColdItemsWarning", "collaborative_embeddings", "hybrid_embeddings",
           "sid_embeddings"]

CF_METHODS = ("cooc", "mf")
EMBEDDING_KINDS = ("text", "cf", "hybrid")


class ColdItemsWarning(UserWarning):
    """Some items have no collaborative signal and got a fallback vector without meaning."""


# ============================================================================================ input


def _as_sequences(data: Any, n_items: int | None, what: str = "interactions") -> tuple[list[np.ndarray], int]:
    """Interactions, a mapping user -> sequence, or a list of sequences -> (int64 arrays, n_items)."""
    if isinstance(data, Interactions):
        seqs = list(data.sequences)
        n = data.n_items if n_items is None else int(n_items)
        if n < data.n_items:
            raise ValueError(f"n_items={n} but the interactions index {data.n_items} items")
    else:
        if isinstance(data, Mapping):
            seqs = list(data.values())
        elif isinstance(data, (list, tuple)):
            seqs = list(data)
        else:
            raise TypeError(f"{what} must be neo Interactions, a mapping user -> item rows, or a list of per-user "
                            f"item-row sequences; got {type(data).__name__}")
        if n_items is None:
            raise ValueError("n_items is required with plain sequences (the number of item rows, e.g. len(catalog))")
        n = int(n_items)
    if n < 1:
        raise ValueError(f"n_items must be >= 1, got {n}")
    out = []
    for u, s in enumerate(seqs):
        a = np.asarray(s)
        if a.size == 0:
            out.append(np.zeros(0, dtype=np.int64))
            continue
        if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{what}: sequence {u} must be a 1-D array of integer item rows, got dtype {a.dtype} "
                             f"and shape {a.shape}")
        if a.min() < 0 or a.max() >= n:
            bad = int(a[(a < 0) | (a >= n)][0])
            raise ValueError(f"{what}: sequence {u} holds item row {bad}, outside [0, {n}) (n_items={n})")
        out.append(a.astype(np.int64, copy=False))
    return out, n


# ============================================================================================ models


def _cooccurrence(seqs: list[np.ndarray], n: int, window: int):
    """Symmetric item-item co-occurrence ``csr float64[n, n]``: pairs at distance ``d <= window`` in
    a sequence add ``1/d``; an item next to itself (repeat consumption) adds nothing."""
    import scipy.sparse as sp

    lens = np.fromiter((s.size for s in seqs), dtype=np.int64, count=len(seqs))
    if lens.sum() == 0:
        return sp.csr_matrix((n, n))
    flat = np.concatenate([s for s in seqs if s.size])
    uid = np.repeat(np.arange(int((lens > 0).sum())), lens[lens > 0])
    total = sp.csr_matrix((n, n))
    for d in range(1, window + 1):
        if flat.size <= d:
            break
        same = uid[:-d] == uid[d:]
        a, b = flat[:-d][same], flat[d:][same]
        keep = a != b
        a, b = a[keep], b[keep]
        if a.size:
            total = total + sp.csr_matrix((np.full(a.size, 1.0 / d), (a, b)), shape=(n, n))
    return (total + total.T).tocsr()


def _ppmi(c, alpha: float = 0.75):
    """Positive PMI of a co-occurrence matrix with the context distribution raised to ``alpha``."""
    import scipy.sparse as sp

    c = c.tocoo()
    tot = float(c.data.sum())
    if tot <= 0:
        return sp.csr_matrix(c.shape)
    row = np.asarray(c.sum(axis=1)).ravel()
    col = np.asarray(c.sum(axis=0)).ravel() ** alpha
    col /= col.sum()
    pmi = np.log(c.data * (1.0 / tot)) - np.log(row[c.row] / tot) - np.log(col[c.col])
    keep = pmi > 0
    return sp.csr_matrix((pmi[keep], (c.row[keep], c.col[keep])), shape=c.shape)


def _fix_signs(u: np.ndarray) -> np.ndarray:
    """SVD factors have arbitrary signs; make each column's largest-|value| entry positive."""
    if u.size == 0:
        return u
    idx = np.abs(u).argmax(axis=0)
    s = np.sign(u[idx, np.arange(u.shape[1])])
    return u * np.where(s == 0, 1, s)


def _svd_rows(m, dim: int, seed: int) -> np.ndarray:
    """``U sqrt(S)`` of a sparse matrix, ``float32[rows, dim]`` (zero-padded when rank < dim)."""
    from sklearn.utils.extmath import randomized_svd

    out = np.zeros((m.shape[0], dim), dtype=np.float32)
    k = min(dim, min(m.shape) - 1)
    if k < 1 or m.nnz == 0:
        return out
    u, s, _ = randomized_svd(m, n_components=k, n_iter=7, random_state=seed)
    out[:, :k] = _fix_signs(u * np.sqrt(s)[None, :])
    return out


def _als(seqs: list[np.ndarray], n: int, dim: int, seed: int, *, iters: int = 15, reg: float = 0.1,
         alpha: float = 10.0, cg_steps: int = 3, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Implicit ALS (confidence ``1 + alpha * log1p(count)``), conjugate-gradient solves warm-started
    from the previous sweep. NumPy + SciPy sparse (no torch: its thread pool thrashes on these small
    ops when cores are shared). Returns (item factors ``float32[n, dim]``, interactions per item)."""
    import scipy.sparse as sp
    from tqdm.auto import tqdm

    users = np.repeat(np.arange(len(seqs)), [s.size for s in seqs])
    items = np.concatenate(seqs) if seqs else np.zeros(0, dtype=np.int64)
    n_users = len(seqs)
    key, cnt = np.unique(users * n + items, return_counts=True)
    u_idx, i_idx = key // n, key % n
    conf = (1.0 + alpha * np.log1p(cnt)).astype(np.float32)
    counts = np.bincount(items, minlength=n)
    rng = np.random.default_rng([seed, 3])
    x = (rng.standard_normal((n_users, dim)) * 0.01).astype(np.float32)
    y = (rng.standard_normal((n, dim)) * 0.01).astype(np.float32)
    c_ui = sp.csr_matrix((conf, (u_idx, i_idx)), shape=(n_users, n))
    c_iu = c_ui.T.tocsr()
    eye = reg * np.eye(dim, dtype=np.float32)

    def solve(fixed: np.ndarray, cur: np.ndarray, c: "sp.csr_matrix") -> np.ndarray:
        # rows of `cur` against the other side's `fixed` factors: (F'F + F'(C_r - I)F + reg I) x_r = F' C_r 1
        own = np.repeat(np.arange(c.shape[0]), np.diff(c.indptr))
        other, cm1 = c.indices, c.data - 1.0
        gram = fixed.T @ fixed + eye
        b = c @ fixed

        def apply(v: np.ndarray) -> np.ndarray:
            dots = np.einsum("ij,ij->i", v[own], fixed[other])
            w = sp.csr_matrix((cm1 * dots, c.indices, c.indptr), shape=c.shape)
            return v @ gram + w @ fixed

        r = b - apply(cur)
        p = r.copy()
        rs = np.einsum("ij,ij->i", r, r)
        for _ in range(cg_steps):
            ap = apply(p)
            a = rs / np.maximum(np.einsum("ij,ij->i", p, ap), 1e-12)
            cur = cur + a[:, None] * p
            r = r - a[:, None] * ap
            rs_new = np.einsum("ij,ij->i", r, r)
            p = r + (rs_new / np.maximum(rs, 1e-12))[:, None] * p
            rs = rs_new
        return cur.astype(np.float32)

    for _ in tqdm(range(iters), desc="ALS", unit="sweep", disable=not progress):
        x = solve(y, x, c_ui)
        y = solve(x, y, c_iu)
    return y, counts


class _CF:
    """A fitted collaborative model: item vectors for any subset of rows, plus which items are cold."""

    def __init__(self, seqs: list[np.ndarray], n: int, method: str, dim: int, window: int, seed: int,
                 progress: bool):
        t0 = time.perf_counter()
        self.method, self.dim, self.seed, self.n = method, dim, seed, n
        if method == "cooc":
            self.ppmi = _ppmi(_cooccurrence(seqs, n, window))
            self.warm = np.diff(self.ppmi.indptr) > 0
            self.full = None
        else:
            self.full, cnt = _als(seqs, n, dim, seed, progress=progress)
            self.warm = cnt > 0
        self.seconds = time.perf_counter() - t0

    def embed(self, rows: np.ndarray) -> np.ndarray:
        """``float32[len(rows), dim]``; zero rows for cold items (filled by :func:`_fill_cold`)."""
        if self.full is not None:
            return self.full[rows].copy()
        # SVD of the rows' PPMI against every context item: a type-specific space (tags and movies
        # of one catalog get their own components) that still uses cross-type contexts.
        return _svd_rows(self.ppmi[rows], self.dim, self.seed)


def _normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


def _fill_cold(emb: np.ndarray, warm: np.ndarray, fallback: np.ndarray | None, seed: int,
               ridge: float = 1.0) -> tuple[np.ndarray, str]:
    """Give cold rows a vector: the ridge projection of ``fallback`` into the collaborative space
    (fitted on warm rows), or a seeded random unit vector. Returns (embeddings, how)."""
    cold = ~warm
    if not cold.any():
        return emb, "none needed"
    if fallback is not None and warm.sum() >= 2:
        f = _normalize(np.asarray(fallback, dtype=np.float32))
        fw, ew = f[warm].astype(np.float64), emb[warm].astype(np.float64)
        w = np.linalg.solve(fw.T @ fw + ridge * np.eye(fw.shape[1]), fw.T @ ew)
        proj = (f[cold] @ w).astype(np.float32)
        ok = np.linalg.norm(proj, axis=1) > 1e-8
        emb[np.flatnonzero(cold)[ok]] = _normalize(proj[ok])
        if ok.all():
            return emb, "fallback projected into the collaborative space"
        cold_left = np.flatnonzero(cold)[~ok]
    else:
        cold_left = np.flatnonzero(cold)
    rng = np.random.default_rng([seed, 17])
    emb[cold_left] = _normalize(rng.normal(size=(cold_left.size, emb.shape[1])).astype(np.float32))
    return emb, "random unit vectors" if cold_left.size == cold.sum() else "fallback projection, random where empty"


def _check_method(method: str, dim: int, window: int) -> None:
    if method not in CF_METHODS:
        raise ValueError(f"unknown collaborative method {method!r}; use one of {CF_METHODS}")
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
    if not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be an integer >= 1, got {window!r}")


# ============================================================================================ public


def collaborative_embeddings(
    interactions: "Interactions | Mapping[Any, Sequence[int]] | Sequence[Sequence[int]]",
    n_items: int | None = None,
    *,
    dim: int = 64,
    method: str = "cooc",
    window: int = 5,
    seed: int = 0,
    rows: Sequence[int] | np.ndarray | None = None,
    fallback: np.ndarray | None = None,
    return_info: bool = False,
    progress: bool = False,
) -> "np.ndarray | tuple[np.ndarray, dict]":
    """Item embeddings from interactions (co-occurrence PPMI + SVD, or implicit ALS).

    Parameters
    ----------
    interactions : Interactions, mapping user -> item rows, or list of per-user item-row sequences
        Chronological item rows per user (``Dataset.training_sequences`` output works as is).
        Use training data only: evaluation targets must not shape the embeddings.
    n_items : int, optional
        Number of item rows (e.g. ``len(catalog)``); required for plain sequences.
    dim : int
        Output dimension (zero-padded columns when the data has lower rank).
    method : {"cooc", "mf"}
        ``cooc``: windowed co-occurrence -> PPMI -> truncated SVD (default; ranks best in
        ``benchmarks/bench_sids.py`` and is the fastest). ``mf``: implicit ALS.
    window : int
        ``cooc``: items up to this many positions apart co-occur (weight ``1/distance``).
    seed : int
        Same input and seed -> same vectors.
    rows : array of int, optional
        Embed only these item rows (e.g. one item type); ``cooc`` then fits its SVD to these rows
        against all contexts, so each type gets its own components.
    fallback : np.ndarray, optional
        ``float[n_items, D]`` (e.g. text embeddings): cold items get its ridge projection into the
        collaborative space. Without it cold items get random unit vectors and a
        :class:`ColdItemsWarning`.
    return_info : bool
        Also return a dict: ``method``, ``n_items``, ``n_cold``, ``cold_rows`` (int64, rows
        without collaborative signal), ``cold_fill``, ``seconds``.
    progress : bool
        Progress bar (ALS sweeps).

    Returns
    -------
    np.ndarray
        ``float32[n_items, dim]`` (or ``[len(rows), dim]``), rows L2-normalised.
    """
    _check_method(method, dim, window)
    seqs, n = _as_sequences(interactions, n_items)
    rr = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    if rr.size and (rr.min() < 0 or rr.max() >= n):
        raise ValueError(f"rows must be item rows in [0, {n})")
    if fallback is not None:
        fallback = np.asarray(fallback)
        if fallback.ndim != 2 or fallback.shape[0] != n or not np.issubdtype(fallback.dtype, np.floating):
            raise ValueError(f"fallback must be float[{n}, D] (one vector per item row), got {fallback.dtype} "
                             f"{fallback.shape}")
    model = _CF(seqs, n, method, int(dim), int(window), seed, progress)
    emb = _normalize(model.embed(rr))
    warm = model.warm[rr]
    emb, how = _fill_cold(emb, warm, None if fallback is None else fallback[rr], seed)
    cold_rows = rr[~warm]
    if cold_rows.size and fallback is None:
        warnings.warn(f"{cold_rows.size} of {rr.size} items have no collaborative signal (no interactions"
                      f"{' within a window of another item' if method == 'cooc' else ''}), e.g. rows "
                      f"{cold_rows[:5].tolist()}; they got random vectors. Pass fallback= (e.g. text embeddings) "
                      "to place them by their text instead", ColdItemsWarning, stacklevel=2)
    if not return_info:
        return emb
    return emb, {"method": method, "n_items": int(rr.size), "n_cold": int(cold_rows.size), "cold_rows": cold_rows,
                 "cold_fill": how, "seconds": model.seconds}


def hybrid_embeddings(text_emb: np.ndarray, cf_emb: np.ndarray, *, cf_weight: float = 0.5) -> np.ndarray:
    """Join text and collaborative vectors so that cosine similarity mixes both.

    Each part is L2-normalised per row, scaled by ``sqrt(1 - cf_weight)`` and ``sqrt(cf_weight)``
    and concatenated, so ``cos(hybrid_i, hybrid_j) = (1 - w) cos(text_i, text_j) + w cos(cf_i, cf_j)``
    for rows with both parts (a zero part contributes nothing).

    Parameters
    ----------
    text_emb : np.ndarray
        ``float[N, D_text]``.
    cf_emb : np.ndarray
        ``float[N, D_cf]``.
    cf_weight : float
        Share of the collaborative part in the cosine, in ``[0, 1]``.

    Returns
    -------
    np.ndarray
        ``float32[N, D_text + D_cf]``, unit rows (zero where both parts are zero).
    """
    t, c = np.asarray(text_emb), np.asarray(cf_emb)
    if t.ndim != 2 or c.ndim != 2 or t.shape[0] != c.shape[0]:
        raise ValueError(f"text_emb and cf_emb must be 2-D with the same number of rows, got {t.shape} and {c.shape}")
    if not (np.issubdtype(t.dtype, np.floating) and np.issubdtype(c.dtype, np.floating)):
        raise ValueError(f"embeddings must be floating point, got {t.dtype} and {c.dtype}")
    w = float(cf_weight)
    if not 0.0 <= w <= 1.0:
        raise ValueError(f"cf_weight must be in [0, 1], got {cf_weight!r}")
    for name, a in (("text_emb", t), ("cf_emb", c)):
        if not np.isfinite(a).all():
            bad = int(np.flatnonzero(~np.isfinite(a).all(axis=1))[0])
            raise ValueError(f"{name}: row {bad} contains NaN or inf")
    out = np.concatenate([_normalize(t) * math.sqrt(1.0 - w), _normalize(c) * math.sqrt(w)], axis=1)
    return _normalize(out)


def sid_embeddings(
    catalog: "Catalog",
    interactions: "Interactions | Mapping[Any, Sequence[int]] | Sequence[Sequence[int]] | None" = None,
    *,
    kind: str = "hybrid",
    text: "str | Embedder | np.ndarray" = "tfidf",
    dim: int = 64,
    method: str = "cooc",
    window: int = 5,
    cf_weight: float = 0.5,
    seed: int = 0,
    return_info: bool = False,
    progress: bool = False,
) -> "np.ndarray | tuple[np.ndarray, dict]":
    """Embeddings of every catalog item for :func:`~neo.items.sids.build_sids`, per item type.

    Parameters
    ----------
    catalog : Catalog
    interactions : Interactions, mapping user -> item rows, or list of item-row sequences, optional
        Training interactions indexed by catalog row (an ``Interactions`` with other item ids is
        re-indexed to the catalog's). Sequences may mix item types (e.g. MovieLens ratings and tag
        applications merged by time): every type learns from its co-occurrences with all items.
        Required for ``cf`` and ``hybrid``.
    kind : {"text", "cf", "hybrid"}
        ``text``: the text embedder only. ``cf``: :func:`collaborative_embeddings` per type
        (cold items placed by their text). ``hybrid``: :func:`hybrid_embeddings` of both.
        A type none of whose items has interactions falls back to text (and is reported).
    text : str, Embedder or np.ndarray
        Text embeddings: a spec for :func:`neo.items.embeddings.get_embedder` (default
        ``"tfidf"``) or a ready ``float[N, D]`` array.
    dim, method, window, seed :
        Passed to :func:`collaborative_embeddings`.
    cf_weight : float
        ``hybrid``: share of the collaborative part.
    return_info : bool
        Also return a dict per type: ``source`` (``text``, ``cf``, ``hybrid`` or ``text
        (no interactions)``), ``n_cold``, ``dim``, seconds.

    Returns
    -------
    np.ndarray
        ``float32[N, D]`` in catalog row order. Types use different parts of the columns when
        their sources differ (the rest is zero); :func:`build_sids` clusters each type on its own.
    """
    from .embeddings import embed_catalog

    if kind not in EMBEDDING_KINDS:
        raise ValueError(f"unknown embedding kind {kind!r}; use one of {EMBEDDING_KINDS}")
    _check_method(method, dim, window)
    n = len(catalog)
    t0 = time.perf_counter()
    if isinstance(text, np.ndarray):
        text_emb = np.asarray(text)
        if text_emb.ndim != 2 or text_emb.shape[0] != n or not np.issubdtype(text_emb.dtype, np.floating):
            raise ValueError(f"text embeddings must be float[{n}, D] for a catalog of {n} items, got "
                             f"{text_emb.dtype} {text_emb.shape}")
        text_emb = text_emb.astype(np.float32)
    else:
        text_emb = embed_catalog(catalog, text)
    t_text = time.perf_counter() - t0
    info: dict[str, Any] = {"kind": kind, "text_seconds": t_text, "types": {}}
    if kind == "text":
        for t in catalog.type_names:
            info["types"][t] = {"source": "text", "n_cold": 0, "dim": int(text_emb.shape[1])}
        return (text_emb, info) if return_info else text_emb
    if interactions is None:
        raise ValueError(f"kind={kind!r} needs interactions (training sequences indexed by catalog row)")
    if isinstance(interactions, Interactions) and list(interactions.item_ids) != list(catalog.ids):
        interactions = interactions.reindex(catalog.ids)
    seqs, _ = _as_sequences(interactions, n)
    t0 = time.perf_counter()
    model = _CF(seqs, n, method, int(dim), int(window), seed, progress)
    parts: dict[str, np.ndarray] = {}
    for t in catalog.type_names:
        rows = catalog.rows_of_type(t)
        warm = model.warm[rows]
        if not warm.any():
            parts[t] = _normalize(text_emb[rows])
            info["types"][t] = {"source": "text (no interactions)", "n_cold": int(rows.size),
                                "dim": int(text_emb.shape[1])}
            if rows.size:
                warnings.warn(f"item type {t!r}: none of its {rows.size} items appears in the interactions; its "
                              f"SIDs use text embeddings only", ColdItemsWarning, stacklevel=2)
            continue
        cf, how = _fill_cold(_normalize(model.embed(rows)), warm, text_emb[rows], seed)
        parts[t] = cf if kind == "cf" else hybrid_embeddings(text_emb[rows], cf, cf_weight=cf_weight)
        info["types"][t] = {"source": kind, "n_cold": int((~warm).sum()), "cold_fill": how,
                            "dim": int(parts[t].shape[1])}
    info["cf_seconds"] = time.perf_counter() - t0
    width = max((p.shape[1] for p in parts.values()), default=1)
    out = np.zeros((n, width), dtype=np.float32)
    for t, p in parts.items():
        out[catalog.rows_of_type(t), : p.shape[1]] = p
    return (out, info) if return_info else out
