"""torch.hub: hubconf.py exposes every registered model, and only models, each documented and loadable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.hub

import npe_models
from npe_models.models.segmentation import NPESegmentationMixin, list_segmentation_models
from npe_models.npe import NPEHead

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def local_repo(monkeypatch) -> str:
    """torch.hub.list/help only take GitHub names: point their download step at this checkout."""
    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", lambda *args, **kwargs: str(REPO_ROOT))
    return "npe-models/npe-models"


def _expected_entrypoints() -> set[str]:
    return set(npe_models.list_classifiers()) | set(list_segmentation_models())


def test_list_shows_exactly_the_registered_models(local_repo: str) -> None:
    names = torch.hub.list(local_repo, trust_repo=True)
    assert set(names) == _expected_entrypoints()
    assert len(names) == len(set(names))


def test_every_entrypoint_is_documented_with_the_hub_signature(local_repo: str) -> None:
    hubconf = torch.hub._import_module("hubconf", str(REPO_ROOT / "hubconf.py"))
    assert {"torch", "timm", "torchvision"} <= set(hubconf.dependencies)
    for name in _expected_entrypoints():
        assert torch.hub.help(local_repo, name, trust_repo=True).strip(), f"{name} has no docstring"
        fn = getattr(hubconf, name)
        assert fn.__name__ == name
        assert fn.__defaults__ == (False,), f"{name} must be fn(pretrained=False, **kwargs)"


def test_load_classifier_from_local_checkout() -> None:
    model = torch.hub.load(str(REPO_ROOT), "resnet32_npe16", source="local", num_classes=7, npe_alpha=0.5)
    assert isinstance(model.fc, NPEHead) and model.fc.num_classes == 7 and model.fc.alpha == 0.5
    model.eval()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert model.pretrained_cfg["architecture"] == "resnet32_npe16"


def test_pretrained_without_weights_fails_clearly() -> None:
    with pytest.raises(ValueError, match="resnet110_npe4 has no default pretrained weights"):
        torch.hub.load(str(REPO_ROOT), "resnet110_npe4", source="local", pretrained=True)


def test_load_segmentation_model_from_local_checkout() -> None:
    model = torch.hub.load(
        str(REPO_ROOT), "unet_fcn_npe1", source="local", num_classes=3, pem_type="fcn", base_channels=8
    )
    assert isinstance(model, NPESegmentationMixin) and model.pem_type == "fcn" and model.num_pems == 1
    out = model.eval()(torch.randn(1, 3, 48, 64))
    assert list(out) == ["out"] and out["out"].shape == (1, 3, 48, 64)


def test_pretrained_segmentation_asks_for_the_base_torchvision_weights(monkeypatch) -> None:
    requested = []

    def offline(url, *args, **kwargs):
        requested.append(url)
        raise ConnectionError("offline test")

    monkeypatch.setattr(
        "torchvision.models._api.load_state_dict_from_url", offline
    )  # where torchvision fetches weights
    with pytest.raises(ConnectionError):
        torch.hub.load(str(REPO_ROOT), "lraspp_mobilenet_v3_large_npe1", source="local", pretrained=True)
    assert len(requested) == 1 and "lraspp_mobilenet_v3_large" in requested[0]
    stare = torch.hub.load(str(REPO_ROOT), "unet_fcn_npe1", source="local", pretrained=True)  # bundled: no download
    assert stare.pem_type == "fcn" and len(requested) == 1
    with pytest.raises(ValueError, match="weights='STARE'.*fresh PEMs"):
        torch.hub.load(str(REPO_ROOT), "unet_fcn_npe16", source="local", pretrained=True)


def test_unknown_entrypoint_fails_clearly() -> None:
    with pytest.raises(RuntimeError, match="Cannot find callable resnet33"):
        torch.hub.load(str(REPO_ROOT), "resnet33", source="local")
