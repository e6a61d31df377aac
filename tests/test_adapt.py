"""Prior shift (issue 14): EM + BCTS and BBSE recover a known prior, bad input fails in one line, the prior folds
into a plain exportable model, and the streaming adapter follows a change of class mix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from torch import nn

import npe_models  # registers the models
import npe_models.loading
from npe_models import adapt
from npe_models.data import load_cifar, long_tailed_indices
from npe_models.describe import describe_model

NUM_CLASSES, DIM = 5, 8
TARGET = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03], dtype=torch.float64)
MAX_TV = 0.03  # 5,000 target images: the sample's own mix is ~0.01-0.02 TV from TARGET


class _Gaussians:
    """Unit-variance Gaussian classes; logits are an overconfident, biased version of the exact balanced ones."""

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.means = 1.5 * torch.randn(NUM_CLASSES, DIM, generator=self.generator)

    def sample(self, prior: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.multinomial(prior.float(), count, replacement=True, generator=self.generator)
        x = self.means[labels] + torch.randn(count, DIM, generator=self.generator)
        balanced = -0.5 * ((x[:, None] - self.means[None]) ** 2).sum(-1)
        return 3.0 * balanced + torch.linspace(-0.5, 0.5, NUM_CLASSES), labels


@pytest.fixture(scope="module")
def gaussians() -> dict[str, torch.Tensor]:
    source = _Gaussians()
    cal_logits, cal_labels = source.sample(torch.ones(NUM_CLASSES) / NUM_CLASSES, 2000)
    target_logits, _ = source.sample(TARGET, 5000)
    return {"cal_logits": cal_logits, "cal_labels": cal_labels, "target_logits": target_logits, "source": source}


def test_em_with_bcts_recovers_the_prior(gaussians) -> None:
    calibration = adapt.fit_bcts(gaussians["cal_logits"], gaussians["cal_labels"])
    assert calibration.temperature == pytest.approx(3.0, rel=0.1)  # undoes the overconfidence
    prior = adapt.em_prior(calibration(gaussians["target_logits"]))
    assert float(prior.sum()) == pytest.approx(1.0)
    assert adapt.total_variation(prior, TARGET) < MAX_TV


def test_em_on_source_prior_logits_equals_em_on_balanced_ones(gaussians) -> None:
    """Plain cross-entropy logits carry the training prior; passing it as source_prior gives the balanced answer."""
    source_prior = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    balanced = adapt.fit_bcts(gaussians["cal_logits"], gaussians["cal_labels"])(gaussians["target_logits"])
    from_source = adapt.em_prior(balanced + source_prior.log(), source_prior=source_prior)
    torch.testing.assert_close(from_source, adapt.em_prior(balanced), atol=1e-5, rtol=0)


def test_bcts_with_a_source_prior_returns_balanced_logits(gaussians) -> None:
    source_prior = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    shifted = gaussians["cal_logits"] + source_prior.log()
    plain = adapt.fit_bcts(gaussians["cal_logits"], gaussians["cal_labels"])
    corrected = adapt.fit_bcts(shifted, gaussians["cal_labels"], source_prior=source_prior)
    x = gaussians["target_logits"][:50]
    torch.testing.assert_close(corrected(x + source_prior.log()), plain(x), atol=1e-4, rtol=0)


def test_bbse_recovers_the_prior(gaussians) -> None:
    prior = adapt.bbse_prior(gaussians["target_logits"], gaussians["cal_logits"], gaussians["cal_labels"])
    assert adapt.total_variation(prior, TARGET) < MAX_TV


def _missing_class(labels: torch.Tensor) -> torch.Tensor:
    return torch.where(labels == 2, torch.zeros_like(labels), labels)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda g: adapt.em_prior(torch.empty(0, NUM_CLASSES)), "empty"),
        (
            lambda g: adapt.bbse_prior(g["target_logits"][:, :4], g["cal_logits"], g["cal_labels"]),
            "has 5 classes, expected 4",
        ),
        (lambda g: adapt.em_prior(g["target_logits"], init=torch.ones(4)), "one entry per class"),
        (lambda g: adapt.em_prior(torch.tensor([[0.0, float("nan"), 1.0, 0.0, 0.0]])), "non-finite"),
        (lambda g: adapt.fit_bcts(g["cal_logits"].clone().fill_(float("inf")), g["cal_labels"]), "non-finite"),
        (lambda g: adapt.fit_bcts(g["cal_logits"], _missing_class(g["cal_labels"])), r"no image of classes \[2\]"),
        (
            lambda g: adapt.bbse_prior(g["target_logits"], g["cal_logits"], _missing_class(g["cal_labels"])),
            r"classes \[2\]",
        ),
        (lambda g: adapt.fit_bcts(g["cal_logits"], g["cal_labels"][:10]), "integer class indices"),
    ],
    ids=[
        "empty",
        "class-count",
        "init-length",
        "nan",
        "inf",
        "bcts-missing-class",
        "bbse-missing-class",
        "label-count",
    ],
)
def test_bad_input_gives_a_one_line_error(gaussians, call, message) -> None:
    with pytest.raises(ValueError, match=message) as error:
        call(gaussians)
    assert "\n" not in str(error.value)


LOG_PRIOR = torch.log(torch.tensor([0.02, 0.03, 0.05, 0.05, 0.05, 0.1, 0.1, 0.15, 0.2, 0.25]))


@pytest.fixture(scope="module")
def npe16() -> nn.Module:
    return timm.create_model("resnet32_npe16", pretrained=True).eval()


def test_folded_model_is_logits_plus_log_prior_and_a_plain_resnet32(npe16) -> None:
    adapted = adapt.adapt_prior(npe16, LOG_PRIOR, data="synthetic")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), npe16(x) + LOG_PRIOR, atol=1e-5, rtol=0)
    timm.create_model("resnet32").load_state_dict(adapted.state_dict(), strict=True)
    assert npe_models.has_pems(npe16)  # the source model is left as it was
    record = adapted.pretrained_cfg[adapt.TARGET_PRIOR_KEY]
    assert record["data"] == "synthetic" and record["temperature"] is None
    np.testing.assert_allclose(record["prior"], LOG_PRIOR.exp().numpy(), atol=1e-6)
    assert describe_model(adapted).target_prior == record


def test_folded_calibration_matches_the_calibrated_logits(npe16) -> None:
    calibration = adapt.Calibration(1.7, torch.linspace(-0.3, 0.3, 10, dtype=torch.float64))
    adapted = adapt.adapt_prior(npe16, LOG_PRIOR, calibration=calibration)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x).double(), calibration(npe16(x)) + LOG_PRIOR, atol=1e-5, rtol=0)


def test_folded_model_exports_to_onnx_with_its_record(npe16, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from npe_models.onnx import check_parity, export_onnx, read_onnx_metadata

    adapted = adapt.adapt_prior(npe16, LOG_PRIOR, data="synthetic")
    path = export_onnx(adapted, tmp_path / "adapted.onnx")
    assert check_parity(adapted, path).passed
    metadata = read_onnx_metadata(path)
    assert metadata["architecture"] == "resnet32" and metadata["target_prior"]["data"] == "synthetic"


def test_folded_model_travels_through_the_hub_with_its_record(npe16, tmp_path) -> None:
    from npe_models.hub import load_from_hub, save_for_hub

    adapted = adapt.adapt_prior(npe16, LOG_PRIOR, data="synthetic")
    save_for_hub(adapted, tmp_path / "hub")
    loaded = load_from_hub(tmp_path / "hub").eval()
    assert loaded.pretrained_cfg[adapt.TARGET_PRIOR_KEY] == adapted.pretrained_cfg[adapt.TARGET_PRIOR_KEY]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), adapted(x))


def test_adapt_prior_rejects_a_wrong_prior_length(npe16) -> None:
    with pytest.raises(ValueError, match="one per class"):
        adapt.adapt_prior(npe16, torch.zeros(9))


class _Logits(nn.Module):
    """A 'model' whose input is already its logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_streaming_adapter_follows_a_step_change_within_its_window(gaussians) -> None:
    source, window, batch = gaussians["source"], 1000, 100
    calibration = adapt.fit_bcts(gaussians["cal_logits"], gaussians["cal_labels"])
    before, after = TARGET, TARGET.flip(0)
    estimator = adapt.OnlinePriorEstimator(NUM_CLASSES, window)
    streaming = adapt.StreamingPriorAdapter(_Logits(), estimator, calibration)
    for prior in (before, after):
        for _ in range(window // batch):
            logits, _ = source.sample(prior, batch)
            out = streaming(logits)
        assert adapt.total_variation(estimator.prior, prior) < 0.05
    torch.testing.assert_close(out.double(), calibration(logits) + estimator.prior.log(), atol=1e-5, rtol=1e-5)
    estimator.reset()
    torch.testing.assert_close(estimator.prior, torch.full((NUM_CLASSES,), 0.2, dtype=torch.float64))


def test_cifar_calibration_set_holds_out_the_long_tailed_subset(data_dir) -> None:
    with pytest.warns(UserWarning, match=r"classes \[0\]"):
        held_out = adapt.cifar_calibration_set(data_dir, per_class=200)
    assert np.bincount(held_out.labels).tolist() == [200] * 10
    train = load_cifar(data_dir)
    used = long_tailed_indices(train.labels, 100.0, 10)
    used_images = {train.images[i].tobytes() for i in used if train.labels[i] != 0}
    assert not any(image.tobytes() in used_images for image in held_out.images[held_out.labels != 0])


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("uniform", [0.25] * 4),
        ("train", [0.5, 0.3, 0.15, 0.05]),
        ("inverse", [0.05, 0.15, 0.3, 0.5]),
        ([1, 1, 2, 0], [0.25, 0.25, 0.5, 0]),
    ],
)
def test_resolve_target_prior(spec, expected) -> None:
    from npe_models.classification.evaluate import resolve_target_prior

    np.testing.assert_allclose(resolve_target_prior(spec, [500, 300, 150, 50]), expected)


def test_resolve_target_prior_reads_files_and_dirichlet_draws(tmp_path) -> None:
    from npe_models.classification.evaluate import resolve_target_prior

    (tmp_path / "list.json").write_text("[1, 3]")
    (tmp_path / "adapt.json").write_text('{"prior": [0.2, 0.8], "data": "x"}')
    np.testing.assert_allclose(resolve_target_prior(str(tmp_path / "list.json"), [5, 1]), [0.25, 0.75])
    np.testing.assert_allclose(resolve_target_prior(str(tmp_path / "adapt.json"), [5, 1]), [0.2, 0.8])
    draw = resolve_target_prior("dirichlet:0.5", [5, 1, 1])
    np.testing.assert_array_equal(draw, resolve_target_prior("dirichlet:0.5", [5, 1, 1]))  # seeded
    for bad in ("dirichlet:-1", "skewed", [1.0, -1.0]):
        with pytest.raises(ValueError, match="dirichlet|target prior"):
            resolve_target_prior(bad, [5, 1])


def _npz(path, images: np.ndarray, labels: np.ndarray) -> str:
    np.savez(path, x=images, y=labels)
    return str(path)


@pytest.fixture(scope="module")
def skewed(data_dir, tmp_path_factory) -> dict:
    """npz files of CIFAR-10 test images: unlabeled ones skewed toward the last classes (5, 15, ..., 95 per class) and
    20 labeled ones per class (calibration for a test only: real calibration data never comes from the test set)."""
    folder = tmp_path_factory.mktemp("skewed")
    test = load_cifar(data_dir, train=False)
    rng = np.random.default_rng(0)
    unlabeled = np.concatenate(
        [rng.choice(np.flatnonzero(test.labels == c), 5 + 10 * c, replace=False) for c in range(10)]
    )
    labeled = np.concatenate([rng.choice(np.flatnonzero(test.labels == c), 20, replace=False) for c in range(10)])
    return {
        "test": test,
        "unlabeled": unlabeled,
        "labeled": labeled,
        "unlabeled.npz": _npz(folder / "unlabeled.npz", test.images[unlabeled], test.labels[unlabeled]),
        "calibration.npz": _npz(folder / "calibration.npz", test.images[labeled], test.labels[labeled]),
    }


def _adapt(skewed: dict, out, *options: str) -> dict:
    from npe_models.cli import main

    assert (
        main(
            [
                "adapt",
                *options,
                "--pretrained",
                "--unlabeled",
                skewed["unlabeled.npz"],
                "--calibration",
                skewed["calibration.npz"],
                "--out",
                str(out),
            ]
        )
        == 0
    )
    return json.loads((out / "prior.json").read_text())


def test_adapt_command_folds_an_estimate_and_evaluate_scores_a_target_mix(skewed, tmp_path, capsys) -> None:
    """npe-models adapt on the skewed images, then evaluate the adapted model under adapt's prior.json."""
    from npe_models.cli import main

    out = tmp_path / "adapted"
    written = _adapt(skewed, out, "resnet32_npe16.cifar10_lt_r100_hp2")
    assert "estimated prior" in capsys.readouterr().out
    record = npe_models.loading.load_model(str(out)).model.pretrained_cfg[adapt.TARGET_PRIOR_KEY]
    assert record["prior"] == written["prior"] and record["prior"][9] > 5 * record["prior"][0]
    timm.create_model("resnet32").load_state_dict(timm.create_model(f"local-dir:{out}", pretrained=True).state_dict())
    test, toy = skewed["test"], tmp_path / "toy"
    toy.mkdir()
    _npz(toy / "train.npz", test.images[skewed["labeled"]], test.labels[skewed["labeled"]])
    np.savez(
        toy / "test.npz",
        x=test.images[skewed["unlabeled"]],
        y=test.labels[skewed["unlabeled"]],
        lossless=np.ones(len(skewed["unlabeled"]), bool),
    )
    assert (
        main(
            [
                "evaluate",
                str(out),
                "--data-dir",
                str(toy),
                "--rho",
                "1",
                "--target-prior",
                str(out / "prior.json"),
                "--sets",
                "full",
                "--out",
                str(tmp_path / "eval"),
                "--no-progress",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    scores = metrics["sets"]["full"]["plain"]
    assert scores["target_top1"] == pytest.approx(
        sum(p * a for p, a in zip(metrics["target_prior"], scores["per_class"]))
    )
    np.testing.assert_allclose(metrics["target_prior"], record["prior"], atol=1e-9)


def test_adapt_command_removes_the_training_prior_of_plain_cross_entropy(skewed, data_dir, tmp_path) -> None:
    written = _adapt(
        skewed,
        tmp_path / "ce",
        "resnet32.cifar10_lt_r100_hp2",
        "--source-prior",
        "train",
        "--method",
        "bbse",
        "--data-dir",
        str(data_dir),
    )  # the training counts come from the data
    assert written["method"] == "bbse" and written["prior"][9] > 5 * written["prior"][0]


def test_prior_record_is_the_one_format_of_prior_json(tmp_path) -> None:
    """adapt writes prior.json through PriorRecord and evaluate reads it back through the same type; a bare list of
    weights reads too, and a record with unknown keys or unusable weights is refused by name."""
    from npe_models.priors import PriorRecord

    record = PriorRecord(prior=(0.5, 0.25, 0.25), temperature=1.5, data="test", class_names=("a", "b", "c"))
    assert PriorRecord.read(record.write(tmp_path)) == record
    (tmp_path / "weights.json").write_text("[1, 2, 1]")
    assert PriorRecord.read(tmp_path / "weights.json").prior == (1, 2, 1)
    (tmp_path / "odd.json").write_text('{"prior": [1, 1], "mixture": 3}')
    with pytest.raises(ValueError, match=r"unknown keys \['mixture'\]"):
        PriorRecord.read(tmp_path / "odd.json")
    with pytest.raises(ValueError, match="finite non-negative weights"):
        PriorRecord(prior=(1.0, float("nan")))
