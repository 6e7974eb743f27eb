"""`defectwatch retrain`: train a candidate from the labels in the record, compare it with the
active version on the frozen test split, and promote it only when it is no worse.

Exit status 0 whether the candidate was activated or kept as a candidate (both are normal
outcomes; ``--json`` says which); 1 with one line on stderr when nothing could be trained
(too few labelled scans, another retrain running, no model, a bad option).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import TaskID
from rich.table import Table

from defectwatch.service.cli.common import DbOption, _database, _progress, err, out


def retrain(
    recipe: Annotated[
        str,
        typer.Option(
            help="finetune (the nightly default): fine-tune the active version with rehearsal of "
            "its simulated data, sparing its confident unlabelled detections, learning rate, "
            "steps and detection rule chosen on a validation split of the labels; scratch: "
            "the paper's recipe, new members from random weights."
        ),
    ] = "finetune",
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Retrain even when no label changed since the active version (or "
            "the last candidate from it) was trained.",
        ),
    ] = False,
    members: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Ensemble members (default: finetune all of the active version's; scratch 10).",
        ),
    ] = None,
    iterations: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Mini-batches per member (default: finetune 100 or 200, chosen on "
            "validation; scratch 500).",
        ),
    ] = None,
    from_active: Annotated[
        bool,
        typer.Option(
            "--from-active",
            help="With --recipe scratch: start from the active version's "
            "members (plain fine-tuning, no rehearsal or search).",
        ),
    ] = False,
    device: Annotated[str, typer.Option(help="auto (GPU when present), cpu or cuda.")] = "auto",
    promote: Annotated[
        str,
        typer.Option(
            help="auto: activate only if no class's F1 drops by more than --tolerance and the "
            "mean F1 holds; never: keep it a candidate; force: activate."
        ),
    ] = "auto",
    db: DbOption = None,
    models_dir: Annotated[
        Path | None,
        typer.Option(
            "--models-dir",
            help="Where version directories are written (default: "
            "DEFECTWATCH_MODELS_DIR, else the user data dir's models).",
        ),
    ] = None,
    filters: Annotated[
        int | None,
        typer.Option(
            min=1, help="U-Net filters, --recipe scratch only (default: the active version's)."
        ),
    ] = None,
    crop: Annotated[
        int | None,
        typer.Option(
            "--crop",
            min=16,
            help="Training crop side, model pixels (a multiple of 8; default "
            "finetune 128, scratch 256).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of member 0 (member k uses seed + k).")] = 0,
    tolerance: Annotated[
        float,
        typer.Option(
            min=0.0, max=0.99, help="Largest F1 drop of one class that --promote auto accepts."
        ),
    ] = 0.02,
    learning_rate: Annotated[
        float | None,
        typer.Option(
            "--learning-rate",
            min=1e-7,
            help="Adam learning rate (default: finetune chooses "
            "1e-4 or 3e-4 on validation; scratch 1e-3).",
        ),
    ] = None,
    rehearsal: Annotated[
        float | None,
        typer.Option(
            "--rehearsal",
            min=0.0,
            max=0.95,
            help="finetune: share of each mini-batch simulated "
            "from the active version's data (default 0.5; "
            "0: none).",
        ),
    ] = None,
    label_crops: Annotated[
        float | None,
        typer.Option(
            "--label-crops",
            min=0.0,
            max=1.0,
            help="finetune: share of the lab's crops centred on a labelled defect, kinds drawn "
            "uniformly so rare kinds are seen as often as common ones (default 0.5; 0: crops "
            "anywhere).",
        ),
    ] = None,
    spare_unlabelled: Annotated[
        bool,
        typer.Option(
            "--spare-unlabelled/--no-spare-unlabelled",
            help="finetune: do not teach the active version's confident detections that no label "
            "marks as background (labels may be incomplete).",
        ),
    ] = True,
    rule_choice: Annotated[
        str,
        typer.Option(
            "--rule-choice",
            help="finetune: the candidate's threshold and report rule. clear (default): the "
            "validation split's best where its gain over the active version's is clear (90% "
            "bootstrap interval above 0), else the active version's; validation: the "
            "validation split's best; parent: the active version's.",
        ),
    ] = "clear",
    keep_rule: Annotated[
        bool,
        typer.Option(
            "--keep-rule",
            help="finetune: the same as --rule-choice parent (with incomplete labels, a choice "
            "on a few validation frames favours missing defects).",
        ),
    ] = False,
    pu_validation: Annotated[
        bool,
        typer.Option(
            "--pu-validation/--no-pu-validation",
            help="finetune: when choosing the rate, steps and rule on the validation split, "
            "the active version's detections that no label marks count neither as hits nor as "
            "false (labels may be incomplete: counted as false, they push the choice towards "
            "reporting less).",
        ),
    ] = True,
    pu_gate: Annotated[
        bool,
        typer.Option(
            "--pu-gate/--no-pu-gate",
            help="Also refuse a candidate that fails the gate with the active version's "
            "unlabelled detections as don't care on the test split (labels may be incomplete: "
            "a candidate that stops reporting real, unlabelled defects looks more precise).",
        ),
    ] = True,
    threads: Annotated[
        int | None,
        typer.Option(
            min=1, help="CPU threads (default: the cores the rest of the machine leaves idle)."
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Name of the new version (default: retrain-<UTC time>)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Retrain the ensemble from all accumulated labels and promote it only if it is no
    worse than the active version on the frozen test split; skipped (exit 0) when no label
    changed since the active version was trained."""
    from defectwatch.service.config import get_settings
    from defectwatch.service.retraining import RetrainOptions, SkippedRun
    from defectwatch.service.retraining import retrain as run_retrain

    options = RetrainOptions(
        members=members,
        iterations=iterations,
        from_active=from_active,
        device=device,
        promote=promote.lower(),
        filters=filters,
        crop_px=crop,
        seed=seed,
        tolerance=tolerance,
        learning_rate=learning_rate,
        version=name,
        recipe=recipe.lower(),
        force=force,
        rehearsal_share=rehearsal,
        label_crop_share=label_crops,
        spare_unlabelled=spare_unlabelled,
        rule_choice="parent" if keep_rule else rule_choice.lower(),
        pu_validation=pu_validation,
        pu_gate=pu_gate,
        threads=threads,
    )

    def warn(message: str) -> None:
        err.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False, soft_wrap=True)

    with _database(db) as engine:
        folder = models_dir or get_settings().models_dir
        with _progress() as bar:
            tasks: dict[str, TaskID] = {}

            def progress(task: str, done: int, total: int) -> None:
                if task not in tasks:
                    tasks[task] = bar.add_task(task, total=total or None)
                bar.update(tasks[task], completed=done)

            result = run_retrain(
                engine, models_dir=folder, options=options, on_progress=progress, on_note=warn
            )
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    if isinstance(result, SkippedRun):
        out.print(f"[cyan]skipped[/cyan]: {escape(result.reason)}", highlight=False)
        return
    out.print(
        comparison_table(
            result.candidate,
            result.active,
            candidate_name=result.version,
            active_name=result.parent,
        )
    )
    why = result.decision.summary()
    if result.activated:
        out.print(
            f"[green]activated[/green] {escape(result.version)} (was "
            f"{escape(result.parent)}): {escape(why)}",
            highlight=False,
        )
    else:
        out.print(
            f"[yellow]kept as a candidate[/yellow] {escape(result.version)} "
            f"({escape(result.parent)} stays active): {escape(why)}",
            highlight=False,
        )
    out.print(
        f"written to {escape(str(result.directory))} ({result.seconds:.0f} s)", highlight=False
    )


def _f(value: Any) -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and not math.isfinite(value))
        else f"{value:.3f}"
    )


def comparison_table(
    candidate: dict[str, Any],
    active: dict[str, Any],
    *,
    candidate_name: str = "candidate",
    active_name: str = "active",
) -> Table:
    """Both versions side by side on the test split: per class object-level precision,
    recall, F1 and AP (TP/FP/FN in brackets), the mean F1 and object mAP over the classes, and
    the paper's pixel-level mean F1 and mAP; the last column is the change in F1."""
    table = Table(
        "kind",
        "active P",
        "R",
        "F1 (TP/FP/FN)",
        "AP",
        "candidate P",
        "R",
        "F1 (TP/FP/FN)",
        "AP",
        "ΔF1",
        title=f"active {escape(active_name)} vs candidate {escape(candidate_name)} "
        f"on the frozen test split ({candidate.get('scans')} scan(s))",
    )

    def counts(s: dict[str, Any]) -> str:
        return "" if s.get("tp") is None else f" ({s['tp']}/{s['fp']}/{s['fn']})"

    for kind in candidate["kinds"]:
        a, c = active["kinds"][kind], candidate["kinds"][kind]
        table.add_row(
            kind,
            _f(a["precision"]),
            _f(a["recall"]),
            _f(a["f1"]) + counts(a),
            _f(a["ap"]),
            _f(c["precision"]),
            _f(c["recall"]),
            _f(c["f1"]) + counts(c),
            _f(c["ap"]),
            _delta(c["f1"], a["f1"]),
        )
    table.add_row(
        "mean (object mAP)",
        "",
        "",
        _f(active["mean_f1"]),
        _f(active["map"]),
        "",
        "",
        _f(candidate["mean_f1"]),
        _f(candidate["map"]),
        _delta(candidate["mean_f1"], active["mean_f1"]),
        end_section=True,
    )
    ap, cp = active["pixels"], candidate["pixels"]
    table.add_row(
        "pixel level (mAP)",
        "",
        "",
        _f(ap["mean_f1"]),
        _f(ap["map"]),
        "",
        "",
        _f(cp["mean_f1"]),
        _f(cp["map"]),
        _delta(cp["mean_f1"], ap["mean_f1"]),
    )
    return table


def _delta(new: Any, old: Any) -> str:
    if new is None or old is None:
        return "-"
    return f"{new - old:+.3f}"
