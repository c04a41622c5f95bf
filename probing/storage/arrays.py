"""`ArrayStore`: the only thing a storage backend implements.

A run is a tree of named arrays and attribute groups (`probing.storage.layout` says which). A
backend says how to create, write, read and list them; everything about runs (create or resume,
write units, seams, exactly-once, finalize, reading in dataset order) is written once, on top of
this interface, in `probing.storage.writer` and `probing.storage.reader`.

Arrays grow along their first axis only. ``rows=None`` at creation means "not known yet"
(a streamed dataset): the backend makes the array as large as it needs without storing anything
for rows never written, and `ArrayStore.set_rows` fixes the real length at the end.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import numpy as np

#: dtype name of variable-length UTF-8 string arrays (numpy's object dtype means the same here)
STR = "str"


def _is_str(dtype: Any) -> bool:
    return isinstance(dtype, str) and dtype == STR or (isinstance(dtype, np.dtype) and dtype.kind in "OTU")


class ArrayStore(ABC):
    """Path-addressed arrays (``"layers/blocks.3"``) and JSON attributes of one run."""

    path: str
    #: whether several processes may write disjoint chunks of one array at once
    concurrent_writers: bool = True

    # -- attributes ------------------------------------------------------------------------------
    @abstractmethod
    def get_attrs(self, group: str) -> dict[str, Any]:
        """The JSON attributes of ``group`` (``""`` is the run's root); empty if it does not exist."""

    @abstractmethod
    def set_attrs(self, group: str, attrs: Mapping[str, Any]) -> None:
        """Replace the attributes of ``group`` (creating it), as one atomic write where the store allows."""

    # -- arrays ----------------------------------------------------------------------------------
    @abstractmethod
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
        """Create the array ``[rows, *shape]`` (replacing any), chunked by ``chunk_rows`` rows.

        ``dtype`` is a numpy dtype or `STR`. ``shard_rows``: several chunks per stored object (zarr
        sharding), where the backend has it. ``compress``: use the store's codec.
        """

    @abstractmethod
    def write(self, path: str, start: int, data: np.ndarray) -> None:
        """Write ``data`` into rows ``[start, start + len(data))``."""

    @abstractmethod
    def read(self, path: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` (the whole array by default) as a numpy array (object for strings)."""

    @abstractmethod
    def set_rows(self, path: str, rows: int) -> None:
        """Fix the array's number of rows (metadata only: nothing already written is rewritten)."""

    @abstractmethod
    def shape(self, path: str) -> tuple[int, ...]: ...

    @abstractmethod
    def exists(self, path: str) -> bool:
        """True if ``path`` is an array or a group."""

    @abstractmethod
    def groups(self, group: str) -> list[str]:
        """Names of the sub-groups of ``group`` (empty if it does not exist)."""

    @abstractmethod
    def arrays(self, group: str) -> list[str]:
        """Names of the arrays directly in ``group`` (empty if it does not exist)."""

    @abstractmethod
    def delete(self, path: str) -> None:
        """Remove an array or a group and everything below it (no error if absent)."""

    # -- optional --------------------------------------------------------------------------------
    def chunk_rows(self, path: str) -> int:
        """Rows per stored chunk of an array (its write unit is `write_rows`)."""
        return int(self.shape(path)[0]) or 1

    def write_rows(self, path: str) -> int:
        """Rows per independently written object (a shard, or a chunk): the unit no two writers share."""
        return self.chunk_rows(path)

    def native(self, path: str) -> Any:
        """The backend's own array object (zarr array, h5py dataset), to slice lazily."""
        raise NotImplementedError(f"{type(self).__name__} has no native array objects.")

    def stored_bytes(self, path: str) -> int | None:
        """Bytes an array takes on disk, where the backend can tell."""
        return None

    def missing_chunks(self, path: str) -> list[tuple[int, int]]:
        """Row ranges of the chunks (shards) of ``path`` that are not stored (backends that can lose one)."""
        return []

    def close(self) -> None:  # noqa: B027 - backends without handles
        """Release file handles. Safe to call twice."""

    def __enter__(self) -> ArrayStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
