"""Give back the memory-mapped pages of a dataset's Arrow files once a window has been read.

``datasets`` maps its Arrow files into memory; every page a run reads stays counted in its resident
memory (RSS) until the kernel needs it, so a run over a large file would show an RSS that grows with
the file, though nothing is held. A rank reads its share front to back, window by window, so the
pages it has read are not needed again: `release` tells the kernel so (``madvise(MADV_DONTNEED)``
on those mappings; a page read again is simply mapped again). Linux only; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterable

MADV_DONTNEED = 4
_libc: ctypes.CDLL | None = None


def _madvise() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        except OSError:
            return None
    return _libc


def release(files: Iterable[str]) -> int:
    """Drop this process's resident pages of the read-only mappings of ``files``; returns the bytes advised."""
    wanted = {os.path.realpath(f) for f in files}
    if not wanted or not os.path.exists("/proc/self/maps"):
        return 0
    libc = _madvise()
    if libc is None:
        return 0
    advised = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or "w" in parts[1] or parts[5].strip() not in wanted:
                continue
            start, stop = (int(x, 16) for x in parts[0].split("-"))
            if libc.madvise(start, stop - start, MADV_DONTNEED) == 0:
                advised += stop - start
    return advised


def cache_files(dataset: object) -> list[str]:
    """The Arrow files a ``datasets.Dataset`` reads (none for in-memory data)."""
    files = getattr(dataset, "cache_files", None) or []
    return [f["filename"] for f in files if isinstance(f, dict) and "filename" in f]
