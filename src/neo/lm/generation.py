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
  best item (scores only decrease), which makes it exact whenever the beam holds every prefix (the
  device path runs every level without asking the host; pruned beams simply offer nothing).
* :func:`parse_output` -- token ids to text segments and resolved catalog items.

Backends (``backend=``): ``"auto"`` keeps the whole constrained state on the device for a CUDA model
(:mod:`neo.lm.device`: the trie, per-row states and masks live on the GPU, beams are selected with
``neo.kernels.beam_topk`` and tokens drawn with ``sample_masked``; the loop never waits for the host
except to learn, asynchronously, that every row has finished) and uses the C++ core on CPU. ``"core"``
forces the C++ core, ``"device"`` the device path on any device (torch references of the kernels on
CPU tensors), ``"triton"`` / ``"torch"`` the device path with that kernel implementation. Both paths
give the same tokens (greedy and seeded sampling) and the same items and scores (to float tolerance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..core.index import RowStatus, SidIndex
from .device import DeviceDecodeState, DeviceIndex, build_filters, repeat_filters, resolve_backend
from .processor import FORMATS, SidMasker
from .prompts import is_sequence_prompt, Prompt, PromptBuilder, catalog_item
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
             open_ids_answers: bool = False) -> tuple[list[list[int]], list[dict[str, Any]]]:
    """Prompts (Prompt / str / id list) -> token ids and per-row decoder options.

    ``open_ids_answers``: a sequence-shaped prompt (``recommend`` in the ``ids`` format) gets ``[SID]``
    appended, so its answer starts with an item as its training continuations do (``opts["opened"]``)."""
    if isinstance(prompts, (str, Prompt)) or (len(prompts) and isinstance(prompts[0], (int, np.integer))):
        prompts = [prompts]  # a single prompt
    if builder is None:
        builder = PromptBuilder(tokenizer, vocab, index, catalog)
    ids_list, opts_list = [], []
    for p in prompts:
        if isinstance(p, Prompt):
            opts = builder.decoder_options(p, **overrides)
            opened = open_ids_answers and not open_span and is_sequence_prompt(p) and opts.get("format") == "ids"
            ids = builder.encode(p, open_span=open_span or opened)
            opts["opened"] = opened
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


_CACHE_KWARG: dict[type, str] = {}


def _cache_kwarg(model: Any) -> str:
    # transformers 5.x renamed ``past_key_values`` to ``cache`` in forward (the old name is deprecated);
    # cached per model class: inspect.signature costs milliseconds, as much as a tiny model's step
    kw = _CACHE_KWARG.get(type(model))
    if kw is None:
        import inspect

        kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        _CACHE_KWARG[type(model)] = kw
    return kw


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
    backend: str = "auto",
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
        Override what the prompts imply (same for every prompt). A ``recommend`` prompt in the ``ids``
        format is a sequence (its answer continues the history): decoded under constraints, its answer
        starts with ``[SID]`` as its training continuations do (the token is part of ``token_ids``).
    constrained : bool
        ``False`` decodes without any mask (for comparisons).
    num_threads : int
        Threads of the C++ core (CPU path).
    backend : ``"auto"`` | ``"core"`` | ``"device"`` | ``"triton"`` | ``"torch"``
        See the module doc: ``"auto"`` = device-resident state for a CUDA model, C++ core on CPU.
    repetition_penalty : float
        > 1 discourages repeating a text token already generated in the answer (CTRL-style: its
        logit is divided by the penalty when positive, multiplied when negative); SID tokens are
        exempt (repeated items are handled by ``exclude_emitted``). 1.0: off. Applied on the C++-core
        path: a device backend falls back to it while the penalty is on.

    Returns
    -------
    list of GenerationOutput, one per prompt.
    """
    from ..kernels import sample_masked

    device = model.device
    use_device, kernels = resolve_backend(backend, device)
    overrides = dict(format=format, allowed_types=allowed_types, exclude=exclude, allow=allow, max_items=max_items)
    ids_list, opts = _prepare(prompts, tokenizer, vocab, index, catalog, builder, overrides,
                              open_ids_answers=constrained)
    eos = _eos_ids(tokenizer, model, eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    B = len(ids_list)
    if use_device and repetition_penalty == 1.0:
        return _generate_device(model, tokenizer, vocab, index, catalog, ids_list, opts, eos, pad,
                                max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                                top_k=top_k, top_p=top_p, seed=seed, exclude_emitted=exclude_emitted,
                                separator_token_ids=separator_token_ids, constrained=constrained, kernels=kernels)
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
        toks = [vocab.open_id] * bool(opts[r].get("opened")) + [int(t) for t in out_tokens[r] if t >= 0]
        segs = parse_output(toks, tokenizer, vocab, index, catalog)
        status = RowStatus.NAMES[int(st[r])] if constrained else "unconstrained"
        err = masker.state.error(r) if constrained else ""
        results.append(GenerationOutput(toks, segs, status, err))
    return results


class _FinishWatch:
    """Learn that every row has finished without stalling the device.

    Each step queues a copy of "some row still runs" into a slot of pinned host memory behind a CUDA
    event, and reads only slots whose event has completed: the loop stops a step or two late instead
    of waiting for the device every step. On CPU tensors it simply reads the flag.
    """

    def __init__(self, device: torch.device, slots: int = 4):
        self.cuda = device.type == "cuda"
        self.slots = slots
        self.bufs = torch.zeros(slots, dtype=torch.bool, pin_memory=True) if self.cuda else None
        self.events: list[Any] = [None] * slots
        self.pending: list[int] = []  # slots in the order they were posted
        self.next = 0

    def all_done(self, finished: torch.Tensor) -> bool:
        running = (~finished).any()
        if not self.cuda:
            return not bool(running)
        while self.pending and self.events[self.pending[0]].query():
            if not bool(self.bufs[self.pending.pop(0)]):
                return True
        i = self.next
        if i not in self.pending:  # otherwise the device is far behind: skip posting this step
            self.bufs[i].copy_(running, non_blocking=True)
            if self.events[i] is None:
                self.events[i] = torch.cuda.Event()
            self.events[i].record()
            self.pending.append(i)
            self.next = (i + 1) % self.slots
        return False


def _generate_device(model: Any, tokenizer: Any, vocab: SidVocab, index: SidIndex, catalog: Any,
                     ids_list: list[list[int]], opts: list[dict[str, Any]], eos: list[int], pad: int, *,
                     max_new_tokens: int, do_sample: bool, temperature: float, top_k: int, top_p: float, seed: int,
                     exclude_emitted: bool, separator_token_ids: Sequence[int], constrained: bool,
                     kernels: str) -> list[GenerationOutput]:
    """:func:`generate` with the decode state on the model's device (see :mod:`neo.lm.device`)."""
    device = model.device
    B = len(ids_list)
    ids, mask = _left_pad(ids_list, pad, device)
    state = None
    if constrained:
        dindex = DeviceIndex.get(index, device)
        # an item takes at least (min levels + 1) generated tokens: a bound on what a row can emit
        capacity = max_new_tokens // (dindex.min_levels + 1) + 2
        state = DeviceDecodeState(
            dindex, B, eos, separator_token_ids, formats=[o.get("format", "mixed") for o in opts],
            allowed_types=[o.get("allowed_types") for o in opts], exclude=[o.get("exclude") for o in opts],
            allow=[o.get("allow") for o in opts], max_items=[o.get("max_items") for o in opts],
            exclude_emitted=exclude_emitted, capacity=capacity, kernel_backend=kernels)
        state.prime(ids)
    # every host->device copy happens here, before the loop
    out = torch.full((B, max_new_tokens), -1, dtype=torch.int64, device=device)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    eos_t = torch.as_tensor(eos, dtype=torch.int64, device=device)
    # the same per-row seeds as the CPU path, without a host->device copy per step
    seed_base = torch.as_tensor([(seed * 1_000_003 + r) * 1_000_033 for r in range(B)], dtype=torch.int64,
                                device=device)
    watch = _FinishWatch(device)
    cache = _new_cache(model)
    logits = _forward(model, ids, mask, cache)
    _decode_loop_device(model, logits, mask, cache, state, out, finished, eos_t, seed_base, watch, pad=pad,
                        max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_k=top_k,
                        top_p=top_p, kernels=kernels)
    toks_host = out.to("cpu").numpy()
    st = state.status_host() if state is not None else None
    results = []
    for r in range(B):
        toks = [vocab.open_id] * bool(opts[r].get("opened")) + [int(t) for t in toks_host[r] if t >= 0]
        segs = parse_output(toks, tokenizer, vocab, index, catalog)
        status = RowStatus.NAMES[int(st[r])] if st is not None else "unconstrained"
        err = state.error(r) if st is not None and int(st[r]) == RowStatus.ERROR else ""
        results.append(GenerationOutput(toks, segs, status, err))
    return results


def _decode_loop_device(model: Any, logits: torch.Tensor, mask: torch.Tensor, cache: Any,
                        state: DeviceDecodeState | None, out: torch.Tensor, finished: torch.Tensor,
                        eos_t: torch.Tensor, seed_base: torch.Tensor, watch: _FinishWatch, *, pad: int,
                        max_new_tokens: int, do_sample: bool, temperature: float, top_k: int, top_p: float,
                        kernels: str) -> None:
    """The decode loop of :func:`_generate_device`: writes the tokens into ``out (B, max_new_tokens)``.
    Nothing in it waits for the device (the finished flag is read from completed async copies only)."""
    from ..kernels import sample_masked

    B = out.shape[0]
    device = out.device
    eos0 = eos_t[:1]
    for step in range(max_new_tokens):
        bm = state.bitmask() if state is not None else None
        if do_sample and temperature > 0:
            nxt = sample_masked(logits, bm, temperature=temperature, top_k=top_k, top_p=top_p,
                                seeds=seed_base + step, backend=kernels)
        elif bm is None:
            nxt = logits.argmax(-1)
        else:
            nxt = sample_masked(logits, bm, greedy=True, backend=kernels)
        tok = torch.where(finished, torch.full_like(nxt, pad), nxt)
        bad = tok < 0  # no allowed token (cannot happen with a valid state): finish the row
        tok = torch.where(bad, eos0.expand_as(tok), tok)
        live = ~finished
        if state is not None:
            state.advance(tok, live)
        out[:, step] = torch.where(live, tok, torch.full_like(tok, -1))
        finished = finished | torch.isin(tok, eos_t) | bad
        if step == max_new_tokens - 1 or watch.all_done(finished):
            break
        mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], 1)
        logits = _forward(model, tok.unsqueeze(1), mask, cache)


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
    backend: str = "auto",
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
    num_threads : int
        Threads of the C++ core (CPU path).
    backend : ``"auto"`` | ``"core"`` | ``"device"`` | ``"triton"`` | ``"torch"``
        ``"auto"``: trie, beams and candidate selection on the device for a CUDA model (no host round
        trip between levels), the C++ core's masks on CPU. Same items and scores either way.

    Returns
    -------
    list (per prompt) of ItemRef sorted by ``score`` (sum of code log-probabilities) descending.

    Notes
    -----
    Both paths run the batch as tensors over (prompts x beams x candidates): completed items merge
    into a per-prompt pool of the best ``k`` (stable, so ties keep the order they were found in), and
    live beams that cannot beat the pool's ``k``-th score are dropped, without a Python loop per row.
    """
    if k < 1 or num_beams < 1:
        raise ValueError(f"k and num_beams must be >= 1, got k={k}, num_beams={num_beams}")
    device = model.device
    use_device, kernels = resolve_backend(backend, device)
    overrides = dict(allowed_types=allowed_types, exclude=exclude, allow=allow)
    ids_list, opts = _prepare(prompts, tokenizer, vocab, index, catalog, builder, overrides, open_span=True)
    eos = _eos_ids(tokenizer, model, eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    # K distinct items need at least K beams before the last level: the width is raised to k
    W = max(int(num_beams), int(k))
    search = _beam_search_device if use_device else _beam_search_core
    pool_s, pool_t = search(model, index, ids_list, opts, eos, pad, k=k, W=W, num_threads=num_threads,
                            kernels=kernels)
    return _pool_items(pool_s, pool_t, index, catalog)


def _merge_pool(pool_s: torch.Tensor, pool_t: torch.Tensor, new_s: torch.Tensor, new_t: torch.Tensor, k: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Best ``k`` of the pool ``(R, k)`` / ``(R, k, L)`` and new completions ``(R, n)`` / ``(R, n, L)``.

    A stable descending sort over [pool, new]: equal scores keep pool entries first, then the new ones
    in the order they were found (what sorting a Python list of (score, tokens) by ``-score`` does)."""
    s = torch.cat([pool_s, new_s], 1)
    t = torch.cat([pool_t, new_t], 1)
    order = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :k]
    return s.gather(1, order), t.gather(1, order[:, :, None].expand(-1, -1, t.shape[2]))


def _extend(prefixes: torch.Tensor, beam: torch.Tensor, level: int, token: torch.Tensor) -> torch.Tensor:
    """``prefixes[r, beam[r, j]]`` with ``token[r, j]`` written at ``level``: ``(R, n, L)``."""
    b = beam.clamp(min=0)
    out = prefixes.gather(1, b[:, :, None].expand(-1, -1, prefixes.shape[2])).clone()
    out[:, :, level] = token
    return out


def _pool_items(pool_s: torch.Tensor, pool_t: torch.Tensor, index: SidIndex, catalog: Any) -> list[list[ItemRef]]:
    """Pool tensors -> ItemRefs (one catalog lookup per SID length)."""
    lay = index.layout
    scores = pool_s.to("cpu").numpy()
    toks = pool_t.to("cpu").numpy()
    entries = [(r, j) for r in range(scores.shape[0]) for j in range(scores.shape[1]) if scores[r, j] > float("-inf")]
    rows: dict[tuple[int, int], int] = {}
    by_len: dict[int, list[tuple[int, int]]] = {}
    for e in entries:
        by_len.setdefault(int((toks[e[0], e[1]] >= 0).sum()), []).append(e)
    for L, es in by_len.items():
        arr = np.stack([toks[r, j, :L] for r, j in es]).astype(np.int32)
        for e, row in zip(es, index.lookup(arr)):
            rows[e] = int(row)
    results: list[list[ItemRef]] = [[] for _ in range(scores.shape[0])]
    for r, j in entries:
        t = tuple(int(x) for x in toks[r, j] if x >= 0)
        row = rows[(r, j)]
        iid, typ, title = catalog_item(catalog, row)
        cls = lay.classify(t[0])
        results[r].append(ItemRef(row, iid, typ or (lay.types[cls[0]].name if cls else None), title, t,
                                  float(scores[r, j])))
    return results


def _logsumexp_rows(x: torch.Tensor, budget: int = 1 << 18) -> torch.Tensor:
    """``logsumexp(x, -1, keepdim=True)`` over blocks of about ``budget`` elements: the same values
    (each row is reduced on its own either way), but the temporaries stay in cache, which on CPU is
    2-10x faster than one call over thousands of rows or a 150k vocabulary (measured for 1 MB blocks)."""
    rows = max(1, budget // max(x.shape[1], 1))
    if x.shape[0] <= rows or x.is_cuda:
        return torch.logsumexp(x, -1, keepdim=True)
    out = torch.empty((x.shape[0], 1), dtype=x.dtype, device=x.device)
    for i in range(0, x.shape[0], rows):
        out[i:i + rows] = torch.logsumexp(x[i:i + rows], -1, keepdim=True)
    return out


def _beam_search_core(model: Any, index: SidIndex, ids_list: list[list[int]], opts: list[dict[str, Any]],
                      eos: list[int], pad: int, *, k: int, W: int, num_threads: int, kernels: str
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search with the C++ core's masks (the CPU path). Returns the pool ``(R, k)`` scores and
    ``(R, k, max L)`` tokens (``-inf`` / ``-1`` padding)."""
    device = model.device
    lay = index.layout
    R = len(ids_list)
    masker = SidMasker(index, R, eos, (), num_threads)
    for r, o in enumerate(opts):
        masker.set_row_options(r, format="mixed", allowed_types=o.get("allowed_types"), exclude=o.get("exclude"),
                               allow=o.get("allow"))
    masker.prime(ids_list)
    masker.reorder(np.repeat(np.arange(R), W))  # W beams per prompt share the prompt's row (and filter)
    ids, mask = _left_pad(ids_list, pad, device)
    cache = _new_cache(model)
    logits = _forward(model, ids, mask, cache)  # (R, V): computed once per prompt, its W beams are copies
    mask = mask.repeat_interleave(W, 0)
    cache.batch_repeat_interleave(W)
    # SID block columns and which of them end a SID
    c0, c1 = lay.sid_token_begin, lay.sid_token_end
    ncol = c1 - c0
    w0 = c0 // 32
    is_last = torch.zeros(ncol, dtype=torch.bool)
    for t in lay.types:
        s = t.band_starts[-1]
        is_last[s - c0:s - c0 + t.codebook_sizes[-1]] = True
    last_mask = is_last.to(device).repeat(W)
    L = max(t.levels for t in lay.types)
    neg = float("-inf")
    scores = torch.full((R, W), neg, device=device)
    scores[:, 0] = 0.0  # one live beam at the start: no duplicates
    prefixes = torch.full((R, W, L), -1, dtype=torch.int64, device=device)
    pool_s = torch.full((R, k), neg, device=device)
    pool_t = torch.full((R, k, L), -1, dtype=torch.int64, device=device)
    base = (torch.arange(R, device=device) * W)[:, None]
    bits = torch.arange(32, dtype=torch.int32)
    for level in range(L):
        masker.fill()
        words = masker.bitmask[:, w0:(c1 + 31) // 32]
        allowed = ((words.unsqueeze(-1) >> bits) & 1).bool().reshape(R * W, -1)[:, c0 - 32 * w0:c1 - 32 * w0]
        allowed = allowed.to(device)
        lse = _logsumexp_rows(logits)
        block = logits[:, c0:c1]
        if level == 0:  # one row per prompt so far: normalise once, then copy to the W beams
            lse, block = lse.repeat_interleave(W, 0), block.repeat_interleave(W, 0)
        lp = block - lse
        lp = lp.masked_fill(~allowed, neg)
        cand = (scores.reshape(-1, 1) + lp).reshape(R, W * ncol)
        done_c = cand.masked_fill(~last_mask, neg)
        live_c = cand.masked_fill(last_mask, neg)
        # completions go to the pool (the best k per prompt are all we can ever need)
        dv, di = done_c.topk(min(k, done_c.shape[1]), dim=1)
        lv, li = live_c.topk(min(W, live_c.shape[1]), dim=1)
        pool_s, pool_t = _merge_pool(pool_s, pool_t, dv, _extend(prefixes, di // ncol, level, c0 + di % ncol), k)
        # live beams that cannot beat the k-th best completed item stop (scores only decrease)
        kth = pool_s[:, k - 1:k]
        keep = lv > kth  # lv is sorted, so the kept beams are a prefix of each row
        if lv.shape[1] < W:  # fewer candidate columns than beams: pad with dead slots
            padw = W - lv.shape[1]
            keep = torch.cat([keep, torch.zeros((R, padw), dtype=torch.bool, device=device)], 1)
            lv = torch.cat([lv, torch.full((R, padw), neg, device=device)], 1)
            li = torch.cat([li, torch.zeros((R, padw), dtype=li.dtype, device=device)], 1)
        beam = torch.where(keep, li // ncol, torch.zeros_like(li))  # dead slots copy beam 0 and stay at -inf
        token = torch.where(keep, c0 + li % ncol, torch.full_like(li, lay.open_id))
        keep_host = keep.reshape(-1).to("cpu").numpy()
        if not keep_host.any():
            break
        parents = (base + beam).reshape(-1)
        masker.reorder(parents.to("cpu").numpy())
        live_rows = np.flatnonzero(keep_host)
        next_tok = token.reshape(-1)
        masker.advance(next_tok.to("cpu").numpy()[live_rows], live_rows)
        scores = torch.where(keep, lv, torch.full_like(lv, neg))
        prefixes = _extend(prefixes, beam, level, torch.where(keep, token, torch.full_like(token, -1)))
        cache.reorder_cache(parents)
        mask = torch.cat([mask[parents], torch.ones((R * W, 1), dtype=mask.dtype, device=device)], 1)
        logits = _forward(model, next_tok.unsqueeze(1), mask, cache)
    return pool_s, pool_t


def _beam_search_device(model: Any, index: SidIndex, ids_list: list[list[int]], opts: list[dict[str, Any]],
                        eos: list[int], pad: int, *, k: int, W: int, num_threads: int, kernels: str
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Beam search with the trie, candidates and pool on the model's device; no host round trip.

    Level 0 gives every item type its own slot (slot ``t`` holds type ``t``'s root band), so the span
    start of several types needs no union band; from level 1 on each beam belongs to one type and is
    stepped by that type's trie. Completed and live candidates come from two :func:`beam_topk` calls
    sharing one log-sum-exp (a beam's candidates are all completions or all live: its level is the
    same for all of them). The level loop runs to the deepest type without asking the host whether a
    beam is still alive."""
    from ..kernels import beam_topk, logsumexp_rows
    from ..kernels.reference import OUTSIDE

    device = model.device
    dx = DeviceIndex.get(index, device)
    lay = index.layout
    R, T = len(ids_list), dx.num_types
    W0 = max(W, T)
    neg = float("-inf")
    allowed = np.zeros((R, T), bool)
    for r, o in enumerate(opts):
        ats = o.get("allowed_types")
        for t in (range(T) if ats is None else [lay.type_index(a) for a in ats]):
            allowed[r, t] = True
    filters = build_filters(dx, [o.get("exclude") for o in opts], [o.get("allow") for o in opts])
    filt = repeat_filters(filters, W0)
    allowed_rows = torch.as_tensor(allowed, device=device).repeat_interleave(W0, 0)  # (rows0, T)
    ids, mask = _left_pad(ids_list, pad, device)  # host->device copies end here
    cache = _new_cache(model)
    logits = _forward(model, ids, mask, cache)
    logits = logits.repeat_interleave(W0, 0)
    mask = mask.repeat_interleave(W0, 0)
    cache.batch_repeat_interleave(W0)
    NW = dx.max_words
    rows0 = R * W0
    slot = torch.arange(rows0, device=device) % W0
    typ = torch.where(slot < T, slot, torch.full_like(slot, -1))
    node = torch.full((rows0,), OUTSIDE, dtype=torch.int64, device=device)
    band = torch.full((rows0,), -1, dtype=torch.int64, device=device)
    bitmap = torch.zeros((rows0, NW), dtype=torch.int32, device=device)

    def padw(b: torch.Tensor) -> torch.Tensor:
        return b if b.shape[1] == NW else torch.nn.functional.pad(b, (0, NW - b.shape[1]))

    for t, trie in enumerate(dx.tries):  # the span start: slot t offers type t's root children
        if trie is None:
            continue
        mine = typ == t
        out = trie.step(torch.where(mine, torch.zeros_like(node), node), None, filt[t], backend=kernels)
        ok = mine & allowed_rows[:, t] & (out.num_allowed > 0)
        node = torch.where(mine, out.node, node)
        band = torch.where(ok, out.band_start.to(torch.int64), band)
        bitmap = torch.where(ok[:, None], padw(out.bitmap), bitmap)
    scores = torch.where(band >= 0, torch.zeros(rows0, device=device), torch.full((rows0,), neg, device=device))
    L = dx.max_levels
    prefixes = torch.full((R, W0, L), -1, dtype=torch.int64, device=device)
    pool_s = torch.full((R, k), neg, device=device)
    pool_t = torch.full((R, k, L), -1, dtype=torch.int64, device=device)
    Wc = W0
    for level in range(L):
        lse = logsumexp_rows(logits, backend=kernels)
        last = (typ >= 0) & (dx.levels_dev[typ.clamp(min=0)] - 1 == level)
        s_done = torch.where(last, scores, torch.full_like(scores, neg))
        s_live = torch.where(last, torch.full_like(scores, neg), scores)
        dv, db, dt = beam_topk(logits, s_done, band, bitmap, k, Wc, backend=kernels, lse=lse)
        pool_s, pool_t = _merge_pool(pool_s, pool_t, dv, _extend(prefixes, db, level, dt), k)
        if level == L - 1:
            break
        lv, lb, lt = beam_topk(logits, s_live, band, bitmap, W, Wc, backend=kernels, lse=lse)
        keep = lv > pool_s[:, k - 1:k]
        beam = torch.where(keep, lb, torch.zeros_like(lb))
        token = torch.where(keep, lt, torch.full_like(lt, lay.open_id))
        parents = ((torch.arange(R, device=device) * Wc)[:, None] + beam).reshape(-1)
        prefixes = _extend(prefixes, beam, level, torch.where(keep, token, torch.full_like(token, -1)))
        scores = torch.where(keep, lv, torch.full_like(lv, neg)).reshape(-1)
        next_tok = token.reshape(-1)
        typ, node = typ[parents], node[parents]
        if Wc != W:
            Wc = W
            filt = repeat_filters(filters, W)
        live = keep.reshape(-1)
        band = torch.full((R * W,), -1, dtype=torch.int64, device=device)
        bitmap = torch.zeros((R * W, NW), dtype=torch.int32, device=device)
        for t, trie in enumerate(dx.tries):
            if trie is None:
                continue
            sel = live & (typ == t)
            out = trie.step(torch.where(sel, node, torch.full_like(node, OUTSIDE)),
                            torch.where(sel, next_tok, torch.full_like(next_tok, -1)), filt[t], backend=kernels)
            node = torch.where(sel, out.node, node)
            band = torch.where(sel, out.band_start.to(torch.int64), band)
            bitmap = torch.where(sel[:, None], padw(out.bitmap), bitmap)
        cache.reorder_cache(parents)
        mask = torch.cat([mask[parents], torch.ones((R * W, 1), dtype=mask.dtype, device=device)], 1)
        logits = _forward(model, next_tok.unsqueeze(1), mask, cache)
    return pool_s, pool_t


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
