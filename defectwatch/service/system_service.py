"""Use case: run defectwatch as a system service: the watcher always, the retrain every night.

Linux: systemd units, ``defectwatch-watch.service`` (``defectwatch watch DIR...``, restarted
on failure; SIGTERM lets it finish the scan under way) and ``defectwatch-retrain.service`` run
by ``defectwatch-retrain.timer`` (daily at 02:00 by default; ``Persistent=true`` catches up a
night the PC was off). User units live in ``$XDG_CONFIG_HOME/systemd/user`` (default
``~/.config/systemd/user``), system units in ``/etc/systemd/system`` (root only). Windows (where
Nanonis runs): the same two jobs as Task Scheduler tasks (``schtasks``): the watcher at logon,
the retrain daily. Commands are written with the absolute path of the running Python
(``python -m defectwatch``), so the service uses this very installation. Nothing here runs
``systemctl`` or ``schtasks``: the commands to run are returned for the user.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from defectwatch.errors import ConfigError

log = logging.getLogger(__name__)

WATCH_UNIT = "defectwatch-watch.service"
RETRAIN_UNIT = "defectwatch-retrain.service"
TIMER_UNIT = "defectwatch-retrain.timer"
UNITS = (WATCH_UNIT, RETRAIN_UNIT, TIMER_UNIT)
SYSTEM_UNIT_DIR = Path("/etc/systemd/system")
MARKER = "# Written by `defectwatch service install`; `defectwatch service uninstall` removes it."
WATCH_TASK = r"defectwatch\watch"
RETRAIN_TASK = r"defectwatch\retrain"
# what the nightly job runs: the fine-tuning recipe, written out so an installed unit keeps its
# meaning if the command's default changes (a night with no new label is skipped, exit 0)
NIGHTLY_RETRAIN = ("retrain", "--recipe", "finetune")
PASSED_ENV = ("DEFECTWATCH_DB", "DEFECTWATCH_MODELS_DIR", "DEFECTWATCH_SAMPLE_RULE")
WINDOWS_PYTHON = r"C:\path\to\defectwatch\.venv\Scripts\python.exe"  # shown off Windows
SCHTASKS_TR_MAX = 261  # longest /TR command Task Scheduler accepts


@dataclass(frozen=True)
class ServicePlan:
    """What ``service install`` writes (unit file name -> text) and the commands to run."""

    unit_dir: Path
    user: bool
    units: dict[str, str]
    commands: tuple[str, ...]  # systemctl / loginctl, to run after writing the units
    windows: tuple[str, ...]  # the Task Scheduler equivalent
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Removal:
    """What ``service uninstall`` did."""

    unit_dir: Path
    removed: tuple[Path, ...]
    refused: tuple[Path, ...]  # files of that name not written by us: left alone
    commands: tuple[str, ...]
    windows: tuple[str, ...]
    links: tuple[Path, ...] = field(default=())  # *.wants/ symlinks removed


def user_unit_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/systemd/user`` (``~/.config/systemd/user`` by default)."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "systemd" / "user"


def unit_dir_for(*, user: bool, unit_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the units go: ``unit_dir`` when given, else the user or system unit folder."""
    if unit_dir is not None:
        return Path(unit_dir).expanduser().absolute()
    return user_unit_dir() if user else SYSTEM_UNIT_DIR


def parse_time(text: str) -> tuple[int, int]:
    """``"02:00"`` -> (2, 0); ConfigError for anything that is not a time of day."""
    m = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", text or "")
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise ConfigError(f"--at {text!r}: give the nightly retrain's time as HH:MM, e.g. 02:00")
    return int(m.group(1)), int(m.group(2))


def _escape_specifiers(text: str) -> str:
    return text.replace("%", "%%")


def systemd_quote(arg: str) -> str:
    """One ExecStart= argument: ``%`` and ``$`` doubled (no specifier or variable expansion),
    double-quoted (with C escapes) when it holds anything but plain path characters."""
    text = _escape_specifiers(arg).replace("$", "$$")
    if text and re.fullmatch(r"[A-Za-z0-9_@%+=:,./$-]+", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _environment_line(key: str, value: str) -> str:
    text = _escape_specifiers(f"{key}={value}")
    return 'Environment="' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def windows_quote(arg: str) -> str:
    """One argument of a Windows command line (double quotes when needed)."""
    if arg and not re.search(r'[\s"&|<>^]', arg):
        return arg
    return '"' + arg.replace('"', '\\"') + '"'


def defectwatch_command(*args: str, executable: str | None = None) -> list[str]:
    """``[python, -m, defectwatch, *args]`` with this installation's Python (absolute)."""
    return [str(Path(executable or sys.executable).absolute()), "-m", "defectwatch", *args]


def _watch_args(
    watch_dirs: Sequence[str | os.PathLike[str]], *, recursive: bool, poll_s: float | None
) -> list[str]:
    args = ["watch", *[str(d) for d in watch_dirs]]
    if recursive:
        args.append("--recursive")
    if poll_s is not None:
        args += ["--poll", f"{poll_s:g}"]
    return args


def plan_install(
    *,
    user: bool,
    watch_dirs: Sequence[str | os.PathLike[str]] = (),
    db_url: str | None = None,
    retrain_at: str = "02:00",
    unit_dir: str | os.PathLike[str] | None = None,
    recursive: bool = False,
    poll_s: float | None = None,
    executable: str | None = None,
    environment: Mapping[str, str] | None = None,
    run_as: str | None = None,
) -> ServicePlan:
    """The unit files and commands for ``service install`` (nothing is written).

    ``db_url``: the database the services use (default: ``DEFECTWATCH_DB`` from
    ``environment``, else the user's default); ``environment``: where ``DEFECTWATCH_*`` values
    to pass on are read (default: ``os.environ``); ``run_as``: the ``User=`` of system units
    (default: the user who ran sudo, else the current user)."""
    hour, minute = parse_time(retrain_at)
    env = dict(os.environ if environment is None else environment)
    passed = {k: env[k] for k in PASSED_ENV if env.get(k)}
    if db_url:
        passed["DEFECTWATCH_DB"] = db_url
    dirs = [Path(d).expanduser().absolute() for d in watch_dirs]
    folder = unit_dir_for(user=user, unit_dir=unit_dir)
    owner = None if user else (run_as or env.get("SUDO_USER") or getpass.getuser())
    env_lines = [_environment_line(k, v) for k, v in sorted(passed.items())]
    wanted_by = "default.target" if user else "multi-user.target"
    user_line = [f"User={owner}"] if owner and owner != "root" else []
    units: dict[str, str] = {}
    notes: list[str] = []
    if dirs:
        exec_start = " ".join(
            systemd_quote(a)
            for a in defectwatch_command(
                *_watch_args(dirs, recursive=recursive, poll_s=poll_s), executable=executable
            )
        )
        units[WATCH_UNIT] = "\n".join(
            [
                MARKER,
                "[Unit]",
                "Description=defectwatch: record the defects of every new STM scan in "
                + _escape_specifiers(", ".join(str(d) for d in dirs)),
                "Wants=network-online.target",
                "After=network-online.target",
                "",
                "[Service]",
                "Type=simple",
                *user_line,
                *env_lines,
                f"ExecStart={exec_start}",
                "# SIGTERM: the scan under way is finished and recorded, then it exits",
                "KillMode=mixed",
                "TimeoutStopSec=300",
                "Restart=on-failure",
                "RestartSec=30",
                "",
                "[Install]",
                f"WantedBy={wanted_by}",
                "",
            ]
        )
        missing = [d for d in dirs if not d.is_dir()]
        if missing:
            notes.append(
                "not a folder yet (a share not mounted?): " + ", ".join(str(d) for d in missing)
            )
    else:
        notes.append("no --watch DIR: only the nightly retrain was planned")
    retrain = " ".join(
        systemd_quote(a) for a in defectwatch_command(*NIGHTLY_RETRAIN, executable=executable)
    )
    units[RETRAIN_UNIT] = "\n".join(
        [
            MARKER,
            "[Unit]",
            "Description=defectwatch: retrain the defect ensemble from the accumulated labels "
            "(promoted only when no worse)",
            "Wants=network-online.target",
            "After=network-online.target",
            "",
            "[Service]",
            "Type=oneshot",
            *user_line,
            *env_lines,
            f"ExecStart={retrain}",
            "Nice=10",
            "IOSchedulingClass=idle",
            "TimeoutStartSec=infinity",
            "",
        ]
    )
    units[TIMER_UNIT] = "\n".join(
        [
            MARKER,
            "[Unit]",
            f"Description=defectwatch: retrain every night at {hour:02d}:{minute:02d}",
            "",
            "[Timer]",
            f"OnCalendar=*-*-* {hour:02d}:{minute:02d}:00",
            "Persistent=true",
            f"Unit={RETRAIN_UNIT}",
            "",
            "[Install]",
            "WantedBy=timers.target",
            "",
        ]
    )
    enable = [u for u in (WATCH_UNIT, TIMER_UNIT) if u in units]
    ctl = "systemctl --user" if user else "sudo systemctl"
    commands = [f"{ctl} daemon-reload", f"{ctl} enable --now {' '.join(enable)}"]
    if user:
        commands.append(
            f"loginctl enable-linger {getpass.getuser()}   # keep them running "
            "without a login session, and start them at boot"
        )
    if WATCH_UNIT in units:
        journal = "journalctl --user" if user else "journalctl"
        commands.append(f"{journal} -u {WATCH_UNIT} -f   # follow the watcher's log")
    commands.append(f"{ctl.removeprefix('sudo ')} list-timers {TIMER_UNIT}   # next retrain")
    return ServicePlan(
        folder,
        user,
        units,
        tuple(commands),
        tuple(
            windows_install_commands(
                watch_dirs=[str(d) for d in watch_dirs],
                db_url=passed.get("DEFECTWATCH_DB"),
                retrain_at=f"{hour:02d}:{minute:02d}",
                recursive=recursive,
                poll_s=poll_s,
            )
        ),
        tuple(notes),
    )


def _windows_python(executable: str | None, *, windowless: bool) -> str:
    exe = executable or (sys.executable if os.name == "nt" else WINDOWS_PYTHON)
    if windowless:
        p = PureWindowsPath(exe)
        if p.name.lower() == "python.exe":
            candidate = p.with_name("pythonw.exe")
            if os.name != "nt" or Path(str(candidate)).exists():
                return str(candidate)
    return exe


def windows_install_commands(
    *,
    watch_dirs: Sequence[str],
    db_url: str | None = None,
    retrain_at: str = "02:00",
    recursive: bool = False,
    poll_s: float | None = None,
    executable: str | None = None,
) -> list[str]:
    """``schtasks`` lines for the watcher (at logon, no console window: ``pythonw.exe``) and
    the daily retrain; plus ``setx DEFECTWATCH_DB`` when a database is named."""
    hour, minute = parse_time(retrain_at)
    lines: list[str] = []
    if db_url:
        lines.append(f"setx DEFECTWATCH_DB {windows_quote(db_url)}")
    if watch_dirs:
        exe = _windows_python(executable, windowless=True)
        run = " ".join(
            windows_quote(a)
            for a in [
                exe,
                "-m",
                "defectwatch",
                *_watch_args(watch_dirs, recursive=recursive, poll_s=poll_s),
            ]
        )
        lines.append(
            f'schtasks /Create /F /TN "{WATCH_TASK}" /SC ONLOGON /RL LIMITED '
            f'/TR "{run.replace(chr(34), chr(92) + chr(34))}"'
        )
    exe = _windows_python(executable, windowless=False)
    run = " ".join(windows_quote(a) for a in [exe, "-m", "defectwatch", *NIGHTLY_RETRAIN])
    lines.append(
        f'schtasks /Create /F /TN "{RETRAIN_TASK}" /SC DAILY '
        f'/ST {hour:02d}:{minute:02d} /TR "{run.replace(chr(34), chr(92) + chr(34))}"'
    )
    if any(len(_tr(line)) > SCHTASKS_TR_MAX for line in lines if "/TR" in line):
        lines.append(
            f"REM a /TR command above is longer than {SCHTASKS_TR_MAX} characters: "
            "put it into a .cmd file and give /TR that file"
        )
    return lines


def _tr(line: str) -> str:
    return line.split(" /TR ", 1)[1] if " /TR " in line else ""


def windows_uninstall_commands() -> list[str]:
    """``schtasks`` lines that stop and delete both tasks."""
    return [
        f'schtasks /End /TN "{WATCH_TASK}"',
        f'schtasks /Delete /F /TN "{WATCH_TASK}"',
        f'schtasks /Delete /F /TN "{RETRAIN_TASK}"',
    ]


def write_units(plan: ServicePlan) -> list[Path]:
    """Write the plan's unit files (replacing ours, never a file someone else wrote).
    ConfigError when the folder cannot be written (system units need root)."""
    folder = plan.unit_dir
    for name in plan.units:
        existing = folder / name
        if existing.is_file() and MARKER not in _head(existing):
            raise ConfigError(
                f"{existing} exists and was not written by defectwatch; remove or rename it first"
            )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(13, "Permission denied")
        written = []
        for name, text in plan.units.items():
            path = folder / name
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            # a database password: readable by the owner only; else as systemd expects units
            tmp.chmod(0o600 if _holds_password(text) else 0o644)
            os.replace(tmp, path)
            written.append(path)
    except OSError as exc:
        hint = (
            "system units need root: run it with sudo, or install for your user with --user"
            if not plan.user
            else "check the folder's permissions"
        )
        raise ConfigError(
            f"cannot write the units into {folder} ({exc.strerror or exc}); {hint}"
        ) from None
    log.info("wrote %s into %s", ", ".join(plan.units), folder)
    return written


def _holds_password(text: str) -> bool:
    """A database URL with a password (``scheme://user:secret@host``) in the text."""
    return re.search(r"://[^/@\s\"]*:[^/@\s\"]*@", text) is not None


def _head(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(4096)
    except OSError:
        return ""


def uninstall(
    *, user: bool, unit_dir: str | os.PathLike[str] | None = None, dry_run: bool = False
) -> Removal:
    """Remove our unit files (and their ``*.wants/`` links) from the unit folder; files of
    the same name that we did not write are left alone. ConfigError when they cannot be
    removed."""
    folder = unit_dir_for(user=user, unit_dir=unit_dir)
    removed: list[Path] = []
    refused: list[Path] = []
    links: list[Path] = []
    try:
        for name in UNITS:
            path = folder / name
            if not path.is_file():
                continue
            if MARKER not in _head(path):
                refused.append(path)
                continue
            if not dry_run:
                path.unlink()
            removed.append(path)
        if folder.is_dir():
            for wants in folder.glob("*.wants"):
                for name in UNITS:
                    link = wants / name
                    if link.is_symlink():
                        if not dry_run:
                            link.unlink()
                        links.append(link)
    except OSError as exc:
        hint = (
            "system units need root: run it with sudo"
            if not user
            else "check the folder's permissions"
        )
        raise ConfigError(
            f"cannot remove the units from {folder} ({exc.strerror or exc}); {hint}"
        ) from None
    ctl = "systemctl --user" if user else "sudo systemctl"
    commands = [f"{ctl} stop {WATCH_UNIT} {TIMER_UNIT} {RETRAIN_UNIT}", f"{ctl} daemon-reload"]
    return Removal(
        folder,
        tuple(removed),
        tuple(refused),
        tuple(commands),
        tuple(windows_uninstall_commands()),
        tuple(links),
    )
