"""ONNX Runtime vs PyTorch eager on the CPU: batch-1 latency and batched throughput of exported NPE models.

Models are exported merged (``export_onnx``), checked for parity, then timed in interleaved
rounds within one process (so machine noise hits both runtimes alike), both on the same
number of threads: the classifier at batch 1 (latency) and 64 (throughput), the segmentation
model at 512x512, batch 1 and 8. Reports medians and the PyTorch / ONNX Runtime time ratio
(above 1: ONNX Runtime is faster).

    python benchmarks/bench_onnx.py [--rounds 7] [--threads 2] [--segmentation NAME|none]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch

import npe_models  # noqa: F401  (registers the models)
from npe_models.onnx import check_parity, export_onnx, onnx_session

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "export"))
from onnx_validate import random_model_for_parity  # noqa: E402  (release tooling, export/)


def _seconds_per_call(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def _compare(
    model: torch.nn.Module, path: Path, shape: tuple[int, ...], calls: int, rounds: int, threads: int
) -> tuple[float, float]:
    """Median seconds per call of PyTorch eager and ONNX Runtime on the same seeded input."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    feed = {"input": x.numpy()}
    session = onnx_session(path, threads=threads)
    model.eval()

    def torch_call() -> object:
        with torch.inference_mode():
            return model(x)

    def onnx_call() -> object:
        return session.run(None, feed)

    torch_call(), onnx_call()  # warm-up: allocations, kernel selection
    torch_times, onnx_times = [], []
    for _ in range(rounds):
        torch_times.append(_seconds_per_call(torch_call, calls))
        onnx_times.append(_seconds_per_call(onnx_call, calls))
    return statistics.median(torch_times), statistics.median(onnx_times)


def _speed(batch: int, seconds: float) -> str:
    """Latency for a single image, throughput for a batch."""
    return f"{seconds * 1e3:.2f} ms" if batch == 1 else f"{batch / seconds:.1f} img/s"


def _report(label: str, shape: tuple[int, ...], torch_s: float, onnx_s: float) -> None:
    batch = shape[0]
    print(
        f"| {label} | {'x'.join(map(str, shape))} | {_speed(batch, torch_s)} | {_speed(batch, onnx_s)} | "
        f"{torch_s / onnx_s:.2f} |",
        flush=True,
    )


def _bench(
    name: str, image_size: Optional[int], batches: list[tuple[int, int]], rounds: int, threads: int, tmp: Path
) -> None:
    model, size = random_model_for_parity(name, image_size=image_size)
    path = export_onnx(model, tmp / f"{name}.onnx", input_size=size)
    parity = check_parity(model, path, batch_sizes=(1, 3))
    print(f"<!-- {name}: merged export, parity max abs diff {parity.worst:.1e} -->")
    for batch, calls in batches:
        shape = (batch, *size)
        torch_s, onnx_s = _compare(model, path, shape, calls, rounds, threads)
        _report(f"{name} (merged)", shape, torch_s, onnx_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (median reported)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both runtimes")
    parser.add_argument("--classifier", default="resnet32_npe16")
    parser.add_argument(
        "--segmentation",
        default="deeplabv3_mobilenet_v3_large_npe16",
        help="segmentation model timed at 512x512, or 'none'",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"<!-- {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads, "
        f"torch {torch.__version__}, onnxruntime {__import__('onnxruntime').__version__}, rounds {args.rounds} -->"
    )
    print("| model | input | PyTorch eager | ONNX Runtime | PyTorch / ORT time |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
        _bench(args.classifier, None, [(1, 100), (64, 5)], args.rounds, args.threads, Path(tmp))
        if args.segmentation != "none":
            _bench(args.segmentation, 512, [(1, 3), (8, 1)], args.rounds, args.threads, Path(tmp))


if __name__ == "__main__":
    main()
