"""HDF5 storage (h5py): one file per run, for tools that read HDF5.

HDF5 files take one writer at a time (h5py without MPI), so this backend refuses multi-process
runs; use Zarr there. Parts go to a separate ``parts.h5`` that is deleted after finalize (HDF5
does not give back the space of deleted datasets); the run is ``activations.h5``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from probing.errors import ConfigError
from probing.storage.base import Storage, check_can_write, check_resume, new_run_id, utc_now
from probing.storage.chunked import ArrayIO, ChunkedRunReader, ChunkedRunWriter
from probing.storage.zarr_store import STORAGE_DTYPES

RUN_FILE = "activations.h5"
PARTS_FILE = "parts.h5"


def _h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise ImportError("the HDF5 storage needs h5py: pip install h5py") from None
    return h5py


def is_hdf5_run(path: str | Path) -> bool:
    f = Path(path) / RUN_FILE
    if not f.is_file():
        return False
    try:
        with _h5py().File(f, "r") as h:
            return "probing" in h.attrs
    except OSError:
        return False


class HDF5IO(ArrayIO):
    """`ArrayIO` over a run's two HDF5 files (``parts/...`` paths go to ``parts.h5``)."""

    def __init__(self, folder: Path, mode: str, compression: str | None = None, level: int | None = None) -> None:
        h5py = _h5py()
        self.folder = folder
        self.mode = mode
        self.compression = compression
        self.level = level
        self.run = h5py.File(folder / RUN_FILE, mode)
        parts = folder / PARTS_FILE
        self.parts = h5py.File(parts, mode) if mode != "r" or parts.exists() else None

    def _file(self, path: str) -> Any:
        if path == "parts" or path.startswith("parts/"):
            if self.parts is None:
                self.parts = _h5py().File(self.folder / PARTS_FILE, "a" if self.mode != "r" else "r")
            return self.parts
        return self.run

    def get_meta(self) -> dict[str, Any]:
        return json.loads(self.run.attrs["probing"])

    def set_meta(self, meta: Mapping[str, Any]) -> None:
        self.run.attrs["probing"] = json.dumps(dict(meta), default=str)
        self.run.flush()

    def get_attrs(self, group: str) -> dict[str, Any]:
        f = self._file(group)
        return {k: json.loads(v) for k, v in f[group].attrs.items()} if group in f else {}

    def set_attrs(self, group: str, attrs: Mapping[str, Any]) -> None:
        g = self._file(group).require_group(group)
        for k, v in attrs.items():
            g.attrs[k] = json.dumps(v, default=str)

    def create(self, path: str, shape: tuple[int, ...], chunk_rows: int, dtype: Any, compress: bool) -> None:
        f = self._file(path)
        if path in f:
            del f[path]
        f.create_dataset(
            path,
            shape=(0, *shape),
            maxshape=(None, *shape),
            chunks=(chunk_rows, *shape),
            dtype=dtype,
            compression=self.compression if compress else None,
            compression_opts=self.level if compress and self.compression == "gzip" else None,
        )

    def append(self, path: str, data: np.ndarray) -> None:
        ds = self._file(path)[path]
        n = ds.shape[0]
        ds.resize(n + len(data), axis=0)
        ds[n:] = data

    def read(self, path: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        ds = self._file(path)[path]
        if ds.dtype.kind == "O":
            ds = ds.asstr()
        out = ds[:] if start is None and stop is None else ds[start:stop]
        return np.asarray(out, dtype=object) if ds.dtype.kind == "O" else np.asarray(out)

    def shape(self, path: str) -> tuple[int, ...]:
        return tuple(self._file(path)[path].shape)

    def exists(self, path: str) -> bool:
        f = self._file(path)
        return f is not None and path in f

    def native(self, path: str) -> Any:
        return self._file(path)[path]

    def children(self, group: str) -> list[str]:
        f = self._file(group)
        if f is None or group not in f:
            return []
        h5py = _h5py()
        return sorted(k for k, v in f[group].items() if isinstance(v, h5py.Group))

    def arrays(self, group: str) -> list[str]:
        f = self._file(group)
        if f is None or group not in f:
            return []
        return sorted(k for k, v in f[group].items() if isinstance(v, _h5py().Dataset))

    def delete(self, group: str) -> None:
        if group == "parts":
            if self.parts is not None:
                self.parts.close()
                self.parts = None
            (self.folder / PARTS_FILE).unlink(missing_ok=True)
        elif group in self.run:
            del self.run[group]

    def ensure_group(self, group: str) -> None:
        self._file(group).require_group(group)

    def write_strings(self, path: str, values: Sequence[str]) -> None:
        if path in self.run:
            del self.run[path]
        self.run.create_dataset(path, data=np.asarray(list(values), dtype=object), dtype=_h5py().string_dtype())

    def close(self) -> None:
        for f in (self.parts, self.run):
            if f is not None:
                f.close()


class HDF5Storage(Storage):
    """Runs as HDF5 files under ``root``: ``<root>/<run_id>/activations.h5``.

    Args:
        dtype: ``float32`` or ``float16``.
        compression: None (default) or ``gzip`` / ``lzf``.
    """

    supports_concurrent_writers = False

    def __init__(
        self,
        root: str,
        *,
        dtype: str = "float32",
        chunk_rows: int | None = None,
        compression: str | None = None,
        compression_level: int | None = None,
        merge_block_bytes: int = 64 * 2**20,
    ) -> None:
        super().__init__(root)
        if "://" in str(root):
            raise ConfigError("The HDF5 storage writes local files only; use zarr for URLs.")
        if dtype not in STORAGE_DTYPES:
            raise ConfigError(f"Storage dtype {dtype!r} is not supported; expected one of {STORAGE_DTYPES}.")
        if compression not in (None, "none", "gzip", "lzf"):
            raise ConfigError(f"HDF5 compression {compression!r}: expected none, gzip or lzf.")
        _h5py()
        self.dtype = np.dtype(dtype)
        self.chunk_rows = chunk_rows
        self.compression = None if compression in (None, "none") else compression
        self.compression_level = compression_level
        self.merge_block_bytes = merge_block_bytes

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "hdf5",
            "dtype": str(self.dtype),
            "chunk_rows": self.chunk_rows,
            "compression": self.compression,
        }

    def open_run(
        self,
        run_id: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
        resume: bool = False,
    ) -> ChunkedRunWriter:
        if world_size > 1:
            raise ConfigError("HDF5 takes one writer at a time; use the zarr storage for multi-process runs.")
        run_id = run_id or new_run_id()
        folder = Path(self.run_path(run_id))
        meta = dict(metadata or {})
        meta.setdefault("storage", self.describe())
        if is_hdf5_run(folder):
            io = HDF5IO(folder, "a", self.compression, self.compression_level)
            old = io.get_meta()
            try:
                check_can_write(str(folder), bool(old.get("completed")), resume)
                if metadata is not None:
                    check_resume(old, meta)
            except Exception:
                io.close()
                raise
            old["attempts"] = int(old.get("attempts", 0)) + 1
            io.set_meta(old)
            meta = old
        else:
            if folder.exists() and any(folder.iterdir()):
                raise ConfigError(f"{folder} exists and is not a probing run; choose another run_id or folder.")
            os.makedirs(folder, exist_ok=True)
            io = HDF5IO(folder, "a", self.compression, self.compression_level)
            meta.update(run_id=run_id, completed=False, attempts=0, created=meta.get("created", utc_now()))
            io.set_meta(meta)
        return _ClosingWriter(
            io,
            run_id,
            str(folder),
            meta,
            rank=rank,
            world_size=world_size,
            dtype=self.dtype,
            chunk_rows=self.chunk_rows,
            compress=self.compression is not None,
            merge_block_bytes=self.merge_block_bytes,
        )


class _ClosingWriter(ChunkedRunWriter):
    """Closes the HDF5 files after finalize (other readers may then open them)."""

    def finalize(
        self, example_metadata: Mapping[str, Sequence[Any]] | None = None, *, stats: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        try:
            return super().finalize(example_metadata, stats=stats)
        finally:
            self.io.close()

    def close(self) -> None:
        super().close()
        io = self.io
        assert isinstance(io, HDF5IO)
        for f in (io.parts, io.run):
            if f is not None and f.id.valid:
                f.flush()


def open_hdf5_run(path: str, allow_partial: bool = False) -> ChunkedRunReader:
    return ChunkedRunReader(HDF5IO(Path(path), "r"), path, allow_partial)
