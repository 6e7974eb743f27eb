"""The web app in a real browser (headless Debian chromium through Playwright) against
`defectwatch serve` running as a process: markers counted against the database, a review made
with the mouse and the keyboard and found in the database, screenshots taken."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.service.web.conftest import Served, query

pytestmark = pytest.mark.slow


def shots(tmp_path: Path) -> Path:
    """Where screenshots go: $DEFECTWATCH_TEST_SCREENSHOTS when set (to look at them),
    else the test's folder."""
    folder = Path(os.environ.get("DEFECTWATCH_TEST_SCREENSHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def raw_status(port: int, path: str) -> int:
    """The status line's code for ``GET path`` sent byte for byte over a socket."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        head = sock.recv(64).decode("latin-1")
    return int(head.split()[1])


def looks_drawn(path: Path) -> np.ndarray:
    """A screenshot that is not blank (some structure in it)."""
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 300 and img.std() > 20, path
    return img


def test_overview_scan_page_and_a_review_made_in_the_browser(record, tmp_path, browser):
    folder = shots(tmp_path)
    scan_id, n = query(
        record,
        "SELECT scan_id, defect_count FROM detection_run ORDER BY defect_count DESC, id LIMIT 1",
    )[0]
    assert n >= 3
    defects = query(
        record,
        "SELECT d.row, d.col, d.kind FROM defect d JOIN detection_run r "
        "ON r.id = d.run_id WHERE r.scan_id = ? ORDER BY d.id",
        scan_id,
    )
    nx, ny = query(record, "SELECT nx, ny FROM scan WHERE id = ?", scan_id)[0]
    server = Served(tmp_path, record)
    try:
        # paths sent as they are (no client normalising them): never a file outside
        for raw in (
            "/static/../../etc/passwd",
            "/api/scans/../../x",
            "/static/..%2f..%2fetc%2fpasswd",
            "/api/scans/999/image.png",
        ):
            assert raw_status(server.port, raw) == 404, raw
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        page.wait_for_load_state("networkidle")
        rows = page.locator("table.samples tbody tr")
        assert rows.count() == 2
        assert page.locator("table.samples img").evaluate_all(
            "imgs => imgs.every(i => i.complete && i.naturalWidth > 0)"
        )
        page.screenshot(path=str(folder / "overview.png"), full_page=True)
        looks_drawn(folder / "overview.png")

        page.goto(f"{server.url}/scans/{scan_id}")
        page.wait_for_load_state("networkidle")
        assert page.evaluate("document.getElementById('scan-img').naturalWidth") == nx
        markers = page.locator("svg#markers circle.marker")
        assert markers.count() == n
        assert markers.evaluate_all("els => els.map(e => e.dataset.defectKind)") == [
            k for _, _, k in defects
        ]
        confidences = markers.evaluate_all("els => els.map(e => Number(e.dataset.confidence))")
        assert all(0 < c <= 1 for c in confidences)
        page.screenshot(path=str(folder / "scan-page.png"))
        looks_drawn(folder / "scan-page.png")

        # hover shows the details
        markers.nth(0).hover()
        assert "confidence" in page.locator("#tip").inner_text()
        # reject the first marker (click, x), switch the second's kind (click, s)
        markers.nth(0).click()
        page.keyboard.press("x")
        assert "rejected" in (markers.nth(0).get_attribute("class") or "")
        markers.nth(1).click()
        page.keyboard.press("s")
        switched = {"trough": "peak", "peak": "trough"}[defects[1][2]]
        assert markers.nth(1).get_attribute("data-defect-kind") == switched
        # add a peak on an empty spot: the pixel farthest from every detection
        rr, cc = np.mgrid[0:ny, 0:nx]
        far = np.full((ny, nx), np.inf)
        for r, c, _ in defects:
            far = np.minimum(far, np.hypot(rr - r, cc - c))
        row, col = np.unravel_index(int(np.argmax(far)), far.shape)
        box = page.locator("#scan-img").bounding_box()
        x = box["x"] + (col + 0.5) * box["width"] / nx
        y = box["y"] + (row + 0.5) * box["height"] / ny
        page.keyboard.press("p")
        page.mouse.click(x, y)
        assert page.locator("svg#markers circle.marker").count() == n + 1
        page.keyboard.press("z")  # undo the add ...
        assert page.locator("svg#markers circle.marker").count() == n
        page.mouse.click(x, y)  # ... and add it again
        assert page.locator("svg#markers circle.marker.added.peak").count() == 1
        page.keyboard.press("Control+s")
        page.wait_for_selector("#save-status.ok", timeout=10_000)
        assert "saved" in page.locator("#save-status").inner_text()
        page.screenshot(path=str(folder / "scan-page-reviewed.png"))
        looks_drawn(folder / "scan-page-reviewed.png")
        # opened again, the page resumes the saved review
        page.reload()
        page.wait_for_load_state("networkidle")
        assert page.locator("#saved-review").count() == 1
        assert page.locator("svg#markers circle.marker.rejected").count() == 1
        assert page.locator("svg#markers circle.marker.added.peak").count() == 1
        assert markers.nth(1).get_attribute("data-defect-kind") == switched
        assert not errors, errors
    finally:
        server.stop()

    labels = query(
        record,
        "SELECT row, col, kind, exhaustive FROM label "
        "WHERE scan_id = ? AND source = 'reviewed' ORDER BY id",
        scan_id,
    )
    assert len(labels) == n  # one rejected, one added
    expected = [(r, c, k) for r, c, k in defects[1:]]
    expected[0] = (expected[0][0], expected[0][1], switched)
    assert [(a, b, k) for a, b, k, _ in labels[:-1]] == expected
    added = labels[-1]
    assert added[2] == "peak" and abs(added[0] - row) < 1.0 and abs(added[1] - col) < 1.0
    assert all(e == 1 for *_, e in labels)
