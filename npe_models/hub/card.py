"""The model card of a Hub folder: what the model is, how to use it, how it was trained and what it scores."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import timm
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..describe import (
    CLASSIFICATION,
    SEGMENTATION,
    ModelDescription,
    ModelStats,
    model_stats,
)
from ..models import is_segmentation_model, parse_npe_name
from ..models._bundled import BUNDLED_IN_WHEEL, ORIGIN_URL, PAPER_ID, PAPER_NAME, hub_repo_id, shipped_checkpoints
from ..models.segmentation import DEFAULT_SEGMENTATION_ALPHA
from ..segmentation.config import shipped_segmentation_names, shipped_segmentation_weights

__all__ = [
    "CITATION",
    "DATASET_NAMES",
    "PIPELINE_TAGS",
    "evaluation_results",
    "has_pretrained_card",
    "markdown_text",
    "model_card",
    "pretrained_card",
    "shipped_entry",
    "visible_text",
]

PIPELINE_TAGS = {CLASSIFICATION: "image-classification", SEGMENTATION: "image-segmentation"}

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
    "macc": ("accuracy", "Mean class accuracy", "mean_class"),
    "pixel_accuracy": ("accuracy", "Pixel accuracy", "pixel"),
}
_SEGMENTATION_SCORES = {
    "mdice": "mean_dice",
    "miou": "mean_iou",
    "macc": "mean_accuracy",
    "pixel_accuracy": "pixel_accuracy",
}
"""Card metric -> the key of a shipped segmentation entry's recorded scores (fractions)."""
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
"""Readable names of the data sets the shipped checkpoints were trained on."""
_TEST_SETS = {"full": "full 10,000", "exact": "exact 1,000", "jpeg_twins": "JPEG twins of the exact 1,000"}
_INDEXED_TEST_SETS = {
    "full": ("JPEG-recovered (10,000 images, 9,000 of them from JPEG copies)", "jpeg-recovered", "test"),
    "exact": ("1,000 exact images (the official test batch's first 1,000)", None, "test[:1000]"),
}
"""Model-index name, config and split of a shipped checkpoint's test sets: apart, and never the clean CIFAR test set."""


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def visible_text(text: str) -> str:
    """``text`` with each control or other unprintable character as its visible escape (``\\n``, ``\\x1b``): one
    line that cannot move a terminal's cursor, change its colours or break a table's rows. The one such escaping,
    shared by the model card, ``predict``'s table and ``adapt``'s printout."""
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)


def markdown_text(text: str) -> str:
    """``text`` (a class name from a folder, say) as literal Markdown on one line: control characters as visible
    escapes, Markdown's emphasis, code, link and table characters backslash-escaped, and ``<``, ``>``, ``&`` as HTML
    entities, so it renders as written and injects no HTML."""
    return html.escape(_MARKDOWN_SPECIAL.sub(r"\\\1", visible_text(text)), quote=False)


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


def evaluation_results(
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
            f"- Classes: {description.num_classes}"
            + (f" ({', '.join(markdown_text(name) for name in classes)})" if classes else ""),
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


def model_card(
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
        pipeline_tag=PIPELINE_TAGS[description.task],
        tags=[
            PIPELINE_TAGS[description.task],
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


def shipped_entry(name: str) -> Mapping[str, Any]:
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
    results, task = [], PIPELINE_TAGS[CLASSIFICATION]
    for test_set, (label, config, split) in _INDEXED_TEST_SETS.items():
        dataset = f"{DATASET_NAMES[run['dataset']]}-LT (rho={run['rho']:g}) test set, {label}"
        results += evaluation_results(_card_metrics(record[test_set]), task, dataset, run["dataset"], split, config)
    return results


def _base_model(entry: Mapping[str, Any]) -> Optional[str]:
    """The Hub id of the checkpoint a cRT or post-hoc LA checkpoint was made from, when the packaging named one."""
    start = entry.get("starts_from")
    return hub_repo_id(start) if start and "." in start and timm.is_model(start) else None


def _annotation(masks: str) -> str:
    """The STARE annotation of a recorded evaluation set (``STARE-val-ah`` -> ``ah``)."""
    return masks.rsplit("-", 1)[-1]


def _iterations(iterations: Any) -> dict[str, Any]:
    """Recipe rows of the recorded iterations: one number, or the baseline's and the PEM's."""
    if isinstance(iterations, Mapping):
        return {f"iterations ({stage})": count for stage, count in iterations.items()}
    return {"iterations": iterations}


def _alpha_label(alpha: str) -> str:
    return "main logits (alpha 0)" if float(alpha) == 0 else f"NPE-LA alpha {alpha}"


def _segmentation_scores_table(scores: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Every recorded score of shipped segmentation weights: per annotation and NPE-LA strength, in percent."""
    rows = ["| masks | prediction | mDice | mIoU | mAcc | aAcc |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for masks, by_alpha in scores.items():
        for alpha, record in by_alpha.items():
            values = " | ".join(f"{100 * record[key]:.2f}" for key in _SEGMENTATION_SCORES.values())
            rows.append(f"| '{_annotation(masks)}' | {_alpha_label(alpha)} | {values} |")
    return "\n".join(rows)


def _pretrained_segmentation_card(name: str) -> dict[str, Any]:
    """``save_for_hub`` keyword arguments for shipped segmentation weights (``npe-models list --pretrained``), from
    their manifest entry: the data, the recipe, and the recorded scores of the main logits and, with trained PEMs,
    of NPE-LA at the models' default strength in the model-index (every strength in the notes)."""
    base, weights = shipped_segmentation_weights(name)
    meta, trained = weights.meta, weights.meta.get("num_pems", 0)
    alphas = ["0", str(DEFAULT_SEGMENTATION_ALPHA)] if trained else ["0"]
    results = []
    for masks, by_alpha in meta["_metrics"].items():
        for alpha in alphas:
            metrics = {key: round(100 * by_alpha[alpha][score], 2) for key, score in _SEGMENTATION_SCORES.items()}
            dataset = f"STARE, '{_annotation(masks)}' masks, {_alpha_label(alpha)}"
            config = f"{_annotation(masks)}-alpha-{alpha}"  # the model-index tells entries apart by their config
            results += evaluation_results(metrics, PIPELINE_TAGS[SEGMENTATION], dataset, "stare", "validation", config)
    fresh = "" if trained or not parse_npe_name(base)[1] else " Its PEMs are fresh: the scores are the network's."
    notes = (
        f"Trained on STARE (Hoover et al., 2000), retinal vessel segmentation: the first 10 image ids, sorted, with "
        f"the 'ah' masks. Evaluated on {meta['evaluation']}.{fresh}\n\n{_segmentation_scores_table(meta['_metrics'])}"
        f"\n\nWeights: `npe_models/weights/{meta['file']}` in the package ({meta['name']})."
    )
    return dict(
        label_names=meta["categories"],
        eval_results=results,
        recipe={"recipe": meta["recipe"], **_iterations(meta["iterations"])},
        repo_id=hub_repo_id(meta["name"]),
        model_name=name,
        notes=notes,
    )


def has_pretrained_card(name: str) -> bool:
    """Whether ``name`` (``--pretrained``) names weights shipped with npe-models, whose card :func:`pretrained_card`
    fills: a shipped classifier checkpoint or shipped segmentation weights."""
    return name in shipped_checkpoints() or name in shipped_segmentation_names()


def pretrained_card(name: str, entry: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """``save_for_hub`` keyword arguments for a checkpoint trained by npe-models, from its manifest entry.

    Shipped segmentation weights (``unet_fcn_npe1``, ``unet_fcn.STARE``) get their STARE scores
    (:func:`_pretrained_segmentation_card`). For a classifier, ``entry`` defaults to the bundled manifest's. The
    card carries the recorded accuracy (the full
    test set and its 1,000 exact images as separate ``model-index`` entries in ``eval_results``,
    so ``metrics`` given on top add entries; every test set in the notes), the training recipe,
    the checkpoint it was made from and the ``npe-models/<name>`` repository.
    """
    if entry is None and is_segmentation_model(name.partition(".")[0]):
        return _pretrained_segmentation_card(name)
    entry = shipped_entry(name) if entry is None else entry
    return dict(
        label_names=entry["cfg"]["label_names"],
        eval_results=_recorded_results(entry["run"], entry["metrics"]),
        base_model=_base_model(entry),
        recipe=entry["run"],
        repo_id=hub_repo_id(name),
        model_name=name,
        notes=_pretrained_notes(name, entry),
    )
