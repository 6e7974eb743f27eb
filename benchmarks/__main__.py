"""`python -m benchmarks`: time and peak memory per scan on this machine's CPU.

1. reading, preprocessing and simulating (peak traced numpy/Python memory in MB);
2. the ensemble: ours (exact float32, fast) against AtomAI's EnsemblePredictor + Locator on
   the shipped default's weights (see `benchmarks/inference.py`);
3. one whole scan, file to defects, with the resident ensemble (peak extra resident memory);
4. preprocessing step by step, before issue 20 against now, and its share of file to defects
   (`benchmarks/preprocess.py`; the GPU throughput is `benchmarks/gpu_throughput.py`).
Markdown tables for 512, 1024 and 2048 px frames.
"""

from __future__ import annotations

import platform
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from defectwatch.pipeline.preprocess import prepare
from defectwatch.pipeline.scan import read_scan
from defectwatch.service.simulation import write_simulated_scans


def _measure(fn, repeats: int = 3) -> tuple[float, float]:
    times = []
    peak = 0.0
    for _ in range(repeats):
        tracemalloc.start()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        peak = max(peak, tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
    return float(np.median(times)), peak


def main() -> None:
    print(
        f"# defectwatch benchmarks ({platform.processor() or platform.machine()}, "
        f"numpy {np.__version__})\n"
    )
    print("| pixels | simulate+write s | MB | read_scan s | MB | preprocess s | MB |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for pixels in (512, 1024, 2048):
            size = 50.0 * pixels / 512
            out = Path(tmp) / str(pixels)
            t_sim, m_sim = _measure(
                lambda: write_simulated_scans(
                    out, n=1, size_nm=size, pixels=pixels, seed=1, density_per_cm2=1e12
                ),
                1,
            )
            path = next(out.glob("*.sxm"))
            t_read, m_read = _measure(lambda: read_scan(path))
            scan = read_scan(path)
            t_pre, m_pre = _measure(
                lambda: prepare(
                    scan.data,
                    pixel_size_nm=(scan.pixel_size_x_nm, scan.pixel_size_y_nm),
                    target_nm=0.098,
                )
            )
            print(
                f"| {pixels} | {t_sim:.2f} | {m_sim:.0f} | {t_read:.3f} | {m_read:.0f} | "
                f"{t_pre:.2f} | {m_pre:.0f} |",
                flush=True,
            )


def end_to_end() -> None:
    """File -> defects with the shipped ensemble, exact and fast, peak extra RSS."""
    from benchmarks.inference import PeakRss
    from defectwatch.service.detection import default_model_dir, detect_file, load_ensemble

    print("\n| pixels (50 nm per 512 px) | file to defects s | peak extra MB | fast s | MB |")
    print("|---|---|---|---|---|")
    exact = load_ensemble(default_model_dir())
    fast = load_ensemble(default_model_dir(), fast=True)
    with tempfile.TemporaryDirectory() as tmp:
        for pixels in (512, 1024, 2048):
            out = Path(tmp) / str(pixels)
            write_simulated_scans(
                out, n=1, size_nm=50.0 * pixels / 512, pixels=pixels, seed=2, density_per_cm2=1e12
            )
            path = next(out.glob("*.sxm"))
            row = []
            for ens in (exact, fast):
                detect_file(path, ensemble=ens)  # warm-up
                with PeakRss() as mem:
                    t0 = time.perf_counter()
                    detect_file(path, ensemble=ens)
                    row += [time.perf_counter() - t0, mem.mb]
            print(
                f"| {pixels} | {row[0]:.2f} | {row[1]:.0f} | {row[2]:.2f} | {row[3]:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    from benchmarks import inference, preprocess
    from defectwatch.service.detection import default_model_dir

    main()
    print("\n## Ensemble inference, one image per call (ours vs AtomAI, same weights)\n")
    inference.main(default_model_dir())
    end_to_end()
    preprocess.main()
