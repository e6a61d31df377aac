"""The declared layers: the import-linter contract in pyproject.toml and the README's Layout table name the
same modules in the same order, and every module of the package belongs to a layer."""

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def _contract_layers() -> list[set[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return [{name.strip().removeprefix("npe_models.") for name in layer.split("|")} for layer in contract["layers"]]


def _readme_layers() -> list[set[str]]:
    layout = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in layout.splitlines() if line.startswith("| ") and not line.startswith(("| layer", "| ---"))]
    layers = []
    for row in rows:
        modules = row.split("|")[2]
        # each row names its top-level modules first (`cli.py`, `hub/`); files inside a package follow in brackets
        outer = re.sub(r"\([^)]*\)", "", modules)
        layers.append({name.removesuffix(".py").removesuffix("/") for name in re.findall(r"`([\w/.]+)`", outer)})
    return layers


def test_readme_layout_and_import_contract_list_the_same_layers() -> None:
    contract = _contract_layers()
    readme = _readme_layers()
    # the command line's row names cli and _cli_args, which the contract keeps as two layers (cli imports its options)
    assert [set().union(*contract[:2]), *contract[2:]] == readme


def test_every_package_module_is_in_a_layer() -> None:
    declared = set().union(*_contract_layers())
    package = ROOT / "npe_models"
    top_level = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    top_level |= {p.parent.name for p in package.glob("*/__init__.py")}
    assert top_level == declared
