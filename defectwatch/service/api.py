"""The Python API for notebooks: ``import defectwatch as dw``.

The same use cases the command line and the daemon call (`service.detection`,
`service.ingest`, `service.queries`, `service.simulation`), with pandas DataFrames where a
table is the answer::

    import defectwatch as dw

    det = dw.detect("scan_0001.sxm")          # the shipped default model
    det.defects_frame()                       # one row per defect
    det.densities["total"].per_cm2            # defects per cm^2
    det.plot()                                # the overlay on a matplotlib axis

    with dw.open_record("lab.db") as record:  # the record the daemon writes
        record.add(det, sample="WSe2-SL445")
        record.density()                      # per sample and kind, with 95% intervals

Pixel coordinates are ``(row, col)`` with row 0 = the top of the frame as Gwyddion shows it;
``x_nm, y_nm`` are measured from the frame's top-left corner.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from defectwatch.domain import DEFECT_TABLE_COLUMNS, KINDS, Defect, Density, Scan
from defectwatch.domain import Detection as DetectionRecord

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from sqlalchemy import Engine

    from defectwatch.pipeline.inference import Ensemble, Prediction

__all__ = [
    "DEFECT_COLUMNS",
    "Detection",
    "Record",
    "detect",
    "open_record",
    "read_scan",
    "simulate_scans",
]

#: Columns of `Detection.defects_frame` and `Record.defects`, in order (``defects --csv``'s).
DEFECT_COLUMNS = DEFECT_TABLE_COLUMNS
_DEFECT_DTYPES = {
    "row": "float64",
    "col": "float64",
    "x_nm": "float64",
    "y_nm": "float64",
    "kind": "object",
    "confidence": "float64",
    "uncertainty": "float64",
    "area_nm2": "float64",
    "contrast": "float64",
}

PathLike = str | os.PathLike[str]


def read_scan(path: PathLike, *, channel: str = "Z", direction: str = "forward") -> Scan:
    """Read one channel of a Nanonis ``.sxm`` file.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.sxm`` file (any case of suffix).
    channel : str, optional
        Channel name as Nanonis writes it (``"Z"``, ``"Current"``...; case-insensitive).
    direction : {"forward", "backward"}, optional
        Which trace; backward images are un-mirrored.

    Returns
    -------
    Scan
        ``data`` is float32 of shape ``(ny, nx)`` in SI units (m for Z, A for Current), row 0
        = top of the frame; rows not acquired (an aborted scan) are NaN. ``width_nm``,
        ``height_nm``, ``pixel_size_x_nm``, ``bias_v``, ``setpoint_a``, ``recorded_at``...
        carry the header.

    Raises
    ------
    ScanIncompleteError
        The file is shorter than its header promises (still being written?).
    ScanReadError
        Anything else wrong with the file, or an unknown channel / direction.
    """
    from defectwatch.pipeline.scan import read_scan as _read

    return _read(path, channel=channel, direction=direction)


@dataclass(frozen=True, eq=False)
class Detection:
    """One scan run through one model version.

    Attributes
    ----------
    scan : Scan
        The scan that was analysed.
    record : defectwatch.domain.Detection
        What gets recorded: model version, defects, densities, area, timing.
    prediction : defectwatch.pipeline.inference.Prediction
        The ensemble's maps (mean probability and member spread, model pixels).
    """

    scan: Scan
    record: DetectionRecord
    prediction: Prediction

    @property
    def defects(self) -> tuple[Defect, ...]:
        """The defects found, as `defectwatch.domain.Defect` objects."""
        return self.record.defects

    @property
    def densities(self) -> dict[str, Density]:
        """Defect densities over the acquired area, keyed ``"trough"``, ``"peak"``,
        ``"total"``: ``per_cm2`` with an exact 95% Poisson interval
        (``ci95_low_per_cm2``, ``ci95_high_per_cm2``) and the ``count``."""
        return self.record.densities

    @property
    def model_version(self) -> str:
        """The model version's name (``config.json``'s ``version``)."""
        return self.record.model_version

    def defects_frame(self) -> pd.DataFrame:
        """The defects as a table.

        Returns
        -------
        pandas.DataFrame
            One row per defect, columns ``row, col`` (float scan pixels, row 0 = top),
            ``x_nm, y_nm`` (nm from the top-left corner), ``kind`` (``"trough"`` or
            ``"peak"``), ``confidence`` (mean class probability, 0-1), ``uncertainty`` (the
            members' mean standard deviation), ``area_nm2`` (the blob's area, nm^2) and
            ``contrast`` (noise sigmas out of the flattened topography; NaN where not
            measured). Shape ``(n_defects, 9)``; empty with the same columns when nothing
            was found.
        """
        return _defects_frame(
            [{c: getattr(d, c) for c in DEFECT_COLUMNS} for d in self.record.defects]
        )

    def plot(self, ax: Axes | None = None, *, marker_size: float = 60.0) -> Axes:
        """Draw the flattened scan with its defects circled (troughs cyan, peaks magenta).

        Parameters
        ----------
        ax : matplotlib.axes.Axes, optional
            Where to draw (default: a new figure's axis).
        marker_size : float, optional
            Circle size, points^2.

        Returns
        -------
        matplotlib.axes.Axes
            The axis, its axes in nm from the frame's top-left corner.
        """
        from defectwatch.pipeline.figures import draw_overlay

        image = self.prediction.flat if self.prediction.flat is not None else self.scan.data
        name = Path(self.scan.path).name
        return draw_overlay(
            image,
            self.record.defects,
            width_nm=self.scan.width_nm,
            height_nm=self.scan.height_nm,
            ax=ax,
            marker_size=marker_size,
            title=f"{name} ({self.model_version})",
        )


def detect(
    scan: PathLike | Scan,
    *,
    model: PathLike | None = None,
    fast: bool = False,
    channel: str = "Z",
    threshold: float | None = None,
    device: str = "auto",
) -> Detection:
    """Find the defects in one scan.

    Parameters
    ----------
    scan : str, os.PathLike or Scan
        An ``.sxm`` file, or a scan already read with `read_scan`.
    model : str or os.PathLike, optional
        A model version directory (``config.json`` + members). Default: the shipped default
        ensemble. (The record's active version is what ``Record.detect`` uses; this function
        knows no record.)
    fast : bool, optional
        bf16 on CPUs that have it (the same defects found), fp16 on CUDA.
    channel : str, optional
        Channel to analyse when ``scan`` is a path.
    threshold : float, optional
        Mean-probability threshold, 0-1 (default: the model version's, per channel).
    device : str, optional
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.

    Returns
    -------
    Detection
        The scan, its defects and densities, and the ensemble's maps.

    Raises
    ------
    ScanReadError, ScanIncompleteError
        The file cannot be read (yet).
    ModelLoadError
        ``model`` is not a loadable version directory.
    """
    from defectwatch.service.detection import load_ensemble

    ensemble = load_ensemble(model, device=device, fast=fast)
    return _detect(scan, ensemble=ensemble, channel=channel, threshold=threshold)


def _detect(
    scan: PathLike | Scan, *, ensemble: Ensemble, channel: str, threshold: float | None
) -> Detection:
    from defectwatch.service.detection import detect_scan

    if not isinstance(scan, Scan):
        scan = read_scan(scan, channel=channel)
    detected = detect_scan(scan, ensemble=ensemble, threshold=threshold)
    return Detection(detected.scan, detected.detection, detected.prediction)


def simulate_scans(
    folder: PathLike,
    *,
    n: int = 2,
    material: str = "wse2",
    mode: str = "stm",
    size_nm: float = 50.0,
    pixels: int = 512,
    density_per_cm2: float | None = None,
    seed: int = 0,
) -> list[Path]:
    """Write simulated STM (or C-AFM) scans with their ground truth, as ``defectwatch
    simulate`` does.

    Parameters
    ----------
    folder : str or os.PathLike
        Created when missing; gets ``<stem>_<seed>.sxm`` and a truth ``.csv`` beside each.
    n : int, optional
        Number of scans; scan ``i`` uses seed ``seed + i``.
    material : {"wse2", "mose2"}, optional
    mode : {"stm", "cafm"}, optional
    size_nm : float, optional
        Frame width (and height), nm.
    pixels : int, optional
        Pixels per side.
    density_per_cm2 : float, optional
        Defects per cm^2 (default: drawn log-uniform in 1e10-1e13 per scan).
    seed : int, optional

    Returns
    -------
    list of pathlib.Path
        The ``.sxm`` files, in seed order.
    """
    from defectwatch.service.simulation import write_simulated_scans

    return [
        w.sxm
        for w in write_simulated_scans(
            Path(folder),
            n=n,
            material=material,
            mode=mode,
            size_nm=size_nm,
            pixels=pixels,
            density_per_cm2=density_per_cm2,
            seed=seed,
        )
    ]


class Record:
    """The record the daemon writes (SQLite or PostgreSQL), asked from Python.

    Open it with `open_record`; use it as a context manager (or call `close`). Every question
    is answered by the use case the ``defectwatch`` commands call, as a DataFrame.
    """

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url

    def __enter__(self) -> Record:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<defectwatch Record {self.url}>"

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def samples(self) -> pd.DataFrame:
        """Every sample: scans by status, scanned area, latest scan, densities.

        Returns
        -------
        pandas.DataFrame
            One row per sample: ``sample, scans, done, failed, pending, area_nm2,
            latest_seen_at, latest_path`` and ``<kind>_per_cm2`` for trough, peak, total.
        """
        import pandas as pd

        from defectwatch.service.queries import samples_overview

        rows = [
            {
                **{
                    k: v
                    for k, v in r.items()
                    if k not in ("counts", "density_per_cm2", "ci95_per_cm2")
                },
                **{f"{k}_per_cm2": v for k, v in r["density_per_cm2"].items()},
            }
            for r in samples_overview(self.engine)
        ]
        columns = [
            "sample",
            "scans",
            "done",
            "failed",
            "pending",
            "area_nm2",
            "latest_seen_at",
            "latest_path",
            *(f"{k}_per_cm2" for k in (*KINDS, "total")),
        ]
        return pd.DataFrame(rows, columns=columns)

    def density(self, samples: Sequence[str] | None = None) -> pd.DataFrame:
        """Defect density per sample and kind (area-weighted over done scans), as
        ``defectwatch density --csv`` gives it.

        Parameters
        ----------
        samples : sequence of str, optional
            Sample names (default: every sample with a processed scan). An unknown name raises
            `NotFoundError`.

        Returns
        -------
        pandas.DataFrame
            One row per sample and kind (``trough``, ``peak``, ``total``): ``sample, kind,
            scans, defects, area_nm2, density_per_cm2, ci95_low_per_cm2,
            ci95_high_per_cm2, raw_density_per_cm2, calibration`` (defects per cm^2:
            ``density_per_cm2`` is the detected count corrected by the model version's
            calibration, with a 95% interval holding counting noise and the calibration's
            uncertainty; ``raw_density_per_cm2`` is the detected count over the area;
            ``calibration`` says which calibration, or ``uncalibrated``).
        """
        import pandas as pd

        from defectwatch.service.queries import DENSITY_COLUMNS, density_report, density_rows

        report = density_report(self.engine, list(samples) if samples else None)
        return pd.DataFrame(density_rows(report), columns=list(DENSITY_COLUMNS))

    def scans(
        self, *, sample: str | None = None, status: str | None = None, limit: int | None = None
    ) -> pd.DataFrame:
        """Recorded scans, newest first, as ``defectwatch scans`` lists them.

        Parameters
        ----------
        sample : str, optional
            Only this sample's scans.
        status : {"queued", "processing", "done", "failed"}, optional
        limit : int, optional
            At most this many (the newest).

        Returns
        -------
        pandas.DataFrame
            One row per scan: ``id, path, file, sample, status, attempts, last_error,
            recorded_at, seen_at, nx, ny, width_nm, height_nm, bias_v, setpoint_a,
            acquired_fraction, acquired_area_nm2, model_version, seconds``, the latest run's
            ``trough, peak, total`` counts and its ``density_per_cm2``.
        """
        import pandas as pd

        from defectwatch.service.queries import scans_report

        rows = []
        for r in scans_report(self.engine, sample=sample, status=status, limit=limit):
            counts = r.pop("counts") or {}
            rows.append({**r, **{k: counts.get(k) for k in (*KINDS, "total")}})
        return pd.DataFrame(rows)

    def defects(self, scan: str | int) -> pd.DataFrame:
        """The defects of a scan's latest detection run.

        Parameters
        ----------
        scan : str or int
            The scan's id, path or file name.

        Returns
        -------
        pandas.DataFrame
            The columns of `Detection.defects_frame`; empty for a scan not processed yet.
        """
        from defectwatch.service.queries import defects_report

        _, rows = defects_report(self.engine, str(scan))
        return _defects_frame(rows)

    def add(self, detection: Detection, *, sample: str | None = None, rule: str = "folder") -> int:
        """Record a detection of a scan file, as ``defectwatch process`` does.

        Parameters
        ----------
        detection : Detection
            From `detect`; its scan must come from a file (its content hash is the scan's
            identity: recording the same file again adds a run, not a scan).
        sample : str, optional
            The sample's name (default: by ``rule``).
        rule : str, optional
            How the sample is named when ``sample`` is None: ``"folder"`` (the folder holding
            the file), ``"comment"`` or ``"regex:PATTERN"``.

        Returns
        -------
        int
            The detection run's id.
        """
        from defectwatch.db.engine import write_transaction
        from defectwatch.service.config import check_sample_rule
        from defectwatch.service.ingest import file_sha256, record_detection, record_file

        path = Path(detection.scan.path).resolve()  # absolute, as `process` records it
        if sample is None:
            return record_file(
                path,
                detection.scan,
                detection.record,
                engine=self.engine,
                rule=check_sample_rule(rule),
                watch_root=path.resolve().parent.parent,
            )
        with write_transaction(self.engine) as session:
            return record_detection(
                detection.scan,
                detection.record,
                session=session,
                sha256=file_sha256(path),
                sample=sample,
                path=str(path),
            )

    def detect(
        self,
        scan: PathLike | Scan,
        *,
        fast: bool = False,
        channel: str = "Z",
        threshold: float | None = None,
        device: str = "auto",
    ) -> Detection:
        """`detect` with this record's active model version.

        The active version is the one the daemon uses; on a new record the shipped default is
        registered and activated. Nothing is recorded: pass the result to `add`.

        Parameters
        ----------
        scan : str, os.PathLike or Scan
            An ``.sxm`` file, or a scan already read with `read_scan`.
        fast : bool, optional
            bf16 on CPUs that have it, fp16 on CUDA.
        channel : str, optional
            Channel to analyse when ``scan`` is a path.
        threshold : float, optional
            Mean-probability threshold, 0-1 (default: the version's).
        device : str, optional
            ``"auto"``, ``"cpu"`` or ``"cuda"``.

        Returns
        -------
        Detection
        """
        from defectwatch.service.detection import load_ensemble
        from defectwatch.service.ingest import active_model

        _, directory = active_model(self.engine)
        ensemble = load_ensemble(directory, device=device, fast=fast)
        return _detect(scan, ensemble=ensemble, channel=channel, threshold=threshold)


def open_record(url: PathLike | None = None, *, create: bool = True) -> Record:
    """Open (and migrate) the record.

    Parameters
    ----------
    url : str or os.PathLike, optional
        A database URL (``sqlite:///...``, ``postgresql+psycopg://...``) or an SQLite file
        path. Default: ``DEFECTWATCH_DB``, else the SQLite file in the user's data folder
        (the one ``defectwatch watch`` writes).
    create : bool, optional
        Create a missing SQLite file (default); False raises `NotFoundError` instead.

    Returns
    -------
    Record
    """
    from defectwatch.service.record import open_record_engine, record_url, safe_url

    normalized = record_url(url)
    return Record(open_record_engine(normalized, create=create), safe_url(normalized))


def _defects_frame(rows: Sequence[dict[str, Any]] | Iterator[dict[str, Any]]) -> pd.DataFrame:
    """Defect rows -> a DataFrame with `DEFECT_COLUMNS` and fixed dtypes (also when empty;
    a contrast of None reads as NaN)."""
    import pandas as pd

    frame = pd.DataFrame(list(rows), columns=list(DEFECT_COLUMNS))
    return frame.astype(_DEFECT_DTYPES)
