"""`defectwatch service install | uninstall`: unit files written into a temporary
XDG_CONFIG_HOME (systemctl is never run), the Windows commands printed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from defectwatch.service.cli import app
from defectwatch.service.system_service import (
    MARKER,
    RETRAIN_UNIT,
    TIMER_UNIT,
    WATCH_UNIT,
    plan_install,
    systemd_quote,
    windows_quote,
)

runner = CliRunner()


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def config_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    monkeypatch.delenv("DEFECTWATCH_DB", raising=False)
    return home


@pytest.fixture
def strict_umask():
    """A umask that would make every new file 0600: the modes below are set, not inherited."""
    before = os.umask(0o077)
    yield
    os.umask(before)


def test_user_install_writes_the_watcher_and_the_nightly_timer(tmp_path, config_home, strict_umask):
    scans = tmp_path / "scans"
    scans.mkdir()
    result = invoke(
        "service",
        "install",
        "--user",
        "--watch",
        scans,
        "--db",
        tmp_path / "dw.db",
        "--at",
        "03:30",
    )
    assert result.exit_code == 0, result.output
    units = config_home / "systemd" / "user"
    assert sorted(p.name for p in units.iterdir()) == sorted([WATCH_UNIT, RETRAIN_UNIT, TIMER_UNIT])
    watch = (units / WATCH_UNIT).read_text()
    python = str(Path(sys.executable).absolute())
    assert f"ExecStart={python} -m defectwatch watch {scans}\n" in watch
    assert f'Environment="DEFECTWATCH_DB={tmp_path / "dw.db"}"' in watch
    assert "WantedBy=default.target" in watch and "Restart=on-failure" in watch
    assert "User=" not in watch and watch.startswith(MARKER)
    retrain = (units / RETRAIN_UNIT).read_text()
    assert f"ExecStart={python} -m defectwatch retrain --recipe finetune\n" in retrain
    assert "Type=oneshot" in retrain
    timer = (units / TIMER_UNIT).read_text()
    assert "OnCalendar=*-*-* 03:30:00" in timer and "Persistent=true" in timer
    assert f"Unit={RETRAIN_UNIT}" in timer
    out = result.stdout
    assert f"systemctl --user enable --now {WATCH_UNIT} {TIMER_UNIT}" in out
    assert "systemctl --user daemon-reload" in out and "loginctl enable-linger" in out
    assert 'schtasks /Create /F /TN "defectwatch\\watch" /SC ONLOGON' in out
    assert 'schtasks /Create /F /TN "defectwatch\\retrain" /SC DAILY /ST 03:30' in out

    for name in (WATCH_UNIT, RETRAIN_UNIT, TIMER_UNIT):  # whatever the umask
        assert (units / name).stat().st_mode & 0o777 == 0o644, name

    # installing again replaces our own files; a database password is kept from others
    url = "postgresql+psycopg://lab:secret@dbhost/dw"
    assert invoke("service", "install", "--user", "--watch", scans, "--db", url).exit_code == 0
    assert f'Environment="DEFECTWATCH_DB={url}"' in (units / WATCH_UNIT).read_text()
    assert (units / WATCH_UNIT).stat().st_mode & 0o777 == 0o600
    assert (units / TIMER_UNIT).stat().st_mode & 0o777 == 0o644  # no password in the timer
    assert invoke("service", "install", "--user", "--watch", scans).exit_code == 0
    assert (units / WATCH_UNIT).stat().st_mode & 0o777 == 0o644  # the password gone again
    assert "DEFECTWATCH_DB" not in (units / WATCH_UNIT).read_text()


def test_dry_run_writes_nothing_and_windows_prints_only_schtasks(tmp_path, config_home):
    result = invoke(
        "service",
        "install",
        "--user",
        "--watch",
        tmp_path / "not yet",
        "--recursive",
        "--poll",
        "2",
        "--dry-run",
    )
    assert result.exit_code == 0, result.output
    assert not config_home.exists()
    assert f"# --- {config_home / 'systemd' / 'user' / WATCH_UNIT}" in result.stdout
    assert f'watch "{tmp_path / "not yet"}" --recursive --poll 2' in result.stdout
    assert "not a folder yet" in result.stdout
    windows = invoke("service", "install", "--watch", "D:\\Scans\\WSe2 run", "--windows")
    assert windows.exit_code == 0
    lines = [ln.strip() for ln in windows.stdout.splitlines() if ln.strip()]
    assert [ln.split(" /TN ")[1].split()[0] for ln in lines if ln.startswith("schtasks")] == [
        '"defectwatch\\watch"',
        '"defectwatch\\retrain"',
    ]
    assert "pythonw.exe -m defectwatch watch" in windows.stdout
    assert not any(ln.startswith("systemctl") for ln in lines)


def test_system_units_need_a_writable_folder_and_a_user(tmp_path, config_home):
    blocker = tmp_path / "a file"
    blocker.write_text("")
    result = invoke("service", "install", "--watch", tmp_path, "--unit-dir", blocker / "units")
    assert result.exit_code == 1
    assert "cannot write the units" in result.stderr and "sudo" in result.stderr
    assert "--user" in result.stderr and "Traceback" not in result.output
    plan = plan_install(
        user=False,
        watch_dirs=[tmp_path],
        unit_dir=tmp_path / "u",
        run_as="lab",
        environment={"DEFECTWATCH_SAMPLE_RULE": "comment"},
    )
    watch = plan.units[WATCH_UNIT]
    assert "User=lab" in watch and "WantedBy=multi-user.target" in watch
    assert 'Environment="DEFECTWATCH_SAMPLE_RULE=comment"' in watch
    assert plan.commands[1] == f"sudo systemctl enable --now {WATCH_UNIT} {TIMER_UNIT}"
    bad = invoke("service", "install", "--user", "--at", "25:00", "--dry-run")
    assert bad.exit_code == 1 and "HH:MM" in bad.stderr


def test_without_watch_only_the_retrain_and_foreign_files_are_left_alone(tmp_path, config_home):
    units = config_home / "systemd" / "user"
    units.mkdir(parents=True)
    (units / WATCH_UNIT).write_text("[Service]\nExecStart=/bin/true\n")  # somebody else's
    refused = invoke("service", "install", "--user", "--watch", tmp_path)
    assert refused.exit_code == 1 and "not written by defectwatch" in refused.stderr
    result = invoke("service", "install", "--user")
    assert result.exit_code == 0 and "only the nightly retrain" in result.stdout
    assert f"enable --now {TIMER_UNIT}" in result.stdout
    assert (units / TIMER_UNIT).is_file()


def test_uninstall_removes_ours_with_their_links_and_keeps_others(tmp_path, config_home):
    assert invoke("service", "install", "--user", "--watch", tmp_path).exit_code == 0
    units = config_home / "systemd" / "user"
    wants = units / "timers.target.wants"
    wants.mkdir()
    os.symlink(units / TIMER_UNIT, wants / TIMER_UNIT)  # what `systemctl enable` makes
    dry = invoke("service", "uninstall", "--user", "--dry-run")
    assert dry.exit_code == 0 and "would remove" in dry.stdout and (units / WATCH_UNIT).exists()
    result = invoke("service", "uninstall", "--user")
    assert result.exit_code == 0, result.output
    assert not any(units.glob("defectwatch-*")) and not (wants / TIMER_UNIT).is_symlink()
    assert f"systemctl --user stop {WATCH_UNIT}" in result.stdout
    assert 'schtasks /Delete /F /TN "defectwatch\\retrain"' in result.stdout
    (units / RETRAIN_UNIT).write_text("[Service]\n")  # not ours
    kept = invoke("service", "uninstall", "--user")
    assert kept.exit_code == 1 and (units / RETRAIN_UNIT).exists()
    assert "left alone" in kept.stderr


def test_quoting_for_systemd_and_windows():
    assert systemd_quote("/opt/dw/bin/python") == "/opt/dw/bin/python"
    assert systemd_quote("/data/my scans") == '"/data/my scans"'
    assert systemd_quote("/data/100%_$HOME") == "/data/100%%_$$HOME"  # no expansion
    assert systemd_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert windows_quote("C:\\Program Files\\py.exe") == '"C:\\Program Files\\py.exe"'
    assert windows_quote("D:\\scans") == "D:\\scans"
    plan = plan_install(
        user=True,
        watch_dirs=["/data/my scans"],
        unit_dir="/tmp/u",
        environment={"DEFECTWATCH_DB": "/data/dw 100%.db"},
    )
    assert 'Environment="DEFECTWATCH_DB=/data/dw 100%%.db"' in plan.units[RETRAIN_UNIT]
    assert 'watch "/data/my scans"' in plan.units[WATCH_UNIT]
