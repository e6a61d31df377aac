"""Model names and registration: the one ``<arch>_npe<K>`` name parser and the helper that registers variants."""
from __future__ import annotations

import re

__all__ = ["npe_model_name", "parse_npe_name"]

_NPE_NAME = re.compile(r"^(?P<arch>.+)_npe(?P<num_pems>\d+)$")


def parse_npe_name(name: str) -> tuple[str, int]:
    """Split a model name ``<arch>_npe<K>[.<tag>]`` into ``(arch, K)``; a name without ``_npe<K>`` gives ``(arch, 0)``.

    ``"resnet32_npe16.cifar10_lt_r100_hp2"`` -> ``("resnet32", 16)``, ``"resnet32"`` -> ``("resnet32", 0)``.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}.")
    architecture = name.split(".", 1)[0]
    match = _NPE_NAME.match(architecture)
    if match is None:
        return architecture, 0
    num_pems = int(match["num_pems"])
    if num_pems == 0:
        raise ValueError(f"{name!r} asks for 0 PEMs; use the plain name {match['arch']!r} for a model without PEMs.")
    return match["arch"], num_pems


def npe_model_name(architecture: str, num_pems: int) -> str:
    """The registered name of ``architecture`` with ``num_pems`` PEMs: ``<arch>_npe<K>``, or ``<arch>`` for 0."""
    return f"{architecture}_npe{num_pems}" if num_pems else architecture
