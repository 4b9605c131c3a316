"""neo: catalog-grounded generation with semantic-ID constrained decoding.

Core objects (C++ backed): :class:`SidIndex` (prefix trie over a catalog's semantic IDs) and
:class:`DecodeState` (batched per-row decoding state that fills packed int32 token bitmasks).
"""

from .bitmask import allocate_token_bitmask, apply_token_bitmask_inplace, bitmask_to_bool, get_bitmask_shape
from .index import DecodeState, IndexFormatError, RowStatus, SidIndex
from .layout import TokenLayout, TypeBands
from .catalog import Catalog, CatalogError, Item, LoadReport
from .embeddings import (
    Embedder,
    HFEmbedder,
    PrecomputedEmbedder,
    SentenceTransformerEmbedder,
    TfidfSvdEmbedder,
    embed_catalog,
    get_embedder,
)
from .sids import SemanticIds, SidReport, build_sids
from .vocab import SidVocab, VocabMismatchError
from .model import adapt_model, check_model, embeddings_tied
from .prompts import TASKS, TEMPLATES, Prompt, PromptBuilder, PromptError
from .processor import SidLogitsProcessor, SidMasker
from .generation import GenerationOutput, ItemRef, describe_user, generate, parse_output, recommend, search, topk_items
from .system import NeoSystem, sids_hash
from . import baselines, datasets, evaluation, tasks, train
from .scoring import (
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
from .scoring_data import MultipleChoiceExample, evaluate_examples, load_commonsenseqa, load_copa
from .tasks import Example, Interactions, Split, TaskBuilder, TaskDataError, load_interactions, split_interactions

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
