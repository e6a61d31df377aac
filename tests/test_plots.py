"""Evaluation plots (issue 16 item 7): class names on the per-class axes, the variants named by what they are, the
estimate scatter with its slope-1 line and correlations, training curves from log.jsonl, and where they are written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from npe_models.classification import classification_metrics, evaluate_model, prior_diagnostics
from npe_models.classification.checkpoint import set_label_names
from npe_models.classification.plots import (
    estimate_figure,
    per_class_accuracy_figure,
    save_evaluation_plots,
    training_curves_figure,
)
from npe_models.cli import main
from npe_models.data import load_long_tailed
from npe_models.runs import read_jsonl

COUNTS = [12, 50, 5, 30, 8, 20]  # not sorted: the bars are, most frequent first
NAMES = ["cat", "dog", "frog", "ship", "truck", "bird"]
ORDER = [1, 3, 5, 0, 4, 2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _metrics(primary: str = "npe_la", method: str = "npe", **extra) -> dict:
    """Metrics of one set as evaluate_model computes them, from random predictions and estimates."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(len(COUNTS)).repeat(8)
    scores = {
        variant: classification_metrics(
            torch.randint(0, len(COUNTS), labels.shape, generator=generator), labels, COUNTS
        )
        for variant in ((primary, "plain") if primary != "plain" else ("plain",))
    }
    scores["posthoc_la"] = classification_metrics(labels, labels, COUNTS)
    if primary == "npe_la":
        estimate = torch.log(torch.tensor(COUNTS, dtype=torch.float64)) + torch.randn(
            40, len(COUNTS), generator=generator
        )
        scores["prior"] = prior_diagnostics(estimate, COUNTS)
    return {
        "primary": primary,
        "method": method,
        "train_counts": COUNTS,
        "class_names": NAMES,
        "sets": {"full": scores},
        **extra,
    }


def test_per_class_bars_are_the_metrics_with_class_names_in_count_order():
    metrics = _metrics()
    axes = per_class_accuracy_figure(metrics, "full").axes[0]
    assert [bars.get_label() for bars in axes.containers] == ["NPE-LA", "unadjusted", "post-hoc LA"]
    for bars, variant in zip(axes.containers, ("npe_la", "plain", "posthoc_la")):
        expected = [metrics["sets"]["full"][variant]["per_class"][c] for c in ORDER]
        assert [bar.get_height() for bar in bars] == pytest.approx(expected)
    assert [tick.get_text() for tick in axes.get_xticklabels()] == [f"{NAMES[c]}\n({COUNTS[c]})" for c in ORDER]


@pytest.mark.parametrize(
    "method, merged, label",
    [
        ("posthoc_la", False, "post-hoc LA"),
        ("ce", False, "CE"),
        ("crt", False, "cRT"),
        ("npe", True, "NPE-LA, merged"),
        (None, False, "plain"),
    ],
)
def test_a_plain_models_bar_is_named_by_its_training_method(method, merged, label):
    """Post-hoc LA folds its adjustment into the bias: its logits are post-hoc LA's, not "unadjusted"."""
    metrics = _metrics("plain", method, merged=merged)
    assert per_class_accuracy_figure(metrics, "full").axes[0].containers[0].get_label() == label


def test_many_classes_are_named_without_counts_and_too_many_unnamed():
    wide = {
        "primary": "plain",
        "train_counts": list(range(60, 10, -1)),
        "class_names": [f"c{i}" for i in range(50)],
        "sets": {"full": {"plain": {"per_class": [50.0] * 50}}},
    }
    assert [t.get_text() for t in per_class_accuracy_figure(wide).axes[0].get_xticklabels()][:2] == ["c0", "c1"]
    huge = {
        "primary": "plain",
        "train_counts": list(range(1200, 0, -1)),
        "sets": {"full": {"plain": {"per_class": [50.0] * 1200}}},
    }
    figure = per_class_accuracy_figure(huge)
    assert figure.get_figwidth() <= 40 and len(figure.axes[0].get_xticklabels()) < 100


def test_estimate_scatter_has_the_slope_one_line_and_the_computed_correlations():
    metrics = _metrics()
    prior = metrics["sets"]["full"]["prior"]
    axes = estimate_figure(metrics, "full").axes[0]
    np.testing.assert_allclose(
        axes.collections[0].get_offsets(), np.column_stack([prior["log_count"], prior["mean_estimate"]])
    )
    lines = {line.get_label(): line for line in axes.lines}
    x, y = lines["slope 1"].get_data()
    assert (y[1] - y[0]) / (x[1] - x[0]) == pytest.approx(1.0)
    assert np.mean(y) - np.mean(x) == pytest.approx(np.mean(prior["mean_estimate"]) - np.mean(prior["log_count"]))
    x, y = lines[f"least squares, slope {prior['slope']:.2f}"].get_data()
    np.testing.assert_allclose(y, prior["slope"] * np.asarray(x) + prior["intercept"])
    texts = [text.get_text() for text in axes.texts]
    assert f"Pearson {prior['pearson']:.3f}\nSpearman {prior['spearman']:.3f}" in texts
    assert set(NAMES) <= set(texts)


def _records() -> list[dict]:
    """log.jsonl records of a three-epoch NPE run scored at epochs 2 and 3."""

    def test(top1):
        return {"full": {"top1": top1, "balanced": top1, "many": top1 + 5, "medium": top1, "few": None}}

    records = [{"epoch": e, "lr": 0.05, "loss": 3.0 / e, "loss_ce": 2.0 / e, "loss_npe": 1.0 / e} for e in (1, 2, 3)]
    records[1].update(test=test(40.0), test_unadjusted=test(35.0))
    records[2].update(test=test(50.0), test_unadjusted=test(42.0))
    return records


def test_training_curves_are_the_logs_losses_and_evaluated_epochs():
    records = _records()
    loss, top1, groups = training_curves_figure(records).axes
    assert {line.get_label(): list(line.get_ydata()) for line in loss.lines} == {
        key: [r[key] for r in records] for key in ("loss", "loss_ce", "loss_npe")
    }
    curves = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in top1.lines}
    assert curves == {"full": ([2, 3], [40.0, 50.0]), "full, unadjusted": ([2, 3], [35.0, 42.0])}
    assert {line.get_label(): list(line.get_ydata()) for line in groups.lines} == {
        "Many": [45.0, 55.0],
        "Medium": [40.0, 50.0],
    }  # Few has no classes: no line


@pytest.mark.parametrize("epochs", [1, 3])
def test_training_curves_of_one_evaluation_show_every_variant_on_integer_epochs(epochs):
    from matplotlib.ticker import MaxNLocator

    records = [{key: value for key, value in record.items() if not key.startswith("test")} for record in _records()]
    records = records[:epochs]
    scored = _records()[2]
    records[-1].update(test=scored["test"], test_unadjusted=scored["test_unadjusted"])  # one evaluation, at the end
    figure = training_curves_figure(records)
    loss, top1, groups = figure.axes
    assert {line.get_label() for line in top1.lines} == {"full", "full, unadjusted"}
    for axes in (top1, groups):
        for line in axes.lines:
            assert list(line.get_xdata()) == [epochs]
            assert line.get_marker() not in (None, "None", "", " ", "none"), line.get_label()
    for line in loss.lines:  # the losses of a one-epoch run are single points too
        assert len(line.get_xdata()) > 1 or line.get_marker() not in (None, "None", "", " ", "none"), line.get_label()
    for axes in figure.axes:
        locator = axes.xaxis.get_major_locator()
        assert isinstance(locator, MaxNLocator) and locator._integer
        low, high = axes.get_xlim()
        ticks = [tick for tick in axes.get_xticks() if low <= tick <= high]
        assert ticks and all(float(tick).is_integer() for tick in ticks), ticks


def test_saved_plots_are_pngs(tmp_path):
    paths = save_evaluation_plots(_metrics(), tmp_path, "full", "a title", _records())
    assert [p.name for p in paths] == [
        "per_class_accuracy_full.png",
        "estimate_vs_log_count_full.png",
        "training_curves.png",
    ]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 100


def test_evaluation_names_the_classes_from_the_models_label_names(toy_data):
    model = timm.create_model("resnet20", num_classes=10)
    set_label_names(model, [f"class {i}" for i in range(10)])
    data = load_long_tailed("cifar10", toy_data, rho=10)
    metrics = evaluate_model(model, data, torch.device("cpu"), 64, sets=["full"])
    assert metrics["class_names"] == [f"class {i}" for i in range(10)]


def test_training_and_evaluate_write_the_plots_and_evaluate_prints_where(capsys, watched_run, tmp_path):
    run, _ = watched_run
    assert (run / "training_curves.png").read_bytes()[:8] == PNG_SIGNATURE
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    expected = [
        out / name for name in ("per_class_accuracy_full.png", "estimate_vs_log_count_full.png", "training_curves.png")
    ]
    for path in expected:
        assert f"  {path}\n" in printed and path.read_bytes()[:8] == PNG_SIGNATURE
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "npe" and len(read_jsonl(run / "log.jsonl")) == 2
