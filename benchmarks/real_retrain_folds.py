"""Every real frame held out once: `benchmarks.real_retrain` on each of ``--folds`` folds (the
15 labelled real WSe2 frames in content-hash order cut into parts; part K is the frozen test
split of fold K), ``--jobs`` folds side by side on one torch thread each, then one table of
what the nightly command did on each fold and the average change against the active version.

    python -m benchmarks.real_retrain_folds [--folds 4] [--jobs 2] [--out DIR] [--model DIR]
                                            [-- any option of benchmarks.real_retrain]

Options after ``--`` go to every fold's run (``-- --iterations 1000``). Prints a markdown
table and writes ``folds.json`` (every fold's report) to ``--out``. Not a test: about 8
minutes on 2 CPU cores for 4 folds with the default recipe.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

KINDS = ("trough", "peak")


def run_fold(fold: int, folds: int, out: Path, extra: list[str]) -> dict[str, Any]:
    """One fold's `benchmarks.real_retrain` in its own process -> its report (or the error)."""
    directory = out / f"fold-{fold}"
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.real_retrain",
        "--fold",
        str(fold),
        "--folds",
        str(folds),
        "--threads",
        "1",
        "--out",
        str(directory),
        *extra,
    ]
    log = out / f"fold-{fold}.log"
    with log.open("w") as fh:
        done = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log.read_text().strip().splitlines()[-3:]
        return {"fold": fold, "error": f"exit {done.returncode}: {' / '.join(tail)}"}
    return {"fold": fold, **json.loads((directory / "real_retrain.json").read_text())}


def fold_row(r: dict[str, Any]) -> dict[str, Any]:
    """The figures of one fold's report that the table shows."""
    cand, act = r["candidate"], r["active"]
    search = r["training"].get("search")
    chosen = search.get("chosen", {}) if isinstance(search, dict) else {}
    labels = r["data"]["test"]["labels"]
    return {
        "fold": r["fold"],
        "test": ", ".join(
            n.split("_", 2)[-1].removesuffix(".jpg") for n in r["data"]["test"]["scan_names"]
        ),
        "labels": f"{labels.get('trough', 0)} / {labels.get('peak', 0)}",
        "chosen": (
            f"{chosen['learning_rate']:g} x {chosen['iterations']}" if chosen else "not searched"
        ),
        "threshold": cand.get("threshold"),
        "operating_point": r["training"].get("operating_point", ""),
        "active": [act["kinds"][k]["f1"] for k in KINDS] + [act["mean_f1"]],
        "candidate": [cand["kinds"][k]["f1"] for k in KINDS] + [cand["mean_f1"]],
        "activated": bool(r["activated"]),
        "seconds": r["retrain_seconds"],
    }


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per fold, then the average change (candidate - active) per kind."""
    lines = [
        "| fold | test frames (troughs / peaks) | rate x steps | threshold | active trough / peak "
        "/ mean | candidate trough / peak / mean | change in mean F1 | gate | wall |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in rows:
        a, c = x["active"], x["candidate"]
        lines.append(
            f"| {x['fold']} | {x['test']} ({x['labels']}) | {x['chosen']} | {x['threshold']} | "
            + " / ".join(f"{v:.3f}" for v in a)
            + " | "
            + " / ".join(f"{v:.3f}" for v in c)
            + f" | {c[2] - a[2]:+.3f} | {'activated' if x['activated'] else 'kept out'} | "
            f"{x['seconds']:.0f} s |"
        )
    if rows:
        mean = [sum(x["candidate"][j] - x["active"][j] for x in rows) / len(rows) for j in range(3)]
        lines.append(
            f"\nAverage change over {len(rows)} folds: troughs {mean[0]:+.3f}, peaks "
            f"{mean[1]:+.3f}, mean F1 {mean[2]:+.3f}; activated on "
            f"{sum(x['activated'] for x in rows)} of {len(rows)}."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2, help="folds side by side")
    parser.add_argument("--model", type=Path, default=None, help="active version to start from")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(own)
    if args.folds < 2 or args.jobs < 1:
        raise SystemExit("--folds must be at least 2 and --jobs at least 1")
    out = (args.out or Path(tempfile.mkdtemp(prefix="real-retrain-folds-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.model is not None:
        extra = ["--model", str(args.model.resolve()), *extra]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        reports = list(pool.map(lambda k: run_fold(k, args.folds, out, extra), range(args.folds)))
    failed = [r for r in reports if "error" in r]
    for r in failed:
        print(f"fold {r['fold']} failed: {r['error']}", file=sys.stderr)
    rows = [fold_row(r) for r in reports if "error" not in r]
    options = " ".join(extra) or "the defaults (the nightly recipe)"
    print(f"# The nightly command on {args.folds} folds of the real frames ({options})\n")
    print(table(rows))
    print(f"\n{args.folds} folds, {args.jobs} at a time: {time.perf_counter() - t0:.0f} s wall")
    (out / "folds.json").write_text(json.dumps({"rows": rows, "reports": reports}, indent=2))
    if failed:
        raise SystemExit(1)
    return rows


if __name__ == "__main__":
    main()
