"""Evaluation drivers: score functions, top-K functions and neo systems run over evaluation cases.

* :func:`evaluate_scorer` / :func:`evaluate_topk` / :func:`evaluate_search` turn a model's scores or
  lists into the metrics of :mod:`neo.evaluation.metrics`.
* Generation with a neo system: SID validity with constraints off, type steering (fraction of
  unconstrained beams in the requested type, per type) and output-format compliance
  (:func:`sid_validity_and_steering`, :func:`format_compliance`).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..items.datasets import SearchQuery
from .metrics import KS, metrics_from_ranks, ranks_from_scores, ranks_from_topk, search_metrics
from .protocols import EvalCases

__all__ = ["evaluate_scorer", "random_expectation", "evaluate_topk", "evaluate_search", "neo_topk_fn",
           "neo_search_fn", "neo_validation_fn", "sid_validity_and_steering", "format_compliance"]

# ============================================================================ evaluation drivers

ScoreFn = Callable[[list[np.ndarray]], np.ndarray]
TopkFn = Callable[[list[np.ndarray], int], list[list[int]]]


def evaluate_scorer(score_fn: ScoreFn, cases: EvalCases, *, candidates: np.ndarray | None = None,
                    exclude_history: bool = True, ks: Iterable[int] = KS, batch_size: int = 256,
                    progress: bool = False, desc: str = "eval") -> dict[str, float]:
    """Full-ranking metrics of a scorer.

    Parameters
    ----------
    score_fn : callable
        ``score_fn(histories) -> (B, n_items)`` scores (higher is better).
    cases : EvalCases
    candidates : np.ndarray, optional
        Item indices that may be ranked (e.g. the movies of a two-type catalog); others get ``-inf``.
    exclude_history : bool
        Items in the case's history cannot be recommended (their scores become ``-inf``; a repeat of
        the target stays rankable). ``False`` ranks them like any other item.
    """
    ks = tuple(ks)
    ranks = []
    it = range(0, len(cases), batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=desc, unit="batch", leave=False)
    cand_mask = None
    for s in it:
        sub = cases.subset(np.arange(s, min(s + batch_size, len(cases))))
        sc = np.array(score_fn(sub.histories), dtype=np.float64, copy=True)
        if cand_mask is None and candidates is not None:
            cand_mask = np.zeros(sc.shape[1], dtype=bool)
            cand_mask[np.asarray(candidates, dtype=np.int64)] = True
        if cand_mask is not None:
            sc[:, ~cand_mask] = -np.inf
        if exclude_history:
            for i, h in enumerate(sub.histories):
                keep = h[h != sub.targets[i]]  # a repeat of the target stays rankable
                sc[i, keep] = -np.inf
        ranks.append(ranks_from_scores(sc, sub.targets))
    return metrics_from_ranks(np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64), ks)


def random_expectation(cases: EvalCases, n_items: int, *, candidates: np.ndarray | None = None,
                       exclude_history: bool = True, ks: Iterable[int] = KS) -> dict[str, float]:
    """Exact expected HR@K / NDCG@K / MRR of a uniformly random ranking of the candidates (the
    chance level a model must beat), with the same candidate set and history exclusion as
    :func:`evaluate_scorer`. Computed, not sampled, so it carries no noise."""
    ks = tuple(ks)
    cand = np.ones(n_items, dtype=bool) if candidates is None else np.isin(np.arange(n_items), candidates)
    n_eff = np.empty(len(cases), dtype=np.float64)
    for i, (h, t) in enumerate(zip(cases.histories, cases.targets)):
        ex = np.unique(h[(h != t) & cand[h]]).size if exclude_history and h.size else 0
        n_eff[i] = cand.sum() - ex
    out: dict[str, float] = {"n": len(cases)}
    if not len(cases):
        return out
    for k in ks:
        out[f"hr@{k}"] = float(np.mean(np.minimum(k, n_eff) / n_eff))
        out[f"recall@{k}"] = out[f"hr@{k}"]
        disc = 1.0 / np.log2(np.arange(k) + 2.0)
        cum = np.concatenate([[0.0], np.cumsum(disc)])
        out[f"ndcg@{k}"] = float(np.mean(cum[np.minimum(k, n_eff).astype(np.int64)] / n_eff))
    out["mrr"] = float(np.mean([np.sum(1.0 / np.arange(1, int(n) + 1)) / n for n in n_eff]))
    return out


def evaluate_topk(topk_fn: TopkFn, cases: EvalCases, *, ks: Iterable[int] = KS, batch_size: int = 16,
                  progress: bool = False, desc: str = "eval") -> dict[str, float]:
    """Metrics of a generator returning ranked lists: ``topk_fn(histories, k) -> list of item lists``."""
    ks = tuple(ks)
    kmax = max(ks)
    ranks = []
    it = range(0, len(cases), batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=desc, unit="batch", leave=False)
    for s in it:
        sub = cases.subset(np.arange(s, min(s + batch_size, len(cases))))
        ranks.append(ranks_from_topk(topk_fn(sub.histories, kmax), sub.targets))
    return metrics_from_ranks(np.concatenate(ranks) if ranks else np.zeros(0, dtype=np.int64), ks)


def evaluate_search(rank_fn: Callable[[list[str], int], list[list[int]]], queries: Sequence[SearchQuery], *,
                    ks: Iterable[int] = KS, batch_size: int = 64) -> dict[str, float]:
    """Search metrics: ``rank_fn(query_texts, k) -> ranked item lists``, judged against each
    query's relevant items."""
    ks = tuple(ks)
    ranked: list[list[int]] = []
    for s in range(0, len(queries), batch_size):
        qs = queries[s:s + batch_size]
        ranked.extend(rank_fn([q.query for q in qs], max(ks)))
    return search_metrics(ranked, [q.relevant for q in queries], ks)


# ============================================================================ neo systems


def _chunks(n: int, size: int) -> Iterable[range]:
    for s in range(0, n, size):
        yield range(s, min(s + size, n))


def neo_topk_fn(system: Any, *, target_type: str | None = None, num_beams: int = 30, prompt_k: int = 1,
                max_history: int | None = None, template: int = 0, exclude_history: bool = True) -> TopkFn:
    """A :data:`TopkFn` backed by a neo system's constrained beam search over the first item of the
    answer. History items are catalog rows.

    Parameters
    ----------
    prompt_k : int
        The number of items the prompt asks for. The ranking is over the *first* item either way;
        1 matches the single next-item instruction task the model was trained on.
    max_history : int, optional
        Only the most recent items go into the prompt (the model's input window; the protocol's cap
        of 20 applies first).
    exclude_history : bool
        Items of the case's history cannot be ranked (the decoder excludes them), as for the
        baselines with ``evaluate_scorer(exclude_history=True)``; ``False`` ranks them like any
        other item (the TIGER protocol).
    """
    from ..lm.prompts import Prompt

    def fn(histories: list[np.ndarray], k: int) -> list[list[int]]:
        prompts, hidden = [], []
        for h in histories:
            h = [int(x) for x in h]
            shown = h[-max_history:] if max_history else h
            prompts.append(Prompt(task="recommend", target_types=target_type, history=shown, k=prompt_k,
                                  template=template, exclude_history=exclude_history))
            hidden.append(set(h) - set(shown) if exclude_history else set())
        # history items not shown in the prompt are excluded too: ask for that many more items and
        # drop them afterwards (exact: the search returns the best distinct items in order)
        extra = max((len(x) for x in hidden), default=0)
        res = system.topk_items(prompts, k=k + extra, num_beams=max(num_beams, k + extra))
        return [[it.row for it in r if it.row not in hid][:k] for r, hid in zip(res, hidden)]

    return fn


def neo_validation_fn(system: Any, cases: EvalCases, *, target_type: str | None = None, num_beams: int = 20,
                      max_history: int | None = None, ks: Iterable[int] = (10,),
                      batch_size: int = 32) -> Callable[[Any], dict[str, float]]:
    """A validation function for :class:`neo.training.train.Validation`: ``fn(model)`` ranks the
    ``cases`` (validation targets, never test ones) with the system's tokenizer, index and catalog but
    the given ``model`` (the one being trained), by constrained beam search with the history
    excluded, and returns ``hr@K`` / ``ndcg@K`` for each ``K`` in ``ks``.

    Parameters
    ----------
    system : NeoSystem
        Its ``model`` is not used (the trained model is passed to ``fn``).
    cases : EvalCases
        Validation cases (:attr:`neo.evaluation.protocols.Split.valid`).
    target_type, num_beams, max_history : as in :func:`neo_topk_fn`.
    """
    import copy

    ks = tuple(ks)

    def fn(model: Any) -> dict[str, float]:
        view = copy.copy(system)
        view.model = model
        m = evaluate_topk(neo_topk_fn(view, target_type=target_type, num_beams=num_beams, max_history=max_history),
                          cases, ks=ks, batch_size=batch_size)
        return {key: m[key] for k in ks for key in (f"hr@{k}", f"ndcg@{k}")}

    return fn


def neo_search_fn(system: Any, *, target_type: str | None = None, num_beams: int = 30) -> Callable:
    """Ranked lists for text queries from a neo system's constrained beam search."""
    from ..lm.prompts import Prompt

    def fn(queries: list[str], k: int) -> list[list[int]]:
        prompts = [Prompt(task="search", target_types=target_type, query=q, k=k, template=0) for q in queries]
        res = system.topk_items(prompts, k=k, num_beams=max(num_beams, k))
        return [[it.row for it in r] for r in res]

    return fn


def _unconstrained_beams(system: Any, prompts: list[Any], num_beams: int, max_new_tokens: int) -> list[list[Any]]:
    """Plain Hugging Face beam search (no neo constraints) from prompts ending with ``[SID]``;
    returns, per prompt, the first :class:`~neo.lm.generation.ItemRef` of each beam (or ``None`` when a
    beam opened no span, e.g. wrote text)."""
    import torch

    from ..lm.generation import parse_output

    builder = system.prompt_builder()
    tok = system.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[list[Any]] = []
    model = system.model
    for p in prompts:
        ids = builder.encode(p, open_span=True)
        x = torch.as_tensor([ids], dtype=torch.long, device=model.device)
        with torch.no_grad():
            gen = model.generate(input_ids=x, attention_mask=torch.ones_like(x), num_beams=num_beams,
                                 num_return_sequences=num_beams, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=pad, early_stopping=True)
        beams = []
        for row in gen[:, len(ids):].tolist():
            segs = parse_output([system.vocab.open_id] + row, tok, system.vocab, system.index, system.catalog)
            items = [s for s in segs if hasattr(s, "row")]
            beams.append(items[0] if items else None)
        out.append(beams)
    return out


def sid_validity_and_steering(system: Any, histories: Sequence[np.ndarray], *, types: Sequence[str] | None = None,
                              num_beams: int = 10, max_prompts: int = 50) -> dict[str, Any]:
    """SID validity and type steering with the constraints **off**.

    For each requested type ``t`` and up to ``max_prompts`` histories, asks for a ``t`` item and
    runs plain beam search; reports, over all beams, the fraction that form a real catalog item
    (validity) and, per type, the fraction whose item is of type ``t`` (steering, read from the
    first code token's band, valid or not).
    """
    from ..lm.prompts import Prompt

    types = list(types or system.vocab.type_names)
    max_new = max(t.levels for t in system.vocab.layout.types) + 1
    res: dict[str, Any] = {"num_beams": num_beams, "steering": {}, "validity_by_type": {}}
    n_valid = n_total = 0
    for t in types:
        prompts = [Prompt(task="recommend", target_types=t, history=[int(x) for x in h], k=10, template=0)
                   for h in list(histories)[:max_prompts]]
        beams = _unconstrained_beams(system, prompts, num_beams, max_new)
        flat = [b for bs in beams for b in bs]
        ok = sum(1 for b in flat if b is not None and b.valid)
        in_type = sum(1 for b in flat if b is not None and b.type == t)
        res["steering"][t] = in_type / max(1, len(flat))
        res["validity_by_type"][t] = ok / max(1, len(flat))
        n_valid += ok
        n_total += len(flat)
    res["sid_validity"] = n_valid / max(1, n_total)
    res["n_beams"] = n_total
    return res


def _complies(fmt: str, segments: list[Any]) -> bool:
    items = [s for s in segments if hasattr(s, "row")]
    text = "".join(s for s in segments if isinstance(s, str))
    if fmt == "ids":  # items only: separators and whitespace between them are fine
        return bool(items) and all(it.valid for it in items) and not any(ch.isalnum() for ch in text)
    if fmt == "text":
        return not items and bool(text.strip())
    return bool(items) and all(it.valid for it in items) and any(ch.isalnum() for ch in text)


def format_compliance(system: Any, histories: Sequence[np.ndarray], *, formats: Sequence[str] = ("ids", "text", "mixed"),
                      constrained: bool = False, max_prompts: int = 20, max_new_tokens: int = 48) -> dict[str, float]:
    """Fraction of greedy answers in the requested output format.

    ``ids``: at least one item, every item real, no words outside items (the answer is generated with
    room for exactly the 5 spans asked for, since an ``ids`` answer continues the history); ``text``:
    words and no item; ``mixed``: words and at least one item, every item real. With
    ``constrained=False`` this measures what the model learned; with the constraints on, ``ids``/``text``
    hold by construction.
    """
    from ..lm.prompts import Prompt

    out: dict[str, float] = {}
    hs = list(histories)[:max_prompts]
    span_len = max(t.levels for t in system.vocab.layout.types) + 2
    for fmt in formats:
        task = {"ids": "recommend", "text": "describe_user", "mixed": "explain"}[fmt]
        prompts = []
        for h in hs:
            h = [int(x) for x in h]
            if task == "explain":
                prompts.append(Prompt(task="explain", history=h[:-1] or h, item=h[-1], format="mixed", template=0))
            else:
                prompts.append(Prompt(task=task, history=h, k=5, format=fmt, template=0))
        # ids answers continue the history (no answer cue, no EOS): room for exactly the k spans asked for
        n_new = 5 * span_len if fmt == "ids" else max_new_tokens
        gens = system.generate(prompts, max_new_tokens=n_new, constrained=constrained)
        out[fmt] = float(np.mean([_complies(fmt, g.segments) for g in gens])) if gens else float("nan")
    return out
