"""`python -m benchmarks`: time and peak memory of reading, preprocessing and simulating.

Prints a markdown table (seconds per scan, peak traced numpy/Python memory in MB) for 512,
1024 and 2048 px frames on this machine's CPU.
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
    print(f"# defectwatch benchmarks ({platform.processor() or platform.machine()}, "
          f"numpy {np.__version__})\n")
    print("| pixels | simulate+write s | MB | read_scan s | MB | preprocess s | MB |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for pixels in (512, 1024, 2048):
            size = 50.0 * pixels / 512
            out = Path(tmp) / str(pixels)
            t_sim, m_sim = _measure(lambda: write_simulated_scans(
                out, n=1, size_nm=size, pixels=pixels, seed=1, density_per_cm2=1e12), 1)
            path = next(out.glob("*.sxm"))
            t_read, m_read = _measure(lambda: read_scan(path))
            scan = read_scan(path)
            t_pre, m_pre = _measure(lambda: prepare(
                scan.data, pixel_size_nm=(scan.pixel_size_x_nm, scan.pixel_size_y_nm),
                target_nm=0.098))
            print(f"| {pixels} | {t_sim:.2f} | {m_sim:.0f} | {t_read:.3f} | {m_read:.0f} | "
                  f"{t_pre:.2f} | {m_pre:.0f} |", flush=True)


if __name__ == "__main__":
    main()
