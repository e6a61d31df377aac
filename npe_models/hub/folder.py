"""Writing Hub folders: ``config.json`` (timm's), ``model.safetensors`` and the card, atomically; uploading them."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import timm
from huggingface_hub import EvalResult, HfApi
from huggingface_hub.hf_api import CommitInfo
from timm.models import save_for_hf
from torch import nn

from ..describe import (
    CLASSIFICATION,
    TARGET_PRIOR_KEY,
    ModelDescription,
    check_weights_fit,
    describe_model,
)
from ..files import WEIGHTS_FILE
from ..outputs import check_output_dir
from ..segmentation.checkpoint import save_segmentation_weights
from ..segmentation.config import SegmentationModelConfig, pretrained_segmentation_config, shipped_segmentation_names
from .card import PIPELINE_TAGS, evaluation_results, model_card, pretrained_card, shipped_entry
from .load import CARD_NAME, CONFIG_NAME, is_hub_folder, weight_shapes

__all__ = ["save_for_hub", "save_pretrained_for_hub", "push_to_hub"]


def _write_classifier_files(model: nn.Module, description: ModelDescription, folder: Path) -> dict[str, Any]:
    """timm's own ``config.json`` and ``model.safetensors``, the config re-targeted at ``description.architecture``."""
    model_config: dict[str, Any] = {"pretrained_cfg": {"architecture": description.architecture}}
    if description.label_names:
        model_config["label_names"] = list(description.label_names)
    save_for_hf(model, str(folder), model_config=model_config, safe_serialization=True)
    config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    config["pretrained_cfg"].pop(TARGET_PRIOR_KEY, None)  # timm's PretrainedCfg has no such field: it travels in "npe"
    config["model_args"] = description.model_args
    config["npe"] = description.npe_config()
    return config


def _write_segmentation_files(model: nn.Module, description: ModelDescription, folder: Path) -> dict[str, Any]:
    """Weights (with their settings in the safetensors metadata, as segmentation runs store them) and the config."""
    settings = SegmentationModelConfig.from_dict(description.model_args)
    save_segmentation_weights(folder / WEIGHTS_FILE, model, settings)
    config: dict[str, Any] = {"architecture": description.architecture, "num_classes": description.num_classes}
    if description.label_names:
        config["label_names"] = list(description.label_names)
    config["segmentation_model"] = description.model_args
    config["npe"] = description.npe_config()
    return config


def _writable_parent(directory: Path) -> Path:
    """Create the parent of ``directory`` if needed; a clear error when it cannot be written."""
    parent = directory.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise NotADirectoryError(
            f"cannot create {directory}: a file is in the way of its parent folder {parent}; choose another directory."
        ) from error
    except PermissionError as error:
        raise PermissionError(
            f"cannot create {parent} for {directory}: permission denied; choose a writable directory."
        ) from error
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(
            f"cannot write into {parent} (for {directory}): permission denied; choose a writable directory."
        )
    return parent


def _publish_directory(staging: Path, directory: Path) -> None:
    """Move a finished staging folder into place: renamed as a whole when ``directory`` is new, else file by file
    (each replaced atomically), so that nothing but the files written here changes in an existing folder. The
    files get the mode every other file written here gets (0666 less the umask), whatever the writer chose."""
    mode = 0o666 & ~_umask()
    for written in staging.iterdir():
        os.chmod(written, mode)
    if not directory.exists():
        os.replace(staging, directory)
        return
    for written in sorted(staging.iterdir(), key=lambda path: path.name == CARD_NAME):  # the card last
        os.replace(written, directory / written.name)


def _umask() -> int:
    """The process's umask (read by setting it, then restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_model_files(model: nn.Module, description: ModelDescription, folder: Path) -> None:
    """The task's ``config.json`` and ``model.safetensors`` in ``folder``, checked to fit the architecture they name."""
    write_files = _write_classifier_files if description.task == CLASSIFICATION else _write_segmentation_files
    hub_config = write_files(model, description, folder)
    (folder / CONFIG_NAME).write_text(json.dumps(hub_config, indent=2) + "\n", encoding="utf-8")
    check_weights_fit(
        description.architecture,
        description.task,
        description.model_args,
        weight_shapes(folder / WEIGHTS_FILE),
        f"the {type(model).__name__} being saved",
    )


def save_for_hub(
    model: nn.Module,
    directory: Union[str, os.PathLike],
    *,
    label_names: Optional[Sequence[str]] = None,
    metrics: Optional[Mapping[str, float]] = None,
    dataset: Optional[str] = None,
    dataset_id: Optional[str] = None,
    split: str = "test",
    recipe: Optional[Mapping[str, Any]] = None,
    repo_id: Optional[str] = None,
    model_name: Optional[str] = None,
    license: Optional[str] = "apache-2.0",
    overwrite: bool = False,
    config: Optional[SegmentationModelConfig] = None,
    notes: Optional[str] = None,
    eval_results: Sequence[EvalResult] = (),
    base_model: Optional[str] = None,
    inputs: Sequence[Union[str, os.PathLike, None]] = (),
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card into ``directory``.

    ``metrics`` (e.g. ``{"top1": 80.1, "many": 91.0, "medium": 78.2, "few": 70.3}``) become
    the card's ``model-index`` results on ``dataset``, followed by ``eval_results`` (further
    entries, e.g. a named subset of the test set); ``recipe`` is shown as the training recipe;
    ``notes`` (markdown) follows the evaluation; ``repo_id`` fills the usage snippets;
    ``base_model`` (a Hub id) names the checkpoint this one was made from. The folder is
    assembled under a temporary name beside ``directory`` and renamed into place, so it is
    complete or absent. ``directory`` must be new, empty or an earlier Hub folder, whose files
    ``overwrite`` replaces (nothing else in it), and must not be or contain one of ``inputs``.
    """
    check_output_dir(directory, "Hugging Face Hub folder", is_own=is_hub_folder, overwrite=overwrite, inputs=inputs)
    if metrics and not (dataset and dataset_id):
        raise ValueError("metrics need dataset= (a readable name) and dataset_id= (e.g. 'cifar10') for the model card.")
    directory = Path(directory)
    description = describe_model(model, label_names, config)
    task = PIPELINE_TAGS[description.task]
    results = [*(evaluation_results(metrics, task, dataset, dataset_id, split) if metrics else []), *eval_results]
    parent = _writable_parent(directory)
    staging = parent / f".{directory.name}.{uuid.uuid4().hex}.partial"
    staging.mkdir()
    try:
        _write_model_files(model, description, staging)
        card = model_card(
            description,
            model_name=model_name
            or (repo_id.split("/")[-1] if repo_id else description.npe_architecture or description.architecture),
            repo_id=repo_id,
            results=results,
            recipe=recipe,
            license=license,
            base_model=base_model,
            notes=notes,
        )
        card.save(staging / CARD_NAME)
        _publish_directory(staging, directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return directory


def _shipped_model(name: str) -> nn.Module:
    """A shipped checkpoint as packaged: the merged form as the NPE model it was folded from, so its card says so."""
    from timm.utils import reparameterize_model

    model, entry = timm.create_model(name, pretrained=True), shipped_entry(name)
    if entry["form"] != "merged":
        return model
    run = entry["run"]
    npe_model = timm.create_model(
        run["model"], num_classes=model.num_classes, npe_alpha=run["npe_alpha"], npe_t=run["npe_t"]
    )
    merged = reparameterize_model(npe_model)
    merged.load_state_dict(model.state_dict())
    merged.pretrained_cfg = {**model.pretrained_cfg, "architecture": npe_model.pretrained_cfg["architecture"]}
    return merged.eval()


def save_pretrained_for_hub(name: str, directory: Union[str, os.PathLike], *, overwrite: bool = False) -> Path:
    """Write the Hub folder of a checkpoint or segmentation weights shipped with the package (``npe-models list
    --pretrained``), card included.

    The folders are not kept in git: this regenerates one, as the packaging wrote it.
    """
    card = pretrained_card(name)
    if name in shipped_segmentation_names():
        config, weights = pretrained_segmentation_config(name)
        model = config.build(weights=weights).eval()
        return save_for_hub(model, directory, overwrite=overwrite, config=config, **card)
    return save_for_hub(_shipped_model(name), directory, overwrite=overwrite, **card)


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    token: Optional[str] = None,
    private: Optional[bool] = None,
    revision: Optional[str] = None,
    commit_message: str = "Upload NPE model",
    create_pr: bool = False,
    **save_kwargs: Any,
) -> CommitInfo:
    """Save the model with ``save_for_hub`` into a temporary folder and upload it to ``repo_id``.

    Creates the repository when missing; ``save_kwargs`` (metrics, recipe, label names ...)
    go to ``save_for_hub``. Returns huggingface_hub's ``CommitInfo``.
    """
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ValueError(f"repo_id must look like 'organisation/name', got {repo_id!r}.")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="npe-hub-") as tmp:
        folder = save_for_hub(model, Path(tmp) / repo_id.split("/")[1], repo_id=repo_id, **save_kwargs)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr,
        )
