"""NPE for segmentation_models_pytorch (smp) models: the paper's Swin-T + UPerNet and any smp architecture.

An smp model is ``encoder -> decoder -> segmentation_head``, the head an ``nn.Sequential`` of the
classifier conv (1x1, or 3x3 for U-Net, U-Net++, MAnet, PAN, PSPNet), upsampling and an activation.
NPE forms follow :mod:`npe_models.models.segmentation` (same mixin, PEM types, outputs):

- ``linear``: PEMs beside the head's conv, with its kernel and padding (an :class:`NPEConvHead`
  where the kernel is not 1x1); ``timm.utils.reparameterize_model`` folds them into that conv,
  so a merged model's state_dict loads with ``strict=True`` into the plain smp model;
- ``fcn``: the paper's single-layer FCN PEM on the decoder output;
- ``replica``: a copy of the decoder and head conv without BatchNorm (for UPerNet, the paper's
  UPerNet PEM; for DeepLabV3 and DeepLabV3+, its ASPP PEM), reading the encoder features. Each
  BatchNorm goes and the conv before it takes over its shift with a bias: in an ``nn.Sequential``
  (as for the torchvision models), in smp's conv -> bn blocks (DeepLabV3's decoder, PAN's
  ``ConvBnRelu``) and after Linknet's biased transposed convs; a decoder with any other BatchNorm is refused.

Names (``create_segmentation_model``; the ``_npe1`` / ``_npe16`` variants also
``torchvision.models.get_model``): ``smp_upernet_swin_t`` (UPerNet on timm's
``swin_tiny_patch4_window7_224`` with ``strict_img_size=False``: any input size divisible by 32,
as every smp encoder needs), ``smp_upernet_resnet50``,
``smp_unet_mobilenet_v2``, and ``smp:<arch>:<encoder>`` for any smp architecture and encoder
(``smp:fpn:resnet18``, ``smp:unet:tu-convnext_atto``), with ``_npe<K>`` or ``num_pems=``.
Models keep torchvision's output contract (``OrderedDict(out=...)``), the plain ones too.
``weights_backbone`` is smp's ``encoder_weights`` (e.g. ``"imagenet"``); None by default, so
nothing downloads. smp is optional: ``pip install "npe-models[smp]"``.
"""

from __future__ import annotations

import copy
import functools
import re
from collections import OrderedDict
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from ..npe import DEFAULT_NPE_T, NPEHead
from ._registry import npe_model_name, parse_npe_name, register_variants
from .segmentation import (
    REGISTERED_NUM_PEMS,
    DensePEMs,
    NPESegmentationMixin,
    _Architecture,
    _fcn_pem,
    _init_pem_convs,
    _replica_head,
    _upsample,
    _with_bias,
    create_segmentation_model,
    register_segmentation_family,
)

__all__ = [
    "SMP_ARCHITECTURES",
    "NPEConvHead",
    "NPESMPSegmentation",
    "SMP_Weights",
    "build_smp_model",
    "is_smp_model",
    "list_smp_models",
]

SMP_INSTALL_HINT = 'pip install "npe-models[smp]"'
_SMP_MODULE = "segmentation_models_pytorch."
SMP_ARCHITECTURES: dict[str, tuple[str, str, dict[str, Any]]] = {
    # strict_img_size=False: timm's Swin pads its windows, so any input divisible by 32 works, not only 224
    "smp_upernet_swin_t": ("upernet", "tu-swin_tiny_patch4_window7_224", {"strict_img_size": False}),
    "smp_upernet_resnet50": ("upernet", "resnet50", {}),
    "smp_unet_mobilenet_v2": ("unet", "mobilenet_v2", {}),
}
"""Registered smp models: name -> (smp architecture, smp encoder, default smp.create_model arguments)."""
_SMP_NAME = re.compile(r"^smp:(?P<arch>[A-Za-z0-9_+-]+):(?P<encoder>[A-Za-z0-9_+-]+)$")
DEFAULT_NUM_CLASSES = 21  # torchvision's segmentation default


class SMP_Weights(WeightsEnum):
    """smp models have no weights of their own here: ``weights_backbone`` takes smp's ``encoder_weights``."""


def _smp() -> Any:
    """The optional segmentation_models_pytorch package, or an ImportError that says how to install it."""
    try:
        import segmentation_models_pytorch
    except ImportError as error:
        raise ImportError(
            f"segmentation_models_pytorch models need the optional dependency: {SMP_INSTALL_HINT} "
            f"(segmentation-models-pytorch>=0.5); importing it failed: {error}"
        ) from error
    return segmentation_models_pytorch


def _is_smp_class(cls: type) -> bool:
    """Whether ``cls`` is an smp ``SegmentationModel`` (checked without importing smp)."""
    return any(base.__name__ == "SegmentationModel" and base.__module__.startswith(_SMP_MODULE) for base in cls.__mro__)


def _is_smp_module(module: nn.Module) -> bool:
    """Whether ``module``'s class is defined by smp (checked without importing smp)."""
    return type(module).__module__.startswith(_SMP_MODULE)


def is_smp_model(model: nn.Module) -> bool:
    """Whether ``model`` is a segmentation_models_pytorch model (with or without PEMs)."""
    return _is_smp_class(type(model))


@functools.cache
def _dict_output_class(base_cls: type) -> type:
    """``base_cls`` returning torchvision's ``OrderedDict(out=...)``: same modules and state_dict keys."""

    def forward(self: nn.Module, x: Tensor) -> dict[str, Tensor]:
        return OrderedDict(out=base_cls.forward(self, x))

    return type(base_cls.__name__, (base_cls,), {"__module__": __name__, "forward": forward})


def build_smp_model(
    arch: str,
    encoder: str,
    *,
    weights: Any = None,
    weights_backbone: Optional[str] = None,
    num_classes: Optional[int] = None,
    progress: bool = True,
    aux_loss: Optional[bool] = None,
    name: Optional[str] = None,
    **kwargs: Any,
) -> nn.Module:
    """A plain smp model (``smp.create_model``) with torchvision's output contract; ``kwargs`` go to smp.

    The model records the name that rebuilds it (``name``, default ``smp:<arch>:<encoder>``) and ``kwargs`` in
    ``build_cfg``, as timm models record theirs in ``pretrained_cfg``: describing and exporting it needs no config.
    """
    del progress  # smp's downloads show no progress option
    if weights is not None:
        raise ValueError(f"smp models have no weights entries; got weights={weights!r}. Use weights_backbone=.")
    if aux_loss:
        raise ValueError("smp models have no auxiliary segmentation head (aux_loss=True); leave aux_loss unset.")
    if kwargs.get("aux_params") is not None or kwargs.get("activation") is not None:
        raise ValueError("NPE smp models take no aux_params (classification head) and no activation: logits only.")
    smp = _smp()
    model = smp.create_model(
        arch,
        encoder_name=encoder,
        encoder_weights=weights_backbone,
        classes=DEFAULT_NUM_CLASSES if num_classes is None else num_classes,
        **kwargs,
    )
    model.__class__ = _dict_output_class(type(model))
    model.build_cfg = {"architecture": name or f"smp:{arch}:{encoder}", "model_kwargs": kwargs}
    return model


def _resolve(arch: str) -> Optional[_Architecture]:
    """The ``_Architecture`` of a registered smp name or of ``smp:<arch>:<encoder>``; None for other names."""
    if arch in SMP_ARCHITECTURES:
        smp_arch, encoder, defaults = SMP_ARCHITECTURES[arch]
    else:
        match = _SMP_NAME.match(arch)
        if match is None:
            return None
        smp_arch, encoder, defaults = match["arch"], match["encoder"], {}
    return _Architecture(functools.partial(build_smp_model, smp_arch, encoder, name=arch, **defaults), SMP_Weights)


class NPEConvHead(NPEHead):
    """An :class:`NPEHead` whose classifier and PEMs are k x k convs with padding (smp's 3x3 head convs).

    ``weight`` / ``bias`` are the conv's, so the state_dict keys match the plain model; ``fuse``
    returns that conv with the PEMs folded in (conv is linear in its weights, so it is exact).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        num_pems: int = 16,
        *,
        kernel_size: tuple[int, int],
        padding: tuple[int, int],
        t: int = DEFAULT_NPE_T,
        alpha: float = 1.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(in_features, num_classes, num_pems, t=t, alpha=alpha, dense=True, device=device, dtype=dtype)
        self.kernel_size, self.padding = tuple(kernel_size), tuple(padding)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(num_classes, in_features, *self.kernel_size, **factory))
        self.pem_weight = nn.Parameter(torch.empty(num_pems * num_classes, in_features, *self.kernel_size, **factory))
        self.reset_parameters()

    def _fused(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = F.conv2d(
            x, torch.cat([self.weight, self.pem_weight]), torch.cat([self.bias, self.pem_bias]), 1, self.padding
        )
        z, u = y[:, : self.num_classes], y[:, self.num_classes :]
        return z, u.unflatten(1, (self.num_pems, self.num_classes)).movedim(1, 0)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return F.conv2d(x, self.weight, self.bias, 1, self.padding)
        z, u = self._fused(x)
        return z - self.alpha * self.estimate_from_pem_logits(u)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        scale = self.alpha * self.sign / self.num_pems
        factory = {"device": self.weight.device, "dtype": self.weight.dtype}
        layer = nn.Conv2d(self.in_features, self.num_classes, self.kernel_size, padding=self.padding, **factory)
        layer.weight.copy_(self.weight - scale * self.pem_weight.unflatten(0, (self.num_pems, self.num_classes)).sum(0))
        layer.bias.copy_(self.bias - scale * self.pem_bias.view(self.num_pems, self.num_classes).sum(0))
        layer.train(self.training)
        return layer

    def extra_repr(self) -> str:
        return super().extra_repr().replace("conv1x1", f"conv{self.kernel_size}, padding={self.padding}")


def _linear_pem_head(conv: nn.Conv2d, num_pems: int, t: int, alpha: float) -> NPEHead:
    """An NPEHead on smp's head conv: the 1x1 one for 1x1 convs, an NPEConvHead for a k x k conv."""
    if conv.kernel_size == (1, 1):
        return NPEHead.from_layer(conv, num_pems, t=t, alpha=alpha)
    if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1 or conv.padding_mode != "zeros":
        raise ValueError(f"linear PEMs need a plain stride-1 classifier conv, got {conv}.")
    head = NPEConvHead(
        conv.in_channels,
        conv.out_channels,
        num_pems,
        kernel_size=conv.kernel_size,
        padding=conv.padding,
        t=t,
        alpha=alpha,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    head.load_classifier(conv)
    return head


# smp blocks that apply their BatchNorm ``bn`` right after their conv ``conv``, both attributes rather than an
# nn.Sequential: DeepLabV3's decoder (ASPP, then conv -> bn -> ReLU) and PAN's ConvBnRelu
_CONV_BN_BLOCKS = frozenset({"DeepLabV3Decoder", "ConvBnRelu"})


def _remove_attribute_batchnorms(decoder: nn.Module) -> None:
    """Each conv -> bn block of ``_CONV_BN_BLOCKS``: one biased conv, as ``_replica_head`` makes in Sequentials."""
    for block in decoder.modules():
        if type(block).__name__ in _CONV_BN_BLOCKS and _is_smp_module(block):
            block.conv, block.bn = _with_bias(block.conv), nn.Identity()


def _remove_batchnorms_after_transposed_convs(decoder: nn.Module) -> None:
    """A BatchNorm right after a biased transposed conv in an nn.Sequential (Linknet's TransposeX2) goes: the
    conv's own bias takes over its shift; ``_replica_head`` pairs BatchNorm with ``nn.Conv2d`` only."""
    for sequence in [m for m in decoder.modules() if isinstance(m, nn.Sequential)]:
        for index in range(1, len(sequence)):
            conv = sequence[index - 1]
            if isinstance(sequence[index], nn.BatchNorm2d) and _is_biased_transposed_conv(conv):
                sequence[index] = nn.Identity()


def _is_biased_transposed_conv(module: nn.Module) -> bool:
    """Whether ``module`` is a transposed conv with a bias that can take over a following BatchNorm's shift."""
    return isinstance(module, nn.ConvTranspose2d) and module.bias is not None


def _replica_pem(decoder: nn.Module, conv: nn.Module) -> nn.Sequential:
    """The decoder without BatchNorm and a fresh head conv: a PEM reading the encoder features."""
    copied = copy.deepcopy(decoder)
    _remove_attribute_batchnorms(copied)
    _remove_batchnorms_after_transposed_convs(copied)
    replica = _replica_head(copied)
    final = copy.deepcopy(conv)
    _init_pem_convs(final)
    return nn.Sequential(replica, final)


class NPESMPSegmentation(NPESegmentationMixin):
    """NPE for smp models: PEMs at ``segmentation_head[0]``; eval output NPE-LA, upsampled by the head."""

    def _head_conv(self) -> nn.Module:
        return self.segmentation_head[0]

    def _attach_pems(self, num_pems: int, pem_type: str, alpha: float, t: int) -> None:
        if getattr(self, "classification_head", None) is not None:
            raise ValueError("NPE smp models take no classification head (aux_params); build the model without it.")
        head = self.segmentation_head
        if not isinstance(head, nn.Sequential) or not isinstance(head[0], nn.Conv2d):
            raise ValueError(
                f"NPE needs an smp segmentation head that starts with its classifier conv; {type(self).__name__}'s "
                f"{type(head).__name__} does not: choose another architecture (e.g. upernet, fpn)."
            )
        if not isinstance(self.segmentation_head[-1].activation, nn.Identity):
            raise ValueError("NPE smp models need logits: build the smp model with activation=None.")
        self.pem_type, self.num_pems, self.t, self._alpha = pem_type, num_pems, t, float(alpha)
        conv = self._head_conv()
        self.pems = None
        if pem_type == "linear":
            self.segmentation_head[0] = _linear_pem_head(conv, num_pems, t, alpha)
            return
        if pem_type == "fcn":
            heads = [_fcn_pem(conv.in_channels, conv.in_channels, conv.out_channels) for _ in range(num_pems)]
        else:
            heads = [_replica_pem(self.decoder, conv) for _ in range(num_pems)]
        self.pems = DensePEMs(heads, pem_type).to(conv.weight.device)

    def _main_and_pem_logits(self, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor]:
        """Encoder features, main logits upsampled by the head, PEM logits ``(K, B, C, h, w)`` before it."""
        self._check_has_pems()
        features = self.encoder(x)
        decoded = self.decoder(features)
        if self.pems is None:
            logits, pem_logits = self._head_conv().forward_train(decoded)
        else:
            logits = self._head_conv()(decoded)
            pem_logits = self.pems(decoded if self.pem_type == "fcn" else features)
        return features, self.segmentation_head[1](logits), pem_logits

    def _head_upsample(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        """The head's own upsampling, then to the input size (a no-op where the head reaches it)."""
        return _upsample(self.segmentation_head[1](x), size)

    def forward_logits_and_estimate(self, x: Tensor) -> tuple[Tensor, Tensor]:
        size = x.shape[-2:]
        _, logits, pem_logits = self._main_and_pem_logits(x)
        return _upsample(logits, size), self._head_upsample(pem_logits.mean(0) * self.sign, size)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``OrderedDict(out=...)``: main logits in training mode, NPE-LA logits in eval mode."""
        if not (torch.jit.is_scripting() or torch.jit.is_tracing()):
            self.check_input_shape(x)
        features = self.encoder(x)
        decoded = self.decoder(features)
        logits = self.segmentation_head(decoded)  # linear PEMs: the NPEHead applies NPE-LA in eval mode
        if not self.training and self.pems is not None:
            eta = self.pems(decoded if self.pem_type == "fcn" else features).mean(0) * self.sign
            logits = logits - self._alpha * self.segmentation_head[1](eta)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = _upsample(logits, x.shape[-2:])
        return OrderedDict(out=logits)


register_segmentation_family(
    _is_smp_class, NPESMPSegmentation, resolve=_resolve, name_form="smp:<arch>:<encoder> (segmentation_models_pytorch)"
)


def list_smp_models() -> list[str]:
    """The smp names registered with torchvision (``<name>_npe<K>``)."""
    return sorted(npe_model_name(name, k) for name in SMP_ARCHITECTURES for k in REGISTERED_NUM_PEMS)


def _builder_doc(name: str) -> str:
    arch, num_pems = parse_npe_name(name)
    smp_arch, encoder, _ = SMP_ARCHITECTURES[arch]
    return (
        f"segmentation_models_pytorch {smp_arch} with encoder {encoder} and {num_pems} PEM(s) (``pem_type`` "
        f"linear/fcn/replica); ``weights_backbone`` is smp's encoder_weights (None: nothing downloads). "
        f"Needs {SMP_INSTALL_HINT}."
    )


register_variants(
    {name: {} for name in list_smp_models()},
    create_segmentation_model,
    doc=_builder_doc,
    registry="torchvision",
    module=__name__,
    annotations=lambda name: {"weights": Optional[SMP_Weights]},
)
