"""The language model side: SID vocabulary in a tokenizer, model adaptation, prompts, the logits processor,
generation and beam search, and the saved system directory."""

from .adapt import adapt_model, check_model, embeddings_tied
from .generation import GenerationOutput, ItemRef, describe_user, generate, parse_output, recommend, search, topk_items
from .processor import SidLogitsProcessor, SidMasker
from .prompts import TASKS, TEMPLATES, Prompt, PromptBuilder, PromptError
from .system import NeoSystem, sids_hash
from .vocab import SidVocab, VocabMismatchError

__all__ = ["SidVocab", "VocabMismatchError", "adapt_model", "check_model", "embeddings_tied", "Prompt",
           "PromptBuilder", "PromptError", "TASKS", "TEMPLATES", "SidLogitsProcessor", "SidMasker", "generate",
           "topk_items", "recommend", "search", "describe_user", "parse_output", "ItemRef", "GenerationOutput",
           "NeoSystem", "sids_hash"]
