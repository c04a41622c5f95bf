"""The run layout shared by the chunked backends (Zarr, HDF5), and the reader every backend uses.

A backend only provides an `ArrayIO`: create / append / read 1-D or 2-D arrays by path, attributes,
sub-groups. Everything about parts, buffering, exactly-once checks, merging into dataset order and
ragged (token-level) layouts lives here, once.

Layout of a run (paths inside the backend)::

    parts/<a<attempt>-r<rank>>/layers/<key>   [rows, dim] in arrival order, one writer each
    parts/<part>/row_fields/<name>            [rows] per-row metadata (token ids, word indices)
    parts/<part>/lengths, token_counts, ids   [examples]; ``ids`` is written last
    layers/<key>                              [total rows, dim] in dataset order
    examples/<field>                          [n_examples] per-example metadata (text, labels, ...)
    examples/offsets                          [n_examples + 1] row offsets (token-level modes only)
    rows/<field>                              [total rows] per-row metadata (token-level modes only)

Pooled runs have one row per example; token-level runs (``tokens``, ``words``) have
``offsets[i]:offsets[i + 1]`` rows for example ``i``.
"""

from __future__ import annotations

import json
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from probing.errors import ConfigError, RunIncompleteError
from probing.faults import fault_point
from probing.storage.base import RunReader, RunWriter, check_batch, total_progress, utc_now


class ArrayIO(ABC):
    """Path-addressed arrays and attributes of one run, as a backend stores them."""

    @abstractmethod
    def get_meta(self) -> dict[str, Any]: ...

    @abstractmethod
    def set_meta(self, meta: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def get_attrs(self, group: str) -> dict[str, Any]: ...

    @abstractmethod
    def set_attrs(self, group: str, attrs: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def create(self, path: str, shape: tuple[int, ...], chunk_rows: int, dtype: Any, compress: bool) -> None:
        """Create an empty ``[0, *shape]`` array (replacing any), growable along rows."""

    @abstractmethod
    def append(self, path: str, data: np.ndarray) -> None: ...

    @abstractmethod
    def read(self, path: str, start: int | None = None, stop: int | None = None) -> np.ndarray: ...

    @abstractmethod
    def shape(self, path: str) -> tuple[int, ...]: ...

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def children(self, group: str) -> list[str]:
        """Names of the sub-groups of ``group`` (empty if it does not exist)."""

    @abstractmethod
    def arrays(self, group: str) -> list[str]:
        """Names of the arrays directly in ``group`` (empty if it does not exist)."""

    @abstractmethod
    def delete(self, group: str) -> None: ...

    @abstractmethod
    def write_strings(self, path: str, values: Sequence[str]) -> None: ...

    def ensure_group(self, group: str) -> None:  # noqa: B027 - backends without explicit groups
        """Create a group (and its parents) if the backend needs it."""

    def native(self, path: str) -> Any:
        """The backend's own array object (zarr array, h5py dataset), for slicing without loading."""
        raise NotImplementedError(f"{type(self).__name__} has no native array objects.")

    def close(self) -> None:  # noqa: B027
        """Release file handles."""


def ragged_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``range(s, s + n)`` for each (s, n): row indices of ragged segments."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    begins = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - begins, lengths) + np.arange(total)


def check_exactly_once(all_ids: np.ndarray, n: int, path: str) -> None:
    """Raise unless ``all_ids`` holds each of ``0..n-1`` exactly once."""
    uniq, counts = np.unique(all_ids, return_counts=True)
    if (counts > 1).any():
        raise RunIncompleteError(f"Run {path}: example ids stored twice: {uniq[counts > 1][:10].tolist()} (a bug).")
    if len(uniq) != n or (n and (uniq[0] != 0 or uniq[-1] != n - 1)):
        missing = np.setdiff1d(np.arange(n), uniq)
        raise RunIncompleteError(
            f"Run {path}: {len(missing)} of {n} examples are not stored (first: {missing[:10].tolist()}); "
            "the run stays incomplete. Run again with resume=true to compute them."
        )


def encode_column(values: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, str]:
    """A per-example column as an array, and its kind: ``numeric``, ``str`` or ``json``."""
    arr = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    if arr.dtype.kind in "iufb":
        return arr, "numeric"
    if len(arr) and all(isinstance(v, (bool, int, np.integer)) and not isinstance(v, bool) for v in arr):
        return np.asarray(arr, dtype=np.int64), "numeric"
    if len(arr) and all(isinstance(v, (float, int, np.floating, np.integer)) for v in arr):
        return np.asarray(arr, dtype=np.float64), "numeric"
    if all(isinstance(v, str) for v in arr):
        return np.asarray(arr, dtype=object), "str"
    return np.asarray([json.dumps(v) for v in arr], dtype=object), "json"


class ChunkedRunWriter(RunWriter):
    """Buffers one rank's rows and writes them in whole chunks of its own part; finalize merges."""

    def __init__(
        self,
        io: ArrayIO,
        run_id: str,
        path: str,
        meta: dict[str, Any],
        *,
        rank: int,
        world_size: int,
        dtype: np.dtype[Any],
        chunk_rows: int | None,
        compress: bool,
        merge_block_bytes: int,
    ) -> None:
        self.io = io
        self.run_id = run_id
        self.path = path
        self.meta = meta
        self.rank = rank
        self.world_size = world_size
        self.dtype = dtype
        self.compress = compress
        self.merge_block_bytes = merge_block_bytes
        self._chunk_rows_opt = chunk_rows
        self.part = f"parts/a{int(meta.get('attempts', 0)):03d}-r{rank:05d}"
        self.io.ensure_group(self.part)
        self._created: set[str] = set()
        self._buffers: dict[str, list[np.ndarray]] = {}
        self._rowf: dict[str, list[np.ndarray]] = {}
        self._ids: list[np.ndarray] = []
        self._counts: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []
        self._buffered = 0  # examples not yet marked as stored
        self._buffered_rows = 0  # rows not yet written
        self._rows_on_disk = 0  # rows written to this part's layer arrays
        self._rows_marked = 0  # rows of the examples marked as stored
        self._chunk_rows: int | None = None
        self._keys: list[str] = list(meta.get("layers", []))
        self.ragged = meta.get("mode", "pooled") != "pooled"
        self.rows_written = 0

    # -- writing -------------------------------------------------------------------------------
    def rows_per_chunk(self, dim: int) -> int:
        if self._chunk_rows_opt is not None:
            return self._chunk_rows_opt
        rows = max(1, (2 * 2**20) // max(1, dim * self.dtype.itemsize))
        return int(2 ** int(np.log2(rows)))

    def append(self, batch_id: int, activations: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
        row_counts = metadata.get("row_counts")
        ids = check_batch(activations, metadata, row_counts)
        if len(ids) == 0:
            return
        lengths = np.ones(len(ids), np.int64) if row_counts is None else np.asarray(row_counts, np.int64)
        if row_counts is not None:
            self.ragged = True
        for key, value in activations.items():
            if key not in self._keys:
                self._keys.append(key)
            self._buffers.setdefault(key, []).append(np.asarray(value, dtype=self.dtype))
        for name, value in (metadata.get("row_fields") or {}).items():
            self._rowf.setdefault(name, []).append(np.asarray(value))
        counts = metadata.get("token_counts")
        self._counts.append(np.asarray(counts if counts is not None else np.zeros(len(ids)), dtype=np.int32))
        self._ids.append(ids)
        self._lengths.append(lengths)
        self._buffered += len(ids)
        self._buffered_rows += int(lengths.sum())
        if self._chunk_rows is None:
            self._chunk_rows = self.rows_per_chunk(max(v.shape[1] for v in activations.values()))
        if self._buffered_rows >= self._chunk_rows:
            self._flush(final=False)

    def _append(self, path: str, data: np.ndarray, compress: bool) -> None:
        if path not in self._created:
            assert self._chunk_rows is not None
            self.io.create(path, data.shape[1:], self._chunk_rows, data.dtype, compress)
            self._created.add(path)
        self.io.append(path, data)

    def _flush(self, final: bool) -> None:
        """Write the buffered rows in whole chunks (all of them when ``final``), then mark as stored the
        examples whose rows are all on disk.

        Rows go out in whole chunks, so no chunk is written twice (a partial chunk would be read back and
        rewritten by the next append). A chunk boundary may fall inside a token-level example: its first
        rows are written now, and its id only once the rest follow. Rows past the last marked example
        are ignored by readers and resume, which locate rows from the marked examples' lengths.
        """
        if self._chunk_rows is None:
            return  # nothing appended yet
        total = self._rows_on_disk + self._buffered_rows
        target = total if final else (total // self._chunk_rows) * self._chunk_rows
        n_rows = target - self._rows_on_disk
        if n_rows > 0:
            for key, parts in self._buffers.items():
                data = np.concatenate(parts)
                self._append(f"{self.part}/layers/{key}", data[:n_rows], self.compress)
                self._buffers[key] = [data[n_rows:]] if n_rows < len(data) else []
            for name, parts in self._rowf.items():
                data = np.concatenate(parts)
                self._append(f"{self.part}/row_fields/{name}", data[:n_rows], False)
                self._rowf[name] = [data[n_rows:]] if n_rows < len(data) else []
            self._rows_on_disk = target
            self._buffered_rows -= n_rows
        if self._buffered == 0:
            return
        ids, counts, lengths = (np.concatenate(x) for x in (self._ids, self._counts, self._lengths))
        ends = self._rows_marked + np.cumsum(lengths)
        k = int(np.searchsorted(ends, self._rows_on_disk, side="right"))
        if k == 0:
            return
        self._append(f"{self.part}/token_counts", counts[:k], False)
        self._append(f"{self.part}/lengths", lengths[:k], False)
        self._append(f"{self.part}/ids", ids[:k], False)  # last: marks these examples as stored
        fault_point("after_flush")
        self._ids, self._counts, self._lengths = ([x[k:]] if k < len(x) else [] for x in (ids, counts, lengths))
        self._rows_marked = int(ends[k - 1])
        self._buffered -= k
        self.rows_written += k

    def close(self) -> None:
        self._flush(final=True)

    def record_progress(self, progress: Mapping[str, Any]) -> None:
        self.io.set_attrs(self.part, {"progress": {**progress, "rows_stored": self.rows_written, "updated": utc_now()}})

    def done_ids(self) -> np.ndarray:
        return PartsView(self.io).all_ids()

    # -- finalize ------------------------------------------------------------------------------
    def finalize(
        self, example_metadata: Mapping[str, Sequence[Any]] | None = None, *, stats: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        self.close()
        meta = self.io.get_meta()
        keys = list(meta.get("layers") or self._keys)
        view = PartsView(self.io)
        all_ids = view.all_ids()
        n = int(meta.get("dataset", {}).get("n_examples", int(all_ids.max()) + 1 if len(all_ids) else 0))
        check_exactly_once(all_ids, n, self.path)
        ragged = meta.get("mode", "pooled") != "pooled" or self.ragged
        lengths = np.zeros(n, dtype=np.int64)
        counts = np.zeros(n, dtype=np.int32)
        for p in view.parts:
            lengths[view.ids[p]] = view.lengths[p]
            counts[view.ids[p]] = self.io.read(f"parts/{p}/token_counts", 0, len(view.ids[p]))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        block_rows = 2 * view.displacement()
        for key in keys:
            dim = next(
                (
                    self.io.shape(f"parts/{p}/layers/{key}")[1:]
                    for p in view.parts
                    if self.io.exists(f"parts/{p}/layers/{key}")
                ),
                (int(meta.get("hidden_size") or 0),),
            )
            self._merge(view, f"layers/{key}", f"layers/{key}", offsets, dim, self.dtype, self.compress, block_rows)
        row_field_names = sorted({f for p in view.parts for f in self.io.arrays(f"parts/{p}/row_fields")})
        for name in row_field_names:
            self._merge(view, f"rows/{name}", f"row_fields/{name}", offsets, (), np.int64, False, block_rows)
        self.io.ensure_group("examples")
        self._write("examples/token_counts", counts)
        fields = ["token_counts"]
        row_fields = list(row_field_names)
        if ragged:
            self._write("examples/offsets", offsets)
            self._write("examples/row_counts", lengths)
            fields.append("row_counts")
        for field, values in (example_metadata or {}).items():
            if len(values) != n:
                raise ConfigError(f"Metadata field {field!r} has {len(values)} values for {n} examples.")
            if ragged and n and all(isinstance(v, (list, tuple)) for v in values):
                # per-word (or per-token) lists: flatten, cut to the rows that were kept
                flat = [x for v, k in zip(values, lengths, strict=True) for x in list(v)[: int(k)]]
                if all(len(v) >= k for v, k in zip(values, lengths, strict=True)):
                    kind = self._write(f"rows/{field}", flat)
                    row_fields.append(field)
                    if kind == "json":
                        meta.setdefault("json_fields", []).append(f"rows/{field}")
                    continue
            kind = self._write(f"examples/{field}", values)
            fields.append(field)
            if kind == "json":
                meta.setdefault("json_fields", []).append(field)
        progress = {p: self.io.get_attrs(f"parts/{p}").get("progress") for p in view.all_parts}
        meta.update(
            layers=keys,
            example_fields=fields,
            row_fields=row_fields,
            completed=True,
            finished=utc_now(),
            mode=meta.get("mode", "tokens" if ragged else "pooled"),
            total_rows=int(offsets[-1]),
        )
        meta.setdefault("dataset", {})["n_examples"] = n
        meta["stats"] = {"total": total_progress(progress), **(stats or {}), "parts": progress}
        fault_point("finalize")
        self.io.set_meta(meta)  # the completed flag goes last...
        self.io.delete("parts")  # ...then the parts are only clean-up
        self.io.ensure_group("parts")
        return meta

    def _write(self, path: str, values: Sequence[Any] | np.ndarray) -> str:
        arr, kind = encode_column(values)
        if kind == "numeric":
            self.io.create(path, arr.shape[1:], max(1, min(len(arr), 65536)), arr.dtype, False)
            if len(arr):
                self.io.append(path, arr)
        else:
            self.io.write_strings(path, [str(v) for v in arr])
        return kind

    def _merge(
        self,
        view: PartsView,
        out_path: str,
        source: str,
        offsets: np.ndarray,
        dim: tuple[int, ...],
        dtype: Any,
        compress: bool,
        block_rows: int,
    ) -> None:
        """Copy rows from every part into ``out_path`` in dataset order, in blocks of bounded size.

        A block holds ``block_rows`` rows (twice the parts' `PartsView.displacement`, so that each
        part row is read about once), at least a chunk and at most ``merge_block_bytes``: the
        memory of the merge follows the bucketing window, not the size of the run.
        """
        n = len(offsets) - 1
        row_bytes = max(1, int(np.prod(dim or (1,))) * np.dtype(dtype).itemsize)
        chunk = self.rows_per_chunk(int(np.prod(dim or (1,))))
        self.io.create(out_path, dim, max(1, min(chunk, int(offsets[-1]) or 1)), dtype, compress)
        budget = max(chunk, min(block_rows, self.merge_block_bytes // row_bytes))
        # part rows are read in spans of at most `span` rows (not the whole span a block's rows cover at
        # once) and scattered into the block: memory stays near the block's own size
        span = max(chunk, budget // 8)
        e0 = 0
        while e0 < n:
            e1 = max(e0 + 1, int(np.searchsorted(offsets, offsets[e0] + budget, side="right")) - 1)
            e1 = min(e1, n)
            r0, r1 = int(offsets[e0]), int(offsets[e1])
            buf = np.empty((r1 - r0, *dim), dtype=dtype)
            for p in view.parts:
                ids = view.ids[p]
                sel = np.flatnonzero((ids >= e0) & (ids < e1))
                if len(sel) == 0 or r1 == r0:
                    continue
                src_start = view.starts[p][sel]
                lens = view.lengths[p][sel]
                if lens.sum() == 0:
                    continue
                src = ragged_index(src_start, lens)  # rows in the part ...
                dst = ragged_index(offsets[ids[sel]] - r0, lens)  # ... and where they go in the block
                order = np.argsort(src, kind="stable")
                src, dst = src[order], dst[order]
                k = 0
                while k < len(src):
                    a = int(src[k])
                    m = int(np.searchsorted(src, a + span, side="left"))
                    data = self.io.read(f"parts/{p}/{source}", a, int(src[m - 1]) + 1)
                    buf[dst[k:m]] = data[src[k:m] - a]
                    k = m
            if r1 > r0:
                self.io.append(out_path, buf)
            e0 = e1


class PartsView:
    """What the parts of a run hold: per part, the stored ids and where their rows start."""

    def __init__(self, io: ArrayIO) -> None:
        self.io = io
        self.all_parts = sorted(io.children("parts"))
        self.parts = [p for p in self.all_parts if io.exists(f"parts/{p}/ids")]
        self.ids: dict[str, np.ndarray] = {}
        self.lengths: dict[str, np.ndarray] = {}
        self.starts: dict[str, np.ndarray] = {}
        for p in self.parts:
            ids = io.read(f"parts/{p}/ids").astype(np.int64)
            lengths = io.read(f"parts/{p}/lengths", 0, len(ids)).astype(np.int64)
            self.ids[p] = ids
            self.lengths[p] = lengths
            self.starts[p] = np.cumsum(lengths) - lengths

    def displacement(self) -> int:
        """How far (in rows) any example's rows sit from where dataset order puts them, within its part.

        Bucketing sorts examples by length within windows, so this is about one window's rows; a
        merge block twice this size reads each part row about once.
        """
        out = 0
        for p in self.parts:
            if len(self.ids[p]) == 0:
                continue
            order = np.argsort(self.ids[p], kind="stable")
            lengths = self.lengths[p][order]
            sorted_starts = np.cumsum(lengths) - lengths
            out = max(out, int(np.abs(self.starts[p][order] - sorted_starts).max() + lengths.max()))
        return out

    def all_ids(self) -> np.ndarray:
        found = [self.ids[p] for p in self.parts]
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


class ChunkedRunReader(RunReader):
    """Reads a run through an `ArrayIO`, in dataset order.

    With ``allow_partial=True`` an incomplete run is read from its parts: only the finished examples,
    in id order (`example_ids` says which), with a warning that says how many.
    """

    def __init__(self, io: ArrayIO, path: str, allow_partial: bool = False) -> None:
        self.io = io
        self.path = path
        self.metadata = io.get_meta()
        self.partial = not self.metadata.get("completed", False)
        self._partial_cache: dict[str, np.ndarray] = {}
        if self.partial:
            if not allow_partial:
                raise RunIncompleteError(
                    f"The run at {path} is not completed (interrupted, or still running). Finish it by running "
                    "the same command again with resume=true, or read what is done with allow_partial=True."
                )
            self._view = PartsView(io)
            ids = self._view.all_ids()
            total = int(self.metadata.get("dataset", {}).get("n_examples", len(ids)))
            warnings.warn(f"Reading a partial run: {len(ids)} of {total} examples are finished.", stacklevel=3)

    # -- shape of the run ----------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return str(self.metadata.get("mode", "pooled"))

    @property
    def ragged(self) -> bool:
        return self.mode != "pooled"

    @property
    def n_examples(self) -> int:
        if self.partial:
            return len(self._view.all_ids())
        return int(self.metadata.get("dataset", {}).get("n_examples", 0))

    @property
    def example_ids(self) -> np.ndarray:
        """Dataset ids of the rows read (all of them for a completed run)."""
        return np.sort(self._view.all_ids()) if self.partial else np.arange(self.n_examples)

    @property
    def offsets(self) -> np.ndarray:
        """Row offsets ``[n_examples + 1]``: example ``i`` owns rows ``offsets[i]:offsets[i + 1]``."""
        if self.partial:
            lengths = self._partial_concat("lengths")
            return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        if not self.ragged:
            return np.arange(self.n_examples + 1, dtype=np.int64)
        return self.io.read("examples/offsets").astype(np.int64)

    @property
    def row_fields(self) -> list[str]:
        return list(self.metadata.get("row_fields", []))

    # -- arrays --------------------------------------------------------------------------------
    def activations(self, layer: int | str) -> np.ndarray:
        key = self.layer_key(layer)
        if self.partial:
            return self._partial_concat(f"layers/{key}")
        return self.io.read(f"layers/{key}")

    def array(self, layer: int | str) -> Any:
        """The backend's array of a completed run's layer (zarr array or h5py dataset): slice it lazily."""
        return self.io.native(f"layers/{self.layer_key(layer)}")

    def rows_of(self, layer: int | str, example: int) -> np.ndarray:
        """The ``[rows, dim]`` activations of one example (one row for pooled runs)."""
        offs = self.offsets
        start, stop = int(offs[example]), int(offs[example + 1])
        if self.partial:  # ``example`` counts the finished examples (see `example_ids`)
            return self.activations(layer)[start:stop]
        return self.io.read(f"layers/{self.layer_key(layer)}", start, stop)

    def iter_batches(self, layer: int | str, batch_size: int = 1024) -> Iterator[np.ndarray]:
        """Rows of a layer in order, ``batch_size`` at a time, never the whole layer in memory."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
        if self.partial:
            data = self.activations(layer)
            for s in range(0, len(data), batch_size):
                yield data[s : s + batch_size]
            return
        path = f"layers/{self.layer_key(layer)}"
        total = self.io.shape(path)[0]
        for s in range(0, total, batch_size):
            yield self.io.read(path, s, min(total, s + batch_size))

    def example_metadata(self, field: str) -> np.ndarray:
        if self.partial:
            if field == "token_counts":
                return self._partial_concat("token_counts")
            raise KeyError(f"A partial run holds only token_counts per example; {field!r} is written at the end.")
        if field not in self.example_fields:
            raise KeyError(f"No per-example field {field!r}; stored: {self.example_fields}.")
        return self._column(f"examples/{field}", field)

    def row_metadata(self, field: str) -> np.ndarray:
        """Per-row values (token-level runs): ``token_id``, ``word_index``, or per-word labels."""
        if field not in self.row_fields:
            raise KeyError(f"No per-row field {field!r}; stored: {self.row_fields}.")
        return self._column(f"rows/{field}", f"rows/{field}")

    def _column(self, path: str, name: str) -> np.ndarray:
        values = self.io.read(path)
        if name in self.metadata.get("json_fields", []):
            return np.asarray([json.loads(v) for v in values], dtype=object)
        return values

    def _partial_concat(self, source: str) -> np.ndarray:
        if source in self._partial_cache:
            return self._partial_cache[source]
        v = self._view
        pieces: list[np.ndarray] = []
        order_ids: list[np.ndarray] = []
        for p in v.parts:
            n_ids = len(v.ids[p])
            if source in ("ids", "lengths", "token_counts"):
                data = self.io.read(f"parts/{p}/{source}", 0, n_ids)
                pieces.extend(data[i : i + 1] for i in range(n_ids))
            else:
                rows = int(v.lengths[p].sum())
                data = self.io.read(f"parts/{p}/{source}", 0, rows)
                pieces.extend(data[s : s + k] for s, k in zip(v.starts[p], v.lengths[p], strict=True))
            order_ids.append(v.ids[p])
        if not pieces:
            out = np.zeros((0,), dtype=np.int64)
        else:
            order = np.argsort(np.concatenate(order_ids), kind="stable")
            out = np.concatenate([pieces[i] for i in order])
        self._partial_cache[source] = out
        return out

    # -- other views -----------------------------------------------------------------------------
    def torch_dataset(self, layers: Sequence[int | str] | None = None) -> Any:
        """A ``torch.utils.data.Dataset`` over examples that reads chunks lazily (data larger than memory).

        Item ``i`` is a dict ``{layer key: tensor}``: ``[dim]`` for pooled runs, ``[rows, dim]`` for
        token-level runs.
        """
        from probing.storage.torch_dataset import RunDataset

        return RunDataset(self, [self.layer_key(x) for x in (layers or self.layers)])

    def to_xarray(self, layers: Sequence[int | str] | None = None) -> Any:
        """An ``xarray.DataArray`` (loaded in memory) with dims layer x example (or row) x hidden.

        Per-example metadata (labels, text, token counts) are coordinates along ``example``; token-level
        runs have dims layer x row x hidden with ``example`` and per-row fields as row coordinates.
        """
        try:
            import xarray as xr
        except ImportError:
            raise ImportError("to_xarray needs xarray: pip install xarray") from None
        keys = [self.layer_key(x) for x in (layers or self.layers)]
        data = np.stack([self.activations(k) for k in keys]) if keys else np.zeros((0, 0, 0))
        dim = "row" if self.ragged else "example"
        coords: dict[str, Any] = {"layer": keys}
        if self.ragged:
            offs = self.offsets
            coords["example"] = (dim, np.repeat(self.example_ids, np.diff(offs)))
            for f in self.row_fields:
                coords[f] = (dim, self.row_metadata(f))
        else:
            coords["example"] = (dim, self.example_ids)
            for f in [] if self.partial else self.example_fields:
                values = self.example_metadata(f)
                if values.ndim == 1 and values.dtype != object or all(isinstance(v, str) for v in values):
                    coords[f] = (dim, values)
        return xr.DataArray(
            data,
            dims=("layer", dim, "hidden"),
            coords=coords,
            name="activations",
            attrs={"run": self.path, "strategy": json.dumps(self.metadata.get("strategy"))},
        )
