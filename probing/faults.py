"""Fault injection for the resume tests.

``PROBING_FAULT=<point>[:<n>[:<SIGNAL>]]`` sends the process a signal (SIGKILL by default) the n-th
time (default: the first) it reaches a named point:

- ``after_create``: an array's metadata was written, none of its chunks (the n-th array);
- ``before_first_batch``;
- ``before_record``: a write unit's rows are on disk, its examples not yet recorded as done;
- ``after_flush``: examples were recorded as done;
- ``stitch``: one seam column was copied into place, the rest not (finalize or a resume);
- ``finalize``: every row in place, the completed flag not yet set.

``PROBING_FAULT_RANK`` limits it to one local rank. Unset in normal use, where a call costs one
dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get("PROBING_FAULT")
    if not spec:
        return
    point, _, rest = spec.partition(":")
    if point != name:
        return
    rank = os.environ.get("PROBING_FAULT_RANK")
    local = os.environ.get("LOCAL_RANK") or os.environ.get("SLURM_LOCALID") or "0"  # srun sets only the latter
    if rank is not None and rank != local:
        return
    nth, _, sig = rest.partition(":")
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(nth or 1):
        os.kill(os.getpid(), getattr(signal, sig or "SIGKILL"))
