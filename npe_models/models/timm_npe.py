"""NPE for any timm classifier: ``add_npe`` and registered ``<arch>_npe16`` ImageNet architectures.

``add_npe`` replaces the classifier found by ``get_classifier()`` with an NPEHead and gives the
model ``forward_train`` / ``npe_estimate``; ``pretrained=True`` on a registered variant loads
the base architecture's weights into backbone and classifier and keeps fresh PEMs.
"""
from __future__ import annotations

import functools
import sys
from typing import Any, Callable, Optional

import timm
from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, get_pretrained_cfg, register_model

from ..npe import NPEClassifierMixin, NPEHead, fill_missing_pem_params, validate_npe_args

__all__ = ["add_npe", "TIMM_NPE_BASES"]

TIMM_NPE_BASES = ("resnet18", "resnet50", "convnext_tiny", "efficientnet_b0", "vit_small_patch16_224")
_NUM_PEMS = 16


class _NPETimmMixin(NPEClassifierMixin):
    """Keeps the PEMs consistent when timm's ``reset_classifier`` replaces the classifier."""

    def reset_classifier(self, num_classes: int, *args: Any, **kwargs: Any) -> None:
        head = self.get_classifier()
        super().reset_classifier(num_classes, *args, **kwargs)
        if isinstance(head, NPEHead):
            _wrap_classifier(self, head.num_pems, head.t, head.alpha)


@functools.lru_cache(maxsize=None)
def _npe_class(base_cls: type) -> type:
    """One NPE subclass per timm model class, created once and reused."""
    return type(f"NPE{base_cls.__name__}", (_NPETimmMixin, base_cls), {"__module__": base_cls.__module__})


def _classifier_path(model: nn.Module) -> str:
    """Dotted path of the module ``get_classifier()`` returns."""
    classifier = model.get_classifier()
    for name, module in model.named_modules():
        if module is classifier and name:
            return name
    raise ValueError(f"could not locate the classifier of {type(model).__name__} among its submodules.")


def _wrap_classifier(model: nn.Module, num_pems: int, t: int, alpha: float) -> None:
    """Replace a Linear / 1x1-conv classifier in place by an NPEHead; Identity (no classes) is left alone."""
    classifier = model.get_classifier()
    if isinstance(classifier, nn.Identity):
        return
    if isinstance(classifier, nn.Conv2d) and classifier.kernel_size == (1, 1):
        pass
    elif not isinstance(classifier, nn.Linear):
        raise TypeError(
            f"add_npe needs a Linear or 1x1-conv classifier, but {type(model).__name__}.get_classifier() is "
            f"{type(classifier).__name__} (distilled or multi-head models are not supported)."
        )
    parent_path, _, attr = _classifier_path(model).rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, NPEHead.from_layer(classifier, num_pems, t=t, alpha=alpha))


def add_npe(model: nn.Module, num_pems: int = 16, t: int = 1, alpha: float = 1.0) -> nn.Module:
    """Turn a timm classifier into an NPE model in place: its classifier becomes an NPEHead with ``num_pems`` PEMs.

    The classifier keeps its weights; the model gains ``forward_train`` and ``npe_estimate``
    and returns NPE-LA logits in eval mode. Returns the same model object.
    """
    validate_npe_args(num_pems, t, alpha)
    if not all(hasattr(model, name) for name in ("get_classifier", "forward_features", "forward_head")):
        raise TypeError(
            f"add_npe needs a timm classifier (get_classifier, forward_features, forward_head); "
            f"got {type(model).__name__}. For torchvision segmentation models use create_segmentation_model."
        )
    if isinstance(model.get_classifier(), NPEHead):
        raise ValueError(f"{type(model).__name__} already has PEMs; add_npe applies once.")
    if not isinstance(model, NPEClassifierMixin):
        model.__class__ = _npe_class(type(model))
    _wrap_classifier(model, num_pems, t, alpha)
    return model


def _base_tag_cfg(base: str) -> tuple[str, dict[str, Any]]:
    """The base architecture's default pretrained tag and cfg, re-used for its NPE variant."""
    cfg = get_pretrained_cfg(base)
    return cfg.tag or "", cfg.to_dict()


def _base_filter_fn(base: str) -> Optional[Callable]:
    """The base family's ``checkpoint_filter_fn`` (timm's checkpoint format conversions), if any."""
    module = sys.modules[timm.models.model_entrypoint(base).__module__]
    return getattr(module, "checkpoint_filter_fn", None)


def _create_npe_variant(base: str, variant: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    npe_t = kwargs.pop("npe_t", 1)
    npe_alpha = kwargs.pop("npe_alpha", 1.0)
    base_filter = _base_filter_fn(base)

    def build(**model_kwargs: Any) -> nn.Module:
        return add_npe(timm.create_model(base, **model_kwargs), _NUM_PEMS, t=npe_t, alpha=npe_alpha)

    def filter_fn(state_dict: dict, model: nn.Module) -> dict:
        if base_filter is not None:
            state_dict = base_filter(state_dict, model)
        return fill_missing_pem_params(state_dict, model)

    return build_model_with_cfg(build, variant, pretrained, pretrained_filter_fn=filter_fn, **kwargs)


def _make_entrypoint(base: str) -> Callable[..., nn.Module]:
    variant = f"{base}_npe{_NUM_PEMS}"

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return _create_npe_variant(base, variant, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = variant
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = f"timm ``{base}`` with {_NUM_PEMS} PEMs; ``pretrained=True`` loads ``{base}`` weights and fresh PEMs."
    return entrypoint


def _variant_cfgs() -> dict[str, dict[str, Any]]:
    cfgs = {}
    for base in TIMM_NPE_BASES:
        tag, cfg = _base_tag_cfg(base)
        cfg.pop("tag", None)
        cfg.pop("architecture", None)
        cfgs[f"{base}_npe{_NUM_PEMS}.{tag}" if tag else f"{base}_npe{_NUM_PEMS}"] = cfg
    return cfgs


default_cfgs = generate_default_cfgs(_variant_cfgs())

for _base in TIMM_NPE_BASES:
    _entrypoint = _make_entrypoint(_base)
    setattr(sys.modules[__name__], _entrypoint.__name__, register_model(_entrypoint))
