r"""The pretrained zoo's results table for RESULTS.md: every run in zoo/, finished or not, beside the paper.

    python benchmarks/zoo_report.py --zoo zoo

For each run directory (``benchmarks/train_cifar10_lt_zoo.sh`` writes them) it prints top-1 on the
full 10,000-image test set and on its 1,000 exact images, Many/Medium/Few (full set), the JPEG
penalty (exact images minus their JPEG twins), the estimate's correlation with log counts, the
wall time and images/s, and the paper's number for the same setting; unfinished runs are listed
with the epoch they reached. Then two summaries of the finished runs: each setting (recipe, method,
PEMs, rho) over its seeds, mean +- sample std where there are two or more (the paper's Tables 4
and 5 report three), and the PEM-count ablation (the paper's Table 3: rho 100, HP-2, seed 0).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any, Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from npe_models.classification.config import RECIPES, resolve_config
from npe_models.models import parse_npe_name
from npe_models.runs import CONFIG_FILE, LOG_FILE, METRICS_FILE, read_json, read_jsonl

# The paper's top-1 (%), mean and std of 3 runs, ResNet-32 on the clean CIFAR-10-LT test set (design guide), by
# (recipe, method, PEMs, rho).
PAPER_RUNS = 3
PAPER_TOP1 = {
    (recipe, method, pems, rho): cell
    for recipe, rows in {
        "hp1": {
            ("ce", 0): ((63.54, 0.28), (71.24, 0.29), (76.77, 0.37)),
            ("crt", 0): ((67.19, 0.31), (73.80, 0.42), (79.07, 0.51)),
            ("la", 0): ((72.10, 0.27), (77.37, 0.32), (81.25, 0.38)),
            ("npe", 1): ((72.42, 0.21), (77.89, 0.38), (82.22, 0.46)),
            ("npe", 16): ((73.18, 0.41), (78.17, 0.73), (82.31, 0.22)),
        },
        "hp2": {
            ("ce", 0): ((65.59, 0.20), (73.18, 0.77), (77.76, 0.44)),
            ("crt", 0): ((72.34, 0.71), (77.85, 0.25), (81.01, 0.50)),
            ("la", 0): ((74.91, 0.51), (80.13, 0.13), (82.95, 0.36)),
            ("npe", 1): ((74.37, 0.25), (79.35, 0.37), (82.32, 0.19)),
            ("npe", 16): ((74.83, 0.55), (80.12, 0.31), (83.16, 0.08)),
        },
    }.items()
    for (method, pems), cells in rows.items()
    for rho, cell in zip((200, 100, 50), cells)
}
METHOD_LABELS = {
    ("ce", 0): "CE",
    ("crt", 0): "cRT",
    ("la", 0): "LA",
    ("npe", 1): "NPE-LA(1)",
    ("npe", 16): "NPE-LA(16)",
}
EXACT_IMAGES = 1000

SUPERSEDED = {"resnet32_la_r100_hp1": "resnet32_la_r100_hp1_onedevice"}
"""Runs replaced by a rerun of the same setting and seed (issue 15: LA HP-1 trained on one device), left out of
the summaries so that a seed counts once; the per-run table still lists them."""
ABLATION_PEMS = (0, 1, 4, 8, 16)


def method_label(method: str, pems: int) -> str:
    """The name a reader knows a method by: the paper's for the figure's methods, NPE-LA(k) for any PEM count."""
    if (method, pems) in METHOD_LABELS:
        return METHOD_LABELS[method, pems]
    return f"NPE-LA({pems})" if method == "npe" else {"posthoc_la": "post-hoc LA"}.get(method, method)


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
    unadjusted = (
        f" ({sets['full']['plain']['top1']:.2f} / {sets['exact']['plain']['top1']:.2f} unadjusted)"
        if primary == "npe_la"
        else ""
    )
    comparable = config["epochs"] == RECIPES[config["recipe"]]["epochs"]
    paper = PAPER_TOP1.get(_setting(config), (None,))[0] if comparable else None
    training = metrics["training"]
    gap = f"{full['top1'] - paper:+.2f} / {exact['top1'] - paper:+.2f}" if paper is not None else "-"
    return (
        f"| {name} | {config['method']} | {config['recipe']} | {config['rho']:g} "
        f"| {full['top1']:.2f} / {exact['top1']:.2f}{unadjusted} "
        f"| {_fmt(full['many'])} / {_fmt(full['medium'])} / {_fmt(full['few'])} | {_fmt(penalty)} "
        f"| {_fmt(prior and prior['spearman'], 3)} / {_fmt(prior and prior['pearson'], 3)} "
        f"| {_training_text(training)} "
        f"| {_fmt(paper)} | {gap} |"
    )


def _unfinished_row(name: str, config: dict[str, Any], run: Path) -> str:
    log = read_jsonl(run / LOG_FILE)
    seconds = sum(record["seconds"] for record in log)
    return (
        f"| {name} | {config['method']} | {config['recipe']} | {config['rho']:g} "
        f"| not finished: epoch {len(log)} of {config['epochs']} ({seconds / 3600:.2f} h so far) | | | | | | |"
    )


def _setting(config: dict[str, Any]) -> tuple[str, str, int, float]:
    """What runs share across seeds: recipe, method, PEM count, rho (an int where whole, as the paper's keys)."""
    rho = config["rho"]
    return config["recipe"], config["method"], parse_npe_name(config["model"])[1], int(rho) if rho == int(rho) else rho


def _top1(metrics: dict[str, Any], variant: Optional[str] = None) -> tuple[float, float]:
    """Top-1 on the full test set and on its exact images, of the primary output or of ``variant``."""
    variant = variant or metrics["primary"]
    return metrics["sets"]["full"][variant]["top1"], metrics["sets"]["exact"][variant]["top1"]


def _full_recipe(config: dict[str, Any]) -> bool:
    """Whether a run trained its method's whole schedule (cRT: its classifier epochs; post-hoc LA: none)."""
    return (
        config["epochs"]
        == resolve_config(config["recipe"], config["method"], model=config["model"], init=config["init"]).epochs
    )


def _spread(values: list[float]) -> str:
    """``mean +- std`` (sample std) for two or more values, the value alone for one."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f}"


def combined_se(values: list[float], paper_std: float, test_images: int) -> float:
    """The standard error of (our mean - the paper's mean), in points: our seeds' spread over sqrt(n) (with one seed
    the paper's std stands in for ours), the paper's std over sqrt(3), and the binomial error of a test set of
    ``test_images`` images (the paper's 10,000 clean images are taken as exact)."""
    ours_std = statistics.stdev(values) if len(values) > 1 else paper_std
    accuracy = statistics.mean(values) / 100
    sampling = 100 * (accuracy * (1 - accuracy) / test_images) ** 0.5 if test_images < 10_000 else 0.0
    return (ours_std**2 / len(values) + paper_std**2 / PAPER_RUNS + sampling**2) ** 0.5


def _difference(values: list[float], paper: tuple[float, float], test_images: int) -> str:
    """Our mean minus the paper's, and that difference in combined standard errors."""
    difference = statistics.mean(values) - paper[0]
    return f"{difference:+.2f} ({difference / combined_se(values, paper[1], test_images):+.1f})"


def seeds_by_cell(finished: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> dict[tuple, dict[int, tuple]]:
    """The finished full-schedule runs of each setting (recipe, method, PEMs, rho), by seed: (full, exact) top-1."""
    cells: dict[tuple, dict[int, tuple[float, float]]] = {}
    for name, (config, metrics) in finished.items():
        if name not in SUPERSEDED and _full_recipe(config):
            cells.setdefault(_setting(config), {})[config["seed"]] = _top1(metrics)
    return cells


def seed_summary(finished: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """Each setting over its seeds, full and exact top-1 as mean +- std, beside the paper's mean +- std, with the
    difference in units of the combined standard error (|difference| < 2 SE: agrees)."""
    lines = [
        "| recipe | method | rho | seeds | top-1 full | top-1 exact | paper | full - paper (SE) "
        "| exact - paper (SE) | exact agrees |",
        "| --- | --- | ---: | --- | --- | --- | --- | ---: | ---: | --- |",
    ]
    for setting, by_seed in sorted(seeds_by_cell(finished).items()):
        recipe, method, pems, rho = setting
        seeds = sorted(by_seed)
        full, exact = ([by_seed[seed][i] for seed in seeds] for i in (0, 1))
        label = method_label(method, pems)
        paper = PAPER_TOP1.get(setting)
        if paper is None:
            compared = "- | - | - | -"
        else:
            exact_difference = statistics.mean(exact) - paper[0]
            agrees = abs(exact_difference) < 2 * combined_se(exact, paper[1], EXACT_IMAGES)
            compared = (
                f"{paper[0]:.2f} +- {paper[1]:.2f} | {_difference(full, paper, 10_000)} "
                f"| {_difference(exact, paper, EXACT_IMAGES)} | {'yes' if agrees else 'no'}"
            )
        lines.append(
            f"| {recipe} | {label} | {rho:g} | {', '.join(map(str, seeds))} | {_spread(full)} | {_spread(exact)} "
            f"| {compared} |"
        )
    return "\n".join(lines)


def _draw_cell_panel(axes: Any, cells: dict[tuple, dict[int, tuple]], recipe: str, rho: int) -> None:
    """One recipe and rho: per method, our exact-image and full-set top-1 (mean, sample-std bars) and the paper's."""
    for x, (method, pems) in enumerate(METHOD_LABELS):
        paper = PAPER_TOP1[(recipe, method, pems, rho)]
        axes.errorbar(x + 0.2, paper[0], yerr=paper[1], fmt="s", color="black", capsize=3)
        by_seed = cells.get((recipe, method, pems, rho), {})
        for offset, which, style in ((-0.2, 1, "o"), (0.0, 0, "^")):
            values = [top1[which] for top1 in by_seed.values()]
            if values:
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                axes.errorbar(
                    x + offset,
                    statistics.mean(values),
                    yerr=spread,
                    fmt=style,
                    color="C0",
                    capsize=3,
                    mfc="C0" if which else "white",
                )
                axes.annotate(
                    f"n={len(values)}",
                    (x + offset, statistics.mean(values)),
                    fontsize=6,
                    xytext=(2, -9),
                    textcoords="offset points",
                )
    axes.set_xticks(range(len(METHOD_LABELS)), list(METHOD_LABELS.values()), rotation=30, fontsize=8)
    axes.set_title(f"{recipe.upper().replace('HP', 'HP-')}, rho = {rho}", fontsize=9)
    axes.grid(axis="y", alpha=0.3)


def cells_figure(finished: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> Figure:
    """Top-1 per recipe (rows) and rho (columns) for CE, cRT, LA, NPE-LA(1) and NPE-LA(16): ours on the 1,000 exact
    images (filled circles) and the full test set (open triangles), mean with sample-std bars over seeds, beside the
    paper's mean +- std (black squares)."""
    figure = Figure(figsize=(12, 7), layout="constrained")
    cells = seeds_by_cell(finished)
    grid = figure.subplots(2, 3, sharey="row")
    for row, recipe in enumerate(("hp1", "hp2")):
        for column, rho in enumerate((200, 100, 50)):
            _draw_cell_panel(grid[row][column], cells, recipe, rho)
        grid[row][0].set_ylabel("top-1 (%)")
    figure.suptitle(
        "ResNet-32, CIFAR-10-LT: ours (blue; filled: 1,000 exact test images, open: full test set) "
        "vs the paper (black)",
        fontsize=10,
    )
    return figure


def pem_ablation(finished: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """The paper's Table 3 layout: rho 100, HP-2, seed 0, unadjusted and NPE-LA top-1 per PEM count (0: the CE run)."""
    by_pems = {}
    for name, (config, metrics) in finished.items():
        recipe, method, pems, rho = _setting(config)
        if (recipe, rho, config["seed"]) == ("hp2", 100, 0) and method in ("ce", "npe") and name not in SUPERSEDED:
            by_pems[pems] = metrics
    lines = ["| PEMs | unadjusted, full / exact | NPE-LA, full / exact |", "| ---: | --- | --- |"]
    for pems in ABLATION_PEMS:
        metrics = by_pems.get(pems)
        if metrics is None:
            lines.append(f"| {pems} | not trained | not trained |")
            continue
        npe_la = "{:.2f} / {:.2f}".format(*_top1(metrics, "npe_la")) if pems else "-"
        plain = "{:.2f} / {:.2f}".format(*_top1(metrics, "plain"))
        lines.append(f"| {pems} | {plain} | {npe_la} |")
    return "\n".join(lines)


def finished_runs(zoo: Path) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Every finished run directly under ``zoo``: name -> (config, metrics)."""
    return {
        run.name: (read_json(run / CONFIG_FILE), read_json(run / METRICS_FILE))
        for run in sorted(zoo.iterdir())
        if (run / METRICS_FILE).is_file() and (run / CONFIG_FILE).is_file()
    }


def report(zoo: Path) -> str:
    header = [
        "| run | method | recipe | rho | top-1 full / exact | Many / Medium / Few (full) | JPEG penalty "
        "| Spearman / Pearson | training | paper | ours - paper (full / exact) |",
        "| --- | --- | --- | ---: | --- | --- | ---: | --- | --- | ---: | ---: |",
    ]
    rows, finished = [], {}
    for run in sorted(path for path in zoo.iterdir() if (path / CONFIG_FILE).is_file()):
        config = read_json(run / CONFIG_FILE)
        metrics_file = run / METRICS_FILE
        if not metrics_file.is_file():
            rows.append(_unfinished_row(run.name, config, run))
            continue
        finished[run.name] = config, read_json(metrics_file)
        rows.append(_finished_row(run.name, config, finished[run.name][1]))
    return "\n\n".join(["\n".join(header + rows), seed_summary(finished), pem_ablation(finished)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zoo", type=Path, default=Path("zoo"), help="folder of run directories (default: zoo)")
    parser.add_argument("--figure", type=Path, help="also draw the per-rho top-1 figure into this PNG file")
    args = parser.parse_args()
    print(report(args.zoo))
    if args.figure is not None:
        FigureCanvasAgg(cells_figure(finished_runs(args.zoo))).print_png(args.figure)


if __name__ == "__main__":
    main()
