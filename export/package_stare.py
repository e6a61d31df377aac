r"""Ship a finished STARE NPE run and the baseline it was trained on as bundled torchvision-style weights.

    python export/package_stare.py runs/stare_unet16_i6000_npe1_fcn --data-dir ../shared/data

Scores the NPE run on the STARE validation images (both annotations, MMSegmentation's sliding
window, 128 px crops at stride 85) at alpha 0 (the main logits: the frozen baseline) and at the
paper's Table 6 strengths, writes its weights to ``npe_models/weights/`` and the two entries of
``manifest.json``'s ``segmentation`` section that ``npe_models.models.unet.UNet_FCN_Weights``
reads (the baseline is the same file without the PEM). Refuses unfinished runs and a PEM run whose
network differs from its baseline's. Where a clone lacks a finished run's ``model.safetensors`` (git keeps the zoo's
records, not their weights), it is written back from the shipped file first (``zoo.restore_weights``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Subset

from npe_models.data.stare import StareSegmentation
from npe_models.files import file_sha256
from npe_models.models._bundled import MANIFEST_FILE, WEIGHTS_DIR
from npe_models.runs import LOG_FILE, read_jsonl, read_run_config
from npe_models.segmentation import evaluate_segmentation, load_segmentation_model
from npe_models.segmentation.config import SegmentationModelConfig
from zoo import restore_weights, write_manifest

STARE_EVALUATION = dict(mode="slide", crop_size=(128, 128), stride=(85, 85))
STARE_ALPHAS = (0.0, 1.0, 0.5, 0.2, 0.1)
BASELINE_NAME, NPE_NAME = "unet_fcn.stare", "unet_fcn_npe1.stare_fcn"
RECIPE = (
    "benchmarks/bench_segmentation.py stare: the UNet-FCN baseline (aux head, weight 0.4) from random init, batch 4, "
    "random 128x128 crops with flips, SGD momentum 0.9, wd 5e-4, lr {baseline_lr:g} with poly decay (power 0.9), then "
    "everything frozen and one PEM trained with the dense one-way logistic loss, lr {pem_lr:g} x0.1 at 1/3 and 2/3 of "
    "its iterations"
)


def stare_metrics(model: nn.Module, config: SegmentationModelConfig, data_dir: str) -> dict[str, dict[str, Any]]:
    """``{"STARE-val-<annotation>": {alpha: metrics}}`` of an NPE model on the validation images (alpha 0: its
    main logits), as the tests recompute them."""
    return {
        f"STARE-val-{annotation}": {
            f"{alpha:g}": metrics.to_dict()
            for alpha, metrics in evaluate_segmentation(
                model,
                StareSegmentation(data_dir, "val", annotation),
                num_classes=config.num_classes,
                mean=config.mean,
                std=config.std,
                alphas=STARE_ALPHAS,
                class_names=config.class_names,
                **STARE_EVALUATION,
            ).items()
        }
        for annotation in ("ah", "vk")
    }


def stare_quick_check(model: nn.Module, config: SegmentationModelConfig, data_dir: str) -> dict[str, Any]:
    """Mean Dice per alpha on the first 'vk' validation image, whole-image inference: a check that takes seconds."""
    images = StareSegmentation(data_dir, "val", "vk")
    first = Subset(images, [0])
    results = evaluate_segmentation(
        model,
        first,
        num_classes=config.num_classes,
        mean=config.mean,
        std=config.std,
        alphas=STARE_ALPHAS,
        mode="whole",
    )
    return {
        "image": images.ids[0],
        "annotation": "vk",
        "mode": "whole",
        "mean_dice": {f"{alpha:g}": metrics.mean_dice for alpha, metrics in results.items()},
    }


def _finished_iterations(run: Path, settings: dict[str, Any]) -> int:
    """The iterations of a finished run (``settings``: its config.json); an unfinished one is an error. Its weights
    are written back from the shipped file where a clone lacks them."""
    done = read_jsonl(run / LOG_FILE)[-1]["iteration"] if (run / LOG_FILE).is_file() else 0
    if done != settings["train"]["iterations"]:
        raise SystemExit(f"{run} is not finished ({done} of {settings['train']['iterations']} iterations).")
    restore_weights(run)
    return done


def _same_network(npe: nn.Module, baseline: nn.Module) -> None:
    state = npe.state_dict()
    different = [key for key, value in baseline.state_dict().items() if not torch.equal(state[key], value)]
    if different:
        raise SystemExit(f"the PEM run changed its baseline's network ({different[:3]}...): it was not frozen.")


def _meta(config: SegmentationModelConfig, model: nn.Module, file: str, **fields: Any) -> dict[str, Any]:
    return {
        "file": file,
        "sha256": file_sha256(WEIGHTS_DIR / file),
        "categories": list(config.class_names),
        "mean": list(config.mean),
        "std": list(config.std),
        "model_kwargs": {"aux_loss": config.aux_loss, "num_stages": 5, **config.model_kwargs},
        "num_params": sum(p.numel() for p in model.parameters()),
        "evaluation": "STARE validation split (last 10 ids sorted; 'ah' masks exist for 8), sliding window 128/85",
        **fields,
    }


def package_stare(npe_run: Path, data_dir: str, manifest: Optional[Path] = None) -> dict[str, dict[str, Any]]:
    """Write the weights file and the manifest entries of the baseline and its NPE form; returns the entries."""
    npe_settings = read_run_config(npe_run, "segmentation")
    baseline_run = Path(npe_settings["data"]["init"])
    baseline_settings = read_run_config(baseline_run, "segmentation")
    iterations = {
        "baseline": _finished_iterations(baseline_run, baseline_settings),
        "pem": _finished_iterations(npe_run, npe_settings),
    }
    npe, config = load_segmentation_model(npe_run)
    baseline, baseline_config = load_segmentation_model(baseline_run)
    _same_network(npe, baseline)
    file = f"{NPE_NAME}.safetensors"
    save_file(npe.state_dict(), str(WEIGHTS_DIR / file))
    (WEIGHTS_DIR / file).chmod(0o644)  # package data: readable by every user of an installed package
    metrics = stare_metrics(npe, config, data_dir)
    recipe = RECIPE.format(baseline_lr=baseline_settings["train"]["lr"], pem_lr=npe_settings["train"]["lr"])
    entries = {
        BASELINE_NAME: _meta(
            baseline_config,
            baseline,
            file,
            recipe=recipe,
            num_pems=0,
            iterations=iterations["baseline"],
            _metrics={key: {"0": by_alpha["0"]} for key, by_alpha in metrics.items()},
        ),
        NPE_NAME: _meta(
            config,
            npe,
            file,
            recipe=recipe,
            num_pems=1,
            pem_type=config.pem_type,
            iterations=iterations,
            _metrics=metrics,
            quick_check=stare_quick_check(npe, config, data_dir),
        ),
    }
    write_manifest(entries, manifest or MANIFEST_FILE, section="segmentation")
    return entries


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("npe_run", type=Path, help="finished run of unet_fcn_npe1 with an fcn PEM on a frozen baseline")
    parser.add_argument("--data-dir", required=True, help="data root holding stare/")
    args = parser.parse_args()
    for name, entry in package_stare(args.npe_run, args.data_dir).items():
        scores = {
            key: {alpha: round(100 * m["mean_dice"], 2) for alpha, m in by_alpha.items()}
            for key, by_alpha in entry["_metrics"].items()
        }
        print(f"shipped {name}: {entry['file']} ({entry['sha256'][:12]}), mDice {scores}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
