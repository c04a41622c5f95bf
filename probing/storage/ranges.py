"""`Ranges`: a set of non-negative integers kept as sorted, disjoint half-open intervals.

Which examples are stored, which rows are on disk, which ids a rank owns: all are runs of consecutive
integers with few gaps, so they are kept (and recorded in run metadata) as ``[[start, stop], ...]``,
a few numbers where an id array would be one integer per example.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np


class Ranges:
    """An immutable set of integers as sorted disjoint intervals ``[starts[i], stops[i])``."""

    __slots__ = ("starts", "stops")

    def __init__(self, starts: Sequence[int] | np.ndarray = (), stops: Sequence[int] | np.ndarray = ()) -> None:
        a = np.asarray(starts, dtype=np.int64).reshape(-1)
        b = np.asarray(stops, dtype=np.int64).reshape(-1)
        if len(a) != len(b):
            raise ValueError(f"{len(a)} starts for {len(b)} stops")
        keep = b > a
        a, b = a[keep], b[keep]
        if len(a) > 1:
            order = np.argsort(a, kind="stable")
            a, b = a[order], b[order]
            # merge overlapping or touching intervals
            reach = np.maximum.accumulate(b)
            new = np.ones(len(a), dtype=bool)
            new[1:] = a[1:] > reach[:-1]
            firsts = np.flatnonzero(new)
            lasts = np.concatenate([firsts[1:] - 1, [len(a) - 1]])
            a, b = a[firsts], reach[lasts]
        self.starts = a
        self.stops = b

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def span(cls, start: int, stop: int) -> Ranges:
        return cls([start], [stop])

    @classmethod
    def of(cls, values: Iterable[int] | np.ndarray) -> Ranges:
        """The set of the given integers (any order, duplicates allowed)."""
        v = np.unique(np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=np.int64))
        if len(v) == 0:
            return cls()
        breaks = np.flatnonzero(np.diff(v) != 1) + 1
        starts = v[np.concatenate([[0], breaks])]
        stops = v[np.concatenate([breaks - 1, [len(v) - 1]])] + 1
        return cls(starts, stops)

    @classmethod
    def from_list(cls, pairs: Sequence[Sequence[int]]) -> Ranges:
        """From the JSON form ``[[start, stop], ...]``."""
        if not pairs:
            return cls()
        arr = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        return cls(arr[:, 0], arr[:, 1])

    def to_list(self) -> list[list[int]]:
        """The JSON form ``[[start, stop], ...]``."""
        return [[int(a), int(b)] for a, b in zip(self.starts, self.stops, strict=True)]

    # -- set algebra -----------------------------------------------------------------------------
    def __or__(self, other: Ranges) -> Ranges:
        return Ranges(np.concatenate([self.starts, other.starts]), np.concatenate([self.stops, other.stops]))

    def __and__(self, other: Ranges) -> Ranges:
        if not len(self.starts) or not len(other.starts):
            return Ranges()
        # every pair of intervals that overlap: walk both sorted lists
        starts, stops = [], []
        i = j = 0
        a0, a1, b0, b1 = self.starts, self.stops, other.starts, other.stops
        while i < len(a0) and j < len(b0):
            lo, hi = max(a0[i], b0[j]), min(a1[i], b1[j])
            if lo < hi:
                starts.append(lo)
                stops.append(hi)
            if a1[i] < b1[j]:
                i += 1
            else:
                j += 1
        return Ranges(starts, stops)

    def __sub__(self, other: Ranges) -> Ranges:
        return self & other.complement(self.min(), self.max_stop())

    def complement(self, start: int, stop: int) -> Ranges:
        """``[start, stop)`` minus this set."""
        if stop <= start:
            return Ranges()
        inner = self & Ranges.span(start, stop)
        starts = np.concatenate([[start], inner.stops])
        stops = np.concatenate([inner.starts, [stop]])
        return Ranges(starts, stops)

    def clip(self, start: int, stop: int) -> Ranges:
        return self & Ranges.span(start, stop)

    # -- queries ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        """How many integers the set holds."""
        return int((self.stops - self.starts).sum())

    def __bool__(self) -> bool:
        return bool(len(self.starts))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Ranges)
            and np.array_equal(self.starts, other.starts)
            and np.array_equal(self.stops, other.stops)
        )

    def __hash__(self) -> int:
        return hash((self.starts.tobytes(), self.stops.tobytes()))

    def __repr__(self) -> str:
        shown = self.to_list()
        return f"Ranges({shown[:4]}{' ...' if len(shown) > 4 else ''}, n={len(self)})"

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((int(a), int(b)) for a, b in zip(self.starts, self.stops, strict=True))

    def min(self) -> int:
        return int(self.starts[0]) if len(self.starts) else 0

    def max_stop(self) -> int:
        return int(self.stops[-1]) if len(self.stops) else 0

    def covers(self, start: int, stop: int) -> bool:
        """True if every integer of ``[start, stop)`` is in the set (an empty span is covered)."""
        if stop <= start:
            return True
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        return i >= 0 and self.stops[i] >= stop

    def covers_each(self, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
        """`covers` for many spans at once (a boolean array)."""
        starts = np.asarray(starts, dtype=np.int64)
        stops = np.asarray(stops, dtype=np.int64)
        empty = stops <= starts
        if not len(self.starts):
            return empty
        i = np.searchsorted(self.starts, starts, side="right") - 1
        ok = (i >= 0) & (self.stops[np.clip(i, 0, None)] >= stops)
        return ok | empty

    def contains(self, values: np.ndarray) -> np.ndarray:
        """A boolean array: which of ``values`` are in the set."""
        values = np.asarray(values, dtype=np.int64)
        return self.covers_each(values, values + 1)

    def values(self) -> np.ndarray:
        """Every integer of the set, sorted (an int64 array: use on bounded sets only)."""
        if not len(self.starts):
            return np.zeros(0, dtype=np.int64)
        lengths = self.stops - self.starts
        offsets = np.repeat(self.starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        return np.arange(int(lengths.sum()), dtype=np.int64) + offsets
