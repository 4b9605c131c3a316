"""Constrained decoding for ``model.generate``: :class:`SidLogitsProcessor`, and the shared masker.

:class:`SidMasker` owns a :class:`~neo.core.index.DecodeState` and its bitmask, and applies the mask to
logits *structurally* instead of touching the whole vocabulary:

* a row in free text (``mixed``/``text`` format) may use every token outside the SID block, so only
  the columns from the SID block on are masked (about ``num_sid_tokens`` columns, not ``V``);
* any other row (inside a span, ``ids`` format, finished) allows, outside the SID block, only a
  small fixed set (EOS, separators, or nothing): those rows are filled with ``-inf`` and the few
  allowed logits restored.

So the packed bitmask never has to be unpacked over the full vocabulary, and on a GPU only the
SID-block words are copied to the device. The result is bit-identical to applying the full bitmask
(the tests check this).

:class:`SidLogitsProcessor` derives each row's state from the generated tokens themselves: it keeps
the generated tokens of every row from the previous call, finds each new row's parent as the previous
row whose tokens equal the new row's prefix (a 64-bit rolling hash, verified exactly), then
``DecodeState.reorder(parents)`` and ``advance(last tokens)``. That is right for greedy search,
sampling, beam search (which reorders rows every step) and ``num_return_sequences`` alike, without
access to the beam indices. Any other input (assisted decoding's drafts and rollbacks, skipped
steps) is handled by replaying the generated tokens from the prompt in one C++ call. With
``backend="auto"`` on CUDA scores (or ``"device"`` / ``"triton"`` / ``"torch"``) the same tracking runs
on the device instead (:class:`neo.lm.device.DeviceSidTracker`).
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ..core.bitmask import allocate_token_bitmask
from ..core.index import DecodeState, RowStatus, SidIndex
from ..core.layout import as_int

__all__ = ["SidMasker", "SidLogitsProcessor", "FORMATS"]

FORMATS = ("mixed", "ids", "text")
_NEG_INF = float("-inf")
_HASH_BASE = np.uint64(1_000_003)


def _per_item(value: Any, n: int, what: str, is_scalar) -> list:
    """Broadcast an option to ``n`` batch items (a scalar/None, or a sequence of ``n`` values)."""
    if is_scalar(value):
        return [value] * n
    vals = list(value)
    if len(vals) != n:
        raise ValueError(f"{what}: got {len(vals)} per-item values for {n} batch items")
    return vals


def _is_type_list_scalar(v: Any) -> bool:
    # None, "movie", or ["movie", "book"] (a flat list of names/indices) apply to every item
    if v is None or isinstance(v, (str, int, np.integer)):
        return True
    v = list(v)
    return all(isinstance(x, (str, int, np.integer)) for x in v)


def _is_rows_scalar(v: Any) -> bool:
    # None or a flat int array/list applies to every item; a list of lists is per item
    if v is None:
        return True
    if isinstance(v, torch.Tensor):
        return v.dim() <= 1
    if isinstance(v, np.ndarray):
        return v.ndim <= 1 and v.dtype != object
    v = list(v)
    return all(isinstance(x, (int, np.integer)) for x in v)


class SidMasker:
    """A :class:`DecodeState` plus its bitmask and the structured logits mask (see module doc).

    Parameters
    ----------
    index : SidIndex
    num_rows : int
    eos_token_ids : iterable of int
    separator_token_ids : iterable of int
        Text tokens allowed between spans in the ``ids`` format.
    num_threads : int
        Threads of the C++ core (1 keeps latency predictable at small batches).
    """

    def __init__(self, index: SidIndex, num_rows: int, eos_token_ids: Iterable[int],
                 separator_token_ids: Iterable[int] = (), num_threads: int = 1):
        self.index = index
        self.layout = index.layout
        self.eos = sorted({as_int(t, "eos_token_ids") for t in eos_token_ids})
        if not self.eos:
            raise ValueError("constrained decoding needs at least one EOS token id (got none)")
        self.separators = sorted({as_int(t, "separator_token_ids") for t in separator_token_ids})
        self.state = DecodeState(index, num_rows, self.eos, self.separators, num_threads)
        self.bitmask = allocate_token_bitmask(num_rows, self.layout.vocab_size)
        self.formats = np.zeros(num_rows, dtype=np.int8)  # index into FORMATS
        # structured mask geometry: [col0, ...) holds the SID block, word aligned
        self.word0 = self.layout.sid_token_begin // 32
        self.col0 = self.word0 * 32
        self._keep_ids = torch.tensor(sorted(set(self.eos) | set(self.separators)), dtype=torch.long)
        self._keep_eos = torch.tensor(self.eos, dtype=torch.long)
        self._geometry: dict = {}
        for t in self.eos + self.separators:
            if t >= self.col0:
                raise ValueError(
                    f"EOS/separator token {t} lies in the SID block region (ids >= {self.col0}); use text tokens"
                )

    @property
    def num_rows(self) -> int:
        return self.state.num_rows

    def set_row_options(self, row: int, *, format: str = "mixed", allowed_types: Any = None, exclude: Any = None,
                        allow: Any = None, exclude_emitted: bool = True, max_items: int | None = None) -> None:
        """Configure a row (see :meth:`DecodeState.set_row_options`)."""
        if format not in FORMATS:
            raise ValueError(f"unknown output format {format!r}; use one of {FORMATS}")
        self.state.set_row_options(row, format=format, allowed_types=allowed_types, exclude=exclude, allow=allow,
                                   exclude_emitted=exclude_emitted, max_items=max_items)
        self.formats[row] = FORMATS.index(format)

    def prime(self, prompts: Sequence[Sequence[int]]) -> None:
        """Start rows whose prompt ends inside an open span (e.g. a prompt ending in ``[SID]``).

        ``prompts[r]`` is row r's prompt (padding may be included: only the tail after the last
        delimiter matters).
        """
        o, c = self.layout.open_id, self.layout.close_id
        for r, ids in enumerate(prompts):
            a = np.asarray(ids)
            opens = np.flatnonzero(a == o)
            if opens.size == 0:
                continue
            last_open = int(opens[-1])
            closes = np.flatnonzero(a == c)
            if closes.size and int(closes[-1]) > last_open:
                continue
            for tok in a[last_open:]:
                self.state.advance(np.asarray([tok]), np.asarray([r]))

    def reorder(self, src: np.ndarray) -> None:
        """Rows become copies of rows ``src`` (beam search)."""
        src = np.asarray(src, dtype=np.int64)
        self.state.reorder(src)
        self.formats = self.formats[src]
        if self.bitmask.shape[0] != len(src):
            self.bitmask = allocate_token_bitmask(len(src), self.layout.vocab_size)

    def advance(self, tokens: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        return self.state.advance(np.asarray(tokens, dtype=np.int64), rows)

    def fill(self) -> None:
        """Fill the bitmask of every row (incrementally)."""
        self.state.fill_next_token_bitmask(self.bitmask, incremental=True)

    def closed_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows whose allowed set outside the SID block is (ids-format separators+EOS, EOS, nothing)."""
        st = self.state.status
        ids_text = np.flatnonzero((st == RowStatus.TEXT) & (self.formats == 1))
        finished = np.flatnonzero(st >= RowStatus.DONE)
        span = np.flatnonzero(st == RowStatus.SPAN)
        return ids_text, finished, span

    def apply(self, logits: torch.Tensor, fill: bool = True) -> torch.Tensor:
        """Mask ``logits`` (rows, V_logits) in place with this state's rules and return it.

        Columns past the layout's vocabulary are always masked.
        """
        if fill:
            self.fill()
        rows, V = logits.shape
        if rows != self.num_rows:
            raise ValueError(f"logits have {rows} rows, the decode state {self.num_rows}")
        c0 = min(self.col0, V)
        ids_text, finished, span = self.closed_rows()
        if c0 > 0 and (ids_text.size or finished.size or span.size):
            dev = logits.device
            for sel, keep in ((ids_text, self._keep_ids), (finished, self._keep_eos), (span, None)):
                if sel.size == 0:
                    continue
                r = torch.from_numpy(sel).to(dev)
                if keep is not None and keep.numel():
                    k = keep.to(dev)
                    saved = logits[r[:, None], k[None, :]]
                    _fill_rows(logits, sel, c0)
                    logits[r[:, None], k[None, :]] = saved
                else:
                    _fill_rows(logits, sel, c0)
        # SID block and anything after it: the bitmask words from word0 on
        words = self.bitmask[:, self.word0:]
        tail = logits[:, c0:]
        ncols = tail.shape[1]
        if ncols:
            w = words.to(logits.device, non_blocking=True)
            word, shift, beyond = self._tail_geometry(ncols, w.shape[1], logits.device)
            disallowed = ((w.index_select(1, word) >> shift) & 1) == 0
            if beyond is not None:
                disallowed |= beyond
            tail.masked_fill_(disallowed, _NEG_INF)
        return logits

    def _tail_geometry(self, ncols: int, nwords: int, device: torch.device):
        """Per column of the SID block: its bitmask word, bit, and whether it lies past the mask.
        Cached: rebuilding these index tensors every step cost more than the masking itself."""
        key = (ncols, nwords, str(device))
        geo = self._geometry.get(key)
        if geo is None:
            cols = torch.arange(ncols, device=device)
            word = (cols // 32).clamp(max=max(nwords - 1, 0))
            shift = (cols % 32).to(torch.int32)
            beyond = cols >= 32 * nwords
            geo = (word, shift, beyond if bool(beyond.any()) else None)
            self._geometry[key] = geo
        return geo


def _fill_rows(logits: torch.Tensor, rows: np.ndarray, ncols: int) -> None:
    """``logits[rows, :ncols] = -inf`` as contiguous row fills: about 3x faster on CPU than the
    advanced-indexing write (index_put), which dominated the processor's cost inside spans."""
    if len(rows) == logits.shape[0] and (np.diff(rows) == 1).all():
        logits[:, :ncols].fill_(_NEG_INF)
        return
    for r in rows.tolist():
        logits[r, :ncols].fill_(_NEG_INF)


class SidLogitsProcessor(LogitsProcessor):
    """Constrain ``model.generate`` so that every ``[SID] ... [/SID]`` span is a real catalog item.

    Text outside spans is never restricted (``mixed``/``text`` formats); inside a span only children
    of the current trie node are allowed; after the last level only ``[/SID]``.

    Parameters
    ----------
    index : SidIndex
        The catalog's trie (its layout gives the SID token ids).
    eos_token_id : int or list of int
        Tokens that end a sequence (usually ``tokenizer.eos_token_id``).
    format : str or list of str
        ``"mixed"`` (default), ``"ids"`` or ``"text"``, for all batch items or one per item.
    allowed_types : type name(s) or list of per-item lists, optional
        Item types whose spans may open (default: all).
    exclude : int array of item rows, or list of per-item arrays, optional
        Items never emitted (e.g. the user's history).
    allow : like ``exclude``, optional
        Allow-list of item rows.
    exclude_emitted : bool
        An item is emitted at most once per sequence.
    max_items : int or list, optional
        No new span after this many items.
    separator_token_ids : iterable of int
        Text tokens allowed between spans in the ``ids`` format.
    num_threads : int
        Threads of the C++ core.
    backend : ``"auto"`` | ``"core"`` | ``"device"`` | ``"triton"`` | ``"torch"``
        ``"auto"``: for CUDA scores the decode state, trie and mask stay on the GPU (no host round
        trip per step, see :mod:`neo.lm.device`); for CPU scores the C++ core. ``"core"`` always
        uses the C++ core; the others force the device path (torch kernels on CPU tensors).

    Notes
    -----
    Batch items map to rows as ``model.generate`` lays them out: with ``num_beams`` or
    ``num_return_sequences`` > 1, item ``b`` owns rows ``b*n .. b*n+n-1``. The prompt may end inside
    an open span (e.g. with ``[SID]`` to force an item); items written in the prompt never count
    towards ``max_items`` or ``exclude_emitted``.

    One processor serves one ``generate`` call at a time, in every mode: greedy, sampling, beam search
    (rows reordered every step), and assisted / speculative decoding and prompt lookup
    (``assistant_model``, ``prompt_lookup_num_tokens``), which call it on draft tokens and then on
    shorter inputs once drafts are rejected. Whenever the input is not one token past the last call,
    the state is rebuilt from the prompt by replaying the generated tokens, so the limits hold and
    assisted greedy output equals plain greedy output. After assisted decoding, :meth:`emitted` and
    :meth:`errors` describe the last sequence the processor saw, which may be a rejected draft. An
    input with another prompt or batch size, or a longer one after every row has finished, starts a
    new generation; call :meth:`reset` between calls whose prompt extends an unfinished answer (it
    would otherwise be replayed as that answer's continuation). Scores are masked in place.

    Generate options that conflict with neo: they can mask every token neo allows in a row, and
    generate runs them before this processor. The processor then raises ``ValueError`` naming the
    option (instead of greedy picking token 0 and the row going to ERROR, or sampling failing on
    inf/nan):

    * ``min_new_tokens`` / ``min_length`` forbid EOS: with ``format="ids"`` and ``max_items`` reached
      (and no ``separator_token_ids``), EOS is the only token left.
    * ``no_repeat_ngram_size`` forbids repeated n-grams, and SIDs repeat by design: ``[/SID] [SID]``,
      shared SID prefixes, a last-level code followed by ``[/SID]``. Do not use it with spans.
    * ``suppress_tokens``, ``begin_suppress_tokens``, ``bad_words_ids``, ``sequence_bias`` (-inf) must
      not name ``[SID]``, ``[/SID]``, SID code tokens, EOS or the separators.
    * ``forced_bos_token_id`` / ``forced_eos_token_id`` force a token neo may not allow there.
    * ``prefix_allowed_tokens_fn`` adds a second constraint; its intersection with neo's can be empty.

    Sampling warpers (``temperature``, ``top_k``, ``top_p``, ``min_p``, ``typical_p``),
    ``repetition_penalty``, ``num_beams`` and ``num_return_sequences`` are compatible.
    """

    def __init__(
        self,
        index: SidIndex,
        eos_token_id: int | Sequence[int],
        *,
        format: str | Sequence[str] = "mixed",
        allowed_types: Any = None,
        exclude: Any = None,
        allow: Any = None,
        exclude_emitted: bool = True,
        max_items: int | Sequence[int | None] | None = None,
        separator_token_ids: Iterable[int] = (),
        num_threads: int = 1,
        backend: str = "auto",
    ):
        from .device import BACKENDS

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.index = index
        scalar = getattr(eos_token_id, "ndim", None) == 0 or not isinstance(eos_token_id, Iterable)
        self.eos = ([as_int(eos_token_id, "eos_token_id")] if scalar
                    else [as_int(t, "eos_token_id") for t in eos_token_id])
        self.options = dict(format=format, allowed_types=allowed_types, exclude=exclude, allow=allow,
                            max_items=max_items)
        self.exclude_emitted = bool(exclude_emitted)
        self.separators = [as_int(t, "separator_token_ids") for t in separator_token_ids]
        self.num_threads = as_int(num_threads, "num_threads")
        for m in ([max_items] if getattr(max_items, "ndim", None) == 0 or not isinstance(max_items, Iterable)
                  else list(max_items)):
            if m is not None:
                as_int(m, "max_items")  # TypeError for 1.5 or True
        for f in ([format] if isinstance(format, str) else list(format)):
            if f not in FORMATS:
                raise ValueError(f"unknown output format {f!r}; use one of {FORMATS}")
        for t in _flatten_types(allowed_types):
            index.layout.type_index(t)  # KeyError naming the known types
        self.reset()

    def reset(self) -> None:
        """Forget the current generation (the next call starts a new one)."""
        self.masker: SidMasker | None = None
        self._prompt_len = 0
        self._prompt: np.ndarray | None = None  # (rows, prompt_len) the prompt the state was started on
        self._gen: np.ndarray | None = None  # (rows, n) generated tokens at the last call
        self._hash: np.ndarray | None = None  # (rows,) uint64 rolling hash of _gen
        self._group: np.ndarray | None = None
        self._per = 1
        self._device: Any = None  # DeviceSidTracker of the device branch

    # ------------------------------------------------------------------ state tracking
    def _start(self, input_ids: np.ndarray) -> None:
        rows, plen = input_ids.shape
        n_items = self._num_items(rows)
        per = rows // n_items
        fmts = _per_item(self.options["format"], n_items, "format", lambda v: isinstance(v, str))
        types = _per_item(self.options["allowed_types"], n_items, "allowed_types", _is_type_list_scalar)
        excl = _per_item(self.options["exclude"], n_items, "exclude", _is_rows_scalar)
        allow = _per_item(self.options["allow"], n_items, "allow", _is_rows_scalar)
        maxi = _per_item(self.options["max_items"], n_items, "max_items",
                         lambda v: v is None or isinstance(v, (int, np.integer)))
        m = SidMasker(self.index, rows, self.eos, self.separators, self.num_threads)
        for r in range(rows):
            b = r // per
            t = types[b]
            m.set_row_options(r, format=fmts[b], allowed_types=[t] if isinstance(t, (str, int, np.integer)) else t,
                              exclude=excl[b], allow=allow[b], exclude_emitted=self.exclude_emitted,
                              max_items=maxi[b])
        m.prime(input_ids)
        self.masker = m
        self._prompt_len = plen
        self._prompt = input_ids.copy()
        self._gen = np.zeros((rows, 0), dtype=np.int64)
        self._hash = np.zeros(rows, dtype=np.uint64)
        self._group = np.arange(rows) // per
        self._per = per

    def _num_items(self, rows: int) -> int:
        n = None
        for key in ("format", "allowed_types", "exclude", "allow", "max_items"):
            v = self.options[key]
            scalar = {"format": lambda v: isinstance(v, str), "allowed_types": _is_type_list_scalar,
                      "exclude": _is_rows_scalar, "allow": _is_rows_scalar,
                      "max_items": lambda v: v is None or isinstance(v, (int, np.integer))}[key](v)
            if not scalar:
                k = len(list(v))
                if n is not None and k != n:
                    raise ValueError(f"per-item options disagree on the batch size: {n} vs {k} ({key})")
                n = k
        if n is None:
            return 1  # the same options for every row: one group
        if rows % n:
            raise ValueError(f"{rows} rows are not a multiple of the {n} batch items given per-item options")
        return n

    def _follow(self, input_ids: np.ndarray) -> bool:
        """Reorder + advance the state to match ``input_ids`` (one token longer than last call).

        Returns False (state untouched) when the rows are not one-token continuations of the rows
        of the previous call."""
        assert self.masker is not None and self._gen is not None and self._hash is not None
        prefix = input_ids[:, self._prompt_len:-1]
        last = input_ids[:, -1]
        rows = input_ids.shape[0]
        if prefix.shape == self._gen.shape and np.array_equal(prefix, self._gen):
            parents = None  # greedy / sampling: rows kept their order
        else:
            n = prefix.shape[1]
            with np.errstate(over="ignore"):
                powers = _powers(n)
                h = ((prefix.astype(np.uint64) + np.uint64(1)) * powers).sum(1, dtype=np.uint64)
            where = {(int(g), int(x)): i for i, (g, x) in enumerate(zip(self._group, self._hash))}
            group = np.arange(rows) // self._per
            found = [where.get((int(g), int(x)), -1) for g, x in zip(group, h)]
            if all(f < 0 for f in found):
                return False
            parents = np.asarray(found, dtype=np.int64)
            if (parents < 0).any() or not np.array_equal(prefix, self._gen[parents]):
                return False  # not a plain next step: _replay decides (rollback, or a foreign sequence)
            self.masker.reorder(parents)
            self._gen = self._gen[parents]
            self._hash = self._hash[parents]
            self._group = self._group[parents]
        st = self.masker.state.status
        live = np.flatnonzero(st < RowStatus.DONE)
        # finished rows get padding from generate; they stay DONE (their mask allows only EOS)
        if live.size == rows:
            self.masker.advance(last)
        elif live.size:
            self.masker.advance(last[live], live)
        with np.errstate(over="ignore"):
            self._hash = self._hash * _HASH_BASE + (last.astype(np.uint64) + np.uint64(1))
        self._gen = np.concatenate([self._gen, last[:, None]], 1)
        return True

    def _replay(self, input_ids: np.ndarray) -> bool:
        """Bring the state to ``input_ids`` when they are not a one-token step from the last call.

        Assisted / speculative decoding and prompt lookup call the processor on draft tokens and
        then on shorter inputs (drafts rejected), or on the same prefix again; a caller may also
        skip steps. The state is rebuilt exactly: rows back to their options, the prompt primed,
        then every generated token replayed in order (one C++ call), so ``max_items`` and
        ``exclude_emitted`` count the generated items and never the prompt.

        Returns False when ``input_ids`` start a new generation (another prompt, another batch, or
        a longer input after every row had finished). Raises ``RuntimeError`` when some rows
        continue the previous call and others do not.
        """
        m, gen, prompt = self.masker, self._gen, self._prompt
        if m is None or gen is None or prompt is None:
            return False
        rows, cur = input_ids.shape
        plen = self._prompt_len
        if rows != m.num_rows or cur < plen or not np.array_equal(input_ids[:, :plen], prompt):
            return False
        new = input_ids[:, plen:]
        n, seen = new.shape[1], gen.shape[1]
        k = min(n, seen)
        same = new[:, :k] == gen[:, :k]
        common = np.where(same.all(1), k, same.argmin(1)) if k else np.zeros(rows, dtype=np.int64)  # common prefix
        rolled_back = common >= n - 1  # the input minus its newest token is a prefix of what was seen
        grown = (common == seen) & (n > seen + 1)  # what was seen, then several new tokens
        if grown.any() and (m.state.status >= RowStatus.DONE).all():
            return False  # every row had finished: a longer input is a new prompt (e.g. the next chat turn)
        fits = rolled_back | grown
        if not fits.any():
            return False
        if not fits.all():
            raise RuntimeError(
                "SidLogitsProcessor saw a sequence it did not generate (rows "
                f"{np.flatnonzero(~fits).tolist()[:8]} match no earlier row); use one processor per generate call "
                "or call reset() between calls"
            )
        m.state.reset()
        m.prime(prompt)
        if n:
            m.advance(new.reshape(-1), np.repeat(np.arange(rows, dtype=np.int64), n))
        self._gen = new.copy()
        with np.errstate(over="ignore"):
            self._hash = ((new.astype(np.uint64) + np.uint64(1)) * _powers(n)).sum(1, dtype=np.uint64)
        return True

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        from .device import DeviceSidTracker, resolve_backend

        on_device, kernels = resolve_backend(self.backend, scores.device)
        if on_device:
            if self._device is None:
                self._device = DeviceSidTracker(self, kernels)
            return self._device(input_ids, scores)
        ids = input_ids.detach().to("cpu").numpy().astype(np.int64, copy=False)
        rows, cur = ids.shape
        follows = (self.masker is not None and self._gen is not None and rows == self.masker.num_rows
                   and cur == self._prompt_len + self._gen.shape[1] + 1)
        if not (follows and self._follow(ids)) and not self._replay(ids):
            self._start(ids)  # first call of a generation (or a new generate call)
        assert self.masker is not None
        scores = self.masker.apply(scores)
        self._check_rows_not_emptied(input_ids, scores)
        return scores

    # ------------------------------------------------------------------ conflicts with other processors
    def _check_rows_not_emptied(self, input_ids: torch.Tensor, scores: torch.Tensor) -> None:
        """Raise if another logits processor masked every token neo allows in some live row.

        Only rows whose allowed set neo made small are checked (inside a span, or in free text with
        the ``ids`` format): there the check reads the SID block and the few allowed text ids, not
        the vocabulary. Such a row would otherwise silently pick token 0 (greedy: the row then
        breaks the rules and goes to ERROR) or crash sampling with "probability tensor contains
        inf/nan". The processors that ran before this one are re-run on neutral scores (only on
        this error path) to name the generate option responsible.
        """
        m = self.masker
        assert m is not None
        ids_text, _, span = m.closed_rows()
        if ids_text.size == 0 and span.size == 0:
            return
        V = scores.shape[1]
        c0 = min(m.col0, V)
        sel = np.concatenate([ids_text, span])  # ids-format text rows first: they may also keep EOS/separators
        keep = np.asarray([t for t in m.eos + m.separators if t < V], dtype=np.int64)
        n_ids = ids_text.size if keep.size else 0
        # A handful of tiny operations: on CPU numpy is several times cheaper per call than torch.
        if scores.device.type == "cpu" and scores.dtype in (torch.float32, torch.float64, torch.float16):
            a = scores.detach().numpy()
            alive = (a[sel, c0:] != -np.inf).any(1)
            if n_ids:
                alive[:n_ids] |= (a[ids_text[:, None], keep[None, :]] != -np.inf).any(1)
        else:
            r = torch.from_numpy(sel).to(scores.device)
            alive_t = (scores[r, c0:] != _NEG_INF).any(1)
            if n_ids:
                k = torch.from_numpy(keep).to(scores.device)
                alive_t[:n_ids] |= (scores[r[:n_ids, None], k[None, :]] != _NEG_INF).any(1)
            alive = alive_t.cpu().numpy()
        empty = sel[~alive].tolist()
        if not empty:
            return
        empty.sort()
        allowed = {r: self._allowed_tokens(r) for r in empty[:8]}
        before = _processors_before(self)
        if before is not None:
            probed = [p for p in before if type(p).__name__ in _HF_OPTION]  # known to be side-effect free
            culprits = _processors_that_mask(probed, input_ids, scores, allowed)
            if culprits:
                raise ValueError(self._conflict_message(empty, allowed, culprits))
            if len(probed) == len(before):
                # Nothing before this processor masks these tokens: the -inf came in with the scores
                # themselves (prompt lookup re-feeds the tensor this processor masked in place to
                # test its next draft token). Not a conflict; the draft is just cut there.
                return
        raise ValueError(self._conflict_message(empty, allowed, []))

    def _allowed_tokens(self, row: int) -> list[int]:
        """Token ids neo's bitmask allows in ``row`` (from the last fill)."""
        assert self.masker is not None
        words = self.masker.bitmask[row].to(torch.int64) & 0xFFFFFFFF
        bits = (words[:, None] >> torch.arange(32)) & 1
        return torch.nonzero(bits.reshape(-1)[: self.index.layout.vocab_size]).flatten().tolist()

    def _conflict_message(self, rows: list[int], allowed: dict[int, list[int]], culprits: list) -> str:
        r = rows[0]
        names = [self._token_name(t) for t in allowed[r][:6]] + (["..."] if len(allowed[r]) > 6 else [])
        if culprits:
            who = ", ".join(f"`{_HF_OPTION[type(p).__name__]}` ({type(p).__name__})" for p in culprits)
            cause = f"the generate option {who} set all of them to -inf before neo's processor ran"
        else:
            cause = "another logits processor had already set all of them to -inf"
        more = f" (and {len(rows) - 1} more)" if len(rows) > 1 else ""
        return (
            f"SidLogitsProcessor: row {r}{more} has no token left to generate: neo allows only "
            f"{', '.join(names) or 'nothing'} here, but {cause}. Drop that option or relax it (e.g. allow more "
            f"items, or give separator_token_ids). Options that conflict with neo: {_CONFLICTS}."
        )

    def _token_name(self, t: int) -> str:
        lay = self.index.layout
        if t == lay.open_id:
            return f"[SID] ({t})"
        if t == lay.close_id:
            return f"[/SID] ({t})"
        if t in self.eos:
            return f"EOS ({t})"
        c = lay.classify(t)
        if c is not None:
            return f"{lay.types[c[0]].name} level-{c[1] + 1} code {t - lay.types[c[0]].band_starts[c[1]]} ({t})"
        return f"separator ({t})" if t in self.separators else str(t)

    # ------------------------------------------------------------------ introspection
    def errors(self) -> dict[int, str]:
        """Rows in the sticky error state with their reasons (should be empty)."""
        if self._device is not None and self._device.state is not None:
            return self._device.state.errors()
        return {} if self.masker is None else self.masker.state.errors()

    def emitted(self, row: int) -> np.ndarray:
        """Item rows completed so far by a row of the current generation."""
        if self._device is not None and self._device.state is not None:
            return self._device.state.emitted_items(row)
        if self.masker is None:
            return np.zeros(0, dtype=np.int32)
        return self.masker.state.emitted(row)


# HF generate options (by the processor class generate builds for them) that can mask every token
# neo allows in a row; generate runs them before user processors such as SidLogitsProcessor.
_HF_OPTION = {
    "MinNewTokensLengthLogitsProcessor": "min_new_tokens",
    "MinLengthLogitsProcessor": "min_length",
    "NoRepeatNGramLogitsProcessor": "no_repeat_ngram_size",
    "EncoderNoRepeatNGramLogitsProcessor": "encoder_no_repeat_ngram_size",
    "SuppressTokensLogitsProcessor": "suppress_tokens",
    "SuppressTokensAtBeginLogitsProcessor": "begin_suppress_tokens",
    "NoBadWordsLogitsProcessor": "bad_words_ids",
    "SequenceBiasLogitsProcessor": "sequence_bias",
    "ForcedBOSTokenLogitsProcessor": "forced_bos_token_id",
    "ForcedEOSTokenLogitsProcessor": "forced_eos_token_id",
    "PrefixConstrainedLogitsProcessor": "prefix_allowed_tokens_fn",
}
_CONFLICTS = (
    "min_new_tokens / min_length (forbid EOS: with format='ids' and max_items reached, EOS is all that is left), "
    "no_repeat_ngram_size (forbids repeating '[/SID] [SID]', a SID prefix or 'code [/SID]'), suppress_tokens / "
    "begin_suppress_tokens / bad_words_ids / sequence_bias=-inf naming [SID], [/SID], SID codes, EOS or separators, "
    "forced_bos_token_id / forced_eos_token_id, prefix_allowed_tokens_fn"
)


def _processors_before(me: Any) -> list | None:
    """The processors that run before ``me`` in the ``LogitsProcessorList`` calling it (found on the
    call stack: generate -> LogitsProcessorList.__call__ -> me), or None outside one."""
    frame = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, LogitsProcessorList):
            pos = next((i for i, p in enumerate(owner) if p is me), None)
            if pos is not None:
                return list(owner)[:pos]
        frame = frame.f_back
    return None


def _processors_that_mask(processors: list, input_ids: torch.Tensor, scores: torch.Tensor,
                          allowed: Mapping[int, list[int]]) -> list:
    """Those of ``processors`` that, run on neutral scores, set every token of ``allowed[row]`` to
    -inf in some row (error path only)."""
    found = []
    for p in processors:
        try:
            out = p(input_ids, torch.zeros_like(scores))
        except Exception:  # a processor that cannot be re-run here is just not named
            continue
        for row, toks in allowed.items():
            t = torch.as_tensor(toks, dtype=torch.long, device=scores.device)
            if t.numel() and bool(torch.isneginf(out[row, t]).all()):
                found.append(p)
                break
    return found


def _powers(n: int) -> np.ndarray:
    """``B^(n-1-j)`` for j < n, wrapping mod 2^64 (the rolling hash's weights)."""
    p = np.ones(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n - 2, -1, -1):
            p[j] = p[j + 1] * _HASH_BASE
    return p


def _flatten_types(v: Any) -> list:
    if v is None:
        return []
    if isinstance(v, (str, int, np.integer)):
        return [v]
    out = []
    for x in v:
        out.extend(_flatten_types(x))
    return out
