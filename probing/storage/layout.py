"""The run layout: which arrays a run holds, their shapes and chunking, and what each rank owns.

Paths inside a run (any backend)::

    layers/<key>              [rows, *shape]  activations, in dataset order (rows = examples when pooled)
    rows/<field>              [rows]          per-row values: token_id / word_index, per-word labels
    examples/<field>          [n_examples]    per-example values: token_counts, row_counts (token level),
                                              text and every other field of the dataset
    examples/<field>.missing  [n_examples]    where a nullable field has no value
    parts/<part>/             one group per rank and attempt: its progress (``done`` ids as ranges) and
                              the seams (rows of write units it shares with another rank)

Every array is written where it will stay: rows go straight to their final place, in whole write
units (a chunk, or a shard), each written once by the one rank that owns it. A unit at the edge of a
rank's range, which two ranks share, is written by each into its own part (a *seam*) and copied into
place by finalize: at most two units per array and rank, whatever the size of the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

LAYERS = "layers"
ROWS = "rows"
EXAMPLES = "examples"
PARTS = "parts"
MISSING_SUFFIX = ".missing"

#: bytes per chunk of the activation arrays when ``chunk_rows`` is not given (zarr: aim for >= 1 MB)
CHUNK_BYTES = 2 * 2**20
#: most examples per chunk (and write unit) of the per-example arrays of token-level runs (at most the
#: rows' chunk): an example counts as stored once its unit is written, so this bounds what a stop loses
EXAMPLE_CHUNK = 1024

#: column kinds of per-example and per-row metadata
KINDS = ("bool", "int64", "float64", "str", "json")


def rows_per_chunk(row_bytes: int, chunk_rows: int | None) -> int:
    """Rows per chunk: the given number, or the power of two nearest below `CHUNK_BYTES` / ``row_bytes``."""
    if chunk_rows is not None:
        return int(chunk_rows)
    rows = max(1, CHUNK_BYTES // max(1, row_bytes))
    return int(2 ** int(np.log2(rows)))


@dataclass(frozen=True)
class Column:
    """A metadata column: its kind (`KINDS`) and whether it has missing values (a ``.missing`` mask)."""

    kind: str
    nullable: bool = False


@dataclass
class RunLayout:
    """Shapes and chunking of every array of a run; stored in the run metadata as ``layout``.

    Attributes:
        n_examples: examples in the run; None while unknown (a streamed dataset, until it ends).
        layers: row shape of each activation array (``(hidden,)`` for a block output).
        ragged: token-level run (``rows`` per example, from ``examples/row_counts``).
        total_rows: rows of the activation arrays (None: ``n_examples``, or unknown).
        row_fields: per-row values produced with the activations (``token_id``, ``word_index``) -> dtype.
        example_columns / row_columns: the dataset's fields, per example or per row (word level).
        chunk_rows: rows per chunk of the activation arrays; write_rows: rows per write unit
            (a shard, or one chunk), also the chunk of every other per-row array (and of per-example
            arrays in pooled runs, where examples are rows); example_chunk: examples per chunk of the
            per-example arrays of token-level runs.
    """

    n_examples: int | None
    layers: dict[str, tuple[int, ...]]
    ragged: bool = False
    total_rows: int | None = None
    row_fields: dict[str, str] = field(default_factory=dict)
    example_columns: dict[str, Column] = field(default_factory=dict)
    row_columns: dict[str, Column] = field(default_factory=dict)
    chunk_rows: int = 1024
    write_rows: int = 1024
    example_chunk: int = EXAMPLE_CHUNK

    @property
    def rows(self) -> int | None:
        """Rows of the activation arrays (None while unknown)."""
        return self.total_rows if self.ragged else self.n_examples

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = {k: list(v) for k, v in self.layers.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunLayout:
        d = dict(d)
        d["layers"] = {k: tuple(v) for k, v in d.get("layers", {}).items()}
        for key in ("example_columns", "row_columns"):
            d[key] = {k: Column(**v) for k, v in d.get(key, {}).items()}
        return cls(**d)


def make_layout(
    n_examples: int | None,
    layers: dict[str, tuple[int, ...]],
    *,
    itemsize: int,
    chunk_rows: int | None = None,
    shard_chunks: int | None = None,
    ragged: bool = False,
    total_rows: int | None = None,
    row_fields: dict[str, str] | None = None,
    example_columns: dict[str, Column] | None = None,
    row_columns: dict[str, Column] | None = None,
) -> RunLayout:
    """A layout with chunks of about `CHUNK_BYTES` of the widest layer (or ``chunk_rows``)."""
    widest = max((int(np.prod(s)) for s in layers.values()), default=1)
    chunk = rows_per_chunk(widest * itemsize, chunk_rows)
    rows = total_rows if ragged else n_examples
    if rows is not None and chunk_rows is None:
        chunk = max(1, min(chunk, rows))  # zarr stores an edge chunk at full size: no chunk longer than the run
    write = chunk * (shard_chunks or 1)
    return RunLayout(
        n_examples=n_examples,
        layers=dict(layers),
        ragged=ragged,
        total_rows=total_rows,
        row_fields=dict(row_fields or {}),
        example_columns=dict(example_columns or {}),
        row_columns=dict(row_columns or {}),
        chunk_rows=chunk,
        write_rows=write,
        example_chunk=min(EXAMPLE_CHUNK, chunk) if ragged else write,
    )


def layer_path(key: str) -> str:
    return f"{LAYERS}/{key}"


def part_name(attempt: int, rank: int) -> str:
    return f"a{attempt:03d}-r{rank:05d}"
