r"""Prior shift on the shipped CIFAR-10-LT (rho = 100, HP-2) checkpoints: no adaptation, EM + BCTS, BBSE, oracle.

    python benchmarks/bench_prior_shift.py --data-dir ../shared/data --out runs/prior_shift \
        --figure benchmarks/prior_shift_stream.png

Each model's logits on the 10,000 test images and on the calibration set (500 held-out training
images per class, ``npe_models.adapt.cifar_calibration_set``; class 0 has no held-out image, so its
500 are training images) are computed once and cached in ``--out``. The full test set is 90%
JPEG-recovered (quality 75, see ../shared/data/README.md), a covariate shift that breaks the
label-shift assumption when calibrating on lossless images, so sets drawn from it are calibrated on
a JPEG round trip (PIL quality 75) of the calibration images, and sets drawn from the exact images on
the lossless ones; the full set with lossless calibration is reported too, to show the failure. Test sets are
resampled without replacement, with fixed seeds, from the full test set
and from its 1,000 exact images, to each class mix: uniform, the training prior, its inverse and
20 Dirichlet(1) draws (each set as large as the pool's per-class counts allow; fixed mixes are
averaged over ``--seeds`` draws). The stream is 20,000 test images (drawn with replacement)
whose mix moves linearly from the training prior to the inverse and back; EM runs on a sliding
window (``--window``) of the most recent predictions, updated every ``--batch`` images.
Prints markdown tables and writes ``results.json`` and the running-accuracy plot.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import timm
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

import npe_models  # noqa: F401  (registers the models)
from npe_models import adapt
from npe_models.classification.evaluate import resolve_target_prior
from npe_models.data import ImageArrays, load_cifar_lt

# label -> (pretrained name, whether its logits carry the training prior: plain cross-entropy)
MODELS = {
    "CE": ("resnet32.cifar10_lt_r100_hp2", True),
    "LA": ("resnet32.cifar10_lt_r100_hp2_la", False),
    "post-hoc LA": ("resnet32.cifar10_lt_r100_hp2_posthoc_la", False),
    "NPE(1)": ("resnet32_npe1.cifar10_lt_r100_hp2", False),
    "NPE(16)": ("resnet32_npe16.cifar10_lt_r100_hp2", False),
}
METHODS = ("none", "em", "bbse", "oracle")
STREAM_LENGTH = 20_000


def _jpeg(images: ImageArrays, quality: int = 75) -> ImageArrays:
    """The images after a JPEG round trip at PIL ``quality``, as the 9,000 recovered test images were made."""

    def round_trip(image: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        return np.asarray(Image.open(buffer).convert("RGB"))

    return ImageArrays(
        np.stack([round_trip(image) for image in images.images]), images.labels, np.zeros(len(images), bool)
    )


def _predictions(data_dir: Path, out: Path) -> dict:
    """Logits of every model on the test set and on both calibration sets (cached in ``out/predictions.pt``)."""
    cache = out / "predictions.pt"
    result = torch.load(cache, weights_only=True) if cache.is_file() else {"logits": {}}
    data = load_cifar_lt(data_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibration = adapt.cifar_calibration_set(data_dir, per_class=500)
    images = {"test": data.test, "cal": calibration, "cal_jpeg": _jpeg(calibration)}
    result.update(
        test_labels=torch.from_numpy(data.test.labels),
        exact=torch.from_numpy(data.test.exact),
        cal_labels=torch.from_numpy(calibration.labels),
        counts=torch.from_numpy(data.counts),
        calibration_note=[str(w.message) for w in caught],
    )
    for label, (name, _) in MODELS.items():
        model, logits = None, result["logits"].setdefault(label, {})
        for key in images.keys() - logits.keys():
            model = model or timm.create_model(name, pretrained=True).eval()
            start = time.perf_counter()
            logits[key] = adapt.predict_logits(model, images[key])[0]
            print(f"{label} {key}: predictions in {time.perf_counter() - start:.0f} s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(result, cache)
    return result


def _mixes(counts: np.ndarray, draws: int) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(1234)
    named = {mix: [resolve_target_prior(mix, counts)] for mix in ("uniform", "train", "inverse")}
    return {**named, "dirichlet": list(rng.dirichlet(np.ones(len(counts)), draws))}


def _resample(labels: np.ndarray, pool: np.ndarray, prior: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of a set drawn without replacement from ``pool`` with class counts ``floor(n * prior)``, n maximal."""
    available = np.bincount(labels[pool], minlength=len(prior))
    size = np.min(np.where(prior > 0, available / np.maximum(prior, 1e-12), np.inf))
    wanted = np.floor(size * prior + 1e-9).astype(int)
    return np.concatenate(
        [rng.choice(np.flatnonzero(pool & (labels == c)), n, replace=False) for c, n in enumerate(wanted)]
    )


class Adapted:
    """One model's calibration (on calibration set ``cal``) and its estimators, applied to sets of its test logits."""

    def __init__(self, logits: dict, cal: str, cal_labels: torch.Tensor, source_prior: torch.Tensor | None) -> None:
        self.test, self.cal_logits, self.cal_labels = logits["test"], logits[cal], cal_labels
        self.calibration = adapt.fit_bcts(self.cal_logits, cal_labels, source_prior=source_prior)
        self.balanced = self.calibration(self.test)
        self.uncalibrated = self.test.double() if source_prior is None else self.test - source_prior.log()
        self.source_prior = source_prior

    def priors(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "em": adapt.em_prior(self.balanced[index]),
            "em_no_bcts": adapt.em_prior(self.test[index], source_prior=self.source_prior),
            "bbse": adapt.bbse_prior(self.test[index], self.cal_logits, self.cal_labels),
        }

    def predict(self, index: torch.Tensor, prior: torch.Tensor | None, calibrated: bool = True) -> torch.Tensor:
        """Unadapted predictions (``prior`` None), else (calibrated) balanced logits + log prior."""
        if prior is None:
            return self.test[index].argmax(1)
        return ((self.balanced if calibrated else self.uncalibrated)[index] + prior.log()).argmax(1)


def _score_set(model: Adapted, labels: torch.Tensor, index: torch.Tensor) -> dict[str, float]:
    truth = torch.bincount(labels[index], minlength=model.test.shape[1]).double() / len(index)
    priors = {**model.priors(index), "oracle": truth}
    y = labels[index]

    def top1(predicted: torch.Tensor) -> float:
        return 100.0 * float((predicted == y).double().mean())

    result = {"n": len(index), "none": top1(model.predict(index, None))}
    for method in ("em", "bbse", "oracle"):
        result[method] = top1(model.predict(index, priors[method]))
    result["em_no_bcts"] = top1(model.predict(index, priors["em_no_bcts"], calibrated=False))
    result["oracle_no_bcts"] = top1(model.predict(index, truth, calibrated=False))
    for method in ("em", "em_no_bcts", "bbse"):
        result[f"tv_{method}"] = adapt.total_variation(priors[method], truth)
    return result


def _static(models: dict[str, Adapted], preds: dict, pool_name: str, seeds: int, draws: int) -> dict:
    """``{mix: {model: mean scores}}`` on sets resampled from ``pool_name`` (full or exact): the fixed mixes' seeds
    and the Dirichlet draws."""
    labels = preds["test_labels"]
    pool = np.ones(len(labels), bool) if pool_name == "full" else preds["exact"].numpy()
    results: dict = {}
    for mix, priors in _mixes(preds["counts"].numpy(), draws).items():
        sets = []
        for k, prior in enumerate(priors):
            for seed in range(seeds if mix != "dirichlet" else 1):
                rng = np.random.default_rng([seed, k, pool_name == "exact"])
                sets.append(torch.from_numpy(_resample(labels.numpy(), pool, prior, rng)))
        results[mix] = {}
        for name, model in models.items():
            scores = [_score_set(model, labels, s) for s in sets]
            results[mix][name] = {key: float(np.mean([r[key] for r in scores])) for key in scores[0]}
    return results


def _stream_mix(counts: np.ndarray) -> np.ndarray:
    """``(STREAM_LENGTH, C)`` class mix: the training prior, linearly to its inverse at the midpoint, and back."""
    train, inverse = resolve_target_prior("train", counts), resolve_target_prior("inverse", counts)
    s = 1.0 - np.abs(2.0 * np.arange(STREAM_LENGTH) / (STREAM_LENGTH - 1) - 1.0)
    return (1.0 - s)[:, None] * train + s[:, None] * inverse


def _stream_indices(labels: np.ndarray, mix: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    classes = np.minimum((rng.random(len(mix))[:, None] > np.cumsum(mix, 1)).sum(1), mix.shape[1] - 1)
    by_class = [np.flatnonzero(labels == c) for c in range(mix.shape[1])]
    return np.array([rng.choice(by_class[c]) for c in classes])


def _run_stream(
    model: Adapted, labels: torch.Tensor, index: torch.Tensor, mix: np.ndarray, window: int, batch: int
) -> dict:
    """Correct/incorrect per prediction for each method, and the estimators' mean TV error per batch."""
    estimator = adapt.OnlinePriorEstimator(mix.shape[1], window)
    correct = {method: [] for method in METHODS}
    tv = {"em": [], "bbse": []}
    for start in range(0, len(index), batch):
        part = index[start : start + batch]
        y = labels[part]
        truth = torch.from_numpy(mix[start : start + batch].mean(0))
        em = estimator.update(model.balanced[part])
        seen = index[max(0, start + batch - window) : start + batch]
        bbse = adapt.bbse_prior(model.test[seen], model.cal_logits, model.cal_labels)
        for method, prior in (("none", None), ("em", em), ("bbse", bbse), ("oracle", truth)):
            correct[method].append(model.predict(part, prior) == y)
        tv["em"].append(adapt.total_variation(em, truth))
        tv["bbse"].append(adapt.total_variation(bbse, truth))
    curves = {method: torch.cat(values).double().numpy() for method, values in correct.items()}
    return {"correct": curves, "tv": {k: float(np.mean(v)) for k, v in tv.items()}}


def _running(correct: np.ndarray, width: int) -> np.ndarray:
    return 100.0 * np.convolve(correct, np.ones(width) / width, mode="valid")


def _plot_stream(streams: dict, mix: np.ndarray, path: Path, width: int) -> None:
    """One panel per model: running top-1 over the last ``width`` predictions of each method; the mix on top."""
    figure = Figure(figsize=(3.2 * len(streams), 4.6))
    grid = figure.add_gridspec(2, len(streams), height_ratios=(1, 3), hspace=0.45)
    top = figure.add_subplot(grid[0, :])
    for c in range(mix.shape[1]):
        top.plot(mix[:, c], lw=1, label=f"class {c}" if c in (0, mix.shape[1] - 1) else None)
    top.set_ylabel("class share")
    top.set_xlabel("prediction (stream position)")
    top.legend(loc="upper right", fontsize=7)
    steps = np.arange(width - 1, mix.shape[0])
    for k, (name, stream) in enumerate(streams.items()):
        axes = figure.add_subplot(grid[1, k], sharey=figure.axes[1] if k else None)
        for method in METHODS:
            axes.plot(steps, _running(stream["correct"][method], width), lw=1, label=method)
        axes.set_title(name, fontsize=9)
        axes.set_xlabel("prediction")
        if k == 0:
            axes.set_ylabel(f"top-1 over last {width} (%)")
            axes.legend(loc="lower left", fontsize=7)
    FigureCanvasAgg(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=110, bbox_inches="tight")


def _table(results: dict, title: str) -> str:
    lines = [
        f"| mix ({title}) | model | n | none | EM | BBSE | oracle | EM no BCTS | oracle no BCTS "
        "| TV EM | TV EM no BCTS | TV BBSE |",
        "| --- | --- |" + " ---: |" * 10,
    ]
    for mix, by_model in results.items():
        for name, r in by_model.items():
            accuracy = " | ".join(f"{r[m]:.2f}" for m in (*METHODS, "em_no_bcts", "oracle_no_bcts"))
            lines.append(
                f"| {mix} | {name} | {r['n']:.0f} | {accuracy} | {r['tv_em']:.3f} | {r['tv_em_no_bcts']:.3f} "
                f"| {r['tv_bbse']:.3f} |"
            )
    return "\n".join(lines)


def _stream_table(summary: dict, title: str) -> str:
    lines = [
        f"| stream ({title}) | model | none | EM | BBSE | oracle | TV EM | TV BBSE |",
        "| --- | --- |" + " ---: |" * 6,
    ]
    for name, s in summary.items():
        lines.append(
            f"| drift | {name} | "
            + " | ".join(f"{s[m]:.2f}" for m in METHODS)
            + f" | {s['tv_em']:.3f} | {s['tv_bbse']:.3f} |"
        )
    return "\n".join(lines)


# (test pool, calibration set): the full set is 90% JPEG-recovered, so it is calibrated on JPEG round trips
SETTINGS = {
    "full, JPEG calibration": ("full", "cal_jpeg"),
    "exact, clean calibration": ("exact", "cal"),
    "full, clean calibration": ("full", "cal"),
}


def _streams(models: dict[str, Adapted], preds: dict, window: int, batch: int) -> tuple[dict, dict]:
    mix = _stream_mix(preds["counts"].numpy())
    index = torch.from_numpy(_stream_indices(preds["test_labels"].numpy(), mix))
    streams = {
        name: _run_stream(model, preds["test_labels"], index, mix, window, batch) for name, model in models.items()
    }
    summary = {
        name: {
            **{m: 100.0 * float(s["correct"][m].mean()) for m in METHODS},
            **{f"tv_{k}": v for k, v in s["tv"].items()},
        }
        for name, s in streams.items()
    }
    return streams, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("runs/prior_shift"))
    parser.add_argument("--figure", type=Path, default=None, help="stream plot (default: OUT/stream.png)")
    parser.add_argument("--seeds", type=int, default=5, help="resampling seeds of the fixed mixes")
    parser.add_argument("--draws", type=int, default=20, help="Dirichlet(1) mixes")
    parser.add_argument("--window", type=int, default=2000, help="EM / BBSE sliding window on the stream")
    parser.add_argument("--batch", type=int, default=100, help="stream images per update")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    preds = _predictions(args.data_dir, args.out)
    counts = preds["counts"].double()
    record: dict = {
        "started": started,
        "machine": platform.platform(),
        "torch": torch.__version__,
        "args": vars(args),
        "calibration_note": preds["calibration_note"],
        "settings": {},
    }
    tables = []
    for title, (pool, cal) in SETTINGS.items():
        models = {
            name: Adapted(preds["logits"][name], cal, preds["cal_labels"], counts if ce else None)
            for name, (_, ce) in MODELS.items()
        }
        static = _static(models, preds, pool, args.seeds, args.draws)
        entry = {
            "static": static,
            "calibration": {
                name: {"temperature": m.calibration.temperature, "bias": m.calibration.bias.tolist()}
                for name, m in models.items()
            },
        }
        tables.append(_table(static, title))
        if pool == "full":
            streams, entry["stream"] = _streams(models, preds, args.window, args.batch)
            tables.append(_stream_table(entry["stream"], title))
            if cal == "cal_jpeg":
                _plot_stream(
                    streams, _stream_mix(preds["counts"].numpy()), args.figure or args.out / "stream.png", 1000
                )
        record["settings"][title] = entry
    (args.out / "results.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"started {started}; {platform.platform()}; torch {torch.__version__}")
    for title, entry in record["settings"].items():
        print(
            f"calibration ({title}):",
            "; ".join(f"{n} T={c['temperature']:.3f}" for n, c in entry["calibration"].items()),
        )
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
