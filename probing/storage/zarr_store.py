"""Zarr v3 storage: the default, streamed into by every rank at once.

The run layout is `probing.storage.chunked`'s: each rank writes only its own part arrays, in whole
chunks (zarr v3 loses rows when processes share a chunk or shard), and finalize merges the parts
into one array per layer in dataset order. Paths may be local folders or fsspec URLs
(``file://``, ``memory://``, and ``s3://`` / ``gs://`` with s3fs / gcsfs installed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from probing.errors import ConfigError
from probing.storage.base import Storage, check_can_write, check_resume, new_run_id, utc_now
from probing.storage.chunked import ArrayIO, ChunkedRunReader, ChunkedRunWriter

log = logging.getLogger(__name__)

STORAGE_DTYPES = ("float32", "float16")
COMPRESSORS = ("none", "zstd", "blosc")


def is_url(path: str) -> bool:
    return "://" in path


def strip_file_url(path: str) -> str:
    """``file:///a/b`` -> ``/a/b``: local folders are handled as paths (created as needed)."""
    return path[len("file://") :] if path.startswith("file://") else path


def _compressors(name: str, level: int | None) -> Any:
    if name == "none":
        return None
    from zarr.codecs import BloscCodec, ZstdCodec

    if name == "zstd":
        return ZstdCodec(level=3 if level is None else level)
    if name == "blosc":
        return BloscCodec(cname="zstd", clevel=3 if level is None else level, shuffle="shuffle")
    raise ConfigError(f"Unknown compressor {name!r}; expected one of {COMPRESSORS}.")


def _open_group(path: str, mode: str) -> Any:
    import zarr

    return zarr.open_group(path, mode=mode)  # type: ignore[arg-type]


def is_zarr_run(path: str | Path) -> bool:
    """True if ``path`` (folder or URL) is a zarr group written by `probing`."""
    p = str(path)
    if not is_url(p):
        meta = Path(p) / "zarr.json"
        if not meta.is_file():
            return False
        try:
            return "probing" in json.loads(meta.read_text()).get("attributes", {})
        except (OSError, ValueError):
            return False
    try:
        return "probing" in _open_group(p, "r").attrs
    except (FileNotFoundError, KeyError, ValueError, OSError) as exc:
        log.debug("not a zarr run: %s (%s)", p, exc)
        return False
    except Exception as exc:  # noqa: BLE001 - zarr raises its own GroupNotFoundError types
        log.debug("not a zarr run: %s (%s)", p, exc)
        return False


class ZarrIO(ArrayIO):
    """`ArrayIO` over one zarr group."""

    def __init__(self, group: Any, compressors: Any = None, shard_chunks: int | None = None) -> None:
        self.group = group
        self.compressors = compressors
        self.shard_chunks = shard_chunks
        # handles of the arrays this IO created: it is their only writer, so they stay current and
        # appends skip re-reading the array metadata; arrays written by other processes are always
        # looked up afresh (their shape changes under us)
        self._own: dict[str, Any] = {}

    def _array(self, path: str) -> Any:
        arr = self._own.get(path)
        return arr if arr is not None else self.group[path]

    def get_meta(self) -> dict[str, Any]:
        return dict(self.group.attrs["probing"])

    def set_meta(self, meta: Mapping[str, Any]) -> None:
        self.group.attrs["probing"] = dict(meta)

    def get_attrs(self, group: str) -> dict[str, Any]:
        return dict(self.group[group].attrs) if group in self.group else {}

    def set_attrs(self, group: str, attrs: Mapping[str, Any]) -> None:
        self.group.require_group(group).attrs.update(dict(attrs))

    def create(self, path: str, shape: tuple[int, ...], chunk_rows: int, dtype: Any, compress: bool) -> None:
        kwargs: dict[str, Any] = {}
        if self.shard_chunks and len(shape):
            kwargs["shards"] = (chunk_rows * self.shard_chunks, *shape)
        self._own[path] = self.group.create_array(
            path,
            shape=(0, *shape),
            chunks=(chunk_rows, *shape),
            dtype=dtype,
            compressors=self.compressors if compress else None,
            overwrite=True,
            # activations are never all zeros: skip zarr's per-chunk "is it all fill value?" scan
            config={"write_empty_chunks": True},
            **kwargs,
        )

    def append(self, path: str, data: np.ndarray) -> None:
        self._array(path).append(data, axis=0)

    def read(self, path: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        arr = self._array(path)
        out = arr[:] if start is None and stop is None else arr[start:stop]
        return np.asarray(out)

    def shape(self, path: str) -> tuple[int, ...]:
        return tuple(self._array(path).shape)

    def exists(self, path: str) -> bool:
        return path in self.group

    def native(self, path: str) -> Any:
        return self.group[path]

    def children(self, group: str) -> list[str]:
        if group not in self.group:
            return []
        return sorted(name for name, _ in self.group[group].groups())

    def arrays(self, group: str) -> list[str]:
        return sorted(self.group[group].array_keys()) if group in self.group else []

    def delete(self, group: str) -> None:
        prefix = group.rstrip("/") + "/"
        self._own = {k: v for k, v in self._own.items() if not k.startswith(prefix)}
        if group in self.group:
            del self.group[group]

    def ensure_group(self, group: str) -> None:
        self.group.require_group(group)

    def write_strings(self, path: str, values: Sequence[str]) -> None:
        arr = self.group.create_array(
            path, shape=(len(values),), chunks=(max(1, min(len(values), 65536)),), dtype=str, overwrite=True
        )
        if len(values):
            arr[:] = np.asarray(list(values), dtype=object)


class ZarrStorage(Storage):
    """Runs as Zarr v3 groups under ``root`` (a folder or an fsspec URL).

    Args:
        root: output folder or URL.
        dtype: ``float32`` (default) or ``float16``. bfloat16 is not a zarr dtype and is refused:
            store float32 (exact for bf16 values) or float16 (half the size).
        chunk_rows: rows per chunk; default: about 2 MiB per chunk.
        compressor: ``none`` (default: activations compress poorly and codecs slow writes, see
            bench/storage_io.py), ``zstd`` or ``blosc`` (zstd with byte shuffle).
        compression_level: the codec's level (default 3).
        shard_chunks: if set, store that many chunks per shard file (fewer files for small chunks).
        merge_block_bytes: the most memory per block when finalize puts rows in dataset order
            (blocks are sized to the bucketing window, and capped at this).
    """

    def __init__(
        self,
        root: str,
        *,
        dtype: str = "float32",
        chunk_rows: int | None = None,
        compressor: str = "none",
        compression_level: int | None = None,
        shard_chunks: int | None = None,
        merge_block_bytes: int = 64 * 2**20,
    ) -> None:
        super().__init__(strip_file_url(str(root)))
        if dtype not in STORAGE_DTYPES:
            raise ConfigError(
                f"Storage dtype {dtype!r} is not supported; expected one of {STORAGE_DTYPES}. "
                "(bfloat16 is not a zarr dtype: use float32, exact for bfloat16 values, or float16 for half the size.)"
            )
        if chunk_rows is not None and chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be >= 1, got {chunk_rows}.")
        if shard_chunks is not None and shard_chunks < 1:
            raise ConfigError(f"shard_chunks must be >= 1, got {shard_chunks}.")
        self.dtype = np.dtype(dtype)
        self.chunk_rows = chunk_rows
        self.compressor = compressor
        self.compression_level = compression_level
        self.shard_chunks = shard_chunks
        self.merge_block_bytes = merge_block_bytes
        self._compressors = _compressors(compressor, compression_level)  # validate now, not mid-run

    def run_path(self, run_id: str) -> str:
        return f"{self.root.rstrip('/')}/{run_id}" if is_url(self.root) else super().run_path(run_id)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "zarr",
            "dtype": str(self.dtype),
            "chunk_rows": self.chunk_rows,
            "compressor": self.compressor,
            "compression_level": self.compression_level,
            "shard_chunks": self.shard_chunks,
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
        run_id = run_id or new_run_id()
        path = self.run_path(run_id)
        meta = dict(metadata or {})
        meta.setdefault("storage", self.describe())
        if rank == 0:
            if is_zarr_run(path):
                group = _open_group(path, "r+")
                old = dict(group.attrs["probing"])
                check_can_write(path, bool(old.get("completed")), resume)
                if metadata is not None:
                    check_resume(old, meta)
                old["attempts"] = int(old.get("attempts", 0)) + 1
                old.setdefault("resumed_at", []).append(utc_now())
                group.attrs["probing"] = old
                meta = old
            else:
                if not is_url(path) and Path(path).exists() and any(Path(path).iterdir()):
                    raise ConfigError(f"{path} exists and is not a probing run; choose another run_id or folder.")
                group = _open_group(path, "w")
                group.require_group("parts")
                meta.update(run_id=run_id, completed=False, attempts=0, created=meta.get("created", utc_now()))
                group.attrs["probing"] = meta
        else:
            group = _open_group(path, "r+")
            meta = dict(group.attrs["probing"])
        io = ZarrIO(group, self._compressors, self.shard_chunks)
        return ChunkedRunWriter(
            io,
            run_id,
            path,
            meta,
            rank=rank,
            world_size=world_size,
            dtype=self.dtype,
            chunk_rows=self.chunk_rows,
            compress=self.compressor != "none",
            merge_block_bytes=self.merge_block_bytes,
        )


def open_zarr_run(path: str, allow_partial: bool = False) -> ChunkedRunReader:
    """A reader over a Zarr run (see `probing.open_run`)."""
    return ChunkedRunReader(ZarrIO(_open_group(path, "r")), path, allow_partial)
