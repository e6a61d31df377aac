"""The package's shape (issue 11): short library functions, a command line nothing else imports,
and library modules that return values instead of printing."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "npe_models"
COMMAND_LINE = {"cli.py", "_cli_args.py"}
MAX_FUNCTION_LINES = 60


def _library_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name not in COMMAND_LINE)


def _functions(tree: ast.AST):
    return (node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)))


@pytest.mark.parametrize("path", _library_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_functions_are_short(path: Path) -> None:
    tree = ast.parse(path.read_text())
    long = {
        f.name: f.end_lineno - f.lineno + 1
        for f in _functions(tree)
        if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES
    }
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
    assert len((PACKAGE / "cli.py").read_text().splitlines()) <= 250
    assert not (PACKAGE / "segmentation" / "cli.py").exists(), "npe-models is the one command"
