"""A multi-class long-tailed segmentation data set from real images: mosaics of CIFAR-10 images.

Each mosaic is a ``grid x grid`` array of 32x32 CIFAR-10 tiles; every tile's pixels are labelled with its image's
class, except a ``border``-pixel ring around each tile (so ``2 * border`` pixels between neighbouring tiles), which is
the ignore index 255. Training mosaics are built from CIFAR-10's training images, validation mosaics from its test
images (read with ``npe_models.data.load_cifar``). Tile counts per class follow the exponential long-tailed profile
``n_c = int(n_max * (1 / rho) ** (c / 9))`` (``npe_models.data.long_tailed_counts``); since every tile holds the same
number of labelled pixels, a class's share of the labelled pixels is its share of the tiles. The tiles are shuffled
over the mosaics, and each class's tiles take its images in a seeded random order (cycling through them again only
when a class needs more tiles than CIFAR-10 has images of it). The validation mix has its own ``--val-rho`` (default
1: balanced, so that every class has enough pixels for a stable IoU, as CIFAR-LT's balanced test set).

Why rho 1000 by default: the package groups classes by their share of the labelled training pixels (Many >= 1 %,
Few < 0.1 %, ``npe_models.segmentation.metrics.pixel_share_groups``). At rho 100 the smallest of 10 exponential
classes still holds 0.40 % of the pixels, so no class would be Few; at rho 1000 the shares run from 53.6 % down to
0.054 %: classes 0-5 Many, 6-8 Medium, 9 Few.

Written twice under ``--out``: ``seg_folder/`` (``images/{train,val}/NAME.png``, ``masks/{train,val}/NAME.png`` with
labels 0..9 and 255, ``classes.txt``) and ``ade20k/`` (``images/{training,validation}``,
``annotations/{training,validation}``, labels + 1 with 0 = ignored, as ADE20K's ``reduce_zero_label`` expects), with
``summary.json`` (tile and pixel counts, shares, groups). Deterministic from ``--seed``.

Reproduce the benchmark's data set (benchmarks/bench_segmentation_table7.sh)::

    python benchmarks/make_cifar_mosaic.py --data-dir ../shared/data/cifar10 --out /work/bench-out/cifar_mosaic
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from npe_models.data import ImageArrays, load_cifar, load_cifar_class_names, long_tailed_counts

TILE = 32
IGNORE_INDEX = 255
SPLITS = {"train": "training", "val": "validation"}  # seg_folder split -> ADE20K split folder


def tiles_per_class(num_classes: int, n_max: int, rho: float, tiles_per_mosaic: int) -> list[int]:
    """Long-tailed tile counts per class, class 0 padded so that the total fills whole mosaics."""
    counts = long_tailed_counts(num_classes, n_max, rho)
    counts[0] += -sum(counts) % tiles_per_mosaic
    return counts


def tile_images(arrays: ImageArrays, counts: list[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Image indices and labels of all tiles, shuffled: each class's images in a random order, cycled if needed."""
    indices, labels = [], []
    for cls, count in enumerate(counts):
        pool = rng.permutation(np.flatnonzero(arrays.labels == cls))
        if count and not len(pool):
            raise ValueError(f"class {cls} has no image to make tiles of.")
        indices.append(np.resize(pool, count))
        labels.append(np.full(count, cls, dtype=np.int64))
    order = rng.permutation(sum(counts))
    return np.concatenate(indices)[order], np.concatenate(labels)[order]


def compose_mosaic(tiles: np.ndarray, labels: np.ndarray, grid: int, border: int) -> tuple[np.ndarray, np.ndarray]:
    """One mosaic from ``grid * grid`` tiles ``(T, 32, 32, 3)``: the image ``(H, W, 3)`` and its mask ``(H, W)``."""
    size = grid * TILE
    image = tiles.reshape(grid, grid, TILE, TILE, 3).transpose(0, 2, 1, 3, 4).reshape(size, size, 3)
    tile_mask = np.zeros((TILE, TILE), dtype=bool)
    tile_mask[border : TILE - border, border : TILE - border] = True
    mask = np.where(tile_mask[None, None], labels.reshape(grid, grid, 1, 1), IGNORE_INDEX).astype(np.uint8)
    return image, mask.transpose(0, 2, 1, 3).reshape(size, size)


def write_pair(root: Path, split: str, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    """One mosaic in both trees: the seg_folder's labels as they are, the ADE20K tree's shifted up by one."""
    ade_mask = np.where(mask == IGNORE_INDEX, 0, mask.astype(np.int64) + 1).astype(np.uint8)
    targets = (
        ("seg_folder", "masks", split, mask),
        ("ade20k", "annotations", SPLITS[split], ade_mask),
    )
    for tree, mask_folder, split_folder, labels in targets:
        Image.fromarray(image).save(root / tree / "images" / split_folder / f"{name}.png")
        Image.fromarray(labels, mode="L").save(root / tree / mask_folder / split_folder / f"{name}.png")


def make_folders(root: Path) -> None:
    """The empty split folders of both trees (an earlier tree at ``root`` is replaced)."""
    if root.exists():
        shutil.rmtree(root)
    for split, ade_split in SPLITS.items():
        for folder in ("images", "masks"):
            (root / "seg_folder" / folder / split).mkdir(parents=True)
        for folder in ("images", "annotations"):
            (root / "ade20k" / folder / ade_split).mkdir(parents=True)


def write_split(
    root: Path, split: str, arrays: ImageArrays, counts: list[int], grid: int, border: int, rng: np.random.Generator
) -> list[int]:
    """Every mosaic of ``split`` in both trees; the labelled pixels per class."""
    indices, labels = tile_images(arrays, counts, rng)
    per_mosaic = grid * grid
    pixels = np.zeros(len(counts), dtype=np.int64)
    for number in range(len(labels) // per_mosaic):
        chosen = slice(number * per_mosaic, (number + 1) * per_mosaic)
        image, mask = compose_mosaic(arrays.images[indices[chosen]], labels[chosen], grid, border)
        write_pair(root, split, f"{split}_{number:05d}", image, mask)
        pixels += np.bincount(mask[mask != IGNORE_INDEX], minlength=len(counts))
    return pixels.tolist()


def pixel_groups(pixels: list[int]) -> list[str]:
    """Each class's group by its share of the labelled pixels, the package's rule: Many >= 1 %, Few < 0.1 %."""
    shares = np.asarray(pixels) / sum(pixels)
    return ["many" if share >= 0.01 else "few" if share < 0.001 else "medium" for share in shares]


def make_mosaics(
    data_dir: Path,
    out: Path,
    *,
    grid: int = 4,
    border: int = 1,
    rho: float = 1000.0,
    train_max_tiles: int = 20000,
    val_rho: float = 1.0,
    val_max_tiles: int = 160,
    seed: int = 0,
) -> dict:
    """Write both trees under ``out`` and return the summary (also written to ``out/summary.json``)."""
    if not 0 <= border < TILE // 2:
        raise ValueError(f"border must be 0..{TILE // 2 - 1} pixels, got {border}.")
    names = list(load_cifar_class_names(data_dir) or [f"class {i}" for i in range(10)])
    rng = np.random.default_rng(seed)
    make_folders(out)
    summary: dict = {"classes": names, "grid": grid, "tile": TILE, "border": border, "seed": seed, "splits": {}}
    settings = {"train": (True, rho, train_max_tiles), "val": (False, val_rho, val_max_tiles)}
    for split, (train, split_rho, max_tiles) in settings.items():
        counts = tiles_per_class(len(names), max_tiles, split_rho, grid * grid)
        pixels = write_split(out, split, load_cifar(data_dir, train=train), counts, grid, border, rng)
        summary["splits"][split] = {
            "rho": split_rho,
            "mosaics": sum(counts) // (grid * grid),
            "tiles": counts,
            "pixels": pixels,
            "pixel_share": [round(p / sum(pixels), 6) for p in pixels],
        }
    summary["groups"] = pixel_groups(summary["splits"]["train"]["pixels"])
    (out / "seg_folder" / "classes.txt").write_text("".join(f"{name}\n" for name in names))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with CIFAR-10's train.npz and test.npz")
    parser.add_argument("--out", type=Path, required=True, help="output root (replaced): seg_folder/ and ade20k/")
    parser.add_argument("--grid", type=int, default=4, help="tiles per mosaic side (mosaic: 32 * grid pixels)")
    parser.add_argument("--border", type=int, default=1, help="ignored pixels on each tile edge")
    parser.add_argument("--rho", type=float, default=1000.0, help="training imbalance ratio (tiles, largest/smallest)")
    parser.add_argument("--train-max-tiles", type=int, default=20000, help="training tiles of the largest class")
    parser.add_argument("--val-rho", type=float, default=1.0, help="validation imbalance ratio (1: balanced)")
    parser.add_argument("--val-max-tiles", type=int, default=160, help="validation tiles of the largest class")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    summary = make_mosaics(
        args.data_dir,
        args.out,
        grid=args.grid,
        border=args.border,
        rho=args.rho,
        train_max_tiles=args.train_max_tiles,
        val_rho=args.val_rho,
        val_max_tiles=args.val_max_tiles,
        seed=args.seed,
    )
    for split, about in summary["splits"].items():
        print(f"{split}: {about['mosaics']} mosaics, tiles per class {about['tiles']}")
    print("training pixel share:", " ".join(f"{s:.4%}" for s in summary["splits"]["train"]["pixel_share"]))
    print("groups:", " ".join(summary["groups"]))


if __name__ == "__main__":
    main()
