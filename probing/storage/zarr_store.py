"""Zarr v3 storage: the default, written by every rank at once.

Each rank writes whole chunks (whole shards with sharding) straight into the run's arrays; no two
ranks ever write the same chunk or shard (zarr v3 loses rows when processes share one), which
`probing.storage.writer` guarantees. Paths may be local folders or fsspec URLs (``file://``,
``memory://``, and ``s3://`` / ``gs://`` with s3fs / gcsfs installed).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from probing.errors import ConfigError
from probing.storage.arrays import ArrayStore, _is_str
from probing.storage.base import STORAGE_DTYPES, Storage, is_url

log = logging.getLogger(__name__)

COMPRESSORS = ("none", "zstd", "blosc")
#: the shape given to an array whose length is not known yet (a streamed dataset): zarr stores nothing
#: for chunks never written, and `ZarrArrays.set_rows` sets the real length at the end
PROVISIONAL_ROWS = 2**40


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

    from probing.storage.fs_options import options_for

    options = options_for(path)  # a URL's bound fsspec options (endpoint, credentials); none for a folder
    if options:
        return zarr.open_group(path, mode=mode, storage_options=options)  # type: ignore[arg-type]
    return zarr.open_group(path, mode=mode)  # type: ignore[arg-type]


class ZarrArrays(ArrayStore):
    """`ArrayStore` over one zarr group (a run folder or URL)."""

    def __init__(self, path: str, mode: str, compressors: Any = None, checksums: bool = True) -> None:
        self.path = path
        self.group = _open_group(path, mode)
        self.compressors = compressors
        self.checksums = checksums
        # array handles: a run's arrays keep their metadata while it is written (only rank 0 creates or
        # resizes them), so a handle is looked up once instead of re-reading zarr.json for every write
        self._handles: dict[str, Any] = {}

    def _array(self, path: str) -> Any:
        arr = self._handles.get(path)
        if arr is None:
            # as created: every chunk is written, even one that equals the fill value (zarr's default would
            # skip it, or delete it, and the chunk would then look missing)
            arr = self._handles[path] = self.group[path].with_config({"write_empty_chunks": True})
        return arr

    def get_attrs(self, group: str) -> dict[str, Any]:
        if group == "":
            return dict(self.group.attrs)
        return dict(self.group[group].attrs) if group in self.group else {}

    def set_attrs(self, group: str, attrs: Mapping[str, Any]) -> None:
        target = self.group if group == "" else self.group.require_group(group)
        target.attrs.put(json.loads(json.dumps(dict(attrs), default=str)))  # one zarr.json write

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
        from zarr.codecs import Crc32cCodec, ZstdCodec

        n = PROVISIONAL_ROWS if rows is None else rows
        kwargs: dict[str, Any] = {}
        if shard_rows and shard_rows != chunk_rows:
            kwargs["shards"] = (shard_rows, *shape)
        # texts and labels compress well (activations do not): strings always get zstd (zarr's default)
        codecs = [ZstdCodec(level=0)] if _is_str(dtype) else [self.compressors] if compress and self.compressors else []
        if self.checksums:  # each chunk carries its crc32c: a changed byte is an error on read, not a value
            codecs.append(Crc32cCodec())
        self._handles[path] = self.group.create_array(
            path,
            shape=(n, *shape),
            chunks=(chunk_rows, *shape),
            dtype=str if _is_str(dtype) else dtype,
            compressors=codecs or None,
            overwrite=True,
            # activations are never all zeros: skip zarr's per-chunk "is it all fill value?" scan
            config={"write_empty_chunks": True},
            **kwargs,
        )

    def write(self, path: str, start: int, data: np.ndarray) -> None:
        if len(data):
            self._array(path)[start : start + len(data)] = data

    def read(self, path: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        arr = self._array(path)
        out = np.asarray(arr[:] if start is None and stop is None else arr[start:stop])
        return out.astype(object) if out.dtype.kind == "T" else out

    def set_rows(self, path: str, rows: int) -> None:
        from zarr.core.sync import sync

        arr = self._array(path)
        # shrinking a provisional array must not walk its 2**40-row chunk grid looking for chunks to delete
        sync(arr._async_array.resize((rows, *arr.shape[1:]), delete_outside_chunks=False))
        self._handles.pop(path, None)

    def shape(self, path: str) -> tuple[int, ...]:
        return tuple(self._array(path).shape)

    def exists(self, path: str) -> bool:
        return path in self.group

    def _node(self, group: str) -> Any:
        return self.group if group == "" else self.group.get(group)

    def groups(self, group: str) -> list[str]:
        node = self._node(group)
        return [] if node is None else sorted(name for name, _ in node.groups())

    def arrays(self, group: str) -> list[str]:
        node = self._node(group)
        return [] if node is None else sorted(node.array_keys())

    def delete(self, path: str) -> None:
        prefix = path.rstrip("/") + "/"
        self._handles = {k: v for k, v in self._handles.items() if k != path and not k.startswith(prefix)}
        if path in self.group:
            del self.group[path]

    def chunk_rows(self, path: str) -> int:
        return int(self._array(path).chunks[0])

    def write_rows(self, path: str) -> int:
        arr = self._array(path)
        return int((arr.shards or arr.chunks)[0])

    def native(self, path: str) -> Any:
        return self.group[path]

    def missing_chunks(self, path: str) -> list[tuple[int, int]]:
        from zarr.core.sync import sync

        arr = self._array(path)
        store_path = arr._async_array.store_path
        prefix = store_path.path.rstrip("/") + "/" if store_path.path else ""

        async def keys() -> set[str]:  # one listing of the array's prefix, into a set
            return {k[len(prefix):] async for k in store_path.store.list_prefix(prefix)}

        present = sync(keys())
        unit, n = int((arr.shards or arr.chunks)[0]), int(arr.shape[0])
        zeros = (0,) * (arr.ndim - 1)
        return [(a, min(n, a + unit)) for i, a in enumerate(range(0, n, unit))
                if arr.metadata.encode_chunk_key((i, *zeros)) not in present]

    def stored_bytes(self, path: str) -> int | None:
        try:
            return int(self._array(path).nbytes_stored())
        except Exception:  # noqa: BLE001 - a size is a nicety of `info`
            return None


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
    except Exception as exc:  # noqa: BLE001 - zarr and fsspec raise many kinds for "nothing there"
        log.debug("not a zarr run: %s (%s)", p, exc)
        return False


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
            The write unit is then a shard: each rank holds up to one shard per layer in memory.
        checksums: store a crc32c with every chunk (zarr's ``crc32c`` codec; default on): a damaged
            chunk is an error when read, and ``probing info --verify`` finds it. Costs are in
            docs/reliability.md.
        storage_options: fsspec options of a URL ``root`` (``s3://``: ``key``, ``secret``,
            ``client_kwargs={"endpoint_url": ...}``; ``gs://``: ``token``, ``project``; ...). They are bound
            to ``root`` for this process (`probing.storage.fs_options`): every write and read under it (the
            lease, the metadata, resume, `open_run`, probes, ``info``) uses them.
    """

    name = "zarr"
    supports_urls = True

    def __init__(
        self,
        root: str,
        *,
        dtype: str = "float32",
        chunk_rows: int | None = None,
        compressor: str = "none",
        compression_level: int | None = None,
        shard_chunks: int | None = None,
        checksums: bool = True,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(root, dtype=dtype, chunk_rows=chunk_rows)
        if storage_options and not is_url(self.root):
            raise ConfigError(
                f"storage_options were given for {self.root!r}, which is a local folder: they are fsspec options of "
                "a URL root (s3://bucket/runs, gs://bucket/runs). Drop them or give a URL."
            )
        from probing.storage.fs_options import bind

        bind(self.root, storage_options)
        self.checksums = checksums
        if shard_chunks is not None and shard_chunks < 1:
            raise ConfigError(f"shard_chunks must be >= 1, got {shard_chunks}.")
        self.compressor = compressor
        self.compression_level = compression_level
        self.shard_chunks = shard_chunks
        self._compressors = _compressors(compressor, compression_level)  # validate now, not mid-run

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "dtype": str(self.dtype),
            "chunk_rows": self.chunk_rows,
            "compressor": self.compressor,
            "compression_level": self.compression_level,
            "shard_chunks": self.shard_chunks,
            "checksums": self.checksums,
        }

    @property
    def compress(self) -> bool:
        return self.compressor != "none"

    def open_store(self, path: str, mode: str) -> ZarrArrays:
        return ZarrArrays(path, mode, self._compressors, self.checksums)

    @staticmethod
    def detect(path: str) -> bool:
        return is_zarr_run(path)

    @staticmethod
    def open_existing(path: str) -> ZarrArrays:
        return ZarrArrays(path, "r")


__all__ = ["COMPRESSORS", "STORAGE_DTYPES", "ZarrArrays", "ZarrStorage", "is_zarr_run"]
