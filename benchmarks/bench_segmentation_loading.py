"""Segmentation training images/s from image files vs the in-memory STARE arrays, on the same crops.

python benchmarks/bench_segmentation_loading.py --data-dir ../shared/data [--workers 0 1 2] [--iterations 40]
                                                [--augment crop] [--batch-size 4] [--crop-size 128] [--rounds 2]

Writes STARE's training split as a seg_folder (lossless PNG) into a temporary folder, checks that both sources give
the same batches, then times, for each DataLoader worker count: ``load`` (the batches alone: decoding and
augmentation, so the cost of reading PNGs is visible) and ``train`` (npe_models.segmentation.train_segmentation of
UNet-FCN with one linear PEM, frozen backbone, as the paper's PEM protocol: batches plus SGD steps). Each setting
runs ``--rounds`` times, interleaved, and the median is printed; the first iterations (worker start-up) count.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from npe_models.data import SegmentationFolder
from npe_models.data.stare import StareSegmentation
from npe_models.segmentation import RandomCropBatches, SegmentationTrainConfig, train_segmentation
from npe_models.segmentation.config import pretrained_segmentation_config


def write_stare_folder(data_dir: Path, root: Path) -> SegmentationFolder:
    """STARE's training images and masks as ``root/images/train/*.png`` and ``root/masks/train/*.png``."""
    stare = StareSegmentation(data_dir, "train")
    for kind in ("images", "masks"):
        (root / kind / "train").mkdir(parents=True)
    (root / "classes.txt").write_text("background\nvessel\n")
    for name, (image, mask) in zip(stare.ids, stare):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / "images" / "train" / f"{name}.png")
        Image.fromarray(mask.numpy().astype(np.uint8)).save(root / "masks" / "train" / f"{name}.png")
    return SegmentationFolder(root, "train")


def load_seconds(dataset, config: SegmentationTrainConfig, workers: int) -> float:
    batches = RandomCropBatches(dataset, config.batch_size, config.augmentation(), config.seed, workers=workers)
    began = time.perf_counter()
    for iteration in range(config.iterations):
        batches.batch(iteration)
    batches.close()
    return time.perf_counter() - began


def train_seconds(dataset, config: SegmentationTrainConfig, workers: int) -> float:
    model_config = pretrained_segmentation_config("unet_fcn.STARE")[0]
    model_config = type(model_config).from_dict({**model_config.to_dict(), "name": "unet_fcn_npe1"})
    model = model_config.build()
    began = time.perf_counter()
    settings = SegmentationTrainConfig.from_dict({**config.to_dict(), "workers": workers})
    train_segmentation(model, dataset, settings, model_config)
    return time.perf_counter() - began


def check_same_batches(arrays, files, config: SegmentationTrainConfig) -> None:
    """Both sources give identical batches (the files hold the arrays' pixels, losslessly)."""
    for workers in (0, 2):
        first = RandomCropBatches(arrays, config.batch_size, config.augmentation(), config.seed).batch(3)
        second = RandomCropBatches(files, config.batch_size, config.augmentation(), config.seed, workers=workers)
        other = second.batch(3)
        second.close()
        if not (torch.equal(first[0], other[0]) and torch.equal(first[1], other[1])):
            raise SystemExit("the seg_folder and the arrays gave different batches")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop-size", type=int, default=128)
    parser.add_argument("--augment", choices=("crop", "mmseg"), default="crop")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    scale = {"scale": (700, 605)} if args.augment == "mmseg" else {}  # mmseg: STARE's own size as the base scale
    config = SegmentationTrainConfig(
        iterations=args.iterations,
        batch_size=args.batch_size,
        crop_size=(args.crop_size, args.crop_size),
        augment=args.augment,
        checkpoint_every=10**6,
        **scale,
    )
    arrays = StareSegmentation(args.data_dir, "train")
    with tempfile.TemporaryDirectory() as folder:
        files = write_stare_folder(args.data_dir, Path(folder))
        check_same_batches(arrays, files, config)
        sources = [(what, source) for what in ("load", "train") for source in ("arrays", "files")]
        settings = [(what, source, workers) for what, source in sources for workers in args.workers]
        times: dict[tuple[str, str, int], list[float]] = {s: [] for s in settings}
        for _ in range(args.rounds):
            for what, source, workers in settings:
                measure = load_seconds if what == "load" else train_seconds
                times[(what, source, workers)].append(measure(arrays if source == "arrays" else files, config, workers))
    images = args.iterations * args.batch_size
    print(
        f"{args.augment} crops {args.crop_size}, batch {args.batch_size}, {args.iterations} iterations, "
        f"torch threads {torch.get_num_threads()}, median of {args.rounds} rounds"
    )
    print(f"{'what':6} {'source':7} {'workers':>7} {'images/s':>9}")
    for (what, source, workers), seconds in times.items():
        print(f"{what:6} {source:7} {workers:7d} {images / statistics.median(seconds):9.1f}")


if __name__ == "__main__":
    main()
