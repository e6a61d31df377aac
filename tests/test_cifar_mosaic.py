"""The CIFAR-10 mosaic generator (benchmarks/make_cifar_mosaic.py) at the conftest's tiny size: both trees open with
the package's segmentation sources with the class pixel counts the long-tailed tile counts give, tiles are CIFAR
images of their label, and a seed gives the same files."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from npe_models.data import SegmentationFolder, load_cifar

BORDER = 2  # the conftest's TINY_MOSAIC_OPTIONS
LABELLED_PER_TILE = (32 - 2 * BORDER) ** 2
# long_tailed_counts(10, 20, rho=10), class 0 padded from 20 to 22 to fill 20 mosaics of 2 x 2 tiles
TRAIN_TILES = [22, 15, 11, 9, 7, 5, 4, 3, 2, 2]
VAL_TILES = [2] * 10


@pytest.mark.parametrize("split, tiles", [("train", TRAIN_TILES), ("val", VAL_TILES)])
def test_both_trees_open_with_the_tile_counts_pixels(
    cifar_mosaics: tuple[Path, dict], split: str, tiles: list[int]
) -> None:
    out, summary = cifar_mosaics
    expected = [count * LABELLED_PER_TILE for count in tiles]
    seg_folder = SegmentationFolder(out / "seg_folder", split, "seg_folder")
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert seg_folder.classes == names
    ade20k = SegmentationFolder(out / "ade20k", split, "ade20k", class_names=names)
    assert ade20k.reduce_zero_label
    for source in (seg_folder, ade20k):
        assert len(source) == sum(tiles) // 4
        assert source.class_pixels.tolist() == expected
    assert summary["splits"][split]["tiles"] == tiles
    image, mask = seg_folder[0]
    assert tuple(image.shape) == (3, 64, 64) and tuple(mask.shape) == (64, 64)
    assert (mask[:BORDER] == 255).all() and (mask[32 - BORDER : 32 + BORDER] == 255).all()
    assert (ade20k[0][1] == mask).all()


def test_each_tile_is_a_cifar_image_of_its_label(cifar_mosaics: tuple[Path, dict], data_dir: Path) -> None:
    out, _ = cifar_mosaics
    arrays = load_cifar(data_dir / "cifar10", train=True)
    image = np.asarray(Image.open(out / "seg_folder" / "images" / "train" / "train_00000.png"))
    mask = np.asarray(Image.open(out / "seg_folder" / "masks" / "train" / "train_00000.png"))
    for top in (0, 32):
        for left in (0, 32):
            tile = image[top : top + 32, left : left + 32]
            matches = np.flatnonzero((arrays.images == tile).all(axis=(1, 2, 3)))
            assert len(matches) >= 1
            assert mask[top + 16, left + 16] in arrays.labels[matches]


def test_groups_follow_the_pixel_share_rule(cifar_mosaics: tuple[Path, dict]) -> None:
    _, summary = cifar_mosaics
    shares = np.array(TRAIN_TILES) / sum(TRAIN_TILES)
    expected = ["many" if s >= 0.01 else "few" if s < 0.001 else "medium" for s in shares]
    assert summary["groups"] == expected
    assert summary["splits"]["train"]["pixels"] == [n * LABELLED_PER_TILE for n in TRAIN_TILES]


@pytest.mark.slow  # runs the generator twice more (about 18 s); the trees themselves are checked in the default suite
def test_the_seed_decides_the_mosaics(cifar_mosaics: tuple[Path, dict], write_cifar_mosaics, tmp_path: Path) -> None:
    out, _ = cifar_mosaics
    write_cifar_mosaics(tmp_path / "same", seed=0)
    write_cifar_mosaics(tmp_path / "other", seed=1)
    name = Path("ade20k") / "images" / "training" / "train_00003.png"
    assert (out / name).read_bytes() == (tmp_path / "same" / name).read_bytes()
    assert (out / name).read_bytes() != (tmp_path / "other" / name).read_bytes()
