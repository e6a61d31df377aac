"""End-to-end training throughput on CIFAR-10-LT (rho = 100): images per second over a full epoch.

Each variant runs one epoch of the engine's real training loop (in-memory uint8 data, whole-batch
crop + flip + normalise, forward, loss, backward, SGD step) for ResNet-32 with and without 16 PEMs
at batch 128 and 64. The ``pil`` variant is the reference code's input pipeline on the same model
and step: per-image PIL random crop + flip + ToTensor + Normalize in two DataLoader workers.
Variants run interleaved in one process so their ratios share the machine's conditions. Besides
wall-clock images/s it reports images per CPU-second (this process, its threads and its
DataLoader workers), which other processes sharing the CPU disturb much less. A few untimed
batches come first (``--warmup``): compilation and CUDA graph capture are not throughput.

    python benchmarks/bench_train_throughput.py --data-dir ../shared/data
    python benchmarks/bench_train_throughput.py --variants npe16-b128 npe16-b128-1thread --max-batches 20
    python benchmarks/bench_train_throughput.py --variants npe16-b128 npe16-b128-compiled --max-batches 30

On a GPU (``--device cuda``) the default variants are eager, bf16 autocast, ``torch.compile`` and
CUDA graphs (``--compile reduce-overhead``); ``--concurrent N`` runs N copies at once, as N
training runs sharing the GPU, and adds their sum:

    python benchmarks/bench_train_throughput.py --device cuda --rounds 3
    python benchmarks/bench_train_throughput.py --device cuda --concurrent 8 --variants npe16-b128 npe16-b128-graphs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F

import npe_models  # noqa: F401  (registers the models)
from npe_models.classification import resolve_config
from npe_models.classification.train import _Run
from npe_models.data import load_cifar_lt
from npe_models.distributed import DistributedContext


class Variant(NamedTuple):
    model: str
    batch_size: int
    channels_last: bool = True
    pipeline: str = "tensor"  # "tensor": the engine's loop; "pil": the reference code's per-image pipeline
    threads: Optional[int] = None  # torch threads; None = torch's default
    compile: Optional[str] = None  # torch.compile mode of the training step (--compile)
    amp: bool = False  # bfloat16 autocast (--amp)


VARIANTS = {
    "npe16-b128": Variant("resnet32_npe16", 128),
    "plain-b128": Variant("resnet32", 128),
    "npe16-b64": Variant("resnet32_npe16", 64),
    "plain-b64": Variant("resnet32", 64),
    "npe16-b128-nchw": Variant("resnet32_npe16", 128, channels_last=False),
    "npe16-b128-1thread": Variant("resnet32_npe16", 128, threads=1),
    "pil-npe16-b128": Variant("resnet32_npe16", 128, channels_last=False, pipeline="pil"),
    "npe16-b128-compiled": Variant("resnet32_npe16", 128, compile="default"),
    "npe16-b64-compiled": Variant("resnet32_npe16", 64, compile="default"),  # the HP-2 zoo runs, compiled on a CPU
    "npe16-b128-bf16": Variant("resnet32_npe16", 128, amp=True),
    "npe16-b128-compiled-bf16": Variant("resnet32_npe16", 128, compile="default", amp=True),
    "npe16-b128-graphs": Variant("resnet32_npe16", 128, compile="reduce-overhead"),  # CUDA graphs: GPU only
    "npe16-b128-graphs-bf16": Variant("resnet32_npe16", 128, compile="reduce-overhead", amp=True),
}
DEFAULT_VARIANTS = ["npe16-b128", "plain-b128", "npe16-b64", "plain-b64", "npe16-b128-nchw", "pil-npe16-b128"]
GPU_VARIANTS = ["npe16-b128", "npe16-b128-bf16", "npe16-b128-compiled", "npe16-b128-graphs", "npe16-b128-graphs-bf16"]


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader workers), all threads included."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _keep_batches(run: _Run, batches: int) -> None:
    """Cut the run's training stream to its first ``batches`` full batches."""
    keep = batches * run.stream.batch_size
    run.stream.labels, run.stream.images = run.stream.labels[:keep], run.stream.images[:keep]


def engine_epoch(variant: Variant, data_dir: str, device: str, max_batches: int | None, warmup: int):
    """(images, wall seconds, CPU seconds) of one epoch of the engine's training loop, after ``warmup`` batches
    (compilation, CUDA graph capture, cuDNN autotuning) that are not timed."""
    method = "npe" if "_npe" in variant.model else "ce"
    config = resolve_config(
        "hp1",
        method,
        model=variant.model,
        batch_size=variant.batch_size,
        channels_last=variant.channels_last,
        data_dir=data_dir,
        device=device,
        compile=variant.compile,
        amp=variant.amp,
    )
    run = _Run(config, Path("unused"), DistributedContext(0, 1, 0, torch.device(device)), progress=None)
    labels, images = run.stream.labels, run.stream.images
    if warmup:
        _keep_batches(run, warmup)
        run.train_epoch(0)
        run.stream.labels, run.stream.images = labels, images
    if max_batches is not None:
        _keep_batches(run, max_batches)
    cpu = _cpu_seconds()
    record = run.train_epoch(0)
    return record["images"], record["seconds"], _cpu_seconds() - cpu


def pil_epoch(model_name: str, batch_size: int, data_dir: str, max_batches: int | None, workers: int):
    """(images, wall seconds, CPU seconds) of one epoch with the reference pipeline: per-image PIL transforms in
    workers.
    """
    import timm
    from PIL import Image
    from torchvision import transforms

    data = load_cifar_lt(data_dir, "cifar10", 100)
    model = timm.create_model(model_name, num_classes=10).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(model.pretrained_cfg["mean"], model.pretrained_cfg["std"]),
        ]
    )

    class PilDataset(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data.train) if max_batches is None else min(len(data.train), max_batches * batch_size)

        def __getitem__(self, index: int):
            return transform(Image.fromarray(data.train.images[index])), int(data.train.labels[index])

    loader = torch.utils.data.DataLoader(
        PilDataset(), batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=False
    )
    start, cpu, seen = time.perf_counter(), _cpu_seconds(), 0
    for images, labels in loader:
        output = model.forward_train(images)
        loss = F.cross_entropy(output.logits, labels) + npe_models.one_way_logistic_loss(output.pem_logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(labels)
    wall = time.perf_counter() - start
    del loader  # join the workers so that their CPU time is counted
    return seen, wall, _cpu_seconds() - cpu


def measure(args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    """Each variant's (images/s, images per CPU-second), one entry per round, rounds interleaved across variants."""
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in args.variants}
    for round_index in range(args.rounds):
        for name in args.variants:
            variant = VARIANTS[name]
            default_threads = torch.get_num_threads()
            torch.set_num_threads(variant.threads or default_threads)
            if variant.pipeline == "pil":
                images, wall, cpu = pil_epoch(
                    variant.model, variant.batch_size, args.data_dir, args.max_batches, args.workers
                )
            else:
                images, wall, cpu = engine_epoch(variant, args.data_dir, args.device, args.max_batches, args.warmup)
            torch.set_num_threads(default_threads)
            results[name].append((images / wall, images / cpu))
            print(
                f"round {round_index + 1} {name:<24} {images / wall:8.1f} images/s  {images / cpu:7.1f} images/CPU-s  "
                f"(load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    return results


def concurrent(args: argparse.Namespace, argv: list[str]) -> dict[str, list[tuple[float, float]]]:
    """Run ``args.concurrent`` copies of this benchmark at once (e.g. several runs sharing one GPU) and return
    each variant's per-copy medians; the table's sum column is then the machine's total throughput."""
    with tempfile.TemporaryDirectory() as folder:
        outputs = [Path(folder) / f"copy{index}.json" for index in range(args.concurrent)]
        # argparse keeps an option's last value: each copy runs alone and writes its own results
        copies = [
            subprocess.Popen([sys.executable, __file__, *argv, "--concurrent", "1", "--json", str(out)])
            for out in outputs
        ]
        if any(copy.wait() for copy in copies):
            raise SystemExit("a concurrent copy failed (its output is above)")
        per_copy = [json.loads(out.read_text()) for out in outputs]
    return {name: [tuple(np.median(copy[name], axis=0)) for copy in per_copy] for name in args.variants}


def report(results: dict[str, list[tuple[float, float]]], copies: int) -> None:
    """Markdown table: medians (per run), ratios to npe16-b128 (or the first variant) and, for copies, the sum."""
    reference = "npe16-b128" if "npe16-b128" in results else next(iter(results))
    base_wall = float(np.median([r[0] for r in results[reference]]))
    base_cpu = float(np.median([r[1] for r in results[reference]]))
    total = f" | images/s, all {copies} runs" if copies > 1 else ""
    print(
        f"\n| variant | model | batch | images/s{' per run' if copies > 1 else ''} | vs {reference} | "
        f"images per CPU-second | vs {reference}{total} |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if copies > 1 else ""))
    for name, rates in results.items():
        variant = VARIANTS[name]
        wall, cpu = float(np.median([r[0] for r in rates])), float(np.median([r[1] for r in rates]))
        row = f"| {name} | {variant.model} | {variant.batch_size} | {wall:.1f} | {wall / base_wall:.2f} | {cpu:.1f} | "
        print(row + f"{cpu / base_cpu:.2f} |" + (f" {sum(r[0] for r in rates):.1f} |" if copies > 1 else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("NPE_DATA_DIR", "../shared/data"))
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        choices=list(VARIANTS),
        help="default: the CPU set, or with --device cuda the GPU set (eager, bf16, compiled, CUDA graphs)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument("--rounds", type=int, default=1, help="epochs per variant, interleaved across variants")
    parser.add_argument("--max-batches", type=int, help="stop each epoch after this many batches (quick checks)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed batches before each timed epoch (compilation, graph capture; default: 3)",
    )
    parser.add_argument("--concurrent", type=int, default=1, help="copies of the benchmark run at once (default: 1)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the pil variant")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.variants is None:
        args.variants = GPU_VARIANTS if args.device.startswith("cuda") else DEFAULT_VARIANTS

    print(
        f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  {platform.processor() or platform.machine()}  "
        f"{os.cpu_count()} CPUs  torch {torch.__version__}  threads {torch.get_num_threads()}  device {args.device}"
        f"{'  ' + torch.cuda.get_device_name(args.device) if args.device.startswith('cuda') else ''}  "
        f"load average before {os.getloadavg()[0]:.2f}"
    )
    results = concurrent(args, sys.argv[1:]) if args.concurrent > 1 else measure(args)
    report(results, args.concurrent)
    print(f"(medians over {args.rounds} round(s); load average after {os.getloadavg()[0]:.2f})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
