"""load_model: every kind of source loads the same weights, reports its task and training data, and bad sources fail
clearly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

from npe_models.classification.checkpoint import save_weights
from npe_models.files import WEIGHTS_FILE
from npe_models.hub import save_for_hub, save_pretrained_for_hub
from npe_models.loading import (
    LoadedModel,
    load_model,
    read_label_names,
    require_pretrained_weights,
    source_kind,
    tag_training_data,
)
from npe_models.models._bundled import shipped_checkpoints
from npe_models.npe import npe_heads
from npe_models.segmentation.checkpoint import save_segmentation_weights
from npe_models.segmentation.config import SegmentationModelConfig, SegmentationTrainConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "runs_v0_1"
CLASSIFICATION_RUN = FIXTURES / "classification_npe4_interrupted"  # checkpoint.pt only, written by npe-models 0.1.0
SEGMENTATION_RUN = FIXTURES / "segmentation_unet_npe1_interrupted"
SHIPPED = "resnet32_npe16.cifar10_lt_r100_hp2"
SEG_SETTINGS = SegmentationModelConfig(
    name="unet_fcn_npe1",
    num_classes=2,
    model_kwargs={"base_channels": 4},
    class_names=["background", "vessel"],
)


def _images(height: int = 32, width: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(11))


def _same_weights(loaded: LoadedModel, reference: torch.nn.Module) -> None:
    assert not loaded.model.training, f"{loaded.source} must load in eval mode"
    got, expected = loaded.model.state_dict(), reference.state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), f"{loaded.source}: {key} differs"


@pytest.fixture(scope="module")
def classifier_sources(tmp_path_factory) -> tuple[torch.nn.Module, dict[str, str]]:
    """The legacy fixture run, its checkpoint, and the same weights as a finished run, bare weights and Hub folders."""
    root = tmp_path_factory.mktemp("classifier")
    reference = load_model(CLASSIFICATION_RUN / "checkpoint.pt").model
    config = load_model(CLASSIFICATION_RUN).config
    finished = root / "finished"
    finished.mkdir()
    (finished / "config.json").write_text((CLASSIFICATION_RUN / "config.json").read_text())
    save_weights(finished / WEIGHTS_FILE, reference, config)
    safetensors.torch.save_file(reference.state_dict(), str(root / "bare.safetensors"))
    torch.save({"state_dict": reference.state_dict()}, root / "bare.pth")
    hub = save_for_hub(reference, root / "hub")
    sources = {
        "run directory (checkpoint only)": str(CLASSIFICATION_RUN),
        "checkpoint.pt": str(CLASSIFICATION_RUN / "checkpoint.pt"),
        "finished run directory": str(finished),
        "model.safetensors": str(finished / WEIGHTS_FILE),
        "Hub folder": str(hub),
        "local-dir:": f"local-dir:{hub}",
    }
    return reference, sources | {"bare.safetensors": str(root / "bare.safetensors"), "bare.pth": str(root / "bare.pth")}


@pytest.mark.parametrize(
    "kind",
    [
        "run directory (checkpoint only)",
        "checkpoint.pt",
        "finished run directory",
        "model.safetensors",
        "Hub folder",
        "local-dir:",
    ],
)
def test_every_classifier_source_loads_the_same_weights(classifier_sources, kind: str) -> None:
    reference, sources = classifier_sources
    loaded = load_model(sources[kind])
    assert loaded.task == "classification" and loaded.source == sources[kind]
    _same_weights(loaded, reference)
    with torch.no_grad():
        assert torch.equal(loaded.model(_images()), reference.eval()(_images()))


def test_runs_report_their_training_config_and_data(classifier_sources) -> None:
    _, sources = classifier_sources
    for kind in ("run directory (checkpoint only)", "checkpoint.pt", "finished run directory", "model.safetensors"):
        loaded = load_model(sources[kind])
        assert loaded.config.model == "resnet20_npe4" and loaded.config.method == "npe"
        assert (loaded.dataset, loaded.rho, loaded.max_per_class) == ("cifar10", 10.0, 20)
        assert loaded.recipe["epochs"] == 2 and "data_dir" not in loaded.recipe and "device" not in loaded.recipe
    hub = load_model(sources["Hub folder"])
    assert hub.config is None and hub.dataset is None and hub.recipe is None
    assert load_model(sources["checkpoint.pt"]).name == "checkpoint.pt" and hub.name == "hub"


def test_registered_name_with_weights_and_bare_weights_with_a_name(classifier_sources) -> None:
    reference, sources = classifier_sources
    for kind in ("bare.safetensors", "bare.pth"):
        loaded = load_model("resnet20_npe4", weights=sources[kind])
        assert loaded.task == "classification" and loaded.config is None
        _same_weights(loaded, reference)
    _same_weights(load_model(sources["bare.safetensors"], model_name="resnet20_npe4"), reference)
    with pytest.raises(ValueError, match="bare.safetensors.*records no task.*model_name="):
        load_model(sources["bare.safetensors"])


def test_pretrained_name_with_and_without_its_tag() -> None:
    arch, tag = SHIPPED.split(".", 1)
    loaded = load_model(SHIPPED, pretrained=True)
    _same_weights(loaded, timm.create_model(SHIPPED, pretrained=True))
    assert loaded.task == "classification" and (loaded.dataset, loaded.rho) == ("cifar10", 100.0)
    assert loaded.class_names[0] == "airplane" and len(loaded.class_names) == 10
    default = load_model(arch, pretrained=True)  # the architecture's default tag is this checkpoint
    _same_weights(default, loaded.model)
    fresh = load_model(arch, num_classes=7)
    assert fresh.model.num_classes == 7 and fresh.dataset is None and fresh.class_names is None


def test_only_the_shipped_weights_carry_their_tag(tmp_path: Path) -> None:
    """A model holding other weights (a file, a run, random init) must not name the default checkpoint in exports."""
    from npe_models.classification.checkpoint import build_model
    from npe_models.classification.config import TrainConfig
    from npe_models.describe import describe_model

    arch, tag = SHIPPED.split(".", 1)
    shipped = load_model(SHIPPED, pretrained=True).model
    assert describe_model(shipped).pretrained_tag == tag and shipped.pretrained_cfg["notes"]
    safetensors.torch.save_file(shipped.state_dict(), str(tmp_path / "mine.safetensors"))
    others = [
        load_model(arch, weights=tmp_path / "mine.safetensors").model,
        load_model(arch).model,
        build_model(TrainConfig(model=arch, method="npe"), 10),
    ]
    for model in others:
        assert describe_model(model).pretrained_tag is None
        assert not {"tag", "file", "description", "notes", "label_names"} & set(model.pretrained_cfg)
        assert model.pretrained_cfg["mean"] == shipped.pretrained_cfg["mean"]  # the preprocessing stays


def test_shipped_checkpoint_through_its_generated_hub_folder(tmp_path: Path) -> None:
    folder = save_pretrained_for_hub(SHIPPED, tmp_path / SHIPPED)
    loaded = load_model(f"local-dir:{folder}")
    _same_weights(loaded, load_model(SHIPPED, pretrained=True).model)
    assert loaded.class_names == list(shipped_checkpoints()[SHIPPED]["cfg"]["label_names"])


def _segmentation_model() -> torch.nn.Module:
    torch.manual_seed(3)
    model = SEG_SETTINGS.build()
    with torch.no_grad():
        for head in npe_heads(model):
            head.pem_weight.normal_(0, 0.3)
    return model.eval()


def test_every_segmentation_source_loads_the_same_weights(tmp_path: Path, monkeypatch) -> None:
    model = _segmentation_model()
    run = tmp_path / "run"
    run.mkdir()
    train = SegmentationTrainConfig(iterations=600, lr=0.01)
    config = {
        "model": SEG_SETTINGS.to_dict(),
        "train": train.to_dict(),
        "data": {"dataset": "stare", "annotation": "ah"},
    }
    (run / "config.json").write_text(json.dumps(config))  # the layout written before the task was recorded
    save_segmentation_weights(run / WEIGHTS_FILE, model, SEG_SETTINGS)
    hub = save_for_hub(model, tmp_path / "hub", config=SEG_SETTINGS)
    monkeypatch.setattr("npe_models.hub.load.hf_hub_download", lambda repo, name, revision=None: str(hub / name))
    sources = [str(run), str(run / WEIGHTS_FILE), str(hub), f"local-dir:{hub}", "hf-hub:npe-models/unet-test"]
    for source in sources:
        loaded = load_model(source)
        assert loaded.task == "segmentation", source
        assert loaded.segmentation_config.class_names == ["background", "vessel"] == loaded.class_names
        _same_weights(loaded, model)
        with torch.no_grad():
            assert torch.equal(loaded.model(_images(40, 48))["out"], model(_images(40, 48))["out"])
    from_run = load_model(run)
    assert from_run.config.train == train and from_run.config.model == SEG_SETTINGS
    assert from_run.dataset == "stare" and from_run.recipe["iterations"] == 600
    plain = load_model("unet_fcn_npe1", num_classes=3, pem_type="fcn")
    assert plain.task == "segmentation" and plain.model.pem_type == "fcn"


def test_unfinished_segmentation_run_and_its_checkpoint_load() -> None:
    state = torch.load(SEGMENTATION_RUN / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    for source in (SEGMENTATION_RUN, SEGMENTATION_RUN / "checkpoint.pt"):
        loaded = load_model(source)
        assert loaded.task == "segmentation" and loaded.segmentation_config.name == "unet_fcn_npe1"
        assert loaded.model.state_dict().keys() == state.keys()
        assert all(torch.equal(loaded.model.state_dict()[key], value) for key, value in state.items())
        assert loaded.config.train.iterations == 4 and loaded.dataset == "stare"


def test_alpha_is_set_through_the_one_npe_helper(classifier_sources) -> None:
    _, sources = classifier_sources
    loaded = load_model(sources["checkpoint.pt"], npe_alpha=0.25)
    assert [head.alpha for head in npe_heads(loaded.model)] == [0.25]
    assert load_model("unet_fcn_npe1", npe_alpha=0.3).model.alpha == 0.3
    with pytest.raises(ValueError, match="alpha needs a model with PEMs"):
        load_model("resnet20", npe_alpha=0.5)


def test_source_kinds(classifier_sources) -> None:
    _, sources = classifier_sources
    assert source_kind(sources["Hub folder"]) == source_kind("hf-hub:org/name") == "hub"
    assert source_kind(sources["finished run directory"]) == source_kind(sources["checkpoint.pt"]) == "run"
    assert source_kind("resnet32_npe16.cifar10_lt_r100_hp2") == source_kind("deeplabv3_resnet50_npe4") == "registered"


def test_bad_sources_fail_with_one_clear_error(classifier_sources, tmp_path: Path) -> None:
    _, sources = classifier_sources
    with pytest.raises(
        FileNotFoundError, match="unknown model 'runs/missing': neither a run directory.*npe-models list"
    ):
        load_model("runs/missing")
    with pytest.raises(FileNotFoundError, match="unknown model 'resnet33_npe16'"):
        load_model("resnet33_npe16")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty' holds none of config.json"):
        load_model(tmp_path / "empty")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken/config.json' is not valid JSON"):
        load_model(tmp_path / "broken")
    with pytest.raises(ValueError, match="apply to registered names, not to .*checkpoint.pt"):
        load_model(sources["checkpoint.pt"], pretrained=True)
    with pytest.raises(ValueError, match="has 10 classes but the data set has 100"):
        load_model(sources["checkpoint.pt"], num_classes=100)
    with pytest.raises(ValueError, match=r"do not fit resnet32_npe4"):
        load_model("resnet32_npe4", weights=sources["bare.safetensors"])
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_model("resnet20_npe4", weights=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="model_name and num_classes do not apply to .*hub"):
        load_model(sources["Hub folder"], num_classes=10)
    with pytest.raises(ValueError, match="deeplabv3_resnet50_npe1 has no shipped weights"):
        load_model("deeplabv3_resnet50_npe1", pretrained=True)


def test_names_without_weights_fail_clearly() -> None:
    with pytest.raises(
        ValueError,
        match="resnet20_npe16 has no default pretrained weights; there are no pretrained weights for it: "
        "load it with pretrained=False",
    ):
        load_model("resnet20_npe16", pretrained=True)
    with pytest.raises(
        ValueError, match=r"pretrained tag \(cifar100_lt_r100_hp2\) for resnet32_npe16.*npe-models list --pretrained"
    ):
        load_model("resnet32_npe16.cifar100_lt_r100_hp2", pretrained=True)
    require_pretrained_weights(SHIPPED)  # has weights: no error


def test_tag_training_data() -> None:
    assert tag_training_data("resnet32_npe16.cifar10_lt_r100_hp2") == ("cifar10", 100.0)
    assert tag_training_data("resnet32.cifar100_lt_r50.5_hp1_la") == ("cifar100", 50.5)
    assert tag_training_data("resnet50_npe16.a1_in1k") == (None, None)
    assert tag_training_data("cifar10_lt_r100") == (None, None), "only a tag names training data"


def test_read_label_names(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text(json.dumps(["cat", "dog"]))
    (tmp_path / "dict.json").write_text(json.dumps({"classes": ["cat", "dog"]}))
    (tmp_path / "lines.txt").write_text("cat\n\n dog \n")
    for name in ("list.json", "dict.json", "lines.txt"):
        assert read_label_names(tmp_path / name) == ["cat", "dog"]
    assert read_label_names(None) is None
    (tmp_path / "bad.json").write_text(json.dumps({"names": ["cat"]}))
    with pytest.raises(ValueError, match="bad.json must hold a JSON list"):
        read_label_names(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="missing.txt not found"):
        read_label_names(tmp_path / "missing.txt")
