"""Release tooling: ship finished CIFAR-LT training runs as pretrained checkpoints (bundled weights, Hub folders).

``package_run(run_dir)`` takes a run that ``npe-models train`` finished, writes its weights into
``npe_models/weights/`` as ``<arch>.<tag>.safetensors`` (plus the merged form of NPE models, a
plain ``<base>`` checkpoint; runs other than the rho = 100 HP-2 seed-0 defaults into
``weights/extra/``, which the wheel leaves out to stay small), records their sha256 and the run's measured accuracy in
the
manifest timm's pretrained cfgs are built from, and writes a ready-to-upload Hub folder with a
model card per checkpoint (``npe_models.hub.pretrained_card``, so a folder regenerated later
with ``save_pretrained_for_hub`` is the same) into a git-ignored folder. The exported weights are
re-scored on the 1,000 exact test images and must reproduce the run's own final accuracy.
Used by ``export/package_pretrained.py``; not part of the installed package.

Each file is stored once: git keeps a zoo run's record (``config.json`` with the ``weights_sha256`` of the
``model.safetensors`` it trained, log, metrics, plots), not its weights (``.gitignore``). ``restore_weights(run_dir)``
writes a shipped run's ``model.safetensors`` back, byte for byte, from the shipped file made from it
(``rebuild_run_weights``), for whatever reads a run folder (``package_run``, ``npe-models train --init``).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors.torch import load_file, save, save_file
from timm.utils import reparameterize_model
from torch import nn

from npe_models.classification.checkpoint import (
    METRICS_FILE,
    WEIGHTS_FILE,
    atomic_write,
    load_trained_model,
    read_saved_config,
)
from npe_models.classification.config import TrainConfig, resolve_config
from npe_models.classification.evaluate import evaluate_model, summary
from npe_models.data.cifar import load_cifar_class_names, load_cifar_lt
from npe_models.files import file_sha256
from npe_models.hub import DATASET_NAMES, pretrained_card, save_for_hub
from npe_models.models import parse_npe_name
from npe_models.models._bundled import EXTRA_WEIGHTS_DIR, MANIFEST_FILE, WEIGHTS_DIR, checkpoint_cfg
from npe_models.runs import CONFIG_FILE, WEIGHTS_SHA256, read_json
from npe_models.segmentation.config import SegmentationModelConfig

__all__ = [
    "checkpoint_names",
    "is_bundled",
    "is_shipped",
    "package_run",
    "read_manifest",
    "rebuild_run_weights",
    "reproduces",
    "restore_weights",
    "write_manifest",
    "REPRODUCE_TOLERANCE",
]

PathLike = Union[str, os.PathLike]

HUB_DIR = Path(__file__).resolve().parents[1] / "zoo" / "hub"
"""Where the Hub folders go by default: git-ignored, regenerated on demand (``save_pretrained_for_hub``)."""
REPRODUCE_TOLERANCE = 0.1
"""Points of top-1 on the exact test images by which a shipped checkpoint may differ from its record (one image)."""

_RUN_FIELDS = (
    "model",
    "method",
    "recipe",
    "dataset",
    "rho",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "schedule",
    "milestones",
    "gamma",
    "tau",
    "npe_alpha",
    "npe_t",
    "seed",
    "deterministic",
    "amp",
)
_SCHEDULE_FIELDS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "schedule", "milestones", "gamma")
_DEFAULT_TAG_SUFFIX = "_lt_r100_hp2"
_BUNDLED_RUNS = dict(rho=100.0, recipe="hp2", seed=0)
"""The runs whose checkpoints the wheel bundles (each architecture's default tag and the methods beside it); the
rest (other rho, HP-1, seeds) go to ``weights/extra/``, so that the wheel stays under about 40 MB."""
_METHOD_NAMES = {
    "ce": "cross-entropy",
    "la": "logit-adjusted loss",
    "crt": "cRT: classifier re-trained with class-balanced sampling",
    "posthoc_la": "cross-entropy + post-hoc logit adjustment",
    "npe": "NPE",
}


def is_bundled(config: TrainConfig) -> bool:
    """Whether the wheel bundles a run's checkpoints (see ``_BUNDLED_RUNS``)."""
    return all(getattr(config, key) == value for key, value in _BUNDLED_RUNS.items())


def _tag(config: TrainConfig) -> str:
    """``cifar10_lt_r100_hp2``; baselines other than CE on a plain model add the method (``_la``, ``_crt``), seeds
    other than 0 add ``_s<seed>`` (so seed 0 keeps the architecture's default tag)."""
    method = "" if config.method in ("ce", "npe") else f"_{config.method}"
    seed = f"_s{config.seed}" if config.seed else ""
    return f"{config.dataset}_lt_r{config.rho:g}_{config.recipe}{method}{seed}"


def checkpoint_names(config: TrainConfig) -> tuple[str, Optional[str]]:
    """The unmerged name ``<arch>.<tag>`` and, for NPE models, the merged ``<base>.<tag>_npe<K>_merged``."""
    tag = _tag(config)
    base, num_pems = parse_npe_name(config.model)
    if not num_pems:
        return f"{config.model}.{tag}", None
    return f"{config.model}.{tag}", f"{base}.{tag}_npe{num_pems}_merged"


def read_manifest(path: PathLike = MANIFEST_FILE) -> dict[str, dict[str, Any]]:
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8"))["checkpoints"] if path.exists() else {}


def is_shipped(run_dir: PathLike, weights_dir: PathLike = WEIGHTS_DIR) -> bool:
    """Whether the manifest lists every checkpoint name a run ships under (its weights may come from another run
    of the same tag, e.g. a rerun: shipping is by name, so a rerun replaces a shipped checkpoint only on request)."""
    config = read_saved_config(run_dir)
    if config is None:  # not a run folder: package_run says so
        return False
    names = [name for name in checkpoint_names(config) if name]
    return set(names) <= set(read_manifest(Path(weights_dir) / MANIFEST_FILE.name))


def _shipped_candidates(run_dir: Path, weights_dir: Path) -> list[tuple[str, Path, dict[str, Any]]]:
    """``(name, file, manifest entry)`` of each shipped file that may hold a run's weights, by the names its
    ``config.json`` gives: a classifier's unmerged checkpoint, or a segmentation builder's entries."""
    settings = read_json(run_dir / CONFIG_FILE)
    manifest_file = weights_dir / MANIFEST_FILE.name
    manifest = json.loads(manifest_file.read_text(encoding="utf-8")) if manifest_file.is_file() else {}
    if settings.get("task") == "segmentation":
        builder = settings["model"]["name"]
        section = manifest.get("segmentation", {})
        return [(name, weights_dir / e["file"], e) for name, e in section.items() if name.split(".")[0] == builder]
    name = checkpoint_names(read_saved_config(run_dir))[0]
    entry = manifest.get("checkpoints", {}).get(name)
    if entry is None:
        return []
    return [(name, (weights_dir if entry["bundled"] else weights_dir / EXTRA_WEIGHTS_DIR.name) / entry["file"], entry)]


def _header_candidates(settings: dict[str, Any], entry: dict[str, Any]) -> list[dict[str, str]]:
    """The metadata ``npe-models train`` wrote into a run's weights, as its ``config.json`` tells: the task and
    model settings (segmentation), the config and, since runs record their task, the task and class names."""
    if settings.get("task") == "segmentation":
        return [{"format": "pt", "task": "segmentation", "segmentation_model": json.dumps(settings["model"])}]
    config = {key: value for key, value in settings.items() if key not in ("task", WEIGHTS_SHA256)}
    legacy = {"format": "pt", "config": json.dumps(config)}
    if "task" not in settings:
        return [legacy]
    labels = entry.get("cfg", {}).get("label_names")
    current = {**legacy, "task": settings["task"]}
    return [{**current, "label_names": json.dumps(labels)}, current] if labels else [current]


def _metadata_in_order(data: bytes, order: tuple[str, ...]) -> bytes:
    """safetensors bytes with their header's metadata keys in ``order``; the rest as it was."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    metadata = header.pop("__metadata__")
    text = json.dumps(
        {"__metadata__": {k: metadata[k] for k in order}, **header}, separators=(",", ":"), ensure_ascii=False
    )
    return data[:8] + text.encode().ljust(size) + data[8 + size :]  # padded with spaces, as safetensors pads


def rebuild_run_weights(run_dir: PathLike, weights_dir: PathLike = WEIGHTS_DIR) -> bytes:
    """A finished run's ``model.safetensors``, byte for byte, from the shipped file made from it.

    The shipped file holds the run's tensors without its metadata (a segmentation baseline's are a subset of its NPE
    form's file); the metadata comes back from ``config.json`` and the manifest. safetensors writes metadata keys in
    no fixed order, so each order is tried: the sha256 the run recorded (``weights_sha256``) decides, and a run no
    shipped file reproduces (a superseded rerun, an unshipped variant) is an error.
    """
    run_dir, weights_dir = Path(run_dir), Path(weights_dir)
    settings = read_json(run_dir / CONFIG_FILE)
    recorded = settings.get(WEIGHTS_SHA256)
    if recorded is None:
        raise ValueError(
            f"{run_dir} records no {WEIGHTS_SHA256} in {CONFIG_FILE}: it has not finished, or finished before runs "
            f"recorded it (npe_models.runs.record_weights_sha256 records it while its {WEIGHTS_FILE} is at hand)."
        )
    candidates = _shipped_candidates(run_dir, weights_dir)
    for name, file, entry in candidates:
        if not file.is_file() or file_sha256(file) != entry["sha256"]:
            raise ValueError(f"{file} is missing or does not match the sha256 manifest.json records for {name}.")
        state = load_file(str(file))
        if settings.get("task") == "segmentation":
            keys = SegmentationModelConfig.from_dict(settings["model"]).build().state_dict()
            if not set(keys) <= set(state):
                continue
            state = {key: state[key] for key in keys}
        for metadata in _header_candidates(settings, entry):
            data = save(state, metadata=metadata)
            for order in itertools.permutations(metadata):
                rebuilt = _metadata_in_order(data, order)
                if hashlib.sha256(rebuilt).hexdigest() == recorded:
                    return rebuilt
    shipped = ", ".join(name for name, *_ in candidates) or "none"
    raise ValueError(
        f"no shipped file holds the weights of {run_dir} (sha256 {recorded[:12]}... in its {CONFIG_FILE}; shipped "
        f"under its names: {shipped}); git has to keep its {WEIGHTS_FILE}."
    )


def restore_weights(run_dir: PathLike, weights_dir: PathLike = WEIGHTS_DIR) -> Path:
    """A finished run's ``model.safetensors``, written back from its shipped file when the run folder lacks it (a
    clone: git keeps the zoo's records, not their weights), the sha256 its ``config.json`` records checked."""
    path = Path(run_dir) / WEIGHTS_FILE
    if not path.is_file():
        data = rebuild_run_weights(run_dir, weights_dir)
        atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return path


def _manifest_order(name: str) -> tuple[str, bool, str]:
    """Per architecture, the CIFAR-10-LT rho = 100 HP-2 tag first: timm's default for ``pretrained=True``."""
    arch, tag = name.split(".", 1)
    return arch, not tag.endswith(_DEFAULT_TAG_SUFFIX), tag


def write_manifest(
    checkpoints: dict[str, dict[str, Any]], path: PathLike = MANIFEST_FILE, section: str = "checkpoints"
) -> None:
    """Replace one section of the manifest (``checkpoints``: the classifiers, ``segmentation``: dense weights)."""
    path = Path(path)
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if section == "checkpoints":
        checkpoints = {name: checkpoints[name] for name in sorted(checkpoints, key=_manifest_order)}
    text = json.dumps({**manifest, section: checkpoints}, indent=2) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    Path(path).chmod(0o644)


def _check_full_recipe(run_dir: Path, config: TrainConfig) -> None:
    """Only runs of the whole named recipe ship under its tag: a shortened run would misname its weights."""
    reference = resolve_config(config.recipe, config.method, model=config.model, init=config.init)
    departures = {k: v for k, v in config.differences(reference).items() if k in _SCHEDULE_FIELDS}
    if departures:
        details = ", ".join(f"{k} {ours} instead of {theirs}" for k, (ours, theirs) in departures.items())
        raise ValueError(
            f"{run_dir} departs from recipe {config.recipe} ({details}); only runs of the full recipe ship as "
            "pretrained checkpoints."
        )


def _finished_metrics(run_dir: Path, weights_dir: Path) -> dict[str, Any]:
    """The final evaluation the engine wrote, or a clear error when the run has not finished; the run's weights
    written back from its shipped file where a clone lacks them."""
    if not (run_dir / METRICS_FILE).is_file():
        raise ValueError(
            f"{run_dir} is not a finished run (no {METRICS_FILE}); "
            "finish it with `npe-models train --resume --out RUN_DIR ...` first."
        )
    restore_weights(run_dir, weights_dir)
    return json.loads((run_dir / METRICS_FILE).read_text())


def _recorded_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Top-1 / balanced / group accuracy per test set, the unadjusted scores of NPE models, the prior fit."""
    record: dict[str, Any] = {"primary": metrics["primary"], **summary(metrics)}
    if metrics["primary"] == "npe_la":
        record["unadjusted"] = summary(metrics, "plain")
        record["prior"] = {
            key: metrics["sets"]["full"]["prior"][key] for key in ("pearson", "spearman", "slope", "intercept")
        }
    return record


def _starting_point(config: TrainConfig) -> Optional[str]:
    """The checkpoint a cRT or post-hoc LA run starts from, by its shipped name where the run is known."""
    if not config.init:
        return None
    init_config = read_saved_config(config.init)
    return checkpoint_names(init_config)[0] if init_config is not None else config.init


def _describe_method(config: TrainConfig, form: str) -> str:
    """How the checkpoint predicts, for its description: the training method and, for NPE, the PEMs' fate."""
    if config.method != "npe":
        return _METHOD_NAMES[config.method]
    count = parse_npe_name(config.model)[1]
    pems = f"NPE with {count} PEM{'s' if count > 1 else ''}, NPE-LA"
    return f"{pems} folded into the classifier" if form == "merged" else pems


def _write_checkpoint(
    name: str,
    model: nn.Module,
    record: dict[str, Any],
    config: TrainConfig,
    training: dict[str, Any],
    label_names: Optional[list[str]],
    weights_dir: Path,
    hub_dir: Path,
    form: str,
) -> dict[str, Any]:
    """Write one form of the model into the weights folder and its Hub folder; return its manifest entry."""
    bundled = is_bundled(config)
    file = (weights_dir if bundled else weights_dir / EXTRA_WEIGHTS_DIR.name) / f"{name}.safetensors"
    file.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().contiguous() for key, value in model.state_dict().items()}
    atomic_write(file, lambda tmp: save_file(state, str(tmp)))
    file.chmod(0o644)
    full = record["full"]
    description = (
        f"{name.split('.', 1)[0]} ({_describe_method(config, form)}) trained by npe-models on "
        f"{DATASET_NAMES[config.dataset]}-LT rho={config.rho:g}, recipe {config.recipe}, "
        f"seed {config.seed}: top-1 {full['top1']:.2f}% on the full test set, {record['exact']['top1']:.2f}% on its "
        "1,000 exact images."
    )
    entry = {
        "file": file.name,
        "bundled": bundled,
        "sha256": file_sha256(file),
        "form": form,
        "cfg": {"label_names": label_names, "description": description},
        "run": {key: getattr(config, key) for key in _RUN_FIELDS},
        "training": training,
        "metrics": record,
    }
    start = _starting_point(config)
    if start:
        entry["starts_from"] = start
    entry = json.loads(json.dumps(entry))  # as the manifest stores it, so the card reads the same when regenerated
    model.pretrained_cfg = {**model.pretrained_cfg, "tag": name.split(".", 1)[1], **checkpoint_cfg(name, entry)}
    save_for_hub(model, hub_dir / name, overwrite=True, **pretrained_card(name, entry))
    return entry


def reproduces(top1: float, expected: float) -> bool:
    """Whether a re-scored top-1 is within the tolerance of its record (one image, whatever the float rounding).

    A checkpoint trained and scored on a GPU (TF32 convolutions) can flip an image on the CPU.
    """
    return round(abs(top1 - expected), 6) <= REPRODUCE_TOLERANCE


def _check_reproduces(name: str, model: nn.Module, data, expected: float, variant: str) -> None:
    scored = evaluate_model(model, data, torch.device("cpu"), sets=["exact"])
    top1 = scored["sets"]["exact"][variant]["top1"]
    if not reproduces(top1, expected):
        raise RuntimeError(f"{name} scores {top1:.2f} on the exact test images, but its run recorded {expected:.2f}.")


def package_run(
    run_dir: PathLike,
    *,
    data_dir: Optional[PathLike] = None,
    weights_dir: PathLike = WEIGHTS_DIR,
    hub_dir: PathLike = HUB_DIR,
) -> list[str]:
    """Ship a finished run: its weights (unmerged, and merged for NPE), manifest entries, Hub folders.

    Returns the checkpoint names written. ``data_dir`` defaults to the run's own data directory.
    """
    run_dir, weights_dir, hub_dir = Path(run_dir), Path(weights_dir), Path(hub_dir)
    manifest = weights_dir / MANIFEST_FILE.name
    metrics = _finished_metrics(run_dir, weights_dir)
    config = read_saved_config(run_dir)
    _check_full_recipe(run_dir, config)
    model, _ = load_trained_model(run_dir)
    data = load_cifar_lt(data_dir or config.data_dir, config.dataset, config.rho)
    label_names = load_cifar_class_names(data_dir or config.data_dir, config.dataset)
    weights_dir.mkdir(parents=True, exist_ok=True)
    record = _recorded_metrics(metrics)
    unmerged_name, merged_name = checkpoint_names(config)
    forms = [(unmerged_name, model, metrics["primary"], "unmerged" if merged_name else "plain")]
    if merged_name:
        forms.append((merged_name, reparameterize_model(copy.deepcopy(model)), "plain", "merged"))
    entries = read_manifest(manifest)
    for name, form_model, variant, form in forms:
        _check_reproduces(name, form_model, data, record["exact"]["top1"], variant)
        entries[name] = _write_checkpoint(
            name, form_model, record, config, metrics["training"], label_names, weights_dir, hub_dir, form
        )
    write_manifest(entries, manifest)
    return [name for name, *_ in forms]
