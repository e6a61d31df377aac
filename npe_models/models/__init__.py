"""Model families, one module each; importing a module registers its models with timm (or torchvision).

``_registry`` holds what the families share: the ``<arch>_npe<K>`` name parser and
``register_variants``; ``timm_npe`` the one NPE mechanism for classifiers (``add_npe``).
"""
import timm

from ._registry import npe_model_name, parse_npe_name, register_variants
from .cifar_resnet import CifarResNet
from .timm_npe import add_npe
from . import segmentation  # noqa: F401  (importing registers the segmentation models with torchvision)

__all__ = ["CifarResNet", "add_npe", "list_classifiers", "npe_model_name", "parse_npe_name", "register_variants"]


def list_classifiers(npe_only: bool = False) -> list[str]:
    """Names of the timm classifiers this package registers (optionally only those with PEMs)."""
    names = [name for name in timm.list_models() if timm.models.model_entrypoint(name).__module__.startswith(__package__)]
    return [name for name in names if parse_npe_name(name)[1]] if npe_only else names
