"""Corrected densities and their 95% intervals against the truth, on held-out simulated scans,
per appearance family: do the intervals hold the true density about 95% of the time?

For each set (the usual held-out settings, ``none``; and one broadened family at a time,
`simulate.BROAD_FAMILIES`, which the shipped members never saw: a held-out family), every scan
is detected as the daemon would (the version's threshold and report rule) and:

- matched within 1 nm to every simulated defect a labeller marks: object F1 per kind and the
  pooled count ratio detected / true (raw) and corrected / true;
- its count is corrected by the version's calibration (`pipeline.calibration`) and the 95%
  interval is checked against the true count of that scan (the realised count of marked
  defects, a slightly easier target than the Poisson rate the interval is for); beside it the
  raw Poisson interval, as `density` reported before.

    python -m benchmarks.calibration_coverage [--model DIR] [--scans 8] [--out FILE.json]
        [--size-nm 25 --pixels 256] [--families none,all] [--real]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defectwatch.pipeline.calibration import (
    Calibration,
    CalibrationCounter,
    corrected_interval,
)
from defectwatch.pipeline.density import poisson_ci95
from defectwatch.pipeline.inference import Ensemble
from defectwatch.pipeline.simulate import BROAD_FAMILIES
from defectwatch.service.calibration import read_calibration
from defectwatch.service.default_model import default_model_dir
from defectwatch.service.evaluation import simulated_cases

KINDS = ("trough", "peak")
# held-out test seeds (0-19: the README's sets); 25 nm frames at 0.098 nm/px keep it quick
SETTINGS = {"material": "wse2", "size_nm": 25.0, "pixels": 256, "density_per_cm2": 3e12}


REAL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-wse2"


def _median(values: list[float]) -> float | None:
    return round(float(np.median(values)), 3) if values else None


def run_set(ensemble: Ensemble, calibration: Calibration | None, cases) -> dict[str, Any]:
    counter = CalibrationCounter()
    hits = {k: {"corrected": 0, "raw": 0, "n": 0} for k in (*KINDS, "total")}
    corrected_sum = dict.fromkeys((*KINDS, "total"), 0.0)
    widths: dict[str, list[float]] = {k: [] for k in (*KINDS, "total")}
    for case in cases:
        pred = ensemble.predict_scan(case.scan)
        found = pred.defects(threshold=ensemble.config.threshold_for(case.scan.channel))
        per = counter.add(found, case.labels, name=case.name)
        detected = {k: per[k].detected for k in KINDS}
        true = {k: per[k].true for k in KINDS}
        true["total"] = sum(true.values())
        detected["total"] = sum(detected[k] for k in KINDS)
        cal = calibration.for_channel(case.scan.channel) if calibration else None
        cals = {k: cal.kinds.get(k) if cal else None for k in KINDS}
        est = corrected_interval([(detected, cals)])
        for k in (*KINDS, "total"):
            e = est[k]
            lo, hi = poisson_ci95(detected[k])
            hits[k]["corrected"] += e.low <= true[k] <= e.high
            hits[k]["raw"] += lo <= true[k] <= hi
            hits[k]["n"] += 1
            corrected_sum[k] += e.count
            if true[k] > 0:
                widths[k].append((e.high - e.low) / true[k])
    measured = counter.result(source="simulated", description="benchmark")
    out: dict[str, Any] = {}
    for k in KINDS:
        c = measured.kinds[k]
        f1 = 2 * c.matched / (c.detected + c.true) if c.detected + c.true else 1.0
        out[k] = {
            "f1": round(f1, 3),
            "precision": round(c.precision, 3),
            "recall": round(c.recall, 3),
            "true": c.true,
            "detected": c.detected,
            "count_ratio_raw": round(c.detected / c.true, 3) if c.true else None,
            "count_ratio_corrected": (round(corrected_sum[k] / c.true, 3) if c.true else None),
            "coverage_corrected": round(hits[k]["corrected"] / hits[k]["n"], 3),
            "coverage_raw_poisson": round(hits[k]["raw"] / hits[k]["n"], 3),
            "median_width_over_true": _median(widths[k]),
        }
    out["total"] = {
        "coverage_corrected": round(hits["total"]["corrected"] / hits["total"]["n"], 3),
        "coverage_raw_poisson": round(hits["total"]["raw"] / hits["total"]["n"], 3),
    }
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model_dir())
    parser.add_argument("--scans", type=int, default=8, help="scans per set")
    parser.add_argument("--families", default="none," + ",".join(BROAD_FAMILIES) + ",all")
    parser.add_argument(
        "--size-nm", type=float, default=SETTINGS["size_nm"], help="simulated frame side, nm"
    )
    parser.add_argument(
        "--pixels", type=int, default=SETTINGS["pixels"], help="simulated pixels per side"
    )
    parser.add_argument(
        "--mode",
        default="stm",
        choices=("stm", "cafm"),
        help="cafm: C-AFM current maps (corrected by the version's current-map calibration)",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--real",
        action="store_true",
        help="also the 15 labelled real WSe2 frames (a clean test set: nothing "
        "may be fitted on them)",
    )
    args = parser.parse_args(argv)
    settings = {**SETTINGS, "size_nm": args.size_nm, "pixels": args.pixels, "mode": args.mode}
    ensemble = Ensemble.load(args.model, device="cpu")
    calibration = read_calibration(args.model)
    seeds = range(args.scans)
    results = {}
    print(
        f"# {ensemble.version}: {args.scans} held-out scans per set ({settings}); "
        f"calibration: {calibration.description if calibration else 'none'}\n"
    )
    print(
        "| set | kind | F1 | P | R | detected/true | corrected/true | coverage corrected "
        "| coverage raw Poisson | width/true |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    families = [f for f in args.families.split(",") if f]
    if args.real and (REAL / "labels_via.csv").is_file():
        families.append("real WSe2 frames")
    for family in families:
        t0 = time.perf_counter()
        if family == "real WSe2 frames":
            from defectwatch.service.evaluation import cases_from_images

            cases = cases_from_images(sorted(REAL.glob("*.jpg")), REAL / "labels_via.csv")
        else:
            broad: Any = True if family == "all" else (() if family == "none" else (family,))
            cases = simulated_cases(seeds, broad=broad, **settings)
        r = run_set(ensemble, calibration, cases)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        results[family] = r
        for k in KINDS:
            x = r[k]
            print(
                f"| {family} | {k} | {x['f1']:.3f} | {x['precision']:.3f} | "
                f"{x['recall']:.3f} | {x['count_ratio_raw']} | {x['count_ratio_corrected']} "
                f"| {x['coverage_corrected']:.2f} | {x['coverage_raw_poisson']:.2f} | "
                f"{x['median_width_over_true']} |",
                flush=True,
            )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "model": ensemble.version,
                    "settings": settings,
                    "scans_per_set": args.scans,
                    "results": results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
