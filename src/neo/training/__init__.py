"""Training: task builders (alignment and instruction tasks) and staged training on Hugging Face ``Trainer``."""

from . import tasks, train
from .tasks import Example, Interactions, Split, TaskBuilder, TaskDataError, load_interactions, split_interactions
from .train import align, instruct, stage0

__all__ = ["tasks", "train", "Example", "Interactions", "Split", "TaskBuilder", "TaskDataError", "load_interactions",
           "split_interactions", "align", "instruct", "stage0"]
