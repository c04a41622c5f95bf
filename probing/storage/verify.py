"""Checking that a stored run reads back as it was written (``probing info --verify``).

What can go wrong after a run completed, and how each is caught:

- a chunk's bytes changed (disk, copy, edit): every chunk carries a checksum (zarr's crc32c codec,
  HDF5's fletcher32), so reading it raises; the reader turns that into `DamagedRunError` naming the
  array and rows;
- a chunk file is gone: zarr would give its fill value (zeros); the reader lists each array's stored
  chunks once (a directory listing, or an object-store prefix) and refuses rows whose chunk is
  absent, and `verify_run` lists every missing chunk of every array (metadata included);
- an array's shape was edited: each array's length is checked against the run's layout when the run
  is opened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from probing.errors import DamagedRunError
from probing.storage.layout import EXAMPLES, LAYERS, ROWS, layer_path

if TYPE_CHECKING:
    from probing.storage.reader import RunReader


def damaged(run: str, path: str, start: int | None, stop: int | None, cause: BaseException | None) -> DamagedRunError:
    """The error for unreadable rows ``start..stop`` of array ``path`` of the run at ``run``."""
    what = f"layer {path[len(LAYERS) + 1:]}" if path.startswith(LAYERS + "/") else f"array {path}"
    rows = f"rows {start or 0}..{stop - 1}" if stop is not None else "its rows"
    why = (f"a chunk fails its checksum or cannot be decoded ({type(cause).__name__}: {cause})" if cause is not None
           else "the chunk is missing from the store")
    return DamagedRunError(
        f"The run at {run} is damaged: {what}, {rows}: {why}. `probing info --verify {run}` lists every damaged "
        "chunk; recompute the run (a new run_id) to recover."
    )


def expected_lengths(reader: RunReader) -> dict[str, int]:
    """Every array of a completed run and the rows it must have."""
    layout = reader.layout
    assert layout is not None
    n = int(layout.n_examples or 0)
    rows = int(layout.rows or 0)
    store = reader.store
    out: dict[str, int] = {}
    for group, length in ((LAYERS, rows), (ROWS, rows), (EXAMPLES, n)):
        for name in store.arrays(group):
            out[f"{group}/{name}"] = length
    if not layout.ragged:  # examples are rows
        out.update({p: n for p in out})
    return out


def shape_problems(reader: RunReader) -> list[str]:
    """What differs between the run's layout and the arrays' shapes (empty: nothing)."""
    layout = reader.layout
    assert layout is not None
    problems = []
    store = reader.store
    for key, shape in layout.layers.items():
        path = layer_path(key)
        if not store.exists(path):
            problems.append(f"layer {key} is missing")
            continue
        got = store.shape(path)
        want = (int(layout.rows or 0), *shape)
        if tuple(got) != want:
            problems.append(f"layer {key} has shape {tuple(got)}, the run's layout says {want}")
    for path, length in expected_lengths(reader).items():
        if path.startswith(LAYERS + "/"):
            continue
        got = store.shape(path)
        if got[0] != length:
            problems.append(f"array {path} has {got[0]} rows, the run's layout says {length}")
    return problems


def verify_run(reader: RunReader) -> list[str]:
    """Read every array of ``reader``'s run chunk by chunk; return one line per damage found."""
    if reader.partial:
        raise DamagedRunError(f"The run at {reader.path} is not completed; verify checks completed runs.")
    store = reader.store
    problems = shape_problems(reader)
    for path in expected_lengths(reader):  # the arrays that exist, each read unit by unit
        total = store.shape(path)[0]
        unit = max(1, store.write_rows(path))
        for a in range(0, total, unit):
            b = min(total, a + unit)
            try:
                reader._read(path, a, b)
            except DamagedRunError as exc:
                problems.append(f"{_name(path)}: rows {a}..{b - 1}: {_reason(exc)}")
    return problems


def _name(path: str) -> str:
    return f"layer {path[len(LAYERS) + 1:]}" if path.startswith(LAYERS + "/") else path


def _reason(exc: DamagedRunError) -> str:
    text = str(exc)
    return "checksum mismatch or undecodable chunk" if "checksum" in text else "the chunk is missing"


__all__ = ["damaged", "shape_problems", "verify_run"]
