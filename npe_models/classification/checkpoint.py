"""Classification checkpoints and weights: saving the final weights, loading a trained model back, and the
settings of a fresh or resumed run (:func:`resolve_train_config`, which reads the run it continues or starts from).

The run directory's files and their atomic writing live in :mod:`npe_models.runs`, shared with
segmentation; they are importable from here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import timm
import torch
from timm.models import get_pretrained_cfg
from torch import nn

from .. import runs
from ..data import resolve_data_dir
from ..distributed import device_for_resume
from ..models._bundled import forget_pretrained_weights
from ..runs import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LOG_FILE,
    METRICS_FILE,
    WEIGHTS_FILE,
    atomic_write,
    resumable_config,
    write_json,
)
from ..runs import load_training_state as load_checkpoint
from .config import METHODS_FROM_CE, TrainConfig, default_recipe, num_pems_of, resolve_config

__all__ = [
    "save_weights",
    "set_label_names",
    "build_model",
    "load_trained_model",
    "read_saved_config",
    "resolve_train_config",
    "check_num_classes",
    "load_checkpoint",
    # the run folder's names, from npe_models.runs, importable from here as before
    "CONFIG_FILE",
    "LOG_FILE",
    "CHECKPOINT_FILE",
    "WEIGHTS_FILE",
    "METRICS_FILE",
    "atomic_write",
    "write_json",
]

PathLike = Union[str, Path]


def save_weights(path: PathLike, model: nn.Module, config: Optional[TrainConfig] = None) -> None:
    """The model's state_dict as safetensors (atomically), with the task and training config in its metadata."""
    metadata: dict[str, Any] = {"task": TrainConfig.task}
    label_names = getattr(model, "pretrained_cfg", {}).get("label_names")  # timm models have a pretrained cfg
    if label_names:
        metadata["label_names"] = list(label_names)
    if config is not None:
        metadata["config"] = config.to_dict()
    runs.save_weights(path, model, metadata)


def build_model(config: TrainConfig, num_classes: int) -> nn.Module:
    """The timm model a config names, with ``num_classes`` outputs (and its NPE settings when it has PEMs).

    It will hold a run's weights, so its pretrained cfg no longer names the architecture's default checkpoint.
    """
    if not timm.is_model(config.model.split(".", 1)[0]):
        raise ValueError(f"unknown model {config.model!r}; run `npe-models list` to see the available models.")
    kwargs: dict[str, Any] = {"num_classes": num_classes, **_backbone_weights(config.backbone_weights)}
    if num_pems_of(config.model):
        kwargs.update(npe_alpha=config.npe_alpha, npe_t=config.npe_t)
    return forget_pretrained_weights(timm.create_model(config.model, **kwargs))


def _backbone_weights(weights: Optional[str]) -> dict[str, Any]:
    """timm arguments that start the backbone from ``weights``: ``imagenet`` (timm's default pretrained
    weights, downloaded or from the Hugging Face cache) or a local weights file; the classifier stays fresh."""
    if weights is None:
        return {}
    if weights == "imagenet":
        return {"pretrained": True}
    if not Path(weights).is_file():
        raise FileNotFoundError(f"backbone weights '{weights}' do not exist; give 'imagenet' or a weights file.")
    return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(weights)}}


def check_num_classes(model: nn.Module, num_classes: int, source: str) -> None:
    """Raise a clear error when a model from ``source`` predicts a different number of classes than the data has."""
    model_classes = getattr(model, "num_classes", None)
    if model_classes is not None and model_classes != num_classes:
        raise ValueError(
            f"{source} has {model_classes} classes but the data set has {num_classes}; "
            "pass the --dataset the model was trained on."
        )


def _run_file(source: Path) -> Path:
    """The weights file of a run directory (its checkpoint until it has finished), or ``source`` itself."""
    if source.is_dir():
        if (source / WEIGHTS_FILE).is_file():
            return source / WEIGHTS_FILE
        if (source / CHECKPOINT_FILE).is_file():
            return source / CHECKPOINT_FILE
        raise FileNotFoundError(
            f"run directory '{source}' has neither {WEIGHTS_FILE} nor {CHECKPOINT_FILE}: it has not finished an epoch."
        )
    if not source.is_file():
        raise FileNotFoundError(f"'{source}' is neither a run directory nor a checkpoint file.")
    return source


def _state_and_config(source: Path) -> tuple[dict[str, torch.Tensor], Optional[TrainConfig], str, Optional[list[str]]]:
    """Weights, training config, origin and class names from a run directory, a ``.safetensors`` file or a
    ``checkpoint.pt``."""
    source = _run_file(source)
    if source.suffix == ".safetensors":
        state, saved = runs.read_weights(source)
    else:
        saved = load_checkpoint(source)
        if "model" not in saved:
            raise ValueError(f"'{source}' has no 'model' entry; expected a checkpoint written by npe-models train.")
        state = saved["model"]
    if saved.get("task", TrainConfig.task) != TrainConfig.task:
        raise ValueError(f"'{source}' holds a {saved['task']} model, not a classifier; load it with its task's loader.")
    config = TrainConfig.from_dict(saved["config"]) if "config" in saved else None
    return state, config, str(source), saved.get("label_names")


def _saved_num_classes(state: dict[str, torch.Tensor], model_name: str) -> Optional[int]:
    """Class count of a state_dict, read from the classifier named by the model's pretrained cfg."""
    classifier = get_pretrained_cfg(model_name.split(".", 1)[0]).classifier
    for key in (f"{classifier}.bias", f"{classifier}.weight"):
        if key in state:
            return int(state[key].shape[0])
    return None


def read_saved_config(source: PathLike) -> Optional[TrainConfig]:
    """The training config stored with a run directory or checkpoint file (``None`` for bare weights)."""
    source = Path(source)
    if source.is_dir() and (source / CONFIG_FILE).is_file():
        return TrainConfig.from_dict(runs.read_run_config(source, TrainConfig.task))
    return _state_and_config(source)[1]


def load_trained_model(
    source: PathLike, model_name: Optional[str] = None, num_classes: Optional[int] = None
) -> tuple[nn.Module, Optional[TrainConfig]]:
    """A trained model (in eval mode) and its training config, from a run directory or a checkpoint file.

    ``model_name`` / ``num_classes`` are needed only for weights that carry no npe-models config;
    a given ``num_classes`` that disagrees with the weights is an error.
    """
    state, config, origin, label_names = _state_and_config(Path(source))
    if config is None:
        if model_name is None:
            raise ValueError(f"{origin} carries no training config: pass the model name (--model).")
        config = TrainConfig(model=model_name, method="npe" if num_pems_of(model_name) else "ce")
    if not timm.is_model(config.model.split(".", 1)[0]):
        raise ValueError(f"{origin} names unknown model {config.model!r}; run `npe-models list` to see the models.")
    saved_classes = _saved_num_classes(state, config.model)
    if saved_classes is None:
        raise ValueError(
            f"{origin} has no weights for {config.model}'s classifier; is it a checkpoint of another model?"
        )
    if num_classes is not None and saved_classes != num_classes:
        raise ValueError(
            f"{origin} has {saved_classes} classes but the data set has {num_classes}; "
            "pass the --dataset the model was trained on."
        )
    model = build_model(config, saved_classes)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{origin} does not fit model {config.model!r}: {error}") from error
    if label_names:
        set_label_names(model, label_names)
    return model.eval(), config


def set_label_names(model: nn.Module, names: Sequence[str]) -> None:
    """Record the class names in the model's pretrained cfg (timm's ``label_names``), where exports read them."""
    if len(names) != model.num_classes:
        raise ValueError(f"{len(names)} class names for a model with {model.num_classes} classes.")
    model.pretrained_cfg = {**model.pretrained_cfg, "label_names": tuple(names)}


def resolve_train_config(
    out_dir: Union[str, Path], resume: bool, method: Optional[str] = None, recipe: Optional[str] = None, **given: Any
) -> TrainConfig:
    """The settings of the run in ``out_dir``: with ``resume`` its ``config.json`` updated with ``given``, else
    the recipe's (default hp2) updated with them. ``None`` values count as not given.

    A resumed run keeps its recorded device unless ``device`` is given or this machine lacks it (then ``auto``). A
    fresh run's method
    defaults to npe for models with PEMs, else ce; its data directory to ``$NPE_DATA_DIR``, else
    ``data``; cRT and post-hoc LA take the model of their ``init`` run when ``model`` is not given.
    """
    given = {name: value for name, value in given.items() if value is not None}
    if resume:
        saved = dict(resumable_config(out_dir, TrainConfig.task))
        saved["device"] = device_for_resume(saved.get("device", "auto"))
        saved.update({name: value for name, value in (("method", method), ("recipe", recipe)) if value is not None})
        return TrainConfig.from_dict({**saved, **given})
    given["data_dir"] = resolve_data_dir(given.get("data_dir"))
    if method is None:
        method = "npe" if num_pems_of(given.get("model", "resnet32_npe16")) else "ce"
    if method in METHODS_FROM_CE and "model" not in given and given.get("init"):
        init_config = read_saved_config(given["init"])
        if init_config is not None:
            given["model"] = init_config.model
    return resolve_config(recipe or default_recipe(given.get("dataset")), method, **given)
