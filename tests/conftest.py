"""Shared pytest fixtures: the real data sets' location and deterministic seeding."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


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
