"""neo: catalog-grounded generation with semantic-ID constrained decoding.

Core objects (C++ backed): :class:`SidIndex` (prefix trie over a catalog's semantic IDs) and
:class:`DecodeState` (batched per-row decoding state that fills packed int32 token bitmasks).
"""

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
from .lm.generation import GenerationOutput, ItemRef, describe_user, generate, parse_output, recommend, search, topk_items
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
from .training.tasks import Example, Interactions, Split, TaskBuilder, TaskDataError, load_interactions, split_interactions

__version__ = "0.1.0"

__all__ = [
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
