"""Fault injection for the resume tests: ``PROBING_FAULT=<point>[:<n>]`` kills the process (SIGKILL)
the n-th time (default first) it reaches a named point. Points: ``before_first_batch``,
``after_flush``, ``finalize``. Unset in normal use: a dictionary lookup per call."""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get("PROBING_FAULT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    rank = os.environ.get("PROBING_FAULT_RANK")
    if rank is not None and rank != os.environ.get("LOCAL_RANK", "0"):
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
