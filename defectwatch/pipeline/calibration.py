"""A detector's calibration and the defect counts corrected by it, with honest 95% intervals.

A model version does not find every defect (recall, "efficiency" < 1) and some of what it
reports is not a defect (precision < 1). Its **calibration** is measured per kind on scans
whose defects are all known (simulated validation scans, or scans a person labelled
exhaustively), by one-to-one matching of detections to the true defects within 1 nm
(`metrics.object_scores`):

- ``matched``: detections that are a true defect (TP), ``detected``: all detections (TP + FP),
  ``true``: all true defects (TP + FN), summed over the scans;
- ``recall_scan_sd`` / ``precision_scan_sd``: how much a single scan's recall / precision
  varies around the pooled value beyond what binomial counting explains (method of moments,
  0 when the scans agree), because a blunt tip or another crystal changes the efficiency for a
  whole scan, and all scans of one sample share it.

**Corrected count.** ``N_true = N_det * precision / recall`` (the detections that are true,
divided by the share of true defects that are detected).

**95% interval** (`corrected_interval`, Monte Carlo, seeded, so the same inputs give the same
interval): ``precision ~ Beta(TP + 1/2, FP + 1/2)`` and ``recall ~ Beta(TP + 1/2, FN + 1/2)``
(Jeffreys posteriors of the pooled calibration counts), each shifted by a normal scan-to-scan term
whose sd is drawn around ``*_scan_sd`` as a scaled inverse chi-square with (scans - 1) degrees of
freedom (the sd is itself estimated; taken fully correlated across the scans of one sample, which
is conservative) and clipped to [0.02, 1]; the expected detected count ``mu ~ Gamma(N_det, 1)`` for
the lower end and ``Gamma(N_det + 1, 1)`` for the upper end (the two Gamma posteriors whose
quantiles are exactly Garwood's Poisson interval). Each draw gives ``mu * precision / recall``; the
interval runs from the 2.5th percentile of the lower-end draws to the 97.5th of the upper-end
draws. With a perfect, exactly known calibration it is the exact Poisson interval
(`density.poisson_ci95`); without any calibration the raw count and its Poisson interval are
reported unchanged. Several groups of scans (e.g. processed by different versions) are corrected
each by its own calibration and their draws summed.

What the corrected density estimates: the density of defects a careful labeller marks (the
simulator's "visible" defects; a person's exhaustive labels), per area of the sample, i.e. the
rate of the Poisson process, not one scan's realised count.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from defectwatch.pipeline.density import poisson_ci95

KINDS = ("trough", "peak")
DRAWS = 20_000
SEED = 15
MIN_RATE = 0.02  # recall / precision draws are clipped here (a detector that finds < 2% is
# not calibrated, it is broken)
METHOD = (
    "N_true = N_det * precision / recall; 95% interval by Monte Carlo: precision ~ "
    "Beta(TP+1/2, FP+1/2), recall ~ Beta(TP+1/2, FN+1/2), each plus a normal scan-to-scan "
    "term (sd measured between calibration scans, itself drawn as a scaled inverse "
    "chi-square), expected detections ~ Gamma(N_det, 1) "
    "(lower end) / Gamma(N_det+1, 1) (upper end); 20000 seeded draws"
)


@dataclass(frozen=True)
class KindCalibration:
    """One kind's calibration counts, pooled over ``scans`` scans."""

    kind: str
    matched: int  # detections matched one-to-one to a true defect (TP)
    detected: int  # all detections (TP + FP)
    true: int  # all true defects (TP + FN)
    scans: int
    recall_scan_sd: float = 0.0  # between-scan sd of recall beyond binomial noise
    precision_scan_sd: float = 0.0  # between-scan sd of precision beyond binomial noise

    def __post_init__(self) -> None:
        if not (0 <= self.matched <= min(self.detected, self.true)):
            raise ValueError(
                f"{self.kind}: matched {self.matched} must lie in 0..min(detected "
                f"{self.detected}, true {self.true})"
            )

    @property
    def recall(self) -> float:
        """Pooled detection efficiency TP / (TP + FN) (1.0 when nothing was true)."""
        return self.matched / self.true if self.true else 1.0

    @property
    def precision(self) -> float:
        """Pooled TP / (TP + FP) (1.0 when nothing was detected)."""
        return self.matched / self.detected if self.detected else 1.0

    @property
    def false_positives(self) -> int:
        return self.detected - self.matched

    @property
    def missed(self) -> int:
        return self.true - self.matched

    @property
    def factor(self) -> float:
        """precision / recall: detected count -> estimated true count."""
        return self.precision / max(self.recall, MIN_RATE)

    def recall_ci95(self) -> tuple[float, float]:
        """Central 95% interval of the Jeffreys posterior Beta(TP + 1/2, FN + 1/2)."""
        return _beta_ci95(self.matched, self.missed)

    def precision_ci95(self) -> tuple[float, float]:
        """Central 95% interval of the Jeffreys posterior Beta(TP + 1/2, FP + 1/2)."""
        return _beta_ci95(self.matched, self.false_positives)

    def to_json(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "detected": self.detected,
            "true": self.true,
            "scans": self.scans,
            "recall": round(self.recall, 4),
            "precision": round(self.precision, 4),
            "recall_ci95": [round(v, 4) for v in self.recall_ci95()],
            "precision_ci95": [round(v, 4) for v in self.precision_ci95()],
            "recall_scan_sd": round(self.recall_scan_sd, 4),
            "precision_scan_sd": round(self.precision_scan_sd, 4),
        }

    @classmethod
    def from_json(cls, kind: str, d: Mapping[str, Any]) -> KindCalibration:
        return cls(
            kind,
            int(d["matched"]),
            int(d["detected"]),
            int(d["true"]),
            int(d.get("scans", 0)),
            float(d.get("recall_scan_sd", 0.0)),
            float(d.get("precision_scan_sd", 0.0)),
        )


@dataclass(frozen=True)
class Calibration:
    """A version's calibration per kind and where it was measured.

    ``source``: ``"simulated"``, ``"reviewed"`` or ``"lab"`` (a retrain's validation scans);
    ``description``: what `density` prints
    (e.g. "simulated validation, default-sim-7, 72 scans"); ``data``: how the scans were made
    or chosen; ``truth``: what counted as a true defect.
    """

    kinds: dict[str, KindCalibration]
    source: str
    description: str
    data: dict[str, Any] = field(default_factory=dict)
    truth: str = "every defect a labeller marks"
    method: str = METHOD
    # the per-scan counts it was pooled from (kept in memory, not written to config.json)
    scan_counts: dict[str, list[ScanCounts]] = field(
        default_factory=dict, compare=False, repr=False
    )
    scan_names: list[str] = field(default_factory=list, compare=False, repr=False)
    # calibrations measured apart for other channels (C-AFM current maps: "Current"), each a
    # Calibration of its own; a channel not in it is corrected by this one
    by_channel: dict[str, Calibration] = field(default_factory=dict)

    @property
    def scans(self) -> int:
        return max((k.scans for k in self.kinds.values()), default=0)

    def for_channel(self, channel: str | None) -> Calibration:
        """The calibration that corrects counts of scans recorded on ``channel``: its own
        (``by_channel``) where one was measured, else this one."""
        return self.by_channel.get(channel or "", self)

    def to_json(self) -> dict[str, Any]:
        """The ``calibration`` object of a version's config.json."""
        return {
            "source": self.source,
            "description": self.description,
            "truth": self.truth,
            "method": self.method,
            "data": dict(self.data),
            "kinds": {k: c.to_json() for k, c in self.kinds.items()},
            **(
                {"by_channel": {ch: c.to_json() for ch, c in self.by_channel.items()}}
                if self.by_channel
                else {}
            ),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> Calibration | None:
        """None for an empty or missing object (a version measured before calibrations)."""
        if not d or not d.get("kinds"):
            return None
        return cls(
            {k: KindCalibration.from_json(k, v) for k, v in d["kinds"].items()},
            str(d.get("source", "simulated")),
            str(d.get("description", "")),
            dict(d.get("data", {})),
            str(d.get("truth", "")),
            str(d.get("method", METHOD)),
            by_channel={
                str(ch): c
                for ch, v in (d.get("by_channel") or {}).items()
                if (c := cls.from_json(v)) is not None
            },
        )


def _beta_ci95(a: int, b: int) -> tuple[float, float]:
    from scipy import stats

    dist = stats.beta(a + 0.5, b + 0.5)
    return float(dist.ppf(0.025)), float(dist.ppf(0.975))


# -- measuring -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanCounts:
    """One scan's calibration counts for one kind."""

    matched: int
    detected: int
    true: int


class CalibrationCounter:
    """Collects per-scan calibration counts (`add`) and pools them into a `Calibration`.

    Parameters
    ----------
    kinds
        Defect kinds to calibrate.
    radius_nm
        Matching radius (a detection within it of a true defect of its kind is a match).
    """

    def __init__(self, *, kinds: Sequence[str] = KINDS, radius_nm: float = 1.0) -> None:
        self.kinds = tuple(kinds)
        self.radius_nm = float(radius_nm)
        self.per_scan: dict[str, list[ScanCounts]] = {k: [] for k in self.kinds}
        self.names: list[str] = []

    def add(
        self, detections: Sequence[Any], truth: Sequence[Any], *, name: str = ""
    ) -> dict[str, ScanCounts]:
        """Match one scan's ``detections`` (`Defect`-like: ``x_nm, y_nm, kind, confidence``) to
        its ``truth`` (``x_nm, y_nm, kind, visible``; invisible ones are "don't care") and keep
        the counts; returns them per kind."""
        from defectwatch.pipeline.metrics import object_scores

        scores = object_scores(detections, truth, radius_nm=self.radius_nm, kinds=self.kinds)
        out = {}
        for k in self.kinds:
            s = scores[k]
            out[k] = ScanCounts(s.tp, s.tp + s.fp, s.tp + s.fn)
            self.per_scan[k].append(out[k])
        self.names.append(name or f"scan {len(self.names)}")
        return out

    def add_counts(self, counts: Mapping[str, ScanCounts], *, name: str = "") -> None:
        """Keep counts already matched elsewhere (one scan, per kind)."""
        for k in self.kinds:
            self.per_scan[k].append(counts.get(k, ScanCounts(0, 0, 0)))
        self.names.append(name or f"scan {len(self.names)}")

    def result(
        self,
        *,
        source: str,
        description: str,
        data: Mapping[str, Any] | None = None,
        truth: str = "every defect a labeller marks",
    ) -> Calibration:
        """The pooled `Calibration` of every scan added."""
        return Calibration(
            {k: pooled(self.per_scan[k], kind=k) for k in self.kinds},
            source,
            description,
            dict(data or {}),
            truth,
            scan_counts={k: list(v) for k, v in self.per_scan.items()},
            scan_names=list(self.names),
        )


def pooled(scans: Sequence[ScanCounts], *, kind: str) -> KindCalibration:
    """Sum the counts over scans; the between-scan sd of recall and precision is the method-of-
    moments excess of the spread of the per-scan rates over their binomial variance (weighted
    by each scan's number of trials; scans without trials are left out of it)."""
    tp = sum(s.matched for s in scans)
    det = sum(s.detected for s in scans)
    true = sum(s.true for s in scans)
    return KindCalibration(
        kind,
        tp,
        det,
        true,
        len(scans),
        _excess_sd([(s.matched, s.true) for s in scans]),
        _excess_sd([(s.matched, s.detected) for s in scans]),
    )


def _excess_sd(pairs: Iterable[tuple[int, int]]) -> float:
    """sd of the per-scan rate successes/trials beyond binomial noise (0 if none is seen)."""
    rows = [(k, n) for k, n in pairs if n > 0]
    if len(rows) < 2:
        return 0.0
    k = np.array([r[0] for r in rows], float)
    n = np.array([r[1] for r in rows], float)
    p = k.sum() / n.sum()
    rates = k / n
    w = n / n.sum()
    observed = float(np.sum(w * (rates - p) ** 2)) * len(rows) / (len(rows) - 1)
    binomial = float(np.sum(w * p * (1 - p) / n)) * len(rows) / (len(rows) - 1)
    return float(math.sqrt(max(observed - binomial, 0.0)))


# -- correcting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CountEstimate:
    """A corrected count and its 95% interval (in defects, over the area counted)."""

    count: float
    low: float
    high: float


def _rate_draws(
    rng: np.random.Generator, tp: int, other: int, sd: float, scans: int, n: int
) -> np.ndarray:
    draws = rng.beta(tp + 0.5, other + 0.5, size=n)
    if sd > 0:
        # the sd itself is estimated from ``scans`` scans: scaled inverse chi-square draws
        dof = max(scans - 1, 1)
        sds = sd * np.sqrt(dof / rng.chisquare(dof, size=n))
        draws = draws + rng.normal(0.0, 1.0, size=n) * sds
    return np.clip(draws, MIN_RATE, 1.0)


def factor_draws(
    calibration: KindCalibration | None, *, draws: int = DRAWS, rng: np.random.Generator
) -> np.ndarray:
    """(draws,) samples of precision / recall (ones when ``calibration`` is None)."""
    if calibration is None:
        return np.ones(draws)
    c = calibration
    precision = _rate_draws(rng, c.matched, c.false_positives, c.precision_scan_sd, c.scans, draws)
    recall = _rate_draws(rng, c.matched, c.missed, c.recall_scan_sd, c.scans, draws)
    return precision / recall


def corrected_interval(
    groups: Sequence[tuple[Mapping[str, int], Mapping[str, KindCalibration | None]]],
    *,
    kinds: Sequence[str] = KINDS,
    draws: int = DRAWS,
    seed: int = SEED,
) -> dict[str, CountEstimate]:
    """Corrected counts per kind and ``"total"`` over groups of scans.

    ``groups``: (detected count per kind, calibration per kind (None: uncalibrated)), one per
    group of scans sharing a calibration (e.g. one model version). A kind without any
    calibration in every group gets the raw count and the exact Poisson interval.

    The draws are seeded, so the same inputs give the same result: it is computed once per
    distinct input (about 9 ms for one group) and then remembered, so a page or a query that
    asks again for unchanged samples costs nothing.
    """
    key = tuple(
        (tuple(sorted((k, int(n)) for k, n in counts.items())), tuple(sorted(cals.items())))
        for counts, cals in groups
    )
    return dict(_corrected_interval(key, tuple(kinds), draws, seed))


@functools.lru_cache(maxsize=4096)
def _corrected_interval(
    groups: tuple[tuple[tuple[tuple[str, int], ...], tuple[tuple[str, Any], ...]], ...],
    kinds: tuple[str, ...],
    draws: int,
    seed: int,
) -> dict[str, CountEstimate]:
    """`corrected_interval` on hashable inputs (the cached computation)."""
    parts = [(dict(counts), dict(cals)) for counts, cals in groups]
    rng = np.random.default_rng(seed)
    out: dict[str, CountEstimate] = {}
    total_low = np.zeros(draws)
    total_high = np.zeros(draws)
    total_count = 0.0
    total_raw = 0
    all_uncalibrated = True
    for kind in kinds:
        low = np.zeros(draws)
        high = np.zeros(draws)
        estimate = 0.0
        raw = 0
        uncalibrated = True
        for counts, cals in parts:
            n = int(counts.get(kind, 0))
            cal = cals.get(kind)
            raw += n
            factor = factor_draws(cal, draws=draws, rng=rng)
            uncalibrated = uncalibrated and cal is None
            estimate += n * (cal.factor if cal is not None else 1.0)
            low += (rng.gamma(n, 1.0, size=draws) if n > 0 else 0.0) * factor
            high += rng.gamma(n + 1, 1.0, size=draws) * factor
        if uncalibrated:
            lo, hi = poisson_ci95(raw)
            out[kind] = CountEstimate(float(raw), lo, hi)
        else:
            out[kind] = CountEstimate(
                estimate, float(np.quantile(low, 0.025)), float(np.quantile(high, 0.975))
            )
        all_uncalibrated = all_uncalibrated and uncalibrated
        total_low += low
        total_high += high
        total_count += estimate
        total_raw += raw
    if all_uncalibrated:
        lo, hi = poisson_ci95(total_raw)
        out["total"] = CountEstimate(float(total_raw), lo, hi)
    else:
        # the upper ends of two kinds each carry one extra Gamma unit: at most one too many
        # for the total, which errs wide
        out["total"] = CountEstimate(
            total_count, float(np.quantile(total_low, 0.025)), float(np.quantile(total_high, 0.975))
        )
    return out
