"""`RunReader`: reads a stored run in dataset order, for every backend; `probing.open_run` returns one.

A completed run's arrays are already in dataset order, so reading is slicing. An incomplete run (with
``allow_partial=True``) is read from the same arrays, restricted to the examples its parts recorded
as done: nothing is counted twice and nothing half-written is returned.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from probing.errors import ConfigError, DamagedRunError, LayerNotFoundError, RunIncompleteError, close_matches
from probing.storage.arrays import ArrayStore
from probing.storage.columns import decode
from probing.storage.layout import EXAMPLES, MISSING_SUFFIX, PARTS, ROWS, Column, RunLayout, layer_path
from probing.storage.ranges import Ranges
from probing.storage.verify import damaged


class RunReader:
    """A stored run: activations per layer, per-example and per-row metadata, in dataset order.

    Pooled runs have one row per example; token-level runs (``tokens``, ``words``) have
    ``offsets[i]:offsets[i + 1]`` rows for example ``i``. Use as a context manager (or call `close`)
    to release file handles.
    """

    def __init__(self, store: ArrayStore, path: str, allow_partial: bool = False) -> None:
        self.store = store
        self.path = path
        attrs = store.get_attrs("")
        self.metadata: dict[str, Any] = dict(attrs.get("probing", {}))
        self.partial = not self.metadata.get("completed", False)
        layout = self.metadata.get("layout")
        self.layout: RunLayout | None = RunLayout.from_dict(layout) if layout else None
        self._done: Ranges | None = None
        # partial token-level runs: first row, rows and tokens of each done example, from the parts
        self._place: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._missing: dict[str, list[tuple[int, int]]] = {}  # chunks absent from each array read so far
        if not self.partial and self.layout is not None:
            try:
                self._check_shapes()
            except DamagedRunError:
                store.close()
                raise
        if self.partial:
            if not allow_partial:
                store.close()
                raise RunIncompleteError(
                    f"The run at {path} is not completed (interrupted, or still running). Finish it by running "
                    "the same command again with resume=true, or read what is done with allow_partial=True."
                )
            from probing.storage.writer import done_ranges, part_states

            states = part_states(store)
            self._done = done_ranges(states)[0] if self.layout is not None else Ranges()
            total = self.metadata.get("dataset", {}).get("n_examples")
            warnings.warn(
                f"Reading a partial run: {len(self._done)} of {total if total is not None else '?'} examples are "
                "finished.",
                stacklevel=3,
            )
            if self.ragged:
                self._place = self._partial_places(states)

    # -- what the run is ---------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return str(self.metadata.get("run_id", Path(self.path).name))

    @property
    def layers(self) -> list[str]:
        """The stored layer keys, in request order."""
        return list(self.metadata.get("layers", []))

    @property
    def completed(self) -> bool:
        return bool(self.metadata.get("completed", False))

    @property
    def mode(self) -> str:
        """``pooled``, ``tokens`` or ``words``."""
        return str(self.metadata.get("mode", "pooled"))

    @property
    def ragged(self) -> bool:
        return self.layout.ragged if self.layout is not None else self.mode != "pooled"

    @property
    def n_examples(self) -> int:
        """Examples stored (the finished ones of a partial run)."""
        if self._done is not None:
            return len(self._done)
        return int(self.metadata.get("dataset", {}).get("n_examples", 0))

    @property
    def example_ids(self) -> np.ndarray:
        """Dataset ids of the examples read (all of them for a completed run)."""
        return self._done.values() if self._done is not None else np.arange(self.n_examples)

    @property
    def offsets(self) -> np.ndarray:
        """Row offsets ``[n_examples + 1]``: example ``i`` owns rows ``offsets[i]:offsets[i + 1]``."""
        if not self.ragged:
            return np.arange(self.n_examples + 1, dtype=np.int64)
        counts = self._place[1] if self._place is not None else self._read(f"{EXAMPLES}/row_counts")
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    @property
    def example_fields(self) -> list[str]:
        return list(self.metadata.get("example_fields", ["token_counts"] if self.partial else []))

    @property
    def row_fields(self) -> list[str]:
        return list(self.metadata.get("row_fields", []))

    def layer_key(self, layer: int | str) -> str:
        """Map a selector (stored key, block index, ``embeddings`` or module name) to a stored key."""
        keys = self.layers
        if isinstance(layer, str) and layer in keys:
            return layer
        for key, module_name in self.metadata.get("layer_modules", {}).items():
            if layer == module_name:
                return str(key)
        n = self.metadata.get("num_blocks")
        index: int | None = None
        digits = isinstance(layer, str) and layer.lstrip("-").isdigit()
        if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool) or digits:
            index = int(layer)
        if index is not None and n:
            key = f"blocks.{index % n}" if -n <= index < n else None
            if key in keys:
                return str(key)
        raise LayerNotFoundError(
            f"Layer {layer!r} is not in this run.{close_matches(str(layer), keys)} Stored layers: {keys}."
        )

    # -- checked reads -----------------------------------------------------------------------------
    def _read(self, path: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Read rows of an array; a chunk that fails its checksum, or that is missing from a completed
        run (zarr would give zeros), is a `DamagedRunError` naming the array and rows."""
        if not self.partial:
            missing = self._missing.get(path)
            if missing is None:  # one listing of the array's chunks per reader (a directory, or a prefix)
                missing = self._missing[path] = self.store.missing_chunks(path)
            lo, hi = start or 0, self.store.shape(path)[0] if stop is None else stop
            for gone_lo, gone_hi in missing:
                if gone_lo < hi and gone_hi > lo:
                    raise damaged(self.path, path, gone_lo, gone_hi, None)
        try:
            return self.store.read(path, start, stop)
        except Exception as exc:  # noqa: BLE001 - zarr raises ValueError, h5py OSError, for a bad chunk
            bad = self._bad_chunk(path, start, stop)
            if bad is None:  # every chunk reads alone: not damage (memory, network...): the error as it is
                raise
            raise damaged(self.path, path, bad[0], bad[1], exc) from exc

    def _bad_chunk(self, path: str, start: int | None, stop: int | None) -> tuple[int, int] | None:
        """The rows of the first chunk in ``start..stop`` that cannot be read, or None if each reads."""
        try:
            unit = max(1, self.store.chunk_rows(path))
            lo, hi = start or 0, self.store.shape(path)[0] if stop is None else stop
        except Exception:  # noqa: BLE001 - the array itself cannot be opened
            return (start or 0, stop or 0)
        for a in range((lo // unit) * unit, hi, unit):
            try:
                self.store.read(path, max(a, lo), min(hi, a + unit))
            except Exception:  # noqa: BLE001
                return max(a, lo), min(hi, a + unit)
        return None

    def verify(self) -> list[str]:
        """Read every stored array whole, chunk by chunk, and return what is damaged (empty: intact).

        Checks each array's shape against the run's layout, that every chunk exists, that every chunk
        passes its checksum, and that layers hold no NaN/inf the run did not record."""
        from probing.storage.verify import verify_run

        return verify_run(self)

    def _check_shapes(self) -> None:
        """A completed run's arrays have the lengths its layout says (an edited shape is damage)."""
        from probing.storage.verify import shape_problems

        problems = shape_problems(self)
        if problems:
            raise DamagedRunError(
                f"The run at {self.path} is damaged: {'; '.join(problems[:3])}. `probing info --verify "
                f"{self.path}` checks it whole; recompute it (a new run) to recover."
            )

    # -- arrays ------------------------------------------------------------------------------------
    def _row_spans(self) -> Ranges | None:
        """The rows to read: None for a completed run (all), else those of the done examples."""
        if self._done is None:
            return None
        if not self.ragged:
            return self._done
        assert self._place is not None
        starts, counts, _ = self._place
        return Ranges(starts, starts + counts)

    def _read_spans(self, path: str, spans: Ranges | None) -> np.ndarray:
        if spans is None:
            return self._read(path)
        pieces = [self._read(path, a, b) for a, b in spans]
        if pieces:
            return np.concatenate(pieces)
        shape = self.store.shape(path)[1:]
        return np.zeros((0, *shape), dtype=self.store.read(path, 0, 0).dtype)

    def activations(self, layer: int | str) -> np.ndarray:
        """``[n_examples, dim]`` (``[rows, dim]`` when token-level) activations of ``layer``, dataset order."""
        return self._read_spans(layer_path(self.layer_key(layer)), self._row_spans())

    def read_rows(self, layer: int | str, rows: np.ndarray, block_rows: int = 65536) -> np.ndarray:
        """Rows ``rows`` (sorted positions among the rows read) of a layer, reading at most ``block_rows``
        rows at a time: a sample of a large run never brings the whole layer into memory."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._done is not None:  # a partial run: positions among its finished rows
            return self.activations(layer)[rows]
        path = layer_path(self.layer_key(layer))
        shape = self.store.shape(path)
        out = np.empty((len(rows), *shape[1:]), dtype=self.store.read(path, 0, 0).dtype)
        k = 0
        while k < len(rows):
            a = int(rows[k])
            m = int(np.searchsorted(rows, a + block_rows, side="left"))
            block = self._read(path, a, int(rows[m - 1]) + 1)
            out[k:m] = block[rows[k:m] - a]
            k = m
        return out

    def array(self, layer: int | str) -> Any:
        """The backend's array of a completed run's layer (zarr array or h5py dataset): slice it lazily."""
        return self.store.native(layer_path(self.layer_key(layer)))

    def rows_of(self, layer: int | str, example: int) -> np.ndarray:
        """The ``[rows, dim]`` activations of one example (one row for pooled runs).

        For a partial run, ``example`` counts the finished examples (see `example_ids`)."""
        path = layer_path(self.layer_key(layer))
        if self._done is not None:
            if self.ragged:
                assert self._place is not None
                start, count = int(self._place[0][example]), int(self._place[1][example])
                return self._read(path, start, start + count)
            eid = int(self.example_ids[example])
            return self._read(path, eid, eid + 1)
        offs = self.offsets
        return self._read(path, int(offs[example]), int(offs[example + 1]))

    def attention(self, layer: int | str, example: int) -> np.ndarray:
        """One example's attention probabilities ``[heads, queries, n]`` from an ``attn_pattern`` layer
        (``layer`` = ``"attn_pattern.3"`` or the block index 3): ``n`` is the example's token count, keys in
        example-local order; queries are the strategy's rows (all ``n`` tokens with ``keep_special=true``,
        so ``[heads, n, n]``)."""
        key = f"attn_pattern.{int(layer)}" if not isinstance(layer, str) or layer.lstrip("-").isdigit() else layer
        n_blocks = self.metadata.get("num_blocks")
        if key not in self.layers and n_blocks and key[13:].lstrip("-").isdigit():
            key = f"attn_pattern.{int(key[13:]) % int(n_blocks)}"
        if not key.startswith("attn_pattern.") or key not in self.layers:
            patterns = [k for k in self.layers if k.startswith("attn_pattern.")]
            raise LayerNotFoundError(
                f"{layer!r} is not an attention-pattern layer of this run; stored patterns: {patterns or 'none'} "
                "(request layers=[\"attn_pattern.3\"] with strategy=tokens)."
            )
        rows = self.rows_of(key, example)
        n = int(self.example_metadata("token_counts")[example])
        return np.ascontiguousarray(rows[:, :, :n].transpose(1, 0, 2))

    def iter_batches(self, layer: int | str, batch_size: int = 1024) -> Iterator[np.ndarray]:
        """Rows of a layer in order, ``batch_size`` at a time, never the whole layer in memory."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
        path = layer_path(self.layer_key(layer))
        spans = self._row_spans()
        if spans is None:
            total = self.store.shape(path)[0]
            spans = Ranges.span(0, total)
        for a, b in spans:
            for s in range(a, b, batch_size):
                yield self._read(path, s, min(b, s + batch_size))

    def _column(self, group: str, field: str) -> np.ndarray:
        layout = self.layout
        columns = {} if layout is None else (layout.row_columns if group == ROWS else layout.example_columns)
        col = columns.get(field)
        path = f"{group}/{field}"
        spans = None if self._done is None else (self._done if group == EXAMPLES else self._row_spans())
        data = self._read_spans(path, spans)
        if col is None:  # token_counts, row_counts, token_id, word_index: plain numbers
            return data
        missing = self._read_spans(path + MISSING_SUFFIX, spans) if col.nullable else None
        return decode(data, col, missing)

    def example_metadata(self, field: str) -> np.ndarray:
        """Per-example values of a field (``text``, labels, ``token_counts``), in dataset order.

        Types are kept: numbers as numbers (a masked array where a nullable field has no value),
        strings as strings, other values (lists, dicts) as they were."""
        if self.partial and field not in ("token_counts", "row_counts"):
            raise KeyError(f"A partial run is read with token_counts only; {field!r} is complete once the run is.")
        if field not in self.example_fields and not (self.partial and field == "token_counts"):
            raise KeyError(f"No per-example field {field!r}; stored: {self.example_fields}.")
        if self._place is not None and field in ("token_counts", "row_counts"):
            return self._place[2 if field == "token_counts" else 1]
        return self._column(EXAMPLES, field)

    def row_metadata(self, field: str) -> np.ndarray:
        """Per-row values (token-level runs): ``token_id``, ``token`` (its string), ``word_index``, or
        per-word labels."""
        if field not in self.row_fields:
            raise KeyError(f"No per-row field {field!r}; stored: {self.row_fields}.")
        if field == "token" and self.store.exists("vocab") and not self.store.exists(f"{ROWS}/token"):
            vocab = self.store.read("vocab")
            return vocab[self._column(ROWS, "token_id")]
        return self._column(ROWS, field)

    def column(self, field: str) -> Column | None:
        """How a metadata field is stored (its kind and whether values may be missing)."""
        if self.layout is None:
            return None
        return self.layout.example_columns.get(field) or self.layout.row_columns.get(field)

    def _partial_places(self, states: dict[str, dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """First row, row count and token count of each done example, from the parts that recorded them."""
        assert self._done is not None
        ids = self._done.values()
        starts = np.zeros(len(ids), dtype=np.int64)
        counts = np.zeros(len(ids), dtype=np.int64)
        tokens = np.zeros(len(ids), dtype=np.int32)
        found = np.zeros(len(ids), dtype=bool)
        for part, state in states.items():
            if "share" not in state:
                continue
            lo, hi = state["share"]
            sel = (ids >= lo) & (ids < hi) & ~found
            if not sel.any():
                continue
            share_counts = self.store.read(f"{PARTS}/{part}/row_counts")
            share_starts = int(state["row_start"]) + np.concatenate([[0], np.cumsum(share_counts)[:-1]])
            starts[sel] = share_starts[ids[sel] - lo]
            counts[sel] = share_counts[ids[sel] - lo]
            tokens[sel] = self.store.read(f"{PARTS}/{part}/token_counts")[ids[sel] - lo]
            found |= sel
        return starts, counts, tokens

    # -- other views -------------------------------------------------------------------------------
    def torch_dataset(self, layers: Sequence[int | str] | None = None) -> Any:
        """A ``torch.utils.data.Dataset`` over examples that reads chunks lazily (data larger than memory).

        Item ``i`` is a dict ``{layer key: tensor}``: ``[dim]`` for pooled runs, ``[rows, dim]`` for
        token-level runs.
        """
        from probing.storage.torch_dataset import RunDataset

        return RunDataset(self, [self.layer_key(x) for x in (layers or self.layers)])

    def loader(
        self,
        layer: int | str,
        batch_size: int,
        shuffle: bool = True,
        *,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        buffer_chunks: int = 32,
        **kwargs: Any,
    ) -> Any:
        """Batches of one layer's rows (token-level or pooled) for training: a torch ``IterableDataset``
        that reads whole chunks in a random order into a bounded shuffle buffer, splits them between DDP
        ranks and DataLoader workers without overlap, and is deterministic for a seed (`set_epoch` for the
        next permutation). See `probing.storage.loader.RunLoader` for memory and shuffle quality."""
        from probing.storage.loader import RunLoader

        if self.partial:
            raise RunIncompleteError(
                f"The loader reads completed runs; {self.path} is not. Finish it with resume=true first."
            )
        return RunLoader(self.path, layer, batch_size, shuffle=shuffle, seed=seed, rank=rank, world_size=world_size,
                         buffer_chunks=buffer_chunks, **kwargs)

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
            coords["example"] = (dim, np.repeat(self.example_ids, np.diff(self.offsets)))
            for f in [] if self.partial else self.row_fields:
                coords[f] = (dim, np.asarray(self.row_metadata(f)))
        else:
            coords["example"] = (dim, self.example_ids)
            for f in [] if self.partial else self.example_fields:
                values = self.example_metadata(f)
                if isinstance(values, np.ma.MaskedArray):
                    continue
                if values.ndim == 1 and values.dtype != object or all(isinstance(v, str) for v in values):
                    coords[f] = (dim, values)
        return xr.DataArray(
            data,
            dims=("layer", dim, "hidden"),
            coords=coords,
            name="activations",
            attrs={"run": self.path, "strategy": json.dumps(self.metadata.get("strategy"))},
        )

    # -- lifetime ----------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the run's file handles (HDF5); the reader cannot read afterwards."""
        self.store.close()

    def __enter__(self) -> RunReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RunReader({self.path!r}, n_examples={self.n_examples}, layers={self.layers})"
