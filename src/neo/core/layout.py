"""Token layout of semantic IDs inside a tokenizer's vocabulary (DESIGN.md section 2).

Every item type ``t`` has ``L_t`` levels; level ``l`` has a codebook of ``K_{t,l}`` codes. The SID
tokens form one contiguous block: the two span delimiters ``[SID]`` and ``[/SID]`` first, then one
disjoint band of ``K_{t,l}`` token ids per (type, level), types in order, levels in order. A token
id alone therefore tells its type and level, and code ``c`` of level ``l`` of type ``t`` is token
``band_starts[l] + c``.

This module is pure Python/numpy: it is shared by the SID builder, the vocabulary that installs the
tokens into a Hugging Face tokenizer, and the C++ index (which receives the bands as plain ints).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["TypeBands", "TokenLayout", "as_int", "as_int_array"]


def as_int(value: Any, what: str) -> int:
    """``value`` as a Python ``int``, refusing anything that is not already an integer.

    Accepts ``int``, numpy integers and 0-d integer arrays/tensors. A float (``2.5``, even ``2.0``),
    a boolean, a string or ``None`` raises ``TypeError`` naming ``what``: a token id, row or count
    that is not an integer is a bug upstream, and truncating it would hide that bug.
    """
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be an integer, got the boolean {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if getattr(value, "ndim", None) == 0 and hasattr(value, "dtype") and hasattr(value, "item"):
        dt = value.dtype  # a 0-d numpy array or torch tensor
        if isinstance(dt, np.dtype):
            integer = dt.kind in "iu"
        else:
            integer = not (dt.is_floating_point or dt.is_complex) and str(dt) != "torch.bool"
        if integer:
            return int(value.item())
    raise TypeError(f"{what} must be an integer, got {type(value).__name__} {value!r}")


def as_int_array(values: Any, what: str) -> np.ndarray:
    """``values`` (an array or a (nested) list) as a numpy integer array, refusing non-integers.

    Integer arrays pass through without a copy; an empty list becomes ``int64``; lists of Python
    ints too large for numpy's default become ``int64`` (``ValueError`` if they do not fit).

    Raises
    ------
    TypeError
        Floats (even integral ones such as ``2.0``), booleans or other objects, naming ``what``.
    """
    a = values if isinstance(values, np.ndarray) else np.asarray(values)
    kind = a.dtype.kind
    if kind in "iu":
        return a
    if a.size == 0 and not isinstance(values, np.ndarray) and kind == "f":
        return a.astype(np.int64)  # [] defaults to float64; an empty id list is fine
    if kind == "O":
        flat = a.reshape(-1).tolist()
        bad = [v for v in flat if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer))][:1]
        if not bad:
            try:
                return np.asarray(a.tolist(), dtype=np.int64)
            except OverflowError:
                raise ValueError(f"{what} has a value that does not fit int64") from None
        raise TypeError(f"{what} must hold integers, got {type(bad[0]).__name__} {bad[0]!r}")
    if kind == "b":
        raise TypeError(f"{what} must have an integer dtype, got bool; pass ids (e.g. np.flatnonzero(mask)), not a mask")
    flat = a.reshape(-1)
    if kind == "f" and flat.size:
        odd = flat[~np.isfinite(flat) | (np.mod(flat, 1) != 0)]
        flat = odd if odd.size else flat
    example = flat[0].item() if flat.size else None
    raise TypeError(
        f"{what} must have an integer dtype, got {a.dtype}" + (f" (e.g. {example!r})" if example is not None else "")
        + "; convert exact integer values explicitly, e.g. with .astype(np.int64)"
    )


@dataclass(frozen=True)
class TypeBands:
    """Token bands of one item type.

    Attributes
    ----------
    name : str
        Item type name (e.g. ``"movie"``).
    codebook_sizes : tuple[int, ...]
        ``K`` per level; ``len(codebook_sizes)`` is the number of levels ``L``.
    band_starts : tuple[int, ...]
        Token id of code 0 at each level.
    """

    name: str
    codebook_sizes: tuple[int, ...]
    band_starts: tuple[int, ...]

    @property
    def levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def token_begin(self) -> int:
        return self.band_starts[0]

    @property
    def token_end(self) -> int:
        return self.band_starts[-1] + self.codebook_sizes[-1]


class TokenLayout:
    """Where the SID tokens of every item type live in the vocabulary.

    Parameters
    ----------
    vocab_size : int
        Size of the full vocabulary (text tokens plus SID block), i.e. the model's logits width.
    open_id, close_id : int
        Token ids of ``[SID]`` and ``[/SID]``.
    types : sequence of TypeBands
        One entry per item type, in type-index order.

    Use :meth:`contiguous` to allocate a fresh layout after an existing vocabulary.
    """

    def __init__(self, vocab_size: int, open_id: int, close_id: int, types: Sequence[TypeBands]):
        self.vocab_size = as_int(vocab_size, "vocab_size")
        self.open_id = as_int(open_id, "open_id")
        self.close_id = as_int(close_id, "close_id")
        self.types: tuple[TypeBands, ...] = tuple(
            TypeBands(t.name, tuple(as_int(k, f"type {t.name!r} codebook size") for k in t.codebook_sizes),
                      tuple(as_int(b, f"type {t.name!r} band start") for b in t.band_starts))
            for t in types
        )
        self._validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def contiguous(
        cls,
        base_vocab_size: int,
        codebook_sizes: Mapping[str, Sequence[int]],
        *,
        pad_to_multiple_of: int = 1,
    ) -> "TokenLayout":
        """Allocate ``[SID]``, ``[/SID]`` and all bands right after ``base_vocab_size`` ids.

        Parameters
        ----------
        base_vocab_size : int
            Number of existing (text) token ids; the SID block starts here.
        codebook_sizes : mapping of type name -> sequence of int
            ``K`` per level for each type, in the order the types get their bands.
        pad_to_multiple_of : int
            Round the total vocabulary up to a multiple of this (GPU-friendly embedding sizes);
            padded ids are ordinary (never-generated) text ids.
        """
        base_vocab_size = as_int(base_vocab_size, "base_vocab_size")
        if base_vocab_size < 0:
            raise ValueError(f"base_vocab_size must be >= 0, got {base_vocab_size}")
        if not codebook_sizes:
            raise ValueError("codebook_sizes is empty: a layout needs at least one item type")
        nxt = base_vocab_size
        open_id, close_id = nxt, nxt + 1
        nxt += 2
        types = []
        for name, sizes in codebook_sizes.items():
            sizes = tuple(as_int(k, f"codebook size of type {name!r}") for k in sizes)
            starts = []
            for k in sizes:
                starts.append(nxt)
                nxt += k
            types.append(TypeBands(str(name), sizes, tuple(starts)))
        m = max(1, as_int(pad_to_multiple_of, "pad_to_multiple_of"))
        vocab = -(-nxt // m) * m
        return cls(vocab, open_id, close_id, types)

    def _validate(self) -> None:
        if not self.types:
            raise ValueError("TokenLayout needs at least one item type")
        names = [t.name for t in self.types]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate item type names in layout: {names}")
        for tok, what in ((self.open_id, "open_id"), (self.close_id, "close_id")):
            if not 0 <= tok < self.vocab_size:
                raise ValueError(f"{what}={tok} outside the vocabulary [0, {self.vocab_size})")
        if self.open_id == self.close_id:
            raise ValueError("open_id and close_id must differ")
        spans = []
        for t in self.types:
            if t.levels == 0 or len(t.band_starts) != t.levels:
                raise ValueError(f"type {t.name!r}: needs >= 1 level and one band start per level")
            for lvl, (s, k) in enumerate(zip(t.band_starts, t.codebook_sizes)):
                if k < 1 or k > 65536:
                    raise ValueError(f"type {t.name!r} level {lvl}: codebook size {k} not in [1, 65536]")
                if s < 0 or s + k > self.vocab_size:
                    raise ValueError(
                        f"type {t.name!r} level {lvl}: band [{s}, {s + k}) outside the vocabulary "
                        f"[0, {self.vocab_size})"
                    )
                spans.append((s, s + k, f"{t.name}/level{lvl}"))
        spans.append((self.open_id, self.open_id + 1, "[SID]"))
        spans.append((self.close_id, self.close_id + 1, "[/SID]"))
        spans.sort()
        for (a0, a1, an), (b0, b1, bn) in zip(spans, spans[1:]):
            if b0 < a1:
                raise ValueError(f"token bands overlap: {an} [{a0}, {a1}) and {bn} [{b0}, {b1})")

    # ------------------------------------------------------------------ queries
    @property
    def num_types(self) -> int:
        return len(self.types)

    @property
    def type_names(self) -> list[str]:
        return [t.name for t in self.types]

    def type_index(self, type_: int | str) -> int:
        """Index of a type given by name or index; raises ``KeyError`` naming the known types and
        ``TypeError`` for anything but a name or an integer index."""
        if isinstance(type_, (bool, np.bool_)) or not isinstance(type_, (str, int, np.integer)):
            raise TypeError(f"an item type is a name or an integer index, got {type(type_).__name__} {type_!r}")
        if isinstance(type_, (int, np.integer)):
            if not 0 <= int(type_) < self.num_types:
                raise KeyError(f"type index {type_} out of range [0, {self.num_types})")
            return int(type_)
        for i, t in enumerate(self.types):
            if t.name == type_:
                return i
        raise KeyError(f"unknown item type {type_!r}; known types: {self.type_names}")

    @property
    def sid_token_begin(self) -> int:
        """First id of the SID block (delimiters and bands)."""
        return min(self.open_id, self.close_id, *(t.token_begin for t in self.types))

    @property
    def sid_token_end(self) -> int:
        """One past the last id of the SID block."""
        return max(self.open_id + 1, self.close_id + 1, *(t.token_end for t in self.types))

    def codes_to_tokens(self, type_: int | str, codes: np.ndarray) -> np.ndarray:
        """Map codes ``int[N, L]`` of one type to token ids ``int32[N, L]``.

        Raises ``ValueError`` naming the first row and level whose code is outside ``[0, K)``.
        """
        t = self.types[self.type_index(type_)]
        codes = as_int_array(codes, f"codes of type {t.name!r}")
        if codes.ndim != 2 or codes.shape[1] != t.levels:
            raise ValueError(f"codes for type {t.name!r} must have shape (N, {t.levels}), got {codes.shape}")
        k = np.asarray(t.codebook_sizes)
        bad = (codes < 0) | (codes >= k)
        if bad.any():
            r, lvl = map(int, np.argwhere(bad)[0])
            raise ValueError(
                f"type {t.name!r}: code {int(codes[r, lvl])} at row {r}, level {lvl} outside [0, {int(k[lvl])})"
            )
        return (codes.astype(np.int64) + np.asarray(t.band_starts)).astype(np.int32)

    def tokens_to_codes(self, type_: int | str, tokens: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`codes_to_tokens`; raises ``ValueError`` on tokens outside the bands."""
        t = self.types[self.type_index(type_)]
        tokens = as_int_array(tokens, f"tokens of type {t.name!r}")
        if tokens.ndim != 2 or tokens.shape[1] != t.levels:
            raise ValueError(f"tokens for type {t.name!r} must have shape (N, {t.levels}), got {tokens.shape}")
        codes = tokens.astype(np.int64) - np.asarray(t.band_starts)
        bad = (codes < 0) | (codes >= np.asarray(t.codebook_sizes))
        if bad.any():
            r, lvl = map(int, np.argwhere(bad)[0])
            raise ValueError(
                f"type {t.name!r}: token {int(tokens[r, lvl])} at row {r}, level {lvl} is not in that level's band"
            )
        return codes.astype(np.int32)

    def classify(self, token: int) -> tuple[int, int] | None:
        """``(type_index, level)`` of a SID code token, or ``None`` for any other token."""
        token = as_int(token, "token")
        for ti, t in enumerate(self.types):
            for lvl, (s, k) in enumerate(zip(t.band_starts, t.codebook_sizes)):
                if s <= token < s + k:
                    return ti, lvl
        return None

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return {
            "vocab_size": self.vocab_size,
            "open_id": self.open_id,
            "close_id": self.close_id,
            "types": [
                {"name": t.name, "codebook_sizes": list(t.codebook_sizes), "band_starts": list(t.band_starts)}
                for t in self.types
            ],
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "TokenLayout":
        try:
            types: Iterable[TypeBands] = [
                TypeBands(str(t["name"]), tuple(t["codebook_sizes"]), tuple(t["band_starts"])) for t in d["types"]
            ]
            return cls(d["vocab_size"], d["open_id"], d["close_id"], list(types))
        except KeyError as e:
            raise ValueError(f"token layout is missing field {e.args[0]!r}") from None
        except TypeError as e:  # a document, not a call: a wrong value is a data error
            raise ValueError(f"token layout has a malformed field: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "TokenLayout":
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TokenLayout) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        ts = ", ".join(f"{t.name}:{'x'.join(map(str, t.codebook_sizes))}" for t in self.types)
        return f"TokenLayout(vocab_size={self.vocab_size}, open={self.open_id}, close={self.close_id}, types=[{ts}])"
