"""Evaluation on long-tailed CIFAR: accuracy overall, balanced, by Many/Medium/Few group and per class,
confusion matrices, and for NPE models how well the learned estimate tracks the training prior.

Every prediction variant is scored: ``plain`` (the model's logits, or for NPE models the
unadjusted main logits ``z``), ``npe_la`` (``z - alpha * eta``, the NPE model's eval output) and
``posthoc_la`` (``z - tau * log prior``) when asked for. With a target prior, each variant's expected
top-1 on a test set of that class mix is added (``target_top1``, see :func:`resolve_target_prior`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..data import CIFAR_NUM_CLASSES, GROUP_NAMES, LongTailedData, class_groups, load_long_tailed
from ..distributed import bf16_autocast, resolve_device
from ..npe import NPEHead, npe_heads
from ..outputs import check_output_dir, is_evaluation_dir
from ..priors import PriorRecord
from ..runs import locked_dir, read_jsonl, write_json
from .checkpoint import check_num_classes
from .plots import save_evaluation_plots

__all__ = [
    "ProgressFactory",
    "EvaluationResult",
    "Predictions",
    "predict",
    "classification_metrics",
    "group_accuracy",
    "prior_diagnostics",
    "resolve_target_prior",
    "evaluate_model",
    "summary",
    "evaluate_run",
    "format_metrics",
]


# A tqdm-like factory such as ``tqdm.tqdm``: ``progress(iterable, total=, desc=, leave=, position=)`` wraps batches,
# ``progress(total=, initial=, desc=, unit=)`` makes a bar advanced by hand; bars have update, set_postfix and close.
ProgressFactory = Callable[..., Any]


@dataclass
class EvaluationResult:
    """What :func:`evaluate_run` wrote: the metrics (as in ``metrics.json``) and the paths of the plots."""

    metrics: dict[str, Any]
    plots: list[Path]


@dataclass
class Predictions:
    """Labels ``(N,)``, logits ``(N, C)`` per prediction variant, and the NPE estimate ``(N, C)`` if any."""

    labels: Tensor
    logits: dict[str, Tensor]
    estimate: Optional[Tensor] = None

    def subset(self, mask: Tensor) -> Predictions:
        estimate = None if self.estimate is None else self.estimate[mask]
        return Predictions(self.labels[mask], {k: v[mask] for k, v in self.logits.items()}, estimate)


def _npe_head(model: nn.Module) -> Optional[NPEHead]:
    """The classifier's NPE head, or None for a plain (or merged) model."""
    heads = npe_heads(model)
    if len(heads) > 1:
        raise ValueError(f"{type(model).__name__} has {len(heads)} NPE heads; a classifier is scored through one.")
    return heads[0] if heads else None


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    log_prior: Optional[Tensor] = None,
    tau: float = 1.0,
    amp: bool = False,
) -> Predictions:
    """Run ``model`` in eval mode over ``batches``; NPE models give both NPE-LA and unadjusted logits.

    With ``log_prior``, the ``posthoc_la`` variant ``plain - tau * log_prior`` is added.
    """
    model.eval()
    head = _npe_head(model)
    labels, estimates = [], []
    logits: dict[str, list[Tensor]] = {"plain": []} if head is None else {"npe_la": [], "plain": []}
    if log_prior is not None:
        logits["posthoc_la"] = []
    for images, targets in batches:
        with bf16_autocast(images.device, amp):
            if head is None:
                plain = model(images).float()
            else:
                output = model.forward_train(images)
                plain = output.logits.float()
                eta = head.estimate_from_pem_logits(output.pem_logits.float())
                logits["npe_la"].append((plain - head.alpha * eta).cpu())
                estimates.append(eta.cpu())
        logits["plain"].append(plain.cpu())
        if log_prior is not None:
            logits["posthoc_la"].append((plain - tau * log_prior.to(plain)).cpu())
        labels.append(targets.cpu())
    return Predictions(
        torch.cat(labels), {k: torch.cat(v) for k, v in logits.items()}, torch.cat(estimates) if estimates else None
    )


def _mean_or_none(values: np.ndarray) -> Optional[float]:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def group_accuracy(per_class: np.ndarray, train_counts: Sequence[int]) -> dict[str, Optional[float]]:
    """Mean per-class accuracy of the Many, Medium and Few classes (NaN entries, classes not seen, are skipped)."""
    groups = class_groups(train_counts)
    return {name: _mean_or_none(per_class[groups == index]) for index, name in enumerate(GROUP_NAMES)}


def classification_metrics(predicted: Tensor, labels: Tensor, train_counts: Sequence[int]) -> dict[str, object]:
    """Top-1 and balanced accuracy, Many/Medium/Few accuracy (mean per-class accuracy in each group), per class,
    confusion.

    Accuracies are percentages; classes absent from ``labels`` have per-class accuracy ``None``
    and are left out of the means.
    """
    num_classes = len(train_counts)
    predicted, labels = predicted.numpy().astype(np.int64), labels.numpy().astype(np.int64)
    confusion = np.bincount(labels * num_classes + predicted, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )
    support = confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(support > 0, 100.0 * np.diag(confusion) / support, np.nan)
    result: dict[str, object] = {
        "num_images": int(len(labels)),
        "top1": float(100.0 * (predicted == labels).mean()) if len(labels) else None,
        "balanced": _mean_or_none(per_class),
        **group_accuracy(per_class, train_counts),
    }
    result["per_class"] = [None if np.isnan(v) else float(v) for v in per_class]
    result["confusion"] = confusion.tolist()
    return result


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (as Spearman's correlation uses them)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=float)
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def _pearson(x: np.ndarray, y: np.ndarray) -> Optional[float]:
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else None


def prior_diagnostics(estimate: Tensor, train_counts: Sequence[int]) -> dict[str, object]:
    """How the NPE estimate, averaged over images per class coordinate, tracks the log training count.

    Returns the per-class mean estimate, Pearson and Spearman correlation with ``log n_c`` and
    the least-squares slope and intercept (a slope near 1 means the estimate is a log prior up
    to a constant). Correlations are ``None`` when the counts are all equal.
    """
    mean_estimate = estimate.double().mean(0).numpy()
    log_counts = np.log(np.asarray(train_counts, dtype=float))
    constant = np.ptp(log_counts) == 0
    slope, intercept = (None, None) if constant else np.polyfit(log_counts, mean_estimate, 1)
    return {
        "mean_estimate": mean_estimate.tolist(),
        "log_count": log_counts.tolist(),
        "pearson": None if constant else _pearson(log_counts, mean_estimate),
        "spearman": None if constant else _pearson(_ranks(log_counts), _ranks(mean_estimate)),
        "slope": None if slope is None else float(slope),
        "intercept": None if intercept is None else float(intercept),
    }


def _named_prior(spec: str, counts: np.ndarray, seed: int) -> np.ndarray:
    """Class weights of a named mix: uniform, train, inverse or dirichlet:A."""
    if spec == "uniform":
        return np.ones_like(counts)
    if spec == "train":
        return counts
    if spec == "inverse":
        order = np.argsort(counts, kind="stable")
        weights = np.empty_like(counts)
        weights[order] = counts[order[::-1]]
        return weights
    if spec.startswith("dirichlet:"):
        try:
            concentration = float(spec.partition(":")[2])
        except ValueError:
            concentration = float("nan")
        if not np.isfinite(concentration) or concentration <= 0:
            raise ValueError(f"dirichlet:A needs a positive number A, got {spec!r}.")
        return np.random.default_rng(seed).dirichlet(np.full(len(counts), concentration))
    raise ValueError(f"target prior must be uniform, train, inverse, dirichlet:A or a .json file, got {spec!r}.")


def resolve_target_prior(spec: Union[str, Sequence[float]], train_counts: Sequence[int], seed: int = 0) -> np.ndarray:
    """The class mix ``spec`` names, normalised: ``uniform``; ``train`` (the training counts); ``inverse`` (each class
    takes the count of its mirror rank, so the rarest class is the most frequent); ``dirichlet:A`` (one Dirichlet(A)
    draw from ``seed``); a ``.json`` file of per-class weights; or the weights themselves."""
    counts = np.asarray(train_counts, dtype=np.float64)
    if isinstance(spec, str) and spec.endswith(".json"):
        spec = PriorRecord.read(spec).prior
    weights = _named_prior(spec, counts, seed) if isinstance(spec, str) else np.asarray(spec, dtype=np.float64)
    if weights.shape != counts.shape or not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"a target prior needs {len(counts)} finite non-negative weights, not all zero.")
    return weights / weights.sum()


def _target_top1(per_class: Sequence[Optional[float]], prior: np.ndarray) -> Optional[float]:
    """Expected top-1 under class mix ``prior``: ``sum_c prior_c * accuracy_c`` (None if a weighted class is absent)."""
    if any(accuracy is None for accuracy, weight in zip(per_class, prior) if weight > 0):
        return None
    return float(sum(weight * accuracy for accuracy, weight in zip(per_class, prior) if weight > 0))


def _score(
    predictions: Predictions, train_counts: Sequence[int], target: Optional[np.ndarray] = None
) -> dict[str, object]:
    scores: dict[str, object] = {
        variant: classification_metrics(logits.argmax(1), predictions.labels, train_counts)
        for variant, logits in predictions.logits.items()
    }
    if target is not None:
        for values in scores.values():
            values["target_top1"] = _target_top1(values["per_class"], target)
    if predictions.estimate is not None:
        scores["prior"] = prior_diagnostics(predictions.estimate, train_counts)
    return scores


def evaluate_model(
    model: nn.Module,
    data: LongTailedData,
    device: torch.device,
    batch_size: int = 500,
    posthoc_tau: Optional[float] = None,
    channels_last: bool = False,
    amp: bool = False,
    sets: Optional[Sequence[str]] = None,
    target_prior: Optional[Sequence[float]] = None,
    progress: Optional[ProgressFactory] = None,
) -> dict[str, object]:
    """Score ``model`` on the evaluation sets of ``data`` (all of ``data.eval_sets``, or the named ``sets``).

    Returns ``{"primary": variant, "train_counts": [...], "groups": [...], "sets": {set: {variant:
    metrics, "prior": diagnostics}}}`` (and ``class_names`` when the data or the model's ``label_names``
    name the classes); ``primary`` is ``npe_la`` for NPE models, else ``plain``. With ``target_prior``
    (class weights) each variant also gets ``target_top1``: the expected top-1 on a test set of that class
    mix, computed exactly from the per-class accuracy rather than from a random resample, which would only
    add noise for a fixed prediction rule. ``progress`` shows a bar over each set's batches.
    """
    target = None if target_prior is None else resolve_target_prior(target_prior, data.counts)
    names = list(data.eval_sets) if sets is None else list(sets)
    unknown = sorted(set(names) - set(data.eval_sets))
    if unknown:
        raise ValueError(f"unknown evaluation sets {unknown}; available: {sorted(data.eval_sets)}.")
    log_prior = None
    if posthoc_tau is not None:
        log_prior = torch.log(torch.as_tensor(data.counts, dtype=torch.float32) / float(data.counts.sum()))
    computed: dict[str, Predictions] = {}
    for name in names:
        base, mask = data.derived_sets.get(name, (None, None))
        if base in computed:
            computed[name] = computed[base].subset(torch.from_numpy(mask))
        else:
            batches = data.evaluation_batches(name, model, batch_size, device=device, channels_last=channels_last)
            if progress is not None:
                batches = progress(batches, total=len(batches), desc=f"evaluate {name}", unit="batch", leave=False)
            computed[name] = predict(model, batches, log_prior, posthoc_tau or 0.0, amp)
    metrics: dict[str, object] = {
        "primary": "npe_la" if _npe_head(model) is not None else "plain",
        "train_counts": data.counts.tolist(),
        "groups": [GROUP_NAMES[g] for g in data.groups],
        "sets": {name: _score(computed[name], data.counts, target) for name in names},
    }
    if target is not None:
        metrics["target_prior"] = target.tolist()
    class_names = data.class_names or getattr(model, "pretrained_cfg", {}).get("label_names")
    if class_names:
        metrics["class_names"] = list(class_names)
    return metrics


def summary(metrics: dict[str, object], variant: Optional[str] = None) -> dict[str, dict[str, Optional[float]]]:
    """``{set: {top1, balanced, many, medium, few}}`` for one prediction variant (default: the primary one)."""
    variant = variant or metrics["primary"]
    keys = ("top1", "balanced", *GROUP_NAMES)
    return {
        name: {key: scores[variant][key] for key in keys}
        for name, scores in metrics["sets"].items()
        if variant in scores
    }


def _data_for(model: nn.Module, dataset: str, data_dir: Union[str, Path], **options: Any) -> LongTailedData:
    """The long-tailed data set to score ``model`` on, refused when its class count is not the model's (for CIFAR
    before any file is read)."""
    if dataset in CIFAR_NUM_CLASSES:
        check_num_classes(model, CIFAR_NUM_CLASSES[dataset], "the model")
    data = load_long_tailed(dataset, data_dir, **options)
    check_num_classes(model, data.num_classes, "the model")
    return data


def evaluate_run(
    model: nn.Module,
    out_dir: Union[str, Path],
    *,
    dataset: Optional[str] = None,
    rho: Optional[float] = None,
    max_per_class: Optional[int] = None,
    data_dir: Union[str, Path] = "data",
    split_dir: Optional[str] = None,
    image_size: Optional[int] = None,
    workers: Optional[int] = None,
    download: bool = False,
    device: Union[str, torch.device] = "auto",
    batch_size: int = 500,
    posthoc_tau: Optional[float] = None,
    sets: Optional[Sequence[str]] = None,
    channels_last: bool = False,
    amp: bool = False,
    title: str = "",
    about: Optional[dict[str, Any]] = None,
    target_prior: Optional[Union[str, Sequence[float]]] = None,
    training_log: Optional[Union[str, Path]] = None,
    progress: Optional[ProgressFactory] = None,
    overwrite: bool = False,
    inputs: Sequence[Union[str, Path]] = (),
) -> EvaluationResult:
    """Score a trained classifier on a data set's evaluation sets; write ``metrics.json`` and plots to ``out_dir``.

    ``dataset`` (default cifar10; rho 100 for CIFAR) names the long-tailed training set whose counts define the Many
    / Medium / Few groups and the post-hoc LA prior (:func:`npe_models.data.load_long_tailed` has the data
    options); ``about`` (e.g. the source, its method, whether merged) heads ``metrics.json`` and names the plots'
    variants; ``target_prior`` (:func:`resolve_target_prior`) adds each variant's expected top-1 under that class mix;
    ``training_log`` (a run's ``log.jsonl``) adds training curves to the plots; ``progress`` (e.g. ``tqdm.tqdm``)
    shows a bar per set. ``out_dir`` must be new, empty or an earlier evaluation (replaced with ``overwrite``).
    """
    check_output_dir(
        out_dir, "evaluation", is_own=is_evaluation_dir, overwrite=overwrite, inputs=inputs, option="--out"
    )
    dataset = dataset or "cifar10"
    data = _data_for(
        model,
        dataset,
        data_dir,
        rho=rho,
        max_per_class=max_per_class,
        download=download,
        split_dir=split_dir,
        image_size=image_size,
        workers=workers,
    )
    target = None if target_prior is None else resolve_target_prior(target_prior, data.counts)
    device, out_dir = resolve_device(str(device)), Path(out_dir)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    with locked_dir(out_dir):  # one evaluation at a time writes the folder: its metrics.json and plots agree
        metrics = evaluate_model(
            model, data, device, batch_size, posthoc_tau, channels_last, amp, sets, target, progress
        )
        metrics = {**(about or {}), "dataset": dataset, "rho": data.rho, **metrics}
        plots = _save_evaluation(out_dir, metrics, f"{title} {data.title}".strip(), training_log)
    return EvaluationResult(metrics, plots)


def _save_evaluation(
    out_dir: Path, metrics: dict[str, Any], title: str, training_log: Optional[Union[str, Path]]
) -> list[Path]:
    """The plots (with the run's training curves when its log is given), then ``metrics.json``; the plots' paths."""
    records = read_jsonl(training_log) if training_log is not None else None
    plots = save_evaluation_plots(metrics, out_dir, next(iter(metrics["sets"])), title, records)
    write_json(out_dir / "metrics.json", metrics)
    return plots


def _cell(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:6.2f}"


def format_metrics(metrics: dict[str, Any]) -> str:
    """A text table of accuracy per test set and prediction variant, then the NPE estimate's diagnostics."""
    keys = ("top1", "balanced", *GROUP_NAMES, *(("target_top1",) if "target_prior" in metrics else ()))
    lines = [
        f"{'set':<11} {'variant':<11} {'top-1':>6} {'bal.':>6} {'many':>6} {'medium':>6} {'few':>6}"
        + (f" {'target':>6}" if len(keys) > 5 else "")
    ]
    for set_name, scores in metrics["sets"].items():
        for variant, values in scores.items():
            if variant != "prior":
                lines.append(f"{set_name:<11} {variant:<11} " + " ".join(_cell(values[k]) for k in keys))
    if "target_prior" in metrics:
        lines.append(
            "target: expected top-1 under the class mix " + ", ".join(f"{p:.3f}" for p in metrics["target_prior"])
        )
    for set_name, scores in metrics["sets"].items():
        if "prior" in scores:
            prior = scores["prior"]
            lines.append(
                f"NPE estimate vs log count ({set_name}): Pearson {_cell(prior['pearson'])}, "
                f"Spearman {_cell(prior['spearman'])}, slope {_cell(prior['slope'])}"
            )
    return "\n".join(lines)
