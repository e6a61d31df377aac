"""Pretrained checkpoints: packaging a finished run, the sha256 check, and every shipped checkpoint.

The packaging tests use a randomly initialised model saved as if it were a finished HP-2 run:
they check the machinery (files, hashes, manifest, Hub folder, both forms), not accuracy. The
tests parametrised over the manifest check the real checkpoints we ship.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import timm
import torch
import torch.hub

from npe_models.classification.checkpoint import METRICS_FILE, save_weights, write_json
from npe_models.classification.config import resolve_config
from npe_models.classification.evaluate import evaluate_model
from npe_models.data.cifar import load_cifar_lt
from npe_models.files import file_sha256
from npe_models.hub import load_from_hub, save_pretrained_for_hub
from npe_models.models import _bundled, parse_npe_name
from npe_models.models._bundled import EXTRA_WEIGHTS_DIR, checkpoint_path, shipped_checkpoints
from npe_models.models.unet import UNet_FCN_Weights
from npe_models.npe import NPEHead
from zoo import (  # release tooling in export/, on the test path
    checkpoint_names,
    is_shipped,
    package_run,
    read_manifest,
    reproduces,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED = list(shipped_checkpoints())
SHIPPED_SLOW_UNLESS_BUNDLED = [
    name if shipped_checkpoints()[name]["bundled"] else pytest.param(name, marks=pytest.mark.slow) for name in SHIPPED
]
"""The checks that score or re-export a checkpoint run on the bundled ones by default and on the rest under
``-m slow``: the default suite stays within its time as the zoo grows, and the packaging scored each one on
the exact images already (the sha256 checks, in the default suite for all, keep the files what was scored)."""
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cifar10_lt(data_dir: Path):
    """CIFAR-10-LT with its test set cut to the 1,000 exact images, which the packaging re-scores: the fake runs'
    final evaluation then costs a fifth of the whole set's (the JPEG twins stay, for the cards' JPEG penalty)."""
    data = load_cifar_lt(data_dir, "cifar10", 100.0)
    return dataclasses.replace(data, test=data.test.subset(data.test.exact))


def _fake_finished_run(run_dir: Path, data_dir: Path, data, method: str = "npe", **overrides) -> torch.nn.Module:
    """A randomly initialised model saved as a finished HP-2 run (weights, config, final metrics); resnet32_npe16 by
    default.
    """
    config = resolve_config("hp2", method, data_dir=str(data_dir), **overrides)
    torch.manual_seed(0)  # module fixtures draw before the per-test seed: the same model whatever ran before
    model = timm.create_model(config.model, num_classes=10)
    if hasattr(model.fc, "pem_weight"):
        with torch.no_grad():
            model.fc.pem_weight.normal_(0, 0.2)
    model.eval()
    run_dir.mkdir(parents=True)
    write_json(run_dir / "config.json", config.to_dict())
    save_weights(run_dir / "model.safetensors", model, config)
    metrics = evaluate_model(model, data, CPU)
    trained = (
        {"seconds": 7200.0, "images_per_s": 200.0, "devices": ["cpu"]}
        if config.epochs
        else {"seconds": 0, "images_per_s": None, "devices": []}
    )
    write_json(run_dir / METRICS_FILE, {**metrics, "training": {"epochs": config.epochs, **trained}})
    return model


@pytest.fixture(scope="module")
def packaged(tmp_path_factory, data_dir: Path, cifar10_lt):
    root = tmp_path_factory.mktemp("zoo")
    model = _fake_finished_run(root / "run", data_dir, cifar10_lt)
    names = package_run(root / "run", weights_dir=root / "weights", hub_dir=root / "hub")
    return root, model, names


def test_package_run_names_both_forms(packaged) -> None:
    _, _, names = packaged
    assert names == ["resnet32_npe16.cifar10_lt_r100_hp2", "resnet32.cifar10_lt_r100_hp2_npe16_merged"]


def test_a_packaged_run_counts_as_shipped_in_its_manifest_only(packaged, tmp_path: Path) -> None:
    root, _, _ = packaged
    assert is_shipped(root / "run", root / "weights")
    assert not is_shipped(root / "run", tmp_path)  # an empty weights folder ships nothing


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            dict(method="npe", model="resnet32_npe16", rho=50.0),
            ("resnet32_npe16.cifar10_lt_r50_hp2", "resnet32.cifar10_lt_r50_hp2_npe16_merged"),
        ),
        (
            dict(method="npe", model="resnet32_npe16", seed=1),
            ("resnet32_npe16.cifar10_lt_r100_hp2_s1", "resnet32.cifar10_lt_r100_hp2_s1_npe16_merged"),
        ),
        (dict(method="la", model="resnet32", seed=2), ("resnet32.cifar10_lt_r100_hp2_la_s2", None)),
    ],
)
def test_checkpoint_names_tell_rho_and_seed_apart(overrides: dict, expected: tuple) -> None:
    """Seed 0 keeps the default tag; other seeds and imbalance ratios never overwrite it."""
    method = overrides.pop("method")
    assert checkpoint_names(resolve_config("hp2", method, **overrides)) == expected


def test_package_posthoc_run_names_the_checkpoint_it_adjusts(tmp_path: Path, data_dir: Path, cifar10_lt) -> None:
    _fake_finished_run(tmp_path / "ce", data_dir, cifar10_lt, "ce", model="resnet32")
    _fake_finished_run(
        tmp_path / "posthoc", data_dir, cifar10_lt, "posthoc_la", model="resnet32", init=str(tmp_path / "ce")
    )
    names = package_run(tmp_path / "posthoc", weights_dir=tmp_path / "weights", hub_dir=tmp_path / "hub")
    assert names == ["resnet32.cifar10_lt_r100_hp2_posthoc_la"]
    card = (tmp_path / "hub" / names[0] / "README.md").read_text()
    assert "No training of its own" in card and "`resnet32.cifar10_lt_r100_hp2` absorbs -1 * log prior" in card
    entry = read_manifest(tmp_path / "weights" / "manifest.json")[names[0]]
    assert "post-hoc logit adjustment" in entry["cfg"]["description"]
    assert entry["starts_from"] == "resnet32.cifar10_lt_r100_hp2"  # recorded, so the card can be regenerated


def test_package_run_keeps_other_seeds_and_ratios_out_of_the_wheel(tmp_path: Path, data_dir: Path, cifar10_lt) -> None:
    _fake_finished_run(tmp_path / "ce_s1", data_dir, cifar10_lt, "ce", model="resnet32", seed=1)
    names = package_run(tmp_path / "ce_s1", weights_dir=tmp_path / "weights", hub_dir=tmp_path / "hub")
    assert names == ["resnet32.cifar10_lt_r100_hp2_s1"]
    entry = read_manifest(tmp_path / "weights" / "manifest.json")[names[0]]
    assert not entry["bundled"] and not (tmp_path / "weights" / entry["file"]).exists()
    assert entry["sha256"] == file_sha256(tmp_path / "weights" / EXTRA_WEIGHTS_DIR.name / entry["file"])
    assert (
        "`npe_models/weights/extra/resnet32.cifar10_lt_r100_hp2_s1.safetensors` in a source checkout"
        in (tmp_path / "hub" / names[0] / "README.md").read_text()
    )


def test_wheel_bundles_the_default_checkpoints_only_and_stays_small() -> None:
    """The package data globs of pyproject.toml take the bundled files and leave ``weights/extra/`` out."""
    import tomllib

    patterns = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "npe_models"
    ]
    in_wheel = {path for pattern in patterns for path in (REPO_ROOT / "npe_models").glob(pattern)}
    for name, entry in shipped_checkpoints().items():
        assert (checkpoint_path(entry) in in_wheel) == entry["bundled"], name
    assert any(not entry["bundled"] for entry in shipped_checkpoints().values())
    assert sum(path.stat().st_size for path in in_wheel) < 40e6


UNBUNDLED = [name for name, entry in shipped_checkpoints().items() if not entry["bundled"]]


@pytest.mark.parametrize("name", UNBUNDLED[:1])
def test_unbundled_checkpoint_comes_from_the_hub_sha256_checked_or_says_how_to_get_it(
    name: str, tmp_path: Path, monkeypatch
) -> None:
    """As installed from the wheel (no ``weights/extra/``): the Hub copy, checked, or an error naming both remedies."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    entry = shipped_checkpoints()[name]
    in_checkout = timm.create_model(name, pretrained=True).eval()
    hub_copy = tmp_path / "hub_cache" / "model.safetensors"
    hub_copy.parent.mkdir()
    shutil.copy(checkpoint_path(entry), hub_copy)
    requested = []

    def fake_download(repo_id: str, filename: str) -> str:
        requested.append((repo_id, filename))
        if not hub_copy.exists():
            raise LocalEntryNotFoundError("offline, and the file is not in the local cache")
        return str(hub_copy)

    monkeypatch.setattr(_bundled, "EXTRA_WEIGHTS_DIR", tmp_path / "absent")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    as_installed = dict(pretrained_cfg_overlay=dict(file=str(tmp_path / "absent" / entry["file"])))  # the cfg's file
    from_hub = timm.create_model(name, pretrained=True, **as_installed).eval()
    assert requested == [(f"npe-models/{name}", "model.safetensors")]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(from_hub(x), in_checkout(x), rtol=0, atol=0)
    _corrupt(hub_copy)
    with pytest.raises(
        RuntimeError, match=f"is corrupted: .* The Hub copy at npe-models/{name} is not the shipped file"
    ):
        timm.create_model(name, pretrained=True, **as_installed)
    hub_copy.unlink()
    with pytest.raises(
        RuntimeError, match=f"'{name}' is not bundled with this installation .* LocalEntryNotFoundError"
    ) as error:
        timm.create_model(name, pretrained=True, **as_installed)
    assert f"python export/package_pretrained.py --hub-only {name} --hub-dir hub/" in str(error.value)


def test_package_run_records_files_hashes_and_metrics(packaged) -> None:
    root, _, names = packaged
    manifest = read_manifest(root / "weights" / "manifest.json")
    assert list(manifest) == sorted(names)  # per architecture, in tag order
    run_metrics = json.loads((root / "run" / METRICS_FILE).read_text())
    for name in names:
        entry = manifest[name]
        assert entry["file"] == f"{name}.safetensors"
        assert entry["sha256"] == file_sha256(root / "weights" / entry["file"])
        assert entry["metrics"]["exact"]["top1"] == run_metrics["sets"]["exact"]["npe_la"]["top1"]
        assert entry["run"]["epochs"] == 120 and entry["run"]["recipe"] == "hp2"
        assert entry["cfg"]["label_names"][0] == "airplane"
        assert entry["bundled"], "rho 100 HP-2 seed 0: a default, bundled in the wheel"
    assert manifest[names[0]]["form"] == "unmerged" and manifest[names[1]]["form"] == "merged"
    assert manifest[names[0]]["metrics"]["unadjusted"]["exact"]["top1"] == run_metrics["sets"]["exact"]["plain"]["top1"]


def test_packaged_forms_load_and_agree(packaged) -> None:
    root, model, names = packaged
    x = torch.randn(4, 3, 32, 32)
    unmerged = timm.create_model(
        "resnet32_npe16",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(root / "weights" / f"{names[0]}.safetensors")),
    )
    merged = timm.create_model(
        "resnet32", pretrained=True, pretrained_cfg_overlay=dict(file=str(root / "weights" / f"{names[1]}.safetensors"))
    )
    assert isinstance(unmerged.fc, NPEHead) and isinstance(merged.fc, torch.nn.Linear)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(unmerged.eval()(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(merged.eval()(x), expected, rtol=1e-5, atol=1e-5)  # random weights: logits ~100


def test_packaged_weights_start_fine_tuning_on_another_class_count(packaged) -> None:
    root, model, names = packaged
    file = str(root / "weights" / f"{names[0]}.safetensors")
    tuned = timm.create_model("resnet32_npe16", pretrained=True, num_classes=7, pretrained_cfg_overlay=dict(file=file))
    assert tuned.fc.weight.shape == (7, 64) and tuned.fc.pem_weight.shape == (16 * 7, 64)
    torch.testing.assert_close(tuned.layer3[-1].conv2.weight, model.layer3[-1].conv2.weight, rtol=0, atol=0)


def test_packaged_hub_folders_load_and_carry_the_metrics(packaged) -> None:
    root, model, names = packaged
    x = torch.randn(2, 3, 32, 32)
    for name in names:
        folder = root / "hub" / name
        assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
        card = (folder / "README.md").read_text()
        assert f"npe-models/{name}" in card and "exact 1,000" in card and "JPEG penalty" in card
        cfg = json.loads((folder / "config.json").read_text())["pretrained_cfg"]
        entry = read_manifest(root / "weights" / "manifest.json")[name]
        assert cfg["tag"] == name.split(".", 1)[1] and cfg["description"] == entry["cfg"]["description"]
        with torch.no_grad():
            torch.testing.assert_close(load_from_hub(f"local-dir:{folder}").eval()(x), model(x), rtol=1e-5, atol=1e-5)


def test_package_run_refuses_shortened_and_unfinished_runs(tmp_path: Path, data_dir: Path, cifar10_lt) -> None:
    _fake_finished_run(tmp_path / "short", data_dir, cifar10_lt, epochs=10)
    with pytest.raises(ValueError, match="departs from recipe hp2 \\(epochs 10 instead of 120\\)"):
        package_run(tmp_path / "short", weights_dir=tmp_path / "w", hub_dir=tmp_path / "hub")
    (tmp_path / "unfinished").mkdir()
    shutil.copy(tmp_path / "short" / "config.json", tmp_path / "unfinished")
    with pytest.raises(ValueError, match="not a finished run"):
        package_run(tmp_path / "unfinished", weights_dir=tmp_path / "w", hub_dir=tmp_path / "hub")
    assert not (tmp_path / "w").exists()


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupted_bundled_weights_fail_their_sha256_check(tmp_path: Path, monkeypatch) -> None:
    weights = tmp_path / "resnet32_npe16.cifar10_lt_r100_hp2.safetensors"
    save_weights(weights, timm.create_model("resnet32_npe16"))
    entry = {"file": weights.name, "bundled": True, "sha256": file_sha256(weights)}
    monkeypatch.setattr(_bundled, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(_bundled, "shipped_checkpoints", lambda: {"resnet32_npe16.cifar10_lt_r100_hp2": entry})
    overlay = dict(file=str(weights))
    timm.create_model("resnet32_npe16", pretrained=True, pretrained_cfg_overlay=overlay)  # intact: loads
    _corrupt(weights)
    with pytest.raises(RuntimeError, match="is corrupted: .* has sha256 .* expected .*reinstall npe-models"):
        timm.create_model("resnet32_npe16", pretrained=True, pretrained_cfg_overlay=overlay)
    weights.unlink()
    with pytest.raises(FileNotFoundError, match="weights of 'resnet32_npe16.cifar10_lt_r100_hp2' are missing"):
        timm.create_model("resnet32_npe16", pretrained=True, pretrained_cfg_overlay=overlay)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_fails_its_sha256_check_when_corrupted(name: str, tmp_path: Path, monkeypatch) -> None:
    entry = shipped_checkpoints()[name]
    copy = tmp_path / entry["file"]
    shutil.copy(checkpoint_path(entry), copy)
    _corrupt(copy)
    monkeypatch.setattr(_bundled, "WEIGHTS_DIR" if entry["bundled"] else "EXTRA_WEIGHTS_DIR", tmp_path)
    with pytest.raises(RuntimeError, match=f"the weights file of '{name}' is corrupted"):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(copy)))


def test_reproduces_allows_one_exact_image_and_no_more() -> None:
    assert reproduces(82.0, 81.9) and reproduces(81.9, 82.0) and reproduces(80.9, 80.9)
    assert not reproduces(82.1, 81.9)


@pytest.mark.parametrize("name", SHIPPED_SLOW_UNLESS_BUNDLED)
def test_shipped_checkpoint_reproduces_its_recorded_accuracy(name: str, data_dir: Path) -> None:
    entry = shipped_checkpoints()[name]
    model = timm.create_model(name, pretrained=True).eval()
    data = load_cifar_lt(data_dir, entry["run"]["dataset"], entry["run"]["rho"])
    scored = evaluate_model(model, data, CPU, sets=["exact"])
    top1 = scored["sets"]["exact"][scored["primary"]]["top1"]
    assert reproduces(top1, entry["metrics"]["exact"]["top1"])


@pytest.mark.parametrize("name", SHIPPED_SLOW_UNLESS_BUNDLED)
def test_shipped_checkpoint_loads_through_torch_hub_and_its_hub_folder(name: str, tmp_path: Path) -> None:
    arch, tag = name.split(".", 1)
    reference = timm.create_model(name, pretrained=True).eval()
    from_hub = torch.hub.load(str(REPO_ROOT), arch, source="local", pretrained=True, pretrained_cfg=tag).eval()
    from_folder = load_from_hub(f"local-dir:{save_pretrained_for_hub(name, tmp_path / name)}").eval()
    loaded = [from_hub, from_folder]
    if timm.models.get_pretrained_cfg(arch).file == timm.models.get_pretrained_cfg(name).file:  # the default tag
        loaded.append(torch.hub.load(str(REPO_ROOT), arch, source="local", pretrained=True).eval())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x)
        for model in loaded:
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", SHIPPED_SLOW_UNLESS_BUNDLED)
def test_shipped_checkpoint_hub_folder_is_generated_with_its_card(name: str, tmp_path: Path) -> None:
    entry = shipped_checkpoints()[name]
    folder = save_pretrained_for_hub(name, tmp_path / "hub" / name)
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "README.md"}
    card = (folder / "README.md").read_text()
    assert f"hf-hub:npe-models/{name}" in card and "exact 1,000" in card and "JPEG penalty" in card
    assert f"| Top-1 accuracy | {round(entry['metrics']['full']['top1'], 2):g} |" in card
    folder_in_checkout = "npe_models/weights" if entry["bundled"] else "npe_models/weights/extra"
    assert f"`{folder_in_checkout}/{name}.safetensors`" in card and f"| recipe | {entry['run']['recipe']} |" in card
    cfg = json.loads((folder / "config.json").read_text())["pretrained_cfg"]
    assert cfg["tag"] == name.split(".", 1)[1] and cfg["description"] == entry["cfg"]["description"]
    assert "file" not in cfg and "hf_hub_id" not in cfg, "the folder must not point back at this machine"
    npe = json.loads((folder / "config.json").read_text())["npe"]
    if entry["form"] == "merged":  # a plain <base> that still says which NPE model it was folded from
        assert npe["merged"] and npe["npe_architecture"] == entry["run"]["model"] and "were folded into" in card
    else:
        assert not npe["merged"] and npe["num_pems"] == parse_npe_name(entry["run"]["model"])[1]
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_pretrained_for_hub(name, folder)
    assert sorted(p.name for p in (tmp_path / "hub").iterdir()) == [name], "no staging leftovers"


def test_only_shipped_checkpoints_have_generated_hub_folders(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'resnet32_npe16' is not a checkpoint shipped with npe-models"):
        save_pretrained_for_hub("resnet32_npe16", tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_is_intact_and_packaged(name: str) -> None:
    entry = shipped_checkpoints()[name]
    assert file_sha256(checkpoint_path(entry)) == entry["sha256"]
    assert timm.models.get_pretrained_cfg(name).hf_hub_id == f"npe-models/{name}"
    assert name in timm.list_pretrained(name.split(".", 1)[0] + ".*")


def test_cli_lists_every_shipped_checkpoint(capsys) -> None:
    from npe_models.cli import main

    assert main(["list", "--pretrained"]) == 0
    out = capsys.readouterr().out
    trained = out.split("Base architectures")[0]
    assert trained.startswith("Checkpoints trained by npe-models")
    if not SHIPPED:
        assert "none yet." in trained
    for name in SHIPPED:
        entry = shipped_checkpoints()[name]
        mark = "" if entry["bundled"] else "[not bundled: source checkout or Hub] "
        assert name in trained and f"{mark}{entry['cfg']['description']}" in trained
    assert "resnet50_npe16.a1_in1k" in out.split("Base architectures")[1]
    segmentation = out.split("Segmentation weights trained by npe-models")[1]
    assert "unet_fcn weights=STARE " in segmentation and "unet_fcn_npe1 weights=STARE_NPE1_FCN" in segmentation
    recorded = UNet_FCN_Weights.STARE.meta["_metrics"]["STARE-val-ah"]["0"]["mean_dice"]
    assert f"mDice {100 * recorded:.2f} on the 'ah' validation masks" in segmentation  # the weights' recorded metrics


@pytest.mark.parametrize("name", SHIPPED[:1])
def test_cli_evaluates_a_shipped_checkpoint_by_name(name: str, data_dir: Path, tmp_path: Path, capsys) -> None:
    from npe_models.cli import main

    argv = ["evaluate", name, "--pretrained", "--sets", "exact", "--data-dir", str(data_dir), "--out", str(tmp_path)]
    assert main(argv) == 0
    scored = json.loads((tmp_path / "metrics.json").read_text())
    top1 = scored["sets"]["exact"][scored["primary"]]["top1"]
    assert reproduces(top1, shipped_checkpoints()[name]["metrics"]["exact"]["top1"])
