"""What 16 PEMs cost: training-step throughput and inference, resnet32_npe16 vs resnet32.

Variants are timed in interleaved rounds within one process (so machine noise hits them
alike) and reported as median ratios to the plain model.

    python benchmarks/bench_npe_overhead.py [--rounds 7] [--steps 10] [--batch 128]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import timm
import torch
import torch.nn.functional as F
from timm.utils import reparameterize_model

import npe_models


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    if isinstance(model.get_classifier(), npe_models.NPEHead):
        out = model.forward_train(x)
        loss = F.cross_entropy(out.logits, y) + npe_models.one_way_logistic_loss(out.pem_logits, y)
    else:
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()


def _seconds(fn: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def _interleaved(fns: dict[str, Callable[[], None]], rounds: int, steps: int) -> dict[str, list[float]]:
    for fn in fns.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(_seconds(fn, steps))
    return times


def bench_training(batch: int, rounds: int, steps: int) -> dict[str, list[float]]:
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    fns = {}
    for name in ("resnet32", "resnet32_npe16"):
        model = timm.create_model(name).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
        fns[name] = lambda m=model, o=optimizer: _train_step(m, o, x, y)
    return _interleaved(fns, rounds, steps)


def bench_inference(batch: int, rounds: int, steps: int) -> dict[str, list[float]]:
    x = torch.randn(batch, 3, 32, 32)
    npe = timm.create_model("resnet32_npe16").eval()
    models = {
        "resnet32": timm.create_model("resnet32").eval(),
        "resnet32_npe16 unmerged": npe,
        "resnet32_npe16 merged": reparameterize_model(npe),
    }

    def infer(model: torch.nn.Module) -> None:
        with torch.inference_mode():
            model(x)

    return _interleaved({name: (lambda m=m: infer(m)) for name, m in models.items()}, rounds, steps)


def _report(title: str, batch: int, times: dict[str, list[float]], baseline: str) -> None:
    base = times[baseline]
    print(f"\n{title} (batch {batch}; median over rounds)")
    print(f"| variant | ms / step | images/s | ratio to {baseline} (median of per-round ratios) |")
    print("| --- | ---: | ---: | ---: |")
    for name, values in times.items():
        median = statistics.median(values)
        ratio = statistics.median(v / b for v, b in zip(values, base))
        print(f"| {name} | {median * 1e3:.1f} | {batch / median:.0f} | {ratio:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, timm {timm.__version__}, threads {torch.get_num_threads()}")
    _report(
        "Training step (forward_train + CE + one-way loss, backward, SGD)",
        args.batch,
        bench_training(args.batch, args.rounds, args.steps),
        "resnet32",
    )
    _report("Inference (eval, NPE-LA)", args.batch, bench_inference(args.batch, args.rounds, args.steps), "resnet32")


if __name__ == "__main__":
    main()
