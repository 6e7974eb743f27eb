"""Fast mode against exact mode on the held-out scans: do they find the same defects?

For every scan of each set (the simulated test seeds of the shipped default's figures, and the
real WSe2 frames when ``../shared`` is there), both modes of the same resident ensemble run at
the version's own threshold for the scan's channel; their detections are matched one-to-one
within 1 nm, same kind. Reports, per set: detections, the F1 between the two modes, the largest
probability difference, each mode's F1 against the truth, and seconds per scan.

    python -m benchmarks.fast_agreement [--model DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from defectwatch.models import default_model_dir
from defectwatch.pipeline.inference import Ensemble
from defectwatch.pipeline.metrics import ObjectEvaluation, match
from defectwatch.service.evaluation import cases_from_images, reported_truth, simulated_cases

REAL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-wse2"

# the held-out simulated sets of the shipped default's figures (README: "The shipped ensemble")
SETS = {
    "WSe2 50 nm, 512 px": dict(seeds=range(20), material="wse2", size_nm=50.0, pixels=512),
    "WSe2 25 nm (0.049 nm/px)": dict(seeds=range(10), material="wse2", size_nm=25.0, pixels=512),
    "MoSe2 50 nm": dict(seeds=range(10), material="mose2", size_nm=50.0, pixels=512),
    "C-AFM 100 nm": dict(seeds=range(10), material="wse2", mode="cafm", size_nm=100.0, pixels=512),
}


def agreement(a, b, radius_nm: float = 1.0) -> tuple[int, int, int]:
    """(matched, only in a, only in b) between two detection lists, same kind, within radius."""
    tp = 0
    for kind in ("trough", "peak"):
        pa = np.array([(d.x_nm, d.y_nm) for d in a if d.kind == kind]).reshape(-1, 2)
        pb = np.array([(d.x_nm, d.y_nm) for d in b if d.kind == kind]).reshape(-1, 2)
        tp += len(match(pa, pb, radius_nm=radius_nm))
    return tp, len(a) - tp, len(b) - tp


def compare(exact: Ensemble, fast: Ensemble, cases) -> dict:
    tp = only_e = only_f = n_scans = 0
    diff, secs = 0.0, {"exact": 0.0, "fast": 0.0}
    scores = {"exact": ObjectEvaluation(), "fast": ObjectEvaluation()}
    for case in cases:
        n_scans += 1
        case = reported_truth(case, exact.config.report_contrast)  # as `evaluate` scores
        thr = exact.config.threshold_for(case.scan.channel)
        preds, found = {}, {}
        for name, ens in (("exact", exact), ("fast", fast)):
            t0 = time.perf_counter()
            preds[name] = ens.predict_scan(case.scan)
            found[name] = preds[name].defects(threshold=thr)
            secs[name] += time.perf_counter() - t0
            scores[name].add(
                found[name], case.labels, area_nm2=case.scan.acquired_area_nm2, name=case.name
            )
        diff = max(diff, float(np.abs(preds["exact"].mean - preds["fast"].mean).max()))
        t, e, f = agreement(found["exact"], found["fast"])
        tp, only_e, only_f = tp + t, only_e + e, only_f + f
    n = 2 * tp + only_e + only_f
    truth = {
        name: {k: v.f1 for k, v in ev.scores().items() if k in ("trough", "peak")}
        for name, ev in scores.items()
    }
    return {
        "scans": n_scans,
        "exact_defects": tp + only_e,
        "fast_defects": tp + only_f,
        "only_exact": only_e,
        "only_fast": only_f,
        "f1": 1.0 if n == 0 else 2 * tp / n,
        "max_abs_diff": diff,
        "truth_f1": truth,
        "s_per_scan": {k: v / n_scans for k, v in secs.items()},
    }


def main(model_dir: Path) -> list[dict]:
    config_ens = dict(device="cpu", side_by_side=2)
    exact = Ensemble.load(model_dir, **config_ens)
    fast = Ensemble.load(model_dir, fast=True, **config_ens)
    print(f"fast mode: {fast.fast_dtype or 'ONNX Runtime float32'}\n")
    print(
        "| scans | n | exact defects | fast defects | only exact | only fast | F1 fast vs "
        "exact | max prob diff | truth F1 exact (T / P) | truth F1 fast (T / P) | "
        "s/scan exact | fast |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    sets = {name: simulated_cases(**kw) for name, kw in SETS.items()}
    if (REAL / "labels_via.csv").is_file():
        sets["real WSe2 frames"] = cases_from_images(
            sorted(REAL.glob("*.jpg")), REAL / "labels_via.csv"
        )
    rows = []
    for name, cases in sets.items():
        r = compare(exact, fast, cases)
        rows.append({"set": name, **r})
        te, tf = r["truth_f1"]["exact"], r["truth_f1"]["fast"]
        print(
            f"| {name} | {r['scans']} | {r['exact_defects']} | {r['fast_defects']} | "
            f"{r['only_exact']} | {r['only_fast']} | {r['f1']:.3f} | {r['max_abs_diff']:.3f} | "
            f"{te['trough']:.3f} / {te['peak']:.3f} | {tf['trough']:.3f} / {tf['peak']:.3f} | "
            f"{r['s_per_scan']['exact']:.2f} | {r['s_per_scan']['fast']:.2f} |",
            flush=True,
        )
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=default_model_dir())
    main(ap.parse_args().model)
