"""Commands ``service install | uninstall``: the watcher and the nightly retrain as systemd
units (Linux) or Task Scheduler tasks (Windows). Registered by the table in ``cli/__init__.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from defectwatch.errors import DefectwatchError
from defectwatch.service.cli.common import DbOption, _fail, out

service_app = typer.Typer(
    help="Run the watcher and the nightly retrain as a service "
    "(systemd on Linux, Task Scheduler on Windows).",
    no_args_is_help=True,
)

UserOption = Annotated[
    bool,
    typer.Option(
        "--user",
        help="User units in ~/.config/systemd/user (default: system units in "
        "/etc/systemd/system, which needs root).",
    ),
]
UnitDirOption = Annotated[
    Path | None,
    typer.Option(
        "--unit-dir",
        metavar="DIR",
        show_default=False,
        help="Write the unit files into DIR instead (e.g. for packaging).",
    ),
]
WindowsOption = Annotated[
    bool,
    typer.Option(
        "--windows", help="Only print the Windows Task Scheduler commands (the default on Windows)."
    ),
]


def _print_lines(title: str, lines: tuple[str, ...] | list[str]) -> None:
    out.print(title, highlight=False)
    for line in lines:
        out.print(f"  {escape(line)}", highlight=False, soft_wrap=True)


def _windows_note() -> str:
    if os.name == "nt":
        return "Windows (Task Scheduler), in a command prompt:"
    return (
        "Windows (Task Scheduler), in a command prompt on the instrument PC (use its "
        "defectwatch python.exe and its folders):"
    )


@service_app.command("install")
def service_install(
    user: UserOption = False,
    watch: Annotated[
        list[Path] | None,
        typer.Option(
            "--watch",
            metavar="DIR",
            show_default=False,
            help="Folder the microscope writes scans into (repeat for several).",
        ),
    ] = None,
    db: DbOption = None,
    at: Annotated[
        str, typer.Option("--at", metavar="HH:MM", help="When the nightly retrain runs.")
    ] = "02:00",
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="The watcher also watches every sub-folder.")
    ] = False,
    poll: Annotated[
        float | None,
        typer.Option(
            "--poll",
            metavar="SECONDS",
            min=0.05,
            help="The watcher polls (network shares) instead of OS events.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the unit files and commands; write nothing.")
    ] = False,
    unit_dir: UnitDirOption = None,
    windows: WindowsOption = False,
) -> None:
    """Write systemd units for `defectwatch watch DIR` and a timer for the nightly
    `defectwatch retrain`, and print the commands that enable them (and the Windows Task
    Scheduler equivalent)."""
    from defectwatch.service.system_service import plan_install, write_units

    try:
        plan = plan_install(
            user=user,
            watch_dirs=watch or [],
            db_url=db,
            retrain_at=at,
            unit_dir=unit_dir,
            recursive=recursive,
            poll_s=poll,
        )
        if windows or os.name == "nt":
            _print_lines(_windows_note(), plan.windows)
            return
        if dry_run:
            for name, text in plan.units.items():
                out.print(f"# --- {escape(str(plan.unit_dir / name))}", highlight=False)
                out.print(escape(text), highlight=False, soft_wrap=True)
        else:
            for path in write_units(plan):
                out.print(f"wrote {escape(str(path))}", highlight=False)
    except DefectwatchError as exc:
        _fail(escape(str(exc)))
        raise typer.Exit(1) from None
    for note in plan.notes:
        out.print(f"[yellow]note:[/yellow] {escape(note)}", highlight=False)
    _print_lines("Then run:" if not dry_run else "After writing them, run:", plan.commands)
    _print_lines(_windows_note(), plan.windows)


@service_app.command("uninstall")
def service_uninstall(
    user: UserOption = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be removed; remove nothing.")
    ] = False,
    unit_dir: UnitDirOption = None,
    windows: WindowsOption = False,
) -> None:
    """Remove the units `service install` wrote (and print how to stop them, and the Windows
    Task Scheduler equivalent)."""
    from defectwatch.service.system_service import uninstall, windows_uninstall_commands

    if windows or os.name == "nt":
        _print_lines(_windows_note(), windows_uninstall_commands())
        return
    try:
        r = uninstall(user=user, unit_dir=unit_dir, dry_run=dry_run)
    except DefectwatchError as exc:
        _fail(escape(str(exc)))
        raise typer.Exit(1) from None
    verb = "would remove" if dry_run else "removed"
    for path in (*r.removed, *r.links):
        out.print(f"{verb} {escape(str(path))}", highlight=False)
    if not r.removed:
        out.print(f"no defectwatch units in {escape(str(r.unit_dir))}", highlight=False)
    for path in r.refused:
        _fail(escape(f"{path} was not written by defectwatch: left alone"))
    _print_lines("Stop what is still running:", r.commands)
    _print_lines(_windows_note(), r.windows)
    if r.refused:
        raise typer.Exit(1)
