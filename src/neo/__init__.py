"""neo: catalog-grounded generation with semantic-ID constrained decoding.

Core objects (C++ backed): :class:`SidIndex` (prefix trie over a catalog's semantic IDs) and
:class:`DecodeState` (batched per-row decoding state that fills packed int32 token bitmasks).

The package follows the data flow: :mod:`neo.core` (token layout, index, bitmasks) <- :mod:`neo.items`
(catalog, interactions, embeddings, semantic IDs) <- :mod:`neo.lm` (vocabulary, model adaptation, prompts,
logits processor, generation, saved systems) <- :mod:`neo.training` / :mod:`neo.evaluation` /
:mod:`neo.scoring` <- :mod:`neo.cli`. Every public name below is loaded on first access, so
``import neo`` (and the ``neo`` command's ``--help``) does not import torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module relative to neo, attribute or None for the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "allocate_token_bitmask": (".core.bitmask", "allocate_token_bitmask"),
    "apply_token_bitmask_inplace": (".core.bitmask", "apply_token_bitmask_inplace"),
    "bitmask_to_bool": (".core.bitmask", "bitmask_to_bool"),
    "get_bitmask_shape": (".core.bitmask", "get_bitmask_shape"),
    "DecodeState": (".core.index", "DecodeState"),
    "IndexFormatError": (".core.index", "IndexFormatError"),
    "RowStatus": (".core.index", "RowStatus"),
    "SidIndex": (".core.index", "SidIndex"),
    "TokenLayout": (".core.layout", "TokenLayout"),
    "TypeBands": (".core.layout", "TypeBands"),
    "Catalog": (".items.catalog", "Catalog"),
    "CatalogError": (".items.catalog", "CatalogError"),
    "Item": (".items.catalog", "Item"),
    "LoadReport": (".items.catalog", "LoadReport"),
    "Embedder": (".items.embeddings", "Embedder"),
    "HFEmbedder": (".items.embeddings", "HFEmbedder"),
    "PrecomputedEmbedder": (".items.embeddings", "PrecomputedEmbedder"),
    "SentenceTransformerEmbedder": (".items.embeddings", "SentenceTransformerEmbedder"),
    "TfidfSvdEmbedder": (".items.embeddings", "TfidfSvdEmbedder"),
    "embed_catalog": (".items.embeddings", "embed_catalog"),
    "get_embedder": (".items.embeddings", "get_embedder"),
    "SemanticIds": (".items.sids", "SemanticIds"),
    "SidReport": (".items.sids", "SidReport"),
    "build_sids": (".items.sids", "build_sids"),
    "SidVocab": (".lm.vocab", "SidVocab"),
    "VocabMismatchError": (".lm.vocab", "VocabMismatchError"),
    "adapt_model": (".lm.adapt", "adapt_model"),
    "check_model": (".lm.adapt", "check_model"),
    "embeddings_tied": (".lm.adapt", "embeddings_tied"),
    "TASKS": (".lm.prompts", "TASKS"),
    "TEMPLATES": (".lm.prompts", "TEMPLATES"),
    "Prompt": (".lm.prompts", "Prompt"),
    "PromptBuilder": (".lm.prompts", "PromptBuilder"),
    "PromptError": (".lm.prompts", "PromptError"),
    "SidLogitsProcessor": (".lm.processor", "SidLogitsProcessor"),
    "SidMasker": (".lm.processor", "SidMasker"),
    "GenerationOutput": (".lm.generation", "GenerationOutput"),
    "ItemRef": (".lm.generation", "ItemRef"),
    "describe_user": (".lm.generation", "describe_user"),
    "generate": (".lm.generation", "generate"),
    "parse_output": (".lm.generation", "parse_output"),
    "recommend": (".lm.generation", "recommend"),
    "search": (".lm.generation", "search"),
    "topk_items": (".lm.generation", "topk_items"),
    "NeoSystem": (".lm.system", "NeoSystem"),
    "sids_hash": (".lm.system", "sids_hash"),
    "evaluation": (".evaluation", None),
    "baselines": (".evaluation.baselines", None),
    "datasets": (".items.datasets", None),
    "tasks": (".training.tasks", None),
    "train": (".training.train", None),
    "ChoiceText": (".scoring.plausibility", "ChoiceText"),
    "ClassifierHead": (".scoring.plausibility", "ClassifierHead"),
    "MaskedMultipleChoiceCollator": (".scoring.plausibility", "MaskedMultipleChoiceCollator"),
    "MultipleChoiceCollator": (".scoring.plausibility", "MultipleChoiceCollator"),
    "choice_scores": (".scoring.plausibility", "choice_scores"),
    "evaluate_choices": (".scoring.plausibility", "evaluate_choices"),
    "fine_tune": (".scoring.plausibility", "fine_tune"),
    "format_copa": (".scoring.plausibility", "format_copa"),
    "format_qa": (".scoring.plausibility", "format_qa"),
    "margin_ranking_loss": (".scoring.plausibility", "margin_ranking_loss"),
    "rank": (".scoring.plausibility", "rank"),
    "restart_summary": (".scoring.plausibility", "restart_summary"),
    "score": (".scoring.plausibility", "score"),
    "score_text": (".scoring.plausibility", "score_text"),
    "score_tokens": (".scoring.plausibility", "score_tokens"),
    "MultipleChoiceExample": (".scoring.datasets", "MultipleChoiceExample"),
    "evaluate_examples": (".scoring.datasets", "evaluate_examples"),
    "load_commonsenseqa": (".scoring.datasets", "load_commonsenseqa"),
    "load_copa": (".scoring.datasets", "load_copa"),
    "Example": (".training.tasks", "Example"),
    "Interactions": (".training.tasks", "Interactions"),
    "Split": (".training.tasks", "Split"),
    "TaskBuilder": (".training.tasks", "TaskBuilder"),
    "TaskDataError": (".training.tasks", "TaskDataError"),
    "load_interactions": (".training.tasks", "load_interactions"),
    "split_interactions": (".training.tasks", "split_interactions"),
    # subpackages along the data flow, and the shared error base class
    "core": (".core", None),
    "items": (".items", None),
    "lm": (".lm", None),
    "training": (".training", None),
    "scoring": (".scoring", None),
    "bench": (".bench", None),
    "cli": (".cli", None),
    "SystemFormatError": (".lm.system", "SystemFormatError"),
    "SidCollisionWarning": (".items.sids", "SidCollisionWarning"),
    "collaborative_embeddings": (".items.collaborative", "collaborative_embeddings"),
    "hybrid_embeddings": (".items.collaborative", "hybrid_embeddings"),
    "sid_embeddings": (".items.collaborative", "sid_embeddings"),
    "read_interactions": (".items.datasets", "read_interactions"),
    "read_codes": (".items.datasets", "read_codes"),
    "build_system": (".training.build", "build_system"),
    "BuildConfig": (".training.build", "BuildConfig"),
    "NeoDataError": (".core.errors", "NeoDataError"),
}

__all__ = [
    "NeoDataError",
    "SystemFormatError",
    "SidCollisionWarning",
    "collaborative_embeddings",
    "hybrid_embeddings",
    "sid_embeddings",
    "read_interactions",
    "read_codes",
    "build_system",
    "BuildConfig",
    "TokenLayout",
    "TypeBands",
    "SidIndex",
    "DecodeState",
    "RowStatus",
    "IndexFormatError",
    "get_bitmask_shape",
    "allocate_token_bitmask",
    "apply_token_bitmask_inplace",
    "bitmask_to_bool",
    "Catalog",
    "CatalogError",
    "Item",
    "LoadReport",
    "Embedder",
    "TfidfSvdEmbedder",
    "HFEmbedder",
    "SentenceTransformerEmbedder",
    "PrecomputedEmbedder",
    "get_embedder",
    "embed_catalog",
    "SemanticIds",
    "SidReport",
    "build_sids",
    "SidVocab",
    "VocabMismatchError",
    "adapt_model",
    "check_model",
    "embeddings_tied",
    "Prompt",
    "PromptBuilder",
    "PromptError",
    "TASKS",
    "TEMPLATES",
    "SidLogitsProcessor",
    "SidMasker",
    "generate",
    "topk_items",
    "recommend",
    "search",
    "describe_user",
    "parse_output",
    "ItemRef",
    "GenerationOutput",
    "NeoSystem",
    "sids_hash",
    "tasks",
    "train",
    "datasets",
    "evaluation",
    "baselines",
    "Example",
    "Interactions",
    "Split",
    "TaskBuilder",
    "TaskDataError",
    "load_interactions",
    "split_interactions",
    "score",
    "score_tokens",
    "score_text",
    "rank",
    "ChoiceText",
    "format_copa",
    "format_qa",
    "margin_ranking_loss",
    "ClassifierHead",
    "MultipleChoiceCollator",
    "MaskedMultipleChoiceCollator",
    "choice_scores",
    "fine_tune",
    "evaluate_choices",
    "restart_summary",
    "MultipleChoiceExample",
    "load_copa",
    "load_commonsenseqa",
    "evaluate_examples",
]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'neo' has no attribute {name!r}") from None
    mod = importlib.import_module(module, __name__)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from .core.errors import NeoDataError
    from .items.collaborative import collaborative_embeddings, hybrid_embeddings, sid_embeddings
    from .items.datasets import read_codes, read_interactions
    from .items.sids import SidCollisionWarning
    from .lm.system import SystemFormatError
    from .training.build import BuildConfig, build_system
    from .core.bitmask import allocate_token_bitmask, apply_token_bitmask_inplace, bitmask_to_bool, get_bitmask_shape
    from .core.index import DecodeState, IndexFormatError, RowStatus, SidIndex
    from .core.layout import TokenLayout, TypeBands
    from .items.catalog import Catalog, CatalogError, Item, LoadReport
    from .items.embeddings import (
        Embedder,
        HFEmbedder,
        PrecomputedEmbedder,
        SentenceTransformerEmbedder,
        TfidfSvdEmbedder,
        embed_catalog,
        get_embedder,
    )
    from .items.sids import SemanticIds, SidReport, build_sids
    from .lm.vocab import SidVocab, VocabMismatchError
    from .lm.adapt import adapt_model, check_model, embeddings_tied
    from .lm.prompts import TASKS, TEMPLATES, Prompt, PromptBuilder, PromptError
    from .lm.processor import SidLogitsProcessor, SidMasker
    from .lm.generation import (
        GenerationOutput,
        ItemRef,
        describe_user,
        generate,
        parse_output,
        recommend,
        search,
        topk_items,
    )
    from .lm.system import NeoSystem, sids_hash
    from . import evaluation
    from .evaluation import baselines
    from .items import datasets
    from .training import tasks, train
    from .scoring.plausibility import (
        ChoiceText,
        ClassifierHead,
        MaskedMultipleChoiceCollator,
        MultipleChoiceCollator,
        choice_scores,
        evaluate_choices,
        fine_tune,
        format_copa,
        format_qa,
        margin_ranking_loss,
        rank,
        restart_summary,
        score,
        score_text,
        score_tokens,
    )
    from .scoring.datasets import MultipleChoiceExample, evaluate_examples, load_commonsenseqa, load_copa
    from .training.tasks import (
        Example,
        Interactions,
        Split,
        TaskBuilder,
        TaskDataError,
        load_interactions,
        split_interactions,
    )
