"""Data sets for NPE training and evaluation: long-tailed CIFAR and its batch pipeline."""
import os

from .cifar import (
    CIFAR_NUM_CLASSES,
    EXACT_TEST_SUBSET_SIZE,
    GROUP_NAMES,
    BatchStream,
    CifarLT,
    ImageArrays,
    class_groups,
    load_cifar,
    load_cifar_lt,
    long_tailed_counts,
    long_tailed_indices,
)

__all__ = [
    "default_data_dir",
    "CIFAR_NUM_CLASSES",
    "EXACT_TEST_SUBSET_SIZE",
    "GROUP_NAMES",
    "BatchStream",
    "CifarLT",
    "ImageArrays",
    "class_groups",
    "load_cifar",
    "load_cifar_lt",
    "long_tailed_counts",
    "long_tailed_indices",
]


def default_data_dir() -> str:
    """Where the data sets are when no folder is given: ``$NPE_DATA_DIR``, else ``./data``."""
    return os.environ.get("NPE_DATA_DIR", "data")
