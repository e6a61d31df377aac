"""Two methods of one zoo cell compared on the same test images: the difference of their seed-mean top-1, with a
standard error that counts both the seeds' spread and the test images' sampling.

Every run is scored on the same images, so comparing two cells' means with each score's binomial error overstates
the error (the images are shared), and comparing them with the seeds' spread alone understates it (a test set is one
draw of images). Here each image's correctness is averaged over a method's seeds, and the difference of the two
methods is taken image by image: its spread over the n images gives the images' term, std(d) / sqrt(n); the seeds'
terms are each method's top-1 std over sqrt(its seeds) (issue 46: NPE-LA(16) against LA at HP-2 rho 200).

    python benchmarks/zoo_paired.py --zoo zoo --data-dir ../shared/data \\
        --a 'resnet32_npe16_r200_hp2*' --b 'resnet32_la_r200_hp2*'
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from zoo_jpeg_penalty import deployed_correct, matching_runs

from npe_models.data import load_cifar
from npe_models.loading import load_model


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Seed-mean top-1 of ``a`` minus that of ``b`` (``(seeds, images)`` booleans on the same images), in points,
    and its standard error: the image-by-image difference's sampling term plus each method's seed term."""
    per_image = a.mean(0) - b.mean(0)
    n = per_image.size
    images_term = per_image.var(ddof=1) / n
    seeds_terms = sum(x.mean(1).var(ddof=1) / len(x) for x in (a, b) if len(x) > 1)
    return 100 * per_image.mean(), 100 * math.sqrt(images_term + seeds_terms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", type=Path, default=Path("zoo"))
    parser.add_argument("--data-dir", type=Path, required=True, help="folder holding cifar10/")
    parser.add_argument("--a", required=True, help="run folder names of the first method (glob)")
    parser.add_argument("--b", required=True, help="run folder names of the second method (glob)")
    args = parser.parse_args()
    runs_a, runs_b = matching_runs(args.zoo, args.a), matching_runs(args.zoo, args.b)
    test = load_cifar(args.data_dir, train=False)
    a, b = (np.stack([deployed_correct(load_model(run).model, test) for run in runs]) for runs in (runs_a, runs_b))
    print(f"a: {', '.join(r.name for r in runs_a)}\nb: {', '.join(r.name for r in runs_b)}\n")
    print("| test images | a top-1 | b top-1 | a - b | SE | (a - b) / SE |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, index in ((f"full ({len(test):,})", slice(None)), (f"exact ({test.exact.sum():,})", test.exact)):
        difference, se = paired_difference(a[:, index], b[:, index])
        top1_a, top1_b = 100 * a[:, index].mean(), 100 * b[:, index].mean()
        print(f"| {name} | {top1_a:.2f} | {top1_b:.2f} | {difference:+.2f} | {se:.2f} | {difference / se:+.1f} |")


if __name__ == "__main__":
    main()
