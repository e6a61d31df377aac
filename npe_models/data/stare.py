"""STARE retinal vessel segmentation (Hoover et al., 2000) from the project's ``stare/stare.npz`` array file.

Split as MMSegmentation does: the first 10 image ids (sorted) train, the last 10 validate.
Two annotations exist: Hoover's ``"ah"`` (missing for im0235 and im0236, both in the
validation half) and Kouznetsova's ``"vk"`` (complete). Images are served as uint8 tensors;
normalisation and augmentation belong to the training pipeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["STARE_CLASSES", "STARE_ANNOTATIONS", "STARE_SPLITS", "STARE_NUM_TRAIN", "StareSegmentation", "stare_file"]

STARE_CLASSES = ("background", "vessel")
STARE_ANNOTATIONS = {"ah": "masks", "vk": "masks_vk"}
STARE_SPLITS = ("train", "val")
STARE_NUM_TRAIN = 10
_STARE_FILE = "stare.npz"


def stare_file(root: Union[str, Path]) -> Path:
    """Locate ``stare.npz`` from the data root (holding ``stare/``), the ``stare`` folder, or the file itself."""
    root = Path(root)
    for candidate in (root, root / _STARE_FILE, root / "stare" / _STARE_FILE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no STARE data at '{root}': expected '{root / 'stare' / _STARE_FILE}' (arrays images, masks, masks_vk, "
        "has_ah, ids). Pass the shared data root, e.g. ../shared/data, or set NPE_DATA_DIR."
    )


class StareSegmentation(Dataset):
    """STARE images ``(3, H, W)`` uint8 with class-index masks ``(H, W)`` int64 (0 background, 1 vessel).

    ``split`` is ``"train"`` (first 10 ids, sorted) or ``"val"`` (last 10); ``annotation`` is
    ``"ah"`` or ``"vk"``. Images that lack the chosen annotation are left out, so the ``"ah"``
    validation set has 8 images and the ``"vk"`` one 10. ``ids`` names the images kept.
    """

    classes = STARE_CLASSES

    def __init__(self, root: Union[str, Path], split: str = "train", annotation: str = "ah") -> None:
        if split not in STARE_SPLITS:
            raise ValueError(f"split must be one of {STARE_SPLITS}, got {split!r}.")
        if annotation not in STARE_ANNOTATIONS:
            raise ValueError(f"annotation must be one of {tuple(STARE_ANNOTATIONS)}, got {annotation!r}.")
        path = stare_file(root)
        with np.load(path, allow_pickle=False) as arrays:
            missing = {"images", "ids", "has_ah", STARE_ANNOTATIONS[annotation]} - set(arrays.files)
            if missing:
                raise ValueError(f"'{path}' lacks the arrays {sorted(missing)}; it is not the STARE array file.")
            order = np.argsort(arrays["ids"], kind="stable")
            chosen = order[:STARE_NUM_TRAIN] if split == "train" else order[STARE_NUM_TRAIN:]
            if annotation == "ah":
                chosen = chosen[arrays["has_ah"][chosen]]
            self.ids = [str(i) for i in arrays["ids"][chosen]]
            self._images = torch.from_numpy(arrays["images"][chosen]).permute(0, 3, 1, 2).contiguous()
            self._masks = torch.from_numpy(arrays[STARE_ANNOTATIONS[annotation]][chosen].astype(np.int64))
        self.split = split
        self.annotation = annotation

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self._images[index], self._masks[index]

    def __repr__(self) -> str:
        return f"StareSegmentation(split={self.split!r}, annotation={self.annotation!r}, images={len(self)})"
