"""Datasets for training and evaluation: interactions, catalogs and search queries.

Loaders
-------
* :func:`load_interactions_csv` -- ``user,item,timestamp`` rows (header required; column names
  configurable, common spellings detected), sorted per user by time.
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

import csv
import io
import json
import os
import re
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .catalog import Catalog

from ..core.errors import NeoDataError

__all__ = [
    "Interactions",
    "SearchQuery",
    "Dataset",
    "DatasetError",
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
    """

    user_ids: list[str]
    item_ids: list[str]
    sequences: list[np.ndarray]
    timestamps: list[np.ndarray] | None = None

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
        if not drop_unknown:
            used = np.unique(np.concatenate(self.sequences)) if self.sequences else np.zeros(0, dtype=np.int64)
            missing = [self.item_ids[i] for i in used if remap[i] < 0]
            if missing:
                raise DatasetError(f"{len(missing)} interacted item(s) are not in the catalog, e.g. {missing[:5]} "
                                   "(drop_unknown=True drops them)")
        users, seqs, tss = [], [], []
        for u, s in enumerate(self.sequences):
            keep = remap[s] >= 0
            if keep.sum() < min_length:
                continue
            users.append(self.user_ids[u])
            seqs.append(remap[s[keep]])
            if self.timestamps is not None:
                tss.append(self.timestamps[u][keep].copy())
        return Interactions(users, [str(s) for s in item_ids], seqs, tss if self.timestamps is not None else None)


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

_USER_COLS = ("user", "user_id", "userid", "userId", "uid", "reviewerID")
_ITEM_COLS = ("item", "item_id", "itemid", "itemId", "movieId", "movie_id", "iid", "asin", "business_id")
_TIME_COLS = ("timestamp", "time", "ts", "unixReviewTime", "datetime", "date")


def _pick(header: list[str], wanted: str | None, choices: Sequence[str], what: str, path: str) -> int | None:
    if wanted is not None:
        if wanted not in header:
            raise DatasetError(f"{path}: no {what} column {wanted!r}; header is {header}")
        return header.index(wanted)
    low = {h.lower(): i for i, h in enumerate(header)}
    for c in choices:
        if c.lower() in low:
            return low[c.lower()]
    return None


def _parse_time(v: str, where: str) -> int:
    v = v.strip()
    try:
        return int(float(v))
    except ValueError:
        pass
    try:
        import datetime as _dt

        return int(_dt.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp())
    except ValueError:
        raise DatasetError(f"{where}: timestamp {v!r} is neither a number nor an ISO date") from None


def load_interactions_csv(path: str | os.PathLike, *, user_col: str | None = None, item_col: str | None = None,
                          time_col: str | None = None, delimiter: str | None = None,
                          catalog: Catalog | None = None, encoding: str = "utf-8") -> Interactions:
    """Load ``user, item, timestamp`` rows (one interaction per row, header required).

    Parameters
    ----------
    path : path-like
        CSV (or TSV: the delimiter is sniffed from the header line when not given).
    user_col, item_col, time_col : str, optional
        Column names; by default common spellings are detected (``user``/``user_id``/``userId``,
        ``item``/``item_id``/``movieId``/``asin``, ``timestamp``/``time``/``ts``). Without a time
        column the file order is the chronological order.
    catalog : Catalog, optional
        Index items by catalog row (every item must be in the catalog).

    Returns
    -------
    Interactions

    Raises
    ------
    DatasetError
        Naming the file and line of a malformed row or a missing column.
    """
    path = Path(path)
    name = path.name
    with open(path, encoding=encoding, newline="") as fh:
        text = fh.read()
    first = text.split("\n", 1)[0]
    if delimiter is None:
        delimiter = "\t" if "\t" in first else ("," if "," in first else ("::" if "::" in first else ","))
    if delimiter == "::":  # ml-1m style: csv cannot split on two characters
        text = text.replace("::", "\t")
        delimiter = "\t"
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DatasetError(f"{name}: empty file (a header row is required)") from None
    ui = _pick(header, user_col, _USER_COLS, "user", name)
    ii = _pick(header, item_col, _ITEM_COLS, "item", name)
    ti = _pick(header, time_col, _TIME_COLS, "timestamp", name)
    if ui is None or ii is None:
        raise DatasetError(f"{name}: cannot find the user and item columns in header {header}; "
                           "pass user_col= and item_col=")
    users, items, times = [], [], []
    need = max(c for c in (ui, ii, ti) if c is not None) + 1
    for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < need:
            raise DatasetError(f"{name}:{line}: expected at least {need} columns, found {len(row)}")
        u, it = row[ui].strip(), row[ii].strip()
        if not u or not it:
            raise DatasetError(f"{name}:{line}: empty {'user' if not u else 'item'} id")
        users.append(u)
        items.append(it)
        if ti is not None:
            times.append(_parse_time(row[ti], f"{name}:{line}"))
    if not users:
        raise DatasetError(f"{name}: no interactions")
    return Interactions.from_triples(users, items, times if ti is not None else None,
                                     item_ids=catalog.ids if catalog is not None else None)


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


def load_dataset(spec: str | os.PathLike | None = None, *, item_text: str | os.PathLike | None = None,
                 catalog: str | os.PathLike | None = None) -> Dataset:
    """Load a dataset from a short spec, as the CLI does.

    ``None`` or ``"movielens"``: the bundled ml-latest-small. A directory with ``movies.csv`` and
    ``ratings.csv``: :func:`load_movielens`. A ``.csv``/``.tsv``/``.dat`` file: interactions
    (:func:`load_interactions_csv`, items indexed by ``catalog`` when given). Any other file: the
    P5 / S3-Rec sequence format (:func:`load_sequences`, with ``item_text``).
    """
    if spec is None or str(spec) in ("movielens", "ml-latest-small"):
        return load_movielens()
    p = Path(spec)
    if not p.exists():
        raise FileNotFoundError(f"dataset path does not exist: {p}")
    if p.is_dir():
        if (p / "movies.csv").is_file() and (p / "ratings.csv").is_file():
            return load_movielens(p)
        raise DatasetError(f"{p} is a directory but not a MovieLens one (movies.csv + ratings.csv); give a file")
    if p.suffix.lower() in (".csv", ".tsv", ".dat"):
        cat = Catalog.load(catalog) if catalog is not None else None
        inter = load_interactions_csv(p, catalog=cat)
        return Dataset(p.stem, inter, cat, None, [], {"source": str(p)})
    return load_sequences(p, item_text=item_text)
