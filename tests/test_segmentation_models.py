"""NPE segmentation models: torchvision registration, output contract, PEM types, merging, the dense loss."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import npe_models
from npe_models.losses import one_way_logistic_loss
from npe_models.models import segmentation as seg
from npe_models.npe import NPEHead
from npe_models.segmentation import dense_npe_loss
from npe_models.segmentation.losses import upsampled_true_class_logits

ARCHS = tuple(seg.SEGMENTATION_ARCHITECTURES)
LIGHT_ARCHS = ("deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large", "unet_fcn")
HAS_AUX = {
    "deeplabv3_resnet50": True,
    "deeplabv3_mobilenet_v3_large": True,
    "fcn_resnet50": True,
    "lraspp_mobilenet_v3_large": False,
    "unet_fcn": True,
}
NUM_CLASSES = 3
INPUT = (2, 3, 40, 48)


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to fetch weights fails the test: nothing may download unless asked."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args} {kwargs}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def _small_kwargs(arch: str) -> dict:
    return {"base_channels": 8} if arch == "unet_fcn" else {}


def _calibrate_and_randomise(model: nn.Module, images: torch.Tensor, pem_std: float = 0.5) -> None:
    """Realistic features (BatchNorm statistics from the data) and PEMs far from their tiny initialisation."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(images)
        for name, parameter in model.named_parameters():
            if "pem" in name:
                parameter.normal_(std=pem_std)
    model.eval()


def _build(arch: str, pem_type: str = "linear", num_pems: int = 2, alpha: float = 0.5) -> nn.Module:
    return npe_models.create_segmentation_model(
        arch,
        num_pems=num_pems,
        pem_type=pem_type,
        num_classes=NUM_CLASSES,
        npe_alpha=alpha,
        aux_loss=HAS_AUX[arch] or None,
        **_small_kwargs(arch),
    )


@pytest.fixture(scope="module", params=ARCHS)
def linear_model(request: pytest.FixtureRequest) -> tuple[str, nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    images = torch.randn(*INPUT)
    model = _build(request.param)
    _calibrate_and_randomise(model, images)
    return request.param, model, images


def test_registered_with_torchvision() -> None:
    names = torchvision.models.list_models()
    for arch in ARCHS:
        for k in (1, 16):
            assert f"{arch}_npe{k}" in names
    assert set(seg.list_segmentation_models()) <= set(names)
    model = torchvision.models.get_model("lraspp_mobilenet_v3_large_npe16", num_classes=4)
    assert isinstance(model, torchvision.models.segmentation.LRASPP)
    assert isinstance(model, seg.NPESegmentationMixin) and model.num_pems == 16 and model.pem_type == "linear"
    weights = torchvision.models.get_model_weights("deeplabv3_resnet50_npe1")
    assert weights is torchvision.models.segmentation.DeepLabV3_ResNet50_Weights


def test_output_contract_and_npe_api(linear_model) -> None:
    arch, model, images = linear_model
    size = images.shape[-2:]
    expected_keys = ["out", "aux"] if HAS_AUX[arch] else ["out"]
    with torch.no_grad():
        model.train()
        train_out = model(images)
        model.eval()
        eval_out = model(images)
        output = model.forward_train(images)
        logits, estimate = model.forward_logits_and_estimate(images)
        eta = model.npe_estimate(images)
    for result in (train_out, eval_out):
        assert isinstance(result, OrderedDict) and list(result) == expected_keys
        assert all(v.shape == (2, NUM_CLASSES, *size) for v in result.values())
    assert output.logits.shape == (2, NUM_CLASSES, *size)
    assert output.pem_logits.shape[:3] == (2, 2, NUM_CLASSES)
    assert (output.aux_logits is not None) == HAS_AUX[arch]
    torch.testing.assert_close(eta, estimate)
    torch.testing.assert_close(eval_out["out"], logits - 0.5 * estimate, atol=1e-5, rtol=0)
    assert (eval_out["out"] - logits).abs().max() > 1e-3  # the adjustment is really applied in eval mode


def test_linear_pems_merge_exactly(linear_model) -> None:
    arch, model, images = linear_model
    with torch.no_grad():
        before = model(images)["out"]
        merged = timm.utils.reparameterize_model(model)
        after = merged(images)["out"]
    assert (after - before).abs().max() <= 1e-5
    assert not merged.npe_heads() and not any("pem" in name for name, _ in merged.named_parameters())
    plain = npe_models.create_segmentation_model(
        arch, num_classes=NUM_CLASSES, aux_loss=HAS_AUX[arch] or None, **_small_kwargs(arch)
    )
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in plain.parameters())
    with pytest.raises(RuntimeError, match="reparameterize_model"):
        merged.forward_train(images)
    with pytest.raises(RuntimeError, match="before merging"):
        merged.alpha = 0.2


def test_lraspp_linear_pems_sit_on_both_classifier_convs() -> None:
    model = _build("lraspp_mobilenet_v3_large")
    assert isinstance(model.classifier.low_classifier, NPEHead)
    assert isinstance(model.classifier.high_classifier, NPEHead)


@pytest.mark.parametrize("pem_type", ["fcn", "replica"])
@pytest.mark.parametrize("arch", ARCHS)
def test_nonlinear_pems_contract_and_kept_by_merge(arch: str, pem_type: str) -> None:
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 40)
    model = _build(arch, pem_type, num_pems=1)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.pems.modules())
    _calibrate_and_randomise(model, images, pem_std=0.05)
    with torch.no_grad():
        before = model(images)
        logits, estimate = model.forward_logits_and_estimate(images)
        with pytest.warns(seg.PEMNotMergedWarning, match=f"'{pem_type}' PEM") as caught:
            merged = timm.utils.reparameterize_model(model)
        after = merged(images)
    assert len([w for w in caught if issubclass(w.category, seg.PEMNotMergedWarning)]) == 1
    assert list(before) == (["out", "aux"] if HAS_AUX[arch] else ["out"])
    assert before["out"].shape == (2, NUM_CLASSES, 32, 40)
    torch.testing.assert_close(before["out"], logits - 0.5 * estimate)
    torch.testing.assert_close(after["out"], before["out"])
    assert merged.pems is not None and len(merged.pems) == 1


def test_alpha_is_chosen_at_inference() -> None:
    torch.manual_seed(0)
    images = torch.randn(*INPUT)
    model = _build("unet_fcn", alpha=1.0)
    _calibrate_and_randomise(model, images)
    with torch.no_grad():
        logits, estimate = model.forward_logits_and_estimate(images)
        model.alpha = 0.2
        torch.testing.assert_close(model(images)["out"], logits - 0.2 * estimate, atol=1e-5, rtol=0)
    assert all(head.alpha == 0.2 for head in model.npe_heads())


@pytest.mark.parametrize("pem_type", ["linear", "fcn"])
def test_has_pems_and_set_alpha_on_segmentation_models(pem_type: str) -> None:
    model = _build("unet_fcn", pem_type, num_pems=2, alpha=0.5)
    assert npe_models.has_pems(model)
    assert len(npe_models.npe_heads(model)) == (1 if pem_type == "linear" else 0)
    npe_models.set_alpha(model, 0.3)
    assert model.alpha == 0.3 and all(head.alpha == 0.3 for head in npe_models.npe_heads(model))
    plain = npe_models.create_segmentation_model("unet_fcn", num_classes=NUM_CLASSES, base_channels=8)
    assert not npe_models.has_pems(plain)
    with pytest.raises(ValueError, match="has none"):
        npe_models.set_alpha(plain, 0.3)
    if pem_type == "linear":
        merged = timm.utils.reparameterize_model(model)
        assert not npe_models.has_pems(merged) and merged.alpha == 0.3
        with pytest.raises(ValueError, match="before merging"):
            npe_models.set_alpha(merged, 0.2)


def test_create_segmentation_model_names_and_errors() -> None:
    plain = npe_models.create_segmentation_model("unet_fcn", base_channels=4)
    assert type(plain) is torchvision.models.segmentation.FCN
    model = npe_models.create_segmentation_model("unet_fcn_npe4", base_channels=4)
    assert model.num_pems == 4 and model.alpha == seg.DEFAULT_SEGMENTATION_ALPHA
    assert seg.parse_segmentation_model_name("deeplabv3_resnet50_npe16") == ("deeplabv3_resnet50", 16)
    with pytest.raises(ValueError, match="num_pems=2"):
        npe_models.create_segmentation_model("unet_fcn_npe4", num_pems=2, base_channels=4)
    with pytest.raises(ValueError, match="unknown segmentation model"):
        npe_models.create_segmentation_model("unet_fcx_npe4")
    with pytest.raises(ValueError, match="pem_type"):
        npe_models.create_segmentation_model("unet_fcn_npe1", pem_type="conv", base_channels=4)
    with pytest.raises(ValueError, match="plain name"):
        npe_models.create_segmentation_model("unet_fcn_npe0", base_channels=4)
    with pytest.raises(ValueError, match="already has PEMs"):
        seg.add_segmentation_npe(model)
    with pytest.raises(TypeError, match="torchvision segmentation model"):
        seg.add_segmentation_npe(nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="no separate backbone weights"):
        npe_models.create_segmentation_model("unet_fcn", weights_backbone="IMAGENET1K_V1")


def test_registration_guard(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import _api

    from npe_models.models._registry import _register_with_torchvision

    name = "npe_models_registration_probe"

    def own_builder(**kwargs):
        return nn.Identity()

    own_builder.__name__, own_builder.__module__ = name, seg.__name__
    try:
        _register_with_torchvision(own_builder)
        _register_with_torchvision(own_builder)  # a re-import replaces its own entry
        assert torchvision.models.get_model_builder(name) is own_builder
        foreign = lambda **kwargs: nn.Identity()  # noqa: E731
        _api.BUILTIN_MODELS[name] = foreign
        with pytest.raises(RuntimeError, match="already has a model named"):
            _register_with_torchvision(own_builder)
    finally:
        _api.BUILTIN_MODELS.pop(name, None)
    monkeypatch.delattr(_api, "register_model")
    with pytest.raises(ImportError, match="create_segmentation_model"):
        _register_with_torchvision(own_builder)


def test_registered_builders_document_themselves_and_keep_torchvision_signature() -> None:
    import inspect

    builder = torchvision.models.get_model_builder("unet_fcn_npe16")
    assert builder.__name__ == "unet_fcn_npe16" and "``unet_fcn`` with 16 PEM(s)" in builder.__doc__.splitlines()[0]
    parameters = inspect.signature(builder).parameters
    assert "name" not in parameters and all(p.kind is p.KEYWORD_ONLY for p in parameters.values() if p.name != "kwargs")
    assert {"weights", "progress", "num_classes", "pem_type", "npe_alpha", "npe_t"} <= parameters.keys()
    with pytest.raises(TypeError):
        builder(3)  # torchvision builders are keyword-only


@pytest.mark.parametrize(
    "in_size,out_size", [((8, 9), (64, 70)), ((5, 7), (5, 7)), ((10, 10), (7, 13)), ((1, 1), (4, 4))]
)
def test_upsampled_true_class_logits_match_interpolation(in_size, out_size) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 5, *in_size, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 5, (2, *out_size), generator=generator)
    target[0, 0, :3] = 255
    upsampled = F.interpolate(logits.flatten(0, 1), size=out_size, mode="bilinear", align_corners=False)
    index = target.masked_fill(target == 255, 0)
    expected = upsampled.unflatten(0, (3, 2)).gather(2, index[None, :, None].expand(3, -1, 1, -1, -1)).squeeze(2)
    torch.testing.assert_close(upsampled_true_class_logits(logits, target, ignore_index=255), expected)


def test_dense_npe_loss_equals_loss_on_upsampled_logits() -> None:
    generator = torch.Generator().manual_seed(1)
    pem_logits = torch.randn(4, 2, 6, 7, 8, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 6, (2, 56, 64), generator=generator)
    target[1, 10:20] = 255
    efficient = dense_npe_loss(pem_logits, target, ignore_index=255)
    (grad_efficient,) = torch.autograd.grad(efficient, pem_logits)
    upsampled = F.interpolate(pem_logits.flatten(0, 1), size=(56, 64), mode="bilinear", align_corners=False)
    naive = one_way_logistic_loss(upsampled.unflatten(0, (4, 2)), target, ignore_index=255)
    (grad_naive,) = torch.autograd.grad(naive, pem_logits)
    torch.testing.assert_close(efficient, naive)
    torch.testing.assert_close(grad_efficient, grad_naive)
    with pytest.raises(ValueError, match="outside 0..5"):
        dense_npe_loss(pem_logits, target.masked_fill(target == 255, 6), ignore_index=255)
