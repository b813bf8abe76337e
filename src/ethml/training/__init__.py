"""Training tasks off chain: the task spec, training and validation jobs (see docs/training.md)."""

from ethml.training.jobs import (
    Assessment,
    TrainedModel,
    TrainingError,
    TrainingTimeout,
    assess,
    fit_and_claim,
    run_limited,
    sklearn_dataset_csv,
    split_csv,
)
from ethml.training.spec import ESTIMATORS, SpecError, TaskSpec, parse_spec

__all__ = [
    "ESTIMATORS",
    "Assessment",
    "SpecError",
    "TaskSpec",
    "TrainedModel",
    "TrainingError",
    "TrainingTimeout",
    "assess",
    "fit_and_claim",
    "parse_spec",
    "run_limited",
    "sklearn_dataset_csv",
    "split_csv",
]
