"""Are the real frames' labels complete? How the unmatched detections stand out, measured.

The real WSe2 frames' F1 counts every detection without a label within 1 nm as false. This
measures each one with the statistic annotators judge by eye (`pipeline.contrast`: core minus
ring in ring-noise sigmas, in the flattened image, as detection measures it) and sets it
beside the labelled defects of the same frame and beside random points of it (the control:
what noise alone reaches). A false detection that stands out as much as the labelled defects
is more likely a defect the annotators left out than one the model made up; pictures
(``--pictures DIR``) let a person judge:
each frame with its labels and unlabelled detections, and per kind three contact sheets of
10 nm crops (labels found, labels missed, detections without a label), each crop captioned
with its frame and contrast.

Per frame and kind: labels and their median contrast, detections at the version's threshold,
unmatched ones and how many of them reach the frame's labelled lower quartile / median, the
same shares for random points, and the misses' median contrast.

    python -m benchmarks.label_audit [--model DIR] [--pictures DIR]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from defectwatch.models import default_model_dir
from defectwatch.pipeline.contrast import defect_contrast
from defectwatch.pipeline.inference import Ensemble
from defectwatch.pipeline.metrics import match
from defectwatch.pipeline.preprocess import flatten_with
from defectwatch.pipeline.render import COLOURS_BGR, Mark, draw_marks, put_label, write_png
from defectwatch.service.evaluation import Case, cases_from_images

REAL = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real-wse2"
KINDS = (("trough", -1.0), ("peak", 1.0))  # kind, sign that makes "stands out" positive
RANDOM_POINTS = 400
EDGE_NM = 4.0  # random points keep this far from the frame's edges (their ring must fit)
TILE_NM = 10.0  # contact sheets: crop side in nm
TILE_PX = 96  # and in pixels on the sheet
SHEET_COLUMNS = 12


@dataclass
class KindAudit:
    """One frame, one kind: contrasts (sign-corrected: larger = stands out more)."""

    labelled: np.ndarray
    unmatched: np.ndarray
    missed: np.ndarray
    random: np.ndarray
    detections: int
    unmatched_xy: list[tuple[float, float]] = field(default_factory=list)  # (x, y) nm
    found_xy: list[tuple[float, float]] = field(default_factory=list)  # labels matched
    missed_xy: list[tuple[float, float]] = field(default_factory=list)  # labels not matched
    found: np.ndarray = field(default_factory=lambda: np.zeros(0))  # their contrast

    def reaching(self, values: np.ndarray, q: float) -> int:
        """How many of ``values`` stand out at least as much as the labels' ``q`` quantile."""
        if not np.isfinite(self.labelled).any():
            return 0
        return int(np.sum(values >= np.nanpercentile(self.labelled, q)))


def _contrast(flat: np.ndarray, pixel_nm: float, xy: np.ndarray, sign: float) -> np.ndarray:
    if len(xy) == 0:
        return np.zeros(0)
    return sign * defect_contrast(
        flat, pixel_size_nm=pixel_nm, rows=xy[:, 1] / pixel_nm, cols=xy[:, 0] / pixel_nm
    )


def audit_case(
    ensemble: Ensemble, case: Case, rng: np.random.Generator
) -> tuple[dict[str, KindAudit], np.ndarray]:
    """Kind -> its audit, and the flattened frame the contrasts were measured in (ny, nx)."""
    thr = ensemble.config.threshold_for(case.scan.channel)
    prediction = ensemble.predict_scan(case.scan)
    found = prediction.defects(threshold=thr)
    # measured where detection measures it: the flattened topography at the scan's pixels
    flat = (
        prediction.flat
        if prediction.flat is not None
        else flatten_with(case.scan.data, ensemble.params)
    )
    px = case.scan.width_nm / case.scan.nx
    w, h = case.scan.width_nm, case.scan.height_nm
    pts = np.column_stack(
        [
            rng.uniform(EDGE_NM, w - EDGE_NM, RANDOM_POINTS),
            rng.uniform(EDGE_NM, h - EDGE_NM, RANDOM_POINTS),
        ]
    )
    out = {}
    for kind, sign in KINDS:
        det = np.array([(d.x_nm, d.y_nm) for d in found if d.kind == kind]).reshape(-1, 2)
        lab = np.array([(t.x_nm, t.y_nm) for t in case.labels if t.kind == kind]).reshape(-1, 2)
        pairs = match(det, lab, radius_nm=1.0)
        hit_d, hit_l = {i for i, _, _ in pairs}, {j for _, j, _ in pairs}
        un = det[[i for i in range(len(det)) if i not in hit_d]].reshape(-1, 2)
        miss = lab[[j for j in range(len(lab)) if j not in hit_l]].reshape(-1, 2)
        hit = lab[sorted(hit_l)].reshape(-1, 2)
        out[kind] = KindAudit(
            *(_contrast(flat, px, xy, sign) for xy in (lab, un, miss, pts)),
            len(det),
            [tuple(p) for p in un],
            [tuple(p) for p in hit],
            [tuple(p) for p in miss],
            _contrast(flat, px, hit, sign),
        )
    return out, flat


def stretched(flat: np.ndarray) -> np.ndarray:
    """A flattened frame stretched to [0, 1] between its 1st and 99.5th percentiles."""
    lo, hi = np.nanpercentile(flat, (1.0, 99.5))
    return np.clip((flat - lo) / max(float(hi - lo), 1e-30), 0.0, 1.0)


def picture(case: Case, z01: np.ndarray, audits: dict[str, KindAudit], path: Path) -> None:
    """The frame ``z01`` (`stretched`) with its labels (thin grey circles) and the detections
    without a label (cyan troughs, magenta peaks)."""
    px = case.scan.width_nm / case.scan.nx
    marks = [Mark(t.y_nm / px, t.x_nm / px, t.kind, bold=False) for t in case.labels]
    for kind, _ in KINDS:
        marks += [Mark(y / px, x / px, kind) for x, y in audits[kind].unmatched_xy]
    bgr = draw_marks(
        z01,
        marks,
        pixel_size_nm=px,
        title=f"{case.name}: grey = labelled, colour = detection without label",
    )
    write_png(path, bgr)


def tile(
    z01: np.ndarray,
    pixel_nm: float,
    xy: tuple[float, float],
    caption: str,
    colour: tuple[int, int, int],
) -> np.ndarray:
    """A ``TILE_NM`` crop of ``z01`` centred on ``xy`` (nm; reflected at the frame's edges),
    ``TILE_PX`` square, a 1 nm circle (the matching radius) at its centre, captioned."""
    half = max(int(round(TILE_NM / 2 / pixel_nm)), 2)
    grey = (np.nan_to_num(z01, nan=0.0) * 255).astype(np.uint8)
    padded = cv2.copyMakeBorder(grey, half, half, half, half, cv2.BORDER_REFLECT)
    r, c = int(round(xy[1] / pixel_nm)), int(round(xy[0] / pixel_nm))
    crop = padded[r : r + 2 * half + 1, c : c + 2 * half + 1]
    bgr = cv2.cvtColor(
        cv2.resize(crop, (TILE_PX, TILE_PX), interpolation=cv2.INTER_LINEAR), cv2.COLOR_GRAY2BGR
    )
    centre = TILE_PX // 2
    cv2.circle(bgr, (centre, centre), int(round(TILE_PX / TILE_NM)), colour, 1, cv2.LINE_AA)
    cv2.putText(
        bgr,
        caption,
        (2, TILE_PX - 4),
        cv2.FONT_HERSHEY_SIMPLEX,
        0.32,
        (0, 220, 255),
        1,
        cv2.LINE_AA,
    )
    return bgr


def sheet(tiles: list[np.ndarray], title: str) -> np.ndarray:
    """Tiles in rows of ``SHEET_COLUMNS`` under a title bar."""
    rows = max((len(tiles) + SHEET_COLUMNS - 1) // SHEET_COLUMNS, 1)
    out = np.full((28 + rows * TILE_PX, SHEET_COLUMNS * TILE_PX, 3), 40, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, SHEET_COLUMNS)
        out[28 + r * TILE_PX : 28 + (r + 1) * TILE_PX, c * TILE_PX : (c + 1) * TILE_PX] = t
    put_label(out, title, (6, 20))
    return out


SHEET_GROUPS = {
    "found": "labels found",
    "missed": "labels missed",
    "unlabelled": "detections without a label",
}


def sheet_tiles(
    case: Case, z01: np.ndarray, audits: dict[str, KindAudit]
) -> dict[tuple[str, str], list[np.ndarray]]:
    """(kind, group) -> this frame's tiles, captioned with the frame's size and number and
    each point's contrast (sign-corrected, as in the table)."""
    px = case.scan.width_nm / case.scan.nx
    tag = "_".join(Path(case.name).stem.split("_")[-3::2])  # e.g. "30x30_013"
    out: dict[tuple[str, str], list[np.ndarray]] = {}
    for kind, _ in KINDS:
        a = audits[kind]
        groups = {
            "found": (a.found_xy, a.found),
            "missed": (a.missed_xy, a.missed),
            "unlabelled": (a.unmatched_xy, a.unmatched),
        }
        for group, (points, contrast) in groups.items():
            colour = COLOURS_BGR[kind] if group == "unlabelled" else (0, 200, 0)
            out[(kind, group)] = [
                tile(z01, px, xy, f"{tag} {c:+.1f}", colour) for xy, c in zip(points, contrast)
            ]
    return out


def _med(a: np.ndarray) -> str:
    return f"{np.nanmedian(a):+.1f}" if np.isfinite(a).any() else "-"


def main(model_dir: Path, pictures: Path | None) -> dict[str, dict[str, int]]:
    if not (REAL / "labels_via.csv").is_file():
        raise SystemExit(f"{REAL}: the real frames are not there")
    ensemble = Ensemble.load(model_dir, device="cpu")
    cases = cases_from_images(sorted(REAL.glob("*.jpg")), REAL / "labels_via.csv")
    rng = np.random.default_rng(0)
    tiles: dict[tuple[str, str], list[np.ndarray]] = {}
    totals = {
        k: dict(labels=0, detections=0, unmatched=0, q25=0, median=0, random=0, random_q25=0)
        for k, _ in KINDS
    }
    print(
        f"model {ensemble.version}; contrast in ring-noise sigmas, sign-corrected "
        "(larger = stands out more)\n"
    )
    print(
        "| frame | kind | labels (median) | detections | unmatched (median) | unmatched >= "
        "labels' q25 / median | random points >= q25 / median | missed (median) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for case in cases:
        audits, flat = audit_case(ensemble, case, rng)
        for kind, _ in KINDS:
            a = audits[kind]
            if len(a.labelled) == 0 and len(a.unmatched) == 0:
                continue
            n_rand = max(int(np.isfinite(a.random).sum()), 1)
            print(
                f"| {case.name.removeprefix('WSe2-SL445_')} | {kind} | {len(a.labelled)} "
                f"({_med(a.labelled)}) | {a.detections} | {len(a.unmatched)} "
                f"({_med(a.unmatched)}) | {a.reaching(a.unmatched, 25)} / "
                f"{a.reaching(a.unmatched, 50)} | "
                f"{a.reaching(a.random, 25) / n_rand:.1%} / "
                f"{a.reaching(a.random, 50) / n_rand:.1%} | {len(a.missed)} "
                f"({_med(a.missed)}) |",
                flush=True,
            )
            t = totals[kind]
            t["labels"] += len(a.labelled)
            t["detections"] += a.detections
            t["unmatched"] += len(a.unmatched)
            t["q25"] += a.reaching(a.unmatched, 25)
            t["median"] += a.reaching(a.unmatched, 50)
            t["random"] += n_rand
            t["random_q25"] += a.reaching(a.random, 25)
        if pictures is not None:
            z01 = stretched(flat)
            picture(case, z01, audits, pictures / f"{Path(case.name).stem}_audit.png")
            for key, more in sheet_tiles(case, z01, audits).items():
                tiles.setdefault(key, []).extend(more)
    if pictures is not None:
        for (kind, group), kept in tiles.items():
            write_png(
                pictures / f"sheet_{kind}_{group}.png",
                sheet(
                    kept,
                    f"{kind}s: {SHEET_GROUPS[group]} ({len(kept)}); 10 nm crops, "
                    "circle = 1 nm match radius; caption: frame, contrast",
                ),
            )
    print()
    for kind, t in totals.items():
        print(
            f"{kind}: {t['unmatched']} of {t['detections']} detections unmatched; "
            f"{t['q25']} reach their frame's labelled lower quartile, {t['median']} its "
            f"median; random points reach the lower quartile {t['random_q25'] / t['random']:.1%}"
            " of the time"
        )
    return totals


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=default_model_dir())
    ap.add_argument("--pictures", type=Path, default=None)
    args = ap.parse_args()
    main(args.model, args.pictures)
