"""When a scan file is ready to be queued: complete, and stable for a while.

A file is *ready* when ``expected_size(path)`` (from its header) is known, the file has reached
that size, and its size and mtime have not changed for ``stable_for_s``. A file still growing is
waited for. Two kinds of file are released although they are not complete scans, so that the
worker records them as failed with a reason instead of leaving them unseen for ever:

- a file that can never be a scan (``expected_size`` raises ``ScanReadError``), once stable;
- a file that stays shorter than its header promises for ``incomplete_after_s`` (a truncated
  copy or an aborted write), or that waits that long for something else (``expected_size``
  raises `ScanIncompleteError` naming it, e.g. a MATRIX file's result chain file): the worker
  then retries it with backoff before failing it, and the note says what was missing.

A file that holds no image (``expected_size`` raises `NotAnImageError`, e.g. an .sm4 of
spectra only) is dropped once stable: logged, never queued, nothing recorded.

Only ready files are hashed (sha256, streamed).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from defectwatch.daemon.ports import ExpectedSize, JobQueue
from defectwatch.digest import sha256_file
from defectwatch.errors import (
    DatabaseUnavailableError,
    NotAnImageError,
    ScanIncompleteError,
    ScanReadError,
)

log = logging.getLogger(__name__)

MAX_REMEMBERED = 100_000  # files handed to the queue that this process remembers


@dataclass(frozen=True)
class ReadyFile:
    """A file ready for the queue. ``note`` says why it was released although it is not a
    complete scan (None for a complete one)."""

    path: str
    sha256: str
    size_bytes: int
    mtime_ns: int
    note: str | None = None


@dataclass
class _Seen:
    """What was last observed of one pending file."""

    size_bytes: int = -1
    mtime_ns: int = -1
    since: float = 0.0  # monotonic s when this size/mtime was first seen
    checked: bool = False  # expected size looked up for this size/mtime
    expected: int | None = None
    unreadable: str | None = None  # why expected_size says this can never be a scan
    waiting_for: str | None = None  # what an incomplete file waits for, in words
    no_image: str | None = None  # why this file holds nothing to analyse


class Readiness:
    """The pending set: nominated files, followed until ready.

    ``nominate`` is thread-safe (watchdog's thread calls it); ``poll`` is called from one
    thread, on every tick. ``skip(path, size_bytes, mtime_ns)``, when given, is asked before
    hashing (the queue's ``is_known``); a known file is dropped without being read.
    """

    def __init__(
        self,
        expected_size: ExpectedSize,
        *,
        stable_for_s: float = 2.0,
        incomplete_after_s: float = 60.0,
        skip: Callable[[str, int, int], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if stable_for_s < 0 or incomplete_after_s < stable_for_s:
            raise ValueError(
                f"need 0 <= stable_for_s ({stable_for_s}) <= incomplete_after_s "
                f"({incomplete_after_s})"
            )
        self.expected_size = expected_size
        self.stable_for_s = stable_for_s
        self.incomplete_after_s = incomplete_after_s
        self.skip = skip
        self._clock = clock
        self._wall = wall_clock
        self._lock = threading.Lock()
        self._pending: dict[str, _Seen] = {}
        self._handed: dict[str, tuple[int, int]] = {}  # path -> (size, mtime) released
        self.last_change = clock()  # monotonic s of the last nomination or observed change

    def nominate(self, path: str) -> None:
        """Add a file to the pending set (again: a no-op)."""
        with self._lock:
            if path not in self._pending:
                self._pending[path] = _Seen(since=self._clock())
                self.last_change = self._clock()

    def discard(self, path: str) -> None:
        """Stop following a file (deleted or moved away)."""
        with self._lock:
            self._pending.pop(path, None)

    def pending(self) -> list[str]:
        """Paths still being waited for."""
        with self._lock:
            return list(self._pending)

    def poll(self) -> list[ReadyFile]:
        """Check every pending file once; return (and stop following) those ready now."""
        ready: list[ReadyFile] = []
        for path in self.pending():
            with self._lock:
                seen = self._pending.get(path)
            if seen is None:
                continue
            try:
                verdict = self._check(path, seen)
            except Exception:  # a bug here must not stop the daemon: keep waiting, say so
                log.exception("%s: readiness check failed", path)
                continue
            if verdict is _WAIT:
                continue
            with self._lock:
                self._pending.pop(path, None)
            if isinstance(verdict, ReadyFile):
                ready.append(verdict)
        return ready

    def hand_over(self, queue: JobQueue) -> int:
        """Poll, and enqueue the ready files; how many were new scans (a known sha256 is
        not). A file the queue could not take (database away) is followed again."""
        added = 0
        for f in self.poll():
            try:
                new = queue.enqueue(
                    f.path, sha256=f.sha256, size_bytes=f.size_bytes, mtime_ns=f.mtime_ns
                )
            except DatabaseUnavailableError as exc:  # the worker reports the outage
                log.debug("%s: could not be queued (%s); will try again", f.path, exc)
                self.nominate(f.path)
                continue
            except Exception:
                log.exception("%s: could not be queued; will try again", f.path)
                self.nominate(f.path)
                continue
            self._remember(f)
            added += bool(new)
            if new and f.note:
                log.warning("%s: queued although %s", f.path, f.note)
            elif new:
                log.debug("%s: queued", f.path)
            else:
                log.info("%s: already recorded (same content, sha256 %s...)", f.path, f.sha256[:12])
        return added

    # -- one file -------------------------------------------------------------------------

    def _check(self, path: str, seen: _Seen) -> ReadyFile | object:
        try:
            st = _stat(path)
        except OSError:
            return _WAIT
        if st is None:
            return _GONE
        now = self._clock()
        if (st.st_size, st.st_mtime_ns) != (seen.size_bytes, seen.mtime_ns):
            if seen.size_bytes >= 0:
                self.last_change = now
            seen.size_bytes, seen.mtime_ns, seen.since = st.st_size, st.st_mtime_ns, now
            seen.checked = False
        if self._handed.get(path) == (st.st_size, st.st_mtime_ns):
            return _GONE  # this very version was already handed over
        if seen.waiting_for is not None:
            seen.checked = False  # waits for another file (a MATRIX chain file): look again
        if not seen.checked:  # once per size/mtime: ask the queue, then the header
            try:
                if self.skip is not None and self.skip(path, st.st_size, st.st_mtime_ns):
                    return _GONE
            except Exception as exc:  # noqa: BLE001 - database away: wait and ask again
                level = (
                    logging.DEBUG if isinstance(exc, DatabaseUnavailableError) else logging.WARNING
                )  # an outage is reported once, by the worker
                log.log(level, "%s: could not ask the queue about it (%s)", path, exc)
                return _WAIT
            seen.expected, seen.unreadable, seen.waiting_for, seen.no_image = self._expected(path)
            seen.checked = True

        watched_s = now - seen.since
        # a file's own mtime also says how long it has been left alone (clock skew on a share
        # only ever makes this smaller: a future mtime counts as 0)
        quiet_s = max(watched_s, self._wall() - st.st_mtime_ns / 1e9)
        if seen.no_image is not None:
            if quiet_s < self.stable_for_s:
                return _WAIT
            log.info("%s: skipped (%s)", path, seen.no_image)
            return _GONE
        if seen.unreadable is not None:
            if quiet_s < self.stable_for_s:
                return _WAIT
            return self._release(path, st, note=seen.unreadable)
        if seen.expected is None or st.st_size < seen.expected:
            # incomplete: only time we have watched counts (a skewed mtime must not fail it)
            if watched_s < self.incomplete_after_s:
                return _WAIT
            promised = "" if seen.expected is None else f" of {seen.expected}"
            waiting = f"; {seen.waiting_for}" if seen.waiting_for else ""
            return self._release(
                path,
                st,
                note=(
                    f"incomplete ({st.st_size}{promised} bytes, unchanged for {watched_s:.0f} s"
                    f"{waiting})"
                ),
            )
        if quiet_s < self.stable_for_s:
            return _WAIT
        return self._release(path, st, note=None)

    def _expected(self, path: str) -> tuple[int | None, str | None, str | None, str | None]:
        """(expected size, why unreadable, what it waits for, why it holds no image)."""
        try:
            return self.expected_size(path), None, None, None
        except ScanIncompleteError as exc:
            return None, None, str(exc), None
        except NotAnImageError as exc:
            return None, None, None, str(exc)
        except ScanReadError as exc:
            return None, str(exc), None, None
        except Exception as exc:  # noqa: BLE001 - a file must never stop the daemon
            log.warning(
                "%s: size check failed (%s: %s); the worker will decide",
                path,
                type(exc).__name__,
                exc,
            )
            return None, f"{type(exc).__name__}: {exc}", None, None

    def _release(self, path: str, st: os.stat_result, *, note: str | None) -> ReadyFile | object:
        try:
            digest = sha256_file(path)
        except FileNotFoundError:
            return _GONE
        except OSError as exc:
            log.warning(
                "%s: cannot read it to hash it (%s); will try again", path, exc.strerror or exc
            )
            return _WAIT
        try:
            after = _stat(path)
        except OSError:
            return _WAIT
        if after is None:
            return _GONE
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            return _WAIT  # changed while being hashed: the next tick sees the new state
        return ReadyFile(path, digest, st.st_size, st.st_mtime_ns, note)

    def _remember(self, ready: ReadyFile) -> None:
        self._handed[ready.path] = (ready.size_bytes, ready.mtime_ns)
        if len(self._handed) > MAX_REMEMBERED:
            for key in list(self._handed)[: MAX_REMEMBERED // 10]:
                del self._handed[key]


_WAIT = object()
_GONE = object()


def _stat(path: str) -> os.stat_result | None:
    """The file's stat; None when it is gone or not a regular file."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:  # e.g. a network share that is briefly away: wait and see
        log.debug("%s: stat failed (%s)", path, exc)
        raise
    return st if stat.S_ISREG(st.st_mode) else None
