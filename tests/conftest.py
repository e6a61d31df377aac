"""Shared pytest fixtures: the real data sets' location and deterministic seeding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
MOSAIC_GENERATOR = REPO_ROOT / "benchmarks" / "make_cifar_mosaic.py"
# 64x64 mosaics of 2 x 2 CIFAR-10 tiles with a 2-px ignore border, rho 10: 20 training and 5 validation mosaics
TINY_MOSAIC_OPTIONS = ["--grid", "2", "--border", "2", "--rho", "10", "--train-max-tiles", "20", "--val-max-tiles", "2"]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Root of the shared data sets: $NPE_DATA_DIR, else ../shared/data beside the repository."""
    configured = os.environ.get("NPE_DATA_DIR")
    path = Path(configured) if configured else REPO_ROOT.parent / "shared" / "data"
    if not path.is_dir():
        if configured:
            pytest.fail(f"NPE_DATA_DIR={configured} is not a directory")
        pytest.skip(f"shared data not found at {path}; set NPE_DATA_DIR")
    return path


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module on one thread: small models train several times faster so when other processes share the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def interrupt_training(monkeypatch):
    """``interrupt_training(epoch)`` makes classification training raise KeyboardInterrupt when it reaches
    ``epoch`` (0-based); ``interrupt_training(None)`` lets it run again."""
    import importlib

    run_class = importlib.import_module("npe_models.classification.train")._Run
    original = run_class.train_epoch

    def interrupt_at(epoch):
        def train_epoch(self, index):
            if index == epoch:
                raise KeyboardInterrupt
            return original(self, index)

        monkeypatch.setattr(run_class, "train_epoch", original if epoch is None else train_epoch)

    return interrupt_at


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """Random 10-class images in the npz format (20 training, 4 test images per class)."""
    folder = tmp_path_factory.mktemp("toy_cifar")
    rng = np.random.default_rng(0)
    for name, per_class in (("train", 20), ("test", 4)):
        labels = np.repeat(np.arange(10), per_class)
        images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
        np.savez(folder / f"{name}.npz", x=images, y=labels, lossless=np.ones(len(labels), bool))
    return folder


@pytest.fixture(scope="session")
def watched_run_args(toy_data) -> list[str]:
    """``npe-models train`` options of a two-epoch NPE run on the toy data, scored after each epoch (no --out)."""
    return [
        "--model",
        "resnet20_npe4",
        "--data-dir",
        str(toy_data),
        "--rho",
        "10",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--eval-every",
        "1",
        "--device",
        "cpu",
    ]


@pytest.fixture(scope="session")
def watched_run(watched_run_args, tmp_path_factory):
    """``(run_dir, completed process)`` of that run trained as a user would, in a subprocess whose output is piped
    (not a terminal), with progress bars and --tensorboard (once per session: it takes seconds)."""
    out = tmp_path_factory.mktemp("watched") / "run"
    argv = [sys.executable, "-m", "npe_models.cli", "train", *watched_run_args, "--out", str(out), "--tensorboard"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    return out, done


@pytest.fixture(scope="session")
def write_cifar_mosaics(data_dir: Path):
    """``write_cifar_mosaics(out, seed)``: the tiny mosaic trees (seg_folder/ and ade20k/) written under ``out`` by
    benchmarks/make_cifar_mosaic.py from the real CIFAR-10 training and test images; returns its summary.json."""
    cifar = data_dir / "cifar10"
    if not (cifar / "train.npz").is_file():
        pytest.skip(f"CIFAR-10 arrays not found in {cifar}")

    def write(out: Path, seed: int = 0) -> dict:
        options = [*TINY_MOSAIC_OPTIONS, "--seed", str(seed)]
        command = [sys.executable, str(MOSAIC_GENERATOR), "--data-dir", str(cifar), "--out", str(out), *options]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
        return json.loads((out / "summary.json").read_text())

    return write


@pytest.fixture(scope="session")
def cifar_mosaics(write_cifar_mosaics, tmp_path_factory) -> tuple[Path, dict]:
    """``(root, summary)`` of the seed-0 tiny mosaic trees, written once per session; tests only read them."""
    root = tmp_path_factory.mktemp("cifar_mosaics")
    return root, write_cifar_mosaics(root)
