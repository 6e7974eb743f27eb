"""Archive re-scoring throughput: scans/s at 512 and 1024 px, on Dask with 1 and 2 worker
processes, against the one-process `reprocess` loop, with the shipped default ensemble.

``python -m benchmarks.archive_throughput [--n512 N] [--n1024 N]``. Simulated WSe2 scans
(50 nm at 512 px, 100 nm at 1024 px: the same pixel size, so a 1024 px scan is four times the
work) are recorded as scored by an older version; each configuration then re-scores them all
into a fresh copy of that database. The configurations run interleaved per size. Reported:
wall time including the cluster start and the model loads ("total"), and the steady rate
between the first and the last scan finished ("steady", what a long archive approaches).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from defectwatch.db import open_database, write_transaction
from defectwatch.db.records import add_detection_run, add_scan
from defectwatch.domain import Detection
from defectwatch.service.archive import rescore_archive
from defectwatch.service.ingest import active_model, file_sha256
from defectwatch.service.reprocess import reprocess
from defectwatch.service.simulation import write_simulated_scans


def _record(url: str, scans: list[Path]) -> None:
    """The scans, each with one run by an older version; the shipped default active."""
    from datetime import UTC, datetime

    engine = open_database(url)
    active_model(engine)
    with write_transaction(engine) as s:
        for path in scans:
            row = add_scan(
                str(path),
                session=s,
                sha256=file_sha256(path),
                size_bytes=1,
                mtime_ns=1,
                sample="bench",
                status="done",
            )
            add_detection_run(
                row.id, Detection("older", (), {}, 2500.0, datetime.now(UTC), 1.0), session=s
            )
    engine.dispose()


def _run(template: Path, work: Path, how: str) -> tuple[float, float, int]:
    """(total s, steady scans/s, scans re-scored) for one configuration on a fresh copy."""
    db = work / f"{how}.db"
    shutil.copy(template, db)
    engine = open_database(f"sqlite:///{db}")
    stamps: list[float] = []
    t0 = time.perf_counter()
    if how == "in-process":
        result = reprocess(
            engine, outdated=True, on_progress=lambda i, n: stamps.append(time.perf_counter())
        )
        done = len(result.rescored)
    else:
        workers = int(how.split()[0])
        result = rescore_archive(
            engine, workers=workers, on_progress=lambda d, f, n: stamps.append(time.perf_counter())
        )
        done = result.recorded
        stamps = stamps[1:]  # the first call reports the start (0 done)
    total = time.perf_counter() - t0
    engine.dispose()
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return total, steady, done


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.archive_throughput")
    parser.add_argument("--n512", type=int, default=8, help="scans at 512 px")
    parser.add_argument("--n1024", type=int, default=4, help="scans at 1024 px")
    args = parser.parse_args(argv)
    configs = ["in-process", "1 worker", "2 workers"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="dw-archive-bench-") as tmp:
        work = Path(tmp)
        for px, n, size_nm in ((512, args.n512, 50.0), (1024, args.n1024, 100.0)):
            written = write_simulated_scans(
                work / f"scans{px}", n=n, pixels=px, size_nm=size_nm, seed=px
            )
            template = work / f"template{px}.db"
            _record(f"sqlite:///{template}", [w.sxm for w in written])
            for how in configs:
                total, steady, done = _run(template, work, f"{how}")
                assert done == n, f"{how}: re-scored {done} of {n}"
                rows.append((px, n, how, total, n / total, steady))
                print(f"  {px} px, {how}: {n} scans in {total:.1f} s", flush=True)
    print(
        f"\n## Archive re-scoring throughput ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPU cores, shipped default ensemble, exact mode)\n"
    )
    print("| frame | scans | how | total s | scans/s (total) | scans/s (steady) |")
    print("|---|---|---|---|---|---|")
    for px, n, how, total, rate, steady in rows:
        print(f"| {px} px | {n} | {how} | {total:.1f} | {rate:.3f} | {steady:.3f} |")


if __name__ == "__main__":
    main()
