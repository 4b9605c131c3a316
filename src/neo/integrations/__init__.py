"""Serving adapters: neo's constrained decoding inside serving engines.

* :mod:`neo.integrations.serving` -- engine-independent pieces: per-request options (parsed from
  flat or nested request arguments) and :class:`~neo.integrations.serving.SlotDecoder`, which drives a
  :class:`~neo.core.index.DecodeState` over an engine's persistent batch of request slots.
* :mod:`neo.integrations.vllm` -- a vLLM logits processor built on them (imports vLLM; import it
  only where vLLM is installed). vLLM finds it through the ``vllm.logits_processors`` entry point.

Importing this package does not import vLLM.
"""

__all__ = ["serving", "vllm"]
