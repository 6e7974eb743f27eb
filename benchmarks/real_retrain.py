"""The real-world case: a lab's first night. Import the 15 labelled real WSe2 frames of the
paper (JPEG renders, VIA labels; and the 4 unlabelled frames of 2021-11-20) into a fresh record
with the real commands, run the default nightly retrain from the shipped default, and compare
the candidate with the default on the frames held out as the frozen test split.

    python -m benchmarks.real_retrain [--recipe finetune|scratch] [--members N]
                                      [--iterations N] [--learning-rate LR] [--model DIR]
                                      [--no-spare-unlabelled] [--rehearsal SHARE]
                                      [--label-crops SHARE] [--rule-choice clear|validation|parent]
                                      [--no-pu-validation] [--no-pu-gate]
                                      [--partial] [--fold K --folds N] [--out DIR]

It runs, in a fresh folder, what a lab types (and what ``service install`` schedules)::

    defectwatch import-image real-wse2/*.jpg --sample WSe2-SL445 --db record.db
    defectwatch labels import real-wse2/labels_via.csv [--partial] --db record.db
    defectwatch retrain --json --db record.db --models-dir models

Each frame becomes a scan of the size its name gives (``..._30x30_...`` nm); its VIA boxes
become point labels marked exhaustive (the paper trained on them as such; ``--partial`` marks
them partial). The frozen split holds out 4 of the 15 labelled frames (``db.splits``: by
content hash; ``--fold K --folds N`` holds out the K-th of N parts instead, so N runs hold
out every frame once); the nightly recipe holds out a quarter of the rest as its validation
split. The
active version is the shipped default (registered by the first command that needs it), or
``--model DIR``. Options left out are the command's defaults (the nightly recipe). Prints a
markdown table (object level, matching within 1 nm, per class precision / recall / F1 / AP,
and the paper's pixel level) and writes ``real_retrain.json`` to ``--out``. Not a test:
10-20 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from defectwatch.models import default_model_dir

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-wse2"
SAMPLE = "WSe2-SL445"


def defectwatch(*args: str, env: dict[str, str]) -> str:
    """Run one ``defectwatch`` command (stderr passes through); its stdout, or exit."""
    done = subprocess.run(
        [sys.executable, "-m", "defectwatch", *args], env=env, stdout=subprocess.PIPE, text=True
    )
    if done.returncode != 0:
        raise SystemExit(
            f"defectwatch {' '.join(args[:2])} failed ({done.returncode}): "
            f"{done.stdout.strip()[-500:]}"
        )
    return done.stdout


def register_active(db: Path, model: Path) -> None:
    """Make ``model`` the active version of the fresh record (instead of the shipped one)."""
    from defectwatch.db import open_database, write_transaction
    from defectwatch.db.registry import register_version
    from defectwatch.service.ingest import model_version_name

    engine = open_database(db)
    with write_transaction(engine) as session:
        register_version(
            model_version_name(model), session=session, directory=str(model), activate=True
        )
    engine.dispose()


def assign_fold(db: Path, fold: int, folds: int) -> list[str]:
    """Freeze the record's split as cross-validation fold ``fold`` of ``folds``: the labelled
    scans in content-hash order (the order ``db.splits`` assigns in), cut into ``folds``
    contiguous parts; part ``fold`` is the test split, the rest train. Returns the test
    scans' names. Every labelled frame is held out by exactly one fold."""
    from sqlalchemy import select

    from defectwatch.db import open_database, write_transaction
    from defectwatch.db.models import SplitAssignment
    from defectwatch.db.splits import trainable_scans

    if not 0 <= fold < folds:
        raise SystemExit(f"--fold must lie in 0..{folds - 1}")
    engine = open_database(db)
    with write_transaction(engine) as session:
        if session.scalars(select(SplitAssignment)).first() is not None:
            raise SystemExit("the record already has a frozen split")
        scans = sorted(trainable_scans(session=session), key=lambda r: (r.sha256, r.id))
        bounds = [round(i * len(scans) / folds) for i in range(folds + 1)]
        test = scans[bounds[fold] : bounds[fold + 1]]
        for row in scans:
            split = "test" if row in test else "train"
            session.add(SplitAssignment(scan_id=row.id, split=split))
        names = [Path(r.path).name for r in test]
    engine.dispose()
    return names


def table(result: dict) -> str:
    """Markdown: the active version vs the candidate on the held-out frames."""
    lines = [
        "| model | kind | precision | recall | F1 | AP | TP | FP | FN |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v) -> str:
        return "-" if v is None else f"{v:.3f}"

    for name, m in (
        (f"{result['parent']} (active)", result["active"]),
        (f"{result['version']} (candidate)", result["candidate"]),
    ):
        for kind, s in m["kinds"].items():
            lines.append(
                f"| {name} | {kind} | {f(s['precision'])} | {f(s['recall'])} | "
                f"{f(s['f1'])} | {f(s['ap'])} | {s['tp']} | {s['fp']} | {s['fn']} |"
            )
        lines.append(
            f"| {name} | mean F1 / object mAP | | | {f(m['mean_f1'])} | {f(m['map'])} | | | |"
        )
        lines.append(
            f"| {name} | pixel level F1 / mAP | | | {f(m['pixels']['mean_f1'])} | "
            f"{f(m['pixels']['map'])} | | | |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=FIXTURES)
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="active version to start from (default: the shipped default)",
    )
    parser.add_argument("--recipe", default=None, help="finetune (default) or scratch")
    parser.add_argument("--members", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--crop", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--rehearsal", type=float, default=None)
    parser.add_argument("--label-crops", type=float, default=None)
    parser.add_argument("--no-spare-unlabelled", action="store_true")
    parser.add_argument("--keep-rule", action="store_true")
    parser.add_argument("--rule-choice", default=None, help="clear (default), validation, parent")
    parser.add_argument("--no-pu-validation", action="store_true")
    parser.add_argument("--no-pu-gate", action="store_true")
    parser.add_argument("--filters", type=int, default=None, help="only with --recipe scratch")
    parser.add_argument("--from-active", action="store_true", help="with --recipe scratch")
    parser.add_argument("--partial", action="store_true", help="import labels as partial")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--fold",
        type=int,
        default=None,
        help="hold out cross-validation fold K of --folds (content-hash order) as the test "
        "split instead of the record's own first assignment",
    )
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    model = (args.model or default_model_dir()).resolve()
    if not (model / "config.json").is_file():
        raise SystemExit(
            f"{model}: no model version there (train the default first: "
            "make default-model, or pass --model DIR)"
        )
    if not args.fixtures.is_dir():
        raise SystemExit(f"{args.fixtures}: the real WSe2 fixtures are not there")
    out = (args.out or Path(tempfile.mkdtemp(prefix="real-retrain-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    db, models = out / "record.db", out / "models"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEFECTWATCH_")}
    if args.model is not None:
        register_active(db, model)
    frames = sorted(str(p) for p in args.fixtures.glob("*.jpg"))  # 2021-11-18 and -20
    t0 = time.perf_counter()
    print(defectwatch("import-image", *frames, "--sample", SAMPLE, "--db", str(db), env=env))
    print(
        defectwatch(
            "labels",
            "import",
            str(args.fixtures / "labels_via.csv"),
            "--partial" if args.partial else "--exhaustive",
            "--db",
            str(db),
            env=env,
        )
    )
    t_import = time.perf_counter() - t0
    if args.fold is not None:
        held_out = assign_fold(db, args.fold, args.folds)
        print(f"fold {args.fold} of {args.folds} held out: {', '.join(held_out)}")
    retrain = [
        "retrain",
        "--seed",
        str(args.seed),
        "--device",
        args.device,
        "--json",
        "--db",
        str(db),
        "--models-dir",
        str(models),
    ]
    for flag, value in (
        ("--recipe", args.recipe),
        ("--members", args.members),
        ("--iterations", args.iterations),
        ("--crop", args.crop),
        ("--learning-rate", args.learning_rate),
        ("--rehearsal", args.rehearsal),
        ("--label-crops", args.label_crops),
        ("--filters", args.filters),
        ("--threads", args.threads),
        ("--rule-choice", args.rule_choice),
    ):
        if value is not None:
            retrain += [flag, str(value)]
    if args.no_spare_unlabelled:
        retrain.append("--no-spare-unlabelled")
    if args.keep_rule:
        retrain.append("--keep-rule")
    if args.no_pu_validation:
        retrain.append("--no-pu-validation")
    if args.no_pu_gate:
        retrain.append("--no-pu-gate")
    if args.from_active:
        retrain.append("--from-active")
    import resource

    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    result = json.loads(defectwatch(*retrain, env=env))
    seconds = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    if result.get("outcome") == "skipped":
        raise SystemExit(f"the retrain was skipped: {result['reason']}")
    import torch

    report = {
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {result['training'].get('cpu_threads')} threads, "
        f"device {result['training']['device']}",
        "retrain_seconds": round(seconds, 1),
        "import_seconds": round(t_import, 1),
        "retrain_cpu_seconds": round(cpu_s, 1),
        "load_average": os.getloadavg(),
        "options": {k: str(v) for k, v in vars(args).items()},
        "out": str(out),
        **result,
    }
    (out / "real_retrain.json").write_text(json.dumps(report, indent=2))
    d = result["data"]
    t = result["training"]
    print(
        f"# Real WSe2 frames: {result['parent']} vs a candidate retrained "
        f"({t.get('recipe')}: {t.get('from')}, {t['members']} members x {t['iterations']} "
        f"iterations at {t['learning_rate']:g}, labels "
        f"{'partial' if args.partial else 'exhaustive'})\n"
    )
    print(
        f"Held out (frozen test split): {', '.join(d['test']['scan_names'])} "
        f"({d['test']['labels']}); trained on {d['train']['scans']} frames "
        f"({d['train']['labels']}).\n"
    )
    print(table(result))
    print(
        f"\nGate: {'activated' if result['activated'] else 'kept as a candidate'}: "
        f"{result['decision']['summary']}"
    )
    print(
        f"`retrain` took {seconds:.0f} s wall, {cpu_s:.0f} s CPU "
        f"({result['training']['train_seconds']:.0f} s training the members) on "
        f"{report['hardware']} (load average {os.getloadavg()[0]:.1f}: a shared machine "
        f"stretches the wall time); report in {out / 'real_retrain.json'}"
    )
    return report


if __name__ == "__main__":
    main()
