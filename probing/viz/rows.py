"""A bounded, seeded sample of a run's rows: what every picture reads (never a whole large layer)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np

from probing.errors import ConfigError
from probing.probes.rows import Rows, as_rows
from probing.storage.reader import RunReader

#: most rows a projection or a similarity reads by default (a seeded sample of a larger run)
MAX_ROWS = 2000

RunLike = str | os.PathLike[str] | RunReader


@contextlib.contextmanager
def open_rows(run: RunLike) -> Iterator[Rows]:
    """The run as rows (a token-level run: one row per word or token); a path is opened and closed here."""
    if isinstance(run, (str, os.PathLike)):
        from probing.storage.base import open_run

        reader = open_run(run)
        try:
            yield as_rows(reader)
        finally:
            reader.close()
    else:
        yield as_rows(run)


def sample_rows(n_rows: int, max_rows: int | None, seed: int) -> np.ndarray:
    """Sorted positions of a seeded uniform sample of ``max_rows`` of ``n_rows`` rows (all of them when fewer)."""
    if max_rows is not None and max_rows < 3:
        raise ConfigError(f"max_rows must be >= 3 (or None for every row), got {max_rows}.")
    if max_rows is None or n_rows <= max_rows:
        return np.arange(n_rows, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_rows, size=max_rows, replace=False)).astype(np.int64)


def read_sample(rows: Rows, layer: int | str, positions: np.ndarray) -> np.ndarray:
    """The float64 vectors of ``layer`` at ``positions`` (sorted), read in bounded blocks."""
    x = rows.read_rows(layer, positions)
    x = np.asarray(x, dtype=np.float64).reshape(len(positions), -1)
    if not np.isfinite(x).all():
        raise ConfigError(f"Layer {layer!r} holds non-finite values in the rows read; it cannot be projected.")
    return x
