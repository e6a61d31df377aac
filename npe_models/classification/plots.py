"""Figures for an evaluation: per-class accuracy ordered by training frequency (the paper's Figure 2)
and the NPE estimate against the log training count. Drawn with matplotlib's object API (no pyplot state).
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..data.cifar import GROUP_NAMES, class_groups
from .checkpoint import atomic_write

__all__ = ["plot_per_class_accuracy", "plot_estimate_vs_log_count", "save_evaluation_plots"]

PathLike = Union[str, Path]
_LABELS = {"npe_la": "NPE-LA", "plain": "unadjusted", "posthoc_la": "post-hoc LA"}


def _save(figure: Figure, path: PathLike) -> None:
    FigureCanvasAgg(figure)
    atomic_write(path, lambda temp: figure.savefig(temp, format="png", dpi=120, bbox_inches="tight"))


def plot_per_class_accuracy(
    per_class: Mapping[str, Sequence[Optional[float]]], train_counts: Sequence[int], path: PathLike, title: str = ""
) -> None:
    """Grouped bars of per-class accuracy (one colour per prediction variant), classes sorted by training count."""
    order = np.argsort(-np.asarray(train_counts), kind="stable")
    figure = Figure(figsize=(max(6.0, 0.12 * len(order) + 3), 3.8))
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(per_class))
    positions = np.arange(len(order))
    for offset, (variant, accuracy) in enumerate(per_class.items()):
        values = [np.nan if accuracy[c] is None else accuracy[c] for c in order]
        axes.bar(positions + (offset - (len(per_class) - 1) / 2) * width, values, width, label=_LABELS.get(variant, variant))
    groups = class_groups(np.asarray(train_counts)[order])
    for index, name in enumerate(GROUP_NAMES):
        members = positions[groups == index]
        if len(members):
            axes.axvspan(members[0] - 0.5, members[-1] + 0.5, color=f"0.{9 - index}", alpha=0.3, zorder=0)
            axes.text((members[0] + members[-1]) / 2, 101, name.capitalize(), ha="center", va="bottom", fontsize=8)
    axes.set_xlabel("class, most frequent first (training count)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_ylim(0, 100)
    axes.set_xlim(-0.5, len(order) - 0.5)
    if len(order) <= 20:
        axes.set_xticks(positions, [f"{c}\n({train_counts[c]})" for c in order], fontsize=7)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    axes.set_title(title, fontsize=9, pad=14)
    _save(figure, path)


def plot_estimate_vs_log_count(
    mean_estimate: Sequence[float], train_counts: Sequence[int], path: PathLike,
    slope: Optional[float] = None, intercept: Optional[float] = None, title: str = "",
) -> None:
    """Scatter of each class's mean NPE estimate against its log training count, with the least-squares line."""
    log_counts = np.log(np.asarray(train_counts, dtype=float))
    figure = Figure(figsize=(4.5, 3.8))
    axes = figure.add_subplot()
    axes.scatter(log_counts, mean_estimate, s=18)
    if slope is not None and intercept is not None:
        line = np.linspace(log_counts.min(), log_counts.max(), 2)
        axes.plot(line, slope * line + intercept, color="C1", label=f"slope {slope:.2f}")
        axes.legend(loc="upper left", fontsize=8)
    axes.set_xlabel("log training count")
    axes.set_ylabel("mean NPE estimate")
    axes.set_title(title, fontsize=9)
    _save(figure, path)


def save_evaluation_plots(metrics: Mapping, out_dir: PathLike, set_name: str = "full", title: str = "") -> list[Path]:
    """Write the per-class accuracy plot (and for NPE models the estimate plot) of one evaluation set; return the paths."""
    out_dir = Path(out_dir)
    scores = metrics["sets"][set_name]
    counts = metrics["train_counts"]
    variants = {k: v["per_class"] for k, v in scores.items() if k != "prior"}
    paths = [out_dir / f"per_class_accuracy_{set_name}.png"]
    plot_per_class_accuracy(variants, counts, paths[0], title)
    if "prior" in scores:
        prior = scores["prior"]
        paths.append(out_dir / f"estimate_vs_log_count_{set_name}.png")
        plot_estimate_vs_log_count(prior["mean_estimate"], counts, paths[1], prior["slope"], prior["intercept"], title)
    return paths
