"""Data shipped inside the neo package.

``ml-latest-small.tar.xz`` is the unmodified MovieLens "ml-latest-small" release (GroupLens Research,
generated 2018-09-26: ``movies.csv``, ``ratings.csv``, ``tags.csv``, ``links.csv``, ``README.txt``),
xz-compressed. Its license permits redistribution under the same conditions (non-commercial research
use, citation required, no endorsement implied); the conditions ship beside it in
``ml-latest-small.LICENSE.txt`` and the citation in ``ml-latest-small.CITATION.txt``. They apply to
the data only, not to neo's code.

Use :func:`neo.items.datasets.load_movielens` to get a catalog and interactions from it; this module only
locates and reads the raw files.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

__all__ = ["BUNDLED_MOVIELENS", "MOVIELENS_FILES", "bundled_path", "read_bundled_movielens", "movielens_license"]

_HERE = Path(__file__).resolve().parent
BUNDLED_MOVIELENS = "ml-latest-small"
MOVIELENS_FILES = ("movies.csv", "ratings.csv", "tags.csv", "links.csv", "README.txt")


def bundled_path(name: str) -> Path:
    """Path of a file shipped in ``neo/data``; ``FileNotFoundError`` names the file when the install lacks it."""
    p = _HERE / name
    if not p.is_file():
        shipped = sorted(q.name for q in _HERE.iterdir() if q.is_file() and q.suffix != ".py")
        raise FileNotFoundError(f"bundled data file {name!r} is missing from {_HERE} (present: {shipped}); "
                                "reinstall neo")
    return p


def read_bundled_movielens() -> dict[str, bytes]:
    """The raw bytes of the bundled ml-latest-small files, keyed by file name (no extraction to disk).

    Raises
    ------
    FileNotFoundError
        If the archive is missing or lacks one of :data:`MOVIELENS_FILES`.
    """
    path = bundled_path(f"{BUNDLED_MOVIELENS}.tar.xz")
    out: dict[str, bytes] = {}
    with tarfile.open(path, "r:xz") as tar:
        for m in tar.getmembers():
            name = Path(m.name).name
            if m.isfile() and name in MOVIELENS_FILES:
                fh = tar.extractfile(m)
                assert fh is not None
                out[name] = fh.read()
    missing = [f for f in MOVIELENS_FILES if f not in out]
    if missing:
        raise FileNotFoundError(f"{path} lacks {missing}; the bundled archive is damaged, reinstall neo")
    return out


def movielens_license() -> str:
    """License conditions and citation of the bundled MovieLens data (text)."""
    return (bundled_path(f"{BUNDLED_MOVIELENS}.LICENSE.txt").read_text(encoding="utf-8") + "\n"
            + bundled_path(f"{BUNDLED_MOVIELENS}.CITATION.txt").read_text(encoding="utf-8"))
