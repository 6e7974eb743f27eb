"""Which names are candidates, and when a file is ready (a controllable clock, real files)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from defectwatch.daemon.candidates import is_candidate, is_temporary, matches, walk_candidates
from defectwatch.daemon.readiness import Readiness, sha256_file
from defectwatch.errors import ScanReadError
from tests.daemon.queue_double import InMemoryJobQueue, sxm_bytes, sxm_expected_size


@pytest.mark.parametrize(
    "name, expected",
    [
        ("scan.sxm", True),
        ("SCAN_001.SXM", True),
        ("Scan.Sxm", True),
        ("scan.sxm.part", False),
        ("scan.dat", False),
        ("scan.sxmx", False),
    ],
)
def test_pattern_is_case_insensitive(name, expected):
    assert matches(name, "*.sxm") is expected and is_temporary("scan.sxm") is False


@pytest.mark.parametrize(
    "name",
    [
        ".scan.sxm",
        "~scan.sxm",
        "~$scan.sxm",
        "scan.sxm~",
        "scan.sxm.part",
        "scan.sxm.TMP",
        "scan.sxm.crdownload",
    ],
)
def test_hidden_and_temporary_names(name):
    assert is_temporary(name)


def test_is_candidate_depth_and_hidden_folders(tmp_path):
    root = str(tmp_path)
    top, deep = str(tmp_path / "a.sxm"), str(tmp_path / "S1" / "a.sxm")
    hidden = str(tmp_path / ".trash" / "a.sxm")
    assert is_candidate(top, root=root, pattern="*.sxm", recursive=False)
    assert not is_candidate(deep, root=root, pattern="*.sxm", recursive=False)
    assert is_candidate(deep, root=root, pattern="*.sxm", recursive=True)
    assert not is_candidate(hidden, root=root, pattern="*.sxm", recursive=True)
    assert not is_candidate(
        str(tmp_path.parent / "x.sxm"), root=root, pattern="*.sxm", recursive=True
    )


def test_walk_candidates(tmp_path):
    for rel in [
        "a.sxm",
        "B.SXM",
        "notes.txt",
        ".h.sxm",
        "c.sxm.part",
        "S1/d.sxm",
        ".cache/e.sxm",
        "S1/deeper/f.sxm",
    ]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    flat = {
        Path(p).name for p in walk_candidates([str(tmp_path)], pattern="*.sxm", recursive=False)
    }
    deep = {Path(p).name for p in walk_candidates([str(tmp_path)], pattern="*.sxm", recursive=True)}
    assert flat == {"a.sxm", "B.SXM"}
    assert deep == {"a.sxm", "B.SXM", "d.sxm", "f.sxm"}


def test_sha256_is_streamed_and_right(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(os.urandom(3 * 1024 + 7))
    assert sha256_file(str(p), chunk_bytes=1000) == hashlib.sha256(p.read_bytes()).hexdigest()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _readiness(clock: Clock, **kw) -> Readiness:
    # wall clock far in the past: a file's mtime says nothing, only watching counts
    return Readiness(
        sxm_expected_size,
        stable_for_s=2.0,
        incomplete_after_s=10.0,
        clock=clock,
        wall_clock=lambda: 0.0,
        **kw,
    )


def test_growing_file_waits_then_is_ready_once_stable(tmp_path):
    data = sxm_bytes(1)
    path = tmp_path / "grow.sxm"
    clock = Clock()
    r = _readiness(clock)
    r.nominate(str(path))
    assert r.poll() == [] and r.pending() == []  # not there: dropped

    r.nominate(str(path))
    with open(path, "wb") as fh:
        for k in range(1, 5):  # header, then data in chunks: never ready while growing
            fh.write(data[(k - 1) * len(data) // 4 : k * len(data) // 4])
            fh.flush()
            if k < 4:
                clock.t += 5.0  # long pauses between chunks are fine: it is incomplete
                assert r.poll() == []
    assert r.poll() == []  # complete now, but just changed
    clock.t += 1.0
    assert r.poll() == []
    clock.t += 1.5
    (ready,) = r.poll()
    assert ready.note is None and ready.size_bytes == len(data)
    assert ready.sha256 == hashlib.sha256(data).hexdigest()
    assert r.pending() == []


def test_incomplete_file_is_released_after_a_while_with_a_note(tmp_path):
    data = sxm_bytes(2)
    path = tmp_path / "cut.sxm"
    path.write_bytes(data[: len(data) // 2])
    clock = Clock()
    r = _readiness(clock)
    r.nominate(str(path))
    assert r.poll() == []
    clock.t += 9.0
    assert r.poll() == []
    clock.t += 1.5
    (ready,) = r.poll()
    assert "incomplete" in ready.note and str(len(data) // 2) in ready.note


def test_garbage_is_released_once_stable(tmp_path):
    path = tmp_path / "garbage.sxm"
    path.write_bytes(os.urandom(5000))
    clock = Clock()
    r = _readiness(clock)
    r.nominate(str(path))
    assert r.poll() == []
    clock.t += 2.5
    (ready,) = r.poll()
    assert "not a Nanonis .sxm file" in ready.note


def test_old_complete_file_is_ready_at_once_by_its_mtime(tmp_path):
    path = tmp_path / "old.sxm"
    path.write_bytes(sxm_bytes(3))
    os.utime(path, (1_000_000, 1_000_000))
    r = Readiness(sxm_expected_size, stable_for_s=2.0)
    r.nominate(str(path))
    assert len(r.poll()) == 1


def test_known_files_are_not_read(tmp_path):
    path = tmp_path / "known.sxm"
    path.write_bytes(sxm_bytes(4))
    st = path.stat()
    queue = InMemoryJobQueue()
    queue.enqueue(str(path), sha256="x", size_bytes=st.st_size, mtime_ns=st.st_mtime_ns)
    read = []

    def expected_size(p: str) -> int | None:
        read.append(p)
        return sxm_expected_size(p)

    r = Readiness(
        expected_size,
        stable_for_s=0.0,
        skip=lambda p, s, m: queue.is_known(p, size_bytes=s, mtime_ns=m),
    )
    r.nominate(str(path))
    assert r.poll() == [] and r.pending() == [] and read == []


def test_a_handed_over_file_is_not_handed_again_unless_it_changes(tmp_path):
    path = tmp_path / "a.sxm"
    path.write_bytes(sxm_bytes(5))
    queue = InMemoryJobQueue()
    r = Readiness(sxm_expected_size, stable_for_s=0.0)
    r.nominate(str(path))
    assert r.hand_over(queue) == 1
    r.nominate(str(path))  # a late "modified" event
    assert r.hand_over(queue) == 0 and queue.calls["enqueue"] == 1
    path.write_bytes(sxm_bytes(6))  # rewritten with new content: a new scan
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)
    r.nominate(str(path))
    assert r.hand_over(queue) == 1 and len(queue.rows) == 2


def test_expected_size_bugs_do_not_escape(tmp_path):
    path = tmp_path / "a.sxm"
    path.write_bytes(b"whatever")

    def broken(p: str) -> int | None:
        raise RuntimeError("boom")

    r = Readiness(broken, stable_for_s=0.0)
    r.nominate(str(path))
    (ready,) = r.poll()
    assert "RuntimeError: boom" in ready.note


def test_scan_read_error_from_expected_size_is_the_note(tmp_path):
    path = tmp_path / "a.sxm"
    path.write_bytes(b"whatever")

    def foreign(p: str) -> int | None:
        raise ScanReadError(f"{Path(p).name}: not a scan")

    r = Readiness(foreign, stable_for_s=0.0)
    r.nominate(str(path))
    assert r.poll()[0].note == "a.sxm: not a scan"


# -- every supported format: its own completeness rule ----------------------------------------


def test_several_patterns_separated_by_commas():
    assert matches("a.SM4", "*.sxm,*.sm4") and matches("b.sxm", "*.sxm, *.sm4")
    assert not matches("c.dat", "*.sxm,*.sm4") and not matches("c.dat", " , ")


def _any_format(clock: Clock) -> Readiness:
    from defectwatch.pipeline.readers import expected_size

    return Readiness(
        expected_size,
        stable_for_s=2.0,
        incomplete_after_s=10.0,
        clock=clock,
        wall_clock=lambda: 0.0,
    )


def test_matrix_file_waits_for_its_chain_file_and_says_so(shared_formats, tmp_path):
    data = tmp_path / "20201111--4_1.Z_mtrx"
    data.write_bytes(shared_formats["20201111--4_1.Z_mtrx"].read_bytes())
    clock = Clock()
    r = _any_format(clock)
    r.nominate(str(data))
    clock.t += 5.0
    assert r.poll() == []  # complete in itself, but its parameters are not there yet
    (tmp_path / "20201111_0001.mtrx").write_bytes(shared_formats["20201111_0001.mtrx"].read_bytes())
    clock.t += 2.5
    (ready,) = r.poll()  # the data file itself was stable all along
    assert ready.note is None

    lonely = tmp_path / "other" / "20201112--1_1.Z_mtrx"
    lonely.parent.mkdir()
    lonely.write_bytes(data.read_bytes())
    r.nominate(str(lonely))
    assert r.poll() == []
    clock.t += 10.5
    (late,) = r.poll()
    assert "incomplete" in late.note and "20201112_0001.mtrx is not beside it" in late.note


def test_spectra_only_sm4_is_skipped_not_queued(shared_formats, tmp_path):
    path = tmp_path / "Iz.sm4"
    path.write_bytes(shared_formats["Iz_gold_9K_2019_12_18_13_49_32_752.sm4"].read_bytes())
    clock = Clock()
    r = _any_format(clock)
    r.nominate(str(path))
    assert r.poll() == [] and r.pending() == [str(path)]
    clock.t += 2.5
    assert r.poll() == [] and r.pending() == []  # dropped: nothing to analyse


def test_createc_file_is_ready_when_its_zlib_stream_is_complete(shared_formats, tmp_path):
    data = shared_formats["A250407.141806.dat"].read_bytes()
    path = tmp_path / "A250407.141806.dat"
    path.write_bytes(data[:30_000])
    clock = Clock()
    r = _any_format(clock)
    r.nominate(str(path))
    clock.t += 5.0
    assert r.poll() == []  # the stream stops short: still being written
    with open(path, "ab") as fh:
        fh.write(data[30_000:])
    clock.t += 2.5
    assert r.poll() == []
    clock.t += 2.5
    (ready,) = r.poll()
    assert ready.note is None and ready.size_bytes == len(data)
