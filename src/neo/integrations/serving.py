"""Engine-independent serving pieces: per-request options and a decode state over request slots.

A serving engine keeps a *persistent batch*: request slots that requests enter, leave and move
between while the engine runs. :class:`SlotDecoder` mirrors it with one
:class:`~neo.core.index.DecodeState` row per slot, follows each request's generated tokens, and masks
the logits of constrained slots only (other requests in the same batch are never touched).

Request options
---------------
A request is constrained when its arguments carry any neo option. Two spellings (the first is what
the OpenAI-compatible server's flat ``vllm_xargs`` allow, the second is for Python callers)::

    {"neo_format": "ids", "neo_types": "movie,book", "neo_exclude": "3,17", "neo_max_items": 3}
    {"neo": {"format": "ids", "types": ["movie", "book"], "exclude": [3, 17], "max_items": 3}}

==========================  =================================================================
key (flat / nested)         value
==========================  =================================================================
``neo_format`` / format     ``"mixed"`` (default: text and spans), ``"ids"`` (only spans and
                            EOS) or ``"text"`` (no spans)
``neo_types`` / types       item types whose spans may open: a list of names (or type
                            indices), or one comma-separated string. Default: all
``neo_exclude`` / exclude   item rows never to emit (e.g. the user's history): a list of ints
                            or a comma-separated string of ints
``neo_allow`` / allow       allow-list of item rows (same spelling); only these may be emitted
``neo_max_items`` /         no new span after this many items (int >= 0)
max_items
``neo_exclude_emitted`` /   an item is emitted at most once per answer (default true; accepts
exclude_emitted             true/false, 1/0, "true"/"false", "yes"/"no")
==========================  =================================================================

Item rows are the catalog rows neo's index numbers items by (``Catalog.ids[row]`` is the id).
:func:`parse_request_options` checks the spelling (no catalog needed);
:func:`check_request_options` checks names and rows against an index.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..core.index import DecodeState, RowStatus, SidIndex

__all__ = ["RequestOptions", "parse_request_options", "check_request_options", "SlotDecoder", "FLAT_KEYS",
           "NESTED_KEY", "FORMATS"]

log = logging.getLogger(__name__)

FORMATS = ("mixed", "ids", "text")
NESTED_KEY = "neo"
_FIELDS = ("format", "types", "exclude", "allow", "max_items", "exclude_emitted")
_ALIASES = {"allowed_types": "types"}
FLAT_KEYS = tuple(f"neo_{f}" for f in _FIELDS)
_INT_LIST = re.compile(r"^\s*\d+\s*(,\s*\d+\s*)*,?\s*$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class RequestOptions:
    """Constrained-decoding options of one request (see the module doc for the spelling).

    Attributes
    ----------
    format : str
    types : tuple of str/int, or None (all types)
    exclude : tuple of int
    allow : tuple of int, or None (no allow-list)
    max_items : int or None
    exclude_emitted : bool
    """

    format: str = "mixed"
    types: tuple | None = None
    exclude: tuple = ()
    allow: tuple | None = None
    max_items: int | None = None
    exclude_emitted: bool = True

    def row_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`DecodeState.set_row_options`."""
        return dict(format=self.format, allowed_types=None if self.types is None else list(self.types),
                    exclude=np.asarray(self.exclude, dtype=np.int64),
                    allow=None if self.allow is None else np.asarray(self.allow, dtype=np.int64),
                    exclude_emitted=self.exclude_emitted, max_items=self.max_items)


def _bad(key: str, value: Any, want: str) -> ValueError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ValueError(f"neo option {key}={shown}: {want}")


def _as_item_rows(key: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        if not value.strip():
            return ()
        if not _INT_LIST.match(value):
            raise _bad(key, value, "expected item rows as a comma-separated string of non-negative integers, "
                                   "e.g. \"3,17,42\"")
        return tuple(int(x) for x in value.split(",") if x.strip())
    if isinstance(value, (bool, float)) or not isinstance(value, (int, np.integer, list, tuple, np.ndarray)):
        raise _bad(key, value, "expected a list of non-negative integer item rows or a comma-separated string")
    vals = [value] if isinstance(value, (int, np.integer)) else list(np.asarray(value).reshape(-1).tolist()
                                                                     if isinstance(value, np.ndarray) else value)
    out = []
    for v in vals:
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise _bad(key, value, f"item rows must be non-negative integers, got {v!r}")
        out.append(int(v))
    return tuple(out)


def _as_types(key: str, value: Any) -> tuple:
    if isinstance(value, str):
        names = [x.strip() for x in value.split(",")]
    elif isinstance(value, (list, tuple)):
        names = list(value)
    else:
        raise _bad(key, value, "expected item type names as a list or a comma-separated string")
    out: list = []
    for n in names:
        if isinstance(n, bool) or not isinstance(n, (str, int, np.integer)) or (isinstance(n, str) and not n.strip()):
            raise _bad(key, value, f"item types must be non-empty names (or type indices), got {n!r}")
        if isinstance(n, (int, np.integer)) and n < 0:
            raise _bad(key, value, f"type indices must be non-negative, got {n}")
        out.append(n.strip() if isinstance(n, str) else int(n))
    if not out:
        raise _bad(key, value, "name at least one item type (or leave the option out for all types)")
    return tuple(out)


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _bad(key, value, "expected true or false")


def _as_max_items(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise _bad(key, value, "expected a non-negative integer")
    return int(value)


def parse_request_options(extra_args: Mapping[str, Any] | None) -> RequestOptions | None:
    """Read neo's options from a request's extra arguments.

    Parameters
    ----------
    extra_args : mapping or None
        vLLM's ``SamplingParams.extra_args`` (the OpenAI server puts ``vllm_xargs`` there). Keys that
        do not start with ``neo`` belong to others and are ignored.

    Returns
    -------
    RequestOptions or None
        None when the request carries no neo option (it is not constrained).

    Raises
    ------
    ValueError
        Naming the option and what it expects: an unknown ``neo_*`` key, a bad value, or both
        spellings at once.
    """
    if not extra_args:
        return None
    if not isinstance(extra_args, Mapping):
        raise ValueError(f"request extra arguments must be a mapping, got {type(extra_args).__name__}")
    flat = {k: v for k, v in extra_args.items() if isinstance(k, str) and k.startswith("neo_")}
    nested = extra_args.get(NESTED_KEY)
    if nested is None and not flat:
        return None
    fields: dict[str, tuple[str, Any]] = {}
    if nested is not None:
        if flat:
            raise ValueError(f"neo options given both nested under {NESTED_KEY!r} and flat ({sorted(flat)}); "
                             "use one spelling")
        if not isinstance(nested, Mapping):
            raise _bad(NESTED_KEY, nested, f"expected a mapping of options ({', '.join(_FIELDS)})")
        for k, v in nested.items():
            name = _ALIASES.get(k, k)
            if name not in _FIELDS:
                raise ValueError(f"unknown neo option {NESTED_KEY}.{k}; known: {', '.join(_FIELDS)}")
            fields[name] = (f"{NESTED_KEY}.{k}", v)
    for k, v in flat.items():
        name = _ALIASES.get(k[4:], k[4:])
        if name not in _FIELDS:
            raise ValueError(f"unknown neo option {k}; known: {', '.join(FLAT_KEYS)}")
        fields[name] = (k, v)
    kw: dict[str, Any] = {}
    if "format" in fields:
        key, v = fields["format"]
        if v not in FORMATS:
            raise _bad(key, v, f"expected one of {', '.join(FORMATS)}")
        kw["format"] = v
    if "types" in fields and fields["types"][1] is not None:
        kw["types"] = _as_types(*fields["types"])
    if "exclude" in fields and fields["exclude"][1] is not None:
        kw["exclude"] = _as_item_rows(*fields["exclude"])
    if "allow" in fields and fields["allow"][1] is not None:
        kw["allow"] = _as_item_rows(*fields["allow"])
    if "max_items" in fields:
        kw["max_items"] = _as_max_items(*fields["max_items"])
    if "exclude_emitted" in fields:
        kw["exclude_emitted"] = _as_bool(*fields["exclude_emitted"])
    return RequestOptions(**kw)


def check_request_options(options: RequestOptions, index: SidIndex) -> None:
    """Check type names and item rows against an index.

    Raises
    ------
    ValueError
        Naming the unknown type (and the known ones) or the item row that is not in the index.
    """
    for t in options.types or ():
        try:
            index.layout.type_index(t)
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"neo option types: unknown item type {t!r}; this system has "
                             f"{', '.join(index.layout.type_names)}") from None
    scratch = DecodeState(index, 1, [0], [], 1)
    try:
        scratch.set_row_options(0, **options.row_kwargs())
    except ValueError as e:
        raise ValueError(f"neo options: {e}") from None


class SlotDecoder:
    """One :class:`DecodeState` row per request slot of a serving engine's persistent batch.

    Parameters
    ----------
    index : SidIndex
    max_slots : int
        Slots of the engine (vLLM: ``max_num_seqs``).
    eos_token_ids : iterable of int
        Tokens that end an answer.
    num_threads : int
        Threads of the C++ core (1: requests are few and latency matters).

    Notes
    -----
    Follow the engine with :meth:`add`, :meth:`remove`, :meth:`move` (or :meth:`update` with a
    vLLM-style batch update) and feed each slot's new tokens with :meth:`feed` or by giving
    :meth:`add` the request's live list of output tokens (then :meth:`sync` reads what was
    appended). :meth:`mask` fills and applies the bitmask of the constrained slots only.

    Options a slot cannot use (unknown type, item not in the index) never raise here, since an
    engine cannot fail one request from its sampler: the slot is configured to end at once (only
    EOS allowed) and :attr:`rejected` says why.
    """

    def __init__(self, index: SidIndex, max_slots: int, eos_token_ids: Iterable[int], num_threads: int = 1):
        import torch

        self.index = index
        self.layout = index.layout
        self.max_slots = int(max_slots)
        self.eos = sorted({int(t) for t in eos_token_ids})
        if not self.eos:
            raise ValueError("constrained decoding needs at least one EOS token id (got none)")
        self.state = DecodeState(index, self.max_slots, self.eos, [], num_threads)
        self.bitmask = torch.zeros(self.state.bitmask_shape, dtype=torch.int32)
        self._bitmask_np = self.bitmask.numpy()
        self.constrained = np.zeros(self.max_slots, dtype=bool)
        self.consumed = np.zeros(self.max_slots, dtype=np.int64)  # output tokens fed so far
        self.outputs: list[list[int] | None] = [None] * self.max_slots  # live lists (vLLM V1)
        self.prompts: list[Sequence[int] | None] = [None] * self.max_slots
        self.options: list[RequestOptions | None] = [None] * self.max_slots
        self.rejected: dict[int, str] = {}
        self.stats = {"added": 0, "removed": 0, "moved": 0, "swapped": 0, "tokens": 0, "masked_rows": 0}
        self._device_bitmask: dict[Any, Any] = {}
        self._geometry: dict[tuple[int, int], Any] = {}

    # ------------------------------------------------------------------ batch bookkeeping
    def add(self, slot: int, options: RequestOptions | None, prompt_ids: Sequence[int] | None = None,
            output_ids: list[int] | None = None) -> None:
        """A request enters ``slot`` (replacing whatever was there).

        Parameters
        ----------
        options : RequestOptions or None
            None: the request is not constrained.
        prompt_ids : sequence of int, optional
            Its prompt: a prompt ending inside an open span (e.g. with ``[SID]``) starts there.
        output_ids : list of int, optional
            The engine's live list of the request's output tokens (read by :meth:`sync`); tokens
            already in it (a resumed request) are replayed.
        """
        self._check_slot(slot)
        self.stats["added"] += 1
        self.rejected.pop(slot, None)
        self.options[slot] = options
        self.outputs[slot] = output_ids
        self.prompts[slot] = prompt_ids
        self.consumed[slot] = 0
        self.constrained[slot] = options is not None
        if options is None:
            return
        try:
            check_request_options(options, self.index)
            self.state.set_row_options(slot, **options.row_kwargs())
        except ValueError as e:
            self.rejected[slot] = str(e)
            log.error("neo: request in slot %d ends at once: %s", slot, e)
            self.state.set_row_options(slot, format="ids", max_items=0)  # only EOS is allowed
            return
        if prompt_ids is not None:
            self._prime(slot, prompt_ids)

    def _prime(self, slot: int, prompt_ids: Sequence[int]) -> None:
        a = np.asarray(prompt_ids, dtype=np.int64)
        opens = np.flatnonzero(a == self.layout.open_id)
        if opens.size == 0:
            return
        last_open = int(opens[-1])
        closes = np.flatnonzero(a == self.layout.close_id)
        if closes.size and int(closes[-1]) > last_open:
            return
        rows = np.asarray([slot])
        for tok in a[last_open:]:
            self.state.advance(np.asarray([tok]), rows)

    def restart(self, slot: int) -> None:
        """Put a slot back at the start of its answer (its prompt replayed); :meth:`feed` then replays."""
        opts = self.options[slot]
        if opts is None or slot in self.rejected:
            return
        self.state.set_row_options(slot, **opts.row_kwargs())
        self.consumed[slot] = 0
        if self.prompts[slot] is not None:
            self._prime(slot, self.prompts[slot])

    def remove(self, slot: int) -> None:
        """The request in ``slot`` left the batch."""
        self._check_slot(slot)
        self.stats["removed"] += 1
        self.constrained[slot] = False
        self.outputs[slot] = None
        self.options[slot] = None
        self.prompts[slot] = None
        self.rejected.pop(slot, None)

    def move(self, src: int, dst: int, swap: bool) -> None:
        """``src`` moves to ``dst`` (``dst``'s request is dropped), or the two swap."""
        self._move_many([(src, dst, swap)])

    def _move_many(self, moves: Sequence[tuple[int, int, bool]]) -> None:
        perm = np.arange(self.max_slots, dtype=np.int64)
        py = [self.outputs, self.options, self.prompts]
        arrs = [self.constrained, self.consumed]
        for a, b, swap in moves:
            self._check_slot(a)
            self._check_slot(b)
            self.stats["swapped" if swap else "moved"] += 1
            if swap:
                perm[a], perm[b] = perm[b], perm[a]
                for lst in py:
                    lst[a], lst[b] = lst[b], lst[a]
                for arr in arrs:
                    arr[a], arr[b] = arr[b], arr[a]
                ra, rb = self.rejected.pop(a, None), self.rejected.pop(b, None)
                if ra is not None:
                    self.rejected[b] = ra
                if rb is not None:
                    self.rejected[a] = rb
            else:
                perm[b] = perm[a]
                for lst in py:
                    lst[b], lst[a] = lst[a], None
                for arr in arrs:
                    arr[b] = arr[a]
                self.constrained[a] = False
                self.consumed[a] = 0
                self.rejected.pop(b, None)
                if a in self.rejected:
                    self.rejected[b] = self.rejected.pop(a)
        if not np.array_equal(perm, np.arange(self.max_slots)):
            self.state.reorder(perm)

    def update(self, batch_update: Any, parse: Any = None) -> None:
        """Apply a vLLM-style batch update: ``removed``, then ``added``, then ``moved``.

        Parameters
        ----------
        batch_update : object with ``removed`` (slots), ``added`` ((slot, params, prompt ids, live
            output ids) tuples) and ``moved`` ((a, b, direction) tuples; a direction whose ``name``
            is ``"SWAP"`` swaps, any other moves a -> b), or None (no change).
        parse : callable params -> RequestOptions or None
            Default: :func:`parse_request_options` of ``params.extra_args``. A parse error makes
            the request end at once (see the class notes).
        """
        if batch_update is None:
            return
        for slot in batch_update.removed:
            self.remove(slot)
        for slot, params, prompt_ids, output_ids in batch_update.added:
            try:
                opts = parse(params) if parse is not None else parse_request_options(getattr(params, "extra_args", None))
            except ValueError as e:
                self.add(slot, RequestOptions(format="ids", max_items=0), prompt_ids, output_ids)
                self.rejected[slot] = str(e)
                log.error("neo: request in slot %d ends at once: %s", slot, e)
                continue
            self.add(slot, opts, prompt_ids, output_ids)
        if batch_update.moved:
            self._move_many([(a, b, getattr(d, "name", str(d)) == "SWAP") for a, b, d in batch_update.moved])

    # ------------------------------------------------------------------ tokens
    def feed(self, slot: int, tokens: Sequence[int]) -> None:
        """Advance a constrained slot by its newly generated tokens (in order)."""
        if not self.constrained[slot] or len(tokens) == 0:
            return
        rows = np.asarray([slot])
        for t in tokens:
            self.state.advance(np.asarray([int(t)]), rows)
        self.consumed[slot] += len(tokens)
        self.stats["tokens"] += len(tokens)

    def catch_up(self, slot: int, num_outputs: int, newest: int, older: Any = None) -> None:
        """Bring a slot to ``num_outputs`` output tokens, the last being ``newest`` (engines that expose
        the token fed this step rather than a list, as vLLM's V2 model runner does).

        Parameters
        ----------
        num_outputs : int
            Output tokens the request has now (<= what was fed: nothing to do, e.g. a prefill chunk).
        newest : int
            Output token number ``num_outputs - 1``.
        older : callable (start, stop) -> list of int, optional
            Output tokens ``start .. stop-1``, needed when more than one token is new (a resumed request).
        """
        have = int(self.consumed[slot])
        if not self.constrained[slot] or num_outputs <= have:
            return
        if num_outputs - have > 1:
            if older is None:
                raise RuntimeError(f"slot {slot}: {num_outputs - have} new output tokens but only the newest is known")
            self.feed(slot, list(older(have, num_outputs - 1)))
        self.feed(slot, [newest])

    def sync(self, num_slots: int | None = None) -> None:
        """Feed every constrained slot (below ``num_slots``) what its live output list gained.

        Raises
        ------
        RuntimeError
            A list holds a placeholder (-1): the engine has not written the sampled token yet.
        """
        n = self.max_slots if num_slots is None else min(int(num_slots), self.max_slots)
        if not self.constrained[:n].any():
            return
        slots = np.flatnonzero(self.constrained[:n])
        pending_rows, pending_toks = [], []
        for s in slots.tolist():
            out = self.outputs[s]
            if out is None:
                continue
            have, done = len(out), int(self.consumed[s])
            if have < done:  # the engine dropped tokens (e.g. a failed KV load): replay from the start
                self.restart(s)
                done = 0
            if have == done:
                continue
            new = out[done:have]
            if -1 in new:
                raise RuntimeError(
                    "neo: a request's newest output token is still a placeholder (-1) when the logits are "
                    "processed. vLLM fills placeholders (async scheduling) only for logits processors named "
                    "explicitly: start vLLM with --logits-processors neo.integrations.vllm:NeoLogitsProcessor "
                    "(or LLM(logits_processors=[...])), or turn async scheduling off"
                )
            if len(new) == 1:
                pending_rows.append(s)
                pending_toks.append(new[0])
            else:
                self.feed(s, new)
                continue
            self.consumed[s] = have
        if pending_rows:  # the common case: one new token per slot, one call
            self.state.advance(np.asarray(pending_toks, dtype=np.int64), np.asarray(pending_rows, dtype=np.int64))
            self.stats["tokens"] += len(pending_rows)

    # ------------------------------------------------------------------ masking
    def mask(self, logits: Any, rows: np.ndarray | None = None, slots: np.ndarray | None = None) -> Any:
        """Fill the constrained slots' bitmasks and apply them to their logits rows, in place.

        Parameters
        ----------
        logits : float tensor (batch, V)
            V may exceed the layout's vocabulary (padded LM heads): those columns are masked.
        rows, slots : int arrays, optional
            Logits row of each slot to mask. Default: every constrained slot below ``batch``, in
            the row of the same number (vLLM V1's persistent batch).

        Returns
        -------
        The same tensor.

        Notes
        -----
        On CUDA the packed bitmask rows go to the device and neo's Triton kernel applies them. On
        CPU, unpacking the whole vocabulary per row would cost more than the model step of a small
        model, so the mask is applied by region, exactly as the bits say: below the SID block a row's
        words are either all ones (free text: nothing to do) or hold a few allowed tokens (EOS,
        separators: the row is set to -inf and those restored); from the SID block on, the bits are
        unpacked (about ``num_sid_tokens`` columns).
        """
        if slots is None:
            slots = np.flatnonzero(self.constrained[: logits.shape[0]])
            rows = slots
        if len(slots) == 0:
            return logits
        slots = np.asarray(slots, dtype=np.int64)
        rows = np.asarray(rows, dtype=np.int64)
        self.stats["masked_rows"] += len(slots)
        self.state.fill_next_token_bitmask(self._bitmask_np, slots, incremental=True)
        if logits.device.type == "cpu":
            self._apply_cpu(logits, rows, self._bitmask_np[slots])
            return logits
        import torch

        from ..kernels import apply_token_bitmask_inplace

        same = np.array_equal(rows, slots)
        bm = self.bitmask if same else self._gather(slots, rows, logits.shape[0])
        bm = self._to_device(bm, logits.device)
        apply_token_bitmask_inplace(logits, bm, indices=torch.from_numpy(rows).to(logits.device))
        return logits

    def _apply_cpu(self, logits: Any, rows: np.ndarray, words: np.ndarray) -> None:
        """``logits[rows[i], t] = -inf`` wherever bit t of ``words[i]`` is 0 (and past the mask)."""
        import torch

        V = logits.shape[1]
        W = words.shape[1]
        w0 = min(self.layout.sid_token_begin // 32, W, V // 32)
        c0 = 32 * w0
        head = words[:, :w0]
        closed = np.flatnonzero(~(head == -1).all(axis=1))  # rows that do not allow all of free text
        bits = np.arange(32, dtype=np.int32)
        for i in closed.tolist():
            r = int(rows[i])
            nz = np.flatnonzero(head[i])
            if nz.size > 64:  # not a pattern the state machine writes; exact anyway
                allowed_head = ((head[i][:, None] >> bits) & 1).astype(bool).reshape(-1)
                row = logits[r, :c0]
                row.masked_fill_(~torch.from_numpy(allowed_head), float("-inf"))
                continue
            ids = (nz[:, None] * 32 + bits)[((head[i][nz][:, None] >> bits) & 1).astype(bool)]
            if ids.size:
                idx = torch.from_numpy(ids.astype(np.int64))
                keep = logits[r].index_select(0, idx)
                logits[r, :c0].fill_(float("-inf"))
                logits[r].index_copy_(0, idx, keep)
            else:
                logits[r, :c0].fill_(float("-inf"))
        ncols = V - c0
        if ncols <= 0:
            return
        word, shift, beyond = self._tail_geometry(ncols, W - w0)
        tail_words = torch.from_numpy(words[:, w0:])
        disallowed = ((tail_words.index_select(1, word) >> shift) & 1) == 0
        if beyond is not None:
            disallowed |= beyond
        if len(rows) == logits.shape[0] and np.array_equal(rows, np.arange(len(rows))):
            logits[:, c0:].masked_fill_(disallowed, float("-inf"))
        else:
            r = torch.from_numpy(rows)
            logits[r, c0:] = logits[r, c0:].masked_fill_(disallowed, float("-inf"))

    def _tail_geometry(self, ncols: int, nwords: int) -> tuple[Any, Any, Any]:
        """Per column from the SID block on: its word, its bit, and whether it lies past the mask (cached)."""
        import torch

        key = (ncols, nwords)
        geo = self._geometry.get(key)
        if geo is None:
            cols = torch.arange(ncols)
            word = (cols // 32).clamp(max=max(nwords - 1, 0))
            shift = (cols % 32).to(torch.int32)
            beyond = cols >= 32 * nwords
            geo = (word, shift, beyond if bool(beyond.any()) else None)
            self._geometry[key] = geo
        return geo

    def _gather(self, slots: np.ndarray, rows: np.ndarray, num_rows: int) -> Any:
        import torch

        out = torch.zeros((max(num_rows, 1), self.bitmask.shape[1]), dtype=torch.int32)
        out[torch.from_numpy(rows)] = self.bitmask[torch.from_numpy(slots)]
        return out

    def _to_device(self, bm: Any, device: Any) -> Any:
        buf = self._device_bitmask.get(device)
        if buf is None or buf.shape[0] < bm.shape[0]:
            buf = bm.to(device)
            self._device_bitmask[device] = buf
        else:
            buf[: bm.shape[0]].copy_(bm, non_blocking=True)
        return buf[: bm.shape[0]]

    # ------------------------------------------------------------------ introspection
    def status(self, slot: int) -> str:
        """``"text"``, ``"span"``, ``"done"`` or ``"error"`` (constrained slots)."""
        return RowStatus.NAMES[int(self.state.status[slot])]

    def emitted(self, slot: int) -> np.ndarray:
        """Item rows the request in ``slot`` completed so far."""
        return self.state.emitted(slot)

    def _check_slot(self, slot: int) -> None:
        if not 0 <= int(slot) < self.max_slots:
            raise IndexError(f"slot {slot} out of range [0, {self.max_slots})")
