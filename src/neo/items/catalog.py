"""Item catalog: stable ids, item types, text fields, popularity and numeric features.

A :class:`Catalog` is the set of things a neo model may name. Every item has a stable string id, one
item type (a catalog can mix several, e.g. ``movie`` and ``tag``), any number of text fields used for
embedding and prompts, an optional popularity (used by the ``popular`` SID collision policy) and
optional numeric features. Rows are numbered ``0..N-1`` in load order; SIDs, tries and model outputs
refer to items by row.

Loading validates every record and reports problems by line (JSONL/CSV) or row (Parquet, records) and
field. Nothing is dropped silently: invalid records raise :class:`CatalogError`, unless
``skip_invalid=True`` was asked for, in which case they are skipped, counted in
:attr:`Catalog.load_report` and announced with a warning.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from ..core.errors import NeoDataError
from .formats import DataFileError, FileFormat, column_matches, detect_format, open_text

__all__ = ["Catalog", "CatalogError", "Item", "LoadIssue", "LoadReport", "ID_COLUMNS", "TYPE_COLUMNS"]

#: column names recognised as the item id / item type of a catalog file (case-insensitive, in order)
ID_COLUMNS = ("id", "item_id", "itemid", "item", "iid", "movieid", "movie_id", "asin", "parent_asin", "product_id",
              "productid", "business_id", "artistid", "artist_id", "track_id", "song_id", "book_id", "isbn",
              "article_id", "video_id", "sku")
TYPE_COLUMNS = ("type", "item_type", "itemtype", "entity_type")

CATALOG_FORMAT_VERSION = 1
_RESERVED = ("id", "type", "popularity")
# Lone surrogates are what ``errors="surrogateescape"`` leaves for undecodable bytes: finding one in
# a field means that field's bytes were not valid in the declared encoding.
_SURROGATE = re.compile("[\udc80-\udcff]")
_MAX_ISSUES_IN_MESSAGE = 20


@dataclass(frozen=True)
class LoadIssue:
    """One problem found while loading: where (``"items.csv:7"``), which field, what is wrong."""

    location: str
    field: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.location}, field {self.field!r}" if self.field else self.location
        return f"{where}: {self.message}"


@dataclass
class LoadReport:
    """What happened while loading: records read and kept, and every skipped record with its reason."""

    source: str
    n_read: int = 0
    n_kept: int = 0
    skipped: list[LoadIssue] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return self.n_read - self.n_kept

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "n_read": self.n_read,
            "n_kept": self.n_kept,
            "n_skipped": self.n_skipped,
            "skipped": [{"location": i.location, "field": i.field, "message": i.message} for i in self.skipped],
        }

    def __str__(self) -> str:
        lines = [f"{self.source}: read {self.n_read} records, kept {self.n_kept}, skipped {self.n_skipped}"]
        lines += [f"  - {i}" for i in self.skipped[:_MAX_ISSUES_IN_MESSAGE]]
        if len(self.skipped) > _MAX_ISSUES_IN_MESSAGE:
            lines.append(f"  ... and {len(self.skipped) - _MAX_ISSUES_IN_MESSAGE} more")
        return "\n".join(lines)


_SKIP_HINT = "fix the record, or skip invalid records with --skip-invalid (skip_invalid=True in Python)"


class CatalogError(NeoDataError):
    """Invalid catalog input. ``issues`` lists every problem found (location, field, message).

    The first line of the message names the first problem (file, line or row, field) and the fix,
    so the ``neo`` command can print it alone; the lines after it list every problem.
    """

    def __init__(self, issues: Sequence[LoadIssue], source: str = "catalog", fix: str | None = _SKIP_HINT):
        self.issues = list(issues)
        n = len(self.issues)
        first = str(self.issues[0]) if self.issues else f"{source}: invalid catalog"
        more = f" (and {n - 1} more problem(s) in {source})" if n > 1 else ""
        head = f"{first}{more}" + (f"; {fix}" if fix else "")
        body = "\n".join(f"  - {i}" for i in self.issues[:_MAX_ISSUES_IN_MESSAGE]) if n > 1 else ""
        rest = n - _MAX_ISSUES_IN_MESSAGE
        tail = f"\n  ... and {rest} more" if rest > 0 else ""
        hint = ("\n(pass skip_invalid=True to skip invalid records; they are then reported in catalog.load_report)"
                if fix == _SKIP_HINT else "")
        super().__init__(head + (f"\n{body}" if body else "") + tail + hint)


@dataclass(frozen=True)
class Item:
    """One catalog item as yielded by iteration / :meth:`Catalog.item`."""

    row: int
    id: str
    type: str
    text: dict[str, str]
    popularity: float | None
    features: dict[str, float]


def _is_missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return isinstance(v, str) and v.strip() == ""


def _bad_bytes_hint(s: str) -> str:
    m = _SURROGATE.search(s)
    assert m is not None
    byte = ord(m.group()) - 0xDC00
    return f"not valid text in the declared encoding (undecodable byte 0x{byte:02x} at character {m.start()})"


def _to_text(v: Any) -> str:
    """Text field value -> str. Lists (e.g. tags) are joined with ', '; numbers are formatted."""
    if isinstance(v, str):
        return v.strip()
    if isinstance(v, (list, tuple, np.ndarray)):
        parts = []
        for x in v:
            if isinstance(x, (dict, list, tuple)):
                raise TypeError(f"a list of text may only hold strings or numbers, found {type(x).__name__}")
            if not _is_missing(x):
                parts.append(str(x).strip())
        return ", ".join(parts)
    if isinstance(v, bytes):
        # Parquet/Arrow binary columns: decode strictly so bad bytes are reported, not mangled.
        try:
            return v.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            return e.object.decode("utf-8", errors="surrogateescape").strip()
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, float, np.integer, np.floating)):
        return str(v)
    raise TypeError(f"expected text, a list of text or a number, found {type(v).__name__}")


def _to_float(v: Any) -> float:
    if isinstance(v, (bool, np.bool_)):
        raise TypeError("expected a number, found a boolean")
    if isinstance(v, str):
        return float(v.strip())
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    raise TypeError(f"expected a number, found {type(v).__name__}")


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _open_parquet(path: Path) -> Any:
    """``pyarrow.parquet.ParquetFile`` with unreadable files reported as :class:`DataFileError`."""
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - depends on the environment
        raise DataFileError(f"{path.name}: reading Parquet needs pyarrow: pip install 'neo-sid[parquet]'") from None
    try:
        return pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError for corrupt files
        raise DataFileError(f"{path.name}: not a readable Parquet file ({str(e).splitlines()[0]}); "
                            "rewrite it with pandas.DataFrame.to_parquet or pyarrow") from None


class Catalog:
    """Items with stable ids, several item types, text fields, popularity and numeric features.

    Build one with :meth:`from_records`, :meth:`from_jsonl`, :meth:`from_csv`, :meth:`from_parquet`,
    :meth:`from_dataframe` or :meth:`load` (any of those formats, or a directory written by
    :meth:`save`).

    Attributes
    ----------
    ids : list[str]
        Item id per row, ``N`` entries, unique.
    type_names : list[str]
        Item type names; ``item_types`` indexes into this list.
    item_types : np.ndarray
        ``int32[N]`` type index per row.
    text_fields : list[str]
        Names of the text fields, in order.
    text : dict[str, list[str]]
        Per text field, ``N`` strings ("" where an item has no value).
    popularity : np.ndarray or None
        ``float64[N]`` (NaN where unknown), or ``None`` when no record had a popularity.
    feature_names : list[str]
        Names of the numeric features.
    features : np.ndarray or None
        ``float32[N, F]`` (NaN where missing), or ``None`` when there are no features.
    load_report : LoadReport or None
        Set by the loaders: records read, kept, and every skipped record with its reason.
    """

    def __init__(
        self,
        ids: Sequence[str],
        item_types: Sequence[int] | np.ndarray,
        type_names: Sequence[str],
        text: Mapping[str, Sequence[str]] | None = None,
        popularity: Sequence[float] | np.ndarray | None = None,
        features: np.ndarray | None = None,
        feature_names: Sequence[str] | None = None,
    ):
        self.ids: list[str] = [str(i) for i in ids]
        n = len(self.ids)
        self.type_names: list[str] = [str(t) for t in type_names]
        self.item_types = np.asarray(item_types, dtype=np.int32).reshape(-1)
        self.text: dict[str, list[str]] = {str(k): list(v) for k, v in (text or {}).items()}
        self.text_fields: list[str] = list(self.text)
        self.popularity = None if popularity is None else np.asarray(popularity, dtype=np.float64).reshape(-1)
        self.feature_names: list[str] = [str(f) for f in (feature_names or [])]
        self.features = None if features is None else np.asarray(features, dtype=np.float32)
        self.load_report: LoadReport | None = None
        self._fingerprint: str | None = None
        self._rows_by_type: list[np.ndarray] | None = None

        if len(set(self.type_names)) != len(self.type_names):
            raise ValueError(f"duplicate item type names: {self.type_names}")
        if self.item_types.shape[0] != n:
            raise ValueError(f"item_types has {self.item_types.shape[0]} entries for {n} ids")
        if n and (self.item_types.min() < 0 or self.item_types.max() >= len(self.type_names)):
            bad = int(np.flatnonzero((self.item_types < 0) | (self.item_types >= len(self.type_names)))[0])
            raise ValueError(f"row {bad}: type index {int(self.item_types[bad])} outside [0, {len(self.type_names)})")
        for f, vals in self.text.items():
            if len(vals) != n:
                raise ValueError(f"text field {f!r} has {len(vals)} values for {n} items")
        if self.popularity is not None and self.popularity.shape[0] != n:
            raise ValueError(f"popularity has {self.popularity.shape[0]} values for {n} items")
        if self.features is not None:
            if self.features.ndim != 2 or self.features.shape[0] != n:
                raise ValueError(f"features must have shape ({n}, F), got {self.features.shape}")
            if len(self.feature_names) != self.features.shape[1]:
                raise ValueError(
                    f"{len(self.feature_names)} feature names for {self.features.shape[1]} feature columns"
                )
        self._row_of: dict[str, int] = {}
        for r, i in enumerate(self.ids):
            if self._row_of.setdefault(i, r) != r:
                raise ValueError(f"duplicate item id {i!r} at rows {self._row_of[i]} and {r}")

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_records(
        cls,
        records: Iterable[Mapping[str, Any]],
        *,
        id_field: str = "id",
        type_field: str = "type",
        text_fields: Sequence[str] | None = None,
        popularity_field: str | None = "popularity",
        feature_fields: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        default_type: str | None = None,
        require_text: bool | Sequence[str] = True,
        skip_invalid: bool = False,
        source: str = "records",
        _locations: Iterable[str] | None = None,
    ) -> "Catalog":
        """Build a catalog from an iterable of dict-like records, validating each one.

        Parameters
        ----------
        records : iterable of mapping
            One mapping per item.
        id_field, type_field : str
            Keys holding the item id and the item type.
        text_fields : sequence of str, optional
            Keys holding text. ``None``: every other key that is not the id, type, popularity or a
            feature (values may be strings, numbers or lists of strings, joined with ``", "``).
        popularity_field : str or None
            Key holding a non-negative popularity; ``None`` disables popularity.
        feature_fields : sequence of str, optional
            Keys holding numeric features (missing values become NaN).
        types : sequence of str, optional
            The allowed item types, in order. A record with another type is an error ("unknown type").
            ``None``: types are taken from the data in order of first appearance.
        default_type : str, optional
            Type for records without one; without it a missing type is an error.
        require_text : bool or sequence of str
            ``True``: every item needs at least one non-empty text field. A sequence: each named field
            must be non-empty. ``False``: text may be empty.
        skip_invalid : bool
            Skip invalid records instead of raising; they are listed in ``catalog.load_report`` and
            announced with a warning.
        source : str
            Name used in error messages.

        Returns
        -------
        Catalog

        Raises
        ------
        CatalogError
            Listing every invalid record by location and field (unless ``skip_invalid``).
        """
        feature_fields = list(feature_fields or [])
        explicit_text = list(text_fields) if text_fields is not None else None
        if isinstance(require_text, (list, tuple)):
            required = list(require_text)
            if explicit_text is not None and (missing := [f for f in required if f not in explicit_text]):
                raise ValueError(f"require_text names fields that are not text fields: {missing}")
        else:
            required = None
        non_text = {id_field, type_field, *feature_fields}
        if popularity_field:
            non_text.add(popularity_field)
        type_list: list[str] = [str(t) for t in types] if types is not None else []
        if types is not None and len(set(type_list)) != len(type_list):
            raise ValueError(f"duplicate names in types: {type_list}")
        if default_type is not None and types is not None and default_type not in type_list:
            raise ValueError(f"default_type {default_type!r} is not one of types {type_list}")
        type_index = {t: i for i, t in enumerate(type_list)}

        ids: list[str] = []
        tys: list[int] = []
        text_cols: dict[str, list[str]] = {f: [] for f in (explicit_text or [])}
        pops: list[float] = []
        any_pop = False
        feats: list[list[float]] = []
        row_of: dict[str, str] = {}  # id -> location of its first occurrence
        issues: list[LoadIssue] = []
        report = LoadReport(source)
        locs = iter(_locations) if _locations is not None else None

        for n_rec, rec in enumerate(records):
            loc = next(locs) if locs is not None else f"{source} row {n_rec}"
            report.n_read += 1
            if isinstance(rec, LoadIssue):  # a reader already found this record unparseable
                issues.append(rec)
                continue
            if not isinstance(rec, Mapping):
                issues.append(LoadIssue(loc, None, f"expected an object/mapping, found {type(rec).__name__}"))
                continue
            errs: list[LoadIssue] = []

            # id: present, text, valid encoding, unique
            raw_id = rec.get(id_field)
            item_id = None
            if _is_missing(raw_id):
                errs.append(LoadIssue(loc, id_field, "missing item id"))
            elif isinstance(raw_id, (dict, list, tuple, bool, float)) and not (
                isinstance(raw_id, float) and raw_id.is_integer()
            ):
                errs.append(LoadIssue(loc, id_field, f"id must be a string or integer, found {raw_id!r}"))
            else:
                item_id = str(int(raw_id)) if isinstance(raw_id, float) else str(raw_id).strip()
                if _SURROGATE.search(item_id):
                    errs.append(LoadIssue(loc, id_field, _bad_bytes_hint(item_id)))
                    item_id = None
                elif item_id in row_of:
                    errs.append(LoadIssue(loc, id_field, f"duplicate id {item_id!r} (first seen at {row_of[item_id]})"))
                    item_id = None

            # type: present (or defaulted), known
            raw_type = rec.get(type_field)
            tname = None
            if _is_missing(raw_type):
                if default_type is None:
                    errs.append(LoadIssue(loc, type_field, "missing item type (give every record one, or pass "
                                                          "--item-type / default_type= for items without one)"))
                else:
                    tname = default_type
            elif not isinstance(raw_type, str):
                errs.append(LoadIssue(loc, type_field, f"item type must be a string, found {raw_type!r}"))
            else:
                tname = raw_type.strip()
                if _SURROGATE.search(tname):
                    errs.append(LoadIssue(loc, type_field, _bad_bytes_hint(tname)))
                    tname = None
                elif types is not None and tname not in type_index:
                    errs.append(LoadIssue(loc, type_field, f"unknown item type {tname!r}; allowed: {type_list}"))
                    tname = None

            # text fields
            fields = explicit_text if explicit_text is not None else [k for k in rec if k not in non_text]
            vals: dict[str, str] = {}
            for f in fields:
                v = rec.get(f)
                if _is_missing(v):
                    vals[f] = ""
                    continue
                try:
                    s = _to_text(v)
                except TypeError as e:
                    errs.append(LoadIssue(loc, f, str(e)))
                    continue
                if _SURROGATE.search(s):
                    errs.append(LoadIssue(loc, f, _bad_bytes_hint(s)))
                    continue
                vals[f] = s
            if required is not None:
                for f in required:
                    if f in fields and not vals.get(f) and not any(e.field == f for e in errs):
                        errs.append(LoadIssue(loc, f, "empty text in a required text field"))
                    elif f not in fields:
                        errs.append(LoadIssue(loc, f, "required text field is missing"))
            elif require_text and not any(vals.values()) and not any(e.field in fields for e in errs):
                shown = ", ".join(repr(f) for f in fields) if fields else "(none)"
                errs.append(LoadIssue(loc, None, f"empty text: every text field is empty or missing (fields: {shown})"))

            # popularity
            pop = math.nan
            if popularity_field and not _is_missing(rec.get(popularity_field)):
                try:
                    pop = _to_float(rec[popularity_field])
                    if not math.isfinite(pop) or pop < 0:
                        raise ValueError
                except (TypeError, ValueError):
                    errs.append(LoadIssue(loc, popularity_field,
                                          f"popularity must be a finite number >= 0, found {rec[popularity_field]!r}"))

            # numeric features
            frow: list[float] = []
            for f in feature_fields:
                v = rec.get(f)
                if _is_missing(v):
                    frow.append(math.nan)
                    continue
                try:
                    frow.append(_to_float(v))
                except (TypeError, ValueError):
                    errs.append(LoadIssue(loc, f, f"feature must be a number, found {v!r}"))

            if errs:
                issues.extend(errs)
                continue

            # Record is valid: commit it. Unknown text fields discovered late are back-filled with "".
            assert item_id is not None and tname is not None
            if tname not in type_index:
                type_index[tname] = len(type_list)
                type_list.append(tname)
            row_of[item_id] = loc
            ids.append(item_id)
            tys.append(type_index[tname])
            for f, s in vals.items():
                col = text_cols.get(f)
                if col is None:
                    col = text_cols[f] = [""] * (len(ids) - 1)
                col.append(s)
            for f, col in text_cols.items():
                if len(col) < len(ids):
                    col.append("")
            if not math.isnan(pop):
                any_pop = True
            pops.append(pop)
            feats.append(frow)

        report.n_kept = len(ids)
        if issues:
            if not skip_invalid:
                raise CatalogError(issues, source)
            report.skipped = issues
            warnings.warn(
                f"{source}: skipped {report.n_skipped} of {report.n_read} records as invalid "
                f"(see catalog.load_report); first: {issues[0]}",
                stacklevel=3,
            )
        if default_type is not None and default_type not in type_index:
            # A declared default type with no items still exists (e.g. single-type empty catalog).
            type_list.append(default_type)
        cat = cls(
            ids,
            np.asarray(tys, dtype=np.int32),
            type_list,
            text_cols,
            popularity=np.asarray(pops, dtype=np.float64) if any_pop else None,
            features=np.asarray(feats, dtype=np.float32).reshape(len(ids), len(feature_fields)) if feature_fields else None,
            feature_names=feature_fields,
        )
        cat.load_report = report
        return cat

    @staticmethod
    def _decode_lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
        """Yield ``(line_number, text)``; undecodable bytes become lone surrogates for the validator."""
        opener = gzip.open if _is_gzip(path) else open
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf") and encoding.replace("_", "-").lower() in ("utf-8", "utf8"):
                    raw = raw[3:]
                yield lineno, raw.decode(encoding, errors="surrogateescape")

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike, *, encoding: str = "utf-8", **kwargs: Any) -> "Catalog":
        """Load one JSON object per line (blank lines ignored); errors name ``file:line`` and field.

        Parameters
        ----------
        path : path-like
            The ``.jsonl`` file.
        encoding : str
            Text encoding of the file; bytes invalid in it are reported per field.
        **kwargs
            Passed to :meth:`from_records` (``text_fields``, ``types``, ``skip_invalid``, ...).
        """
        path = Path(path)
        name = path.name
        locs: list[str] = []

        def records() -> Iterator[Any]:
            for lineno, line in cls._decode_lines(path, encoding):
                if not line.strip():
                    continue
                loc = f"{name}:{lineno}"
                locs.append(loc)
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    yield LoadIssue(loc, None, f"not valid JSON ({e.msg} at column {e.colno})")

        def locations() -> Iterator[str]:
            # from_records pulls one location right after each record, so locs[-1] is that record's.
            while True:
                yield locs[-1]

        return cls.from_records(records(), source=name, _locations=locations(), **kwargs)

    @classmethod
    def from_csv(
        cls, path: str | os.PathLike, *, encoding: str = "utf-8", delimiter: str = ",", **kwargs: Any
    ) -> "Catalog":
        """Load a CSV file with a header row; errors name ``file:line`` (first line of the record) and field.

        Empty cells are missing values; lines with no content at all are not records. Quoted fields
        may span lines.

        Parameters
        ----------
        path : path-like
            The CSV file.
        encoding : str
            Text encoding of the file; bytes invalid in it are reported per field.
        delimiter : str
            Field separator (``"\\t"`` for TSV).
        **kwargs
            Passed to :meth:`from_records`.
        """
        path = Path(path)
        name = path.name
        text = "".join(line for _, line in cls._decode_lines(path, encoding))
        if delimiter == "::":  # ml-1m style: the csv module splits on one character only
            text, delimiter = text.replace("::", "\x1f"), "\x1f"
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise CatalogError([LoadIssue(f"{name}:1", None, "empty file: no header row")], name,
                               fix="the first line must be a header row naming the columns (id, type, title, "
                                   "...)") from None
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            dup = sorted({h for h in header if header.count(h) > 1})
            raise CatalogError([LoadIssue(f"{name}:1", None, f"duplicate column names in header: {dup}")], name,
                               fix="give every column a distinct name (does the file have a header row?)")
        locs: list[str] = []

        def records() -> Iterator[Any]:
            start = reader.line_num + 1
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as e:
                    locs.append(f"{name}:{start}")
                    yield LoadIssue(locs[-1], None, f"malformed CSV: {e}")
                    start = reader.line_num + 1
                    continue
                loc = f"{name}:{start}"
                start = reader.line_num + 1
                if not row or all(not c.strip() for c in row):
                    continue
                locs.append(loc)
                if len(row) != len(header):
                    yield LoadIssue(loc, None, f"expected {len(header)} columns (header), found {len(row)}")
                    continue
                yield dict(zip(header, row))

        def locations() -> Iterator[str]:
            while True:
                yield locs[-1]

        return cls.from_records(records(), source=name, _locations=locations(), **kwargs)

    @classmethod
    def from_parquet(cls, path: str | os.PathLike, *, batch_size: int = 65536, **kwargs: Any) -> "Catalog":
        """Load a Parquet file (needs ``pyarrow``); errors name ``file row i`` (0-based) and field.

        Parameters
        ----------
        path : path-like
            The Parquet file.
        batch_size : int
            Rows converted to Python per batch (bounds memory).
        **kwargs
            Passed to :meth:`from_records`.
        """
        path = Path(path)
        name = path.name
        pf = _open_parquet(path)

        def records() -> Iterator[dict]:
            for batch in pf.iter_batches(batch_size=batch_size):
                yield from batch.to_pylist()

        def locations() -> Iterator[str]:
            i = 0
            while True:
                yield f"{name} row {i}"
                i += 1

        return cls.from_records(records(), source=name, _locations=locations(), **kwargs)

    @classmethod
    def from_dataframe(cls, df: Any, **kwargs: Any) -> "Catalog":
        """Build from a pandas DataFrame (one row per item); errors name the DataFrame index label."""
        labels = [f"dataframe index {i!r}" for i in df.index]
        return cls.from_records(df.to_dict("records"), source="dataframe", _locations=iter(labels), **kwargs)

    @classmethod
    def from_json(cls, path: str | os.PathLike, *, encoding: str = "utf-8", **kwargs: Any) -> "Catalog":
        """Load a JSON file: an array of item objects, or one object mapping item id -> fields
        (``{"12": {"title": ..., "brand": ...}}``, the LC-Rec / LETTER item file), id -> text, or
        id -> a list of attributes (kept as the text field ``attributes``). Errors name
        ``file record i`` (0-based) or ``file item 'id'``.
        """
        path = Path(path)
        name = path.name
        try:
            with open_text(path, encoding) as fh:
                data = json.load(fh)
        except json.JSONDecodeError as e:
            raise CatalogError([LoadIssue(f"{name}:{e.lineno}", None, f"not valid JSON ({e.msg} at column {e.colno})")],
                               name, fix="fix the JSON, or write one JSON object per line (JSONL)") from None
        except UnicodeDecodeError as e:
            raise CatalogError([LoadIssue(name, None, f"not valid {encoding} text ({e.reason} at byte {e.start})")],
                               name, fix="pass --encoding (encoding=) with the file's encoding") from None
        id_field = kwargs.get("id_field", "id")
        if isinstance(data, list):
            locs = [f"{name} record {i}" for i in range(len(data))]
            return cls.from_records(data, source=name, _locations=iter(locs), **kwargs)
        if not isinstance(data, dict):
            raise CatalogError([LoadIssue(name, None, f"top-level JSON is a {type(data).__name__}")], name,
                               fix="give a JSON array of item objects or an object mapping item id -> fields")
        recs: list[Any] = []
        for k, v in data.items():
            if isinstance(v, Mapping):
                recs.append({**v, id_field: k})
            elif isinstance(v, (list, tuple)):
                recs.append({id_field: k, "attributes": v})
            else:
                recs.append({id_field: k, "title": v})
        locs = [f"{name} item {k!r}" for k in data]
        return cls.from_records(recs, source=name, _locations=iter(locs), **kwargs)

    @staticmethod
    def _columns(path: Path, fmt: FileFormat, encoding: str, delimiter: str | None) -> list[str] | None:
        """Column names of a catalog file (``None`` for a JSON file, whose records name their fields)."""
        if fmt.kind == "parquet":
            return list(_open_parquet(path).schema_arrow.names)
        if fmt.kind == "json":  # an array of records names its fields; an object keyed by id has no id column
            try:
                with open_text(path, encoding, errors="replace") as fh:
                    data = json.load(fh)
            except (json.JSONDecodeError, OSError):
                return None  # from_json reports it with the line
            if not isinstance(data, list):
                return None
            cols_j: dict[str, None] = {}
            for rec in data[:100]:
                if isinstance(rec, dict):
                    cols_j.update(dict.fromkeys(map(str, rec)))
            return list(cols_j)
        try:
            with open_text(path, encoding, errors="replace") as fh:
                if fmt.kind == "csv":
                    d = delimiter or fmt.delimiter or ","
                    first = next((ln for ln in fh if ln.strip()), "")
                    if d == "::":
                        first, d = first.replace("::", "\x1f"), "\x1f"
                    row = next(csv.reader([first], delimiter=d), [])
                    return [h.strip().lstrip("\ufeff") for h in row]
                cols: dict[str, None] = {}
                n = 0
                for line in fh:  # JSONL: the keys of the first records
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(rec, dict):
                        cols.update(dict.fromkeys(map(str, rec)))
                    n += 1
                    if n >= 100:
                        break
                return list(cols)
        except OSError as e:
            raise DataFileError(f"{path.name}: cannot read ({e})") from None

    @classmethod
    def load(cls, path: str | os.PathLike, *, id_field: str | None = None, type_field: str | None = None,
             text_fields: Sequence[str] | None = None, default_type: str | None = None, encoding: str = "utf-8",
             delimiter: str | None = None, **kwargs: Any) -> "Catalog":
        """Load a catalog directory written by :meth:`save`, or a data file in any supported format.

        The format comes from the extension and the content (:func:`neo.items.formats.detect_format`):
        CSV, TSV and other delimited text (``delimiter`` sniffed from the header line), JSONL, JSON
        (see :meth:`from_json`), Parquet; ``.gz`` text is decompressed.

        Parameters
        ----------
        path : path-like
        id_field : str, optional
            Column holding the item id. Default: ``id``, else the first of :data:`ID_COLUMNS` found
            (``item_id``, ``movieId``, ``asin``, ...).
        type_field : str, optional
            Column holding the item type. Default: ``type`` (or ``item_type``) when present; without
            one every item gets ``default_type``.
        text_fields : sequence of str, optional
            Text columns (default: every column but the id, type, popularity and features).
        default_type : str, optional
            Type of items without one (default ``"item"`` when the file has no type column).
        encoding : str
            Text encoding (bytes invalid in it are reported per field).
        delimiter : str, optional
            Field separator of delimited text (default: sniffed).
        **kwargs
            Passed to :meth:`from_records` (``types``, ``require_text``, ``skip_invalid``, ...).

        Raises
        ------
        CatalogError
            Invalid records (all listed, the first on the first line), a missing column named by an
            option, or no id column found.
        DataFileError
            An empty, unreadable or unrecognisable file.
        """
        p = Path(path)
        if p.is_dir():
            return cls._load_dir(p)
        fmt = detect_format(p, allow_sequences=False)
        name = p.name
        cols = cls._columns(p, fmt, encoding, delimiter)

        def missing(opt: str, what: str, col: str) -> CatalogError:
            shown = cols if len(cols or []) <= 12 else (cols or [])[:12] + ["..."]
            return CatalogError([LoadIssue(name, None, f"no {what} column {col!r}; the columns are {shown}")], name,
                                fix=f"pass {opt} with one of them")

        if cols is not None:
            if id_field is None:
                id_field = column_matches(cols, ID_COLUMNS)
                if id_field is None:
                    shown = cols if len(cols) <= 12 else cols[:12] + ["..."]
                    raise CatalogError([LoadIssue(f"{name}:1" if fmt.kind == "csv" else name, None,
                                                  f"no item id column among {shown}")], name,
                                       fix="name it with --id-col NAME (id_field= in Python); a CSV/TSV catalog "
                                           "needs a header row")
            elif id_field not in cols:
                raise missing("--id-col (id_field=)", "item id", id_field)
            if type_field is None:
                type_field = column_matches(cols, TYPE_COLUMNS)
            elif type_field not in cols:
                raise missing("--type-col (type_field=)", "item type", type_field)
            for f in text_fields or []:
                if f not in cols:
                    raise missing("--text-cols (text_fields=)", "text", f)
            if type_field is None and default_type is None:
                default_type = "item"
        kw: dict[str, Any] = dict(kwargs)
        kw["id_field"] = id_field or "id"
        kw["type_field"] = type_field or "type"
        if text_fields is not None:
            kw["text_fields"] = list(text_fields)
        if default_type is not None:
            kw["default_type"] = default_type
        if fmt.kind == "jsonl":
            cat = cls.from_jsonl(p, encoding=encoding, **kw)
        elif fmt.kind == "json":
            if default_type is None and type_field is None:
                kw.setdefault("default_type", "item")
            cat = cls.from_json(p, encoding=encoding, **kw)
        elif fmt.kind == "csv":
            cat = cls.from_csv(p, encoding=encoding, delimiter=delimiter or fmt.delimiter or ",", **kw)
        else:
            cat = cls.from_parquet(p, **kw)
        if len(cat) == 0 and (cat.load_report is None or cat.load_report.n_read == 0):
            raise CatalogError([LoadIssue(name, None, "no items (the file has no records)")], name,
                               fix="add one record per item (id, type, text)")
        return cat

    # ------------------------------------------------------------------ save / load directory
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the catalog to ``directory`` (``catalog.json`` metadata, ``items.jsonl``, ``features.npy``).

        Files are written to temporary names and renamed, so an interrupted save never leaves a
        half-written catalog under the final names.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": "neo.catalog",
            "version": CATALOG_FORMAT_VERSION,
            "n_items": len(self),
            "type_names": self.type_names,
            "text_fields": self.text_fields,
            "feature_names": self.feature_names,
            "has_popularity": self.popularity is not None,
            "fingerprint": self.fingerprint(),
        }
        tmp_items = d / "items.jsonl.tmp"
        with open(tmp_items, "w", encoding="utf-8") as fh:
            for r in range(len(self)):
                rec: dict[str, Any] = {"id": self.ids[r], "type": self.type_names[self.item_types[r]]}
                rec["text"] = {f: self.text[f][r] for f in self.text_fields}
                if self.popularity is not None and not math.isnan(self.popularity[r]):
                    rec["popularity"] = float(self.popularity[r])
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        if self.features is not None:
            tmp_f = d / "features.tmp.npy"
            np.save(tmp_f, self.features)
            os.replace(tmp_f, d / "features.npy")
        os.replace(tmp_items, d / "items.jsonl")
        tmp_meta = d / "catalog.json.tmp"
        tmp_meta.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_meta, d / "catalog.json")
        return d

    @classmethod
    def _load_dir(cls, d: Path) -> "Catalog":
        meta_p = d / "catalog.json"
        if not meta_p.exists():
            raise FileNotFoundError(f"{d} is not a saved catalog directory (no catalog.json)")
        meta = json.loads(meta_p.read_text())
        if meta.get("format") != "neo.catalog" or int(meta.get("version", -1)) > CATALOG_FORMAT_VERSION:
            raise ValueError(f"{meta_p}: not a neo catalog of a supported version (found {meta.get('format')!r} "
                             f"version {meta.get('version')!r}, this neo reads <= {CATALOG_FORMAT_VERSION})")
        type_index = {t: i for i, t in enumerate(meta["type_names"])}
        fields = list(meta["text_fields"])
        ids, tys, pops = [], [], []
        text: dict[str, list[str]] = {f: [] for f in fields}
        with open(d / "items.jsonl", encoding="utf-8") as fh:
            for rec in map(json.loads, fh):
                ids.append(rec["id"])
                tys.append(type_index[rec["type"]])
                for f in fields:
                    text[f].append(rec["text"].get(f, ""))
                pops.append(rec.get("popularity", math.nan))
        features = np.load(d / "features.npy") if meta["feature_names"] else None
        try:
            if len(ids) != meta["n_items"]:
                raise ValueError(f"metadata says {meta['n_items']} items, items.jsonl holds {len(ids)}")
            cat = cls(ids, np.asarray(tys, dtype=np.int32), meta["type_names"], text,
                      popularity=pops if meta["has_popularity"] else None,
                      features=features, feature_names=meta["feature_names"])
            if cat.fingerprint() != meta["fingerprint"]:
                raise ValueError(f"fingerprint {cat.fingerprint()[:12]} of the items differs from the metadata's "
                                 f"{meta['fingerprint'][:12]}")
        except ValueError as e:
            raise ValueError(f"{d}: catalog files are inconsistent: {e}") from None
        return cat

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[Item]:
        for r in range(len(self)):
            yield self.item(r)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._row_of

    def __repr__(self) -> str:
        counts = ", ".join(f"{t}={int(c)}" for t, c in zip(self.type_names, self.type_counts()))
        return f"Catalog({len(self)} items: {counts}; text fields {self.text_fields})"

    @property
    def num_types(self) -> int:
        return len(self.type_names)

    def type_index(self, type_: int | str) -> int:
        """Index of a type given by name or index; ``KeyError`` names the known types."""
        if isinstance(type_, (int, np.integer)):
            if not 0 <= int(type_) < self.num_types:
                raise KeyError(f"type index {type_} out of range [0, {self.num_types})")
            return int(type_)
        try:
            return self.type_names.index(type_)
        except ValueError:
            raise KeyError(f"unknown item type {type_!r}; known types: {self.type_names}") from None

    def type_counts(self) -> np.ndarray:
        """``int64[T]`` number of items per type."""
        return np.bincount(self.item_types, minlength=self.num_types).astype(np.int64)

    def rows_of_type(self, type_: int | str) -> np.ndarray:
        """``int64[N_t]`` rows of the items of one type, ascending."""
        if self._rows_by_type is None:
            order = np.argsort(self.item_types, kind="stable")
            bounds = np.searchsorted(self.item_types[order], np.arange(self.num_types + 1))
            self._rows_by_type = [order[bounds[t]:bounds[t + 1]].astype(np.int64) for t in range(self.num_types)]
        return self._rows_by_type[self.type_index(type_)]

    def row(self, item_id: str) -> int:
        """Row of an item id; ``KeyError`` names the id."""
        try:
            return self._row_of[item_id]
        except KeyError:
            raise KeyError(f"item id {item_id!r} is not in the catalog") from None

    def rows(self, item_ids: Iterable[str]) -> np.ndarray:
        """``int64[n]`` rows of several ids; ``KeyError`` names the first unknown id."""
        return np.fromiter((self.row(i) for i in item_ids), dtype=np.int64)

    def id(self, row: int) -> str:
        """Item id at ``row``."""
        return self.ids[self._check_row(row)]

    def type_of(self, row: int) -> str:
        """Item type name at ``row``."""
        return self.type_names[self.item_types[self._check_row(row)]]

    def _check_row(self, row: int) -> int:
        if not -len(self) <= row < len(self):
            raise IndexError(f"row {row} out of range for a catalog of {len(self)} items")
        return int(row) % len(self)

    def item(self, row: int) -> Item:
        """The item at ``row`` as an :class:`Item`."""
        r = self._check_row(row)
        pop = None if self.popularity is None or math.isnan(self.popularity[r]) else float(self.popularity[r])
        feats = {} if self.features is None else dict(zip(self.feature_names, map(float, self.features[r])))
        return Item(r, self.ids[r], self.type_names[self.item_types[r]],
                    {f: self.text[f][r] for f in self.text_fields}, pop, feats)

    def item_text(self, row: int, fields: Sequence[str] | None = None, sep: str = ". ") -> str:
        """Non-empty text fields of one item joined with ``sep`` (the text that gets embedded)."""
        r = self._check_row(row)
        return sep.join(s for f in (fields or self.text_fields) if (s := self.text[f][r]))

    def texts(self, rows: Sequence[int] | np.ndarray | None = None, fields: Sequence[str] | None = None,
              sep: str = ". ") -> list[str]:
        """Embedding text for many rows (all rows by default), see :meth:`item_text`."""
        fields = list(fields or self.text_fields)
        if unknown := [f for f in fields if f not in self.text]:
            raise KeyError(f"unknown text fields {unknown}; catalog has {self.text_fields}")
        cols = [self.text[f] for f in fields]
        it = range(len(self)) if rows is None else (int(r) for r in rows)
        return [sep.join(s for c in cols if (s := c[r])) for r in it]

    def select(self, types: str | int | Sequence[str | int] | None = None,
               rows: Sequence[int] | np.ndarray | None = None) -> "Catalog":
        """A new catalog with the items of the given type(s) and/or rows (in row order).

        The new catalog keeps every type name (so type indices stay comparable), renumbers rows.
        """
        mask = np.ones(len(self), dtype=bool)
        if types is not None:
            tlist = [types] if isinstance(types, (str, int, np.integer)) else list(types)
            mask &= np.isin(self.item_types, [self.type_index(t) for t in tlist])
        if rows is not None:
            rm = np.zeros(len(self), dtype=bool)
            rr = np.asarray(rows, dtype=np.int64)
            if rr.size and (rr.min() < 0 or rr.max() >= len(self)):
                raise IndexError(f"rows outside [0, {len(self)})")
            rm[rr] = True
            mask &= rm
        keep = np.flatnonzero(mask)
        return Catalog(
            [self.ids[r] for r in keep], self.item_types[keep], self.type_names,
            {f: [v[r] for r in keep] for f, v in self.text.items()},
            popularity=None if self.popularity is None else self.popularity[keep],
            features=None if self.features is None else self.features[keep],
            feature_names=self.feature_names,
        )

    def fingerprint(self) -> str:
        """SHA-256 over type names, ids and types in row order: identifies which catalog SIDs belong to."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(json.dumps(self.type_names).encode())
            h.update(b"\0")
            h.update("\n".join(self.ids).encode("utf-8", errors="surrogatepass"))
            h.update(b"\0")
            h.update(np.ascontiguousarray(self.item_types, dtype="<i4").tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint
