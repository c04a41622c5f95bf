"""`RunWriter`: one rank's writes into a run, straight to the final arrays; and the one create-or-resume path.

What a rank writes (see `probing.storage.layout`):

- the *compute* arrays: activations, per-row fields and per-example token counts, as batches come in
  (`RunWriter.append`), each row at its place in dataset order;
- the *metadata* arrays: the dataset's fields (text, labels), per example or per word, in blocks
  (`RunWriter.write_examples`), independent of the compute and written again by every attempt.

Rows are gathered into whole write units (`probing.storage.units`) and each unit is written once.
An example counts as stored (*done*) once every unit holding its rows is on disk; the part's
``done`` ranges are recorded after that, so a kill at any point loses at most the rows not yet in a
complete unit, and a resume computes exactly the examples that are not done. `RunWriter.finalize`
(rank 0, after every rank closed) checks that each example is done exactly once, copies the seams
(at most two units per array and rank) into place, and sets ``completed`` last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from probing.errors import ConfigError, NonFiniteError, RunIncompleteError
from probing.faults import fault_point
from probing.storage.arrays import STR
from probing.storage.base import check_can_write, check_resume, total_progress, utc_now
from probing.storage.columns import encode, infer_column, storage_dtype
from probing.storage.layout import (
    EXAMPLES,
    MISSING_SUFFIX,
    PARTS,
    ROWS,
    Column,
    RunLayout,
    layer_path,
    make_layout,
    part_name,
)
from probing.storage.lease import Lease
from probing.storage.ranges import Ranges
from probing.storage.units import ColumnSpec, UnitBuffer, ragged_index, stitch_seams

if TYPE_CHECKING:
    from probing.storage.arrays import ArrayStore
    from probing.storage.base import Storage

log = logging.getLogger(__name__)

TOKEN_COUNTS = f"{EXAMPLES}/token_counts"
#: the tokenizer's vocabulary of a token-level run: token strings by id
VOCAB = "vocab"
ROW_COUNTS = f"{EXAMPLES}/row_counts"


# -- create or resume (rank 0), join (other ranks) -------------------------------------------------
def create_arrays(store: ArrayStore, layout: RunLayout, dtype: np.dtype[Any], compress: bool) -> None:
    """Create every array of ``layout`` (missing ones only: a resume after a stop during creation)."""

    def make(path: str, rows: int | None, shape: tuple[int, ...], dt: Any, chunk: int, unit: int | None = None,
             codec: bool = False) -> None:
        if not store.exists(path):
            store.create(path, rows, shape, dt, chunk, shard_rows=unit, compress=codec)
            fault_point("after_create")  # an array's metadata is written, none of its chunks

    rows, n = layout.rows, layout.n_examples
    for key, shape in layout.layers.items():
        make(layer_path(key), rows, shape, dtype, layout.chunk_rows, layout.write_rows, compress)
    for name, dt in layout.row_fields.items():
        make(f"{ROWS}/{name}", rows, (), np.dtype(dt), layout.write_rows)
    counts_chunk = layout.example_chunk
    make(TOKEN_COUNTS, n, (), np.int32, counts_chunk)
    if layout.ragged:
        make(ROW_COUNTS, n, (), np.int64, counts_chunk)
    for group, columns, count, chunk in (
        (EXAMPLES, layout.example_columns, n, layout.example_chunk),
        (ROWS, layout.row_columns, rows, layout.write_rows),
    ):
        for name, col in columns.items():
            make(f"{group}/{name}", count, (), storage_dtype(col), chunk)
            if col.nullable:
                make(f"{group}/{name}{MISSING_SUFFIX}", count, (), np.bool_, chunk)


def part_states(store: ArrayStore) -> dict[str, dict[str, Any]]:
    """The recorded state of every part: its ``done`` ranges, ``progress`` and ``finished`` flag."""
    return {p: store.get_attrs(f"{PARTS}/{p}") for p in store.groups(PARTS)}


def done_ranges(states: Mapping[str, Mapping[str, Any]]) -> tuple[Ranges, int]:
    """The union of the parts' done ids, and how many ids are in more than one part."""
    union = Ranges()
    total = 0
    for state in states.values():
        r = Ranges.from_list(state.get("done", []))
        total += len(r)
        union = union | r
    return union, total - len(union)


def create_or_resume(
    storage: Storage,
    run_id: str,
    path: str,
    meta: dict[str, Any],
    *,
    resume: bool,
    layout: RunLayout | None,
    share: Ranges | None,
    row_starts: np.ndarray | None,
    token_counts: np.ndarray | None,
    world_size: int,
    check: bool,
) -> RunWriter:
    """Rank 0's open (under the run's lease, taken by `Storage.open_run`): a new run (metadata, then every
    array), or a checked new attempt of an incomplete one."""
    from probing.storage.base import is_url
    from probing.storage.registry import backend_of

    existing = backend_of(path)
    if existing is not None and existing is not type(storage) and existing.name != storage.name:
        raise ConfigError(f"{path} holds a {existing.name} run; open it with storage={existing.name}.")
    if existing is not None:
        reader = existing.open_existing(path)
        try:
            old = dict(reader.get_attrs("")["probing"])
        finally:
            reader.close()
        check_can_write(path, bool(old.get("completed")), resume)
        if check:
            check_resume(old, meta)
        store = storage.open_store(path, "r+")
        old["attempts"] = int(old.get("attempts", 0)) + 1
        old.setdefault("resumed_at", []).append(utc_now())
        old["world_size"] = world_size
        meta = old
        if layout is not None and "layout" not in meta:
            meta["layout"] = layout.to_dict()
        if "layout" in meta:
            stored = RunLayout.from_dict(meta["layout"])
            create_arrays(store, stored, storage.dtype, storage.compress)
        # rows an earlier attempt left in seams go to their place now: every done row is then in the arrays
        stitch_seams(store, PARTS, store.groups(PARTS))
        store.set_attrs("", {"probing": meta})
    else:
        if not is_url(path):
            from pathlib import Path

            p = Path(path)
            if p.exists() and (not p.is_dir() or any(p.iterdir())):
                raise ConfigError(f"{path} exists and is not a probing run; choose another run_id or folder.")
        store = storage.open_store(path, "w")
        meta.update(run_id=run_id, completed=False, attempts=0, created=meta.get("created", utc_now(precise=True)),
                    world_size=world_size)
        if layout is not None:
            meta["layout"] = layout.to_dict()
        store.set_attrs(PARTS, {})
        # first: from here on the folder is an incomplete run, so a stop while the arrays are created is
        # finished by a resume (which creates the missing ones), never a folder no command will touch
        store.set_attrs("", {"probing": meta})
        if layout is not None:
            create_arrays(store, layout, storage.dtype, storage.compress)
    return RunWriter(storage, store, run_id, path, meta, rank=0, world_size=world_size, share=share,
                     row_starts=row_starts, token_counts=token_counts)


def join_run(
    storage: Storage,
    run_id: str,
    path: str,
    *,
    rank: int,
    world_size: int,
    share: Ranges | None,
    row_starts: np.ndarray | None,
    token_counts: np.ndarray | None,
) -> RunWriter:
    """A rank other than 0 joins the run rank 0 opened."""
    store = storage.open_store(path, "r+")
    meta = dict(store.get_attrs("")["probing"])
    return RunWriter(storage, store, run_id, path, meta, rank=rank, world_size=world_size, share=share,
                     row_starts=row_starts, token_counts=token_counts)


# -- the writer --------------------------------------------------------------------------------------
def check_batch(activations: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> np.ndarray:
    """Validate one appended batch; return its example ids as int64."""
    if "example_ids" not in metadata:
        raise ConfigError("RunWriter.append needs metadata['example_ids'] (the dataset index of each row).")
    ids = np.asarray(metadata["example_ids"], dtype=np.int64).reshape(-1)
    row_counts = metadata.get("row_counts")
    rows = len(ids) if row_counts is None else int(np.sum(row_counts))
    if row_counts is not None and len(row_counts) != len(ids):
        raise ConfigError(f"row_counts has {len(row_counts)} entries for {len(ids)} examples.")
    for key, value in activations.items():
        if value.ndim < 2 or value.shape[0] != rows:
            raise ConfigError(f"Activations of {key!r} have shape {value.shape}; expected ({rows}, dim).")
    return ids


class RunWriter:
    """Writes one rank's share of a run. Obtained from `Storage.open_run`.

    ``share`` is the set of example ids this rank writes (None: any id, for one writer or a stream cut
    into unit-aligned blocks). A token-level share is planned before compute: ``row_starts`` holds the
    first row of each of its examples and the end of the last, ``token_counts`` their token counts.
    """

    def __init__(
        self,
        storage: Storage,
        store: ArrayStore,
        run_id: str,
        path: str,
        meta: dict[str, Any],
        *,
        rank: int,
        world_size: int,
        share: Ranges | None,
        row_starts: np.ndarray | None,
        token_counts: np.ndarray | None = None,
    ) -> None:
        self.storage = storage
        self.store = store
        self.run_id = run_id
        self.path = path
        self.meta = meta
        self.rank = rank
        self.world_size = world_size
        self.share = share
        self.attempt = int(meta.get("attempts", 0))
        self.part = part_name(self.attempt, rank)
        self.part_group = f"{PARTS}/{self.part}"
        self.rows_written = 0  # examples marked done by this writer
        self._row_starts = None if row_starts is None else np.asarray(row_starts, dtype=np.int64)
        self._token_counts = None if token_counts is None else np.asarray(token_counts, dtype=np.int32)
        self._progress: dict[str, Any] = {}
        self._finished = False
        self._closed = False
        self.done = Ranges()  # done by this writer (this attempt)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # ids, first rows, row counts
        self._pending_ids = np.zeros(0, dtype=np.int64)
        # non-finite values per layer: [values, values that overflowed the storage dtype, examples, first ids]
        self.nonfinite: dict[str, list[Any]] = {}
        self._pending_bad: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = []  # layer, ids, bad, overflowed
        self.before = done_ranges(part_states(store))[0] if self.attempt else Ranges()  # done by earlier attempts
        self.layout: RunLayout | None = None
        self._tables: dict[str, UnitBuffer] = {}
        self._place: dict[str, Any] = {}
        self.lease: Lease | None = None  # rank 0's hold on the run (every rank works under it)
        if "layout" in meta:
            self._open_tables(RunLayout.from_dict(meta["layout"]))
        self._commit()

    # -- tables ----------------------------------------------------------------------------------
    def _rows_of(self, ids: Ranges) -> Ranges:
        """The rows of a set of this share's examples."""
        if self.layout is None or not self.layout.ragged:
            return ids
        if self._row_starts is None or self.share is None:
            raise ConfigError("A token-level run needs each example's first row (row_starts) to place its rows.")
        lo = self.share.min()
        idx = ids.values() - lo
        starts = self._row_starts[idx]
        stops = self._row_starts[idx + 1]
        return Ranges(starts, stops)

    def _open_tables(self, layout: RunLayout) -> None:
        self.layout = layout
        dtype = self.storage.dtype
        share = self.share
        planned = self._row_starts is not None and len(self._row_starts) == (0 if share is None else len(share)) + 1
        if layout.ragged and share is not None and not planned:
            raise ConfigError("A token-level share needs row_starts: one first row per example, and the end.")
        rows_owned = share
        if share is not None and layout.ragged:
            assert self._row_starts is not None
            rows_owned = Ranges.span(int(self._row_starts[0]), int(self._row_starts[-1]))
        before = self.before if share is None else self.before & share
        seams = f"{self.part_group}/seams"
        rows: dict[str, ColumnSpec] = {
            layer_path(k): ColumnSpec(layer_path(k), tuple(s), dtype) for k, s in layout.layers.items()
        }
        rows.update({f"{ROWS}/{n}": ColumnSpec(f"{ROWS}/{n}", (), np.dtype(d)) for n, d in layout.row_fields.items()})
        rows.update(_column_specs(ROWS, layout.row_columns))
        examples = _column_specs(EXAMPLES, layout.example_columns)
        if not layout.ragged:  # examples are rows: one table, one write unit
            rows[TOKEN_COUNTS] = ColumnSpec(TOKEN_COUNTS, (), np.dtype(np.int32))
            rows.update(examples)
        self._tables["rows"] = UnitBuffer(
            self.store, rows, layout.write_rows, owned=rows_owned, end=layout.rows, seam_group=f"{seams}/rows",
            durable=self._rows_of(before) if share is not None or not layout.ragged else Ranges(),
        )
        if layout.ragged and examples:
            self._tables["examples"] = UnitBuffer(self.store, examples, layout.example_chunk, owned=share,
                                                  end=layout.n_examples, seam_group=f"{seams}/examples",
                                                  durable=before)
        if layout.ragged and share is not None:
            self._write_plan(layout, share)

    def _write_plan(self, layout: RunLayout, share: Ranges) -> None:
        """A token-level share's per-example counts, known before compute: written now, once per attempt,
        beside the part (where a partial run is read from) and into the run's arrays."""
        assert self._row_starts is not None
        rows = np.diff(self._row_starts)
        tokens = self._token_counts if self._token_counts is not None else np.zeros(len(rows), np.int32)
        if len(tokens) != len(rows):
            raise ConfigError(f"token_counts has {len(tokens)} entries for a share of {len(rows)} examples.")
        for name, values in (("row_counts", rows), ("token_counts", tokens)):
            path = f"{self.part_group}/{name}"
            self.store.create(path, len(values), (), values.dtype, max(1, min(len(values), 65536)))
            self.store.write(path, 0, values)
        self._place = {"share": [share.min(), share.max_stop()], "row_start": int(self._row_starts[0])}
        specs = {
            TOKEN_COUNTS: ColumnSpec(TOKEN_COUNTS, (), np.dtype(np.int32)),
            ROW_COUNTS: ColumnSpec(ROW_COUNTS, (), np.dtype(np.int64)),
        }
        plan = UnitBuffer(self.store, specs, layout.example_chunk, owned=share, end=layout.n_examples,
                          seam_group=f"{self.part_group}/seams/plan")
        plan.put(share.values(), {TOKEN_COUNTS: tokens, ROW_COUNTS: rows})
        plan.flush()

    def write_vocabulary(self, strings: Sequence[str | None]) -> None:
        """The tokenizer's vocabulary (string of each token id), stored as `VOCAB` by each attempt (a
        stop while it was written is repaired by the next)."""
        values = np.asarray(["" if t is None else str(t) for t in strings], dtype=object)
        self.store.create(VOCAB, len(values), (), STR, max(1, min(len(values), 65536)))
        self.store.write(VOCAB, 0, values)

    def _lazy_layout(self, activations: Mapping[str, np.ndarray], ragged: bool) -> None:
        """The seed API: the first batch gives the layers' shapes; one writer, pooled rows."""
        if ragged:
            raise ConfigError(
                "A token-level run (row_counts) needs its layout up front: pass layout=storage.layout(n, layers, "
                "ragged=True, total_rows=...) and share/row_starts to open_run."
            )
        if self.world_size > 1:
            raise ConfigError("Several writers need a layout up front (open_run(..., layout=...)).")
        n = self.meta.get("dataset", {}).get("n_examples")
        keys = list(self.meta.get("layers") or activations)
        missing = [k for k in keys if k not in activations]
        if missing:
            raise ConfigError(f"The first batch has no activations for layers {missing}.")
        layers = {k: tuple(activations[k].shape[1:]) for k in [*keys, *[k for k in activations if k not in keys]]}
        layout = make_layout(None if n is None else int(n), layers, itemsize=self.storage.dtype.itemsize,
                             chunk_rows=self.storage.chunk_rows, shard_chunks=self.storage.shard_chunks)
        create_arrays(self.store, layout, self.storage.dtype, self.storage.compress)
        self.meta["layout"] = layout.to_dict()
        self.meta.setdefault("layers", list(layers))
        self.store.set_attrs("", {"probing": self.meta})
        self._open_tables(layout)

    # -- compute path ----------------------------------------------------------------------------
    def append(self, batch_id: int, activations: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
        """Add a batch: ``activations[layer]`` is ``[rows, dim]``; ``metadata['example_ids']`` (the dataset
        index of each example) is required, ``token_counts``, ``row_counts`` (token-level: rows per
        example, in order) and ``row_fields`` (per-row arrays) optional."""
        ids = check_batch(activations, metadata)
        if len(ids) == 0:
            return
        row_counts = metadata.get("row_counts")
        if self.layout is None:
            self._lazy_layout(activations, row_counts is not None)
        layout = self.layout
        assert layout is not None
        self._check_ids(ids)
        unknown = sorted(set(activations) - set(layout.layers))
        if unknown:
            raise ConfigError(f"Activations for layers {unknown} that the run does not have ({list(layout.layers)}).")
        counts = np.asarray(metadata.get("token_counts", np.zeros(len(ids))), dtype=np.int32).reshape(-1)
        if layout.ragged:
            if row_counts is None:
                raise ConfigError("A token-level run needs metadata['row_counts'] (rows per example).")
            lengths = np.asarray(row_counts, dtype=np.int64).reshape(-1)
            starts = self._first_rows(ids)
            planned = self._first_rows(ids + 1) - starts
            if not np.array_equal(planned, lengths):
                bad = int(np.flatnonzero(planned != lengths)[0])
                raise RuntimeError(
                    f"Example {ids[bad]} came with {lengths[bad]} rows, its planned layout has {planned[bad]} (a bug)."
                )
            rows = ragged_index(starts, lengths)
        else:
            starts, lengths, rows = ids, np.ones(len(ids), dtype=np.int64), ids
        with np.errstate(over="ignore", invalid="ignore"):  # overflows are counted and reported below
            data = {layer_path(k): np.asarray(v, dtype=self.storage.dtype) for k, v in activations.items()}
        self._count_nonfinite(ids, lengths, activations, data)
        for name, value in (metadata.get("row_fields") or {}).items():
            if name in layout.row_fields:
                data[f"{ROWS}/{name}"] = np.asarray(value, dtype=layout.row_fields[name])
        data.update(_encode_columns(ROWS, layout.row_columns, metadata.get("row_columns"), len(rows)))
        per_example = _encode_columns(EXAMPLES, layout.example_columns, metadata.get("columns"), len(ids))
        wrote = False
        if layout.ragged:  # token-level runs have their token counts from the plan
            if "examples" in self._tables:
                wrote |= self._tables["examples"].put(ids, per_example)
        else:
            data[TOKEN_COUNTS] = counts
            data.update(per_example)
        wrote |= self._tables["rows"].put(rows, data)
        self._pending.append((ids, starts, lengths))
        self._pending_ids = np.concatenate([self._pending_ids, ids])
        if wrote:
            self._mark_done()

    def _count_nonfinite(self, ids: np.ndarray, lengths: np.ndarray, source: Mapping[str, np.ndarray],
                         stored: Mapping[str, np.ndarray]) -> None:
        """Count NaN/inf per layer and example in what is stored (after the cast to the storage dtype: a
        float16 overflow is an inf), and how many were finite before the cast. Counted once the example is
        durable (`_mark_done`), so a resume that recomputes an example does not count it twice."""
        for key, src in source.items():
            out = stored[layer_path(key)]
            finite = np.isfinite(out)
            if finite.all():
                continue
            flat = finite.reshape(len(out), -1)
            bad_rows = (~flat).sum(axis=1)
            over_rows = (np.isfinite(np.asarray(src)).reshape(len(out), -1) & ~flat).sum(axis=1)
            ends = np.cumsum(lengths)
            bad_sum = np.concatenate([[0], np.cumsum(bad_rows)])
            over_sum = np.concatenate([[0], np.cumsum(over_rows)])
            per_example = bad_sum[ends] - bad_sum[ends - lengths]
            over_example = over_sum[ends] - over_sum[ends - lengths]
            hit = per_example > 0
            self._pending_bad.append((key, ids[hit], per_example[hit], over_example[hit]))

    def _first_rows(self, ids: np.ndarray) -> np.ndarray:
        assert self._row_starts is not None and self.share is not None
        return self._row_starts[ids - self.share.min()]

    def _check_ids(self, ids: np.ndarray) -> None:
        n = self.layout.n_examples if self.layout is not None else None
        if ids.min() < 0 or (n is not None and ids.max() >= n):
            raise ConfigError(f"Example ids {ids.min()}..{ids.max()} are outside the run's 0..{(n or 0) - 1}.")
        if self.share is not None and not self.share.contains(ids).all():
            bad = ids[~self.share.contains(ids)][:5].tolist()
            raise ConfigError(f"Example ids {bad} are not in this writer's share {self.share} (a bug).")
        again = ids[self.before.contains(ids) | self.done.contains(ids) | np.isin(ids, self._pending_ids)]
        if len(again) or len(np.unique(ids)) < len(ids):
            shown = again[:5].tolist() if len(again) else ids[np.flatnonzero(np.diff(np.sort(ids)) == 0)][:5].tolist()
            raise ConfigError(f"Example ids {shown} are already stored (or twice in one batch).")

    def _mark_done(self) -> None:
        """Record as done the pending examples whose rows (and per-example values) are all on disk."""
        if not self._pending:
            return
        ids, starts, lengths = (np.concatenate(x) for x in zip(*self._pending, strict=True))
        ok = self._tables["rows"].durable.covers_each(starts, starts + lengths)
        if "examples" in self._tables:
            ok &= self._tables["examples"].durable.contains(ids)
        if not ok.any():
            return
        newly = Ranges.of(ids[ok])
        self.done = self.done | newly
        self.rows_written += int(ok.sum())
        self._settle_nonfinite(newly)
        fault_point("before_record")  # the rows are on disk, their examples not yet recorded as done
        keep = ~ok
        self._pending = [(ids[keep], starts[keep], lengths[keep])] if keep.any() else []
        self._pending_ids = ids[keep]
        self._commit()
        fault_point("after_flush")

    def _settle_nonfinite(self, newly: Ranges) -> None:
        keep = []
        for key, ids, bad, over in self._pending_bad:
            now = newly.contains(ids)
            if now.any():
                rec = self.nonfinite.setdefault(key, [0, 0, 0, []])
                rec[0] += int(bad[now].sum())
                rec[1] += int(over[now].sum())
                rec[2] += int(now.sum())
                rec[3] = sorted([*rec[3], *ids[now][:10].tolist()])[:10]
            if not now.all():
                keep.append((key, ids[~now], bad[~now], over[~now]))
        self._pending_bad = keep

    # -- progress --------------------------------------------------------------------------------
    def _commit(self) -> None:
        if self.lease is not None:
            self.lease.check()
        state = {"done": self.done.to_list(), "progress": self._progress, "finished": self._finished, **self._place}
        if self.nonfinite:
            state["nonfinite"] = self.nonfinite
        self.store.set_attrs(self.part_group, state)

    def record_progress(self, progress: Mapping[str, Any]) -> None:
        """Store this rank's progress and timings beside its part (read by ``info`` and finalize)."""
        self._progress = {**progress, "rows_stored": self.rows_written, "updated": utc_now()}
        self._commit()

    def close(self, *, finished: bool = False) -> None:
        """Write everything held in memory (units as far as they are filled). Safe to call twice.

        ``finished``: this rank wrote its whole share (compute and metadata), which finalize checks.
        A writer whose lease was taken over writes nothing more (the new holder owns the arrays).
        """
        if self.lease is not None and self.lease.lost:
            self._closed = True
            return
        for table in self._tables.values():
            table.flush()
        self._mark_done()
        self._finished = self._finished or finished
        self._commit()
        self._closed = True

    def done_ranges(self) -> Ranges:
        """Ids of the examples stored by any rank and attempt (what a resume skips)."""
        return done_ranges(part_states(self.store))[0]

    def done_ids(self) -> np.ndarray:
        """`done_ranges` as a sorted id array."""
        return self.done_ranges().values()

    # -- finalize ----------------------------------------------------------------------------------
    def finalize(
        self,
        example_metadata: Mapping[str, Sequence[Any]] | None = None,
        *,
        stats: Mapping[str, Any] | None = None,
        n_examples: int | None = None,
        on_nonfinite: str = "error",
    ) -> dict[str, Any]:
        """Check that every example is stored exactly once, put the seams in place, mark the run completed.

        Call once, from rank 0, after every rank has closed. ``example_metadata`` (the seed API) adds
        per-example columns given whole; ``n_examples`` is the count of a streamed dataset. Raises
        `RunIncompleteError` if any example is missing. ``on_nonfinite``: what NaN/inf activations (and
        values beyond float16's range, stored as inf) get: ``error`` (`NonFiniteError`, the run stays
        incomplete and a resume with another choice finishes it), ``warn`` (a warning; stored), ``ignore``.
        Returns the final run metadata.
        """
        if on_nonfinite not in NONFINITE_CHOICES:
            raise ConfigError(f"on_nonfinite={on_nonfinite!r}: expected one of {NONFINITE_CHOICES}.")
        t0 = time.perf_counter()
        if not self._closed:
            self.close(finished=True)
        meta = dict(self.store.get_attrs("")["probing"])
        states = part_states(self.store)
        done, twice = done_ranges(states)
        if twice:
            raise RunIncompleteError(f"Run {self.path}: {twice} example ids are stored by two parts (a bug).")
        layout = RunLayout.from_dict(meta["layout"]) if "layout" in meta else None
        n = layout.n_examples if layout is not None and layout.n_examples is not None else n_examples
        if n is None:
            n = int(meta.get("dataset", {}).get("n_examples") or done.max_stop())
        missing = Ranges.span(0, n) - done
        if missing or (done and done.max_stop() > n):
            first = missing.values()[:10].tolist() if missing else []
            raise RunIncompleteError(
                f"Run {self.path}: {len(missing)} of {n} examples are not stored (first: {first}); the run stays "
                "incomplete. Run again with resume=true to compute them."
            )
        current = [part_name(self.attempt, r) for r in range(self.world_size)]
        unfinished = [p for p in current if p in states and not states[p].get("finished")]
        if unfinished:
            raise RunIncompleteError(f"Run {self.path}: parts {unfinished} did not finish writing; resume the run.")
        nonfinite = sum_nonfinite(states)
        if nonfinite and on_nonfinite != "ignore":
            message = describe_nonfinite(nonfinite, self.storage.dtype)
            if on_nonfinite == "error":
                self.release()
                raise NonFiniteError(
                    f"Run {self.path}: {message}. The run stays incomplete. Check the model and its dtype (float16 "
                    "weights overflow easily; storage.dtype=float32 holds any float32 value), or keep the values "
                    "with resume=true on_nonfinite=warn (nothing is computed again)."
                )
            log.warning("run %s: %s (kept: on_nonfinite=warn)", self.path, message)
        stitch_seams(self.store, PARTS, sorted(states))
        if layout is None:  # the seed API with no batch at all
            hidden = int(meta.get("hidden_size") or 0)
            layers: dict[str, tuple[int, ...]] = {str(k): (hidden,) for k in meta.get("layers", [])}
            layout = make_layout(n, layers, itemsize=self.storage.dtype.itemsize, chunk_rows=self.storage.chunk_rows)
            create_arrays(self.store, layout, self.storage.dtype, self.storage.compress)
        if layout.n_examples is None:  # arrays of a stream, or of the seed API: their length is known now
            layout.n_examples = n
            for path in self._all_arrays():
                self.store.set_rows(path, n)
        fields = ["token_counts", *(["row_counts"] if layout.ragged else [])]
        row_fields = [*layout.row_fields, *layout.row_columns]
        for name, values in (example_metadata or {}).items():
            kind = self._write_whole_column(layout, name, values, n)
            (row_fields if kind == ROWS else fields).append(name)
        fields += [f for f in layout.example_columns if f not in fields]
        if self.store.exists(VOCAB) and "token_id" in layout.row_fields:
            row_fields.append("token")  # read through the vocabulary
        progress = {p: s.get("progress") for p, s in states.items()}
        meta.update(
            layout=layout.to_dict(),
            layers=list(meta.get("layers") or layout.layers),
            example_fields=fields,
            row_fields=list(dict.fromkeys(row_fields)),
            completed=True,
            finished=utc_now(),
            mode=meta.get("mode", "tokens" if layout.ragged else "pooled"),
            total_rows=int(layout.rows or 0),
            nonfinite=nonfinite,
        )
        meta.setdefault("dataset", {})["n_examples"] = n
        total = total_progress(progress)
        # what is stored, from the done ranges (a killed attempt's last progress record may lag its rows)
        total["computed_examples"], total["examples"] = total["examples"], len(done)
        meta["stats"] = {
            "total": total, **(stats or {}), "parts": progress,
            "finalize_seconds": round(time.perf_counter() - t0, 3),
        }
        fault_point("finalize")
        self.store.set_attrs("", {"probing": meta})  # the completed flag goes last...
        self.store.delete(PARTS)  # ...then the parts are only clean-up
        self.store.set_attrs(PARTS, {})
        self.store.close()
        self.release()
        return meta

    def release(self) -> None:
        """Give back the run's lease (rank 0): another job may write the run from now on."""
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def _all_arrays(self, group: str = "") -> list[str]:
        out = []
        for name in self.store.arrays(group):
            out.append(f"{group}/{name}" if group else name)
        for sub in self.store.groups(group):
            path = f"{group}/{sub}" if group else sub
            if path != PARTS:
                out.extend(self._all_arrays(path))
        return out

    def _write_whole_column(self, layout: RunLayout, name: str, values: Sequence[Any], n: int) -> str:
        """A per-example column given whole (the seed API): per-row when it holds one list per example with
        at least that example's rows (word-level labels), else per-example."""
        if len(values) != n:
            raise ConfigError(f"Metadata field {name!r} has {len(values)} values for {n} examples.")
        group, data = EXAMPLES, list(values)
        if layout.ragged and n and all(isinstance(v, (list, tuple)) for v in values):
            counts = self.store.read(ROW_COUNTS)
            if all(len(v) >= k for v, k in zip(values, counts, strict=True)):
                group = ROWS
                data = [x for v, k in zip(values, counts, strict=True) for x in list(v)[: int(k)]]
        col = infer_column(data)
        count = len(data)
        chunk = max(1, min(count, layout.example_chunk))
        self.store.create(f"{group}/{name}", count, (), storage_dtype(col), chunk)
        stored, missing = encode(data, col)
        self.store.write(f"{group}/{name}", 0, stored)
        if col.nullable:
            self.store.create(f"{group}/{name}{MISSING_SUFFIX}", count, (), np.bool_, chunk)
            mask = missing if missing is not None else np.zeros(count, bool)
            self.store.write(f"{group}/{name}{MISSING_SUFFIX}", 0, mask)
        target = layout.row_columns if group == ROWS else layout.example_columns
        target[name] = col
        return group

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
        finally:
            self.release()


NONFINITE_CHOICES = ("error", "warn", "ignore")


def sum_nonfinite(states: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Non-finite counts per layer over every part (parts hold disjoint examples: the sums are exact)."""
    out: dict[str, dict[str, Any]] = {}
    for state in states.values():
        for key, (values, overflow, examples, first) in (state.get("nonfinite") or {}).items():
            rec = out.setdefault(key, {"values": 0, "overflow": 0, "examples": 0, "first_ids": []})
            rec["values"] += int(values)
            rec["overflow"] += int(overflow)
            rec["examples"] += int(examples)
            rec["first_ids"] = sorted([*rec["first_ids"], *first])[:10]
    return out


def describe_nonfinite(nonfinite: Mapping[str, Mapping[str, Any]], dtype: np.dtype[Any]) -> str:
    """``layer 3: 12,800 NaN/inf values in 100 examples (first ids [0, 1, 2])``, per layer."""
    parts = []
    for key, rec in nonfinite.items():
        over = rec["overflow"]
        why = (f", {over:,} of them finite values beyond {dtype}'s range (±{float(np.finfo(dtype).max):.0f})"
               if over else "")
        parts.append(f"layer {key}: {rec['values']:,} NaN/inf values{why} in {rec['examples']:,} examples "
                     f"(first ids {rec['first_ids']})")
    return "; ".join(parts)


def _buffer_dtype(col: Column) -> Any:
    dt = storage_dtype(col)
    return np.dtype(object) if isinstance(dt, str) else np.dtype(dt)


def _column_specs(group: str, columns: Mapping[str, Column]) -> dict[str, ColumnSpec]:
    """The arrays of metadata columns: values, and the missing-value mask of nullable ones."""
    specs: dict[str, ColumnSpec] = {}
    for name, col in columns.items():
        specs[f"{group}/{name}"] = ColumnSpec(f"{group}/{name}", (), _buffer_dtype(col))
        if col.nullable:
            specs[f"{group}/{name}{MISSING_SUFFIX}"] = ColumnSpec(f"{group}/{name}{MISSING_SUFFIX}", (), np.dtype(bool))
    return specs


def _encode_columns(
    group: str, columns: Mapping[str, Column], values: Mapping[str, Any] | None, count: int
) -> dict[str, np.ndarray]:
    """One batch's values of the layout's metadata columns, encoded as they are stored."""
    if not columns:
        return {}
    values = values or {}
    missing = [name for name in columns if name not in values]
    if missing:
        raise ConfigError(f"The batch has no values for the run's {group} fields {missing}.")
    out: dict[str, np.ndarray] = {}
    for name, col in columns.items():
        if len(values[name]) != count:
            raise ConfigError(f"Field {name!r} has {len(values[name])} values for {count} {group} of the batch.")
        data, mask = encode(values[name], col)
        out[f"{group}/{name}"] = data
        if col.nullable:
            out[f"{group}/{name}{MISSING_SUFFIX}"] = mask if mask is not None else np.zeros(count, dtype=bool)
    return out
