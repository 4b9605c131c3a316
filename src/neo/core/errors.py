"""Errors about what a user gave neo (files, rows, options), as opposed to bugs in neo.

Every error of this kind derives from :class:`NeoDataError` (a ``ValueError``), so the ``neo`` command
prints it as one line naming the file, row and fix, and exits with status 2 (a traceback only with
``--debug``); Python callers can catch the one base class.
"""

from __future__ import annotations

__all__ = ["NeoDataError"]


class NeoDataError(ValueError):
    """Invalid input: the message names what is wrong (file, line or row, field) and how to fix it.

    Subclasses: :class:`~neo.items.catalog.CatalogError`, :class:`~neo.items.datasets.DatasetError`,
    :class:`~neo.training.tasks.TaskDataError`, :class:`~neo.lm.prompts.PromptError`,
    :class:`~neo.lm.vocab.VocabMismatchError`.
    """

    def one_line(self) -> str:
        """The first line of the message, with a count of the lines left out (for the command line)."""
        lines = [ln for ln in str(self).splitlines() if ln.strip()]
        if not lines:
            return type(self).__name__
        rest = len(lines) - 1
        return lines[0] + (f" (+{rest} more line(s); rerun with --debug for all)" if rest else "")
