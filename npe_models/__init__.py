"""Neural Prior Estimation (NPE) for timm and torchvision models.

Importing the package registers every model with timm (and torchvision for segmentation).
"""

from ._version import __version__
from .losses import logit_adjusted_cross_entropy, one_way_logistic_loss, one_way_logistic_loss_from_true_class
from .models import add_npe, list_classifiers, npe_model_name, parse_npe_name
from .models.segmentation import create_segmentation_model
from .npe import NPEClassifierMixin, NPEHead, NPEOutput, has_pems, npe_heads, set_alpha

__all__ = [
    "NPEClassifierMixin",
    "NPEHead",
    "NPEOutput",
    "add_npe",
    "create_segmentation_model",
    "has_pems",
    "list_classifiers",
    "logit_adjusted_cross_entropy",
    "npe_heads",
    "npe_model_name",
    "one_way_logistic_loss",
    "one_way_logistic_loss_from_true_class",
    "parse_npe_name",
    "set_alpha",
    "__version__",
]
