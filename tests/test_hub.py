"""Hugging Face Hub folders: save, load back through timm (local-dir: and an offline hf-hub: cache), upload, bad
input."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import safetensors.torch
import timm
import torch
from huggingface_hub import ModelCard
from onnx_validate import random_model_for_parity  # export/, on the test path
from timm.utils import reparameterize_model

from npe_models.files import WEIGHTS_FILE
from npe_models.hub import CONFIG_NAME, HUB_FILES, load_from_hub, push_to_hub, save_for_hub
from npe_models.models.segmentation import PEMNotMergedWarning
from npe_models.npe import NPEHead
from npe_models.segmentation.config import SegmentationModelConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
METRICS = {"top1": 80.12, "many": 91.5, "medium": 78.25, "few": 70.0}


def _npe_model(alpha: float = 1.0) -> torch.nn.Module:
    model, _ = random_model_for_parity("resnet20_npe4", seed=3, npe_alpha=alpha)
    return model


def _images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(_images())


def test_unmerged_round_trip_through_timm_local_dir(tmp_path: Path) -> None:
    model = _npe_model()
    model.fc.alpha = 0.3  # changed after construction: the saved config must follow the head, not the builder args
    folder = save_for_hub(model, tmp_path / "resnet20_npe4", label_names=CIFAR10_CLASSES)
    assert sorted(os.listdir(folder)) == sorted(HUB_FILES)
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["architecture"] == "resnet20_npe4"
    assert config["num_classes"] == 10 and config["label_names"] == CIFAR10_CLASSES
    assert config["model_args"]["npe_alpha"] == 0.3
    assert config["pretrained_cfg"]["mean"] == list(model.pretrained_cfg["mean"])
    assert config["pretrained_cfg"]["input_size"] == [3, 32, 32]
    assert config["npe"] == {**config["npe"], "num_pems": 4, "merged": False, "alpha": 0.3, "t": 1}

    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert isinstance(loaded.fc, NPEHead) and loaded.fc.alpha == 0.3
    # the saved PEMs load (fill_missing_pem_params only fills absent keys; loading is strict)
    assert torch.equal(loaded.fc.pem_weight, model.fc.pem_weight)
    assert torch.equal(_outputs(loaded), _outputs(model))
    assert loaded.pretrained_cfg["label_names"] == CIFAR10_CLASSES
    assert torch.equal(_outputs(load_from_hub(folder)), _outputs(model))


def test_merged_model_saves_under_its_base_architecture(tmp_path: Path) -> None:
    model = _npe_model(alpha=0.5)
    merged = reparameterize_model(model)
    folder = save_for_hub(merged, tmp_path / "deploy")
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["architecture"] == "resnet20"
    assert not any(key.startswith("npe_") for key in config["model_args"])
    assert config["npe"] == {
        **config["npe"],
        "num_pems": 4,
        "merged": True,
        "alpha": 0.5,
        "npe_architecture": "resnet20_npe4",
    }
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert type(loaded.fc) is torch.nn.Linear
    assert torch.allclose(_outputs(loaded), _outputs(model), atol=1e-5)
    plain = timm.create_model("resnet20")
    plain.load_state_dict(safetensors.torch.load_file(str(folder / WEIGHTS_FILE)), strict=True)


def test_model_card(tmp_path: Path) -> None:
    recipe = {"method": "npe", "recipe": "hp2", "epochs": 120, "lr": 0.05}
    folder = save_for_hub(
        _npe_model(),
        tmp_path / "card",
        metrics=METRICS,
        dataset="CIFAR-10-LT test set",
        dataset_id="cifar10",
        recipe=recipe,
        repo_id="npe-models/resnet20_npe4.cifar10_lt",
    )
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "timm" and card.data.license == "apache-2.0"
    results = {(r.metric_config, r.metric_value) for r in card.data.eval_results}
    assert results == {(None, 80.12), ("many", 91.5), ("medium", 78.25), ("few", 70.0)}
    assert all(r.dataset_type == "cifar10" and r.dataset_split == "test" for r in card.data.eval_results)
    text = card.text
    assert 'timm.create_model("hf-hub:npe-models/resnet20_npe4.cifar10_lt", pretrained=True)' in text
    assert "| epochs | 120 |" in text and "| lr | 0.05 |" in text
    assert "Yavari" in text and "Neural Prior Estimation" in text and "2026" in text


def _populate_hf_cache(hf_home: Path, repo_id: str, folder: Path) -> None:
    """The layout huggingface_hub keeps: blobs named by hash, snapshot links, refs/main -> commit."""
    repo_dir = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(commit)
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "blobs").mkdir()
    for name in os.listdir(folder):
        data = (folder / name).read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))


def test_offline_hf_hub_cache_round_trip(tmp_path: Path) -> None:
    """Classifier through timm's hf-hub:, load_from_hub and load_model, segmentation through load_from_hub, offline."""
    model, segmenter = _npe_model(), _segmentation_model()
    hf_home = tmp_path / "hf_home"
    repos = {"npe-models/resnet20_npe4-test": model, "npe-models/unet_fcn_npe1-test": segmenter}
    for repo_id, saved in repos.items():
        _populate_hf_cache(hf_home, repo_id, save_for_hub(saved, tmp_path / repo_id, repo_id=repo_id))
    safetensors.torch.save_file({"x": _images(), "y": torch.randn(2, 3, 40, 56)}, str(tmp_path / "x.safetensors"))
    script = f"""
import safetensors.torch, timm, torch
import npe_models
from npe_models.hub import load_from_hub
from npe_models.loading import load_model
x = safetensors.torch.load_file({str(tmp_path / "x.safetensors")!r})
with torch.no_grad():
    a = timm.create_model("hf-hub:npe-models/resnet20_npe4-test", pretrained=True).eval()(x["x"])
    b = load_from_hub("hf-hub:npe-models/resnet20_npe4-test").eval()(x["x"])
    c = load_from_hub("hf-hub:npe-models/unet_fcn_npe1-test").eval()(x["y"])["out"]
    loaded = load_model("hf-hub:npe-models/resnet20_npe4-test")
    assert loaded.task == "classification" and loaded.source == "hf-hub:npe-models/resnet20_npe4-test"
    d = loaded.model(x["x"])
outputs = {{"timm": a, "loader": b, "segmentation": c, "load_model": d}}
safetensors.torch.save_file(outputs, {str(tmp_path / "out.safetensors")!r})
"""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = safetensors.torch.load_file(str(tmp_path / "out.safetensors"))
    expected = _outputs(model)
    assert torch.equal(out["timm"], expected) and torch.equal(out["loader"], expected)
    assert torch.equal(out["load_model"], expected)
    x = safetensors.torch.load_file(str(tmp_path / "x.safetensors"))["y"]
    with torch.no_grad():
        assert torch.equal(out["segmentation"], segmenter.eval()(x)["out"])


def test_push_to_hub_uploads_exactly_the_folder(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake_create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def fake_upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        card = (folder / "README.md").read_text()
        config = json.loads((folder / CONFIG_NAME).read_text())
        calls.append(("upload_folder", repo_id, files, kwargs, card, config))
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/abc",
            commit_message=kwargs["commit_message"],
            commit_description="",
            oid="abc",
        )

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake_upload_folder)
    commit = push_to_hub(
        _npe_model(),
        "npe-models/resnet20_npe4",
        private=True,
        metrics=METRICS,
        dataset="CIFAR-10-LT",
        dataset_id="cifar10",
    )
    assert commit.commit_url.endswith("/commit/abc")
    (create, upload) = calls
    assert create[:2] == ("create_repo", "npe-models/resnet20_npe4")
    assert create[2]["exist_ok"] is True and create[2]["private"] is True
    _, repo_id, files, kwargs, card, config = upload
    assert repo_id == "npe-models/resnet20_npe4"
    assert files == sorted(HUB_FILES)
    assert kwargs["repo_type"] == "model"
    assert 'hf-hub:npe-models/resnet20_npe4"' in card
    assert config["architecture"] == "resnet20_npe4"


def test_save_errors_leave_nothing_half_written(tmp_path: Path, monkeypatch) -> None:
    model = _npe_model()
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match="in the way"):
        save_for_hub(model, blocker / "model")
    with pytest.raises(ValueError, match="dataset"):
        save_for_hub(model, tmp_path / "m", metrics=METRICS)
    with pytest.raises(ValueError, match="label_names"):
        save_for_hub(model, tmp_path / "m", label_names=["a", "b"])

    def failing_save(self, path):
        raise OSError("disk full")

    monkeypatch.setattr(ModelCard, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_for_hub(model, tmp_path / "m")
    assert sorted(os.listdir(tmp_path)) == ["file.txt"], "no folder, no staging leftovers"


def test_existing_folder_needs_overwrite(tmp_path: Path) -> None:
    """A folder of someone else's files is refused even with overwrite; an earlier Hub folder needs overwrite, which
    replaces its files and nothing else."""
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="holds no Hugging Face Hub folder of npe-models"):
        save_for_hub(_npe_model(), target, overwrite=True)
    assert os.listdir(target) == ["old.txt"]
    folder = save_for_hub(_npe_model(), tmp_path / "hub")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"pass --overwrite \(overwrite=True\)"):
        save_for_hub(_npe_model(), folder)
    save_for_hub(_npe_model(), folder, overwrite=True)
    assert sorted(os.listdir(folder)) == sorted([*HUB_FILES, "notes.txt"])
    assert sorted(os.listdir(tmp_path)) == ["hub", "model"]


def test_unregistered_add_npe_model_must_be_merged(tmp_path: Path) -> None:
    from npe_models import add_npe

    model = add_npe(timm.create_model("resnet10t", num_classes=5), num_pems=2)
    with pytest.raises(ValueError, match="reparameterize_model"):
        save_for_hub(model, tmp_path / "x")
    folder = save_for_hub(reparameterize_model(model), tmp_path / "x")
    assert json.loads((folder / CONFIG_NAME).read_text())["architecture"] == "resnet10t"


def test_loading_bad_folders_fails_clearly(tmp_path: Path) -> None:
    folder = save_for_hub(_npe_model(), tmp_path / "good")

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    config = json.loads((folder / CONFIG_NAME).read_text())
    (unknown / CONFIG_NAME).write_text(json.dumps({**config, "architecture": "resnet21_npe4"}))
    (unknown / WEIGHTS_FILE).write_bytes((folder / WEIGHTS_FILE).read_bytes())
    with pytest.raises(ValueError, match="'resnet21_npe4', which is not registered"):
        load_from_hub(unknown)
    with pytest.raises(RuntimeError, match="resnet21_npe4"):
        timm.create_model(f"local-dir:{unknown}", pretrained=True)

    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    (mismatched / CONFIG_NAME).write_text((folder / CONFIG_NAME).read_text())
    safetensors.torch.save_file(timm.create_model("resnet32_npe4").state_dict(), str(mismatched / WEIGHTS_FILE))
    with pytest.raises(ValueError, match=r"do not fit 'resnet20_npe4'.*unexpected layer1\.3"):
        load_from_hub(mismatched)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        timm.create_model(f"local-dir:{mismatched}", pretrained=True)

    with pytest.raises(FileNotFoundError, match="config.json"):
        load_from_hub(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_from_hub(tmp_path / "missing")


def test_export_hub_command(tmp_path: Path, capsys) -> None:
    from npe_models.cli import main

    model = _npe_model()
    weights = tmp_path / "weights.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(weights))
    labels = tmp_path / "classes.json"
    labels.write_text(json.dumps({"classes": CIFAR10_CLASSES}))
    assert (
        main(
            [
                "export",
                "hub",
                "resnet20_npe4",
                "--weights",
                str(weights),
                "--merge",
                "-o",
                str(tmp_path / "out"),
                "--label-names",
                str(labels),
                "--metric",
                "top1=80.5",
                "--metric",
                "few=61",
                "--dataset",
                "CIFAR-10",
                "--dataset-id",
                "cifar10",
                "--recipe",
                "epochs=200",
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    config = json.loads((tmp_path / "out" / CONFIG_NAME).read_text())
    assert config["architecture"] == "resnet20" and config["label_names"] == CIFAR10_CLASSES
    loaded = timm.create_model(f"local-dir:{tmp_path / 'out'}", pretrained=True)
    assert torch.allclose(_outputs(loaded), _outputs(model), atol=1e-5)
    assert {r.metric_config for r in ModelCard.load(tmp_path / "out" / "README.md").data.eval_results} == {None, "few"}

    assert main(["export", "hub", "resnet20_npe4", "-o", str(tmp_path / "out")]) == 1
    assert "overwrite" in capsys.readouterr().err
    assert main(["export", "hub", "resnet20_npe4", "--push"]) == 1
    assert "--repo-id" in capsys.readouterr().err


def test_export_hub_command_for_a_shipped_checkpoint_writes_its_card(tmp_path: Path, capsys) -> None:
    """`npe-models export hub <tag> --pretrained` regenerates the Hub folder the packaging wrote (zoo/hub is not in
    git)."""
    from npe_models.cli import main
    from npe_models.hub import save_pretrained_for_hub

    name = "resnet32_npe16.cifar10_lt_r100_hp2"
    assert main(["export", "hub", name, "--pretrained", "-o", str(tmp_path / "cli")]) == 0
    library = save_pretrained_for_hub(name, tmp_path / "library")
    for file in HUB_FILES:
        assert (tmp_path / "cli" / file).read_bytes() == (library / file).read_bytes(), file
    card = (library / "README.md").read_text()
    assert f"hf-hub:npe-models/{name}" in card and "## Results by test set" in card and "| recipe | hp2 |" in card
    assert (
        main(
            [
                "export",
                "hub",
                name,
                "--pretrained",
                "--metric",
                "top1=1",
                "--dataset",
                "x",
                "--dataset-id",
                "y",
                "-o",
                str(tmp_path / "given"),
            ]
        )
        == 0
    )
    assert "| Top-1 accuracy | 1 |" in (tmp_path / "given" / "README.md").read_text(), "given options win"


def _segmentation_model(pem_type: str = "linear", **kwargs) -> torch.nn.Module:
    model, _ = random_model_for_parity(
        "unet_fcn_npe1", num_classes=2, pem_type=pem_type, base_channels=8, seed=4, **kwargs
    )
    return model


def _segmentation_outputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return dict(model.eval()(torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(5))))


def test_segmentation_round_trip_unmerged_and_merged(tmp_path: Path) -> None:
    model = _segmentation_model(aux_loss=True)
    settings = SegmentationModelConfig(
        name="unet_fcn_npe1",
        num_classes=2,
        num_pems=1,
        aux_loss=True,
        model_kwargs={"base_channels": 8},
        class_names=["background", "vessel"],
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    folder = save_for_hub(
        model, tmp_path / "unet", config=settings, metrics={"mdice": 80.5}, dataset="STARE", dataset_id="stare"
    )
    assert sorted(os.listdir(folder)) == sorted(HUB_FILES)
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["architecture"] == "unet_fcn_npe1" and config["label_names"] == ["background", "vessel"]
    assert config["segmentation_model"]["mean"] == [0.5, 0.5, 0.5] and config["npe"]["merged"] is False
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "image-segmentation" and 'load_from_hub("local-dir:' in card.text
    loaded = load_from_hub(folder)
    assert type(loaded) is type(model)
    expected = _segmentation_outputs(model)
    assert all(torch.equal(a, b) for a, b in zip(_segmentation_outputs(loaded).values(), expected.values()))
    # the weights file is also a segmentation checkpoint that `npe-models evaluate` reads
    from npe_models.segmentation.checkpoint import load_segmentation_model

    assert load_segmentation_model(folder / WEIGHTS_FILE)[1].class_names == ["background", "vessel"]

    merged = save_for_hub(reparameterize_model(model), tmp_path / "merged")  # settings inferred from the model
    config = json.loads((merged / CONFIG_NAME).read_text())
    assert config["architecture"] == "unet_fcn" and config["segmentation_model"]["num_pems"] is None
    assert config["segmentation_model"]["model_kwargs"] == {"base_channels": 8, "num_stages": 5}
    assert config["npe"] == {**config["npe"], "merged": True, "num_pems": 1, "npe_architecture": "unet_fcn_npe1"}
    plain = load_from_hub(merged)
    assert not any(isinstance(m, NPEHead) for m in plain.modules())
    assert all(
        torch.allclose(a, b, atol=1e-5) for a, b in zip(_segmentation_outputs(plain).values(), expected.values())
    )


def test_segmentation_with_unmergeable_pems_keeps_its_npe_name(tmp_path: Path) -> None:
    model = _segmentation_model(pem_type="replica")
    with pytest.warns(PEMNotMergedWarning):
        deployed = reparameterize_model(model)
    folder = save_for_hub(deployed, tmp_path / "replica")
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["architecture"] == "unet_fcn_npe1" and config["segmentation_model"]["pem_type"] == "replica"
    loaded = load_from_hub(folder)
    assert all(
        torch.equal(a, b) for a, b in zip(_segmentation_outputs(loaded).values(), _segmentation_outputs(model).values())
    )


def test_segmentation_errors(tmp_path: Path) -> None:
    model = _segmentation_model()
    model.classifier[0] = torch.nn.Conv2d(8, 8, 5, padding=2, bias=False)  # no registered architecture looks like this
    with pytest.raises(ValueError, match="pass config="):
        save_for_hub(model, tmp_path / "x")
    folder = save_for_hub(_segmentation_model(), tmp_path / "good")
    config = json.loads((folder / CONFIG_NAME).read_text())
    config["segmentation_model"]["model_kwargs"] = {"base_channels": 16}
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not fit 'unet_fcn_npe1'"):
        load_from_hub(folder)
    config["segmentation_model"]["name"] = "segformer_npe1"
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown segmentation model 'segformer_npe1'"):
        load_from_hub(folder)
    assert sorted(os.listdir(tmp_path)) == ["good"]


def test_export_hub_command_from_training_runs(tmp_path: Path, capsys) -> None:
    """`npe-models export hub RUN_DIR` for a classification and a segmentation run: weights, settings and recipe."""
    from npe_models.classification.checkpoint import save_weights
    from npe_models.classification.config import TrainConfig
    from npe_models.cli import main
    from npe_models.segmentation.checkpoint import save_segmentation_weights

    classifier = _npe_model()
    train_config = TrainConfig(model="resnet20_npe4", method="npe", recipe="hp2", epochs=120)
    run = tmp_path / "cls_run"
    run.mkdir()
    (run / CONFIG_NAME).write_text(json.dumps(train_config.to_dict()))
    save_weights(run / WEIGHTS_FILE, classifier, train_config)

    segmenter = _segmentation_model()
    settings = SegmentationModelConfig(
        name="unet_fcn_npe1", num_classes=2, model_kwargs={"base_channels": 8}, class_names=["background", "vessel"]
    )
    seg_run = tmp_path / "seg_run"
    seg_run.mkdir()
    (seg_run / CONFIG_NAME).write_text(
        json.dumps({"model": settings.to_dict(), "train": {"iterations": 600, "lr": 0.01}})
    )
    save_segmentation_weights(seg_run / WEIGHTS_FILE, segmenter, settings)

    assert main(["export", "hub", str(run), "-o", str(tmp_path / "cls_hub")]) == 0
    assert main(["export", "hub", str(seg_run), "--merge", "-o", str(tmp_path / "seg_hub")]) == 0
    card = (tmp_path / "cls_hub" / "README.md").read_text()
    assert "| method | npe |" in card and "| epochs | 120 |" in card and "data_dir" not in card
    assert torch.equal(_outputs(load_from_hub(tmp_path / "cls_hub")), _outputs(classifier))
    seg_config = json.loads((tmp_path / "seg_hub" / CONFIG_NAME).read_text())
    assert seg_config["architecture"] == "unet_fcn" and seg_config["label_names"] == ["background", "vessel"]
    assert "| iterations | 600 |" in (tmp_path / "seg_hub" / "README.md").read_text()
    loaded = load_from_hub(tmp_path / "seg_hub")
    assert all(
        torch.allclose(a, b, atol=1e-5)
        for a, b in zip(_segmentation_outputs(loaded).values(), _segmentation_outputs(segmenter).values())
    )
    assert main(["export", "hub", str(run), "--weights", "x.safetensors", "-o", str(tmp_path / "x")]) == 1
    assert "apply to registered names" in capsys.readouterr().err
