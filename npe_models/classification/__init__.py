"""Training and evaluation on long-tailed CIFAR: recipes, methods (CE, LA, post-hoc LA, cRT, NPE),
the training loop with checkpoints and resumption, evaluation metrics and plots, and top-k
predictions for image files."""

from .checkpoint import build_model, load_checkpoint, load_trained_model, resolve_train_config, save_weights
from .config import METHODS, RECIPES, TrainConfig, num_pems_of, resolve_config
from .evaluate import (
    EvaluationResult,
    classification_metrics,
    evaluate_model,
    evaluate_run,
    format_metrics,
    predict,
    prior_diagnostics,
    summary,
)
from .plots import save_evaluation_plots
from .train import NonFiniteLossError, TrainResult, train

__all__ = [
    "METHODS",
    "RECIPES",
    "EvaluationResult",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "classification_metrics",
    "evaluate_model",
    "evaluate_run",
    "format_metrics",
    "load_checkpoint",
    "load_trained_model",
    "num_pems_of",
    "predict",
    "prior_diagnostics",
    "resolve_config",
    "resolve_train_config",
    "save_evaluation_plots",
    "save_weights",
    "summary",
    "train",
]
