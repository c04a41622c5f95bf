"""Stop cleanly on the signals a cluster sends before it preempts a job (SIGTERM, SIGUSR1, SIGUSR2), and on
Ctrl-C (SIGINT), which is handled the same way; a second Ctrl-C aborts at once.

The handler only records the signal; the writer callback checks it after each batch, flushes what
this rank has, records progress and raises `Preempted`, and the CLI exits with `EXIT_PREEMPTED` so
that a requeued job (or the user) runs the same command again with ``resume=true``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

PREEMPTION_SIGNALS = tuple(
    s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT")) if s is not None
)
EXIT_ABORTED = 130  # 128 + SIGINT: the shell's code for an interrupted command
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped early, resumable


class Preempted(Exception):
    """Raised on a rank that received a preemption signal, after flushing its rows."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.run_id: str | None = None  # set by the runner once known
        super().__init__(
            f"stopped by {signal.Signals(signum).name}; what was computed is stored. Run the same "
            "command again with resume=true to finish."
        )

    def resume_command(self, args: list[str]) -> str:
        """The command that finishes the run: the same overrides, the run's id, ``resume=true``."""
        kept = [a for a in args if not a.startswith(("run_id=", "resume="))]
        run = [f"run_id={self.run_id}"] if self.run_id else []
        return " ".join(["python -m probing", *kept, *run, "resume=true"])


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
        if signum == signal.SIGINT and self.signum is not None:
            print("\nprobing: second Ctrl-C: aborting now. Everything recorded as stored is kept; run the same "
                  "command with resume=true to finish.", file=sys.stderr, flush=True)
            os._exit(EXIT_ABORTED)
        if self.signum is None:
            if signum == signal.SIGINT:
                print("\nprobing: Ctrl-C: stopping after this batch and writing what is computed (Ctrl-C again to "
                      "abort at once)", file=sys.stderr, flush=True)
            else:
                log.warning("pid %d received %s: stopping after this batch", os.getpid(), signal.Signals(signum).name)
            self.signum = signum
            kill = getattr(self.children, "kill", None)
            # Lightning forwards SIGTERM itself; a terminal sends Ctrl-C to every process of the job
            if callable(kill) and signum not in (signal.SIGTERM, signal.SIGINT):
                kill(signum)

    def check(self) -> None:
        """Raise `Preempted` if a signal arrived."""
        if self.signum is not None:
            raise Preempted(self.signum)
