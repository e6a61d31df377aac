"""The zoo's results table (benchmarks/zoo_report.py): cells over seeds beside the paper, in combined SEs."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def zoo_report():
    spec = importlib.util.spec_from_file_location("zoo_report", ROOT / "benchmarks" / "zoo_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_combined_se_adds_seed_spread_paper_spread_and_the_test_sets_sampling_error(zoo_report) -> None:
    # three seeds of std 1 and the paper's std 0.3 over 3 runs, on the full test set (no sampling term)
    assert zoo_report.combined_se([79.0, 80.0, 81.0], 0.3, 10_000) == pytest.approx((1 / 3 + 0.09 / 3) ** 0.5)
    # one seed: the paper's std stands in for ours; 1,000 images at 80 % add sqrt(0.8 * 0.2 / 1000) = 1.26 points
    expected = (0.09 + 0.09 / 3 + 100**2 * 0.16 / 1000) ** 0.5
    assert zoo_report.combined_se([80.0], 0.3, 1000) == pytest.approx(expected)


def test_the_summary_compares_each_cell_with_the_papers_value_for_its_rho(zoo_report) -> None:
    """The tracked zoo records: HP-2 rho 200 CE seed 0 (61.40 on the exact images, paper 65.59 +- 0.20) is more
    than 2 SE below the paper, the three HP-2 rho 100 NPE-LA(16) seeds agree with it."""
    runs = ["resnet32_ce_r200_hp2"] + [f"resnet32_npe16_r100_hp2{sfx}" for sfx in ("", "_s1", "_s2")]
    finished = {name: run for name, run in zoo_report.finished_runs(ROOT / "zoo").items() if name in runs}
    rows = {
        tuple(cell.strip() for cell in line.split("|")[1:5]): line
        for line in zoo_report.seed_summary(finished).splitlines()
    }
    assert "65.59 +- 0.20" in rows[("hp2", "CE", "200", "0")] and rows[("hp2", "CE", "200", "0")].endswith("| no |")
    assert rows[("hp2", "NPE-LA(16)", "100", "0, 1, 2")].endswith("| yes |")


def test_the_figure_has_a_panel_per_recipe_and_rho(zoo_report) -> None:
    figure = zoo_report.cells_figure(zoo_report.finished_runs(ROOT / "zoo"))
    titles = [axes.get_title() for axes in figure.axes]
    assert titles == [f"HP-{r}, rho = {rho}" for r in (1, 2) for rho in (200, 100, 50)]


def test_every_method_is_named_as_the_paper_names_it(zoo_report) -> None:
    """The table's rows outside the figure (PEM ablation, post-hoc LA) read like its other rows."""
    assert [zoo_report.method_label("npe", k) for k in (1, 4, 16)] == ["NPE-LA(1)", "NPE-LA(4)", "NPE-LA(16)"]
    assert zoo_report.method_label("posthoc_la", 0) == "post-hoc LA"
    assert zoo_report.method_label("crt", 0) == "cRT"
