"""A simulated lab's night, scored against complete truth: does the nightly retrain improve the
active version where there is room to, with labels as incomplete as a person's?

The real frames (`benchmarks.real_retrain`) are few, and their labels are incomplete, so a
test split of them cannot tell a better model from a worse one by less than about 0.1 F1. Here
the lab is simulated and the test is complete: a lab records ``--scans`` simulated scans with
the commands a lab types, labels them from the simulator's truth keeping only a share
``--keep`` of the defects a labeller would mark (marked exhaustive, as a lab would), and runs
the nightly command; then the candidate and the active version are scored on ``--test-scans``
further simulated scans of the same kind against every marked defect (``evaluate --truth
marked``). The scans are widened by every broadened family at once (``simulate --broad``),
the setting where the shipped default is weakest (model-card-calibration.md: peaks F1 0.69),
or by the ``--families`` named (``simulate --family``): with ``--model`` a version that never
saw a family (`benchmarks.leave_one_family_out`), a lab whose scans the active version reads
badly.

    python -m benchmarks.sim_lab_retrain [--scans 16] [--test-scans 30] [--keep 0.7]
                                         [--seed 7000] [--model DIR] [--out DIR]
                                         [--size-nm 50 --pixels 512]
                                         [--families all|lattice,tips,...]
                                         [-- any option of defectwatch retrain]

Prints a markdown table and writes ``sim_lab_retrain.json`` to ``--out``. Not a test: about
10 minutes on 2 CPU cores with the default recipe. Nothing here touches the real frames.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.real_retrain import defectwatch, register_active
from defectwatch.models import default_model_dir

KINDS = ("trough", "peak")
SETTING = {"material": "wse2", "size_nm": 50.0, "pixels": 512, "density_per_cm2": 3e12}


def write_lab_labels(lab: Path, out: Path, *, keep: float, seed: int) -> dict[str, int]:
    """Our point CSV for every scan in ``lab`` from its truth CSV: each defect a labeller would
    mark (``visible``) kept with probability ``keep`` -> {kind: labels written} and the
    ``"marked"`` count they were drawn from."""
    from defectwatch.service.simulation import read_truth_csv

    rng = np.random.default_rng(seed)
    counts = {"trough": 0, "peak": 0, "marked": 0}
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["scan", "row", "col", "kind", "radius_nm"])
        for sxm in sorted(lab.glob("*.sxm")):
            for d in read_truth_csv(sxm.with_suffix(".csv")):
                if not d.visible or d.kind not in KINDS:
                    continue
                counts["marked"] += 1
                if rng.random() < keep:
                    w.writerow([sxm.name, f"{d.row:.2f}", f"{d.col:.2f}", d.kind, ""])
                    counts[d.kind] += 1
    return counts


def score(
    directory: Path,
    seeds: range,
    setting: dict[str, Any] = SETTING,
    families: bool | tuple[str, ...] = True,
) -> dict[str, Any]:
    """Object scores of the version in ``directory`` on simulated scans ``seeds`` of
    ``setting`` (kwargs of `simulate`), widened by ``families`` (True: all), against every
    marked defect."""
    from defectwatch.pipeline.inference import Ensemble
    from defectwatch.service.evaluation import evaluate, headline, simulated_cases

    ensemble = Ensemble.load(directory, device="cpu")
    report = evaluate(
        ensemble,
        simulated_cases(seeds, broad=families, **setting),
        truth="marked",
        n_cases=len(seeds),
    )
    kinds = report.objects["kinds"]
    out: dict[str, Any] = {}
    for k in KINDS:
        x = kinds[k]
        n_true = x["tp"] + x["fn"]
        out[k] = {
            **headline(report.objects)[k],
            "count_ratio": round((x["tp"] + x["fp"]) / n_true, 3) if n_true else None,
        }
    out["mean_f1"] = float(np.mean([out[k]["f1"] for k in KINDS]))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=16, help="the lab's labelled scans")
    parser.add_argument("--test-scans", type=int, default=30)
    parser.add_argument("--keep", type=float, default=0.7, help="share of marked defects labelled")
    parser.add_argument("--seed", type=int, default=7000, help="first lab scan; test from +1000")
    parser.add_argument(
        "--model", type=Path, default=None, help="active version (default: shipped)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads of the retrain")
    parser.add_argument(
        "--size-nm", type=float, default=SETTING["size_nm"], help="side of each simulated frame, nm"
    )
    parser.add_argument(
        "--pixels", type=int, default=SETTING["pixels"], help="pixels per side of each frame"
    )
    parser.add_argument(
        "--families", default="all", help="broadened families to widen by, comma-separated"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(own)
    # an unknown name stops the first command, `simulate --family`, with the names it takes
    named = tuple(f for f in args.families.split(",") if f and f != "all")
    families: bool | tuple[str, ...] = named or True
    widen = [a for f in named for a in ("--family", f)] or ["--broad"]
    if not 0.0 < args.keep <= 1.0 or args.scans < 4:
        raise SystemExit("--keep must be in (0, 1] and --scans at least 4")
    setting = {**SETTING, "size_nm": args.size_nm, "pixels": args.pixels}
    model = (args.model or default_model_dir()).resolve()
    out = (args.out or Path(tempfile.mkdtemp(prefix="sim-lab-retrain-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    lab, db, models = out / "lab", out / "record.db", out / "models"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFECTWATCH_")}
    env["OMP_NUM_THREADS"] = str(args.threads)
    if args.model is not None:
        register_active(db, model)
    t0 = time.perf_counter()
    defectwatch(
        "simulate", str(lab), "--n", str(args.scans), "--seed", str(args.seed), *widen,
        "--density", str(setting["density_per_cm2"]), "--size-nm", str(setting["size_nm"]),
        "--pixels", str(setting["pixels"]), env=env,
    )  # fmt: skip
    defectwatch("process", str(lab), "--db", str(db), "--json", env=env)
    counts = write_lab_labels(lab, out / "labels.csv", keep=args.keep, seed=args.seed)
    defectwatch(
        "labels", "import", str(out / "labels.csv"), "--exhaustive", "--db", str(db), env=env
    )
    t_lab = time.perf_counter() - t0
    t0 = time.perf_counter()
    retrain = ["retrain", "--json", "--threads", str(args.threads), "--db", str(db)]
    result = json.loads(defectwatch(*retrain, "--models-dir", str(models), *extra, env=env))
    t_retrain = time.perf_counter() - t0
    if result.get("outcome") == "skipped":
        raise SystemExit(f"the retrain was skipped: {result.get('reason')}")
    test = range(args.seed + 1000, args.seed + 1000 + args.test_scans)
    t0 = time.perf_counter()
    scores = {
        "active": score(model, test, setting, families),
        "candidate": score(Path(result["directory"]), test, setting, families),
    }
    t_score = time.perf_counter() - t0
    options = " ".join(extra) or "the defaults (the nightly recipe)"
    print(
        f"# A simulated lab's night: {args.scans} WSe2 scans widened by {args.families} "
        f"({args.size_nm:g} nm, {args.pixels} px), {args.keep:.0%} of "
        f"{counts['marked']} marked defects labelled ({counts['trough']} troughs, "
        f"{counts['peak']} peaks); retrain with {options}\n"
    )
    print(f"Scored on {args.test_scans} further widened scans against every marked defect.\n")
    print("| model | kind | precision | recall | F1 | detected / true |")
    print("|---|---|---|---|---|---|")
    names = {"active": f"{result['parent']} (active)", "candidate": f"{result['version']}"}
    for who in ("active", "candidate"):
        s = scores[who]
        for k in KINDS:
            x = s[k]
            print(
                f"| {names[who]} | {k} | {x['precision']:.3f} | {x['recall']:.3f} | "
                f"{x['f1']:.3f} | {x['count_ratio']} |"
            )
        print(f"| {names[who]} | mean F1 | | | **{s['mean_f1']:.3f}** | |")
    training = result.get("training", {})
    search = training.get("search")
    chosen = search.get("chosen") if isinstance(search, dict) else None
    print(
        f"\nChosen: {chosen or 'not searched'}; operating point: "
        f"{training.get('operating_point', '-')}; candidate threshold "
        f"{result['candidate'].get('threshold')}."
    )
    print(f"Gate on the lab's own (incomplete) test split: {result['decision']['summary']}")
    print(
        f"Lab {t_lab:.0f} s, retrain {t_retrain:.0f} s, scoring {t_score:.0f} s on "
        f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} thread(s)."
    )
    summary = {
        "options": extra,
        "labels": counts,
        "keep": args.keep,
        "setting": setting,
        "families": list(named) or "all",
        "scores": scores,
        "outcome": result["outcome"],
        "activated": result["activated"],
        "decision": result["decision"],
        "training": training,
        "seconds": {"lab": t_lab, "retrain": t_retrain, "score": t_score},
    }
    (out / "sim_lab_retrain.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
