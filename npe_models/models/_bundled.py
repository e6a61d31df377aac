"""Checkpoints trained by npe-models and shipped with the package: timm pretrained cfgs and sha256 checks.

``npe_models/weights/manifest.json`` records, per ``<arch>.<tag>`` name, the safetensors file, its
sha256, the run that produced it and the accuracy we measured, so a corrupted or swapped file
fails loudly instead of giving silently wrong outputs. The wheel bundles the files of the
``bundled`` entries (rho = 100, HP-2, seed 0: the defaults) in ``weights/``; the others live in
``weights/extra/``, which a source checkout has and the wheel leaves out to stay small: without
them, ``pretrained=True`` fetches the file from the entry's Hub repository, sha256-checked, or
says how to get it. timm loads the files through the cfg's ``file``; ``hf_hub_id`` names the Hub
copy, and ``paper_name`` / ``paper_ids`` / ``origin_url`` / ``notes`` say where the method comes
from and what each checkpoint is.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, Union

from timm.models import resolve_pretrained_cfg
from torch import nn

from ..files import WEIGHTS_FILE, file_sha256

__all__ = [
    "WEIGHTS_DIR",
    "EXTRA_WEIGHTS_DIR",
    "BUNDLED_IN_WHEEL",
    "MANIFEST_FILE",
    "HUB_ORGANISATION",
    "PAPER_NAME",
    "PAPER_ID",
    "ORIGIN_URL",
    "hub_repo_id",
    "shipped_checkpoints",
    "checkpoint_path",
    "bundled_weights_meta",
    "checkpoint_notes",
    "checkpoint_cfg",
    "forget_pretrained_weights",
    "shipped_pretrained_cfgs",
    "check_weights_file",
    "checked_pretrained_kwargs",
]

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
EXTRA_WEIGHTS_DIR = WEIGHTS_DIR / "extra"
"""The shipped checkpoints the wheel does not bundle (``"bundled": false``): in a source checkout only."""
BUNDLED_IN_WHEEL = "the wheel bundles the rho = 100 HP-2 seed-0 checkpoints only"
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
    "posthoc_la": "The classifier bias of {starts_from} minus {tau:g} * log training prior "
    "(post-hoc logit adjustment); no training of its own.",
}
_RESTORE = (
    "Restore the package's weights: reinstall npe-models (pip install --force-reinstall npe-models), "
    "or in a git checkout run `git checkout -- npe_models/weights`."
)


@functools.cache
def _manifest() -> dict[str, Any]:
    """``manifest.json``, read once: ``checkpoints`` (the classifiers) and ``segmentation`` (dense weights)."""
    return json.loads(MANIFEST_FILE.read_text(encoding="utf-8")) if MANIFEST_FILE.exists() else {}


def shipped_checkpoints() -> dict[str, dict[str, Any]]:
    """``{'<arch>.<tag>': entry}`` for every shipped checkpoint, bundled or not, in manifest order (default tag
    first)."""
    return _manifest().get("checkpoints", {})


def checkpoint_path(entry: dict[str, Any]) -> Path:
    """Where a shipped checkpoint's file lies: ``weights/`` when the wheel bundles it, ``weights/extra/`` else."""
    return (WEIGHTS_DIR if entry["bundled"] else EXTRA_WEIGHTS_DIR) / entry["file"]


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


def shipped_pretrained_cfgs(architecture: str, make_cfg: Callable[..., dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """timm cfgs ``{'<arch>.<tag>': cfg}`` for the shipped checkpoints of ``architecture``."""
    return {
        name: make_cfg(file=str(checkpoint_path(entry)), **checkpoint_cfg(name, entry))
        for name, entry in shipped_checkpoints().items()
        if name.split(".", 1)[0] == architecture
    }


def _entry_for_file(path: Path) -> Optional[tuple[str, dict[str, Any]]]:
    """The shipped checkpoint whose file ``path`` is, if it is one (a user's own file is not)."""
    for name, entry in shipped_checkpoints().items():
        if checkpoint_path(entry).resolve() == path.resolve():
            return name, entry
    return None


def check_weights_file(path: Union[str, os.PathLike], sha256: str, name: str, remedy: str = _RESTORE) -> None:
    """Raise a clear error when the weights file of ``name`` is missing or its sha256 is not ``sha256``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the weights of '{name}' are missing: {path} does not exist. {remedy}")
    actual = file_sha256(path)
    if actual != sha256:
        raise RuntimeError(
            f"the weights file of '{name}' is corrupted: {path} has sha256 {actual}, expected {sha256}. {remedy}"
        )


def _get_from_checkout(name: str) -> str:
    """How to obtain an unbundled checkpoint without the Hub: its Hub folder, generated from a source checkout."""
    return (
        f"Or, on a machine with a source checkout of npe-models (which keeps every checkpoint in "
        f"npe_models/weights/extra/), generate its Hub folder with `python export/package_pretrained.py --hub-only "
        f"{name} --hub-dir hub/`, copy hub/{name} here and load it with npe_models.hub.load_from_hub('hub/{name}') or "
        f"timm.create_model('{name}', pretrained=True, "
        f"pretrained_cfg_overlay=dict(file='hub/{name}/model.safetensors'))."
    )


def _fetch_unbundled(name: str, entry: dict[str, Any]) -> Path:
    """The file of a checkpoint this installation does not bundle, from its Hub repository, sha256-checked."""
    from huggingface_hub import hf_hub_download  # here: loading bundled weights (and ONNX export) needs no Hub client

    repo = hub_repo_id(name)
    remedy = _get_from_checkout(name)
    try:
        path = Path(hf_hub_download(repo, WEIGHTS_FILE))
    except Exception as error:  # offline, no such repository, HTTP errors: all end in the same advice
        raise RuntimeError(
            f"'{name}' is not bundled with this installation of npe-models ({BUNDLED_IN_WHEEL}), and fetching it "
            f"from the Hugging Face Hub repository {repo} failed: "
            f"{type(error).__name__}: {str(error).rstrip('.')}. Connect to the Hub (or fill its cache) and retry. "
            f"{remedy}"
        ) from error
    stale = f"The Hub copy at {repo} is not the shipped file: delete {path} from the Hub cache and retry. {remedy}"
    check_weights_file(path, entry["sha256"], name, remedy=stale)
    return path


def checked_pretrained_kwargs(variant: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` for ``timm.create_model(variant, pretrained=True, **kwargs)``, its shipped file sha256-checked.

    A checkpoint this installation does not bundle is fetched from the Hub into ``pretrained_cfg_overlay``;
    a user's own file (``pretrained_cfg_overlay=dict(file=...)``) is not checked.
    """
    cfg = resolve_pretrained_cfg(variant, kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay"))
    found = _entry_for_file(Path(cfg.file)) if cfg.file and cfg.source != "local-dir" else None
    if found is None:
        return kwargs
    name, entry = found
    path = checkpoint_path(entry)
    if entry["bundled"] or path.is_file():
        check_weights_file(path, entry["sha256"], name)
        return kwargs
    overlay = {**(kwargs.get("pretrained_cfg_overlay") or {}), "file": str(_fetch_unbundled(name, entry))}
    return {**kwargs, "pretrained_cfg_overlay": overlay}
