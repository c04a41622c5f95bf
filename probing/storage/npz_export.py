"""NPZ: a finished run exported to one ``activations.npz`` that ``numpy.load`` reads, in linear time.

A `.npz` file is a zip of `.npy` files, which cannot be written in place by several processes. So an
NPZ run is written as a Zarr run in ``<run>/staging/`` (every rank at once, rows in place), and
finalize exports it: each array is streamed into the zip in blocks, then ``metadata.json`` is written
(last), then the staging folder is removed. `export_npz` does the same for any finished run.

Reading goes through `NpzArrays`, which maps each stored (uncompressed) member straight from the
file, so slicing a layer reads only that slice.

Layout of a run folder::

    <run>/metadata.json      run metadata (the ``probing`` attributes), written after the export
    <run>/activations.npz    keys are the run's array paths: ``layers/<key>``, ``examples/<field>``, ...
    <run>/staging/           the Zarr run while it is written (removed after the export)
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from probing.storage.arrays import ArrayStore
from probing.storage.base import Storage
from probing.storage.zarr_store import ZarrArrays, is_zarr_run

RUN_FILE = "activations.npz"
META_FILE = "metadata.json"
STAGING = "staging"
FORMAT = "probing-npz"
#: rows per block while exporting
BLOCK_BYTES = 64 * 2**20


def is_npz_run(path: str | Path) -> bool:
    p = Path(path)
    meta = p / META_FILE
    if meta.is_file():
        try:
            return json.loads(meta.read_text()).get("format") == FORMAT
        except (OSError, ValueError):
            return False
    return is_zarr_run(p / STAGING)


def _walk(store: ArrayStore, group: str = "") -> list[str]:
    out = [f"{group}/{a}" if group else a for a in store.arrays(group)]
    for sub in store.groups(group):
        out.extend(_walk(store, f"{group}/{sub}" if group else sub))
    return out


def export_npz(source: ArrayStore, out_file: str | os.PathLike[str], block_bytes: int = BLOCK_BYTES) -> list[str]:
    """Write every array of ``source`` (a finished run) into one uncompressed ``.npz``; returns the keys.

    Each array is streamed in blocks of about ``block_bytes``: memory does not grow with the run, and
    time is one read and one write of every byte. Strings are stored as fixed-width unicode (``<U``),
    the widest value's width, as `numpy.savez` would; a first pass over the column finds it.
    """
    out = Path(out_file)
    tmp = out.with_name(f".{out.name}.tmp")
    keys = [k for k in _walk(source) if not k.startswith("parts/")]
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key in keys:
            shape = source.shape(key)
            rows = shape[0]
            probe = source.read(key, 0, min(rows, 1))
            strings = probe.dtype == object
            row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * (8 if strings else probe.dtype.itemsize))
            step = max(1, block_bytes // row_bytes)
            if strings:
                width = 1
                for s in range(0, rows, step):
                    block = source.read(key, s, min(rows, s + step))
                    width = max(width, max((len(str(v)) for v in block), default=1))
                dtype = np.dtype(f"<U{width}")
            else:
                dtype = probe.dtype
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
            with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array_header_2_0(f, header)  # type: ignore[no-untyped-call]
                for s in range(0, rows, step):
                    block = source.read(key, s, min(rows, s + step))
                    f.write(np.ascontiguousarray(block.astype(dtype) if strings else block).tobytes())
    os.replace(tmp, out)
    return keys


class NpzArrays(ArrayStore):
    """A read-only `ArrayStore` over an exported run: members are mapped from the file, not loaded."""

    concurrent_writers = False

    def __init__(self, folder: str) -> None:
        self.path = folder
        self.file = Path(folder) / RUN_FILE
        self._meta = json.loads((Path(folder) / META_FILE).read_text())
        self._members: dict[str, tuple[int, np.dtype[Any], tuple[int, ...]]] = {}
        with zipfile.ZipFile(self.file) as zf, open(self.file, "rb") as raw:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                raw.seek(info.header_offset)
                local = raw.read(30)
                name_len = int.from_bytes(local[26:28], "little")
                extra_len = int.from_bytes(local[28:30], "little")
                raw.seek(info.header_offset + 30 + name_len + extra_len)
                version = np.lib.format.read_magic(raw)  # type: ignore[no-untyped-call]
                read_header = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read_header(raw)  # type: ignore[no-untyped-call]
                self._members[info.filename[:-4]] = (raw.tell(), dtype, tuple(shape))

    def get_attrs(self, group: str) -> dict[str, Any]:
        return {"probing": {k: v for k, v in self._meta.items() if k != "format"}} if group == "" else {}

    def set_attrs(self, group: str, attrs: Mapping[str, Any]) -> None:
        raise PermissionError("An exported NPZ run is read-only.")

    def create(self, path: str, rows: int | None, shape: tuple[int, ...], dtype: Any, chunk_rows: int, *,
               shard_rows: int | None = None, compress: bool = False) -> None:
        raise PermissionError("An exported NPZ run is read-only.")

    def write(self, path: str, start: int, data: np.ndarray) -> None:
        raise PermissionError("An exported NPZ run is read-only.")

    def set_rows(self, path: str, rows: int) -> None:
        raise PermissionError("An exported NPZ run is read-only.")

    def read(self, path: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        if path not in self._members:
            raise KeyError(path)
        offset, dtype, shape = self._members[path]
        if shape[0] == 0 or dtype.itemsize == 0:
            out = np.zeros(shape, dtype=dtype)[start:stop]
        else:
            mm = np.memmap(self.file, dtype=dtype, mode="r", offset=offset, shape=shape)
            out = np.array(mm[start:stop])
            del mm
        return out.astype(object) if dtype.kind == "U" else out

    def shape(self, path: str) -> tuple[int, ...]:
        return self._members[path][2]

    def exists(self, path: str) -> bool:
        return path in self._members or any(k.startswith(path.rstrip("/") + "/") for k in self._members)

    def groups(self, group: str) -> list[str]:
        prefix = f"{group}/" if group else ""
        return sorted({k[len(prefix):].split("/")[0] for k in self._members
                       if k.startswith(prefix) and "/" in k[len(prefix):]})

    def arrays(self, group: str) -> list[str]:
        prefix = f"{group}/" if group else ""
        return sorted(k[len(prefix):] for k in self._members if k.startswith(prefix) and "/" not in k[len(prefix):])

    def delete(self, path: str) -> None:
        raise PermissionError("An exported NPZ run is read-only.")

    def native(self, path: str) -> Any:
        offset, dtype, shape = self._members[path]
        return np.memmap(self.file, dtype=dtype, mode="r", offset=offset, shape=shape)

    def stored_bytes(self, path: str) -> int | None:
        offset, dtype, shape = self._members[path]
        return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


class _StagingArrays(ZarrArrays):
    """The Zarr run an NPZ run is written as; finalize's last attribute write exports it."""

    def __init__(self, folder: str, mode: str) -> None:
        self.folder = folder
        if mode == "w":
            os.makedirs(folder, exist_ok=True)
        super().__init__(str(Path(folder) / STAGING), mode)

    def close(self) -> None:
        meta = self.get_attrs("").get("probing", {})
        if meta.get("completed") and Path(self.path).exists():
            export_npz(self, Path(self.folder) / RUN_FILE)
            tmp = Path(self.folder) / f".{META_FILE}.tmp"
            tmp.write_text(json.dumps({**meta, "format": FORMAT}, indent=2, default=str))
            os.replace(tmp, Path(self.folder) / META_FILE)  # last: the NPZ run is complete from here on
            shutil.rmtree(self.path, ignore_errors=True)


class NPZStorage(Storage):
    """Runs as ``activations.npz`` + ``metadata.json`` folders under ``root`` (float32 or float16).

    Written as a Zarr run by every rank at once, then exported at finalize (see this module).
    """

    name = "npz"

    def __init__(self, root: str, *, dtype: str = "float32", chunk_rows: int | None = None) -> None:
        super().__init__(root, dtype=dtype, chunk_rows=chunk_rows)

    def open_store(self, path: str, mode: str) -> ArrayStore:
        return _StagingArrays(path, mode)

    @staticmethod
    def detect(path: str) -> bool:
        return is_npz_run(path)

    @staticmethod
    def open_existing(path: str) -> ArrayStore:
        if (Path(path) / META_FILE).is_file():
            return NpzArrays(path)
        return ZarrArrays(str(Path(path) / STAGING), "r")
