"""The NPE head and the questions every caller asks of an NPE model.

``NPEHead`` is a main classifier plus K Prior Estimation Modules (PEMs) in one fused layer: it
computes the main logits ``z`` and the PEM logits ``u_k`` with a single matmul (or 1x1 conv),
returns ``z`` in training mode, NPE-LA logits ``z - alpha * eta`` in eval mode, and folds itself
into a plain ``nn.Linear`` / ``nn.Conv2d`` through timm's ``reparameterize_model`` protocol
(``fuse()``). ``npe_heads``, ``has_pems`` and ``set_alpha`` answer "which PEMs does this model
have" and set the NPE-LA strength for classifiers and dense models alike.

Spelling, as in the paper: ``t`` is the PEM sign convention (0 or 1), ``sign`` its factor
``(-1)^t`` and ``alpha`` the NPE-LA strength. A host model's build arguments, shared with
timm's, spell the first and last ``npe_t`` / ``npe_alpha`` (``timm.create_model("resnet32_npe16",
npe_alpha=0.5)``); ``models.timm_npe.create_npe_variant`` is the one place that reads them.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validation import check_number

__all__ = [
    "DEFAULT_NPE_ALPHA",
    "DEFAULT_NPE_T",
    "check_npe_alpha",
    "check_npe_t",
    "NPEOutput",
    "NPEHead",
    "NPEClassifierMixin",
    "PEMNetworks",
    "AlphaOwnerMixin",
    "validate_npe_args",
    "estimate_sign",
    "fill_missing_pem_params",
    "npe_heads",
    "has_pems",
    "set_alpha",
]

PEM_INIT_STD = 0.001
DEFAULT_NPE_ALPHA = 1.0
"""NPE-LA strength of classifiers (the paper's alpha = 1); dense models use ``DEFAULT_SEGMENTATION_ALPHA``."""
DEFAULT_NPE_T = 1
"""PEM sign convention: t = 1, the paper's default."""


class NPEOutput(NamedTuple):
    """What ``forward_train`` returns: main logits ``(B, C, ...)`` and PEM logits ``(K, B, C, ...)``."""

    logits: Tensor
    pem_logits: Tensor


def estimate_sign(t: int) -> float:
    """``(-1)^t`` for the PEM sign convention ``t`` (0 or 1): the factor that maps PEM outputs to the log prior."""
    if t not in (0, 1):
        raise ValueError(
            f"t must be 0 or 1 (the PEM sign convention: eta = (-1)^t * mean_k u_k), got {t}."
        )  # no !r: TorchScript compiles this
    return -1.0 if t == 1 else 1.0


def check_npe_alpha(npe_alpha: float) -> None:
    """The one range check of the NPE-LA strength: a finite number >= 0 (the library and the command line alike)."""
    check_number("npe_alpha", npe_alpha, minimum=0)


def check_npe_t(npe_t: int) -> None:
    """The one check of the PEM sign convention: 0 or 1."""
    check_number("npe_t", npe_t, integer=True, minimum=0, maximum=1)


def validate_npe_args(num_pems: int, t: int, alpha: float) -> None:
    """Raise a clear error for an invalid PEM count, sign convention or NPE-LA strength."""
    if isinstance(num_pems, bool) or not isinstance(num_pems, int) or num_pems < 1:
        raise ValueError(f"num_pems must be an integer >= 1, got {num_pems!r}; use the plain model for no PEMs.")
    check_npe_t(t)
    check_npe_alpha(alpha)


class NPEHead(nn.Module):
    """Main classifier and ``num_pems`` PEMs sharing one input, computed in one fused layer.

    ``weight``/``bias`` are the main classifier's parameters, named and shaped exactly as the
    ``nn.Linear`` (or 1x1 ``nn.Conv2d`` when ``dense``) they replace, so base checkpoints load
    unchanged; ``pem_weight``/``pem_bias`` hold the K PEMs stacked along the output axis.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        num_pems: int = 16,
        *,
        t: int = DEFAULT_NPE_T,
        alpha: float = DEFAULT_NPE_ALPHA,
        dense: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        validate_npe_args(num_pems, t, alpha)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 for an NPE head, got {num_classes}.")
        self.in_features = in_features
        self.num_classes = num_classes
        self.num_pems = num_pems
        self.t = t
        self.alpha = float(alpha)
        self.dense = dense
        kernel = (1, 1) if dense else ()
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(num_classes, in_features, *kernel, **factory))
        self.bias = nn.Parameter(torch.empty(num_classes, **factory))
        self.pem_weight = nn.Parameter(torch.empty(num_pems * num_classes, in_features, *kernel, **factory))
        self.pem_bias = nn.Parameter(torch.empty(num_pems * num_classes, **factory))
        self.reset_parameters()

    @classmethod
    def from_layer(
        cls,
        layer: Union[nn.Linear, nn.Conv2d],
        num_pems: int = 16,
        *,
        t: int = DEFAULT_NPE_T,
        alpha: float = DEFAULT_NPE_ALPHA,
    ) -> NPEHead:
        """Wrap an existing classifier layer, keeping its weights and adding fresh PEMs."""
        if isinstance(layer, nn.Conv2d):
            if layer.kernel_size != (1, 1) or layer.stride != (1, 1) or layer.groups != 1 or layer.dilation != (1, 1):
                raise ValueError(f"only a plain 1x1 Conv2d classifier can carry PEMs, got {layer}.")
            dense, in_features, num_classes = True, layer.in_channels, layer.out_channels
        elif isinstance(layer, nn.Linear):
            dense, in_features, num_classes = False, layer.in_features, layer.out_features
        else:
            raise TypeError(f"expected an nn.Linear or 1x1 nn.Conv2d classifier, got {type(layer).__name__}.")
        head = cls(
            in_features,
            num_classes,
            num_pems,
            t=t,
            alpha=alpha,
            dense=dense,
            device=layer.weight.device,
            dtype=layer.weight.dtype,
        )
        head.load_classifier(layer)
        return head

    def load_classifier(self, layer: Union[nn.Linear, nn.Conv2d]) -> None:
        """Take the weight and bias (zero when it has none) of the classifier layer this head replaces."""
        with torch.no_grad():
            self.weight.copy_(layer.weight)
            if layer.bias is not None:
                self.bias.copy_(layer.bias)
            else:
                self.bias.zero_()

    def reset_parameters(self) -> None:
        """Main classifier as torch's default layer init; PEMs N(0, 0.001) with zero bias (as in the paper)."""
        nn.Linear.reset_parameters(self)  # kaiming-uniform weight, fan-in-uniform bias; works on 1x1 kernels too
        nn.init.normal_(self.pem_weight, std=PEM_INIT_STD)
        nn.init.zeros_(self.pem_bias)

    @property
    def sign(self) -> float:
        """(-1)^t: maps PEM outputs to the log-prior estimate."""
        return estimate_sign(self.t)

    def _fused(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Main logits and PEM logits ``(K, B, C, ...)`` from one matmul / conv."""
        weight = torch.cat([self.weight, self.pem_weight])
        bias = torch.cat([self.bias, self.pem_bias])
        if self.dense:
            y = F.conv2d(x, weight, bias)
            z, u = y[:, : self.num_classes], y[:, self.num_classes :]
            return z, u.unflatten(1, (self.num_pems, self.num_classes)).movedim(1, 0)
        y = F.linear(x, weight, bias)
        z, u = y[..., : self.num_classes], y[..., self.num_classes :]
        return z, u.unflatten(-1, (self.num_pems, self.num_classes)).movedim(-2, 0)

    def estimate_from_pem_logits(self, pem_logits: Tensor) -> Tensor:
        """The NPE estimate ``eta = (-1)^t / K * sum_k u_k``."""
        return pem_logits.mean(0) * self.sign

    def forward_train(self, x: Tensor) -> NPEOutput:
        """Main logits and every PEM's logits, for ``CE + one_way_logistic_loss``."""
        return NPEOutput(*self._fused(x))

    def npe_estimate(self, x: Tensor) -> Tensor:
        """The per-class log-prior estimate ``eta`` for features ``x``."""
        return self.estimate_from_pem_logits(self._fused(x)[1])

    def forward(self, x: Tensor) -> Tensor:
        """Main logits in training mode; NPE-LA logits ``z - alpha * eta`` in eval mode."""
        if self.training:
            return F.conv2d(x, self.weight, self.bias) if self.dense else F.linear(x, self.weight, self.bias)
        z, u = self._fused(x)
        return z - self.alpha * self.estimate_from_pem_logits(u)

    @torch.no_grad()
    def fuse(self) -> Union[nn.Linear, nn.Conv2d]:
        """Fold the PEMs into the classifier: a plain layer whose output equals NPE-LA's."""
        scale = self.alpha * self.sign / self.num_pems
        pem_weight = self.pem_weight.unflatten(0, (self.num_pems, self.num_classes)).sum(0)
        pem_bias = self.pem_bias.view(self.num_pems, self.num_classes).sum(0)
        factory = {"device": self.weight.device, "dtype": self.weight.dtype}
        if self.dense:
            layer: Union[nn.Linear, nn.Conv2d] = nn.Conv2d(self.in_features, self.num_classes, 1, **factory)
        else:
            layer = nn.Linear(self.in_features, self.num_classes, **factory)
        layer.weight.copy_(self.weight - scale * pem_weight)
        layer.bias.copy_(self.bias - scale * pem_bias)
        layer.train(self.training)
        return layer

    def extra_repr(self) -> str:
        kind = "conv1x1" if self.dense else "linear"
        return (
            f"in_features={self.in_features}, num_classes={self.num_classes}, num_pems={self.num_pems}, "
            f"t={self.t}, alpha={self.alpha}, {kind}"
        )


class NPEClassifierMixin:
    """Adds ``forward_train`` and ``npe_estimate`` to a timm-style classifier whose head is an NPEHead.

    The model must implement timm's ``forward_features``, ``forward_head(pre_logits=)`` and
    ``get_classifier``; the classifier returned by ``get_classifier`` is the NPEHead.
    """

    def npe_head(self) -> NPEHead:
        """The model's NPEHead, or a clear error when the PEMs were merged away or never added."""
        head = self.get_classifier()
        if not isinstance(head, NPEHead):
            raise RuntimeError(
                f"{type(self).__name__} has no PEMs (its classifier is {type(head).__name__}): it was merged with "
                "reparameterize_model() or reset to zero classes. Train or estimate priors with the unmerged model."
            )
        return head

    def _pre_logits(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def forward_train(self, x: Tensor) -> NPEOutput:
        """Main logits ``(B, C)`` and PEM logits ``(K, B, C)`` for the NPE training loss."""
        head = self.npe_head()
        return head.forward_train(self._pre_logits(x))

    def npe_estimate(self, x: Tensor) -> Tensor:
        """The per-class log-prior estimate ``eta`` ``(B, C)`` for images ``x``."""
        head = self.npe_head()
        return head.npe_estimate(self._pre_logits(x))


class PEMNetworks(nn.ModuleList):
    """K PEMs that are networks of their own (not linear maps of the classifier's input), run on one input.

    Returns their logits stacked, ``(K, B, C, ...)``. It is the base of the dense models'
    ``fcn`` / ``replica`` PEMs, so that ``has_pems`` finds them without importing segmentation code.
    """

    def forward(self, x: Any) -> Tensor:
        return torch.stack([pem(x) for pem in self])


class AlphaOwnerMixin:
    """Base of models that own their NPE-LA strength ``alpha`` and apply it themselves (the segmentation models).

    ``set_alpha`` assigns ``model.alpha`` on them; their setter keeps any NPEHeads in step and a
    merged model still reports the alpha folded into it.
    """

    alpha: float


def npe_heads(model: nn.Module) -> list[NPEHead]:
    """Every unmerged linear NPEHead in ``model`` (classifier or dense), in module order."""
    return [module for module in model.modules() if isinstance(module, NPEHead)]


def has_pems(model: nn.Module) -> bool:
    """Whether ``model`` has unmerged PEMs: linear NPEHeads or PEM networks (dense ``fcn`` / ``replica``)."""
    return any(isinstance(module, (NPEHead, PEMNetworks)) for module in model.modules())


def set_alpha(model: nn.Module, alpha: float) -> None:
    """Set the NPE-LA strength on every NPE part of ``model``: its NPEHeads, or the model when it owns alpha."""
    check_npe_alpha(alpha)
    if not has_pems(model):
        raise ValueError(
            f"alpha needs a model with PEMs, but this {type(model).__name__} has none (a plain model, or one "
            "merged by reparameterize_model, whose alpha is folded in): set alpha before merging, or use an "
            "<arch>_npe<K> model."
        )
    if isinstance(model, AlphaOwnerMixin):
        model.alpha = float(alpha)
        return
    for head in npe_heads(model):
        head.alpha = float(alpha)


def fill_missing_pem_params(state_dict: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Give a checkpoint the model's own fresh PEM parameters where it has none, or a classifier of another size.

    Used as a timm ``pretrained_filter_fn``: ``<arch>_npe<K>`` loads ``<arch>`` weights strictly
    (every non-PEM key must still match), and ``num_classes=`` other than the checkpoint's, for
    which timm drops the classifier, starts fresh PEMs beside the fresh classifier.
    """
    state_dict = dict(state_dict)
    own = model.state_dict()
    for name, value in own.items():
        head, _, leaf = name.rpartition(".")
        if leaf not in ("pem_weight", "pem_bias"):
            continue
        classifier = f"{head}.weight" if head else "weight"
        resized = classifier in state_dict and state_dict[classifier].shape != own[classifier].shape
        if name not in state_dict or resized:
            state_dict[name] = value
    return state_dict
