"""SID vocabulary: the token strings and ids of semantic IDs inside a Hugging Face tokenizer.

A :class:`SidVocab` pairs a :class:`~neo.core.layout.TokenLayout` (which id is which (type, level, code))
with the token *strings* a tokenizer knows them by:

* span delimiters ``[SID]`` and ``[/SID]``;
* one string per code, ``<sid_{type}_{level}_{code}>`` (e.g. ``<sid_movie_0_17>``).

The ids are contiguous right after the tokenizer's existing ones (DESIGN.md section 2), in the
order ``[SID]``, ``[/SID]``, then one band per (type, level). :meth:`SidVocab.install` adds the
strings to any fast tokenizer and checks that every string got exactly the id the layout says, so
the tokenizer, the trie and the model rows can never silently disagree.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.layout import TokenLayout, as_int
from ..core.errors import NeoDataError

__all__ = ["SidVocab", "VocabMismatchError"]

VOCAB_FORMAT_VERSION = 1


class VocabMismatchError(NeoDataError):
    """A tokenizer, model, index or saved file disagrees with a :class:`SidVocab`."""


def _tokenizer_size(tokenizer: Any) -> int:
    """Number of ids a tokenizer can produce (base vocabulary plus added tokens)."""
    return int(len(tokenizer))


class SidVocab:
    """Token strings and ids of every SID token.

    Parameters
    ----------
    layout : TokenLayout
        Band of every (type, level) and the delimiter ids.
    open_token, close_token : str
        Strings of the span delimiters.
    prefix : str
        Code tokens are named ``<{prefix}_{type}_{level}_{code}>``.

    Use :meth:`for_tokenizer` (or :meth:`from_sids`) to allocate the ids right after a tokenizer's
    vocabulary, then :meth:`install` to add the strings to it.
    """

    def __init__(self, layout: TokenLayout, *, open_token: str = "[SID]", close_token: str = "[/SID]",
                 prefix: str = "sid"):
        self.layout = layout
        self.open_token = str(open_token)
        self.close_token = str(close_token)
        self.prefix = str(prefix)
        if self.open_token == self.close_token:
            raise ValueError(f"open_token and close_token must differ, both are {self.open_token!r}")
        strings = self.token_strings()
        if len(set(strings)) != len(strings):
            raise ValueError("SID token strings are not unique; use item type names that differ after formatting")

    # ------------------------------------------------------------------ construction
    @classmethod
    def for_tokenizer(cls, tokenizer: Any, codebook_sizes: Mapping[str, Sequence[int]], *,
                      pad_to_multiple_of: int = 1, **kwargs: Any) -> "SidVocab":
        """Allocate the SID block right after ``len(tokenizer)`` ids.

        Parameters
        ----------
        tokenizer : PreTrainedTokenizerBase
        codebook_sizes : mapping type name -> K per level
        pad_to_multiple_of : int
            Round the layout's vocabulary size up (GPU-friendly embedding sizes).
        """
        layout = TokenLayout.contiguous(_tokenizer_size(tokenizer), codebook_sizes,
                                        pad_to_multiple_of=pad_to_multiple_of)
        return cls(layout, **kwargs)

    @classmethod
    def from_sids(cls, tokenizer: Any, sids: Any, *, pad_to_multiple_of: int = 1, **kwargs: Any) -> "SidVocab":
        """Vocabulary for a :class:`neo.items.sids.SemanticIds` (anything with ``type_names`` and
        ``codebook_sizes`` per type) after a tokenizer's vocabulary."""
        sizes = {t: list(sids.codebook_sizes[t]) for t in sids.type_names}
        return cls.for_tokenizer(tokenizer, sizes, pad_to_multiple_of=pad_to_multiple_of, **kwargs)

    # ------------------------------------------------------------------ strings and ids
    @property
    def open_id(self) -> int:
        return self.layout.open_id

    @property
    def close_id(self) -> int:
        return self.layout.close_id

    @property
    def vocab_size(self) -> int:
        """Vocabulary size the model's embeddings must have (at least)."""
        return self.layout.vocab_size

    @property
    def type_names(self) -> list[str]:
        return self.layout.type_names

    @property
    def token_begin(self) -> int:
        """First id of the SID block."""
        return self.layout.sid_token_begin

    @property
    def token_end(self) -> int:
        """One past the last id of the SID block."""
        return self.layout.sid_token_end

    @property
    def num_tokens(self) -> int:
        return self.token_end - self.token_begin

    def code_token(self, type_: int | str, level: int, code: int) -> str:
        """String of code ``code`` at ``level`` of a type."""
        level, code = as_int(level, "level"), as_int(code, "code")
        t = self.layout.types[self.layout.type_index(type_)]
        if not 0 <= level < t.levels:
            raise ValueError(f"type {t.name!r} has levels 0..{t.levels - 1}, got level {level}")
        if not 0 <= code < t.codebook_sizes[level]:
            raise ValueError(f"type {t.name!r} level {level}: code {code} outside [0, {t.codebook_sizes[level]})")
        return f"<{self.prefix}_{t.name}_{level}_{code}>"

    def code_token_id(self, type_: int | str, level: int, code: int) -> int:
        t = self.layout.types[self.layout.type_index(type_)]
        self.code_token(type_, level, code)  # validates
        return t.band_starts[level] + as_int(code, "code")

    def token_strings(self) -> list[str]:
        """Strings of ids ``token_begin .. token_end - 1`` in id order."""
        out: list[str | None] = [None] * self.num_tokens
        b = self.token_begin
        out[self.open_id - b] = self.open_token
        out[self.close_id - b] = self.close_token
        for t in self.layout.types:
            for lvl, (s, k) in enumerate(zip(t.band_starts, t.codebook_sizes)):
                for c in range(k):
                    out[s + c - b] = f"<{self.prefix}_{t.name}_{lvl}_{c}>"
        missing = [b + i for i, s in enumerate(out) if s is None]
        if missing:
            raise ValueError(f"the layout's SID block has ids that belong to no band or delimiter: {missing[:5]}")
        return out  # type: ignore[return-value]

    def is_sid_token(self, token_ids: Any) -> np.ndarray:
        """Boolean mask of ids inside the SID block (delimiters and codes)."""
        a = np.asarray(token_ids)
        return (a >= self.token_begin) & (a < self.token_end)

    def span_ids(self, sid_tokens: Sequence[int]) -> list[int]:
        """``[SID] c1 .. cL [/SID]`` as ids."""
        return [self.open_id, *(as_int(t, "SID token id") for t in sid_tokens), self.close_id]

    def span_text(self, sid_tokens: Sequence[int]) -> str:
        """``[SID]<sid_t_0_c1>...[/SID]`` as a string (what the tokenizer turns back into the ids)."""
        parts = [self.open_token]
        for tok in sid_tokens:
            tok = as_int(tok, "token id")
            cls = self.layout.classify(tok)
            if cls is None:
                raise ValueError(f"token id {int(tok)} is not a SID code token")
            ti, lvl = cls
            t = self.layout.types[ti]
            parts.append(f"<{self.prefix}_{t.name}_{lvl}_{int(tok) - t.band_starts[lvl]}>")
        parts.append(self.close_token)
        return "".join(parts)

    # ------------------------------------------------------------------ tokenizer
    def install(self, tokenizer: Any) -> Any:
        """Add the SID token strings to ``tokenizer`` (in place) and verify their ids.

        Idempotent: a tokenizer that already holds exactly these tokens is left unchanged.

        Raises
        ------
        VocabMismatchError
            The tokenizer's size is not the layout's first SID id (the vocabulary was built for
            another tokenizer), a SID string already exists as an ordinary token, or the
            tokenizer assigned different ids than the layout.
        """
        from tokenizers import AddedToken

        strings = self.token_strings()
        n = _tokenizer_size(tokenizer)
        if n >= self.token_end:
            self.check_tokenizer(tokenizer)
            return tokenizer
        if n != self.token_begin:
            raise VocabMismatchError(
                f"tokenizer has {n} tokens but this SID vocabulary starts at id {self.token_begin}; build it "
                f"with SidVocab.for_tokenizer(tokenizer, ...) for this tokenizer"
            )
        vocab = tokenizer.get_vocab()
        clash = [s for s in strings if s in vocab]
        if clash:
            raise VocabMismatchError(f"SID token strings already exist in the tokenizer: {clash[:5]}; choose another prefix")
        # normalized=False: the strings must match verbatim, whatever the tokenizer's normalizer does.
        added = tokenizer.add_tokens(
            [AddedToken(s, single_word=False, lstrip=False, rstrip=False, normalized=False, special=False)
             for s in strings]
        )
        if added != len(strings):
            raise VocabMismatchError(f"tokenizer added {added} of {len(strings)} SID tokens")
        self.check_tokenizer(tokenizer)
        return tokenizer

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise :class:`VocabMismatchError` unless every SID string maps to its layout id."""
        strings = self.token_strings()
        ids = tokenizer.convert_tokens_to_ids(strings)
        expect = range(self.token_begin, self.token_end)
        for s, got, want in zip(strings, ids, expect):
            if got != want:
                raise VocabMismatchError(
                    f"tokenizer maps SID token {s!r} to id {got}, the vocabulary expects {want} "
                    f"(tokenizer size {_tokenizer_size(tokenizer)}, SID block [{self.token_begin}, {self.token_end}))"
                )

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {
            "format": "neo.vocab",
            "version": VOCAB_FORMAT_VERSION,
            "open_token": self.open_token,
            "close_token": self.close_token,
            "prefix": self.prefix,
            "layout": self.layout.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "SidVocab":
        if d.get("format") != "neo.vocab" or int(d.get("version", -1)) > VOCAB_FORMAT_VERSION:
            raise ValueError(f"not a neo SID vocabulary of a supported version: format {d.get('format')!r}, "
                             f"version {d.get('version')!r}")
        return cls(TokenLayout.from_dict(d["layout"]), open_token=d["open_token"], close_token=d["close_token"],
                   prefix=d["prefix"])

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``vocab.json`` (atomically) to ``path`` (a file path or a directory)."""
        p = Path(path)
        if p.is_dir():
            p = p / "vocab.json"
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        os.replace(tmp, p)
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SidVocab":
        p = Path(path)
        if p.is_dir():
            p = p / "vocab.json"
        if not p.exists():
            raise FileNotFoundError(f"no SID vocabulary at {p}")
        return cls.from_dict(json.loads(p.read_text()))

    def fingerprint(self) -> str:
        """SHA-256 of the layout and strings (identifies the vocabulary in a saved system)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SidVocab) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"SidVocab({self.num_tokens} tokens in [{self.token_begin}, {self.token_end}), {self.layout!r})"
