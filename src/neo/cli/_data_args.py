"""Options for a user's data files, shared by ``neo build``, ``neo train`` and ``neo eval``.

Every command that reads a catalog or interactions file declares the same options here and reads
the files through the same loaders (:meth:`neo.Catalog.load`,
:func:`neo.items.datasets.read_interactions`), so the three commands accept the same files the same
way. Only the standard library is imported at module level (``--help`` stays instant).
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_catalog_args", "add_interaction_args", "catalog_options", "interaction_options", "load_catalog",
           "load_interactions", "describe_interactions"]

FORMATS_HELP = "CSV, TSV, JSONL, JSON or Parquet (detected by extension and content; .gz text works too)"


def _cols(value: str) -> list[str]:
    cols = [c.strip() for c in value.split(",") if c.strip()]
    if not cols:
        raise argparse.ArgumentTypeError("give one or more column names separated by commas")
    return cols


def add_catalog_args(parser: argparse.ArgumentParser, *, required: bool = False,
                     help: str | None = None) -> argparse._ArgumentGroup:
    """``--catalog`` and the options naming its columns."""
    g = parser.add_argument_group("catalog file")
    g.add_argument("--catalog", required=required, metavar="FILE",
                   help=help or f"the item catalog: one row per item with an id, an optional type and text; "
                                f"{FORMATS_HELP}")
    g.add_argument("--id-col", metavar="NAME",
                   help="catalog column holding the item id (default: id, item_id, movieId, asin, ... detected)")
    g.add_argument("--type-col", metavar="NAME",
                   help="catalog column holding the item type (default: 'type' when present, else every item has "
                        "--item-type)")
    g.add_argument("--text-cols", type=_cols, metavar="A,B",
                   help="catalog columns holding item text, comma separated (default: every other column)")
    g.add_argument("--item-type", default=None, metavar="NAME",
                   help="type of catalog items that have none (default 'item' when the catalog has no type column)")
    g.add_argument("--skip-invalid", action="store_true",
                   help="skip invalid catalog records (counted and reported) instead of stopping at them")
    return g


def add_interaction_args(parser: argparse.ArgumentParser, *, required: bool = False,
                         help: str | None = None) -> argparse._ArgumentGroup:
    """``--interactions`` and the options naming its columns and handling unknown items."""
    g = parser.add_argument_group("interactions file")
    g.add_argument("--interactions", required=required, metavar="FILE",
                   help=help or f"user-item interactions, one row per event (user, item, optional time); "
                                f"{FORMATS_HELP}, or 'user item item ...' sequence lines")
    g.add_argument("--user-col", metavar="NAME",
                   help="interactions column holding the user (default: user, user_id, userId, ... detected; 0, 1, "
                        "... for a file without a header)")
    g.add_argument("--item-col", metavar="NAME",
                   help="interactions column holding the item (default: item, item_id, movieId, asin, ... detected)")
    g.add_argument("--time-col", metavar="NAME",
                   help="interactions column holding the time (unix seconds or ISO dates; default: timestamp, time, "
                        "date, ... detected; 'none': the file order is the time order)")
    g.add_argument("--item-id", default="{}", metavar="FORMAT",
                   help="format string turning an interactions item value into a catalog id, e.g. 'movie:{}' "
                        "(default '{}': the value itself)")
    g.add_argument("--unknown-items", choices=["error", "skip"], default="error",
                   help="interactions naming items not in the catalog: 'error' (default) stops naming the first; "
                        "'skip' drops those rows and reports how many")
    g.add_argument("--encoding", default="utf-8", metavar="NAME",
                   help="text encoding of the catalog and interactions files (default utf-8; e.g. latin-1)")
    return g


def catalog_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :meth:`neo.Catalog.load` from the parsed options."""
    kw: dict[str, Any] = {}
    if getattr(args, "id_col", None):
        kw["id_field"] = args.id_col
    if getattr(args, "type_col", None):
        kw["type_field"] = args.type_col
    if getattr(args, "text_cols", None):
        kw["text_fields"] = list(args.text_cols)
    if getattr(args, "item_type", None):
        kw["default_type"] = args.item_type
    if getattr(args, "skip_invalid", False):
        kw["skip_invalid"] = True
    if getattr(args, "encoding", None):
        kw["encoding"] = args.encoding
    return kw


def interaction_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of :func:`neo.items.datasets.read_interactions` from the parsed options."""
    kw: dict[str, Any] = {}
    for opt in ("user_col", "item_col", "time_col"):
        if getattr(args, opt, None):
            kw[opt] = getattr(args, opt)
    if getattr(args, "item_id", "{}") not in (None, "{}"):
        if "{}" not in args.item_id:
            from ..core.errors import NeoDataError

            raise NeoDataError(f"--item-id {args.item_id!r} must contain '{{}}' where the item value goes, "
                               "e.g. 'movie:{}'")
        kw["item_id"] = args.item_id
    kw["unknown_items"] = getattr(args, "unknown_items", "error") or "error"
    if getattr(args, "encoding", None):
        kw["encoding"] = args.encoding
    return kw


def load_catalog(args: argparse.Namespace) -> Any:
    """The ``--catalog`` file as a :class:`neo.Catalog` (``None`` without one)."""
    if not getattr(args, "catalog", None):
        return None
    import warnings

    from ..items.catalog import Catalog

    with warnings.catch_warnings():  # skipped records are reported by describe/print below, not as a warning
        warnings.simplefilter("ignore")
        return Catalog.load(args.catalog, **catalog_options(args))


def load_interactions(args: argparse.Namespace, catalog: Any) -> Any:
    """The ``--interactions`` file, items indexed by ``catalog``, as
    :class:`neo.items.datasets.Interactions`."""
    from ..items.datasets import read_interactions

    return read_interactions(args.interactions, catalog=catalog, **interaction_options(args))


def describe_interactions(inter: Any) -> str:
    """One line: counts, format, the columns used and what was skipped."""
    info = getattr(inter, "info", {}) or {}
    cols = info.get("columns", {})
    how = cols.get("how", {})
    used = ", ".join(f"{k}={cols.get(k)!s}" + (f" ({how[k]})" if how.get(k) and how[k] != "given" else "")
                     for k in ("user", "item", "time") if k in cols)
    unk = info.get("unknown_items", {})
    skipped = (f"; skipped {unk['rows_skipped']} row(s) naming {unk['distinct']} item(s) not in the catalog, e.g. "
               f"{unk['examples'][:3]}" if unk.get("rows_skipped") else "")
    return (f"{info.get('source', 'interactions')}: {inter.n_users} users, {inter.n_interactions} events, "
            f"{info.get('format', '?')}; columns {used}{skipped}")
