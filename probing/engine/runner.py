"""`DatasetRunner`: the front of the engine. Validates everything, then runs one `Trainer.predict`.

There is one code path: the Python API and the CLI both end here.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import warnings
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment

from probing.data.datamodule import ExtractionDataModule, effective_max_length, model_max_length
from probing.data.sources import TextDataset, TextStream, _is_iterable_dataset, row_column
from probing.engine.module import ExtractionModule
from probing.engine.preemption import Preempted, PreemptionHandler
from probing.engine.writer import RunWriterCallback, check_writers
from probing.errors import ConfigError, DatasetError, ProbingError
from probing.extractor import ActivationExtractor
from probing.storage.base import Storage, check_resume, new_run_id, open_run, utc_now
from probing.storage.layout import Column
from probing.storage.reader import RunReader
from probing.strategies import TokenLevelStrategy

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished run returns: where it is, and how it went (on rank 0)."""

    run_id: str
    path: str
    n_examples: int
    layers: list[str]
    stats: dict[str, Any] = field(default_factory=dict)
    global_rank: int = 0

    def open(self) -> RunReader:
        """Open the run for reading."""
        reader: RunReader = open_run(self.path)
        return reader


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape the results."""
    out = {"python": platform.python_version()}
    for name in ("probing", "torch", "transformers", "lightning", "zarr", "numpy", "datasets", "hydra-core"):
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    return out


def _global_rank() -> int:
    """This process's rank as the launcher tells it (0 when not distributed)."""
    for var in ("RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def _world_size(trainer: dict[str, Any] | None) -> int:
    """Processes a trainer configuration asks for (devices x nodes), where it can be told up front."""
    t = trainer or {}
    devices = t.get("devices", 1)
    n = len(devices) if isinstance(devices, (list, tuple)) else devices if isinstance(devices, int) else 1
    return max(1, int(n)) * max(1, int(t.get("num_nodes", 1) or 1))


def _trainer_defaults(extractor: ActivationExtractor) -> dict[str, Any]:
    dev = extractor.backend.device
    if dev.type == "cuda":
        return {"accelerator": "gpu", "devices": [dev.index or 0]}
    if dev.type == "mps":
        return {"accelerator": "mps", "devices": 1}
    return {"accelerator": "cpu", "devices": 1}


class DatasetRunner:
    """Run an extractor over a dataset and stream the activations into storage.

    Args:
        dataset: a list of strings, an iterable of dicts with a ``text`` field (other fields are
            stored as per-example metadata), a ``datasets.Dataset``, or a ``datasets.IterableDataset``
            / `TextStream` (streamed: read once, front to back, length not known up front).
        batch_size: most examples per batch.
        extractor: what to capture and how to pool it.
        storage: where the run goes (`ZarrStorage` by default in the CLI).
        run_id: the run's name under the storage root (default: time + random, or the SLURM job).
        max_length: truncation length in tokens (default: the model's limit).
        bucketing: batch examples of similar length together (less padding; order is restored).
        max_tokens_per_batch: optional token budget per batch (examples x longest length).
        resume: continue an interrupted run, computing only the missing examples.
        trainer: extra `lightning.Trainer` arguments (accelerator, devices, num_nodes, strategy,
            precision); by default the device the model was loaded on.
        progress: ``"auto"``: a progress bar on a terminal, otherwise a log line every
            ``progress_every`` seconds (done/total, examples/s, tokens/s, ETA); True: the bar; False: none.
        config: the full configuration to store with the run (the CLI passes its Hydra config).
        announce: print what will run (model, examples, layers, bytes to write, free space) before the
            first batch.
        on_nonfinite: NaN/inf activations (and float16 overflows) are counted per layer while writing;
            ``error`` (default) refuses to mark the run complete, naming layer, count and first example
            ids; ``warn`` stores them with a warning; ``ignore`` stores them.
        allow_empty: a dataset with no examples is an error unless this is set (then: an empty run).
        lease_timeout: seconds without a heartbeat after which another job may take over the run
            (default 120; `probing.storage.lease`).
        reuse: serve the request from a completed run under the storage root instead of running the
            model (`probing.storage.identity`): one with the same identity is returned as it is; one with
            the same model and data serves a subset of its layers (returned as it is, `RunResult.layers`
            the subset) or, if it kept every token, a pooled strategy (written as a new run). ``auto``
            (default): on when no ``run_id`` is given, off when one is (a named run is what was asked for).
        registry: append the finished run to the experiment registry of the storage root
            (``<root>/registry.jsonl``, `probing.experiments`); False: do not.
    """

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 32,
        extractor: ActivationExtractor | None = None,
        storage: Storage | None = None,
        *,
        run_id: str | None = None,
        text_field: str = "text",
        words_field: str | None = None,
        max_length: int | None = None,
        bucketing: bool = True,
        max_tokens_per_batch: int | None = None,
        num_workers: int = 0,
        resume: bool = False,
        trainer: dict[str, Any] | None = None,
        progress: bool | str = "auto",
        progress_every: float = 30.0,
        config: dict[str, Any] | None = None,
        overrides: list[str] | None = None,
        announce: bool = True,
        on_nonfinite: str = "error",
        allow_empty: bool = False,
        lease_timeout: float | None = None,
        reuse: bool | str = "auto",
        registry: bool = True,
    ) -> None:
        if extractor is None or storage is None:
            raise ConfigError("DatasetRunner needs an extractor and a storage.")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")

        if isinstance(dataset, (TextDataset, TextStream)):
            self.dataset: TextDataset | TextStream = dataset
        elif _is_iterable_dataset(dataset):
            self.dataset = TextStream(dataset, text_field, words_field)
        else:
            self.dataset = TextDataset(dataset, text_field, words_field)
        from probing.storage.writer import NONFINITE_CHOICES

        if on_nonfinite not in NONFINITE_CHOICES:
            raise ConfigError(f"on_nonfinite={on_nonfinite!r}: expected one of {NONFINITE_CHOICES}.")
        self.on_nonfinite = on_nonfinite
        self.allow_empty = allow_empty
        self.lease_timeout = lease_timeout
        if isinstance(self.dataset, TextDataset) and len(self.dataset) == 0 and not allow_empty:
            raise DatasetError(
                "The dataset has no examples (an empty file or list, data.limit=0, or a filter that kept "
                "nothing), so there is nothing to extract. Check the input, or pass allow_empty=True "
                "(data.allow_empty=true) to write an empty run on purpose."
            )
        mode = extractor.strategy.mode
        self.token_level = extractor.strategy if isinstance(extractor.strategy, TokenLevelStrategy) else None
        if isinstance(self.dataset, TextStream) and self.token_level is not None:
            raise ConfigError(
                f"strategy {extractor.strategy.name!r} stores rows per token or word, which are placed from a "
                "first pass over the data; a stream has none. Load the data as a dataset (data.streaming=false: "
                "files are memory-mapped Arrow, of any size), or pool (mean, last, max, cls)."
            )
        if mode == "words" and self.dataset.words_field is None:
            raise ConfigError(
                "strategy 'words' needs pre-split input: examples with a list of words (set words_field, "
                "e.g. data.words_field=words, or load a CoNLL-U file)."
            )
        if self.dataset.words_field is not None and not getattr(extractor.backend.tokenizer, "is_fast", False):
            raise ConfigError("Pre-split (word-level) input needs a fast tokenizer (word_ids); this one is not.")
        check_writers(storage, _world_size(trainer))
        from probing.preflight import check_accelerator

        check_accelerator((trainer or {}).get("accelerator"), (trainer or {}).get("devices"))
        self.batch_size = batch_size
        self.extractor = extractor
        self.storage = storage
        if reuse not in ("auto", True, False):
            raise ConfigError(f"reuse={reuse!r}: expected 'auto', True or False.")
        self.reuse = run_id is None if reuse == "auto" else bool(reuse)
        self.run_id = run_id or new_run_id()  # rank 0's is used on every rank
        tokenizer = extractor.backend.tokenizer
        self.max_length = effective_max_length(tokenizer, extractor.model.config, max_length)
        self.bucketing = bucketing
        self.max_tokens_per_batch = max_tokens_per_batch
        self.num_workers = num_workers
        self.resume = resume
        self.trainer_kwargs = {**_trainer_defaults(extractor), **(trainer or {})}
        device_map = extractor.backend.extra.get("device_map")
        if device_map:
            from probing.preflight import check_placement

            check_placement(device_map, self.trainer_kwargs.get("devices", 1))
            # the weights are placed already: Lightning's root device (where batches go) is the model's input device
            self.trainer_kwargs.update(_trainer_defaults(extractor))
        if progress not in ("auto", True, False):
            raise ConfigError(f"progress={progress!r}: expected 'auto', True or False.")
        self.progress = progress
        self.progress_every = progress_every
        self.announce = announce
        self.config = config or {}
        self.overrides = overrides or []
        self.registry = registry
        self.preemption = PreemptionHandler()
        self.example_fields, self.row_fields = self._metadata_fields()

    # -- what is stored --------------------------------------------------------------------------
    def _metadata_fields(self) -> tuple[list[str], list[str]]:
        """Fields stored per example, and (word-level runs) per row: the word list and per-word lists."""
        fields = list(self.dataset.metadata_fields)
        if self.extractor.strategy.mode != "words":
            return fields, []
        ds = self.dataset
        assert isinstance(ds, TextDataset) and ds.words_field is not None
        per_word = [f for f in fields if f != "text" and _is_list_field(ds, f)]
        return [f for f in fields if f not in per_word], [ds.words_field, *per_word]

    def columns(self) -> tuple[dict[str, Column], dict[str, Column]]:
        """How the example fields and the row fields are stored (from the data's schema or values)."""
        example = self.dataset.columns(self.example_fields)
        rows: dict[str, Column] = {}
        if self.row_fields:
            ds = self.dataset
            assert isinstance(ds, TextDataset)
            feats = getattr(ds._hf, "features", None)
            for f in self.row_fields:
                rows[f] = row_column(feats[f] if feats is not None else ds.column(f))
        return example, rows

    def metadata(self) -> dict[str, Any]:
        """The run metadata stored with the activations (on rank 0: it fingerprints the data)."""
        backend = self.extractor.backend
        ds = self.dataset
        return {
            "format_version": 2,
            "model": {
                "name_or_path": backend.name_or_path,
                "revision": backend.revision,
                "model_type": backend.model_type,
                "backend": getattr(backend, "framework", "torch"),
                "dtype": str(backend.dtype).replace("torch.", ""),
                "is_decoder": backend.is_decoder,
                "padding_side": getattr(backend.tokenizer, "padding_side", None),
                "weights": backend.extra.get("weights", "pretrained"),
                **self._fingerprints(),
            },
            **self.extractor.describe(),
            "hidden_size": getattr(backend.model.config, "hidden_size", None),
            "max_length": self.max_length,
            "batching": {
                "batch_size": self.batch_size,
                "bucketing": self.bucketing,
                "max_tokens_per_batch": self.max_tokens_per_batch,
            },
            "mode": self.extractor.strategy.mode,
            "dataset": {
                "words_field": ds.words_field,
                "n_examples": None if isinstance(ds, TextStream) else len(ds),
                "streamed": isinstance(ds, TextStream),
                "fingerprint": ds.fingerprint(),
                "text_field": ds.text_field,
                "fields": ds.fields,
            },
            "trainer": {
                k: v if isinstance(v, (int, str, float, bool, type(None))) else str(v)
                for k, v in self.trainer_kwargs.items()
            },
            "versions": package_versions(),
            "config": self.config,
            "overrides": self.overrides,
            "created": utc_now(precise=True),
        }

    def _fingerprints(self) -> dict[str, str]:
        """The weights' and the tokenizer's fingerprints (`probing.storage.identity`), computed once."""
        if not hasattr(self, "_fingerprint_cache"):
            from probing.storage.identity import tokenizer_fingerprint, weights_fingerprint

            backend = self.extractor.backend
            self._fingerprint_cache = {
                "weights_fingerprint": weights_fingerprint(backend.model),
                "tokenizer_fingerprint": tokenizer_fingerprint(backend.tokenizer),
            }
        return self._fingerprint_cache

    def _reused(self) -> RunResult | None:
        """With ``reuse``, a result served by a stored run (no model pass), or None (`find_reuse`)."""
        if not self.reuse or isinstance(self.dataset, TextStream):
            return None
        from probing.storage.base import is_url
        from probing.storage.identity import find_reuse, run_identity

        if is_url(self.storage.root):
            return None
        meta = {**self.metadata(), "storage": self.storage.describe()}
        found = find_reuse(self.storage.root, meta, partial=_world_size(self.trainer_kwargs) == 1)
        if found is None:
            return None
        src = found.run
        info = {"reused": found.kind, "source": src.path, "source_identity": src.identity}
        layers = list(meta["layers"])
        if found.kind in ("whole", "layers"):
            log.info("reusing run %s (%s) for identity %s", src.path, found.kind, run_identity(meta))
            n = int(src.meta.get("dataset", {}).get("n_examples") or 0)
            stats = {**dict(src.meta.get("stats", {}).get("total", {})), **info}
            return RunResult(str(src.meta.get("run_id")), src.path, n, layers, stats, _global_rank())
        from probing.storage.derive import pool_from_tokens

        meta["derived_from"] = info
        with open_run(src.path) as reader:
            path = pool_from_tokens(reader, self.storage, self.run_id, meta, layers, meta["strategy"]["name"])
            n = reader.n_examples
        log.info("pooled run %s from token-level run %s without the model", path, src.path)
        return RunResult(self.run_id, path, n, layers, info, _global_rank())

    def describe(self) -> dict[str, str]:
        """What the run is, in words, for the block printed before it starts."""
        backend = self.extractor.backend
        ds = self.dataset
        n_blocks = self.extractor.n_blocks
        keys = self.extractor.layer_keys
        shown = ", ".join(keys) if len(keys) <= 6 else f"{', '.join(keys[:3])}, ..., {keys[-1]}"
        limit = model_max_length(backend.tokenizer, backend.model.config)
        attention = {}
        if self.extractor.attention_keys:
            heads = getattr(backend.model.config, "num_attention_heads", None) or "?"
            itemsize = self.storage.dtype.itemsize
            attention["attention"] = (
                f"{len(self.extractor.attention_keys)} layer(s) of patterns, eager attention (transformers forms the "
                f"probabilities only there); {heads} heads x K keys x {itemsize} bytes per token and layer, K = the "
                f"longest example (at most {self.max_length})"
            )
        return {
            "model": f"{backend.name_or_path} ({backend.model_type}, {n_blocks} blocks, {str(backend.dtype)[6:]})",
            "examples": "a stream (its length is known at the end)" if isinstance(ds, TextStream) else f"{len(ds):,}",
            "layers": f"{shown} ({len(keys)})",
            "strategy": f"{self.extractor.strategy.name}; inputs cut to {self.max_length} tokens (model limit "
            f"{limit if limit else 'unknown'})",
            **attention,
        }

    def _already_complete(self) -> RunResult | None:
        """With ``resume``, a run that already completed with the same settings is a result, not an error
        (a requeued job or a re-run sweep member that finished before it was stopped)."""
        if not self.resume:
            return None
        try:
            reader = open_run(self.storage.run_path(self.run_id))
        except (FileNotFoundError, ProbingError):
            return None
        with reader:
            if _global_rank() == 0:  # the settings are checked once (the fingerprint reads the data)
                check_resume(reader.metadata, {**self.metadata(), "storage": self.storage.describe()})
            log.info("run %s is already complete; nothing to do", self.run_id)
            stats = dict(reader.metadata.get("stats", {}).get("total", {}))
            return RunResult(self.run_id, reader.path, reader.n_examples, reader.layers, stats, _global_rank())

    def build(self) -> tuple[pl.Trainer, ExtractionModule, ExtractionDataModule, RunWriterCallback]:
        """Validate and build the Lightning objects (before any compute)."""
        tokenizer = self.extractor.backend.tokenizer
        example_columns, row_columns = self.columns()
        datamodule = ExtractionDataModule(
            self.dataset,
            tokenizer,
            batch_size=self.batch_size,
            max_length=self.max_length,
            bucketing=self.bucketing,
            max_tokens_per_batch=self.max_tokens_per_batch,
            num_workers=self.num_workers,
            token_level=self.token_level,
            example_fields=tuple(self.example_fields),
            row_fields=tuple(self.row_fields),
        )
        row_fields = {"tokens": {"token_id": "int64"}, "words": {"word_index": "int64"}}.get(
            self.extractor.strategy.mode, {}
        )
        bar = self.progress is True or (self.progress == "auto" and sys.stderr.isatty())
        writer = RunWriterCallback(
            self.storage,
            self.run_id,
            self.metadata,
            layers=self.extractor.output_shapes(),
            row_fields=row_fields,
            example_columns=example_columns,
            row_columns=row_columns,
            resume=self.resume,
            preemption=self.preemption,
            log_every=None if bar or self.progress is False else self.progress_every,
            describe=self.describe() if self.announce else None,
            max_length=self.max_length,
            tokenizer=tokenizer,
            on_nonfinite=self.on_nonfinite,
            lease_timeout=self.lease_timeout,
            allow_empty=self.allow_empty,
            key_axis_layers=self.extractor.attention_keys,
        )
        for noisy in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        warnings.filterwarnings("ignore", message=".*Total length of `DataLoader` across ranks is zero.*")
        warnings.filterwarnings("ignore", message=".*The `srun` command is available on your system.*")
        warnings.filterwarnings("ignore", message=".*treespec, LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__` defined.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*infer the batch indices.*")  # ids travel in the batch
        plugins: list[Any] = []
        if SLURMEnvironment.detect():
            # Lightning's SLURM requeue handler saves a training checkpoint; predict has none. Preemption
            # is handled by `PreemptionHandler` (flush, record, exit) and a resume.
            plugins.append(SLURMEnvironment(auto_requeue=False))
        trainer = pl.Trainer(
            plugins=plugins,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            use_distributed_sampler=False,  # each rank's share is planned by ExtractionDataModule
            enable_progress_bar=bar,
            callbacks=[writer],
            **self.trainer_kwargs,
        )
        return trainer, ExtractionModule(self.extractor), datamodule, writer

    def run(self) -> RunResult:
        """Extract, stream to storage, finalize; return where the run is.

        Raises `Preempted` if SIGTERM/SIGUSR1/SIGUSR2 arrived: what was computed is stored, and the
        same call with ``resume=True`` finishes the run.
        """
        done = self._already_complete()
        if done is not None:
            return done
        done = self._reused()
        if done is not None:
            self._record(done)
            return done
        self.preemption.install()
        writer: RunWriterCallback | None = None
        try:
            trainer, module, datamodule, writer = self.build()
            trainer.predict(module, datamodule=datamodule, return_predictions=False)
            self.preemption.check()
            stats = writer.finish(trainer)
        except Preempted as exc:
            exc.run_id = writer.run_id if writer is not None else self.run_id
            raise
        finally:
            self.preemption.restore()
            if writer is not None:
                writer.release()
        n = stats.get("examples", 0) if trainer.global_rank else _n_examples(writer)
        result = RunResult(writer.run_id, writer.path, n, self.extractor.layer_keys, stats, trainer.global_rank)
        self._record(result)
        return result

    def _record(self, result: RunResult) -> None:
        """Rank 0 appends the run to the registry of its storage root (`probing.experiments`)."""
        if self.registry and result.global_rank == 0:
            from probing.experiments import record_run

            record_run(self.storage.root, result.path, result.stats)


def _n_examples(writer: RunWriterCallback) -> int:
    layout = writer.layout
    if layout is not None and layout.n_examples is not None:
        return int(layout.n_examples)
    reader: RunReader = open_run(writer.path)
    with reader:
        return reader.n_examples


def _is_list_field(ds: TextDataset, field: str) -> bool:
    """A field holding one list per example (per-word values of a word-level dataset)."""
    feats = getattr(ds._hf, "features", None)
    if feats is not None:
        return type(feats[field]).__name__ in ("Sequence", "List", "LargeList")
    values = ds.column(field)
    return bool(values) and all(isinstance(v, (list, tuple)) for v in values)
