"""The zoo's training driver (benchmarks/train_cifar10_lt_zoo.sh), run against a stand-in ``npe-models``:
lanes started side by side train every run exactly once, and a run started from another only after it."""

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

DRIVER = Path(__file__).resolve().parents[1] / "benchmarks" / "train_cifar10_lt_zoo.sh"

# Records each training as "<run folder, relative to the zoo> <--init folder name or ->", refuses an --init run that has
# not finished and an --out that already finished, then finishes the run as a real one would.
FAKE_NPE_MODELS = """#!/usr/bin/env bash
set -euo pipefail
out="" init="" amp=""
while (( $# )); do
  case $1 in --out) out=$2; shift ;; --init) init=$2; shift ;; --amp) amp=1 ;; esac
  shift
done
if [[ -n "$init" && ! -f "$init/metrics.json" ]]; then echo "init $init not finished" >&2; exit 3; fi
if [[ -f "$out/metrics.json" ]]; then echo "$out trained twice" >&2; exit 4; fi
[[ "$(basename "$out")" == "${SLOW_RUN:-}" ]] && sleep 2 || sleep 0.05
echo "${out#"$ZOO_DIR"/} $( [[ -n "$init" ]] && basename "$init" || echo -)" >> "$TRAINED_LOG"
[[ -n "$amp" && -n "${AMP_LOG:-}" ]] && echo "${out#"$ZOO_DIR"/}" >> "$AMP_LOG"
echo '{}' > "$out/config.json"
echo '{}' > "$out/metrics.json"
"""


@pytest.fixture()
def fake_bin(tmp_path: Path) -> Path:
    if shutil.which("flock") is None:
        pytest.skip("the driver needs flock (util-linux)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "npe-models"
    fake.write_text(FAKE_NPE_MODELS)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def _start_lane(fake_bin: Path, zoo: Path, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
        "ZOO_DIR": str(zoo),
        "ZOO_PACKAGE": "0",
        "TRAINED_LOG": str(log),
    }
    return subprocess.Popen(["bash", str(DRIVER)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_lanes_train_every_run_once_and_each_init_run_first(fake_bin: Path, tmp_path: Path) -> None:
    zoo, log = tmp_path / "zoo", tmp_path / "trained.txt"
    lanes = [_start_lane(fake_bin, zoo, log) for _ in range(2)]
    outputs = [lane.communicate(timeout=120)[0] for lane in lanes]
    assert [lane.returncode for lane in lanes] == [0, 0], outputs

    trained = [line.split() for line in log.read_text().splitlines()]
    names = [name for name, _ in trained]
    assert len(names) == len(set(names)), "a run was trained twice"
    assert {
        "resnet32_npe16_r50_hp2",
        "resnet32_crt_r200_hp2",
        "resnet32_la_r100_hp1_onedevice_s1",
        "checks/resnet32_npe16_r100_hp2_bf16",
        "resnet32_crt_r50_hp2_s2",
        "resnet32_npe1_r100_hp1_s2",
    } <= set(names)
    order = {name: index for index, name in enumerate(names)}
    for name, init in trained:
        if init != "-":
            assert order[init] < order[name], f"{name} trained before its --init run {init}"
    assert all((zoo / name / "metrics.json").is_file() for name in names)
    assert any("held by another lane" in output for output in outputs)  # the lanes did share the list


def test_a_rerun_skips_finished_runs(fake_bin: Path, tmp_path: Path) -> None:
    zoo, log = tmp_path / "zoo", tmp_path / "trained.txt"
    first = _start_lane(fake_bin, zoo, log)
    first.communicate(timeout=120)
    trained_once = log.read_text()
    again = _start_lane(fake_bin, zoo, log)
    output = again.communicate(timeout=120)[0]
    assert again.returncode == 0, output
    assert log.read_text() == trained_once
    assert "resnet32_npe16_r50_hp2: finished" in output


def test_without_the_command_the_driver_says_how_to_get_it(tmp_path: Path) -> None:
    system_path = os.pathsep.join(["/usr/bin", "/bin"])
    if shutil.which("npe-models", path=system_path) is not None:
        pytest.skip("npe-models is installed system-wide here")
    env = {"PATH": system_path, "ZOO_DIR": str(tmp_path / "zoo"), "ZOO_PACKAGE": "0"}
    result = subprocess.run(["bash", str(DRIVER)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "npe-models command is not on PATH" in result.stderr and "activate" in result.stderr
    assert not (tmp_path / "zoo").exists()  # nothing started


def test_a_start_ships_the_finished_runs_the_manifest_lacks(fake_bin: Path, tmp_path: Path) -> None:
    """Runs finished with packaging off (or when it failed) are handed to the packager, which skips shipped ones."""
    zoo, log = tmp_path / "zoo", tmp_path / "trained.txt"
    _start_lane(fake_bin, zoo, log).communicate(timeout=120)
    calls = tmp_path / "packager.txt"
    fake_python = fake_bin / "python"
    fake_python.write_text(f'#!/usr/bin/env bash\necho "$@" >> {calls}\n')
    fake_python.chmod(fake_python.stat().st_mode | stat.S_IXUSR)
    env = {
        **os.environ,
        "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
        "ZOO_DIR": str(zoo),
        "ZOO_PACKAGE": "1",
        "TRAINED_LOG": str(log),
    }
    result = subprocess.run(["bash", str(DRIVER)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    (call,) = calls.read_text().splitlines()  # once, for all of them, and nothing trained again
    script, flag, *args = call.split()
    assert script == "export/package_pretrained.py" and flag == "--skip-shipped"
    finished = {str(path.parent) for path in zoo.glob("*/metrics.json")}
    assert finished and finished <= set(args)


def test_editing_the_driver_while_a_lane_trains_does_not_derail_it(fake_bin: Path, tmp_path: Path) -> None:
    """bash reads a script as it runs it: the list is one function, read whole before the first run starts."""
    driver = tmp_path / "checkout" / "benchmarks" / DRIVER.name
    driver.parent.mkdir(parents=True)
    shutil.copy(DRIVER, driver)
    zoo, log = tmp_path / "zoo", tmp_path / "trained.txt"
    env = {
        **os.environ,
        "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
        "ZOO_DIR": str(zoo),
        "ZOO_PACKAGE": "0",
        "TRAINED_LOG": str(log),
        "SLOW_RUN": "resnet32_npe16_r100_hp2",
    }
    lane = subprocess.Popen(["bash", str(driver)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lock, deadline = zoo / "resnet32_npe16_r100_hp2" / ".zoo-lane.lock", time.monotonic() + 60
    while not lock.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the first run is training (for 2 s)
    driver.write_text("# an edit that moves every byte after it\n" * 8 + DRIVER.read_text())
    output = lane.communicate(timeout=120)[0]
    assert lane.returncode == 0, output
    assert "all runs finished" in output
    assert "resnet32_la_r100_hp1_onedevice_s1" in log.read_text()


def test_zoo_amp_starts_new_runs_with_bf16_and_resumes_others_as_they_began(fake_bin: Path, tmp_path: Path) -> None:
    """ZOO_AMP=1 adds --amp to the runs that start; a run that began before (its config.json exists) resumes
    without it, keeping its recorded setting; the bf16 check run always has it."""
    zoo, log, amp_log = tmp_path / "zoo", tmp_path / "trained.txt", tmp_path / "amp.txt"
    begun = zoo / "resnet32_ce_r200_hp2_s1"
    begun.mkdir(parents=True)
    (begun / "config.json").write_text("{}")
    env = {
        **os.environ,
        "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}",
        "ZOO_DIR": str(zoo),
        "ZOO_PACKAGE": "0",
        "TRAINED_LOG": str(log),
        "ZOO_AMP": "1",
        "AMP_LOG": str(amp_log),
    }
    result = subprocess.run(["bash", str(DRIVER)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    with_amp = set(amp_log.read_text().split())
    trained = {line.split()[0] for line in log.read_text().splitlines()}
    assert {"checks/resnet32_npe16_r100_hp2_bf16", "resnet32_ce_r200_hp2_s2"} <= with_amp
    assert "resnet32_ce_r200_hp2_s1" in trained and "resnet32_ce_r200_hp2_s1" not in with_amp
