"""Start-up reconcile: jobs of a killed daemon back to the queue, scans made while it was down
into it."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

from defectwatch.daemon.candidates import walk_candidates
from defectwatch.daemon.ports import JobQueue
from defectwatch.daemon.readiness import Readiness

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcileReport:
    """What start-up found: ``requeued`` jobs whose lease had expired, ``known`` files the
    queue already had, ``queued`` new scans, ``waiting`` files not ready yet (followed on)."""

    requeued: int
    known: int
    queued: int
    waiting: int


def nominate_unknown(
    roots: Sequence[str], *, queue: JobQueue, readiness: Readiness, pattern: str, recursive: bool
) -> tuple[int, int]:
    """Walk ``roots`` and nominate candidate files the queue does not know (by path, size and
    mtime: nothing is read or hashed here). Returns ``(known, nominated)``."""
    known = nominated = 0
    for path in walk_candidates(roots, pattern=pattern, recursive=recursive):
        try:
            st = os.stat(path)
            if queue.is_known(path, size_bytes=st.st_size, mtime_ns=st.st_mtime_ns):
                known += 1
                continue
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.debug("%s: stat failed (%s); nominated anyway", path, exc)
        readiness.nominate(path)
        nominated += 1
    return known, nominated


def reconcile(
    roots: Sequence[str], *, queue: JobQueue, readiness: Readiness, pattern: str, recursive: bool
) -> ReconcileReport:
    """Re-queue expired leases, then queue the ready files on disk the queue has never seen;
    files not ready yet stay in ``readiness``'s pending set."""
    requeued = queue.requeue_expired()
    if requeued:
        log.warning("%d scan(s) left unfinished by a stopped daemon: queued again", requeued)
    known, _ = nominate_unknown(
        roots, queue=queue, readiness=readiness, pattern=pattern, recursive=recursive
    )
    queued = readiness.hand_over(queue)
    waiting = len(readiness.pending())
    log.info(
        "start-up: %d re-queued, %d already known, %d new scan(s) queued, %d file(s) not ready yet",
        requeued,
        known,
        queued,
        waiting,
    )
    return ReconcileReport(requeued, known, queued, waiting)
