"""Preprocessing step by step, before issue 20 ("old": ``tests/pipeline/reference_preprocess``)
against now ("new": ``defectwatch.pipeline.preprocess``), and its share of file-to-defects.

One simulated WSe2 scan per size (50 nm per 512 px, as `end_to_end`), this machine's CPU.
Every step runs old then new on the same input, the pairs interleaved, ``repeats`` times;
medians are reported. Steps: plane (``plane_correct``), line fit (``flatten_lines`` of the
plane-corrected frame), mask + refit (the three passes of masking strong features and
refitting plane and lines), flatten (all of it), resample (to the model's 0.098 nm), gaussian
(``nan_gaussian``, 1 px), CLAHE (16 bit, tiles <= 96 px), prepare (everything). Peak memory of
``prepare``: numpy allocations traced by tracemalloc (OpenCV's internal buffers are not
traced) and peak extra resident memory (sampled). File to defects: ``detect_file`` with the
shipped ensemble (exact float32), once with the old preprocessing patched into inference,
once with the new, interleaved; the share is prepare / file-to-defects of the same variant.

``python -m benchmarks.preprocess [repeats]``; part of ``make bench``.
"""

from __future__ import annotations

import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from defectwatch.pipeline import inference
from defectwatch.pipeline import preprocess as new
from defectwatch.pipeline.scan import read_scan
from defectwatch.service.simulation import write_simulated_scans
from tests.pipeline import reference_preprocess as old

MODEL_NM = 0.098
SIZES = (512, 1024, 2048)


def _steps(mod, z: np.ndarray, px: tuple[float, float]) -> dict[str, Callable[[], object]]:
    """The steps of ``mod`` (old or new) on one frame, each on its own precomputed input."""
    params = new.PreprocessParams()
    planed = mod.plane_correct(z)
    first = mod.flatten_lines(planed, order=params.line_order)
    flat = mod.flatten_with(z, params)
    resampled, _ = mod.resample(flat, pixel_size_nm=px, target_nm=MODEL_NM)
    unit = mod.to_unit_range(
        mod.nan_gaussian(resampled, sigma_px=1.0), percentiles=params.clip_percentiles
    )

    def mask_refit():
        out = first.copy()
        for _ in range(params.mask_passes):
            exclude = mod.strong_feature_mask(
                out, sigma=params.mask_sigma, dilate_px=params.mask_dilate_px
            )
            exclude[exclude.mean(axis=1) > 0.6] = False
            if mod is new:  # the plane and the lines refitted from one set of sums, in place
                poly = new._line_polynomials(
                    z, order=params.line_order, exclude=exclude, plane=True
                )
                new._subtract_lines(z, poly, out=out)
            else:
                out = mod.flatten_lines(
                    mod.plane_correct(z, exclude=exclude), order=params.line_order, exclude=exclude
                )
        return out

    return {
        "plane": lambda: mod.plane_correct(z),
        "line fit": lambda: mod.flatten_lines(planed, order=params.line_order),
        "mask + refit": mask_refit,
        "flatten (all)": lambda: mod.flatten_with(z, params),
        "resample": lambda: mod.resample(flat, pixel_size_nm=px, target_nm=MODEL_NM),
        "gaussian": lambda: mod.nan_gaussian(resampled, sigma_px=1.0),
        "CLAHE": lambda: mod.clahe(
            unit,
            clip_limit=params.clahe_clip_limit,
            tiles=params.clahe_tiles,
            bits=params.clahe_bits,
            max_tile_px=params.clahe_max_tile_px,
        ),
        "prepare": lambda: mod.prepare(z, pixel_size_nm=px, target_nm=MODEL_NM, params=params),
    }


def _interleaved(
    pairs: list[tuple[Callable[[], object], Callable[[], object]]], repeats: int
) -> list[tuple[float, float]]:
    times = [([], []) for _ in pairs]
    for a, b in pairs:  # warm-up
        a(), b()
    for _ in range(repeats):
        for (a, b), (ta, tb) in zip(pairs, times):
            for fn, acc in ((a, ta), (b, tb)):
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
    return [(float(np.median(ta)), float(np.median(tb))) for ta, tb in times]


def _traced_mb(fn: Callable[[], object]) -> float:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return peak


def _rss_mb(fn: Callable[[], object]) -> float:
    from benchmarks.inference import PeakRss

    with PeakRss() as mem:
        fn()
    return mem.mb


@contextmanager
def _old_preprocessing_in_inference():
    """Run `Ensemble.predict_scan` with the preprocessing from before issue 20."""
    saved = inference.flatten_with, inference.prepare_flat
    inference.flatten_with, inference.prepare_flat = old.flatten_with, old.prepare_flat
    try:
        yield
    finally:
        inference.flatten_with, inference.prepare_flat = saved


def main(repeats: int = 5) -> None:
    from defectwatch.service.detection import default_model_dir, detect_file, load_ensemble

    ensemble = load_ensemble(default_model_dir())
    print(
        f"\n## Preprocessing per step, old (before issue 20) vs new, median of {repeats} "
        "interleaved runs\n"
    )
    rows: dict[str, dict[int, tuple[float, float]]] = {}
    extra: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="defectwatch-bench-") as tmp:
        for pixels in SIZES:
            out = Path(tmp) / str(pixels)
            write_simulated_scans(
                out, n=1, size_nm=50.0 * pixels / 512, pixels=pixels, seed=2, density_per_cm2=1e12
            )
            path = next(out.glob("*.sxm"))
            scan = read_scan(path)
            px = (scan.pixel_size_x_nm, scan.pixel_size_y_nm)
            steps_old, steps_new = _steps(old, scan.data, px), _steps(new, scan.data, px)
            reps = repeats if pixels < 2048 else max(1, repeats // 2)
            result = _interleaved([(steps_old[k], steps_new[k]) for k in steps_old], reps)
            for name, pair in zip(steps_old, result):
                rows.setdefault(name, {})[pixels] = pair
            mem = {
                "traced old": _traced_mb(steps_old["prepare"]),
                "traced new": _traced_mb(steps_new["prepare"]),
                "rss old": _rss_mb(steps_old["prepare"]),
                "rss new": _rss_mb(steps_new["prepare"]),
            }

            def f2d_old():
                with _old_preprocessing_in_inference():
                    detect_file(path, ensemble=ensemble)

            def f2d_new():
                detect_file(path, ensemble=ensemble)

            ((t_old, t_new),) = _interleaved([(f2d_old, f2d_new)], 2 if pixels > 512 else 3)
            mem.update({"f2d old": t_old, "f2d new": t_new})
            extra[pixels] = mem
            print(f"{pixels} px done", file=sys.stderr, flush=True)

    head = " | ".join(f"{p} px old s | new s | x" for p in SIZES)
    print(f"| step | {head} |")
    print("|---|" + "---|---|---|" * len(SIZES))
    for name, by_size in rows.items():
        cells = []
        for p in SIZES:
            a, b = by_size[p]
            cells.append(f"{a:.4f} | {b:.4f} | {a / b:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(
        "\n| pixels | prepare old s | new s | file to defects old s | new s | "
        "prepare share old | new | traced peak MB old | new | peak extra RSS MB old | new |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for p in SIZES:
        a, b = rows["prepare"][p]
        e = extra[p]
        print(
            f"| {p} | {a:.3f} | {b:.3f} | {e['f2d old']:.2f} | {e['f2d new']:.2f} | "
            f"{a / e['f2d old']:.1%} | {b / e['f2d new']:.1%} | {e['traced old']:.0f} | "
            f"{e['traced new']:.0f} | {e['rss old']:.0f} | {e['rss new']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
