"""torch.hub entrypoints: every model npe-models registers, as ``fn(pretrained=False, **kwargs)``.

    model = torch.hub.load("path/to/npe-models", "resnet32_npe16", source="local", num_classes=10)
    model = torch.hub.load("path/to/npe-models", "unet_fcn_npe1", source="local", pem_type="fcn")

Classifiers are built by ``timm.create_model(name, pretrained=pretrained, **kwargs)``, so every
timm argument works (``num_classes``, ``npe_alpha``, ``pretrained_cfg`` ...): ``resnet32_npe16`` with
``pretrained=True`` is our CIFAR-10-LT checkpoint (``npe-models list --pretrained`` lists them all).
Segmentation models are built by ``npe_models.create_segmentation_model(name, **kwargs)``;
``pretrained=True`` there loads the base architecture's default weights: torchvision's, with fresh
PEMs, or for ``unet_fcn_npe1`` the STARE network trained here with its trained ``fcn`` PEM.
"""

import timm as _timm
import torchvision as _torchvision

import npe_models as _npe_models
from npe_models.loading import require_pretrained_weights as _require_pretrained_weights
from npe_models.models.segmentation import list_segmentation_models as _list_segmentation_models

dependencies = ["torch", "torchvision", "timm", "huggingface_hub", "safetensors"]


def _named(entrypoint, name: str, doc: str):
    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = doc
    return entrypoint


def _classifier_entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs):
        if pretrained and not {"pretrained_cfg", "pretrained_cfg_overlay"} & kwargs.keys():
            _require_pretrained_weights(name)  # a clear error instead of timm's warning and random weights
        return _timm.create_model(name, pretrained=pretrained, **kwargs)

    doc = _timm.models.model_entrypoint(name).__doc__.strip()
    return _named(
        entrypoint, name, f"{doc}\n\nSame as ``timm.create_model({name!r}, pretrained=pretrained, **kwargs)``."
    )


def _segmentation_entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs):
        if pretrained:
            kwargs.setdefault("weights", "DEFAULT")
        return _npe_models.create_segmentation_model(name, **kwargs)

    doc = _torchvision.models.get_model_builder(name).__doc__.strip()
    return _named(
        entrypoint,
        name,
        f"{doc}\n\nSame as ``npe_models.create_segmentation_model({name!r}, **kwargs)``; ``pretrained=True`` adds "
        "``weights='DEFAULT'`` (the base model's default weights: torchvision's with fresh PEMs; UNet-FCN: ours).",
    )


for _name in _npe_models.list_classifiers():
    globals()[_name] = _classifier_entrypoint(_name)
for _name in _list_segmentation_models():
    globals()[_name] = _segmentation_entrypoint(_name)
