"""The command line as a user meets it: real files, real processes, exit codes, no tracebacks."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from typing import Any

import cv2
import pytest
import typer
from typer.testing import CliRunner

from defectwatch.service.cli import COMMANDS, app

runner = CliRunner()
INSPECT_KEYS = {
    "path",
    "nx",
    "ny",
    "width_nm",
    "height_nm",
    "pixel_size_nm",
    "scan_dir",
    "angle_deg",
    "bias_v",
    "setpoint_a",
    "recorded_at",
    "channels",
    "acquired_fraction",
    "constant_height",
}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "defectwatch", *args], capture_output=True, text=True, timeout=300
    )


def test_inspect_json_one_object_per_file(bundled_sxm):
    result = _cli("inspect", "--json", *map(str, bundled_sxm.values()))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(bundled_sxm)
    for line in lines:
        obj = json.loads(line)
        assert INSPECT_KEYS <= set(obj)
        assert len(obj["pixel_size_nm"]) == 2 and obj["recorded_at"][4] == "-"


def test_inspect_table_and_the_aborted_scan(shared_sxm):
    result = runner.invoke(app, ["inspect", *map(str, shared_sxm.values())])
    assert result.exit_code == 0, result.output
    assert "240x96" in result.output and "0%" in result.output


def test_inspect_bad_files_one_line_each_nonzero_exit(tmp_path, bundled_sxm):
    garbage = tmp_path / "garbage.sxm"
    garbage.write_bytes(b"not a scan at all")
    truncated = tmp_path / "half written.sxm"
    truncated.write_bytes(bundled_sxm["FeBr2_Au111_4nm_gen45_down"].read_bytes()[:50_000])
    good = bundled_sxm["FeBr2_Au111_4nm_gen45_down"]
    result = _cli("inspect", "--json", str(garbage), str(good), str(truncated))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 2
    assert "garbage.sxm" in errors[0] and "half written.sxm" in errors[1]
    assert "still being written" in errors[1]
    assert json.loads(result.stdout)["nx"] == 256  # the good one still came out


def test_simulate_writes_scans_truth_and_previews(tmp_path):
    out = tmp_path / "sim out"
    result = runner.invoke(
        app,
        [
            "simulate",
            str(out),
            "--n",
            "2",
            "--pixels",
            "128",
            "--size-nm",
            "20",
            "--density",
            "2e12",
            "--seed",
            "5",
            "--preview",
            "--material",
            "mose2",
        ],
    )
    assert result.exit_code == 0, result.output
    sxm = sorted(out.glob("*.sxm"))
    assert [p.stem for p in sxm] == ["MoSe2-sim_stm_20nm_0005", "MoSe2-sim_stm_20nm_0006"]
    for p in sxm:
        with open(p.with_suffix(".csv"), newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert list(rows[0]) == [
            "row",
            "col",
            "x_nm",
            "y_nm",
            "kind",
            "subtype",
            "visible",
            "contrast",
        ]
        assert {r["kind"] for r in rows} <= {"trough", "peak"}
        # every visible defect has its measured contrast, as a labeller's rule passes it
        visible = [r for r in rows if r["visible"] == "1"]
        assert visible and all(
            float(r["contrast"]) <= -1.5 if r["kind"] == "trough" else float(r["contrast"]) >= 1.0
            for r in visible
        )
        png = cv2.imread(str(p.with_suffix(".png")))
        assert png is not None and png.shape[1] > png.shape[0] >= 512
    inspected = _cli("inspect", "--json", *map(str, sxm))
    assert inspected.returncode == 0 and '"nx": 128' in inspected.stdout


def test_simulate_can_add_adsorbate_clusters(tmp_path):
    args = [
        "simulate",
        str(tmp_path),
        "--n",
        "1",
        "--pixels",
        "128",
        "--size-nm",
        "40",
        "--density",
        "1e11",
        "--seed",
        "2",
    ]
    assert runner.invoke(app, args).exit_code == 0
    plain = (tmp_path / "WSe2-sim_stm_40nm_0002.csv").read_text()
    assert runner.invoke(app, [*args, "--clusters"]).exit_code == 0
    with open(tmp_path / "WSe2-sim_stm_40nm_0002.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert "adsorbate" not in plain and sum(r["subtype"] == "adsorbate" for r in rows) >= 5


def test_simulate_widens_by_the_families_asked_for(tmp_path):
    from defectwatch.service.simulation import write_simulated_scans

    args = ["--n", "1", "--pixels", "96", "--size-nm", "20", "--density", "1e13", "--seed", "4"]
    lat = runner.invoke(app, ["simulate", str(tmp_path / "lat"), *args, "--family", "Lattice"])
    assert lat.exit_code == 0, lat.output
    assert runner.invoke(app, ["simulate", str(tmp_path / "plain"), *args]).exit_code == 0
    write_simulated_scans(
        tmp_path / "api", n=1, pixels=96, size_nm=20.0, density_per_cm2=1e13, seed=4,
        broad=("lattice",),
    )  # fmt: skip
    name = "WSe2-sim_stm_20nm_0004.sxm"
    lattice = (tmp_path / "lat" / name).read_bytes()
    assert lattice == (tmp_path / "api" / name).read_bytes()
    assert lattice != (tmp_path / "plain" / name).read_bytes()

    bad = runner.invoke(app, ["simulate", str(tmp_path / "bad"), *args, "--family", "moire"])
    assert bad.exit_code == 1 and "--family 'moire'" in bad.output and "lattice" in bad.output
    both = runner.invoke(
        app, ["simulate", str(tmp_path / "x"), *args, "--broad", "--family", "tips"]
    )
    assert both.exit_code == 1 and "not both" in both.output
    assert not (tmp_path / "bad").exists() and not (tmp_path / "x").exists()


def test_simulate_rejects_unknown_material(tmp_path):
    result = _cli("simulate", str(tmp_path), "--material", "graphene")
    assert result.returncode == 1 and "wse2 or mose2" in result.stderr
    assert "Traceback" not in result.stderr


def _every_command() -> list[tuple[str, Any]]:
    """Every command and sub-command of the app, as ``"labels import"``, walking the groups
    (as sqlite-utils' docs test does): a command added later is checked without listing it."""

    def walk(group: Any, prefix: str):
        for name, command in group.commands.items():
            yield f"{prefix}{name}", command
            if getattr(command, "commands", None):  # a group (typer vendors its click)
                yield from walk(command, f"{prefix}{name} ")

    return list(walk(typer.main.get_command(app), ""))


EVERY_COMMAND = _every_command()


def test_the_command_table_is_what_the_app_runs():
    root = typer.main.get_command(app)
    assert set(root.commands) == set(COMMANDS)
    names = {name for name, _ in EVERY_COMMAND}
    assert {
        "inspect",
        "simulate",
        "demo",
        "process",
        "evaluate",
        "watch",
        "samples",
        "samples rename",
        "density",
        "scans",
        "defects",
        "status",
        "retrain",
        "labels import",
        "labels accept",
        "labels list",
        "labels export",
        "import-image",
        "models list",
        "models activate",
        "models rollback",
        "reprocess",
        "service install",
        "service uninstall",
    } <= names


@pytest.mark.parametrize("name, command", EVERY_COMMAND, ids=[n for n, _ in EVERY_COMMAND])
def test_every_command_has_help(name, command):
    help_text = command.help or ""
    assert len(help_text.split()) >= 5, f"{name}: its help says too little: {help_text!r}"
    result = runner.invoke(app, [*name.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert " ".join(help_text.split("\n")[0].split()) in " ".join(result.output.split())
    for param in command.params:
        if param.name == "help":
            continue
        assert getattr(param, "help", None), f"{name}: {param.name} has no help"


def test_python_dash_m_entry_point():
    result = _cli("--help")
    assert result.returncode == 0 and "inspect" in result.stdout
