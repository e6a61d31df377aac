"""End-to-end training throughput on CIFAR-10-LT (rho = 100): images per second over a full epoch.

Each variant runs one epoch of the engine's real training loop (in-memory uint8 data, whole-batch
crop + flip + normalise, forward, loss, backward, SGD step) for ResNet-32 with and without 16 PEMs
at batch 128 and 64. The ``pil`` variant is the reference code's input pipeline on the same model
and step: per-image PIL random crop + flip + ToTensor + Normalize in two DataLoader workers.
Variants run interleaved in one process so their ratios share the machine's conditions. Besides
wall-clock images/s it reports images per CPU-second (this process, its threads and its
DataLoader workers), which other processes sharing the CPU disturb much less.

    python benchmarks/bench_train_throughput.py --data-dir ../shared/data
    python benchmarks/bench_train_throughput.py --variants npe16-b128 npe16-b128-1thread --max-batches 20
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import npe_models  # noqa: F401  (registers the models)
from npe_models.data import load_cifar_lt
from npe_models.classification import resolve_config
from npe_models.distributed import DistributedContext
from npe_models.classification.train import _Run

VARIANTS = {
    # name: (model, batch size, channels_last, input pipeline, torch threads; None = torch's default)
    "npe16-b128": ("resnet32_npe16", 128, True, "tensor", None),
    "plain-b128": ("resnet32", 128, True, "tensor", None),
    "npe16-b64": ("resnet32_npe16", 64, True, "tensor", None),
    "plain-b64": ("resnet32", 64, True, "tensor", None),
    "npe16-b128-nchw": ("resnet32_npe16", 128, False, "tensor", None),
    "npe16-b128-1thread": ("resnet32_npe16", 128, True, "tensor", 1),
    "pil-npe16-b128": ("resnet32_npe16", 128, False, "pil", None),
}
DEFAULT_VARIANTS = ["npe16-b128", "plain-b128", "npe16-b64", "plain-b64", "npe16-b128-nchw", "pil-npe16-b128"]


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (DataLoader workers), all threads included."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def engine_epoch(model_name: str, batch_size: int, channels_last: bool, data_dir: str, max_batches: int | None):
    """(images, wall seconds, CPU seconds) of one epoch of the engine's training loop."""
    method = "npe" if "_npe" in model_name else "ce"
    config = resolve_config("hp1", method, model=model_name, batch_size=batch_size, channels_last=channels_last,
                            data_dir=data_dir, device="cpu")
    run = _Run(config, Path("unused"), DistributedContext(0, 1, 0, torch.device("cpu")), progress=None)
    if max_batches is not None:
        keep = max_batches * batch_size
        run.stream.labels, run.stream.images = run.stream.labels[:keep], run.stream.images[:keep]
    cpu = _cpu_seconds()
    record = run.train_epoch(0)
    return record["images"], record["seconds"], _cpu_seconds() - cpu


def pil_epoch(model_name: str, batch_size: int, data_dir: str, max_batches: int | None, workers: int):
    """(images, wall seconds, CPU seconds) of one epoch with the reference pipeline: per-image PIL transforms in workers."""
    import timm
    from PIL import Image
    from torchvision import transforms

    data = load_cifar_lt(data_dir, "cifar10", 100)
    model = timm.create_model(model_name, num_classes=10).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(model.pretrained_cfg["mean"], model.pretrained_cfg["std"]),
    ])

    class PilDataset(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(data.train) if max_batches is None else min(len(data.train), max_batches * batch_size)

        def __getitem__(self, index: int):
            return transform(Image.fromarray(data.train.images[index])), int(data.train.labels[index])

    loader = torch.utils.data.DataLoader(PilDataset(), batch_size=batch_size, shuffle=True, num_workers=workers,
                                         persistent_workers=False)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("NPE_DATA_DIR", "../shared/data"))
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=1, help="epochs per variant, interleaved across variants")
    parser.add_argument("--max-batches", type=int, help="stop each epoch after this many batches (quick checks)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the pil variant")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}  {platform.processor() or platform.machine()}  "
          f"{os.cpu_count()} CPUs  torch {torch.__version__}  threads {torch.get_num_threads()}  "
          f"load average before {os.getloadavg()[0]:.2f}")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in args.variants}
    for round_index in range(args.rounds):
        for name in args.variants:
            model_name, batch_size, channels_last, pipeline, threads = VARIANTS[name]
            default_threads = torch.get_num_threads()
            torch.set_num_threads(threads or default_threads)
            if pipeline == "pil":
                images, wall, cpu = pil_epoch(model_name, batch_size, args.data_dir, args.max_batches, args.workers)
            else:
                images, wall, cpu = engine_epoch(model_name, batch_size, channels_last, args.data_dir, args.max_batches)
            torch.set_num_threads(default_threads)
            results[name].append((images / wall, images / cpu))
            print(f"round {round_index + 1} {name:<18} {images / wall:7.1f} images/s  {images / cpu:7.1f} images/CPU-s  "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
    reference = "npe16-b128" if "npe16-b128" in results else args.variants[0]
    base_wall = float(np.median([r[0] for r in results[reference]]))
    base_cpu = float(np.median([r[1] for r in results[reference]]))
    print(f"\n| variant | model | batch | images/s | vs {reference} | images per CPU-second | vs {reference} |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, rates in results.items():
        model_name, batch_size = VARIANTS[name][:2]
        wall, cpu = float(np.median([r[0] for r in rates])), float(np.median([r[1] for r in rates]))
        print(f"| {name} | {model_name} | {batch_size} | {wall:.1f} | {wall / base_wall:.2f} | {cpu:.1f} | {cpu / base_cpu:.2f} |")
    print(f"(medians over {args.rounds} round(s); load average after {os.getloadavg()[0]:.2f})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
