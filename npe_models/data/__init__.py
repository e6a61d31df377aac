"""Data sets for NPE training and evaluation: long-tailed CIFAR and its batch pipeline."""
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
