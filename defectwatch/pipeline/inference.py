"""A resident U-Net ensemble: one scan in, mean class probabilities and member spread out.

Loaded once and kept; per scan it prepares the image exactly as training did (flatten, CLAHE,
per-image [0, 1], resampled to the model's pixel size), runs every member tile by tile and
accumulates the mean and variance of the softmax probabilities in float32 (Welford), so ten
full-size maps are never held. Tiles carry ``margin_px`` of context on each side (64 px covers
the U-Net's +-61 px receptive field), cut at the frame's edges, so tiled and one-pass maps agree.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from defectwatch.domain import Defect, Scan
from defectwatch.pipeline.contrast import defect_contrast, marked
from defectwatch.pipeline.detect import find_defects
from defectwatch.pipeline.model import ModelConfig, build_member, load_version, resolve_device
from defectwatch.pipeline.preprocess import PreprocessParams, Resampling, flatten_with, prepare_flat

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """One scan through the ensemble, at the model's pixel size.

    ``image01``: (H, W) the prepared input; ``valid``: (H, W) bool, False where nothing was
    acquired; ``mean``/``spread``: (C, H, W) float32 mean probability and member standard
    deviation; ``mapping``: model pixels <-> scan pixels; ``scan_pixel_nm``: (x, y) of the scan;
    ``flat``: (ny, nx) the flattened scan at its own pixels, where each defect's contrast is
    measured (None: not measured, as for C-AFM current maps); ``report_contrast``: {kind:
    weakest contrast reported} (the version's rule, `ModelConfig.report_contrast`; None: what a
    labeller marks).
    """

    image01: np.ndarray
    valid: np.ndarray
    mean: np.ndarray
    spread: np.ndarray
    mapping: Resampling
    scan_pixel_nm: tuple[float, float]
    classes: tuple[str, ...]
    flat: np.ndarray | None = None
    report_contrast: Mapping[str, float] | None = None

    @property
    def pixel_nm(self) -> tuple[float, float]:
        """(x, y) size of one model pixel in nm."""
        (ny, nx), (my, mx) = self.mapping.shape_in, self.mapping.shape_out
        return self.scan_pixel_nm[0] * nx / mx, self.scan_pixel_nm[1] * ny / my

    def defects(
        self, *, threshold: float = 0.5, min_area_nm2: float = 0.05, marked_only: bool = True
    ) -> list[Defect]:
        """Defects with ``row, col`` in the SCAN's pixels (row 0 = top) and nm from its corner.

        Where ``flat`` is known each defect's contrast is measured, and with ``marked_only``
        only those that stand out by the version's rule are kept (``report_contrast``,
        `contrast.marked`; the shipped default: troughs at most -1.25 sigma, peaks at least +1.0).
        """
        px, py = self.pixel_nm
        min_px = max(1, int(math.ceil(min_area_nm2 / (px * py))))
        found = find_defects(
            self.mean,
            self.spread,
            pixel_size_nm=(px, py),
            threshold=threshold,
            min_area_px=min_px,
            classes=self.classes,
            valid=self.valid,
        )
        if not found:
            return []
        rows, cols = self.mapping.to_original(
            np.array([d.row for d in found]), np.array([d.col for d in found])
        )
        sx, sy = self.scan_pixel_nm
        contrast = np.full(len(found), np.nan)
        if self.flat is not None:
            contrast = defect_contrast(
                self.flat,
                pixel_size_nm=float(np.sqrt(sx * sy)),
                rows=rows,
                cols=cols,
                radius_nm=[math.sqrt(d.area_nm2 / math.pi) for d in found],
            )
        return [
            Defect(
                float(r),
                float(c),
                float((c + 0.5) * sx),
                float((r + 0.5) * sy),
                d.kind,
                d.confidence,
                d.uncertainty,
                d.area_nm2,
                float(k),
            )
            for d, r, c, k in zip(found, rows, cols, contrast)
            if not marked_only or marked(d.kind, float(k), self.report_contrast)
        ]


class Ensemble:
    """The members of one model version, on one device, in inference mode.

    ``fast``: members run in half precision where the hardware has it (fp16 autocast on CUDA;
    bf16 on CPUs with AMX / AVX512-BF16: `cpu_has_native_bf16`; probabilities within a few
    0.01 of exact mode, detections agree); on other CPUs fast mode is exact mode (the fused
    float32 forward), or ONNX Runtime float32 where that forward does not apply
    (`onnx_members`; maps equal to exact mode within ~2e-6); ``onnx_cache_dir``: where ONNX
    Runtime exports are kept (None: export at every load, ~1 s per member); ``cpu_bf16``:
    whether CPU fast mode uses bf16 (None: where `cpu_has_native_bf16`); ``cpu_onnx``: float32
    members on the CPU run in ONNX Runtime (maps within ~3e-6 of torch's; slower than the
    fused forward at every size measured; 1.5 GB resident after a 2048 px scan);
    ``cpu_fused``: members in torch on the CPU run the oneDNN forward of `fused_unet`
    (float32: the same maps to ~1e-6, 1.5x faster; bf16: as close to exact as autocast, 1.4-1.7x
    faster than it; False: the module's own forward, under autocast in fast mode);
    ``side_by_side``: members run at a time on CPU; ``tile_px``: the core size of a tile (a
    multiple of 8); ``margin_px``: context added on each side of a tile.
    """

    def __init__(
        self,
        config: ModelConfig,
        states: Sequence[dict[str, Any]],
        *,
        device: str = "auto",
        fast: bool = False,
        tile_px: int = 1024,
        margin_px: int = 64,
        side_by_side: int = 1,
        onnx_cache_dir: str | os.PathLike[str] | None = None,
        cpu_bf16: bool | None = None,
        cpu_onnx: bool = False,
        cpu_fused: bool = True,
    ):
        import torch

        if tile_px % 8 or margin_px % 8:
            raise ValueError("tile_px and margin_px must be multiples of 8")
        # members run ``side_by_side`` at a time in Python threads (torch releases the GIL);
        # on a few CPU cores this beats splitting each small convolution across threads
        self.side_by_side = max(1, int(side_by_side))
        self._pool: Any = None  # a ThreadPoolExecutor once members run side by side
        self.config = config
        self.device = resolve_device(device)
        self.fast = fast
        self.tile_px = tile_px
        self.margin_px = margin_px
        self.params = PreprocessParams.from_dict(config.preprocess)
        self.members = []
        for state in states:
            m = build_member(config.architecture)
            m.load_state_dict(state)
            # channels-last: float32 like the default layout (maps agree to ~1e-6), and about
            # twice as fast on CPU for these small convolutions (see `make bench`)
            m.to(self.device).eval()
            m.to(memory_format=torch.channels_last)
            self.members.append(m)
        self._sessions: list[Any] | None = None
        # fast mode: half precision where the hardware computes it natively (fp16 on CUDA;
        # bf16 on CPUs with AMX or AVX512-BF16, ~2x fp32 per member)
        self.fast_dtype = None
        if fast and self.device.type == "cuda":
            self.fast_dtype = torch.float16
        elif (
            fast
            and self.device.type == "cpu"
            and (cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16)
        ):
            self.fast_dtype = torch.bfloat16
        # torch on the CPU: each member's forward rewritten for oneDNN (`fused_unet`: the same
        # float32 maps to ~1e-6, 1.5x faster; bf16 fast mode in it too); a member it cannot
        # take runs as it is, under autocast in fast mode
        float32_cpu = self.device.type == "cpu" and self.fast_dtype is None
        self._forwards: list[Any] = list(self.members)
        if cpu_fused and self.device.type == "cpu" and not (float32_cpu and cpu_onnx):
            from defectwatch.pipeline.fused_unet import fuse_member

            for k, member in enumerate(self.members):
                fused = fuse_member(member)
                if fused is not None:
                    self._forwards[k] = (
                        fused if self.fast_dtype is None else fused.to(self.fast_dtype)
                    )
        # float32 members in ONNX Runtime: with ``cpu_onnx``, or in fast mode on a CPU without
        # bf16 where the fused forward does not apply (it is faster than ONNX Runtime)
        if float32_cpu and (cpu_onnx or (fast and self._fused < len(self.members))):
            from defectwatch.pipeline.onnx_members import member_session

            hashes: list[str | None] = list(config.members.values()) or [None] * len(self.members)
            threads = 1 if self.side_by_side > 1 else torch.get_num_threads()
            try:
                self._sessions = [
                    member_session(m, sha256=h, cache_dir=onnx_cache_dir, threads=threads)
                    for m, h in zip(self.members, hashes)
                ]
            except Exception as exc:  # an architecture the exporter cannot take: stay in torch
                log.warning(
                    "ONNX Runtime unavailable for %s (%s: %s); members run in torch float32",
                    config.version,
                    type(exc).__name__,
                    exc,
                )

    @classmethod
    def load(cls, directory: str | os.PathLike[str], **kwargs: Any) -> Ensemble:
        """Read a version directory (checked: see `model.load_version`) and build it."""
        config, states = load_version(directory)
        return cls(config, states, **kwargs)

    @property
    def runtime(self) -> str:
        """What runs the members, e.g. "onnxruntime float32", "torch bfloat16"."""
        if self._sessions is not None:
            return "onnxruntime float32"
        dtype = self.fast_dtype or next(self.members[0].parameters()).dtype
        fused = " (fused)" if self._fused else ""
        return f"torch {str(dtype).removeprefix('torch.')}{fused}"

    @property
    def _fused(self) -> int:
        """How many members run a `fused_unet` forward."""
        return sum(f is not m for f, m in zip(self._forwards, self.members))

    @property
    def version(self) -> str:
        return self.config.version

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.config.classes)

    @property
    def pixel_size_nm(self) -> float:
        return float(self.config.pixel_size_nm)

    def predict_image(self, image01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W) float32 prepared image -> ``(mean, spread)``, each (C, H, W) float32."""
        image01 = np.ascontiguousarray(image01, dtype=np.float32)
        if image01.ndim != 2:
            raise ValueError(f"expected one (H, W) image, got shape {image01.shape}")
        h, w = image01.shape
        c = self.config.architecture.nb_classes
        mean = np.empty((c, h, w), np.float32)
        spread = np.empty((c, h, w), np.float32)
        for (r0, r1), (c0, c1), window, core in self._tiles(image01):
            m, s = self._run_members(window)
            mean[:, r0:r1, c0:c1] = m[:, core[0], core[1]]
            spread[:, r0:r1, c0:c1] = s[:, core[0], core[1]]
        return mean, spread

    def predict_scan(self, scan: Scan) -> Prediction:
        """Prepare a scan at the model's pixel size and run the ensemble on it."""
        px = (scan.pixel_size_x_nm, scan.pixel_size_y_nm)
        flat = flatten_with(scan.data, self.params)
        image01, valid, mapping = prepare_flat(
            flat, pixel_size_nm=px, target_nm=self.pixel_size_nm, params=self.params
        )
        mean, spread = self.predict_image(image01)
        topography = scan.unit != "A"  # contrast is judged in heights, not C-AFM currents
        return Prediction(
            image01,
            valid,
            mean,
            spread,
            mapping,
            px,
            self.classes,
            flat if topography else None,  # flatten gives float32 already
            self.config.report_contrast,
        )

    def predict_batch(self, images: Any) -> tuple[Any, Any]:
        """A batch of prepared images, a torch tensor (B, H, W) (e.g. from
        `preprocess_torch.prepare_batch` on this ensemble's device) -> ``(mean, spread)``
        torch tensors (B, C, H, W) on the same device, members folded as in `predict_image`.

        One pass per member over the whole batch, no tiles (frames of model size: a large
        frame belongs in `predict_image`); members' own forwards, fp16/bf16 autocast in fast
        mode. Meant for re-scoring many same-sized scans on a GPU, where the images never
        leave the device.
        """
        import torch
        import torch.nn.functional as F

        if images.ndim != 3:
            raise ValueError(f"expected a batch (B, H, W), got shape {tuple(images.shape)}")
        _, h, w = images.shape
        x = images[:, None].to(self.device, torch.float32)
        pad_h, pad_w = (-h) % 8, (-w) % 8  # three poolings: reflect up to a multiple of 8
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        x = x.contiguous(memory_format=torch.channels_last)
        mean: torch.Tensor | None = None
        m2: torch.Tensor | None = None
        with (
            torch.inference_mode(),
            torch.autocast(
                self.device.type, dtype=self.fast_dtype, enabled=self.fast_dtype is not None
            ),
        ):
            for k, member in enumerate(self.members, start=1):
                p = torch.softmax(member(x).float(), dim=1)[..., :h, :w]
                if mean is None:
                    mean, m2 = p.clone(), torch.zeros_like(p)
                    continue
                assert m2 is not None
                delta = p - mean
                mean += delta / k
                m2 += delta * (p - mean)
        assert mean is not None and m2 is not None  # an ensemble has members
        spread = torch.sqrt(torch.clamp(m2 / len(self.members), min=0.0))
        return mean, spread

    # -- internals ----------------------------------------------------------------------------

    def _tiles(self, image: np.ndarray):
        """Yield ((r0, r1), (c0, c1), window, (row slice, col slice)): the core region in the
        image, the input window, and where the core sits in the window's output.

        A window is the core plus ``margin_px`` of context, cut at the frame's edges (where the
        network pads as it does in one pass), its bottom/right reflect-padded to a multiple of
        8. Window starts are multiples of 8, so the pooling grid stays anchored to the frame's
        top-left pixel: tiled and one-pass results agree everywhere, edges included.
        """
        h, w = image.shape
        m, t = self.margin_px, self.tile_px
        starts_r: Iterable[int]
        starts_c: Iterable[int]
        if h <= t + 2 * m and w <= t + 2 * m:
            starts_r, starts_c, t_r, t_c = [0], [0], h, w
        else:
            starts_r, starts_c, t_r, t_c = range(0, h, t), range(0, w, t), t, t
        for r0 in starts_r:
            for c0 in starts_c:
                r1, c1 = min(r0 + t_r, h), min(c0 + t_c, w)
                a, b = max(0, r0 - m), min(h, r1 + m)
                c, d = max(0, c0 - m), min(w, c1 + m)
                window = _reflect_pad(image[a:b, c:d], (0, (a - b) % 8), (0, (c - d) % 8))
                yield (r0, r1), (c0, c1), window, (slice(r0 - a, r1 - a), slice(c0 - c, c1 - c))

    def _run_members(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Welford mean and population std of the members' softmax over one window (members
        are folded in their fixed order, so the result does not depend on ``side_by_side``)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(window))[None, None].to(self.device)
        x = x.contiguous(memory_format=torch.channels_last)
        autocast = self.fast_dtype is not None

        def member_probs(forward) -> np.ndarray:
            # a fused forward casts by itself: autocast is for the members' own forwards
            enabled = autocast and isinstance(forward, torch.nn.Module)
            with (
                torch.inference_mode(),
                torch.autocast(self.device.type, dtype=self.fast_dtype, enabled=enabled),
            ):
                p = torch.softmax(forward(x).float(), dim=1)[0]
                return p.contiguous().cpu().numpy()

        def session_probs(session) -> np.ndarray:
            with torch.inference_mode():
                return torch.softmax(torch.from_numpy(run_session(session, window)), dim=0).numpy()

        probs_of: Callable[[Any], np.ndarray]
        if self._sessions is not None:
            from defectwatch.pipeline.onnx_members import run_session

            probs_of, runners = session_probs, self._sessions
        else:
            probs_of, runners = member_probs, self._forwards
        if self.side_by_side > 1 and self.device.type == "cpu":
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                # one intra-op thread per member thread (a per-thread OpenMP setting; the
                # caller's threads are untouched): two members on two cores each asking for
                # two threads cost 15-25% at 512 px
                self._pool = ThreadPoolExecutor(
                    self.side_by_side,
                    thread_name_prefix="ensemble-member",
                    initializer=torch.set_num_threads,
                    initargs=(1,),
                )
            probs = self._pool.map(probs_of, runners)
        else:
            probs = map(probs_of, runners)
        # the fold runs in numpy, on one thread: torch ops here would start a team of
        # intra-op threads competing with the member threads for the same cores
        mean: np.ndarray | None = None
        m2: np.ndarray | None = None
        for k, p in enumerate(probs, start=1):
            if mean is None:
                mean, m2 = p.copy(), np.zeros_like(p)
                continue
            delta = p - mean
            mean += delta / np.float32(k)
            delta *= p - mean
            m2 += delta
        assert mean is not None and m2 is not None  # an ensemble has members
        spread = np.sqrt(np.maximum(m2 / np.float32(len(self.members)), 0.0))
        return mean, spread


def cpu_has_native_bf16() -> bool:
    """Does this CPU compute bfloat16 in hardware (Intel AMX, AVX512-BF16; also AMD Zen 4+)?

    With AMX, these members run about twice as fast in bf16 as in float32 (measured); without
    bf16 hardware, several times slower.

    Returns
    -------
    bool
    """
    import torch

    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def _reflect_pad(a: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """Reflect padding that also works when a pad exceeds the image (repeats the reflection)."""
    while (
        rows[0] >= a.shape[0]
        or rows[1] >= a.shape[0]
        or cols[0] >= a.shape[1]
        or cols[1] >= a.shape[1]
    ):
        step_r = [min(p, a.shape[0] - 1) for p in rows]
        step_c = [min(p, a.shape[1] - 1) for p in cols]
        a = np.pad(a, (tuple(step_r), tuple(step_c)), mode="reflect")
        rows = (rows[0] - step_r[0], rows[1] - step_r[1])
        cols = (cols[0] - step_c[0], cols[1] - step_c[1])
    return np.pad(a, (rows, cols), mode="reflect")
