"""Python face of the C++ core: the SID index (prefix trie) and the batched decode state.

The heavy lifting happens in ``neo._core`` with the GIL released; this module converts arguments
(numpy arrays, torch CPU tensors, lists, type names) and documents shapes and semantics.

Example
-------
>>> layout = TokenLayout.contiguous(1000, {"movie": [256, 256, 256]})
>>> index = SidIndex.build(layout, {"movie": layout.codes_to_tokens("movie", codes)})
>>> state = DecodeState(index, num_rows=8, eos_token_ids=[2])
>>> bitmask = allocate_token_bitmask(8, layout.vocab_size)
>>> state.fill_next_token_bitmask(bitmask)
>>> completed = state.advance(next_tokens)      # item row where a span closed, else -1
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .. import _core
from .layout import TokenLayout, TypeBands, as_int, as_int_array

__all__ = ["SidIndex", "DecodeState", "IndexFormatError", "RowStatus"]

IndexFormatError = _core.IndexFormatError


class RowStatus:
    """Values of :attr:`DecodeState.status`."""

    TEXT = 0
    SPAN = 1
    DONE = 2
    ERROR = 3
    NAMES = ("text", "span", "done", "error")


def _to_numpy(x: Any, what: str) -> np.ndarray:
    """numpy view of a numpy array / CPU torch tensor / list, without copying when possible."""
    if isinstance(x, np.ndarray):
        return x
    mod = type(x).__module__
    if mod.startswith("torch"):
        if x.device.type != "cpu":
            raise ValueError(
                f"{what} is on {x.device}; the C++ core works on CPU memory. Use neo.kernels' device trie "
                "step for GPU-resident decoding, or copy to (pinned) CPU memory first."
            )
        return x.detach().numpy()
    a = np.asarray(x)
    if a.size == 0 and a.dtype.kind == "f":  # [] defaults to float64; an empty id list is fine
        a = a.astype(np.int64)
    return a


def _int_array(x: Any, what: str) -> np.ndarray:
    """:func:`_to_numpy` that refuses non-integers (floats, booleans) with a ``TypeError``."""
    return as_int_array(_to_numpy(x, what), what)


def _id_list(x: Any, what: str) -> np.ndarray:
    """An int64 (n,) array of token ids from an int, an iterable of ints, an array or a tensor."""
    if isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_)):
        return np.asarray([int(x)], dtype=np.int64)
    if not isinstance(x, np.ndarray) and not type(x).__module__.startswith("torch"):
        x = list(x)
    a = _int_array(x, what)
    if a.ndim != 1:
        raise ValueError(f"{what} must be a flat list of token ids, got shape {a.shape}")
    return a


class SidIndex:
    """Immutable prefix trie over the SIDs of a catalog, one root per item type.

    Build it with :meth:`build` or read it with :meth:`load`. Memory is about 14-16 bytes per item
    for 4 levels of 256 codes (see ``BENCHMARKS.md``).
    """

    def __init__(self, core: "_core.SidIndex", layout: TokenLayout):
        self._core = core
        self.layout = layout

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls,
        layout: TokenLayout,
        sid_tokens: Mapping[str, Any] | Sequence[Any],
        item_rows: Mapping[str, Any] | Sequence[Any] | None = None,
    ) -> "SidIndex":
        """Build the index from SID token ids.

        Parameters
        ----------
        layout : TokenLayout
            Where each (type, level) band lives in the vocabulary.
        sid_tokens : mapping type name -> int array (N_t, L_t), or a sequence in layout order
            Token ids of every item's SID (``layout.codes_to_tokens`` makes them from codes).
            A type may have zero items.
        item_rows : same structure with int arrays (N_t,), optional
            Catalog row of each SID (non-negative, unique across types). Default: rows numbered
            consecutively over the types in layout order.

        Raises
        ------
        ValueError
            Tokens outside their level's band (names type, row and level), duplicate SIDs (names
            the rows), duplicate item rows, empty catalog, shape mismatches.
        """
        tokens = cls._per_type(layout, sid_tokens, "sid_tokens")
        if item_rows is None:
            rows, start = [], 0
            for t in tokens:
                n = int(np.shape(t)[0]) if np.ndim(t) == 2 else 0
                rows.append(np.arange(start, start + n, dtype=np.int32))
                start += n
        else:
            rows = cls._per_type(layout, item_rows, "item_rows")
        toks = []
        for ti, t in enumerate(tokens):
            a = _int_array(t, f"sid_tokens[{layout.types[ti].name!r}]")
            if a.size == 0 and a.ndim != 2:
                a = a.reshape(0, layout.types[ti].levels)
            if a.ndim != 2 or a.shape[1] != layout.types[ti].levels:
                raise ValueError(
                    f"sid_tokens for type {layout.types[ti].name!r} must have shape (N, {layout.types[ti].levels}), got {a.shape}"
                )
            toks.append(a)
        core = _core.SidIndex.build(
            layout.vocab_size,
            layout.open_id,
            layout.close_id,
            [list(t.band_starts) for t in layout.types],
            [list(t.codebook_sizes) for t in layout.types],
            toks,
            [_int_array(r, f"item_rows[{layout.types[ti].name!r}]") for ti, r in enumerate(rows)],
        )
        return cls(core, layout)

    @staticmethod
    def _per_type(layout: TokenLayout, values: Mapping[str, Any] | Sequence[Any], what: str) -> list[Any]:
        if isinstance(values, Mapping):
            unknown = set(values) - set(layout.type_names)
            if unknown:
                raise ValueError(f"{what}: unknown item type(s) {sorted(unknown)}; layout types: {layout.type_names}")
            empty = (lambda t: np.zeros((0, t.levels), np.int32)) if what == "sid_tokens" else (lambda t: np.zeros(0, np.int32))
            return [values[t.name] if t.name in values else empty(t) for t in layout.types]
        values = list(values)
        if len(values) != layout.num_types:
            raise ValueError(f"{what}: got {len(values)} arrays for {layout.num_types} item types")
        return values

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Write the index (versioned binary with a checksum) atomically: an existing file at
        ``path`` is replaced only once the new one is completely written."""
        self._core.save(os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike, layout: TokenLayout | None = None, *, mmap: bool = False) -> "SidIndex":
        """Read an index written by :meth:`save`.

        Parameters
        ----------
        layout : TokenLayout, optional
            Expected layout (gives the type names). If given, it must agree with the file's bands.
        mmap : bool
            Memory-map the file instead of reading it (pages load on demand; the file must stay).

        Raises
        ------
        IndexFormatError
            Missing, truncated, corrupted (checksum) or wrong-version file, or a path that is not a
            regular file (a FIFO, directory, device or socket fails at once; it never blocks).
        ValueError
            The file's layout disagrees with ``layout``.
        """
        core = _core.SidIndex.load(os.fspath(path), mmap)
        types = [
            TypeBands(f"type{t}", tuple(core.band_sizes(t)), tuple(core.band_starts(t))) for t in range(core.num_types)
        ]
        found = TokenLayout(core.vocab_size, core.open_id, core.close_id, types)
        if layout is not None:
            mine = found.to_dict()
            theirs = layout.to_dict()
            for d in (mine, theirs):
                for t in d["types"]:
                    t.pop("name")
            if mine != theirs:
                raise ValueError(f"index file {os.fspath(path)!r} was built for {found!r}, which differs from the given {layout!r}")
            found = layout
        return cls(core, found)

    # ------------------------------------------------------------------ queries
    @property
    def num_items(self) -> int:
        return self._core.num_items

    @property
    def num_types(self) -> int:
        return self._core.num_types

    @property
    def memory_bytes(self) -> int:
        """Bytes held by the trie arrays and the item -> leaf map."""
        return self._core.memory_bytes

    def num_type_items(self, type_: int | str) -> int:
        return self._core.num_type_items(self.layout.type_index(type_))

    def lookup(self, sid_tokens: Any, type_: int | str | None = None) -> np.ndarray:
        """Item rows of full SIDs.

        Parameters
        ----------
        sid_tokens : int array (M, L)
            Token ids of M SIDs (all of the same length L).
        type_ : type name or index, optional
            Default: inferred per SID from its first token.

        Returns
        -------
        np.ndarray int32 (M,)
            Item row, or -1 where no item has that SID.
        """
        t = -1 if type_ is None else self.layout.type_index(type_)
        return self._core.lookup(_int_array(sid_tokens, "sid_tokens"), t)

    def contains(self, sid_tokens: Any, type_: int | str | None = None) -> np.ndarray:
        """Boolean (M,): whether each SID names an item."""
        return self.lookup(sid_tokens, type_) >= 0

    def item_tokens(self, item_rows: Any) -> tuple[np.ndarray, np.ndarray]:
        """SIDs of items: ``(types int32 (M,), tokens int32 (M, max L))`` padded with -1."""
        return self._core.item_tokens(_int_array(item_rows, "item_rows"))

    def children(self, type_: int | str, node: int) -> np.ndarray:
        """Token ids (ascending) of the children of internal node ``node`` of a type."""
        return self._core.children(self.layout.type_index(type_), as_int(node, "node"))

    def arrays(self, type_: int | str) -> dict[str, np.ndarray]:
        """Zero-copy read-only views of a type's flat trie arrays (layout in ``csrc/README.md``):
        ``depth_begin`` int64 (L+2,), ``child_begin`` uint32 (internal+1,), ``code`` uint16 (nodes,),
        ``leaf_item`` int32 (leaves,), ``band_start`` / ``band_size`` int32 (L,)."""
        return self._core.arrays(self.layout.type_index(type_))

    def level_stats(self) -> list[dict[str, Any]]:
        """Per (type, depth): node count, mean and max children."""
        stats = self._core.level_stats()
        for s in stats:
            s["type_name"] = self.layout.types[s["type"]].name
        return stats

    def __repr__(self) -> str:
        return f"SidIndex(items={self.num_items}, {self.layout!r}, memory={self.memory_bytes / 1e6:.1f} MB)"


class DecodeState:
    """Constrained-decoding state of a batch of rows (DESIGN.md section 2).

    Parameters
    ----------
    index : SidIndex
    num_rows : int
        Batch rows (sequences or beams); :meth:`reorder` can change it.
    eos_token_ids : iterable of int
        Tokens that end a row (``TEXT -> DONE``). DONE and ERROR rows allow only these.
    separator_token_ids : iterable of int
        Text tokens allowed between spans in the ``ids`` format (e.g. ``","`` or newline).
    num_threads : int
        0 = all cores for batches of 512+ rows, 1 = single-threaded.

    Per-row options (:meth:`set_row_options`): output format, allowed item types, excluded items,
    allow-list, whether items emitted in this answer are excluded from the rest of it, and an item
    limit. A token that breaks the rules never raises: that row enters the sticky ERROR status and
    :meth:`error` says why.

    Every token id, item row, row index and count given to this class must be an integer (Python
    or numpy ints, integer arrays or tensors): floats such as ``2.5`` (or ``2.0``) and booleans raise
    ``TypeError`` rather than being truncated.
    """

    def __init__(
        self,
        index: SidIndex,
        num_rows: int,
        eos_token_ids: Iterable[int] = (),
        separator_token_ids: Iterable[int] = (),
        num_threads: int = 0,
    ):
        self.index = index
        self._core = _core.DecodeState(
            index._core, as_int(num_rows, "num_rows"), _id_list(eos_token_ids, "eos_token_ids"),
            _id_list(separator_token_ids, "separator_token_ids"), as_int(num_threads, "num_threads"),
        )

    @property
    def num_rows(self) -> int:
        return self._core.num_rows

    @property
    def bitmask_shape(self) -> tuple[int, int]:
        """``(num_rows, ceil(vocab_size / 32))``."""
        return (self._core.num_rows, self._core.mask_words)

    def set_row_options(
        self,
        row: int,
        *,
        format: str = "mixed",
        allowed_types: Iterable[int | str] | None = None,
        exclude: Any = None,
        allow: Any = None,
        exclude_emitted: bool = True,
        max_items: int | None = None,
    ) -> None:
        """Configure one row and put it back in TEXT status.

        Parameters
        ----------
        format : {"mixed", "ids", "text"}
            ``ids``: only spans, separators and EOS; ``text``: no spans; ``mixed``: both.
        allowed_types : iterable of type names or indices, optional
            Types whose spans may open (default: all).
        exclude : int array of item rows, optional
            Items never to emit (e.g. the user's history). Every row must be in the index.
        allow : int array of item rows, optional
            If given, only these items may be emitted (business rules).
        exclude_emitted : bool
            Items completed earlier in this row are not offered again.
        max_items : int, optional
            After this many items, no new span opens.
        """
        types = None
        if allowed_types is not None:
            if isinstance(allowed_types, (str, int, np.integer)):
                allowed_types = [allowed_types]  # one type given bare
            types = np.asarray([self.index.layout.type_index(t) for t in allowed_types], dtype=np.int64)
        ex = None if exclude is None else _int_array(exclude, "exclude")
        al = None if allow is None else _int_array(allow, "allow")
        self._core.set_row_options(
            as_int(row, "row"), format, types, ex, al, bool(exclude_emitted),
            -1 if max_items is None else as_int(max_items, "max_items"),
        )

    def fill_next_token_bitmask(self, bitmask: Any, indices: Any = None, *, incremental: bool = False) -> None:
        """Write each row's allowed-token mask.

        Parameters
        ----------
        bitmask : int32 array or CPU tensor (rows, W), W >= ceil(vocab/32)
            Packed bitmask; bit j of word w is token 32*w + j, 1 = allowed. Row r of the state is
            written to row r. Words past the vocabulary are set to 0. Any view works whose words
            are contiguous within a row (e.g. a column slice ``big[:, k:k + W]`` of a wider array,
            or rows at any stride): exactly its W words per row are written, nothing around them.
            An empty batch (0 state rows) is a no-op.
        indices : int array, optional
            Only these state rows (each into the same bitmask row); they must be distinct.
        incremental : bool
            Rewrite only what changed since this buffer was last filled (inside a span only the SID
            band): much faster, but the caller must not modify ``bitmask`` between calls.

        Raises
        ------
        TypeError
            ``bitmask`` is not native int32, or ``indices`` are not integers.
        ValueError
            Fewer than ceil(vocab/32) words per row (the message says how many), a read-only or
            misaligned array, words not contiguous within a row, overlapping rows, too few rows,
            or indices out of range or repeated.
        """
        arr = _to_numpy(bitmask, "bitmask")
        idx = None if indices is None else _int_array(indices, "indices")
        self._core.fill_next_token_bitmask(arr, idx, bool(incremental))

    def advance(self, tokens: Any, indices: Any = None) -> np.ndarray:
        """Advance every row (or ``indices``) by one token.

        Parameters
        ----------
        tokens : int array (num_rows,) or (len(indices),)
        indices : int array, optional

        Returns
        -------
        np.ndarray int32
            Per given row: the item row whose span this token closed, else -1.
        """
        idx = None if indices is None else _int_array(indices, "indices")
        return self._core.advance(_int_array(tokens, "tokens").reshape(-1), idx)

    def reorder(self, src: Any) -> None:
        """New row i becomes a copy of old row ``src[i]`` (beam search); ``len(src)`` rows after."""
        self._core.reorder(_int_array(src, "src"))

    def reset(self, rows: Any = None) -> None:
        """Rows (default all) back to TEXT with their options; emitted items and errors cleared."""
        self._core.reset(None if rows is None else _int_array(rows, "rows"))

    @property
    def status(self) -> np.ndarray:
        """int8 (num_rows,): :class:`RowStatus` values."""
        return self._core.status

    @property
    def depth(self) -> np.ndarray:
        """int32 (num_rows,): SID levels written in the open span (0 right after ``[SID]``)."""
        return self._core.depth

    def error(self, row: int) -> str:
        """Why a row is in ERROR status ("" otherwise)."""
        return self._core.error(as_int(row, "row"))

    def errors(self) -> dict[int, str]:
        """All rows in ERROR status with their reasons."""
        return {int(r): self._core.error(int(r)) for r in np.flatnonzero(self.status == RowStatus.ERROR)}

    def emitted(self, row: int) -> np.ndarray:
        """int32: item rows completed by this row so far, in order."""
        return self._core.emitted(as_int(row, "row"))

    def is_allowed(self, row: int, token: int) -> bool:
        """Whether ``token`` is allowed in ``row`` now (same rules as the mask)."""
        return self._core.is_allowed(as_int(row, "row"), as_int(token, "token"))
