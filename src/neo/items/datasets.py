"""Datasets for training and evaluation: interactions, catalogs and search queries.

Loaders
-------
* :func:`read_interactions` -- a user's interactions file in CSV, TSV, JSONL, JSON, Parquet or the
  sequence format (detected by extension and content), columns given or detected, items indexed
  by a catalog (unknown items an error or a counted skip), sorted per user by time. Every command
  (``neo build``, ``neo train``, ``neo eval``) reads interactions through it.
* :func:`load_user_dataset` -- a catalog file and an interactions file as one :class:`Dataset`.
* :func:`load_interactions_csv` -- the former CSV-only name of :func:`read_interactions`.
* :func:`load_sequences` -- the P5 / S3-Rec format: one line per user, ``user item item ...`` in
  chronological order, with optional item text (a JSONL catalog or ``item<TAB>text`` lines).
* :func:`load_catalog_jsonl` -- a JSONL catalog (one item per line) as a :class:`~neo.Catalog`.
* :func:`load_movielens` -- MovieLens ``ml-latest-small`` (bundled in the package) or any directory
  with the same files: a catalog with two item types, ``movie`` (title, year, genres, tags as text)
  and ``tag`` (the tag text), movie-rating sequences, and tag queries for search.

Interactions hold item *indices*; when a dataset has a catalog, the index of an item is its catalog
row, so evaluation, baselines and a neo model all speak the same numbers.
"""

from __future__ import annotations

import array
import csv
import io
import itertools
import json
import math
import os
import re
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from ..core.errors import NeoDataError
from .catalog import Catalog
from .formats import FileFormat, column_matches, detect_format, json_error

__all__ = [
    "Interactions",
    "SearchQuery",
    "Dataset",
    "DatasetError",
    "read_interactions",
    "read_codes",
    "load_user_dataset",
    "infer_target_type",
    "load_interactions_csv",
    "load_sequences",
    "load_catalog_jsonl",
    "load_movielens",
    "load_dataset",
]


class DatasetError(NeoDataError):
    """Invalid dataset input; the message names the file, line and what is wrong."""


@dataclass
class Interactions:
    """Per-user chronological item sequences.

    Attributes
    ----------
    user_ids : list of str
        One id per user, in the order of ``sequences``.
    item_ids : list of str
        Item id per item index (``n_items`` entries; the catalog's ids when a catalog is attached).
    sequences : list of np.ndarray
        ``int64`` item indices per user, oldest first.
    timestamps : list of np.ndarray or None
        ``int64`` times aligned with ``sequences`` (``None`` for formats without time, e.g. P5).
    info : dict
        Where they came from (:func:`read_interactions`: source, format, columns, rows read,
        unknown items skipped).
    """

    user_ids: list[str]
    item_ids: list[str]
    sequences: list[np.ndarray]
    timestamps: list[np.ndarray] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.user_ids) != len(self.sequences):
            raise DatasetError(f"{len(self.user_ids)} user ids for {len(self.sequences)} sequences")
        if self.timestamps is not None and len(self.timestamps) != len(self.sequences):
            raise DatasetError(f"{len(self.timestamps)} timestamp arrays for {len(self.sequences)} sequences")
        n = len(self.item_ids)
        for u, s in enumerate(self.sequences):
            if s.size and (s.min() < 0 or s.max() >= n):
                raise DatasetError(f"user {self.user_ids[u]!r}: item index outside [0, {n})")
            if self.timestamps is not None and self.timestamps[u].shape != s.shape:
                raise DatasetError(f"user {self.user_ids[u]!r}: {self.timestamps[u].size} timestamps for {s.size} items")

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_interactions(self) -> int:
        return int(sum(s.size for s in self.sequences))

    def as_events(self) -> dict[str, list[tuple[str, int | None]]]:
        """User id -> ``[(item id, timestamp or None), ...]`` oldest first: the mapping form that
        :func:`neo.training.tasks.load_interactions` reads."""
        out: dict[str, list[tuple[str, int | None]]] = {}
        for u, uid in enumerate(self.user_ids):
            seq = self.sequences[u]
            ts = self.timestamps[u].tolist() if self.timestamps is not None else [None] * seq.size
            out[uid] = [(self.item_ids[int(i)], t) for i, t in zip(seq, ts)]
        return out

    def item_counts(self) -> np.ndarray:
        """``int64[n_items]`` number of interactions per item."""
        if not self.sequences:
            return np.zeros(self.n_items, dtype=np.int64)
        return np.bincount(np.concatenate(self.sequences), minlength=self.n_items).astype(np.int64)

    @classmethod
    def from_triples(cls, users: Sequence[Any], items: Sequence[Any], timestamps: Sequence[Any] | None = None, *,
                     item_ids: Sequence[str] | None = None) -> "Interactions":
        """Group ``(user, item, timestamp)`` triples into sequences sorted by time (stable: ties keep
        input order).

        Parameters
        ----------
        users, items : sequences of ids (converted to str)
        timestamps : sequence of int, optional
            Without them the input order is the chronological order.
        item_ids : sequence of str, optional
            The item id of each index (e.g. a catalog's ids); every item must be among them.
            ``None``: items are indexed in order of first appearance.
        """
        if len(users) != len(items) or (timestamps is not None and len(timestamps) != len(items)):
            raise DatasetError("users, items and timestamps must have the same length")
        if item_ids is None:
            ids: list[str] = []
            index: dict[str, int] = {}
            for it in items:
                s = str(it)
                if s not in index:
                    index[s] = len(ids)
                    ids.append(s)
        else:
            ids = [str(i) for i in item_ids]
            index = {s: i for i, s in enumerate(ids)}
        by_user: dict[str, list[int]] = {}
        order: list[str] = []
        for pos, u in enumerate(users):
            s = str(u)
            if s not in by_user:
                by_user[s] = []
                order.append(s)
            by_user[s].append(pos)
        item_idx = np.empty(len(items), dtype=np.int64)
        for pos, it in enumerate(items):
            j = index.get(str(it))
            if j is None:
                raise DatasetError(f"interaction {pos}: item {str(it)!r} is not in the catalog / item list")
            item_idx[pos] = j
        ts = None if timestamps is None else np.asarray(timestamps, dtype=np.int64)
        seqs, tss = [], []
        for u in order:
            pos = np.asarray(by_user[u], dtype=np.int64)
            if ts is not None:
                pos = pos[np.argsort(ts[pos], kind="stable")]
                tss.append(ts[pos])
            seqs.append(item_idx[pos])
        return cls(order, ids, seqs, tss if ts is not None else None)

    def reindex(self, item_ids: Sequence[str], *, drop_unknown: bool = False,
                min_length: int = 1) -> "Interactions":
        """The same interactions with item indices into ``item_ids`` (e.g. a catalog's ids).

        Parameters
        ----------
        item_ids : sequence of str
        drop_unknown : bool
            Drop interactions with items that ``item_ids`` lacks (e.g. evaluating a system trained
            on a sub-catalog) instead of raising; users left with fewer than ``min_length`` items
            are dropped too.

        Raises
        ------
        DatasetError
            Naming items that ``item_ids`` lacks (unless ``drop_unknown``).
        """
        new = {str(s): i for i, s in enumerate(item_ids)}
        remap = np.full(self.n_items, -1, dtype=np.int64)
        for i, s in enumerate(self.item_ids):
            remap[i] = new.get(s, -1)
        used = np.unique(np.concatenate(self.sequences)) if self.sequences else np.zeros(0, dtype=np.int64)
        missing = [self.item_ids[i] for i in used if remap[i] < 0]
        if missing and not drop_unknown:
            src = self.info.get("source", "the interactions")
            raise DatasetError(f"{src}: {len(missing)} interacted item(s) are not in the catalog, e.g. {missing[:5]}; "
                               "pass --unknown-items skip (drop_unknown=True) to drop and count them")
        n_dropped = int(sum(int((remap[s] < 0).sum()) for s in self.sequences)) if missing else 0
        users, seqs, tss = [], [], []
        for u, s in enumerate(self.sequences):
            keep = remap[s] >= 0
            if keep.sum() < min_length:
                continue
            users.append(self.user_ids[u])
            seqs.append(remap[s[keep]])
            if self.timestamps is not None:
                tss.append(self.timestamps[u][keep].copy())
        info = dict(self.info)
        if missing:
            info["unknown_items"] = {"policy": "skip", "rows_skipped": n_dropped, "distinct": len(missing),
                                     "examples": missing[:10]}
        return Interactions(users, [str(s) for s in item_ids], seqs, tss if self.timestamps is not None else None,
                            info)


@dataclass
class SearchQuery:
    """A text query with its relevant items.

    Attributes
    ----------
    query : str
    relevant : np.ndarray
        ``int64`` item indices (catalog rows) that answer the query.
    target_type : str or None
        The item type asked for.
    split : {"train", "test"}
        ``test`` queries are held out: never used for training, and (for MovieLens) their text is
        removed from the items' text so that lexical overlap alone cannot answer them.
    """

    query: str
    relevant: np.ndarray
    target_type: str | None = None
    split: str = "test"


@dataclass
class Dataset:
    """A catalog (optional), interactions and search queries.

    Attributes
    ----------
    name : str
    interactions : Interactions
        Item indices are catalog rows when ``catalog`` is set.
    catalog : Catalog or None
    target_type : str or None
        Item type of the interacted items (what recommendation ranks); ``None`` for single-type data.
    queries : list of SearchQuery
    info : dict
        Counts and provenance (license, citation) for reports.
    """

    name: str
    interactions: Interactions
    catalog: Catalog | None = None
    target_type: str | None = None
    queries: list[SearchQuery] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    side: Interactions | None = None

    def training_sequences(self, train: Sequence[np.ndarray], cutoffs: Sequence[float] | None = None) -> dict[str, np.ndarray]:
        """Per user, the training items of ``interactions`` merged in time order with the user's
        ``side`` events (e.g. MovieLens tag applications, items of other types) that happened
        strictly before ``cutoffs[u]`` (the time of the user's first held-out item), so training
        never sees anything from the held-out period.

        Parameters
        ----------
        train : per-user training sequences aligned with ``interactions`` (``Split.train``).
        cutoffs : per-user time limit for side events (``None``: no side events are merged).
        """
        inter = self.interactions
        out: dict[str, np.ndarray] = {}
        side_of = {u: i for i, u in enumerate(self.side.user_ids)} if self.side is not None else {}
        for u, seq in enumerate(train):
            uid = inter.user_ids[u]
            j = side_of.get(uid)
            if cutoffs is None or j is None or inter.timestamps is None or self.side.timestamps is None:
                out[uid] = np.asarray(seq, dtype=np.int64)
                continue
            ts = inter.timestamps[u][: len(seq)]
            st, si = self.side.timestamps[j], self.side.sequences[j]
            keep = st < cutoffs[u]
            items = np.concatenate([np.asarray(seq, dtype=np.int64), si[keep]])
            times = np.concatenate([ts, st[keep]])
            out[uid] = items[np.argsort(times, kind="stable")]
        return out

    def candidate_rows(self) -> np.ndarray:
        """Item indices a recommender ranks: every item of ``target_type`` (all items without one)."""
        if self.catalog is not None and self.target_type is not None:
            return self.catalog.rows_of_type(self.target_type).astype(np.int64)
        return np.arange(self.interactions.n_items, dtype=np.int64)

    def subset(self, *, max_items: int | None = None, max_other: int | None = None,
               max_users: int | None = None, min_length: int = 3, seed: int = 0) -> "Dataset":
        """A smaller dataset for quick runs: the ``max_items`` most popular items of the target type,
        the ``max_other`` most popular items of every other type, and up to ``max_users`` users
        (sampled with ``seed``) whose sequences keep only the remaining items (``min_length`` or
        more). Queries keep their relevant items that remain (queries left with none are dropped).
        Needs a catalog."""
        if self.catalog is None:
            raise DatasetError("subset needs a dataset with a catalog")
        cat = self.catalog
        pop = cat.popularity if cat.popularity is not None else self.interactions.item_counts().astype(float)
        pop = np.nan_to_num(np.asarray(pop, dtype=np.float64), nan=0.0)
        keep: list[np.ndarray] = []
        for t in cat.type_names:
            rows = cat.rows_of_type(t)
            cap = max_items if (self.target_type is None or t == self.target_type) else max_other
            if cap is not None and rows.size > cap:
                rows = rows[np.argsort(-pop[rows], kind="stable")[:cap]]
            keep.append(np.sort(rows))
        rows = np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)
        new_cat = cat.select(rows=rows)
        inter = self.interactions.reindex(new_cat.ids, drop_unknown=True, min_length=min_length)
        if max_users is not None and inter.n_users > max_users:
            pick = np.sort(np.random.default_rng(seed).choice(inter.n_users, size=max_users, replace=False))
            inter = Interactions([inter.user_ids[i] for i in pick], inter.item_ids,
                                 [inter.sequences[i] for i in pick],
                                 None if inter.timestamps is None else [inter.timestamps[i] for i in pick])
        old_to_new = np.full(len(cat), -1, dtype=np.int64)
        old_to_new[rows] = np.arange(rows.size)
        queries = []
        for q in self.queries:
            rel = old_to_new[q.relevant]
            rel = rel[rel >= 0]
            if rel.size:
                queries.append(SearchQuery(q.query, rel, q.target_type, q.split))
        info = dict(self.info, subset={"max_items": max_items, "max_other": max_other, "max_users": max_users})
        side = self.side.reindex(new_cat.ids, drop_unknown=True) if self.side is not None else None
        return Dataset(self.name, inter, new_cat, self.target_type, queries, info, side)

    def summary(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "users": self.interactions.n_users,
                             "items": self.interactions.n_items,
                             "interactions": self.interactions.n_interactions,
                             "queries": {s: sum(q.split == s for q in self.queries) for s in ("train", "test")}}
        if self.catalog is not None:
            d["types"] = {t: int(c) for t, c in zip(self.catalog.type_names, self.catalog.type_counts())}
        d.update(self.info)
        return d


# ============================================================================ generic loaders

#: column names recognised as the user / item / time of an interactions file (case-insensitive, in
#: order; RecBole's ``name:token`` type suffixes are ignored)
USER_COLUMNS = ("user", "user_id", "userid", "uid", "reviewerid", "customer_id", "customerid", "visitor_id",
                "visitorid", "session_id", "sessionid", "member_id", "account_id", "client_id")
ITEM_COLUMNS = ("item", "item_id", "itemid", "iid", "movieid", "movie_id", "asin", "parent_asin", "product_id",
                "productid", "business_id", "artistid", "artist_id", "track_id", "song_id", "book_id", "isbn",
                "article_id", "video_id", "sku", "items", "item_ids")
TIME_COLUMNS = ("timestamp", "time", "ts", "unixreviewtime", "datetime", "date", "created_at", "event_time",
                "timestamp_s")
#: what :func:`read_interactions` does with items missing from the catalog
UNKNOWN_ITEM_POLICIES = ("error", "skip")
_NO_COLUMN = ("", "none", "-")
_TIME_FIX = "use unix seconds or ISO 8601 dates, or --time-col none (time_col='none') to use the file order"
_UNIX_1973 = 1e8  # a headerless last column at least this large reads as unix seconds


class _Bad(Exception):
    """A value problem; the reader adds where it happened."""


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _as_id(v: Any, what: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        raise _Bad(f"missing {what} id")
    if isinstance(v, str):
        s = v.strip()
        if not s:
            raise _Bad(f"empty {what} id")
        return s
    if isinstance(v, (bool, np.bool_)):
        raise _Bad(f"{what} id must be text or an integer, found {v!r}")
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if math.isfinite(v) and float(v).is_integer():
            return str(int(v))
        raise _Bad(f"{what} id {v!r} is not an integer; ids must be text or integers")
    if isinstance(v, bytes):
        try:
            return _as_id(v.decode("utf-8"), what)
        except UnicodeDecodeError:
            raise _Bad(f"{what} id {_short(v)} is not UTF-8 text") from None
    raise _Bad(f"{what} id must be text or an integer, found {type(v).__name__} {_short(v)}")


def _parse_time(v: Any, where: str | None = None) -> int:
    """A timestamp as integer seconds: numbers as they are, ISO 8601 text, datetimes (naive = UTC)."""
    try:
        return _as_time(v)
    except _Bad as e:
        if where is None:
            raise
        raise DatasetError(f"{where}: {e}; {_TIME_FIX}") from None


def _as_time(v: Any) -> int:
    t = _as_time_unchecked(v)
    if not -(1 << 63) <= t < (1 << 63):
        raise _Bad(f"timestamp {_short(v)} is out of range")
    return t


def _as_time_unchecked(v: Any) -> int:
    import datetime as _dt

    if v is None or (isinstance(v, float) and math.isnan(v)):
        raise _Bad("missing timestamp")
    if isinstance(v, (bool, np.bool_)):
        raise _Bad(f"timestamp must be a number or a date, found {v!r}")
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            raise _Bad(f"timestamp {v!r} is not finite")
        return int(v)
    if isinstance(v, _dt.datetime):
        return int((v if v.tzinfo else v.replace(tzinfo=_dt.timezone.utc)).timestamp())
    if isinstance(v, _dt.date):
        return int(_dt.datetime(v.year, v.month, v.day, tzinfo=_dt.timezone.utc).timestamp())
    if isinstance(v, str):
        s = v.strip()
        if not s:
            raise _Bad("empty timestamp")
        try:
            f = float(s)
            if math.isfinite(f):
                return int(f)
        except ValueError:
            pass
        try:
            d = _dt.datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError:
            raise _Bad(f"timestamp {_short(s)} is neither a number nor an ISO date") from None
        return _as_time_unchecked(d)
    raise _Bad(f"timestamp must be a number or a date, found {type(v).__name__} {_short(v)}")


def _is_number(s: str) -> bool:
    try:
        float(s)
        return bool(s.strip())
    except ValueError:
        return False


def _resolve_columns(cols: Sequence[str], name: str, *, user_col: str | None, item_col: str | None,
                     time_col: str | None, header: bool, first_row: Sequence[Any] | None = None,
                     header_line: bool = False) -> tuple[str, str, str | None, dict[str, str]]:
    """``(user, item, time or None, how)``: the columns given, or detected by name (with a header) or
    position (without one: user, item, and a last column that reads as unix time)."""
    cols = [str(c) for c in cols]
    shown = cols if len(cols) <= 12 else cols[:12] + ["..."]
    where = f"{name}:1" if header_line else name
    what = "header" if header_line else "columns"
    pos_hint = "" if header else " (the file has no header row: columns are named by position, 0 = first)"

    def given(c: str, what: str, opt: str) -> str:
        if c not in cols:
            raise DatasetError(f"{name}: no {what} column {c!r}; the columns are {shown}{pos_hint}; "
                               f"pass {opt} with one of them")
        return c

    how: dict[str, str] = {}
    no_time = time_col is not None and str(time_col).strip().lower() in _NO_COLUMN
    u = given(user_col, "user", "--user-col (user_col=)") if user_col else None
    i = given(item_col, "item", "--item-col (item_col=)") if item_col else None
    t = None if no_time else (given(time_col, "time", "--time-col (time_col=)") if time_col else None)
    if user_col:
        how["user"] = "given"
    if item_col:
        how["item"] = "given"
    if time_col:
        how["time"] = "given"
    if header:
        if u is None:
            u = column_matches(cols, USER_COLUMNS)
            if u is None and len(cand := [c for c in cols if "user" in c.lower()]) == 1:
                u = cand[0]
            how["user"] = "detected"
        if i is None:
            i = column_matches([c for c in cols if c != u], ITEM_COLUMNS)
            if i is None and len(cand := [c for c in cols if "item" in c.lower() and c != u]) == 1:
                i = cand[0]
            how["item"] = "detected"
        if t is None and not time_col:
            t = column_matches([c for c in cols if c not in (u, i)], TIME_COLUMNS)
            how["time"] = "detected" if t else "none: file order"
    else:
        if u is None and len(cols) >= 2:
            u, how["user"] = "0", "position"
        if i is None and len(cols) >= 2:
            i, how["item"] = ("1" if u != "1" else "0"), "position"
        if t is None and not time_col:
            last = cols[-1]
            ok = len(cols) >= 3 and last not in (u, i) and first_row is not None and len(first_row) == len(cols)
            if ok:
                try:
                    ok = float(first_row[-1]) >= _UNIX_1973
                except (TypeError, ValueError):
                    ok = False
            t = last if ok else None
            how["time"] = "position (unix seconds)" if t else "none: file order"
    if no_time:
        how["time"] = "none: file order"
    if u is None or i is None:
        missing = " and ".join(w for w, c in (("user", u), ("item", i)) if c is None)
        opts = " ".join(o for o, c in (("--user-col NAME", u), ("--item-col NAME", i)) if c is None)
        raise DatasetError(f"{where}: cannot find the {missing} column{'s' if u is None and i is None else ''} "
                           f"in {what} {shown}; pass {opts} (user_col=, item_col= in Python)")
    if u == i:
        raise DatasetError(f"{name}: the user and item columns are both {u!r}; pass --user-col and --item-col")
    return u, i, t, how


class _Collector:
    """Turns raw ``(user, item, time)`` values into per-user sequences, counting unknown items."""

    def __init__(self, name: str, catalog: Catalog | None, item_id: str | Callable[[str], str], unknown_items: str,
                 has_time: bool, catalog_name: str):
        self.name = name
        self.catalog = catalog
        self.fmt = (lambda v: item_id.format(v)) if isinstance(item_id, str) else item_id
        self.identity = isinstance(item_id, str) and item_id == "{}"
        self.unknown_policy = unknown_items
        self.has_time = has_time
        self.catalog_name = catalog_name
        self.index: dict[str, int] = {s: r for r, s in enumerate(catalog.ids)} if catalog is not None else {}
        self.item_ids: list[str] = list(catalog.ids) if catalog is not None else []
        self.user_of: dict[str, int] = {}
        # int64 arrays, not lists: 8 bytes per event instead of ~36 on files with millions of rows
        self.users = array.array("q")
        self.items = array.array("q")
        self.times = array.array("q")
        self.rows = 0
        self.unknown: dict[str, int] = {}
        self.first_unknown: str | None = None

    def add(self, where: str, user: Any, item: Any, t: Any) -> None:
        try:
            u = _as_id(user, "user")
            if isinstance(item, (list, tuple, np.ndarray)):
                items = list(item)
                if not items:
                    raise _Bad("an empty item list")
                if self.has_time:
                    if not isinstance(t, (list, tuple, np.ndarray)) or len(t) != len(items):
                        raise _Bad(f"{len(items)} items need a list of {len(items)} timestamps, found {_short(t)}")
                    ts = [_as_time(x) for x in t]
                else:
                    ts = []
            else:
                items = [item]
                ts = [_as_time(t)] if self.has_time else []
            ids = [_as_id(x, "item") for x in items]
        except _Bad as e:
            fix = (_TIME_FIX if "timestamp" in str(e)
                   else "fix the value, or point --user-col/--item-col at the right columns")
            raise DatasetError(f"{where}: {e}; {fix}") from None
        ui = self.user_of.get(u)
        if ui is None:
            ui = self.user_of[u] = len(self.user_of)
        for k, raw in enumerate(ids):
            self.rows += 1
            iid = raw if self.identity else self.fmt(raw)
            j = self.index.get(iid)
            if j is None:
                if self.catalog is not None:
                    if self.first_unknown is None:
                        self.first_unknown = f"{where}: item {iid!r}"
                    self.unknown[iid] = self.unknown.get(iid, 0) + 1
                    continue
                j = self.index[iid] = len(self.item_ids)
                self.item_ids.append(iid)
            self.users.append(ui)
            self.items.append(j)
            if self.has_time:
                self.times.append(ts[k])

    def finish(self, fmt_name: str, columns: dict[str, Any]) -> Interactions:
        n_unknown = sum(self.unknown.values())
        if self.unknown and self.unknown_policy == "error":
            raise DatasetError(
                f"{self.first_unknown} is not in the catalog {self.catalog_name} ({n_unknown} of {self.rows} rows "
                f"name {len(self.unknown)} unknown item(s)); add them to the catalog, check --item-col/--item-id, "
                "or pass --unknown-items skip (unknown_items='skip') to drop and count them")
        if self.rows == 0:
            raise DatasetError(f"{self.name}: no interactions (the file has no data rows); add one row per "
                               "user-item interaction")
        if not self.items:
            raise DatasetError(f"{self.name}: none of the {self.rows} interactions names an item of the catalog "
                               f"{self.catalog_name}; check --item-col/--item-id against the catalog's ids "
                               f"(e.g. {self.item_ids[:3]})")
        users = np.frombuffer(self.users, dtype=np.int64).copy()
        items = np.frombuffer(self.items, dtype=np.int64).copy()
        if self.has_time:
            times = np.frombuffer(self.times, dtype=np.int64).copy()
            order = np.lexsort((np.arange(users.size), times, users))  # by user, then time, then file order
        else:
            times = None
            order = np.argsort(users, kind="stable")
        bounds = np.searchsorted(users[order], np.arange(len(self.user_of) + 1))
        present = [u for u in range(len(self.user_of)) if bounds[u + 1] > bounds[u]]
        names = list(self.user_of)
        seqs = [items[order[bounds[u]:bounds[u + 1]]] for u in present]
        tss = [times[order[bounds[u]:bounds[u + 1]]] for u in present] if times is not None else None
        info = {"source": self.name, "format": fmt_name, "columns": columns, "rows": self.rows,
                "unknown_items": {"policy": self.unknown_policy, "rows_skipped": n_unknown,
                                  "distinct": len(self.unknown), "examples": list(self.unknown)[:10]}}
        return Interactions([names[u] for u in present], list(self.item_ids), seqs, tss, info)


def _read_bytes(path: Path, fmt: FileFormat) -> bytes:
    import gzip

    if fmt.gzip:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    return path.read_bytes()


def _decode(raw: bytes, name: str, encoding: str) -> str:
    enc = "utf-8-sig" if encoding.replace("_", "-").lower() in ("utf-8", "utf8") else encoding
    try:
        return raw.decode(enc)
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DatasetError(f"{name}:{line}: not valid {encoding} text (byte 0x{raw[e.start]:02x}); pass --encoding "
                           "with the file's encoding (e.g. latin-1)") from None
    except LookupError:
        raise DatasetError(f"unknown text encoding {encoding!r} (--encoding)") from None


def _delimited(path: Path, fmt: FileFormat, col: _Collector, opts: dict[str, Any], encoding: str,
               delimiter: str | None) -> dict[str, Any]:
    name = path.name
    text = _decode(_read_bytes(path, fmt), name, encoding)
    delim = delimiter or fmt.delimiter or ","
    if delim == "::":
        text, delim = text.replace("::", "\x1f"), "\x1f"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    first: list[str] | None = None
    try:
        for row in reader:
            if row and any(c.strip() for c in row):
                first = [c.strip() for c in row]
                break
    except csv.Error as e:
        raise DatasetError(f"{name}:{reader.line_num}: malformed CSV ({e}); check the quoting") from None
    if first is None:
        raise DatasetError(f"{name}: the file is empty; it needs a header row (user, item, timestamp) and one row "
                           "per interaction")
    # column names are not numbers: a first row holding one is data (ml-100k's u.data, ml-1m's ratings.dat)
    header = not (len(first) >= 2 and any(_is_number(c) for c in first))
    cols = first if header else [str(k) for k in range(len(first))]
    if header and len(set(cols)) != len(cols):
        dup = sorted({c for c in cols if cols.count(c) > 1})
        raise DatasetError(f"{name}:1: duplicate column names {dup} in the header; give every column a distinct name")
    u, i, t, how = _resolve_columns(cols, name, header=header, first_row=None if header else first,
                                    header_line=header, **opts)
    col.has_time = t is not None
    ui, ii = cols.index(u), cols.index(i)
    ti = cols.index(t) if t is not None else None
    need = max(c for c in (ui, ii, ti) if c is not None) + 1

    def rows() -> Iterator[tuple[int, list[str]]]:
        if not header:
            yield 1, first  # the first row is data
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                raise DatasetError(f"{name}:{reader.line_num}: malformed CSV ({e}); check the quoting") from None
            yield reader.line_num, row

    first_line = None
    for line, row in rows():
        if first_line is None and not header:
            first_line = line
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < need:
            raise DatasetError(f"{name}:{line}: expected at least {need} columns, found {len(row)}; check the "
                               f"delimiter ({delim!r}) and quote fields that contain it")
        col.add(f"{name}:{line}", row[ui], row[ii], row[ti] if ti is not None else None)
    return {"user": u, "item": i, "time": t, "header": header, "how": how}


def _records(path: Path, fmt: FileFormat, col: _Collector, opts: dict[str, Any], encoding: str) -> dict[str, Any]:
    """JSONL (one object per line) or a JSON array of objects / object user -> items."""
    name = path.name
    text = _decode(_read_bytes(path, fmt), name, encoding)
    recs: Iterable[tuple[str, Any]]
    if fmt.kind == "json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{name}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}); fix the JSON, or "
                               "write one JSON object per line (JSONL)") from None
        if isinstance(data, dict):
            return _user_map(name, data, col, opts)
        if not isinstance(data, list):
            raise DatasetError(f"{name}: the top-level JSON value is a {type(data).__name__}; give a JSON array of "
                               "interaction objects, an object user -> item list, or JSONL")
        recs = ((f"{name} record {k}", r) for k, r in enumerate(data))
    else:
        def jsonl() -> Iterator[tuple[str, Any]]:
            for lineno, line in enumerate(text.split("\n"), 1):
                if not line.strip():
                    continue
                try:
                    yield f"{name}:{lineno}", json.loads(line)
                except json.JSONDecodeError as e:
                    raise DatasetError(json_error(name, f":{lineno}", e)) from None

        recs = jsonl()
    it = iter(recs)
    buf: list[tuple[str, Any]] = []
    keys: dict[str, None] = {}
    for where, rec in it:  # the first records name the columns
        if not isinstance(rec, dict):
            raise DatasetError(f"{where}: expected a JSON object with user, item and time fields, found "
                               f"{type(rec).__name__} {_short(rec)}")
        buf.append((where, rec))
        keys.update(dict.fromkeys(map(str, rec)))
        if len(buf) >= 100:
            break
    if not buf:
        raise DatasetError(f"{name}: no interactions (no JSON records); add one object per interaction")
    u, i, t, how = _resolve_columns(list(keys), name, header=True, **opts)
    col.has_time = t is not None
    for where, rec in itertools.chain(buf, it):
        if not isinstance(rec, dict):
            raise DatasetError(f"{where}: expected a JSON object with user, item and time fields, found "
                               f"{type(rec).__name__} {_short(rec)}")
        if u not in rec or i not in rec:
            miss = u if u not in rec else i
            raise DatasetError(f"{where}: no {miss!r} field (the {'user' if miss == u else 'item'} column); every "
                               "record needs the user and item fields")
        if t is not None and t not in rec:
            raise DatasetError(f"{where}: no {t!r} field (the time column); {_TIME_FIX}")
        col.add(where, rec[u], rec[i], rec.get(t) if t is not None else None)
    return {"user": u, "item": i, "time": t, "header": True, "how": how}


def _user_map(name: str, data: dict, col: _Collector, opts: dict[str, Any]) -> dict[str, Any]:
    """``{"user": [item, ...]}`` or ``{"user": [[item, time], ...]}``, oldest first."""
    if any(opts.get(k) for k in ("user_col", "item_col")):
        raise DatasetError(f"{name}: maps users to item lists, so --user-col/--item-col do not apply; drop them")
    forms: dict[bool, str] = {}
    for u, seq in data.items():
        where = f"{name} user {u!r}"
        if isinstance(seq, dict):
            raise DatasetError(f"{where}: maps to an object; this looks like a catalog (id -> fields), not "
                               "interactions: pass it as --catalog")
        if not isinstance(seq, list):
            raise DatasetError(f"{where}: expected a list of items, found {type(seq).__name__} {_short(seq)}")
        for x in seq:
            is_pair = isinstance(x, (list, tuple))
            forms.setdefault(is_pair, where)
            if is_pair and len(x) != 2:
                raise DatasetError(f"{where}: every [item, time] pair needs exactly 2 values, found {_short(x)}")
    if len(forms) > 1:
        raise DatasetError(f"{forms[True]}: [item, time] pairs where {forms[False]} has plain items; use one form")
    pairs = forms.get(True) is not None
    no_time = str(opts.get("time_col") or "").strip().lower() in _NO_COLUMN and opts.get("time_col") is not None
    col.has_time = pairs and not no_time
    for u, seq in data.items():
        if not seq:
            continue
        items = [x[0] for x in seq] if pairs else seq
        col.add(f"{name} user {u!r}", u, items, [x[1] for x in seq] if col.has_time else None)
    t = "(pairs)" if col.has_time else None
    return {"user": "(keys)", "item": "(values)", "time": t, "header": False,
            "how": {"user": "JSON object keys", "item": "lists", "time": "pairs" if t else "none: list order"}}


def _arrow_kind(t: Any) -> str:
    import pyarrow.types as pat

    if pat.is_dictionary(t):
        t = t.value_type
    if pat.is_string(t) or pat.is_large_string(t) or getattr(pat, "is_string_view", lambda _: False)(t):
        return "text"
    if pat.is_integer(t):
        return "int"
    if pat.is_floating(t):
        return "float"
    if pat.is_timestamp(t) or pat.is_date(t):
        return "time"
    if pat.is_binary(t) or pat.is_large_binary(t):
        return "binary"
    if pat.is_list(t) or pat.is_large_list(t) or getattr(pat, "is_list_view", lambda _: False)(t):
        return "list:" + _arrow_kind(t.value_type)
    return str(t)


def _parquet(path: Path, col: _Collector, opts: dict[str, Any], batch_size: int = 65536) -> dict[str, Any]:
    from .catalog import _open_parquet

    name = path.name
    pf = _open_parquet(path)
    schema = pf.schema_arrow
    cols = list(schema.names)
    u, i, t, how = _resolve_columns(cols, name, header=True, **opts)
    col.has_time = t is not None
    id_ok = ("text", "int", "float", "binary")
    for c, what, ok in ((u, "user", id_ok), (i, "item", id_ok + tuple(f"list:{k}" for k in id_ok)),
                        (t, "time", ("int", "float", "time", "text", "list:int", "list:float", "list:time",
                                     "list:text"))):
        if c is None:
            continue
        kind = _arrow_kind(schema.field(c).type)
        if kind not in ok:
            want = "timestamps (integers, floats, dates or ISO text)" if what == "time" else "ids (text or integers)"
            raise DatasetError(f"{name}: column {c!r} (the {what} column) has type {schema.field(c).type}; expected "
                               f"{want} (wrong schema); convert it or point --{what}-col at another column")
    if pf.metadata.num_rows == 0:
        raise DatasetError(f"{name}: no interactions (the Parquet file has 0 rows); add one row per interaction")
    sel = [c for c in (u, i, t) if c is not None]
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size, columns=sel):
        data = {c: batch.column(k).to_pylist() for k, c in enumerate(sel)}
        tv = data[t] if t is not None else None
        for k in range(batch.num_rows):
            col.add(f"{name} row {row}", data[u][k], data[i][k], tv[k] if tv is not None else None)
            row += 1
    return {"user": u, "item": i, "time": t, "header": True, "how": how}


def _sequences(path: Path, fmt: FileFormat, col: _Collector, opts: dict[str, Any], encoding: str) -> dict[str, Any]:
    name = path.name
    if any(opts.get(k) for k in ("user_col", "item_col")) or (opts.get("time_col") or "none").lower() not in _NO_COLUMN:
        raise DatasetError(f"{name}: is a sequence file ('user item item ...' per line), so --user-col/--item-col/"
                           "--time-col do not apply; drop them")
    text = _decode(_read_bytes(path, fmt), name, encoding)
    col.has_time = False
    seen: set[str] = set()
    for lineno, line in enumerate(text.split("\n"), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise DatasetError(f"{name}:{lineno}: a user with no items (expected 'user item item ...')")
        if parts[0] in seen:
            raise DatasetError(f"{name}:{lineno}: user {parts[0]!r} appears on more than one line; a sequence file "
                               "has one line per user")
        seen.add(parts[0])
        col.add(f"{name}:{lineno}", parts[0], parts[1:], None)
    return {"user": "(first field)", "item": "(other fields)", "time": None, "header": False,
            "how": {"user": "position", "item": "position", "time": "none: line order"}}


def read_interactions(path: str | os.PathLike, *, catalog: Catalog | None = None, user_col: str | None = None,
                      item_col: str | None = None, time_col: str | None = None,
                      item_id: str | Callable[[str], str] = "{}", unknown_items: str = "error",
                      encoding: str = "utf-8", delimiter: str | None = None) -> Interactions:
    """Read a user's interactions file, whatever its format.

    Formats (by extension and content, :func:`neo.items.formats.detect_format`): CSV, TSV and other
    delimited text (with a header row, or without one when the first row holds a number), JSONL
    (one object per interaction), JSON (an array of objects, or an object user -> list of items or
    ``[item, time]`` pairs), Parquet, and sequence files (``user item item ...`` per line). In
    JSON, JSONL and Parquet an item field may hold a list of items (a user's sequence, with a list
    of times when there is a time column). ``.gz`` text is decompressed.

    Parameters
    ----------
    path : path-like
    catalog : Catalog, optional
        Index items by catalog row. Without one, items are indexed in order of first appearance.
    user_col, item_col, time_col : str, optional
        Column names (positions ``"0"``, ``"1"``, ... for a file without a header). Default: detected
        from common names (:data:`USER_COLUMNS`, :data:`ITEM_COLUMNS`, :data:`TIME_COLUMNS`), or by
        position without a header (user, item, and a last column of unix seconds). ``time_col="none"``:
        no time column (the file order is the time order).
    item_id : str or callable
        Turns a raw item value into a catalog id: a format string (``"movie:{}"``) or a function.
    unknown_items : {"error", "skip"}
        Items missing from ``catalog``: ``error`` raises naming the first (file and row);
        ``skip`` drops those rows and counts them in ``info["unknown_items"]``.
    encoding : str
        Text encoding of text formats.
    delimiter : str, optional
        Field separator of delimited text (default: sniffed from the first line).

    Returns
    -------
    Interactions
        Per-user sequences sorted by time (stable: equal times keep file order), users in order
        of first appearance; ``info`` says the format, the columns used and how they were found,
        and what was skipped.

    Raises
    ------
    DatasetError
        One line naming the file, row and fix: missing columns, bad values (empty ids, timestamps
        that are not times, wrong Parquet column types), invalid JSON, an empty file, unknown items.
    """
    if unknown_items not in UNKNOWN_ITEM_POLICIES:
        raise DatasetError(f"unknown_items must be one of {UNKNOWN_ITEM_POLICIES}, got {unknown_items!r}")
    p = Path(path)
    fmt = detect_format(p, allow_sequences=True)
    no_time = time_col is not None and str(time_col).strip().lower() in _NO_COLUMN
    has_time = fmt.kind != "sequences" and not no_time  # refined once the columns are known
    src = getattr(catalog, "load_report", None)
    cat_name = (f"({src.source})" if src is not None and getattr(src, "source", None)
                else f"({len(catalog or [])} items)")
    col = _Collector(p.name, catalog, item_id, unknown_items, has_time, cat_name)
    opts = dict(user_col=user_col, item_col=item_col, time_col=time_col)
    if fmt.kind in ("jsonl", "json"):
        cols = _records(p, fmt, col, opts, encoding)
    elif fmt.kind == "parquet":
        cols = _parquet(p, col, opts)
    elif fmt.kind == "sequences":
        cols = _sequences(p, fmt, col, opts, encoding)
    else:
        cols = _delimited(p, fmt, col, opts, encoding, delimiter)
    return col.finish(fmt.describe(), cols)


CODES_COLUMNS = ("codes", "sid", "sids", "semantic_id", "semantic_ids", "code", "tokens", "index")
_INT = re.compile(r"-?\d+")


def _codes_of(v: Any) -> list[int]:
    """Codes from a list (ints or tokens like ``"<a_236>"``) or a string (``"<a_236><b_231>"``, ``"236 231"``)."""
    if isinstance(v, (list, tuple, np.ndarray)):
        out = []
        for x in v:
            if isinstance(x, (bool, np.bool_)):
                raise _Bad(f"code {x!r} is not an integer")
            if isinstance(x, (int, np.integer)):
                out.append(int(x))
                continue
            if isinstance(x, (float, np.floating)) and float(x).is_integer():
                out.append(int(x))
                continue
            found = _INT.findall(x) if isinstance(x, str) else []
            if len(found) != 1:
                raise _Bad(f"code {_short(x)} does not hold exactly one integer")
            out.append(int(found[0]))
    elif isinstance(v, str):
        out = [int(x) for x in _INT.findall(v)]
    elif isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        out = [int(v)]
    else:
        raise _Bad(f"codes must be a list of integers or a string of them, found {type(v).__name__} {_short(v)}")
    if not out:
        raise _Bad(f"no codes in {_short(v)}")
    if min(out) < 0:
        raise _Bad(f"negative code in {_short(v)}")
    return out


def read_codes(path: str | os.PathLike, *, catalog: Catalog | None = None, id_col: str | None = None,
               codes_col: str | None = None, encoding: str = "utf-8") -> dict[str, list[int]]:
    """Read semantic-ID codes a user already has: item id -> codes (one integer per level).

    Formats: a JSON object ``{"<id>": [236, 231, 226]}`` or with tokens (``["<a_236>", "<b_231>",
    "<c_226>"]``, the LC-Rec / MiniOneRec ``index.json``), or a table (CSV, TSV, JSONL, JSON array,
    Parquet) with an id column and either a codes column (a list, or a string such as ``"236 231 226"``
    or ``"<a_236><b_231><c_226>"``) or one integer column per level (``c0, c1, ...``: every column but
    the id).

    Parameters
    ----------
    catalog : Catalog, optional
        When given, every catalog item must have codes and every id must be in the catalog.
    id_col, codes_col : str, optional
        Column names (default: detected: :data:`neo.items.catalog.ID_COLUMNS`, :data:`CODES_COLUMNS`).

    Raises
    ------
    DatasetError
        Naming the file and row: unparsable codes, duplicate ids, ids missing from the catalog or
        catalog items without codes.
    """
    from .catalog import ID_COLUMNS

    p = Path(path)
    fmt = detect_format(p, allow_sequences=False)
    name = p.name
    out: dict[str, list[int]] = {}
    first_where: dict[str, str] = {}

    def put(where: str, iid: Any, codes: Any) -> None:
        try:
            k = _as_id(iid, "item")
            c = _codes_of(codes)
        except _Bad as e:
            raise DatasetError(f"{where}: {e}; write codes as integers, one per level") from None
        if k in out:
            raise DatasetError(f"{where}: item {k!r} has codes twice (first at {first_where[k]}); keep one row per "
                               "item")
        out[k] = c
        first_where[k] = where

    records: Iterable[tuple[str, Any]]
    if fmt.kind == "parquet":
        from .catalog import _open_parquet

        pf = _open_parquet(p)
        records = ((f"{name} row {i}", r) for i, r in enumerate(
            r for b in pf.iter_batches() for r in b.to_pylist()))
    else:
        text = _decode(_read_bytes(p, fmt), name, encoding)
        if fmt.kind == "json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{name}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if isinstance(data, dict):
                for k, v in data.items():
                    put(f"{name} item {k!r}", k, v)
                records = []
            elif isinstance(data, list):
                records = ((f"{name} record {i}", r) for i, r in enumerate(data))
            else:
                raise DatasetError(f"{name}: expected a JSON object id -> codes or an array of records")
        elif fmt.kind == "jsonl":
            def jl() -> Iterator[tuple[str, Any]]:
                for n, line in enumerate(text.split("\n"), 1):
                    if line.strip():
                        try:
                            yield f"{name}:{n}", json.loads(line)
                        except json.JSONDecodeError as e:
                            raise DatasetError(json_error(name, f":{n}", e)) from None
            records = jl()
        else:
            delim = fmt.delimiter or ","
            if delim == "::":
                text, delim = text.replace("::", "\x1f"), "\x1f"
            reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
            header = [h.strip() for h in next(reader, [])]

            def rows() -> Iterator[tuple[str, Any]]:
                for row in reader:
                    if row and any(c.strip() for c in row):
                        if len(row) != len(header):
                            raise DatasetError(f"{name}:{reader.line_num}: expected {len(header)} columns (header), "
                                               f"found {len(row)}")
                        yield f"{name}:{reader.line_num}", dict(zip(header, row))
            records = rows()
    it = iter(records)
    head = list(itertools.islice(it, 100))
    if head:
        keys: dict[str, None] = {}
        for where, r in head:
            if not isinstance(r, dict):
                raise DatasetError(f"{where}: expected an object with an id and codes, found {type(r).__name__}")
            keys.update(dict.fromkeys(map(str, r)))
        cols = list(keys)
        ic = id_col or column_matches(cols, ID_COLUMNS)
        if ic is None or ic not in cols:
            raise DatasetError(f"{name}: no item id column {'(' + repr(id_col) + ') ' if id_col else ''}among {cols}; "
                               "pass --id-col NAME")
        cc = codes_col or column_matches([c for c in cols if c != ic], CODES_COLUMNS)
        if codes_col and codes_col not in cols:
            raise DatasetError(f"{name}: no codes column {codes_col!r} among {cols}")
        level_cols = None if cc else [c for c in cols if c != ic]
        for where, r in itertools.chain(head, it):
            if not isinstance(r, dict):
                raise DatasetError(f"{where}: expected an object with an id and codes, found {type(r).__name__}")
            put(where, r.get(ic), r.get(cc) if cc else [r.get(c) for c in level_cols or []])
    if not out:
        raise DatasetError(f"{name}: no codes (the file has no records); give one row of codes per item")
    if catalog is not None:
        unknown = [k for k in out if k not in catalog]
        if unknown:
            raise DatasetError(f"{first_where[unknown[0]]}: item {unknown[0]!r} is not in the catalog ({len(unknown)} "
                               "id(s) with codes are unknown); give codes for the catalog's items only")
        missing = [i for i in catalog.ids if i not in out]
        if missing:
            raise DatasetError(f"{name}: {len(missing)} catalog item(s) have no codes, e.g. {missing[:5]}; every item "
                               "needs codes")
    return out


def load_interactions_csv(path: str | os.PathLike, *, user_col: str | None = None, item_col: str | None = None,
                          time_col: str | None = None, delimiter: str | None = None,
                          catalog: Catalog | None = None, encoding: str = "utf-8") -> Interactions:
    """Load ``user, item, timestamp`` rows; kept for compatibility, see :func:`read_interactions`
    (which this calls, so any supported format works)."""
    return read_interactions(path, user_col=user_col, item_col=item_col, time_col=time_col, delimiter=delimiter,
                             catalog=catalog, encoding=encoding)


def _read_item_text(path: Path) -> Catalog:
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        return load_catalog_jsonl(path)
    if path.suffix.lower() == ".json":
        # {"<item id>": {"title": ..., ...}} or {"<item id>": "text"} (LC-Rec / LETTER item json)
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise DatasetError(f"{path.name}: expected a JSON object mapping item id to text or fields")
        recs = []
        for k, v in data.items():
            rec = {"id": str(k)}
            rec.update(v if isinstance(v, dict) else {"title": v})
            recs.append(rec)
        return Catalog.from_records(recs, default_type="item", source=path.name, require_text=False)
    recs = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if "\t" not in line:
                raise DatasetError(f"{path.name}:{lineno}: expected 'item<TAB>text'")
            k, v = line.split("\t", 1)
            recs.append({"id": k.strip(), "title": v.strip()})
    return Catalog.from_records(recs, default_type="item", source=path.name, require_text=False)


def load_sequences(path: str | os.PathLike, *, item_text: str | os.PathLike | None = None,
                   item_type: str = "item") -> Dataset:
    """Load the P5 / S3-Rec sequence format: ``user item item ...`` per line, oldest first.

    Parameters
    ----------
    path : path-like
        The sequence file (whitespace separated ids).
    item_text : path-like, optional
        Item text: a JSONL catalog (``.jsonl``), an id -> fields/text JSON object (``.json``), or
        ``item<TAB>text`` lines. Items without text keep their id as text.
    item_type : str
        Type name for the items.

    Returns
    -------
    Dataset
        With a catalog (text from ``item_text`` or the item ids) whose rows index the sequences.
    """
    path = Path(path)
    users, seq_ids = [], []
    seen: set[str] = set()
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 2:
                raise DatasetError(f"{path.name}:{lineno}: a user with no items (expected 'user item item ...')")
            if parts[0] in seen:
                raise DatasetError(f"{path.name}:{lineno}: user {parts[0]!r} appears on more than one line")
            seen.add(parts[0])
            users.append(parts[0])
            seq_ids.append(parts[1:])
    if not users:
        raise DatasetError(f"{path.name}: no sequences")
    order: dict[str, int] = {}
    for s in seq_ids:
        for it in s:
            order.setdefault(it, len(order))
    text_cat = _read_item_text(Path(item_text)) if item_text is not None else None
    texts: dict[str, dict[str, str]] = {}
    if text_cat is not None:
        for r, iid in enumerate(text_cat.ids):
            texts[iid] = {f: text_cat.text[f][r] for f in text_cat.text_fields}
    recs = []
    for iid in order:
        rec: dict[str, Any] = {"id": iid, "type": item_type}
        t = texts.get(iid)
        if t and any(t.values()):
            rec.update(t)
        else:
            rec["title"] = f"item {iid}"
        recs.append(rec)
    catalog = Catalog.from_records(recs, source=path.name, require_text=False)
    inter = Interactions(users, list(catalog.ids),
                         [np.asarray([order[i] for i in s], dtype=np.int64) for s in seq_ids], None)
    n_text = sum(1 for i in order if texts.get(i))
    return Dataset(path.stem, inter, catalog, item_type, [],
                   {"source": str(path), "items_with_text": n_text})


def load_catalog_jsonl(path: str | os.PathLike, *, default_type: str = "item", **kwargs: Any) -> Catalog:
    """A JSONL catalog (``{"id": ..., "type": ..., "title": ..., ...}`` per line); see
    :meth:`neo.Catalog.from_jsonl` for the options. Records without a type get ``default_type``."""
    return Catalog.from_jsonl(path, default_type=default_type, **kwargs)


# ============================================================================ MovieLens

_YEAR = re.compile(r"\s*\((\d{4})(?:[-–]\d{0,4})?\)\s*$")
_WS = re.compile(r"\s+")


def _norm_tag(t: str) -> str:
    return _WS.sub(" ", t.strip().lower())


def _split_title(title: str) -> tuple[str, str]:
    """``"Toy Story (1995)"`` -> ``("Toy Story", "1995")``; also moves a trailing article back
    (``"Matrix, The"`` -> ``"The Matrix"``) so titles read naturally in prompts."""
    title = title.strip()
    m = _YEAR.search(title)
    year = ""
    if m:
        year = m.group(1)
        title = title[: m.start()].strip()
    m2 = re.match(r"^(.*), (The|A|An|Les|La|Le|L'|Il|Das|Der|Die|El)$", title)
    if m2:
        title = f"{m2.group(2)} {m2.group(1)}" if not m2.group(2).endswith("'") else f"{m2.group(2)}{m2.group(1)}"
    return title, year


def _held_out(text: str, fraction: float) -> bool:
    # stable across runs and Python processes (unlike hash()): a query is held out by its text alone
    return (zlib.crc32(text.encode("utf-8")) % 10_000) < fraction * 10_000


def _csv_rows(data: bytes, name: str) -> Iterable[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""))
    for row in reader:
        yield reader.line_num, row


def load_movielens(path: str | os.PathLike | None = None, *, min_rating: float | None = None,
                   held_out_queries: float = 0.2, min_query_items: int = 1) -> Dataset:
    """MovieLens with two item types, ``movie`` and ``tag``.

    Parameters
    ----------
    path : path-like, optional
        A directory with ``movies.csv``, ``ratings.csv`` and ``tags.csv`` (the ml-latest /
        ml-latest-small layout). ``None``: the copy of ``ml-latest-small`` bundled in the package.
    min_rating : float, optional
        Keep only ratings >= this as interactions (``None``: every rating is an interaction, the
        usual implicit-feedback protocol).
    held_out_queries : float
        Fraction of the distinct tags (chosen by a hash of the tag text, so stable) whose queries
        are held out for testing search: those tags are left out of the movies' ``tags`` text, so a
        model or a lexical baseline must find the movies without seeing the query in their text.
    min_query_items : int
        A tag becomes a search query when it was applied to at least this many movies.

    Returns
    -------
    Dataset
        Catalog rows: every movie in ``movies.csv`` (type ``movie``; text ``title``, ``year``,
        ``genres``, ``tags``; popularity = number of ratings), then every distinct normalised tag
        (type ``tag``, id ``tag:<text>``; text ``title`` = the tag; popularity = times applied).
        Interactions: each user's rated movies by time. ``side``: each user's tag applications
        (tag items) by time, merged into training sequences by :meth:`Dataset.training_sequences`
        so that recommending tags is learnable. Queries: each tag -> the movies it was
        applied to (target type ``movie``).
    """
    if path is None:
        from ..data import movielens_license, read_bundled_movielens

        files = read_bundled_movielens()
        source = "bundled ml-latest-small (GroupLens, 2018-09-26)"
        license_text: str | None = movielens_license()
    else:
        d = Path(path)
        files = {}
        for f in ("movies.csv", "ratings.csv", "tags.csv"):
            p = d / f
            if not p.is_file():
                raise FileNotFoundError(f"{d} is not a MovieLens directory: {f} is missing")
            files[f] = p.read_bytes()
        source = str(d)
        license_text = (d / "README.txt").read_text(encoding="utf-8", errors="replace") if (d / "README.txt").is_file() else None

    movies: list[tuple[str, str, str, str]] = []  # id, title, year, genres
    for line, row in _csv_rows(files["movies.csv"], "movies.csv"):
        try:
            mid, raw_title, genres = row["movieId"].strip(), row["title"], row["genres"]
        except (KeyError, AttributeError):
            raise DatasetError(f"movies.csv:{line}: expected columns movieId,title,genres") from None
        title, year = _split_title(raw_title)
        g = "" if genres.strip() == "(no genres listed)" else ", ".join(x for x in genres.split("|") if x)
        movies.append((mid, title or raw_title.strip(), year, g))
    movie_row = {m[0]: i for i, m in enumerate(movies)}

    # tags: per movie the distinct normalised tags; per tag its movies and count
    tag_events: list[tuple[str, str, int]] = []
    tag_movies: dict[str, list[str]] = defaultdict(list)
    tag_count: dict[str, int] = defaultdict(int)
    movie_tags: dict[str, list[str]] = defaultdict(list)
    for line, row in _csv_rows(files["tags.csv"], "tags.csv"):
        try:
            mid, raw = row["movieId"].strip(), row["tag"]
        except (KeyError, AttributeError):
            raise DatasetError(f"tags.csv:{line}: expected columns userId,movieId,tag,timestamp") from None
        t = _norm_tag(raw or "")
        if not t or mid not in movie_row:
            continue
        tag_count[t] += 1
        if mid not in tag_movies[t]:
            tag_movies[t].append(mid)
        if t not in movie_tags[mid]:
            movie_tags[mid].append(t)
        tag_events.append((row["userId"], t, int(float(row["timestamp"]))))
    tags = sorted(tag_count, key=lambda t: (-tag_count[t], t))
    held = {t for t in tags if _held_out(t, held_out_queries)}

    users, items, times = [], [], []
    for line, row in _csv_rows(files["ratings.csv"], "ratings.csv"):
        try:
            u, mid, r, ts = row["userId"], row["movieId"].strip(), float(row["rating"]), int(row["timestamp"])
        except (KeyError, ValueError, TypeError, AttributeError):
            raise DatasetError(f"ratings.csv:{line}: expected userId,movieId,rating,timestamp with numbers") from None
        if mid not in movie_row:
            raise DatasetError(f"ratings.csv:{line}: movie {mid} is not in movies.csv")
        if min_rating is not None and r < min_rating:
            continue
        users.append(u)
        items.append(mid)
        times.append(ts)

    n_ratings = np.bincount([movie_row[m] for m in items], minlength=len(movies))
    recs: list[dict[str, Any]] = []
    for i, (mid, title, year, genres) in enumerate(movies):
        visible = [t for t in movie_tags.get(mid, []) if t not in held]
        recs.append({"id": mid, "type": "movie", "title": title, "year": year, "genres": genres,
                     "tags": ", ".join(visible), "popularity": float(n_ratings[i])})
    for t in tags:
        recs.append({"id": f"tag:{t}", "type": "tag", "title": t, "year": "", "genres": "", "tags": "",
                     "popularity": float(tag_count[t])})
    catalog = Catalog.from_records(recs, types=["movie", "tag"], text_fields=["title", "year", "genres", "tags"],
                                   source="movielens")
    inter = Interactions.from_triples(users, items, times, item_ids=catalog.ids)
    # tag applications as events of the tag type: what a recommend-a-tag prompt learns from
    side = Interactions.from_triples([e[0] for e in tag_events], [f"tag:{e[1]}" for e in tag_events],
                                     [e[2] for e in tag_events], item_ids=catalog.ids) if tag_events else None
    queries = []
    for t in tags:
        ms = tag_movies[t]
        if len(ms) >= min_query_items:
            queries.append(SearchQuery(t, np.asarray(sorted(movie_row[m] for m in ms), dtype=np.int64), "movie",
                                       "test" if t in held else "train"))
    info = {"source": source, "citation": "F. Maxwell Harper and Joseph A. Konstan. 2015. The MovieLens Datasets: "
            "History and Context. ACM TiiS 5, 4: 19:1-19:19. https://doi.org/10.1145/2827872",
            "license": "MovieLens usage license (research use, cite, no endorsement, non-commercial); "
                       "see neo/data/ml-latest-small.LICENSE.txt" if path is None else "see README.txt in " + source,
            "held_out_tags": len(held)}
    ds = Dataset("ml-latest-small" if path is None else Path(path).name, inter, catalog, "movie", queries, info,
                 side)
    if license_text is not None:
        ds.info["license_text_chars"] = len(license_text)
    return ds


def infer_target_type(catalog: Catalog | None, interactions: Interactions) -> str | None:
    """The item type every interacted item has (what a recommender ranks), or ``None`` when the
    items span several types (or there is no catalog)."""
    if catalog is None or not interactions.sequences:
        return None
    used = np.unique(np.concatenate(interactions.sequences))
    types = np.unique(catalog.item_types[used]) if used.size else np.zeros(0, dtype=np.int32)
    return catalog.type_names[int(types[0])] if types.size == 1 else None


def load_user_dataset(interactions: str | os.PathLike, catalog: str | os.PathLike | Catalog | None = None, *,
                      target_type: str | None = None, catalog_options: dict[str, Any] | None = None,
                      item_text: str | os.PathLike | None = None, **interaction_options: Any) -> Dataset:
    """A user's interactions file (and catalog file) as a :class:`Dataset`.

    Parameters
    ----------
    interactions : path-like
        Read with :func:`read_interactions` (any supported format).
    catalog : path-like or Catalog, optional
        A catalog file (:meth:`neo.Catalog.load`, with ``catalog_options`` such as ``id_field``,
        ``type_field``, ``text_fields``) or a loaded catalog; items are indexed by its rows. Without
        one, a sequence file gets its items' text from ``item_text`` (:func:`load_sequences`) and
        other files index items in order of first appearance, with no catalog.
    target_type : str, optional
        The item type a recommender ranks. Default: the type of every interacted item when they
        share one (:func:`infer_target_type`), else every item.
    **interaction_options
        Passed to :func:`read_interactions` (``user_col``, ``item_col``, ``time_col``, ``item_id``,
        ``unknown_items``, ``encoding``, ``delimiter``).
    """
    p = Path(interactions)
    cat: Catalog | None
    if isinstance(catalog, Catalog) or catalog is None:
        cat = catalog
    else:
        cat = Catalog.load(catalog, **(catalog_options or {}))
    if cat is None and item_text is not None:
        if detect_format(p).kind != "sequences":
            raise DatasetError(f"--item-text applies to a sequence file; {p.name} is not one (give --catalog)")
        return load_sequences(p, item_text=item_text)
    inter = read_interactions(p, catalog=cat, **interaction_options)
    if target_type is not None:
        if cat is None:
            raise DatasetError("--target-type needs a catalog with item types (--catalog)")
        if target_type not in cat.type_names:
            raise DatasetError(f"--target-type {target_type!r} is not an item type of the catalog; its types are "
                               f"{cat.type_names}")
    tt = target_type or infer_target_type(cat, inter)
    info: dict[str, Any] = {"source": str(p), "interactions_file": inter.info}
    if cat is not None and cat.load_report is not None:
        info["catalog_file"] = {"source": cat.load_report.source, "n_read": cat.load_report.n_read,
                                "n_kept": cat.load_report.n_kept}
    return Dataset(p.stem, inter, cat, tt, [], info)


def load_dataset(spec: str | os.PathLike | None = None, *, item_text: str | os.PathLike | None = None,
                 catalog: str | os.PathLike | None = None, **interaction_options: Any) -> Dataset:
    """Load a dataset from a short spec, as the CLI does.

    ``None`` or ``"movielens"``: the bundled ml-latest-small. A directory with ``movies.csv`` and
    ``ratings.csv``: :func:`load_movielens`. A sequence file (``user item item ...`` per line)
    without a catalog: :func:`load_sequences` (with ``item_text``). Any other file: interactions in
    any supported format (:func:`load_user_dataset`, items indexed by ``catalog`` when given;
    ``interaction_options`` go to :func:`read_interactions`).
    """
    if spec is None or str(spec) in ("movielens", "ml-latest-small"):
        return load_movielens()
    p = Path(spec)
    if not p.exists():
        raise FileNotFoundError(2, "dataset path does not exist", str(p))
    if p.is_dir():
        if (p / "movies.csv").is_file() and (p / "ratings.csv").is_file():
            return load_movielens(p)
        raise DatasetError(f"{p} is a directory but not a MovieLens one (movies.csv + ratings.csv); give a file")
    if catalog is None and detect_format(p).kind == "sequences":
        return load_sequences(p, item_text=item_text)
    return load_user_dataset(p, catalog, **interaction_options)
