"""What metadata users read: the shipped checkpoints' timm cfgs (paper, origin, notes) and the Hub model cards
(base model, a model-index that keeps the exact test images apart, timm's usage sections, parameters and GMACs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import timm
import torch
from huggingface_hub import ModelCard, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results
from onnx_validate import random_model_for_parity  # export/, on the test path
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from npe_models.cli import main
from npe_models.hub import CITATION, has_pretrained_card, pretrained_card, save_for_hub, save_pretrained_for_hub
from npe_models.loading import load_model
from npe_models.models._bundled import shipped_checkpoints
from npe_models.segmentation.config import shipped_segmentation_weights

SHIPPED = shipped_checkpoints()
CRT = "resnet32.cifar10_lt_r100_hp2_crt"
POSTHOC_LA = "resnet32.cifar10_lt_r100_hp2_posthoc_la"
CE = "resnet32.cifar10_lt_r100_hp2"


def test_shipped_cfgs_name_the_paper_its_code_and_what_each_checkpoint_is() -> None:
    for name, entry in SHIPPED.items():
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.paper_name and f"title   = {{{cfg.paper_name}}}" in CITATION
        assert cfg.paper_ids == "arXiv:2602.17853" and cfg.paper_ids in CITATION
        assert cfg.origin_url == "https://github.com/masoudya/neural-prior-estimator"
        assert isinstance(cfg.notes, tuple) and all(isinstance(note, str) and note for note in cfg.notes)
        assert "JPEG" in cfg.notes[-1] and "1,000 exact images" in cfg.notes[-1]
        if "starts_from" in entry:
            assert entry["starts_from"] in cfg.notes[0]
    assert (
        "folded into the classifier"
        in timm.models.get_pretrained_cfg("resnet32.cifar10_lt_r100_hp2_npe16_merged").notes[0]
    )


def test_hub_config_carries_the_cfg_metadata(tmp_path: Path) -> None:
    config = json.loads((save_pretrained_for_hub(CRT, tmp_path / CRT) / "config.json").read_text())["pretrained_cfg"]
    cfg = timm.models.get_pretrained_cfg(CRT)
    assert config["paper_name"] == cfg.paper_name and config["origin_url"] == cfg.origin_url
    assert tuple(config["notes"]) == cfg.notes


def _model_index(card_path: Path) -> list:
    """The card's model-index, read back with huggingface_hub's own eval-results reader."""
    _, results = model_index_to_eval_results(metadata_load(card_path)["model-index"])
    return results


def test_shipped_card_reports_the_exact_images_apart_and_names_its_base_model(tmp_path: Path) -> None:
    folder = save_pretrained_for_hub(CRT, tmp_path / CRT)
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model == timm.models.get_pretrained_cfg(CE).hf_hub_id == f"npe-models/{CE}"
    results = _model_index(folder / "README.md")
    assert [(r.dataset_name, r.metric_value) for r in results] == [
        (r.dataset_name, r.metric_value) for r in card.data.eval_results
    ]
    by_split = {}
    for result in results:
        by_split.setdefault(result.dataset_split, {})[result.metric_config] = result
    assert set(by_split) == {"test", "test[:1000]"}, "the exact images are an entry of their own"
    exact, full = by_split["test[:1000]"][None], by_split["test"][None]
    assert exact.metric_value == round(SHIPPED[CRT]["metrics"]["exact"]["top1"], 2)
    assert full.metric_value == round(SHIPPED[CRT]["metrics"]["full"]["top1"], 2)
    assert "1,000 exact images" in exact.dataset_name and "JPEG-recovered" in full.dataset_name
    assert full.dataset_config == "jpeg-recovered"
    assert all(r.dataset_type == "cifar10" and r.dataset_name != "CIFAR-10 test set" for r in results)


def test_only_cards_made_from_another_checkpoint_name_a_base_model() -> None:
    assert pretrained_card(POSTHOC_LA)["base_model"] == f"npe-models/{CE}"
    assert pretrained_card(CE)["base_model"] is None
    assert pretrained_card("resnet32.cifar10_lt_r100_hp2_npe16_merged")["base_model"] is None


def _code_blocks(text: str, section: str) -> list[str]:
    body = text.split(f"### {section}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


def test_card_usage_sections_run_and_model_stats_match_the_model(tmp_path: Path) -> None:
    model, _ = random_model_for_parity("resnet20_npe4", seed=3)
    folder = save_for_hub(model, tmp_path / "card")
    text = (folder / "README.md").read_text()
    image = Image.fromarray(torch.randint(0, 255, (32, 32, 3), dtype=torch.uint8).numpy())
    outputs = {}
    for section, result in (
        ("Image Classification", "logits"),
        ("Feature Map Extraction", "feature_map"),
        ("Image Embeddings", "embedding"),
    ):
        (code,) = _code_blocks(text, section)
        scope = {"image": image, "print": lambda *args: None}
        exec(code.replace("/path/to/this/folder", str(folder)), scope)
        outputs[section] = scope[result]
    assert outputs["Image Classification"].shape == (1, 10)
    assert outputs["Feature Map Extraction"].shape == (1, 64, 8, 8)
    assert outputs["Image Embeddings"].shape == (1, 64) and "# (1, 64)" in text and "# unpooled, (1, 64, 8, 8)" in text

    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, 32, 32))
    assert f"  - Params (M): {params / 1e6:.3g} ({params:,} parameters)\n" in text
    assert f"  - GMACs: {counter.get_total_flops() / 2e9:.3g}\n" in text
    assert "  - Image size: 32 x 32\n" in text


def _stare_scores(name: str) -> dict:
    """The recorded STARE scores of shipped segmentation weights: ``{masks: {alpha: scores}}``."""
    return shipped_segmentation_weights(name)[1].meta["_metrics"]


def test_shipped_segmentation_weights_get_a_card_with_their_data_and_recorded_metrics(tmp_path: Path) -> None:
    folder = save_pretrained_for_hub("unet_fcn_npe1", tmp_path / "unet")
    text = (folder / "README.md").read_text()
    saved, shipped = load_model(folder).model, load_model("unet_fcn_npe1", pretrained=True).model
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():  # the folder holds the shipped weights
        assert torch.equal(saved(images)["out"], shipped(images)["out"])
    assert "STARE" in text and "Hoover" in text and "sliding window 128/85" in text
    results = _model_index(folder / "README.md")
    assert {r.dataset_type for r in results} == {"stare"} and {r.dataset_split for r in results} == {"validation"}
    recorded = _stare_scores("unet_fcn_npe1")
    by_name = {(r.dataset_name, r.metric_name): r.metric_value for r in results}
    for masks, alpha, label in [("ah", "0", "main logits (alpha 0)"), ("vk", "0.1", "NPE-LA alpha 0.1")]:
        scores = recorded[f"STARE-val-{masks}"][alpha]
        dataset = f"STARE, '{masks}' masks, {label}"
        assert by_name[(dataset, "Mean Dice")] == round(100 * scores["mean_dice"], 2)
        assert by_name[(dataset, "Mean IoU")] == round(100 * scores["mean_iou"], 2)
    # every recorded NPE-LA strength in the notes' table, e.g. the best 'ah' mDice at alpha 0.5
    assert f"| 'ah' | NPE-LA alpha 0.5 | {100 * recorded['STARE-val-ah']['0.5']['mean_dice']:.2f} |" in text


def test_the_baseline_weights_card_has_only_the_main_logits() -> None:
    card = pretrained_card("unet_fcn.STARE")
    assert card["label_names"] == ["background", "vessel"] and card["recipe"]["iterations"] == 20000
    assert {r.dataset_name for r in card["eval_results"]} == {
        "STARE, 'ah' masks, main logits (alpha 0)",
        "STARE, 'vk' masks, main logits (alpha 0)",
    }
    assert has_pretrained_card("unet_fcn_npe1") and has_pretrained_card(CE) and not has_pretrained_card("unet_fcn")


def test_export_hub_pretrained_segmentation_weights_writes_their_card(tmp_path: Path) -> None:
    assert main(["export", "hub", "unet_fcn_npe1", "--pretrained", "-o", str(tmp_path / "unet")]) == 0
    assert "| 'ah' | NPE-LA alpha 0.5 |" in (tmp_path / "unet" / "README.md").read_text()
