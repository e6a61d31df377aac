"""Losses for NPE training and its baselines: the one-way logistic loss and logit-adjusted CE.

Both take class-index targets for classification ``(B,)`` or dense prediction ``(B, H, W)``;
the dense loss that upsamples only each pixel's true class lives in ``npe_models.segmentation.losses``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .npe import estimate_sign

__all__ = ["one_way_logistic_loss", "one_way_logistic_loss_from_true_class", "logit_adjusted_cross_entropy"]


def _check_target(
    target: Tensor, expected_shape: tuple[int, ...], num_classes: int, ignore_index: int, check_values: bool = True
) -> Tensor:
    """Validate class-index targets and return the mask of entries that count.

    ``check_values=False`` skips the range check, which reads the targets back from their device
    (a host synchronisation on a GPU), for targets validated once beforehand (a training set).
    """
    if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}.")
    if tuple(target.shape) != expected_shape:
        raise ValueError(f"target has shape {tuple(target.shape)}, expected {expected_shape} to match the logits.")
    valid = target != ignore_index
    if check_values and valid.any():
        used = target[valid]
        low, high = int(used.min()), int(used.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"target holds class indices in [{low}, {high}] but the model has {num_classes} classes "
                f"(valid: 0..{num_classes - 1}, or ignore_index={ignore_index})."
            )
    return valid


def one_way_logistic_loss_from_true_class(true_class_logits: Tensor, valid: Tensor, t: int = 1) -> Tensor:
    """One-way logistic loss from each PEM's true-class logit ``(K, B, ...)`` and a validity mask ``(B, ...)``.

    ``-log sigmoid((-1)^t u) = softplus(-(-1)^t u)``, summed over PEMs and averaged over valid
    samples (or pixels). Dense models that gather the true class themselves call this directly.
    """
    sign = estimate_sign(t)
    logits = true_class_logits.to(torch.promote_types(true_class_logits.dtype, torch.float32))
    per_entry = F.softplus(-sign * logits)
    mask = valid.unsqueeze(0).to(per_entry.dtype)
    return (per_entry * mask).sum() / mask.sum().clamp(min=1.0)


def one_way_logistic_loss(
    pem_logits: Tensor, target: Tensor, t: int = 1, ignore_index: int = -100, check_targets: bool = True
) -> Tensor:
    """The NPE loss on PEM logits ``(K, B, C)`` or dense ``(K, B, C, H, W)`` with targets ``(B,)`` / ``(B, H, W)``.

    Only the true-class coordinate is penalised, pushing it towards ``(-1)^t * infinity`` at a
    rate set by how often the class occurs: that pressure is what makes ``u_k`` track the prior.
    ``check_targets=False`` skips the class-range check (a host sync on a GPU) for validated targets.
    """
    if pem_logits.dim() < 3:
        raise ValueError(
            f"pem_logits must be (K, B, C) or (K, B, C, H, W), got shape {tuple(pem_logits.shape)}; "
            "pass NPEOutput.pem_logits from forward_train()."
        )
    num_pems, batch, num_classes = pem_logits.shape[:3]
    valid = _check_target(target, (batch, *pem_logits.shape[3:]), num_classes, ignore_index, check_targets)
    index = target.masked_fill(~valid, 0).long()
    index = index.unsqueeze(0).unsqueeze(2).expand(num_pems, -1, 1, *index.shape[1:])
    true_class = pem_logits.gather(2, index).squeeze(2)
    return one_way_logistic_loss_from_true_class(true_class, valid, t)


def logit_adjusted_cross_entropy(
    logits: Tensor,
    target: Tensor,
    log_prior: Tensor,
    tau: float = 1.0,
    ignore_index: int = -100,
    check_targets: bool = True,
) -> Tensor:
    """Logit-adjusted loss (Menon et al., 2021): ``CE(z + tau * log prior, y)``, for ``(B, C)`` or ``(B, C, H, W)``.

    ``check_targets=False`` skips the class-range check (a host sync on a GPU) for validated targets.
    """
    num_classes = logits.shape[1]
    if log_prior.shape != (num_classes,):
        raise ValueError(
            f"log_prior must have shape ({num_classes},), one entry per class; got {tuple(log_prior.shape)}."
        )
    _check_target(target, (logits.shape[0], *logits.shape[2:]), num_classes, ignore_index, check_targets)
    shift = log_prior.to(logits).view(1, num_classes, *([1] * (logits.dim() - 2)))
    return F.cross_entropy(logits + tau * shift, target, ignore_index=ignore_index)
