"""`RunWriterCallback`: a `BasePredictionWriter` that streams every batch of its rank into the run.

``setup`` (every rank, before any batch): agree on the run id (rank 0's, broadcast), place the
rank's share (a token-level run gathers every rank's row count to place its rows), let rank 0 create
or resume the run while the others wait, then join it and learn which examples are already stored.
Each batch is handed to a background thread that writes it (the forward pass never waits for the
disk unless the bounded queue is full). After ``predict`` the runner calls `finish`: every rank
writes what it holds, and once all have, rank 0 finalizes (the seams, the ``completed`` flag last).
On an exception or a preemption signal the rank writes what it has and records its progress, so that
a resume keeps it.
"""

from __future__ import annotations

import logging
import queue
import resource
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from probing.data.batching import window_examples
from probing.data.datamodule import ExtractionDataModule
from probing.data.sources import TextStream
from probing.engine import collectives
from probing.engine.preemption import PreemptionHandler
from probing.errors import ConfigError, ProbingError
from probing.faults import fault_point
from probing.storage.base import Storage
from probing.storage.layout import Column, RunLayout
from probing.storage.ranges import Ranges
from probing.storage.writer import RunWriter

log = logging.getLogger(__name__)

#: most bytes of activations a rank holds while their write units fill (about one bucketing window)
WINDOW_BYTES = 256 * 2**20


class RunWriterCallback(BasePredictionWriter):
    """Streams predictions into ``storage`` under ``run_id``.

    Args:
        storage: where the run goes.
        run_id: the run's id; rank 0's is used on every rank.
        metadata: a function giving the run metadata, called on rank 0 only (it fingerprints the data).
        layers: the row shape of each layer's activations.
        row_fields: per-row values the strategy produces (``token_id``...) -> dtype.
        example_columns / row_columns: how the dataset's metadata fields are stored.
        resume: continue an incomplete run, skipping stored examples.
        preemption: checked after every batch; a received signal stops the run cleanly.
    """

    def __init__(
        self,
        storage: Storage,
        run_id: str,
        metadata: Callable[[], dict[str, Any]],
        *,
        layers: Mapping[str, tuple[int, ...]],
        row_fields: Mapping[str, str] | None = None,
        example_columns: Mapping[str, Column] | None = None,
        row_columns: Mapping[str, Column] | None = None,
        resume: bool = False,
        preemption: PreemptionHandler | None = None,
    ) -> None:
        super().__init__(write_interval="batch")
        self.storage = storage
        self.run_id = run_id
        self.metadata = metadata
        self.layers = dict(layers)
        self.row_fields = dict(row_fields or {})
        self.example_columns = dict(example_columns or {})
        self.row_columns = dict(row_columns or {})
        self.resume = resume
        self.preemption = preemption
        self.writer: RunWriter | None = None
        self.layout: RunLayout | None = None
        self.examples = 0
        self.real_tokens = 0
        self.padded_tokens = 0
        self.tokenized = 0
        self.skipped = 0
        self.planned: int | None = None
        self._seen = 0
        self._t0 = 0.0
        self._first_batch_unix: float | None = None
        self._written_rows = 0
        self.path: str = storage.run_path(run_id)
        # storage writes run on a background thread, off the forward pass's critical path; the bounded
        # queue keeps at most a few batches in memory and makes the forward wait if storage is slower
        self._queue: queue.Queue[tuple[int, dict[str, np.ndarray], dict[str, Any]] | None] = queue.Queue(maxsize=4)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # -- set-up -------------------------------------------------------------------------------
    def _plan(self, dm: ExtractionDataModule) -> tuple[RunLayout, Ranges | None, np.ndarray | None, np.ndarray | None]:
        """The run's layout and this rank's share, row starts and token counts (collective on token-level runs)."""
        streaming = isinstance(dm.dataset, TextStream)
        n = None if streaming else len(dm.dataset)  # type: ignore[arg-type]
        share = None if dm.share is None else Ranges.span(*dm.share)
        row_starts = total_rows = None
        if dm.row_counts is not None:
            counts = dm.row_counts
            totals = collectives.all_gather(int(counts.sum()))
            first = sum(totals[: dm.rank])
            row_starts = first + np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            total_rows = int(sum(totals))
        layout = self.storage.layout(
            n, self.layers, ragged=dm.token_level is not None, total_rows=total_rows, row_fields=self.row_fields,
            example_columns=self.example_columns, row_columns=self.row_columns,
        )
        return layout, share, row_starts, dm.token_counts

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        rank, world = trainer.global_rank, trainer.world_size
        self.run_id = collectives.broadcast(self.run_id)
        self.path = self.storage.run_path(self.run_id)
        dm = trainer.datamodule  # type: ignore[attr-defined]
        assert isinstance(dm, ExtractionDataModule)
        layout, share, row_starts, token_counts = self._plan(dm)
        opened: BaseException | None = None
        if rank == 0:
            try:
                self.writer = self.storage.open_run(
                    self.run_id, metadata=self.metadata(), rank=0, world_size=world, resume=self.resume,
                    layout=layout, share=share, row_starts=row_starts, token_counts=token_counts,
                )
            except ProbingError as exc:  # every rank raises it, instead of waiting for rank 0
                opened = exc
        opened = collectives.broadcast(opened)  # also the barrier: the run exists from here on
        if opened is not None:
            raise opened
        if rank != 0:
            self.writer = self.storage.open_run(self.run_id, rank=rank, world_size=world, share=share,
                                                row_starts=row_starts, token_counts=token_counts)
        assert self.writer is not None
        self.path = self.writer.path
        self.layout = self.writer.layout or layout
        done = self.writer.before
        dm.done = done if share is None else done & share
        self.skipped = len(dm.done)
        row_bytes = sum(int(np.prod(s)) for s in layout.layers.values()) * self.storage.dtype.itemsize
        mean_rows = (layout.rows or 0) / max(1, layout.n_examples or 1) if layout.ragged else 1.0
        dm.window = window_examples(dm.batch_size, row_bytes * mean_rows, WINDOW_BYTES)
        unit = layout.write_rows
        dm.stream = dm.batch_stream(block=-(-dm.window // unit) * unit)  # a stream's blocks are whole units
        self.planned = dm.stream.examples
        self._record("running")
        if self.preemption is not None:
            self.preemption.children = trainer.strategy.launcher

    # -- per batch ----------------------------------------------------------------------------
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._write_loop, name="probing-writer", daemon=True)
        self._thread.start()

    def _write_loop(self) -> None:
        assert self.writer is not None
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain without writing after a failure; the error surfaces on the main thread
            try:
                self.writer.append(*item)
                if self.writer.rows_written != self._written_rows:  # examples became durable: say so
                    self._written_rows = self.writer.rows_written
                    self._record("running")
            except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread
                self._error = exc

    def _drain(self) -> None:
        """Wait until every queued batch is written; re-raise a write error here."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def on_predict_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if batch_idx == 0:
            self._first_batch_unix = time.time()
            fault_point("before_first_batch")
        if self.preemption is not None:
            self.preemption.check()

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        assert self.writer is not None
        ids = prediction["example_ids"].cpu().numpy()
        counts = prediction["token_counts"].cpu().numpy()
        acts = {k: v.detach().float().cpu().numpy() for k, v in prediction["activations"].items()}
        meta: dict[str, Any] = {"example_ids": ids, "token_counts": counts, "columns": _carried(batch, "columns")}
        if prediction.get("row_counts") is not None:
            meta["row_counts"] = prediction["row_counts"].cpu().numpy()
            meta["row_fields"] = {k: v.cpu().numpy() for k, v in prediction["row_fields"].items()}
            meta["row_columns"] = _carried(batch, "row_columns")
        if self._error is not None:
            self._drain()
        if self._thread is not None:
            self._queue.put((batch_idx, acts, meta))
        else:
            self.writer.append(batch_idx, acts, meta)
        self.examples += len(ids)
        self.real_tokens += int(counts.sum())
        self.padded_tokens += int(prediction["padded_tokens"])
        self.tokenized += int(batch.get("n_tokenized", 0))
        self._seen = max(self._seen, int(batch.get("n_seen", 0)))

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        if self.preemption is not None:
            self.preemption.check()

    # -- progress -----------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """This rank's figures for this attempt."""
        seconds = max(time.perf_counter() - self._t0, 1e-9) if self._t0 else 0.0
        return {
            "examples": self.examples,
            "planned": self.planned,
            "skipped_as_done": self.skipped,
            "tokenized": self.tokenized,
            "seconds": round(seconds, 3),
            "examples_per_s": round(self.examples / seconds, 1) if seconds else 0.0,
            "real_tokens_per_s": round(self.real_tokens / seconds, 1) if seconds else 0.0,
            "real_tokens": self.real_tokens,
            "padded_tokens": self.padded_tokens,
            "padding_fraction": round(1 - self.real_tokens / self.padded_tokens, 4) if self.padded_tokens else 0.0,
            "first_batch_unix": self._first_batch_unix,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }

    def _record(self, status: str) -> None:
        if self.writer is not None:
            self.writer.record_progress({"status": status, **self.stats()})

    # -- end ----------------------------------------------------------------------------------
    def finish(self, trainer: pl.Trainer) -> dict[str, Any]:
        """After ``predict`` returned on every rank: write what is held, wait for all ranks, rank 0 finalizes.

        Not a predict hook: Lightning skips the predict hooks on a rank with no batches (N < world
        size, or a resume with nothing left), and every rank must reach the collectives. Returns the
        run-wide figures on rank 0 (this rank's own elsewhere).
        """
        assert self.writer is not None
        self._drain()
        self.writer.close(finished=True)
        self._record("done")
        seen = collectives.all_gather(self._seen)  # also the barrier: every rank wrote its share
        if trainer.global_rank == 0:
            n = None
            if self.layout is not None and self.layout.n_examples is None:  # a stream ends where it was read to
                n = max(max(seen), self.writer.done_ranges().max_stop())
            meta = self.writer.finalize(stats={"world_size": trainer.world_size}, n_examples=n)
            total: dict[str, Any] = {**meta["stats"]["total"], "finalize_seconds": meta["stats"]["finalize_seconds"]}
        else:
            total = self.stats()
        collectives.broadcast(None)  # the run is completed for every rank
        return total

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.writer is not None:
            try:
                self._drain()
                self.writer.close()  # keep every whole row computed so far, for resume
                self._record(f"stopped: {type(exception).__name__}")
            except Exception:  # noqa: BLE001 - do not mask the original error
                log.exception("could not write the run's rows after an error")


def _carried(batch: Any, key: str) -> dict[str, list[Any]] | None:
    value = batch.get(key)
    return value.values if value is not None else None


def check_writers(storage: Storage, world: int) -> None:
    """Refuse a storage that takes one writer for a run of several processes (before compute)."""
    if world > 1 and not storage.supports_concurrent_writers:
        raise ConfigError(
            f"{type(storage).__name__} takes one writer at a time and this run has {world} processes; "
            "use the zarr storage (storage=zarr) for multi-process runs."
        )
