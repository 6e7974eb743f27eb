"""File-to-defects throughput with preprocessing on the GPU (issue 20's aim: >= 300 scans/s at
512 px on one H200-class GPU).

``python -m benchmarks.gpu_throughput [--scans 512] [--batch 64] [--pixels 512]``: simulated
WSe2 scans (50 nm per 512 px) are written as .sxm files once; then, timed, the files are read
on CPU threads (prefetched), each batch of same-shaped scans goes to the GPU once
(`preprocess_torch.prepare_batch`: flatten, resample, gaussian, CLAHE), the shipped ensemble
runs on the batch there (`Ensemble.predict_batch`; fp16 autocast, its fast mode on CUDA;
``--exact``: float32), and only
the maps (and the flattened frames, for each defect's contrast) come back for defect
finding on CPU threads. Reports scans/s
for preprocessing alone, preprocessing + ensemble, and file to defects.

Without CUDA it says so and exits 0 (``--device cpu`` runs the same code on the CPU, for a
smoke test with a few scans).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from defectwatch.pipeline.inference import Prediction
from defectwatch.pipeline.preprocess_torch import prepare_batch
from defectwatch.pipeline.scan import read_scan


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--pixels", type=int, default=512)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--exact", action="store_true", help="float32 members (default: fp16)")
    ap.add_argument("--readers", type=int, default=8, help="CPU threads reading files")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_throughput: no CUDA device here; nothing measured (run it on a machine with "
            "a GPU, or pass --device cpu for a smoke test)"
        )
        return 0
    from defectwatch.pipeline.inference import Ensemble
    from defectwatch.service.detection import default_model_dir
    from defectwatch.service.simulation import write_simulated_scans

    device = torch.device(args.device)
    ensemble = Ensemble.load(default_model_dir(), device=args.device, fast=not args.exact)
    params, target = ensemble.params, ensemble.pixel_size_nm
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"# file-to-defects throughput, {name}, {args.pixels} px, batches of {args.batch}, "
        f"members {'float32' if args.exact else 'fp16'}\n"
    )
    with tempfile.TemporaryDirectory(prefix="defectwatch-gpu-") as tmp:
        # a few distinct scans, repeated: reading and the device see real files
        distinct = min(args.scans, 32)
        write_simulated_scans(
            Path(tmp),
            n=distinct,
            size_nm=50.0 * args.pixels / 512,
            pixels=args.pixels,
            seed=100,
            density_per_cm2=1e12,
        )
        files = sorted(Path(tmp).glob("*.sxm"))
        files = [files[i % len(files)] for i in range(args.scans)]
        batches = [files[i : i + args.batch] for i in range(0, len(files), args.batch)]
        readers = ThreadPoolExecutor(args.readers)
        posts = ThreadPoolExecutor(args.readers)

        def read(batch):
            scans = list(readers.map(read_scan, batch))
            px = (scans[0].pixel_size_x_nm, scans[0].pixel_size_y_nm)
            return scans, px, np.stack([s.data for s in scans])

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        # warm-up (kernels, cuDNN autotuning, the resize weights)
        scans, px, z = read(batches[0])
        image, _, _, _ = prepare_batch(
            z, pixel_size_nm=px, target_nm=target, params=params, device=device, keep_flat=True
        )
        ensemble.predict_batch(image)
        sync()
        loaded = [read(b) for b in batches]

        t0 = time.perf_counter()
        for _scans, px, z in loaded:
            prepare_batch(z, pixel_size_nm=px, target_nm=target, params=params, device=device)
        sync()
        t_pre = time.perf_counter() - t0

        t0 = time.perf_counter()
        for _scans, px, z in loaded:
            image, valid, mapping, _ = prepare_batch(
                z, pixel_size_nm=px, target_nm=target, params=params, device=device
            )
            ensemble.predict_batch(image)
        sync()
        t_inf = time.perf_counter() - t0

        def defects(image, mean, spread, valid, mapping, scan_px, flat):
            prediction = Prediction(
                image,
                valid,
                mean,
                spread,
                mapping,
                scan_px,
                ensemble.classes,
                flat,
                ensemble.config.report_contrast,
            )
            return prediction.defects(threshold=ensemble.config.threshold_for("Z"))

        found = 0
        t0 = time.perf_counter()
        pending = readers.submit(read, batches[0])
        futures = []
        for i in range(len(batches)):
            scans, px, z = pending.result()
            if i + 1 < len(batches):
                pending = readers.submit(read, batches[i + 1])
            image, valid, mapping, flat = prepare_batch(
                z, pixel_size_nm=px, target_nm=target, params=params, device=device, keep_flat=True
            )
            mean, spread = ensemble.predict_batch(image)
            host = [t.cpu().numpy() for t in (image, mean, spread, valid, flat)]
            futures += [
                posts.submit(defects, *(h[k] for h in host[:4]), mapping, px, host[4][k])
                for k in range(len(scans))
            ]
        found = sum(len(f.result()) for f in futures)
        t_all = time.perf_counter() - t0
        readers.shutdown()
        posts.shutdown()
    n = args.scans
    print("| stage | scans/s |\n|---|---|")
    print(f"| preprocessing on the device (files already read) | {n / t_pre:.1f} |")
    print(f"| preprocessing + ensemble on the device | {n / t_inf:.1f} |")
    print(f"| file to defects (read, device, defects on CPU threads) | {n / t_all:.1f} |")
    print(f"\n{found} defects in {n} scans; aim >= 300 scans/s at 512 px on an H200")
    return 0


if __name__ == "__main__":
    sys.exit(main())
