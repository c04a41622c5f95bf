"""Metadata columns keep their types: how per-example (and per-row) values are stored and read back.

Kinds (`probing.storage.layout.KINDS`): ``bool``, ``int64`` and ``float64`` as numbers, ``str`` as
variable-length strings, ``json`` for anything else (lists, dicts, mixed types), one JSON text per
value. A column with missing values (None, or nulls in Arrow) is *nullable*: a ``.missing`` mask is
stored beside it and reading gives a masked array (numbers) or None (strings, JSON) where a value is
missing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from probing.storage.arrays import STR
from probing.storage.layout import Column

_NUMERIC = {"bool": np.bool_, "int64": np.int64, "float64": np.float64}


def infer_column(values: Sequence[Any] | np.ndarray) -> Column:
    """The kind of a column of Python (or numpy) values."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        kind = {"b": "bool", "i": "int64", "u": "int64", "f": "float64"}[values.dtype.kind]
        return Column(kind)
    present = [v for v in values if v is not None]
    nullable = len(present) < len(values)
    if not present:
        return Column("str", nullable)
    if all(isinstance(v, (bool, np.bool_)) for v in present):
        return Column("bool", nullable)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in present):
        return Column("int64", nullable)
    numbers = (int, float, np.integer, np.floating)
    if all(isinstance(v, numbers) and not isinstance(v, (bool, np.bool_)) for v in present):
        return Column("float64", nullable)
    if all(isinstance(v, str) for v in present):
        return Column("str", nullable)
    return Column("json", nullable)


def merge_columns(a: Column, b: Column) -> Column:
    """The kind that holds the values of two blocks of one column (e.g. int, then float -> float64)."""
    nullable = a.nullable or b.nullable
    if a.kind == b.kind:
        return Column(a.kind, nullable)
    if {a.kind, b.kind} <= {"int64", "float64"}:
        return Column("float64", nullable)
    return Column("json", nullable)


def storage_dtype(column: Column) -> Any:
    """The array dtype a column is stored with."""
    return _NUMERIC.get(column.kind, STR)


def encode(values: Sequence[Any] | np.ndarray, column: Column) -> tuple[np.ndarray, np.ndarray | None]:
    """Values as the stored array, and the missing-value mask (None for a column that is not nullable)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf" and column.kind in _NUMERIC:
        cast: np.ndarray = values.astype(_NUMERIC[column.kind], copy=False)
        return cast, (np.zeros(len(cast), dtype=bool) if column.nullable else None)
    missing = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
    kind = column.kind
    if kind in _NUMERIC:
        fill = {"bool": False, "int64": 0, "float64": np.nan}[kind]
        data: np.ndarray = np.asarray([fill if v is None else v for v in values], dtype=_NUMERIC[kind])
    elif kind == "str":
        data = np.asarray(["" if v is None else str(v) for v in values], dtype=object)
    else:
        data = np.asarray(["" if v is None else json.dumps(_plain(v)) for v in values], dtype=object)
    return data, (missing if column.nullable else None)


def decode(data: np.ndarray, column: Column, missing: np.ndarray | None) -> np.ndarray:
    """The stored array as the user's values: numbers (a masked array where values are missing),
    strings, or the JSON values (object arrays, None where missing)."""
    if column.kind in _NUMERIC:
        if missing is not None and missing.any():
            return np.ma.MaskedArray(data, mask=missing)
        return data
    if column.kind == "json":
        out = np.empty(len(data), dtype=object)
        out[:] = [None if (missing is not None and m) else json.loads(v) for v, m in _with_mask(data, missing)]
        return out
    if missing is not None and missing.any():
        out = np.asarray(data, dtype=object).copy()
        out[missing] = None
        return out
    return np.asarray(data, dtype=object)


def _with_mask(data: np.ndarray, missing: np.ndarray | None) -> Any:
    return zip(data, missing if missing is not None else np.zeros(len(data), dtype=bool), strict=True)


def _plain(v: Any) -> Any:
    """numpy scalars and arrays as JSON-able Python values."""
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v
