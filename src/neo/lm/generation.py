"""Fast catalog-grounded generation: a batched decode loop with KV cache, and top-K item beam search.

* :func:`generate` -- greedy or sampled decoding of mixed text + SID spans. Each step: one model
  forward with the KV cache, the C++ core fills the rows' bitmasks (incrementally, GIL released),
  the mask is applied structurally (:class:`~neo.lm.processor.SidMasker`: free-text rows touch only the
  SID block), and the token is chosen by argmax or ``neo.kernels.sample_masked`` (Triton on CUDA,
  torch reference on CPU). Greedy outputs are identical to ``model.generate`` with
  :class:`~neo.lm.processor.SidLogitsProcessor`.
* :func:`topk_items` (and :func:`recommend` / :func:`search`) -- constrained beam search over the
  trie for the K most likely **distinct** items. The prompt ends with ``[SID]``; every step scores
  only the SID block with a full-vocabulary log-softmax; an item's score is the sum of its code
  log-probabilities (``[/SID]`` is forced, so it is not scored). Beams that complete an item leave
  the beam, so K can exceed the beam width; the search stops once no live beam can beat the K-th
  best item (scores only decrease), which makes it exact whenever the beam holds every prefix.
* :func:`parse_output` -- token ids to text segments and resolved catalog items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..core.index import RowStatus, SidIndex
from .processor import FORMATS, SidMasker
from .prompts import Prompt, PromptBuilder, catalog_item
from .vocab import SidVocab

__all__ = ["ItemRef", "GenerationOutput", "parse_output", "generate", "topk_items", "recommend", "search",
           "describe_user"]


@dataclass
class ItemRef:
    """An item named in an output.

    Attributes
    ----------
    row : int
        Catalog row, ``-1`` if the span is not a real item (only possible without constraints).
    id, type, title : str or None
        From the catalog (``None`` without one); ``type`` falls back to the layout's type name.
    tokens : tuple of int
        The span's code tokens.
    score : float or None
        Log-likelihood of the codes (top-K search only).
    """

    row: int
    id: str | None
    type: str | None
    title: str | None
    tokens: tuple[int, ...]
    score: float | None = None

    @property
    def valid(self) -> bool:
        return self.row >= 0


@dataclass
class GenerationOutput:
    """One generated answer.

    Attributes
    ----------
    token_ids : list of int
        Generated ids (prompt excluded, EOS included when produced, padding stripped).
    segments : list of (str | ItemRef)
        Text pieces and items in order.
    status : str
        Final decode status (``text``, ``span``, ``done``, ``error``); ``error`` carries the reason.
    """

    token_ids: list[int]
    segments: list[Any] = field(default_factory=list)
    status: str = "done"
    error: str = ""

    @property
    def items(self) -> list[ItemRef]:
        return [s for s in self.segments if isinstance(s, ItemRef)]

    @property
    def text(self) -> str:
        """Text with each item written as ``[title]`` (or its id)."""
        out = []
        for s in self.segments:
            if isinstance(s, ItemRef):
                out.append(f"[{s.title or s.id or 'invalid item'}]")
            else:
                out.append(s)
        return "".join(out)


def parse_output(token_ids: Sequence[int], tokenizer: Any, vocab: SidVocab, index: SidIndex,
                 catalog: Any = None, *, skip_special_tokens: bool = True) -> list[Any]:
    """Split generated ids into text segments and :class:`ItemRef` items.

    Spans that are incomplete or name no item become ``ItemRef(row=-1, ...)``; stray SID code tokens
    outside spans are dropped from the text.
    """
    segs: list[Any] = []
    text: list[int] = []
    span: list[int] | None = None

    def flush_text() -> None:
        if text:
            s = tokenizer.decode(text, skip_special_tokens=skip_special_tokens)
            if s:
                segs.append(s)
            text.clear()

    def close(toks: list[int]) -> None:
        row = -1
        tname = None
        if toks:
            cls = vocab.layout.classify(toks[0])
            if cls is not None:
                tname = vocab.layout.types[cls[0]].name
                if len(toks) == vocab.layout.types[cls[0]].levels:
                    row = int(index.lookup(np.asarray([toks], dtype=np.int32))[0])
        iid, typ, title = catalog_item(catalog, row)
        segs.append(ItemRef(row, iid, typ or tname, title, tuple(toks)))

    for t in token_ids:
        t = int(t)
        if t == vocab.open_id:
            flush_text()
            if span is not None:
                close(span)
            span = []
        elif t == vocab.close_id:
            if span is not None:
                close(span)
                span = None
        elif vocab.token_begin <= t < vocab.token_end:
            if span is not None:
                span.append(t)
        else:
            if span is not None:  # text inside an open span: the span is broken
                close(span)
                span = None
            text.append(t)
    if span is not None:
        close(span)
    flush_text()
    return segs


# ============================================================================ inputs and options


def _prepare(prompts: Sequence[Any], tokenizer: Any, vocab: SidVocab, index: SidIndex, catalog: Any,
             builder: PromptBuilder | None, overrides: dict[str, Any], open_span: bool = False,
             ) -> tuple[list[list[int]], list[dict[str, Any]]]:
    """Prompts (Prompt / str / id list) -> token ids and per-row decoder options."""
    if isinstance(prompts, (str, Prompt)) or (len(prompts) and isinstance(prompts[0], (int, np.integer))):
        prompts = [prompts]  # a single prompt
    if builder is None:
        builder = PromptBuilder(tokenizer, vocab, index, catalog)
    ids_list, opts_list = [], []
    for p in prompts:
        if isinstance(p, Prompt):
            ids = builder.encode(p, open_span=open_span)
            opts = builder.decoder_options(p, **overrides)
        else:
            if isinstance(p, str):
                ids = tokenizer(p, add_special_tokens=True)["input_ids"]
            else:
                ids = [int(t) for t in p]
            if open_span and (not ids or ids[-1] != vocab.open_id):
                ids = ids + [vocab.open_id]
            opts = {"format": "mixed", "allowed_types": None, "exclude": None, "max_items": None}
            opts.update({k: v for k, v in overrides.items() if v is not None})
        if opts.get("allowed_types") is not None:
            ats = opts["allowed_types"]
            ats = [ats] if isinstance(ats, (str, int, np.integer)) else list(ats)
            for t in ats:
                try:
                    vocab.layout.type_index(t)
                except KeyError as e:
                    raise ValueError(str(e.args[0])) from None
            opts["allowed_types"] = ats
        if opts.get("format", "mixed") not in FORMATS:
            raise ValueError(f"unknown output format {opts['format']!r}; use one of {FORMATS}")
        if not ids:
            raise ValueError("empty prompt: give at least one token")
        ids_list.append(ids)
        opts_list.append(opts)
    return ids_list, opts_list


def _left_pad(ids_list: list[list[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(x) for x in ids_list)
    ids = torch.full((len(ids_list), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids_list), n), dtype=torch.long)
    for i, x in enumerate(ids_list):
        if x:
            ids[i, n - len(x):] = torch.as_tensor(x, dtype=torch.long)
            mask[i, n - len(x):] = 1
    return ids.to(device), mask.to(device)


def _eos_ids(tokenizer: Any, model: Any, eos_token_id: Any) -> list[int]:
    if eos_token_id is None:
        eos_token_id = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos_token_id is None:
        eos_token_id = tokenizer.eos_token_id
    if eos_token_id is None:
        raise ValueError("no EOS token: pass eos_token_id=")
    return [int(eos_token_id)] if isinstance(eos_token_id, (int, np.integer)) else [int(t) for t in eos_token_id]


def _cache_kwarg(model: Any) -> str:
    # transformers 5.x renamed ``past_key_values`` to ``cache`` in forward (the old name is deprecated)
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _forward(model: Any, ids: torch.Tensor, mask: torch.Tensor, cache: Any) -> torch.Tensor:
    """Logits (rows, V) float32 of the last position; positions from the (left-padded) mask, as
    ``model.generate`` computes them, so greedy outputs match it exactly."""
    pos = (mask.cumsum(-1) - 1).clamp_min(0)[:, -ids.shape[1]:]
    kw = {_cache_kwarg(model): cache, "logits_to_keep": 1}
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **kw)
    return out.logits[:, -1, :].to(dtype=torch.float32)


def _new_cache(model: Any) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:
        return DynamicCache()


# ============================================================================ decode loop


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    vocab: SidVocab,
    index: SidIndex,
    prompts: Sequence[Any] | Prompt | str,
    *,
    catalog: Any = None,
    builder: PromptBuilder | None = None,
    max_new_tokens: int = 64,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    format: str | None = None,
    allowed_types: Any = None,
    exclude: Any = None,
    allow: Any = None,
    max_items: int | None = None,
    exclude_emitted: bool = True,
    separator_token_ids: Sequence[int] = (),
    eos_token_id: int | Sequence[int] | None = None,
    constrained: bool = True,
    num_threads: int = 1,
    repetition_penalty: float = 1.0,
) -> list[GenerationOutput]:
    """Generate answers with every item span guaranteed to be a real catalog item.

    Parameters
    ----------
    model, tokenizer
        An adapted causal LM (:func:`neo.adapt_model`) and its tokenizer with the SID tokens.
    vocab, index
        The SID vocabulary and the catalog's trie.
    prompts : list of Prompt / str / list of int
        :class:`Prompt` objects are rendered by ``builder`` (default: first paraphrase) and
        configure the decoder (format, allowed types, history exclusion, k); strings are
        tokenised as is; id lists are used as is.
    catalog : optional
        Resolves items to (id, type, title) in the outputs.
    do_sample, temperature, top_k, top_p, seed
        Sampling (``neo.kernels.sample_masked``: seeded Gumbel-max, reproducible on CPU and GPU).
    format, allowed_types, exclude, allow, max_items
        Override what the prompts imply (same for every prompt).
    constrained : bool
        ``False`` decodes without any mask (for comparisons).
    repetition_penalty : float
        > 1 discourages repeating a text token already generated in the answer (CTRL-style: its
        logit is divided by the penalty when positive, multiplied when negative); SID tokens are
        exempt (repeated items are handled by ``exclude_emitted``). 1.0: off.

    Returns
    -------
    list of GenerationOutput, one per prompt.
    """
    from ..kernels import sample_masked

    device = model.device
    overrides = dict(format=format, allowed_types=allowed_types, exclude=exclude, allow=allow, max_items=max_items)
    ids_list, opts = _prepare(prompts, tokenizer, vocab, index, catalog, builder, overrides)
    eos = _eos_ids(tokenizer, model, eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    B = len(ids_list)
    masker = SidMasker(index, B, eos, separator_token_ids, num_threads)
    for r, o in enumerate(opts):
        masker.set_row_options(r, format=o.get("format", "mixed"), allowed_types=o.get("allowed_types"),
                               exclude=o.get("exclude"), allow=o.get("allow"), exclude_emitted=exclude_emitted,
                               max_items=o.get("max_items"))
    masker.prime(ids_list)
    ids, mask = _left_pad(ids_list, pad, device)
    cache = _new_cache(model)
    logits = _forward(model, ids, mask, cache)
    out_tokens = np.full((B, max_new_tokens), -1, dtype=np.int64)
    finished = np.zeros(B, dtype=bool)
    eos_set = np.asarray(eos)
    seen = torch.zeros_like(logits, dtype=torch.bool) if repetition_penalty != 1.0 else None
    for step in range(max_new_tokens):
        if seen is not None and step:
            pen = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
            logits = torch.where(seen, pen, logits)
        if constrained:
            masker.apply(logits)
        if do_sample and temperature > 0:
            seeds = torch.as_tensor([(seed * 1_000_003 + r) * 1_000_033 + step for r in range(B)], dtype=torch.int64,
                                    device=device)
            nxt = sample_masked(logits, None, temperature=temperature, top_k=top_k, top_p=top_p, seeds=seeds)
        else:
            nxt = logits.argmax(-1)
        tok = nxt.to("cpu").numpy().astype(np.int64)
        tok[finished] = pad
        bad = tok < 0  # no allowed token (cannot happen with a valid state): finish the row
        tok[bad] = eos[0]
        live = np.flatnonzero(~finished)
        if constrained and live.size:
            masker.advance(tok[live], live if live.size < B else None)
        out_tokens[live, step] = tok[live]
        if seen is not None:
            text_rows = live[(tok[live] < vocab.token_begin) | (tok[live] >= vocab.token_end)]
            seen[torch.as_tensor(text_rows, device=device), torch.as_tensor(tok[text_rows], device=device)] = True
        finished |= np.isin(tok, eos_set) | bad
        if finished.all() or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], 1)
        logits = _forward(model, torch.as_tensor(tok, device=device).unsqueeze(1), mask, cache)
    st = masker.state.status
    results = []
    for r in range(B):
        toks = [int(t) for t in out_tokens[r] if t >= 0]
        segs = parse_output(toks, tokenizer, vocab, index, catalog)
        status = RowStatus.NAMES[int(st[r])] if constrained else "unconstrained"
        err = masker.state.error(r) if constrained else ""
        results.append(GenerationOutput(toks, segs, status, err))
    return results


# ============================================================================ top-K items


@torch.no_grad()
def topk_items(
    model: Any,
    tokenizer: Any,
    vocab: SidVocab,
    index: SidIndex,
    prompts: Sequence[Any] | Prompt | str,
    *,
    k: int = 10,
    num_beams: int = 30,
    catalog: Any = None,
    builder: PromptBuilder | None = None,
    allowed_types: Any = None,
    exclude: Any = None,
    allow: Any = None,
    eos_token_id: int | Sequence[int] | None = None,
    num_threads: int = 1,
) -> list[list[ItemRef]]:
    """The ``k`` most likely distinct items per prompt, by constrained beam search.

    Parameters
    ----------
    prompts
        As in :func:`generate`; ``[SID]`` is appended. :class:`Prompt` history is excluded when
        ``exclude_history`` (default), and its target types restrict the items.
    k : int
        Items returned per prompt (fewer if fewer items are allowed).
    num_beams : int
        Partial SIDs kept per prompt at each level (the reference system used 30); raised to ``k``
        when smaller. With at least as many beams as prefixes at every level the result is exact.

    Returns
    -------
    list (per prompt) of ItemRef sorted by ``score`` (sum of code log-probabilities) descending.
    """
    if k < 1 or num_beams < 1:
        raise ValueError(f"k and num_beams must be >= 1, got k={k}, num_beams={num_beams}")
    device = model.device
    overrides = dict(allowed_types=allowed_types, exclude=exclude, allow=allow)
    ids_list, opts = _prepare(prompts, tokenizer, vocab, index, catalog, builder, overrides, open_span=True)
    eos = _eos_ids(tokenizer, model, eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    # K distinct items need at least K beams before the last level: the width is raised to k
    R, W = len(ids_list), max(int(num_beams), int(k))
    lay = vocab.layout
    masker = SidMasker(index, R * W, eos, (), num_threads)
    for r, o in enumerate(opts):
        for b in range(W):
            masker.set_row_options(r * W + b, format="mixed", allowed_types=o.get("allowed_types"),
                                   exclude=o.get("exclude"), allow=o.get("allow"))
    masker.prime([ids for ids in ids_list for _ in range(W)])
    ids, mask = _left_pad(ids_list, pad, device)
    cache = _new_cache(model)
    logits = _forward(model, ids, mask, cache)  # (R, V): computed once per prompt
    logits = logits.repeat_interleave(W, 0)
    mask = mask.repeat_interleave(W, 0)
    cache.batch_repeat_interleave(W)
    # SID block columns and which of them end a SID
    c0, c1 = vocab.token_begin, vocab.token_end
    w0 = c0 // 32
    block_cols = torch.arange(c0, c1)
    is_last = torch.zeros(c1 - c0, dtype=torch.bool)
    for t in lay.types:
        s = t.band_starts[-1]
        is_last[s - c0:s - c0 + t.codebook_sizes[-1]] = True
    is_last = is_last.to(device)
    scores = torch.full((R, W), float("-inf"), device=device)
    scores[:, 0] = 0.0  # one live beam at the start: no duplicates
    prefixes: list[list[list[int]]] = [[[] for _ in range(W)] for _ in range(R)]
    pool: list[list[tuple[float, tuple[int, ...]]]] = [[] for _ in range(R)]
    max_levels = max(t.levels for t in lay.types)
    bits = torch.arange(32, dtype=torch.int32)
    for _level in range(max_levels):
        masker.fill()
        words = masker.bitmask[:, w0:(c1 + 31) // 32]
        allowed = ((words.unsqueeze(-1) >> bits) & 1).bool().reshape(R * W, -1)[:, c0 - 32 * w0:c1 - 32 * w0]
        allowed = allowed.to(device)
        lse = torch.logsumexp(logits, -1, keepdim=True)
        lp = logits[:, c0:c1] - lse
        lp = lp.masked_fill(~allowed, float("-inf"))
        cand = (scores.reshape(-1, 1) + lp).reshape(R, W * (c1 - c0))
        last_mask = is_last.repeat(W)
        done_c = cand.masked_fill(~last_mask, float("-inf"))
        live_c = cand.masked_fill(last_mask, float("-inf"))
        # completions go to the pool (the best k per prompt are all we can ever need)
        nk = min(k, done_c.shape[1])
        dv, di = done_c.topk(nk, dim=1)
        nw = min(W, live_c.shape[1])
        lv, li = live_c.topk(nw, dim=1)
        dv, di, lv, li = dv.cpu(), di.cpu(), lv.cpu(), li.cpu()
        ncol = c1 - c0
        for r in range(R):
            for v, j in zip(dv[r].tolist(), di[r].tolist()):
                if v == float("-inf"):
                    break
                beam, col = divmod(j, ncol)
                pool[r].append((v, tuple(prefixes[r][beam] + [c0 + col])))
            pool[r].sort(key=lambda x: -x[0])
            del pool[r][k:]
        parents = np.zeros(R * W, dtype=np.int64)
        next_tok = np.full(R * W, vocab.open_id, dtype=np.int64)
        new_scores = torch.full((R, W), float("-inf"))
        new_prefixes: list[list[list[int]]] = [[[] for _ in range(W)] for _ in range(R)]
        any_live = False
        for r in range(R):
            kth = pool[r][k - 1][0] if len(pool[r]) >= k else float("-inf")
            slot = 0
            for v, j in zip(lv[r].tolist(), li[r].tolist()):
                if v == float("-inf") or v <= kth:
                    break  # cannot beat the k-th best completed item: scores only decrease
                beam, col = divmod(j, ncol)
                parents[r * W + slot] = r * W + beam
                next_tok[r * W + slot] = c0 + col
                new_scores[r, slot] = v
                new_prefixes[r][slot] = prefixes[r][beam] + [c0 + col]
                slot += 1
            for s in range(slot, W):  # dead slots copy beam 0 and stay at -inf
                parents[r * W + s] = r * W
            any_live |= slot > 0
        if not any_live:
            break
        masker.reorder(parents)
        live_rows = np.flatnonzero(new_scores.reshape(-1).numpy() > float("-inf"))
        masker.advance(next_tok[live_rows], live_rows)
        scores = new_scores.to(device)
        prefixes = new_prefixes
        cache.reorder_cache(torch.as_tensor(parents, device=device))
        mask = torch.cat([mask[torch.as_tensor(parents, device=device)],
                          torch.ones((R * W, 1), dtype=mask.dtype, device=device)], 1)
        logits = _forward(model, torch.as_tensor(next_tok, device=device).unsqueeze(1), mask, cache)
    results = []
    for r in range(R):
        items = []
        for v, toks in pool[r]:
            row = int(index.lookup(np.asarray([toks], dtype=np.int32))[0])
            iid, typ, title = catalog_item(catalog, row)
            cls = lay.classify(toks[0])
            items.append(ItemRef(row, iid, typ or (lay.types[cls[0]].name if cls else None), title, toks, float(v)))
        results.append(items)
    return results


def recommend(model: Any, tokenizer: Any, vocab: SidVocab, index: SidIndex, history: Sequence[Any], *,
              k: int = 10, target_types: Any = None, num_beams: int = 30, catalog: Any = None,
              user: Any = None, exclude_history: bool = True, **kwargs: Any) -> list[ItemRef]:
    """Top-``k`` distinct items for a user with this history (history excluded by default)."""
    p = Prompt(task="recommend", target_types=target_types, history=list(history), k=k, user=user,
               exclude_history=exclude_history)
    return topk_items(model, tokenizer, vocab, index, [p], k=k, num_beams=num_beams, catalog=catalog, **kwargs)[0]


def search(model: Any, tokenizer: Any, vocab: SidVocab, index: SidIndex, query: str, *, k: int = 10,
           target_types: Any = None, num_beams: int = 30, catalog: Any = None, history: Sequence[Any] = (),
           **kwargs: Any) -> list[ItemRef]:
    """Top-``k`` distinct items for a text query."""
    p = Prompt(task="search", target_types=target_types, query=query, history=list(history), k=k)
    return topk_items(model, tokenizer, vocab, index, [p], k=k, num_beams=num_beams, catalog=catalog, **kwargs)[0]


def describe_user(model: Any, tokenizer: Any, vocab: SidVocab, index: SidIndex, history: Sequence[Any], *,
                  catalog: Any = None, max_new_tokens: int = 64, repetition_penalty: float = 1.3,
                  **kwargs: Any) -> GenerationOutput:
    """A text description of a user's taste (``text`` format: no items; repeated words penalised)."""
    p = Prompt(task="describe_user", history=list(history))
    return generate(model, tokenizer, vocab, index, [p], catalog=catalog, max_new_tokens=max_new_tokens,
                    repetition_penalty=repetition_penalty, **kwargs)[0]
