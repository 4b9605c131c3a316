"""``DeviceTrie``: the SID trie of one item type, resident on a device, stepped without the host.

Only torch is imported here; the Triton kernel (``trie.py``) is loaded on the first CUDA step.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch

from .reference import OUTSIDE, ERROR, TrieFilter, TrieStep, TrieTables, trie_step_torch

__all__ = ["DeviceTrie", "OUTSIDE", "ERROR"]

_REQUIRED = ("depth_begin", "child_begin", "code", "leaf_item", "band_start", "band_size")

ItemLists = Union[torch.Tensor, Sequence[Optional[Sequence[int]]], None]


def _leaf_ranges(depth_begin: np.ndarray, child_begin: np.ndarray, L: int):
    """Leaf index range ``[lo, hi)`` under every node, bottom-up, one vectorised pass per depth."""
    n = int(depth_begin[-1])
    leaf0 = int(depth_begin[L])
    lo = np.empty(n, np.int64)
    hi = np.empty(n, np.int64)
    lo[leaf0:] = np.arange(n - leaf0)
    hi[leaf0:] = lo[leaf0:] + 1
    for d in range(L - 1, -1, -1):
        ids = np.arange(depth_begin[d], depth_begin[d + 1])
        lo[ids] = lo[child_begin[ids]]
        hi[ids] = hi[child_begin[ids + 1] - 1]
    return lo, hi


class DeviceTrie:
    """Device copy of the trie of one item type plus the batched step kernel.

    Parameters
    ----------
    arrays : mapping of str -> numpy array
        The arrays the C++ core exposes per item type (``SidIndex.arrays(type)``): ``depth_begin``
        int64 ``(L+2,)``, ``child_begin`` uint32 ``(num_internal+1,)``, ``code`` uint16
        ``(num_nodes,)``, ``leaf_item`` int32 ``(num_leaves,)``, ``band_start`` / ``band_size``
        int32 ``(L,)``. Nodes are in BFS order, siblings sorted by code.
    device : torch device, default ``"cpu"``
        Where the arrays live; they are copied once, here.
    open_id, close_id : int, optional
        Token ids of ``[SID]`` and ``[/SID]``. ``open_id`` moves an ``OUTSIDE`` row to the root;
        ``close_id`` moves a row on a leaf back to ``OUTSIDE``.

    Notes
    -----
    *One item type per trie.* A row's state is a node id of this type's trie: the root (node 0) is
    the span start, i.e. the row is assumed to have chosen this type when ``[SID]`` was emitted. Rows
    whose span may open several types are handled by the core's (CPU) mask for the single step after
    ``[SID]``, or by one ``DeviceTrie`` per type with rows routed by the first SID token's band (each
    (type, level) band is disjoint). Row states: ``node >= 0`` in a span, ``OUTSIDE`` (-1) outside any
    span, ``ERROR`` (-2) sticky error (a token that was not offered).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], device: Union[str, torch.device] = "cpu",
                 open_id: Optional[int] = None, close_id: Optional[int] = None):
        missing = [k for k in _REQUIRED if k not in arrays]
        if missing:
            raise KeyError(f"trie arrays missing {missing}; need {list(_REQUIRED)}")
        db = np.asarray(arrays["depth_begin"], dtype=np.int64)
        L = db.shape[0] - 2
        if L < 1:
            raise ValueError(f"depth_begin must have L+2 >= 3 entries, got {db.shape[0]}")
        cbg = np.asarray(arrays["child_begin"]).astype(np.int64)
        code = np.asarray(arrays["code"]).astype(np.int64)
        leaf_item = np.asarray(arrays["leaf_item"]).astype(np.int64)
        band_start = np.asarray(arrays["band_start"]).astype(np.int64)
        band_size = np.asarray(arrays["band_size"]).astype(np.int64)
        n = int(db[-1])
        n_int = int(db[L])
        if code.shape[0] != n:
            raise ValueError(f"code has {code.shape[0]} entries, depth_begin says {n} nodes")
        if cbg.shape[0] != n_int + 1 or int(cbg[-1]) != n:
            raise ValueError(f"child_begin must have num_internal+1={n_int + 1} entries ending in "
                             f"num_nodes={n}, got {cbg.shape[0]} ending in {int(cbg[-1])}")
        if np.any(np.diff(cbg) <= 0):
            raise ValueError("child_begin: every internal node needs at least one child")
        if leaf_item.shape[0] != n - n_int:
            raise ValueError(f"leaf_item has {leaf_item.shape[0]} entries, expected {n - n_int}")
        if band_start.shape != (L,) or band_size.shape != (L,):
            raise ValueError(f"band_start/band_size must have L={L} entries")
        if n >= 2**31:
            raise ValueError("more than 2**31 nodes is not supported")
        lo, hi = _leaf_ranges(db, cbg, L)
        dev = torch.device(device)
        i32 = lambda a: torch.as_tensor(a.astype(np.int32), device=dev)  # noqa: E731
        self.tables = TrieTables(
            depth_begin=torch.as_tensor(db, device=dev),
            child_begin=i32(cbg), code=i32(code), leaf_lo=i32(lo), leaf_hi=i32(hi),
            leaf_item=i32(leaf_item), band_start=i32(band_start), band_size=i32(band_size),
            levels=L, max_children=int(np.diff(cbg).max()),
            n_words=int((band_size.max() + 31) // 32), num_nodes=n, num_internal=n_int,
        )
        n_items = int(leaf_item.max()) + 1 if leaf_item.size else 0
        item2leaf = np.full(max(n_items, 0), -1, np.int64)
        leaf_ids = np.arange(leaf_item.shape[0])[::-1]
        keep = leaf_item[::-1] >= 0
        item2leaf[leaf_item[::-1][keep]] = leaf_ids[keep]  # an item on several leaves: first leaf
        self.item_to_leaf = torch.as_tensor(item2leaf, device=dev)
        self.device = dev
        self.open_id = -1 if open_id is None else int(open_id)
        self.close_id = -1 if close_id is None else int(close_id)

    # ------------------------------------------------------------------ properties
    @property
    def levels(self) -> int:
        return self.tables.levels

    @property
    def n_words(self) -> int:
        """Bitmap words per row: ``ceil(max band size / 32)``."""
        return self.tables.n_words

    def nbytes(self) -> int:
        """Device memory held by the trie arrays."""
        t = self.tables
        return sum(x.numel() * x.element_size() for x in (
            t.depth_begin, t.child_begin, t.code, t.leaf_lo, t.leaf_hi, t.leaf_item,
            self.item_to_leaf))

    # ------------------------------------------------------------------ filters
    def _leaves(self, items: ItemLists, rows: int):
        if items is None:
            return None, None
        if isinstance(items, torch.Tensor):
            it = items.to(device=self.device, dtype=torch.int64)
            if it.dim() != 2 or it.shape[0] != rows:
                raise ValueError(f"item lists must be ({rows}, n) with -1 padding, got "
                                 f"{tuple(it.shape)}")
            has = torch.ones(rows, dtype=torch.bool, device=self.device)
        else:
            if len(items) != rows:
                raise ValueError(f"got {len(items)} item lists for {rows} rows")
            width = max([len(x) for x in items if x is not None] + [0])
            buf = np.full((rows, width), -1, np.int64)
            for r, x in enumerate(items):
                if x is not None and len(x):
                    buf[r, :len(x)] = np.asarray(list(x), np.int64)
            it = torch.as_tensor(buf, device=self.device)
            has = torch.as_tensor([x is not None for x in items], dtype=torch.bool,
                                  device=self.device)
        n = self.item_to_leaf.shape[0]
        ok = (it >= 0) & (it < n)
        leaves = torch.where(ok, self.item_to_leaf[it.clamp(0, max(n - 1, 0))],
                             torch.full_like(it, -1)) if n else torch.full_like(it, -1)
        return torch.sort(leaves, dim=1).values, has

    def make_filter(self, rows: int, exclude: ItemLists = None, allow: ItemLists = None
                    ) -> Optional[TrieFilter]:
        """Per-row exclusions and allow-lists, by catalog item row, as device tensors.

        Parameters
        ----------
        rows : int
        exclude : ``(rows, E)`` int tensor with ``-1`` padding, or a list of ``rows`` item lists
            (``None`` = nothing excluded), optional.
        allow : same forms; a ``None`` entry means that row has no allow-list (everything allowed);
            an empty list allows nothing. Items not in the trie are ignored.

        Build it once per request (or when the exclusions change, e.g. after an item was emitted);
        stepping uses it as is.
        """
        excl, _ = self._leaves(exclude, rows)
        al, has = self._leaves(allow, rows)
        if excl is None and al is None:
            return None
        allow_len = None
        if al is not None:
            if excl is not None and excl.shape[1] and al.shape[1]:
                pos = torch.searchsorted(excl.contiguous(), al.contiguous())
                hit = excl.gather(1, pos.clamp(max=excl.shape[1] - 1)) == al
                al = torch.sort(torch.where(hit & (al >= 0), torch.full_like(al, -1), al), 1).values
            allow_len = torch.where(has, (al >= 0).sum(1), torch.full_like(has, -1,
                                                                            dtype=torch.int64))
            allow_len = allow_len.to(torch.int32)
            al = al.to(torch.int32)
        return TrieFilter(excl.to(torch.int32) if excl is not None else None, al, allow_len)

    # ------------------------------------------------------------------ stepping
    def root_state(self, rows: int) -> torch.Tensor:
        """``(rows,)`` int64 states at the span start (the root)."""
        return torch.zeros(rows, dtype=torch.int64, device=self.device)

    def step(self, node: torch.Tensor, tokens: Optional[torch.Tensor] = None,
             filt: Optional[TrieFilter] = None, backend: str = "auto") -> TrieStep:
        """Advance every row by its token, then return each row's allowed band.

        Parameters
        ----------
        node : Tensor ``(rows,)`` int64 — current states (node id, ``OUTSIDE`` or ``ERROR``).
        tokens : Tensor ``(rows,)`` int64, optional — the tokens just sampled; ``-1`` (or ``None``
            for all rows) = do not advance, only report the band of the current state.
        filt : :class:`TrieFilter` from :meth:`make_filter`, optional.
        backend : ``"auto"`` (Triton on CUDA, torch otherwise), ``"triton"`` or ``"torch"``.

        Returns
        -------
        TrieStep
            ``node`` int64 new states. Advance rules: in a span at an internal node, a token that is
            an offered child's token moves there, anything else -> ``ERROR`` (sticky); at a leaf,
            ``close_id`` -> ``OUTSIDE``, anything else -> ``ERROR``; ``OUTSIDE`` + ``open_id`` ->
            root; ``OUTSIDE`` ignores other tokens. ``band_start`` int32 (``-1`` unless at an
            internal node), ``bitmap`` int32 ``(rows, n_words)`` (bit c = token ``band_start + c``),
            ``at_leaf`` bool (only ``[/SID]`` allowed), ``item`` int32 (leaf's item or -1),
            ``num_allowed`` int32 (0 at an internal node = every item below is filtered out).
        """
        if node.dim() != 1:
            raise ValueError(f"node must be (rows,), got {tuple(node.shape)}")
        if tokens is None:
            tokens = torch.full_like(node, -1, dtype=torch.int64)
        if tokens.shape != node.shape:
            raise ValueError(f"tokens {tuple(tokens.shape)} must match node {tuple(node.shape)}")
        node = node.to(self.device)
        if backend == "auto":
            backend = "triton" if node.is_cuda else "torch"
        if backend == "torch":
            return trie_step_torch(self.tables, node, tokens, filt, self.open_id, self.close_id)
        if backend == "triton":
            from .trie import trie_step_triton
            return trie_step_triton(self.tables, node, tokens, filt, self.open_id, self.close_id)
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
