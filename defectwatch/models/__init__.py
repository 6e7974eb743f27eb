"""Model versions shipped inside the package, and where to find them.

Each version is a folder of ``member_NN.safetensors`` plus ``config.json`` (see
`defectwatch.pipeline.model`); ``python -m defectwatch.service.default_model`` (``make
default-model``) retrains the default from the simulator.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_VERSION = "default-sim-9"
SHIPPED_DIR = Path(__file__).resolve().parent


def default_model_dir() -> Path:
    """The shipped default version's directory (``defectwatch/models/<DEFAULT_VERSION>``).

    Returns
    -------
    pathlib.Path
        An absolute path; it holds ``config.json`` and the members' weights.
    """
    return SHIPPED_DIR / DEFAULT_VERSION
