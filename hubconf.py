"""torch.hub entrypoints: every model npe-models registers, as ``fn(pretrained=False, **kwargs)``.

    model = torch.hub.load("path/to/npe-models", "resnet32_npe16", source="local", num_classes=10)

Classifiers are built by ``timm.create_model(name, pretrained=pretrained, **kwargs)``, so every
timm argument works (``num_classes``, ``npe_alpha``, ``pretrained_cfg_overlay`` ...).
"""
import timm as _timm

import npe_models as _npe_models

dependencies = ["torch", "torchvision", "timm", "huggingface_hub", "safetensors"]


def _classifier_entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs):
        return _timm.create_model(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = (
        f"{_timm.models.model_entrypoint(name).__doc__.strip()}\n\n"
        f"Same as ``timm.create_model({name!r}, pretrained=pretrained, **kwargs)`` after ``import npe_models``."
    )
    return entrypoint


for _name in _npe_models.list_classifiers():
    globals()[_name] = _classifier_entrypoint(_name)
