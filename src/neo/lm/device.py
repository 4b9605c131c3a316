"""Constrained decoding with the whole state on the device (the GPU path of ``backend="auto"``).

:class:`DeviceIndex` holds the catalog's trie on a device: one :class:`neo.kernels.DeviceTrie` per
item type plus token and item lookup tables. :class:`DeviceDecodeState` is
:class:`neo.core.index.DecodeState` (the C++ core's rules, DESIGN.md section 2) as tensors: per-row
status, output format, allowed types, open span (type, depth, trie node), emitted items, exclusions
and allow-lists. ``advance`` applies the text/span transitions with elementwise tensor operations and
steps every type's trie with the trie kernel; ``bitmask`` builds the packed full-vocabulary mask from a
small table of per-status rows plus :func:`neo.kernels.scatter_bands_`. Every shape is fixed by the
host before the loop (batch rows, exclusion capacity), so nothing waits for the host: no ``nonzero``,
no ``.item()``, no boolean indexing.

Several item types: a row inside a span belongs to one type (its first SID token's band tells which),
so each type's trie is stepped on all rows with the rows of other types parked outside (one launch per
type per step). Rows in free text, or right after ``[SID]``, query every trie's root: that yields both
"may a span still open" (a root child is offered) and the mask right after ``[SID]`` (the union of the
allowed types' root bands). One trie per type keeps each trie's band geometry (children per node,
bitmap words) its own, so a small second type never widens the first type's kernel.

Backends: ``"auto"`` uses this path for CUDA tensors and the C++ core otherwise; ``"device"`` forces
it on any device (torch references of the kernels on CPU tensors, Triton on CUDA); ``"triton"`` /
``"torch"`` force the kernel implementation (``"triton"`` on CPU needs ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Sequence

import numpy as np
import torch

from ..core.index import RowStatus, SidIndex
from ..kernels import DeviceTrie, scatter_bands_
from ..kernels.reference import OUTSIDE, TrieFilter

__all__ = ["BACKENDS", "resolve_backend", "DeviceIndex", "DeviceDecodeState", "build_filters"]

BACKENDS = ("auto", "core", "device", "triton", "torch")

TEXT, SPAN, DONE, ERROR = RowStatus.TEXT, RowStatus.SPAN, RowStatus.DONE, RowStatus.ERROR
_FORMATS = ("mixed", "ids", "text")

# rows of the mask table (see DeviceDecodeState.bitmask)
_K_MIXED, _K_MIXED_NO_OPEN, _K_IDS, _K_IDS_NO_OPEN, _K_TEXT, _K_CLOSE, _K_EMPTY, _K_EOS = range(8)

# error reasons (what the C++ core writes into DecodeState.error, rebuilt on the host at the end)
_E_NONE, _E_VOCAB, _E_OPEN_TEXT, _E_OPEN_MAX, _E_OPEN_NONE, _E_CODE_OUTSIDE, _E_CLOSE_OUTSIDE, _E_IDS_TEXT, \
    _E_AFTER_LAST, _E_NOT_FIRST, _E_TYPE, _E_LEVEL, _E_PREFIX, _E_UNKNOWN_SEQ = range(14)


def resolve_backend(backend: str, device: torch.device | str) -> tuple[bool, str]:
    """``backend`` -> (use the device path?, kernel backend for ``neo.kernels``).

    ``"auto"``: the device path on CUDA, the C++ core otherwise. ``"core"``: always the C++ core.
    ``"device"``: the device path with kernels chosen by tensor device. ``"triton"`` / ``"torch"``: the
    device path with that kernel implementation.
    """
    dev = torch.device(device)
    if backend == "auto":
        return dev.type == "cuda", "auto"
    if backend == "core":
        return False, "auto"
    if backend == "device":
        return True, "auto"
    if backend == "triton" and dev.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError("backend='triton' on CPU tensors runs Triton's interpreter: set TRITON_INTERPRET=1 "
                         "before triton is imported, or use backend='device' / 'torch' (torch kernels on CPU)")
    if backend in ("triton", "torch"):
        return True, backend
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


class DeviceIndex:
    """A :class:`SidIndex` copied to a device: one :class:`DeviceTrie` per item type + lookup tables.

    Build it with :meth:`get`, which caches one copy per (index, device): copying a 10M-item trie
    takes about a second, so it must not happen per request.

    Attributes
    ----------
    tries : list of DeviceTrie or None
        Per type (``None`` for a type without items).
    levels : list of int
        Levels per type.
    token_type, token_level : Tensor ``(V,)`` int64 on the device
        Type / level of each SID code token, ``-1`` elsewhere.
    band_start, band_size : Tensor ``(T, max L)`` int64 on the device.
    item_type, item_leaf : numpy ``(max item row + 1,)``
        Type (``-1`` = not in the index) and leaf index within its type of every catalog row; the
        same on the device as ``item_type_dev`` / ``item_leaf_dev``.
    """

    _cache: "weakref.WeakKeyDictionary[SidIndex, dict[str, DeviceIndex]]" = weakref.WeakKeyDictionary()

    def __init__(self, index: SidIndex, device: torch.device | str):
        lay = index.layout
        dev = torch.device(device)
        self.layout = lay  # no reference to ``index``: the cache keys on it weakly
        self.device = dev
        self.num_types = lay.num_types
        self.vocab_size = lay.vocab_size
        self.open_id, self.close_id = lay.open_id, lay.close_id
        self.levels = [t.levels for t in lay.types]
        self.max_levels = max(self.levels)
        self.min_levels = min(self.levels)
        self.tries: list[DeviceTrie | None] = []
        leaf_items = []
        for t in range(lay.num_types):
            arr = index.arrays(t)
            li = np.asarray(arr["leaf_item"])
            leaf_items.append(li)
            self.tries.append(DeviceTrie(arr, dev) if li.size else None)
        n_items = max([int(li.max()) + 1 for li in leaf_items if li.size] + [0])
        self.item_type = np.full(n_items, -1, np.int8)
        self.item_leaf = np.full(n_items, -1, np.int32)
        for t, li in enumerate(leaf_items):
            self.item_type[li] = t
            self.item_leaf[li] = np.arange(li.size, dtype=np.int32)
        self.item_type_dev = torch.as_tensor(self.item_type.astype(np.int64), device=dev)
        self.item_leaf_dev = torch.as_tensor(self.item_leaf.astype(np.int64), device=dev)
        V = lay.vocab_size
        ttype = np.full(V, -1, np.int64)
        tlevel = np.full(V, -1, np.int64)
        bstart = np.zeros((lay.num_types, self.max_levels), np.int64)
        bsize = np.zeros((lay.num_types, self.max_levels), np.int64)
        for t, tb in enumerate(lay.types):
            for lvl, (s, k) in enumerate(zip(tb.band_starts, tb.codebook_sizes)):
                ttype[s:s + k] = t
                tlevel[s:s + k] = lvl
                bstart[t, lvl] = s
                bsize[t, lvl] = k
        self.token_type = torch.as_tensor(ttype, device=dev)
        self.token_level = torch.as_tensor(tlevel, device=dev)
        self.band_start = torch.as_tensor(bstart, device=dev)
        self.band_size = torch.as_tensor(bsize, device=dev)
        self.levels_dev = torch.as_tensor(self.levels, dtype=torch.int64, device=dev)
        self.has_items = [tr is not None for tr in self.tries]
        self.max_words = max([tr.n_words for tr in self.tries if tr is not None] + [1])

    @classmethod
    def get(cls, index: SidIndex, device: torch.device | str) -> "DeviceIndex":
        """The cached device copy of ``index`` on ``device`` (built on first use)."""
        key = str(torch.device(device))
        per = cls._cache.setdefault(index, {})
        if key not in per:
            per[key] = cls(index, device)
        return per[key]

    def check_items(self, items: np.ndarray, what: str) -> None:
        """Raise ``ValueError`` naming the first item row that is not in the index (as the core does)."""
        items = np.asarray(items, dtype=np.int64).reshape(-1)
        if not items.size:
            return
        n = self.item_type.shape[0]
        bad = (items < 0) | (items >= n)
        bad[~bad] = self.item_type[items[~bad]] < 0
        if bad.any():
            raise ValueError(f"{what}: item row {int(items[bad][0])} is not in the index")


def _as_items(x: Any, what: str) -> np.ndarray | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu").numpy()
    a = np.asarray(x)
    if a.size == 0:
        return np.zeros(0, np.int64)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{what} must hold integer item rows, got dtype {a.dtype}")
    return a.astype(np.int64).reshape(-1)


def build_filters(dindex: DeviceIndex, exclude: Sequence[Any], allow: Sequence[Any], capacity: int = 0,
                  ) -> list[TrieFilter | None]:
    """Per-type :class:`TrieFilter` tensors for rows with these exclusions and allow-lists.

    Parameters
    ----------
    exclude, allow : sequences (one per row) of item-row arrays or ``None``
        ``allow[r] = None``: no allow-list; an empty array allows nothing. Items must be in the index
        (``ValueError`` names the first one that is not, like the C++ core).
    capacity : int
        Free ``-1`` slots per row in every type's exclusion list, for items emitted later
        (``exclude_emitted``).

    Returns
    -------
    list (per type) of TrieFilter or None
        ``excl`` int32 ``(rows, E + capacity)`` ascending leaves with ``-1`` padding first; ``allow``
        int32 ``(rows, A)`` allowed-minus-excluded leaves; ``allow_len`` int32 ``(rows,)`` (``-1`` = no
        list). Rows where a type has nothing filtered get only padding.
    """
    rows = len(exclude)
    if len(allow) != rows:
        raise ValueError(f"got {len(exclude)} exclude lists and {len(allow)} allow lists")
    T = dindex.num_types
    ex_rows = [_as_items(x, "exclude") for x in exclude]
    al_rows = [_as_items(x, "allow") for x in allow]
    for x in ex_rows:
        if x is not None:
            dindex.check_items(x, "exclude")
    for x in al_rows:
        if x is not None:
            dindex.check_items(x, "allow")
    has_allow = np.asarray([x is not None for x in al_rows])
    out: list[TrieFilter | None] = []
    for t in range(T):
        ex_t, al_t = [], []
        for r in range(rows):
            e = ex_rows[r]
            le = np.unique(dindex.item_leaf[e[dindex.item_type[e] == t]]) if e is not None and e.size else \
                np.zeros(0, np.int32)
            ex_t.append(le)
            a = al_rows[r]
            if a is not None:
                la = np.unique(dindex.item_leaf[a[dindex.item_type[a] == t]]) if a.size else np.zeros(0, np.int32)
                al_t.append(np.setdiff1d(la, le, assume_unique=True))
            else:
                al_t.append(np.zeros(0, np.int32))
        E = max([x.size for x in ex_t] + [0]) + int(capacity)
        any_allow = bool(has_allow.any())
        if E == 0 and not any_allow:
            out.append(None)
            continue
        excl = None
        if E:
            buf = np.full((rows, E), -1, np.int32)
            for r, x in enumerate(ex_t):
                if x.size:
                    buf[r, E - x.size:] = x  # -1 padding first keeps every row ascending
            excl = torch.as_tensor(buf, device=dindex.device)
        allow_t = allow_len = None
        if any_allow:
            A = max([x.size for x in al_t] + [0])
            buf = np.full((rows, max(A, 1)), -1, np.int32)
            for r, x in enumerate(al_t):
                if x.size:
                    buf[r, buf.shape[1] - x.size:] = x
            allow_t = torch.as_tensor(buf, device=dindex.device)
            lens = np.where(has_allow, [x.size for x in al_t], -1).astype(np.int32)
            allow_len = torch.as_tensor(lens, device=dindex.device)
        out.append(TrieFilter(excl, allow_t, allow_len))
    return out


def repeat_filters(filters: list[TrieFilter | None], repeats: int) -> list[TrieFilter | None]:
    """Each filter row repeated ``repeats`` times (one prompt -> its beams)."""
    def rep(x):
        return None if x is None else x.repeat_interleave(repeats, 0)
    return [None if f is None else TrieFilter(rep(f.excl), rep(f.allow), rep(f.allow_len)) for f in filters]


def _index_filters(filters: list[TrieFilter | None], src: torch.Tensor) -> list[TrieFilter | None]:
    def sel(x):
        return None if x is None else x.index_select(0, src)
    return [None if f is None else TrieFilter(sel(f.excl), sel(f.allow), sel(f.allow_len)) for f in filters]


def _per_row(value: Any, rows: int, what: str) -> list:
    if isinstance(value, (list, tuple)) and len(value) == rows:
        return list(value)
    raise ValueError(f"{what}: expected one value per row ({rows}), got {value!r:.80}")


class DeviceDecodeState:
    """The decode state of :class:`neo.core.index.DecodeState`, as device tensors (see module doc).

    Parameters
    ----------
    dindex : DeviceIndex
    num_rows : int
    eos_token_ids, separator_token_ids : iterable of int
        As for ``DecodeState`` (validated the same way).
    formats, allowed_types, exclude, allow, max_items : per-row lists
        ``formats[r]`` in ``("mixed", "ids", "text")``; ``allowed_types[r]`` a list of type names or
        indices, or ``None`` (all); ``exclude[r]`` / ``allow[r]`` item-row arrays or ``None``;
        ``max_items[r]`` an int or ``None``.
    exclude_emitted : bool
        An item is emitted at most once per row (its leaf joins the row's exclusions).
    capacity : int
        Most items a row emits in total (sizes the emitted-item and exclusion buffers, which cannot
        grow inside the loop without a host decision). :meth:`grow` raises it; callers derive it from
        the number of tokens they will generate (an item takes at least ``min levels + 1`` tokens).
    kernel_backend : ``"auto"``, ``"triton"`` or ``"torch"``.

    State tensors (all ``(rows,)`` unless noted): ``status`` (:class:`RowStatus` values), ``fmt``,
    ``typ`` (type of the open span, ``-1`` right after ``[SID]``), ``depth``, ``node``, ``at_leaf``,
    ``item`` (the leaf's item), ``n_emitted``, ``type_open`` ``(rows, T)``, ``err_code``, ``err_tok``.
    """

    def __init__(self, dindex: DeviceIndex, num_rows: int, eos_token_ids: Sequence[int],
                 separator_token_ids: Sequence[int] = (), *, formats: Sequence[str] | None = None,
                 allowed_types: Sequence[Any] | None = None, exclude: Sequence[Any] | None = None,
                 allow: Sequence[Any] | None = None, max_items: Sequence[int | None] | None = None,
                 exclude_emitted: bool = True, capacity: int = 1, kernel_backend: str = "auto"):
        lay = dindex.layout
        dev = dindex.device
        R = int(num_rows)
        T = dindex.num_types
        V = dindex.vocab_size
        self.dindex, self.rows, self.device, self.kb = dindex, R, dev, kernel_backend
        self.eos = sorted({int(t) for t in eos_token_ids})
        self.separators = sorted({int(t) for t in separator_token_ids})
        if not self.eos:
            raise ValueError("constrained decoding needs at least one EOS token id (got none)")
        sid_tok = dindex.token_type.cpu().numpy() >= 0
        for what, toks in (("eos_token_ids", self.eos), ("separator_token_ids", self.separators)):
            for t in toks:
                if not 0 <= t < V:
                    raise ValueError(f"{what}: {t} outside the vocabulary")
                if sid_tok[t] or t in (lay.open_id, lay.close_id):
                    raise ValueError(f"{what}: {t} is a SID token")
        formats = ["mixed"] * R if formats is None else _per_row(formats, R, "formats")
        for f in formats:
            if f not in _FORMATS:
                raise ValueError(f"unknown output format {f!r}; use one of {_FORMATS}")
        allowed_types = [None] * R if allowed_types is None else _per_row(allowed_types, R, "allowed_types")
        exclude = [None] * R if exclude is None else _per_row(exclude, R, "exclude")
        allow = [None] * R if allow is None else _per_row(allow, R, "allow")
        max_items = [None] * R if max_items is None else _per_row(max_items, R, "max_items")
        allowed = np.zeros((R, T), bool)
        for r, ats in enumerate(allowed_types):
            if ats is None:
                allowed[r] = True
            else:
                for t in ([ats] if isinstance(ats, (str, int, np.integer)) else ats):
                    allowed[r, lay.type_index(t)] = True
        self.exclude_emitted = bool(exclude_emitted)
        self.capacity = max(int(capacity), 1)
        self.filters = build_filters(dindex, exclude, allow, self.capacity if self.exclude_emitted else 0)
        # full-vocabulary rows of the mask table (host numpy, copied once)
        W = (V + 31) // 32
        self.words = W
        allowed_tok = np.ones(V, bool)
        allowed_tok[sid_tok] = False
        allowed_tok[lay.close_id] = False

        def pack(tokens_bool):
            padded = np.zeros(W * 32, bool)
            padded[:V] = tokens_bool
            w = (padded.reshape(W, 32).astype(np.uint64) << np.arange(32, dtype=np.uint64)).sum(1)
            return w.astype(np.uint32).view(np.int32)

        def only(ids):
            m = np.zeros(V, bool)
            m[list(ids)] = True
            return m

        mixed = allowed_tok.copy()
        no_open = allowed_tok.copy()
        no_open[lay.open_id] = False
        table = np.stack([pack(mixed), pack(no_open), pack(only([lay.open_id, *self.separators, *self.eos])),
                          pack(only([*self.separators, *self.eos])), pack(no_open), pack(only([lay.close_id])),
                          np.zeros(W, np.int32), pack(only(self.eos))])
        self.table = torch.as_tensor(table, device=dev)
        is_eos = np.zeros(V, bool)
        is_eos[self.eos] = True
        is_sep = np.zeros(V, bool)
        is_sep[self.separators] = True
        self.is_eos = torch.as_tensor(is_eos, device=dev)
        self.is_sep = torch.as_tensor(is_sep, device=dev)
        self.has_items = torch.as_tensor(dindex.has_items, device=dev)
        i64 = dict(dtype=torch.int64, device=dev)
        self.status = torch.full((R,), TEXT, **i64)
        self.fmt = torch.as_tensor([_FORMATS.index(f) for f in formats], **i64)
        self.allowed = torch.as_tensor(allowed, device=dev)
        self.max_items = torch.as_tensor([-1 if m is None else int(m) for m in max_items], **i64)
        self.typ = torch.full((R,), -1, **i64)
        self.depth = torch.zeros(R, **i64)
        self.node = torch.full((R,), OUTSIDE, **i64)
        self.at_leaf = torch.zeros(R, dtype=torch.bool, device=dev)
        self.item = torch.full((R,), -1, **i64)
        self.n_emitted = torch.zeros(R, **i64)
        self.emitted = torch.full((R, self.capacity), -1, **i64)
        self.type_open = torch.zeros((R, T), dtype=torch.bool, device=dev)
        self.err_code = torch.zeros(R, **i64)
        self.err_tok = torch.full((R,), -1, **i64)
        self.bands: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * T
        self.advance(None)  # roots: which spans may open

    # ------------------------------------------------------------------ bookkeeping
    def grow(self, capacity: int) -> None:
        """Room for ``capacity`` emitted items per row (adds ``-1`` slots; decided by the host, no sync)."""
        extra = int(capacity) - self.capacity
        if extra <= 0:
            return
        R = self.rows
        new = []
        for f in (self.filters if self.exclude_emitted else []):
            pad = torch.full((R, extra), -1, dtype=torch.int32, device=self.device)
            if f is None:
                new.append(TrieFilter(pad, None, None))
            else:
                excl = pad if f.excl is None else torch.cat([pad, f.excl], 1)
                new.append(TrieFilter(excl, f.allow, f.allow_len))
        if self.exclude_emitted:
            self.filters = new
        self.emitted = torch.cat([self.emitted, torch.full((R, extra), -1, dtype=torch.int64, device=self.device)], 1)
        self.capacity = int(capacity)

    def reorder(self, src: torch.Tensor) -> None:
        """Row ``i`` becomes a copy of row ``src[i]`` (beam search); ``len(src)`` rows afterwards."""
        src = src.to(device=self.device, dtype=torch.int64)
        for name in ("status", "fmt", "allowed", "max_items", "typ", "depth", "node", "at_leaf", "item",
                     "n_emitted", "emitted", "type_open", "err_code", "err_tok"):
            setattr(self, name, getattr(self, name).index_select(0, src))
        self.filters = _index_filters(self.filters, src)
        self.bands = [None if b is None else (b[0].index_select(0, src), b[1].index_select(0, src))
                      for b in self.bands]
        self.rows = int(src.shape[0])

    def _set_error(self, mask: torch.Tensor, code: int, tok: torch.Tensor) -> None:
        self.status = torch.where(mask, torch.full_like(self.status, ERROR), self.status)
        self.err_code = torch.where(mask, torch.full_like(self.err_code, code), self.err_code)
        self.err_tok = torch.where(mask, tok, self.err_tok)

    # ------------------------------------------------------------------ stepping
    def advance(self, tokens: torch.Tensor | None, active: torch.Tensor | None = None) -> None:
        """Advance rows by one token each (``active`` rows only; DONE/ERROR rows never move), then
        compute every row's allowed band for the next :meth:`bitmask`. ``tokens=None`` only refreshes.
        """
        dx = self.dindex
        R, T = self.rows, dx.num_types
        st = self.status
        if tokens is None:
            trie_adv = torch.zeros(R, dtype=torch.bool, device=self.device)
            tok = torch.full((R,), -1, dtype=torch.int64, device=self.device)
        else:
            tok = tokens.to(device=self.device, dtype=torch.int64).reshape(-1)
            act = st <= SPAN
            if active is not None:
                act = act & active.to(self.device)
            V = dx.vocab_size
            inv = act & ((tok < 0) | (tok >= V))
            ts = tok.clamp(0, V - 1)
            ttype = dx.token_type[ts]
            tlevel = dx.token_level[ts]
            is_open = ts == dx.open_id
            is_close = ts == dx.close_id
            is_eos = self.is_eos[ts]
            text = act & ~inv & (st == TEXT)
            span = act & ~inv & (st == SPAN)
            # ---- free text
            can_open = self._can_open()
            opening = text & is_open
            e_open_text = opening & (self.fmt == 2)
            e_open_max = opening & ~e_open_text & (self.max_items >= 0) & (self.n_emitted >= self.max_items)
            e_open_none = opening & ~e_open_text & ~e_open_max & ~can_open
            ok_open = opening & can_open
            e_code = text & (ttype >= 0)
            e_close = text & is_close
            e_ids = text & (self.fmt == 1) & ~self.is_sep[ts] & ~is_eos & ~is_open & (ttype < 0) & ~is_close
            to_done = text & is_eos
            # ---- inside a span
            leaf = span & self.at_leaf & (self.typ >= 0)
            closing = leaf & is_close
            e_after_last = leaf & ~is_close
            start = span & (self.typ < 0)
            t_new = torch.where(tlevel == 0, ttype, torch.full_like(ttype, -1))
            e_not_first = start & (t_new < 0)
            tsafe = t_new.clamp(min=0)
            type_ok = (self.allowed.gather(1, tsafe[:, None]) & self.type_open.gather(1, tsafe[:, None]))[:, 0]
            e_type = start & (t_new >= 0) & ~type_ok
            ok_start = start & (t_new >= 0) & type_ok
            internal = span & ~self.at_leaf & (self.typ >= 0)
            e_level = internal & ~((ttype == self.typ) & (tlevel == self.depth))
            trie_adv = ok_start | (internal & ~e_level)
            # ---- emit the closed item before any trie query, so this step's masks already exclude it
            self._emit(closing)
            # ---- apply the transitions
            st = torch.where(to_done, torch.full_like(st, DONE), st)
            st = torch.where(ok_open, torch.full_like(st, SPAN), st)
            st = torch.where(closing, torch.full_like(st, TEXT), st)
            self.status = st
            reset = ok_open | closing
            self.typ = torch.where(reset, torch.full_like(self.typ, -1), torch.where(ok_start, t_new, self.typ))
            self.depth = torch.where(reset | ok_start, torch.zeros_like(self.depth), self.depth)
            self.node = torch.where(ok_start, torch.zeros_like(self.node), self.node)
            self.at_leaf = self.at_leaf & ~reset
            # the error cases are mutually exclusive: one code per row, then one update
            code = torch.zeros_like(tok)
            for mask, c in ((inv, _E_VOCAB), (e_open_text, _E_OPEN_TEXT), (e_open_max, _E_OPEN_MAX),
                            (e_open_none, _E_OPEN_NONE), (e_code, _E_CODE_OUTSIDE), (e_close, _E_CLOSE_OUTSIDE),
                            (e_ids, _E_IDS_TEXT), (e_after_last, _E_AFTER_LAST), (e_not_first, _E_NOT_FIRST),
                            (e_type, _E_TYPE), (e_level, _E_LEVEL)):
                code = torch.where(mask, c, code)
            failed = code > 0
            self.status = torch.where(failed, ERROR, self.status)
            self.err_code = torch.where(failed, code, self.err_code)
            self.err_tok = torch.where(failed, tok, self.err_tok)
        self._refresh(tok, trie_adv)

    def _can_open(self) -> torch.Tensor:
        room = (self.max_items < 0) | (self.n_emitted < self.max_items)
        return (self.fmt != 2) & room & (self.type_open & self.allowed).any(1)

    def _emit(self, closing: torch.Tensor) -> None:
        """Rows in ``closing`` completed ``self.item``: count it, record it, exclude it from now on."""
        item = torch.where(closing, self.item, torch.full_like(self.item, -1))
        slot = self.n_emitted.clamp(max=self.emitted.shape[1] - 1)[:, None]
        old = self.emitted.gather(1, slot)
        self.emitted = self.emitted.scatter(1, slot, torch.where(closing[:, None], item[:, None], old))
        self.n_emitted = self.n_emitted + closing.to(torch.int64)
        if not self.exclude_emitted:
            return
        dx = self.dindex
        isafe = item.clamp(min=0)
        leaf = torch.where(closing, dx.item_leaf_dev[isafe], torch.full_like(item, -1))
        ityp = torch.where(closing, dx.item_type_dev[isafe], torch.full_like(item, -1))
        new = []
        for t, f in enumerate(self.filters):
            if f is None or f.excl is None:  # capacity 0: cannot happen with exclude_emitted
                new.append(f)
                continue
            mine = ityp == t
            # slot 0 is free padding (-1 sorts first and capacity bounds the emitted items): write, re-sort
            col0 = torch.where(mine, leaf, f.excl[:, 0].to(torch.int64)).to(torch.int32)
            excl = torch.sort(torch.cat([col0[:, None], f.excl[:, 1:]], 1), dim=1).values
            allow = f.allow
            if allow is not None:
                hit = mine[:, None] & (allow == leaf.to(torch.int32)[:, None])
                allow = torch.sort(torch.where(hit, torch.full_like(allow, -1), allow), dim=1).values
            new.append(TrieFilter(excl, allow, f.allow_len))
        self.filters = new

    def _refresh(self, tok: torch.Tensor, trie_adv: torch.Tensor) -> None:
        """Step every type's trie: advance span rows, query the roots for text / span-start rows."""
        dx = self.dindex
        st = self.status
        query = (st == TEXT) | ((st == SPAN) & (self.typ < 0))
        start = (st == SPAN) & (self.typ < 0)
        for t, trie in enumerate(dx.tries):
            if trie is None:
                self.type_open[:, t] = False
                self.bands[t] = None
                continue
            span_t = (st == SPAN) & (self.typ == t)
            node_in = torch.where(span_t, self.node, torch.where(query, torch.zeros_like(self.node),
                                                                  torch.full_like(self.node, OUTSIDE)))
            adv_t = span_t & trie_adv
            tok_in = torch.where(adv_t, tok, torch.full_like(tok, -1))
            out = trie.step(node_in, tok_in, self.filters[t], backend=self.kb)
            bad = adv_t & (out.node < 0)
            self.node = torch.where(span_t, out.node, self.node)
            self.depth = torch.where(adv_t & ~bad, self.depth + 1, self.depth)
            self.at_leaf = torch.where(span_t, out.at_leaf, self.at_leaf)
            self.item = torch.where(span_t, out.item.to(torch.int64), self.item)
            opened = out.num_allowed > 0
            self.type_open[:, t] = torch.where(query, opened, self.type_open[:, t])
            self._set_error(bad, _E_PREFIX, tok)
            use = (span_t & ~bad & ~out.at_leaf) | (start & self.allowed[:, t] & opened)
            band = torch.where(use, out.band_start.to(torch.int64), torch.full_like(self.node, -1))
            self.bands[t] = (band, out.bitmap)

    def prime(self, ids: torch.Tensor) -> None:
        """Start rows whose prompt ``ids (rows, P)`` ends inside an open span (e.g. ends with ``[SID]``).

        Only the tail after the last ``[SID]`` matters (left padding is fine). A tail longer than any
        span (``max levels + 1`` tokens) cannot be valid: such a row starts in the error state.
        """
        dx = self.dindex
        ids = ids.to(device=self.device, dtype=torch.int64)
        R, P = ids.shape
        if P == 0:
            return
        pos = torch.arange(P, device=self.device)
        last_open = torch.where(ids == dx.open_id, pos, torch.full_like(ids, -1)).max(1).values
        last_close = torch.where(ids == dx.close_id, pos, torch.full_like(ids, -1)).max(1).values
        in_span = (last_open >= 0) & (last_open > last_close)
        n = min(P, dx.max_levels + 1)
        too_long = in_span & (last_open < P - n)
        self._set_error(too_long & (self.status <= SPAN), _E_AFTER_LAST,
                        ids.gather(1, (last_open + dx.max_levels + 1).clamp(max=P - 1)[:, None])[:, 0])
        for p in range(P - n, P):
            self.advance(ids[:, p], in_span & ~too_long & (pos[p] >= last_open))

    # ------------------------------------------------------------------ masks
    def kinds(self) -> torch.Tensor:
        """``(rows,)`` index into the mask table for every row."""
        st = self.status
        can = self._can_open()
        text_kind = torch.where(self.fmt == 0, torch.where(can, _K_MIXED, _K_MIXED_NO_OPEN),
                                torch.where(self.fmt == 1, torch.where(can, _K_IDS, _K_IDS_NO_OPEN),
                                            torch.full_like(st, _K_TEXT)))
        span_kind = torch.where(self.at_leaf & (self.typ >= 0), _K_CLOSE, _K_EMPTY)
        return torch.where(st == TEXT, text_kind, torch.where(st == SPAN, span_kind, torch.full_like(st, _K_EOS)))

    def bitmask(self) -> torch.Tensor:
        """``(rows, ceil(V/32))`` int32 packed mask of the allowed next tokens, built on the device."""
        bm = self.table.index_select(0, self.kinds())
        for b in self.bands:
            if b is not None:
                scatter_bands_(bm, b[0], b[1], backend=self.kb)
        return bm

    # ------------------------------------------------------------------ host reports (after the loop)
    def status_host(self) -> np.ndarray:
        return self.status.to("cpu").numpy().astype(np.int8)

    def error(self, row: int) -> str:
        """Why row ``row`` is in the error state (``""`` otherwise); reads the device (a sync)."""
        if int(self.status[row]) != ERROR:
            return ""
        return self._message(int(self.err_code[row]), int(self.err_tok[row]), row)

    def errors(self) -> dict[int, str]:
        st = self.status_host()
        codes = self.err_code.to("cpu").numpy()
        toks = self.err_tok.to("cpu").numpy()
        return {int(r): self._message(int(codes[r]), int(toks[r]), int(r)) for r in np.flatnonzero(st == ERROR)}

    def emitted_items(self, row: int) -> np.ndarray:
        n = int(self.n_emitted[row])
        return self.emitted[row, :min(n, self.emitted.shape[1])].to("cpu").numpy().astype(np.int32)

    def _message(self, code: int, tok: int, row: int) -> str:
        lay = self.dindex.layout
        cls = lay.classify(tok) if tok >= 0 and tok < lay.vocab_size else None
        if code == _E_VOCAB:
            return f"token {tok} is outside the vocabulary [0, {lay.vocab_size})"
        if code == _E_OPEN_TEXT:
            return "[SID] opened but the output format is 'text'"
        if code == _E_OPEN_MAX:
            return f"[SID] opened after max_items={int(self.max_items[row])} items"
        if code == _E_OPEN_NONE:
            return "[SID] opened but no item of an allowed type remains"
        if code == _E_CODE_OUTSIDE:
            return f"SID code token {tok} outside a [SID] span"
        if code == _E_CLOSE_OUTSIDE:
            return "[/SID] outside a span"
        if code == _E_IDS_TEXT:
            return f"text token {tok} in output format 'ids' (only [SID] spans, separators and EOS)"
        if code == _E_AFTER_LAST:
            return f"token {tok} after the last level; expected [/SID]"
        if code == _E_NOT_FIRST:
            return f"token {tok} right after [SID] is not a first-level SID code"
        if code == _E_TYPE:
            t = cls[0] if cls else -1
            return f"token {tok} opens item type {t}, which is not allowed or has no items left"
        if code == _E_LEVEL:
            return f"token {tok} is not a level-{int(self.depth[row]) + 1} code of item type {int(self.typ[row])}"
        if code == _E_PREFIX:
            return (f"no catalog item that is still allowed has the SID prefix ending in token {tok} "
                    "(no such item, or every item under it is excluded or not allowed)")
        if code == _E_UNKNOWN_SEQ:
            return ("SidLogitsProcessor saw a sequence it did not generate (a row's tokens match no row of the "
                    "previous step); use one processor per generate call or call reset() between calls")
        return f"error {code}"


_HASH_BASE = 1_000_003


class DeviceSidTracker:
    """The device branch of :class:`~neo.lm.processor.SidLogitsProcessor`.

    Follows ``model.generate`` like the CPU branch (each call's rows continue rows of the previous
    call, found by a hash of their generated tokens and verified exactly) but on the device: parents
    come from an equality matrix of the rows' hashes within their batch item, the state is reordered
    and advanced with :class:`DeviceDecodeState`, and the mask is applied with
    ``neo.kernels.apply_token_bitmask_inplace``. A call one token past the previous one (greedy,
    sampling, beam search, ``num_return_sequences``) reads nothing back to the host.

    Any other call is decided on the host (one copy of the ids; only on such calls): the same prompt
    with the rows rolled back (assisted / speculative decoding rejected drafts) or grown by several
    tokens rebuilds the state from the prompt and replays the generated tokens, as the CPU branch
    does; anything else starts a new generation. Rows that continue no earlier row among others that
    do raise ``RuntimeError``.

    Differences from the CPU branch, both to avoid a host round trip per step: in a one-token step, a
    row whose tokens match no row of the previous call enters the error state (only EOS allowed;
    :meth:`errors` reports it) instead of raising; and the check that another logits processor left
    no allowed token in a row is not run (use ``backend="core"`` to diagnose such conflicts).
    """

    def __init__(self, processor: Any, kernel_backend: str):
        self.proc = processor
        self.kb = kernel_backend
        self.state: DeviceDecodeState | None = None
        self.rows = self.plen = self.n = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        from ..kernels import apply_token_bitmask_inplace

        rows, cur = input_ids.shape
        if self.state is not None and rows == self.rows and cur == self.plen + self.n + 1:
            self._follow(input_ids)
        elif not self._replay(input_ids):
            self._start(input_ids)
        apply_token_bitmask_inplace(scores, self.state.bitmask(), backend=self.kb)
        return scores

    def _replay(self, input_ids: torch.Tensor) -> bool:
        """Rebuild the state for ``input_ids`` that continue this generation other than by one token.

        Returns False when they start a new generation (another prompt or batch size, or a longer
        input after every row had finished)."""
        st = self.state
        rows, cur = input_ids.shape
        if st is None or rows != self.rows or cur < self.plen:
            return False
        plen = self.plen
        ids = input_ids.to("cpu").numpy()
        prev = self.prev.to("cpu").numpy()
        if not np.array_equal(ids[:, :plen], prev[:, :plen]):
            return False
        new, seen_ids = ids[:, plen:], prev[:, plen:]
        n, seen = new.shape[1], seen_ids.shape[1]
        k = min(n, seen)
        same = new[:, :k] == seen_ids[:, :k]
        common = np.where(same.all(1), k, same.argmin(1)) if k else np.zeros(rows, dtype=np.int64)
        rolled_back = common >= n - 1  # the input minus its newest token is a prefix of what was seen
        grown = (common == seen) & (n > seen + 1)  # what was seen, then several new tokens
        if grown.any() and (st.status_host() >= DONE).all():
            return False  # every row had finished: a longer input is a new prompt
        fits = rolled_back | grown
        if not fits.any():
            return False
        if not fits.all():
            raise RuntimeError(
                "SidLogitsProcessor saw a sequence it did not generate (rows "
                f"{np.flatnonzero(~fits).tolist()[:8]} match no earlier row); use one processor per generate call "
                "or call reset() between calls")
        self._start(input_ids[:, :plen])
        for j in range(n):
            self._consume(input_ids[:, plen + j].to(torch.int64))
        self.prev = input_ids
        return True

    def _start(self, input_ids: torch.Tensor) -> None:
        from .processor import _is_rows_scalar, _is_type_list_scalar, _per_item

        p = self.proc
        rows, plen = input_ids.shape
        n_items = p._num_items(rows)
        per = rows // n_items
        o = p.options

        def per_row(key, is_scalar):
            vals = _per_item(o[key], n_items, key, is_scalar)
            return [vals[r // per] for r in range(rows)]

        dev = input_ids.device
        self.state = DeviceDecodeState(
            DeviceIndex.get(p.index, dev), rows, p.eos, p.separators,
            formats=per_row("format", lambda v: isinstance(v, str)),
            allowed_types=per_row("allowed_types", _is_type_list_scalar),
            exclude=per_row("exclude", _is_rows_scalar), allow=per_row("allow", _is_rows_scalar),
            max_items=per_row("max_items", lambda v: v is None or isinstance(v, (int, np.integer))),
            exclude_emitted=p.exclude_emitted, capacity=2, kernel_backend=self.kb)
        self.state.prime(input_ids)
        self.rows, self.plen, self.n = rows, plen, 0
        self.group = torch.arange(rows, device=dev) // per
        self.prev = input_ids
        self.hash = torch.zeros(rows, dtype=torch.int64, device=dev)  # of each row's generated tokens
        self.powers = torch.ones(1, dtype=torch.int64, device=dev)  # BASE**j, wrapping mod 2**64

    def _follow(self, input_ids: torch.Tensor) -> None:
        st = self.state
        assert st is not None
        n = self.n
        if n:
            prefix = input_ids[:, self.plen:-1].to(torch.int64)
            h = ((prefix + 1) * self.powers[:n]).sum(1)
            eq = (h[:, None] == self.hash[None, :]) & (self.group[:, None] == self.group[None, :])
            parent = eq.to(torch.int8).argmax(1)  # first match; equal rows have equal states
            exact = (prefix == self.prev[:, self.plen:].to(torch.int64).index_select(0, parent)).all(1)
            ok = eq.any(1) & exact
            st.reorder(torch.where(ok, parent, torch.arange(self.rows, device=parent.device)))
            st._set_error(~ok, _E_UNKNOWN_SEQ, input_ids[:, -1].to(torch.int64))
            self.hash = h
        self._consume(input_ids[:, -1].to(torch.int64))
        self.prev = input_ids

    def _consume(self, last: torch.Tensor) -> None:
        """Advance every row by its newest token (the rows already match the previous call's)."""
        st = self.state
        n = self.n
        # an item takes at least (min levels + 1) generated tokens: room for every item so far
        need = (n + 1) // (st.dindex.min_levels + 1) + 2
        if need > st.capacity:
            st.grow(max(need, 2 * st.capacity))
        st.advance(last)
        self.hash = self.hash + (last + 1) * self.powers[n]
        self.powers = torch.cat([self.powers, self.powers[-1:] * _HASH_BASE])
        self.n = n + 1
