"""Commands for labels: ``labels import | accept | list | export`` and ``import-image``.
Registered on the main app by the table in ``cli/__init__.py``.

Errors: one line on stderr and exit 1 (a file that fails does not stop the others).
"""

from __future__ import annotations

import json
from pathlib import Path, PurePath
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from defectwatch.errors import DefectwatchError
from defectwatch.service.cli.common import DbOption, _database, _fail, _progress, err, out

labels_app = typer.Typer(
    help="Labels: import label files, accept reviewed detections, list, export.",
    no_args_is_help=True,
)

FormatOption = Annotated[
    str | None,
    typer.Option(
        "--format",
        metavar="via|voc|coco|csv",
        show_default=False,
        help="Label format (default: from the file: .xml voc, .json coco, .csv via or our "
        "scan,row,col,kind CSV).",
    ),
]


def _warn(message: str) -> None:
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {k}" for k, n in counts.items())


@labels_app.command("import")
def labels_import(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Label files: VIA CSV (label,x,y,width,height,filename,resX,resY), Pascal VOC "
            "XML, COCO JSON, or our CSV (scan,row,col,kind[,radius_nm])."
        ),
    ],
    format: FormatOption = None,
    scan: Annotated[
        str | None,
        typer.Option(
            "--scan",
            metavar="SCAN",
            help="Put the labels on this recorded scan (an id, path or "
            "file name) instead of matching the images' names.",
        ),
    ] = None,
    exhaustive: Annotated[
        bool,
        typer.Option(
            "--exhaustive/--partial",
            help="Every defect of each image is marked (default), or only some: partial labels "
            "never teach unmarked defects as background.",
        ),
    ] = True,
    db: DbOption = None,
) -> None:
    """Import labels; images are matched to recorded scans by file stem (or --scan) and boxes
    scaled to the scan's pixels. Importing a file again replaces its labels."""
    from defectwatch.service.labels import check_format, import_label_files

    try:
        check_format(format)
    except DefectwatchError as exc:
        _fail(escape(str(exc)))
        raise typer.Exit(1) from None
    failed = False
    with _database(db) as engine:
        reports = import_label_files(engine, files, format=format, scan=scan, exhaustive=exhaustive)
    matched = 0
    for r in reports:
        name = PurePath(r.path).name
        if r.error:
            failed = True
            _fail(escape(r.error))
            continue
        matched += len(r.scans)
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(r.skipped.items()))
        line = (
            f"{name} ({r.format}, {'exhaustive' if r.exhaustive else 'partial'}): "
            f"imported {_counts(r.counts)} on {len(r.scans)} scan(s)"
        )
        if r.dropped:
            line += f"; {r.dropped} outside the frame dropped"
        if skipped:
            line += f"; skipped {skipped}"
        out.print(escape(line), highlight=False)
        if r.unknown_classes:
            _warn(
                f"{name}: unknown classes skipped: "
                + ", ".join(f"{k!r} x{n}" for k, n in r.unknown_classes.items())
            )
        if r.scans:
            table = Table("scan", "file", "image", "trough", "peak", box=None, pad_edge=False)
            for s in r.scans:
                table.add_row(
                    str(s.scan_id),
                    escape(PurePath(s.path).name),
                    escape(s.image),
                    str(s.counts["trough"]),
                    str(s.counts["peak"]),
                )
            out.print(table)
        for image, why in r.unmatched:
            _warn(f"{name}: not matched: {image}: {why}")
    if failed or (matched == 0 and reports):
        if matched == 0 and not failed:
            unmatched = any(r.unmatched for r in reports)
            _fail(
                "no labels were imported: "
                + (
                    "no image matched a recorded scan"
                    if unmatched
                    else "the files hold no defect label"
                )
            )
        raise typer.Exit(1)


@labels_app.command("accept")
def labels_accept(
    scan: Annotated[str, typer.Argument(help="Scan id, path or file name.")],
    min_confidence: Annotated[
        float,
        typer.Option(
            "--min-confidence",
            metavar="P",
            min=0.0,
            max=1.0,
            help="Only detections at least this confident (0-1).",
        ),
    ] = 0.0,
    db: DbOption = None,
) -> None:
    """A reviewed scan's latest detections become its labels (source 'accepted', exhaustive:
    what was not detected is background)."""
    from defectwatch.service.labels import accept_detections

    with _database(db) as engine:
        r = accept_detections(engine, scan, min_confidence=min_confidence)
    note = (
        f" ({r.below_confidence} below {min_confidence:g} left out)" if r.below_confidence else ""
    )
    again = " (replacing the earlier accepted labels)" if r.replaced else ""
    out.print(
        escape(
            f"scan {r.scan_id} ({PurePath(r.path).name}): accepted "
            f"{_counts(r.counts)} from run {r.run_id} ({r.model_version}){note}"
            f"{again}"
        ),
        highlight=False,
    )


@labels_app.command("list")
def labels_list(
    sample: Annotated[str | None, typer.Option(help="Only this sample.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list.")] = False,
    db: DbOption = None,
) -> None:
    """Labelled scans: labels per kind, exhaustive or partial, and where they came from."""
    from defectwatch.service.labels import label_overview

    with _database(db) as engine:
        rows = label_overview(engine, sample=sample)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        out.print(
            "no labelled scans" + (f" in sample {escape(sample)}" if sample else ""),
            highlight=False,
        )
        return
    table = Table("scan", "file", "sample", "trough", "peak", "labels", "sources")
    table.columns[1].overflow = "fold"
    for r in rows:
        sources = "; ".join(
            f"{s['source']} ({s['labels']}{'' if s['exhaustive'] else ', partial'})"
            for s in r["sources"]
        )
        table.add_row(
            str(r["scan_id"]),
            escape(PurePath(r["path"]).name),
            escape(r["sample"] or "-"),
            str(r["counts"]["trough"]),
            str(r["counts"]["peak"]),
            "exhaustive" if r["exhaustive"] else "partial",
            escape(sources),
        )
    out.print(table)
    n_ex = sum(r["exhaustive"] for r in rows)
    total = sum(r["counts"]["total"] for r in rows)
    out.print(
        f"{len(rows)} labelled scan(s): {n_ex} exhaustive, {len(rows) - n_ex} partial; "
        f"{total} labels",
        highlight=False,
    )


@labels_app.command("export")
def labels_export(
    target: Annotated[
        Path,
        typer.Argument(
            metavar="OUTDIR|FILE",
            help="A file (via, coco, csv) or a folder (voc: one XML per "
            "scan; other formats: labels_<format>.<ext> inside).",
        ),
    ],
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            metavar="via|voc|coco|csv",
            show_default=False,
            help="Default: from TARGET: .json coco, .csv our point CSV, a folder voc.",
        ),
    ] = None,
    sample: Annotated[str | None, typer.Option(help="Only this sample.")] = None,
    db: DbOption = None,
) -> None:
    """Write the labels out in the formats `labels import` reads (boxes of 2 x radius on each
    scan's own pixels, named by its file name)."""
    from defectwatch.service.labels import export_labels

    with _database(db) as engine:
        r = export_labels(engine, target, format=format, sample=sample)
    out.print(
        escape(
            f"exported {_counts(r.counts)} of {r.scans} scan(s) as {r.format}: "
            + (str(r.files[0]) if len(r.files) == 1 else f"{len(r.files)} files in {target}")
        ),
        highlight=False,
    )


def import_image(
    files: Annotated[
        list[Path],
        typer.Argument(help="Rendered images (PNG, JPEG, TIFF, BMP), e.g. Gwyddion exports."),
    ],
    size_nm: Annotated[
        str | None,
        typer.Option(
            "--size-nm",
            metavar="W[xH]",
            help="Frame size in nm (H defaults to square pixels). Default: from the file name, "
            "e.g. _100x100_.",
        ),
    ] = None,
    sample: Annotated[
        str | None,
        typer.Option(help="Sample name (default: the sample rule, DEFECTWATCH_SAMPLE_RULE)."),
    ] = None,
    db: DbOption = None,
) -> None:
    """Record rendered images as scans of a physical size, so labels drawn on renders can
    train the ensemble (no detection is run: they add nothing to densities)."""
    from defectwatch.service.config import get_settings
    from defectwatch.service.labels import import_images, parse_size_nm

    try:
        size = parse_size_nm(size_nm) if size_nm is not None else None
        rule = get_settings().sample_rule
    except DefectwatchError as exc:
        _fail(escape(str(exc)))
        raise typer.Exit(1) from None
    with _database(db, create=True) as engine:
        with _progress() as bar:
            task = bar.add_task("recording", total=len(files))
            results = import_images(
                engine,
                files,
                size_nm=size,
                sample=sample,
                rule=rule,
                on_progress=lambda i, n: bar.update(task, completed=i),
            )
    failed = 0
    for r in results:
        if r.status == "failed":
            failed += 1
            _fail(escape(r.error or f"{r.path}: failed"))
            continue
        out.print(
            escape(
                f"{r.status} scan {r.scan_id}: {PurePath(r.path).name} "
                f"({r.nx}x{r.ny} px, {r.width_nm:.4g}x{r.height_nm:.4g} nm, "
                f"sample {r.sample or '-'})"
            ),
            highlight=False,
        )
    if failed:
        raise typer.Exit(1)
