"""Hugging Face Hub folders for NPE models: a timm-compatible config, safetensors weights and a model card.

``save_for_hub`` writes ``config.json``, ``model.safetensors`` and ``README.md`` atomically;
``timm.create_model("local-dir:DIR", pretrained=True)`` (or ``"hf-hub:ORG/NAME"`` once
uploaded with ``push_to_hub``) loads a classifier back. A merged model is saved under its
base architecture (``resnet32``) so it reloads as the plain model; an unmerged one keeps its
NPE name (``resnet32_npe16``). ``load_from_hub`` loads any saved model, classifier or
segmentation, after checking that the config names a known architecture and that the
weights fit it. ``save_pretrained_for_hub(name, DIR)`` writes the folder of a checkpoint shipped
with the package, with the model card its manifest entry describes (the folders are generated,
not stored). What a model is (``describe_model``) comes from ``npe_models.describe``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import safetensors
import safetensors.torch
import timm
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, hf_hub_download
from huggingface_hub.hf_api import CommitInfo
from timm.models import save_for_hf
from torch import nn

from .describe import (
    CLASSIFICATION,
    SEGMENTATION,
    TARGET_PRIOR_KEY,
    ModelDescription,
    ModelStats,
    check_weights_fit,
    describe_model,
    model_stats,
)
from .models._bundled import BUNDLED_IN_WHEEL, ORIGIN_URL, PAPER_ID, PAPER_NAME, hub_repo_id, shipped_checkpoints
from .models.segmentation import parse_segmentation_model_name
from .segmentation.checkpoint import save_segmentation_weights
from .segmentation.config import SegmentationModelConfig

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CARD_NAME",
    "HUB_FILES",
    "CITATION",
    "ModelDescription",
    "describe_model",
    "save_for_hub",
    "pretrained_card",
    "save_pretrained_for_hub",
    "push_to_hub",
    "load_from_hub",
    "hub_folder",
    "read_hub_config",
    "is_hub_folder",
    "hub_task",
    "hub_segmentation_config",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
HUB_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
_PIPELINE_TAGS = {CLASSIFICATION: "image-classification", SEGMENTATION: "image-segmentation"}
_LOADER_TASKS = {CLASSIFICATION: "classification", SEGMENTATION: "segmentation"}  # the names runs and the loader use
CITATION = f"""@article{{yavari2026npe,
  title   = {{{PAPER_NAME}}},
  author  = {{Yavari, Masoud and Moallem, Payman}},
  journal = {{arXiv preprint {PAPER_ID}}},
  year    = {{2026}}
}}"""

# metric key -> (model-index metric type, human-readable name, metric config)
_METRICS = {
    "top1": ("accuracy", "Top-1 accuracy", None),
    "balanced_accuracy": ("accuracy", "Balanced accuracy", "balanced"),
    "many": ("accuracy", "Many-shot accuracy (> 100 training images)", "many"),
    "medium": ("accuracy", "Medium-shot accuracy (20-100 training images)", "medium"),
    "few": ("accuracy", "Few-shot accuracy (< 20 training images)", "few"),
    "miou": ("mean_iou", "Mean IoU", None),
    "mdice": ("dice", "Mean Dice", None),
    "pixel_accuracy": ("accuracy", "Pixel accuracy", "pixel"),
}
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
"""Readable names of the data sets the shipped checkpoints were trained on."""
_TEST_SETS = {"full": "full 10,000", "exact": "exact 1,000", "jpeg_twins": "JPEG twins of the exact 1,000"}
_INDEXED_TEST_SETS = {
    "full": ("JPEG-recovered (10,000 images, 9,000 of them from JPEG copies)", "jpeg-recovered", "test"),
    "exact": ("1,000 exact images (the official test batch's first 1,000)", None, "test[:1000]"),
}
"""Model-index name, config and split of a shipped checkpoint's test sets: apart, and never the clean CIFAR test set."""


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
    save_segmentation_weights(folder / WEIGHTS_NAME, model, settings)
    config: dict[str, Any] = {"architecture": description.architecture, "num_classes": description.num_classes}
    if description.label_names:
        config["label_names"] = list(description.label_names)
    config["segmentation_model"] = description.model_args
    config["npe"] = description.npe_config()
    return config


def _format_value(value: Any) -> str:
    """Floats without trailing zeros; lists and tuples alike (a recipe read back from JSON reads the same)."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_value(item) for item in value) + "]"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _evaluation_text(results: Sequence[EvalResult]) -> str:
    """One metric table per data set and split of the model-index."""
    tables: dict[tuple[str, Optional[str]], list[str]] = {}
    for result in results:
        row = f"| {result.metric_name} | {_format_value(result.metric_value)} |"
        tables.setdefault((result.dataset_name, result.dataset_split), []).append(row)
    if not tables:
        return "No evaluation results recorded."
    return "\n\n".join(
        f"On {dataset} ({split} split):\n\n" + "\n".join(["| metric | value |", "| --- | --- |", *rows])
        for (dataset, split), rows in tables.items()
    )


def _eval_results(
    metrics: Mapping[str, float], task: str, dataset: str, dataset_id: str, split: str, config: Optional[str] = None
) -> list[EvalResult]:
    results = []
    for key, value in metrics.items():
        metric_type, metric_name, metric_config = _METRICS.get(key, (key, key, None))
        results.append(
            EvalResult(
                task_type=task,
                dataset_type=dataset_id,
                dataset_name=dataset,
                dataset_config=config,
                dataset_split=split,
                metric_type=metric_type,
                metric_name=metric_name,
                metric_config=metric_config,
                metric_value=float(value),
            )
        )
    return results


def _python(lines: Sequence[str]) -> str:
    return "```python\n" + "\n".join(lines) + "\n```"


def _timm_model_lines(source: str, options: str = "") -> list[str]:
    """How each timm snippet starts: imports, the model (``options``: extra create_model arguments), its transform."""
    return [
        "import timm",
        "import npe_models  # registers the NPE architectures with timm",
        "",
        "# image: a PIL.Image",
        f'model = timm.create_model("{source}", pretrained=True{options}).eval()',
        "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))",
    ]


def _npe_training_lines(description: ModelDescription) -> list[str]:
    if not description.num_pems or description.merged:
        return []
    return [
        "",
        "# Training: out = model.forward_train(images) gives the main and PEM logits;",
        "# deployment: timm.utils.reparameterize_model(model) folds the PEMs away where they merge.",
    ]


def _classifier_usage(description: ModelDescription, stats: ModelStats, source: str) -> list[str]:
    """timm's three usage sections: classification, feature maps (``features_only``), embeddings (``num_classes=0``)."""
    logits = f"# (1, {description.num_classes})" + (" NPE-LA logits" if description.num_pems else " logits")
    embedding = f"# (1, {stats.num_features})"
    unpooled = f"# unpooled, (1, {', '.join(map(str, stats.unpooled_shape))})"
    classification = [
        *_timm_model_lines(source),
        f"logits = model(transform(image).unsqueeze(0))  {logits}",
        f"top_probabilities, top_class_indices = logits.softmax(dim=1).topk({min(5, description.num_classes)})",
        *_npe_training_lines(description),
    ]
    feature_maps = [
        *_timm_model_lines(source, ", features_only=True"),
        "for feature_map in model(transform(image).unsqueeze(0)):",
        "    print(feature_map.shape)  # (1, C, H, W) per stage: C in model.feature_info.channels()",
    ]
    embeddings = [
        *_timm_model_lines(source, ", num_classes=0"),
        f"embedding = model(transform(image).unsqueeze(0))  {embedding}, no classifier",
        "",
        "# or, keeping the classifier:",
        f'model = timm.create_model("{source}", pretrained=True).eval()',
        f"features = model.forward_features(transform(image).unsqueeze(0))  {unpooled}",
        f"embedding = model.forward_head(features, pre_logits=True)  {embedding}",
    ]
    return [
        "### Image Classification",
        _python(classification),
        "### Feature Map Extraction",
        _python(feature_maps),
        "### Image Embeddings",
        _python(embeddings),
    ]


def _usage(description: ModelDescription, stats: ModelStats, repo_id: Optional[str]) -> list[str]:
    source = f"hf-hub:{repo_id}" if repo_id else "local-dir:/path/to/this/folder"
    if description.task == CLASSIFICATION:
        return _classifier_usage(description, stats, source)
    lines = [
        "from npe_models.hub import load_from_hub",
        "",
        f'model = load_from_hub("{source}").eval()',
        'logits = model(images)["out"]  # (B, C, H, W)' + (", NPE-LA adjusted" if description.num_pems else ""),
        *_npe_training_lines(description),
    ]
    return [_python(lines)]


def _model_details(description: ModelDescription, stats: ModelStats) -> str:
    """Architecture, classes, input, timm's "Model Stats" (parameters, GMACs at the input size) and the paper."""
    channels, height, width = description.input_size
    classes = description.label_names if description.label_names and len(description.label_names) <= 20 else None
    return "\n".join(
        [
            f"- Architecture to build: `{description.architecture}`",
            f"- Classes: {description.num_classes}" + (f" ({', '.join(classes)})" if classes else ""),
            f"- Input: {channels} x {height} x {width}, mean {list(description.mean)}, std {list(description.std)}",
            "- Model Stats:",
            f"  - Params (M): {stats.params / 1e6:.3g} ({stats.params:,} parameters)",
            f"  - GMACs: {stats.macs / 1e9:.3g}",
            f"  - Image size: {height} x {width}",
            f"- Paper: {PAPER_NAME} ({PAPER_ID})",
            f"- Reference code: {ORIGIN_URL}",
        ]
    )


def _model_summary(description: ModelDescription) -> str:
    if not description.num_pems:
        return f"`{description.architecture}` without Prior Estimation Modules (a baseline)."
    form = (
        f"merged: its {description.num_pems} PEMs were folded into the classifier, so it is a plain "
        f"`{description.architecture}` that outputs NPE-LA logits at no extra cost"
        if description.merged
        else f"unmerged: it keeps its {description.num_pems} PEMs (for fine-tuning and `npe_estimate`) and outputs "
        "NPE-LA logits in eval mode"
    )
    return (
        f"`{description.npe_architecture}` trained with Neural Prior Estimation (NPE), NPE-LA alpha = "
        f"{_format_value(description.alpha)}; {form}."
    )


def _model_card(
    description: ModelDescription,
    *,
    model_name: str,
    repo_id: Optional[str],
    results: Sequence[EvalResult],
    recipe: Optional[Mapping[str, Any]],
    license: Optional[str],
    base_model: Optional[str] = None,
    notes: Optional[str] = None,
) -> ModelCard:
    library = "timm" if description.task == CLASSIFICATION else "pytorch"
    card_data = ModelCardData(
        base_model=base_model,
        library_name=library,
        license=license,
        model_name=model_name,
        pipeline_tag=_PIPELINE_TAGS[description.task],
        tags=[
            _PIPELINE_TAGS[description.task],
            library,
            "npe-models",
            "neural-prior-estimation",
            "long-tailed-recognition",
        ],
        datasets=sorted({result.dataset_type for result in results}) or None,
        metrics=sorted({result.metric_type for result in results}) or None,
        eval_results=list(results) or None,
    )
    recipe_text = (
        "\n".join(
            [
                "| setting | value |",
                "| --- | --- |",
                *(f"| {key} | {_format_value(value)} |" for key, value in recipe.items()),
            ]
        )
        if recipe
        else "Not recorded for this checkpoint."
    )
    stats = model_stats(description)
    body = "\n\n".join(
        [
            f"# {model_name}",
            _model_summary(description),
            "## Usage",
            *_usage(description, stats, repo_id),
            "## Model details",
            _model_details(description, stats),
            "## Training recipe",
            recipe_text,
            "## Evaluation",
            _evaluation_text(results),
            *([notes] if notes else []),
            "## Citation",
            f"```bibtex\n{CITATION}\n```",
        ]
    )
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}\n")


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


def _publish_directory(staging: Path, directory: Path, overwrite: bool) -> None:
    """Move a finished staging folder into place, replacing an old one only when asked."""
    if directory.exists():
        if not directory.is_dir():
            raise FileExistsError(f"{directory} exists and is not a directory; choose another path.")
        if any(directory.iterdir()) and not overwrite:
            raise FileExistsError(f"{directory} already exists and is not empty; pass overwrite=True to replace it.")
        retired = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
        os.replace(directory, retired / directory.name)
        os.replace(staging, directory)
        shutil.rmtree(retired)
    else:
        os.replace(staging, directory)


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
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card into ``directory``.

    ``metrics`` (e.g. ``{"top1": 80.1, "many": 91.0, "medium": 78.2, "few": 70.3}``) become
    the card's ``model-index`` results on ``dataset``, followed by ``eval_results`` (further
    entries, e.g. a named subset of the test set); ``recipe`` is shown as the training recipe;
    ``notes`` (markdown) follows the evaluation; ``repo_id`` fills the usage snippets;
    ``base_model`` (a Hub id) names the checkpoint this one was made from. The folder is
    assembled under a temporary name beside ``directory`` and renamed into place, so it is
    complete or absent.
    """
    if metrics and not (dataset and dataset_id):
        raise ValueError("metrics need dataset= (a readable name) and dataset_id= (e.g. 'cifar10') for the model card.")
    directory = Path(directory)
    description = describe_model(model, label_names, config)
    task = _PIPELINE_TAGS[description.task]
    results = [*(_eval_results(metrics, task, dataset, dataset_id, split) if metrics else []), *eval_results]
    parent = _writable_parent(directory)
    staging = parent / f".{directory.name}.{uuid.uuid4().hex}.partial"
    staging.mkdir()
    try:
        write_files = _write_classifier_files if description.task == CLASSIFICATION else _write_segmentation_files
        hub_config = write_files(model, description, staging)
        (staging / CONFIG_NAME).write_text(json.dumps(hub_config, indent=2) + "\n", encoding="utf-8")
        check_weights_fit(
            description.architecture,
            description.task,
            description.model_args,
            _weight_shapes(staging / WEIGHTS_NAME),
            f"the {type(model).__name__} being saved",
        )
        card = _model_card(
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
        _publish_directory(staging, directory, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return directory


def _results_by_test_set(record: Mapping[str, Any]) -> list[str]:
    """The table of a shipped checkpoint's scores per CIFAR test set, NPE-LA and unadjusted, and the JPEG penalty."""
    rows = [
        "| test images | prediction | top-1 | balanced | Many | Medium | Few |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    prediction = "NPE-LA" if record["primary"] == "npe_la" else "logits"
    for variant, scores in (
        (prediction, record),
        *((("unadjusted", record["unadjusted"]),) if "unadjusted" in record else ()),
    ):
        for key, label in _TEST_SETS.items():
            if key in scores:
                values = [scores[key][k] for k in ("top1", "balanced", "many", "medium", "few")]
                rows.append(
                    f"| {label} | {variant} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in values) + " |"
                )
    lines = [
        "## Results by test set",
        "9,000 of the full test set's images were recovered from JPEG copies; the 1,000 exact images (the official "
        "test batch's first 1,000) are bit-exact, and their JPEG twins are the same images read back from JPEG.",
        "\n".join(rows),
    ]
    if "jpeg_twins" in record:
        penalty = record["exact"]["top1"] - record["jpeg_twins"]["top1"]
        lines.append(f"JPEG penalty ({prediction}): {penalty:+.2f} points (exact minus JPEG twins).")
    return lines


def _training_note(name: str, entry: Mapping[str, Any]) -> str:
    """How a shipped checkpoint was trained (time, speed, devices, the checkpoint it started from), where it lives."""
    training, start = entry["training"], entry.get("starts_from")
    weights = (
        f"Weights: `npe_models/weights/{name}.safetensors` in the package."
        if entry["bundled"]
        else f"Weights: `npe_models/weights/extra/{name}.safetensors` in a source checkout of npe-models "
        f"({BUNDLED_IN_WHEEL})."
    )
    if not training["epochs"]:
        model = f"the cross-entropy model `{start}`" if start else "the cross-entropy model it adjusts"
        tau = entry["run"]["tau"]
        return f"No training of its own: the classifier bias of {model} absorbs -{tau:g} * log prior. {weights}"
    origin = f"; only the classifier of `{start}` was re-trained" if start else ""
    return (
        f"Trained by npe-models in {training['seconds'] / 3600:.2f} h ({training['images_per_s']:.0f} images/s, "
        f"{', '.join(training['devices'])}){origin}. {weights}"
    )


def _pretrained_notes(name: str, entry: Mapping[str, Any]) -> str:
    record = entry["metrics"]
    lines = _results_by_test_set(record)
    if "prior" in record:
        prior = record["prior"]
        lines.append(
            f"NPE estimate vs log training count (per class, full test set): Pearson {prior['pearson']:.3f}, "
            f"Spearman {prior['spearman']:.3f}, slope {prior['slope']:.3f}."
        )
    lines.append(_training_note(name, entry))
    return "\n\n".join(lines)


def _shipped_entry(name: str) -> Mapping[str, Any]:
    entry = shipped_checkpoints().get(name)
    if entry is None:
        raise ValueError(
            f"{name!r} is not a checkpoint shipped with npe-models; see `npe-models list --pretrained` for the names."
        )
    return entry


def _card_metrics(scores: Mapping[str, Optional[float]]) -> dict[str, float]:
    """A test set's recorded scores as ``save_for_hub`` metrics, to two decimals; absent groups left out."""
    metrics = {"top1": round(scores["top1"], 2), "balanced_accuracy": round(scores["balanced"], 2)}
    metrics.update({key: round(scores[key], 2) for key in ("many", "medium", "few") if scores[key] is not None})
    return metrics


def _recorded_results(run: Mapping[str, Any], record: Mapping[str, Any]) -> list[EvalResult]:
    """Model-index entries of a shipped checkpoint: the full test set and its exact images, each its own entry."""
    results, task = [], _PIPELINE_TAGS[CLASSIFICATION]
    for test_set, (label, config, split) in _INDEXED_TEST_SETS.items():
        dataset = f"{DATASET_NAMES[run['dataset']]}-LT (rho={run['rho']:g}) test set, {label}"
        results += _eval_results(_card_metrics(record[test_set]), task, dataset, run["dataset"], split, config)
    return results


def _base_model(entry: Mapping[str, Any]) -> Optional[str]:
    """The Hub id of the checkpoint a cRT or post-hoc LA checkpoint was made from, when the packaging named one."""
    start = entry.get("starts_from")
    return hub_repo_id(start) if start and "." in start and timm.is_model(start) else None


def pretrained_card(name: str, entry: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """``save_for_hub`` keyword arguments for a checkpoint trained by npe-models, from its manifest entry.

    ``entry`` defaults to the bundled manifest's. The card carries the recorded accuracy (the full
    test set and its 1,000 exact images as separate ``model-index`` entries in ``eval_results``,
    so ``metrics`` given on top add entries; every test set in the notes), the training recipe,
    the checkpoint it was made from and the ``npe-models/<name>`` repository.
    """
    entry = _shipped_entry(name) if entry is None else entry
    return dict(
        label_names=entry["cfg"]["label_names"],
        eval_results=_recorded_results(entry["run"], entry["metrics"]),
        base_model=_base_model(entry),
        recipe=entry["run"],
        repo_id=hub_repo_id(name),
        model_name=name,
        notes=_pretrained_notes(name, entry),
    )


def _shipped_model(name: str) -> nn.Module:
    """A shipped checkpoint as packaged: the merged form as the NPE model it was folded from, so its card says so."""
    from timm.utils import reparameterize_model

    model, entry = timm.create_model(name, pretrained=True), _shipped_entry(name)
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
    """Write the Hub folder of a checkpoint shipped with the package (``npe-models list --pretrained``), card included.

    The folders are not kept in git: this regenerates one, as the packaging wrote it.
    """
    card = pretrained_card(name)
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


def _resolve_source(source: Union[str, os.PathLike]) -> tuple[Path, str]:
    """Local folder holding the files (downloaded or cached for ``hf-hub:``), and the timm name that loads them."""
    text = os.fspath(source)
    if text.startswith("hf-hub:"):
        repo, _, revision = text[len("hf-hub:") :].partition("@")
        config_file = hf_hub_download(repo, CONFIG_NAME, revision=revision or None)
        hf_hub_download(repo, WEIGHTS_NAME, revision=revision or None)
        return Path(config_file).parent, text
    folder = Path(text[len("local-dir:") :] if text.startswith("local-dir:") else text)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is not a directory; pass a folder written by save_for_hub, or 'hf-hub:ORG/NAME'."
        )
    return folder, f"local-dir:{folder}"


def hub_folder(source: Union[str, os.PathLike]) -> Path:
    """The local folder of a Hub source: a path, ``local-dir:DIR``, or ``hf-hub:ORG/NAME[@revision]`` (downloaded or
    cached).
    """
    return _resolve_source(source)[0]


def read_hub_config(folder: Union[str, os.PathLike]) -> dict[str, Any]:
    """``config.json`` of a Hub folder, checked for the fields a loader needs."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {folder} is not a folder written by save_for_hub.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); re-export the model with save_for_hub.") from error
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise ValueError(f"{path} has no 'architecture' string; re-export the model with save_for_hub.")
    return config


def _weight_shapes(path: Path) -> dict[str, list[int]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the folder has a config but no safetensors weights.")
    with safetensors.safe_open(str(path), framework="pt") as weights:
        return {key: weights.get_slice(key).get_shape() for key in weights.keys()}


def is_hub_folder(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a folder written by ``save_for_hub``: its ``config.json`` names an architecture."""
    try:
        read_hub_config(path)
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return False
    return True


def hub_task(folder: Union[str, os.PathLike]) -> str:
    """``"classification"`` or ``"segmentation"``: the task a Hub folder's config records (``npe.task``).

    A config without an ``npe`` section (a plain timm export) is a classifier.
    """
    task = read_hub_config(folder).get("npe", {}).get("task", CLASSIFICATION)
    if task not in _LOADER_TASKS:
        raise ValueError(
            f"{Path(folder) / CONFIG_NAME} is for task {task!r}; expected {CLASSIFICATION} or {SEGMENTATION}."
        )
    return _LOADER_TASKS[task]


def hub_segmentation_config(folder: Union[str, os.PathLike]) -> SegmentationModelConfig:
    """How the segmentation model in a Hub folder was built: the ``segmentation_model`` settings of its config."""
    path = Path(folder) / CONFIG_NAME
    settings = read_hub_config(folder).get("segmentation_model")
    if not isinstance(settings, dict):
        raise ValueError(f"{path} has no 'segmentation_model' settings; re-export it with save_for_hub.")
    try:
        config = SegmentationModelConfig.from_dict(dict(settings))
        parse_segmentation_model_name(config.name)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error
    return config


def _load_segmentation(folder: Path, **kwargs: Any) -> nn.Module:
    """Rebuild a segmentation model from its ``segmentation_model`` settings and load its weights strictly."""
    settings = hub_segmentation_config(folder)
    check_weights_fit(
        settings.name,
        SEGMENTATION,
        settings.to_dict(),
        _weight_shapes(folder / WEIGHTS_NAME),
        str(folder / WEIGHTS_NAME),
    )
    model = settings.build(**kwargs)
    model.load_state_dict(safetensors.torch.load_file(str(folder / WEIGHTS_NAME)), strict=True)
    return model


def load_from_hub(source: Union[str, os.PathLike], **kwargs: Any) -> nn.Module:
    """Load a model saved by ``save_for_hub`` from a folder, ``local-dir:DIR`` or ``hf-hub:ORG/NAME[@revision]``.

    Checks first that the config names a known architecture and that every weight fits it.
    Classifiers load through timm (the result equals ``timm.create_model(source,
    pretrained=True)``; ``kwargs`` go to it), segmentation models through
    ``create_segmentation_model`` with their saved settings (``kwargs``: e.g.
    ``weights_backbone``).
    """
    folder, timm_name = _resolve_source(source)
    if hub_task(folder) == "segmentation":
        return _load_segmentation(folder, **kwargs)
    config = read_hub_config(folder)
    architecture = config["architecture"]
    if not timm.is_model(architecture):
        raise ValueError(
            f"{folder / CONFIG_NAME} names architecture {architecture!r}, which is not registered with timm; "
            "check the name, import the package that defines it, or upgrade npe-models."
        )
    weights = folder / WEIGHTS_NAME
    check_weights_fit(architecture, CLASSIFICATION, config.get("model_args", {}), _weight_shapes(weights), str(weights))
    model = timm.create_model(timm_name, pretrained=True, **kwargs)
    if TARGET_PRIOR_KEY in config.get("npe", {}):  # a prior-adapted model keeps its record
        model.pretrained_cfg = {**model.pretrained_cfg, TARGET_PRIOR_KEY: config["npe"][TARGET_PRIOR_KEY]}
    return model
