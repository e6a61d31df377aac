"""Each zoo run's JPEG penalty on the same 1,000 images: top-1 on CIFAR-10's exact (lossless) test images minus top-1
on their JPEG twins, with its paired standard error.

The full test set is mostly JPEG-recovered, the paper's is clean, so the exact images stand in for the paper's set.
Every run is scored on the same 1,000 images, and its twins' top-1 tracks its full-set top-1. A run whose penalty
is low beside the other runs' did not lose accuracy to JPEG any less: it had a low draw on the clean 1,000 (issue 46's
gap analysis). The standard error is paired (McNemar): sqrt(b + c - (b - c)^2 / n) / n over the b + c images that
one version gets right and the other wrong.

    python benchmarks/zoo_jpeg_penalty.py --zoo zoo --data-dir ../shared/data [--runs 'resnet32_*_r200_*']
"""

from __future__ import annotations

import argparse
import fnmatch
import math
from pathlib import Path

import numpy as np
import torch

from npe_models.adapt import predict_logits
from npe_models.classification.evaluate import summary
from npe_models.data import ImageArrays, load_cifar, load_image_npz
from npe_models.loading import load_model
from npe_models.runs import METRICS_FILE, read_json


def deployed_correct(model: torch.nn.Module, images: ImageArrays) -> np.ndarray:
    """Whether the model's deployed output (NPE-LA for a model with PEMs) gets each image right."""
    logits, labels = predict_logits(model, images)
    return (logits.argmax(1) == labels).numpy()


def paired_penalty(exact_right: np.ndarray, twin_right: np.ndarray) -> tuple[float, float]:
    """Top-1 difference exact - twins in points, and its paired (McNemar) standard error."""
    n = len(exact_right)
    b, c = int((exact_right & ~twin_right).sum()), int((~exact_right & twin_right).sum())
    return 100 * (b - c) / n, 100 * math.sqrt(b + c - (b - c) ** 2 / n) / n


def run_penalty(run: Path, originals: ImageArrays, twins: ImageArrays) -> dict:
    """One run's exact and twins top-1 (checked against its metrics.json) and its penalty."""
    model = load_model(run).model  # loaded once for both image sets
    exact_right, twin_right = deployed_correct(model, originals), deployed_correct(model, twins)
    penalty, se = paired_penalty(exact_right, twin_right)
    recorded = summary(read_json(run / METRICS_FILE))["exact"]["top1"]  # the run's primary (deployed) variant
    exact = 100 * exact_right.mean()
    if abs(exact - recorded) > 100 / len(originals) + 1e-6:  # one image may flip with the float order
        raise SystemExit(f"{run.name}: exact top-1 {exact:.2f} here, {recorded:.2f} recorded")
    return {"run": run.name, "exact": exact, "twins": 100 * twin_right.mean(), "penalty": penalty, "se": se}


def matching_runs(zoo: Path, pattern: str) -> list[Path]:
    """The finished runs (with a metrics.json) whose folder name matches the glob ``pattern``."""
    runs = [r for r in sorted(zoo.iterdir()) if fnmatch.fnmatch(r.name, pattern) and (r / METRICS_FILE).is_file()]
    if not runs:
        raise SystemExit(f"no finished run in {zoo} matches {pattern!r}")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=Path("zoo"))
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding cifar10/")
    parser.add_argument("--runs", default="resnet32_*", help="run folder names to score (glob)")
    args = parser.parse_args()
    test = load_cifar(args.data_dir, train=False)
    originals = test.subset(test.exact)
    twins = load_image_npz(args.data_dir / "cifar10" / "test_jpeg_twins.npz")
    if not (originals.labels == twins.labels).all():
        raise SystemExit("test_jpeg_twins.npz's labels differ from its originals'")
    runs = matching_runs(args.zoo, args.runs)
    print("| run | exact | JPEG twins | penalty (exact - twins) | paired SE |\n| --- | ---: | ---: | ---: | ---: |")
    for run in runs:
        row = run_penalty(run, originals, twins)
        print(f"| {row['run']} | {row['exact']:.2f} | {row['twins']:.2f} | {row['penalty']:+.2f} | {row['se']:.2f} |")


if __name__ == "__main__":
    main()
