"""Label sets and label rows on real SQLite files."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy import func, select, text

from defectwatch.db import make_engine, open_database, read_transaction, write_transaction
from defectwatch.db.labels import (
    delete_labels,
    file_name,
    file_stem,
    label_sets,
    labelled_scans,
    replace_labels,
    scans_by_stem,
)
from defectwatch.db.migrate import upgrade
from defectwatch.db.models import Label, ScanRow
from defectwatch.errors import ConfigError
from tests.db.factories import record

ON_POSTGRESQL = True  # each test once more on a real PostgreSQL server (conftest.py)


@dataclass(frozen=True)
class P:
    row: float
    col: float
    kind: str
    radius_nm: float | None = None


def test_replace_labels_replaces_one_source_and_keeps_the_others(engine):
    scan = record(engine, "/w/A/STM_001.sxm", sample="A", runs=[])
    with write_transaction(engine) as s:
        replace_labels(
            scan,
            [P(1, 2, "trough", 1.5), P(3, 4, "peak")],
            session=s,
            source="via:a.csv",
            exhaustive=True,
            file="/l/a.csv",
        )
        replace_labels(scan, [P(5, 6, "peak")], session=s, source="accepted", exhaustive=False)
    with write_transaction(engine) as s:  # the same file again: replaced, not added
        replace_labels(
            scan, [P(1, 2, "trough", 1.5)], session=s, source="via:a.csv", exhaustive=False
        )
    with read_transaction(engine) as s:
        rows = list(s.scalars(select(Label).order_by(Label.id)))
        sets = {x.source: (x.exhaustive, x.labels) for x in label_sets(scan, session=s)}
    assert [(r.source, r.kind, r.exhaustive) for r in rows] == [
        ("accepted", "peak", False),
        ("via:a.csv", "trough", False),
    ]
    assert rows[1].radius_nm == 1.5 and rows[0].radius_nm is None
    assert sets == {"via:a.csv": (False, 1), "accepted": (False, 1)}


def test_an_empty_exhaustive_set_marks_a_clean_scan(engine):
    clean = record(engine, "/w/A/clean.sxm", sample="A", runs=[])
    record(engine, "/w/A/unlabelled.sxm", sample="A", runs=[])
    with write_transaction(engine) as s:
        replace_labels(clean, [], session=s, source="accepted", exhaustive=True)
    with read_transaction(engine) as s:
        found = labelled_scans(session=s)
    assert [(x.scan.id, x.exhaustive, x.counts) for x in found] == [
        (clean, True, {"trough": 0, "peak": 0})
    ]


def test_labelled_scans_counts_kinds_filters_samples_and_loads_rows(engine):
    a = record(engine, "/w/A/1.sxm", sample="A", runs=[])
    b = record(engine, "/w/B/1.sxm", sample="B", runs=[])
    with write_transaction(engine) as s:
        replace_labels(
            a,
            [P(9, 1, "trough"), P(1, 1, "trough"), P(2, 2, "peak")],
            session=s,
            source="csv:x.csv",
            exhaustive=False,
        )
        replace_labels(a, [P(4, 4, "peak")], session=s, source="accepted", exhaustive=True)
        replace_labels(b, [P(0, 0, "peak")], session=s, source="csv:x.csv", exhaustive=False)
    with read_transaction(engine) as s:
        only_a = labelled_scans(session=s, sample="A", with_labels=True)
        both = labelled_scans(session=s)
    assert len(both) == 2 and not both[1].exhaustive and both[1].sample == "B"
    (x,) = only_a
    assert x.exhaustive  # one of its sets is
    assert x.counts == {"trough": 2, "peak": 2}
    assert [(lab.row, lab.col) for lab in x.labels] == [(1, 1), (2, 2), (4, 4), (9, 1)]
    assert [s.source for s in x.sets] == ["csv:x.csv", "accepted"]


def test_delete_labels_and_cascade_with_the_scan(engine):
    a = record(engine, "/w/A/1.sxm", sample="A", runs=[])
    with write_transaction(engine) as s:
        replace_labels(a, [P(1, 1, "trough")], session=s, source="x", exhaustive=True)
        replace_labels(a, [P(2, 2, "peak")], session=s, source="y", exhaustive=True)
    with write_transaction(engine) as s:
        assert delete_labels(a, session=s, source="x") == 1
    with read_transaction(engine) as s:
        assert [x.source for x in label_sets(a, session=s)] == ["y"]
    with write_transaction(engine) as s:
        s.delete(s.get(ScanRow, a))
    with read_transaction(engine) as s:
        assert s.scalar(select(func.count()).select_from(Label)) == 0
        assert labelled_scans(session=s) == []


def test_bad_kinds_and_empty_sources_are_refused(engine):
    a = record(engine, "/w/A/1.sxm", sample="A", runs=[])
    with pytest.raises(ConfigError, match="kinds"):
        with write_transaction(engine) as s:
            replace_labels(a, [P(1, 1, "blob")], session=s, source="x", exhaustive=True)
    with pytest.raises(ConfigError, match="source"):
        with write_transaction(engine) as s:
            replace_labels(a, [], session=s, source=" ", exhaustive=True)


def test_scans_by_stem_is_case_insensitive_and_reads_windows_paths(engine):
    a = record(engine, "/w/A/STM_001.sxm", sample="A", runs=[])
    b = record(engine, "C:\\scans\\B\\stm_001.SXM", sample="B", runs=[])
    c = record(engine, "/w/A/render_30x30.png", sample="A", runs=[])
    with read_transaction(engine) as s:
        found = scans_by_stem(["Stm_001", "RENDER_30x30", "nothing"], session=s)
    assert {k: [r.id for r in v] for k, v in found.items()} == {
        "stm_001": [a, b],
        "render_30x30": [c],
    }
    assert file_stem("C:\\x\\y.z.sxm") == "y.z" and file_name("/a/b.png") == "b.png"


def test_label_rows_of_an_older_database_get_their_sets(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = make_engine(url)
    upgrade(old, revision="0003")
    with old.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO scan (path, sha256, size_bytes, mtime_ns, status, "
                "attempts, created_at, updated_at) VALUES ('/a.sxm', 'h', 1, 1, "
                "'done', 0, '2025-01-01', '2025-01-01')"
            )
        )
        for kind, ex in (("trough", 1), ("peak", 0)):
            conn.execute(
                text(
                    "INSERT INTO label (scan_id, row, col, kind, source, exhaustive, "
                    "created_at) VALUES (1, 1, 1, :k, 'old', :e, '2025-01-01')"
                ),
                {"k": kind, "e": ex},
            )
    old.dispose()
    engine = open_database(url)
    with read_transaction(engine) as s:
        (x,) = labelled_scans(session=s)
    assert x.exhaustive and x.sets[0].labels == 2 and x.counts == {"trough": 1, "peak": 1}
    engine.dispose()
