"""ONNX export of every registered model, checked against ONNX Runtime, plus metadata, quantisation and bad input."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import safetensors.torch
import timm
import torch
from onnx_validate import (  # release tooling in export/, on the test path (pyproject's pythonpath)
    classification_accuracy,
    onnx_predictor,
    quantize_int8,
    random_model_for_parity,
    randomize_pems,
    torch_predictor,
)

import npe_models
from npe_models.models.segmentation import PEMNotMergedWarning, list_segmentation_models
from npe_models.npe import NPEHead
from npe_models.onnx import MIN_OPSET, check_parity, export_onnx, onnx_session, read_onnx_metadata

CLASSIFIERS = npe_models.list_classifiers()
# ImageNet architectures are checked at 128x128 (ViT rebuilt for it): small, but at 64x64 their last
# feature maps are 2x2 and BatchNorm calibration on so few values inflates the outputs past fp32 parity.
IMAGENET = {
    "resnet18_npe16",
    "resnet50_npe16",
    "resnet152_npe16",
    "convnext_tiny_npe16",
    "efficientnet_b0_npe16",
    "vit_small_patch16_224_npe16",
}
# Exports take 4-40 s each on 2 cores: the ResNet-20 family stays in the default suite, the rest is slow.
SLOW = {name for name in CLASSIFIERS if not name.startswith("resnet20")}
NPE_MODEL = "resnet20_npe16"
TAG = "cifar10_lt_r100_hp2"  # the pretrained tag the shared export records
LABELS = [f"class{i}" for i in range(10)]


def _realistic_model(name: str, **kwargs) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    """Random weights with PEMs at a realistic scale and calibrated BatchNorm, so outputs are O(1-10)."""
    return random_model_for_parity(name, image_size=128 if name in IMAGENET else None, seed=1, **kwargs)


@pytest.fixture(scope="module")
def npe_export(tmp_path_factory) -> tuple[torch.nn.Module, Path, Path]:
    """A realistic resnet20_npe16 (alpha 0.5, tagged TAG) and its merged and unmerged exports, shared by the tests
    below.
    """
    folder = tmp_path_factory.mktemp("npe_export")
    model, _ = _realistic_model(NPE_MODEL, npe_alpha=0.5, pretrained_cfg_overlay=dict(tag=TAG))
    merged = export_onnx(model, folder / "merged" / "model.onnx", label_names=LABELS)
    unmerged = export_onnx(model, folder / "unmerged.onnx", merge=False)
    return model, merged, unmerged


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CLASSIFIERS])
def test_parity_every_classifier(name: str, tmp_path: Path) -> None:
    model, size = _realistic_model(name)
    path = export_onnx(model, tmp_path / f"{name}.onnx", input_size=size)
    result = check_parity(model, path, batch_sizes=(1, 3))
    assert set(result.max_abs_diff) == {(1, *size[1:]), (3, *size[1:])}
    assert result.passed, result
    assert min(result.max_abs_output.values()) > 0.5, "outputs too small for the comparison to mean anything"


SEGMENTATION = list_segmentation_models()
SEGMENTATION_SIZES = [(64, 64), (48, 80)]  # a second, non-square size exercises the dynamic height and width


# Segmentation exports take 30-90 s each: the default suite checks the paper's UNet-FCN in
# test_segmentation_graph_metadata_and_parity; the registered models' sweep is slow.
@pytest.mark.slow
@pytest.mark.parametrize("name", SEGMENTATION)
def test_parity_every_segmentation_model(name: str, tmp_path: Path) -> None:
    model, size = random_model_for_parity(name, num_classes=3, seed=1)
    path = export_onnx(model, tmp_path / f"{name}.onnx", input_size=size)
    result = check_parity(model, path, batch_sizes=(1, 3), image_sizes=SEGMENTATION_SIZES)
    assert set(result.max_abs_diff) == {(b, h, w) for b in (1, 3) for h, w in SEGMENTATION_SIZES}
    assert result.passed, result
    assert min(result.max_abs_output.values()) > 0.5, "outputs too small for the comparison to mean anything"
    assert not any("pem" in i.name for i in onnx.load(str(path)).graph.initializer), "linear PEMs must be merged"


def test_segmentation_graph_metadata_and_parity(tmp_path: Path) -> None:
    model, _ = random_model_for_parity("unet_fcn_npe16", num_classes=2, aux_loss=True, base_channels=8, seed=2)
    path = export_onnx(model, tmp_path / "unet.onnx", input_size=(3, 64, 64), label_names=["background", "vessel"])
    proto = onnx.load(str(path))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert [o.name for o in proto.graph.output] == ["out", "aux"]
    metadata = read_onnx_metadata(path)
    assert metadata == {
        **metadata,
        "task": "semantic-segmentation",
        "architecture": "unet_fcn",
        "npe_architecture": "unet_fcn_npe16",
        "merged": True,
        "dynamic_size": True,
        "alpha": 0.1,
        "class_names": ["background", "vessel"],
        "mean": [0.485, 0.456, 0.406],
        "num_classes": 2,
    }
    assert not any("pem" in i.name for i in proto.graph.initializer), "linear PEMs must be merged"
    sizes = [*SEGMENTATION_SIZES, (33, 47)]  # odd sizes too
    result = check_parity(model, path, batch_sizes=(1, 3), image_sizes=sizes)
    assert set(result.max_abs_diff) == {(b, h, w) for b in (1, 3) for h, w in sizes}
    assert result.passed, result
    assert min(result.max_abs_output.values()) > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("pem_type", ["fcn", "replica"])
@pytest.mark.parametrize("arch", sorted({name.rsplit("_npe", 1)[0] for name in SEGMENTATION}))
def test_unmergeable_pems_export_the_full_npe_la_graph(arch: str, pem_type: str, tmp_path: Path) -> None:
    model, size = random_model_for_parity(f"{arch}_npe1", num_classes=3, pem_type=pem_type, seed=1)
    with pytest.warns(PEMNotMergedWarning):
        path = export_onnx(model, tmp_path / "model.onnx", input_size=size)
    assert any(i.name.startswith("pems.") for i in onnx.load(str(path)).graph.initializer)
    assert read_onnx_metadata(path)["merged"] is False
    result = check_parity(model, path, batch_sizes=(1, 3), image_sizes=SEGMENTATION_SIZES)
    assert result.passed, result


def test_merged_and_unmerged_graphs(npe_export) -> None:
    model, merged, unmerged = npe_export
    merged_inits = {i.name: list(i.dims) for i in onnx.load(str(merged)).graph.initializer}
    unmerged_inits = {i.name: list(i.dims) for i in onnx.load(str(unmerged)).graph.initializer}
    assert not any("pem" in name for name in merged_inits), "merged export still carries PEM weights"
    assert unmerged_inits["fc.pem_weight"] == [16 * 10, 64]
    for path in (merged, unmerged):
        result = check_parity(model, path)
        assert result.passed, result
    # at this PEM scale NPE-LA changes the logits: the main classifier alone is far from the export
    x = torch.ones(1, 3, 32, 32)
    z = torch.nn.functional.linear(
        model.forward_head(model.forward_features(x), pre_logits=True), model.fc.weight, model.fc.bias
    )
    out = onnx_session(merged).run(None, {"input": x.numpy()})[0]
    assert np.abs(out - z.detach().numpy()).max() > 0.1


def test_onnx_file_structure_and_metadata(npe_export) -> None:
    model, path, _ = npe_export
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert sorted(os.listdir(path.parent)) == ["model.onnx"], "the export must be one self-contained file"
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= MIN_OPSET
    (graph_input,) = proto.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert [o.name for o in proto.graph.output] == ["logits"]
    metadata = read_onnx_metadata(path)
    assert metadata == {
        **metadata,
        "architecture": "resnet20",
        "npe_architecture": NPE_MODEL,
        "task": "image-classification",
        "num_classes": 10,
        "class_names": LABELS,
        "num_pems": 16,
        "alpha": 0.5,
        "merged": True,
        "mean": list(model.pretrained_cfg["mean"]),
        "std": list(model.pretrained_cfg["std"]),
        "input_size": [3, 32, 32],
        "pretrained_tag": TAG,
        "model_version": npe_models.__version__,
        "npe_models_version": npe_models.__version__,
    }
    assert read_onnx_metadata(npe_export[2])["merged"] is False
    assert model.training is False and isinstance(model.fc, NPEHead), "export must not change the caller's model"


@pytest.mark.slow
def test_dynamic_size_for_a_classifier(tmp_path: Path) -> None:
    model, _ = _realistic_model("resnet20")
    path = export_onnx(model, tmp_path / "model.onnx", dynamic_size=True)
    result = check_parity(model, path, batch_sizes=(1, 3), image_sizes=[(32, 32), (40, 48)])
    assert set(result.max_abs_diff) == {(1, 32, 32), (3, 32, 32), (1, 40, 48), (3, 40, 48)}
    assert result.passed, result


def test_parity_detects_a_mismatch(npe_export) -> None:
    model, path, _ = npe_export
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.fc.pem_bias.add_(0.01)
    result = check_parity(changed, path)
    assert not result.passed and result.worst > 1e-3


def test_int8_quantization_keeps_metadata_and_outputs_close(npe_export, tmp_path: Path) -> None:
    _, path, _ = npe_export
    quantized = quantize_int8(path, tmp_path / "model.int8.onnx")
    ops = {node.op_type for node in onnx.load(str(quantized)).graph.node}
    assert "ConvInteger" in ops and "DynamicQuantizeLinear" in ops
    assert read_onnx_metadata(quantized) == {**read_onnx_metadata(path), "quantization": "int8-dynamic"}
    assert os.path.getsize(quantized) < 0.5 * os.path.getsize(path)
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3)).numpy()
    fp32 = onnx_session(path).run(None, {"input": x})[0]
    int8 = onnx_session(quantized).run(None, {"input": x})[0]
    assert np.abs(int8 - fp32).max() < 0.1 * np.abs(fp32).max()
    assert sorted(os.listdir(tmp_path)) == ["model.int8.onnx"]


def test_onnx_accuracy_matches_pytorch_on_cifar10(npe_export, data_dir: Path) -> None:
    model, path, _ = npe_export
    test = np.load(data_dir / "cifar10" / "test.npz")
    images, labels = test["x"][::20], test["y"][::20]  # 500 images, every class (the file is class-major)
    mean, std = read_onnx_metadata(path)["mean"], read_onnx_metadata(path)["std"]
    onnx_acc, onnx_pred = classification_accuracy(onnx_predictor(onnx_session(path)), images, labels, mean, std)
    torch_acc, torch_pred = classification_accuracy(torch_predictor(model), images, labels, mean, std)
    assert (onnx_pred == torch_pred).mean() >= 0.998
    assert abs(onnx_acc - torch_acc) <= 0.2


def test_onnx_validate_script_reports_matching_accuracy(npe_export, data_dir: Path, tmp_path: Path, capsys) -> None:
    model, path, _ = npe_export
    weights = tmp_path / "weights.safetensors"
    safetensors.torch.save_file(model.state_dict(), str(weights))
    import onnx_validate as script

    argv = [
        NPE_MODEL,
        "--weights",
        str(weights),
        "--alpha",
        "0.5",
        "--onnx",
        str(path),
        "--data-dir",
        str(data_dir),
        "--limit",
        "500",
        "--quantize",
    ]
    status = script.main(argv)
    out = capsys.readouterr().out
    assert status == 0, out
    assert "parity ok" in out and "matches" in out and "int8 dynamic quantisation" in out
    path.with_suffix(".int8.onnx").unlink()


def test_bad_input(tmp_path: Path) -> None:
    model = timm.create_model("resnet20_npe1").eval()
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match="in the way"):
        export_onnx(model, blocker / "model.onnx")
    with pytest.raises(IsADirectoryError):
        export_onnx(model, tmp_path)
    with pytest.raises(ValueError, match="opset_version"):
        export_onnx(model, tmp_path / "m.onnx", opset_version=17)
    with pytest.raises(ValueError, match="input_size"):
        export_onnx(model, tmp_path / "m.onnx", input_size=(32, 32))
    with pytest.raises(ValueError, match="label_names"):
        export_onnx(model, tmp_path / "m.onnx", label_names=["a", "b"])
    with pytest.raises(FileNotFoundError):
        check_parity(model, tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="no PEMs to randomise"):
        randomize_pems(timm.create_model("resnet20"))
    assert sorted(os.listdir(tmp_path)) == ["file.txt"], "a failed export must leave nothing behind"


def test_failed_write_leaves_the_old_file_and_no_partial(tmp_path: Path, monkeypatch) -> None:
    model = timm.create_model("resnet20").eval()
    target = export_onnx(model, tmp_path / "model.onnx")
    previous = target.read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("npe_models.onnx.os.replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        export_onnx(model, target, overwrite=True)
    assert target.read_bytes() == previous
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]


def test_export_onnx_command(tmp_path: Path, capsys) -> None:
    from npe_models.cli import main

    assert main(["export", "onnx", "resnet20_npe1", "-o", str(tmp_path / "m.onnx"), "--check", "--opset", "20"]) == 0
    out = capsys.readouterr().out
    assert "parity ok" in out and "resnet20, merged (1 PEM)" in out and "opset 20" in out
    assert read_onnx_metadata(tmp_path / "m.onnx")["npe_architecture"] == "resnet20_npe1"
    assert main(["export", "onnx", "resnet21", "-o", str(tmp_path / "x.onnx")]) == 1
    assert "unknown model 'resnet21'" in capsys.readouterr().err
    assert main(["export", "onnx", "resnet20", "--alpha", "0.5", "-o", str(tmp_path / "x.onnx")]) == 1
    assert "alpha needs a model with PEMs" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_onnx_module_needs_no_huggingface_hub() -> None:
    """The runtime ONNX code imports neither the Hub module nor huggingface_hub (timm only tries to)."""
    script = (
        "import sys; sys.modules['huggingface_hub'] = None\n"
        "import timm, npe_models.onnx\n"
        "path = npe_models.onnx.export_onnx(timm.create_model('resnet20_npe1').eval(), sys.argv[1])\n"
        "assert 'npe_models.hub' not in sys.modules, 'npe_models.onnx imported the Hub code'\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-c", script, os.path.join(tmp, "m.onnx")], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        assert os.path.isfile(os.path.join(tmp, "m.onnx"))
