"""The real-world case: a lab's first night. Import the 15 labelled real WSe2 frames of the
paper (JPEG renders, VIA labels) into a fresh record, retrain from the shipped default, and
compare the candidate with the default on the frames held out as the frozen test split.

    python -m benchmarks.real_retrain [--members 4] [--iterations 300] [--model DIR]
                                      [--partial] [--scratch] [--out DIR]

Each frame becomes a scan of the size its name gives (``..._30x30_...`` nm); its VIA boxes
become point labels (``label_formats.boxes_to_points``, radius from the box) marked exhaustive
(the paper trained on them as such; ``--partial`` marks them partial instead). The frozen split
holds out 4 of the 15 frames (``db.splits``: by content hash). Prints a markdown table (object
level, matching within 1 nm, per class precision / recall / F1 / AP, and the paper's pixel
level) and writes ``real_retrain.json`` to ``--out``. Not a test: minutes of CPU per member.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from defectwatch.db import open_database, read_transaction, write_transaction
from defectwatch.db.models import Label, LabelSet
from defectwatch.db.records import add_scan, set_scan_metadata
from defectwatch.db.registry import register_version
from defectwatch.pipeline.images import read_image_as_scan
from defectwatch.pipeline.label_formats import boxes_to_points, read_labels
from defectwatch.service.default_model import default_model_dir
from defectwatch.service.ingest import file_sha256, model_version_name
from defectwatch.service.retraining import RetrainOptions, retrain

log = logging.getLogger(__name__)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-wse2"
SAMPLE = "WSe2-SL445"


def import_frames(engine, folder: Path, *, exhaustive: bool = True) -> dict[str, int]:
    """Record every labelled JPEG in ``folder`` as a scan of its named size with its VIA
    labels; returns labels per frame name."""
    parsed = read_labels(folder / "labels_via.csv", format="via")
    by_image: dict[str, list] = defaultdict(list)
    for box in parsed.boxes:
        by_image[Path(box.image).name].append(box)
    counts = {}
    with write_transaction(engine) as session:
        for path in sorted(folder.glob("*.jpg")):
            boxes = by_image.get(path.name)
            if not boxes:
                continue  # the unlabelled frames
            scan = read_image_as_scan(path, width_nm=None)
            st = path.stat()
            row = add_scan(str(path), session=session, sha256=file_sha256(path),
                           size_bytes=st.st_size, mtime_ns=st.st_mtime_ns, sample=SAMPLE,
                           status="done")
            set_scan_metadata(row, scan)
            points = boxes_to_points(boxes, nx=scan.nx, ny=scan.ny, width_nm=scan.width_nm,
                                     height_nm=scan.height_nm)
            source = "via:labels_via.csv"
            for p in points:
                session.add(Label(scan_id=row.id, row=p.row, col=p.col, kind=p.kind,
                                  radius_nm=p.radius_nm, source=source, exhaustive=exhaustive))
            session.add(LabelSet(scan_id=row.id, source=source, exhaustive=exhaustive,
                                 labels=len(points), file=str(folder / "labels_via.csv")))
            counts[path.name] = len(points)
    return counts


def table(result) -> str:
    """Markdown: default vs candidate on the held-out frames."""
    lines = ["| model | kind | precision | recall | F1 | AP | TP | FP | FN |",
             "|---|---|---|---|---|---|---|---|---|"]

    def f(v) -> str:
        return "-" if v is None else f"{v:.3f}"

    for name, m in ((f"{result.parent} (shipped default)", result.active),
                    (f"{result.version} (candidate)", result.candidate)):
        for kind, s in m["kinds"].items():
            lines.append(f"| {name} | {kind} | {f(s['precision'])} | {f(s['recall'])} | "
                         f"{f(s['f1'])} | {f(s['ap'])} | {s['tp']} | {s['fp']} | {s['fn']} |")
        lines.append(f"| {name} | mean F1 / object mAP | | | {f(m['mean_f1'])} | "
                     f"{f(m['map'])} | | | |")
        lines.append(f"| {name} | pixel level F1 / mAP | | | {f(m['pixels']['mean_f1'])} | "
                     f"{f(m['pixels']['map'])} | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixtures", type=Path, default=FIXTURES)
    parser.add_argument("--model", type=Path, default=None,
                        help="active version to start from (default: the shipped default)")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--filters", type=int, default=None, help="only with --scratch")
    parser.add_argument("--scratch", action="store_true", help="train from scratch")
    parser.add_argument("--partial", action="store_true", help="import labels as partial")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model = (args.model or default_model_dir()).resolve()
    if not (model / "config.json").is_file():
        raise SystemExit(f"{model}: no model version there (train the default first: "
                         "make default-model, or pass --model DIR)")
    if not args.fixtures.is_dir():
        raise SystemExit(f"{args.fixtures}: the real WSe2 fixtures are not there")
    out = args.out or Path(tempfile.mkdtemp(prefix="real-retrain-"))
    out.mkdir(parents=True, exist_ok=True)
    engine = open_database(out / "record.db")
    name = model_version_name(model)
    with write_transaction(engine) as session:
        register_version(name, session=session, directory=str(model), activate=True)
    counts = import_frames(engine, args.fixtures, exhaustive=not args.partial)
    log.info("imported %d frames, %d labels", len(counts), sum(counts.values()))

    def progress(task: str, done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            log.info("%s: %d/%d", task, done, total)

    options = RetrainOptions(members=args.members, iterations=args.iterations,
                             from_active=not args.scratch, device=args.device,
                             promote="auto", crop_px=args.crop, seed=args.seed,
                             learning_rate=args.learning_rate, filters=args.filters)
    t0 = time.perf_counter()
    result = retrain(engine, models_dir=out / "models", options=options, on_progress=progress,
                     on_note=lambda m: log.warning("%s", m))
    seconds = time.perf_counter() - t0
    with read_transaction(engine) as session:
        from defectwatch.db.splits import split_assignments

        splits = split_assignments(session=session)
    engine.dispose()
    report = {
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                    f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
                    f"device {result.training['device']}",
        "seconds": round(seconds, 1), "train_seconds": result.training["train_seconds"],
        "options": vars(args) | {"fixtures": str(args.fixtures), "model": str(model),
                                 "out": str(out)},
        "frames": counts, "test_frames": result.data["test"]["scan_names"],
        "splits": len(splits), **result.to_dict()}
    (out / "real_retrain.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"# Real WSe2 frames: {result.parent} vs a candidate retrained "
          f"({'from scratch' if args.scratch else 'fine-tuned from it'}, {args.members} "
          f"members x {args.iterations} iterations, labels "
          f"{'partial' if args.partial else 'exhaustive'})\n")
    print(f"Held out (frozen test split): {', '.join(report['test_frames'])}; trained on "
          f"{result.data['train']['scans']} frames ({result.data['train']['labels']}).\n")
    print(table(result))
    print(f"\nGate: {'activated' if result.activated else 'kept as a candidate'} - "
          f"{result.decision.summary()}")
    print(f"Retrain took {seconds:.0f} s ({result.training['train_seconds']:.0f} s training) "
          f"on {report['hardware']}; report in {out / 'real_retrain.json'}")
    return report


if __name__ == "__main__":
    main()
