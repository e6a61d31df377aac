"""Training methods for long-tailed classification: CE, logit adjustment (LA), post-hoc LA, cRT and NPE.

Each method says which parameters train, how the model is put in training mode, which
forward pass it uses and how the loss is built; the training loop is shared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses import logit_adjusted_cross_entropy, one_way_logistic_loss
from .checkpoint import WEIGHTS_FILE, load_trained_model
from .config import TrainConfig

__all__ = [
    "TrainingMethod",
    "NPEMethod",
    "LogitAdjustedMethod",
    "ClassifierRetraining",
    "PosthocLogitAdjustment",
    "make_method",
]


class TrainingMethod:
    """Cross-entropy on the model's logits; the base the other methods specialise.

    The labels come from a data set whose labels were range-checked when it was loaded, so the
    losses skip their per-batch check (``check_targets=False``: no host sync per step on a GPU).
    """

    sampling = "uniform"
    loss_parts: tuple[str, ...] = ("ce",)

    def __init__(self, config: TrainConfig, log_prior: Tensor) -> None:
        self.config = config
        self.log_prior = log_prior

    def setup(self, model: nn.Module) -> list[nn.Parameter]:
        """Prepare a freshly built model; return the parameters to optimise."""
        return list(model.parameters())

    def set_train_mode(self, model: nn.Module) -> None:
        model.train()

    def forward(self, model: nn.Module, images: Tensor) -> Any:
        return model(images)

    def logits(self, output: Any) -> Tensor:
        """The main logits of a training forward pass (for training accuracy)."""
        return output

    def loss(self, output: Any, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and its named parts (for the log)."""
        ce = F.cross_entropy(output, labels)
        return ce, {"ce": ce}


class LogitAdjustedMethod(TrainingMethod):
    """Logit-adjusted loss ``CE(z + tau * log prior, y)`` (Menon et al., 2021)."""

    loss_parts = ("la",)

    def loss(self, output: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        la = logit_adjusted_cross_entropy(output, labels, self.log_prior, self.config.tau, check_targets=False)
        return la, {"la": la}


class NPEMethod(TrainingMethod):
    """``CE(z, y)`` plus the one-way logistic loss of every PEM; backbone, classifier and PEMs train jointly."""

    loss_parts = ("ce", "npe")

    def forward(self, model: nn.Module, images: Tensor) -> Any:
        return model.forward_train(images)

    def logits(self, output: Any) -> Tensor:
        return output.logits

    def loss(self, output: Any, labels: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        ce = F.cross_entropy(output.logits, labels)
        npe = one_way_logistic_loss(output.pem_logits, labels, t=self.config.npe_t, check_targets=False)
        return ce + npe, {"ce": ce, "npe": npe}


def _load_ce_weights(model: nn.Module, init: Union[str, Path], config: TrainConfig, num_classes: int) -> None:
    """Copy a trained model's weights (a finished run directory or a checkpoint file) into ``model``."""
    if Path(init).is_dir() and not (Path(init) / WEIGHTS_FILE).is_file():
        raise ValueError(
            f"--init {init} is a run directory that has not finished (no {WEIGHTS_FILE}); finish it with --resume, "
            f"or pass one of its checkpoint files explicitly."
        )
    trained, trained_config = load_trained_model(init, config.model, num_classes)
    if trained_config is not None and trained_config.model != config.model:
        raise ValueError(
            f"--init {init} is a {trained_config.model!r} model but this run trains {config.model!r}; "
            "pass the same --model (or leave it out)."
        )
    model.load_state_dict(trained.state_dict())


class ClassifierRetraining(TrainingMethod):
    """cRT (Kang et al., 2020): a re-initialised classifier trained with class-balanced batches on a frozen backbone."""

    sampling = "class_balanced"

    def setup(self, model: nn.Module) -> list[nn.Parameter]:
        _load_ce_weights(model, self.config.init, self.config, len(self.log_prior))
        model.reset_classifier(len(self.log_prior))
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        classifier = list(model.get_classifier().parameters())
        for parameter in classifier:
            parameter.requires_grad_(True)
        return classifier

    def set_train_mode(self, model: nn.Module) -> None:
        """Backbone in eval mode (frozen BatchNorm statistics); only the classifier trains."""
        model.eval()
        model.get_classifier().train()


class PosthocLogitAdjustment(TrainingMethod):
    """Post-hoc LA: a CE model whose classifier bias absorbs ``-tau * log prior``; no training epochs."""

    def setup(self, model: nn.Module) -> list[nn.Parameter]:
        _load_ce_weights(model, self.config.init, self.config, len(self.log_prior))
        bias = getattr(model.get_classifier(), "bias", None)
        if bias is None:
            raise ValueError(
                f"post-hoc LA folds into the classifier bias, but {self.config.model}'s classifier has none."
            )
        with torch.no_grad():
            bias.sub_(self.config.tau * self.log_prior.to(bias))
        return list(model.parameters())


_METHODS: dict[str, type[TrainingMethod]] = {
    "ce": TrainingMethod,
    "la": LogitAdjustedMethod,
    "npe": NPEMethod,
    "crt": ClassifierRetraining,
    "posthoc_la": PosthocLogitAdjustment,
}


def make_method(config: TrainConfig, log_prior: Tensor) -> TrainingMethod:
    """The training method ``config.method`` names, given the training set's log class prior."""
    if config.method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(_METHODS)}; got {config.method!r}.")
    return _METHODS[config.method](config, log_prior)
