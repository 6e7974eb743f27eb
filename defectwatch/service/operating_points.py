"""Operating points on simulated validation scans: F1 and count ratio per kind, per threshold
and report limit (`ModelConfig.report_contrast`), never on the real frames.

Each validation scan is predicted once; for each mean-probability threshold its detections are
found with their contrast measured (`Prediction.defects(marked_only=False)`), and each report
limit keeps those that stand out by it. They are matched one-to-one within 1 nm against every
simulated defect a labeller marks (`TruthDefect.visible`). Per kind it reports:

- the F1-best point and the count-unbiased point (detected / true nearest 1, among points whose
  F1 is within 0.05 of the best), with F1, precision, recall and detected / true at each;
- a shared threshold (the config holds one): the best mean F1 over kinds with each kind's
  limit at its F1-best for that threshold.

    python -m defectwatch.service.operating_points [--model DIR] [--out FILE.json] [--quick]

`default_model.finish_version` writes the shared threshold and its limits into a version it
trains (``make default-model``), so the shipped rule is reproduced by the same command.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from defectwatch.models import default_model_dir
from defectwatch.pipeline.contrast import marked
from defectwatch.pipeline.inference import Ensemble
from defectwatch.pipeline.metrics import object_scores
from defectwatch.service.evaluation import simulated_cases

THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)
LIMITS = {
    "trough": (-1.0, -1.25, -1.5, -1.75, -2.0, -2.5),
    "peak": (0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5),
}
KINDS = ("trough", "peak")


def counts(
    ensemble: Ensemble,
    cases,
    *,
    thresholds: Sequence[float] = THRESHOLDS,
    limits: Mapping[str, Sequence[float]] = LIMITS,
    on_case=None,
) -> dict[tuple[str, float, float], np.ndarray]:
    """{(kind, threshold, limit): [tp, detected, true]} summed over ``cases``."""
    out: dict[tuple[str, float, float], np.ndarray] = {}
    for i, case in enumerate(cases):
        pred = ensemble.predict_scan(case.scan)
        for t in thresholds:
            found = pred.defects(threshold=t, marked_only=False)
            for kind in KINDS:
                for lim in limits[kind]:
                    keep = [
                        d
                        for d in found
                        if d.kind != kind or marked(kind, float(d.contrast), {kind: lim})
                    ]
                    s = object_scores(keep, case.labels, kinds=(kind,))[kind]
                    key = (kind, t, lim)
                    out.setdefault(key, np.zeros(3, dtype=np.int64))
                    out[key] += (s.tp, s.tp + s.fp, s.tp + s.fn)
        if on_case:
            on_case(i + 1)
    return out


def _row(tp: int, det: int, true: int) -> dict[str, float]:
    p = tp / det if det else 1.0
    r = tp / true if true else 1.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {
        "f1": round(f1, 4),
        "precision": round(p, 4),
        "recall": round(r, 4),
        "count_ratio": round(det / true, 4) if true else float("nan"),
        "tp": int(tp),
        "detected": int(det),
        "true": int(true),
    }


def choose(table: dict[tuple[str, float, float], np.ndarray]) -> dict[str, Any]:
    """F1-best and count-unbiased points per kind, and the shared threshold."""
    rows = {k: _row(*v) for k, v in table.items()}
    result: dict[str, Any] = {"kinds": {}}
    for kind in KINDS:
        mine = {k: v for k, v in rows.items() if k[0] == kind}
        best = max(mine, key=lambda k: mine[k]["f1"])
        near = [k for k in mine if mine[k]["f1"] >= mine[best]["f1"] - 0.05]
        unbiased = min(near, key=lambda k: abs(np.log(max(mine[k]["count_ratio"], 1e-6))))
        result["kinds"][kind] = {
            "f1_best": {"threshold": best[1], "limit": best[2], **mine[best]},
            "count_unbiased": {"threshold": unbiased[1], "limit": unbiased[2], **mine[unbiased]},
        }
    thresholds = sorted({k[1] for k in rows})
    shared = {}
    for t in thresholds:
        per = {}
        for kind in KINDS:
            cands = {k: v for k, v in rows.items() if k[0] == kind and k[1] == t}
            k_best = max(cands, key=lambda k: cands[k]["f1"])
            per[kind] = {"limit": k_best[2], **cands[k_best]}
        shared[t] = {"mean_f1": round(float(np.mean([per[k]["f1"] for k in KINDS])), 4), **per}
    t_best = max(shared, key=lambda t: (shared[t]["mean_f1"], -abs(t - 0.5)))
    result["shared_threshold"] = {"threshold": t_best, **shared[t_best]}
    result["by_threshold"] = {f"{t:.2f}": shared[t] for t in thresholds}
    result["table"] = {f"{k[0]} {k[1]:.2f} {k[2]:+.2f}": v for k, v in rows.items()}
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=default_model_dir())
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="a third of the scans")
    args = parser.parse_args(argv)
    from defectwatch.service.default_model import VALIDATION

    ensemble = Ensemble.load(args.model, device="cpu")
    sets = [
        (kw, seeds[: max(2, len(seeds) // 3)] if args.quick else seeds) for kw, seeds in VALIDATION
    ]
    n = sum(len(s) for _, s in sets)
    t0 = time.perf_counter()
    cases = (c for kw, seeds in sets for c in simulated_cases(seeds, **kw))
    table = counts(
        ensemble,
        cases,
        on_case=lambda i: print(f"  {i}/{n} scans", flush=True) if i % 10 == 0 else None,
    )
    result = choose(table)
    result["settings"] = {
        "model": ensemble.version,
        "scans": n,
        "validation": [f"{kw}: seeds {s.start}-{s.stop - 1}" for kw, s in sets],
        "truth": "every simulated defect a labeller marks (visible)",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(f"# operating points of {ensemble.version} on {n} simulated validation scans\n")
    print("| kind | point | threshold | limit | F1 | precision | recall | detected/true |")
    print("|---|---|---|---|---|---|---|---|")
    for kind, pts in result["kinds"].items():
        for name, p in pts.items():
            print(
                f"| {kind} | {name} | {p['threshold']:.2f} | {p['limit']:+.2f} | "
                f"{p['f1']:.3f} | {p['precision']:.3f} | {p['recall']:.3f} | "
                f"{p['count_ratio']:.3f} |"
            )
    s = result["shared_threshold"]
    print(
        f"\nshared threshold {s['threshold']:.2f}: mean F1 {s['mean_f1']:.3f}, limits "
        f"trough {s['trough']['limit']:+.2f} peak {s['peak']['limit']:+.2f}"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
