"""CIFAR ResNets (He et al., 2016, Sec. 4.2): ResNet-20/32/44/56/110 and their NPE variants.

Three stages of basic blocks with widths 16/32/64 and parameter-free option-A shortcuts, as
used by LDAM-DRW, logit adjustment and the NPE paper on CIFAR-LT. ``CifarResNet`` is a plain
timm-style classifier; ``<arch>_npe<K>`` is it with K PEMs beside the classifier, added by
``add_npe`` as for every other timm classifier. Merged, its state_dict loads strictly into ``<arch>``.
"""

# No ``from __future__ import annotations``: FX tracing copies forward's annotations into the traced
# code, and TorchScript cannot resolve a string ``'Tensor'`` there (timm's fx + jit test).
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs
from timm.models._features import (
    feature_take_indices,  # not re-exported by timm.models; timm's own families import it from here
)
from torch import Tensor, nn

from ._bundled import checked_pretrained_kwargs, shipped_pretrained_cfgs
from ._registry import npe_model_name, register_variants
from .timm_npe import create_npe_variant

__all__ = ["CifarResNet", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR_DEPTHS", "NUM_PEMS_VARIANTS"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR_DEPTHS = (20, 32, 44, 56, 110)
NUM_PEMS_VARIANTS = (1, 4, 8, 16)
_STAGE_NAMES = ("layer1", "layer2", "layer3")


def _shortcut_option_a(x: Tensor, out_chs: int) -> Tensor:
    """Parameter-free shortcut: subsample by 2 and zero-pad the new channels equally on both sides."""
    pad = (out_chs - x.shape[1]) // 2
    return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, out_chs - x.shape[1] - pad))


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus an identity or option-A shortcut, then ReLU."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = stride != 1 or in_chs != out_chs
        self.out_chs = out_chs

    def forward(self, x: Tensor) -> Tensor:
        shortcut = _shortcut_option_a(x, self.out_chs) if self.downsample else x
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act2(x + shortcut)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs with timm's classifier interface; ``<arch>_npe<K>`` adds PEMs with add_npe."""

    def __init__(
        self,
        depth: int = 32,
        num_classes: int = 10,
        in_chans: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
        global_pool: str = "avg",
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}.")
        blocks_per_stage = (depth - 2) // 6
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module="act1")]
        in_chs = widths[0]
        for stage, width in enumerate(widths):
            stride = 1 if stage == 0 else 2
            blocks = [
                BasicBlock(in_chs if i == 0 else width, width, stride if i == 0 else 1) for i in range(blocks_per_stage)
            ]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=width, reduction=2**stage, module=f"layer{stage + 1}"))
            in_chs = width
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.fc = self._make_classifier(num_classes)
        self._init_weights()

    def _make_classifier(self, num_classes: int) -> nn.Module:
        """Kaiming-normal linear classifier, or Identity for ``num_classes=0`` (features only)."""
        if num_classes <= 0:
            return nn.Identity()
        fc = nn.Linear(self.num_features * self.global_pool.feat_mult(), num_classes)
        nn.init.kaiming_normal_(fc.weight)
        return fc

    def _init_weights(self) -> None:
        """Kaiming-normal convolutions, as the CIFAR-LT reference code initialises ResNet-32."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^conv1|bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier for ``num_classes`` classes (0: none), optionally with another global pooling."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.fc = self._make_classifier(num_classes)

    @torch.jit.ignore
    def _stages(self) -> tuple[nn.Sequential, ...]:
        return tuple(getattr(self, name) for name in _STAGE_NAMES)

    @torch.jit.ignore
    def _run_stage(self, stage: nn.Sequential, x: Tensor) -> Tensor:
        """One stage; with grad checkpointing, block by block (timm's ``checkpoint_seq``)."""
        return checkpoint_seq(stage, x) if self.grad_checkpointing else stage(x)

    @torch.jit.ignore
    def forward_intermediates(
        self,
        x: Tensor,
        indices: Optional[Union[int, list[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[list[Tensor], tuple[Tensor, list[Tensor]]]:
        """Final features and the feature maps at ``indices`` (stem, layer1..3: 0..3), as timm's ResNet.

        ``indices``: the last n maps if an int, all if None, those listed if a sequence;
        ``stop_early`` skips the stages after the last map asked for; ``norm`` has no effect
        (there is no final norm layer).
        """
        if output_fmt != "NCHW":
            raise ValueError(f"CifarResNet's feature maps are NCHW; output_fmt={output_fmt!r} is not supported.")
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        x = self.act1(self.bn1(self.conv1(x)))
        intermediates = [x] if 0 in take_indices else []
        stages = self._stages()[:max_index] if stop_early else self._stages()
        for index, stage in enumerate(stages, start=1):
            x = self._run_stage(stage, x)
            if index in take_indices:
                intermediates.append(x)
        return intermediates if intermediates_only else (x, intermediates)

    @torch.jit.ignore
    def prune_intermediate_layers(
        self, indices: Union[int, list[int]] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last feature map in ``indices`` (and the classifier); returns the kept indices."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        for name in _STAGE_NAMES[max_index:]:
            setattr(self, name, nn.Sequential())  # empty, so checkpoint_seq can still iterate it
        prune_end = max_index < len(_STAGE_NAMES)
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self._stages(), x, flatten=True)
        return self.layer3(
            self.layer2(self.layer1(x))
        )  # no loop over the stages: TorchScript cannot iterate a tuple of modules

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": (8, 8),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "fixed_input_size": False,
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "license": "apache-2.0",
        **kwargs,
    }


_FEATURE_CFG = dict(out_indices=(0, 1, 2, 3))
_PLAIN = {f"resnet{depth}": dict(depth=depth) for depth in CIFAR_DEPTHS}
_NPE = {
    npe_model_name(base, num_pems): dict(base=base, num_pems=num_pems, feature_cfg=_FEATURE_CFG)
    for base in _PLAIN
    for num_pems in NUM_PEMS_VARIANTS
}

default_cfgs = generate_default_cfgs(
    {
        tagged: cfg
        for name in (*_PLAIN, *_NPE)
        for tagged, cfg in (shipped_pretrained_cfgs(name, _cfg) or {name: _cfg()}).items()
    }
)


def _create_cifar_resnet(variant: str, pretrained: bool = False, *, depth: int, **kwargs: Any) -> CifarResNet:
    """Build the plain ``resnet<depth>`` (``pretrained=True``: its shipped checkpoint, sha256-checked)."""
    if pretrained:
        kwargs = checked_pretrained_kwargs(variant, kwargs)
    return build_model_with_cfg(CifarResNet, variant, pretrained, depth=depth, feature_cfg=dict(_FEATURE_CFG), **kwargs)


def _plain_doc(name: str, depth: int) -> str:
    return f"ResNet-{depth} for CIFAR (widths 16/32/64, option-A shortcuts)."


def _npe_doc(name: str, base: str, num_pems: int, feature_cfg: dict[str, Any]) -> str:
    return f"{_plain_doc(base, **_PLAIN[base])[:-1]} with {num_pems} PEM{'s' if num_pems > 1 else ''} (NPE)."


register_variants(_PLAIN, _create_cifar_resnet, doc=_plain_doc)
register_variants(_NPE, create_npe_variant, doc=_npe_doc, module=__name__)
