"""A pooled run made from a token-level run that kept every token, without the model.

`MeanStrategy`, `MaxStrategy`, `LastTokenStrategy` and `CLSStrategy` (without the pooler) pool a
layer's states over an example's attention-mask tokens; a ``tokens`` run with ``keep_special=true``
stored exactly those states, in order, so pooling its rows gives the same vectors (to float rounding:
the mean is summed in float64 here, in float32 by the model's pass). The new run is written through
the ordinary writer (`Storage.open_run`, then `finalize`), in blocks of examples: memory stays at one
block of rows, whatever the run's size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from probing.errors import ConfigError
from probing.storage.columns import decode
from probing.storage.identity import pool_rows
from probing.storage.layout import EXAMPLES, MISSING_SUFFIX


def _column_values(reader: Any, field: str, col: Any, s: int, e: int) -> list[Any]:
    """Examples ``s:e`` of a per-example field, decoded (None where missing), read as one slice."""
    path = f"{EXAMPLES}/{field}"
    missing = reader._read(path + MISSING_SUFFIX, s, e) if col.nullable else None
    values = decode(reader._read(path, s, e), col, missing)
    if isinstance(values, np.ma.MaskedArray):
        return [None if m else v for v, m in zip(values.data.tolist(), np.ma.getmaskarray(values), strict=True)]
    return [None if missing is not None and m else v
            for v, m in zip(values.tolist(), missing if missing is not None else [False] * (e - s), strict=True)]


def pool_from_tokens(reader: Any, storage: Any, run_id: str, meta: dict[str, Any], layers: list[str],
                     strategy: str, block_examples: int = 4096) -> str:
    """Write a pooled run ``run_id`` of ``layers`` (keys of ``reader``) pooled with ``strategy`` from the
    token-level ``reader``; ``meta`` is the new run's metadata. Returns the new run's path."""
    offsets = reader.offsets
    n = reader.n_examples
    counts = np.diff(offsets)
    if n and counts.min() == 0:
        raise ConfigError(f"{reader.path} has examples without tokens, which have no pooled value to derive.")
    shapes = {k: tuple(reader.store.shape(f"layers/{k}")[1:]) for k in layers}
    columns = dict(reader.layout.example_columns) if reader.layout is not None else {}
    layout = storage.layout(n, shapes, example_columns=columns)
    writer = storage.open_run(run_id, metadata=meta, layout=layout)
    fields = [f for f in reader.example_fields if f in columns]
    for b, s in enumerate(range(0, n, block_examples)):
        e = min(n, s + block_examples)
        lo, hi = int(offsets[s]), int(offsets[e])
        acts = {k: pool_rows(reader._read(f"layers/{k}", lo, hi), offsets[s : e + 1] - lo, strategy) for k in layers}
        writer.append(b, acts, {
            "example_ids": np.arange(s, e),
            "token_counts": reader._read(f"{EXAMPLES}/token_counts", s, e),
            "columns": {f: _column_values(reader, f, columns[f], s, e) for f in fields},
        })
    writer.finalize()
    return str(writer.path)
