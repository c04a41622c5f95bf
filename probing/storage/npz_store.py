"""NPZ storage: the simple alternative. One ``.npz`` per batch while running, one at the end.

Layout of a run folder::

    <root>/<run_id>/metadata.json         run metadata (``completed`` set last)
    <root>/<run_id>/parts/a<attempt>-r<rank>/b<batch>.npz   while running
    <root>/<run_id>/activations.npz       after finalize: ``layer:<key>`` [n, dim], ``example:<field>`` [n]

Finalize loads every part into memory: use Zarr for runs larger than memory.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from probing.errors import ConfigError
from probing.faults import fault_point
from probing.storage.base import (
    RunReader,
    RunWriter,
    Storage,
    check_batch,
    check_can_write,
    check_resume,
    new_run_id,
    total_progress,
    utc_now,
)
from probing.storage.zarr_store import STORAGE_DTYPES, _check_exactly_once


def is_npz_run(path: Path) -> bool:
    meta = path / "metadata.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("format") == "probing-npz"
    except (OSError, ValueError):
        return False


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


class NPZStorage(Storage):
    """Runs as folders of ``.npz`` files under ``root`` (float32 or float16)."""

    def __init__(self, root: str, *, dtype: str = "float32") -> None:
        super().__init__(root)
        if dtype not in STORAGE_DTYPES:
            raise ConfigError(f"Storage dtype {dtype!r} is not supported; expected one of {STORAGE_DTYPES}.")
        self.dtype = np.dtype(dtype)

    def describe(self) -> dict[str, Any]:
        return {"backend": "npz", "dtype": str(self.dtype)}

    def open_run(
        self,
        run_id: str | None = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
        resume: bool = False,
    ) -> NPZRunWriter:
        run_id = run_id or new_run_id()
        path = Path(self.run_path(run_id))
        meta = dict(metadata or {})
        meta.setdefault("storage", self.describe())
        meta_file = path / "metadata.json"
        if rank == 0:
            if is_npz_run(path):
                old = json.loads(meta_file.read_text())
                check_can_write(str(path), bool(old.get("completed")), resume)
                if metadata is not None:
                    check_resume(old, meta)
                old["attempts"] = int(old.get("attempts", 0)) + 1
                meta = old
            else:
                if path.exists() and any(path.iterdir()):
                    raise ConfigError(f"{path} exists and is not a probing run; choose another run_id or folder.")
                (path / "parts").mkdir(parents=True, exist_ok=True)
                meta.update(
                    format="probing-npz",
                    run_id=run_id,
                    completed=False,
                    attempts=0,
                    created=meta.get("created", utc_now()),
                )
            _write_json(meta_file, meta)
        else:
            meta = json.loads(meta_file.read_text())
        return NPZRunWriter(self, run_id, path, meta, rank=rank, world_size=world_size)


class NPZRunWriter(RunWriter):
    """Writes each batch to its own file (atomically renamed), merged by `finalize`."""

    def __init__(
        self, storage: NPZStorage, run_id: str, path: Path, meta: dict[str, Any], *, rank: int, world_size: int
    ) -> None:
        self.storage = storage
        self.run_id = run_id
        self.path = str(path)
        self._root = path
        self.meta = meta
        self.rank = rank
        self.world_size = world_size
        self.part = path / "parts" / f"a{int(meta.get('attempts', 0)):03d}-r{rank:05d}"
        self.part.mkdir(parents=True, exist_ok=True)
        self._keys: list[str] = list(meta.get("layers", []))
        self.rows_written = 0

    def append(self, batch_id: int, activations: Mapping[str, np.ndarray], metadata: Mapping[str, Any]) -> None:
        ids = check_batch(activations, metadata)
        if len(ids) == 0:
            return
        arrays = {f"layer:{k}": np.asarray(v, dtype=self.storage.dtype) for k, v in activations.items()}
        for k in activations:
            if k not in self._keys:
                self._keys.append(k)
        counts = metadata.get("token_counts")
        arrays["token_counts"] = np.asarray(counts if counts is not None else np.zeros(len(ids)), dtype=np.int32)
        arrays["ids"] = ids
        target = self.part / f"b{int(batch_id):08d}.npz"
        tmp = self.part / f".b{int(batch_id):08d}.tmp.npz"
        np.savez(tmp, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, target)
        self.rows_written += len(ids)
        fault_point("after_flush")

    def close(self) -> None:
        pass

    def record_progress(self, progress: Mapping[str, Any]) -> None:
        _write_json(self.part / "progress.json", {**progress, "rows_stored": self.rows_written, "updated": utc_now()})

    def _files(self) -> list[Path]:
        return sorted((self._root / "parts").glob("*/b*.npz"))

    def done_ids(self) -> np.ndarray:
        found = [np.load(f)["ids"] for f in self._files()]
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)

    def finalize(
        self, example_metadata: Mapping[str, Sequence[Any]] | None = None, *, stats: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        meta_file = self._root / "metadata.json"
        meta = json.loads(meta_file.read_text())
        keys = list(meta.get("layers") or self._keys)
        loaded = [dict(np.load(f)) for f in self._files()]
        all_ids = np.concatenate([d["ids"] for d in loaded]) if loaded else np.zeros(0, dtype=np.int64)
        n = int(meta.get("dataset", {}).get("n_examples", int(all_ids.max()) + 1 if len(all_ids) else 0))
        _check_exactly_once(all_ids, n, self.path)
        order = np.argsort(all_ids, kind="stable")
        out: dict[str, np.ndarray] = {}
        for key in keys:
            if loaded:
                out[f"layer:{key}"] = np.concatenate([d[f"layer:{key}"] for d in loaded])[order]
            else:
                out[f"layer:{key}"] = np.zeros((0, int(meta.get("hidden_size") or 0)), dtype=self.storage.dtype)
        counts = np.concatenate([d["token_counts"] for d in loaded])[order] if loaded else np.zeros(0, np.int32)
        out["example:token_counts"] = counts
        fields = ["token_counts"]
        for field, values in (example_metadata or {}).items():
            if len(values) != n:
                raise ConfigError(f"Metadata field {field!r} has {len(values)} values for {n} examples.")
            arr = np.asarray(values)
            if arr.dtype.kind not in "iufbU":
                arr = np.asarray([json.dumps(v) for v in values])
                meta.setdefault("json_fields", []).append(field)
            out[f"example:{field}"] = arr
            fields.append(field)
        tmp = self._root / ".activations.tmp.npz"
        np.savez(tmp, **out)  # type: ignore[arg-type]
        os.replace(tmp, self._root / "activations.npz")
        meta.update(layers=keys, example_fields=fields, completed=True, finished=utc_now())
        meta.setdefault("dataset", {})["n_examples"] = n
        progress = {f.parent.name: json.loads(f.read_text()) for f in (self._root / "parts").glob("*/progress.json")}
        meta["stats"] = {"total": total_progress(progress), **(stats or {}), "parts": progress}
        fault_point("finalize")
        _write_json(meta_file, meta)  # the completed flag goes last, then the parts are clean-up
        shutil.rmtree(self._root / "parts", ignore_errors=True)
        return meta


class NPZRunReader(RunReader):
    """Reads an NPZ run written by `NPZRunWriter`."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.metadata = json.loads((Path(path) / "metadata.json").read_text())

    def _npz(self) -> Any:
        return np.load(Path(self.path) / "activations.npz")

    def activations(self, layer: int | str) -> np.ndarray:
        return np.asarray(self._npz()[f"layer:{self.layer_key(layer)}"])

    def example_metadata(self, field: str) -> np.ndarray:
        if field not in self.example_fields:
            raise KeyError(f"No per-example field {field!r}; stored: {self.example_fields}.")
        values = self._npz()[f"example:{field}"]
        if field in self.metadata.get("json_fields", []):
            return np.asarray([json.loads(v) for v in values], dtype=object)
        return np.asarray(values)
