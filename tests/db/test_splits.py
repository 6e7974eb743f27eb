"""The frozen train/test split of labelled scans, on real SQLite files."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from defectwatch.db import open_database, read_transaction, write_transaction
from defectwatch.db.models import Label, LabelSet, ScanRow, SplitAssignment
from defectwatch.db.splits import (
    assign_splits,
    exhaustive_scan_ids,
    label_counts,
    scan_labels,
    split_assignments,
    target_test_count,
    trainable_scans,
)
from tests.db.factories import record

ON_POSTGRESQL = True  # each test once more on a real PostgreSQL server (conftest.py)


def add_scans(engine, names: list[str], *, labels: int = 2) -> list[int]:
    ids = [record(engine, f"/w/S/{n}.sxm", sample="S", runs=[]) for n in names]
    with write_transaction(engine) as s:
        for scan_id in ids:
            for k in range(labels):
                s.add(
                    Label(
                        scan_id=scan_id,
                        row=10.0 + k,
                        col=20.0,
                        kind="trough",
                        radius_nm=None,
                        source="test",
                        exhaustive=True,
                    )
                )
    return ids


def assign(engine, ids: list[int]) -> dict[int, str]:
    with write_transaction(engine) as s:
        return assign_splits(ids, session=s)


def test_target_counts_round_half_up_with_at_least_one():
    assert [target_test_count(n) for n in (0, 1, 3, 4, 6, 10, 15, 100)] == [0, 1, 1, 1, 2, 3, 4, 25]


def test_labelled_scans_and_their_labels(engine):
    ids = add_scans(engine, ["a", "b"], labels=3)
    bare = record(engine, "/w/S/unlabelled.sxm", sample="S", runs=[])
    with read_transaction(engine) as s:
        assert [r.id for r in trainable_scans(session=s)] == ids
        assert label_counts(session=s) == {ids[0]: 3, ids[1]: 3}
        got = scan_labels([*ids, bare], session=s)
        assert set(got) == set(ids) and [lab.row for lab in got[ids[0]]] == [10.0, 11.0, 12.0]
        assert scan_labels([], session=s) == {}


def test_clean_scans_count_and_exhaustive_comes_from_sets_or_rows(engine):
    partial, from_rows = add_scans(engine, ["partial", "rows"])
    clean = record(engine, "/w/S/clean.sxm", sample="S", runs=[])
    empty_partial = record(engine, "/w/S/nothing.sxm", sample="S", runs=[])
    with write_transaction(engine) as s:
        s.get(ScanRow, partial).path = "/w/S/partial.sxm"
        for label in s.scalars(select(Label).where(Label.scan_id == partial)):
            label.exhaustive = False
        s.add(LabelSet(scan_id=partial, source="test", exhaustive=False, labels=2))
        s.add(LabelSet(scan_id=clean, source="review", exhaustive=True, labels=0))
        s.add(LabelSet(scan_id=empty_partial, source="review", exhaustive=False, labels=0))
    with read_transaction(engine) as s:
        assert [r.id for r in trainable_scans(session=s)] == [partial, from_rows, clean]
        assert exhaustive_scan_ids([partial, from_rows, clean, empty_partial], session=s) == {
            from_rows,
            clean,
        }
        assert exhaustive_scan_ids([], session=s) == set()


def test_first_use_freezes_a_quarter_deterministically(tmp_path):
    results = []
    for run in range(2):  # two databases with the same scans assign the same way
        engine = open_database(f"sqlite:///{tmp_path / f'r{run}.db'}")
        ids = add_scans(engine, [f"s{i:02d}" for i in range(15)])
        splits = assign(engine, ids)
        with read_transaction(engine) as s:
            paths = {r.id: r.path for r in s.scalars(select(ScanRow))}
        results.append({paths[i]: v for i, v in splits.items()})
        engine.dispose()
    assert results[0] == results[1]
    assert sum(v == "test" for v in results[0].values()) == 4


def test_four_scans_give_one_test_scan(engine):
    splits = assign(engine, add_scans(engine, ["a", "b", "c", "d"]))
    assert sorted(splits.values()) == ["test", "train", "train", "train"]


def test_the_split_persists_and_only_grows(engine):
    first = add_scans(engine, [f"a{i}" for i in range(4)])
    before = assign(engine, first)
    assert assign(engine, first) == before  # nothing moves on a second retrain
    later = add_scans(engine, [f"b{i}" for i in range(12)])
    after = assign(engine, [*first, *later])
    assert {i: after[i] for i in first} == before  # old scans keep their split
    test_before = {i for i, v in before.items() if v == "test"}
    test_after = {i for i, v in after.items() if v == "test"}
    assert test_before < test_after  # grows, never loses a scan
    assert len(test_after) == target_test_count(16)
    with read_transaction(engine) as s:
        assert split_assignments(session=s) == after
        assert s.query(SplitAssignment).count() == 16


def test_one_assignment_per_scan_and_only_train_or_test(engine):
    (scan_id,) = add_scans(engine, ["a"])
    assign(engine, [scan_id])
    with pytest.raises(IntegrityError):
        with write_transaction(engine) as s:
            s.add(SplitAssignment(scan_id=scan_id, split="train"))
    (other,) = add_scans(engine, ["b"])
    with pytest.raises(IntegrityError):
        with write_transaction(engine) as s:
            s.add(SplitAssignment(scan_id=other, split="val"))  # fits String(8); the CHECK


def test_deleting_a_scan_removes_its_assignment(engine):
    ids = add_scans(engine, ["a", "b", "c", "d"])
    assign(engine, ids)
    with write_transaction(engine) as s:
        s.execute(delete(ScanRow).where(ScanRow.id == ids[0]))
    with read_transaction(engine) as s:
        assert set(split_assignments(session=s)) == set(ids[1:])


def test_unknown_scan_ids_and_bad_shares_are_refused(engine):
    with pytest.raises(ValueError, match="no scan with id 999"):
        assign(engine, [999])
    with pytest.raises(ValueError, match="test_share"):
        with write_transaction(engine) as s:
            assign_splits([1], session=s, test_share=1.5)
