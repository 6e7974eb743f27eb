"""Why the torch preprocessing has its own CLAHE: kornia's ``equalize_clahe`` against OpenCV's.

``python -m benchmarks.clahe_kornia`` (needs ``pip install kornia``; not a dependency): one
simulated 512 px WSe2 scan prepared up to CLAHE's input, then equalised by OpenCV (8- and
16-bit: the shipped model uses 16), by kornia (clip limits 2 and 40) and by
`preprocess_torch.clahe`; prints the differences on the [0, 1] output.
Measured (kornia 0.9.0, OpenCV 5.0.0): kornia (clip 2) vs OpenCV 16-bit mean 0.11, max 0.29;
vs OpenCV 8-bit mean 0.005, max 0.017; `preprocess_torch.clahe` vs OpenCV 16-bit: 0 levels.
"""

from __future__ import annotations

import numpy as np
import torch

from defectwatch.pipeline import preprocess as pp
from defectwatch.pipeline import preprocess_torch as tp
from defectwatch.pipeline.simulate import simulate


def main() -> None:
    try:
        import kornia
    except ImportError:
        print("clahe_kornia: kornia is not installed (pip install kornia); nothing compared")
        return
    sim = simulate(2, size_nm=50.0, pixels=512, density_per_cm2=1e12)
    flat = pp.flatten(sim.images[("Z", "forward")])
    resampled, _ = pp.resample(flat, pixel_size_nm=sim.recipe.pixel_size_nm, target_nm=0.098)
    unit = pp.to_unit_range(pp.nan_gaussian(resampled, sigma_px=1.0), percentiles=(0.1, 99.9))
    cv16, cv8 = pp.clahe(unit, bits=16), pp.clahe(unit, bits=8)
    ours = tp.clahe(torch.from_numpy(unit)[None], bits=16)[0].numpy()
    print(
        f"kornia {kornia.__version__}\n\n| CLAHE | vs OpenCV | mean abs diff | max |\n"
        "|---|---|---|---|"
    )
    print(
        f"| preprocess_torch.clahe 16 bit | 16 bit | {np.abs(ours - cv16).mean():.2g} | "
        f"{np.abs(ours - cv16).max():.2g} |"
    )
    for clip in (2.0, 40.0):
        k = kornia.enhance.equalize_clahe(
            torch.from_numpy(unit)[None, None], clip_limit=clip, grid_size=(8, 8)
        )[0, 0].numpy()
        for name, ref in (("16 bit", cv16), ("8 bit", cv8)):
            d = np.abs(k - ref)
            print(
                f"| kornia equalize_clahe, clip {clip:g} | {name} | {d.mean():.3f} | "
                f"{d.max():.3f} |"
            )


if __name__ == "__main__":
    main()
