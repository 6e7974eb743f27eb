"""Use case: what a scan file holds (the `inspect` command's record)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from defectwatch.pipeline.scan import read_scan


def scan_summary(path: str | Path, *, channel: str = "Z") -> dict[str, Any]:
    """The metadata `inspect --json` prints for one file (raises DefectwatchError if unreadable).

    Keys: path, nx, ny, width_nm, height_nm, pixel_size_nm [x, y], scan_dir, angle_deg, bias_v,
    setpoint_a, recorded_at (ISO 8601), channels, acquired_fraction, constant_height, and the
    extras acquired_area_nm2, temperature_k, comment.
    """
    s = read_scan(path, channel=channel)
    return {
        "path": str(path),
        "nx": s.nx,
        "ny": s.ny,
        "width_nm": s.width_nm,
        "height_nm": s.height_nm,
        "pixel_size_nm": [s.pixel_size_x_nm, s.pixel_size_y_nm],
        "scan_dir": s.scan_dir,
        "angle_deg": s.angle_deg,
        "bias_v": s.bias_v,
        "setpoint_a": s.setpoint_a,
        "recorded_at": s.recorded_at.isoformat() if s.recorded_at else None,
        "channels": list(s.channel_names),
        "acquired_fraction": s.acquired_fraction,
        "constant_height": s.constant_height,
        "acquired_area_nm2": s.acquired_area_nm2,
        "temperature_k": s.temperature_k,
        "comment": s.comment,
    }
