"""The ``neo`` command: parses its arguments before importing anything heavy.

Each command lives in its own module of :mod:`neo.cli` with ``HELP``, ``add_parser(subparsers, parents)``
and ``run(args) -> int``; those modules import only the standard library at module level, so
``neo --help`` and ``neo <command> --help`` never load torch or transformers. Errors about the user's input
(:class:`~neo.core.errors.NeoDataError` and its subclasses, unreadable files, corrupt index files) print one
line and exit with status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

__all__ = ["main", "COMMANDS", "build_parser"]

#: command name -> module of neo.cli (in the order ``neo --help`` lists them)
COMMANDS = {
    "demo": "demo",
    "build": "build",
    "train": "train",
    "eval": "eval",
    "bench": "bench",
    "quickstart": "quickstart",
}

EXIT_DATA_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """The full ``neo`` parser (every command registered, nothing heavy imported)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback on errors instead of one line")
    parser = argparse.ArgumentParser(
        prog="neo", parents=[common],
        description="catalog-grounded generation with semantic IDs: train a model over your catalog, decode "
                    "under catalog constraints, evaluate and benchmark it",
        epilog="`neo <command> --help` for a command's options.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    parser.commands = {}  # type: ignore[attr-defined]
    for name, module in COMMANDS.items():
        parser.commands[name] = importlib.import_module(f".{module}", __package__).add_parser(sub, parents=[common])
    return parser


def _is_data_error(exc: BaseException) -> bool:
    from ..core.errors import NeoDataError

    if isinstance(exc, (NeoDataError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return True
    core = sys.modules.get("neo._core")  # only if it was loaded: a corrupt index file is the user's input
    return core is not None and isinstance(exc, getattr(core, "IndexFormatError", ()))


def _one_line(exc: BaseException) -> str:
    from ..core.errors import NeoDataError

    if isinstance(exc, NeoDataError):
        return exc.one_line()
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    lines = [ln for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
    return lines[0] + (f" (+{len(lines) - 1} more line(s); rerun with --debug)" if len(lines) > 1 else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``neo`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if unknown:  # report it with the command's own usage, not the top-level one
        parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    debug = getattr(args, "debug", False)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"neo {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - only the user's input errors are shortened
        if debug or not _is_data_error(exc):
            raise
        print(f"neo {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_DATA_ERROR


if __name__ == "__main__":
    sys.exit(main())
