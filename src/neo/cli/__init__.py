"""The ``neo`` command line, one module per command (:data:`neo.cli.main.COMMANDS`)."""

from .main import main

__all__ = ["main"]
