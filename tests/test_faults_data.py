"""Data faults (issue 44): images of every PIL mode read to the right RGB values; folder scans that skip hidden
entries, symlink loops and repeats and say so; split lists with repeated or conflicting lines, bad labels, other
encodings or a BOM; unreadable files found before training; unbounded --image-size / --workers; a CIFAR meta file
that would run code when unpickled."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from npe_models import cli
from npe_models.classification import resolve_config
from npe_models.data import load_cifar_class_names

# --- 15. the CIFAR meta file is read without running code -------------------------------------------------------


class _Payload:
    """Unpickling calls ``function(*arguments)``: a file appears where the payload ran."""

    def __init__(self, function, *arguments) -> None:
        self.function, self.arguments = function, arguments

    def __reduce__(self):
        return self.function, self.arguments


def _write_meta(root: Path, content) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    path = folder / "batches.meta"
    path.write_bytes(pickle.dumps(content, protocol=2))
    return path


CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.mark.parametrize("via", ["os.system", "builtins.open"])
def test_a_cifar_meta_file_with_a_payload_is_refused_without_running_it(tmp_path, via):
    marker = tmp_path / "payload_ran"
    payload = _Payload(os.system, f"touch {marker}") if via == "os.system" else _Payload(open, str(marker), "w")
    path = _write_meta(tmp_path, {"label_names": CLASSES, "payload": payload})
    with pytest.raises(ValueError) as error:
        load_cifar_class_names(tmp_path, "cifar10")
    assert not marker.exists()
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_a_plain_cifar_meta_file_still_gives_its_names(tmp_path):
    _write_meta(tmp_path, {"label_names": CLASSES, "num_cases_per_batch": 10000, "num_vis": 3072})
    assert load_cifar_class_names(tmp_path, "cifar10") == tuple(CLASSES)


# --- 13. --image-size and --workers have upper bounds -------------------------------------------------------------


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--image-size", "100000", "image_size (--image-size) must be an integer >= 8 and <= 4096; got 100000."),
        ("--workers", "100000", "workers (--workers) must be an integer >= 0 and <= 256; got 100000."),
    ],
)
def test_huge_image_size_and_workers_are_refused_before_any_data_loads(capsys, tmp_path, option, value, message):
    missing = tmp_path / "no_such_data"  # the data are never looked at: the setting is refused first
    argv = ["train", "--out", str(tmp_path / "run"), "--no-progress", "--model", "resnet20", "--device", "cpu"]
    code = cli.main([*argv, "--dataset", "folder", "--data-dir", str(missing), option, value])
    err = capsys.readouterr().err
    assert code == 1 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="must be an integer >= 8 and <= 4096"):
        resolve_config(dataset="folder", model="resnet20", method="ce", image_size=4097)
    assert resolve_config(dataset="folder", model="resnet20", method="ce", image_size=4096, workers=256).workers == 256
