"""Figures for an evaluation: per-class accuracy ordered by training frequency (the paper's Figure 2), the NPE
estimate against the log training count, and a run's training curves from its ``log.jsonl``.

Each ``*_figure`` function returns a matplotlib :class:`~matplotlib.figure.Figure` (object API, no pyplot
state), so the drawn data can be inspected; :func:`save_evaluation_plots` writes them as PNG files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..data.cifar import GROUP_NAMES, class_groups
from .checkpoint import atomic_write

__all__ = [
    "variant_label",
    "per_class_accuracy_figure",
    "estimate_figure",
    "training_curves_figure",
    "save_figure",
    "save_evaluation_plots",
]

PathLike = Union[str, Path]
_VARIANT_LABELS = {"npe_la": "NPE-LA", "posthoc_la": "post-hoc LA"}
# What a plain model's logits are, by its training method (post-hoc LA and a merged NPE model fold their adjustment in).
_METHOD_LABELS = {"ce": "CE", "la": "LA", "posthoc_la": "post-hoc LA", "crt": "cRT", "npe": "NPE-LA, merged"}
_NAMED_TICKS, _ROTATED_TICKS = 20, 100  # class counts up to which ticks show name and count, or the name rotated
_MAX_WIDTH = 40.0  # inches: wider figures exceed the image size matplotlib can write


def variant_label(variant: str, metrics: Mapping[str, Any]) -> str:
    """A legend's name for a prediction variant: an NPE model's plain logits are the unadjusted ones, other
    models' plain logits are named by the training method recorded in ``metrics`` (``"plain"`` if none is)."""
    if variant != "plain":
        return _VARIANT_LABELS.get(variant, variant)
    if metrics.get("primary") == "npe_la":
        return "unadjusted"
    return _METHOD_LABELS.get(metrics.get("method"), "plain")


def _class_names(metrics: Mapping[str, Any]) -> list[str]:
    """The class names of ``metrics`` (its ``class_names``), else the class indices."""
    return list(metrics.get("class_names") or map(str, range(len(metrics["train_counts"]))))


def _set_class_ticks(axes: Axes, names: Sequence[str], counts: Sequence[int]) -> None:
    """Class names (with their training counts when few) on the x axis; none beyond ``_ROTATED_TICKS`` classes."""
    positions = np.arange(len(names))
    if len(names) <= _NAMED_TICKS:
        axes.set_xticks(positions, [f"{name}\n({count})" for name, count in zip(names, counts)], fontsize=7)
    elif len(names) <= _ROTATED_TICKS:
        axes.set_xticks(positions, names, fontsize=6, rotation=90)


def _shade_groups(axes: Axes, counts: np.ndarray) -> None:
    """Shade and name the Many / Medium / Few classes of count-sorted bars."""
    positions = np.arange(len(counts))
    groups = class_groups(counts)
    for index, name in enumerate(GROUP_NAMES):
        members = positions[groups == index]
        if len(members):
            axes.axvspan(members[0] - 0.5, members[-1] + 0.5, color=f"0.{9 - index}", alpha=0.3, zorder=0)
            axes.text((members[0] + members[-1]) / 2, 101, name.capitalize(), ha="center", va="bottom", fontsize=8)


def per_class_accuracy_figure(metrics: Mapping[str, Any], set_name: str = "full", title: str = "") -> Figure:
    """Grouped bars of one set's per-class accuracy (one colour per prediction variant), classes sorted by training
    count and named on the x axis."""
    counts = np.asarray(metrics["train_counts"])
    order = np.argsort(-counts, kind="stable")
    variants = {k: v["per_class"] for k, v in metrics["sets"][set_name].items() if k != "prior"}
    figure = Figure(figsize=(min(_MAX_WIDTH, max(6.0, 0.12 * len(order) + 3)), 3.8))
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(variants))
    positions = np.arange(len(order))
    for offset, (variant, accuracy) in enumerate(variants.items()):
        values = [np.nan if accuracy[c] is None else accuracy[c] for c in order]
        axes.bar(
            positions + (offset - (len(variants) - 1) / 2) * width, values, width, label=variant_label(variant, metrics)
        )
    _shade_groups(axes, counts[order])
    names = _class_names(metrics)
    _set_class_ticks(axes, [names[c] for c in order], counts[order].tolist())
    axes.set_xlabel("class, most frequent first (training count)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_ylim(0, 100)
    axes.set_xlim(-0.5, len(order) - 0.5)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    axes.set_title(title, fontsize=9, pad=14)
    return figure


def _correlation_text(prior: Mapping[str, Optional[float]]) -> str:
    return "\n".join(
        f"{name} {'n/a' if prior[key] is None else format(prior[key], '.3f')}"
        for name, key in (("Pearson", "pearson"), ("Spearman", "spearman"))
    )


def estimate_figure(metrics: Mapping[str, Any], set_name: str = "full", title: str = "") -> Figure:
    """Each class's mean NPE estimate against its log training count (the set's ``prior`` diagnostics): the
    least-squares line, the slope-1 line of a log prior up to a constant (through the means), and the
    Pearson and Spearman correlations."""
    prior = metrics["sets"][set_name]["prior"]
    log_counts, estimate = np.asarray(prior["log_count"]), np.asarray(prior["mean_estimate"])
    figure = Figure(figsize=(4.5, 3.8))
    axes = figure.add_subplot()
    axes.scatter(log_counts, estimate, s=18)
    if len(log_counts) <= _NAMED_TICKS:
        for name, x, y in zip(_class_names(metrics), log_counts, estimate):
            axes.annotate(name, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=6)
    line = np.linspace(log_counts.min(), log_counts.max(), 2)
    axes.plot(line, estimate.mean() + line - log_counts.mean(), color="0.5", linestyle="--", label="slope 1")
    if prior["slope"] is not None:
        axes.plot(
            line,
            prior["slope"] * line + prior["intercept"],
            color="C1",
            label=f"least squares, slope {prior['slope']:.2f}",
        )
    axes.text(0.98, 0.03, _correlation_text(prior), transform=axes.transAxes, ha="right", va="bottom", fontsize=8)
    axes.legend(loc="upper left", fontsize=8)
    axes.set_xlabel("log training count")
    axes.set_ylabel("mean NPE estimate")
    axes.set_title(title, fontsize=9)
    return figure


def _plot_field(axes: Axes, records: Sequence[Mapping[str, Any]], keys: Sequence[str], **style: Any) -> None:
    """A nested log field (``("test", "full", "top1")``) against the epoch, over the records that have a number
    there; nothing when none has."""
    epochs, values = [], []
    for record in records:
        value: Any = record
        for key in keys:
            value = value.get(key) if isinstance(value, Mapping) else None
        if isinstance(value, (int, float)):
            epochs.append(record["epoch"])
            values.append(float(value))
    if len(epochs) == 1:
        style.setdefault("marker", ".")  # a line through one point draws nothing
    if epochs:
        axes.plot(epochs, values, **style)


def training_curves_figure(records: Sequence[Mapping[str, Any]], title: str = "") -> Figure:
    """A run's curves from its ``log.jsonl`` records: the losses per epoch, then per evaluated epoch each test
    set's top-1 (an NPE model's unadjusted top-1 dashed) and the first set's Many / Medium / Few accuracy."""
    if not records:
        raise ValueError("training curves need the records of at least one epoch (a run's log.jsonl is empty).")
    figure = Figure(figsize=(12.0, 3.6), layout="constrained")
    loss, top1, groups = figure.subplots(1, 3)
    for key in (key for key in records[0] if key.startswith("loss")):
        _plot_field(loss, records, (key,), label=key)
    sets = list(next((record["test"] for record in records if "test" in record), {}))
    for index, name in enumerate(sets):
        _plot_field(top1, records, ("test", name, "top1"), color=f"C{index}", marker=".", label=name)
        _plot_field(
            top1,
            records,
            ("test_unadjusted", name, "top1"),
            color=f"C{index}",
            linestyle="--",
            marker=".",
            label=f"{name}, unadjusted",
        )
    for group in GROUP_NAMES if sets else ():
        _plot_field(groups, records, ("test", sets[0], group), marker=".", label=group.capitalize())
    panels = (
        (loss, "training loss", "loss"),
        (top1, "test top-1 (%)", "test accuracy"),
        (groups, "test accuracy (%)", f"Many / Medium / Few{f' ({sets[0]})' if sets else ''}"),
    )
    for axes, ylabel, heading in panels:
        axes.set_xlabel("epoch")
        # min_n_ticks=1: with the default 2, a view around one evaluated epoch holds a single integer and
        # MaxNLocator falls back to fractional ticks.
        axes.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        axes.set_ylabel(ylabel)
        axes.set_title(heading, fontsize=9)
        if axes.lines:
            axes.legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    return figure


def save_figure(figure: Figure, path: PathLike) -> Path:
    """Write ``figure`` as a PNG, atomically; returns the path."""
    FigureCanvasAgg(figure)
    atomic_write(path, lambda temp: figure.savefig(temp, format="png", dpi=120, bbox_inches="tight"))
    return Path(path)


def save_evaluation_plots(
    metrics: Mapping[str, Any],
    out_dir: PathLike,
    set_name: str = "full",
    title: str = "",
    records: Optional[Sequence[Mapping[str, Any]]] = None,
) -> list[Path]:
    """Write one evaluation set's per-class accuracy plot, for NPE models the estimate plot, and with a run's log
    ``records`` its training curves; return the paths."""
    out_dir = Path(out_dir)
    paths = [
        save_figure(per_class_accuracy_figure(metrics, set_name, title), out_dir / f"per_class_accuracy_{set_name}.png")
    ]
    if "prior" in metrics["sets"][set_name]:
        paths.append(
            save_figure(estimate_figure(metrics, set_name, title), out_dir / f"estimate_vs_log_count_{set_name}.png")
        )
    if records:
        paths.append(save_figure(training_curves_figure(records, title), out_dir / "training_curves.png"))
    return paths
