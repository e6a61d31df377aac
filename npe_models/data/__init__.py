"""Data sets for NPE training and evaluation: long-tailed CIFAR in memory, image folders and the
ImageNet-LT / Places-LT / iNaturalist-2018 split lists on disk, behind one interface."""

from __future__ import annotations

import os
from typing import Optional, Union

from .cifar import (
    CIFAR_NUM_CLASSES,
    EXACT_TEST_SUBSET_SIZE,
    GROUP_NAMES,
    BatchStream,
    CifarLT,
    ImageArrays,
    class_groups,
    load_cifar,
    load_cifar_class_names,
    load_cifar_lt,
    load_image_npz,
    long_tailed_counts,
    long_tailed_indices,
)
from .files import IMAGE_LISTS, FileBatchStream, FileLT, check_file_loading, load_image_folder, load_image_lists
from .images import check_image_files, read_image
from .sampling import EpochSampler, epoch_order
from .scan import IMAGE_EXTENSIONS, ImageFiles, ImageList, collect_images
from .segfolder import ADE20K_CLASSES, FOLDER_SEGMENTATION_LAYOUTS, SegmentationFolder, segmentation_folder_classes
from .stare import STARE_CLASSES

__all__ = [
    "CLASSIFICATION_DATASETS",
    "LongTailedData",
    "load_long_tailed",
    "resolve_data_dir",
    "SEGMENTATION_DATASETS",
    "FOLDER_SEGMENTATION_LAYOUTS",
    "ADE20K_CLASSES",
    "SegmentationFolder",
    "segmentation_folder_classes",
    "check_dataset",
    "check_file_loading",
    "IMAGE_LISTS",
    "IMAGE_EXTENSIONS",
    "FileBatchStream",
    "FileLT",
    "ImageFiles",
    "ImageList",
    "collect_images",
    "check_image_files",
    "read_image",
    "load_image_folder",
    "load_image_lists",
    "EpochSampler",
    "epoch_order",
    "CIFAR_NUM_CLASSES",
    "EXACT_TEST_SUBSET_SIZE",
    "GROUP_NAMES",
    "BatchStream",
    "CifarLT",
    "ImageArrays",
    "class_groups",
    "load_cifar",
    "load_cifar_class_names",
    "load_cifar_lt",
    "load_image_npz",
    "long_tailed_counts",
    "long_tailed_indices",
]


def resolve_data_dir(data_dir: Optional[Union[str, os.PathLike]] = None) -> str:
    """The folder holding the data sets, the one rule for every command and task: ``data_dir`` when given, else
    ``$NPE_DATA_DIR``, else ``./data``."""
    if data_dir is not None and os.fspath(data_dir):
        return os.fspath(data_dir)
    return os.environ.get("NPE_DATA_DIR") or "data"


CLASSIFICATION_DATASETS = (*CIFAR_NUM_CLASSES, "folder", *IMAGE_LISTS)
SEGMENTATION_DATASETS: dict[str, tuple[str, ...]] = {"stare": STARE_CLASSES, "ade20k": ADE20K_CLASSES, "seg_folder": ()}
"""The segmentation data sets, with their class names (empty for ``seg_folder``: its classes come from its files,
see :func:`segmentation_folder_classes`). ``stare`` is an array file; ``seg_folder`` and ``ade20k`` are image and mask
files (:class:`SegmentationFolder`)."""
_DATASETS_OF_TASK = {"classification": CLASSIFICATION_DATASETS, "segmentation": tuple(SEGMENTATION_DATASETS)}


def check_dataset(dataset: str, task: Optional[str] = None) -> None:
    """The one check of a data set name (``--dataset``): one of ``task``'s data sets, or of either task's."""
    names = _DATASETS_OF_TASK[task] if task else (*CLASSIFICATION_DATASETS, *SEGMENTATION_DATASETS)
    if dataset not in names:
        scope = f"a {task} data set, one of" if task else "one of"
        raise ValueError(f"dataset (--dataset) must be {scope} {', '.join(names)}; got {dataset!r}.")


# What a classification run trains on: both give counts, groups, class_names, eval_sets, derived_sets,
# title, training_batches(model, batch_size, ...) and evaluation_batches(name, model, batch_size, ...).
LongTailedData = Union[CifarLT, FileLT]


def load_long_tailed(
    dataset: str,
    data_dir: Union[str, os.PathLike],
    *,
    rho: Optional[float] = None,
    max_per_class: Optional[int] = None,
    download: bool = False,
    split_dir: Optional[str] = None,
    image_size: Optional[int] = None,
    workers: Optional[int] = None,
) -> LongTailedData:
    """The classification data set ``dataset`` from ``data_dir``: CIFAR-LT (default rho 100), a folder tree
    (long-tailed subset with ``rho``, else as it is) or a data set's split lists (in ``split_dir``)."""
    check_dataset(dataset, "classification")
    check_file_loading(image_size, workers)
    if dataset in CIFAR_NUM_CLASSES:
        if image_size not in (None, 32):
            raise ValueError(f"{dataset} is fed from memory at 32x32; --image-size applies to file data sets.")
        return load_cifar_lt(data_dir, dataset, 100.0 if rho is None else rho, download, max_per_class)
    if dataset == "folder":
        return load_image_folder(data_dir, rho, max_per_class, image_size=image_size, workers=workers)
    if rho is not None or max_per_class is not None:
        raise ValueError(f"{dataset}'s split lists are long-tailed as published; drop --rho / --max-per-class.")
    return load_image_lists(dataset, data_dir, split_dir, image_size=image_size, workers=workers)
