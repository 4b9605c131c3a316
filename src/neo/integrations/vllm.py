"""neo inside vLLM: a logits processor that keeps every ``[SID] ... [/SID]`` span a real catalog item.

Install neo into vLLM's environment and serve a saved neo system directory (the HF model and
tokenizer at its top, neo's files in ``neo/``, see :mod:`neo.lm.system`)::

    python -m vllm.entrypoints.openai.api_server --model DIR --dtype float32

No flag is needed: vLLM loads :class:`NeoLogitsProcessorPlugin` through the ``vllm.logits_processors``
entry point, and the processor finds the vocabulary and index in ``DIR/neo`` from the model path
(``NEO_SYSTEM=/path/to/system`` overrides the lookup). Requests choose their constraints with
``vllm_xargs`` (flat) over the OpenAI server, or ``SamplingParams(extra_args=...)`` offline; a
request without neo options is never touched. The keys are documented in
:mod:`neo.integrations.serving`::

    curl localhost:8000/v1/completions -d '{"model": "DIR", "prompt": "...", "max_tokens": 32,
        "vllm_xargs": {"neo_format": "ids", "neo_types": "movie", "neo_exclude": "3,17", "neo_max_items": 3}}'

A bad option is rejected when the request is admitted (``validate_params``; HTTP 400 over the
server). Type names and item rows are checked there too when the frontend can see the system
(``NEO_SYSTEM`` set, or the engine in the same process); otherwise the engine checks them and a
request with an unknown type or item ends at once with an empty answer (logged).

What the processor does per step (vLLM's V1 model runner, the CPU one here): it mirrors the
persistent batch (removed, added, then moved rows, one-way moves and swaps) with one
:class:`~neo.core.index.DecodeState` row per slot, feeds each constrained request the tokens its
output list gained since the last step (read in ``apply``, when they are final), fills the packed
bitmask of the constrained rows only (incrementally) and applies it to their logits rows. vLLM's
V2 model runner (the default on GPUs with Triton) is served by the same class through the V2
interface (``add_request``, ``apply(logits, ctx)``); that path is unit-tested with stand-ins only
(no GPU here).

Limits: vLLM refuses custom logits processors with speculative decoding. With async scheduling in
the V1 model runner, vLLM writes the sampled tokens into the output lists only for processors named
explicitly, so also pass ``--logits-processors neo.integrations.vllm:NeoLogitsProcessor`` there (the
entry-point copy then stands aside). ``min_tokens`` with the ``ids`` format is refused (both would
forbid EOS / everything but EOS). Beam search (``LLM.beam_search``) runs through the same per-request
path and is not specially supported.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vllm.v1.sample.logits_processor import BatchUpdate
from vllm.v1.sample.logits_processor import LogitsProcessor as _V1LogitsProcessor

try:  # vLLM >= 0.32: model runner V2 has its own interface (and rejects V1-only plugins)
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as _V2LogitsProcessor
except ImportError:  # pragma: no cover - older vLLM
    _V2LogitsProcessor = None

from ..lm.system import SystemParts, load_system_parts
from .serving import RequestOptions, SlotDecoder, check_request_options, parse_request_options

__all__ = ["NeoLogitsProcessor", "NeoLogitsProcessorPlugin", "find_system_for_model"]

log = logging.getLogger(__name__)

_bases: tuple = (_V1LogitsProcessor,) if _V2LogitsProcessor is None else (_V1LogitsProcessor, _V2LogitsProcessor)
_SYSTEMS: dict[str, SystemParts] = {}  # loaded in this process, by directory (validation reuses them)
_INSTANCES: "weakref.WeakSet[NeoLogitsProcessor]" = weakref.WeakSet()  # live processors (introspection, tests)


def find_system_for_model(vllm_config: Any) -> SystemParts | None:
    """The neo system of the model vLLM serves, or None when the model is not a neo system.

    Looks at ``NEO_SYSTEM`` first, then the model path (a local directory, or a Hub id already in the
    local cache).

    Raises
    ------
    FileNotFoundError, SystemFormatError, IndexFormatError, VocabMismatchError
        ``NEO_SYSTEM`` is set but does not hold a valid system, or the model directory holds a
        damaged one.
    """
    forced = os.environ.get("NEO_SYSTEM")
    if forced:
        return _load(forced)
    model = str(vllm_config.model_config.model)
    candidates = [Path(model)]
    if not Path(model).exists():
        try:
            from huggingface_hub import snapshot_download

            candidates.append(Path(snapshot_download(model, revision=getattr(vllm_config.model_config, "revision", None),
                                                     local_files_only=True)))
        except Exception:  # not a cached Hub model: then it has no neo system we can see
            pass
    for c in candidates:
        if (c / "neo" / "neo_system.json").is_file() or (c / "neo_system.json").is_file() or \
                (c.name == "model" and (c.parent / "neo_system.json").is_file()):
            return _load(str(c))
    return None


def _load(path: str) -> SystemParts:
    key = str(Path(path).resolve())
    parts = _SYSTEMS.get(key)
    if parts is None:
        parts = load_system_parts(path, mmap_index=True)
        _SYSTEMS[key] = parts
    return parts


def _frontend_system() -> SystemParts | None:
    """A system the request validator can check names and rows against, if this process has one."""
    forced = os.environ.get("NEO_SYSTEM")
    if forced:
        try:
            return _load(forced)
        except Exception as e:  # the engine reports a bad NEO_SYSTEM at start; do not fail requests here
            log.warning("neo: NEO_SYSTEM=%s cannot be loaded for request validation: %s", forced, e)
            return None
    return next(iter(_SYSTEMS.values())) if len(_SYSTEMS) == 1 else None


def _explicitly_listed(vllm_config: Any) -> bool:
    listed = getattr(vllm_config.model_config, "logits_processors", None) or ()
    for lp in listed:
        if isinstance(lp, type) and issubclass(lp, NeoLogitsProcessor):
            return True
        if isinstance(lp, str) and lp.split(":")[0] == __name__:
            return True
    return False


class NeoLogitsProcessor(*_bases):
    """vLLM logits processor constraining the requests that carry neo options (see the module doc).

    Parameters (given by vLLM)
    --------------------------
    vllm_config : VllmConfig
    device, is_pin_memory
        V1 model runner.
    req_states : LogitsProcRequestState
        V2 model runner (instead of the two above).

    Raises
    ------
    ValueError
        The served model's vocabulary is smaller than the system's layout, or speculative decoding
        is on.
    """

    def __init__(self, vllm_config: Any, *args: Any) -> None:
        _INSTANCES.add(self)
        # seconds spent in this processor and calls (benchmarks read them: the share of a step in neo)
        self.timing = {"update_s": 0.0, "apply_s": 0.0, "steps": 0}
        self._v2 = len(args) == 1
        self._req_states = args[0] if self._v2 else None
        if self._v2:
            max_slots = int(self._req_states.max_num_reqs)
        else:
            max_slots = int(vllm_config.scheduler_config.max_num_seqs)
        self.max_slots = max_slots
        self.parts: SystemParts | None = None
        self.decoder: SlotDecoder | None = None
        self._passive_rows: set[int] = set()  # requests with neo options on a model without a system
        self._v2_new: set[int] = set()
        self._eos_fallback = _config_eos(vllm_config)
        if self._stand_aside(vllm_config):
            log.info("neo: %s is also listed explicitly; the entry-point copy stands aside", type(self).__name__)
            self._inactive = True
            return
        self._inactive = False
        self.parts = find_system_for_model(vllm_config)
        if self.parts is None:
            log.info("neo: model %s is not a neo system; requests with neo options will end at once",
                     vllm_config.model_config.model)
            return
        if getattr(vllm_config, "speculative_config", None) is not None:
            raise ValueError("neo's logits processor cannot run with speculative decoding (vLLM refuses custom "
                             "logits processors there); turn speculative decoding off")
        layout = self.parts.vocab.layout
        vocab = int(vllm_config.model_config.get_vocab_size())
        if vocab < layout.vocab_size:
            raise ValueError(f"the served model has {vocab} vocabulary rows but neo's SID vocabulary in "
                             f"{self.parts.location.neo_dir} needs {layout.vocab_size}; serve the model saved with "
                             "that system (NeoSystem.save_pretrained)")
        eos = self.parts.eos_token_ids or self._eos_fallback
        self.decoder = SlotDecoder(self.parts.index, max_slots, eos, num_threads=1)
        log.info("neo: constraining requests with neo options over %d items (%s), %d slots",
                 self.parts.index.num_items, ", ".join(layout.type_names), max_slots)

    def _stand_aside(self, vllm_config: Any) -> bool:
        return False

    # ------------------------------------------------------------------ request admission
    @classmethod
    def validate_params(cls, sampling_params: Any) -> None:
        """Reject bad neo options when a request is admitted (HTTP 400 over the OpenAI server)."""
        opts = parse_request_options(getattr(sampling_params, "extra_args", None))
        if opts is None:
            return
        if opts.format == "ids" and (getattr(sampling_params, "min_tokens", 0) or 0) > 0:
            raise ValueError("neo option neo_format=ids cannot be combined with min_tokens > 0 (min_tokens forbids "
                             "EOS, which is all the ids format allows once the items are written); drop min_tokens")
        if getattr(sampling_params, "structured_outputs", None) is not None:
            raise ValueError("neo options cannot be combined with structured outputs (guided decoding) in one "
                             "request; use one or the other")
        parts = _frontend_system()
        if parts is not None:
            check_request_options(opts, parts.index)

    # ------------------------------------------------------------------ V1 interface
    def is_argmax_invariant(self) -> bool:
        """False: the mask changes which token is the most likely."""
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if self._inactive or batch_update is None:
            return
        if self.decoder is not None:
            t = time.perf_counter()
            self.decoder.update(batch_update)
            self.timing["update_s"] += time.perf_counter() - t
            return
        # no system: remember the rows of requests that asked for neo, to end them
        for i in batch_update.removed:
            self._passive_rows.discard(i)
        for i, params, _, _ in batch_update.added:
            self._passive_rows.discard(i)
            if _wants_neo(params):
                self._passive_rows.add(i)
                _log_no_system()
        for a, b, d in batch_update.moved:
            ia, ib = a in self._passive_rows, b in self._passive_rows
            self._passive_rows.discard(a)
            self._passive_rows.discard(b)
            if ia:
                self._passive_rows.add(b)
            if ib and getattr(d, "name", "") == "SWAP":
                self._passive_rows.add(a)

    def apply(self, logits: torch.Tensor, ctx: Any = None) -> torch.Tensor:
        """Mask the logits rows of constrained requests in place (V1: ``apply(logits)``; V2: with ``ctx``)."""
        if self._inactive:
            return logits
        if ctx is not None:
            t = time.perf_counter()
            out = self._apply_v2(logits, ctx)
            self.timing["apply_s"] += time.perf_counter() - t
            self.timing["steps"] += 1
            return out
        if self.decoder is None:
            rows = [r for r in self._passive_rows if r < logits.shape[0]]
            return _end_rows(logits, rows, self._eos_fallback)
        t = time.perf_counter()
        self.decoder.sync(logits.shape[0])
        out = self.decoder.mask(logits)
        self.timing["apply_s"] += time.perf_counter() - t
        self.timing["steps"] += 1
        return out

    # ------------------------------------------------------------------ V2 interface
    def add_request(self, req_idx: int, sampling_params: Any) -> bool:
        """V2: a request enters slot ``req_idx``; True when neo constrains it."""
        if self._inactive:
            return False
        self._v2_new.discard(req_idx)
        if self.decoder is None:
            self._passive_rows.discard(req_idx)
            if _wants_neo(sampling_params):
                self._passive_rows.add(req_idx)
                _log_no_system()
                return True
            return False
        try:
            opts = parse_request_options(getattr(sampling_params, "extra_args", None))
        except ValueError as e:
            opts = RequestOptions(format="ids", max_items=0)
            self.decoder.add(req_idx, opts)
            self.decoder.rejected[req_idx] = str(e)
            return True
        self.decoder.add(req_idx, opts)
        if opts is not None:
            self._v2_new.add(req_idx)
        return opts is not None

    def apply_staged_writes(self) -> None:
        """V2: the prompts of new requests are on the device now; start rows whose prompt opens a span."""
        if not self._v2_new or self.decoder is None:
            return
        rs = self._req_states
        for slot in sorted(self._v2_new):
            if self.decoder.constrained[slot]:
                n = int(rs.prompt_len.np[slot])
                prompt = rs.all_token_ids.gpu[slot, :n].tolist()
                self.decoder.prompts[slot] = prompt
                self.decoder.restart(slot)
        self._v2_new.clear()

    def _apply_v2(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
        idx_np = np.asarray(ctx.idx_mapping_np, dtype=np.int64)
        if logits.shape[0] != idx_np.shape[0]:
            raise RuntimeError("neo: logits rows differ from requests (speculative decoding?); not supported")
        if self.decoder is None:
            rows = [r for r, s in enumerate(idx_np.tolist()) if s in self._passive_rows]
            return _end_rows(logits, rows, self._eos_fallback)
        dec = self.decoder
        rows = np.flatnonzero(dec.constrained[idx_np])
        if rows.size == 0:
            return logits
        slots = idx_np[rows]
        rows_t = torch.from_numpy(rows).to(ctx.input_ids.device)
        fed = torch.stack([ctx.input_ids.index_select(0, rows_t).long(), ctx.pos.index_select(0, rows_t).long()])
        tokens, pos = fed.cpu().numpy()
        prompt_len = np.asarray(self._req_states.prompt_len.np)[slots]
        all_ids = self._req_states.all_token_ids
        for slot, tok, p, plen in zip(slots.tolist(), tokens.tolist(), pos.tolist(), prompt_len.tolist()):
            # outputs so far: p + 1 - plen; the newest is the token fed at position p. Older ones (a
            # resumed request) are committed on the device.
            dec.catch_up(slot, p + 1 - plen, tok,
                         lambda a, b, s=slot, o=plen: all_ids.gpu[s, o + a: o + b].tolist())
        return dec.mask(logits, rows, slots)


class NeoLogitsProcessorPlugin(NeoLogitsProcessor):
    """What the ``vllm.logits_processors`` entry point loads: :class:`NeoLogitsProcessor`, except that it
    stands aside when :class:`NeoLogitsProcessor` is also named in ``--logits-processors`` (so the mask
    is not applied twice)."""

    def _stand_aside(self, vllm_config: Any) -> bool:
        return _explicitly_listed(vllm_config)


def _wants_neo(params: Any) -> bool:
    args = getattr(params, "extra_args", None) or {}
    return any(isinstance(k, str) and (k == "neo" or k.startswith("neo_")) for k in args)


def _config_eos(vllm_config: Any) -> list[int]:
    out: set[int] = set()
    for cfg in (getattr(vllm_config.model_config, "hf_config", None),):
        v = getattr(cfg, "eos_token_id", None)
        if isinstance(v, int):
            out.add(v)
        elif isinstance(v, (list, tuple)):
            out.update(int(x) for x in v)
    return sorted(out)


def _end_rows(logits: torch.Tensor, rows: list[int], eos: list[int]) -> torch.Tensor:
    """Only EOS for these rows: requests that asked for neo on a model without a neo system end at once."""
    if not rows:
        return logits
    if not eos:
        raise RuntimeError("neo: a request asked for neo options, the model is not a neo system and has no EOS id")
    r = torch.tensor(rows, device=logits.device)
    e = torch.tensor(eos, device=logits.device)
    keep = logits[r[:, None], e[None, :]]
    logits[r] = float("-inf")
    logits[r[:, None], e[None, :]] = keep
    return logits


def _log_no_system() -> None:
    log.error("neo: a request asked for neo options but the served model is not a neo system (no "
              "neo/neo_system.json beside it; set NEO_SYSTEM to point at one): it ends at once")
