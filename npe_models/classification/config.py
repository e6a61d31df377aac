"""Training configuration: the CIFAR-LT recipes HP-1 and HP-2, and a config that records every setting.

A run's resolved :class:`TrainConfig` is saved as ``config.json`` in its run directory; resuming
checks that the settings that shape the result have not changed (``npe-models train`` resolves them with
:func:`npe_models.classification.checkpoint.resolve_train_config`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import timm

from .._validation import check_number, check_numbers
from ..data import CIFAR_NUM_CLASSES, check_dataset, check_file_loading
from ..models import npe_model_name, parse_npe_name
from ..npe import DEFAULT_NPE_ALPHA, DEFAULT_NPE_T, check_npe_alpha, check_npe_t
from ..runs import SerializableConfig

__all__ = [
    "TrainConfig",
    "RECIPES",
    "CIFAR_RECIPES",
    "LARGE_RECIPES",
    "default_recipe",
    "METHODS",
    "RUNTIME_FIELDS",
    "resolve_config",
    "num_pems_of",
]

METHODS = ("ce", "la", "posthoc_la", "crt", "npe")
METHODS_FROM_CE = ("crt", "posthoc_la")

# The CIFAR-LT protocol of the NPE paper (ResNet-32, SGD momentum 0.9, no warm-up).
CIFAR_RECIPES: dict[str, dict[str, Any]] = {
    "hp1": dict(lr=0.1, weight_decay=2e-4, batch_size=128, epochs=200, milestones=(160, 180)),
    "hp2": dict(lr=0.05, weight_decay=1e-3, batch_size=64, epochs=120, milestones=(100, 110)),
}
# The large data sets as the paper's code trains them: SGD momentum 0.9, batch 256, lr 0.1, cosine
# schedule, a 2048-wide last layer; bf16 autocast. Places-LT starts from ImageNet weights.
_LARGE = dict(lr=0.1, batch_size=256, schedule="cosine", milestones=(), amp=True)
LARGE_RECIPES: dict[str, dict[str, Any]] = {
    "imagenet_lt": dict(_LARGE, dataset="imagenet_lt", model="resnet50", weight_decay=5e-4, epochs=180),
    "inat2018": dict(_LARGE, dataset="inat2018", model="resnet50", weight_decay=1e-4, epochs=200),
    "places_lt": dict(
        _LARGE, dataset="places_lt", model="resnet152", weight_decay=5e-4, epochs=90, backbone_weights="imagenet"
    ),
}
RECIPES: dict[str, dict[str, Any]] = {**CIFAR_RECIPES, **LARGE_RECIPES}
# cRT re-trains only the classifier: a short cosine schedule at the recipe's lr and weight decay.
CRT_OVERRIDES: dict[str, Any] = dict(epochs=10, schedule="cosine", milestones=())

# Settings that may change between sittings of one run (paths, hardware) without changing its result.
RUNTIME_FIELDS = (
    "data_dir",
    "split_dir",
    "download",
    "workers",
    "device",
    "amp",
    "channels_last",
    "compile",
    "eval_batch_size",
)
# torch.compile modes of the training step (--compile); reduce-overhead adds CUDA graphs, so it needs a GPU.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


# Range of each numeric setting (checked before any data is loaded; see _validation.check_number).
_NUMBER_RULES: dict[str, dict[str, Any]] = {
    "rho": dict(minimum=1),
    "max_per_class": dict(integer=True, minimum=1),
    "epochs": dict(integer=True, minimum=0),
    "batch_size": dict(integer=True, minimum=1),
    "lr": dict(above=0),
    "momentum": dict(minimum=0, below=1),
    "weight_decay": dict(minimum=0),
    "gamma": dict(above=0),
    "accum_steps": dict(integer=True, minimum=1),
    "tau": dict(),
    "seed": dict(integer=True, minimum=0, below=2**32),
    "eval_every": dict(integer=True, minimum=0),
    "eval_batch_size": dict(integer=True, minimum=1),
}
_OPTIONAL_NUMBERS = ("rho", "max_per_class")


def num_pems_of(model_name: str) -> int:
    """Number of PEMs a model name declares (``resnet32_npe16`` -> 16, ``resnet32`` -> 0)."""
    return parse_npe_name(model_name)[1]


@dataclass
class TrainConfig(SerializableConfig):
    """Every setting of a training run; ``resolve_config`` fills it from a recipe and overrides."""

    task: ClassVar[str] = "classification"
    may_change: ClassVar[tuple[str, ...]] = RUNTIME_FIELDS

    model: str = "resnet32_npe16"
    method: str = "npe"
    recipe: str = "hp2"
    dataset: str = "cifar10"
    rho: Optional[float] = 100.0
    max_per_class: Optional[int] = None
    data_dir: str = "data"
    split_dir: Optional[str] = None
    download: bool = False
    image_size: Optional[int] = None
    workers: Optional[int] = None
    backbone_weights: Optional[str] = None
    epochs: int = 120
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-3
    schedule: str = "step"
    milestones: tuple[int, ...] = (100, 110)
    gamma: float = 0.1
    accum_steps: int = 1
    tau: float = 1.0
    npe_alpha: float = DEFAULT_NPE_ALPHA
    npe_t: int = DEFAULT_NPE_T
    init: Optional[str] = None
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    amp: bool = False
    channels_last: bool = True
    compile: Optional[str] = None
    eval_every: int = 10
    eval_batch_size: int = 500

    def validate(self) -> None:
        """Raise a clear error for settings that cannot train."""
        self._check_method_and_model()
        self._check_data()
        self._check_optimisation()

    def _check_method_and_model(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}.")
        if not timm.is_model(self.model.split(".", 1)[0]):
            raise ValueError(f"unknown model {self.model!r}; run `npe-models list` to see the available models.")
        pems = num_pems_of(self.model)
        if self.method == "npe" and pems == 0:
            raise ValueError(f"method 'npe' needs a model with PEMs, e.g. '{self.model}_npe16'; got {self.model!r}.")
        if self.method != "npe" and pems:
            raise ValueError(
                f"method {self.method!r} trains a plain model, but {self.model!r} has PEMs; use method 'npe' "
                f"or the model without the '_npe{pems}' suffix."
            )
        if self.method in METHODS_FROM_CE and not self.init:
            raise ValueError(
                f"method {self.method!r} starts from a trained CE model: pass --init RUN_DIR_OR_CHECKPOINT."
            )
        if self.method == "posthoc_la" and self.epochs:
            raise ValueError(
                f"method 'posthoc_la' adjusts a trained CE model and does not train; got epochs={self.epochs}."
            )

    def _check_data(self) -> None:
        check_dataset(self.dataset, self.task)
        check_file_loading(self.image_size, self.workers)
        if self.rho is None and self.dataset in CIFAR_NUM_CLASSES:
            raise ValueError(f"{self.dataset}-LT needs rho, the imbalance ratio (e.g. 100).")

    def _check_optimisation(self) -> None:
        check_numbers(self, _NUMBER_RULES, optional=_OPTIONAL_NUMBERS)
        check_npe_alpha(self.npe_alpha)  # the NPE head's own checks: the config refuses what the model refuses
        check_npe_t(self.npe_t)
        if self.epochs == 0 and self.method != "posthoc_la":
            raise ValueError(f"epochs (--epochs) must be >= 1 for method {self.method!r}; got 0.")
        if self.schedule not in ("step", "cosine"):
            raise ValueError(f"schedule must be 'step' or 'cosine', got {self.schedule!r}.")
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ValueError(f"compile (--compile) must be one of {', '.join(COMPILE_MODES)}; got {self.compile!r}.")
        if self.batch_size % self.accum_steps:
            raise ValueError(f"batch_size {self.batch_size} must be divisible by accum_steps {self.accum_steps}.")
        for milestone in self.milestones:
            check_number("milestones", milestone, integer=True, minimum=1)
        if list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones (--milestones) must be increasing epochs, got {list(self.milestones)}.")


def default_recipe(dataset: Optional[str]) -> str:
    """The recipe a data set trains with unless one is given: its own for the large sets, else HP-2."""
    return dataset if dataset in LARGE_RECIPES else "hp2"


def _recipe_settings(recipe: str, method: str, dataset: Optional[str]) -> dict[str, Any]:
    """The recipe's settings with its default model (with 16 PEMs for method npe) and cRT's / post-hoc LA's changes."""
    settings = dict(RECIPES[recipe])
    settings["model"] = npe_model_name(settings.get("model", "resnet32"), 16 if method == "npe" else 0)
    if method == "crt":
        settings.update(CRT_OVERRIDES)
    if method == "posthoc_la":
        settings["epochs"] = 0
    if (dataset or settings.get("dataset", "cifar10")) not in CIFAR_NUM_CLASSES:
        settings["rho"] = None  # file data sets train on their split as it is unless a rho is given
    return settings


def resolve_config(recipe: str = "hp2", method: str = "npe", **overrides: Any) -> TrainConfig:
    """The recipe's settings (plus cRT's classifier-only schedule) updated with ``overrides``, validated.

    ``overrides`` set any :class:`TrainConfig` field; ``None`` values are ignored, so a command
    line's unset options fall through to the recipe.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {recipe!r}.")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown training settings {unknown}; valid settings: {sorted(names)}.")
    settings = _recipe_settings(recipe, method, overrides.get("dataset"))
    settings.update({k: v for k, v in overrides.items() if v is not None})
    if "milestones" in settings:
        settings["milestones"] = tuple(int(m) for m in settings["milestones"])
    config = TrainConfig(recipe=recipe, method=method, **settings)
    config.validate()
    return config
