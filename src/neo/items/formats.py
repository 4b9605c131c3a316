"""Which format a user's data file is in: CSV, TSV, JSONL, JSON, Parquet or a sequence file.

Catalogs (:meth:`neo.Catalog.load`) and interactions (:func:`neo.items.datasets.read_interactions`)
are read through :func:`detect_format`, so both accept the same files the same way:

* the extension names the format (``.csv``, ``.tsv``/``.tab``, ``.jsonl``/``.ndjson``, ``.json``,
  ``.parquet``/``.pq``; ``.gz`` on top of a text format is decompressed), and the content confirms
  it: a Parquet file must start with the ``PAR1`` magic bytes, a text file whose first line opens
  a JSON object is JSONL whatever its extension, and the delimiter of a delimited file is taken
  from its first line (tab, comma, ``|``, ``;`` or ml-1m's ``::``);
* without a known extension the content decides alone; a text file whose lines hold only
  whitespace-separated ids is a sequence file (``user item item ...``, the P5 / S3-Rec layout).

Problems raise :class:`DataFileError` (a :class:`~neo.core.errors.NeoDataError`) whose message
names the file and how to fix it on its first line.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Sequence

from ..core.errors import NeoDataError

__all__ = ["DataFileError", "FileFormat", "detect_format", "open_text", "FORMATS"]

#: the formats :func:`detect_format` returns
FORMATS = ("csv", "jsonl", "json", "parquet", "sequences")

_TEXT_EXT = {".csv": "csv", ".tsv": "csv", ".tab": "csv", ".dat": "csv", ".txt": None, ".data": "csv",
             ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".inter": "csv"}
_PARQUET_EXT = (".parquet", ".pq")
# delimiters tried on the first line, in order of preference when several occur
_DELIMS = ("\t", ",", "|", ";")
_SNIFF_BYTES = 1 << 16


class DataFileError(NeoDataError):
    """A data file is empty, unreadable or not in the format its name or content says."""


@dataclass(frozen=True)
class FileFormat:
    """What :func:`detect_format` found.

    Attributes
    ----------
    kind : {"csv", "jsonl", "json", "parquet", "sequences"}
        ``csv`` covers every delimited text format (TSV included; see ``delimiter``).
    delimiter : str or None
        For ``csv``: the field separator (``"\\t"``, ``","``, ``"|"``, ``";"`` or ``"::"``).
    gzip : bool
        The file is gzip-compressed (read through :func:`open_text`).
    how : str
        ``"extension"`` or ``"content"``: what decided the format (for reports).
    """

    kind: str
    delimiter: str | None = None
    gzip: bool = False
    how: str = "extension"

    def describe(self) -> str:
        """A short name for reports: ``"TSV"``, ``"CSV (';')"``, ``"JSONL (gzip)"``, ..."""
        if self.kind == "csv":
            name = {"\t": "TSV", ",": "CSV"}.get(self.delimiter or ",", f"delimited ({self.delimiter!r})")
        else:
            name = {"jsonl": "JSONL", "json": "JSON", "parquet": "Parquet", "sequences": "sequences"}[self.kind]
        return name + (" (gzip)" if self.gzip else "")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def open_text(path: str | os.PathLike, encoding: str = "utf-8", errors: str = "strict") -> IO[str]:
    """Open a text data file for reading, decompressing gzip and dropping a UTF-8 byte-order mark.

    Lines are split on ``\\n`` only (``newline=""``), as the csv module expects."""
    p = Path(path)
    enc = "utf-8-sig" if encoding.replace("_", "-").lower() in ("utf-8", "utf8") else encoding
    if _is_gzip(p):
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding=enc, errors=errors, newline="")
    return open(p, encoding=enc, errors=errors, newline="")


def _head(path: Path, gz: bool) -> bytes:
    if gz:
        with gzip.open(path, "rb") as fh:
            try:
                return fh.read(_SNIFF_BYTES)
            except (OSError, EOFError) as e:
                raise DataFileError(f"{path.name}: gzip data is corrupt ({e}); decompress it to check the "
                                    "file") from None
    with open(path, "rb") as fh:
        return fh.read(_SNIFF_BYTES)


def _first_lines(head: bytes, n: int = 2) -> list[str]:
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff")
    out = []
    for line in text.split("\n"):
        if line.strip():
            out.append(line.rstrip("\r"))
            if len(out) == n:
                break
    return out


def _sniff_delimiter(line: str, prefer: str | None) -> str | None:
    if "::" in line and not any(d in line for d in _DELIMS):
        return "::"
    found = [d for d in _DELIMS if d in line]
    if not found:
        return None
    if prefer in found:
        return prefer
    return max(found, key=line.count)


def detect_format(path: str | os.PathLike, *, allow_sequences: bool = True) -> FileFormat:
    """The format of a data file, by extension and content (see the module docstring).

    Parameters
    ----------
    path : path-like
    allow_sequences : bool
        Whether a whitespace-separated sequence file is acceptable (interactions: yes; catalogs: no,
        they need named columns).

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    DataFileError
        A directory, an empty file, a ``.parquet`` file that is not Parquet, or text whose
        format cannot be told.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(2, "no such file", str(p))
    if p.is_dir():
        raise DataFileError(f"{p}: is a directory; give the data file itself")
    name = p.name
    gz = _is_gzip(p)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".gzip"):
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    head = _head(p, gz)
    if head[:4] == b"PAR1":
        return FileFormat("parquet", how="extension" if ext in _PARQUET_EXT else "content")
    if ext in _PARQUET_EXT:
        what = "it is empty" if not head.strip() else f"it starts with {head[:24]!r}"
        raise DataFileError(f"{name}: not a Parquet file ({what}; Parquet files start with 'PAR1'); "
                            "write it with pandas.DataFrame.to_parquet / pyarrow, or give a .csv/.jsonl name "
                            "if it is text")
    if b"\x00" in head[:4096]:
        raise DataFileError(f"{name}: binary content that is not Parquet or gzip; give a CSV, TSV, JSONL, JSON "
                            "or Parquet file")
    lines = _first_lines(head)
    if not lines:
        raise DataFileError(f"{name}: the file is empty; it needs a header row and at least one record")
    first = lines[0].lstrip("\ufeff").lstrip()
    kind = _TEXT_EXT.get(ext)
    how = "extension" if ext in _TEXT_EXT and kind is not None else "content"
    if first.startswith("{"):
        # JSON lines whatever the extension, unless a .json file holds one object (id -> fields/items)
        if kind == "json":
            return FileFormat("json", gzip=gz, how=how)
        return FileFormat("jsonl", gzip=gz, how="extension" if kind == "jsonl" else "content")
    if first.startswith("["):
        return FileFormat("json", gzip=gz, how="extension" if kind == "json" else "content")
    if kind in ("jsonl", "json"):
        raise DataFileError(f"{name}: line 1 is not a JSON object or array ({first[:40]!r}); a {ext} file needs "
                            "one JSON object per line (JSONL), a JSON array of objects or an object keyed by id")
    prefer = "\t" if ext in (".tsv", ".tab") else ("," if ext == ".csv" else None)
    delim = _sniff_delimiter(first, prefer)
    if delim is not None:
        return FileFormat("csv", delimiter=delim, gzip=gz, how=how)
    if allow_sequences and len(first.split()) >= 2:
        return FileFormat("sequences", gzip=gz, how="content")
    if len(lines) == 1 and len(first.split()) == 1 and kind == "csv":
        # one column and no data: let the reader say what is missing
        return FileFormat("csv", delimiter=prefer or ",", gzip=gz, how=how)
    raise DataFileError(f"{name}: cannot tell the format from line 1 ({first[:40]!r}): no tab, comma, '|' or ';' "
                        "separates its columns; give a CSV/TSV file with a header row, JSONL or Parquet")


def json_error(name: str, where: str, e: json.JSONDecodeError) -> str:
    """``"items.jsonl:3: not valid JSON (Expecting value at column 1)"`` plus the fix."""
    return f"{name}{where}: not valid JSON ({e.msg} at column {e.colno}); fix or remove that line"


def column_matches(names: Sequence[str], wanted: Sequence[str]) -> str | None:
    """The first name of ``names`` matching one of ``wanted`` (case-insensitive; RecBole-style
    ``name:token`` type suffixes ignored), trying ``wanted`` in order."""
    low: dict[str, str] = {}
    for n in names:
        key = str(n).strip().lower()
        low.setdefault(key, n)
        low.setdefault(key.split(":", 1)[0], n)
    for w in wanted:
        if w.lower() in low:
            return low[w.lower()]
    return None
