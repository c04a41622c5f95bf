"""Zarr v3 storage: the default, streamed into by every rank at once.

Layout of a run folder::

    <root>/<run_id>/            group; attrs["probing"] = run metadata (``completed`` set last)
        parts/a<attempt>-r<rank>/   one group per rank and attempt, written by that process only:
            <layer key>             [rows, dim] in arrival order, written in whole chunks
            token_counts, ids       [rows]; ``ids`` is written last, so it says what is safely stored
        layers/<layer key>          [n_examples, dim] in dataset order (written by finalize)
        examples/<field>            [n_examples] per-example metadata: text, labels, token_counts

No two processes ever write the same chunk (zarr v3 loses rows otherwise). ``finalize`` merges the
parts into ``layers/`` in blocks of bounded size and then deletes them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from probing.errors import ConfigError, RunIncompleteError
from probing.faults import fault_point
from probing.storage.base import (
    RunReader,
    RunWriter,
    Storage,
    check_batch,
    check_can_write,
    check_resume,
    new_run_id,
    total_progress,
    utc_now,
)

log = logging.getLogger(__name__)

STORAGE_DTYPES = ("float32", "float16")
COMPRESSORS = ("none", "zstd", "blosc")


def is_zarr_run(path: Path) -> bool:
    """True if ``path`` is a zarr group written by `probing`."""
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        return "probing" in json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        return False


def _compressors(name: str, level: int | None) -> Any:
    if name == "none":
        return None
    from zarr.codecs import BloscCodec, ZstdCodec

    if name == "zstd":
        return ZstdCodec(level=3 if level is None else level)
    if name == "blosc":
        return BloscCodec(cname="zstd", clevel=3 if level is None else level, shuffle="shuffle")
    raise ConfigError(f"Unknown compressor {name!r}; expected one of {COMPRESSORS}.")


class ZarrStorage(Storage):
    """Runs as Zarr v3 groups under ``root``.

    Args:
        root: output folder.
        dtype: ``float32`` (default) or ``float16``. bfloat16 is not a zarr dtype and is refused:
            store float32 (exact) or float16 (half the size) instead.
        chunk_rows: examples per chunk; default: about 2 MiB per chunk.
        compressor: ``none`` (default: activations compress poorly and codecs slow writes), ``zstd``
            or ``blosc`` (zstd with byte shuffle).
        merge_block_bytes: memory used per block when finalize puts rows in dataset order.
    """

    def __init__(
        self,
        root: str,
        *,
        dtype: str = "float32",
        chunk_rows: int | None = None,
        compressor: str = "none",
        compression_level: int | None = None,
        merge_block_bytes: int = 64 * 2**20,
    ) -> None:
        super().__init__(root)
        if dtype not in STORAGE_DTYPES:
            raise ConfigError(
                f"Storage dtype {dtype!r} is not supported; expected one of {STORAGE_DTYPES}. "
                "(bfloat16 is not a zarr dtype: use float32, or float16 for half the size.)"
            )
        if chunk_rows is not None and chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be >= 1, got {chunk_rows}.")
        self.dtype = np.dtype(dtype)
        self.chunk_rows = chunk_rows
        self.compressor = compressor
        self.compression_level = compression_level
        self.merge_block_bytes = merge_block_bytes
        _compressors(compressor, compression_level)  # validate now, not mid-run

    def rows_per_chunk(self, dim: int) -> int:
        if self.chunk_rows is not None:
            return self.chunk_rows
        rows = max(1, (2 * 2**20) // max(1, dim * self.dtype.itemsize))
        return int(2 ** int(np.log2(rows)))

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "zarr",
            "dtype": str(self.dtype),
            "chunk_rows": self.chunk_rows,
            "compressor": self.compressor,
            "compression_level": self.compression_level,
        }

    def open_run(
        self,
        run_id: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
        resume: bool = False,
    ) -> ZarrRunWriter:
        import zarr

        run_id = run_id or new_run_id()
        path = self.run_path(run_id)
        meta = dict(metadata or {})
        meta.setdefault("storage", self.describe())
        if rank == 0:
            if is_zarr_run(Path(path)):
                group: Any = zarr.open_group(path, mode="r+")
                old = dict(group.attrs["probing"])
                check_can_write(path, bool(old.get("completed")), resume)
                if metadata is not None:
                    check_resume(old, meta)
                old["attempts"] = int(old.get("attempts", 0)) + 1
                old.setdefault("resumed_at", []).append(utc_now())
                group.attrs["probing"] = old
                meta = old
            else:
                if Path(path).exists() and any(Path(path).iterdir()):
                    raise ConfigError(f"{path} exists and is not a probing run; choose another run_id or folder.")
                group = zarr.open_group(path, mode="w")
                group.require_group("parts")
                meta.update(run_id=run_id, completed=False, attempts=0, created=meta.get("created", utc_now()))
                group.attrs["probing"] = meta
        else:
            group = zarr.open_group(path, mode="r+")
            meta = dict(group.attrs["probing"])
        return ZarrRunWriter(self, run_id, path, group, meta, rank=rank, world_size=world_size)


class ZarrRunWriter(RunWriter):
    """Buffers one rank's rows and writes them as whole chunks of its own part arrays."""

    def __init__(
        self,
        storage: ZarrStorage,
        run_id: str,
        path: str,
        group: Any,
        meta: dict[str, Any],
        *,
        rank: int,
        world_size: int,
    ) -> None:
        self.storage = storage
        self.run_id = run_id
        self.path = path
        self.group = group
        self.meta = meta
        self.rank = rank
        self.world_size = world_size
        self.part_name = f"a{int(meta.get('attempts', 0)):03d}-r{rank:05d}"
        self.part = group.require_group(f"parts/{self.part_name}")
        self._arrays: dict[str, Any] = {}
        self._buffers: dict[str, list[np.ndarray]] = {}
        self._ids: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []
        self._buffered = 0
        self._chunk_rows: int | None = None
        self._keys: list[str] = list(meta.get("layers", []))
        self.rows_written = 0

    def append(self, batch_id: int, activations: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
        ids = check_batch(activations, metadata)
        if len(ids) == 0:
            return
        for key, value in activations.items():
            if key not in self._keys:
                self._keys.append(key)
            self._buffers.setdefault(key, []).append(np.asarray(value, dtype=self.storage.dtype))
        counts = metadata.get("token_counts")
        self._counts.append(np.asarray(counts if counts is not None else np.zeros(len(ids)), dtype=np.int32))
        self._ids.append(ids)
        self._buffered += len(ids)
        if self._chunk_rows is None:
            self._chunk_rows = self.storage.rows_per_chunk(max(v.shape[1] for v in activations.values()))
        if self._buffered >= self._chunk_rows:
            self._flush(final=False)

    def _array(self, name: str, shape: tuple[int, ...], dtype: Any) -> Any:
        arr = self._arrays.get(name)
        if arr is None:
            assert self._chunk_rows is not None
            arr = self.part.create_array(
                name,
                shape=(0, *shape),
                chunks=(self._chunk_rows, *shape),
                dtype=dtype,
                compressors=_compressors(self.storage.compressor, self.storage.compression_level)
                if len(shape)
                else None,
                overwrite=True,
            )
            self._arrays[name] = arr
        return arr

    def _flush(self, final: bool) -> None:
        if self._buffered == 0:
            return
        assert self._chunk_rows is not None
        rows = self._buffered if final else (self._buffered // self._chunk_rows) * self._chunk_rows
        ids = np.concatenate(self._ids)
        counts = np.concatenate(self._counts)
        for key, parts in self._buffers.items():
            data = np.concatenate(parts)
            self._array(key, data.shape[1:], self.storage.dtype).append(data[:rows], axis=0)
            self._buffers[key] = [data[rows:]] if rows < len(data) else []
        self._array("token_counts", (), np.int32).append(counts[:rows], axis=0)
        self._array("ids", (), np.int64).append(ids[:rows], axis=0)  # last: marks the rows as stored
        fault_point("after_flush")
        self._ids = [ids[rows:]] if rows < len(ids) else []
        self._counts = [counts[rows:]] if rows < len(counts) else []
        self._buffered -= rows
        self.rows_written += rows

    def close(self) -> None:
        self._flush(final=True)

    def record_progress(self, progress: Mapping[str, Any]) -> None:
        self.part.attrs["progress"] = {**progress, "rows_stored": self.rows_written, "updated": utc_now()}

    def _parts(self) -> list[Any]:
        return [g for _, g in sorted(self.group["parts"].groups())]

    def done_ids(self) -> np.ndarray:
        found = [p["ids"][:] for p in self._parts() if "ids" in p]
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def finalize(
        self, example_metadata: Mapping[str, Sequence[Any]] | None = None, *, stats: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        self.close()
        meta = dict(self.group.attrs["probing"])
        keys = list(meta.get("layers") or self._keys)
        parts = [p for p in self._parts() if "ids" in p]
        ids_of = {p.name: p["ids"][:] for p in parts}
        all_ids = np.concatenate(list(ids_of.values())) if ids_of else np.zeros(0, dtype=np.int64)
        n = int(meta.get("dataset", {}).get("n_examples", int(all_ids.max()) + 1 if len(all_ids) else 0))
        _check_exactly_once(all_ids, n, self.path)
        out = self.group.require_group("layers")
        for key in keys:
            dim = next((p[key].shape[1] for p in parts if key in p), int(meta.get("hidden_size") or 0))
            self._merge(out, key, dim, n, parts, ids_of)
        examples = self.group.require_group("examples")
        counts = np.zeros(n, dtype=np.int32)
        for p in parts:
            counts[ids_of[p.name]] = p["token_counts"][: len(ids_of[p.name])]
        _write_column(examples, "token_counts", counts)
        fields = ["token_counts"]
        for field, values in (example_metadata or {}).items():
            if len(values) != n:
                raise ConfigError(f"Metadata field {field!r} has {len(values)} values for {n} examples.")
            fields.append(field)
            if _write_column(examples, field, values):
                meta.setdefault("json_fields", []).append(field)
        meta.update(layers=keys, example_fields=fields, completed=True, finished=utc_now())
        meta.setdefault("dataset", {})["n_examples"] = n
        progress = {p.name.rsplit("/", 1)[-1]: p.attrs.get("progress") for p in self._parts()}
        meta["stats"] = {"total": total_progress(progress), **(stats or {}), "parts": progress}
        fault_point("finalize")
        self.group.attrs["probing"] = meta  # the completed flag goes last...
        for p in list(self.group["parts"].group_keys()):  # ...then the parts are only clean-up
            del self.group[f"parts/{p}"]
        return meta

    def _merge(self, out: Any, key: str, dim: int, n: int, parts: list[Any], ids_of: dict[str, np.ndarray]) -> None:
        chunk = self.storage.rows_per_chunk(dim)
        arr = out.create_array(
            key,
            shape=(n, dim),
            chunks=(max(1, min(chunk, n)), dim),
            dtype=self.storage.dtype,
            compressors=_compressors(self.storage.compressor, self.storage.compression_level),
            overwrite=True,
        )
        block = max(
            chunk, (self.storage.merge_block_bytes // max(1, dim * self.storage.dtype.itemsize)) // chunk * chunk
        )
        for b0 in range(0, n, block):
            b1 = min(n, b0 + block)
            buf = np.empty((b1 - b0, dim), dtype=self.storage.dtype)
            for p in parts:
                ids = ids_of[p.name]
                rows = np.flatnonzero((ids >= b0) & (ids < b1))
                if len(rows) == 0:
                    continue
                r0, r1 = int(rows[0]), int(rows[-1]) + 1  # parts are near dataset order: a short span
                data = p[key][r0:r1]
                buf[ids[rows] - b0] = data[rows - r0]
            arr[b0:b1] = buf


def _check_exactly_once(all_ids: np.ndarray, n: int, path: str) -> None:
    uniq, counts = np.unique(all_ids, return_counts=True)
    if (counts > 1).any():
        raise RunIncompleteError(f"Run {path}: example ids stored twice: {uniq[counts > 1][:10].tolist()} (a bug).")
    if len(uniq) != n or (n and (uniq[0] != 0 or uniq[-1] != n - 1)):
        missing = np.setdiff1d(np.arange(n), uniq)
        raise RunIncompleteError(
            f"Run {path}: {len(missing)} of {n} examples are not stored (first: {missing[:10].tolist()}); "
            "the run stays incomplete. Run again with resume=true to compute them."
        )


def _write_column(group: Any, name: str, values: Sequence[Any] | np.ndarray) -> bool:
    """Store one per-example column; returns True if values were JSON-encoded."""
    arr = np.asarray(values) if not isinstance(values, np.ndarray) else values
    as_json = False
    if arr.dtype.kind in "iufb":
        dtype: Any = arr.dtype
    elif all(isinstance(v, str) for v in values):
        arr, dtype = np.asarray(list(values), dtype=object), str
    else:
        arr, dtype, as_json = np.asarray([json.dumps(v) for v in values], dtype=object), str, True
    z = group.create_array(name, shape=arr.shape, chunks=(max(1, min(len(arr), 65536)),), dtype=dtype, overwrite=True)
    if len(arr):
        z[:] = arr
    return as_json


class ZarrRunReader(RunReader):
    """Reads a Zarr run written by `ZarrRunWriter`."""

    def __init__(self, path: str) -> None:
        import zarr

        self.path = path
        self.group: Any = zarr.open_group(path, mode="r")
        self.metadata = dict(self.group.attrs["probing"])  # type: ignore[arg-type]

    def activations(self, layer: int | str) -> np.ndarray:
        return np.asarray(self.group[f"layers/{self.layer_key(layer)}"][:])

    def array(self, layer: int | str) -> Any:
        """The zarr array of a layer, for reading slices without loading it whole."""
        return self.group[f"layers/{self.layer_key(layer)}"]

    def example_metadata(self, field: str) -> np.ndarray:
        if field not in self.example_fields:
            raise KeyError(f"No per-example field {field!r}; stored: {self.example_fields}.")
        values = self.group[f"examples/{field}"][:]
        if field in self.metadata.get("json_fields", []):
            return np.asarray([json.loads(v) for v in values], dtype=object)
        return np.asarray(values)
