"""Semantic segmentation with NPE: run settings, losses, training with frozen parts, evaluation at several alphas,
metrics.

Models live in :mod:`npe_models.models.segmentation`; the STARE data set in :mod:`npe_models.data.stare`;
the command line is ``npe-models`` (:mod:`npe_models.cli`).
"""

from .augment import AUGMENTATIONS, CropAugmentation
from .checkpoint import load_segmentation_model, load_weights_for_pem_training, save_segmentation_weights
from .config import (
    SEGMENTATION_DATASETS,
    SegmentationModelConfig,
    SegmentationRunConfig,
    SegmentationTrainConfig,
    resolve_segmentation_config,
    segmentation_model_config,
    shipped_init,
)
from .evaluation import EVAL_MODES, evaluate_run, evaluate_segmentation, overlay_panels, predict_logits
from .losses import DEFAULT_IGNORE_INDEX, dense_npe_loss, segmentation_loss_terms
from .metrics import SegmentationMetrics, confusion_matrix, format_metrics_table
from .sampling import RandomCropBatches, normalize_images
from .training import freeze_model_parts, has_pems, segmentation_dataset, set_train_mode, train_run, train_segmentation

__all__ = [
    "AUGMENTATIONS",
    "CropAugmentation",
    "DEFAULT_IGNORE_INDEX",
    "EVAL_MODES",
    "RandomCropBatches",
    "SEGMENTATION_DATASETS",
    "SegmentationMetrics",
    "SegmentationModelConfig",
    "SegmentationRunConfig",
    "SegmentationTrainConfig",
    "confusion_matrix",
    "dense_npe_loss",
    "evaluate_run",
    "evaluate_segmentation",
    "format_metrics_table",
    "freeze_model_parts",
    "has_pems",
    "load_segmentation_model",
    "load_weights_for_pem_training",
    "normalize_images",
    "overlay_panels",
    "predict_logits",
    "resolve_segmentation_config",
    "save_segmentation_weights",
    "segmentation_dataset",
    "segmentation_loss_terms",
    "segmentation_model_config",
    "set_train_mode",
    "shipped_init",
    "train_run",
    "train_segmentation",
]
