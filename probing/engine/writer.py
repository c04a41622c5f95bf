"""`RunWriterCallback`: a `BasePredictionWriter` that streams every batch of this rank to storage.

Rank 0 creates (or, with resume, reopens and checks) the run; after a barrier every rank opens its
own part, and on resume learns which examples are already stored. Each batch is appended as it
arrives (nothing accumulates in memory). After ``predict`` the runner calls `finish`: every rank
flushes, and after a barrier rank 0 finalizes (rows in dataset order, per-example metadata, the
``completed`` flag last). On an exception or a preemption signal the rank flushes what it has and
records its progress, so that a resume keeps it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from probing.engine.preemption import PreemptionHandler
from probing.errors import ConfigError
from probing.faults import fault_point
from probing.storage.base import RunWriter, Storage

log = logging.getLogger(__name__)


class RunWriterCallback(BasePredictionWriter):
    """Streams predictions into ``storage`` under ``run_id``.

    Args:
        storage: where the run goes.
        run_id: the run's id (the same on every rank).
        metadata: run metadata, stored by rank 0.
        example_metadata: a function returning per-example columns (text, labels), called by
            rank 0 at finalize only.
        resume: continue an incomplete run, skipping stored examples.
        preemption: checked after every batch; a received signal stops the run cleanly.
    """

    def __init__(
        self,
        storage: Storage,
        run_id: str,
        metadata: Mapping[str, Any],
        example_metadata: Any = None,
        resume: bool = False,
        preemption: PreemptionHandler | None = None,
    ) -> None:
        super().__init__(write_interval="batch")
        self.storage = storage
        self.run_id = run_id
        self.metadata = dict(metadata)
        self.example_metadata = example_metadata
        self.resume = resume
        self.preemption = preemption
        self.writer: RunWriter | None = None
        self.examples = 0
        self.real_tokens = 0
        self.padded_tokens = 0
        self.skipped = 0
        self.planned = 0
        self._t0 = 0.0
        self._first_batch_unix: float | None = None
        self._flushed_rows = 0
        self.path: str = storage.run_path(run_id)
        # storage writes run on a background thread, off the forward pass's critical path; the bounded
        # queue keeps at most a few batches in memory and makes the forward wait if storage is slower
        self._queue: queue.Queue[tuple[int, dict[str, np.ndarray], dict[str, Any]] | None] = queue.Queue(maxsize=4)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # -- set-up -------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        rank, world = trainer.global_rank, trainer.world_size
        if world > 1 and not self.storage.supports_concurrent_writers:
            raise ConfigError(
                f"{type(self.storage).__name__} cannot take several writers at once; use the zarr "
                "storage for multi-process runs, or run on one device."
            )
        if rank == 0:
            self.writer = self.storage.open_run(
                self.run_id, metadata=self.metadata, rank=0, world_size=world, resume=self.resume
            )
        trainer.strategy.barrier("probing-open-run")
        if rank != 0:
            self.writer = self.storage.open_run(self.run_id, rank=rank, world_size=world)
        assert self.writer is not None
        self.path = self.writer.path
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None:
            if self.resume:
                datamodule.done_ids = self.writer.done_ids()
                self.skipped = len(datamodule.done_ids)
            datamodule.on_plan = self._on_plan
        if self.preemption is not None:
            self.preemption.children = trainer.strategy.launcher

    def _on_plan(self, batches: list[np.ndarray]) -> None:
        self.planned = int(sum(len(b) for b in batches))
        self._record("running")

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
                if self.writer.rows_written != self._flushed_rows:  # a chunk went to disk: say so beside it
                    self._flushed_rows = self.writer.rows_written
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
        if batch_indices is not None and len(batch_indices) and not np.array_equal(np.asarray(batch_indices), ids):
            raise RuntimeError(
                f"Batch {batch_idx}: sampler indices {list(batch_indices)[:5]}... differ from the "
                f"example ids carried in the batch {ids[:5].tolist()}..."
            )
        counts = prediction["token_counts"].cpu().numpy()
        acts = {k: v.detach().float().cpu().numpy() for k, v in prediction["activations"].items()}
        meta: dict[str, Any] = {"example_ids": ids, "token_counts": counts}
        if prediction.get("row_counts") is not None:
            meta["row_counts"] = prediction["row_counts"].cpu().numpy()
            meta["row_fields"] = {k: v.cpu().numpy() for k, v in prediction["row_fields"].items()}
        if self._error is not None:
            self._drain()
        if self._thread is not None:
            self._queue.put((batch_idx, acts, meta))
        else:
            self.writer.append(batch_idx, acts, meta)
        self.examples += len(ids)
        self.real_tokens += int(counts.sum())
        self.padded_tokens += int(prediction["padded_tokens"])

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
        """This rank's timings for this attempt."""
        seconds = max(time.perf_counter() - self._t0, 1e-9) if self._t0 else 0.0
        return {
            "examples": self.examples,
            "planned": self.planned,
            "skipped_as_done": self.skipped,
            "seconds": round(seconds, 3),
            "examples_per_s": round(self.examples / seconds, 1) if seconds else 0.0,
            "real_tokens_per_s": round(self.real_tokens / seconds, 1) if seconds else 0.0,
            "real_tokens": self.real_tokens,
            "padded_tokens": self.padded_tokens,
            "padding_fraction": round(1 - self.real_tokens / self.padded_tokens, 4) if self.padded_tokens else 0.0,
            "first_batch_unix": self._first_batch_unix,
        }

    def _record(self, status: str) -> None:
        if self.writer is not None:
            self.writer.record_progress({"status": status, **self.stats()})

    # -- end ----------------------------------------------------------------------------------
    def finish(self, trainer: pl.Trainer) -> dict[str, Any]:
        """After ``predict`` returned on every rank: flush, wait for all ranks, rank 0 finalizes.

        Not a predict hook: Lightning skips the predict hooks on a rank with no batches (N < world
        size, or a resume with nothing left), and every rank must reach the barriers. Returns the
        run-wide figures on rank 0 (this rank's own elsewhere).
        """
        assert self.writer is not None
        self._drain()
        self.writer.close()
        self._record("done")
        trainer.strategy.barrier("probing-ranks-done")
        if trainer.global_rank == 0:
            columns = self.example_metadata() if callable(self.example_metadata) else self.example_metadata
            meta = self.writer.finalize(columns, stats={"world_size": trainer.world_size})
            total: dict[str, Any] = meta["stats"]["total"]
        else:
            total = self.stats()
        trainer.strategy.barrier("probing-finalized")
        return total

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.writer is not None:
            try:
                self._drain()
                self.writer.close()  # keep every whole row computed so far, for resume
                self._record(f"stopped: {type(exception).__name__}")
            except Exception:  # noqa: BLE001 - do not mask the original error
                log.exception("could not flush the run after an error")
