"""Paired comparison of two zoo methods on the same test images (benchmarks/zoo_paired.py)."""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def zoo_paired():
    sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling zoo_jpeg_penalty, as when it is run
    try:
        spec = importlib.util.spec_from_file_location("zoo_paired", BENCHMARKS / "zoo_paired.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_the_difference_counts_the_shared_images_once_and_each_methods_seed_spread(zoo_paired) -> None:
    a = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=bool)  # seeds at 75 % and 50 %
    b = np.array([[1, 0, 0, 0]], dtype=bool)  # one seed: no seed term
    difference, se = zoo_paired.paired_difference(a, b)
    per_image = np.array([0.0, 1.0, 0.5, 0.0])  # a's seed mean minus b, image by image
    images_term = per_image.var(ddof=1) / 4
    seeds_term = np.var([0.75, 0.5], ddof=1) / 2
    assert difference == pytest.approx(37.5)
    assert se == pytest.approx(100 * math.sqrt(images_term + seeds_term))


def test_identical_methods_differ_by_nothing(zoo_paired) -> None:
    a = np.array([[1, 0, 1, 1, 0]], dtype=bool)
    assert zoo_paired.paired_difference(a, a) == (0.0, 0.0)
