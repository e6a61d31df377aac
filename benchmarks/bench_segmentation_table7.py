"""The paper's Table 7 protocol on the CPU, on CIFAR-10 mosaics (benchmarks/make_cifar_mosaic.py), with `npe-models`.

For each model (a small smp UPerNet and torchvision's DeepLabV3-MobileNetV3-Large, both from scratch): train a
baseline without PEMs, everything trained; then, starting from it (``--init``), with encoder and decoder frozen
(``--freeze-backbone --freeze-decode-head``), train ``linear``, ``fcn`` and ``replica`` PEMs; evaluate each run on the
validation mosaics (whole image) at NPE-LA alpha 0, 0.2, 0.5 and 1 in one pass. Every step is an ``npe-models``
command, printed before it runs; the table (mIoU, mAcc, aAcc, Many / Medium / Few IoU) is printed at the end and
written to ``OUT/table7.md`` and ``OUT/table7.json``. Finished steps (a run with ``model.safetensors``, an
evaluation with ``metrics.json``) are skipped and a training stopped part way (a ``checkpoint.pt``) resumes from its
checkpoint, so the script goes on where it stopped.

Reproduce (the two models side by side, one thread each: on 2 cores shared with other work, two 2-thread processes
thrash; about 30 minutes)::

    python benchmarks/make_cifar_mosaic.py --data-dir ../shared/data/cifar10 --out /work/bench-out/cifar_mosaic
    for model in upernet_r18 deeplabv3_mbv3; do
        OMP_NUM_THREADS=1 python benchmarks/bench_segmentation_table7.py --models $model \\
            --data-dir /work/bench-out/cifar_mosaic/seg_folder --out /work/bench-out/table7b &
    done; wait
    python benchmarks/bench_segmentation_table7.py --data-dir /work/bench-out/cifar_mosaic/seg_folder \\
        --out /work/bench-out/table7b   # every step done: the table of both models
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import time
from pathlib import Path

MODELS = {
    # label -> (architecture name, extra model arguments)
    "upernet_r18": ("smp:upernet:tu-resnet18", ["decoder_channels=64"]),
    "deeplabv3_mbv3": ("deeplabv3_mobilenet_v3_large", []),
}
PEM_TYPES = ("linear", "fcn", "replica")
ALPHAS = ("0", "0.2", "0.5", "1")


def run_command(command: list[str], log: Path) -> float:
    """Run one `npe-models` command (printed first, output appended to ``log``); its wall time in seconds."""
    print("$", shlex.join(command), flush=True)
    start = time.perf_counter()
    with log.open("a") as sink:
        sink.write(f"$ {shlex.join(command)}\n")
        sink.flush()
        subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, check=True)
    seconds = time.perf_counter() - start
    print(f"  {seconds:.0f} s", flush=True)
    return seconds


def data_options(args: argparse.Namespace) -> list[str]:
    return ["--dataset", "seg_folder", "--data-dir", str(args.data_dir), "--workers", str(args.workers)]


def model_options(arch: str, model_args: list[str], num_pems: int = 0) -> list[str]:
    name = f"{arch}_npe{num_pems}" if num_pems else arch
    return ["--model", name, *[option for value in model_args for option in ("--model-arg", value)]]


def baseline_command(args: argparse.Namespace, arch: str, model_args: list[str], out: Path) -> list[str]:
    """Train everything, no PEMs, from scratch (poly schedule, as MMSegmentation's baselines)."""
    return [
        "npe-models", "train", *model_options(arch, model_args), *data_options(args),
        "--no-freeze-backbone", "--iterations", str(args.baseline_iterations), "--batch-size", str(args.batch_size),
        "--crop-size", str(args.crop_size), "--schedule", "poly", "--lr", str(args.baseline_lr),
        "--seed", str(args.seed), "--no-progress", "--out", str(out),
    ]  # fmt: skip


def pem_command(
    args: argparse.Namespace, arch: str, model_args: list[str], pem_type: str, init: Path, out: Path
) -> list[str]:
    """Train PEMs only, from the baseline, encoder and decoder frozen (the paper's Table 7 protocol)."""
    return [
        "npe-models", "train", *model_options(arch, model_args, args.num_pems), "--pem-type", pem_type,
        *data_options(args), "--init", str(init), "--freeze-backbone", "--freeze-decode-head",
        "--iterations", str(args.pem_iterations), "--batch-size", str(args.batch_size),
        "--crop-size", str(args.crop_size), "--schedule", "poly", "--lr", str(args.pem_lr),
        "--seed", str(args.seed), "--no-progress", "--out", str(out),
    ]  # fmt: skip


def evaluate_command(args: argparse.Namespace, run: Path, alphas: tuple[str, ...]) -> list[str]:
    return [
        "npe-models", "evaluate", str(run), "--npe-alpha", *alphas, "--mode", "whole",
        "--no-progress", "--out", str(run / "eval"), "--overwrite",
    ]  # fmt: skip


def rows_of(run: Path, model: str, pems: str) -> list[dict]:
    """One table row per alpha from ``run/eval/metrics.json``."""
    report = json.loads((run / "eval" / "metrics.json").read_text())
    (scores,) = report["results"].values()
    rows = []
    for alpha, metrics in scores.items():
        groups = metrics["group_mean_iou"]
        rows.append(
            {
                "model": model,
                "pems": pems,
                "alpha": float(alpha),
                "mIoU": metrics["mean_iou"],
                "mAcc": metrics["mean_accuracy"],
                "aAcc": metrics["pixel_accuracy"],
                **{f"{group}_IoU": groups[group] for group in ("many", "medium", "few")},
                "class_IoU": metrics["iou"],
            }
        )
    return rows


def percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def markdown_table(rows: list[dict]) -> str:
    header = "| model | PEMs | alpha | mIoU | mAcc | aAcc | Many IoU | Medium IoU | Few IoU |\n" + "| --- " * 9 + "|\n"
    lines = [
        f"| {r['model']} | {r['pems']} | {r['alpha']:g} | {percent(r['mIoU'])} | {percent(r['mAcc'])} | "
        f"{percent(r['aAcc'])} | {percent(r['many_IoU'])} | {percent(r['medium_IoU'])} | {percent(r['few_IoU'])} |"
        for r in rows
    ]
    return header + "\n".join(lines) + "\n"


def resumed(command: list[str], run: Path) -> list[str]:
    """``command``, or, for a training whose ``run`` stopped part way (it has a checkpoint), its resume."""
    if command[1] == "train" and (run / "checkpoint.pt").is_file():
        return ["npe-models", "train", "--out", str(run), "--resume", "--no-progress"]
    return command


def run_step(command: list[str], done: Path, log: Path, timings: dict, key: str) -> None:
    """Run ``command`` unless ``done`` exists (a finished earlier step); record its wall time."""
    if done.exists():
        print(f"done already: {done}")
        return
    timings[key] = run_command(resumed(command, done.parent), log)


def run_model(args: argparse.Namespace, label: str, timings: dict) -> list[dict]:
    """The baseline and its three frozen PEM runs of one model, each evaluated; their table rows."""
    arch, model_args = MODELS[label]
    log = args.out / "commands.log"
    baseline = args.out / label / "baseline"
    run_step(baseline_command(args, arch, model_args, baseline), baseline / "model.safetensors", log, timings,
             f"{label}/baseline train")  # fmt: skip
    run_step(evaluate_command(args, baseline, ("0",)), baseline / "eval" / "metrics.json", log, timings,
             f"{label}/baseline evaluate")  # fmt: skip
    rows = rows_of(baseline, label, "none")
    for pem_type in PEM_TYPES:
        run = args.out / label / f"{pem_type}_npe{args.num_pems}"
        run_step(pem_command(args, arch, model_args, pem_type, baseline, run), run / "model.safetensors", log,
                 timings, f"{label}/{pem_type} train")  # fmt: skip
        run_step(evaluate_command(args, run, ALPHAS), run / "eval" / "metrics.json", log, timings,
                 f"{label}/{pem_type} evaluate")  # fmt: skip
        rows += rows_of(run, label, f"{pem_type} x{args.num_pems}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="the mosaics' seg_folder tree")
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs and the table")
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    parser.add_argument("--baseline-iterations", type=int, default=1500)
    parser.add_argument("--pem-iterations", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--baseline-lr", type=float, default=0.05)
    parser.add_argument("--pem-lr", type=float, default=0.01)
    parser.add_argument("--num-pems", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    rows = [row for label in args.models for row in run_model(args, label, timings)]
    table = markdown_table(rows)
    print(table)
    (args.out / "table7.md").write_text(table)
    (args.out / "table7.json").write_text(json.dumps({"rows": rows, "seconds": timings, "args": vars(args)},
                                                     indent=1, default=str))  # fmt: skip
    print("seconds:", json.dumps(timings, indent=1))


if __name__ == "__main__":
    main()
