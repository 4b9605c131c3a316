"""Training tasks from a catalog and user interactions: alignment and instruction examples, and splits.

Every example is a ``(prompt, completion)`` pair of *segments* (text pieces and SID spans given as token
ids, delimiters included), so rendering never depends on how a tokenizer splits the SID strings; the
prompt is exactly what :meth:`neo.PromptBuilder.encode` renders for the same request at inference time
(ending with ``"\\nAnswer:"``, except recommendation in the ``ids`` format, whose prompt ends with the
history), and the completion is what the model must write after it. A completion may mark some of its
segments as context only (``Example.loss``): that is how one example teaches every position of a
sequence.

Alignment tasks (stage 1: teach the new SID rows what each item is)
    ``sid_to_text``  ``What is [SID]..[/SID]?`` -> the item's title and attributes;
    ``text_to_sid``  the item's text -> its span;
    ``sid_to_type``  a span -> the item type.

Instruction tasks (stage 2), all rendered through :class:`neo.Prompt` and its paraphrase templates
    ``recommend``         every next item of a user's sequence, in one pass (:meth:`TaskBuilder.rec_sequences`):
                          the prompt names the target type (``Next movies:``), then the user's items
                          follow as SID spans back to back, and every span of the target type carries
                          loss, predicted from everything before it -- the GPT-style recommender
                          objective (SASRec/HSTU); built lazily, one window at a time;
    ``recommend_list``    history -> the next ``k`` items of one sampled position (the same prompt shape;
                          :meth:`TaskBuilder.recommend`, one target position per example);
    ``recommend_mixed``   history -> the next ``k`` items written in prose with their titles (``mixed``);
    ``search``            a natural-language query (an item's title, or attributes such as genres/tags)
                          -> the matching items, most popular first;
    ``describe_user``     history -> a short interest profile built from the history items' attributes;
    ``recommend_explain`` history -> the next item plus a justification naming the attributes it
                          shares with history items (cited as spans; items are named by their spans
                          only, never followed by a title the model could get wrong);
    ``explain``           history + item -> that justification.

"Attributes" are the values of the catalog's attribute text fields (default: every text field but the
title), split on ``,``, ``;`` and ``|`` -- genres and user tags for MovieLens.

Splits (no leakage, deterministic): :func:`split_interactions` with ``"leave_one_out"`` (per user, the
last event is the test target, the one before it the validation target, the rest trains) or
``"temporal"`` (global time cut-offs: every training event happened before every held-out target).
Training examples are built only from :attr:`Split.train`.

Bad data never passes silently: :func:`load_interactions` raises on items missing from the catalog
(naming them) unless ``on_missing="skip"``, in which case they are counted in the
:class:`InteractionReport`; users with too few events are skipped and counted, and task builders count
what they skip (``TaskBuilder.skipped``).
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..lm.prompts import REC_PROSE_TEMPLATES, TEMPLATES, Prompt, PromptBuilder

from ..core.errors import NeoDataError

__all__ = [
    "Example", "EvalCase", "InteractionReport", "Interactions", "Split", "TaskBuilder", "TaskDataError",
    "RecWindow", "RecSequences", "DEFAULT_INSTRUCTION_TASKS",
    "load_interactions", "split_interactions", "ALIGN_TASKS", "INSTRUCTION_TASKS", "ALIGN_TEMPLATES",
    "ITEM_SEPARATOR", "ANSWER_SUFFIX", "validate_examples",
]

ALIGN_TASKS = ("sid_to_text", "text_to_sid", "sid_to_type")
INSTRUCTION_TASKS = ("recommend", "recommend_list", "recommend_mixed", "search", "describe_user",
                     "recommend_explain", "explain")
# ``recommend_list`` is left out by default: every ``recommend`` window already teaches the next k items
DEFAULT_INSTRUCTION_TASKS = ("recommend", "recommend_mixed", "search", "describe_user", "recommend_explain",
                             "explain")
ITEM_SEPARATOR = ", "  # between spans in the ``ids`` format; pass its token ids as decoder separators
ANSWER_SUFFIX = "\nAnswer:"  # what PromptBuilder ends every prompt with

# {item}: the SID span; {text}: the item's text; {types}: type name.
ALIGN_TEMPLATES: dict[str, list[str]] = {
    "sid_to_text": ["What is {item}?", "Describe the item {item}.", "Which item does {item} stand for?",
                    "Tell me about {item}."],
    "text_to_sid": ["Which item is this: {text}?", "Find the item: {text}.", "Give the ID of \"{text}\".",
                    "Name the item described as: {text}."],
    "sid_to_type": ["What kind of item is {item}?", "What is the type of {item}?", "{item} is what type of item?"],
}
PROFILE_TEMPLATES = ["Likes {attrs}.", "Enjoys {attrs}.", "Mostly into {attrs}.", "Prefers {attrs}."]
SEARCH_ATTR_TEMPLATES = ["{a}", "{a} and {b}", "something {a}, {b}", "{types} that are {a}"]
_SPLIT_ATTRS = re.compile(r"\s*[,;|]\s*")


class TaskDataError(NeoDataError):
    """Interactions or task inputs are invalid (unknown items, empty histories, bad splits)."""


# ============================================================================ examples


@dataclass
class Example:
    """One training pair.

    Attributes
    ----------
    task : str
        Task name (:data:`ALIGN_TASKS` or :data:`INSTRUCTION_TASKS`).
    prompt, completion : list of (str | list of int)
        Text pieces and SID spans (token ids with delimiters). The prompt is what inference renders
        for the same request.
    meta : dict
        Provenance: user, target rows, template index, ...
    loss : list of bool, optional
        Per completion segment: whether its tokens carry loss (default: all). Context-only segments
        (e.g. the first item of a sequence window, items of another type) are inputs only.
    eos : bool
        Whether EOS follows the completion (the model learns to stop). Sequence examples have none:
        the sequence goes on after the window.
    """

    task: str
    prompt: list[str | list[int]]
    completion: list[str | list[int]]
    meta: dict[str, Any] = field(default_factory=dict)
    loss: list[bool] | None = None
    eos: bool = True

    def encode(self, tokenizer: Any, *, add_bos: bool = True, add_eos: bool = True) -> tuple[list[int], list[int]]:
        """``(prompt_ids, completion_ids)``: BOS + prompt exactly as :meth:`PromptBuilder.encode`
        would render it, and the completion followed by EOS (so the model learns to stop; not for
        examples with ``eos=False``)."""
        p: list[int] = []
        bos = getattr(tokenizer, "bos_token_id", None)
        if add_bos and bos is not None:
            p.append(int(bos))
        p += _encode_segments(self.prompt, tokenizer)
        c = _encode_segments(self.completion, tokenizer)
        eos = getattr(tokenizer, "eos_token_id", None)
        if add_eos and self.eos and eos is not None:
            c.append(int(eos))
        return p, c

    def encode_labeled(self, tokenizer: Any, *, add_bos: bool = True, add_eos: bool = True,
                       cache: dict[str, list[int]] | None = None) -> tuple[list[int], list[int], int]:
        """``(input_ids, labels, n_prompt)``: the whole example with ``-100`` on the prompt and on
        context-only completion segments; ``n_prompt`` is the number of prompt tokens (BOS included).

        ``cache`` memoises the token ids of text pieces (the instructions repeat across examples)."""
        ids: list[int] = []
        bos = getattr(tokenizer, "bos_token_id", None)
        if add_bos and bos is not None:
            ids.append(int(bos))
        ids += _encode_segments(self.prompt, tokenizer, cache)
        n_prompt = len(ids)
        labels = [-100] * n_prompt
        flags = self.loss if self.loss is not None else [True] * len(self.completion)
        if len(flags) != len(self.completion):
            raise TaskDataError(f"example of task {self.task!r}: {len(flags)} loss flags for {len(self.completion)} "
                                "completion segments")
        for seg, on in zip(self.completion, flags):
            part = _encode_segments([seg], tokenizer, cache)
            ids += part
            labels += part if on else [-100] * len(part)
        eos = getattr(tokenizer, "eos_token_id", None)
        if add_eos and self.eos and eos is not None:
            ids.append(int(eos))
            labels.append(int(eos))
        return ids, labels, n_prompt

    def text(self, vocab: Any) -> tuple[str, str]:
        """Prompt and completion as strings (spans written with the SID token strings)."""
        return _segments_text(self.prompt, vocab), _segments_text(self.completion, vocab)


def _encode_segments(segs: Sequence[str | list[int]], tokenizer: Any,
                     cache: dict[str, list[int]] | None = None) -> list[int]:
    ids: list[int] = []
    for s in segs:
        if isinstance(s, str):
            if not s:
                continue
            got = cache.get(s) if cache is not None else None
            if got is None:
                got = tokenizer(s, add_special_tokens=False)["input_ids"]
                if cache is not None and len(cache) < 200_000:
                    cache[s] = got
            ids.extend(got)
        else:
            ids.extend(int(t) for t in s)
    return ids


def _segments_text(segs: Sequence[str | list[int]], vocab: Any) -> str:
    return "".join(s if isinstance(s, str) else vocab.span_text(s[1:-1]) for s in segs)


# ============================================================================ interactions


@dataclass
class InteractionReport:
    """What :func:`load_interactions` kept and skipped."""

    n_events: int = 0
    n_kept: int = 0
    n_missing_items: int = 0
    missing_item_ids: list[str] = field(default_factory=list)  # first 20 distinct
    n_users: int = 0
    n_users_skipped: int = 0
    skipped_users: list[str] = field(default_factory=list)  # first 20

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def __str__(self) -> str:
        return (f"{self.n_events} events: kept {self.n_kept}, {self.n_missing_items} with items missing from the "
                f"catalog {self.missing_item_ids[:5]}; {self.n_users} users kept, {self.n_users_skipped} skipped "
                f"(too few events) {self.skipped_users[:5]}")


@dataclass
class Interactions:
    """Per-user event sequences in time order.

    Attributes
    ----------
    users : list of str
    rows : list of int64 arrays
        Catalog rows per user, oldest first.
    times : list of float64 arrays
        Timestamps (the event order when none were given).
    report : InteractionReport
    """

    users: list[str]
    rows: list[np.ndarray]
    times: list[np.ndarray]
    report: InteractionReport = field(default_factory=InteractionReport)

    def __len__(self) -> int:
        return len(self.users)

    def as_dict(self) -> dict[str, np.ndarray]:
        return dict(zip(self.users, self.rows))


def _iter_events(data: Any, user_col: str, item_col: str, time_col: str | None) -> Iterable[tuple[Any, Any, Any]]:
    if hasattr(data, "columns") and hasattr(data, "__getitem__"):  # pandas / polars-like frame
        missing = [c for c in (user_col, item_col) if c not in data.columns]
        if missing:
            raise TaskDataError(f"interactions frame lacks column(s) {missing}; it has {list(data.columns)}")
        ts = data[time_col].tolist() if time_col and time_col in data.columns else [None] * len(data)
        return zip(data[user_col].tolist(), data[item_col].tolist(), ts)
    if isinstance(data, Mapping):
        def gen() -> Iterable[tuple[Any, Any, Any]]:
            for u, seq in data.items():
                if len(seq) == 0:
                    yield u, None, None  # marks a user with an empty history
                for ev in seq:
                    if isinstance(ev, (tuple, list)):
                        yield u, ev[0], ev[1] if len(ev) > 1 else None
                    else:
                        yield u, ev, None
        return gen()
    return ((ev[0], ev[1], ev[2] if len(ev) > 2 else None) for ev in data)


def load_interactions(
    data: Any,
    catalog: Any,
    *,
    user_col: str = "user",
    item_col: str = "item",
    time_col: str | None = "timestamp",
    item_id: str | Callable[[Any], str] = "{}",
    on_missing: str = "raise",
    min_length: int = 2,
) -> Interactions:
    """Read user -> item events into per-user sequences of catalog rows, sorted by time.

    Parameters
    ----------
    data : DataFrame, mapping or iterable
        A frame with ``user_col``/``item_col``/``time_col`` columns; a mapping user -> list of item
        ids or ``(item_id, timestamp)`` pairs (already in order when there are no timestamps); or an
        iterable of ``(user, item_id[, timestamp])`` tuples.
    catalog : Catalog
        Resolves item ids (``catalog.row(id)``).
    item_id : str or callable
        Turns a raw item value into a catalog id: a format string (``"movie:{}"``) or a function.
    on_missing : {"raise", "skip"}
        Items not in the catalog raise :class:`TaskDataError` naming them, or are skipped and counted.
    min_length : int
        Users with fewer kept events are skipped and counted (a history needs at least one event
        before a target).

    Returns
    -------
    Interactions
        With ``report`` saying what was kept and skipped.
    """
    if on_missing not in ("raise", "skip"):
        raise ValueError(f"on_missing must be 'raise' or 'skip', got {on_missing!r}")
    fmt: Callable[[Any], str] = (lambda v: item_id.format(v)) if isinstance(item_id, str) else item_id
    rep = InteractionReport()
    per_user: dict[Any, list[tuple[float, int, int]]] = {}
    missing: dict[str, int] = {}
    order = 0
    for u, it, ts in _iter_events(data, user_col, item_col, time_col):
        per_user.setdefault(u, [])
        if it is None:
            continue
        rep.n_events += 1
        iid = fmt(it)
        try:
            r = int(catalog.row(iid))
        except KeyError:
            missing[iid] = missing.get(iid, 0) + 1
            continue
        t = float(order) if ts is None or (isinstance(ts, float) and math.isnan(ts)) else float(ts)
        per_user[u].append((t, order, r))
        order += 1
    rep.n_missing_items = sum(missing.values())
    rep.missing_item_ids = list(missing)[:20]
    if missing and on_missing == "raise":
        raise TaskDataError(
            f"{rep.n_missing_items} interaction(s) name {len(missing)} item(s) not in the catalog, e.g. "
            f"{list(missing)[:10]} (check item_id={item_id!r}; pass on_missing='skip' to drop and count them)")
    users, rows, times = [], [], []
    for u, evs in per_user.items():
        if len(evs) < max(1, min_length):
            rep.n_users_skipped += 1
            if len(rep.skipped_users) < 20:
                rep.skipped_users.append(str(u))
            continue
        evs.sort()  # by time, then input order (stable for equal timestamps)
        users.append(str(u))
        rows.append(np.fromiter((e[2] for e in evs), dtype=np.int64, count=len(evs)))
        times.append(np.fromiter((e[0] for e in evs), dtype=np.float64, count=len(evs)))
        rep.n_kept += len(evs)
    rep.n_users = len(users)
    if not users:
        raise TaskDataError(f"no user has at least {min_length} events in the catalog ({rep})")
    return Interactions(users, rows, times, rep)


# ============================================================================ splits


@dataclass
class EvalCase:
    """A held-out prediction: ``history`` (rows, oldest first) -> ``target`` row."""

    user: str
    history: np.ndarray
    target: int


@dataclass
class Split:
    """Training sequences and held-out cases.

    Attributes
    ----------
    method : str
    train : dict user -> int64 rows
        The only events training examples may use.
    valid, test : list of EvalCase
    cutoffs : dict
        ``temporal``: the time cut-offs; ``leave_one_out``: empty.
    """

    method: str
    train: dict[str, np.ndarray]
    valid: list[EvalCase]
    test: list[EvalCase]
    cutoffs: dict[str, float] = field(default_factory=dict)


def split_interactions(
    inter: Interactions,
    method: str = "leave_one_out",
    *,
    seed: int = 0,
    max_users: int | None = None,
    valid_frac: float = 0.1,
    test_frac: float = 0.1,
    cases_per_user: int = 1,
    min_train: int = 1,
) -> Split:
    """Split interactions without leakage.

    Parameters
    ----------
    inter : Interactions
    method : {"leave_one_out", "temporal"}
        ``leave_one_out``: per user, the last event is the test target and the one before it the
        validation target (history = every earlier event); users need ``min_train + 2`` events.
        ``temporal``: the ``valid_frac``/``test_frac`` latest events overall (by timestamp) are
        held out; training uses only events at or before the first cut-off, so no training event
        is later than any held-out target.
    seed : int
        Picks ``max_users`` users at random (everything else is deterministic).
    max_users : int, optional
        Keep a random subset of users.
    cases_per_user : int
        ``temporal``: held-out targets per user and part (the earliest after the cut-off).
    min_train : int
        Users with fewer training events are left out of the training part.

    Raises
    ------
    TaskDataError
        Unknown method, bad fractions, or nothing left to train on.
    """
    if method not in ("leave_one_out", "temporal"):
        raise TaskDataError(f"unknown split method {method!r}; use 'leave_one_out' or 'temporal'")
    idx = np.arange(len(inter))
    if max_users is not None and max_users < len(idx):
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=max_users, replace=False))
    train: dict[str, np.ndarray] = {}
    valid: list[EvalCase] = []
    test: list[EvalCase] = []
    cutoffs: dict[str, float] = {}
    if method == "leave_one_out":
        for i in idx:
            u, r = inter.users[i], inter.rows[i]
            if len(r) < min_train + 2:
                continue
            train[u] = r[:-2].copy()
            valid.append(EvalCase(u, r[:-2].copy(), int(r[-2])))
            test.append(EvalCase(u, r[:-1].copy(), int(r[-1])))
    else:
        if not (0 <= valid_frac < 1 and 0 < test_frac < 1 and valid_frac + test_frac < 1):
            raise TaskDataError(f"need 0 <= valid_frac, 0 < test_frac and valid_frac + test_frac < 1, "
                                f"got {valid_frac}, {test_frac}")
        all_t = np.concatenate([inter.times[i] for i in idx])
        c_train = float(np.quantile(all_t, 1 - valid_frac - test_frac))
        c_valid = float(np.quantile(all_t, 1 - test_frac))
        cutoffs = {"train_end": c_train, "valid_end": c_valid}
        for i in idx:
            u, r, t = inter.users[i], inter.rows[i], inter.times[i]
            tr = t <= c_train
            if tr.sum() >= min_train:
                train[u] = r[tr].copy()
            for part, lo, hi in ((valid, c_train, c_valid), (test, c_valid, np.inf)):
                pos = np.flatnonzero((t > lo) & (t <= hi))[:cases_per_user]
                for p in pos:
                    if p >= 1:  # a target needs a non-empty history
                        part.append(EvalCase(u, r[:p].copy(), int(r[p])))
    if not train:
        raise TaskDataError(f"split {method!r} left no user with {min_train}+ training events")
    return Split(method, train, valid, test, cutoffs)


# ============================================================================ task builder


def _rng(seed: int, name: str) -> np.random.Generator:
    # one stream per task, so adding a task never changes the examples of another
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def _join_words(words: Sequence[str]) -> str:
    words = list(words)
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


@dataclass
class RecWindow:
    """One window of a user's training sequence, rendered lazily into a ``recommend`` example.

    Attributes
    ----------
    user : str
    rows : int64 array
        The window's items (catalog rows with a SID), oldest first.
    first_target : int
        Items before this index are context only (they were targets of the previous window).
    target_types : list of str or None
        Spans of these types carry loss and the prompt asks for them (None: every type).
    template : int
        Paraphrase of the instruction.
    """

    user: str
    rows: np.ndarray
    first_target: int
    target_types: list[str] | None
    template: int = 0

    def target_positions(self, type_of: Callable[[int], str]) -> list[int]:
        """Indices into ``rows`` whose spans carry loss."""
        return [j for j in range(self.first_target, len(self.rows))
                if self.target_types is None or type_of(int(self.rows[j])) in self.target_types]


class RecSequences(Sequence):
    """The ``recommend`` examples of :meth:`TaskBuilder.rec_sequences`: windows kept as item rows and
    rendered into :class:`Example` objects only when indexed, so nothing is built or encoded before the
    first training step. Indexing is deterministic (same index, same example).

    Attributes
    ----------
    windows : list of RecWindow
    """

    def __init__(self, builder: "TaskBuilder", windows: list[RecWindow]):
        self.builder = builder
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> Example:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]  # type: ignore[return-value]
        return self.builder.rec_example(self.windows[int(i)])

    def count_targets(self) -> int:
        """Spans carrying loss over all windows (each training position of each requested type once)."""
        tf = self.builder.catalog.type_of
        return sum(len(w.target_positions(tf)) for w in self.windows)

    def by_type(self) -> dict[str, "RecSequences"]:
        """The windows grouped by requested type (``"any"`` for windows asking for every type), so a rare
        type can get its own mixing weight."""
        out: dict[str, list[RecWindow]] = {}
        for w in self.windows:
            key = w.target_types[0] if w.target_types and len(w.target_types) == 1 else "any"
            out.setdefault(key, []).append(w)
        return {k: RecSequences(self.builder, v) for k, v in out.items()}


class TaskBuilder:
    """Build alignment and instruction examples for one catalog.

    Parameters
    ----------
    builder : PromptBuilder
        Renders prompts (tokenizer with the SID tokens, vocabulary, index); its ``catalog`` may be None.
    catalog : Catalog
        Item ids, types and text (anything with ``ids``, ``type_of``, ``text``/``text_fields`` works).
    title_field : str, optional
        Text field naming an item (default ``"title"`` if present, else the first text field).
    attribute_fields : list of str, optional
        Text fields holding comma/semicolon/pipe separated attributes (default: the other fields).
    seed : int
        Paraphrases, sampled positions and types; same inputs and seed -> same examples.
    max_history : int
        Most recent history items shown in a prompt.
    max_attributes : int
        Attributes kept per item (first ones of each field) so long tag lists do not swamp prompts.

    Attributes
    ----------
    skipped : Counter
        ``"{task}: {reason}"`` -> number of examples not built (e.g. no shared attributes).
    """

    def __init__(self, builder: PromptBuilder, catalog: Any, *, title_field: str | None = None,
                 attribute_fields: Sequence[str] | None = None, seed: int = 0, max_history: int = 20,
                 max_attributes: int = 8):
        self.builder = builder
        self.catalog = catalog
        fields = list(getattr(catalog, "text_fields", None) or list(getattr(catalog, "text", {}) or {}))
        if title_field is None:
            title_field = "title" if "title" in fields else (fields[0] if fields else None)
        if title_field is not None and title_field not in fields:
            raise TaskDataError(f"title_field {title_field!r} is not a catalog text field {fields}")
        self.title_field = title_field
        attr = [f for f in fields if f != title_field] if attribute_fields is None else list(attribute_fields)
        if bad := [f for f in attr if f not in fields]:
            raise TaskDataError(f"attribute_fields {bad} are not catalog text fields {fields}")
        self.attribute_fields = attr
        self.seed = int(seed)
        self.max_history = int(max_history)
        self.max_attributes = int(max_attributes)
        self.skipped: Counter = Counter()
        self._attrs: dict[int, tuple[str, ...]] = {}
        self._spans: dict[int, list[int]] = {}
        n = len(catalog)
        types, _ = builder.index.item_tokens(np.arange(n, dtype=np.int32))
        self._has_sid = np.asarray(types) >= 0  # unreachable items (popular-wins collisions) have none

    # ------------------------------------------------------------------ item helpers
    def title(self, row: int) -> str:
        if self.title_field is None:
            return str(self.catalog.ids[row])
        return self.catalog.text[self.title_field][row] or str(self.catalog.ids[row])

    def attributes(self, row: int) -> tuple[str, ...]:
        """Lower-cased attribute values of an item (first ``max_attributes`` per field, in order)."""
        a = self._attrs.get(row)
        if a is None:
            vals: list[str] = []
            for f in self.attribute_fields:
                parts = [p.strip().lower() for p in _SPLIT_ATTRS.split(self.catalog.text[f][row] or "")]
                vals += [p for p in parts if p][: self.max_attributes]
            a = tuple(dict.fromkeys(vals))
            self._attrs[row] = a
        return a

    def item_text(self, row: int) -> str:
        """Title followed by attributes: what ``sid_to_text`` teaches and ``text_to_sid`` asks."""
        attrs = self.attributes(row)
        return self.title(row) + (". " + ", ".join(attrs) if attrs else "")

    def span(self, row: int) -> list[int]:
        """The item's SID span (token ids, delimiters included); cached per row."""
        row = int(row)
        sp = self._spans.get(row)
        if sp is None:
            sp = self._spans[row] = self.builder._span(row)
        return list(sp)

    def _check_rows(self, rows: Iterable[int], what: str) -> np.ndarray:
        r = np.asarray(list(rows), dtype=np.int64)
        n = len(self.catalog)
        if r.size and (r.min() < 0 or r.max() >= n):
            bad = r[(r < 0) | (r >= n)][:10].tolist()
            raise TaskDataError(f"{what}: rows {bad} are outside the catalog [0, {n})")
        return r

    def _template(self, rng: np.random.Generator, n: int) -> int:
        return int(rng.integers(n))

    def _prompt_example(self, task: str, p: Prompt, completion: list[str | list[int]], **meta: Any) -> Example:
        return Example(task, self.builder.segments(p), completion, {"template": p.template, **meta})

    def _type_word(self, t: str, plural: bool = False) -> str:
        return t + ("s" if plural else "")

    # ------------------------------------------------------------------ alignment
    def alignment(self, rows: Sequence[int] | None = None, tasks: Sequence[str] = ALIGN_TASKS) -> list[Example]:
        """One example per item and alignment task.

        Parameters
        ----------
        rows : rows to use (default: every item with a SID).
        tasks : subset of :data:`ALIGN_TASKS`.
        """
        if bad := [t for t in tasks if t not in ALIGN_TASKS]:
            raise TaskDataError(f"unknown alignment task(s) {bad}; use {ALIGN_TASKS}")
        rows_a = np.flatnonzero(self._has_sid) if rows is None else self._check_rows(rows, "alignment rows")
        out: list[Example] = []
        for task in tasks:
            rng = _rng(self.seed, task)
            tpls = ALIGN_TEMPLATES[task]
            for r in rows_a:
                r = int(r)
                if not self._has_sid[r]:
                    self.skipped[f"{task}: item without a SID"] += 1
                    continue
                ti = self._template(rng, len(tpls))
                span = self.span(r)
                if task == "text_to_sid":
                    prompt: list[str | list[int]] = [tpls[ti].format(text=self.item_text(r)) + ANSWER_SUFFIX]
                    completion: list[str | list[int]] = [span]
                else:
                    head, tail = tpls[ti].split("{item}")
                    prompt = [s for s in (head, span, tail + ANSWER_SUFFIX) if s != ""]
                    answer = self.item_text(r) if task == "sid_to_text" else self.catalog.type_of(r)
                    completion = [" " + answer]
                out.append(Example(task, prompt, completion, {"row": r, "template": ti}))
        return out

    # ------------------------------------------------------------------ sequences
    def _sequences(self, sequences: Any) -> list[tuple[str, np.ndarray]]:
        if isinstance(sequences, Split):
            sequences = sequences.train
        if isinstance(sequences, Interactions):
            items = list(zip(sequences.users, sequences.rows))
        elif isinstance(sequences, Mapping):
            items = [(str(u), np.asarray(r, dtype=np.int64)) for u, r in sequences.items()]
        else:
            raise TaskDataError(f"sequences must be a Split, Interactions or a mapping user -> rows, "
                                f"got {type(sequences).__name__}")
        out = []
        for u, r in items:
            out.append((u, self._check_rows(r, f"user {u!r}")))
        return out

    def _positions(self, rng: np.random.Generator, n: int, max_per_user: int | None) -> list[int]:
        """Target positions 1..n-1 (a target needs a non-empty history); always the last one."""
        pos = list(range(1, n))
        if max_per_user is not None and len(pos) > max_per_user:
            pick = rng.choice(len(pos) - 1, size=max_per_user - 1, replace=False) if max_per_user > 1 else []
            pos = sorted({pos[int(i)] for i in pick} | {pos[-1]})
        return pos

    def _history(self, seq: np.ndarray, end: int) -> list[int]:
        h = seq[max(0, end - self.max_history):end]
        return [int(x) for x in h if self._has_sid[int(x)]]

    def _next_of_type(self, seq: np.ndarray, start: int, type_name: str, k: int) -> list[int]:
        out: list[int] = []
        for x in seq[start:]:
            x = int(x)
            if self._has_sid[x] and self.catalog.type_of(x) == type_name and x not in out:
                out.append(x)
                if len(out) == k:
                    break
        return out

    def _spans_list(self, rows: Sequence[int], sep: str = ITEM_SEPARATOR) -> list[str | list[int]]:
        segs: list[str | list[int]] = []
        for i, r in enumerate(rows):
            if i:
                segs.append(sep)
            segs.append(self.span(r))
        return segs

    def rec_sequences(self, sequences: Any, *, window: int | None = None, stride: int | None = None,
                      target_types: str | Sequence[str] = "each", templates: int | None = None) -> RecSequences:
        """``recommend`` examples over every position of every training sequence (lazy).

        Each user's sequence is cut into windows of at most ``window + 1`` items, the last ending at
        the sequence end; each window's targets are its last ``stride`` items (the items before them
        are context only), so every item is a target exactly once: predicted from up to ``window``
        earlier items (the history a prompt shows at inference) and never from itself or anything
        later. With ``stride == window`` (default, as SASRec cuts sequences) consecutive windows share
        one item; a smaller stride gives every target at least ``window - stride`` items of context for
        ``window / stride`` times the tokens. The first item of a user is predicted from the instruction
        alone (the cold-start prior). An example renders as::

            prompt:     Next movies:
            completion: [SID] a [/SID][SID] b [/SID] ... [SID] z [/SID]   (loss on the target spans)

        which is, prefix by prefix, exactly the prompt of :meth:`neo.PromptBuilder.encode` for the
        history so far (``Prompt(task="recommend", format="ids")``) followed by the next item.

        Parameters
        ----------
        sequences : Split (its ``train`` part), Interactions or mapping user -> rows
        window : int, optional
            Most history items an item is predicted from (default: the builder's ``max_history``).
        stride : int, optional
            Targets per window (default ``window``).
        target_types : "each", "any", a type name or a list of them
            ``"each"``: one example per window and item type present among its targets, asking for
            that type, with loss on that type's spans only (the other items are context), so the
            prompt's type steers the answer; ``"any"``: one example per window asking for every
            type; a name or list: only windows' examples for those types.
        templates : int, optional
            Instruction paraphrases drawn per window (default: all; 1 = always the first, the one
            inference uses by default).

        Returns
        -------
        RecSequences
            Lazily rendered examples (``len`` and indexing work without rendering the others).
        """
        w = int(self.max_history if window is None else window)
        st = int(w if stride is None else stride)
        if w < 1 or not 1 <= st <= w:
            raise TaskDataError(f"window must be >= 1 and 1 <= stride <= window, got window={w}, stride={st}")
        names = list(getattr(self.catalog, "type_names", []) or [])
        if isinstance(target_types, str) and target_types not in ("each", "any"):
            target_types = [target_types]
        if not isinstance(target_types, str):
            if bad := [t for t in target_types if names and t not in names]:
                raise TaskDataError(f"target_types {bad} are not catalog types {names}")
        n_tpl = len(TEMPLATES["recommend"]) if templates is None else max(1, min(int(templates),
                                                                               len(TEMPLATES["recommend"])))
        task = "recommend"
        rng = _rng(self.seed, "rec_sequences")
        type_of = self.catalog.type_of
        out: list[RecWindow] = []
        for u, seq in self._sequences(sequences):
            keep = self._has_sid[seq]
            if not keep.all():
                self.skipped[f"{task}: items without a SID"] += int((~keep).sum())
                seq = seq[keep]
            if len(seq) < 1:
                self.skipped[f"{task}: empty sequence"] += 1
                continue
            for e in list(range(len(seq), 0, -st))[::-1]:
                t0 = max(0, e - st)  # this window's targets are seq[t0:e]; what precedes them is context
                b = max(0, e - w - 1)
                rows = seq[b:e].copy()
                first = t0 - b
                if target_types == "any":
                    wanted: list[list[str] | None] = [None]
                else:
                    present = list(dict.fromkeys(type_of(int(r)) for r in rows[first:]))
                    wanted = [[t] for t in present if target_types == "each" or t in target_types]
                for tt in wanted:
                    out.append(RecWindow(u, rows, first, tt, self._template(rng, n_tpl)))
        return RecSequences(self, out)

    def rec_example(self, win: RecWindow) -> Example:
        """Render one :class:`RecWindow` (see :meth:`rec_sequences`)."""
        p = Prompt(task="recommend", target_types=win.target_types, format="ids", history=[], template=win.template)
        prompt = self.builder.segments(p)
        targets = set(win.target_positions(self.catalog.type_of))
        completion = [self.span(int(r)) for r in win.rows]
        loss = [j in targets for j in range(len(win.rows))]
        return Example("recommend", prompt, completion,  # type: ignore[arg-type]
                       {"user": win.user, "rows": win.rows.tolist(), "first_target": win.first_target,
                        "target_types": win.target_types, "template": win.template}, loss=loss, eos=False)

    def recommend(self, sequences: Any, *, k: int = 1, format: str = "ids", max_per_user: int | None = 5,
                  task: str | None = None) -> list[Example]:
        """Next item(s) of a requested type from a history of spans.

        One sampled target position per example (see :meth:`rec_sequences` for every position in
        one pass, the default ``recommend`` task).

        Parameters
        ----------
        sequences : Split, Interactions or mapping user -> rows
            Training sequences (a Split contributes its ``train`` part only).
        k : int
            Items in the answer (``k > 1``: a list of the next ``k`` items of the requested type).
        format : {"ids", "mixed"}
            ``ids``: the sequence prompt shape, the answer being the next ``k`` spans back to back
            (no EOS: the decoder stops after ``k`` items); ``mixed``: prose naming each item by its
            span.
        max_per_user : int, optional
            Target positions sampled per user (the last one always included).
        """
        if format not in ("ids", "mixed"):
            raise TaskDataError(f"recommend format must be 'ids' or 'mixed', got {format!r}")
        if k < 1:
            raise TaskDataError(f"k must be >= 1, got {k}")
        task = task or ("recommend" if k == 1 and format == "ids" else
                        "recommend_list" if format == "ids" else "recommend_mixed")
        rng = _rng(self.seed, task)
        out: list[Example] = []
        for u, seq in self._sequences(sequences):
            if len(seq) < 2:
                self.skipped[f"{task}: history too short"] += 1
                continue
            for i in self._positions(rng, len(seq), max_per_user):
                hist = self._history(seq, i)
                if not hist:
                    self.skipped[f"{task}: empty history"] += 1
                    continue
                if not self._has_sid[int(seq[i])]:
                    self.skipped[f"{task}: target without a SID"] += 1
                    continue
                typ = self.catalog.type_of(int(seq[i]))
                targets = self._next_of_type(seq, i, typ, k)
                if len(targets) < k:
                    self.skipped[f"{task}: fewer than {k} future items"] += 1
                    continue
                ti = self._template(rng, len(TEMPLATES["recommend"]) if format == "ids" else len(REC_PROSE_TEMPLATES))
                p = Prompt(task="recommend", target_types=[typ], format=format, history=hist, k=k, template=ti)
                if format == "ids":
                    completion = [self.span(r) for r in targets]
                else:
                    completion = [f" Here {'is' if k == 1 else 'are'} {k} {self._type_word(typ, k > 1)}: "]
                    for j, r in enumerate(targets):
                        if j:
                            completion.append(", " if j < len(targets) - 1 else " and ")
                        completion.append(self.span(r))
                    completion.append(".")
                ex = self._prompt_example(task, p, completion, user=u, history=hist, targets=targets)
                ex.eos = format != "ids"
                out.append(ex)
        return out

    def describe_user(self, sequences: Any, *, max_per_user: int | None = 1, top: int = 4) -> list[Example]:
        """History -> a short profile: the ``top`` most frequent attributes of the history items."""
        task = "describe_user"
        rng = _rng(self.seed, task)
        out: list[Example] = []
        for u, seq in self._sequences(sequences):
            for i in self._positions(rng, len(seq) + 1, max_per_user):
                hist = self._history(seq, i)
                if not hist:
                    self.skipped[f"{task}: empty history"] += 1
                    continue
                counts = Counter(a for r in hist for a in self.attributes(r))
                if not counts:
                    self.skipped[f"{task}: history items without attributes"] += 1
                    continue
                attrs = [a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]]
                types = Counter(self.catalog.type_of(r) for r in hist).most_common(1)[0][0]
                ti = self._template(rng, 3)
                p = Prompt(task="describe_user", history=hist, template=ti)
                prof = PROFILE_TEMPLATES[self._template(rng, len(PROFILE_TEMPLATES))]
                text = prof.format(attrs=f"{_join_words(attrs)} {self._type_word(types, True)}")
                out.append(self._prompt_example(task, p, [" " + text], user=u, history=hist, attributes=attrs))
        return out

    def _justify(self, target: int, hist: Sequence[int]) -> tuple[list[int], list[str]] | None:
        """History items sharing the most attributes with ``target`` (up to 2) and the shared ones."""
        ta = self.attributes(target)
        if not ta:
            return None
        scored = []
        for j, h in enumerate(hist):
            if h == target:
                continue
            shared = [a for a in ta if a in set(self.attributes(h))]
            if shared:
                scored.append((-len(shared), -j, h, shared))  # most shared, then most recent
        if not scored:
            return None
        scored.sort()
        cited = list(dict.fromkeys(s[2] for s in scored[:2]))
        shared = [a for a in ta if any(a in s[3] for s in scored[:2])][:3]
        return cited, shared

    def explain(self, sequences: Any, *, max_per_user: int | None = 1, with_item: bool | None = None) -> list[Example]:
        """Grounded explanations: ``recommend_explain`` (history -> next item + justification) and
        ``explain`` (history + item -> justification). The justification cites the history items
        sharing the most attributes with the target and names the shared attributes; targets
        sharing nothing are skipped and counted.

        Parameters
        ----------
        with_item : bool, optional
            ``True``: only ``explain``; ``False``: only ``recommend_explain``; None: alternate.
        """
        out: list[Example] = []
        rng = _rng(self.seed, "explain")
        for u, seq in self._sequences(sequences):
            for i in self._positions(rng, len(seq), max_per_user):
                hist = self._history(seq, i)
                target = int(seq[i])
                give_item = bool(rng.integers(2)) if with_item is None else with_item
                task = "explain" if give_item else "recommend_explain"
                if not hist or not self._has_sid[target]:
                    self.skipped[f"{task}: empty history or target without a SID"] += 1
                    continue
                j = self._justify(target, hist)
                if j is None:
                    self.skipped[f"{task}: no attribute shared with the history"] += 1
                    continue
                cited, shared = j
                reason: list[str | list[int]] = [" Like "]
                for n_, c in enumerate(cited):
                    if n_:
                        reason.append(" and ")
                    reason.append(self.span(c))
                reason.append(f", it is {_join_words(shared)}.")
                typ = self.catalog.type_of(target)
                if give_item:
                    p = Prompt(task="explain", history=hist, item=target, template=self._template(rng, 3))
                    completion = reason
                else:
                    p = Prompt(task="recommend", target_types=[typ], format="mixed", history=hist, k=1,
                               template=self._template(rng, 4), instruction="Explain why.")
                    completion = [" ", self.span(target), "."] + reason
                out.append(self._prompt_example(task, p, completion, user=u, history=hist, targets=[target], cited=cited,
                                                shared=shared))
        return out

    # ------------------------------------------------------------------ search
    def search(self, rows: Sequence[int] | None = None, *, k: int = 5, queries: Sequence[tuple[str, Any]] = (),
               title_fraction: float = 0.5, max_examples: int | None = None) -> list[Example]:
        """Natural-language query -> items.

        Parameters
        ----------
        rows : items to build queries from (default: every item with a SID).
        k : int
            Items per attribute query: the items having every queried attribute, most popular
            first (the source item is always among them). Title queries answer one item.
        queries : sequence of (query, item id or row)
            Real queries when the data has them; used as given (one item each).
        title_fraction : float
            Share of generated queries that use the item's title instead of its attributes.
        max_examples : int, optional
            Cap on generated examples (items sampled with the builder's seed).
        """
        task = "search"
        rng = _rng(self.seed, task)
        out: list[Example] = []
        for q, it in queries:
            if isinstance(it, (int, np.integer)):
                r = int(self._check_rows([it], "search query item")[0])
            else:
                try:
                    r = int(self.catalog.row(str(it)))
                except KeyError:
                    raise TaskDataError(f"search query {q!r} names item {it!r}, which is not in the catalog") from None
            p = Prompt(task="search", query=str(q), target_types=[self.catalog.type_of(r)], k=1,
                       template=self._template(rng, 3))
            out.append(self._prompt_example(task, p, [self.span(r)], query=str(q), targets=[r]))
        rows_a = np.flatnonzero(self._has_sid) if rows is None else self._check_rows(rows, "search rows")
        if max_examples is not None and len(rows_a) > max_examples:
            rows_a = np.sort(rng.choice(rows_a, size=max_examples, replace=False))
        # attribute -> rows holding it, per type, most popular first (answers of attribute queries)
        pop = getattr(self.catalog, "popularity", None)
        order = np.flatnonzero(self._has_sid)
        if pop is not None:
            order = order[np.argsort(-np.nan_to_num(pop[order], nan=0.0), kind="stable")]
        inv: dict[tuple[str, str], list[int]] = {}
        for r in order:
            t = self.catalog.type_of(int(r))
            for a in self.attributes(int(r)):
                inv.setdefault((t, a), []).append(int(r))
        for r in rows_a:
            r = int(r)
            if not self._has_sid[r]:
                self.skipped[f"{task}: item without a SID"] += 1
                continue
            typ = self.catalog.type_of(r)
            attrs = self.attributes(r)
            if rng.random() < title_fraction or not attrs:
                query, targets = re.sub(r"\s*\(\d{4}\)\s*$", "", self.title(r)), [r]  # drop a trailing year
                kk = 1
            else:
                pick = sorted(rng.choice(len(attrs), size=min(2, len(attrs)), replace=False).tolist())
                chosen = [attrs[i] for i in pick]
                tpl = SEARCH_ATTR_TEMPLATES[self._template(rng, len(SEARCH_ATTR_TEMPLATES)) if len(chosen) > 1 else 0]
                query = tpl.format(a=chosen[0], b=chosen[-1], types=self._type_word(typ, True))
                cand = set(inv[(typ, chosen[0])]).intersection(*(inv[(typ, a)] for a in chosen[1:]))
                ranked = [x for x in inv[(typ, chosen[0])] if x in cand]
                targets = ranked[:k] if r in ranked[:k] else ranked[: k - 1] + [r]
                kk = len(targets)
            p = Prompt(task="search", query=query, target_types=[typ], k=kk, template=self._template(rng, 3))
            out.append(self._prompt_example(task, p, self._spans_list(targets), query=query, targets=targets))
        return out

    # ------------------------------------------------------------------ everything
    def instruction(self, sequences: Any, *, tasks: Sequence[str] = DEFAULT_INSTRUCTION_TASKS, list_k: int = 3,
                    max_per_user: int | None = 5, search_examples: int | None = None, window: int | None = None,
                    rec_types: str | Sequence[str] = "each", per_type: bool = False,
                    stride: int | None = None) -> dict[str, Sequence[Example]]:
        """All instruction tasks, grouped by task (feed to :func:`neo.train.instruct` with weights).

        Parameters
        ----------
        sequences : Split (its ``train`` part), Interactions or mapping user -> rows.
        tasks : subset of :data:`INSTRUCTION_TASKS` (default :data:`DEFAULT_INSTRUCTION_TASKS`).
        list_k : int
            Items per answer of ``recommend_list`` and ``recommend_mixed``.
        max_per_user : int, optional
            Target positions per user for the sampled-position tasks (lists, mixed, explanations).
        search_examples : int, optional
            Cap on search examples.
        window, stride, rec_types : passed to :meth:`rec_sequences` (the ``recommend`` task, lazy).
        per_type : bool
            Give the ``recommend`` windows of each item type but the most frequent one their own pool,
            ``recommend_<type>`` (e.g. ``recommend_tag``), so that a rare type can be weighted up and
            its prompts steer (the most frequent type stays ``recommend``).
        """
        if bad := [t for t in tasks if t not in INSTRUCTION_TASKS]:
            raise TaskDataError(f"unknown instruction task(s) {bad}; use {INSTRUCTION_TASKS}")
        out: dict[str, Sequence[Example]] = {}
        if "recommend" in tasks:
            rec = self.rec_sequences(sequences, window=window, stride=stride, target_types=rec_types)
            if per_type:
                groups = rec.by_type()
                main = max(groups, key=lambda k: len(groups[k])) if groups else None
                out["recommend"] = groups.pop(main) if main is not None else rec
                out.update({f"recommend_{t}": g for t, g in groups.items()})
            else:
                out["recommend"] = rec
        if "recommend_list" in tasks:
            out["recommend_list"] = self.recommend(sequences, k=list_k, max_per_user=max_per_user)
        if "recommend_mixed" in tasks:
            out["recommend_mixed"] = self.recommend(sequences, k=list_k, format="mixed",
                                                    max_per_user=max(1, (max_per_user or 2) // 2))
        if "search" in tasks:
            out["search"] = self.search(max_examples=search_examples)
        if "describe_user" in tasks:
            out["describe_user"] = self.describe_user(sequences)
        if "explain" in tasks or "recommend_explain" in tasks:
            both = self.explain(sequences, max_per_user=max(1, (max_per_user or 2) // 2))
            for name in ("explain", "recommend_explain"):
                if name in tasks:
                    out[name] = [e for e in both if e.task == name]
        return out

    def eval_prompts(self, cases: Sequence[EvalCase], *, k: int = 10, format: str = "ids") -> list[Prompt]:
        """Prompts asking for the next ``k`` items of each case's target type (for evaluation)."""
        out = []
        for c in cases:
            hist = self._history(np.asarray(c.history, dtype=np.int64), len(c.history))
            if not hist:
                raise TaskDataError(f"eval case of user {c.user!r} has an empty history")
            out.append(Prompt(task="recommend", target_types=[self.catalog.type_of(c.target)], format=format,
                              history=hist, k=k, template=0))
        return out


def validate_examples(examples: Iterable[Example]) -> None:
    """Raise :class:`TaskDataError` naming the first example with an empty prompt or completion."""
    for i, e in enumerate(examples):
        if not e.prompt or not any((s if isinstance(s, str) else len(s)) for s in e.prompt):
            raise TaskDataError(f"example {i} ({e.task}) has an empty prompt")
        if not e.completion or not any((s.strip() if isinstance(s, str) else len(s)) for s in e.completion):
            raise TaskDataError(f"example {i} ({e.task}) has an empty completion")

