"""`Lease`: one writing job per run, at any time.

A run is written by one job. Before it creates or resumes a run, rank 0 takes the run's *lease*: a
small JSON file beside the run folder (``<run>.lease``) naming the holder (host, pid, SLURM job id,
a random token) and a heartbeat time that a background thread refreshes. Every rank of a DDP job
works under its rank 0's lease. The file is taken atomically:

- local disks and NFS/Lustre: ``O_CREAT | O_EXCL`` (atomic on NFSv3+ and Lustre);
- fsspec URLs (object stores): ``mode="xb"`` where the filesystem supports it, then read back: the
  holder is whoever's token the file holds (object stores keep the last whole write).

A second writer is refused at once (`RunLockedError`, naming the holder). A lease whose heartbeat is
older than its timeout belongs to a dead job and is taken over automatically: renamed aside (only one
contender's rename of a given file succeeds; a contender that moved a fresh lease by mistake puts it
back), checked to be the stale one, then taken afresh. On the holder's own host (and pid namespace)
a lease whose process is gone is stale at once. A holder that finds its lease taken stops writing
(`LeaseLostError`) instead of writing beside the new holder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probing.errors import ProbingError

log = logging.getLogger(__name__)

#: seconds without a heartbeat after which a lease is stale (its holder is taken to be dead)
DEFAULT_TIMEOUT = 120.0
#: leases held by this process (token -> lease), to tell a live holder in this process from a leftover
_HELD: dict[str, Lease] = {}


class RunLockedError(ProbingError, RuntimeError):
    """Another job holds the run's lease: it is being written."""


class LeaseLostError(ProbingError, RuntimeError):
    """This job's lease was taken over (its heartbeat stopped for longer than the timeout)."""


def lease_path(run_path: str) -> str:
    """Where the lease of the run at ``run_path`` lives: beside it (creating a run empties its folder)."""
    return run_path.rstrip("/") + ".lease"


def _pid_namespace() -> str:
    """This process's pid namespace (containers on one host share its name, not their pids)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _holder(token: str) -> dict[str, Any]:
    return {
        "token": token,
        "host": socket.gethostname(),
        "pid_namespace": _pid_namespace(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started": time.time(),
        "heartbeat": time.time(),
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_holder(rec: dict[str, Any], timeout: float) -> str:
    """``host pid 123 (SLURM job 9), last heartbeat 4 s ago``."""
    age = time.time() - float(rec.get("heartbeat", 0))
    job = f", SLURM job {rec['slurm_job_id']}" if rec.get("slurm_job_id") else ""
    return (f"{rec.get('host', '?')} pid {rec.get('pid', '?')}{job}, last heartbeat {age:.0f} s ago "
            f"(stale after {timeout:.0f} s)")


class _Files:
    """The few file operations a lease needs, on a local path or an fsspec URL."""

    def __init__(self, path: str) -> None:
        from probing.storage.base import is_url

        self.path = path
        self.fs: Any = None
        if is_url(path):
            from probing.storage.fs_options import url_to_fs

            run = path.rsplit(".lease", 1)[0] if ".lease" in path else None  # <run>.lease, <run>.lease.stale-*
            self.fs, self.fspath = url_to_fs(path, like=run)  # with the run's bound storage_options

    def create(self, data: bytes) -> bool:
        """Write ``data`` if the file does not exist; False if it does."""
        if self.fs is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return True
        if self.fs.exists(self.fspath):
            return False
        try:
            with self.fs.open(self.fspath, "xb") as f:
                f.write(data)
        except (FileExistsError, ValueError, NotImplementedError):
            if self.fs.exists(self.fspath):
                return False
            self.fs.pipe_file(self.fspath, data)
        return True

    def read(self) -> dict[str, Any] | None:
        try:
            raw = Path(self.path).read_bytes() if self.fs is None else self.fs.cat_file(self.fspath)
        except (FileNotFoundError, OSError):
            return None
        try:
            rec = json.loads(raw)
        except ValueError:
            return {"token": "", "heartbeat": 0}  # a torn write: treat as stale
        return rec if isinstance(rec, dict) else {"token": "", "heartbeat": 0}

    def replace(self, data: bytes) -> None:
        """Overwrite the file whole (readers see the old or the new record, never a mix)."""
        if self.fs is None:
            tmp = f"{self.path}.{secrets.token_hex(4)}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
        else:
            self.fs.pipe_file(self.fspath, data)

    def move_aside(self, suffix: str) -> str | None:
        """Rename the file to ``<path>.<suffix>``; None if another contender moved it first."""
        target = f"{self.path}.{suffix}"
        try:
            if self.fs is None:
                os.rename(self.path, target)
            else:
                self.fs.mv(self.fspath, f"{self.fspath}.{suffix}")
        except (FileNotFoundError, OSError):
            return None
        return target

    def remove(self, path: str | None = None) -> None:
        try:
            if self.fs is None:
                os.remove(path or self.path)
            else:
                self.fs.rm_file(self.fspath if path is None else path.split("://", 1)[-1])
        except (FileNotFoundError, OSError):
            pass


@dataclass
class Lease:
    """A held lease; `release` gives it back. Obtained from `acquire`."""

    path: str
    token: str
    timeout: float
    _files: _Files
    _stop: threading.Event
    _thread: threading.Thread | None = None
    lost: bool = False
    _confirmed: float = 0.0
    _absent: int = 0

    def check(self) -> None:
        """Raise `LeaseLostError` if another job took the lease over. Called before each progress record:
        on a local path the lease file is read each time (microseconds), on a URL every few seconds (the
        heartbeat also looks)."""
        now = time.monotonic()
        if not self.lost and now - self._confirmed >= (0.0 if self._files.fs is None else 5.0):
            self._look(self._files.read())
            self._confirmed = now
        if self.lost:
            raise LeaseLostError(
                f"This job's lease on the run was taken over by another job ({self.path}): its heartbeat stopped "
                f"for more than {self.timeout:.0f} s. This job stops writing; the other one continues the run."
            )

    def _look(self, rec: dict[str, Any] | None) -> None:
        """Lost: another token holds the file, or it was absent at three looks in a row (one failed read
        on a network filesystem, or a contender's move-aside-and-back, is not a loss)."""
        if rec is None:
            self._absent += 1
            self.lost = self._absent >= 3
        else:
            self._absent = 0
            self.lost = rec.get("token") != self.token

    def _beat(self) -> None:
        every = max(0.2, self.timeout / 6)
        while not self._stop.wait(every):
            rec = self._files.read()
            self._look(rec)
            if self.lost:
                log.error("the run's lease %s was taken over by another job", self.path)
                return
            if rec is None:
                continue
            rec["heartbeat"] = time.time()
            try:
                self._files.replace(json.dumps(rec).encode())
            except OSError as exc:  # a full or flaky disk: try again at the next beat
                log.warning("could not refresh the run's lease %s: %s", self.path, exc)

    def release(self) -> None:
        """Stop the heartbeat and remove the lease (if it is still ours). Safe to call twice."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        _HELD.pop(self.token, None)
        rec = self._files.read()
        if rec is not None and rec.get("token") == self.token:
            self._files.remove()


def acquire(run_path: str, timeout: float = DEFAULT_TIMEOUT) -> Lease:
    """Take the lease of the run at ``run_path``, or raise `RunLockedError` naming its live holder."""
    path = lease_path(run_path)
    files = _Files(path)
    token = secrets.token_hex(8)
    for _ in range(3):
        rec = _holder(token)
        if files.create(json.dumps(rec).encode()):
            current = files.read()
            if current is not None and current.get("token") == token:
                return _start(path, token, timeout, files)
            continue
        current = files.read()
        if current is None:
            continue  # released between our two looks
        if not _stale(current, timeout):
            raise RunLockedError(_locked_message(run_path, current, timeout))
        aside = files.move_aside(f"stale-{token}")
        if aside is None:
            continue  # another contender took it over first; look again
        moved = _Files(aside).read()
        if moved is None or moved.get("token") != current.get("token"):
            # what we moved was a fresh lease taken in between: put it back and look again
            _restore(files, aside)
            continue
        files.remove(aside)
        log.warning("took over the stale lease of %s (%s)", run_path, describe_holder(current, timeout))
    raise RunLockedError(f"Could not take the lease of {run_path}: other jobs keep taking it ({path}).")


def refuse_if_held(run_path: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Raise `RunLockedError` if a live job holds the run's lease (a cheap look, before the model loads;
    `acquire` later takes the lease atomically)."""
    rec = _Files(lease_path(run_path)).read()
    if rec is not None and not _stale(rec, timeout):
        raise RunLockedError(_locked_message(run_path, rec, timeout))


def _locked_message(run_path: str, rec: dict[str, Any], timeout: float) -> str:
    if rec.get("host") == socket.gethostname() and rec.get("pid") == os.getpid():
        return (
            f"The run at {run_path} is held by another writer in this process (a RunWriter neither finalized nor "
            "released). Call its finalize() or release() first, or close the process."
        )
    return (
        f"The run at {run_path} is being written by another job: {describe_holder(rec, timeout)}. Only one job "
        "writes a run at a time. Wait for it to finish; if it is dead, run again once its lease is stale (it is "
        f"then taken over automatically), or delete {lease_path(run_path)}."
    )


def _restore(files: _Files, aside: str) -> None:
    if files.fs is None:
        with contextlib.suppress(OSError):  # no-replace: if someone took the lease meanwhile, theirs stays
            os.link(aside, files.path)
        files.remove(aside)
    else:
        files.fs.mv(aside.split("://", 1)[-1], files.fspath)


def _stale(rec: dict[str, Any], timeout: float) -> bool:
    """A lease whose holder is dead: no heartbeat for ``timeout``, or its process gone on this host."""
    if time.time() - float(rec.get("heartbeat", 0)) > timeout:
        return True
    if rec.get("host") == socket.gethostname() and rec.get("pid_namespace", "") == _pid_namespace():
        pid = int(rec.get("pid", -1))
        if pid == os.getpid():
            return rec.get("token") not in _HELD  # a leftover of a writer of this process that is gone
        return not _pid_alive(pid)
    return False


def _start(path: str, token: str, timeout: float, files: _Files) -> Lease:
    lease = Lease(path, token, timeout, files, threading.Event())
    lease._thread = threading.Thread(target=lease._beat, name="probing-lease", daemon=True)
    lease._thread.start()
    _HELD[token] = lease
    return lease


__all__ = ["DEFAULT_TIMEOUT", "Lease", "LeaseLostError", "RunLockedError", "acquire", "lease_path", "refuse_if_held"]
