"""The storage interface: a `Storage` opens runs for writing (`Storage.open_run` -> `RunWriter`),
`probing.open_run` opens them for reading (-> `RunReader`).

A backend subclasses `Storage` and provides an `ArrayStore` (how to create, write, read and list
arrays); creating or resuming a run, writing it and reading it are done here, once, for every backend.
"""

from __future__ import annotations

import datetime as _dt
import os
import secrets
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from probing.errors import ConfigError, ResumeMismatchError, RunExistsError

if TYPE_CHECKING:
    from probing.storage.arrays import ArrayStore
    from probing.storage.layout import RunLayout
    from probing.storage.ranges import Ranges
    from probing.storage.writer import RunWriter

STORAGE_DTYPES = ("float32", "float16")

# Settings that must not change between the attempts of one run.
RESUME_KEYS: tuple[tuple[str, ...], ...] = (
    ("model", "name_or_path"),
    ("model", "dtype"),
    ("model", "backend"),
    ("layers",),
    ("strategy",),
    ("max_length",),
    ("dataset", "fingerprint"),
    ("dataset", "n_examples"),
    ("storage", "dtype"),
)


def is_url(path: str) -> bool:
    return "://" in path


def strip_file_url(path: str) -> str:
    """``file:///a/b`` -> ``/a/b``: local folders are handled as paths (created as needed)."""
    return path[len("file://") :] if path.startswith("file://") else path


def new_run_id() -> str:
    """A fresh run id: the SLURM job (the same on every rank of the job), else time + random.

    Nothing is read from or written to the environment: a DDP job agrees on one id because rank 0's is
    broadcast to the others (`probing.engine.writer`), and two runs in one process get two ids.
    """
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return f"slurm-{job}" + (f"-{task}" if task else "")
    return _dt.datetime.now().strftime("run-%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def utc_now(precise: bool = False) -> str:
    """The UTC time in ISO format, to the second (or to the microsecond: a creation time that orders runs)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds" if precise else "seconds")


def check_resume(old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Raise `ResumeMismatchError` naming every setting in `RESUME_KEYS` that differs."""
    diffs = []
    for path in RESUME_KEYS:
        a: Any = old
        b: Any = new
        for part in path:
            a = a.get(part) if isinstance(a, Mapping) else None
            b = b.get(part) if isinstance(b, Mapping) else None
        if path == ("model", "backend"):  # runs stored before the JAX backend ran torch
            a, b = a or "torch", b or "torch"
        if a != b:
            diffs.append(f"{'.'.join(path)}: stored {a!r}, now {b!r}")
    if diffs:
        raise ResumeMismatchError(
            "Cannot resume: the run was started with other settings:\n  "
            + "\n  ".join(diffs)
            + "\nResume with the original settings, or write a new run (another run_id or output folder)."
        )


def check_can_write(run_path: str, completed: bool, resume: bool) -> None:
    """Refuse to overwrite a completed run, or to continue an incomplete one without ``resume``."""
    if completed:
        raise RunExistsError(
            f"A completed run already exists at {run_path}; it is never overwritten. Choose another "
            "run_id or output folder, or delete it first."
        )
    if not resume:
        raise RunExistsError(
            f"An incomplete run exists at {run_path}, and no job is writing it now (a running one holds its "
            "lease and would be named here): its last job was interrupted or failed. Pass resume=true to "
            "compute only what is missing, or choose another run_id / delete it."
        )


def total_progress(parts: Mapping[str, Any]) -> dict[str, Any]:
    """Sum the per-part progress records of one run into run-wide figures (all ranks, all attempts)."""
    recs = [r for r in parts.values() if isinstance(r, Mapping)]
    examples = sum(int(r.get("examples", 0)) for r in recs)
    real = sum(int(r.get("real_tokens", 0)) for r in recs)
    padded = sum(int(r.get("padded_tokens", 0)) for r in recs)
    seconds = max((float(r.get("seconds", 0.0)) for r in recs), default=0.0)
    return {
        "examples": examples,
        "seconds": round(seconds, 3),
        "examples_per_s": round(examples / seconds, 1) if seconds else 0.0,
        "real_tokens": real,
        "real_tokens_per_s": round(real / seconds, 1) if seconds else 0.0,
        "padding_fraction": round(1 - real / padded, 4) if padded else 0.0,
    }


class Storage:
    """Where runs are written: ``root`` is a folder (or URL) holding one run per run id.

    A backend sets `name`, implements `open_store` (an `ArrayStore` over one run) and `detect` /
    `open_existing` (to recognize and read its runs), and registers itself in
    `probing.storage.registry`.
    """

    name: ClassVar[str] = "storage"
    #: whether several processes may write one run at the same time
    supports_concurrent_writers: ClassVar[bool] = True
    #: whether ``root`` may be an fsspec URL
    supports_urls: ClassVar[bool] = False

    def __init__(self, root: str | os.PathLike[str], *, dtype: str = "float32", chunk_rows: int | None = None) -> None:
        self.root = strip_file_url(os.fspath(root))
        if is_url(self.root) and not self.supports_urls:
            raise ConfigError(f"The {self.name} storage writes local files only; use zarr for URLs.")
        if dtype not in STORAGE_DTYPES:
            raise ConfigError(
                f"Storage dtype {dtype!r} is not supported; expected one of {STORAGE_DTYPES}. "
                "(bfloat16 is not a zarr dtype: use float32, exact for bfloat16 values, or float16 for half the size.)"
            )
        if chunk_rows is not None and chunk_rows < 1:
            raise ConfigError(f"chunk_rows must be >= 1, got {chunk_rows}.")
        self.dtype = np.dtype(dtype)
        self.chunk_rows = chunk_rows

    # -- what a backend provides -----------------------------------------------------------------
    def open_store(self, path: str, mode: str) -> ArrayStore:
        """An `ArrayStore` over the run at ``path``; ``mode`` is ``w`` (create), ``r+`` or ``r``."""
        raise NotImplementedError

    @staticmethod
    def detect(path: str) -> bool:
        """True if ``path`` holds a run of this backend."""
        raise NotImplementedError

    @staticmethod
    def open_existing(path: str) -> ArrayStore:
        """A read-only `ArrayStore` over an existing run."""
        raise NotImplementedError

    shard_chunks: int | None = None

    @property
    def compress(self) -> bool:
        return False

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "dtype": str(self.dtype), "chunk_rows": self.chunk_rows}

    # -- runs ------------------------------------------------------------------------------------
    def run_path(self, run_id: str) -> str:
        return f"{self.root.rstrip('/')}/{run_id}" if is_url(self.root) else str(Path(self.root) / run_id)

    def layout(self, n_examples: int | None, layers: dict[str, tuple[int, ...]], **kwargs: Any) -> RunLayout:
        """The layout of a run of this storage's dtype and chunking (see `probing.storage.layout.make_layout`)."""
        from probing.storage.layout import make_layout

        return make_layout(
            n_examples, layers, itemsize=self.dtype.itemsize, chunk_rows=self.chunk_rows,
            shard_chunks=self.shard_chunks, **kwargs,
        )

    def open_run(
        self,
        run_id: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
        resume: bool = False,
        layout: RunLayout | None = None,
        share: Ranges | None = None,
        row_starts: np.ndarray | None = None,
        token_counts: np.ndarray | None = None,
        lease_timeout: float | None = None,
    ) -> RunWriter:
        """Open a run for writing: rank 0 creates it (or checks it and starts a new attempt with
        ``resume``), every other rank joins it (after rank 0, e.g. behind a barrier).

        Args:
            run_id: the run's name under ``root`` (default: a fresh id).
            metadata: run metadata (model, layers, strategy, dataset, ...); on resume it must agree
                with the stored one on `RESUME_KEYS`.
            layout: shapes and chunking of every array (`Storage.layout`). Without one (the seed
                API), arrays are made on the first `RunWriter.append` and the run must be pooled
                and written by one process.
            share: the example ids this rank writes (default: all). Token-level runs: ``row_starts``,
                the first row of each example of the share and the end of the last; ``token_counts``.
            lease_timeout: rank 0 holds the run's lease (`probing.storage.lease`) until finalize; a
                lease without a heartbeat for this many seconds is stale (default 120).
        """
        from probing.storage.lease import DEFAULT_TIMEOUT, acquire
        from probing.storage.writer import create_or_resume, join_run

        if world_size > 1 and not self.supports_concurrent_writers:
            raise ConfigError(
                f"{type(self).__name__} takes one writer at a time and this run has {world_size} processes; "
                "use the zarr storage (storage=zarr) for multi-process runs."
            )
        run_id = run_id or new_run_id()
        path = self.run_path(run_id)
        meta = {**dict(metadata or {}), "storage": (metadata or {}).get("storage", self.describe())}
        if rank == 0:  # under the run's lease, held until finalize or release
            lease = acquire(path, DEFAULT_TIMEOUT if lease_timeout is None else lease_timeout)
            try:
                writer = create_or_resume(self, run_id, path, meta, resume=resume, layout=layout, share=share,
                                          row_starts=row_starts, token_counts=token_counts, world_size=world_size,
                                          check=metadata is not None)
            except BaseException:
                lease.release()
                raise
            writer.lease = lease
            weakref.finalize(writer, lease.release)  # a writer dropped without finalize does not hold the run
            return writer
        return join_run(self, run_id, path, rank=rank, world_size=world_size, share=share, row_starts=row_starts,
                        token_counts=token_counts)


def open_run(
    path: str | os.PathLike[str],
    run_id: str | None = None,
    *,
    allow_partial: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """Open a stored run for reading: ``open_run(run.path)`` or ``open_run(root, run_id)``.

    The backend is recognized from the files; ``path`` may be an fsspec URL for Zarr. A run that never
    completed is refused with a message that says how to finish it, unless ``allow_partial=True``,
    which reads the finished examples only (and says how many). Returns a `probing.RunReader`
    (a context manager: ``with open_run(p) as r: ...`` closes its files). ``storage_options``: fsspec
    options of a URL (endpoint, credentials), bound to it for this process (`probing.storage.fs_options`).
    """
    from probing.storage.fs_options import bind
    from probing.storage.reader import RunReader
    from probing.storage.registry import backend_of, list_runs

    base = strip_file_url(os.fspath(path))
    bind(base, storage_options)
    p = (f"{base.rstrip('/')}/{run_id}" if is_url(base) else str(Path(base) / run_id)) if run_id else base
    backend = backend_of(p)
    if backend is not None:
        return RunReader(backend.open_existing(p), p, allow_partial=allow_partial)
    runs = list_runs(p)
    hint = f" It holds runs: {runs}; pass one as run_id." if runs else ""
    raise FileNotFoundError(f"No probing run at {p}.{hint}")
