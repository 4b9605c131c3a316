"""Plausibility scoring with the language model's own head (both directions, causal and masked LMs), margin
ranking fine-tuning, and the multiple-choice datasets it is evaluated on (COPA, CommonsenseQA)."""

from .datasets import (
    MultipleChoiceExample,
    build_description_choice_task,
    evaluate_examples,
    load_commonsenseqa,
    load_copa,
)
from .plausibility import (
    ChoiceText,
    ClassifierHead,
    MaskedMultipleChoiceCollator,
    MultipleChoiceCollator,
    accuracy,
    choice_scores,
    encode_pair,
    evaluate_choices,
    fine_tune,
    format_copa,
    format_qa,
    margin_ranking_loss,
    multiple_choice_loss,
    rank,
    restart_summary,
    score,
    score_text,
    score_tokens,
    sequence_logprobs,
)

__all__ = [
    "score",
    "score_tokens",
    "score_text",
    "rank",
    "ChoiceText",
    "format_copa",
    "format_qa",
    "encode_pair",
    "sequence_logprobs",
    "margin_ranking_loss",
    "multiple_choice_loss",
    "ClassifierHead",
    "MultipleChoiceCollator",
    "MaskedMultipleChoiceCollator",
    "choice_scores",
    "fine_tune",
    "evaluate_choices",
    "accuracy",
    "restart_summary",
    "ScoringTrainer",
    "MultipleChoiceExample",
    "load_copa",
    "load_commonsenseqa",
    "build_description_choice_task",
    "evaluate_examples",
]


def __getattr__(name: str):
    # ScoringTrainer subclasses transformers.Trainer; created on first access (see plausibility.py).
    if name == "ScoringTrainer":
        from . import plausibility

        return plausibility.ScoringTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
