"""HDF5 storage (h5py): one ``activations.h5`` per run, for tools that read HDF5.

HDF5 files take one writer at a time (h5py without MPI), so this backend refuses multi-process
runs before compute; use Zarr there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from probing.storage.arrays import ArrayStore, _is_str
from probing.storage.base import Storage

RUN_FILE = "activations.h5"


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


class HDF5Arrays(ArrayStore):
    """`ArrayStore` over a run's HDF5 file. Arrays of unknown length grow as rows are written."""

    concurrent_writers = False

    def __init__(self, folder: str, mode: str, compression: str | None = None, level: int | None = None) -> None:
        h5py = _h5py()
        self.path = folder
        if mode != "r":
            os.makedirs(folder, exist_ok=True)
        self.file = h5py.File(Path(folder) / RUN_FILE, {"w": "w", "r+": "a", "r": "r"}[mode])
        self.compression = compression
        self.level = level

    def get_attrs(self, group: str) -> dict[str, Any]:
        node = self.file if group == "" else self.file.get(group)
        return {} if node is None else {k: json.loads(v) for k, v in node.attrs.items()}

    def set_attrs(self, group: str, attrs: Mapping[str, Any]) -> None:
        node = self.file if group == "" else self.file.require_group(group)
        for key in list(node.attrs):
            if key not in attrs:
                del node.attrs[key]
        for k, v in attrs.items():
            node.attrs[k] = json.dumps(v, default=str)
        self.file.flush()

    def create(
        self,
        path: str,
        rows: int | None,
        shape: tuple[int, ...],
        dtype: Any,
        chunk_rows: int,
        *,
        shard_rows: int | None = None,
        compress: bool = False,
    ) -> None:
        if path in self.file:
            del self.file[path]
        h5py = _h5py()
        self.file.create_dataset(
            path,
            shape=(rows or 0, *shape),
            maxshape=(None, *shape),
            chunks=(max(1, chunk_rows), *shape),
            dtype=h5py.string_dtype() if _is_str(dtype) else dtype,
            compression=self.compression if compress else None,
            compression_opts=self.level if compress and self.compression == "gzip" else None,
            # a checksum per chunk (HDF5's fletcher32 filter): a damaged chunk is a read error, not a value
            fletcher32=not _is_str(dtype),
        )

    def write(self, path: str, start: int, data: np.ndarray) -> None:
        if not len(data):
            return
        ds = self.file[path]
        if start + len(data) > ds.shape[0]:
            ds.resize(start + len(data), axis=0)
        ds[start : start + len(data)] = data

    def read(self, path: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        ds = self.file[path]
        strings = ds.dtype.kind == "O"
        if strings:
            ds = ds.asstr()
        out = ds[:] if start is None and stop is None else ds[start:stop]
        return np.asarray(out, dtype=object) if strings else np.asarray(out)

    def set_rows(self, path: str, rows: int) -> None:
        self.file[path].resize(rows, axis=0)

    def shape(self, path: str) -> tuple[int, ...]:
        return tuple(self.file[path].shape)

    def exists(self, path: str) -> bool:
        return path == "" or path in self.file

    def _node(self, group: str) -> Any:
        return self.file if group == "" else self.file.get(group)

    def groups(self, group: str) -> list[str]:
        node = self._node(group)
        h5py = _h5py()
        return [] if node is None else sorted(k for k, v in node.items() if isinstance(v, h5py.Group))

    def arrays(self, group: str) -> list[str]:
        node = self._node(group)
        h5py = _h5py()
        return [] if node is None else sorted(k for k, v in node.items() if isinstance(v, h5py.Dataset))

    def delete(self, path: str) -> None:
        if path in self.file:
            del self.file[path]

    def chunk_rows(self, path: str) -> int:
        chunks = self.file[path].chunks
        return int(chunks[0]) if chunks else max(1, int(self.file[path].shape[0]))

    def native(self, path: str) -> Any:
        return self.file[path]

    def stored_bytes(self, path: str) -> int | None:
        return int(self.file[path].id.get_storage_size())

    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()


class HDF5Storage(Storage):
    """Runs as HDF5 files under ``root``: ``<root>/<run_id>/activations.h5``.

    Args:
        dtype: ``float32`` or ``float16``.
        chunk_rows: rows per chunk (default about 2 MiB).
        compression: None (default) or ``gzip`` / ``lzf``.
    """

    name = "hdf5"
    supports_concurrent_writers = False

    def __init__(
        self,
        root: str,
        *,
        dtype: str = "float32",
        chunk_rows: int | None = None,
        compression: str | None = None,
        compression_level: int | None = None,
    ) -> None:
        from probing.errors import ConfigError

        super().__init__(root, dtype=dtype, chunk_rows=chunk_rows)
        if compression not in (None, "none", "gzip", "lzf"):
            raise ConfigError(f"HDF5 compression {compression!r}: expected none, gzip or lzf.")
        _h5py()
        self.compression = None if compression in (None, "none") else compression
        self.compression_level = compression_level

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "dtype": str(self.dtype), "chunk_rows": self.chunk_rows,
                "compression": self.compression}

    @property
    def compress(self) -> bool:
        return self.compression is not None

    def open_store(self, path: str, mode: str) -> HDF5Arrays:
        return HDF5Arrays(path, mode, self.compression, self.compression_level)

    @staticmethod
    def detect(path: str) -> bool:
        return is_hdf5_run(path)

    @staticmethod
    def open_existing(path: str) -> HDF5Arrays:
        return HDF5Arrays(path, "r")
