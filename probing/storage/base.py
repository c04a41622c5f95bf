"""The storage interface: `Storage` opens runs, `RunWriter` appends batches, `RunReader` reads runs.

A run is written in parts, one per rank and attempt, each holding rows in arrival order with their
example ids beside them; `RunWriter.finalize` (one process, after all ranks) puts the rows in dataset
order, writes per-example metadata and sets the ``completed`` flag last. Nothing is ever read back
as complete before that flag is set.
"""

from __future__ import annotations

import datetime as _dt
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from probing.errors import ConfigError, LayerNotFoundError, ResumeMismatchError, RunExistsError, close_matches

# Settings that must not change between the attempts of one run.
RESUME_KEYS: tuple[tuple[str, ...], ...] = (
    ("model", "name_or_path"),
    ("model", "dtype"),
    ("layers",),
    ("strategy",),
    ("max_length",),
    ("dataset", "fingerprint"),
    ("dataset", "n_examples"),
    ("storage", "dtype"),
)


def new_run_id() -> str:
    """A run id: ``PROBING_RUN_ID`` if set (so DDP ranks agree), else the SLURM job, else time + random.

    The id is put into ``PROBING_RUN_ID`` so that processes started later from this one (DDP ranks)
    use the same id.
    """
    run_id = os.environ.get("PROBING_RUN_ID")
    if not run_id:
        job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
        if job:
            task = os.environ.get("SLURM_ARRAY_TASK_ID")
            run_id = f"slurm-{job}" + (f"-{task}" if task else "")
        else:
            run_id = _dt.datetime.now().strftime("run-%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        os.environ["PROBING_RUN_ID"] = run_id
    return run_id


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def check_resume(old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Raise `ResumeMismatchError` naming every setting in `RESUME_KEYS` that differs."""
    diffs = []
    for path in RESUME_KEYS:
        a: Any = old
        b: Any = new
        for part in path:
            a = a.get(part) if isinstance(a, Mapping) else None
            b = b.get(part) if isinstance(b, Mapping) else None
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
            f"An incomplete run exists at {run_path} (interrupted?). Pass resume=true to compute only "
            "what is missing, or choose another run_id / delete it."
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


def check_batch(
    activations: Mapping[str, np.ndarray], metadata: Mapping[str, Any], row_counts: Any = None
) -> np.ndarray:
    """Validate one appended batch; return its example ids as int64.

    Pooled batches have one row per example; token-level ones ``sum(row_counts)`` rows.
    """
    if "example_ids" not in metadata:
        raise ConfigError("RunWriter.append needs metadata['example_ids'] (the dataset index of each row).")
    ids = np.asarray(metadata["example_ids"], dtype=np.int64).reshape(-1)
    rows = len(ids) if row_counts is None else int(np.sum(row_counts))
    if row_counts is not None and len(row_counts) != len(ids):
        raise ConfigError(f"row_counts has {len(row_counts)} entries for {len(ids)} examples.")
    for key, value in activations.items():
        if value.ndim != 2 or value.shape[0] != rows:
            raise ConfigError(f"Activations of {key!r} have shape {value.shape}; expected ({rows}, dim).")
    return ids


class RunWriter(ABC):
    """Writes one rank's share of a run. Obtained from `Storage.open_run`."""

    run_id: str
    path: str
    rank: int
    world_size: int
    rows_written: int = 0

    @abstractmethod
    def append(self, batch_id: int, activations: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
        """Add a batch: ``activations[layer]`` is ``[batch, dim]``; ``metadata['example_ids']`` is required
        (dataset index of each row), ``metadata['token_counts']`` optional."""

    @abstractmethod
    def close(self) -> None:
        """Write everything buffered by this rank. Safe to call twice."""

    @abstractmethod
    def record_progress(self, progress: Mapping[str, Any]) -> None:
        """Store this rank's progress and timings beside its part (read by ``info`` and finalize)."""

    @abstractmethod
    def done_ids(self) -> np.ndarray:
        """Ids of the examples already stored by any rank and attempt (what a resume skips)."""

    @abstractmethod
    def finalize(
        self, example_metadata: Mapping[str, Sequence[Any]] | None = None, *, stats: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Order the rows by example id, store per-example metadata, and mark the run completed.

        Call once, from one process, after every rank has closed. Raises if any example is missing.
        Returns the final run metadata.
        """

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Storage(ABC):
    """Where runs are written. ``root`` is a folder (or URL) holding one run per run id."""

    #: whether several processes may write parts of one run at the same time
    supports_concurrent_writers: bool = True

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.fspath(root)

    def run_path(self, run_id: str) -> str:
        return str(Path(self.root) / run_id)

    @abstractmethod
    def open_run(
        self,
        run_id: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
        resume: bool = False,
    ) -> RunWriter:
        """Open a run for writing. Rank 0 creates it (or checks it for resume); others join it."""

    def describe(self) -> dict[str, Any]:
        return {"backend": type(self).__name__}


class RunReader(ABC):
    """Reads a completed run in dataset order. Use `open_run` to get one."""

    path: str
    metadata: dict[str, Any]

    @property
    def run_id(self) -> str:
        return str(self.metadata.get("run_id", Path(self.path).name))

    @property
    def layers(self) -> list[str]:
        """The stored layer keys, in request order."""
        return list(self.metadata.get("layers", []))

    @property
    def n_examples(self) -> int:
        return int(self.metadata.get("dataset", {}).get("n_examples", 0))

    @property
    def completed(self) -> bool:
        return bool(self.metadata.get("completed", False))

    def layer_key(self, layer: int | str) -> str:
        """Map a selector (stored key, block index, ``embeddings`` or module name) to a stored key."""
        keys = self.layers
        if isinstance(layer, str) and layer in keys:
            return layer
        modules = self.metadata.get("layer_modules", {})
        for key, module_name in modules.items():
            if layer == module_name:
                return str(key)
        n = self.metadata.get("num_blocks")
        index: int | None = None
        if (
            isinstance(layer, (int, np.integer))
            and not isinstance(layer, bool)
            or isinstance(layer, str)
            and layer.lstrip("-").isdigit()
        ):
            index = int(layer)
        if index is not None and n:
            key = f"blocks.{index % n}" if -n <= index < n else None
            if key in keys:
                return key
        raise LayerNotFoundError(
            f"Layer {layer!r} is not in this run.{close_matches(str(layer), keys)} Stored layers: {keys}."
        )

    @abstractmethod
    def activations(self, layer: int | str) -> np.ndarray:
        """``[n_examples, dim]`` activations of ``layer`` in dataset order."""

    @abstractmethod
    def example_metadata(self, field: str) -> np.ndarray:
        """Per-example values of a field (``text``, labels, ``token_counts``), in dataset order."""

    @property
    def example_fields(self) -> list[str]:
        return list(self.metadata.get("example_fields", []))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, n_examples={self.n_examples}, layers={self.layers})"


def open_run(path: str | os.PathLike[str], run_id: str | None = None, *, allow_partial: bool = False) -> RunReader:
    """Open a stored run for reading: ``open_run(run.path)`` or ``open_run(root, run_id)``.

    The backend (Zarr, HDF5, NPZ) is recognized from the files; ``path`` may be an fsspec URL for
    Zarr. A run that never completed is refused with a message that says how to finish it, unless
    ``allow_partial=True``, which reads the finished examples only (and says how many).
    """
    from probing.storage.hdf5_store import is_hdf5_run, open_hdf5_run
    from probing.storage.npz_store import is_npz_run, open_npz_run
    from probing.storage.zarr_store import is_url, is_zarr_run, open_zarr_run, strip_file_url

    base = strip_file_url(os.fspath(path))
    p = (f"{base.rstrip('/')}/{run_id}" if is_url(base) else str(Path(base) / run_id)) if run_id else base
    if is_zarr_run(p):
        return open_zarr_run(p, allow_partial)
    if not is_url(p) and is_hdf5_run(p):
        return open_hdf5_run(p, allow_partial)
    if not is_url(p) and is_npz_run(p):
        return open_npz_run(p, allow_partial)
    q = Path(p)
    runs = (
        sorted(x.name for x in q.iterdir() if is_zarr_run(x) or is_hdf5_run(x) or is_npz_run(x))
        if not is_url(p) and q.is_dir()
        else []
    )
    hint = f" It holds runs: {runs}; pass one as run_id." if runs else ""
    raise FileNotFoundError(f"No probing run at {p}.{hint}")
