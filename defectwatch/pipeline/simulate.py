"""A physical STM / C-AFM scan simulator for WSe2 and MoSe2 point defects.

Built from ``shared/reference/stm-physics.md``: a triangular Se lattice (a = 0.328 nm) sampled
through a gaussian tip and finite pixels; the 8 annotated defect classes (three-fold, aligned
with the lattice; charged ones with screened halos whose sign is charge x bias); defects placed
by a Poisson process at 1e10-1e13 cm^-2; and the artifacts of real scans (tilt, bow, line
offsets and steps, 1/f and white noise in acquisition order, drift and piezo creep, tip changes,
double tips, scars, step edges, forward/backward hysteresis, aborted scans). C-AFM mode renders
log-current contrast with line gain changes and streaks and no lattice.

Everything random is drawn from one ``numpy.random.Generator``: a seed reproduces a scan.
Lengths are nm, heights nm (written to files in m), pixel coordinates (row, col) with row 0 at
the top of the frame; ``x_nm = (col + 0.5) * pixel_size``, ``y_nm = (row + 0.5) * pixel_size``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy.signal import lfilter
from scipy.spatial import cKDTree

from defectwatch.pipeline.contrast import defect_contrast, marked
from defectwatch.pipeline.preprocess import flatten

TROUGH, PEAK = "trough", "peak"
NM2_PER_CM2 = 1e14


@dataclass(frozen=True)
class DefectClass:
    """One annotated defect class at negative bias (the paper's -1.4 V)."""

    name: str
    kind: str  # trough | peak
    diameter_nm: float  # mean apparent diameter (table); per-scan and per-defect spread applied
    height_pm: float  # mean apparent height, signed
    charged: bool  # large dim classes: screened-Coulomb halo 1-8 nm
    share: float  # base share of all defects


# class mix: base shares from the real annotation counts (367 SBT, 23 SDT, 7 LBT, 55 LBP, 7 SDP
# of 460) with some weight given to the classes the real frames happen to lack.
CLASSES: tuple[DefectClass, ...] = (
    DefectClass("small bright trough", TROUGH, 1.2, -26.0, False, 0.62),
    DefectClass("small dim trough", TROUGH, 1.9, -37.0, False, 0.07),
    DefectClass("large bright trough", TROUGH, 1.8, -336.0, False, 0.03),
    DefectClass("large dim trough", TROUGH, 2.0, -72.0, True, 0.03),
    DefectClass("small bright peak", PEAK, 1.0, 28.0, False, 0.06),
    DefectClass("small dim peak", PEAK, 2.0, 8.0, False, 0.04),
    DefectClass("large bright peak", PEAK, 2.7, 322.0, False, 0.12),
    DefectClass("large dim peak", PEAK, 2.0, 97.0, True, 0.03),
)
CLASS_BY_NAME = {c.name: c for c in CLASSES}
# adsorbates: bright blobs 1.6-2.8 nm across, packed in clusters of 2-12 that touch; the paper's
# annotators mark each blob of a cluster as a peak (e.g. the 30 nm frame 013 and the 200 nm
# frame); drawn only with ``Recipe.clusters``, outside the class mix
ADSORBATE = DefectClass("adsorbate", PEAK, 2.2, 250.0, False, 0.0)


@dataclass(frozen=True)
class Material:
    name: str
    lattice_nm: float
    step_nm: float  # monolayer step height c/2
    bias_v: float  # typical imaging bias
    corrugation_factor: tuple[float, float]  # apparent corrugation relative to WSe2 at -1.4 V


MATERIALS = {
    "wse2": Material("wse2", 0.328, 0.649, -1.4, (1.0, 1.0)),
    "mose2": Material("mose2", 0.329, 0.646, -1.9, (0.5, 0.8)),
}
MODES = ("stm", "cafm")


@dataclass(frozen=True)
class TruthDefect:
    """One simulated defect as the ground truth CSV lists it."""

    row: float
    col: float
    x_nm: float
    y_nm: float
    kind: str
    subtype: str
    visible: bool
    contrast: float = math.nan  # in the flattened image (`contrast.defect_contrast`); NaN: unknown


@dataclass
class Recipe:
    """Every drawn parameter of one simulated scan (stored beside it for reproducibility)."""

    material: str
    mode: str
    width_nm: float
    height_nm: float
    nx: int
    ny: int
    density_per_cm2: float
    seed: int
    scan_dir: str = "down"
    bias_v: float = -1.4
    setpoint_a: float = 60e-12
    angle_deg: float = 0.0
    lattice_angle_rad: float = 0.0
    corrugation_nm: float = 0.015
    tip_sigma_nm: float = 0.1
    size_scale: float = 1.5  # apparent trough size relative to the table
    peak_size_scale: float = 1.0  # apparent peak size relative to the table
    peak_strength: float = 0.3  # peak heights relative to the table (real peaks are faint)
    trough_strength: float = 1.0
    class_mix: dict[str, float] = field(default_factory=dict)
    tilt_deg: float = 0.0
    tilt_dir_rad: float = 0.0
    bow_nm: float = 0.0
    line_offset_nm: float = 0.005
    line_step_rate: float = 0.0
    pink_nm: float = 0.004
    pink_exponent: float = 1.0
    white_nm: float = 0.002
    streak_nm: float = 0.0  # feedback/tip noise correlated along the fast axis (streaks)
    streak_length_px: float = 20.0
    drift_nm: tuple[float, float] = (0.0, 0.0)
    creep_nm: float = 0.0
    creep_tau: float = 0.05
    tip_changes: list[dict[str, float]] = field(default_factory=list)
    double_tip: dict[str, float] | None = None
    scar_rate: float = 0.0
    step_edge: dict[str, float] | None = None
    hysteresis_nm: float = 0.05
    abort_fraction: float = 1.0  # share of lines acquired before the scan was stopped
    gain_sigma: float = 0.0  # C-AFM: line gain changes
    clusters: list[dict[str, float]] = field(default_factory=list)  # adsorbate clusters
    # the broadened families drawn for this scan (`BROAD_FAMILIES`, `simulate(broad=...)`):
    # {family: its parameters}; empty: the scan as the simulator drew it before them
    broad: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def pixel_size_nm(self) -> tuple[float, float]:
        return self.width_nm / self.nx, self.height_nm / self.ny


@dataclass
class SimulatedScan:
    """Images as displayed (row 0 = top), heights in m, currents in A, plus the truth."""

    recipe: Recipe
    images: dict[tuple[str, str], np.ndarray]  # (channel, direction) -> (ny, nx) float32
    truth: list[TruthDefect]

    @property
    def analysis_channel(self) -> str:
        return "Current" if self.recipe.mode == "cafm" else "Z"


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def draw_recipe(
    rng: np.random.Generator,
    *,
    material: str = "wse2",
    mode: str = "stm",
    size_nm: float = 50.0,
    pixels: int = 512,
    density_per_cm2: float | None = None,
    seed: int = 0,
    artifacts: bool = True,
) -> Recipe:
    """Draw one scan's parameters: wide ranges, so a model does not learn one setting."""
    if material not in MATERIALS:
        raise ValueError(f"material {material!r} is not one of {sorted(MATERIALS)}")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {MODES}")
    mat = MATERIALS[material]
    density = density_per_cm2 if density_per_cm2 is not None else _log_uniform(rng, 1e10, 1e13)
    base = np.array([c.share for c in CLASSES])
    if mode == "cafm":  # the real C-AFM frame shows about three bright spots per dark blob
        base = base * np.array([3.0 if c.kind == PEAK else 1.0 for c in CLASSES])
        base = base / base.sum()
    mix = rng.dirichlet(base * 60.0)
    bias = mat.bias_v * (-1.0 if rng.random() < 0.12 else 1.0) * rng.uniform(0.85, 1.15)
    r = Recipe(
        material=material,
        mode=mode,
        width_nm=size_nm,
        height_nm=size_nm,
        nx=pixels,
        ny=pixels,
        density_per_cm2=density,
        seed=seed,
    )
    r.scan_dir = "up" if rng.random() < 0.5 else "down"
    r.bias_v = round(bias, 3)
    r.setpoint_a = float(rng.choice([20e-12, 60e-12, 100e-12, 200e-12]))
    r.angle_deg = float(rng.choice([0.0, 0.0, 0.0, rng.uniform(-180, 180)]))
    r.lattice_angle_rad = float(rng.uniform(0, math.pi / 3))
    r.corrugation_nm = _log_uniform(rng, 0.005, 0.030) * rng.uniform(*mat.corrugation_factor)
    # most tips resolve the lattice (the real 0.049-0.059 nm/px frames show it crisply);
    # the blunt end of the range blurs it away while defects stay visible
    r.tip_sigma_nm = _log_uniform(rng, 0.02, 0.14)
    r.size_scale = float(rng.uniform(1.0, 2.2))
    # peaks keep near the table's sizes: the paper's labelled real peaks are about 2.2 nm
    # across at half contrast (troughs 2.4 nm, `size_scale` 1.6 on their table); peaks drawn
    # with `size_scale` measured 3.2 nm
    r.peak_size_scale = float(rng.uniform(0.5, 1.1))
    r.peak_strength = _log_uniform(rng, 0.08, 1.0)
    r.trough_strength = float(rng.uniform(0.8, 2.0))
    r.class_mix = {c.name: float(m) for c, m in zip(CLASSES, mix)}
    r.hysteresis_nm = float(rng.uniform(0.02, 0.15)) * r.size_scale
    if artifacts:
        r.tilt_deg = _log_uniform(rng, 0.05, 5.0) if rng.random() < 0.95 else rng.uniform(5, 10)
        r.tilt_dir_rad = float(rng.uniform(0, 2 * math.pi))
        r.bow_nm = float(rng.uniform(0.0, 1.0))
        r.line_offset_nm = _log_uniform(rng, 0.002, 0.020)
        r.line_step_rate = float(rng.uniform(0.0, 0.01))
        r.pink_nm = _log_uniform(rng, 0.002, 0.010)
        r.pink_exponent = float(rng.uniform(0.8, 1.2))
        r.white_nm = _log_uniform(rng, 0.001, 0.005)
        r.streak_nm = _log_uniform(rng, 0.001, 0.012)
        r.streak_length_px = _log_uniform(rng, 5.0, 80.0)
        r.drift_nm = (
            float(rng.uniform(-0.05, 0.05) * size_nm),
            float(rng.uniform(-0.05, 0.05) * size_nm),
        )
        r.creep_nm = float(rng.uniform(0, 0.04) * size_nm) if rng.random() < 0.6 else 0.0
        r.creep_tau = float(rng.uniform(0.03, 0.10))
        n_tip = int(rng.choice([0, 0, 1, 1, 2], p=[0.35, 0.2, 0.2, 0.15, 0.1]))
        r.tip_changes = sorted(
            (
                {
                    "t": float(rng.uniform(0.05, 0.95)),
                    "step_nm": float(rng.choice([-1, 1]) * _log_uniform(rng, 0.010, 0.200)),
                    "contrast": _log_uniform(rng, 0.5, 2.0),
                }
                for _ in range(n_tip)
            ),
            key=lambda d: d["t"],
        )
        if rng.random() < 0.08:
            ang = rng.uniform(0, 2 * math.pi)
            dist = rng.uniform(0.5, 5.0)
            r.double_tip = {
                "dx_nm": dist * math.cos(ang),
                "dy_nm": dist * math.sin(ang),
                "weight": float(rng.uniform(0.2, 0.8)),
            }
        r.scar_rate = float(rng.uniform(0.001, 0.01)) if rng.random() < 0.7 else 0.0
        if rng.random() < 0.15 and mode == "stm":
            r.step_edge = {
                "angle_rad": float(rng.uniform(0, math.pi)),
                "offset": float(rng.uniform(-0.35, 0.35)),
                "curvature": float(rng.uniform(-0.3, 0.3)),
                "sign": float(rng.choice([-1, 1])),
            }
        r.abort_fraction = float(rng.uniform(0.3, 0.95)) if rng.random() < 0.04 else 1.0
    else:
        r.line_offset_nm = 0.0
        r.pink_nm = 0.0
        r.white_nm = 0.001
        r.hysteresis_nm = 0.0
    if mode == "cafm":
        r.gain_sigma = float(rng.uniform(0.10, 0.30)) if artifacts else 0.0
    return r


# -- geometry ---------------------------------------------------------------------------------


class _Geometry:
    """Pixel (row, col) <-> surface position (nm), with drift, creep and hysteresis."""

    def __init__(self, r: Recipe, *, backward: bool = False):
        self.r = r
        self.px, self.py = r.pixel_size_nm
        self.shift = -r.hysteresis_nm if backward else 0.0

    def time(self, row: np.ndarray) -> np.ndarray:
        """Fraction of the frame time at which a row was scanned (acquisition order)."""
        t = (np.asarray(row, dtype=float) + 0.5) / self.r.ny
        return 1.0 - t if self.r.scan_dir == "up" else t

    def _dx(self, t: np.ndarray) -> np.ndarray:
        dx = self.r.drift_nm[0] * t + self.r.creep_nm * np.exp(-t / self.r.creep_tau) + self.shift
        wobble = self.r.broad.get("drift") if self.r.broad else None
        if wobble:  # a slow oscillation of the fast axis (broadened drift family)
            dx = dx + wobble["wobble_nm"] * np.sin(2 * math.pi * wobble["wobble_cycles"] * t)
        return dx

    def surface(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = self.time(rows)
        xs = (cols + 0.5) * self.px + self._dx(t)
        ys = (rows + 0.5) * self.py + self.r.drift_nm[1] * t
        return xs, ys

    def pixel(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of `surface` by fixed-point iteration (the distortion is smooth and small)."""
        xs = np.asarray(xs, dtype=float)
        ys = np.asarray(ys, dtype=float)
        rows = ys / self.py - 0.5
        for _ in range(8):
            rows = (ys - self.r.drift_nm[1] * self.time(rows)) / self.py - 0.5
        cols = (xs - self._dx(self.time(rows))) / self.px - 0.5
        return rows, cols


# -- the surface ------------------------------------------------------------------------------


@dataclass
class _Defect:
    x: float
    y: float
    cls: DefectClass
    kind: str
    amp_nm: float  # core amplitude, signed
    radius_nm: float  # core radius (about half the apparent diameter)
    lobes: float  # three-fold modulation 0..0.4
    halo_nm: float  # charged halo decay length (0 = none)
    halo_amp_nm: float
    lattice_gain: float  # local lattice brightening for peaks (0 = none)
    ring_amp_nm: float = 0.0  # "sombrero": a rim of the other sign at ~1.3 radii (0 = none)
    aspect: float = 1.0  # elongation along the lattice direction (1 = none)


def _lattice_vectors(r: Recipe) -> tuple[np.ndarray, np.ndarray]:
    a = MATERIALS[r.material].lattice_nm
    th = r.lattice_angle_rad
    a1 = a * np.array([math.cos(th), math.sin(th)])
    a2 = a * np.array([math.cos(th + math.pi / 3), math.sin(th + math.pi / 3)])
    return a1, a2


def _draw_defects(rng: np.random.Generator, r: Recipe) -> list[_Defect]:
    # margin: defects just outside the frame still show their edges
    margin = 3.0
    area_nm2 = (r.width_nm + 2 * margin) * (r.height_nm + 2 * margin)
    n = rng.poisson(r.density_per_cm2 * area_nm2 / NM2_PER_CM2)
    names = list(r.class_mix)
    probs = np.array([r.class_mix[k] for k in names])
    picks = rng.choice(len(names), size=n, p=probs / probs.sum())
    a1, a2 = _lattice_vectors(r)
    basis = np.stack([a1, a2], axis=1)
    out: list[_Defect] = []
    flip = r.bias_v > 0  # charge x bias: halos flip sign at positive bias
    for k in picks:
        cls = CLASS_BY_NAME[names[k]]
        p = np.array(
            [rng.uniform(-margin, r.width_nm + margin), rng.uniform(-margin, r.height_nm + margin)]
        )
        # snap to a Se site (or the metal sublattice) of the lattice
        n12 = np.rint(np.linalg.solve(basis, p))
        sub = rng.choice([0.0, 1.0 / 3.0])
        x, y = basis @ (n12 + sub)
        scale = r.peak_size_scale if cls.kind == PEAK else r.size_scale
        size = cls.diameter_nm * scale * float(rng.lognormal(0.0, 0.2))
        lobes = float(rng.uniform(0.05, 0.3))
        if r.mode == "cafm":  # C-AFM: bright spots 1.5-3 nm, diffuse dark blobs 3-6 nm
            size = float(rng.uniform(1.5, 3.0) if cls.kind == PEAK else rng.uniform(3.0, 6.0))
            lobes = float(rng.uniform(0.1, 0.3) if cls.kind == PEAK else rng.uniform(0.0, 0.1))
        strength = r.peak_strength if cls.kind == PEAK else r.trough_strength
        amp = cls.height_pm * 1e-3 * strength * float(rng.lognormal(0.0, 0.25))
        if cls.kind == PEAK and "large bright" not in cls.name:
            amp = max(amp, 0.4 * cls.height_pm * 1e-3 * float(rng.lognormal(0.0, 0.25)))
        if r.mode == "cafm":  # in nm-equivalent of log-current contrast (x 3-8 decades/nm)
            amp = math.copysign(_log_uniform(rng, 0.03, 0.15), cls.height_pm)
        kind = cls.kind
        halo, halo_amp = 0.0, 0.0
        if cls.charged:
            halo = float(rng.uniform(1.0, 8.0))
            halo_amp = 0.45 * amp
            amp = 0.55 * amp
            if flip:
                amp, halo_amp = -amp, -halo_amp
                kind = PEAK if kind == TROUGH else TROUGH
        gain = float(rng.uniform(0.5, 1.5)) if kind == PEAK and not cls.charged else 0.0
        out.append(
            _Defect(float(x), float(y), cls, kind, amp, size / 2.0, lobes, halo, halo_amp, gain)
        )
    return out + _cluster_blobs(r)


def _draw_clusters(rng: np.random.Generator, r: Recipe) -> list[dict[str, float]]:
    """Adsorbate clusters of one scan: 0.5-4 per 2500 nm^2, each 2-12 blobs."""
    n = rng.poisson(r.width_nm * r.height_nm * _log_uniform(rng, 2e-4, 1.6e-3))
    return [
        {
            "x": float(rng.uniform(0, r.width_nm)),
            "y": float(rng.uniform(0, r.height_nm)),
            "blobs": int(rng.integers(2, 13)),
            "diameter_nm": float(rng.uniform(1.6, 2.8)),
            "height_nm": float(_log_uniform(rng, 0.08, 0.35)),
            "seed": int(rng.integers(2**31)),
        }
        for _ in range(n)
    ]


def _cluster_blobs(r: Recipe) -> list[_Defect]:
    """The blobs of ``r.clusters``: each new blob touches one already placed (centres 0.95-1.35
    diameters apart) and overlaps none (no two closer than 0.9 diameters)."""
    out: list[_Defect] = []
    for c in r.clusters:
        rng = np.random.default_rng(int(c["seed"]))
        d0 = c["diameter_nm"]
        blobs = int(c["blobs"])
        xy = [np.array([c["x"], c["y"]])]
        for _ in range(60 * blobs):
            if len(xy) >= blobs:
                break
            ang = rng.uniform(0, 2 * math.pi)
            p = xy[rng.integers(len(xy))] + d0 * rng.uniform(0.95, 1.35) * np.array(
                [math.cos(ang), math.sin(ang)]
            )
            if min(math.dist(p, q) for q in xy) >= 0.9 * d0:
                xy.append(p)
        for x, y in xy:
            size = d0 * float(rng.lognormal(0.0, 0.12))
            amp = c["height_nm"] * float(rng.lognormal(0.0, 0.2))
            out.append(
                _Defect(
                    float(x),
                    float(y),
                    ADSORBATE,
                    PEAK,
                    amp,
                    size / 2.0,
                    float(rng.uniform(0.0, 0.1)),
                    0.0,
                    0.0,
                    0.0,
                )
            )
    return out


def _defect_field(
    dx: np.ndarray, dy: np.ndarray, d: _Defect, theta0: float, tip_sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """(height nm, lattice gain) of one defect at offsets (dx, dy) nm from its centre."""
    if d.aspect != 1.0:  # elongated along the lattice direction theta0
        c, s_ = math.cos(theta0), math.sin(theta0)
        u = (dx * c + dy * s_) / math.sqrt(d.aspect)
        v = (-dx * s_ + dy * c) * math.sqrt(d.aspect)
        dx, dy = u * c - v * s_, u * s_ + v * c
    rho2 = dx * dx + dy * dy
    ang = np.arctan2(dy, dx)
    # three-fold: the radius swells along three directions aligned with the lattice
    radius = d.radius_nm * (1.0 + d.lobes * np.cos(3.0 * (ang - theta0)))
    s2 = (radius * 0.6) ** 2 + tip_sigma**2
    core = np.exp(-rho2 / (2.0 * s2))
    height = d.amp_nm * core
    if d.halo_nm > 0:
        rho = np.sqrt(rho2) + 0.3
        height = height + d.halo_amp_nm * np.exp(-rho / d.halo_nm) * 0.3 / np.sqrt(
            rho / d.halo_nm + 0.09
        )
    if d.ring_amp_nm:
        rim = 1.3 * d.radius_nm + tip_sigma
        width = 0.35 * d.radius_nm + tip_sigma
        height = height + d.ring_amp_nm * np.exp(-((np.sqrt(rho2) - rim) ** 2) / (2.0 * width**2))
    gain = d.lattice_gain * np.exp(-rho2 / (2.0 * (d.radius_nm * 0.9) ** 2))
    return height, gain


def _reach_nm(d: _Defect) -> float:
    reach = 4.0 * d.radius_nm * 1.4 * max(d.aspect, 1.0) + 0.5
    if d.halo_nm > 0:
        reach = max(reach, 5.0 * d.halo_nm)
    return reach


def _render_surface(
    r: Recipe, geo: _Geometry, defects: list[_Defect], shift: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """Topography (nm), as seen through one tip apex at ``shift`` (nm)."""
    ny, nx = r.ny, r.nx
    rows, cols = np.mgrid[0:ny, 0:nx].astype(np.float64)
    xs, ys = geo.surface(rows, cols)
    xs = xs + shift[0]
    ys = ys + shift[1]
    defects_h = np.zeros((ny, nx))
    gain = np.zeros((ny, nx))
    theta0 = r.lattice_angle_rad
    px = geo.px
    centre_rows, centre_cols = geo.pixel(
        np.array([d.x - shift[0] for d in defects]), np.array([d.y - shift[1] for d in defects])
    )
    for d, cr, cc in zip(defects, centre_rows, centre_cols):
        reach = _reach_nm(d)
        rr = int(round(reach / geo.py)) + 2
        rc = int(round(reach / px)) + 2
        r0, r1 = max(int(cr) - rr, 0), min(int(cr) + rr + 1, ny)
        c0, c1 = max(int(cc) - rc, 0), min(int(cc) + rc + 1, nx)
        if r0 >= r1 or c0 >= c1:
            continue
        h, g = _defect_field(
            xs[r0:r1, c0:c1] - d.x, ys[r0:r1, c0:c1] - d.y, d, theta0, r.tip_sigma_nm
        )
        defects_h[r0:r1, c0:c1] += h
        gain[r0:r1, c0:c1] += g
    if r.mode == "cafm":
        return defects_h
    topo = defects_h + _lattice(r, xs, ys, px) * (1.0 + gain)
    if r.step_edge:
        topo += _step(r, xs, ys)
    return topo


def _lattice(r: Recipe, xs: np.ndarray, ys: np.ndarray, px: float) -> np.ndarray:
    """Se atoms as maxima: sum of three cosines, attenuated by tip and pixel (nm)."""
    a1, a2 = _lattice_vectors(r)
    # reciprocal vectors for a triangular lattice
    area = a1[0] * a2[1] - a1[1] * a2[0]
    b1 = 2 * math.pi * np.array([a2[1], -a2[0]]) / area
    b2 = 2 * math.pi * np.array([-a1[1], a1[0]]) / area
    out = np.zeros_like(xs)
    for g in (b1, b2, -(b1 + b2)):
        k = float(np.hypot(*g))
        tip = math.exp(-0.5 * (k * r.tip_sigma_nm) ** 2)
        pixel = abs(np.sinc(g[0] * px / (2 * math.pi)))  # averaging over the pixel dwell
        out += tip * pixel * np.cos(g[0] * xs + g[1] * ys)
    return r.corrugation_nm * out / 3.0


def _step(r: Recipe, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    se = r.step_edge or {}
    mat = MATERIALS[r.material]
    th = se["angle_rad"]
    u = (xs - r.width_nm / 2) * math.cos(th) + (ys - r.height_nm / 2) * math.sin(th)
    v = -(xs - r.width_nm / 2) * math.sin(th) + (ys - r.height_nm / 2) * math.cos(th)
    edge = se["offset"] * r.width_nm + se["curvature"] * v**2 / r.width_nm
    dist = u - edge
    return se["sign"] * mat.step_nm * 0.5 * (1 + np.tanh(dist / max(r.tip_sigma_nm * 3, 0.2)))


def _step_distance(r: Recipe, x: float, y: float) -> float:
    se = r.step_edge
    if not se:
        return math.inf
    th = se["angle_rad"]
    u = (x - r.width_nm / 2) * math.cos(th) + (y - r.height_nm / 2) * math.sin(th)
    v = -(x - r.width_nm / 2) * math.sin(th) + (y - r.height_nm / 2) * math.cos(th)
    return abs(u - (se["offset"] * r.width_nm + se["curvature"] * v**2 / r.width_nm))


# -- artifacts --------------------------------------------------------------------------------


def _pink_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Unit-variance noise with a 1/f^exponent power spectrum."""
    spec = rng.normal(size=n // 2 + 1) + 1j * rng.normal(size=n // 2 + 1)
    f = np.fft.rfftfreq(n)
    f[0] = f[1]
    spec *= f ** (-exponent / 2.0)
    spec[0] = 0
    x = np.fft.irfft(spec, n)
    return x / (x.std() + 1e-12)


def _tip_state(r: Recipe, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per display row: cumulative tip-change height offset (nm) and contrast factor."""
    offset = np.zeros_like(t)
    contrast = np.ones_like(t)
    for tc in r.tip_changes:
        after = t >= tc["t"]
        offset[after] += tc["step_nm"]
        contrast[after] *= tc["contrast"]
    return offset, contrast


def simulate_scan(rng: np.random.Generator, recipe: Recipe) -> SimulatedScan:
    """Render one scan (Z and Current, forward and backward) and its ground truth."""
    r = recipe
    defects = _draw_defects(rng, r)
    brng = np.random.default_rng(r.broad["seed"]) if r.broad else None
    if brng is not None:
        defects = _broaden_defects(brng, r, defects)
    ny, nx = r.ny, r.nx
    px, py = r.pixel_size_nm
    rows = np.arange(ny, dtype=float)

    # background shared by both directions (nm)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    xn = (xx + 0.5) * px
    yn = (yy + 0.5) * py
    slope = math.tan(math.radians(r.tilt_deg))
    background = slope * (xn * math.cos(r.tilt_dir_rad) + yn * math.sin(r.tilt_dir_rad))
    half = max(r.width_nm, r.height_nm) / 2
    background += r.bow_nm * (((xn - r.width_nm / 2) ** 2 + (yn - r.height_nm / 2) ** 2) / half**2)
    background += rng.uniform(-50, 50)  # absolute piezo position

    geo_f = _Geometry(r)
    t = geo_f.time(rows)
    line_off = rng.normal(0, r.line_offset_nm, ny)
    if r.line_step_rate > 0:
        jumps = rng.random(ny) < r.line_step_rate
        line_off += np.cumsum(jumps * rng.choice([-1, 1], ny) * rng.uniform(0.01, 0.1, ny))
    tip_offset, tip_contrast = _tip_state(r, t)

    images: dict[tuple[str, str], np.ndarray] = {}
    topo_for_current: dict[str, np.ndarray] = {}
    pink = _pink_noise(rng, 2 * nx * ny, r.pink_exponent) * r.pink_nm if r.pink_nm else None
    for k, direction in enumerate(("forward", "backward")):
        geo = _Geometry(r, backward=direction == "backward")
        topo = _render_surface(r, geo, defects)
        if r.double_tip:
            dt = r.double_tip
            ghost = _render_surface(r, geo, defects, (dt["dx_nm"], dt["dy_nm"]))
            w = dt["weight"]
            topo = (1 - w) * topo + w * ghost
        if brng is not None:
            topo = _broaden_surface(r, geo, defects, topo)
        signal = topo * tip_contrast[:, None]
        z = background + signal + tip_offset[:, None] + line_off[:, None]
        if pink is not None:
            # acquisition order: line i forward then backward; rows in time order
            seq = pink.reshape(ny, 2, nx)[:, k, :]
            if direction == "backward":
                seq = seq[:, ::-1]
            order = np.argsort(np.argsort(t))  # display row -> time rank
            z += seq[order]
        z += rng.normal(0, r.white_nm, (ny, nx))
        if r.streak_nm > 0:
            z += _streaks(rng, r, direction)
        if r.scar_rate > 0:
            _add_scars(rng, r, z)
        if brng is not None:
            z = _broaden_noise(brng, r, z, t, direction)
        topo_for_current[direction] = signal
        images[("Z", direction)] = z

    if r.mode == "cafm":
        images = _cafm_channels(rng, r, images, topo_for_current)
    else:
        for direction in ("forward", "backward"):
            images[("Current", direction)] = _error_current(
                rng, r, images[("Z", direction)], direction
            )

    acquired_lines = _acquired_rows(r, t)
    for key, img in images.items():
        img = img.astype(np.float64)
        if "quantised" in r.broad and key[0] == "Z":
            img = _quantise(img, r.broad["quantised"])
        img[~acquired_lines] = np.nan
        images[key] = (img * (1e-9 if key[0] == "Z" else 1.0)).astype(np.float32)

    # STM: judged in the flattened forward Z as a labeller sees it (C-AFM spots are strong)
    judged = flatten(images[("Z", "forward")].astype(np.float64)) if r.mode == "stm" else None
    truth = _truth(r, defects, geo_f, acquired_lines, judged)
    return SimulatedScan(r, images, truth)


def _streaks(rng: np.random.Generator, r: Recipe, direction: str) -> np.ndarray:
    """Noise correlated along each line (AR(1), correlation length in px): the streaky look
    of real frames, from tip and feedback instability."""
    rho = math.exp(-1.0 / r.streak_length_px)
    drive = rng.normal(0, r.streak_nm * math.sqrt(1 - rho**2), (r.ny, r.nx))
    drive[:, 0] = rng.normal(0, r.streak_nm, r.ny)
    out = lfilter([1.0], [1.0, -rho], drive, axis=1)
    # bursts: some lines are much noisier than others
    out *= rng.lognormal(0.0, 0.5, (r.ny, 1))
    return out[:, ::-1] if direction == "backward" else out


def _add_scars(rng: np.random.Generator, r: Recipe, z: np.ndarray) -> None:
    n = rng.binomial(r.ny, r.scar_rate)
    for _ in range(n):
        row = rng.integers(r.ny)
        length = int(rng.integers(5, 51))
        c0 = int(rng.integers(0, max(r.nx - length, 1)))
        z[row, c0 : c0 + length] += rng.choice([-1, 1]) * _log_uniform(rng, 0.05, 0.3)


def _error_current(
    rng: np.random.Generator, r: Recipe, z_nm: np.ndarray, direction: str
) -> np.ndarray:
    """Constant-current STM: the Current channel is the feedback error, ~ d(height)/d(fast)."""
    sign = 1.0 if direction == "forward" else -1.0
    grad = np.gradient(np.nan_to_num(z_nm), axis=1) / r.pixel_size_nm[0]
    err = np.clip(sign * grad * 0.5, -0.9, 0.9)
    noise = rng.normal(0, 0.02, z_nm.shape)
    return abs(r.setpoint_a) * (1.0 + err + noise)


def _cafm_channels(rng: np.random.Generator, r: Recipe, images: dict, signal: dict) -> dict:
    """C-AFM: Current carries log-current contrast, Z is a flat contact topography."""
    out: dict[tuple[str, str], np.ndarray] = {}
    base_log = math.log10(abs(r.setpoint_a) * rng.uniform(1, 50))
    ny = r.ny
    gain = np.exp(rng.normal(0, r.gain_sigma, ny)) if r.gain_sigma else np.ones(ny)
    streak_rows = rng.random(ny) < 0.02
    gain[streak_rows] *= rng.uniform(0.4, 2.5, streak_rows.sum())
    decades = rng.uniform(3.0, 8.0)  # decades of current per nm of apparent "height"
    for direction in ("forward", "backward"):
        z = images[("Z", direction)]
        log_i = base_log + decades * signal[direction]
        log_i += rng.normal(0, 0.04, log_i.shape)
        # streaks: noise correlated along lines and short bright/dark line segments
        streaky = replace(
            r, streak_nm=float(rng.uniform(0.02, 0.08)), streak_length_px=float(rng.uniform(5, 40))
        )
        log_i += _streaks(rng, streaky, direction)
        _add_scars(rng, replace(r, scar_rate=float(rng.uniform(0.01, 0.04))), log_i)
        current = 10.0**log_i * gain[:, None]
        out[("Z", direction)] = z - signal[direction] * 0.9  # contact mode: little topography
        out[("Current", direction)] = current
    return out


def _acquired_rows(r: Recipe, t: np.ndarray) -> np.ndarray:
    return t <= r.abort_fraction


def _truth(
    r: Recipe,
    defects: list[_Defect],
    geo: _Geometry,
    acquired: np.ndarray,
    flat: np.ndarray | None = None,
) -> list[TruthDefect]:
    """Every defect inside the frame; ``visible`` when a labeller would mark it: it stands out
    of the noise, is not merged with or swamped by a neighbour, lies in an acquired line off a
    step edge, and (given the flattened image ``flat``) shows the contrast labellers mark
    (`contrast.marked`)."""
    px, py = r.pixel_size_nm
    if not defects:
        return []
    xs = np.array([d.x for d in defects])
    ys = np.array([d.y for d in defects])
    rows, cols = geo.pixel(xs, ys)
    inside = (rows >= -0.5) & (rows < r.ny - 0.5) & (cols >= -0.5) & (cols < r.nx - 0.5)
    contrast = np.full(len(defects), np.nan)
    if flat is not None:  # judged only for the defects inside the frame
        contrast[inside] = defect_contrast(
            flat,
            pixel_size_nm=float(np.sqrt(px * py)),
            rows=rows[inside],
            cols=cols[inside],
            radius_nm=[d.radius_nm for d, keep in zip(defects, inside) if keep],
        )
    # a defect is visible when its amplitude beats the noise averaged over its area:
    # white noise and lattice average out over the pixels it covers, streaks and 1/f much less
    pixel_noise2 = r.white_nm**2 + (0.5 * r.corrugation_nm) ** 2
    slow_noise2 = (0.5 * r.streak_nm) ** 2 + (0.3 * r.pink_nm) ** 2 + (0.3 * r.line_offset_nm) ** 2
    hidden = _hidden_by_neighbours(r, defects, inside)
    out = []
    for i, (d, row, col) in enumerate(zip(defects, rows, cols)):
        if not inside[i]:
            continue
        diameter_px = 2 * d.radius_nm / max(px, py)
        n_px = max(1.0, math.pi * (d.radius_nm * 0.6) ** 2 / (px * py))
        noise = math.sqrt(pixel_noise2 / n_px + slow_noise2)
        strong = abs(d.amp_nm) + abs(d.halo_amp_nm) * 0.3 >= 2.0 * noise
        visible = bool(
            acquired[int(round(row))]
            and strong
            and diameter_px >= 2.5
            and not hidden[i]
            and marked(d.kind, float(contrast[i]))
            and _step_distance(r, d.x, d.y) > 0.5 + d.radius_nm
        )
        out.append(
            TruthDefect(
                float(row),
                float(col),
                float((col + 0.5) * px),
                float((row + 0.5) * py),
                d.kind,
                d.cls.name,
                visible,
                float(contrast[i]),
            )
        )
    return out


def _core_sigma_nm(d: _Defect, tip_sigma_nm: float) -> float:
    return math.sqrt((0.6 * d.radius_nm) ** 2 + tip_sigma_nm**2)


def _hidden_by_neighbours(r: Recipe, defects: list[_Defect], inside: np.ndarray) -> np.ndarray:
    """True for defects no annotator could mark because of their neighbours.

    - merged: a neighbour of the same kind at least as strong sits closer than the two core
      widths together (sigma_i + sigma_j: two gaussians no longer give two maxima), so the
      pair renders as one blob; the stronger one carries the label;
    - swamped: the neighbours' summed field varies across this defect's footprint (a circle of
      1.5 core sigma) by more than 1.5x its own amplitude, e.g. a small trough on the flank of
      a large bright peak.
    """
    n = len(defects)
    hidden = np.zeros(n, dtype=bool)
    if n < 2:
        return hidden
    xy = np.array([[d.x, d.y] for d in defects])
    sigma = np.array([_core_sigma_nm(d, r.tip_sigma_nm) for d in defects])
    # a core's field is negligible beyond 4 sigma (broad halos barely vary across a core)
    reach = 4.0 * sigma * (1.0 + np.array([d.lobes for d in defects]))
    tree = cKDTree(xy)
    theta0 = r.lattice_angle_rad
    ang = np.linspace(0.0, 2 * math.pi, 8, endpoint=False)
    for i in np.flatnonzero(inside):
        d = defects[i]
        s_i = float(sigma[i])
        near = [
            j
            for j in tree.query_ball_point(xy[i], float(reach.max()) + 1.5 * s_i)
            if j != i and math.dist(xy[i], xy[j]) < reach[j] + 1.5 * s_i
        ]
        for j in near:
            e = defects[j]
            if (
                e.kind == d.kind
                and abs(e.amp_nm) >= abs(d.amp_nm)
                and math.dist(xy[i], xy[j]) < s_i + sigma[j]
            ):
                hidden[i] = True
                break
        if hidden[i]:
            continue
        px_ = xy[i, 0] + np.concatenate([[0.0], 1.5 * s_i * np.cos(ang)])
        py_ = xy[i, 1] + np.concatenate([[0.0], 1.5 * s_i * np.sin(ang)])
        field = np.zeros(px_.shape)
        for j in near:
            h, _ = _defect_field(
                px_ - defects[j].x, py_ - defects[j].y, defects[j], theta0, r.tip_sigma_nm
            )
            field += h
        hidden[i] = float(field.max() - field.min()) > 1.5 * abs(d.amp_nm)
    return hidden


def simulate(
    seed: int,
    *,
    material: str = "wse2",
    mode: str = "stm",
    size_nm: float = 50.0,
    pixels: int = 512,
    density_per_cm2: float | None = None,
    artifacts: bool = True,
    clusters: bool = False,
    broad: bool | Sequence[str] = False,
) -> SimulatedScan:
    """Draw a recipe from ``seed`` and render it: the one call most users need. ``clusters``:
    add adsorbate clusters (drawn from their own random stream, so everything else about the
    scan stays as without them). ``broad``: widen the scan by the appearance and artifact
    families of `BROAD_FAMILIES` (True: all of them; a sequence: those named), drawn from their
    own random stream too: with ``broad=False`` a seed gives the same scan as before they
    existed, so held-out sets stay reproducible."""
    rng = np.random.default_rng(seed)
    recipe = draw_recipe(
        rng,
        material=material,
        mode=mode,
        size_nm=size_nm,
        pixels=pixels,
        density_per_cm2=density_per_cm2,
        seed=seed,
        artifacts=artifacts,
    )
    if clusters and mode == "stm":
        recipe.clusters = _draw_clusters(np.random.default_rng([seed, 4242]), recipe)
    families = BROAD_FAMILIES if broad is True else tuple(broad or ())
    if families:
        recipe.broad = draw_broad(np.random.default_rng([seed, 1515]), recipe, families)
    return simulate_scan(rng, recipe)


# -- broadened families (issue 15): wider than the draws above, behind `simulate(broad=...)` ----

BROAD_FAMILIES = (
    "shapes",
    "halos",
    "rings",
    "lattice",
    "noise",
    "line_noise",
    "tips",
    "drift",
    "quantised",
)


def draw_broad(rng: np.random.Generator, r: Recipe, families: Sequence[str]) -> dict[str, Any]:
    """Draw the broadened families' parameters for one scan (and widen ``r``'s own where a
    family changes them: lattice corrugation, tip, drift). Returns ``Recipe.broad``.

    - shapes: per-defect sizes x lognormal(0, 0.35), contrasts x lognormal(0, 0.45), lobes up
      to 0.6, elongation 1-1.8 along the lattice;
    - halos: 20-60% of uncharged defects get a halo of either sign (0.5-3 nm);
    - rings (an appearance family the simulator did not draw): 15-50% of defects look like a
      "sombrero", a core with a rim of the other sign;
    - lattice: corrugation 2-60 pm and a moire superstructure (period 1.5-8 nm);
    - noise: a 2-D 1/f^beta field (beta 0.5-2.5, 1-8 pm) beside the time-ordered noise;
    - line_noise: mains-like interference along the acquisition (1-6 pm) and noisy line bursts;
    - tips: an anisotropic blunt tip (blur sd 0-0.25 nm per axis) and double tips in half the
      scans with up to three ghosts;
    - drift: drift up to 10% of the frame and a slow oscillation of the fast axis;
    - quantised: heights quantised to 8-12 bits of the frame's range (an exported render).
    """
    unknown = sorted(set(families) - set(BROAD_FAMILIES))
    if unknown:
        raise ValueError(f"unknown broad families {unknown}; choose from {BROAD_FAMILIES}")
    out: dict[str, Any] = {"seed": int(rng.integers(2**31)), "families": list(families)}
    if "shapes" in families:
        out["shapes"] = {
            "size_sigma": float(rng.uniform(0.15, 0.35)),
            "amp_sigma": float(rng.uniform(0.2, 0.45)),
            "lobes_max": float(rng.uniform(0.3, 0.6)),
            "aspect_max": float(rng.uniform(1.0, 1.8)),
        }
    if "halos" in families:
        out["halos"] = {
            "share": float(rng.uniform(0.2, 0.6)),
            "length_nm": [0.5, float(rng.uniform(1.0, 3.0))],
        }
    if "rings" in families:
        out["rings"] = {
            "share": float(rng.uniform(0.15, 0.5)),
            "strength": float(rng.uniform(0.2, 0.7)),
        }
    if "lattice" in families and r.mode == "stm":
        r.corrugation_nm = _log_uniform(rng, 0.002, 0.060)
        out["lattice"] = {
            "moire_period_nm": float(rng.uniform(1.5, 8.0)),
            "moire_amp_nm": float(rng.uniform(0.2, 0.8)) * r.corrugation_nm,
            "moire_angle_rad": float(rng.uniform(0, math.pi)),
        }
    if "noise" in families:
        out["noise"] = {
            "beta": float(rng.uniform(0.5, 2.5)),
            "amp_nm": _log_uniform(rng, 0.001, 0.008),
        }
    if "line_noise" in families:
        out["line_noise"] = {
            "amp_nm": _log_uniform(rng, 0.001, 0.006),
            "cycles_per_line": float(rng.uniform(0.5, 40.0)),
            "burst_rate": float(rng.uniform(0.0, 0.05)),
            "burst_nm": _log_uniform(rng, 0.003, 0.02),
        }
    if "tips" in families:
        out["tips"] = {"blur_nm": [float(rng.uniform(0.0, 0.25)), float(rng.uniform(0.0, 0.25))]}
        if rng.random() < 0.5:
            ghosts = []
            for _ in range(int(rng.integers(1, 4))):
                ang = rng.uniform(0, 2 * math.pi)
                dist = rng.uniform(0.4, 4.0)
                ghosts.append(
                    {
                        "dx_nm": dist * math.cos(ang),
                        "dy_nm": dist * math.sin(ang),
                        "weight": float(rng.uniform(0.1, 0.5)),
                    }
                )
            out["tips"]["ghosts"] = ghosts
    if "drift" in families:
        r.drift_nm = (
            float(rng.uniform(-0.1, 0.1) * r.width_nm),
            float(rng.uniform(-0.1, 0.1) * r.height_nm),
        )
        out["drift"] = {
            "wobble_nm": float(rng.uniform(0.0, 0.6)),
            "wobble_cycles": float(rng.uniform(0.5, 4.0)),
        }
    if "quantised" in families:
        out["quantised"] = {"bits": int(rng.integers(8, 13))}
    return out


def _broaden_defects(rng: np.random.Generator, r: Recipe, defects: list[_Defect]) -> list[_Defect]:
    b = r.broad
    out = []
    for d in defects:
        if "shapes" in b and d.cls is not ADSORBATE:
            sh = b["shapes"]
            d = replace(
                d,
                radius_nm=d.radius_nm * float(rng.lognormal(0.0, sh["size_sigma"])),
                amp_nm=d.amp_nm * float(rng.lognormal(0.0, sh["amp_sigma"])),
                lobes=float(rng.uniform(0.0, sh["lobes_max"])),
                aspect=float(rng.uniform(1.0, sh["aspect_max"])),
            )
        if "halos" in b and d.halo_nm == 0 and rng.random() < b["halos"]["share"]:
            lo, hi = b["halos"]["length_nm"]
            d = replace(
                d,
                halo_nm=float(rng.uniform(lo, hi)),
                halo_amp_nm=float(rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.5)) * d.amp_nm,
            )
        if "rings" in b and rng.random() < b["rings"]["share"]:
            d = replace(
                d, ring_amp_nm=-b["rings"]["strength"] * d.amp_nm * float(rng.uniform(0.6, 1.4))
            )
        out.append(d)
    return out


def _broaden_surface(
    r: Recipe, geo: _Geometry, defects: list[_Defect], topo: np.ndarray
) -> np.ndarray:
    """Moire, extra tip ghosts and an anisotropic tip on the rendered surface (nm)."""
    from scipy.ndimage import gaussian_filter

    b = r.broad
    px, py = r.pixel_size_nm
    if "lattice" in b and r.mode == "stm":
        m = b["lattice"]
        rows, cols = np.mgrid[0 : r.ny, 0 : r.nx].astype(np.float64)
        xs, ys = geo.surface(rows, cols)
        k = 2 * math.pi / m["moire_period_nm"]
        th = m["moire_angle_rad"]
        moire = sum(
            np.cos(k * (xs * math.cos(th + a) + ys * math.sin(th + a)))
            for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)
        )
        topo = topo + m["moire_amp_nm"] * moire / 3.0
    if "tips" in b:
        for g in b["tips"].get("ghosts", ()):
            ghost = _render_surface(r, geo, defects, (g["dx_nm"], g["dy_nm"]))
            topo = (1 - g["weight"]) * topo + g["weight"] * ghost
        bx, by = b["tips"]["blur_nm"]
        if bx > 0 or by > 0:
            topo = gaussian_filter(topo, (by / py, bx / px), mode="nearest")
    return topo


def _broaden_noise(
    rng: np.random.Generator, r: Recipe, z: np.ndarray, t: np.ndarray, direction: str
) -> np.ndarray:
    """2-D 1/f noise, line interference and noisy line bursts (nm)."""
    b = r.broad
    ny, nx = z.shape
    if "noise" in b:
        n = b["noise"]
        fy = np.fft.fftfreq(ny)[:, None]
        fx = np.fft.rfftfreq(nx)[None, :]
        f = np.hypot(fy, fx)
        f[0, 0] = f.flat[1] if f.size > 1 else 1.0
        spec = (rng.normal(size=f.shape) + 1j * rng.normal(size=f.shape)) * f ** (-n["beta"] / 2)
        spec[0, 0] = 0
        field_ = np.fft.irfft2(spec, s=(ny, nx))
        z = z + n["amp_nm"] * field_ / (field_.std() + 1e-12)
    if "line_noise" in b:
        ln = b["line_noise"]
        cols = np.arange(nx)[None, :] / nx
        phase = 2 * math.pi * ln["cycles_per_line"] * (t[:, None] * ny + cols)
        z = z + ln["amp_nm"] * np.sin(phase + rng.uniform(0, 2 * math.pi))
        bursts = rng.random(ny) < ln["burst_rate"]
        if bursts.any():
            z[bursts] += rng.normal(0, ln["burst_nm"], (int(bursts.sum()), nx))
    return z


def _quantise(z_nm: np.ndarray, q: Mapping[str, Any]) -> np.ndarray:
    finite = np.isfinite(z_nm)
    if not finite.any():
        return z_nm
    lo, hi = float(np.min(z_nm[finite])), float(np.max(z_nm[finite]))
    step = (hi - lo) / (2 ** int(q["bits"]) - 1) or 1.0
    return lo + np.round((z_nm - lo) / step) * step
