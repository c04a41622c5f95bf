"""Stop cleanly on the signals a cluster sends before it preempts a job (SIGTERM, SIGUSR1, SIGUSR2).

The handler only records the signal; the writer callback checks it after each batch, flushes what
this rank has, records progress and raises `Preempted`, and the CLI exits with `EXIT_PREEMPTED` so
that a requeued job (or the user) runs the same command again with ``resume=true``.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

PREEMPTION_SIGNALS = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGUSR1", "SIGUSR2")) if s is not None
)
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped early, resumable


class Preempted(Exception):
    """Raised on a rank that received a preemption signal, after flushing its rows."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(
            f"stopped by {signal.Signals(signum).name}; what was computed is stored. Run the same "
            "command again with resume=true to finish."
        )


class PreemptionHandler:
    """Records the first preemption signal; forwards it to DDP child processes if there are any."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.children: Any = None  # a Lightning launcher with a .kill(signum), set once known
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in PREEMPTION_SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)

    def restore(self) -> None:
        for s, handler in self._previous.items():
            if handler is not None:
                signal.signal(s, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            log.warning("pid %d received %s: stopping after this batch", os.getpid(), signal.Signals(signum).name)
            self.signum = signum
            kill = getattr(self.children, "kill", None)
            if callable(kill) and signum != signal.SIGTERM:  # Lightning forwards SIGTERM itself
                kill(signum)

    def check(self) -> None:
        """Raise `Preempted` if a signal arrived."""
        if self.signum is not None:
            raise Preempted(self.signum)
