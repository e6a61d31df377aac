r"""The pretrained zoo's results table for RESULTS.md: every run in zoo/, finished or not, beside the paper.

    python benchmarks/zoo_report.py --zoo zoo

For each run directory (``benchmarks/train_cifar10_lt_zoo.sh`` writes them) it prints top-1 on the
full 10,000-image test set and on its 1,000 exact images, Many/Medium/Few (full set), the JPEG
penalty (exact images minus their JPEG twins), the estimate's correlation with log counts, the
wall time and images/s, and the paper's number for the same setting; unfinished runs are listed
with the epoch they reached.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

from npe_models.classification.config import RECIPES
from npe_models.models import parse_npe_name
from npe_models.runs import CONFIG_FILE, LOG_FILE, METRICS_FILE, read_json, read_jsonl

# The paper's top-1 (%) for ResNet-32 on CIFAR-10-LT rho = 100 (design guide), by (recipe, method, PEMs).
PAPER_TOP1 = {
    ("hp1", "ce", 0): 71.24, ("hp1", "la", 0): 77.37, ("hp1", "npe", 1): 77.89, ("hp1", "npe", 16): 78.17,
    ("hp2", "ce", 0): 73.18, ("hp2", "la", 0): 80.13, ("hp2", "npe", 1): 79.35, ("hp2", "npe", 16): 80.12,
}


def _fmt(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _training_text(training: dict[str, Any]) -> str:
    """Wall time, images/s and device of the training; post-hoc LA has none."""
    if not training["epochs"]:
        return "none (adjusts the CE run)"
    devices = ", ".join(device.split(":")[0] for device in training["devices"])
    return f"{training['seconds'] / 3600:.2f} h, {training['images_per_s']:.0f} img/s, {devices}"


def _finished_row(name: str, config: dict[str, Any], metrics: dict[str, Any]) -> str:
    sets, primary = metrics["sets"], metrics["primary"]
    full, exact = sets["full"][primary], sets["exact"][primary]
    twins = sets.get("jpeg_twins", {}).get(primary)
    penalty = exact["top1"] - twins["top1"] if twins else None
    prior = sets["full"].get("prior")
    unadjusted = f" ({sets['full']['plain']['top1']:.2f} / {sets['exact']['plain']['top1']:.2f} unadjusted)" if primary == "npe_la" else ""
    comparable = config["rho"] == 100 and config["epochs"] == RECIPES[config["recipe"]]["epochs"]
    paper = PAPER_TOP1.get((config["recipe"], config["method"], parse_npe_name(config["model"])[1])) if comparable else None
    training = metrics["training"]
    gap = f"{full['top1'] - paper:+.2f} / {exact['top1'] - paper:+.2f}" if paper is not None else "-"
    return (
        f"| {name} | {config['method']} | {config['recipe']} | {config['rho']:g} | {full['top1']:.2f} / {exact['top1']:.2f}{unadjusted} "
        f"| {_fmt(full['many'])} / {_fmt(full['medium'])} / {_fmt(full['few'])} | {_fmt(penalty)} "
        f"| {_fmt(prior and prior['spearman'], 3)} / {_fmt(prior and prior['pearson'], 3)} "
        f"| {_training_text(training)} "
        f"| {_fmt(paper)} | {gap} |"
    )


def _unfinished_row(name: str, config: dict[str, Any], run: Path) -> str:
    log = read_jsonl(run / LOG_FILE)
    seconds = sum(record["seconds"] for record in log)
    return f"| {name} | {config['method']} | {config['recipe']} | {config['rho']:g} | not finished: epoch {len(log)} of {config['epochs']} ({seconds / 3600:.2f} h so far) | | | | | | |"


def report(zoo: Path) -> str:
    header = [
        "| run | method | recipe | rho | top-1 full / exact | Many / Medium / Few (full) | JPEG penalty | Spearman / Pearson | training | paper | ours - paper (full / exact) |",
        "| --- | --- | --- | ---: | --- | --- | ---: | --- | --- | ---: | ---: |",
    ]
    rows = []
    for run in sorted(path for path in zoo.iterdir() if (path / CONFIG_FILE).is_file()):
        config = read_json(run / CONFIG_FILE)
        metrics_file = run / METRICS_FILE
        rows.append(
            _finished_row(run.name, config, read_json(metrics_file))
            if metrics_file.is_file() else _unfinished_row(run.name, config, run)
        )
    return "\n".join(header + rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", type=Path, default=Path("zoo"), help="folder of run directories (default: zoo)")
    print(report(parser.parse_args().zoo))


if __name__ == "__main__":
    main()
