"""Ensemble inference: ours (exact float32 and fast) against AtomAI's EnsemblePredictor + Locator.

Same weights (the shipped default ensemble), same prepared images (simulated WSe2 scans at the
model's pixel size), one image per call, this machine's CPU, the calls interleaved; ours as the
service runs it (exact mode: the fused torch float32 forward, or ONNX Runtime with
`DEFECTWATCH_CPU_ONNX=1`; fast mode: the fused forward in bf16 on CPUs that have it, else as
exact mode; see `Ensemble`), and exact mode with each member's own forward ("unfused").
Reports median seconds per image, peak extra resident memory (sampled), the largest difference
of the mean probabilities against AtomAI, and the largest difference and detection F1 (at the
version's threshold) between fast and exact mode.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable

import numpy as np
import psutil

from benchmarks.fast_agreement import agreement
from defectwatch.pipeline.inference import Ensemble
from defectwatch.pipeline.model import build_member, load_version
from defectwatch.pipeline.preprocess import prepare
from defectwatch.pipeline.simulate import simulate
from defectwatch.service.config import get_settings


class PeakRss:
    """Peak resident memory above the starting level while the block runs (sampled 200 Hz)."""

    def __enter__(self):
        self.proc = psutil.Process()
        gc.collect()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def mb(self) -> float:
        return (self.peak - self.base) / 2**20


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float, object]:
    """(median seconds, peak extra MB, last result) of ``repeats`` calls after a warm-up."""
    return timed_together([fn], repeats)[0]


def timed_together(
    fns: list[Callable[[], object]], repeats: int
) -> list[tuple[float, float, object]]:
    """`timed` for several functions, their calls interleaved (a, b, c, a, b, c...) so that a
    slow spell of the machine falls on all of them alike."""
    for fn in fns:
        fn()  # warm-up (allocators, kernels)
    times: list[list[float]] = [[] for _ in fns]
    peaks = [0.0] * len(fns)
    results: list[object] = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            with PeakRss() as mem:
                t0 = time.perf_counter()
                results[i] = fn()
                times[i].append(time.perf_counter() - t0)
            peaks[i] = max(peaks[i], mem.mb)
    return [(float(np.median(t)), p, r) for t, p, r in zip(times, peaks, results)]


def prepared_image(pixels: int, model_nm: float) -> np.ndarray:
    """A simulated WSe2 scan of ``pixels`` at the model's pixel size, prepared as inference does."""
    size_nm = pixels * model_nm
    sim = simulate(7, size_nm=size_nm, pixels=pixels, density_per_cm2=2e12)
    image01, _, _ = prepare(
        sim.images[("Z", "forward")], pixel_size_nm=(model_nm, model_nm), target_nm=model_nm
    )
    return image01


def atomai_runner(config, states) -> Callable[[np.ndarray], tuple[np.ndarray, dict]]:
    import atomai as aoi

    skeleton = build_member(config.architecture)
    ensemble = {i: s for i, s in enumerate(states)}
    nb = config.architecture.nb_classes

    def run(image01: np.ndarray):
        # a new predictor per image: EnsemblePredictor caches the first image's output shape
        p = aoi.predictors.EnsemblePredictor(skeleton, ensemble, nb_classes=nb, verbose=False)
        p.everbose = False  # AtomAI 0.8.1 forgets to set it when verbose=False
        mean, _var = p.predict(image01[None], norm=False)  # (1, H, W, C) channel last
        coords = aoi.predictors.Locator(threshold=0.5).run(mean)
        return mean[0].transpose(2, 0, 1), coords

    return run


def detection_f1(a, b, radius_nm: float = 1.0) -> float:
    """F1 between two detection lists (same kind, within ``radius_nm``)."""
    tp, only_a, only_b = agreement(a, b, radius_nm=radius_nm)
    n = 2 * tp + only_a + only_b
    return 1.0 if n == 0 else 2 * tp / n


def main(model_dir, sizes=(512, 1024, 2048), repeats: int = 3) -> list[dict]:
    from defectwatch.pipeline.inference import Prediction
    from defectwatch.pipeline.preprocess import Resampling

    config, states = load_version(model_dir)
    side = max(1, min(os.cpu_count() or 1, 4))
    # the product's settings (service.detection.load_ensemble): members side by side on CPU
    exact = Ensemble(
        config, states, device="cpu", side_by_side=side, cpu_onnx=get_settings().cpu_onnx
    )
    # exact mode with each member's own forward (`fused_unet` off), to show what fusing gains
    unfused = Ensemble(config, states, device="cpu", side_by_side=side, cpu_fused=False)
    fast = Ensemble(config, states, device="cpu", fast=True, side_by_side=side)
    atomai = atomai_runner(config, states)
    print(
        f"exact mode here: {exact.runtime}; fast mode: {fast.runtime}; "
        f"calls interleaved, median of {repeats}\n"
    )
    rows = []
    print(
        "| pixels | AtomAI s | MB | ours exact s | MB | speed-up | max abs diff | "
        "exact unfused s | ours fast s | MB | speed-up | fast vs exact max diff | "
        "F1 fast vs exact |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for px in sizes:
        image = prepared_image(px, config.pixel_size_nm)
        full = Resampling(image.shape, image.shape)

        def ours(ens):
            def run():
                mean, spread = ens.predict_image(image)
                pred = Prediction(
                    image,
                    np.ones(image.shape, bool),
                    mean,
                    spread,
                    full,
                    (config.pixel_size_nm,) * 2,
                    tuple(config.classes),
                )
                return mean, pred.defects(threshold=config.threshold_for("Z"))

            return run

        (
            (t_a, m_a, (mean_a, _)),
            (t_e, m_e, (mean_e, det_e)),
            (t_u, _, _),
            (t_f, m_f, (mean_f, det_f)),
        ) = timed_together([lambda: atomai(image), ours(exact), ours(unfused), ours(fast)], repeats)
        diff = float(np.abs(mean_e - mean_a).max())
        diff_fast = float(np.abs(mean_f - mean_e).max())
        f1 = detection_f1(det_e, det_f)
        rows.append(
            {
                "pixels": px,
                "atomai_s": t_a,
                "atomai_mb": m_a,
                "exact_s": t_e,
                "exact_mb": m_e,
                "max_abs_diff": diff,
                "unfused_s": t_u,
                "fast_s": t_f,
                "fast_mb": m_f,
                "fast_max_abs_diff": diff_fast,
                "f1_fast_vs_exact": f1,
                "defects": len(det_e),
            }
        )
        print(
            f"| {px} | {t_a:.2f} | {m_a:.0f} | {t_e:.2f} | {m_e:.0f} | {t_a / t_e:.1f}x | "
            f"{diff:.1e} | {t_u:.2f} | {t_f:.2f} | {m_f:.0f} | {t_a / t_f:.1f}x | "
            f"{diff_fast:.1e} | {f1:.3f} |",
            flush=True,
        )
    return rows
