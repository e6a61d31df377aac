"""Segmentation training augmentation and batches: MMSegmentation's ADE20K pipeline, and batches that are a pure
function of (seed, iteration, position), whatever the workers, the processes or a resume (issue 45)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from npe_models.data import SegmentationFolder
from npe_models.segmentation import CropAugmentation, RandomCropBatches, resolve_segmentation_config
from npe_models.segmentation.augment import _hsv_to_rgb, _rgb_to_hsv, photometric_distortion, random_rescale
from npe_models.segmentation.sampling import sample_generator

pytestmark = pytest.mark.usefixtures("one_thread")


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pair(height: int = 20, width: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.randint(0, 256, (3, height, width), generator=_generator(1), dtype=torch.uint8)
    mask = torch.zeros(height, width, dtype=torch.int64)
    mask[:, width // 2 :] = 1
    return image, mask


def test_random_rescale_keeps_the_aspect_ratio_within_the_scaled_bounds() -> None:
    image, mask = _pair(20, 40)
    resized, resized_mask = random_rescale(image, mask, (64, 32), (1.0, 1.0), _generator(0))
    assert resized.shape == (3, 32, 64) and resized.dtype == torch.uint8  # min(64 / 40, 32 / 20) = 1.6
    assert resized_mask.shape == (32, 64) and set(resized_mask.unique().tolist()) == {0, 1}
    assert torch.equal(resized_mask[:, :32], torch.zeros(32, 32, dtype=torch.int64))  # nearest: labels stay labels
    halved, _ = random_rescale(image, mask, (64, 32), (0.5, 0.5), _generator(0))
    assert halved.shape == (3, 16, 32)


def test_mmseg_pipeline_crops_pads_and_repeats_with_its_generator() -> None:
    image, mask = _pair(20, 40)
    augment = CropAugmentation((24, 24), "mmseg", scale=(40, 20), ratio_range=(0.5, 2.0), ignore_index=255)
    outputs = [augment(image, mask, _generator(seed)) for seed in range(20)]
    assert all(o[0].shape == (3, 24, 24) and o[1].shape == (24, 24) for o in outputs)
    assert torch.equal(augment(image, mask, _generator(3))[0], outputs[3][0])
    padded = [o for o in outputs if (o[1] == 255).any()]  # ratio < 1.2 leaves the 20-pixel height under the crop
    assert padded and all(((o[1] == 255) <= (o[0] == 0).all(0)).all() for o in padded)  # padding: image 0
    assert len({o[0].float().mean().item() for o in outputs}) > 10  # rescale, crop and colours vary


def test_cat_max_ratio_redraws_crops_dominated_by_one_class() -> None:
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    mask = torch.zeros(64, 64, dtype=torch.int64)
    mask[:, 48:] = 1  # a quarter of the image: most 24-pixel crops see class 0 only

    def balanced(ratio: float) -> int:
        augment = CropAugmentation(
            (24, 24), "mmseg", scale=(64, 64), ratio_range=(1, 1), cat_max_ratio=ratio, photometric=False
        )
        crops = [augment(image, mask, _generator(seed))[1] for seed in range(200)]
        shares = [torch.bincount(c.flatten(), minlength=2).max().item() / c.numel() for c in crops]
        return sum(share < 0.75 for share in shares)

    assert balanced(0.75) >= 180 and balanced(1.0) <= 80  # about 96 % and 29 % of the crops


def test_photometric_distortion_and_hsv_round_trip() -> None:
    image = torch.randint(0, 256, (3, 16, 16), generator=_generator(2), dtype=torch.uint8)
    assert torch.equal(_hsv_to_rgb(*_rgb_to_hsv(image.float())), image)
    distorted = [photometric_distortion(image, _generator(seed)) for seed in range(8)]
    assert all(d.dtype == torch.uint8 and d.shape == image.shape for d in distorted)
    assert sum(not torch.equal(d, image) for d in distorted) >= 6


def _files(root: Path, count: int = 4) -> SegmentationFolder:
    """A seg_folder of ``count`` training images (different sizes) and masks of two classes."""
    for kind in ("images", "masks"):
        (root / kind / "train").mkdir(parents=True)
    for i in range(count):
        height, width = 30 + 4 * i, 36
        image = np.random.default_rng(i).integers(0, 256, (height, width, 3), dtype=np.uint8)
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[5 + i :, 10:] = 1
        Image.fromarray(image).save(root / "images" / "train" / f"{i}.png")
        Image.fromarray(mask).save(root / "masks" / "train" / f"{i}.png")
    return SegmentationFolder(root, "train")


def _batches(dataset, **options) -> list[tuple[torch.Tensor, torch.Tensor]]:
    augment = CropAugmentation((24, 24), "mmseg", scale=(48, 32))
    batches = RandomCropBatches(dataset, 4, augment, seed=7, **options)
    try:
        return [batches.batch(i) for i in range(3)]
    finally:
        batches.close()


def _same(first, second) -> bool:
    return all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second))


def test_batches_do_not_depend_on_workers_processes_or_where_a_run_resumes(tmp_path: Path) -> None:
    dataset = _files(tmp_path / "data")
    in_process = _batches(dataset)
    assert _same(_batches(dataset, workers=2), in_process)
    ranks = [_batches(dataset, rank=rank, world_size=2, workers=1) for rank in (0, 1)]
    joined = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(*ranks)]
    assert _same(joined, in_process)
    resumed = RandomCropBatches(dataset, 4, CropAugmentation((24, 24), "mmseg", scale=(48, 32)), seed=7)
    assert _same([resumed.batch(2)], in_process[2:]) and resumed.state_dict() == {}
    assert not _same(in_process[:1], in_process[1:2])
    assert sample_generator(7, 0, 0).initial_seed() != sample_generator(7, 0, 1).initial_seed()


def test_legacy_generator_state_keeps_drawing_the_old_way(tmp_path: Path) -> None:
    dataset = _files(tmp_path / "data", count=2)
    batches = RandomCropBatches(dataset, 2, CropAugmentation((16, 16)), seed=0)
    state = torch.Generator().manual_seed(3).get_state()
    batches.load_state_dict({"generator": state})
    images, masks = batches.batch(5)
    generator = torch.Generator().manual_seed(3)  # the pre-seeding order: the batch's images, then each crop's draws
    indices = torch.randint(2, (2,), generator=generator).tolist()
    expected = [CropAugmentation((16, 16))(*dataset[i], generator) for i in indices]
    assert torch.equal(images, torch.stack([e[0] for e in expected]))
    assert torch.equal(masks, torch.stack([e[1] for e in expected]))
    assert torch.equal(batches.state_dict()["generator"], generator.get_state())


def test_ade20k_runs_default_to_the_mmseg_pipeline_and_crop_settings_refuse_mmseg_options(tmp_path: Path) -> None:
    root = tmp_path / "ade"
    for kind, split in (("images", "training"), ("annotations", "training")):
        (root / kind / split).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / "training" / "a.jpg")
    Image.fromarray(np.ones((8, 8), np.uint8)).save(root / "annotations" / "training" / "a.png")
    config = resolve_segmentation_config(tmp_path / "run", False, model="unet_fcn", dataset="ade20k", data_dir=root)
    assert (config.train.augment, config.train.crop_size, config.train.cat_max_ratio) == ("mmseg", (512, 512), 0.75)
    stare = resolve_segmentation_config(tmp_path / "run", False, model="unet_fcn")
    assert (stare.train.augment, stare.train.crop_size) == ("crop", (128, 128))
    with pytest.raises(ValueError, match="--scale, --no-photometric set MMSegmentation's pipeline; add --augment"):
        resolve_segmentation_config(tmp_path / "run", False, model="unet_fcn", scale=(64, 32), photometric=False)
    with pytest.raises(ValueError, match="ratio_range must be"):
        resolve_segmentation_config(tmp_path / "run", False, model="unet_fcn", augment="mmseg", ratio_range=(2, 1))
    with pytest.raises(ValueError, match="workers"):
        resolve_segmentation_config(tmp_path / "run", False, model="unet_fcn", workers=-1)
