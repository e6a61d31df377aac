"""The package's shape (issue 11): short library functions, a command line nothing else imports,
and library modules that return values instead of printing. And the repository's: each file stored once, nothing
large in git outside the shipped weights, and every finished zoo run's record able to find its weights."""

from __future__ import annotations

import ast
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Optional

import pytest

from npe_models.runs import WEIGHTS_SHA256

PACKAGE = Path(__file__).resolve().parents[1] / "npe_models"
REPO = PACKAGE.parent
COMMAND_LINE = {"cli.py", "_cli_args.py"}
MAX_FUNCTION_LINES = 60
MAX_TRACKED_BYTES = 5_000_000
"""5 MB: the most a file git tracks may hold outside ``npe_models/weights/`` (the shipped weights)."""
UNSHIPPED_OVER_LIMIT = {
    "zoo/stare/stare_unet16_i20000_npe1_fcn/model.safetensors",
    "zoo/stare/stare_unet16_i20000_npe1_linear/model.safetensors",
    "zoo/stare/stare_unet16_i20000_npe1_linear_lr0.1/model.safetensors",
}
"""Tracked before the limit, and no copy: the weights (7.3 MB each) of the STARE PEM variants beside the one shipped,
which no shipped file holds. Each must stay the file its run's ``config.json`` records; no file joins them."""


def _library_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name not in COMMAND_LINE)


def _functions(tree: ast.AST):
    return (node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))


def _body_lines(function: ast.FunctionDef) -> int:
    """Lines of a function's code: from its first statement after the docstring to its end, so that a signature
    ruff format writes one parameter per line does not count."""
    body = function.body
    if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return function.end_lineno - body[0].lineno + 1


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_functions_are_short(path: Path) -> None:
    tree = ast.parse(path.read_text())
    long = {f.name: _body_lines(f) for f in _functions(tree) if _body_lines(f) > MAX_FUNCTION_LINES}
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines in {path.name}: {long}"


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_never_imports_the_command_line_nor_prints(path: Path) -> None:
    tree = ast.parse(path.read_text())
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not {name for name in imported if name.rsplit(".", 1)[-1] in ("cli", "_cli_args")}
    calls = [
        n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
    ]
    assert not calls, f"{path.name} prints (line {calls[0].lineno}); return the value or use logging/warnings"


def test_one_command_line_module_of_bounded_size() -> None:
    assert len((PACKAGE / "cli.py").read_text().splitlines()) <= 350  # as ruff format writes it (250 before)
    assert not (PACKAGE / "segmentation" / "cli.py").exists(), "npe-models is the one command"


def _tracked_files() -> Optional[list[str]]:
    """The paths git tracks in this repository, or None outside a git checkout of it (an unpacked sdist, no git)."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=REPO, capture_output=True, check=True)
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    if Path(top.stdout.decode().strip()).resolve() != REPO.resolve():
        return None
    return [path for path in listed.stdout.decode().split("\0") if path]


@pytest.fixture(scope="module")
def tracked() -> list[str]:
    files = _tracked_files()
    if files is None:
        pytest.skip("not a git checkout of the repository")
    return files


def _recorded_sha256(run: Path) -> Optional[str]:
    """The sha256 of its ``model.safetensors`` that a run's ``config.json`` records (once it has finished)."""
    return json.loads((run / "config.json").read_text()).get(WEIGHTS_SHA256)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_no_large_file_tracked_outside_the_shipped_weights(tracked: list[str]) -> None:
    """The shipped weights are the one copy: a zoo run keeps its record, its weights only when nothing ships them."""
    sizes = {path: (REPO / path).lstat().st_size for path in tracked if (REPO / path).is_file()}
    large = {p: s for p, s in sizes.items() if s > MAX_TRACKED_BYTES and not p.startswith("npe_models/weights/")}
    new = {path: size for path, size in large.items() if path not in UNSHIPPED_OVER_LIMIT}
    assert not new, f"files over {MAX_TRACKED_BYTES:,} bytes tracked outside npe_models/weights/: {new}"
    for path in large:
        assert _sha256(REPO / path) == _recorded_sha256((REPO / path).parent), f"{path} is not its run's weights"


def test_every_finished_zoo_run_finds_its_weights(tracked: list[str]) -> None:
    """A finished run (its config.json records ``weights_sha256``, or it has metrics) either keeps its weights in git
    or a shipped file reproduces them byte for byte (``zoo.rebuild_run_weights``, which checks the shipped file's
    sha256 against the manifest); runs under ``zoo/checks/`` are measurements, never shipped."""
    from zoo import rebuild_run_weights  # release tooling in export/, on the test path

    files = set(tracked)
    runs = sorted(
        REPO / Path(path).parent
        for path in files
        if path.startswith("zoo/") and not path.startswith("zoo/checks/") and Path(path).name == "config.json"
    )
    failures, checked = [], 0
    for run in runs:
        name = run.relative_to(REPO).as_posix()
        recorded = _recorded_sha256(run)
        if recorded is None:
            if f"{name}/metrics.json" in files:
                failures.append(f"{name}: finished, but its config.json records no weights_sha256")
            continue
        checked += 1
        if f"{name}/model.safetensors" in files:
            if _sha256(run / "model.safetensors") != recorded:
                failures.append(f"{name}: its tracked model.safetensors is not the file its config.json records")
            continue
        try:
            rebuild_run_weights(run)
        except (OSError, ValueError) as error:
            failures.append(f"{name}: {error}")
    assert checked or not runs, "no finished zoo run found"
    assert not failures, "\n".join(failures)
