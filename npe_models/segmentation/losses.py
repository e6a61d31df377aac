"""Losses for dense NPE training: cross-entropy on the main (and aux) logits plus the dense one-way logistic loss.

The PEMs' logits stay at the head's resolution; ``upsampled_true_class_logits`` upsamples only
each pixel's true class, so the loss equals the one on fully upsampled logits at a fraction of the memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..losses import one_way_logistic_loss_from_true_class
from ..models.segmentation import NPESegmentationOutput

__all__ = ["DEFAULT_IGNORE_INDEX", "dense_npe_loss", "segmentation_loss_terms", "upsampled_true_class_logits"]

DEFAULT_IGNORE_INDEX = 255  # torchvision's segmentation references and VOC mark unlabelled pixels 255


def _bilinear_source(out_size: int, in_size: int, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Lower/upper source index and upper weight per output row, as bilinear ``F.interpolate`` (no align_corners)."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32  # the precision interpolate computes in
    scale = in_size / out_size
    coord = ((torch.arange(out_size, device=like.device, dtype=dtype) + 0.5) * scale - 0.5).clamp(min=0)
    low = coord.floor().long().clamp(max=in_size - 1)
    high = (low + 1).clamp(max=in_size - 1)
    return low, high, coord - low


def upsampled_true_class_logits(logits: Tensor, target: Tensor, ignore_index: int = -100) -> Tensor:
    """Each map's logit of every pixel's target class, as if ``logits`` were first upsampled to the target's size.

    ``logits`` is ``(..., B, C, h, w)`` (e.g. PEM logits ``(K, B, C, h, w)`` at the head's
    resolution) and ``target`` ``(B, H, W)``; returns ``(..., B, H, W)``. Bilinear upsampling
    (``align_corners=False``) is linear, so only the target class at each pixel's four source
    corners is gathered: memory grows with ``K * H * W``, never with ``K * C * H * W``.
    Pixels equal to ``ignore_index`` get the logit of class 0 (mask them out of the loss).
    """
    if logits.dim() < 4:
        raise ValueError(f"logits must be (..., B, C, h, w), got shape {tuple(logits.shape)}.")
    batch, num_classes, in_h, in_w = logits.shape[-4:]
    if target.dim() != 3 or target.shape[0] != batch:
        raise ValueError(f"target must be (B, H, W) with B={batch} to match the logits, got {tuple(target.shape)}.")
    out_h, out_w = target.shape[-2:]
    classes = target.masked_fill(target == ignore_index, 0).long()
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
        raise ValueError(
            f"target holds class indices outside 0..{num_classes - 1} (and ignore_index={ignore_index}); "
            "check num_classes and the label encoding."
        )
    rows_lo, rows_hi, frac_h = _bilinear_source(out_h, in_h, logits)
    cols_lo, cols_hi, frac_w = _bilinear_source(out_w, in_w, logits)
    rows = torch.stack([rows_lo, rows_lo, rows_hi, rows_hi])[:, :, None]
    cols = torch.stack([cols_lo, cols_hi, cols_lo, cols_hi])[:, None, :]
    weight_h = torch.stack([1 - frac_h, 1 - frac_h, frac_h, frac_h])[:, :, None]
    weight_w = torch.stack([1 - frac_w, frac_w, 1 - frac_w, frac_w])[:, None, :]
    corners = rows * in_w + cols  # (4, H, W) offsets inside one class map
    index = classes[:, None] * (in_h * in_w) + corners  # (B, 4, H, W)
    flat = logits.flatten(-3)
    gathered = flat.gather(-1, index.flatten(1).expand(*flat.shape[:-1], -1))
    gathered = gathered.unflatten(-1, (4, out_h, out_w))
    return (gathered * (weight_h * weight_w).to(gathered.dtype)).sum(-3)


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
