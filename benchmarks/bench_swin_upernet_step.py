"""One training step of the paper's Swin-T + UPerNet (``smp_upernet_swin_t_npe<K>``) at 512x512 on the CPU: time and
peak memory with encoder and decoder frozen (PEMs train, the paper's Table 7 protocol) vs everything trained.

Each variant runs in a fresh subprocess (so that its peak resident memory, ``resource.getrusage``'s ``ru_maxrss``, is
its own): the model (150 classes, ADE20K's), the package's freezing (``freeze_model_parts``, frozen BatchNorm in eval
mode) and loss (``segmentation_loss_terms``: cross-entropy only when something outside the PEMs trains), SGD on the
trainable parameters, random 512x512 inputs; ``--warmup`` steps, then the median of ``--steps`` timed steps.

Reproduce (the zoo's background training lanes paused for the measurement, always resumed)::

    pkill -STOP -f "npe-models train .*--out /work/main/zoo"
    trap 'pkill -CONT -f "npe-models train .*--out /work/main/zoo"' EXIT
    OMP_NUM_THREADS=2 python benchmarks/bench_swin_upernet_step.py --out /work/bench-out/swin_step.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import npe_models  # noqa: F401  (registers the models)
from npe_models.models.segmentation import create_segmentation_model
from npe_models.segmentation.losses import segmentation_loss_terms
from npe_models.segmentation.training import freeze_model_parts, set_train_mode

VARIANTS = ("linear:16", "replica:1")  # PEM type : number of PEMs
NUM_CLASSES = 150


def build_training(pem_type: str, num_pems: int, frozen: bool):
    """The model and an SGD optimiser over what trains, the package's way."""
    model = create_segmentation_model(f"smp_upernet_swin_t_npe{num_pems}", num_classes=NUM_CLASSES, pem_type=pem_type)
    parts = freeze_model_parts(model, backbone=frozen, decode_head=frozen)
    set_train_mode(model, parts)
    trainable = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.SGD(trainable, lr=0.01, momentum=0.9, weight_decay=5e-4), trainable


def training_step(model, optimizer, images, masks, train_main: bool) -> float:
    """One forward, loss, backward and SGD step; its wall time in seconds."""
    start = time.perf_counter()
    terms = segmentation_loss_terms(model.forward_train(images), masks, train_main=train_main)
    optimizer.zero_grad(set_to_none=True)
    sum(terms.values()).backward()
    optimizer.step()
    return time.perf_counter() - start


def measure(pem_type: str, num_pems: int, frozen: bool, args: argparse.Namespace) -> dict:
    """The child process's work: build, warm up, time; the numbers as a dict."""
    torch.manual_seed(0)
    model, optimizer, trainable = build_training(pem_type, num_pems, frozen)
    rss_built_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    images = torch.randn(args.batch_size, 3, args.size, args.size)
    masks = torch.randint(NUM_CLASSES, (args.batch_size, args.size, args.size))
    times = [training_step(model, optimizer, images, masks, not frozen) for _ in range(args.warmup + args.steps)]
    return {
        "pem_type": pem_type,
        "num_pems": num_pems,
        "frozen": frozen,
        "trainable_parameters_m": sum(p.numel() for p in trainable) / 1e6,
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "step_seconds_median": statistics.median(times[args.warmup :]),
        "step_seconds": times,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_build_mb": rss_built_mb,
        "threads": torch.get_num_threads(),
    }


def run_variant(variant: str, frozen: bool, args: argparse.Namespace) -> dict:
    """One variant in a fresh Python process."""
    command = [sys.executable, __file__, "--child", variant, "--frozen" if frozen else "--no-frozen"]
    command += ["--size", str(args.size), "--batch-size", str(args.batch_size)]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{variant} (frozen={frozen}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help="PEM_TYPE:NUM_PEMS")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=2, help="images per step (MMSegmentation: 2 per GPU)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--frozen", action=argparse.BooleanOptionalAction, default=True, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        pem_type, num_pems = args.child.split(":")
        print(json.dumps(measure(pem_type, int(num_pems), args.frozen, args)))
        return
    results = []
    for variant in args.variants:
        pair = [run_variant(variant, frozen, args) for frozen in (False, True)]
        results += pair
        unfrozen, frozen = pair
        print(
            f"{variant}: step {unfrozen['step_seconds_median']:.2f} s -> {frozen['step_seconds_median']:.2f} s frozen "
            f"(x{unfrozen['step_seconds_median'] / frozen['step_seconds_median']:.2f}), peak RSS "
            f"{unfrozen['peak_rss_mb']:.0f} -> {frozen['peak_rss_mb']:.0f} MB "
            f"(x{unfrozen['peak_rss_mb'] / frozen['peak_rss_mb']:.2f})",
            flush=True,
        )
    if args.out:
        report = {"size": args.size, "batch_size": args.batch_size, "results": results}
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
