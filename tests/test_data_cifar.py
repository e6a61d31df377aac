"""Long-tailed CIFAR: exact subsets, groups, data sources and the whole-batch augmentation pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from npe_models.data import (
    BatchStream,
    ImageArrays,
    class_groups,
    load_cifar,
    load_cifar_class_names,
    load_cifar_lt,
    long_tailed_counts,
    long_tailed_indices,
)

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
CIFAR10_LT_R100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def _reference_indices(labels: np.ndarray, counts: list[int]) -> np.ndarray:
    """The reference code's selection, literally: global seed 0, then shuffle each class's index list in order."""
    np.random.seed(0)
    selected = []
    for cls, count in enumerate(counts):
        index = np.where(labels == cls)[0]
        np.random.shuffle(index)
        selected.append(index[:count])
    return np.concatenate(selected)


@pytest.mark.parametrize("rho, total", [(100, 12406), (50, 13996), (200, 11203)])
def test_cifar10_lt_counts(rho, total):
    counts = long_tailed_counts(10, 5000, rho)
    assert sum(counts) == total
    assert counts[0] == 5000 and counts == sorted(counts, reverse=True)
    if rho == 100:
        assert counts == CIFAR10_LT_R100


def test_cifar100_lt_on_synthetic_labels():
    labels = np.repeat(np.arange(100), 500)
    np.random.RandomState(1).shuffle(labels)
    index = long_tailed_indices(labels, 100)
    assert len(index) == 10847
    assert np.bincount(labels[index], minlength=100).tolist() == long_tailed_counts(100, 500, 100)
    assert np.array_equal(index, _reference_indices(labels, long_tailed_counts(100, 500, 100)))


def test_rho_one_is_balanced_and_rho_below_one_is_rejected():
    assert long_tailed_counts(10, 5000, 1) == [5000] * 10
    for bad in (0.5, 0, -3, float("nan")):
        with pytest.raises(ValueError, match="rho"):
            long_tailed_counts(10, 5000, bad)


def test_class_groups_boundaries():
    groups = class_groups([5000, 101, 100, 20, 19, 1])
    assert groups.tolist() == [0, 0, 1, 1, 2, 2]


def test_real_cifar10_lt_subset_is_exact_and_stable(data_dir):
    first = load_cifar_lt(data_dir, "cifar10", 100)
    second = load_cifar_lt(data_dir / "cifar10", "cifar10", 100)
    assert first.counts.tolist() == CIFAR10_LT_R100 and len(first.train) == 12406
    assert np.array_equal(first.train.labels, second.train.labels)
    assert np.array_equal(first.train.images, second.train.images)
    full = load_cifar(data_dir, "cifar10", train=True)
    expected = _reference_indices(full.labels, CIFAR10_LT_R100)
    assert np.array_equal(long_tailed_indices(full.labels, 100), expected)
    assert np.array_equal(first.train.images, full.images[expected])
    assert len(first.test) == 10000 and first.test.exact.sum() == 1000
    assert first.jpeg_twins is not None and len(first.jpeg_twins) == 1000
    assert first.groups.tolist() == [0] * 8 + [1] * 2
    assert first.class_names[:3] == ("airplane", "automobile", "bird") and len(first.class_names) == 10


def test_missing_data_dir_says_how_to_get_the_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="--download") as error:
        load_cifar_lt(tmp_path / "nowhere", "cifar10", 100)
    assert "train.npz" in str(error.value)


def test_unknown_dataset_and_too_small_subset(tmp_path):
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_cifar(tmp_path, "mnist")
    _write_npz(tmp_path, per_class=20)
    with pytest.raises(ValueError, match="max_per_class"):
        load_cifar_lt(tmp_path, "cifar10", 100, max_per_class=20)


def _write_npz(folder, per_class: int, test_per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    for name, count in (("train", per_class), ("test", test_per_class)):
        labels = np.repeat(np.arange(10), count)
        images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
        extra = {"lossless": np.arange(len(labels)) % 2 == 0} if name == "test" else {}
        np.savez(folder / f"{name}.npz", x=images, y=labels, **extra)


def test_torchvision_source_marks_first_1000_test_images_exact(tmp_path, monkeypatch):
    import torchvision.datasets

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            count = 500 if train else 2000
            self.data = np.zeros((count, 32, 32, 3), np.uint8)
            self.targets = [i % 10 for i in range(count)]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    (tmp_path / "cifar-10-batches-py").mkdir()
    test = load_cifar(tmp_path, "cifar10", train=False)
    assert test.exact.tolist() == [True] * 1000 + [False] * 1000
    assert load_cifar(tmp_path, "cifar10", train=True).exact.all()


def test_class_names_from_torchvision_meta_and_bad_classes_json(tmp_path):
    import pickle

    folder = tmp_path / "tv" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"class{i}" for i in range(10)]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    assert load_cifar_class_names(tmp_path / "tv") == tuple(names)
    _write_npz(tmp_path, per_class=3)
    assert load_cifar_class_names(tmp_path) is None  # no classes.json: no names, not an error
    (tmp_path / "classes.json").write_text('{"classes": ["a", "b"]}')
    with pytest.raises(ValueError, match="expected 10 class names"):
        load_cifar_class_names(tmp_path)
    (tmp_path / "classes.json").write_text("[not json")
    with pytest.raises(ValueError, match="'classes' list"):
        load_cifar_class_names(tmp_path)


def _toy_images(count: int = 12, size: int = 8) -> ImageArrays:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    labels = np.arange(count) % 3
    return ImageArrays(images, labels, np.ones(count, bool))


def test_eval_stream_normalises_in_order():
    data = _toy_images()
    stream = BatchStream(data, 5, MEAN, STD, train=False)
    images, labels = zip(*stream)
    assert [len(x) for x in labels] == [5, 5, 2]
    expected = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)
    expected = expected / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(torch.cat(images), expected)
    assert torch.equal(torch.cat(labels), torch.from_numpy(data.labels))


def test_train_stream_crops_and_flips_padded_images():
    data = _toy_images()
    stream = BatchStream(data, 4, (0, 0, 0), (1 / 255,) * 3, train=True, padding=2, seed=3)
    padded = F.pad(torch.from_numpy(data.images).permute(0, 3, 1, 2).float(), (2, 2, 2, 2))
    seen_flip = False
    for images, labels in stream:
        for image, label in zip(images, labels):
            candidates = [
                (i, flip)
                for i in np.flatnonzero(data.labels == label.item())
                for flip in (False, True)
                if any(
                    torch.equal(image, (padded[i].flip(2) if flip else padded[i])[:, top : top + 8, left : left + 8])
                    for top in range(5)
                    for left in range(5)
                )
            ]
            assert candidates, "every augmented image is a (flipped) crop of a padded training image"
            seen_flip |= any(flip for _, flip in candidates) and not any(not flip for _, flip in candidates)
    assert seen_flip


def _orders(stream: BatchStream, epoch: int) -> list[int]:
    """The training images a stream draws in an epoch, identified by their (unique) first pixel values."""
    stream.set_epoch(epoch)
    return [int(label) for _, labels in stream for label in labels]


def test_train_stream_is_reproducible_per_epoch_and_shards_over_ranks():
    data = ImageArrays(np.zeros((10, 8, 8, 3), np.uint8), np.arange(10), np.ones(10, bool))
    stream = BatchStream(data, 3, MEAN, STD, train=True, seed=5)
    assert _orders(stream, 0) == _orders(BatchStream(data, 3, MEAN, STD, train=True, seed=5), 0)
    assert _orders(stream, 0) != _orders(stream, 1)
    assert sorted(_orders(stream, 2)) == list(range(10))
    ranks = [BatchStream(data, 2, MEAN, STD, train=True, seed=5, rank=r, world_size=3) for r in range(3)]
    shards = [_orders(r, 0) for r in ranks]
    assert [len(s) for s in shards] == [4, 4, 4]  # 10 images padded to 12
    assert set(sum(shards, [])) == set(range(10))
    assert len(ranks[0]) == 2


def test_class_balanced_sampling_equalises_classes():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    data = ImageArrays(np.zeros((1000, 4, 4, 3), np.uint8), labels, np.ones(1000, bool))
    stream = BatchStream(data, 250, MEAN, STD, train=True, sampling="class_balanced", padding=0)
    drawn = np.array(_orders(stream, 0))
    assert len(drawn) == 1000
    assert np.all(np.abs(np.bincount(drawn, minlength=3) - 333) < 60)


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets

    class OfflineCIFAR10:
        def __init__(self, root, train, download):
            raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", OfflineCIFAR10)
    with pytest.raises(FileNotFoundError, match="no network.*train.npz"):
        load_cifar(tmp_path, "cifar10", train=True, download=True)
