"""Estimating a deployment's class mix from logits (BCTS calibration, EM, BBSE), folding it into a classifier's
bias (:func:`adapt_prior`), and following a drifting mix on a stream."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..describe import TARGET_PRIOR_KEY
from ..npe import has_pems
from ..priors import PriorRecord

__all__ = [
    "PRIOR_FLOOR",
    "check_logits",
    "PriorLike",
    "Calibration",
    "fit_bcts",
    "em_prior",
    "bbse_prior",
    "total_variation",
    "adapt_prior",
    "OnlinePriorEstimator",
    "StreamingPriorAdapter",
]

PriorLike = Union[Tensor, Sequence[float], np.ndarray]
PRIOR_FLOOR = 1e-6  # estimates are floored here where a log must stay finite or EM must reach every class


def check_logits(logits: Tensor, name: str, num_classes: Optional[int] = None) -> Tensor:
    """``logits`` as a float64 ``(N, C)`` Tensor, or a one-line error naming ``name``."""
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"{name} must be a 2-D Tensor (images, classes), got {shape}.")
    if logits.shape[0] == 0:
        raise ValueError(f"{name} is empty: it needs the logits of at least one image.")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"{name} has {logits.shape[1]} classes, expected {num_classes}.")
    if not torch.isfinite(logits).all():
        raise ValueError(f"{name} has non-finite values (NaN or inf); check the model and its input.")
    return logits.detach().double().cpu()


def _check_prior(prior: PriorLike, num_classes: int, name: str) -> Tensor:
    """``prior`` as a float64 probability vector of length ``num_classes`` (normalised), or a one-line error."""
    prior = torch.as_tensor(prior, dtype=torch.float64).detach().cpu()
    if prior.shape != (num_classes,):
        raise ValueError(f"{name} must have one entry per class ({num_classes}), got shape {tuple(prior.shape)}.")
    if not torch.isfinite(prior).all() or (prior < 0).any() or prior.sum() <= 0:
        raise ValueError(f"{name} must be finite, non-negative and not all zero (class counts or frequencies).")
    return prior / prior.sum()


def _check_labels(labels: Tensor, num_images: int, num_classes: int) -> Tensor:
    """Calibration labels: one per image, each class present (both estimators need every class)."""
    labels = torch.as_tensor(labels).cpu()
    if labels.shape != (num_images,) or labels.dtype.is_floating_point:
        raise ValueError(
            f"calibration labels must be {num_images} integer class indices, got {labels.dtype} {tuple(labels.shape)}."
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"calibration labels must lie in 0..{num_classes - 1}, got {int(labels.min())}..{int(labels.max())}."
        )
    missing = torch.nonzero(torch.bincount(labels, minlength=num_classes) == 0).flatten().tolist()
    if missing:
        raise ValueError(f"the calibration set has no image of classes {missing}; it needs every class.")
    return labels.long()


def _source_log_prior(source_prior: Optional[PriorLike], num_classes: int) -> Tensor:
    """log of the prior the logits' posterior is under: uniform (0) for balanced logits."""
    if source_prior is None:
        return torch.zeros(num_classes, dtype=torch.float64)
    prior = _check_prior(source_prior, num_classes, "source_prior")
    if (prior == 0).any():
        raise ValueError("source_prior must be positive for every class (the training counts of a trained model).")
    return prior.log()


def total_variation(p: PriorLike, q: PriorLike) -> float:
    """Total-variation distance ``0.5 * sum |p - q|`` between two class priors (0: equal, 1: disjoint)."""
    p = _check_prior(p, len(p), "p")
    return 0.5 * float((p - _check_prior(q, len(p), "q")).abs().sum())


@dataclass(frozen=True)
class Calibration:
    """The affine map ``logits / temperature + bias`` from a model's logits to calibrated balanced logits.

    Balanced means the calibrated softmax is a posterior under a uniform prior, whatever the
    model's own source prior was (it is absorbed into ``bias``).
    """

    temperature: float
    bias: Tensor

    def __call__(self, logits: Tensor) -> Tensor:
        """Calibrated balanced logits (float64) for ``logits`` ``(N, C)``."""
        return logits.double() / self.temperature + self.bias.to(logits.device)

    @classmethod
    def from_source_prior(cls, source_prior: PriorLike) -> Calibration:
        """No fit: subtract the log source prior (cross-entropy minus its log training prior, i.e. post-hoc LA)."""
        return cls(1.0, -_source_log_prior(source_prior, len(source_prior)))


def fit_bcts(
    logits: Tensor, labels: Tensor, *, source_prior: Optional[PriorLike] = None, max_iter: int = 200
) -> Calibration:
    """Fit bias-corrected temperature scaling on a labeled calibration set, returning balanced calibrated logits.

    Minimises the cross-entropy of ``softmax(a * (logits - log source_prior) + b + log pi_cal)``
    over the inverse temperature ``a`` and class biases ``b`` (convex; L-BFGS), where
    ``pi_cal`` is the calibration set's own class mix, so the set may have any mix but must
    hold every class. The result maps logits to ``a * (logits - log source_prior) + b``.
    """
    logits = check_logits(logits, "calibration logits")
    num_classes = logits.shape[1]
    labels = _check_labels(labels, len(logits), num_classes)
    balanced = logits - _source_log_prior(source_prior, num_classes)
    log_mix = torch.log(torch.bincount(labels, minlength=num_classes).double() / len(labels))
    scale = torch.ones((), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([scale, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(scale * balanced + bias + log_mix, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = float(scale.detach())
    if not fitted > 0:
        raise ValueError("the calibration logits carry no class information (fitted temperature is not positive).")
    return Calibration(1.0 / fitted, bias.detach() - fitted * _source_log_prior(source_prior, num_classes))


def em_prior(
    logits: Tensor,
    *,
    source_prior: Optional[PriorLike] = None,
    init: Optional[PriorLike] = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> Tensor:
    """Maximum-likelihood target prior of unlabeled images by EM (Saerens, Latinne & Decaestecker 2002).

    ``logits`` ``(N, C)`` are a posterior under ``source_prior`` (default uniform: balanced or
    :class:`Calibration`-ed logits). Each step reweights the posteriors by ``pi / source_prior``
    and sets ``pi`` to their mean, from ``init`` (default uniform), until no class moves by more
    than ``tol``. Returns ``pi`` (float64, sums to 1).
    """
    logits = check_logits(logits, "logits")
    num_classes = logits.shape[1]
    likelihood = torch.log_softmax(logits, 1) - _source_log_prior(source_prior, num_classes)
    prior = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
    if init is not None:
        prior = _check_prior(init, num_classes, "init")
    for _ in range(max_iter):
        updated = torch.softmax(likelihood + prior.log(), 1).mean(0)
        converged = float((updated - prior).abs().max()) < tol
        prior = updated
        if converged:
            break
    return prior


def bbse_prior(logits: Tensor, calibration_logits: Tensor, calibration_labels: Tensor) -> Tensor:
    """Target prior by black-box shift estimation (Lipton, Wang & Smola 2018) from hard predictions.

    Solves ``C w = mu`` for the importance weights ``w = pi_t / pi_cal``, where ``C[i, j]`` is the
    calibration set's joint frequency of prediction ``i`` and label ``j`` and ``mu`` the target's
    prediction frequencies; negative weights are clipped to 0. Any fixed classifier works
    (balanced or not), since only the calibration set's own mix ``pi_cal`` enters.
    """
    logits = check_logits(logits, "logits")
    num_classes = logits.shape[1]
    calibration_logits = check_logits(calibration_logits, "calibration logits", num_classes)
    labels = _check_labels(calibration_labels, len(calibration_logits), num_classes)
    predicted = calibration_logits.argmax(1)
    joint = torch.bincount(predicted * num_classes + labels, minlength=num_classes**2).double()
    joint = joint.view(num_classes, num_classes) / len(labels)
    if torch.linalg.matrix_rank(joint) < num_classes:
        raise ValueError(
            "the calibration confusion matrix is singular (some class is never predicted); BBSE cannot invert it."
        )
    target = torch.bincount(logits.argmax(1), minlength=num_classes).double() / len(logits)
    weights = torch.linalg.solve(joint, target).clamp_min(0)
    prior = weights * joint.sum(0)
    if prior.sum() <= 0:
        raise ValueError("BBSE found no positive class weight; the target predictions contradict the calibration set.")
    return prior / prior.sum()


def _final_linear(model: nn.Module) -> nn.Linear:
    """The timm classifier layer whose bias the prior is added to."""
    if not hasattr(model, "get_classifier"):
        raise TypeError(f"adapt_prior needs a timm classifier (with get_classifier), got {type(model).__name__}.")
    layer = model.get_classifier()
    if not isinstance(layer, nn.Linear) or layer.bias is None:
        raise TypeError(f"adapt_prior folds the prior into a biased nn.Linear classifier, got {type(layer).__name__}.")
    return layer


def adapt_prior(
    model: nn.Module, log_prior: PriorLike, *, calibration: Optional[Calibration] = None, data: str = ""
) -> nn.Module:
    """A copy of ``model`` computing ``calibration(model(x)) + log_prior`` with the base architecture's weights.

    PEMs are merged first (``timm.utils.reparameterize_model``); the calibration's temperature
    and bias and then ``log_prior`` are folded into the final linear layer, so the result loads
    strictly into the plain architecture, costs what it costs and exports to ONNX. ``log_prior``
    is added as given: for plain cross-entropy without ``calibration`` pass ``log pi_t - log pi_s``.
    The normalised prior, calibration and ``data`` (where the estimate came from) are recorded
    in ``pretrained_cfg[TARGET_PRIOR_KEY]``, which the Hub and ONNX exports carry.
    """
    from timm.utils import reparameterize_model

    adapted = reparameterize_model(model) if has_pems(model) else copy.deepcopy(model)
    layer = _final_linear(adapted)
    log_prior = torch.as_tensor(log_prior, dtype=torch.float64).detach().cpu()
    if log_prior.shape != (layer.out_features,) or not torch.isfinite(log_prior).all():
        raise ValueError(
            f"log_prior must be {layer.out_features} finite values (one per class), got shape {tuple(log_prior.shape)}."
        )
    with torch.no_grad():
        if calibration is not None:
            layer.weight.div_(calibration.temperature)
            layer.bias.copy_(layer.bias / calibration.temperature + calibration.bias.to(layer.bias))
        layer.bias.add_(log_prior.to(layer.bias))
    record = PriorRecord(
        prior=tuple(torch.softmax(log_prior, 0).tolist()),
        temperature=None if calibration is None else calibration.temperature,
        calibration_bias=None if calibration is None else tuple(calibration.bias.tolist()),
        data=data,
    )
    adapted.pretrained_cfg = {**getattr(adapted, "pretrained_cfg", {}), TARGET_PRIOR_KEY: record.to_dict()}
    return adapted


class OnlinePriorEstimator:
    """EM on a sliding window of the most recent ``window`` predictions, warm-started from the last estimate.

    ``init`` (default uniform) is the estimate before any data; each :meth:`update` appends a
    batch of logits (a posterior under ``source_prior``, default uniform), drops what falls out
    of the window and re-runs :func:`em_prior` from the previous estimate (floored at 1e-6 so no
    class becomes unreachable). After a change of class mix the estimate reflects only the new
    mix once ``window`` new predictions have arrived.
    """

    def __init__(
        self,
        num_classes: int,
        window: int = 2000,
        *,
        init: Optional[PriorLike] = None,
        source_prior: Optional[PriorLike] = None,
        max_iter: int = 100,
        tol: float = 1e-6,
    ) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a positive number of predictions, got {window!r}.")
        uniform = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
        self.num_classes, self.window = num_classes, window
        self.init = uniform if init is None else _check_prior(init, num_classes, "init")
        self.source_prior = None if source_prior is None else _check_prior(source_prior, num_classes, "source_prior")
        self.max_iter, self.tol = max_iter, tol
        self.reset()

    def reset(self) -> None:
        """Forget every prediction and return to ``init``."""
        self.prior = self.init.clone()
        self._logits = torch.empty(0, self.num_classes, dtype=torch.float64)

    def update(self, logits: Tensor) -> Tensor:
        """Add a batch of logits ``(B, C)`` to the window and return the new prior estimate."""
        logits = check_logits(logits, "logits", self.num_classes)
        self._logits = torch.cat([self._logits, logits])[-self.window :]
        start = self.prior.clamp_min(PRIOR_FLOOR)
        self.prior = em_prior(
            self._logits, source_prior=self.source_prior, init=start, max_iter=self.max_iter, tol=self.tol
        )
        return self.prior


class StreamingPriorAdapter(nn.Module):
    """Wraps a classifier for a stream: each batch first updates the prior estimate, then is classified with it.

    Returns ``calibration(model(x)) + log prior`` (``calibration`` default: none, for balanced
    logits), so predictions follow the drifting class mix without labels. The estimate after
    the last batch is ``estimator.prior``; ``estimator.reset()`` restarts the stream.
    """

    def __init__(
        self, model: nn.Module, estimator: OnlinePriorEstimator, calibration: Optional[Calibration] = None
    ) -> None:
        super().__init__()
        self.model, self.estimator, self.calibration = model, estimator, calibration

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        """Update the estimate with this batch, then return its adapted logits."""
        logits = self.model(x)
        calibrated = logits.double() if self.calibration is None else self.calibration(logits)
        prior = self.estimator.update(calibrated)
        return (calibrated + prior.log().to(calibrated.device)).to(logits.dtype)
