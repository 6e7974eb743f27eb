"""The web app's pages and /api through FastAPI's test client, over a real SQLite record
written by `defectwatch process`."""

from __future__ import annotations

import csv
import io
import json
import re

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from defectwatch.db import open_database
from defectwatch.models import DEFAULT_VERSION
from defectwatch.service.cli import app as cli
from defectwatch.service.scan_images import image_cache_dir
from defectwatch.service.web import create_app
from tests.service.web.conftest import query

BASE = "http://127.0.0.1:8765"
SCAN_KEYS = {"id", "file", "sample", "status", "counts"}
DEFECT_KEYS = {"id", "row", "col", "x_nm", "y_nm", "kind", "confidence", "uncertainty", "contrast"}


def client(db, **options) -> TestClient:
    url = f"sqlite:///{db}"
    engine = open_database(url)
    return TestClient(
        create_app(engine, image_folder=image_cache_dir(url), **options), base_url=BASE
    )


def busiest(db) -> tuple[int, int]:
    """(scan id, defects) of the scan whose latest run found the most defects."""
    return query(
        db, "SELECT scan_id, defect_count FROM detection_run ORDER BY defect_count DESC, id LIMIT 1"
    )[0]


def test_api_lists_and_scan_detail_match_the_record(recorded):
    c = client(recorded)
    samples = {s["sample"]: s for s in c.get("/api/samples").json()}
    assert set(samples) == {"WSe2-SL1", "WSe2-SL2"} and samples["WSe2-SL1"]["done"] == 2
    assert set(samples["WSe2-SL1"]["ci95_per_cm2"]) == {"trough", "peak", "total"}
    assert samples["WSe2-SL1"]["latest_scan_id"] is not None
    scans = c.get("/api/scans").json()
    assert len(scans) == 3 and all(SCAN_KEYS <= set(s) for s in scans)
    assert [s["id"] for s in scans] == sorted((s["id"] for s in scans), reverse=True)
    assert {s["sample"] for s in c.get("/api/scans?sample=WSe2-SL2").json()} == {"WSe2-SL2"}
    assert c.get("/api/scans?status=failed").json() == []
    assert c.get("/api/scans?sample=nope").status_code == 404
    assert c.get("/api/scans?status=weird").status_code == 400
    scan_id, n = busiest(recorded)
    assert n > 0
    detail = c.get(f"/api/scans/{scan_id}").json()
    assert len(detail["defects"]) == n and detail["nx"] == 128 and detail["bias_v"] is not None
    (instrument,) = query(recorded, "SELECT instrument FROM scan WHERE id = ?", scan_id)[0]
    assert instrument and detail["instrument"] == instrument
    assert f'<dd class="instrument">{instrument}</dd>' in c.get(f"/scans/{scan_id}").text
    assert all(DEFECT_KEYS <= set(d) and d["kind"] in ("trough", "peak") for d in detail["defects"])
    rows = query(
        recorded,
        "SELECT d.row, d.col, d.kind FROM defect d JOIN detection_run r "
        "ON r.id = d.run_id WHERE r.scan_id = ? ORDER BY d.id",
        scan_id,
    )
    assert [(d["row"], d["col"], d["kind"]) for d in detail["defects"]] == rows
    status = c.get("/api/status").json()
    assert status["status_counts"]["done"] == 3 and status["daemon_alive"] is False
    assert status["newest_scan_id"] == max(s["id"] for s in scans)


def test_pages_render_every_marker_with_its_attributes(recorded):
    c = client(recorded)
    for path in ("/", "/samples/WSe2-SL1", "/review", "/models"):
        r = c.get(path)
        assert r.status_code == 200 and "text/html" in r.headers["content-type"], path
    overview = c.get("/").text
    assert "WSe2-SL1" in overview and "WSe2-SL2" in overview and "not running" in overview
    assert "<polyline" in c.get("/samples/WSe2-SL1").text  # the running estimate
    scan_id, n = busiest(recorded)
    page = c.get(f"/scans/{scan_id}").text
    kinds = re.findall(r'data-defect-kind="(\w+)"', page)
    confidences = [float(v) for v in re.findall(r'data-confidence="([0-9.]+)"', page)]
    assert len(kinds) == n and len(confidences) == n and set(kinds) <= {"trough", "peak"}
    db_kinds = [
        k
        for (k,) in query(
            recorded,
            "SELECT d.kind FROM defect d JOIN detection_run "
            "r ON r.id = d.run_id WHERE r.scan_id = ? "
            "ORDER BY d.id",
            scan_id,
        )
    ]
    assert kinds == db_kinds
    assert all(0 <= v <= 1 for v in confidences)


def test_images_are_rendered_once_per_run_and_served_by_id(record):
    c = client(record)
    scan_id, _ = busiest(record)
    run_id = query(record, "SELECT MAX(id) FROM detection_run WHERE scan_id = ?", scan_id)[0][0]
    r = c.get(f"/api/scans/{scan_id}/image.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = cv2.imdecode(np.frombuffer(r.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert img.shape == (128, 128) and img.std() > 5  # full resolution, not blank
    cached = image_cache_dir(f"sqlite:///{record}") / f"run-{run_id}-scan.png"
    assert cached.is_file()
    stamp = cached.stat().st_mtime_ns
    assert c.get(f"/api/scans/{scan_id}/image.png").content == r.content
    assert cached.stat().st_mtime_ns == stamp  # served from the cache, not drawn again
    thumb = cv2.imdecode(
        np.frombuffer(c.get(f"/api/scans/{scan_id}/thumb.png").content, np.uint8),
        cv2.IMREAD_UNCHANGED,
    )
    assert max(thumb.shape[:2]) <= 160
    for bad in (
        "/api/scans/999/image.png",
        "/api/scans/999",
        "/scans/999",
        "/api/scans/x/image.png",
        "/api/scans/..%2F..%2Fx",
        "/static/..%2F..%2Fetc%2Fpasswd",
        "/static/../../etc/passwd",
        "/api/scans/../../x",
        "/static/%2e%2e/%2e%2e/etc/passwd",
    ):
        assert c.get(bad).status_code == 404, bad


def test_a_review_is_stored_as_reviewed_labels_and_replaces_only_itself(record, tmp_path):
    c = client(record)
    scan_id, n = busiest(record)
    runner = CliRunner()
    accepted = runner.invoke(cli, ["labels", "accept", str(scan_id), "--db", str(record)])
    assert accepted.exit_code == 0, accepted.output
    defects = c.get(f"/api/scans/{scan_id}").json()["defects"]
    kept = [{"row": d["row"], "col": d["col"], "kind": d["kind"]} for d in defects[1:]]
    kept[0]["kind"] = "peak" if kept[0]["kind"] == "trough" else "trough"
    body = {"defects": kept + [{"row": 10.0, "col": 12.5, "kind": "peak"}], "exhaustive": True}
    r = c.post(f"/api/scans/{scan_id}/review", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["counts"]["total"] == n and r.json()["replaced"] is False
    labels = query(
        record,
        "SELECT row, col, kind, exhaustive FROM label "
        "WHERE scan_id = ? AND source = 'reviewed' ORDER BY id",
        scan_id,
    )
    assert [(a, b, k) for a, b, k, _ in labels] == [
        (d["row"], d["col"], d["kind"]) for d in body["defects"]
    ]
    assert all(e == 1 for *_, e in labels)
    # saving again (partial this time) replaces the review; the accepted labels stay
    again = c.post(
        f"/api/scans/{scan_id}/review", json={"defects": body["defects"][:2], "exhaustive": False}
    )
    assert again.status_code == 200 and again.json()["replaced"] is True
    assert query(
        record,
        "SELECT COUNT(*), MAX(exhaustive) FROM label WHERE scan_id = ? AND source = 'reviewed'",
        scan_id,
    ) == [(2, 0)]
    assert query(
        record, "SELECT COUNT(*) FROM label WHERE scan_id = ? AND source = 'accepted'", scan_id
    ) == [(n,)]
    # the CLI sees it: labels list and export
    listed = runner.invoke(cli, ["labels", "list", "--json", "--db", str(record)])
    assert listed.exit_code == 0, listed.output
    sources = {s["source"] for x in json.loads(listed.stdout) for s in x["sources"]}
    assert "reviewed" in sources
    out = tmp_path / "labels.csv"
    exported = runner.invoke(cli, ["labels", "export", str(out), "--db", str(record)])
    assert exported.exit_code == 0, exported.output
    file = query(record, "SELECT path FROM scan WHERE id = ?", scan_id)[0][0].rsplit("/", 1)[1]
    rows = [r for r in csv.DictReader(io.StringIO(out.read_text())) if r["scan"] == file]
    assert sorted(
        (round(float(r["row"]), 4), round(float(r["col"]), 4), r["kind"]) for r in rows
    ) == sorted((round(d["row"], 4), round(d["col"], 4), d["kind"]) for d in body["defects"][:2])
    # retraining takes the review, not the accepted detections, for this scan
    from defectwatch.db.engine import read_transaction
    from defectwatch.db.splits import exhaustive_scan_ids, scan_labels

    engine = open_database(f"sqlite:///{record}")
    with read_transaction(engine) as s:
        assert len(scan_labels([scan_id], session=s)[scan_id]) == 2
        assert exhaustive_scan_ids([scan_id], session=s) == set()
    engine.dispose()


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"defects": [{"row": 1, "col": 1, "kind": "bump"}]}, "kind"),
        ({"defects": [{"row": "a", "col": 1, "kind": "peak"}]}, "row"),
        ({"defects": [{"row": 500, "col": 1, "kind": "peak"}]}, "outside"),
        ({"defects": "all"}, "list"),
        ({"defects": [], "exhaustive": "yes"}, "exhaustive"),
    ],
)
def test_a_bad_review_is_400_and_says_why(record, body, fragment):
    c = client(record)
    scan_id, _ = busiest(record)
    r = c.post(f"/api/scans/{scan_id}/review", json=body)
    assert r.status_code == 400 and fragment in r.json()["detail"]
    assert c.post("/api/scans/999/review", json={"defects": []}).status_code == 404
    assert query(record, "SELECT COUNT(*) FROM label_set") == [(0,)]


def test_review_queue_ranks_by_the_ensembles_doubt_and_drops_reviewed_scans(record):
    c = client(record)
    q = c.get("/api/review/queue").json()
    assert q["unreviewed"] == 3 and len(q["scans"]) == 3
    scores = [s["score"] for s in q["scans"]]
    assert scores == sorted(scores, reverse=True)
    for s in q["scans"]:
        assert s["score"] == pytest.approx(2 * s["uncertainty_sum"] + s["near_threshold_nm2"])
        assert s["near_threshold_nm2"] is not None and s["near_threshold_nm2"] >= 0
    top = q["scans"][0]["id"]
    assert c.post(f"/api/scans/{top}/review", json={"defects": []}).status_code == 200
    after = c.get("/api/review/queue").json()
    assert after["unreviewed"] == 2 and top not in [s["id"] for s in after["scans"]]
    assert f'data-scan-id="{top}"' not in c.get("/review").text


def test_writes_need_the_apps_own_origin_and_host(record):
    c = client(record)
    scan_id, _ = busiest(record)
    url = f"/api/scans/{scan_id}/review"
    assert c.post(url, json={"defects": []}, headers={"Origin": BASE}).status_code == 200
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "http://127.0.0.1:9999"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Host": "evil.example:8765"},
    ):
        assert c.post(url, json={"defects": []}, headers=headers).status_code == 403, headers
    assert c.get("/api/status", headers={"Host": "rebound.example:8765"}).status_code == 403
    assert (
        c.post("/api/models/rollback", headers={"Origin": "http://evil.example"}).status_code == 403
    )


def test_with_a_token_writes_need_it_as_a_header_or_a_session_cookie(record):
    c = client(record, token="s3cret")
    scan_id, _ = busiest(record)
    url = f"/api/scans/{scan_id}/review"
    assert c.get("/api/scans").status_code == 200  # reads stay open
    assert c.post(url, json={"defects": []}).status_code == 401
    assert (
        c.post(url, json={"defects": []}, headers={"X-Defectwatch-Token": "wrong"}).status_code
        == 401
    )
    assert (
        c.post(url, json={"defects": []}, headers={"X-Defectwatch-Token": "s3cret"}).status_code
        == 200
    )
    assert (
        c.post(url, json={"defects": []}, headers={"Authorization": "Bearer s3cret"}).status_code
        == 200
    )
    assert "Sign in" in c.get(f"/scans/{scan_id}").text
    bad = c.post("/login", data={"token": "nope", "next": "/"}, follow_redirects=False)
    assert bad.status_code == 401 and "defectwatch_session" not in bad.cookies
    ok = c.post(
        "/login", data={"token": "s3cret", "next": f"/scans/{scan_id}"}, follow_redirects=False
    )
    assert ok.status_code == 303 and ok.headers["location"] == f"/scans/{scan_id}"
    assert "s3cret" not in ok.headers["set-cookie"]
    assert "httponly" in ok.headers["set-cookie"].lower()
    assert c.post(url, json={"defects": []}).status_code == 200  # the cookie now
    assert 'id="save"' in c.get(f"/scans/{scan_id}").text
    away = c.post(
        "/login", data={"token": "s3cret", "next": "//evil.example/x"}, follow_redirects=False
    )
    assert away.headers["location"] == "/"


def test_read_only_serves_no_write(record):
    c = client(record, read_only=True)
    scan_id, _ = busiest(record)
    for path in (
        f"/api/scans/{scan_id}/review",
        "/api/models/rollback",
        f"/api/models/{DEFAULT_VERSION}/activate",
        "/login",
    ):
        assert c.post(path, json={"defects": []}).status_code == 403, path
    assert query(record, "SELECT COUNT(*) FROM label_set") == [(0,)]
    page = c.get(f"/scans/{scan_id}").text
    assert "read-only" in page and 'id="save"' not in page


def test_values_from_files_are_escaped(record):
    from defectwatch.db import write_transaction
    from defectwatch.db.models import ScanRow
    from defectwatch.db.records import rename_sample

    evil = '<script>alert("x")</script>'
    engine = open_database(f"sqlite:///{record}")
    with write_transaction(engine) as s:
        rename_sample("WSe2-SL2", evil, session=s)
        for row in s.query(ScanRow):
            row.comment = f"tip changed {evil}"
    engine.dispose()
    c = client(record)
    scan_id = query(record, "SELECT MAX(id) FROM scan")[0][0]
    for path in ("/", f"/scans/{scan_id}", "/review"):
        page = c.get(path).text
        assert "<script>alert" not in page, path
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in c.get("/").text
    assert "tip changed &lt;script&gt;" in c.get(f"/scans/{scan_id}").text
    assert c.get("/samples/" + evil.replace("/", "%2F")).status_code in (200, 404)
    assert evil in [s["sample"] for s in c.get("/api/samples").json()]


def test_models_page_and_activate_rollback_through_the_api(record):
    from defectwatch.db import write_transaction
    from defectwatch.db.registry import register_version
    from defectwatch.service.detection import default_model_dir

    engine = open_database(f"sqlite:///{record}")
    with write_transaction(engine) as s:
        register_version(
            "shipped", session=s, directory=str(default_model_dir()), members=10, activate=True
        )
        register_version(
            "shipped-copy",
            session=s,
            directory=str(default_model_dir()),
            members=10,
            metrics={"gate": {"summary": "no class F1 dropped"}},
        )
    engine.dispose()
    c = client(record)
    page = c.get("/models").text
    assert "shipped-copy" in page and "no class F1 dropped" in page
    r = c.post("/api/models/shipped-copy/activate")
    assert r.status_code == 200 and r.json() == {
        "version": "shipped-copy",
        "previous": "shipped",
        "changed": True,
    }
    assert [v["version"] for v in c.get("/api/models").json() if v["active"]] == ["shipped-copy"]
    assert c.post("/api/models/rollback").json()["version"] == "shipped"
    assert c.post("/api/models/nope/activate").status_code == 404


def test_serve_refuses_a_public_host_without_a_token(recorded, monkeypatch):
    monkeypatch.delenv("DEFECTWATCH_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--db", str(recorded)])
    assert result.exit_code == 1 and "needs a token" in result.output
