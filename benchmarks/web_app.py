"""The web app on a big record: every page and /api answer timed on 10,000 scans and 1,000,000
defects (``python -m benchmarks.web_app``; the record is generated once, about a minute).

The record: 10 samples x 1,000 done scans (512 px, 50 nm), one detection run each with 100
defects (random positions, kinds, confidences, spreads), 500 reviewed scans, three model
versions, a live daemon heartbeat. Requests go through FastAPI's test client in this process
(routing, use cases, SQL, templates; no network). Each answer: one warm-up, then the median
and the largest of ``--repeats`` timings (wall clock), and the median CPU time of this process
(SQLite runs in it too: on a shared machine the CPU time is what the request costs, the wall
time includes waiting for a core). A cached scan picture is served from its file.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sqlalchemy import insert

SAMPLES = 10
LIMIT_MS = 200.0


def build_record(db: Path, *, scans: int, defects_per_scan: int, seed: int = 0) -> str:
    """Write the generated record into a new SQLite file; returns its URL."""
    from defectwatch.db import heartbeat as hb
    from defectwatch.db import open_database, write_transaction
    from defectwatch.db.models import DefectRow, DetectionRun, Label, LabelSet, Sample, ScanRow
    from defectwatch.db.registry import register_version

    url = f"sqlite:///{db}"
    engine = open_database(url)
    rng = np.random.default_rng(seed)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    nx = 512
    with write_transaction(engine) as s:
        s.execute(
            insert(Sample),
            [{"id": i + 1, "name": f"WSe2-S{i:02d}", "created_at": t0} for i in range(SAMPLES)],
        )
        s.execute(
            insert(ScanRow),
            [
                {
                    "id": i + 1,
                    "path": f"/data/WSe2-S{i % SAMPLES:02d}/scan_{i:05d}.sxm",
                    "sha256": f"{i:064x}",
                    "size_bytes": 2_100_000,
                    "mtime_ns": i,
                    "sample_id": i % SAMPLES + 1,
                    "recorded_at": t0 + timedelta(minutes=i),
                    "channel": "Z",
                    "nx": nx,
                    "ny": nx,
                    "width_nm": 50.0,
                    "height_nm": 50.0,
                    "pixel_size_x_nm": 50.0 / nx,
                    "pixel_size_y_nm": 50.0 / nx,
                    "angle_deg": 0.0,
                    "bias_v": -1.5,
                    "setpoint_a": 1e-10,
                    "constant_height": False,
                    "acquired_fraction": 1.0,
                    "acquired_area_nm2": 2500.0,
                    "scan_dir": "down",
                    "comment": "generated",
                    "status": "done",
                    "attempts": 1,
                    "created_at": t0 + timedelta(minutes=i),
                    "updated_at": t0 + timedelta(minutes=i),
                }
                for i in range(scans)
            ],
        )
        kinds = rng.random((scans, defects_per_scan)) < 0.7  # True: trough
        unc = rng.uniform(0.0, 0.3, (scans, defects_per_scan))
        near = rng.uniform(0.0, 40.0, scans)
        s.execute(
            insert(DetectionRun),
            [
                {
                    "id": i + 1,
                    "scan_id": i + 1,
                    "model_version": "v3",
                    "started_at": t0 + timedelta(minutes=i),
                    "finished_at": t0 + timedelta(minutes=i),
                    "seconds": 1.0,
                    "area_nm2": 2500.0,
                    "trough_count": int(kinds[i].sum()),
                    "peak_count": int(defects_per_scan - kinds[i].sum()),
                    "defect_count": defects_per_scan,
                    "uncertainty_sum": float(unc[i].sum()),
                    "near_threshold_nm2": float(near[i]),
                }
                for i in range(scans)
            ],
        )
    chunk = 2000  # scans per insert
    for start in range(0, scans, chunk):
        stop = min(scans, start + chunk)
        n = (stop - start) * defects_per_scan
        rows = rng.uniform(0, nx - 1, n)
        cols = rng.uniform(0, nx - 1, n)
        conf = rng.uniform(0.5, 1.0, n)
        run_ids = np.repeat(np.arange(start + 1, stop + 1), defects_per_scan)
        k = kinds[start:stop].ravel()
        u = unc[start:stop].ravel()
        with write_transaction(engine) as s:
            s.execute(
                insert(DefectRow),
                [
                    {
                        "run_id": int(run_ids[j]),
                        "row": float(rows[j]),
                        "col": float(cols[j]),
                        "x_nm": float(cols[j] * 50 / nx),
                        "y_nm": float(rows[j] * 50 / nx),
                        "kind": "trough" if k[j] else "peak",
                        "confidence": float(conf[j]),
                        "uncertainty": float(u[j]),
                        "area_nm2": 1.0,
                        "contrast": -3.0,
                    }
                    for j in range(n)
                ],
            )
    with write_transaction(engine) as s:
        reviewed = range(1, scans + 1, max(1, scans // 500))
        s.execute(
            insert(LabelSet),
            [
                {
                    "scan_id": i,
                    "source": "reviewed",
                    "exhaustive": True,
                    "labels": 2,
                    "updated_at": t0,
                }
                for i in reviewed
            ],
        )
        s.execute(
            insert(Label),
            [
                {
                    "scan_id": i,
                    "row": 10.0 + j,
                    "col": 10.0,
                    "kind": "trough",
                    "source": "reviewed",
                    "exhaustive": True,
                    "created_at": t0,
                }
                for i in reviewed
                for j in range(2)
            ],
        )
        for v in ("v1", "v2", "v3"):
            register_version(
                v,
                session=s,
                directory=f"/models/{v}",
                members=10,
                metrics={"threshold": 0.5, "gate": {"summary": "held"}},
                activate=True,
            )
        hb.beat(session=s, pid=1, host="stm-pc", started_at=datetime.now(UTC))
    engine.dispose()
    return url


def time_requests(url: str, *, repeats: int) -> list[tuple[str, float, float, float, int]]:
    """(request, median ms, max ms, median CPU ms, bytes) for every page and /api answer."""
    import cv2
    from fastapi.testclient import TestClient

    from defectwatch.db import open_database
    from defectwatch.service.scan_images import image_cache_dir
    from defectwatch.service.web import create_app

    engine = open_database(url)
    folder = image_cache_dir(url)
    folder.mkdir(parents=True, exist_ok=True)
    mid = 5000
    cv2.imwrite(
        str(folder / f"run-{mid}-scan.png"),
        np.random.default_rng(1).integers(0, 255, (512, 512), dtype=np.uint8),
    )
    client = TestClient(create_app(engine, image_folder=folder), base_url="http://127.0.0.1:8765")
    gets = [
        "/",
        "/samples/WSe2-S03",
        "/samples/WSe2-S03?offset=600",
        f"/scans/{mid}",
        "/review",
        "/review?offset=600",
        "/models",
        "/api/status",
        "/api/samples",
        "/api/samples/WSe2-S03",
        "/api/scans",
        "/api/scans?sample=WSe2-S07&status=done",
        "/api/scans?limit=500&offset=9000",
        f"/api/scans/{mid}",
        "/api/review/queue",
        "/api/models",
        f"/api/scans/{mid}/image.png",
    ]
    out = []
    for path in gets:
        client.get(path)  # warm-up
        times, cpu, size = [], [], 0
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            r = client.get(path)
            times.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
            assert r.status_code == 200, (path, r.status_code, r.text[:200])
            size = len(r.content)
        out.append(
            (f"GET {path}", statistics.median(times), max(times), statistics.median(cpu), size)
        )
    body = {
        "defects": [{"row": 10.0 + i, "col": 20.0, "kind": "peak"} for i in range(100)],
        "exhaustive": True,
    }
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        r = client.post(f"/api/scans/{mid + 1}/review", json=body)
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
        assert r.status_code == 200, r.text
    out.append(
        (
            f"POST /api/scans/{mid + 1}/review (100 defects)",
            statistics.median(times),
            max(times),
            statistics.median(cpu),
            len(r.content),
        )
    )
    engine.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=10_000)
    parser.add_argument("--defects-per-scan", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--db", type=Path, help="reuse (or build) the record in this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = args.db or Path(tmp) / "big.db"
        if db.exists():
            url = f"sqlite:///{db}"
        else:
            t0 = time.perf_counter()
            url = build_record(db, scans=args.scans, defects_per_scan=args.defects_per_scan)
            print(
                f"built {args.scans} scans, {args.scans * args.defects_per_scan} defects in "
                f"{time.perf_counter() - t0:.0f} s ({db.stat().st_size / 2**20:.0f} MB)\n"
            )
        rows = time_requests(url, repeats=args.repeats)
    print("| request | median ms | max ms | median CPU ms | bytes |")
    print("|---|---|---|---|---|")
    for what, med, worst, cpu, size in rows:
        flag = "" if worst < LIMIT_MS else " (over 200 ms)"
        print(f"| `{what}` | {med:.1f} | {worst:.1f}{flag} | {cpu:.1f} | {size:,} |")


if __name__ == "__main__":
    main()
