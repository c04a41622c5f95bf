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
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from probing.data.batching import window_examples
from probing.data.datamodule import ExtractionDataModule
from probing.data.sources import TextStream
from probing.engine import collectives
from probing.engine.preemption import PreemptionHandler
from probing.errors import ConfigError, DatasetError, ProbingError, StorageWriteError
from probing.faults import fault_point
from probing.inspect import human_bytes as _human
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
        log_every: seconds between progress lines on rank 0 (None: no lines; a progress bar, or nothing).
        describe: what the run is (model, examples, layers, strategy), printed with the bytes it will
            write and the free space before the first batch; None prints nothing.
        on_nonfinite: what NaN/inf activations get at finalize (`RunWriter.finalize`).
        lease_timeout: seconds without a heartbeat after which the run's lease is stale.
        key_axis_layers: layers whose last axis is a key axis (attention patterns, `probing.attention`): it is
            sized to the run's longest example at set-up, and each batch's rows are padded to it with zeros.
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
        log_every: float | None = None,
        describe: Mapping[str, str] | None = None,
        max_length: int | None = None,
        tokenizer: Any = None,
        on_nonfinite: str = "error",
        lease_timeout: float | None = None,
        allow_empty: bool = False,
        key_axis_layers: Sequence[str] = (),
    ) -> None:
        super().__init__(write_interval="batch")
        self.key_axis_layers = tuple(key_axis_layers)
        self.allow_empty = allow_empty
        self.on_nonfinite = on_nonfinite
        self.lease_timeout = lease_timeout
        self.storage = storage
        self.run_id = run_id
        self.metadata = metadata
        self.layers = dict(layers)
        self.row_fields = dict(row_fields or {})
        self.example_columns = dict(example_columns or {})
        self.row_columns = dict(row_columns or {})
        self.resume = resume
        self.preemption = preemption
        self.log_every = log_every
        self.describe = dict(describe) if describe is not None else None
        self.max_length = max_length
        self.tokenizer = tokenizer
        self.truncated = 0
        self.longest = 0
        self._last_log = 0.0
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
        if self.key_axis_layers and dm.token_counts is not None:
            tokens = dm.token_counts
            longest = max(1, *collectives.all_gather(int(tokens.max()) if len(tokens) else 0))
            for key in self.key_axis_layers:
                self.layers[key] = (*self.layers[key][:-1], longest)
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
        if dm.encoded is not None:
            self.truncated, self.longest = dm.encoded.truncated, dm.encoded.longest
        opened: BaseException | None = None
        if rank == 0:
            try:
                self._announce(layout, world)
                self.writer = self.storage.open_run(
                    self.run_id, metadata=self.metadata(), rank=0, world_size=world, resume=self.resume,
                    layout=layout, share=share, row_starts=row_starts, token_counts=token_counts,
                    lease_timeout=self.lease_timeout,
                )
                if "token_id" in self.row_fields and self.tokenizer is not None:
                    # token strings: the tokenizer's vocabulary, once per run (``row_metadata("token")`` maps
                    # the stored ids through it), instead of a string per row
                    vocab = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
                    self.writer.write_vocabulary(vocab)
            except Exception as exc:  # noqa: BLE001 - every rank raises it, instead of waiting for rank 0
                opened = _as_storage_error(exc, self.path, None)
                if self.writer is not None:
                    self.writer.release()
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

    def _announce(self, layout: RunLayout, world: int) -> None:
        """Print what will run, and refuse a run that the output folder has no room for."""
        import shutil

        from probing.storage.base import is_url

        row_bytes = sum(int(np.prod(s)) for s in layout.layers.values()) * self.storage.dtype.itemsize
        rows = layout.rows
        need = None if rows is None else int(rows * row_bytes * 1.02) + 2**20  # metadata: a few percent
        free = None
        if not is_url(self.path):
            probe = Path(self.path)
            while not probe.exists():
                probe = probe.parent
            free = shutil.disk_usage(probe).free
            if need is not None and not self.resume and need > free:
                raise ConfigError(
                    f"The run needs about {_human(need)} and {probe} has {_human(free)} free. Free some space, "
                    "choose another output_dir, store float16 (storage.dtype=float16), or fewer layers."
                )
        if self.describe is None:
            return
        lines = [f"{k:<9} {v}" for k, v in self.describe.items()]
        where = f"{self.path} ({self.storage.describe().get('backend')} {self.storage.dtype}"
        lines.append(f"{'output':<9} {where}{f', {world} ranks' if world > 1 else ''})")
        size = "unknown until the stream ends" if need is None else f"about {_human(need)}"
        lines.append(f"{'writes':<9} {size}" + (f" ({_human(free)} free there)" if free is not None else ""))
        print("probing: " + "\n         ".join(lines), file=sys.stderr, flush=True)

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
            converted = _as_storage_error(error, self.path, self.writer)
            if converted is error:
                raise error
            raise converted from error

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
        for key in self.key_axis_layers:
            acts[key] = _pad_last_axis(acts[key], (self.layout.layers if self.layout else self.layers)[key][-1])
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
        if "truncated" in batch:
            cut, longest = batch["truncated"]
            self.truncated += int(cut)
            self.longest = max(self.longest, int(longest))
        if self.log_every is not None and trainer.global_rank == 0:
            self._log_progress(trainer.world_size)

    def _log_progress(self, world: int) -> None:
        """A progress line every `log_every` seconds (the first after five batches' worth of time)."""
        now = time.perf_counter()
        if not self._last_log:
            self._last_log = self._t0
        if now - self._last_log < self.log_every:  # type: ignore[operator]
            return
        self._last_log = now
        elapsed = max(now - self._t0, 1e-9)
        rate = self.examples / elapsed
        total = self.planned
        done = f"{self.examples:,}" + (f"/{total:,} examples ({100 * self.examples / max(total, 1):.0f}%)"
                                       if total else " examples")
        eta = ""
        if total and rate > 0:
            left = int((total - self.examples) / rate)
            eta = f", ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
        who = "rank 0: " if world > 1 else ""
        print(f"probing: {who}{done}, {rate:,.0f} examples/s, {self.real_tokens / elapsed:,.0f} tokens/s{eta}",
              file=sys.stderr, flush=True)

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
            "truncated": self.truncated,
            "longest_before_truncation": self.longest,
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
        local: BaseException | None = None
        try:
            self._drain()
            self.writer.close(finished=True)
            self._record("done")
        except Exception as exc:  # noqa: BLE001 - raised on every rank below, after the collective
            local = _as_storage_error(exc, self.path, self.writer)
        errors = collectives.all_gather(local)  # also the barrier: every rank wrote its share (or failed)
        failed_rank = next((e for e in errors if e is not None), None)
        if failed_rank is not None:
            raise local if local is not None else failed_rank
        seen = collectives.all_gather(self._seen)
        cut = collectives.all_gather((self.truncated, self.longest))
        truncated, longest = sum(c for c, _ in cut), max(n for _, n in cut)
        if truncated and trainer.global_rank == 0:
            log.warning(
                "%d example(s) were longer than max_length=%s tokens and were cut (the longest had %d); set "
                "data.max_length (up to the model's limit) to keep more", truncated, self.max_length, longest,
            )
        streamed = self.layout is not None and self.layout.n_examples is None
        if streamed and max(seen) == 0 and not len(self.writer.before) and not self.allow_empty:  # same on every rank
            raise DatasetError(
                "The stream gave no examples, so there is nothing to extract. Check the input, or pass "
                "allow_empty=True (data.allow_empty=true) to write an empty run on purpose."
            )
        failed: BaseException | None = None
        total: dict[str, Any] = self.stats()
        if trainer.global_rank == 0:
            n = None
            if streamed:  # a stream ends where it was read to
                n = max(max(seen), self.writer.done_ranges().max_stop())
            try:
                compiles = getattr(getattr(trainer.lightning_module, "extractor", None), "jax_compiles", None)
                if compiles is not None:
                    log.info("JAX backend: %d XLA compile(s) in this run (one per padded batch shape)", compiles)
                meta = self.writer.finalize(
                    stats={"world_size": trainer.world_size, "truncated": truncated,
                           "longest_before_truncation": longest,
                           **({"jax_compiles": compiles} if compiles is not None else {})},
                    n_examples=n, on_nonfinite=self.on_nonfinite,
                )
                total = {**meta["stats"]["total"], "finalize_seconds": meta["stats"]["finalize_seconds"]}
            except (ProbingError, OSError) as exc:  # every rank raises it, instead of waiting for rank 0
                failed = _as_storage_error(exc, self.path, self.writer)
        failed = collectives.broadcast(failed)  # also the barrier: the run is completed for every rank
        if failed is not None:
            raise failed
        return total

    def release(self) -> None:
        """Give back the run's lease (rank 0), whatever happened; safe to call twice."""
        if self.writer is not None:
            self.writer.release()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.writer is not None:
            try:
                self._drain()
            except Exception as exc:  # noqa: BLE001 - the batches that could not be written are recomputed
                log.warning("after the error, %d queued batch(es) were not written (%s)", self._queue.qsize(), exc)
            from probing.storage.lease import LeaseLostError

            if isinstance(exception, LeaseLostError):  # another job owns the run now: write nothing more
                return
            try:
                self.writer.close()  # keep every whole row computed so far, for resume
                self._record(f"stopped: {type(exception).__name__}")
            except Exception as exc:  # noqa: BLE001 - do not mask the original error; what is durable stays
                log.warning("after the error, the rows held in memory could not be written either (%s: %s); "
                            "the %d examples already durable are kept for resume", type(exc).__name__, exc,
                            self.writer.rows_written)


def _as_storage_error(error: BaseException, path: str, writer: RunWriter | None) -> BaseException:
    """A write the storage refused (disk full, quota, read-only) as one clear `StorageWriteError`."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if not isinstance(cause, OSError) or isinstance(error, ProbingError):
        return error
    kept = writer.rows_written + len(writer.before) if writer is not None else 0
    return StorageWriteError(
        f"Writing the run at {path} failed: {cause.strerror or cause} ({type(cause).__name__}"
        f"{f', errno {cause.errno}' if cause.errno else ''}). The {kept} examples already stored are kept: free "
        "space (or fix the permissions), then run the same command with resume=true to compute the rest."
    )


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


def _pad_last_axis(values: np.ndarray, size: int) -> np.ndarray:
    """``values`` with its last axis zero-padded to ``size`` (a batch's keys -> the run's key axis)."""
    short = size - values.shape[-1]
    if short < 0:
        raise ValueError(f"rows with {values.shape[-1]} keys do not fit the run's key axis of {size}")
    if short == 0:
        return values
    return np.pad(values, [(0, 0)] * (values.ndim - 1) + [(0, short)])
