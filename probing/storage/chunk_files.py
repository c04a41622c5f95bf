"""Whole chunks of an uncompressed local Zarr array, read straight from their files into a caller's buffer.

Why: `RunLoader` reads whole chunks; through zarr each read goes via its event loop, a decode pipeline and
a fresh buffer, then is copied into the loader's shuffle buffer. That costs more CPU than the disk takes
time, so the loader ran at about a quarter of the disk's bandwidth (docs/storage.md). A chunk of an
array stored as probing stores activations (zarr v3, regular chunks of whole rows, no sharding, codecs
``bytes`` then, optionally, ``crc32c``: no compressor) is a file that holds the chunk's bytes followed
by their crc32c (4 bytes, little-endian): one ``preadv`` puts the rows into the destination and the
checksum beside it, and ``google_crc32c`` (what zarr uses, ~10 GB/s) checks them in place.

`ChunkFiles.of` says whether an array has that form (None otherwise: compressed, sharded, remote,
big-endian, strings); the caller then reads through zarr as before. A missing file, a short file or a
checksum that does not match is a `DamagedRunError`, as through zarr.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from probing.storage.verify import damaged


@dataclass(frozen=True)
class ChunkFiles:
    """Direct reads of one array's chunk files (see the module docstring).

    Attributes:
        run: the run's path (for error messages).
        array: the array's path in the run (``layers/blocks.6``).
        folder: the array's folder on disk.
        chunk_rows: rows per chunk (the last chunk's file is full size; rows past ``total_rows`` are fill).
        total_rows: rows of the array.
        row_shape: the shape of one row.
        dtype: the stored dtype (native byte order).
        checksum: whether each file ends with a crc32c.
    """

    run: str
    array: str
    folder: Path
    chunk_rows: int
    total_rows: int
    row_shape: tuple[int, ...]
    dtype: np.dtype[Any]
    checksum: bool
    key_of: Any  # (chunk index) -> the chunk's key relative to the folder, zarr's own encoding

    @classmethod
    def of(cls, store: Any, array: str, run: str) -> ChunkFiles | None:
        """The direct reader of ``array`` in ``store`` (a `ZarrArrays`), or None where the array is not a
        local, unsharded, uncompressed zarr v3 array of numbers in native byte order."""
        try:
            from zarr.codecs import BytesCodec, Crc32cCodec
            from zarr.storage import LocalStore

            arr = store.native(array)
            meta = arr.metadata
            local = arr.store_path.store
            if not isinstance(local, LocalStore) or arr.shards is not None or getattr(meta, "zarr_format", 0) != 3:
                return None
            dtype = np.dtype(arr.dtype)
            if dtype.kind not in "fiub" or not dtype.isnative:
                return None
            codecs = tuple(meta.codecs)
            if not codecs or not isinstance(codecs[0], BytesCodec):
                return None
            endian = getattr(codecs[0].endian, "value", codecs[0].endian)
            if dtype.itemsize > 1 and endian != ("little" if np.little_endian else "big"):
                return None
            rest = codecs[1:]
            if rest and not (len(rest) == 1 and isinstance(rest[0], Crc32cCodec)):
                return None
            chunks = tuple(int(c) for c in arr.chunks)
            if chunks[1:] != tuple(int(s) for s in arr.shape[1:]):
                return None  # chunks that cut rows
            zeros = (0,) * (arr.ndim - 1)
            return cls(run=run, array=array, folder=Path(local.root) / arr.store_path.path,
                       chunk_rows=chunks[0], total_rows=int(arr.shape[0]), row_shape=chunks[1:], dtype=dtype,
                       checksum=bool(rest), key_of=lambda i: meta.encode_chunk_key((i, *zeros)))
        except Exception:  # noqa: BLE001 - anything unusual: zarr's own path reads it
            return None

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize

    def rows_of(self, chunk: int) -> tuple[int, int]:
        """The rows ``[start, stop)`` chunk ``chunk`` holds."""
        start = chunk * self.chunk_rows
        return start, min(self.total_rows, start + self.chunk_rows)

    def read_into(self, chunk: int, out: np.ndarray) -> int:
        """Read chunk ``chunk`` into ``out`` (C-contiguous, this dtype, at least ``chunk_rows`` rows);
        returns how many rows are real (the last chunk's rest is fill). Raises `DamagedRunError`."""
        start, stop = self.rows_of(chunk)
        nbytes = self.chunk_rows * self.row_bytes
        dest = memoryview(out.reshape(-1).view(np.uint8))[:nbytes]  # type: ignore[arg-type]
        if len(dest) != nbytes or out.dtype != self.dtype:
            raise ValueError(f"read_into needs a {self.dtype} buffer of {self.chunk_rows} rows of {self.row_shape}.")
        crc = np.zeros(1, dtype="<u4")
        try:
            fd = os.open(self.folder / self.key_of(chunk), os.O_RDONLY)
        except FileNotFoundError as exc:
            raise damaged(self.run, self.array, start, stop, None) from exc
        try:
            parts = [dest, memoryview(crc.view(np.uint8))] if self.checksum else [dest]  # type: ignore[arg-type]
            got = os.preadv(fd, parts, 0)
            want = nbytes + (4 if self.checksum else 0)
            if got != want or os.fstat(fd).st_size != want:
                raise damaged(self.run, self.array, start, stop,
                              ValueError(f"the chunk file holds {os.fstat(fd).st_size} bytes, expected {want}"))
        finally:
            os.close(fd)
        if self.checksum:
            import google_crc32c

            if google_crc32c.value(out.reshape(-1).view(np.uint8)[:nbytes]) != int(crc[0]):
                raise damaged(self.run, self.array, start, stop, ValueError("stored and computed crc32c differ"))
        return stop - start


__all__ = ["ChunkFiles"]
