"""Losses for dense NPE training: cross-entropy on the main (and aux) logits plus the dense one-way logistic loss."""
from __future__ import annotations

from typing import Mapping, Union

import torch.nn.functional as F
from torch import Tensor

from ..losses import one_way_logistic_loss_from_true_class
from ..models.segmentation import NPESegmentationOutput
from ..npe import upsampled_true_class_logits

__all__ = ["DEFAULT_IGNORE_INDEX", "dense_npe_loss", "segmentation_loss_terms"]

DEFAULT_IGNORE_INDEX = 255  # torchvision's segmentation references and VOC mark unlabelled pixels 255


def dense_npe_loss(pem_logits: Tensor, target: Tensor, t: int = 1, ignore_index: int = DEFAULT_IGNORE_INDEX) -> Tensor:
    """One-way logistic loss of PEM logits ``(K, B, C, h, w)`` against full-size targets ``(B, H, W)``.

    Equals ``one_way_logistic_loss`` on the PEM logits upsampled bilinearly to ``(H, W)``, but only
    each pixel's true-class logit is ever upsampled, so the ``K x B x C x H x W`` tensor never exists.
    """
    if pem_logits.dim() != 5:
        raise ValueError(
            f"pem_logits must be (K, B, C, h, w), got shape {tuple(pem_logits.shape)}; "
            "pass NPESegmentationOutput.pem_logits from forward_train()."
        )
    true_class = upsampled_true_class_logits(pem_logits, target, ignore_index)
    return one_way_logistic_loss_from_true_class(true_class, target != ignore_index, t)


def segmentation_loss_terms(
    output: Union[NPESegmentationOutput, Mapping[str, Tensor]],
    target: Tensor,
    *,
    train_main: bool = True,
    t: int = 1,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    aux_weight: float = 0.4,
) -> dict[str, Tensor]:
    """The loss terms that train something: ``ce`` (main logits), ``aux`` (weighted) and ``npe`` (PEMs).

    ``output`` is ``forward_train``'s result or a plain model's ``{"out", "aux"}`` dict.
    ``train_main=False`` (backbone and decode head frozen) leaves out the cross-entropy terms,
    which could not change any trainable parameter.
    """
    if isinstance(output, NPESegmentationOutput):
        logits, aux_logits, pem_logits = output.logits, output.aux_logits, output.pem_logits
    else:
        logits, aux_logits, pem_logits = output["out"], output.get("aux"), None
    terms: dict[str, Tensor] = {}
    if train_main:
        terms["ce"] = F.cross_entropy(logits, target, ignore_index=ignore_index)
    if train_main and aux_logits is not None and aux_weight:
        terms["aux"] = aux_weight * F.cross_entropy(aux_logits, target, ignore_index=ignore_index)
    if pem_logits is not None:
        terms["npe"] = dense_npe_loss(pem_logits, target, t, ignore_index)
    return terms
