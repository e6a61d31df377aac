"""Image files vs the in-memory CIFAR source on the same images: training images/s of ResNet-32 + 16 PEMs.

Writes the CIFAR-10-LT (rho = 100) training images as PNG files into an ImageFolder tree (once;
``--tree`` keeps it), then runs the engine's real training epoch on both sources, interleaved in one
process: ``memory`` (uint8 arrays, whole-batch crop + flip), ``folder-wN`` (PIL decoding and timm's
train transform in N DataLoader workers) and ``decode-wN`` (the file pipeline alone, no model), so
the decoding cost is visible. Both report wall-clock images/s; the ratio to ``memory`` is the cost of
reading files.

    python benchmarks/bench_file_source.py --data-dir ../shared/data --tree /tmp/cifar10_lt_png
    python benchmarks/bench_file_source.py --variants memory folder-w0 folder-w2 --max-batches 30 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import npe_models  # noqa: F401  (registers the models)
from npe_models.classification import resolve_config
from npe_models.classification.train import _Run
from npe_models.data import load_cifar, load_cifar_lt
from npe_models.distributed import DistributedContext

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
VARIANTS = ("memory", "folder-w0", "folder-w1", "folder-w2", "decode-w0", "decode-w2")


def write_tree(data_dir: str, tree: Path) -> None:
    """CIFAR-10-LT's training images as ``tree/train/<class>/*.png``, 10 test images a class as ``tree/val``."""
    if (tree / "train").is_dir():
        return
    data = load_cifar_lt(data_dir, "cifar10", 100)
    test = load_cifar(data_dir, train=False)
    for split, images, labels in (
        ("train", data.train.images, data.train.labels),
        ("val", test.images[:100], test.labels[:100]),
    ):
        for index, (image, label) in enumerate(zip(images, labels)):
            folder = tree / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(folder / f"{index:05d}.png")


def _run(source: str, data_dir: str, tree: Path, workers: int, batch_size: int) -> _Run:
    data = (
        dict(dataset="folder", data_dir=str(tree), workers=workers) if source == "folder" else dict(data_dir=data_dir)
    )
    config = resolve_config("hp1", "npe", model="resnet32_npe16", batch_size=batch_size, device="cpu", **data)
    return _Run(config, Path("unused"), DistributedContext(0, 1, 0, torch.device("cpu")), progress=None)


def _truncate(run: _Run, keep: int) -> None:
    stream = run.stream
    if hasattr(stream, "sampler"):
        stream.sampler.labels = stream.sampler.labels[:keep]
    else:
        stream.labels, stream.images = stream.labels[:keep], stream.images[:keep]


def measure(variant: str, data_dir: str, tree: Path, batch_size: int, max_batches: int | None) -> float:
    """Images per second of one epoch of ``variant``."""
    source, _, workers = variant.partition("-w")
    run = _run("memory" if source == "memory" else "folder", data_dir, tree, int(workers or 0), batch_size)
    if max_batches is not None:
        _truncate(run, max_batches * batch_size)
    if source != "decode":
        record = run.train_epoch(0)
        return record["images"] / record["seconds"]
    start, images = time.perf_counter(), 0
    for batch, _ in run.stream:
        images += len(batch)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("NPE_DATA_DIR", "../shared/data"))
    parser.add_argument("--tree", type=Path, help="where the PNG tree is (written if missing; default: a temp dir)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-batches", type=int, help="stop each epoch after this many batches")
    args = parser.parse_args()
    tree = args.tree or Path(tempfile.mkdtemp(prefix="cifar10_lt_png_"))
    write_tree(args.data_dir, tree)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  {platform.processor() or platform.machine()}  {os.cpu_count()} CPUs  "
        f"torch {torch.__version__}  threads {torch.get_num_threads()}  load {os.getloadavg()[0]:.2f}  tree {tree}"
    )
    rates: dict[str, list[float]] = {name: [] for name in args.variants}
    for round_index in range(args.rounds):
        for name in args.variants:
            rates[name].append(measure(name, args.data_dir, tree, args.batch_size, args.max_batches))
            print(
                f"round {round_index + 1} {name:<10} {rates[name][-1]:8.1f} images/s (load {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    reference = "memory" if "memory" in rates else args.variants[0]
    base = float(np.median(rates[reference]))
    print(f"\n| variant | images/s | vs {reference} |\n| --- | --- | --- |")
    for name, values in rates.items():
        print(f"| {name} | {np.median(values):.1f} | {np.median(values) / base:.2f} |")


if __name__ == "__main__":
    main()
