"""Segmentation training steps in fp32 and with ``--amp`` (bf16 autocast), with and without channels-last memory.

The variants take turns step by step on one model in one process, so the machine's load hits them alike; the
ratio to fp32 is the number to read. Each step is the training's own: the forward pass and the loss under
``npe_models.distributed.bf16_autocast`` (as ``npe-models train --amp``), backward and an SGD step.

    python benchmarks/bench_segmentation_amp.py                       # smp UPerNet-R18, batch 8 of 64 x 64
    python benchmarks/bench_segmentation_amp.py --model deeplabv3_mobilenet_v3_large
    python benchmarks/bench_segmentation_amp.py --model unet_fcn --num-classes 2 --crop-size 128 --batch-size 4
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import torch

from npe_models.distributed import bf16_autocast
from npe_models.segmentation import SegmentationModelConfig, segmentation_loss_terms

DEFAULT_MODEL, DEFAULT_MODEL_ARGS = "smp:upernet:tu-resnet18", ["decoder_channels=64"]  # the Table-7 analogue's
VARIANTS = {  # label -> (amp, channels_last)
    "fp32": (False, False),
    "amp": (True, False),
    "fp32 channels_last": (False, True),
    "amp channels_last": (True, True),
}


def timed_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, images, masks, amp: bool) -> float:
    """Seconds of one training step: forward and loss (autocast with ``amp``), backward, SGD step."""
    start = time.perf_counter()
    with bf16_autocast(torch.device("cpu"), amp):
        loss = sum(segmentation_loss_terms(model(images), masks).values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument(
        "--model-arg", action="append", help=f"KEY=JSON_VALUE (default: {DEFAULT_MODEL_ARGS} for the default model)"
    )
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=12, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    args = parser.parse_args()
    model_args = args.model_arg or (DEFAULT_MODEL_ARGS if args.model == DEFAULT_MODEL else [])
    kwargs = {key: json.loads(value) for key, value in (item.split("=", 1) for item in model_args)}
    torch.manual_seed(0)
    model = SegmentationModelConfig(name=args.model, num_classes=args.num_classes, model_kwargs=kwargs).build()
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    images = torch.randn(args.batch_size, 3, args.crop_size, args.crop_size)
    masks = torch.randint(0, args.num_classes, (args.batch_size, args.crop_size, args.crop_size))
    seconds: dict[str, list[float]] = {label: [] for label in VARIANTS}
    for round_index, (label, (amp, channels_last)) in itertools.product(
        range(args.warmup + args.rounds), VARIANTS.items()
    ):
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model.to(memory_format=memory_format)
        step = timed_step(model, optimizer, images.contiguous(memory_format=memory_format), masks, amp)
        if round_index >= args.warmup:
            seconds[label].append(step)
    fp32 = statistics.median(seconds["fp32"])
    print(f"{args.model}, batch {args.batch_size} of {args.crop_size}x{args.crop_size}, torch threads "
          f"{torch.get_num_threads()}, median of {args.rounds} steps each")  # fmt: skip
    for label, steps in seconds.items():
        median = statistics.median(steps)
        print(f"{label:20s} {args.batch_size / median:7.2f} images/s   {fp32 / median:5.2f}x fp32")


if __name__ == "__main__":
    main()
