"""NPE on segmentation_models_pytorch models: linear merge exactness, fcn / replica PEMs, names, smp optional."""

from __future__ import annotations

import builtins
import subprocess
import sys
import warnings
from collections import OrderedDict

import pytest
import torch
import torchvision
from timm.utils import reparameterize_model
from torch import nn
from torch.nn.modules.conv import _ConvNd

import npe_models
from npe_models.losses import one_way_logistic_loss
from npe_models.models import smp as npe_smp
from npe_models.models.segmentation import (
    PEMNotMergedWarning,
    create_segmentation_model,
    is_segmentation_model,
    parse_segmentation_model_name,
)
from npe_models.npe import PEM_INIT_STD, NPEHead, has_pems, set_alpha
from npe_models.segmentation import SegmentationModelConfig, SegmentationTrainConfig, train_segmentation

smp = pytest.importorskip("segmentation_models_pytorch")

NUM_CLASSES = 3
SIZE = 64
# small decoders keep the tests fast; they go to smp.create_model unchanged
SMALL_DECODERS = {
    "unet": {"decoder_channels": (32, 16, 16, 16, 16)},
    "fpn": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
    "deeplabv3plus": {"decoder_channels": 32},
    "upernet": {"decoder_channels": 32},
    "linknet": {},
    "deeplabv3": {"decoder_channels": 32},
    # depth 3: PAN's pyramid pools its deepest features three times more, so 64x64 needs them at stride 8
    "pan": {"decoder_channels": 16, "encoder_depth": 3},
}
ENCODERS = ("tu-resnet10t", "tu-pvt_v2_b0")  # a CNN and a transformer (PVT v2) timm encoder
# smp dilates these architectures' encoders (output stride 8 or 16), which timm's transformers cannot
DILATED = ("deeplabv3plus", "deeplabv3", "pan")
PEM_STRIDE = {"unet": 1, "linknet": 1, "deeplabv3": 8}
"""How much coarser than the input the decoder output, which the PEMs share, is: 4 where not listed."""


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to fetch weights fails the test: smp models are built with encoder_weights=None."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args} {kwargs}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)


def _images(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def _randomise_pems(model: nn.Module, std: float = 0.5) -> None:
    """PEMs far from their tiny initialisation, so that NPE-LA changes the output."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "pem" in name:
                parameter.normal_(std=std)


def _model(arch: str, encoder: str, num_pems: int = 2, pem_type: str = "linear") -> nn.Module:
    torch.manual_seed(0)
    return create_segmentation_model(
        f"smp:{arch}:{encoder}", num_classes=NUM_CLASSES, num_pems=num_pems, pem_type=pem_type, **SMALL_DECODERS[arch]
    )


@pytest.mark.parametrize(
    ("arch", "encoder"),
    [
        (arch, encoder)
        for arch in SMALL_DECODERS
        for encoder in ENCODERS
        if not (arch in DILATED and encoder == ENCODERS[1])
    ],
)
def test_linear_pems_merge_exactly_and_load_strictly_into_plain_smp(arch: str, encoder: str) -> None:
    model = _model(arch, encoder)
    _randomise_pems(model)
    images = _images()
    model.eval()
    with torch.no_grad():
        npe_out = model(images)
        logits, eta = model.forward_logits_and_estimate(images)
        merged = reparameterize_model(model)
        merged_out = merged(images)
    assert isinstance(npe_out, OrderedDict) and list(npe_out) == ["out"]
    assert npe_out["out"].shape == (2, NUM_CLASSES, SIZE, SIZE)
    assert (npe_out["out"] - (logits - model.alpha * eta)).abs().max() <= 1e-5
    assert (npe_out["out"] - merged_out["out"]).abs().max() <= 1e-5
    assert (npe_out["out"] - logits).abs().max() > 1e-3  # NPE-LA did change the output
    assert not has_pems(merged) and has_pems(model)

    plain = smp.create_model(
        arch, encoder_name=encoder, encoder_weights=None, classes=NUM_CLASSES, **SMALL_DECODERS[arch]
    )
    plain.load_state_dict(merged.state_dict(), strict=True)
    with torch.no_grad():
        assert (plain.eval()(images) - npe_out["out"]).abs().max() <= 1e-5


def test_unet_3x3_head_conv_carries_conv_pems() -> None:
    model = _model("unet", "tu-resnet10t", num_pems=3)
    head = model.segmentation_head[0]
    assert isinstance(head, npe_smp.NPEConvHead) and isinstance(head, NPEHead)
    assert head.kernel_size == (3, 3) and head.pem_weight.shape == (3 * NUM_CLASSES, 16, 3, 3)
    assert model.npe_heads() == [head]
    fused = reparameterize_model(model).segmentation_head[0]
    assert type(fused) is nn.Conv2d and fused.kernel_size == (3, 3) and fused.padding == (1, 1)
    fpn = _model("fpn", "tu-resnet10t")
    assert type(fpn.segmentation_head[0]) is NPEHead  # 1x1 convs take the torchvision models' NPEHead


@pytest.mark.parametrize(
    ("arch", "pem_type"),
    # DeepLabV3+: the replica of its ASPP decoder, whose BatchNorms follow separable (depthwise, pointwise) convs;
    # DeepLabV3 and PAN: BatchNorms that follow a conv as attributes (conv, bn); Linknet: BatchNorms after
    # transposed convs
    [("unet", "fcn"), ("unet", "replica"), ("upernet", "fcn"), ("upernet", "replica")]
    + [(arch, "replica") for arch in ("deeplabv3plus", "deeplabv3", "linknet", "pan")],
)
def test_fcn_and_replica_pems_forward_backward(arch: str, pem_type: str) -> None:
    model = _model(arch, "tu-resnet10t", num_pems=2, pem_type=pem_type)
    fresh = [m.weight for m in model.pems.modules() if isinstance(m, _ConvNd)]
    assert max(w.abs().max() for w in fresh) < 10 * PEM_INIT_STD  # transposed convs too: no decoder weights kept
    images, labels = _images(), torch.randint(0, NUM_CLASSES, (2, SIZE, SIZE))
    model.train()
    out = model.forward_train(images)
    assert out.logits.shape == (2, NUM_CLASSES, SIZE, SIZE) and out.aux_logits is None
    low = SIZE // PEM_STRIDE.get(arch, 4)  # the PEMs' resolution: the decoder output's
    assert out.pem_logits.shape == (2, 2, NUM_CLASSES, low, low)
    pem_labels = labels[:, :: SIZE // low, :: SIZE // low]
    loss = nn.functional.cross_entropy(out.logits, labels) + one_way_logistic_loss(out.pem_logits, pem_labels)
    loss.backward()
    assert all(p.grad is not None for p in model.pems.parameters())
    assert model(images)["out"].shape == (2, NUM_CLASSES, SIZE, SIZE)  # training mode: the main logits

    _randomise_pems(model)
    model.eval()
    set_alpha(model, 0.3)
    with torch.no_grad():
        logits, eta = model.forward_logits_and_estimate(images)
        assert (model(images)["out"] - (logits - 0.3 * eta)).abs().max() <= 1e-5
        assert torch.equal(model.npe_estimate(images), eta)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kept = reparameterize_model(model)
        assert any(issubclass(w.category, PEMNotMergedWarning) for w in caught)
        assert (kept(images)["out"] - model(images)["out"]).abs().max() <= 1e-5
        assert torch.equal(logits, _plain_twin(model, arch)(images))  # the PEMs leave the main logits alone
    if pem_type == "replica":
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.pems.modules())
        norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.decoder.modules())
        biased = sum(isinstance(m, _ConvNd) and m.bias is not None for m in model.pems[0].modules())
        assert biased == norms + 1  # each BatchNorm's shift taken over by the conv before it, and the head conv


def _plain_twin(model: nn.Module, arch: str) -> nn.Module:
    """The plain smp model with ``model``'s weights less its PEMs, in eval mode."""
    plain = smp.create_model(
        arch, encoder_name="tu-resnet10t", encoder_weights=None, classes=NUM_CLASSES, **SMALL_DECODERS[arch]
    )
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("pems.")}, strict=True)
    return plain.eval()


def test_replica_of_a_decoder_with_unpaired_batchnorm_says_what_to_use() -> None:
    """A BatchNorm after a layer that is no conv (here Linknet upsampling without its transposed conv) stays."""
    plain = create_segmentation_model("smp:linknet:tu-resnet10t", num_classes=NUM_CLASSES)
    plain.decoder.blocks[0].block[1][0] = nn.Upsample(scale_factor=2)
    with pytest.raises(ValueError, match=r"PEM of LinknetDecoder: .* Use pem_type='fcn' or 'linear'"):
        npe_models.models.segmentation.add_segmentation_npe(plain, 1, pem_type="replica")


def test_a_head_without_a_classifier_conv_is_refused_in_one_line() -> None:
    """smp's DPT head starts with a feature-projection block, not the classifier conv the PEMs sit beside."""
    with pytest.raises(ValueError, match="DPTSegmentationHead does not: choose another architecture"):
        create_segmentation_model("smp:dpt:tu-vit_tiny_patch16_224", num_classes=NUM_CLASSES, num_pems=1)


def test_names_parse_and_the_plain_model_keeps_the_output_contract() -> None:
    assert parse_segmentation_model_name("smp:unet:resnet18_npe4") == ("smp:unet:resnet18", 4)
    assert parse_segmentation_model_name("smp_upernet_swin_t_npe16") == ("smp_upernet_swin_t", 16)
    assert is_segmentation_model("smp:fpn:tu-resnet10t") and not is_segmentation_model("smp:fpn")
    with pytest.raises(ValueError, match="smp:<arch>:<encoder>"):
        parse_segmentation_model_name("smp_unet_nonexistent")
    plain = create_segmentation_model("smp:fpn:tu-resnet10t", num_classes=NUM_CLASSES, **SMALL_DECODERS["fpn"])
    assert isinstance(plain, smp.FPN) and not has_pems(plain)
    out = plain.eval()(_images(1))
    assert list(out) == ["out"] and out["out"].shape == (1, NUM_CLASSES, SIZE, SIZE)
    npe = npe_models.models.segmentation.add_segmentation_npe(plain, 2)
    assert npe is plain and npe.num_pems == 2


def test_registered_names_build_through_torchvision() -> None:
    names = set(torchvision.models.list_models())
    for name in npe_smp.SMP_ARCHITECTURES:
        assert {f"{name}_npe1", f"{name}_npe16"} <= names
    torch.manual_seed(0)
    model = torchvision.models.get_model("smp_unet_mobilenet_v2_npe16", num_classes=150)
    assert model.num_pems == 16 and model.segmentation_head[0].num_classes == 150
    assert isinstance(model, smp.Unet) and type(model.encoder).__name__ == "MobileNetV2Encoder"
    with pytest.raises(ValueError, match="not a weights entry"):
        torchvision.models.get_model("smp_unet_mobilenet_v2_npe1", weights="DEFAULT")


def test_swin_t_upernet_at_64x64() -> None:
    """The paper's Swin-T + UPerNet: smp's timm Swin encoder at a size other than 224 (any multiple of 32)."""
    torch.manual_seed(0)
    model = torchvision.models.get_model("smp_upernet_swin_t_npe1", num_classes=NUM_CLASSES, decoder_channels=32)
    assert type(model.segmentation_head[0]) is NPEHead
    _randomise_pems(model)
    images = _images(1)
    model.eval()
    with torch.no_grad():
        out = model(images)["out"]
        merged = reparameterize_model(model)(images)["out"]
    assert out.shape == (1, NUM_CLASSES, SIZE, SIZE)
    assert (out - merged).abs().max() <= 1e-5
    assert model.build_cfg["architecture"] == "smp_upernet_swin_t"  # the registered name, not smp:upernet:tu-swin...


def test_without_smp_the_error_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_smp(name, *args, **kwargs):
        if name.startswith("segmentation_models_pytorch"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_smp)
    with pytest.raises(ImportError, match=r'pip install "npe-models\[smp\]"'):
        create_segmentation_model("smp:unet:resnet18", num_pems=1)
    with pytest.raises(ImportError, match=r'pip install "npe-models\[smp\]"'):
        torchvision.models.get_model("smp_upernet_swin_t_npe16", num_classes=150)


def test_the_package_imports_and_lists_smp_names_without_smp() -> None:
    code = (
        "import sys; sys.modules['segmentation_models_pytorch'] = None\n"
        "import torchvision, npe_models\n"
        "assert 'smp_upernet_swin_t_npe16' in torchvision.models.list_models()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_a_named_smp_model_exports_to_onnx_and_a_hub_folder_without_config(tmp_path) -> None:
    """The model records the name that rebuilds it (``build_cfg``), so describing it needs no config=."""
    pytest.importorskip("onnxruntime")
    from npe_models import hub, onnx
    from npe_models.describe import describe_model

    model = _model("fpn", "tu-resnet10t").eval()
    _randomise_pems(model)
    description = describe_model(model)
    assert description.architecture == "smp:fpn:tu-resnet10t_npe2" and description.num_pems == 2
    assert description.model_args["model_kwargs"] == SMALL_DECODERS["fpn"]
    path = onnx.export_onnx(model, tmp_path / "model.onnx", input_size=(3, SIZE, SIZE))
    metadata = onnx.read_onnx_metadata(path)
    assert metadata["architecture"] == "smp:fpn:tu-resnet10t"  # merged: the plain smp model
    assert metadata["input_multiple"] == 32  # its encoder's output stride: predict pads images to it
    parity = onnx.check_parity(model, path, image_sizes=[(SIZE, SIZE)])
    assert max(parity.max_abs_diff.values()) <= parity.atol

    hub.save_for_hub(model, tmp_path / "hub")
    loaded = hub.load_from_hub(tmp_path / "hub").eval()
    images = _images(1)
    with torch.no_grad():
        assert torch.equal(loaded(images)["out"], model(images)["out"])
    assert loaded.num_pems == 2 and isinstance(loaded, smp.FPN)


def test_an_smp_model_built_by_smp_itself_needs_its_config_to_be_described() -> None:
    from npe_models.describe import describe_model

    plain = smp.create_model("fpn", encoder_name="tu-resnet10t", encoder_weights=None, classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="pass config="):
        describe_model(plain)


@pytest.mark.parametrize("pem_type", ["linear", "replica"])
def test_the_papers_protocol_trains_only_the_pems_of_a_frozen_smp_model(pem_type: str) -> None:
    """Frozen encoder and decoder (BatchNorm in eval mode): a training run changes the PEMs and nothing else."""
    model = _model("upernet", "tu-resnet10t", num_pems=2, pem_type=pem_type)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = (torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    masks = torch.randint(0, NUM_CLASSES, (4, SIZE, SIZE), generator=torch.Generator().manual_seed(2))
    config = SegmentationTrainConfig(iterations=2, batch_size=2, crop_size=(SIZE, SIZE), freeze_decode_head=True)
    model_config = SegmentationModelConfig("smp:upernet:tu-resnet10t_npe2", num_classes=NUM_CLASSES)
    train_segmentation(model, list(zip(images, masks)), config, model_config)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all("pem" in k for k in changed), sorted(changed)


def test_evaluation_pads_an_image_to_the_size_smp_models_take() -> None:
    """smp models take multiples of 32 only; inference pads (zeros at the bottom and right) and crops back."""
    from npe_models.segmentation.evaluation import predict_logits

    model = _model("fpn", "tu-resnet10t").eval()
    images = torch.randn(1, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    with pytest.raises(RuntimeError, match="divisible by 32"):
        model(images)
    logits, estimate = predict_logits(model, images, "whole")
    assert logits.shape == estimate.shape == (1, NUM_CLASSES, 40, 56)
    padded = nn.functional.pad(images, (0, 8, 0, 24))
    with torch.no_grad():
        assert torch.equal(logits, model.forward_logits_and_estimate(padded)[0][..., :40, :56])
