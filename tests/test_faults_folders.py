"""Output folders and files are the user's unless npe-models wrote them: every command writes only into a new or
empty folder, or into its own earlier output (replaced with --overwrite, file by file), never over an input."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from npe_models import cli
from npe_models.outputs import check_output_dir, is_evaluation_dir

pytest.importorskip("onnx")


def _user_files(folder: Path) -> dict[str, bytes]:
    """A user's own files, named like npe-models' outputs; returns their contents to compare afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "model.safetensors": b"my own weights",
        "metrics.json": b'{"mine": true}',
        "log.jsonl": b'{"epoch": 1}\n',
        "plot.png": b"not really a png",
        "essay.txt": b"three weeks of writing",
    }
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return files


def _unchanged(folder: Path, files: dict[str, bytes]) -> bool:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == sorted(files) and all(
        (folder / name).read_bytes() == content for name, content in files.items()
    )


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def test_train_refuses_a_folder_of_the_users_files(tmp_path, capsys, toy_data) -> None:
    out = tmp_path / "mine"
    files = _user_files(out)
    options = ["--model", "resnet20", "--data-dir", str(toy_data), "--rho", "10", "--epochs", "1", "--no-progress"]
    code, err = _run(capsys, "train", "--out", str(out), *options)
    assert code == 1 and "is not empty (5 entries" in err and "choose a new or empty --out" in err, err
    assert _unchanged(out, files)


def test_export_onnx_replaces_only_its_own_export_and_only_when_asked(tmp_path, capsys) -> None:
    essay = tmp_path / "essay.txt"
    essay.write_bytes(b"three weeks of writing")
    code, err = _run(capsys, "export", "onnx", "resnet20", "-o", str(essay))
    assert code == 1 and f"the output file {essay} exists and is no ONNX export of npe-models" in err, err
    assert essay.read_bytes() == b"three weeks of writing"
    export = tmp_path / "model.onnx"
    assert _run(capsys, "export", "onnx", "resnet20", "-o", str(export))[0] == 0
    code, err = _run(capsys, "export", "onnx", "resnet20", "-o", str(export))
    assert code == 1 and "pass --overwrite" in err, err
    assert _run(capsys, "export", "onnx", "resnet20", "-o", str(export), "--overwrite")[0] == 0


def test_evaluate_never_writes_into_a_run_nor_over_the_users_files(tmp_path, capsys, watched_run) -> None:
    run, _ = watched_run
    before = (run / "metrics.json").read_bytes()
    code, err = _run(capsys, "evaluate", str(run), "--out", str(run), "--no-progress")
    assert code == 1 and f"--out {run} is the input {run}" in err, err
    assert (run / "metrics.json").read_bytes() == before
    mine = tmp_path / "mine"
    files = _user_files(mine)
    code, err = _run(capsys, "evaluate", str(run), "--out", str(mine), "--no-progress")
    assert code == 1 and "holds no evaluation of npe-models" in err, err
    assert _unchanged(mine, files)


def test_an_earlier_evaluation_is_recognised_and_replaced_only_with_overwrite(tmp_path) -> None:
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "metrics.json").write_text("{}")
    (evaluation / "per_class_accuracy_full.png").write_bytes(b"png")
    assert is_evaluation_dir(evaluation)
    with pytest.raises(FileExistsError, match=r"holds an earlier evaluation; pass --overwrite \(overwrite=True\)"):
        check_output_dir(evaluation, "evaluation", is_own=is_evaluation_dir)
    assert check_output_dir(evaluation, "evaluation", is_own=is_evaluation_dir, overwrite=True) == evaluation
    (evaluation / "notes.txt").write_text("mine")  # a user's file makes it someone else's folder
    assert not is_evaluation_dir(evaluation)


def test_export_hub_overwrite_replaces_its_files_and_keeps_the_users(tmp_path, capsys) -> None:
    folder = tmp_path / "hub"
    assert _run(capsys, "export", "hub", "resnet20", "-o", str(folder))[0] == 0
    (folder / "notes.txt").write_text("mine")
    written = (folder / "model.safetensors").stat().st_mtime_ns
    code, err = _run(capsys, "export", "hub", "resnet20", "-o", str(folder))
    assert code == 1 and "--overwrite" in err and "overwrite=True to" not in err, err
    assert _run(capsys, "export", "hub", "resnet20", "-o", str(folder), "--overwrite")[0] == 0
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "model.safetensors").stat().st_mtime_ns >= written
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no staging or retired folder is left"


def test_export_hub_into_the_current_folder_of_the_users_files_is_refused(tmp_path, capsys, monkeypatch) -> None:
    files = _user_files(tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    code, err = _run(capsys, "export", "hub", "resnet20", "-o", ".", "--overwrite")
    assert code == 1 and "holds no Hugging Face Hub folder of npe-models" in err, err
    assert _unchanged(tmp_path / "work", files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"], "nothing is left beside it"


def test_adapt_refuses_an_out_that_holds_its_input(tmp_path, capsys) -> None:
    data = tmp_path / "d"
    data.mkdir()
    rng = np.random.default_rng(0)
    np.savez(data / "u.npz", x=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8))
    code, err = _run(
        capsys,
        *("adapt", "resnet32_npe16", "--pretrained", "--unlabeled", str(data / "u.npz")),
        *("--calibration", "cifar10:test", "--out", str(data), "--overwrite"),
    )
    assert code == 1 and f"--out {data} contains the input {data / 'u.npz'}" in err, err
    assert (data / "u.npz").is_file()


def test_hub_files_get_the_mode_of_every_other_file(tmp_path, capsys) -> None:
    folder = tmp_path / "hub"
    assert _run(capsys, "export", "hub", "resnet20", "-o", str(folder))[0] == 0
    expected = 0o666 & ~_umask()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes == dict.fromkeys(modes, expected), modes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
