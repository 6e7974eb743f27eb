"""SIGINT/SIGTERM: the first stops warm (the scan under way is finished), the second at once."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _exit_now(code: int) -> None:
    for handler in logging.getLogger("defectwatch").handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
    os._exit(code)


class StopSignals:
    """Installs handlers (main thread only) that set ``stop`` on the first signal and call
    ``cold_exit(128 + signum)`` on the second. A context manager that restores the previous
    handlers."""

    def __init__(
        self,
        stop: threading.Event,
        *,
        cold_exit: Callable[[int], None] = _exit_now,
        signals: Sequence[signal.Signals] = STOP_SIGNALS,
    ) -> None:
        self.stop = stop
        self.cold_exit = cold_exit
        self.signals = tuple(signals)
        self.received = 0
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1
        name = signal.Signals(signum).name
        if self.received == 1:
            log.warning(
                "%s: finishing the scan under way, then stopping (again to stop at once)", name
            )
            self.stop.set()
        else:
            log.warning(
                "%s again: stopping at once; an unfinished scan is queued again at the next start",
                name,
            )
            self.cold_exit(128 + signum)

    def install(self) -> None:
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)  # type: ignore[arg-type]
        self._previous.clear()

    def __enter__(self) -> StopSignals:
        self.install()
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()
