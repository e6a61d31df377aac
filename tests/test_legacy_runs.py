"""Runs written before the package reshaping (tests/fixtures/runs_v0_1) resume to the end and evaluate as they did."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from npe_models.classification import evaluate_model, load_trained_model, resolve_train_config, train
from npe_models.data import load_cifar_lt
from npe_models.runs import read_jsonl, read_run_config, run_task
from npe_models.segmentation import load_segmentation_model, resolve_segmentation_config, train_run

FIXTURES = Path(__file__).parent / "fixtures" / "runs_v0_1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())

pytestmark = pytest.mark.usefixtures("one_thread")


def _copy(name: str, tmp_path: Path) -> Path:
    run = tmp_path / name
    shutil.copytree(FIXTURES / name, run)
    return run


def test_legacy_classification_run_resumes_and_evaluates(data_dir: Path, tmp_path: Path) -> None:
    expected = EXPECTED["classification_npe4_interrupted"]
    run = _copy("classification_npe4_interrupted", tmp_path)
    assert run_task(run) == run_task(run / "checkpoint.pt") == "classification"
    config = resolve_train_config(
        run, resume=True, data_dir=str(data_dir)
    )  # `train --out RUN --resume --data-dir DATA`
    assert (config.model, config.epochs, config.device) == ("resnet20_npe4", 2, "auto")
    result = train(config, run, resume=True)
    log = read_jsonl(run / "log.jsonl")
    assert [r["epoch"] for r in log] == [1, 2]
    assert log[-1]["loss"] == pytest.approx(expected["epoch_2_loss"], rel=1e-6)
    full = result.metrics["sets"]["full"]
    assert {variant: full[variant]["top1"] for variant in ("npe_la", "plain")} == pytest.approx(expected["full_top1"])
    assert read_run_config(run)["task"] == "classification" and run_task(run / "model.safetensors") == "classification"

    model, loaded_config = load_trained_model(run)
    assert loaded_config == config
    data = load_cifar_lt(data_dir, "cifar10", rho=10, max_per_class=20)
    metrics = evaluate_model(model, data, torch.device("cpu"), 500, sets=["exact"])
    assert metrics["sets"]["exact"]["npe_la"] == result.metrics["sets"]["exact"]["npe_la"]


def test_legacy_segmentation_run_resumes_from_its_config(data_dir: Path, tmp_path: Path) -> None:
    expected = EXPECTED["segmentation_unet_npe1_interrupted"]
    run = _copy("segmentation_unet_npe1_interrupted", tmp_path)
    assert run_task(run) == run_task(run / "checkpoint.pt") == "segmentation"
    config = resolve_segmentation_config(run, resume=True)  # every setting from the legacy config.json
    assert config.model.model_kwargs == {"base_channels": 4} and config.train.crop_size == (32, 32)
    with pytest.raises(ValueError, match=r"train\.lr: 0\.01 -> 0\.5"):
        train_run(
            resolve_segmentation_config(run, resume=True, lr=0.5), run, data_dir=data_dir, resume=True, device="cpu"
        )
    record = train_run(config, run, data_dir=data_dir, resume=True, device="cpu")
    assert record["iteration"] == 4
    log = read_jsonl(run / "log.jsonl")
    assert [r["iteration"] for r in log] == [1, 2, 3, 4]
    assert log[-1]["loss"] == pytest.approx(expected["iteration_4_loss"], rel=1e-6)
    saved = read_run_config(run)
    assert saved["task"] == "segmentation" and saved["data"]["images"] == config.data["images"]
    model, model_config = load_segmentation_model(run)
    assert model_config == config.model and not model.training
