"""Pure-Python oracle of the C++ core: a dict trie and brute-force masks (DESIGN.md section 2).

Deliberately naive (sets of items, recomputed every step) so that it is obviously right; the
differential tests compare the core against it token by token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TEXT, SPAN, DONE, ERROR = 0, 1, 2, 3


@dataclass
class OracleRow:
    status: int = TEXT
    format: str = "mixed"
    allowed_types: set | None = None
    exclude: set = field(default_factory=set)
    allow: set | None = None
    exclude_emitted: bool = True
    max_items: int | None = None
    type: int | None = None
    prefix: tuple = ()
    emitted: list = field(default_factory=list)


class Oracle:
    def __init__(self, layout, sid_tokens, item_rows, eos=(), seps=()):
        self.layout = layout
        self.V = layout.vocab_size
        self.eos, self.seps = set(eos), set(seps)
        self.sid = {}  # item -> (type, tokens tuple)
        for t, (toks, rows) in enumerate(zip(sid_tokens, item_rows)):
            for tk, r in zip(np.asarray(toks).tolist(), np.asarray(rows).tolist()):
                self.sid[int(r)] = (t, tuple(tk))
        self.code_tokens = set()
        for tb in layout.types:
            for s, k in zip(tb.band_starts, tb.codebook_sizes):
                self.code_tokens.update(range(s, s + k))
        self.rows: list[OracleRow] = []

    def offered(self, row: OracleRow) -> list:
        out = []
        for item, (t, _) in self.sid.items():
            if row.allowed_types is not None and t not in row.allowed_types:
                continue
            if item in row.exclude:
                continue
            if row.exclude_emitted and item in row.emitted:
                continue
            if row.allow is not None and item not in row.allow:
                continue
            out.append(item)
        return out

    def can_open(self, row: OracleRow) -> bool:
        if row.format == "text":
            return False
        if row.max_items is not None and len(row.emitted) >= row.max_items:
            return False
        return bool(self.offered(row))

    def allowed(self, row: OracleRow) -> set:
        L = self.layout
        if row.status in (DONE, ERROR):
            return set(self.eos)
        if row.status == TEXT:
            if row.format == "ids":
                s = set(self.seps) | set(self.eos)
            else:
                s = set(range(self.V)) - self.code_tokens - {L.close_id, L.open_id}
            if self.can_open(row):
                s.add(L.open_id)
            return s
        if row.type is not None and len(row.prefix) == L.types[row.type].levels:
            return {L.close_id}
        s = set()
        for item in self.offered(row):
            t, toks = self.sid[item]
            if row.type is not None and t != row.type:
                continue
            if toks[: len(row.prefix)] == row.prefix:
                s.add(toks[len(row.prefix)])
        return s

    def mask(self, row: OracleRow) -> np.ndarray:
        m = np.zeros(self.V, dtype=bool)
        a = self.allowed(row)
        if a:
            m[list(a)] = True
        return m

    def advance(self, row: OracleRow, tok: int) -> int:
        """Returns the completed item row or -1; mirrors the core's transitions."""
        if row.status in (DONE, ERROR):
            return -1
        if tok not in self.allowed(row):
            row.status = ERROR
            return -1
        L = self.layout
        if row.status == TEXT:
            if tok in self.eos:
                row.status = DONE
            elif tok == L.open_id:
                row.status, row.type, row.prefix = SPAN, None, ()
            return -1
        if row.type is not None and len(row.prefix) == L.types[row.type].levels:
            item = next(i for i, (t, tk) in self.sid.items() if t == row.type and tk == row.prefix)
            row.emitted.append(item)
            row.status, row.type, row.prefix = TEXT, None, ()
            return item
        if row.type is None:
            row.type = L.classify(tok)[0]
        row.prefix = row.prefix + (tok,)
        return -1
