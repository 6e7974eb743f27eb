"""The layer arrows of ARCHITECTURE.md, checked by import-linter on every test run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is not installed (pip install -e '.[dev]')"
    result = subprocess.run(
        [exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_science_layer_imports_without_torch_or_the_database():
    code = (
        "import sys, defectwatch.pipeline.scan, defectwatch.pipeline.preprocess, "
        "defectwatch.pipeline.simulate; "
        "bad = [m for m in ('torch', 'sqlalchemy', 'watchdog', 'typer') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
