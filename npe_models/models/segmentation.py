"""NPE versions of torchvision's segmentation models and of a UNet with an FCN head.

Names follow ``<arch>_npe<K>`` (``deeplabv3_resnet50_npe16``: 16 PEMs). The ``_npe1`` and
``_npe16`` variants of every architecture in ``SEGMENTATION_ARCHITECTURES`` are registered with
``torchvision.models.get_model`` / ``list_models``; ``create_segmentation_model`` builds any K,
any PEM type, and the plain base models (the baselines). PEM types:

- ``linear``: a 1x1 conv on the features that feed the final 1x1 classifier conv (an
  :class:`~npe_models.npe.NPEHead`); ``timm.utils.reparameterize_model`` folds it into that
  conv, before upsampling. LR-ASPP's classifier is two 1x1 convs whose outputs are summed
  (``low_classifier`` on low-level features, ``high_classifier`` on the attention branch),
  i.e. one 1x1 conv on the concatenation of both feature maps; its linear PEMs are the same
  thing, so each of the two convs carries K PEM halves whose outputs are summed, and both fold.
- ``fcn``: a single-layer FCN (3x3 conv, ReLU, dropout, 1x1 conv) on the backbone features the
  decode head reads (LR-ASPP: its high-level features), as the paper's ``FCNHead`` PEM.
- ``replica``: a copy of the decode head with its BatchNorm layers removed (the paper's ASPP
  and UPerNet PEMs). ``fcn`` and ``replica`` PEMs are not linear in the classifier's features:
  reparameterising keeps them and warns once, with :class:`PEMNotMergedWarning`.

Like torchvision's builders, nothing is downloaded unless asked: ``weights`` (the base
model's torchvision weights; PEMs stay fresh) and ``weights_backbone`` both default to None.
The UNet-FCN family itself (network and weights) is in :mod:`npe_models.models.unet`.
``UNet_FCN_Weights`` are weights trained by npe-models and bundled with the package (STARE):
``torchvision.models.get_model("unet_fcn_npe1", weights="DEFAULT")`` loads them offline.
"""

from __future__ import annotations

import copy
import functools
import warnings
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import Weights, WeightsEnum
from torchvision.models import segmentation as tv_segmentation
from torchvision.models.segmentation.lraspp import LRASPP

from ..npe import (
    DEFAULT_NPE_T,
    PEM_INIT_STD,
    AlphaOwnerMixin,
    NPEHead,
    PEMNetworks,
    estimate_sign,
    npe_heads,
    validate_npe_args,
)
from ._registry import npe_model_name, parse_npe_name, register_variants
from .unet import UNet_FCN_Weights, UNetBackbone, bundled_segmentation_weights, unet_fcn, weights_settings

__all__ = [
    "DEFAULT_SEGMENTATION_ALPHA",
    "PEM_TYPES",
    "SEGMENTATION_ARCHITECTURES",
    "DensePEMs",
    "NPESegmentationMixin",
    "NPESegmentationOutput",
    "PEMNotMergedWarning",
    "UNetBackbone",
    "UNet_FCN_Weights",
    "bundled_segmentation_weights",
    "add_segmentation_npe",
    "create_segmentation_model",
    "is_segmentation_model",
    "list_segmentation_models",
    "parse_segmentation_model_name",
    "register_segmentation_family",
    "unet_fcn",
]

# dense heads need alpha < 1 (0.1-0.2 in the paper): BatchNorm in the main head already rescaled rare classes
DEFAULT_SEGMENTATION_ALPHA = 0.1
PEM_TYPES = ("linear", "fcn", "replica")
REGISTERED_NUM_PEMS = (1, 16)


class PEMNotMergedWarning(UserWarning):
    """``reparameterize_model`` met PEMs (``fcn`` / ``replica``) that cannot be folded into the classifier."""


class NPESegmentationOutput(NamedTuple):
    """What ``forward_train`` returns for a dense model.

    ``logits`` are the main logits ``(B, C, H, W)`` upsampled to the input size, ``pem_logits``
    the PEM logits ``(K, B, C, h, w)`` at the resolution the PEMs produce (pass them to
    ``npe_models.segmentation.dense_npe_loss``, which upsamples only each pixel's true class),
    and ``aux_logits`` the auxiliary head's upsampled logits, or None without one.
    """

    logits: Tensor
    pem_logits: Tensor
    aux_logits: Optional[Tensor]


def _upsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize to ``size`` exactly as torchvision's segmentation models do."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _init_pem_convs(module: nn.Module) -> None:
    """Every conv of a PEM, transposed ones too, drawn from N(0, 0.001) with zero bias, as the paper has it."""
    for conv in module.modules():
        if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(conv.weight, std=PEM_INIT_STD)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)


def _with_bias(conv: nn.Conv2d) -> nn.Conv2d:
    """A conv configured like ``conv`` but with a bias (it takes over the role of a removed BatchNorm's shift)."""
    return nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )


def _conv_feeding(sequence: nn.Sequential, index: int) -> Optional[tuple[nn.Module, str]]:
    """``(parent, name)`` of the conv whose output ``sequence[index]`` reads: ``sequence[index - 1]``, or the last
    module of the ``nn.Sequential`` there (smp's ``SeparableConv2d``: depthwise then pointwise conv); else None."""
    parent, name = sequence, str(index - 1)
    while isinstance(getattr(parent, name), nn.Sequential) and len(getattr(parent, name)):
        parent = getattr(parent, name)
        name = str(len(parent) - 1)
    return (parent, name) if isinstance(getattr(parent, name), nn.Conv2d) else None


def _replica_head(head: nn.Module) -> nn.Module:
    """A freshly initialised copy of a decode head without BatchNorm: each conv -> BN pair becomes one biased conv."""
    replica = copy.deepcopy(head)
    for sequence in [m for m in replica.modules() if isinstance(m, nn.Sequential)]:
        for index in range(1, len(sequence)):
            conv = _conv_feeding(sequence, index) if isinstance(sequence[index], nn.BatchNorm2d) else None
            if conv is not None:
                setattr(*conv, _with_bias(getattr(*conv)))
                sequence[index] = nn.Identity()
    leftover = [name for name, m in replica.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if leftover:
        raise ValueError(
            f"cannot build a 'replica' PEM of {type(head).__name__}: BatchNorm layers {leftover} do not directly "
            "follow a conv inside an nn.Sequential. Use pem_type='fcn' or 'linear' for this head."
        )
    _init_pem_convs(replica)
    return replica


def _fcn_pem(in_channels: int, channels: int, num_classes: int) -> nn.Sequential:
    """The paper's single-layer FCN PEM: 3x3 conv, ReLU, dropout, 1x1 classifier conv; no BatchNorm."""
    pem = nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Conv2d(channels, num_classes, 1),
    )
    _init_pem_convs(pem)
    return pem


class DensePEMs(PEMNetworks):
    """K non-linear PEM heads (``fcn`` or ``replica``) applied to the same input; returns ``(K, B, C, h, w)``."""

    def __init__(self, heads: list[nn.Module], pem_type: str) -> None:
        super().__init__(heads)
        self.pem_type = pem_type

    def reparameterize(self) -> None:
        """Called by ``reparameterize_model``: these PEMs cannot be folded, so they stay and a warning says why."""
        warnings.warn(
            f"{len(self)} '{self.pem_type}' PEM(s) kept: they are non-linear networks, not linear maps of the "
            "classifier's input features, so reparameterize_model cannot fold them into the final 1x1 conv. "
            "The model still returns NPE-LA logits but runs the PEMs at inference; use pem_type='linear' "
            "for a model that costs the same as the plain one after merging.",
            PEMNotMergedWarning,
            stacklevel=2,
        )

    def extra_repr(self) -> str:
        return f"pem_type={self.pem_type}"


class NPESegmentationMixin(AlphaOwnerMixin):
    """NPE for a torchvision segmentation model: PEMs, ``forward_train``, ``npe_estimate`` and NPE-LA in eval mode.

    Training-mode ``forward`` is the base model's (main logits in ``"out"``); eval-mode ``forward``
    returns NPE-LA logits ``z - alpha * eta`` in ``"out"``, upsampled to the input size, with
    ``"aux"`` unchanged where the base model has an auxiliary head. The family mixins below say
    where the PEMs read from and where linear PEMs sit (``_classifier_input``, ``_fcn_pem_input``,
    ``_final_convs``, ``_linear_logits``).
    """

    pem_type: str
    num_pems: int
    t: int
    pems: Optional[DensePEMs]

    def _attach_pems(self, num_pems: int, pem_type: str, alpha: float, t: int) -> None:
        self.pem_type, self.num_pems, self.t, self._alpha = pem_type, num_pems, t, float(alpha)
        if pem_type == "linear":
            self.pems = None
            for parent, name in self._final_convs():
                setattr(parent, name, NPEHead.from_layer(getattr(parent, name), num_pems, t=t, alpha=alpha))
            return
        final = getattr(*self._final_convs()[-1])
        if pem_type == "fcn":
            in_channels = next(m for m in self.classifier.modules() if isinstance(m, nn.Conv2d)).in_channels
            heads = [_fcn_pem(in_channels, final.in_channels, final.out_channels) for _ in range(num_pems)]
        else:
            heads = [_replica_head(self.classifier) for _ in range(num_pems)]
        self.pems = DensePEMs(heads, pem_type).to(final.weight.device)

    @property
    def alpha(self) -> float:
        """NPE-LA strength used by eval-mode ``forward``; ``forward_logits_and_estimate`` allows any alpha."""
        return self._alpha

    @alpha.setter
    def alpha(self, value: float) -> None:
        validate_npe_args(self.num_pems, self.t, value)
        if self.pem_type == "linear" and not self.npe_heads():
            raise RuntimeError("alpha is folded into the classifier after reparameterize_model; set it before merging.")
        self._alpha = float(value)
        for head in self.npe_heads():
            head.alpha = float(value)

    @property
    def sign(self) -> float:
        """(-1)^t: maps PEM outputs to the log-prior estimate."""
        return estimate_sign(self.t)

    def npe_heads(self) -> list[NPEHead]:
        """The NPEHeads carrying linear PEMs (empty for fcn/replica PEMs and after merging)."""
        return npe_heads(self)

    def _check_has_pems(self) -> None:
        if self.pem_type == "linear" and not self.npe_heads():
            raise RuntimeError(
                f"{type(self).__name__} has no PEMs left: reparameterize_model folded them into the classifier. "
                "Train or estimate priors with the unmerged model."
            )

    def _main_and_pem_logits(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Backbone features, main logits and PEM logits ``(K, B, C, h, w)`` at the heads' resolutions."""
        self._check_has_pems()
        features = self.backbone(x)
        if self.pems is None:
            logits, pem_logits = self._linear_logits(features)
        else:
            logits = self.classifier(self._classifier_input(features))
            pem_input = self._fcn_pem_input(features) if self.pem_type == "fcn" else self._classifier_input(features)
            pem_logits = self.pems(pem_input)
        return features, logits, pem_logits

    def _aux_logits(self, features: dict[str, Tensor], size: tuple[int, int]) -> Optional[Tensor]:
        aux_classifier = getattr(self, "aux_classifier", None)
        return None if aux_classifier is None else _upsample(aux_classifier(features["aux"]), size)

    def forward_train(self, x: Tensor) -> NPESegmentationOutput:
        """Main logits (upsampled), PEM logits (PEM resolution) and aux logits, for ``CE + dense_npe_loss``."""
        size = x.shape[-2:]
        features, logits, pem_logits = self._main_and_pem_logits(x)
        return NPESegmentationOutput(_upsample(logits, size), pem_logits, self._aux_logits(features, size))

    def forward_logits_and_estimate(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Main logits ``z`` and estimate ``eta``, both ``(B, C, H, W)``: NPE-LA at any alpha is ``z - alpha * eta``."""
        size = x.shape[-2:]
        _, logits, pem_logits = self._main_and_pem_logits(x)
        return _upsample(logits, size), _upsample(pem_logits.mean(0) * self.sign, size)

    def npe_estimate(self, x: Tensor) -> Tensor:
        """The per-pixel log-prior estimate ``eta`` ``(B, C, H, W)`` for images ``x``."""
        return self.forward_logits_and_estimate(x)[1]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """torchvision's ``{"out", "aux"}``: main logits in training mode, NPE-LA logits in eval mode."""
        if self.training or self.pems is None:
            return super().forward(x)  # linear PEMs: each NPEHead applies NPE-LA itself in eval mode
        size = x.shape[-2:]
        features, logits, pem_logits = self._main_and_pem_logits(x)
        eta = pem_logits.mean(0) * self.sign
        result = OrderedDict(out=_upsample(logits, size) - self._alpha * _upsample(eta, size))
        aux = self._aux_logits(features, size)
        if aux is not None:
            result["aux"] = aux
        return result


class _NPESimpleSegmentation(NPESegmentationMixin):
    """DeepLabV3, FCN and the UNet: ``classifier`` is an ``nn.Sequential`` ending in the 1x1 classifier conv."""

    def _classifier_input(self, features: dict[str, Tensor]) -> Tensor:
        return features["out"]

    def _fcn_pem_input(self, features: dict[str, Tensor]) -> Tensor:
        return features["out"]

    def _final_convs(self) -> list[tuple[nn.Module, str]]:
        return [(self.classifier, str(len(self.classifier) - 1))]

    def _linear_logits(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        *body, final = self.classifier  # Sequential subclasses (DeepLabHead) cannot be sliced
        hidden = features["out"]
        for layer in body:
            hidden = layer(hidden)
        return final.forward_train(hidden)


class _NPELRASPP(NPESegmentationMixin):
    """LR-ASPP: the classifier reads the backbone's ``low`` and ``high`` features and sums two 1x1 convs."""

    def _classifier_input(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return features

    def _fcn_pem_input(self, features: dict[str, Tensor]) -> Tensor:
        return features["high"]

    def _final_convs(self) -> list[tuple[nn.Module, str]]:
        return [(self.classifier, "low_classifier"), (self.classifier, "high_classifier")]

    def _linear_logits(self, features: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        head, low, high = self.classifier, features["low"], features["high"]
        attention = _upsample(head.cbr(high) * head.scale(high), low.shape[-2:])  # as LRASPPHead.forward
        low_logits, low_pems = head.low_classifier.forward_train(low)
        high_logits, high_pems = head.high_classifier.forward_train(attention)
        return low_logits + high_logits, low_pems + high_pems


class _Family(NamedTuple):
    """A family of segmentation models from another library: which classes it takes and its NPE mixin."""

    accepts: Callable[[type], bool]
    mixin: type


_FAMILIES: list[_Family] = []


def _family_of(base_cls: type) -> Optional[type]:
    """The NPE mixin of a registered family (``register_segmentation_family``) that takes ``base_cls``, if any."""
    return next((family.mixin for family in _FAMILIES if family.accepts(base_cls)), None)


@functools.cache
def _npe_class(base_cls: type) -> type:
    """One NPE subclass per segmentation class, created once and reused."""
    family = _family_of(base_cls)
    if family is None:
        family = _NPELRASPP if issubclass(base_cls, LRASPP) else _NPESimpleSegmentation
    return type(f"NPE{base_cls.__name__}", (family, base_cls), {"__module__": __name__})


def add_segmentation_npe(
    model: nn.Module,
    num_pems: int = 1,
    pem_type: str = "linear",
    npe_alpha: float = DEFAULT_SEGMENTATION_ALPHA,
    npe_t: int = DEFAULT_NPE_T,
) -> nn.Module:
    """Give a torchvision segmentation model (DeepLabV3, FCN, LR-ASPP, or one built alike) ``num_pems`` PEMs in place.

    The classifier keeps its weights; the model gains ``forward_train``, ``npe_estimate`` and
    ``forward_logits_and_estimate``, and returns NPE-LA logits in eval mode (strength ``npe_alpha``, PEM
    sign convention ``npe_t``). Returns the same object.
    """
    validate_npe_args(num_pems, npe_t, npe_alpha)
    if pem_type not in PEM_TYPES:
        raise ValueError(f"pem_type must be one of {PEM_TYPES}, got {pem_type!r}.")
    if isinstance(model, NPESegmentationMixin):
        raise ValueError(f"{type(model).__name__} already has PEMs; add_segmentation_npe applies once.")
    simple = isinstance(model, tv_segmentation._utils._SimpleSegmentationModel) and isinstance(
        getattr(model, "classifier", None), nn.Sequential
    )
    if not (simple or isinstance(model, LRASPP) or _family_of(type(model)) is not None):
        raise TypeError(
            "add_segmentation_npe needs a torchvision segmentation model (DeepLabV3, FCN or LRASPP) whose "
            f"classifier ends in a 1x1 conv; got {type(model).__name__}."
        )
    model.__class__ = _npe_class(type(model))
    model._attach_pems(num_pems, pem_type, npe_alpha, npe_t)
    return model


@dataclass(frozen=True)
class _Architecture:
    builder: Callable[..., nn.Module]
    weights_enum: type[WeightsEnum]


SEGMENTATION_ARCHITECTURES: dict[str, _Architecture] = {
    "deeplabv3_resnet50": _Architecture(tv_segmentation.deeplabv3_resnet50, tv_segmentation.DeepLabV3_ResNet50_Weights),
    "deeplabv3_mobilenet_v3_large": _Architecture(
        tv_segmentation.deeplabv3_mobilenet_v3_large, tv_segmentation.DeepLabV3_MobileNet_V3_Large_Weights
    ),
    "fcn_resnet50": _Architecture(tv_segmentation.fcn_resnet50, tv_segmentation.FCN_ResNet50_Weights),
    "lraspp_mobilenet_v3_large": _Architecture(
        tv_segmentation.lraspp_mobilenet_v3_large, tv_segmentation.LRASPP_MobileNet_V3_Large_Weights
    ),
    "unet_fcn": _Architecture(unet_fcn, UNet_FCN_Weights),
}


_RESOLVERS: list[tuple[Callable[[str], Optional[_Architecture]], str]] = []


def register_segmentation_family(
    accepts: Callable[[type], bool],
    mixin: type,
    *,
    resolve: Optional[Callable[[str], Optional[_Architecture]]] = None,
    name_form: str = "",
) -> None:
    """Plug another library's segmentation models into ``add_segmentation_npe`` and ``create_segmentation_model``.

    ``accepts(model_class)`` says which models ``mixin`` (an ``NPESegmentationMixin``) gives PEMs;
    ``resolve(arch)`` builds architectures by a name pattern (``name_form`` documents it in errors).
    Fixed names are entries of ``SEGMENTATION_ARCHITECTURES``. Used by :mod:`npe_models.models.smp`.
    """
    _FAMILIES.append(_Family(accepts, mixin))
    if resolve is not None:
        _RESOLVERS.append((resolve, name_form))


def _architecture(arch: str) -> Optional[_Architecture]:
    """``arch``'s entry: a fixed one of ``SEGMENTATION_ARCHITECTURES`` or one a registered family resolves."""
    if arch in SEGMENTATION_ARCHITECTURES:
        return SEGMENTATION_ARCHITECTURES[arch]
    return next((found for resolve, _ in _RESOLVERS if (found := resolve(arch)) is not None), None)


def _build_base(arch: str, **kwargs: Any) -> nn.Module:
    """The plain base model; ``kwargs`` always name ``weights_backbone`` (torchvision's default downloads)."""
    if kwargs.get("aux_loss") is None:
        kwargs.pop("aux_loss", None)  # lraspp rejects the argument; the others treat None as False
    return _architecture(arch).builder(**kwargs)


def parse_segmentation_model_name(name: str) -> tuple[str, Optional[int]]:
    """Split ``<arch>_npe<K>`` into ``(arch, K)``; a bare architecture gives ``(arch, None)``."""
    arch, num_pems = parse_npe_name(name)
    if _architecture(arch) is None or "." in name:
        forms = "".join(f", or {form}" for _, form in _RESOLVERS if form)
        raise ValueError(
            f"unknown segmentation model {name!r}; expected one of {sorted(SEGMENTATION_ARCHITECTURES)}{forms}, "
            "optionally followed by _npe<K> (e.g. deeplabv3_resnet50_npe16)."
        )
    return arch, num_pems or None


def is_segmentation_model(name: str) -> bool:
    """Whether ``name`` is a segmentation model built here (``unet_fcn``, ``deeplabv3_resnet50_npe16``, ...)."""
    try:
        parse_segmentation_model_name(name)
    except (TypeError, ValueError):
        return False
    return True


def _trained_pems(weights: Any) -> int:
    """How many trained PEMs a weights entry carries (0: torchvision's and our baselines)."""
    return getattr(weights, "meta", {}).get("num_pems", 0)


def _npe_form(
    arch: str,
    weights: Weights,
    num_pems: int,
    pem_type: Optional[str],
    npe_alpha: float,
    npe_t: int,
    **kwargs: Any,
) -> nn.Module:
    """``arch`` with the trained PEMs of ``weights`` (which fix their count and type) and its network."""
    meta = weights.meta
    if num_pems != meta["num_pems"] or pem_type not in (None, meta["pem_type"]):
        baselines = [member.name for member in type(weights) if not _trained_pems(member)]
        raise ValueError(
            f"{meta['name']} holds {meta['num_pems']} trained '{meta['pem_type']}' PEM(s); build it as "
            f"{npe_model_name(arch, meta['num_pems'])} with pem_type={meta['pem_type']!r} (or leave pem_type unset), "
            f"or take weights={baselines[0]!r} (the network alone) for fresh PEMs."
        )
    model = add_segmentation_npe(
        _build_base(arch, **weights_settings(weights, kwargs)),
        num_pems,
        pem_type=meta["pem_type"],
        npe_alpha=npe_alpha,
        npe_t=npe_t,
    )
    model.load_state_dict(weights.get_state_dict())
    return model


def _verified_weights(arch: str, weights: Any) -> Optional[Weights]:
    """``weights`` as a member of ``arch``'s weights enum (given as a member or its name); a clear error otherwise."""
    enum = _architecture(arch).weights_enum
    try:
        return enum.verify(weights)
    except (KeyError, TypeError):
        raise ValueError(
            f"{weights!r} is not a weights entry of {arch}; choose one of {[member.name for member in enum]} "
            f"(torchvision.models.get_model_weights('{npe_model_name(arch, 1)}')) or None."
        ) from None


def create_segmentation_model(
    name: str,
    *,
    num_classes: Optional[int] = None,
    num_pems: Optional[int] = None,
    pem_type: Optional[str] = None,
    npe_alpha: float = DEFAULT_SEGMENTATION_ALPHA,
    npe_t: int = DEFAULT_NPE_T,
    weights: Any = None,
    weights_backbone: Any = None,
    aux_loss: Optional[bool] = None,
    progress: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Build a segmentation model by name: ``<arch>_npe<K>``, or ``<arch>`` with ``num_pems`` (plain when None / 0).

    ``weights`` / ``weights_backbone`` take the base architecture's weights (an enum member or its
    name, e.g. ``"IMAGENET1K_V1"``); the PEMs stay fresh (``pem_type``, default ``linear``) unless
    the weights hold trained PEMs (``UNet_FCN_Weights.STARE_NPE1_FCN``), which are loaded. Both
    default to None, so nothing is downloaded unless asked. Extra keyword arguments go to the
    base builder (``unet_fcn``: ``base_channels``, ``num_stages``).
    """
    arch, named_pems = parse_segmentation_model_name(name)
    if named_pems is not None and num_pems is not None and num_pems != named_pems:
        raise ValueError(f"{name!r} has {named_pems} PEMs by name but num_pems={num_pems}; pass one or the other.")
    num_pems = named_pems if named_pems is not None else num_pems
    weights = _verified_weights(arch, weights)
    settings = dict(weights_backbone=weights_backbone, num_classes=num_classes, aux_loss=aux_loss, progress=progress)
    if num_pems and _trained_pems(weights):
        return _npe_form(arch, weights, num_pems, pem_type, npe_alpha, npe_t, **settings, **kwargs)
    model = _build_base(arch, weights=weights, **settings, **kwargs)
    if not num_pems:
        return model
    return add_segmentation_npe(model, num_pems, pem_type=pem_type or "linear", npe_alpha=npe_alpha, npe_t=npe_t)


def list_segmentation_models() -> list[str]:
    """Names registered with torchvision by this module (``<arch>_npe<K>``)."""
    return sorted(npe_model_name(arch, k) for arch in SEGMENTATION_ARCHITECTURES for k in REGISTERED_NUM_PEMS)


def _builder_doc(name: str) -> str:
    arch, num_pems = parse_npe_name(name)
    return (
        f"torchvision-style builder for ``{arch}`` with {num_pems} PEM(s) (``pem_type`` linear/fcn/replica); "
        "``weights`` loads the base model's weights and keeps fresh PEMs (or trained ones, where the weights hold "
        "them); nothing downloads by default."
    )


def _builder_annotations(name: str) -> dict[str, Any]:
    """The base architecture's weights enum on ``weights``: ``torchvision.models.get_model_weights(name)`` reads it."""
    return {"weights": Optional[SEGMENTATION_ARCHITECTURES[parse_npe_name(name)[0]].weights_enum]}


# the name says everything create_segmentation_model needs, so no variant has build arguments of its own
register_variants(
    {name: {} for name in list_segmentation_models()},
    create_segmentation_model,
    doc=_builder_doc,
    registry="torchvision",
    annotations=_builder_annotations,
)
