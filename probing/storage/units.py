"""`UnitBuffer`: rows gathered into whole write units and written once, straight to their final place.

A write unit is the part of an array that one stored object holds (a chunk, or a shard with zarr
sharding): writing part of one makes the store read and rewrite all of it, and two processes writing
one lose rows. So rows wait in memory until their unit is complete, then the unit is written whole,
once. With length bucketing the rows of a unit arrive within one bucketing window, so memory stays at
about a window's rows, whatever the size of the run.

A buffer owns a range of rows. A unit that lies inside it is written in place; a unit that crosses its
edge is shared with another writer, and its own rows go to a *seam* in the writer's part instead,
copied into place by `stitch_seams` once every writer is done (or when a run is resumed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from probing.faults import fault_point
from probing.storage.arrays import ArrayStore
from probing.storage.ranges import Ranges


def ragged_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``range(s, s + n)`` for each (s, n): row indices of ragged segments."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.asarray(starts, dtype=np.int64)
    offsets = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
    return np.arange(total, dtype=np.int64) + offsets


@dataclass(frozen=True)
class ColumnSpec:
    """One array of a buffer: where it goes, its row shape and dtype."""

    path: str
    shape: tuple[int, ...]
    dtype: Any


class _Unit:
    __slots__ = ("data", "filled", "count", "needed")

    def __init__(self, columns: Mapping[str, ColumnSpec], size: int, needed: int) -> None:
        self.data = {name: np.empty((size, *c.shape), dtype=c.dtype) for name, c in columns.items()}
        self.filled = np.zeros(size, dtype=bool)
        self.count = 0
        self.needed = needed


class UnitBuffer:
    """Columns that share one row index, written in whole units of ``unit`` rows.

    Args:
        store: where the arrays are (they exist already).
        columns: name -> `ColumnSpec`.
        unit: rows per write unit.
        owned: the rows this writer owns; None: every unit it touches is its own (one writer, or
            ranges aligned to units).
        end: rows of the arrays (None while unknown: units are then full-size).
        seam_group: where this writer's seams go (``parts/<part>/seams/<table>``).
        durable: rows already on disk from earlier attempts (a unit holding some is read back and
            completed, not overwritten).
    """

    def __init__(
        self,
        store: ArrayStore,
        columns: Mapping[str, ColumnSpec],
        unit: int,
        *,
        owned: Ranges | None,
        end: int | None,
        seam_group: str,
        durable: Ranges | None = None,
    ) -> None:
        self.store = store
        self.columns = dict(columns)
        self.unit = int(unit)
        self.owned = owned
        self.end = end
        self.seam_group = seam_group
        self.durable = durable if durable is not None else Ranges()
        self._open: dict[int, _Unit] = {}
        self.rows_written = 0

    # -- filling ---------------------------------------------------------------------------------
    def _bounds(self, u: int) -> tuple[int, int]:
        lo = u * self.unit
        hi = lo + self.unit if self.end is None else min(lo + self.unit, self.end)
        return lo, hi

    def _mine(self, u: int) -> Ranges:
        lo, hi = self._bounds(u)
        return Ranges.span(lo, hi) if self.owned is None else self.owned.clip(lo, hi)

    def _needed(self, u: int) -> int:
        mine = self._mine(u)
        return len(mine) - len(self.durable & mine)

    def put(self, rows: np.ndarray, data: Mapping[str, np.ndarray]) -> bool:
        """Place ``data[name][i]`` at row ``rows[i]`` of each column; write the units completed.

        Returns True if any unit (or seam) was written.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return False
        if self.end is not None and (rows.min() < 0 or rows.max() >= self.end):
            raise ValueError(f"rows {rows.min()}..{rows.max()} outside 0..{self.end - 1}")
        units = rows // self.unit
        order = np.argsort(units, kind="stable")
        units, rows = units[order], rows[order]
        cuts = np.flatnonzero(np.diff(units)) + 1
        wrote = False
        for sel in np.split(np.arange(len(rows)), cuts):
            u = int(units[sel[0]])
            buf = self._open.get(u)
            if buf is None:
                buf = self._open[u] = _Unit(self.columns, self.unit, self._needed(u))
            off = rows[sel] - u * self.unit
            src = order[sel]
            for name, values in data.items():
                buf.data[name][off] = values[src]
            buf.count += int((~buf.filled[off]).sum())
            buf.filled[off] = True
            if buf.count >= buf.needed:
                self._write(u, buf)
                del self._open[u]
                wrote = True
        return wrote

    def flush(self) -> bool:
        """Write every unit still open, as far as it is filled (a stop, or the end of this writer's rows).

        A unit of this writer's own is completed with what the store holds (read back and rewritten);
        a seam that is not complete is dropped, so its examples stay not done and are computed again.
        """
        wrote = False
        for u in sorted(self._open):
            buf = self._open.pop(u)
            if buf.count == 0:
                continue
            if self._is_seam(u) and buf.count < buf.needed:
                continue
            self._write(u, buf)
            wrote = True
        return wrote

    @property
    def open_rows(self) -> int:
        """Rows held in memory, waiting for their unit."""
        return sum(b.count for b in self._open.values())

    # -- writing ---------------------------------------------------------------------------------
    def _is_seam(self, u: int) -> bool:
        lo, hi = self._bounds(u)
        return self.owned is not None and not self.owned.covers(lo, hi)

    def _write(self, u: int, buf: _Unit) -> None:
        lo, hi = self._bounds(u)
        mine = self._mine(u)
        if self._is_seam(u):
            for a, b in mine:  # one interval for a contiguous share
                self._write_seam(u, a, b, buf, lo)
            self.durable = self.durable | mine
            return
        filled = np.flatnonzero(buf.filled[: hi - lo])
        a, b = lo + int(filled[0]), lo + int(filled[-1]) + 1
        whole = len(filled) == b - a
        for name, c in self.columns.items():
            data = buf.data[name][a - lo : b - lo]
            if not whole:  # holes: keep what the store already holds there (rows of earlier attempts)
                data = self._overlay(c.path, a, b, data, buf.filled[a - lo : b - lo])
            self.store.write(c.path, a, data)
        self.rows_written += len(filled)
        self.durable = self.durable | Ranges.of(lo + filled)

    def _overlay(self, path: str, a: int, b: int, data: np.ndarray, filled: np.ndarray) -> np.ndarray:
        old = self.store.read(path, a, b)
        out = old.astype(data.dtype, copy=True) if old.dtype != data.dtype else old.copy()
        out[filled] = data[filled]
        return out

    def _write_seam(self, u: int, a: int, b: int, buf: _Unit, lo: int) -> None:
        group = f"{self.seam_group}/u{u:010d}"
        rows = np.arange(a, b)
        missing = ~buf.filled[rows - lo]
        paths = {}
        for i, (name, c) in enumerate(self.columns.items()):
            data = buf.data[name][a - lo : b - lo]
            if missing.any():  # rows on disk from an earlier attempt
                data = self._overlay(c.path, a, b, data, ~missing)
            self.store.create(f"{group}/c{i}", b - a, c.shape, c.dtype, max(1, b - a))
            self.store.write(f"{group}/c{i}", 0, data)
            paths[f"c{i}"] = c.path
        # written last: a seam without these attributes was cut short and is ignored
        self.store.set_attrs(group, {"start": a, "stop": b, "columns": paths})
        self.rows_written += int((~missing).sum())


def stitch_seams(store: ArrayStore, parts_group: str, parts: list[str]) -> int:
    """Copy every seam of ``parts`` into its array, then delete it; returns the rows copied.

    A seam holds the rows of a shared unit that one writer owned; copying a seam writes part of a unit,
    which the store completes with what it already holds (the other writers' seams, earlier rows).
    Copying is idempotent, so a stop in the middle is finished by the next call.
    """
    copied = 0
    for part in parts:
        base = f"{parts_group}/{part}/seams"
        for table in store.groups(base):
            for unit in store.groups(f"{base}/{table}"):
                group = f"{base}/{table}/{unit}"
                attrs = store.get_attrs(group)
                if "start" not in attrs:  # a seam cut short while being written: its rows are not done
                    continue
                for name, path in attrs["columns"].items():
                    store.write(path, int(attrs["start"]), store.read(f"{group}/{name}"))
                    fault_point("stitch")
                copied += int(attrs["stop"]) - int(attrs["start"])
        store.delete(base)
    return copied
