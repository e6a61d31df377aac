"""Conformance of every registered classifier: timm interface, NPE training path and merging."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.utils import reparameterize_model
from torch import nn

import npe_models
from npe_models import NPEHead, logit_adjusted_cross_entropy, one_way_logistic_loss

ALL_MODELS = npe_models.list_classifiers()
NPE_MODELS = npe_models.list_classifiers(npe_only=True)
CIFAR_MODELS = [name for name in ALL_MODELS if timm.get_pretrained_cfg_value(name, "input_size") == (3, 32, 32)]
IMAGENET_NPE_MODELS = [name for name in NPE_MODELS if name not in CIFAR_MODELS]
# Scripting compiles every block: the deeper CIFAR ResNets (the same code as ResNet-20/32) run with -m slow.
SCRIPTED_MODELS = [
    pytest.param(name, marks=pytest.mark.slow) if name.startswith(("resnet44", "resnet56", "resnet110")) else name
    for name in ALL_MODELS
]


def _small_model(name: str, **kwargs) -> nn.Module:
    """Build a model cheap enough for CPU tests (ViT at 32x32 patches)."""
    if name.startswith("vit_"):
        kwargs.setdefault("img_size", 32)
    return timm.create_model(name, **kwargs)


def _input_for(name: str, batch: int = 4) -> torch.Tensor:
    size = 32 if name in CIFAR_MODELS or name.startswith("vit_") else 64
    return torch.randn(batch, 3, size, size)


def _base_name(name: str) -> str:
    return name.rsplit("_npe", 1)[0]


def _calibrate_and_randomise(model: nn.Module, x: torch.Tensor, pem_std: float = 0.5) -> None:
    """Give BatchNorm realistic running statistics and PEMs a realistic (trained-like) scale."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
        head = model.get_classifier()
        head.pem_weight.normal_(0, pem_std)
        head.pem_bias.normal_(0, pem_std)
    model.eval()


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_shapes_and_modes(name: str) -> None:
    model = _small_model(name, num_classes=7)
    x = _input_for(name, batch=2)
    train_out = model.train()(x)
    assert isinstance(train_out, torch.Tensor) and train_out.shape == (2, 7)
    eval_out = model.eval()(x)
    assert eval_out.shape == (2, 7) and torch.isfinite(eval_out).all()


@pytest.mark.parametrize("name", NPE_MODELS)
def test_forward_train_backward_reaches_every_parameter(name: str) -> None:
    model = _small_model(name, num_classes=6).train()
    x, y = _input_for(name, batch=3), torch.tensor([0, 2, 5])
    out = model.forward_train(x)
    num_pems = model.get_classifier().num_pems
    assert out.logits.shape == (3, 6) and out.pem_logits.shape == (num_pems, 3, 6)
    log_prior = torch.log(torch.tensor([0.4, 0.2, 0.15, 0.1, 0.1, 0.05]))
    loss = (
        F.cross_entropy(out.logits, y)
        + logit_adjusted_cross_entropy(out.logits, y, log_prior)
        + one_way_logistic_loss(out.pem_logits, y)
    )
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_default_cfg_like_timm(name: str) -> None:
    """The checks of timm's tests/test_models.py::test_model_default_cfgs."""
    model = timm.create_model(name).eval()
    cfg = model.default_cfg
    state_dict = model.state_dict()
    x = torch.randn(1, *cfg["input_size"])
    assert model.forward_features(x).shape[-2:] == cfg["pool_size"]
    model.reset_classifier(0)
    assert model(x).shape == (1, model.num_features)
    model.reset_classifier(0, "")
    out = model(x)
    assert out.dim() == 4 and out.shape[-2:] == cfg["pool_size"]
    assert cfg["classifier"] + ".weight" in state_dict
    assert cfg["first_conv"] + ".weight" in state_dict
    assert cfg["num_classes"] == 10 and cfg["mean"] == npe_models.models.cifar_resnet.CIFAR10_MEAN


@pytest.mark.parametrize("name", IMAGENET_NPE_MODELS)
def test_imagenet_variant_cfg_names_base_layers(name: str) -> None:
    model = _small_model(name)
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name
    state_dict = model.state_dict()
    assert cfg["classifier"] + ".weight" in state_dict and cfg["classifier"] + ".pem_weight" in state_dict
    assert cfg["first_conv"] + ".weight" in state_dict
    assert model.num_classes == 1000


@pytest.mark.parametrize("name", NPE_MODELS)
def test_reset_classifier_keeps_pems_consistent(name: str) -> None:
    model = _small_model(name, num_classes=10, npe_alpha=0.5)
    num_pems = model.get_classifier().num_pems
    model.reset_classifier(3)
    head = model.get_classifier()
    assert isinstance(head, NPEHead)
    assert (head.num_classes, head.num_pems, head.alpha) == (3, num_pems, 0.5)
    assert head.pem_weight.shape[0] == 3 * num_pems
    assert model.forward_train(_input_for(name, batch=2)).pem_logits.shape == (num_pems, 2, 3)
    model.reset_classifier(0)
    with pytest.raises(RuntimeError, match="no PEMs"):
        model.forward_train(_input_for(name, batch=2))


@pytest.mark.parametrize("name", NPE_MODELS)
def test_merge_is_equivalent_and_leaves_base_architecture(name: str) -> None:
    model = _small_model(name, num_classes=10, npe_alpha=0.7)
    x = _input_for(name, batch=4)
    _calibrate_and_randomise(model, x)
    with torch.no_grad():
        before = model(x)
        merged = reparameterize_model(model)
        after = merged(x)
    assert (before - after).abs().max().item() <= 1e-5
    assert not any("pem" in n for n, _ in merged.named_parameters())
    base = _small_model(_base_name(name), num_classes=10)
    base.load_state_dict(merged.state_dict(), strict=True)
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in base.parameters())
    with pytest.raises(RuntimeError, match="merged"):
        merged.forward_train(x)
    # Merging an already merged model is a documented no-op.
    again = reparameterize_model(merged)
    assert torch.equal(again(x), after)


def test_npe_la_is_main_logits_minus_estimate() -> None:
    model = timm.create_model("resnet20_npe4", num_classes=5, npe_alpha=0.3)
    x = _input_for("resnet20_npe4", batch=2)
    _calibrate_and_randomise(model, x)
    with torch.no_grad():
        z = model.forward_train(x).logits
        eta = model.npe_estimate(x)
        assert torch.allclose(model(x), z - 0.3 * eta, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in CIFAR_MODELS if n.startswith("resnet20")])
def test_features_only(name: str) -> None:
    model = timm.create_model(name, features_only=True)
    feats = model(torch.randn(2, 3, 32, 32))
    assert [f.shape[1] for f in feats] == model.feature_info.channels() == [16, 16, 32, 64]
    assert [f.shape[-1] for f in feats] == [32, 32, 16, 8]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_intermediates_like_timm(name: str) -> None:
    """timm 1.0's feature API: final features as forward_features, one map per feature_info entry."""
    model = _small_model(name).eval()
    x = _input_for(name, batch=2)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        assert torch.allclose(final, model.forward_features(x), atol=1e-6)
        assert [m.shape[1] for m in maps] == [info["num_chs"] for info in model.feature_info]
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert len(last_two) == 2 and all(torch.equal(a, b) for a, b in zip(last_two, maps[-2:]))
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        assert len(early) == 1 and torch.equal(early[0], maps[1])


@pytest.mark.parametrize("name", ALL_MODELS)
def test_prune_intermediate_layers_keeps_the_asked_maps(name: str) -> None:
    model = _small_model(name).eval()
    x = _input_for(name, batch=2)
    with torch.no_grad():
        wanted = model.forward_intermediates(x, indices=[1], intermediates_only=True)[0]
        assert model.prune_intermediate_layers([1]) == [1]
        assert isinstance(model.get_classifier(), nn.Identity)
        assert torch.equal(model.forward_intermediates(x, indices=[1], intermediates_only=True)[0], wanted)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in _small_model(name).parameters())


@pytest.mark.parametrize("name", ALL_MODELS)
def test_features_only_getter_gives_the_hooked_maps(name: str) -> None:
    """``feature_cls="getter"`` (forward_intermediates) and the default features_only wrapper agree."""
    x = _input_for(name, batch=2)
    torch.manual_seed(0)
    hooked = _small_model(name, features_only=True).eval()
    torch.manual_seed(0)
    getter = _small_model(name, features_only=True, feature_cls="getter").eval()
    base = _small_model(_base_name(name), features_only=True)
    assert getter.feature_info.channels() == hooked.feature_info.channels() == base.feature_info.channels()
    with torch.no_grad():
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(getter(x), hooked(x), strict=True))


def test_pretrained_getter_features_come_from_the_checkpoint() -> None:
    model = timm.create_model("resnet32_npe16", pretrained=True).eval()
    getter = timm.create_model("resnet32_npe16", pretrained=True, features_only=True, feature_cls="getter").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(getter(x), model.forward_intermediates(x)[1], strict=True))


@pytest.mark.parametrize("name", SCRIPTED_MODELS)
def test_torchscript_matches_eager_unmerged_and_merged(name: str) -> None:
    model = _small_model(name, num_classes=5)
    x = _input_for(name, batch=2)
    if npe_models.has_pems(model):
        _calibrate_and_randomise(model, x)
    forms = [model.eval()] + ([reparameterize_model(model)] if npe_models.has_pems(model) else [])
    with torch.no_grad():
        for form in forms:
            assert torch.allclose(torch.jit.script(form)(x), form(x), atol=1e-5)


@pytest.mark.parametrize("name", ["resnet32", "resnet32_npe16"])
def test_fx_traced_and_scripted_matches_eager_like_timm(name: str) -> None:
    """timm's test_model_forward_fx_torchscript: FX-trace with timm's leaf modules, TorchScript the graph, run it."""
    from timm.layers import set_layer_config
    from timm.models._features_fx import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    tracer_kwargs = dict(
        leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True
    )
    with set_layer_config(exportable=True):
        model = _small_model(name, num_classes=5)
    x = _input_for(name, batch=2)
    if npe_models.has_pems(model):
        _calibrate_and_randomise(model, x)
    forms = [model.eval()] + ([reparameterize_model(model)] if npe_models.has_pems(model) else [])
    for form in forms:
        train_nodes, eval_nodes = get_graph_node_names(form, tracer_kwargs=tracer_kwargs)
        traced = create_feature_extractor(
            form,
            train_return_nodes=train_nodes[-1:],
            eval_return_nodes=eval_nodes[-1:],
            tracer_kwargs=tracer_kwargs,
        ).eval()
        scripted = torch.jit.script(traced)
        with torch.no_grad():
            (out,) = scripted(x).values()
            assert torch.allclose(out, form(x), atol=1e-5)


def test_grad_checkpointing_gives_the_same_gradients() -> None:
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    plain = timm.create_model("resnet20_npe4")
    torch.manual_seed(0)
    checkpointed = timm.create_model("resnet20_npe4")
    checkpointed.set_grad_checkpointing()
    for model in (plain, checkpointed):
        model.forward_train(x).logits.sum().backward()
    for (key, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), key


def test_pretrained_variant_loads_base_weights_and_keeps_fresh_pems(tmp_path) -> None:
    """``<arch>_npe16`` with pretrained=True takes the base's weights offline through a local file."""
    from safetensors.torch import save_file

    base = timm.create_model("resnet18", num_classes=1000)
    weights = tmp_path / "resnet18.safetensors"
    save_file(base.state_dict(), str(weights))
    model = timm.create_model("resnet18_npe16", pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
    for key, value in base.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    pem = model.get_classifier().pem_weight
    assert pem.std().item() == pytest.approx(1e-3, rel=0.1)


def test_cifar_variant_loads_plain_checkpoint(tmp_path) -> None:
    from safetensors.torch import save_file

    base = timm.create_model("resnet32")
    weights = tmp_path / "resnet32.safetensors"
    save_file(base.state_dict(), str(weights))
    model = timm.create_model("resnet32_npe4", pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
    assert torch.equal(model.fc.weight, base.fc.weight) and torch.equal(
        model.layer3[4].conv2.weight, base.layer3[4].conv2.weight
    )


def test_add_npe_on_any_timm_classifier() -> None:
    model = timm.create_model("mobilenetv3_small_050", num_classes=4)
    classifier = model.get_classifier()
    npe_model = npe_models.add_npe(model, num_pems=3, npe_alpha=0.5)
    assert npe_model is model and isinstance(model.get_classifier(), NPEHead)
    assert torch.equal(model.get_classifier().weight, classifier.weight)
    out = model.forward_train(torch.randn(2, 3, 64, 64))
    assert out.pem_logits.shape == (3, 2, 4)
    with pytest.raises(ValueError, match="already has PEMs"):
        npe_models.add_npe(model)


@pytest.mark.parametrize("num_pems", [0, -1, 1.5, True])
def test_bad_num_pems(num_pems) -> None:
    with pytest.raises(ValueError, match="num_pems"):
        npe_models.add_npe(timm.create_model("resnet20"), num_pems=num_pems)


def test_add_npe_rejects_non_timm_module() -> None:
    with pytest.raises(TypeError, match="timm classifier"):
        npe_models.add_npe(nn.Linear(3, 4))


def test_add_npe_rejects_bad_sign_convention() -> None:
    with pytest.raises(ValueError, match=r"npe_t \(--npe-t\) must be an integer >= 0 and <= 1; got 2"):
        npe_models.add_npe(timm.create_model("resnet20"), num_pems=2, npe_t=2)


def test_npe_heads_has_pems_and_set_alpha_on_classifiers() -> None:
    model = timm.create_model("resnet20_npe4", num_classes=5)
    assert npe_models.npe_heads(model) == [model.fc] and npe_models.has_pems(model)
    npe_models.set_alpha(model, 0.25)
    assert model.fc.alpha == 0.25
    with pytest.raises(ValueError, match=r"npe_alpha \(--npe-alpha\) must be a finite number >= 0; got '0.5'"):
        npe_models.set_alpha(model, "0.5")
    plain = timm.create_model("resnet20", num_classes=5)
    merged = reparameterize_model(model)
    for no_pems in (plain, merged):
        assert npe_models.npe_heads(no_pems) == [] and not npe_models.has_pems(no_pems)
        with pytest.raises(ValueError, match="before merging"):
            npe_models.set_alpha(no_pems, 0.5)


@pytest.mark.parametrize(
    "name,expected",
    [
        ("resnet32_npe16.cifar10_lt_r100_hp2", ("resnet32", 16)),
        ("resnet32", ("resnet32", 0)),
        ("resnet32.cifar10_lt_r100_hp2", ("resnet32", 0)),
        ("unet_fcn_npe1", ("unet_fcn", 1)),
        ("vit_small_patch16_224_npe16.augreg_in21k_ft_in1k", ("vit_small_patch16_224", 16)),
    ],
)
def test_parse_npe_name(name: str, expected: tuple[str, int]) -> None:
    assert npe_models.parse_npe_name(name) == expected
    assert npe_models.npe_model_name(*expected) == name.split(".", 1)[0]


def test_parse_npe_name_errors() -> None:
    with pytest.raises(ValueError, match="plain name 'resnet32'"):
        npe_models.parse_npe_name("resnet32_npe0")
    with pytest.raises(TypeError, match="string"):
        npe_models.parse_npe_name(32)


def test_cifar_npe_variant_is_add_npe_on_the_plain_resnet() -> None:
    model = timm.create_model("resnet32_npe16", num_classes=10, npe_alpha=0.5, npe_t=0)
    plain = timm.create_model("resnet32", num_classes=10)
    assert isinstance(model, npe_models.models.CifarResNet) and type(plain) is npe_models.models.CifarResNet
    assert not isinstance(plain, npe_models.NPEClassifierMixin) and isinstance(model, npe_models.NPEClassifierMixin)
    assert (model.fc.num_pems, model.fc.t, model.fc.alpha) == (16, 0, 0.5)
    pem_keys = {"fc.pem_weight": (160, 64), "fc.pem_bias": (160,)}
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert shapes == {**{key: tuple(value.shape) for key, value in plain.state_dict().items()}, **pem_keys}
    assert timm.models.model_entrypoint("resnet32_npe16").__doc__.startswith("ResNet-32 for CIFAR")


@pytest.mark.parametrize("name", ["resnet20_npe4", "resnet18_npe16"])
def test_reset_classifier_after_no_classes_brings_fresh_pems_back(name: str) -> None:
    model = _small_model(name, num_classes=10, npe_alpha=0.5)
    model.reset_classifier(0)
    assert not npe_models.has_pems(model)
    model.reset_classifier(4)
    head = model.get_classifier()
    assert isinstance(head, NPEHead) and (head.num_classes, head.alpha) == (4, 0.5)
    assert head.pem_weight.std().item() == pytest.approx(1e-3, rel=0.2)


def test_features_only_out_indices_do_not_leak_between_builds() -> None:
    some = timm.create_model("resnet20_npe4", features_only=True, out_indices=(1, 2))
    assert some.feature_info.channels() == [16, 32]
    every = timm.create_model("resnet20_npe4", features_only=True)
    assert every.feature_info.channels() == [16, 16, 32, 64]


def test_register_variants_registers_documented_timm_entrypoints(monkeypatch: pytest.MonkeyPatch) -> None:
    import inspect
    import sys
    import types

    from npe_models.models._registry import register_variants

    module = types.ModuleType("npe_models_probe_family")
    module.default_cfgs = {}
    monkeypatch.setitem(sys.modules, module.__name__, module)
    calls = []

    def create(variant, pretrained=False, *, width, **kwargs):
        calls.append((variant, pretrained, width, kwargs.get("num_classes")))
        return nn.Identity()

    def doc(name, width):
        return f"Probe network {name} of width {width}."

    entrypoints = register_variants({"probe_w8": dict(width=8)}, create, doc=doc, module=module.__name__)
    try:
        assert timm.models.model_entrypoint("probe_w8") is entrypoints["probe_w8"] is module.probe_w8
        timm.create_model("probe_w8", num_classes=3)
        module.probe_w8(True)
        assert calls == [("probe_w8", False, 8, 3), ("probe_w8", True, 8, None)]
        assert module.probe_w8.__doc__ == "Probe network probe_w8 of width 8."
        assert list(inspect.signature(module.probe_w8).parameters) == ["pretrained", "kwargs"]
    finally:
        timm.models._registry._clear_model_entries("probe_w8")
    with pytest.raises(ValueError, match="registry must be one of"):
        register_variants({}, create, doc=doc, registry="keras")
