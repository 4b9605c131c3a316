"""Evaluation protocols: how interactions are split into training data and evaluation cases.

* :func:`leave_one_out` -- the protocol of the public generative-recommendation tables (SASRec,
  S3-Rec, P5, TIGER): per user, the last item is the test target, the second-to-last the
  validation target, everything before is training data; the history given to a model is capped at
  the 20 most recent items; ranking is over **all** candidate items (no sampled negatives).
* :func:`temporal_split` -- global time cut-offs: training interactions happen before the
  validation cut-off; a user's first item after a cut-off is their validation/test target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..items.datasets import Interactions

__all__ = ["EvalCases", "Split", "leave_one_out", "temporal_split"]

# ============================================================================ protocols


@dataclass
class EvalCases:
    """Evaluation cases: for each, a user, a history (capped) and one target item.

    Attributes
    ----------
    users : np.ndarray
        ``int64`` user index per case.
    histories : list of np.ndarray
        ``int64`` item indices, oldest first, at most ``max_history`` long.
    targets : np.ndarray
        ``int64`` target item per case.
    """

    users: np.ndarray
    histories: list[np.ndarray]
    targets: np.ndarray

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def subset(self, idx: Sequence[int] | np.ndarray) -> "EvalCases":
        idx = np.asarray(idx, dtype=np.int64)
        return EvalCases(self.users[idx], [self.histories[i] for i in idx], self.targets[idx])


@dataclass
class Split:
    """Training sequences and validation/test cases of one protocol.

    Attributes
    ----------
    name : str
    train : list of np.ndarray
        Per user, the items a model may train on (oldest first; may be empty).
    valid, test : EvalCases
    n_items : int
    """

    name: str
    train: list[np.ndarray]
    valid: EvalCases
    test: EvalCases
    n_items: int


def _cases(users: list[int], hists: list[np.ndarray], targets: list[int]) -> EvalCases:
    return EvalCases(np.asarray(users, dtype=np.int64), hists, np.asarray(targets, dtype=np.int64))


def leave_one_out(inter: Interactions, *, max_history: int = 20, min_length: int = 3) -> Split:
    """Leave-one-out: last item -> test, second-to-last -> validation, the rest -> training.

    Parameters
    ----------
    inter : Interactions
    max_history : int
        Most recent items given as history (20 in the public tables).
    min_length : int
        Users with fewer items only contribute training data (they cannot give both a validation
        and a test target with a non-empty history at 3).

    Returns
    -------
    Split
        ``train[u]`` = items of user ``u`` except the last two; the validation history is that
        training prefix; the test history is the prefix plus the validation item.
    """
    if max_history < 1 or min_length < 3:
        raise ValueError(f"max_history must be >= 1 and min_length >= 3, got {max_history}, {min_length}")
    train, vu, vh, vt, tu, th, tt = [], [], [], [], [], [], []
    for u, s in enumerate(inter.sequences):
        if s.size < min_length:
            train.append(s.copy())
            continue
        train.append(s[:-2].copy())
        vu.append(u)
        vh.append(s[:-2][-max_history:].copy())
        vt.append(int(s[-2]))
        tu.append(u)
        th.append(s[:-1][-max_history:].copy())
        tt.append(int(s[-1]))
    return Split("leave-one-out", train, _cases(vu, vh, vt), _cases(tu, th, tt), inter.n_items)


def temporal_split(inter: Interactions, *, valid_frac: float = 0.1, test_frac: float = 0.1,
                   max_history: int = 20) -> Split:
    """Temporal split with global cut-offs at the time quantiles ``1 - valid_frac - test_frac`` and
    ``1 - test_frac`` of all interactions.

    Training = every interaction before the validation cut-off. A user's validation target is their
    first item in ``[t_valid, t_test)`` and their test target their first item at or after
    ``t_test``; the history is everything the user did before the target (capped at
    ``max_history``), so no case ever sees its own future. Users with no history before a target
    give no case for it.

    Raises
    ------
    ValueError
        If the interactions have no timestamps or the fractions are invalid.
    """
    if inter.timestamps is None:
        raise ValueError("temporal_split needs timestamps; this dataset has none (use leave_one_out)")
    if not (0 < test_frac < 1 and 0 <= valid_frac < 1 and valid_frac + test_frac < 1):
        raise ValueError(f"invalid fractions valid_frac={valid_frac}, test_frac={test_frac}")
    all_ts = np.concatenate(inter.timestamps)
    t_valid = np.quantile(all_ts, 1 - valid_frac - test_frac)
    t_test = np.quantile(all_ts, 1 - test_frac)
    train, vu, vh, vt, tu, th, tt = [], [], [], [], [], [], []
    for u, (s, ts) in enumerate(zip(inter.sequences, inter.timestamps)):
        train.append(s[ts < t_valid].copy())
        iv = np.flatnonzero((ts >= t_valid) & (ts < t_test))
        if iv.size and iv[0] > 0:
            i = int(iv[0])
            vu.append(u)
            vh.append(s[:i][-max_history:].copy())
            vt.append(int(s[i]))
        it = np.flatnonzero(ts >= t_test)
        if it.size and it[0] > 0:
            i = int(it[0])
            tu.append(u)
            th.append(s[:i][-max_history:].copy())
            tt.append(int(s[i]))
    return Split("temporal", train, _cases(vu, vh, vt), _cases(tu, th, tt), inter.n_items)
