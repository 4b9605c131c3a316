"""Multiple-choice data for plausibility scoring: COPA and CommonsenseQA loaders, and a catalog task builder.

Every loader returns :class:`MultipleChoiceExample` records read from a path the user gives (nothing is
downloaded or bundled). :meth:`MultipleChoiceExample.to_feature` turns one into the mapping that
:class:`neo.scoring.MultipleChoiceCollator` expects, written as full text (COPA with a connective, QA as
``"Q: ... A: ..."``).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .plausibility import ChoiceText, accuracy, format_copa, format_qa, score_text

__all__ = ["MultipleChoiceExample", "load_copa", "load_commonsenseqa", "build_description_choice_task",
           "evaluate_examples"]


@dataclass
class MultipleChoiceExample:
    """One multiple-choice question.

    Attributes
    ----------
    id : str
    premise : str — COPA premise, CSQA question, or a catalog description
    choices : list[str]
    label : int or None — index of the correct choice (None when unlabelled)
    asks_for : "cause", "effect" or None (COPA only)
    meta : dict — anything else the source carried
    """

    id: str
    premise: str
    choices: list[str]
    label: int | None
    asks_for: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def text(self, *, reverse_cause: bool = True) -> ChoiceText:
        """Full-text layout: :func:`format_copa` for COPA items, :func:`format_qa` otherwise."""
        if self.asks_for is not None:
            return format_copa(self.premise, self.choices, self.asks_for, reverse_cause=reverse_cause)
        return format_qa(self.premise, self.choices)

    def to_feature(self, *, reverse_cause: bool = True) -> dict[str, Any]:
        """``{"premise", "candidates", "label", "direction"}`` for :class:`~neo.scoring.MultipleChoiceCollator`
        (collate examples of one ``direction`` together)."""
        t = self.text(reverse_cause=reverse_cause)
        return {"premise": t.premise, "candidates": list(t.candidates), "label": self.label,
                "direction": t.direction}


def _copa_record(rec: dict[str, Any], where: str) -> MultipleChoiceExample:
    try:
        asks = str(rec["asks-for"]).strip()
        label = int(rec["most-plausible-alternative"]) - 1
        ex = MultipleChoiceExample(id=str(rec["id"]), premise=str(rec["p"]).strip(),
                                   choices=[str(rec["a1"]).strip(), str(rec["a2"]).strip()], label=label,
                                   asks_for=asks)
    except KeyError as e:
        raise ValueError(f"{where}: missing COPA field {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: bad COPA record ({e})") from None
    if asks not in ("cause", "effect"):
        raise ValueError(f"{where}: asks-for must be 'cause' or 'effect', got {asks!r}")
    if label not in (0, 1):
        raise ValueError(f"{where}: most-plausible-alternative must be 1 or 2, got {label + 1}")
    return ex


def load_copa(path: str | Path) -> list[MultipleChoiceExample]:
    """Load COPA from the original XML (``<item id asks-for most-plausible-alternative><p/><a1/><a2/>``)
    or JSONL with the same field names (``id, asks-for, most-plausible-alternative, p, a1, a2``).

    Labels become 0-based. The format is chosen by content (a file starting with ``<`` is XML).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COPA file not found: {path}")
    text = path.read_text(encoding="utf-8")
    out: list[MultipleChoiceExample] = []
    if text.lstrip().startswith("<"):
        try:
            root = ET.fromstring(text.encode("utf-8"))
        except ET.ParseError as e:
            raise ValueError(f"{path}: not valid COPA XML ({e})") from None
        for k, item in enumerate(root.iter("item")):
            rec = dict(item.attrib)
            for tag in ("p", "a1", "a2"):
                el = item.find(tag)
                if el is not None:
                    rec[tag] = (el.text or "").strip()
            out.append(_copa_record(rec, f"{path}: item {k + 1}"))
    else:
        for ln, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{ln}: invalid JSON ({e.msg})") from None
            out.append(_copa_record(rec, f"{path}:{ln}"))
    if not out:
        raise ValueError(f"{path}: no COPA items found")
    return out


def load_commonsenseqa(path: str | Path) -> list[MultipleChoiceExample]:
    """Load CommonsenseQA JSONL, either the Hugging Face flattened schema
    (``{"id", "question": str, "choices": {"label": [...], "text": [...]}, "answerKey"}``) or the original
    nested one (``{"id", "question": {"stem", "choices": [{"label", "text"}]}, "answerKey"}``).

    Labels become 0-based indices into ``choices`` (None where ``answerKey`` is missing or empty, as in
    the test split).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CommonsenseQA file not found: {path}")
    out: list[MultipleChoiceExample] = []
    with path.open(encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{ln}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg})") from None
            q = rec.get("question")
            if isinstance(q, dict):  # original nested schema
                stem = q.get("stem")
                labels = [c.get("label") for c in q.get("choices", [])]
                texts = [c.get("text") for c in q.get("choices", [])]
                concept = q.get("question_concept")
            else:
                stem = q
                ch = rec.get("choices") or {}
                labels, texts = list(ch.get("label", [])), list(ch.get("text", []))
                concept = rec.get("question_concept")
            if not isinstance(stem, str) or not stem.strip():
                raise ValueError(f"{where}: missing question text")
            if not texts or len(labels) != len(texts) or any(not isinstance(t, str) for t in texts):
                raise ValueError(f"{where}: choices must be parallel non-empty label and text lists")
            key = rec.get("answerKey")
            if key in (None, ""):
                label = None
            elif key in labels:
                label = labels.index(key)
            else:
                raise ValueError(f"{where}: answerKey {key!r} is not one of the choice labels {labels}")
            out.append(MultipleChoiceExample(id=str(rec.get("id", ln)), premise=stem.strip(),
                                             choices=[t.strip() for t in texts], label=label,
                                             meta={"question_concept": concept, "choice_labels": labels}))
    if not out:
        raise ValueError(f"{path}: no questions found")
    return out


def build_description_choice_task(titles: Sequence[str], descriptions: Sequence[str], *, n_choices: int = 4,
                                  items: Sequence[int] | None = None, pool: Sequence[int] | None = None,
                                  seed: int = 0, id_prefix: str = "q") -> list[MultipleChoiceExample]:
    """Catalog multiple-choice task: given an item's description, which of ``n_choices`` titles fits?

    For each item in ``items`` (default: all), the premise is its description and the choices are its
    title plus ``n_choices - 1`` distractor titles drawn from ``pool`` (default: all items) whose
    description differs from the item's (so exactly one choice is right). The correct position is
    uniform at random.

    Parameters
    ----------
    titles, descriptions : sequences of length N (one per catalog row)
    n_choices : int >= 2
    items : rows to make questions about
    pool : rows distractors are drawn from
    seed : int — questions are a pure function of the inputs and the seed

    Returns
    -------
    list of :class:`MultipleChoiceExample`, premise = description, ``meta["rows"]`` = catalog rows of the choices.
    """
    N = len(titles)
    if len(descriptions) != N:
        raise ValueError(f"titles ({N}) and descriptions ({len(descriptions)}) must have the same length")
    if n_choices < 2:
        raise ValueError(f"n_choices must be >= 2, got {n_choices}")
    rng = np.random.default_rng(seed)
    items = list(range(N)) if items is None else [int(i) for i in items]
    pool_arr = np.arange(N) if pool is None else np.asarray(pool, dtype=np.int64)
    _, code = np.unique(np.asarray(descriptions, dtype=object).astype(str), return_inverse=True)
    pool_code = code[pool_arr]
    out: list[MultipleChoiceExample] = []
    for q, row in enumerate(items):
        cand = pool_arr[pool_code != code[row]]
        if len(cand) < n_choices - 1:
            raise ValueError(f"item {row}: only {len(cand)} distractors with a different description, "
                             f"need {n_choices - 1}")
        wrong = rng.choice(cand, size=n_choices - 1, replace=False).tolist()
        label = int(rng.integers(n_choices))
        rows = wrong[:label] + [row] + wrong[label:]
        out.append(MultipleChoiceExample(id=f"{id_prefix}{q}", premise=descriptions[row],
                                         choices=[titles[r] for r in rows], label=label, meta={"rows": rows}))
    return out


def evaluate_examples(model: Any, tokenizer: Any, examples: Sequence[MultipleChoiceExample], *,
                      reverse_cause: bool = True, **score_kwargs: Any) -> tuple[float, np.ndarray]:
    """Zero-shot accuracy of a model on labelled examples (e.g. COPA, CommonsenseQA), one question at a time.

    Each example is written as full text (:meth:`MultipleChoiceExample.text`) and scored with
    :func:`neo.scoring.score_text` (causal LMs in the direction the layout supports, masked LMs on the
    premise); ``score_kwargs`` (``normalize``, ``ngram``, ``batch_size`` ...) go to :func:`neo.scoring.score`.

    Returns
    -------
    accuracy : float
    predictions : (N,) int array of argmax choices
    """
    labelled = [e for e in examples if e.label is not None]
    if not labelled:
        raise ValueError("no labelled examples to evaluate")
    preds = np.asarray([int(score_text(model, tokenizer, e.text(reverse_cause=reverse_cause), **score_kwargs).argmax())
                        for e in labelled])
    return accuracy(preds, [e.label for e in labelled]), preds
