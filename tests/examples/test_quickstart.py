"""examples/quickstart.ipynb runs headless, top to bottom, with the shipped model (so it cannot
rot): its last cell checks the recorded density against the detections."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's work folder lands here
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend draws PNGs
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit the notebook without outputs"
    )
    t0 = time.perf_counter()
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    seconds = time.perf_counter() - t0
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any(o.output_type == "display_data" and "image/png" in o.data for o in outputs), (
        "the overlay figure was not drawn"
    )
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "defects per cm^2" in text
    assert list(tmp_path.glob("defectwatch-quickstart-*/lab.db"))
    assert seconds < 90, f"the quickstart took {seconds:.0f} s"
