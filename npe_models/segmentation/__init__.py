"""Semantic segmentation with NPE: losses, training with frozen parts, evaluation at several alphas, metrics.

Models live in :mod:`npe_models.models.segmentation`; the STARE data set in :mod:`npe_models.data.stare`;
the command line in :mod:`npe_models.segmentation.cli`.
"""
from .checkpoint import load_segmentation_model, load_weights_for_pem_training, save_segmentation_weights
from .config import SegmentationModelConfig, SegmentationTrainConfig
from .evaluation import EVAL_MODES, evaluate_segmentation, overlay_panels, predict_logits
from .losses import DEFAULT_IGNORE_INDEX, dense_npe_loss, segmentation_loss_terms
from .metrics import SegmentationMetrics, confusion_matrix
from .sampling import RandomCropBatches, normalize_images
from .training import freeze_model_parts, has_pems, set_train_mode, train_segmentation

__all__ = [
    "DEFAULT_IGNORE_INDEX",
    "EVAL_MODES",
    "RandomCropBatches",
    "SegmentationMetrics",
    "SegmentationModelConfig",
    "SegmentationTrainConfig",
    "confusion_matrix",
    "dense_npe_loss",
    "evaluate_segmentation",
    "freeze_model_parts",
    "has_pems",
    "load_segmentation_model",
    "load_weights_for_pem_training",
    "normalize_images",
    "overlay_panels",
    "predict_logits",
    "save_segmentation_weights",
    "segmentation_loss_terms",
    "set_train_mode",
    "train_segmentation",
]
