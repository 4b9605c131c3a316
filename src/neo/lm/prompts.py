"""Language-steerable prompts: task, target item type(s), output format, history, query, user.

A :class:`Prompt` says *what* is asked; a :class:`PromptBuilder` renders it through one of several
paraphrase templates into segments (text and SID spans), a string, or token ids, and derives the
decoder configuration from it (output format, allowed item types, items to exclude), so the prompt
steers both the model and the constraints unless the caller overrides them.

History items are written as SID spans ``[SID] c1 .. cL [/SID]`` (ids are inserted directly, not
re-tokenised from strings, so rendering never depends on how a tokenizer splits added tokens).

Two prompt shapes:

* **Recommendation as a sequence** (task ``recommend``, format ``ids``): a short instruction naming
  the target type(s), then the history as SID spans back to back, and nothing after it::

      Next movies:[SID] a1 a2 [/SID][SID] b1 b2 [/SID]...[SID] h1 h2 [/SID]

  The answer is the continuation of the sequence (the next spans), so one training pass over a
  user's sequence teaches every position (:meth:`neo.training.tasks.TaskBuilder.rec_sequences`), and
  the prompt used at inference (``recommend``, ``topk_items``, the evaluation) is exactly a training
  prefix. ``k`` is not written: the decoder stops after ``k`` items (``max_items``).
* **Every other task and format**: a paraphrase template with the history as spans separated by
  ``", "``, ending with ``"\nAnswer:"``; the answer follows it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..core.index import SidIndex
from ..core.errors import NeoDataError
from .vocab import SidVocab

__all__ = ["Prompt", "PromptBuilder", "TASKS", "FORMATS", "TEMPLATES", "REC_PROSE_TEMPLATES", "PromptError",
           "catalog_row", "catalog_item", "is_sequence_prompt"]

TASKS = ("recommend", "search", "describe_user", "explain", "free")
FORMATS = ("ids", "text", "mixed")
DEFAULT_FORMAT = {"recommend": "ids", "search": "ids", "describe_user": "text", "explain": "mixed", "free": "mixed"}

# Paraphrases per task. Fields: {types} {k} {history} {query} {user} {item} {instruction} {fmt}.
# ``recommend`` (ids format) is the sequence shape: the instruction, then the history spans, nothing after.
TEMPLATES: dict[str, list[str]] = {
    "recommend": [
        "{user}{instruction}Next {types}:{history}",
        "{user}{instruction}Recommend {types} after:{history}",
        "{user}{instruction}Continue with {types}:{history}",
    ],
    "search": [
        "{user}Find {k} {types} matching: {query}. {fmt}",
        "{user}Search the catalog for {types} about \"{query}\" (top {k}). {fmt}",
        "{user}Query: {query}. Return {k} relevant {types}. {fmt}",
    ],
    "describe_user": [
        "{user}The user interacted with: {history}. Describe this user's taste. {fmt}",
        "{user}History: {history}. In a few words, what does this user like? {fmt}",
        "{user}Summarise the preferences of a user who chose {history}. {fmt}",
    ],
    "explain": [
        "{user}The user interacted with: {history}. Explain why {item} is a good recommendation. {fmt}",
        "{user}History: {history}. Why would this user enjoy {item}? {fmt}",
        "{user}Justify recommending {item} to a user who liked {history}. {fmt}",
    ],
    "free": [
        "{user}{instruction} {history_clause}{fmt}",
    ],
}
# ``recommend`` in the ``mixed``/``text`` formats (answers in prose, e.g. with an explanation)
REC_PROSE_TEMPLATES = [
    "{user}The user interacted with: {history}. Recommend {k} {types} they will like. {fmt}",
    "{user}History: {history}. Suggest {k} more {types}. {fmt}",
    "{user}Given these past items: {history}, what {k} {types} should the user try next? {fmt}",
    "{user}Based on {history}, pick {k} {types} for this user. {fmt}",
]
FORMAT_HINTS = {
    "ids": ["Answer with items only.", "Reply with a list of items.", "Only list the items."],
    "text": ["Answer in words, without items.", "Reply in plain text.", "Use prose only."],
    "mixed": ["Answer in text and cite items.", "Reply with text and items.", "Write text, naming items."],
}


class PromptError(NeoDataError):
    """A prompt field is invalid (unknown task, type, format or item)."""


@dataclass
class Prompt:
    """What to ask the model.

    Attributes
    ----------
    task : {"recommend", "search", "describe_user", "explain", "free"}
    target_types : str or list of str, optional
        Item types to produce (default: all types).
    format : {"ids", "text", "mixed"}, optional
        Output format (default per task: recommend/search -> ids, describe_user -> text,
        explain/free -> mixed).
    history : list of item ids (str) or catalog rows (int)
        The user's past items, rendered as SID spans.
    query : str, optional
        Search query (``search``).
    user : mapping, optional
        Light user features, rendered as ``"key: value"`` pairs (e.g. ``{"age": 31}``).
    item : item id or row, optional
        The item to explain (``explain``).
    instruction : str, optional
        Free instruction (``free``), or extra text appended to any task.
    k : int, optional
        Number of items asked for.
    exclude_history : bool
        Exclude history items from the output (recommend/search).
    template : int, optional
        Paraphrase index (default: the builder's choice).
    """

    task: str = "recommend"
    target_types: str | Sequence[str] | None = None
    format: str | None = None
    history: Sequence[str | int] = field(default_factory=list)
    query: str | None = None
    user: Mapping[str, Any] | None = None
    item: str | int | None = None
    instruction: str | None = None
    k: int | None = None
    exclude_history: bool = True
    template: int | None = None

    @property
    def output_format(self) -> str:
        return self.format or DEFAULT_FORMAT.get(self.task, "mixed")


def is_sequence_prompt(p: Prompt) -> bool:
    """Whether ``p`` renders in the sequence shape (``recommend`` in the ``ids`` format): the answer is the
    continuation of the history, with no ``"\nAnswer:"`` between them."""
    return p.task == "recommend" and p.output_format == "ids"


def catalog_row(catalog: Any, item: str | int, n_items: int | None = None) -> int:
    """Catalog row of an item id (str) or a row (int); ``KeyError`` names an unknown id."""
    if isinstance(item, (int, np.integer)):
        r = int(item)
        n = n_items if n_items is not None else (len(catalog) if catalog is not None else None)
        if r < 0 or (n is not None and r >= n):
            raise KeyError(f"item row {r} is outside the catalog [0, {n})")
        return r
    if catalog is None:
        raise KeyError(f"item id {item!r} given but no catalog to resolve ids; pass catalog= or catalog rows")
    return int(catalog.row(str(item)))


def catalog_item(catalog: Any, row: int) -> tuple[str | None, str | None, str | None]:
    """``(id, type, title)`` of a catalog row, from a neo ``Catalog`` or any object with
    ``id(row)``/``type_of(row)`` and optionally ``title(row)`` or a ``text`` dict."""
    if catalog is None or row < 0:
        return None, None, None
    iid = catalog.id(row) if hasattr(catalog, "id") else catalog.ids[row]
    typ = catalog.type_of(row) if hasattr(catalog, "type_of") else None
    title = None
    if hasattr(catalog, "title") and callable(catalog.title):
        title = catalog.title(row)
    elif hasattr(catalog, "text") and isinstance(catalog.text, Mapping) and catalog.text:
        field_ = "title" if "title" in catalog.text else next(iter(catalog.text))
        title = catalog.text[field_][row] or None
    return iid, typ, title


class PromptBuilder:
    """Render :class:`Prompt` objects for a model with a SID vocabulary.

    Parameters
    ----------
    tokenizer : PreTrainedTokenizerBase
        With the SID tokens installed (:meth:`SidVocab.install`).
    vocab : SidVocab
    index : SidIndex
        Gives the SID of each history item.
    catalog : optional
        Resolves item ids to rows (``catalog.row(id)``); without it history must be catalog rows.
    seed : int, optional
        When a prompt has no ``template``, pick paraphrases at random with this seed (None: always
        the first paraphrase, deterministic).
    add_bos : bool
        Prepend the tokenizer's BOS token (if it has one) in :meth:`encode`.
    """

    def __init__(self, tokenizer: Any, vocab: SidVocab, index: SidIndex, catalog: Any = None, *,
                 seed: int | None = None, add_bos: bool = True):
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.index = index
        self.catalog = catalog
        self._rng = random.Random(seed) if seed is not None else None
        self.add_bos = add_bos

    # ------------------------------------------------------------------ validation
    def _types(self, p: Prompt) -> list[str]:
        names = self.vocab.type_names
        if p.target_types is None:
            return list(names)
        tt = [p.target_types] if isinstance(p.target_types, str) else list(p.target_types)
        if not tt:
            raise PromptError("target_types is empty; give at least one item type or None for all")
        unknown = [t for t in tt if t not in names]
        if unknown:
            raise PromptError(f"unknown item type(s) {unknown} in the prompt's target_types; known types: {names}")
        return tt

    def _rows(self, items: Sequence[str | int], what: str) -> np.ndarray:
        rows, unknown = [], []
        for it in items:
            try:
                rows.append(catalog_row(self.catalog, it, None))
            except KeyError:
                unknown.append(it)
        if unknown:
            raise PromptError(f"{what} has item(s) not in the catalog: {unknown[:10]}"
                              + (f" (and {len(unknown) - 10} more)" if len(unknown) > 10 else ""))
        rows_a = np.asarray(rows, dtype=np.int64)
        if rows_a.size:
            types, _ = self.index.item_tokens(rows_a.astype(np.int32))
            missing = [items[i] for i in np.flatnonzero(np.asarray(types) < 0)]
            if missing:
                raise PromptError(f"{what} has item(s) without a semantic ID in the index: {missing[:10]}")
        return rows_a

    def validate(self, p: Prompt) -> None:
        """Raise :class:`PromptError` naming the first invalid field."""
        if p.task not in TASKS:
            raise PromptError(f"unknown task {p.task!r}; use one of {TASKS}")
        if p.output_format not in FORMATS:
            raise PromptError(f"unknown output format {p.output_format!r}; use one of {FORMATS}")
        self._types(p)
        self._rows(list(p.history), "history")
        if p.task == "search" and not p.query:
            raise PromptError("task 'search' needs a query")
        if p.task == "explain" and p.item is None:
            raise PromptError("task 'explain' needs the item to explain (item=)")
        if p.task == "free" and not p.instruction:
            raise PromptError("task 'free' needs an instruction")
        if p.k is not None and p.k < 1:
            raise PromptError(f"k must be >= 1, got {p.k}")

    # ------------------------------------------------------------------ rendering
    def _span(self, row: int) -> list[int]:
        _, toks = self.index.item_tokens(np.asarray([row], dtype=np.int32))
        return self.vocab.span_ids([int(t) for t in toks[0] if t >= 0])

    def segments(self, p: Prompt) -> list[str | list[int]]:
        """The prompt as text pieces and SID spans (lists of ids, delimiters included).

        A ``recommend`` prompt in the ``ids`` format is the sequence shape (instruction, then the history
        spans back to back, nothing after them); every other prompt ends with ``"\nAnswer:"``."""
        self.validate(p)
        types = self._types(p)
        rows = self._rows(list(p.history), "history")
        seq = is_sequence_prompt(p)
        templates = TEMPLATES[p.task] if (p.task != "recommend" or seq) else REC_PROSE_TEMPLATES
        if p.template is not None:
            if not 0 <= p.template < len(templates):
                raise PromptError(f"task {p.task!r} has templates 0..{len(templates) - 1}, got {p.template}")
            ti = p.template
        else:
            ti = self._rng.randrange(len(templates)) if self._rng else 0
        hints = FORMAT_HINTS[p.output_format]
        hint = hints[ti % len(hints)]
        type_words = " or ".join(types) if len(types) > 1 else types[0]
        type_words = type_words + ("s" if seq or (p.k or 2) > 1 else "")
        user = ""
        if p.user:
            user = "User: " + ", ".join(f"{k}: {v}" for k, v in p.user.items()) + ". "
        fields: dict[str, Any] = {
            "types": type_words, "k": p.k or 10, "query": p.query or "", "user": user, "fmt": hint,
            "instruction": (p.instruction + " " if seq and p.instruction else p.instruction or ""),
            "history_clause": "History: {history}. " if len(rows) else "",
        }
        tpl = templates[ti]
        tpl = tpl.replace("{history_clause}", fields.pop("history_clause"))
        if p.instruction and p.task != "free" and not seq:
            tpl = tpl + " " + p.instruction
        # split the template at {history} / {item}, which become spans
        out: list[str | list[int]] = []
        pieces = _split_keep(tpl, ("{history}", "{item}"))
        for piece in pieces:
            if piece == "{history}":
                if len(rows) == 0 and not seq:
                    out.append("nothing yet")
                for i, r in enumerate(rows):
                    if i and not seq:
                        out.append(", ")
                    out.append(self._span(int(r)))
            elif piece == "{item}":
                out.append(self._span(int(self._rows([p.item], "item")[0])))  # type: ignore[list-item]
            else:
                out.append(piece.format(**fields))
        if not seq:
            out.append("\nAnswer:")
        return [s for s in out if not (isinstance(s, str) and s == "")]

    def text(self, p: Prompt) -> str:
        """The prompt as a string (spans written with the SID token strings)."""
        parts = []
        for s in self.segments(p):
            parts.append(s if isinstance(s, str) else self.vocab.span_text(s[1:-1]))
        return "".join(parts)

    def encode(self, p: Prompt, *, open_span: bool = False) -> list[int]:
        """Token ids of the prompt; ``open_span`` appends ``[SID]`` (forces the answer to start
        with an item, as constrained beam search does)."""
        ids: list[int] = []
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if self.add_bos and bos is not None:
            ids.append(int(bos))
        for s in self.segments(p):
            if isinstance(s, str):
                ids.extend(self.tokenizer(s, add_special_tokens=False)["input_ids"])
            else:
                ids.extend(s)
        if open_span:
            ids.append(self.vocab.open_id)
        return ids

    def decoder_options(self, p: Prompt, **overrides: Any) -> dict[str, Any]:
        """Decoder configuration implied by the prompt: ``format``, ``allowed_types``, ``exclude``
        (history rows when ``exclude_history``) and ``max_items`` (``k`` for the ids format).
        Keyword ``overrides`` (not None) win."""
        self.validate(p)
        opts: dict[str, Any] = {
            "format": p.output_format,
            "allowed_types": self._types(p),
            "exclude": self._rows(list(p.history), "history") if p.exclude_history else None,
            "max_items": p.k if p.output_format == "ids" else None,
        }
        for k, v in overrides.items():
            if v is not None:
                opts[k] = v
        return opts


def _split_keep(s: str, keys: Sequence[str]) -> list[str]:
    out, i = [], 0
    while i < len(s):
        nxt = min(((s.find(k, i), k) for k in keys if s.find(k, i) >= 0), default=None)
        if nxt is None:
            out.append(s[i:])
            break
        j, k = nxt
        out.append(s[i:j])
        out.append(k)
        i = j + len(k)
    return out
