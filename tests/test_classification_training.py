"""Training engine: recipes, methods, metrics, determinism, exact resumption, divergence handling and DDP."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from npe_models.classification import (
    NonFiniteLossError,
    TrainConfig,
    classification_metrics,
    evaluate_model,
    load_trained_model,
    predict,
    prior_diagnostics,
    resolve_config,
    resolve_train_config,
    train,
)
from npe_models.classification.train import _Run
from npe_models.data import BatchStream, load_cifar_lt
from npe_models.distributed import DistributedContext
from npe_models.runs import write_run_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEGACY_SEGMENTATION_RUN = Path(REPO) / "tests" / "fixtures" / "runs_v0_1" / "segmentation_unet_npe1_interrupted"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A learnable 10-class toy set in the npz format: 30 training and 6 test images per class."""
    folder = tmp_path_factory.mktemp("tiny_cifar")
    rng = np.random.default_rng(0)
    colours = rng.integers(40, 216, (10, 3))
    for name, per_class in (("train", 30), ("test", 6)):
        labels = np.repeat(np.arange(10), per_class)
        noise = rng.integers(-40, 40, (len(labels), 32, 32, 3))
        images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        extra = {"lossless": np.arange(len(labels)) % 3 == 0} if name == "test" else {}
        np.savez(folder / f"{name}.npz", x=images, y=labels, **extra)
    return folder


def _config(data_dir, **overrides) -> TrainConfig:
    settings = dict(
        model="resnet20",
        data_dir=str(data_dir),
        rho=10,
        epochs=3,
        batch_size=32,
        lr=0.05,
        milestones=(2,),
        device="cpu",
        deterministic=True,
        eval_every=0,
        eval_batch_size=64,
    )
    settings.update(overrides)
    method = settings.pop("method", "ce")
    return resolve_config("hp2", method, **settings)


def _weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_recipes_and_overrides():
    hp1 = resolve_config("hp1", "ce")
    assert (hp1.lr, hp1.weight_decay, hp1.batch_size, hp1.epochs, hp1.milestones) == (0.1, 2e-4, 128, 200, (160, 180))
    hp2 = resolve_config("hp2", "npe", lr=0.2, milestones=[5])
    assert (hp2.lr, hp2.weight_decay, hp2.batch_size, hp2.epochs, hp2.milestones) == (0.2, 1e-3, 64, 120, (5,))
    assert hp2.model == "resnet32_npe16" and hp2.momentum == 0.9
    crt = resolve_config("hp2", "crt", init="somewhere", model="resnet32")
    assert (crt.epochs, crt.schedule) == (10, "cosine")
    assert TrainConfig.from_dict(json.loads(json.dumps(hp2.to_dict()))) == hp2


def test_resolve_train_config_for_fresh_and_resumed_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("NPE_DATA_DIR", str(tmp_path / "data"))
    run = tmp_path / "run"
    fresh = resolve_train_config(run, resume=False, model="resnet20_npe4", epochs=1, lr=None)
    assert (fresh.method, fresh.recipe, fresh.data_dir, fresh.lr, fresh.epochs) == (
        "npe",
        "hp2",
        str(tmp_path / "data"),
        0.05,
        1,
    )
    assert resolve_train_config(run, False, recipe="hp1", model="resnet20").method == "ce"
    with pytest.raises(FileNotFoundError, match=f"nothing to resume in {run}"):
        resolve_train_config(run, resume=True)
    write_run_config(run, "classification", {**fresh.to_dict(), "device": "cuda"})
    resumed = resolve_train_config(run, resume=True, eval_batch_size=32)  # the machine's device, not the run's
    assert resumed == dataclasses.replace(fresh, eval_batch_size=32, device="auto")
    (run / "config.json").write_text(json.dumps(fresh.to_dict()))  # written before the task was recorded
    assert resolve_train_config(run, resume=True, method="npe", lr=0.1) == dataclasses.replace(fresh, lr=0.1)
    write_run_config(tmp_path / "ce", "classification", resolve_config("hp2", "ce", model="resnet20").to_dict())
    crt = resolve_train_config(tmp_path / "crt", False, method="crt", init=str(tmp_path / "ce"))
    assert (crt.model, crt.epochs, crt.schedule) == ("resnet20", 10, "cosine")
    with pytest.raises(ValueError, match="holds a segmentation run, not a classification one"):
        resolve_train_config(LEGACY_SEGMENTATION_RUN, resume=True)


@pytest.mark.parametrize(
    "method, overrides, message",
    [
        ("sgd", {}, "method must be one of"),
        ("npe", {"model": "resnet32"}, "needs a model with PEMs"),
        ("ce", {"model": "resnet32_npe16"}, "has PEMs"),
        ("crt", {"model": "resnet32"}, "--init"),
        ("ce", {"lr": -1.0}, r"lr \(--lr\) must be a finite number > 0"),
        ("ce", {"compile": "fast"}, r"compile \(--compile\) must be one of default, reduce-overhead"),
    ],
)
def test_invalid_settings_are_rejected(method, overrides, message):
    with pytest.raises(ValueError, match=message):
        resolve_config("hp2", method, **overrides)


def test_classification_metrics_by_hand():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 0, 0, 1, 1, 0, 2, 0])
    result = classification_metrics(predicted, labels, train_counts=[500, 50, 5])
    assert result["top1"] == pytest.approx(100 * 5 / 8)
    assert result["per_class"] == pytest.approx([75.0, 50.0, 50.0])
    assert result["balanced"] == pytest.approx(175 / 3)
    assert (result["many"], result["medium"], result["few"]) == pytest.approx((75.0, 50.0, 50.0))
    assert result["confusion"] == [[3, 1, 0], [1, 1, 0], [1, 0, 1]]


def test_prior_diagnostics_recover_a_log_prior():
    counts = [1000, 300, 100, 30, 10]
    estimate = torch.log(torch.tensor(counts, dtype=torch.float64)) * 0.8 + 2.0
    noisy = estimate.expand(50, 5) + 0.01 * torch.randn(50, 5, dtype=torch.float64)
    result = prior_diagnostics(noisy, counts)
    assert result["pearson"] > 0.999 and result["spearman"] == pytest.approx(1.0)
    assert result["slope"] == pytest.approx(0.8, abs=0.01) and result["intercept"] == pytest.approx(2.0, abs=0.05)
    assert prior_diagnostics(noisy, [7] * 5)["spearman"] is None


def test_npe_predictions_give_npe_la_and_unadjusted_logits(tiny_data):
    data = load_cifar_lt(tiny_data, "cifar10", rho=10)
    model = timm.create_model("resnet20_npe4", num_classes=10).eval()
    with torch.no_grad():
        model.get_classifier().pem_bias.normal_()  # a visible adjustment
    stream = BatchStream(data.test, 32, (0.5,) * 3, (0.25,) * 3, train=False)
    result = predict(model, stream)
    images = torch.cat([x for x, _ in stream])
    with torch.no_grad():
        torch.testing.assert_close(result.logits["npe_la"], model(images))
        torch.testing.assert_close(result.logits["plain"], model.forward_train(images).logits)
    assert not torch.allclose(result.logits["npe_la"], result.logits["plain"])
    merged = timm.utils.reparameterize_model(model)
    merged_metrics = evaluate_model(merged, data, torch.device("cpu"), 32)
    metrics = evaluate_model(model, data, torch.device("cpu"), 32)
    assert metrics["primary"] == "npe_la" and merged_metrics["primary"] == "plain"
    assert set(metrics["sets"]) == {"full", "exact"} and "prior" in metrics["sets"]["full"]
    for name in ("full", "exact"):
        assert merged_metrics["sets"][name]["plain"]["per_class"] == metrics["sets"][name]["npe_la"]["per_class"]
    assert metrics["sets"]["exact"]["npe_la"]["num_images"] == int(data.test.exact.sum())


def test_deterministic_runs_match_and_resume_reproduces_them(tiny_data, tmp_path, interrupt_training):
    config = _config(tiny_data, model="resnet20_npe4", method="npe")
    first = train(config, tmp_path / "a")
    train(config, tmp_path / "b")
    _assert_same_weights(_weights(tmp_path / "a"), _weights(tmp_path / "b"))
    assert first.metrics["sets"]["full"]["prior"]["spearman"] is not None

    interrupt_training(2)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "c")
    checkpoint = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2 and set(checkpoint) >= {"model", "optimizer", "scheduler", "rng", "config"}
    assert not (tmp_path / "c" / "model.safetensors").exists()
    interrupt_training(None)
    resumed = train(config, tmp_path / "c", resume=True)
    _assert_same_weights(_weights(tmp_path / "a"), _weights(tmp_path / "c"))
    assert resumed.metrics["sets"] == first.metrics["sets"]
    log = [json.loads(line) for line in (tmp_path / "c" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    assert [r["lr"] for r in log] == pytest.approx([0.05, 0.05, 0.005])
    assert {"loss_ce", "loss_npe", "images_per_s", "train"} <= set(log[0]) and "test" in log[-1]

    again = train(config, tmp_path / "c", resume=True)
    assert again.already_finished
    with pytest.raises(FileExistsError, match="finished"):
        train(config, tmp_path / "c")
    with pytest.raises(ValueError, match="lr"):
        os.remove(tmp_path / "c" / "metrics.json")
        train(_config(tiny_data, model="resnet20_npe4", method="npe", lr=0.1), tmp_path / "c", resume=True)


def test_amp_run_records_the_fp32_scores_of_its_weights(tiny_data, tmp_path):
    """bf16 autocast trains, but the recorded evaluation is of the fp32 weights as users load them."""
    config = _config(tiny_data, model="resnet20_npe4", method="npe", amp=True, epochs=2, milestones=(1,))
    result = train(config, tmp_path / "run")
    model, _ = load_trained_model(tmp_path / "run")
    scored = evaluate_model(model, load_cifar_lt(str(tiny_data), "cifar10", 10), torch.device("cpu"), 64)
    for name, recorded in result.metrics["sets"].items():  # fp32 scores agree to rounding; bf16 ones by about 1e-2
        assert recorded["prior"]["mean_estimate"] == pytest.approx(scored["sets"][name]["prior"]["mean_estimate"])
        assert {v: recorded[v]["top1"] for v in ("npe_la", "plain")} == {
            v: scored["sets"][name][v]["top1"] for v in ("npe_la", "plain")
        }


def test_compile_needs_what_its_mode_needs_before_any_work(tiny_data, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="reduce-overhead captures CUDA graphs and needs a CUDA device"):
        train(_config(tiny_data, compile="reduce-overhead"), tmp_path / "graphs")
    monkeypatch.setenv("CXX", "no-such-compiler")
    with pytest.raises(ValueError, match="needs a C\\+\\+ compiler"):
        train(_config(tiny_data, compile="default"), tmp_path / "cpu")
    assert not (tmp_path / "graphs").exists() and not (tmp_path / "cpu").exists()


@pytest.mark.slow
def test_compiled_training_step_matches_eager(tiny_data, tmp_path):
    """The engine's compiled step (inductor's CPU code) computes eager's loss and gradients, equal to float64
    rounding; in float32 a compiled run then differs from eager by rounding only, which training amplifies."""
    config = _config(tiny_data, model="resnet20_npe4", method="npe", epochs=1)
    context = DistributedContext(0, 1, 0, torch.device("cpu"))
    configs = (config, dataclasses.replace(config, compile="default"))
    runs = [_Run(c, tmp_path / "unused", context, progress=None) for c in configs]
    assert isinstance(runs[1].forward, torch._dynamo.eval_frame.OptimizedModule)
    images, labels = next(iter(runs[0].stream))
    steps = []
    for run in runs:
        run.model.double().train()
        loss, _ = run.method.loss(run.forward(images.double()), labels)
        loss.backward()
        steps.append([loss.detach(), *(parameter.grad for parameter in run.model.parameters())])
    for eager, compiled in zip(*steps):
        torch.testing.assert_close(compiled, eager, rtol=1e-9, atol=1e-12)

    train(config, tmp_path / "eager")
    train(dataclasses.replace(config, compile="default"), tmp_path / "compiled")
    assert _weights(tmp_path / "compiled").keys() == _weights(tmp_path / "eager").keys()
    losses = [json.loads((tmp_path / run / "log.jsonl").read_text())["loss"] for run in ("eager", "compiled")]
    assert losses[1] == pytest.approx(losses[0], rel=2e-3)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path):
    config = _config(tiny_data, epochs=3, milestones=(1,), gamma=1e30)
    with pytest.raises(NonFiniteLossError, match="epoch 2") as error:
        train(config, tmp_path / "run")
    assert "after epoch 1" in str(error.value)
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_crt_and_posthoc_la_start_from_the_ce_run(tiny_data, tmp_path):
    train(_config(tiny_data, epochs=1), tmp_path / "ce")
    ce = _weights(tmp_path / "ce")
    (tmp_path / "unfinished").mkdir()
    (tmp_path / "unfinished" / "checkpoint.pt").write_bytes((tmp_path / "ce" / "checkpoint.pt").read_bytes())
    with pytest.raises(ValueError, match="has not finished"):
        train(_config(tiny_data, method="crt", init=str(tmp_path / "unfinished")), tmp_path / "crt_early")
    train(_config(tiny_data, method="crt", init=str(tmp_path / "ce"), epochs=1), tmp_path / "crt")
    crt = _weights(tmp_path / "crt")
    for key, value in ce.items():
        if key.startswith("fc."):
            assert not torch.equal(crt[key], value), f"{key}: the classifier is re-trained"
        else:
            assert torch.equal(crt[key], value), f"{key}: the backbone (and its BN statistics) stays frozen"

    result = train(
        _config(tiny_data, method="posthoc_la", init=str(tmp_path / "ce"), tau=1.5, epochs=0), tmp_path / "posthoc"
    )
    counts = torch.tensor(result.metrics["train_counts"], dtype=torch.float32)
    shift = ce["fc.bias"] - _weights(tmp_path / "posthoc")["fc.bias"]
    torch.testing.assert_close(shift, 1.5 * torch.log(counts / counts.sum()))
    assert result.metrics["training"]["epochs"] == 0


def test_la_run_logs_its_loss(tiny_data, tmp_path):
    result = train(_config(tiny_data, method="la", epochs=1), tmp_path / "la")
    log = json.loads((tmp_path / "la" / "log.jsonl").read_text())
    assert "loss_la" in log and math.isfinite(log["loss_la"])
    assert (tmp_path / "la" / "per_class_accuracy_full.png").stat().st_size > 1000
    assert result.metrics["sets"]["full"]["plain"]["num_images"] == 60


def test_checkpoint_for_another_class_count_is_rejected(tiny_data, tmp_path):
    train(_config(tiny_data, epochs=1), tmp_path / "ce")
    with pytest.raises(ValueError, match="has 10 classes but the data set has 100"):
        load_trained_model(tmp_path / "ce" / "checkpoint.pt", num_classes=100)
    model, config = load_trained_model(tmp_path / "ce")
    assert config.model == "resnet20" and model.num_classes == 10 and not model.training


def test_two_process_ddp_on_cpu(tiny_data, tmp_path):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "npe_models.cli",
        "train",
        "--model",
        "resnet20",
        "--method",
        "ce",
        "--data-dir",
        str(tiny_data),
        "--rho",
        "10",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "--eval-every",
        "0",
        "--out",
        str(tmp_path / "ddp"),
        "--no-progress",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    log = json.loads((tmp_path / "ddp" / "log.jsonl").read_text())
    train_images = sum(json.loads((tmp_path / "ddp" / "metrics.json").read_text())["train_counts"])
    assert log["images"] == 2 * math.ceil(train_images / 2)
    assert (tmp_path / "ddp" / "model.safetensors").is_file()
