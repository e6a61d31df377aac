"""Segmentation with NPE: what linear PEMs cost, and the STARE experiment (the paper's Table 6 protocol).

python benchmarks/bench_segmentation.py inference [--size 512] [--rounds 5]
    deeplabv3_resnet50 with 16 linear PEMs, unmerged vs merged vs the plain model, one process,
    interleaved rounds, median ratios.
python benchmarks/bench_segmentation.py train-step [--classes 150] [--batch 4] [--size 512] [--steps 2]
    one training step with a frozen backbone, 16 linear PEMs vs 1: peak resident memory
    (getrusage ru_maxrss) of a fresh subprocess per variant, and seconds per step of both
    variants in one process, interleaved rounds.
python benchmarks/bench_segmentation.py stare --data-dir ../shared/data [--runs runs] [--base-channels 16]
                                              [--baseline-iterations 600] [--pem-types linear fcn] [--pem-lr 0.01]
    train the UNet-FCN baseline (runs/stare_unet<C>_i<N>_baseline), freeze it, train one PEM of
    each type on it (600 iterations, lr 1e-2, x0.1 at 200 and 400; --pem-iterations, --pem-lr), evaluate alpha 0
    (baseline) and NPE-LA at 1, 0.5, 0.2, 0.1, and show where the estimate points. Resumable. A PEM lr other
    than 1e-2 names its run ..._npe1_<type>_lr<lr>.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from timm.utils import reparameterize_model

from npe_models import create_segmentation_model
from npe_models.cli import main as npe_models_cli
from npe_models.data.stare import StareSegmentation
from npe_models.runs import WEIGHTS_FILE
from npe_models.segmentation import (
    freeze_model_parts,
    load_segmentation_model,
    normalize_images,
    predict_logits,
    segmentation_loss_terms,
    set_train_mode,
)

STARE_ALPHAS = ("0", "1", "0.5", "0.2", "0.1")
DEFAULT_PEM_LR = 0.01


def _resume(run: Path) -> list[str]:
    """``--resume`` for a run that has started (resuming a run that has not is an error)."""
    return ["--resume"] if (run / "config.json").is_file() else []


def _unless_finished(run: Path, step: list[str]) -> list[list[str]]:
    """The training step of ``run``, or none once it has its final weights (a zoo run may keep no checkpoint)."""
    return [] if (run / WEIGHTS_FILE).is_file() else [step]


def _interleaved(fns: dict[str, Callable[[], None]], rounds: int) -> dict[str, dict[str, list[float]]]:
    """Wall-clock and process CPU seconds of each call, variants interleaved round by round after a warm-up call."""
    for fn in fns.values():
        fn()
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
    return times


def _ratio(values: list[float], base: list[float]) -> float:
    return statistics.median(v / b for v, b in zip(values, base))


def bench_inference(args: argparse.Namespace) -> None:
    images = torch.randn(args.batch, 3, args.size, args.size)
    npe = create_segmentation_model("deeplabv3_resnet50_npe16", num_classes=args.classes).eval()
    with torch.no_grad():
        npe.classifier[-1].pem_weight.normal_(std=0.1)
    models = {
        "deeplabv3_resnet50 (plain)": create_segmentation_model("deeplabv3_resnet50", num_classes=args.classes).eval(),
        "deeplabv3_resnet50_npe16 unmerged": npe,
        "deeplabv3_resnet50_npe16 merged": reparameterize_model(npe),
    }
    with torch.inference_mode():
        difference = (models["deeplabv3_resnet50_npe16 merged"](images)["out"] - npe(images)["out"]).abs().max()

    def infer(model: torch.nn.Module) -> None:
        with torch.inference_mode():
            model(images)

    times = _interleaved({name: (lambda m=m: infer(m)) for name, m in models.items()}, args.rounds)
    base = times["deeplabv3_resnet50 (plain)"]
    print(
        f"\nInference, {args.classes} classes, batch {args.batch}, {args.size}x{args.size}, "
        f"{args.rounds} interleaved rounds; merged vs unmerged max |diff| {float(difference):.2e}"
    )
    print("| variant | parameters | wall s / forward | CPU s / forward | wall ratio to plain | CPU ratio to plain |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, value in times.items():
        parameters = sum(p.numel() for p in models[name].parameters())
        print(
            f"| {name} | {parameters:,} | {statistics.median(value['wall']):.3f} | "
            f"{statistics.median(value['cpu']):.3f} | {_ratio(value['wall'], base['wall']):.3f} | "
            f"{_ratio(value['cpu'], base['cpu']):.3f} |"
        )
    print("(ratios: median of per-round ratios)")


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _training_setup(args: argparse.Namespace, num_pems: int) -> Callable[[], None]:
    """One SGD step of deeplabv3_resnet50 with ``num_pems`` linear PEMs, frozen backbone, dense NPE loss."""
    torch.manual_seed(0)
    model = create_segmentation_model(f"deeplabv3_resnet50_npe{num_pems}", num_classes=args.classes)
    set_train_mode(model, freeze_model_parts(model, backbone=True))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    images = torch.randn(args.batch, 3, args.size, args.size)
    target = torch.randint(0, args.classes, (args.batch, args.size, args.size))

    def step() -> None:
        loss = sum(segmentation_loss_terms(model.forward_train(images), target).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def train_step_worker(args: argparse.Namespace) -> None:
    """Peak memory of one variant, alone in this fresh process; prints a JSON line."""
    step = _training_setup(args, args.num_pems)
    before = _max_rss_mib()
    for _ in range(args.steps):
        step()
    print(json.dumps({"num_pems": args.num_pems, "rss_before_steps_mib": before, "peak_rss_mib": _max_rss_mib()}))


def bench_train_step(args: argparse.Namespace) -> None:
    memory = {}
    for num_pems in (1, 16):
        command = [
            sys.executable,
            __file__,
            "train-step-worker",
            "--num-pems",
            str(num_pems),
            "--classes",
            str(args.classes),
            "--batch",
            str(args.batch),
            "--size",
            str(args.size),
            "--steps",
            str(args.steps),
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        memory[num_pems] = json.loads(output.strip().splitlines()[-1])
    times = _interleaved({k: _training_setup(args, k) for k in (1, 16)}, args.rounds)
    print(
        f"\nTraining step, deeplabv3_resnet50, {args.classes} classes, batch {args.batch}, {args.size}x{args.size}, "
        "frozen backbone, linear PEMs, CE + dense NPE loss. Memory: getrusage ru_maxrss of a fresh process per "
        f"variant ({args.steps} steps); time: both variants in one process, {args.rounds} interleaved rounds "
        "after a warm-up step"
    )
    print(
        "| PEMs | RSS before the first step (MiB) | peak RSS (MiB) | peak - before (MiB) | wall s / step | "
        "CPU s / step |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for k in (1, 16):
        before, peak = memory[k]["rss_before_steps_mib"], memory[k]["peak_rss_mib"]
        print(
            f"| {k} | {before:.0f} | {peak:.0f} | {peak - before:.0f} | {statistics.median(times[k]['wall']):.2f} | "
            f"{statistics.median(times[k]['cpu']):.2f} |"
        )
    peak_ratio = memory[16]["peak_rss_mib"] / memory[1]["peak_rss_mib"]
    growth = {k: memory[k]["peak_rss_mib"] - memory[k]["rss_before_steps_mib"] for k in (1, 16)}
    print(
        f"\n16 PEMs / 1 PEM: peak RSS {peak_ratio:.3f}x, memory the step adds {growth[16] / growth[1]:.3f}x, "
        f"wall time {_ratio(times[16]['wall'], times[1]['wall']):.3f}x, "
        f"CPU time {_ratio(times[16]['cpu'], times[1]['cpu']):.3f}x (median of per-round ratios)"
    )
    for k in (1, 16):
        print(f"per-round wall seconds, {k} PEM(s): " + ", ".join(f"{v:.1f}" for v in times[k]["wall"]))
    naive = 16 * args.batch * args.classes * args.size * args.size * 4 / 2**30
    print(f"(the naive 16 x B x C x H x W float32 PEM logits alone would take {naive:.1f} GiB)")


def _stare_table(title: str, results: dict) -> None:
    print(f"\n{title}")
    print("| setting | Dice background | Dice vessel | mDice | Acc background | Acc vessel | mAcc | mIoU |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for alpha, metrics in results.items():
        label = "baseline (alpha 0)" if float(alpha) == 0 else f"NPE-LA alpha={float(alpha):g}"
        dice, acc = metrics["dice"], metrics["accuracy"]
        cells = [dice[0], dice[1], metrics["mean_dice"], acc[0], acc[1], metrics["mean_accuracy"], metrics["mean_iou"]]
        print(f"| {label} | " + " | ".join(f"{100 * v:.2f}" for v in cells) + " |")


def estimate_diagnostic(run: Path, data_dir: str) -> None:
    """Where the trained estimate points, by pixel group: the mean vessel-minus-background gap of eta and of z, and
    the spread of eta's gap (about 0 when the PEM learned only its bias, a constant shift)."""
    model, config = load_segmentation_model(run)
    groups = ("background pixels", "vessel pixels", "near the boundary: abs(z_vessel - z_background) < 1")
    totals = {group: torch.zeros(4, dtype=torch.float64) for group in groups}  # eta gap, its square, z gap, count
    for image, mask in StareSegmentation(data_dir, "val", "ah"):
        logits, estimate = predict_logits(model, normalize_images(image[None], config.mean, config.std))
        eta_gap, z_gap = (estimate[0, 1] - estimate[0, 0]).double(), (logits[0, 1] - logits[0, 0]).double()
        for group, where in zip(groups, (mask == 0, mask == 1, z_gap.abs() < 1)):
            gap = eta_gap[where]
            totals[group] += torch.stack([gap.sum(), gap.square().sum(), z_gap[where].sum(), where.sum().double()])
    print("\nEstimate vs main logits on the 'ah' validation images (whole-image inference)")
    print("| pixels | mean eta_vessel - eta_background | its std | mean z_vessel - z_background | pixels counted |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for group, (eta_sum, eta_squares, z_sum, count) in totals.items():
        eta_mean = eta_sum / count
        eta_std = (eta_squares / count - eta_mean**2).clamp(min=0).sqrt()
        print(f"| {group} | {eta_mean:.3f} | {eta_std:.3f} | {z_sum / count:.3f} | {int(count):,} |")


def _stare_pem_steps(args: argparse.Namespace, baseline: Path, pem_type: str) -> tuple[Path, list[list[str]]]:
    """Train one PEM of ``pem_type`` on the frozen baseline, then evaluate alpha 0 and the NPE-LA strengths."""
    common = ["--data-dir", args.data_dir, "--device", args.device]
    lr_tag = "" if args.pem_lr == DEFAULT_PEM_LR else f"_lr{args.pem_lr:g}"
    npe = baseline.with_name(baseline.name.replace("_baseline", f"_npe1_{pem_type}{lr_tag}"))
    train = [
        "train",
        "--model",
        "unet_fcn_npe1",
        "--pem-type",
        pem_type,
        "--model-arg",
        f"base_channels={args.base_channels}",
        "--aux-loss",
        "--freeze-decode-head",
        "--iterations",
        str(args.pem_iterations),
        "--lr",
        f"{args.pem_lr:g}",
        "--milestones",
        *(str(round(args.pem_iterations * f)) for f in (1 / 3, 2 / 3)),
        "--init",
        str(baseline),
        "--out",
        str(npe),
        *_resume(npe),
        *common,
    ]
    steps = [
        *_unless_finished(npe, train),
        [
            "evaluate",
            str(npe),
            "--mode",
            "slide",
            "--crop-size",
            "128",
            "--stride",
            "85",
            "--alpha",
            *STARE_ALPHAS,
            "--overlays",
            "2",
            *common,
        ],
    ]
    return npe, steps


def _run_cli(steps: list[list[str]]) -> None:
    for argv in steps:
        print("$ npe-models " + " ".join(argv), flush=True)
        if npe_models_cli(argv) != 0:
            raise SystemExit(f"step failed: {argv[0]}")


def bench_stare(args: argparse.Namespace) -> None:
    runs = Path(args.runs)
    baseline = runs / f"stare_unet{args.base_channels}_i{args.baseline_iterations}_baseline"
    _run_cli(
        _unless_finished(
            baseline,
            [
                "train",
                "--model",
                "unet_fcn",
                "--model-arg",
                f"base_channels={args.base_channels}",
                "--aux-loss",
                "--no-freeze-backbone",
                "--iterations",
                str(args.baseline_iterations),
                "--lr-schedule",
                "poly",
                "--lr",
                "0.03",
                "--out",
                str(baseline),
                *_resume(baseline),
                "--data-dir",
                args.data_dir,
                "--device",
                args.device,
            ],
        )
    )
    for pem_type in args.pem_types:
        npe, steps = _stare_pem_steps(args, baseline, pem_type)
        _run_cli(steps)
        report = json.loads((npe / "eval" / "metrics.json").read_text())["results"]
        _stare_table(f"STARE validation, 'ah' masks (8 images), {pem_type} PEM", report["ah"])
        _stare_table(f"STARE validation, 'vk' masks (10 images), {pem_type} PEM", report["vk"])
        estimate_diagnostic(npe, args.data_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    commands = parser.add_subparsers(dest="command", required=True)
    inference = commands.add_parser("inference")
    inference.add_argument("--classes", type=int, default=21)
    inference.add_argument("--batch", type=int, default=1)
    inference.add_argument("--size", type=int, default=512)
    inference.add_argument("--rounds", type=int, default=5)
    for name in ("train-step", "train-step-worker"):
        step = commands.add_parser(name)
        step.add_argument("--classes", type=int, default=150)
        step.add_argument("--batch", type=int, default=4)
        step.add_argument("--size", type=int, default=512)
        step.add_argument("--steps", type=int, default=2, help="steps per memory measurement")
        step.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
        step.add_argument("--num-pems", type=int, default=16, help="(worker) the variant to measure")
    stare = commands.add_parser("stare")
    stare.add_argument("--data-dir", required=True)
    stare.add_argument("--runs", default="runs")
    stare.add_argument("--device", default="cpu")
    stare.add_argument("--base-channels", type=int, default=16)
    stare.add_argument("--baseline-iterations", type=int, default=600)
    stare.add_argument("--pem-iterations", type=int, default=600, help="PEM training steps (lr x0.1 at 1/3 and 2/3)")
    stare.add_argument("--pem-types", nargs="+", choices=("linear", "fcn"), default=["linear", "fcn"])
    stare.add_argument(
        "--pem-lr",
        type=float,
        default=DEFAULT_PEM_LR,
        help="PEM learning rate; raise it when the baseline's features are small and the PEM's "
        "estimate stays constant (its weights never leave the N(0, 0.001) start)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)
    {
        "inference": bench_inference,
        "train-step": bench_train_step,
        "train-step-worker": train_step_worker,
        "stare": bench_stare,
    }[args.command](args)


if __name__ == "__main__":
    main()
