"""Model families; importing a module registers its models with timm (or torchvision)."""
from .cifar_resnet import CifarResNet
from .timm_npe import add_npe

__all__ = ["CifarResNet", "add_npe"]
