"""`defectwatch process` and `defectwatch evaluate`: the detection commands."""

from __future__ import annotations

import json
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from defectwatch.errors import DefectwatchError
from defectwatch.service.cli.common import DbOption, _database, _fail, _progress, err, out


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def result_json(path: Path, detected, model: str) -> dict[str, Any]:
    """The JSON object `process --json` prints for one scan that worked."""
    scan, det = detected.scan, detected.detection
    return {
        "path": str(path),
        "status": "ok",
        "error": None,
        "nx": scan.nx,
        "ny": scan.ny,
        "width_nm": scan.width_nm,
        "height_nm": scan.height_nm,
        "pixel_size_nm": [scan.pixel_size_x_nm, scan.pixel_size_y_nm],
        "acquired_fraction": scan.acquired_fraction,
        "model": model,
        "defects": [
            {
                "row": round(d.row, 2),
                "col": round(d.col, 2),
                "x_nm": round(d.x_nm, 4),
                "y_nm": round(d.y_nm, 4),
                "kind": d.kind,
                "confidence": round(d.confidence, 4),
                "uncertainty": round(d.uncertainty, 4),
                "area_nm2": round(d.area_nm2, 4),
                "contrast": round(d.contrast, 2) if math.isfinite(d.contrast) else None,
            }
            for d in det.defects
        ],
        "density_per_cm2": {k: v.per_cm2 for k, v in det.densities.items()},
        "density_ci95_per_cm2": {
            k: [v.ci95_low_per_cm2, v.ci95_high_per_cm2] for k, v in det.densities.items()
        },
        "seconds": round(det.seconds, 3),
    }


def failed_json(path: Path, error: str) -> dict[str, Any]:
    return {
        "path": str(path),
        "status": "failed",
        "error": error,
        "nx": None,
        "ny": None,
        "width_nm": None,
        "height_nm": None,
        "pixel_size_nm": None,
        "acquired_fraction": None,
        "model": None,
        "defects": [],
        "density_per_cm2": {},
        "density_ci95_per_cm2": {},
    }


def process(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="Scan files (.sxm, .sm4, MATRIX .Z_mtrx, Createc .dat, .gwy) or folders of them."
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per scan per line.")
    ] = False,
    overlay: Annotated[
        Path | None,
        typer.Option(help="Write a PNG per scan here: defects marked beside the uncertainty map."),
    ] = None,
    channel: Annotated[str, typer.Option(help="Channel to analyse (Z, Current, ...).")] = "Z",
    model: Annotated[
        Path | None,
        typer.Option(
            help="Model version directory (default: the record's active version; with --no-db "
            "the shipped ensemble)."
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Mean-probability threshold (default: the model's)."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    fast: Annotated[
        bool,
        typer.Option(
            help="Faster: bf16 on CPUs that have it (the same defects found), fp16 on CUDA."
        ),
    ] = False,
    no_db: Annotated[
        bool, typer.Option("--no-db", help="Do not record into the database.")
    ] = False,
    db: DbOption = None,
    sample_rule: Annotated[
        str | None,
        typer.Option(
            help="How a scan's sample is named: folder (the folder holding the file), "
            "regex:PATTERN with a (?P<sample>...) group, or comment."
        ),
    ] = None,
    instrument: Annotated[
        str | None,
        typer.Option(
            "--instrument",
            metavar="NAME",
            help="The microscope the scans came from (default: "
            "DEFECTWATCH_INSTRUMENT, else the host name).",
        ),
    ] = None,
) -> None:
    """Find the defects in scans: coordinates, confidence, uncertainty, densities; record
    them in the database (unless --no-db)."""
    from defectwatch.service.detection import load_ensemble
    from defectwatch.service.model_versions import resolve_model

    files = _expand(paths)
    if not files:
        _fail(
            "no scan files (.sxm, .sm4, .Z_mtrx, .dat, .gwy) found in "
            + ", ".join(str(p) for p in paths)
        )
        raise typer.Exit(1)
    table = Table(
        "file", "px", "nm", "troughs", "peaks", "density cm^-2 (95% CI)", "mean conf", "s"
    )
    failed = 0
    database = nullcontext(None) if no_db else _database(db, create=True)
    with database as engine:
        try:
            chosen = resolve_model(engine, model)
            ensemble = load_ensemble(chosen.directory, device=device, fast=fast)
        except DefectwatchError as exc:
            _fail(escape(str(exc)))
            raise typer.Exit(1) from None
        err.print(escape(f"detecting with {chosen.describe()}"), highlight=False)
        record = None if engine is None else _recorder(engine, sample_rule, instrument)
        with _progress() as bar:
            failed = _process_files(
                files,
                bar=bar,
                ensemble=ensemble,
                channel=channel,
                threshold=threshold,
                record=record,
                overlay=overlay,
                as_json=as_json,
                table=table,
            )
    if not as_json and table.row_count:
        out.print(table)
        if overlay is not None:
            out.print(f"overlays written to {overlay}", highlight=False)
    if failed:
        raise typer.Exit(1)


def _process_files(
    files: list[Path],
    *,
    bar,
    ensemble,
    channel: str,
    threshold: float | None,
    record,
    overlay: Path | None,
    as_json: bool,
    table: Table,
) -> int:
    """Detect (and record) each file; returns how many failed."""
    from defectwatch.pipeline.scan import read_scan
    from defectwatch.service.detection import detect_scan
    from defectwatch.service.pictures import write_overlay

    failed = 0
    task = bar.add_task("detecting", total=len(files))
    for k, path in enumerate(files):
        try:
            scan = read_scan(path, channel=channel)
            detected = detect_scan(scan, ensemble=ensemble, threshold=threshold)
        except DefectwatchError as exc:
            failed += 1
            if as_json:
                print(json.dumps(failed_json(path, str(exc))), flush=True)
            else:
                _fail(escape(str(exc)))
            bar.update(task, completed=k + 1)
            continue
        det = detected.detection
        if record is not None:
            record(path, scan, det)
        if overlay is not None:
            write_overlay(
                overlay / f"{path.stem}.png", detected.prediction, det.defects, title=path.name
            )
        if as_json:
            print(json.dumps(result_json(path, detected, ensemble.version)), flush=True)
        else:
            tot = det.densities["total"]
            conf = (
                sum(d.confidence for d in det.defects) / len(det.defects)
                if det.defects
                else float("nan")
            )
            table.add_row(
                path.name,
                f"{scan.nx}x{scan.ny}",
                f"{scan.width_nm:.4g}",
                str(det.densities["trough"].count),
                str(det.densities["peak"].count),
                f"{tot.per_cm2:.3g} ({tot.ci95_low_per_cm2:.2g}-{tot.ci95_high_per_cm2:.2g})",
                f"{conf:.2f}",
                f"{det.seconds:.2f}",
            )
        bar.update(task, completed=k + 1)
    return failed


def _recorder(engine, sample_rule: str | None, instrument: str | None = None):
    """``record(path, scan, detection)`` into the open database."""
    from defectwatch.service.config import (
        check_instrument,
        check_sample_rule,
        default_instrument,
        get_settings,
    )
    from defectwatch.service.ingest import record_file

    rule = check_sample_rule(sample_rule or get_settings().sample_rule)
    instrument = check_instrument(instrument) if instrument else default_instrument()

    def record(path: Path, scan, detection) -> None:
        # "folder": the sample is the folder holding the file; the path recorded is absolute
        # (the web app reads the file again to draw it, from any working directory)
        record_file(
            path.resolve(),
            scan,
            detection,
            engine=engine,
            rule=rule,
            watch_root=path.resolve().parent.parent,
            instrument=instrument,
        )

    return record


def _evaluated_model(model: Path | None, db: str | None):
    """The version ``evaluate`` scores: ``--model``, else the active version of the record
    (``--db``, or the default one when it exists), else the shipped default."""
    from defectwatch.service.model_versions import resolve_model

    if model is None and (db is not None or _default_record_exists()):
        with _database(db) as engine:
            try:
                return resolve_model(engine)
            except DefectwatchError as exc:
                _fail(escape(str(exc)))
                raise typer.Exit(1) from None
    try:
        return resolve_model(None, model)
    except DefectwatchError as exc:
        _fail(escape(str(exc)))
        raise typer.Exit(1) from None


def _default_record_exists() -> bool:
    """Whether the default record (DEFECTWATCH_DB, else the user data dir's) is there to ask:
    a server URL always is; a SQLite file only once something was recorded."""
    from sqlalchemy import make_url

    from defectwatch.db.engine import normalize_url
    from defectwatch.service.config import get_settings

    url = make_url(normalize_url(get_settings().db))
    if url.get_backend_name() != "sqlite":
        return True
    database = url.database or ""
    return bool(database) and Path(database).exists()


def _per_scan_table(scans: list[dict]) -> Table:
    """Per scan: TP / FP / FN and F1 per kind, and the total density's relative error."""
    table = Table(
        "scan", "troughs TP/FP/FN", "trough F1", "peaks TP/FP/FN", "peak F1", "density error"
    )
    for scan in scans:
        cells = []
        for kind in ("trough", "peak"):
            sc = scan["scores"].get(kind)
            if sc is None:
                cells += ["-", "-"]
                continue
            cells += [
                f"{sc['tp']}/{sc['fp']}/{sc['fn']}",
                f"{sc['f1']:.3f}" if sc["tp"] + sc["fp"] + sc["fn"] else "-",
            ]
        err = scan["densities"].get("total", {}).get("relative_error")
        cells.append(f"{err:+.0%}" if err is not None and math.isfinite(err) else "-")
        table.add_row(escape(str(scan["name"])), *cells)
    return table


def _expand(paths: list[Path]) -> list[Path]:
    """Files as given; folders -> their scan files (every supported format's default
    pattern, case-insensitive: MATRIX's Z channel files), sorted."""
    from defectwatch.daemon.candidates import matches
    from defectwatch.pipeline.scan_names import DEFAULT_PATTERN

    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(
                q for q in p.iterdir() if q.is_file() and matches(q.name, DEFAULT_PATTERN)
            )
        else:
            files.append(p)
    return files


def evaluate(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Folders of simulated scans with truth CSVs, or rendered images (with --labels)."
        ),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option(
            help="Box labels for rendered images: VIA CSV (the paper's), VOC XML or COCO JSON."
        ),
    ] = None,
    simulate_n: Annotated[
        int, typer.Option("--simulate", min=0, help="Also evaluate on N scans simulated in memory.")
    ] = 0,
    material: Annotated[str, typer.Option(help="Simulated: wse2 or mose2.")] = "wse2",
    mode: Annotated[str, typer.Option(help="Simulated: stm or cafm.")] = "stm",
    size_nm: Annotated[float, typer.Option("--size-nm", help="Simulated frame, nm.")] = 50.0,
    pixels: Annotated[int, typer.Option(help="Simulated pixels per side.")] = 512,
    seed: Annotated[int, typer.Option(help="Simulated: seed of the first scan.")] = 0,
    model: Annotated[
        Path | None,
        typer.Option(
            help="Model version directory (default: the record's active version; the shipped "
            "ensemble when there is no record)."
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            metavar="URL",
            show_default=False,
            help="Record whose active version is scored (default: DEFECTWATCH_DB, else the user "
            "data dir; read only when it exists).",
        ),
    ] = None,
    threshold: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Mean-probability threshold (default: the model's)."),
    ] = None,
    radius_nm: Annotated[float, typer.Option(help="Matching radius, nm.")] = 1.0,
    baseline: Annotated[
        bool, typer.Option(help="Also tune and score the classical LoG baseline on the same scans.")
    ] = False,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write summary.json and the figures (PNG) here.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    per_scan: Annotated[
        bool,
        typer.Option(
            "--per-scan", help="Also a table per scan: where do the misses and false finds sit?"
        ),
    ] = False,
    truth: Annotated[
        str,
        typer.Option(
            help="Simulated truth to score against: 'reported' (the defects the model version "
            "reports: its contrast rule) or 'marked' (every defect a labeller would mark). "
            "A person's labels always count in full."
        ),
    ] = "reported",
) -> None:
    """Score the ensemble against ground truth: object level and the paper's pixel level."""
    from defectwatch.service.detection import load_ensemble
    from defectwatch.service.evaluation import (
        cases_from_folder,
        cases_from_images,
        headline,
        simulated_cases,
        write_report,
    )
    from defectwatch.service.evaluation import (
        evaluate as run_evaluation,
    )

    cases: list = []
    images: list[Path] = []
    for p in paths or []:
        if p.is_dir() and any(q.suffix.lower() == ".sxm" for q in p.iterdir()):
            cases += cases_from_folder(p)
        elif p.is_dir():
            images += sorted(
                q
                for q in p.iterdir()
                if q.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff")
            )
        elif p.is_file():
            images.append(p)
        else:
            _fail(f"{p}: no such file or folder")
            raise typer.Exit(1)
    if images:
        if labels is None:
            _fail("rendered images need --labels (a VIA CSV, VOC XML or COCO JSON file)")
            raise typer.Exit(1)
        cases += cases_from_images(images, labels)
    if truth not in ("reported", "marked"):
        _fail(f"--truth must be 'reported' or 'marked', not {truth!r}")
        raise typer.Exit(1)
    n = len(cases) + simulate_n
    if n == 0:
        _fail("nothing to evaluate: give folders, images with --labels, or --simulate N")
        raise typer.Exit(1)
    sims = simulated_cases(
        range(seed, seed + simulate_n),
        material=material.lower(),
        mode=mode.lower(),
        size_nm=size_nm,
        pixels=pixels,
    )
    chosen = _evaluated_model(model, db)
    try:
        ensemble = load_ensemble(chosen.directory)
    except DefectwatchError as exc:
        _fail(escape(str(exc)))
        raise typer.Exit(1) from None
    if not as_json:
        out.print(escape(f"scoring {chosen.describe()}"), highlight=False)
    with _progress() as bar:
        task = bar.add_task("evaluating", total=n)
        report = run_evaluation(
            ensemble,
            [*cases, *sims],
            threshold=threshold,
            radius_nm=radius_nm,
            baseline=baseline,
            n_cases=n,
            truth=truth,
            on_progress=lambda done, total: bar.update(task, completed=done),
        )
    if out_dir is not None:
        written = write_report(report, out_dir)
    if as_json:
        print(json.dumps(report.to_dict()))
        return
    table = Table("method", "kind", "precision", "recall", "F1", "AP", "loc. nm", "TP", "FP", "FN")
    rows = [("ensemble", report.objects)]
    if report.baseline is not None:
        rows.append(("LoG baseline", report.baseline))
    for name, summary in rows:
        for kind, s in headline(summary).items():
            table.add_row(
                name,
                kind,
                *(f"{s[k]:.3f}" for k in ("precision", "recall", "f1", "ap")),
                f"{s['localisation_nm']:.2f}",
                *(str(int(s[k])) if math.isfinite(s[k]) else "-" for k in ("tp", "fp", "fn")),
            )
    out.print(table)
    if per_scan:
        out.print(_per_scan_table(report.objects["scans"]))
    pm = report.pixels
    out.print(
        f"pixel level: mAP {pm['map']:.3f}, mean AUROC {pm['mean_auroc']:.3f}, "
        f"mean F1 {pm['mean_f1']:.3f}  ({n} scans, threshold "
        f"{report.settings['threshold']:.2f}, matching within {radius_nm:g} nm)",
        highlight=False,
    )
    if out_dir is not None:
        out.print("wrote " + ", ".join(str(p) for p in written), highlight=False)
