"""The record of a class prior folded into a model: what ``npe-models adapt`` keeps in the model's
``pretrained_cfg`` and writes as ``prior.json``, and what ``evaluate --target-prior`` reads back."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .files import PathLike, read_json, write_json

__all__ = ["PRIOR_FILE", "PriorRecord"]

PRIOR_FILE = "prior.json"


@dataclass(frozen=True)
class PriorRecord:
    """A class prior and where it came from: the estimate (``prior``, one weight per class), the calibration
    folded in with it (BCTS ``temperature`` and ``calibration_bias``), the data and ``method`` that estimated it,
    the ``source`` model and its ``class_names``."""

    prior: tuple[float, ...]
    temperature: Optional[float] = None
    calibration_bias: Optional[tuple[float, ...]] = None
    data: Optional[str] = None
    method: Optional[str] = None
    source: Optional[str] = None
    class_names: Optional[tuple[str, ...]] = None

    def __post_init__(self) -> None:
        weights = self.prior
        valid = len(weights) > 0 and all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in weights)
        if not valid or not sum(weights) > 0:
            raise ValueError(f"a prior needs finite non-negative weights, not all zero; got {list(weights)[:10]}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in vars(self).items()}

    @classmethod
    def from_dict(cls, data: Any, origin: str = "the prior record") -> PriorRecord:
        """A record from its dict, or from a bare list of per-class weights; unknown keys are an error."""
        if isinstance(data, Sequence) and not isinstance(data, str):
            data = {"prior": data}
        if not isinstance(data, Mapping) or "prior" not in data:
            raise ValueError(f"{origin} holds neither a list of per-class weights nor an object with a 'prior' list.")
        fields = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"{origin} has unknown keys {unknown}; a prior record has {sorted(fields)}.")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})

    def write(self, folder: PathLike) -> Path:
        """Write ``folder/prior.json`` atomically; returns its path."""
        path = Path(folder) / PRIOR_FILE
        write_json(path, self.to_dict())
        return path

    @classmethod
    def read(cls, path: PathLike) -> PriorRecord:
        """The record in a ``prior.json`` (or any JSON file of per-class weights)."""
        return cls.from_dict(read_json(path), f"'{path}'")
