"""Folder watching: watchdog events nominate candidate files for the readiness check.

Events never enqueue anything themselves: a created, modified, closed or moved-in file only
joins the pending set of `Readiness`, which the runner re-checks on every tick. So a file
written in many chunks over many seconds is queued once, when it is complete and stable.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from defectwatch.daemon.candidates import is_candidate, walk_candidates
from defectwatch.daemon.readiness import Readiness
from defectwatch.errors import ConfigError

log = logging.getLogger(__name__)


def _text(path: bytes | str) -> str:
    return os.fsdecode(path)


class NominatingHandler(FileSystemEventHandler):
    """Turns the events of one watched root into nominations (and deletions into discards)."""

    def __init__(self, readiness: Readiness, *, root: str, pattern: str, recursive: bool) -> None:
        self.readiness = readiness
        self.root = os.path.abspath(root)
        self.pattern = pattern
        self.recursive = recursive

    def _nominate(self, path: str) -> None:
        if is_candidate(path, root=self.root, pattern=self.pattern, recursive=self.recursive):
            log.debug("candidate %s", path)
            self.readiness.nominate(path)

    def _nominate_tree(self, folder: str) -> None:
        """A folder created or moved in: its files may never get events of their own."""
        if not self.recursive or not is_candidate(
            os.path.join(folder, "x"), root=self.root, pattern="*", recursive=True
        ):
            return
        for path in walk_candidates([folder], pattern=self.pattern, recursive=True):
            self._nominate(path)

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self._dispatch(event)
        except Exception:  # an event must never kill watchdog's thread
            log.exception("watch event %r failed", event)

    def _dispatch(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        src = _text(event.src_path)
        if kind == "moved":
            dest = _text(event.dest_path)
            if event.is_directory:
                self._nominate_tree(dest)
            else:
                self.readiness.discard(src)
                self._nominate(dest)
        elif kind == "deleted":
            if not event.is_directory:
                self.readiness.discard(src)
        elif kind in ("created", "modified", "closed"):
            if event.is_directory:
                if kind == "created":
                    self._nominate_tree(src)
            else:
                self._nominate(src)


def make_observer(poll_s: float | None) -> BaseObserver:
    """watchdog's native observer, or a polling one every ``poll_s`` seconds (network shares,
    where inotify and friends see nothing)."""
    if poll_s is None:
        return Observer()
    if poll_s <= 0:
        raise ConfigError(f"--poll {poll_s:g}: the polling interval must be > 0 seconds")
    return PollingObserver(timeout=poll_s)


class FolderWatcher:
    """Watches ``roots`` and nominates candidates into ``readiness``; a context manager."""

    def __init__(
        self,
        roots: Sequence[str],
        readiness: Readiness,
        *,
        pattern: str = "*.sxm",
        recursive: bool = False,
        poll_s: float | None = None,
    ) -> None:
        self.roots = [os.path.abspath(r) for r in roots]
        self.readiness = readiness
        self.pattern = pattern
        self.recursive = recursive
        self.poll_s = poll_s
        self._observer: BaseObserver | None = None

    def start(self) -> None:
        """Start watching (raises ConfigError naming the folder when that is impossible)."""
        observer = make_observer(self.poll_s)
        for root in self.roots:
            handler = NominatingHandler(
                self.readiness, root=root, pattern=self.pattern, recursive=self.recursive
            )
            observer.schedule(handler, root, recursive=self.recursive)
        try:
            observer.start()
        except OSError as exc:
            hint = (
                " (inotify watch limit? raise fs.inotify.max_user_watches or use --poll)"
                if self.poll_s is None
                else ""
            )
            raise ConfigError(
                f"cannot watch {', '.join(self.roots)}: {exc.strerror or exc}{hint}"
            ) from exc
        self._observer = observer
        how = f"polling every {self.poll_s:g} s" if self.poll_s else type(observer).__name__
        log.info(
            "watching %s for %s (%s%s)",
            ", ".join(self.roots),
            self.pattern,
            how,
            ", recursive" if self.recursive else "",
        )

    def stop(self) -> None:
        """Stop watching and wait for watchdog's threads."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
            self._observer = None

    def __enter__(self) -> FolderWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
