"""Checkpoints trained by npe-models and bundled with the package: timm pretrained cfgs and sha256 checks.

The weights live in ``npe_models/weights/`` as safetensors files. ``manifest.json`` there records,
per ``<arch>.<tag>`` name, the file, its sha256, the run that produced it and the accuracy we
measured, so a corrupted or swapped file fails loudly instead of giving silently wrong outputs.
timm loads the files offline through the cfg's ``file``; ``hf_hub_id`` names the Hub copy, and
``paper_name`` / ``paper_ids`` / ``origin_url`` / ``notes`` say where the method comes from and
what each checkpoint is.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

from timm.models import resolve_pretrained_cfg
from torch import nn

__all__ = [
    "WEIGHTS_DIR",
    "MANIFEST_FILE",
    "HUB_ORGANISATION",
    "PAPER_NAME",
    "PAPER_ID",
    "ORIGIN_URL",
    "hub_repo_id",
    "bundled_checkpoints",
    "bundled_weights_meta",
    "checkpoint_notes",
    "checkpoint_cfg",
    "forget_pretrained_weights",
    "bundled_pretrained_cfgs",
    "file_sha256",
    "verify_bundled_weights",
    "check_weights_file",
    "verify_pretrained_file",
]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
MANIFEST_FILE = WEIGHTS_DIR / "manifest.json"
HUB_ORGANISATION = "npe-models"
PAPER_NAME = "Neural Prior Estimation: Learning Class Priors from Latent Representations"
PAPER_ID = "arXiv:2602.17853"
ORIGIN_URL = "https://github.com/masoudya/neural-prior-estimator"
"""The NPE paper (Yavari & Moallem, 2026) and its reference code, which the checkpoints' recipes follow."""
_TEST_SET_NOTE = (
    "Scored on the CIFAR test set as recovered here (9,000 of its 10,000 images from JPEG copies) and on its "
    "1,000 exact images, reported apart."
)
_METHOD_NOTES = {
    "ce": "Cross-entropy baseline: no PEMs, no logit adjustment.",
    "la": "Trained with the logit-adjusted loss (tau = {tau:g}).",
    "crt": "The classifier of {starts_from} re-trained with class-balanced sampling (cRT); its features are unchanged.",
    "posthoc_la": "The classifier bias of {starts_from} minus {tau:g} * log training prior (post-hoc logit adjustment); "
    "no training of its own.",
}
_RESTORE = (
    "Restore the package's weights: reinstall npe-models (pip install --force-reinstall npe-models), "
    "or in a git checkout run `git checkout -- npe_models/weights`."
)


@functools.cache
def _manifest() -> dict[str, Any]:
    """``manifest.json``, read once: ``checkpoints`` (the classifiers) and ``segmentation`` (dense weights)."""
    return json.loads(MANIFEST_FILE.read_text(encoding="utf-8")) if MANIFEST_FILE.exists() else {}


def bundled_checkpoints() -> dict[str, dict[str, Any]]:
    """``{'<arch>.<tag>': entry}`` for every bundled checkpoint, in manifest order (the default tag first)."""
    return _manifest().get("checkpoints", {})


def bundled_weights_meta(name: str) -> dict[str, Any]:
    """The manifest entry of bundled segmentation weights ``name`` (torchvision-style ``Weights.meta``)."""
    entries = _manifest().get("segmentation", {})
    if name not in entries:
        raise RuntimeError(f"{MANIFEST_FILE} has no segmentation weights '{name}'. {_RESTORE}")
    return entries[name]


def hub_repo_id(name: str) -> str:
    """The Hugging Face Hub repository of a shipped checkpoint ``<arch>.<tag>``: ``npe-models/<arch>.<tag>``."""
    return f"{HUB_ORGANISATION}/{name}"


def _npe_note(run: dict[str, Any], form: str) -> str:
    """What an NPE checkpoint's PEMs do, unmerged or folded into the classifier."""
    if form == "merged":
        return (
            f"The PEMs of a {run['model']} folded into the classifier: a plain model that outputs NPE-LA logits "
            f"(alpha = {run['npe_alpha']:g})."
        )
    return (
        f"Keeps its PEMs: eval mode outputs NPE-LA logits (alpha = {run['npe_alpha']:g}), `npe_estimate` the class "
        "prior estimate; `timm.utils.reparameterize_model` folds the PEMs into the classifier."
    )


def checkpoint_notes(entry: dict[str, Any]) -> tuple[str, ...]:
    """timm's ``notes`` for a shipped checkpoint, from its manifest entry: what it is, and how it was scored."""
    run = entry["run"]
    if run["method"] == "npe":
        what = _npe_note(run, entry["form"])
    else:
        what = _METHOD_NOTES[run["method"]].format(tau=run["tau"], starts_from=entry.get("starts_from"))
    return what, _TEST_SET_NOTE


def checkpoint_cfg(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The pretrained cfg fields of a shipped checkpoint besides its file: Hub copy, labels, paper, notes."""
    return dict(
        hf_hub_id=hub_repo_id(name),
        label_names=tuple(entry["cfg"]["label_names"] or ()) or None,
        description=entry["cfg"]["description"],
        paper_name=PAPER_NAME,
        paper_ids=PAPER_ID,
        origin_url=ORIGIN_URL,
        notes=checkpoint_notes(entry),
    )


# The pretrained cfg fields that describe one set of weights (not the architecture or its preprocessing).
_WEIGHTS_CFG_KEYS = ("tag", "url", "file", "hf_hub_id", "label_names", "description", "notes")


def forget_pretrained_weights(model: nn.Module) -> nn.Module:
    """Drop from ``model.pretrained_cfg`` what describes its default pretrained weights (tag, file, labels,
    description, notes), for a model that holds other weights, so that exports do not claim that checkpoint."""
    cfg = {key: value for key, value in model.pretrained_cfg.items() if key not in _WEIGHTS_CFG_KEYS}
    model.pretrained_cfg = model.default_cfg = cfg  # timm keeps default_cfg as an alias
    return model


def bundled_pretrained_cfgs(architecture: str, make_cfg: Callable[..., dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """timm cfgs ``{'<arch>.<tag>': cfg}`` for the bundled checkpoints of ``architecture``."""
    return {
        name: make_cfg(file=str(WEIGHTS_DIR / entry["file"]), **checkpoint_cfg(name, entry))
        for name, entry in bundled_checkpoints().items()
        if name.split(".", 1)[0] == architecture
    }


def file_sha256(path: Union[str, os.PathLike]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _entry_for_file(path: Path) -> Optional[tuple[str, dict[str, Any]]]:
    if path.resolve().parent != WEIGHTS_DIR.resolve():
        return None
    for name, entry in bundled_checkpoints().items():
        if entry["file"] == path.name:
            return name, entry
    return None


def verify_bundled_weights(path: Union[str, os.PathLike]) -> None:
    """Raise a clear error when a bundled weights file is missing or lacks its recorded sha256.

    Files outside the package's weights folder (a user's own ``pretrained_cfg_overlay=dict(file=...)``)
    are not checked.
    """
    path = Path(path)
    found = _entry_for_file(path)
    if found is None:
        return
    name, entry = found
    check_weights_file(path, entry["sha256"], name)


def check_weights_file(path: Union[str, os.PathLike], sha256: str, name: str) -> None:
    """Raise a clear error when the bundled weights file of ``name`` is missing or its sha256 is not ``sha256``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"the weights of '{name}' are missing: {path} does not exist. {_RESTORE}"
        )
    actual = file_sha256(path)
    if actual != sha256:
        raise RuntimeError(
            f"the weights file of '{name}' is corrupted: {path} has sha256 {actual}, expected {sha256}. {_RESTORE}"
        )


def verify_pretrained_file(variant: str, kwargs: dict[str, Any]) -> None:
    """Check the sha256 of the bundled file ``timm.create_model(variant, pretrained=True, **kwargs)`` would load."""
    cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    if cfg.file and cfg.source != "local-dir":
        verify_bundled_weights(cfg.file)
