"""Use cases: labels into and out of the record, and rendered images recorded as scans.

- ``import_label_files``: VIA CSV, Pascal VOC, COCO and our point CSV; each label file's images
  are matched to recorded scans by file stem (case-insensitive) or to one named scan; boxes are
  scaled from the render's pixels to the scan's (``boxes_to_points``). Each (scan, file) becomes
  one label set with the source ``<format>:<file name>``: importing the file again replaces it.
- ``import_images``: PNG/JPEG/TIFF renders become ``done`` scans of a given physical size with
  no detection run (so they add nothing to densities, which come from detection runs).
- ``accept_detections``: a reviewed scan's latest detections become its ``accepted`` labels.
- ``label_overview`` and ``export_labels``: what is labelled, and the labels written back out
  (a scan reviewed in the web app, source ``reviewed``, exports its review only).
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from defectwatch.db import queries as q
from defectwatch.db.engine import read_transaction, write_transaction
from defectwatch.db.labels import (
    REVIEWED,
    file_name,
    file_stem,
    label_sets,
    labelled_scans,
    replace_labels,
    scans_by_stem,
)
from defectwatch.db.models import ScanRow
from defectwatch.db.records import add_scan, get_or_create_sample, scan_by_sha256, set_scan_metadata
from defectwatch.digest import sha256_file as file_sha256
from defectwatch.domain import KINDS
from defectwatch.errors import ConfigError, DefectwatchError, LabelFormatError, NotFoundError
from defectwatch.pipeline.images import IMAGE_SUFFIXES, read_image_as_scan
from defectwatch.pipeline.label_formats import (
    FORMATS,
    Box,
    ParsedLabels,
    PointLabel,
    boxes_to_points,
    points_to_boxes,
    read_labels,
    write_coco,
    write_points_csv,
    write_via_csv,
    write_voc,
)
from defectwatch.service.samples import sample_for

log = logging.getLogger(__name__)

ACCEPTED = "accepted"  # the source of labels accepted from detections


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanImport:
    """The labels one file gave one scan."""

    scan_id: int
    path: str
    image: str  # the name the label file gives the image
    counts: dict[str, int]
    dropped: int  # labels whose centre fell outside the scan


@dataclass(frozen=True)
class FileImport:
    """What importing one label file did."""

    path: str
    format: str
    source: str
    exhaustive: bool
    scans: tuple[ScanImport, ...] = ()
    unmatched: tuple[tuple[str, str], ...] = ()  # (image name, why)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    unknown_classes: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # the file could not be read: nothing imported from it

    @property
    def counts(self) -> dict[str, int]:
        """Labels imported per kind over all matched scans."""
        c: Counter[str] = Counter()
        for s in self.scans:
            c.update(s.counts)
        return {k: c.get(k, 0) for k in KINDS}

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self.scans)


@dataclass(frozen=True)
class ImageImport:
    """One rendered image recorded as a scan (``status``: recorded | updated | failed)."""

    path: str
    status: str
    scan_id: int | None = None
    sample: str | None = None
    nx: int = 0
    ny: int = 0
    width_nm: float = 0.0
    height_nm: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class AcceptResult:
    """Detections of a scan's latest run that became its ``accepted`` labels."""

    scan_id: int
    path: str
    run_id: int
    model_version: str
    counts: dict[str, int]
    below_confidence: int  # detections left out by ``min_confidence``
    replaced: bool  # the scan had accepted labels before


@dataclass(frozen=True)
class ExportResult:
    """Files written by ``export_labels``."""

    format: str
    files: tuple[Path, ...]
    scans: int
    counts: dict[str, int]


# --- helpers -------------------------------------------------------------------------------


def resolve_scan(ref: str, *, session: Any) -> ScanRow:
    """The one scan ``ref`` names (an id, a path or a file name)."""
    matches = q.find_scans(ref, session=session)
    if not matches:
        matches = q.find_scans(str(Path(ref).expanduser().resolve()), session=session)
    if not matches:
        raise NotFoundError(
            f"no scan {ref!r} in the database (an id, a path or a file name; "
            "see `defectwatch scans`; record images with `defectwatch "
            "import-image`)"
        )
    if len(matches) > 1:
        ids = ", ".join(f"{m.id} ({m.path})" for m in matches[:10])
        raise ConfigError(
            f"{ref!r} matches {len(matches)} scans: {ids}; pass an id or the full path"
        )
    return matches[0]


def _readable(row: ScanRow) -> str | None:
    """Why labels cannot be placed on this scan (None when they can)."""
    if not (row.nx and row.ny and row.width_nm and row.height_nm):
        return (
            f"scan {row.id} ({row.path}) has not been read yet (status {row.status}): "
            "its size is unknown"
        )
    return None


def _in_frame(points: Sequence[PointLabel], nx: int, ny: int) -> list[PointLabel]:
    return [p for p in points if -0.5 <= p.col <= nx - 0.5 and -0.5 <= p.row <= ny - 0.5]


def _kind_counts(kinds: Sequence[str]) -> dict[str, int]:
    c = Counter(kinds)
    return {k: c.get(k, 0) for k in KINDS}


def check_format(fmt: str | None) -> str | None:
    """``fmt`` lower-cased, or ConfigError naming the formats."""
    if fmt is None:
        return None
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    return fmt


# --- import --------------------------------------------------------------------------------


def import_label_files(
    engine: Engine,
    paths: Sequence[str | os.PathLike[str]],
    *,
    format: str | None = None,
    scan: str | None = None,
    exhaustive: bool = True,
    class_map: Mapping[str, str | None] | None = None,
) -> list[FileImport]:
    """Import label files (one write transaction each); a file that cannot be read is reported
    with its error and the others still import. ``scan``: put every file's labels on this
    scan (each file must then label one image)."""
    fmt = check_format(format)
    if scan is not None:
        with read_transaction(engine) as session:
            resolve_scan(scan, session=session)  # fail early, before any file
    return [
        import_label_file(
            engine, p, format=fmt, scan=scan, exhaustive=exhaustive, class_map=class_map
        )
        for p in paths
    ]


def import_label_file(
    engine: Engine,
    path: str | os.PathLike[str],
    *,
    format: str | None = None,
    scan: str | None = None,
    exhaustive: bool = True,
    class_map: Mapping[str, str | None] | None = None,
) -> FileImport:
    """Import one label file (see ``import_label_files``)."""
    path = Path(path)
    fmt = check_format(format)
    source = f"{fmt or '?'}:{path.name}"
    try:
        parsed = read_labels(path, format=fmt, class_map=class_map)
    except LabelFormatError as exc:
        return FileImport(str(path), fmt or "?", source, exhaustive, error=str(exc))
    source = f"{parsed.format}:{path.name}"
    skipped = dict(Counter(s.reason for s in parsed.skipped))
    base: dict[str, Any] = dict(
        path=str(path),
        format=parsed.format,
        source=source,
        exhaustive=exhaustive,
        skipped=skipped,
        unknown_classes=parsed.unknown(),
    )
    by_image = _group(parsed)
    with write_transaction(engine) as session:
        targets, unmatched = _match(by_image, parsed, scan=scan, session=session)
        per_scan: dict[int, list[PointLabel]] = {}
        given: Counter[int] = Counter()
        images: dict[int, list[str]] = {}
        rows: dict[int, ScanRow] = {}
        for image, row in targets:
            boxes, points = by_image.get(image, ([], []))
            try:
                placed = _to_points(boxes, points, row)
            except LabelFormatError as exc:
                unmatched.append((image, str(exc)))
                continue
            per_scan.setdefault(row.id, []).extend(placed)
            given[row.id] += len(boxes) + len(points)
            images.setdefault(row.id, []).append(image)
            rows[row.id] = row
        done: list[ScanImport] = []
        for scan_id, placed in per_scan.items():
            row = rows[scan_id]
            inside = _in_frame(placed, row.nx or 0, row.ny or 0)
            replace_labels(
                scan_id,
                inside,
                session=session,
                source=source,
                exhaustive=exhaustive,
                file=str(path.resolve()),
            )
            done.append(
                ScanImport(
                    scan_id,
                    row.path,
                    ", ".join(images[scan_id]),
                    _kind_counts([p.kind for p in inside]),
                    given[scan_id] - len(inside),
                )
            )
    for scan_import in done:
        log.info(
            "%s: %s labels on scan %d (%s)",
            path.name,
            scan_import.counts,
            scan_import.scan_id,
            scan_import.path,
        )
    return FileImport(**base, scans=tuple(done), unmatched=tuple(unmatched))


def _group(parsed: ParsedLabels) -> dict[str, tuple[list[Box], list[PointLabel]]]:
    """Boxes and points per image / scan name as the file gives them."""
    out: dict[str, tuple[list[Box], list[PointLabel]]] = {}
    for b in parsed.boxes:
        out.setdefault(b.image, ([], []))[0].append(b)
    for p in parsed.points:
        out.setdefault(p.scan, ([], []))[1].append(p)
    return out


def _match(
    by_image: dict[str, tuple[list[Box], list[PointLabel]]],
    parsed: ParsedLabels,
    *,
    scan: str | None,
    session: Any,
) -> tuple[list[tuple[str, ScanRow]], list[tuple[str, str]]]:
    """(image name, scan) pairs to import, and (image name, why not) for the others."""
    unmatched: list[tuple[str, str]] = []
    if scan is not None:
        row = resolve_scan(scan, session=session)
        if len(by_image) > 1:
            names = ", ".join(sorted(by_image)[:5])
            return [], [
                (
                    name,
                    f"--scan names one scan, but {Path(parsed.path).name} labels "
                    f"{len(by_image)} images ({names}); import it without --scan",
                )
                for name in sorted(by_image)
            ]
        why = _readable(row)
        if why:
            return [], [(name, why) for name in sorted(by_image) or [row.path]]
        # an image without a single defect label still records a (clean) label set
        return [(next(iter(by_image), Path(row.path).name), row)], []
    found = scans_by_stem([file_stem(name) for name in by_image], session=session)
    targets = []
    for name in sorted(by_image):
        candidates = found.get(file_stem(name).lower(), [])
        if not candidates:
            unmatched.append(
                (
                    name,
                    f"no recorded scan is named {file_stem(name)!r} (record the "
                    "render with `defectwatch import-image`, or the scan file with "
                    "`defectwatch process`; or name the scan with --scan)",
                )
            )
        elif len(candidates) > 1:
            ids = ", ".join(f"{c.id} ({c.path})" for c in candidates[:5])
            unmatched.append(
                (
                    name,
                    f"{len(candidates)} recorded scans are named "
                    f"{file_stem(name)!r}: {ids}; pick one with --scan",
                )
            )
        elif (why := _readable(candidates[0])) is not None:
            unmatched.append((name, why))
        else:
            targets.append((name, candidates[0]))
    return targets, unmatched


def _to_points(
    boxes: Sequence[Box], points: Sequence[PointLabel], row: ScanRow
) -> list[PointLabel]:
    """An image's boxes scaled onto the scan's pixels (centres outside the frame dropped),
    plus its points (already in the scan's pixels)."""
    placed = boxes_to_points(
        boxes,
        nx=int(row.nx or 0),
        ny=int(row.ny or 0),
        width_nm=float(row.width_nm or 0),
        height_nm=float(row.height_nm or 0),
        scan=str(row.id),
    )
    return placed + list(points)


def parse_size_nm(text: str) -> tuple[float, float | None]:
    """``"100"`` -> (100, None: square pixels); ``"100x80"`` -> (100, 80); nm."""
    m = re.fullmatch(
        r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:nm)?\s*(?:[x\u00d7*]\s*(\d+(?:\.\d*)?|\.\d+)"
        r"\s*(?:nm)?)?\s*",
        text or "",
        re.IGNORECASE,
    )
    if not m:
        raise ConfigError(
            f"--size-nm {text!r}: write the frame size in nm as W or WxH (e.g. 100 or 100x80)"
        )
    w = float(m.group(1))
    h = float(m.group(2)) if m.group(2) else None
    if w <= 0 or (h is not None and h <= 0):
        raise ConfigError(f"--size-nm {text!r}: the size must be positive")
    return w, h


def import_images(
    engine: Engine,
    paths: Sequence[str | os.PathLike[str]],
    *,
    size_nm: tuple[float, float | None] | None = None,
    sample: str | None = None,
    rule: str = "folder",
    on_progress: Callable[[int, int], None] | None = None,
) -> list[ImageImport]:
    """Record rendered images as ``done`` scans of ``size_nm`` (width, height or None for
    square pixels; None: from each file name, e.g. ``_100x100_``). A file already recorded
    (same content) gets the new size and sample. Sample: ``sample``, else ``rule``."""
    out: list[ImageImport] = []
    for i, p in enumerate(paths):
        out.append(_import_image(engine, Path(p), size_nm=size_nm, sample=sample, rule=rule))
        if on_progress is not None:
            on_progress(i + 1, len(paths))
    return out


def _import_image(
    engine: Engine,
    path: Path,
    *,
    size_nm: tuple[float, float | None] | None,
    sample: str | None,
    rule: str,
) -> ImageImport:
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return ImageImport(
            str(path),
            "failed",
            error=(
                f"{path.name}: not a rendered image ({', '.join(IMAGE_SUFFIXES)}); "
                "record scan files with `defectwatch process` or `defectwatch watch`"
            ),
        )
    try:
        width, height = size_nm if size_nm is not None else (None, None)
        scan = read_image_as_scan(path, width_nm=width, height_nm=height)
        sha = file_sha256(path)
        st = path.stat()
    except DefectwatchError as exc:
        return ImageImport(str(path), "failed", error=str(exc))
    except OSError as exc:
        return ImageImport(str(path), "failed", error=f"{path}: cannot read ({exc.strerror})")
    name = sample or sample_for(path, watch_root=None, rule=rule, comment=None)
    with write_transaction(engine) as session:
        row = scan_by_sha256(sha, session=session)
        status = "updated" if row is not None else "recorded"
        if row is None:
            row = add_scan(
                str(path.resolve()),
                session=session,
                sha256=sha,
                size_bytes=st.st_size,
                mtime_ns=st.st_mtime_ns,
                sample=name,
                status="done",
            )
        elif sample:
            row.sample = get_or_create_sample(sample, session=session)
        set_scan_metadata(row, scan)
        session.flush()
        scan_id = row.id
        sample_name = row.sample.name if row.sample else None
    log.info(
        "%s: %s as scan %d (%gx%g nm, %dx%d px)",
        path.name,
        status,
        scan_id,
        scan.width_nm,
        scan.height_nm,
        scan.nx,
        scan.ny,
    )
    return ImageImport(
        str(path), status, scan_id, sample_name, scan.nx, scan.ny, scan.width_nm, scan.height_nm
    )


# --- accept --------------------------------------------------------------------------------


def accept_detections(
    engine: Engine, scan_ref: str, *, min_confidence: float = 0.0
) -> AcceptResult:
    """The scan's latest run's detections with ``confidence >= min_confidence`` become its
    exhaustive ``accepted`` labels (replacing earlier accepted ones); radius from each
    detection's area (``sqrt(area / pi)``, nm)."""
    if not 0.0 <= min_confidence <= 1.0:
        raise ConfigError(f"--min-confidence {min_confidence:g}: use a probability in 0-1")
    with write_transaction(engine) as session:
        row = resolve_scan(scan_ref, session=session)
        run = q.latest_run(row.id, session=session)
        if run is None:
            raise NotFoundError(
                f"scan {row.id} ({row.path}) has no detection run to accept "
                f"(status {row.status}); process it first"
            )
        defects = q.run_defects(run.id, session=session)
        kept = [d for d in defects if d.confidence >= min_confidence and d.kind in KINDS]
        points = [
            PointLabel(
                str(row.id),
                d.row,
                d.col,
                d.kind,
                math.sqrt(d.area_nm2 / math.pi) if d.area_nm2 > 0 else None,
            )
            for d in kept
        ]
        before = {x.source for x in label_sets(row.id, session=session)}
        replace_labels(row.id, points, session=session, source=ACCEPTED, exhaustive=True)
        result = AcceptResult(
            row.id,
            row.path,
            run.id,
            run.model_version,
            _kind_counts([p.kind for p in points]),
            len(defects) - len(kept),
            ACCEPTED in before,
        )
    log.info(
        "scan %d: accepted %s from run %d (%s)",
        result.scan_id,
        result.counts,
        result.run_id,
        result.model_version,
    )
    return result


# --- list and export -----------------------------------------------------------------------


def label_overview(engine: Engine, *, sample: str | None = None) -> list[dict[str, Any]]:
    """Every labelled scan: counts per kind, exhaustive or partial, and its label sets."""
    with read_transaction(engine) as session:
        if sample is not None and sample not in q.sample_names(session=session):
            raise NotFoundError(f"no sample called {sample!r} (see `defectwatch samples`)")
        scans = labelled_scans(session=session, sample=sample)
        return [
            {
                "scan_id": s.scan.id,
                "path": s.scan.path,
                "sample": s.sample,
                "counts": {**s.counts, "total": sum(s.counts.values())},
                "exhaustive": s.exhaustive,
                "sources": [
                    {
                        "source": x.source,
                        "exhaustive": x.exhaustive,
                        "labels": x.labels,
                        "file": x.file,
                    }
                    for x in s.sets
                ],
            }
            for s in scans
        ]


def export_format(target: Path, format: str | None) -> str:
    """The export format: ``format``, else from ``target``: ``.json`` coco, ``.csv`` our
    point CSV, ``.xml`` or a folder voc."""
    fmt = check_format(format)
    if fmt is not None:
        return fmt
    suffix = target.suffix.lower()
    if suffix == ".json":
        return "coco"
    if suffix == ".csv":
        return "csv"
    if suffix in ("", ".xml") or target.is_dir():
        return "voc"
    raise ConfigError(
        f"{target}: cannot tell the export format from {suffix!r}; pass "
        f"--format ({', '.join(FORMATS)})"
    )


def export_labels(
    engine: Engine,
    target: str | os.PathLike[str],
    *,
    format: str | None = None,
    sample: str | None = None,
) -> ExportResult:
    """Write every labelled scan's labels (of ``sample`` or all) as ``format``: ``via``,
    ``coco`` and ``csv`` into one file (``target``, or ``labels_<format>.<ext>`` inside a
    folder ``target``), ``voc`` as one XML per scan into folder ``target``. Images are named
    by the scans' file names in their own pixels, so the files import back onto the same
    scans; boxes span 2 x each label's radius (1 nm when unknown)."""
    target = Path(target)
    fmt = export_format(target, format)
    with read_transaction(engine) as session:
        if sample is not None and sample not in q.sample_names(session=session):
            raise NotFoundError(f"no sample called {sample!r} (see `defectwatch samples`)")
        scans = labelled_scans(session=session, sample=sample, with_labels=True)
    points_by_scan = []
    for s in scans:
        name = file_name(s.scan.path)
        # a reviewed scan's review supersedes its other sets, as in training
        reviewed = any(x.source == REVIEWED for x in s.sets)
        pts = [
            PointLabel(name, lab.row, lab.col, lab.kind, lab.radius_nm, lab.source)
            for lab in s.labels
            if not reviewed or lab.source == REVIEWED
        ]
        points_by_scan.append((s.scan, name, pts))
    if fmt == "voc":
        if target.suffix.lower() == ".xml":
            target = target.parent
        files = tuple(write_voc(_boxes(points_by_scan), target))
    else:
        ext = {"via": "csv", "coco": "json", "csv": "csv"}[fmt]
        if target.is_dir() or not target.suffix:
            target = target / f"labels_{fmt}.{ext}"
        if fmt == "csv":
            files = (write_points_csv([p for _, _, pts in points_by_scan for p in pts], target),)
        elif fmt == "via":
            files = (write_via_csv(_boxes(points_by_scan), target),)
        else:
            files = (write_coco(_boxes(points_by_scan), target),)
    counts = _kind_counts([p.kind for _, _, pts in points_by_scan for p in pts])
    log.info("exported %s labels of %d scans as %s", counts, len(scans), fmt)
    return ExportResult(fmt, files, len(scans), counts)


def _boxes(points_by_scan: Sequence[tuple[ScanRow, str, list[PointLabel]]]) -> list[Box]:
    boxes: list[Box] = []
    for row, name, pts in points_by_scan:
        boxes += points_to_boxes(
            pts,
            nx=int(row.nx or 0),
            ny=int(row.ny or 0),
            width_nm=float(row.width_nm or 1.0),
            height_nm=float(row.height_nm or 1.0),
            image=name,
        )
    return boxes
