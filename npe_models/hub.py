"""Hugging Face Hub folders for NPE models: a timm-compatible config, safetensors weights and a model card.

``save_for_hub`` writes ``config.json``, ``model.safetensors`` and ``README.md`` atomically;
``timm.create_model("local-dir:DIR", pretrained=True)`` (or ``"hf-hub:ORG/NAME"`` once
uploaded with ``push_to_hub``) loads a classifier back. A merged model is saved under its
base architecture (``resnet32``) so it reloads as the plain model; an unmerged one keeps its
NPE name (``resnet32_npe16``). ``load_from_hub`` loads any saved model, classifier or
segmentation, after checking that the config names a known architecture and that the
weights fit it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import safetensors
import safetensors.torch
import timm
import torch
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, hf_hub_download
from huggingface_hub.hf_api import CommitInfo
from timm.models import get_model_args, save_for_hf
from torch import nn
from torchvision.models.segmentation import FCN, LRASPP, DeepLabV3

from .models.segmentation import (
    SEGMENTATION_ARCHITECTURES,
    NPESegmentationMixin,
    UNetBackbone,
    parse_segmentation_model_name,
)
from .npe import NPEHead
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
    "push_to_hub",
    "load_from_hub",
    "hub_folder",
    "read_hub_config",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
HUB_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
CLASSIFICATION = "image-classification"
SEGMENTATION = "semantic-segmentation"
_PIPELINE_TAGS = {CLASSIFICATION: "image-classification", SEGMENTATION: "image-segmentation"}
SEGMENTATION_INPUT_SIZE = (3, 512, 512)
"""Nominal input size recorded for segmentation models, which take any size."""

CITATION = """@article{yavari2026npe,
  title   = {Neural Prior Estimation: Learning Class Priors from Latent Representations},
  author  = {Yavari, Masoud and Moallem, Payman},
  journal = {arXiv preprint arXiv:2602.17853},
  year    = {2026}
}"""

_NPE_NAME = re.compile(r"^(?P<base>.+)_npe(?P<num_pems>\d+)$")
_NPE_ARG_PREFIX = "npe_"
_DEFAULT_ALPHA = 1.0
_DEFAULT_T = 1

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


@dataclass(frozen=True)
class ModelDescription:
    """What a model is, as a Hub config or an ONNX file records it: enough to rebuild it and feed it."""

    architecture: str
    """Registered name that rebuilds these weights (the base name for a merged NPE model)."""
    task: str
    num_classes: int
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_pems: int = 0
    """PEMs the model was built with; 0 for a plain model."""
    merged: bool = False
    """True when the PEMs were folded into the classifier (``reparameterize_model``)."""
    alpha: Optional[float] = None
    t: Optional[int] = None
    npe_architecture: Optional[str] = None
    """The NPE name the model was built as (``resnet32_npe16``), also for a merged model."""
    label_names: Optional[tuple[str, ...]] = None
    model_args: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the registered builder of ``architecture``."""

    def npe_config(self) -> dict[str, Any]:
        """The ``npe`` section of ``config.json``: the method's settings, for people and tools."""
        from . import __version__

        return {
            "task": self.task,
            "num_pems": self.num_pems,
            "merged": self.merged,
            "alpha": self.alpha,
            "t": self.t,
            "npe_architecture": self.npe_architecture,
            "package": "npe-models",
            "package_version": __version__,
        }


def _is_timm_classifier(model: nn.Module) -> bool:
    return hasattr(model, "pretrained_cfg") and hasattr(model, "get_classifier")


def _npe_heads(model: nn.Module) -> list[NPEHead]:
    return [module for module in model.modules() if isinstance(module, NPEHead)]


def _label_names(label_names: Optional[Sequence[str]], cfg_names: Any, num_classes: int) -> Optional[tuple[str, ...]]:
    """Given label names, else the cfg's; checked against the class count."""
    names = label_names if label_names is not None else cfg_names
    if names is None:
        return None
    if isinstance(names, Mapping):
        names = [names[key] for key in sorted(names, key=int)]
    names = tuple(str(name) for name in names)
    if len(names) != num_classes:
        raise ValueError(
            f"label_names has {len(names)} entries but the model has {num_classes} classes; "
            "pass one name per class, in label order."
        )
    return names


def _describe_classifier(model: nn.Module, label_names: Optional[Sequence[str]]) -> ModelDescription:
    cfg = model.pretrained_cfg
    name = cfg.get("architecture")
    if not name:
        raise ValueError(
            f"{type(model).__name__} has no pretrained_cfg['architecture']: build it with timm.create_model "
            "so that it can be described and rebuilt."
        )
    if model.num_classes < 1:
        raise ValueError("the model has no classifier (num_classes=0); save or export a model with classes.")
    args = get_model_args(model)
    heads = _npe_heads(model)
    match = _NPE_NAME.match(name)
    if heads and not match:
        raise ValueError(
            f"{name} with PEMs added by add_npe is not a registered architecture, so it cannot be rebuilt unmerged; "
            "merge it with timm.utils.reparameterize_model to save it as a plain "
            f"{name}, or use a registered <arch>_npe<K> model."
        )
    if heads:
        head = heads[0]
        npe = dict(num_pems=head.num_pems, merged=False, alpha=head.alpha, t=head.t, npe_architecture=name)
        args.update(npe_alpha=head.alpha, npe_t=head.t)
        architecture = name
    elif match:
        npe = dict(
            num_pems=int(match["num_pems"]),
            merged=True,
            alpha=float(getattr(model, "npe_alpha", args.get("npe_alpha", _DEFAULT_ALPHA))),
            t=int(getattr(model, "npe_t", args.get("npe_t", _DEFAULT_T))),
            npe_architecture=name,
        )
        args = {key: value for key, value in args.items() if not key.startswith(_NPE_ARG_PREFIX)}
        architecture = match["base"]
    else:
        npe = {}
        architecture = name
    if not timm.is_model(architecture):
        raise ValueError(
            f"the model would be saved as {architecture!r}, which timm does not know; "
            "merge an add_npe model with reparameterize_model, or use a registered architecture."
        )
    return ModelDescription(
        architecture=architecture,
        task=CLASSIFICATION,
        num_classes=model.num_classes,
        input_size=tuple(cfg["input_size"]),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
        label_names=_label_names(label_names, cfg.get("label_names"), model.num_classes),
        model_args=args,
        **npe,
    )


def _is_segmentation_model(model: nn.Module) -> bool:
    return isinstance(model, (DeepLabV3, FCN, LRASPP))


def _final_classifier(model: nn.Module) -> nn.Module:
    """The 1x1 conv (or NPEHead) that produces a segmentation model's logits."""
    return model.classifier.low_classifier if isinstance(model, LRASPP) else model.classifier[-1]


def _segmentation_num_classes(model: nn.Module) -> int:
    final = _final_classifier(model)
    return final.num_classes if isinstance(final, NPEHead) else final.out_channels


def _is_merged_segmentation(model: nn.Module) -> bool:
    """An NPE segmentation model whose linear PEMs ``reparameterize_model`` folded into the classifier."""
    return isinstance(model, NPESegmentationMixin) and model.pem_type == "linear" and not model.npe_heads()


def _inferred_segmentation_configs(model: nn.Module) -> list[SegmentationModelConfig]:
    """Every registered architecture with the model's classes, PEMs and options: candidates to match by weights."""
    npe = isinstance(model, NPESegmentationMixin)
    merged = _is_merged_segmentation(model)
    settings: dict[str, Any] = dict(
        num_classes=_segmentation_num_classes(model),
        aux_loss=True if getattr(model, "aux_classifier", None) is not None else None,
    )
    if npe and not merged:
        settings.update(num_pems=model.num_pems, pem_type=model.pem_type, alpha=model.alpha, t=model.t)
    if isinstance(model.backbone, UNetBackbone):
        unet_kwargs = {"base_channels": model.backbone.out_channels, "num_stages": len(model.backbone.encoder)}
        return [SegmentationModelConfig(name="unet_fcn", model_kwargs=unet_kwargs, **settings)]
    return [SegmentationModelConfig(name=arch, **settings) for arch in SEGMENTATION_ARCHITECTURES if arch != "unet_fcn"]


def _segmentation_config(model: nn.Module, config: Optional[SegmentationModelConfig]) -> SegmentationModelConfig:
    """The given settings, or the registered architecture whose parameter shapes match the model's."""
    if config is not None:
        return config
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    for candidate in _inferred_segmentation_configs(model):
        reference = _build_on_meta(candidate.name, SEGMENTATION, candidate.to_dict())
        if not _weights_mismatch({k: v.shape for k, v in reference.state_dict().items()}, shapes):
            return candidate
    raise ValueError(
        f"could not tell which registered architecture this {type(model).__name__} is; pass "
        "config=SegmentationModelConfig(name=..., ...) as the model was built (load_segmentation_model returns it)."
    )


def _describe_segmentation(
    model: nn.Module, label_names: Optional[Sequence[str]], config: Optional[SegmentationModelConfig]
) -> ModelDescription:
    config = _segmentation_config(model, config)
    arch, _ = parse_segmentation_model_name(config.name)
    npe = isinstance(model, NPESegmentationMixin)
    merged = _is_merged_segmentation(model)
    if merged:  # the linear PEMs were folded into the classifier: the weights are the base architecture's
        config = dataclasses.replace(config, name=arch, num_pems=None)
    elif npe:  # saved under its NPE name, which carries the PEM count
        config = dataclasses.replace(config, name=f"{arch}_npe{model.num_pems}", num_pems=model.num_pems)
    num_classes = _segmentation_num_classes(model)
    names = _label_names(label_names, config.class_names, num_classes)
    config = dataclasses.replace(config, num_classes=num_classes, class_names=list(names) if names else None)
    return ModelDescription(
        architecture=config.name,
        task=SEGMENTATION,
        num_classes=num_classes,
        input_size=SEGMENTATION_INPUT_SIZE,
        mean=tuple(config.mean),
        std=tuple(config.std),
        num_pems=model.num_pems if npe else 0,
        merged=merged,
        alpha=model.alpha if npe else None,
        t=model.t if npe else None,
        npe_architecture=f"{arch}_npe{model.num_pems}" if npe else None,
        label_names=names,
        model_args=config.to_dict(),
    )


def describe_model(
    model: nn.Module,
    label_names: Optional[Sequence[str]] = None,
    config: Optional[SegmentationModelConfig] = None,
) -> ModelDescription:
    """Architecture, task, classes, PEMs, NPE-LA settings and preprocessing of a model built by this package.

    A merged NPE model is described by its base architecture, which rebuilds its weights. A
    segmentation model is matched to its registered architecture by its parameter shapes
    unless ``config`` (how it was built, with its input normalisation) is given.
    """
    if _is_timm_classifier(model):
        return _describe_classifier(model, label_names)
    if _is_segmentation_model(model):
        return _describe_segmentation(model, label_names, config)
    raise TypeError(
        f"expected a timm classifier built with timm.create_model or a segmentation model from "
        f"create_segmentation_model, got {type(model).__name__}."
    )


def _build_on_meta(architecture: str, task: str, model_args: Mapping[str, Any]) -> nn.Module:
    """A parameter-free (meta device) instance, to compare parameter names and shapes."""
    with torch.device("meta"):
        if task == SEGMENTATION:
            return SegmentationModelConfig.from_dict(dict(model_args)).build()
        return timm.create_model(architecture, pretrained=False, **model_args)


def _weights_mismatch(expected: Mapping[str, torch.Size], found: Mapping[str, Sequence[int]]) -> list[str]:
    """Human-readable differences between two ``name -> shape`` maps; empty when they agree."""
    problems = [f"missing {key}" for key in expected if key not in found]
    problems += [f"unexpected {key}" for key in found if key not in expected]
    problems += [
        f"{key} has shape {tuple(found[key])}, expected {tuple(shape)}"
        for key, shape in expected.items()
        if key in found and tuple(found[key]) != tuple(shape)
    ]
    return problems


def _check_weights_fit(architecture: str, task: str, model_args: Mapping[str, Any], shapes: Mapping[str, Sequence[int]], where: str) -> None:
    """Raise a clear ValueError when the weights do not fit the configured architecture."""
    reference = _build_on_meta(architecture, task, model_args)
    expected = {key: value.shape for key, value in reference.state_dict().items()}
    problems = _weights_mismatch(expected, shapes)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(
            f"the weights in {where} do not fit {architecture!r} with {dict(model_args)}: {shown}. "
            "The weights file and config.json must come from the same save_for_hub call."
        )


def _write_classifier_files(model: nn.Module, description: ModelDescription, folder: Path) -> dict[str, Any]:
    """timm's own ``config.json`` and ``model.safetensors``, the config re-targeted at ``description.architecture``."""
    model_config: dict[str, Any] = {"pretrained_cfg": {"architecture": description.architecture}}
    if description.label_names:
        model_config["label_names"] = list(description.label_names)
    save_for_hf(model, str(folder), model_config=model_config, safe_serialization=True)
    config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
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
    return f"{value:g}" if isinstance(value, float) else str(value)


def _metric_table(metrics: Mapping[str, float]) -> str:
    rows = [f"| {_METRICS.get(key, (key, key, None))[1]} | {_format_value(value)} |" for key, value in metrics.items()]
    return "\n".join(["| metric | value |", "| --- | --- |", *rows])


def _eval_results(metrics: Mapping[str, float], task: str, dataset: str, dataset_id: str, split: str) -> list[EvalResult]:
    results = []
    for key, value in metrics.items():
        metric_type, metric_name, metric_config = _METRICS.get(key, (key, key, None))
        results.append(
            EvalResult(
                task_type=task,
                dataset_type=dataset_id,
                dataset_name=dataset,
                dataset_split=split,
                metric_type=metric_type,
                metric_name=metric_name,
                metric_config=metric_config,
                metric_value=float(value),
            )
        )
    return results


def _usage(description: ModelDescription, repo_id: Optional[str]) -> str:
    source = f"hf-hub:{repo_id}" if repo_id else "local-dir:/path/to/this/folder"
    if description.task == CLASSIFICATION:
        lines = [
            "import timm",
            "import npe_models  # registers the NPE architectures with timm",
            "",
            f'model = timm.create_model("{source}", pretrained=True).eval()',
            "transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))",
            "logits = model(transform(image).unsqueeze(0))"
            + ("  # NPE-LA logits" if description.num_pems else ""),
        ]
    else:
        lines = [
            "from npe_models.hub import load_from_hub",
            "",
            f'model = load_from_hub("{source}").eval()',
            'logits = model(images)["out"]  # (B, C, H, W)' + (", NPE-LA adjusted" if description.num_pems else ""),
        ]
    if description.num_pems and not description.merged:
        lines += [
            "",
            "# Training: out = model.forward_train(images) gives the main and PEM logits;",
            "# deployment: timm.utils.reparameterize_model(model) folds the PEMs away where they merge.",
        ]
    return "```python\n" + "\n".join(lines) + "\n```"


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
    metrics: Optional[Mapping[str, float]],
    dataset: Optional[str],
    dataset_id: Optional[str],
    split: str,
    recipe: Optional[Mapping[str, Any]],
    license: Optional[str],
    notes: Optional[str] = None,
) -> ModelCard:
    library = "timm" if description.task == CLASSIFICATION else "pytorch"
    card_data = ModelCardData(
        library_name=library,
        license=license,
        model_name=model_name,
        pipeline_tag=_PIPELINE_TAGS[description.task],
        tags=[_PIPELINE_TAGS[description.task], library, "npe-models", "neural-prior-estimation", "long-tailed-recognition"],
        datasets=[dataset_id] if dataset_id else None,
        metrics=sorted({_METRICS.get(key, (key,))[0] for key in metrics}) if metrics else None,
        eval_results=_eval_results(metrics, _PIPELINE_TAGS[description.task], dataset, dataset_id, split) if metrics else None,
    )
    details = [
        f"- Architecture to build: `{description.architecture}`",
        f"- Classes: {description.num_classes}"
        + (f" ({', '.join(description.label_names)})" if description.label_names and len(description.label_names) <= 20 else ""),
        f"- Input: {description.input_size[0]} x {description.input_size[1]} x {description.input_size[2]}, "
        f"mean {list(description.mean)}, std {list(description.std)}",
    ]
    recipe_text = (
        "\n".join(["| setting | value |", "| --- | --- |", *(f"| {key} | {_format_value(value)} |" for key, value in recipe.items())])
        if recipe
        else "Not recorded for this checkpoint."
    )
    metrics_text = (
        f"On {dataset} ({split} split):\n\n{_metric_table(metrics)}" if metrics else "No evaluation results recorded."
    )
    body = "\n\n".join(
        [
            f"# {model_name}",
            _model_summary(description),
            "## Usage",
            _usage(description, repo_id),
            "## Model details",
            "\n".join(details),
            "## Training recipe",
            recipe_text,
            "## Evaluation",
            metrics_text,
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
        raise PermissionError(f"cannot create {parent} for {directory}: permission denied; choose a writable directory.") from error
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write into {parent} (for {directory}): permission denied; choose a writable directory.")
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
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card into ``directory``.

    ``metrics`` (e.g. ``{"top1": 80.1, "many": 91.0, "medium": 78.2, "few": 70.3}``) become
    the card's ``model-index`` results on ``dataset``; ``recipe`` is shown as the training
    recipe; ``notes`` (markdown) follows the evaluation; ``repo_id`` fills the usage snippet. The folder is assembled under a temporary
    name beside ``directory`` and renamed into place, so it is complete or absent.
    """
    if metrics and not (dataset and dataset_id):
        raise ValueError("metrics need dataset= (a readable name) and dataset_id= (e.g. 'cifar10') for the model card.")
    directory = Path(directory)
    description = describe_model(model, label_names, config)
    parent = _writable_parent(directory)
    staging = parent / f".{directory.name}.{uuid.uuid4().hex}.partial"
    staging.mkdir()
    try:
        write_files = _write_classifier_files if description.task == CLASSIFICATION else _write_segmentation_files
        hub_config = write_files(model, description, staging)
        (staging / CONFIG_NAME).write_text(json.dumps(hub_config, indent=2) + "\n", encoding="utf-8")
        _check_weights_fit(
            description.architecture, description.task, description.model_args,
            _weight_shapes(staging / WEIGHTS_NAME), f"the {type(model).__name__} being saved",
        )
        card = _model_card(
            description,
            model_name=model_name or (repo_id.split("/")[-1] if repo_id else description.npe_architecture or description.architecture),
            repo_id=repo_id, metrics=metrics, dataset=dataset, dataset_id=dataset_id, split=split,
            recipe=recipe, license=license, notes=notes,
        )
        card.save(staging / CARD_NAME)
        _publish_directory(staging, directory, overwrite)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return directory


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
        repo, _, revision = text[len("hf-hub:"):].partition("@")
        config_file = hf_hub_download(repo, CONFIG_NAME, revision=revision or None)
        hf_hub_download(repo, WEIGHTS_NAME, revision=revision or None)
        return Path(config_file).parent, text
    folder = Path(text[len("local-dir:"):] if text.startswith("local-dir:") else text)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a directory; pass a folder written by save_for_hub, or 'hf-hub:ORG/NAME'.")
    return folder, f"local-dir:{folder}"


def hub_folder(source: Union[str, os.PathLike]) -> Path:
    """The local folder of a Hub source: a path, ``local-dir:DIR``, or ``hf-hub:ORG/NAME[@revision]`` (downloaded or cached)."""
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


def _load_segmentation(folder: Path, config: Mapping[str, Any], **kwargs: Any) -> nn.Module:
    """Rebuild a segmentation model from its ``segmentation_model`` settings and load its weights strictly."""
    if not isinstance(config.get("segmentation_model"), dict):
        raise ValueError(f"{folder / CONFIG_NAME} has no 'segmentation_model' settings; re-export it with save_for_hub.")
    try:
        settings = SegmentationModelConfig.from_dict(dict(config["segmentation_model"]))
        parse_segmentation_model_name(settings.name)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{folder / CONFIG_NAME}: {error}") from error
    _check_weights_fit(settings.name, SEGMENTATION, settings.to_dict(), _weight_shapes(folder / WEIGHTS_NAME), str(folder / WEIGHTS_NAME))
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
    config = read_hub_config(folder)
    architecture = config["architecture"]
    task = config.get("npe", {}).get("task", CLASSIFICATION)
    if task == SEGMENTATION:
        return _load_segmentation(folder, config, **kwargs)
    if task != CLASSIFICATION:
        raise ValueError(f"{folder / CONFIG_NAME} is for task {task!r}; expected {CLASSIFICATION} or {SEGMENTATION}.")
    if not timm.is_model(architecture):
        raise ValueError(
            f"{folder / CONFIG_NAME} names architecture {architecture!r}, which is not registered with timm; "
            "check the name, import the package that defines it, or upgrade npe-models."
        )
    _check_weights_fit(architecture, task, config.get("model_args", {}), _weight_shapes(folder / WEIGHTS_NAME), str(folder / WEIGHTS_NAME))
    return timm.create_model(timm_name, pretrained=True, **kwargs)
