"""defectwatch: find, count and record point defects in STM scans of 2D semiconductors.

The Python API for notebooks (``import defectwatch as dw``)::

    scan = dw.read_scan("scan.sxm")               # -> Scan (data in SI units, metadata)
    det = dw.detect(scan)                         # -> Detection (the shipped default model)
    det.defects_frame(); det.densities; det.plot()
    record = dw.open_record("lab.db")             # -> Record: samples(), density(),
                                                  #    scans(), defects(scan), add(det)

Everything is imported on first use, so ``import defectwatch`` stays light (no torch, pandas
or SQLAlchemy until a function needs them). See `defectwatch.service.api` for the details.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = ("read_scan", "detect", "open_record", "simulate_scans", "Detection", "Record")
__all__ = [
    "Detection",
    "Record",
    "__version__",
    "detect",
    "open_record",
    "read_scan",
    "simulate_scans",
]

if TYPE_CHECKING:
    from defectwatch.service.api import (
        Detection,
        Record,
        detect,
        open_record,
        read_scan,
        simulate_scans,
    )


def __getattr__(name: str) -> Any:
    if name in _API:
        from defectwatch.service import api

        return getattr(api, name)
    raise AttributeError(f"module 'defectwatch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
