"""Leave-one-family-out: how the broadened training recipe does on an appearance family its
members never saw (issue 15). For each family, train a smaller ensemble on the default-sim-8
candidate's mix (70% of the scans widened by random subsets of the families, each member on its
own 80% of the scans) with that family never drawn (`SimulationMix.broad_exclude`); give it the
reference version's threshold and report rule (``--reference``: the default-sim-8 candidate's
folder, whose rule was chosen with every family in validation); calibrate it on the simulated
calibration sets without the widened one (which holds the family); score it on held-out scans
of the family alone and of the usual settings (`calibration_coverage.run_set`: F1, count
ratio, interval coverage).

    python -m benchmarks.leave_one_family_out --reference DIR --families lattice,tips
        [--members 4] [--iterations 1500] [--scans 300] [--test-scans 40] [--out DIR]

CPU cost on 2 cores: about 12 minutes per family at the defaults (4 members x 1500
mini-batches, 300 training scans, 80 test scans at 512 px). The ensembles are smaller than a
shipped one (10 x 2000): read the figures as a lower bound for it.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.calibration_coverage import run_set
from defectwatch.models import default_model_dir
from defectwatch.pipeline.calibration import Calibration
from defectwatch.pipeline.inference import Ensemble
from defectwatch.pipeline.model import write_calibration, write_detection, write_metrics
from defectwatch.service.calibration import CALIBRATION_SETS, simulated_calibration
from defectwatch.service.default_model import DEFAULT_MIX, DEFAULT_RECIPE, train_default
from defectwatch.service.evaluation import simulated_cases

TEST = {"material": "wse2", "size_nm": 50.0, "pixels": 512, "density_per_cm2": 3e12}
KINDS = ("trough", "peak")


def leave_out(
    family: str, *, out: Path, reference: Path, members: int, iterations: int, scans: int
) -> Path:
    """Train (or reuse) the version without ``family`` and finish it from ``reference``."""
    directory = out / f"lofo-{family}"
    if not (directory / "config.json").is_file():
        train_default(
            directory,
            recipe=replace(
                DEFAULT_RECIPE, members=members, iterations=iterations, member_scans_share=0.8
            ),
            seeds=range(1_000_000, 1_000_000 + scans),
            version=f"lofo-{family}",
            jobs=2,
            mix=replace(DEFAULT_MIX, broad_share=0.7, broad_exclude=(family,)),
            thresholds=False,
        )
    ref = json.loads((reference / "config.json").read_text())
    write_metrics(
        directory,
        {**ref["metrics"], "note": f"threshold and report rule copied from {ref['version']}"},
    )
    write_detection(directory, ref["detection"])
    sets = tuple(s for s in CALIBRATION_SETS if not s[0].get("broad"))
    write_calibration(directory, simulated_calibration(directory, sets=sets).to_json())
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="lattice,tips")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--scans", type=int, default=300)
    parser.add_argument("--test-scans", type=int, default=40)
    parser.add_argument("--reference", type=Path, default=default_model_dir())
    parser.add_argument("--out", type=Path, default=Path("lofo"))
    args = parser.parse_args()
    results = {}
    print(
        "| left out | scored on | kind | F1 | P / R | detected/true | corrected/true | coverage |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for family in [f for f in args.families.split(",") if f]:
        t0 = time.perf_counter()
        directory = leave_out(
            family,
            out=args.out,
            reference=args.reference,
            members=args.members,
            iterations=args.iterations,
            scans=args.scans,
        )
        ensemble = Ensemble.load(directory, device="cpu")
        cal = Calibration.from_json(ensemble.config.calibration)
        results[family] = {}
        for scored, broad in (("none", ()), (family, (family,))):
            r = run_set(ensemble, cal, simulated_cases(range(args.test_scans), broad=broad, **TEST))
            results[family][scored] = r
            for k in KINDS:
                x = r[k]
                print(
                    f"| {family} | {scored} | {k} | {x['f1']:.3f} | {x['precision']:.3f} / "
                    f"{x['recall']:.3f} | {x['count_ratio_raw']} | {x['count_ratio_corrected']} "
                    f"| {x['coverage_corrected']:.2f} |",
                    flush=True,
                )
        results[family]["seconds"] = round(time.perf_counter() - t0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "leave_one_family_out.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
