"""NPE for any timm classifier: ``add_npe``, ``create_npe_variant`` and the registered ``<arch>_npe16`` ImageNet models.

``add_npe`` replaces the classifier found by ``get_classifier()`` with an NPEHead and gives the
model ``forward_train`` / ``npe_estimate``. Every registered ``<arch>_npe<K>`` classifier, the
CIFAR ResNets' included, is built by ``create_npe_variant``: timm's ``<arch>`` with ``add_npe``
applied. ``pretrained=True`` loads the variant's checkpoint, or (the ImageNet variants here) the
base architecture's weights into backbone and classifier, with fresh PEMs.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, Optional

import timm
from timm.models import build_model_with_cfg, generate_default_cfgs, get_pretrained_cfg
from torch import nn

from ..npe import (
    DEFAULT_NPE_ALPHA,
    DEFAULT_NPE_T,
    NPEClassifierMixin,
    NPEHead,
    fill_missing_pem_params,
    validate_npe_args,
)
from ._bundled import checked_pretrained_kwargs
from ._registry import npe_model_name, register_variants

__all__ = ["add_npe", "create_npe_variant", "TIMM_NPE_BASES"]

TIMM_NPE_BASES = ("resnet18", "resnet50", "resnet152", "convnext_tiny", "efficientnet_b0", "vit_small_patch16_224")
# The ``features_only`` cfg each base family's timm create function passes (timm does not expose it);
# ResNets use timm's default (every feature_info entry, by forward hooks). EfficientNet's own
# feature class gives the maps that hooks on its flattened blocks give.
_BASE_FEATURE_CFGS = {
    "convnext_tiny": dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
    "efficientnet_b0": dict(flatten_sequential=True),
    "vit_small_patch16_224": dict(out_indices=3, feature_cls="getter"),
}
_NUM_PEMS = 16


class _NPETimmMixin(NPEClassifierMixin):
    """Keeps the model an NPE model when timm's ``reset_classifier`` replaces the classifier: fresh PEMs beside it."""

    def reset_classifier(self, num_classes: int, *args: Any, **kwargs: Any) -> None:
        head = self.get_classifier()
        if isinstance(head, NPEHead):
            self._pem_settings = (head.num_pems, head.t, head.alpha)
        super().reset_classifier(num_classes, *args, **kwargs)
        _wrap_classifier(self, *self._pem_settings)


@functools.cache
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


def add_npe(
    model: nn.Module, num_pems: int = 16, npe_t: int = DEFAULT_NPE_T, npe_alpha: float = DEFAULT_NPE_ALPHA
) -> nn.Module:
    """Turn a timm classifier into an NPE model in place: its classifier becomes an NPEHead with ``num_pems`` PEMs.

    The classifier keeps its weights; the model gains ``forward_train`` and ``npe_estimate``,
    returns NPE-LA logits in eval mode, and ``reset_classifier`` gives a new classifier fresh
    PEMs. ``npe_t`` / ``npe_alpha`` are the PEM sign convention and NPE-LA strength, named as
    ``timm.create_model`` takes them. Returns the same model object.
    """
    validate_npe_args(num_pems, npe_t, npe_alpha)
    if not all(hasattr(model, name) for name in ("get_classifier", "forward_features", "forward_head")):
        raise TypeError(
            f"add_npe needs a timm classifier (get_classifier, forward_features, forward_head); "
            f"got {type(model).__name__}. For torchvision segmentation models use create_segmentation_model."
        )
    if isinstance(model.get_classifier(), NPEHead):
        raise ValueError(f"{type(model).__name__} already has PEMs; add_npe applies once.")
    if isinstance(model.get_classifier(), nn.Identity):
        raise ValueError(
            f"{type(model).__name__} has no classifier (num_classes=0), so there is nothing to put PEMs beside; "
            "create it with num_classes=N or call model.reset_classifier(N) first."
        )
    return _make_npe_model(model, num_pems, npe_t, npe_alpha)


def _make_npe_model(model: nn.Module, num_pems: int, t: int, alpha: float) -> nn.Module:
    """The NPE class and PEM settings for ``model``, and PEMs beside its classifier if it has one (a
    classifier-less ``num_classes=0`` variant gets them from ``reset_classifier``)."""
    if not isinstance(model, NPEClassifierMixin):
        model.__class__ = _npe_class(type(model))
    model._pem_settings = (num_pems, t, float(alpha))
    _wrap_classifier(model, num_pems, t, alpha)
    return model


def _base_filter_fn(base: str) -> Optional[Callable]:
    """The base family's ``checkpoint_filter_fn`` (timm's checkpoint format conversions), if any."""
    module = sys.modules[timm.models.model_entrypoint(base).__module__]
    return getattr(module, "checkpoint_filter_fn", None)


def create_npe_variant(
    variant: str,
    pretrained: bool = False,
    *,
    base: str,
    num_pems: int,
    npe_t: int = DEFAULT_NPE_T,
    npe_alpha: float = DEFAULT_NPE_ALPHA,
    feature_cfg: Optional[dict[str, Any]] = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the registered ``variant``: ``timm.create_model(base, **kwargs)``, then ``add_npe`` with its settings.

    ``npe_t`` / ``npe_alpha`` are the PEM sign convention and NPE-LA strength under the names
    they take among timm's arguments; ``feature_cfg`` is the base family's ``features_only``
    cfg. ``pretrained=True`` loads the variant's pretrained cfg, converted by the base family's
    checkpoint filter, with fresh PEMs where it has none.
    """
    if pretrained:
        kwargs = checked_pretrained_kwargs(variant, kwargs)
    base_filter = _base_filter_fn(base)

    def build(**model_kwargs: Any) -> nn.Module:
        validate_npe_args(num_pems, npe_t, npe_alpha)
        return _make_npe_model(timm.create_model(base, **model_kwargs), num_pems, npe_t, npe_alpha)

    def filter_fn(state_dict: dict, model: nn.Module) -> dict:
        if base_filter is not None:
            state_dict = base_filter(state_dict, model)
        return fill_missing_pem_params(state_dict, model)

    return build_model_with_cfg(
        build, variant, pretrained, pretrained_filter_fn=filter_fn, feature_cfg=dict(feature_cfg or {}), **kwargs
    )


def _variant_cfgs() -> dict[str, dict[str, Any]]:
    """Each ImageNet variant takes its base's default pretrained tag and cfg (the base's weights, fresh PEMs)."""
    cfgs = {}
    for base in TIMM_NPE_BASES:
        cfg = get_pretrained_cfg(base).to_dict()
        tag = cfg.pop("tag", None)
        cfg.pop("architecture", None)
        cfgs[".".join(filter(None, (npe_model_name(base, _NUM_PEMS), tag)))] = cfg
    return cfgs


def _imagenet_doc(name: str, base: str, num_pems: int, feature_cfg: dict[str, Any]) -> str:
    return f"timm ``{base}`` with {num_pems} PEMs; ``pretrained=True`` loads ``{base}`` weights and fresh PEMs."


default_cfgs = generate_default_cfgs(_variant_cfgs())

register_variants(
    {
        npe_model_name(base, _NUM_PEMS): dict(
            base=base, num_pems=_NUM_PEMS, feature_cfg=_BASE_FEATURE_CFGS.get(base, {})
        )
        for base in TIMM_NPE_BASES
    },
    create_npe_variant,
    doc=_imagenet_doc,
)
