"""NPZ storage: the seed's simple alternative. One ``.npz`` per flushed batch while running, one at the end.

Layout of a run folder::

    <run>/metadata.json                       run metadata (``completed`` set last)
    <run>/parts/a<attempt>-r<rank>/b<n>.npz   while running: each flush of a rank, written atomically
    <run>/activations.npz                     after finalize: the chunked layout's paths as keys
                                              (``layers/<key>``, ``examples/<field>``, ...)

It shares the run logic of the chunked backends (`ChunkedRunWriter`) through `NpzIO`. Finalize
holds the whole run in memory before writing it: use Zarr for runs larger than memory.
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
from probing.storage.base import Storage, check_can_write, check_resume, new_run_id, utc_now
from probing.storage.chunked import ArrayIO, ChunkedRunReader, ChunkedRunWriter
from probing.storage.zarr_store import STORAGE_DTYPES

RUN_FILE = "activations.npz"


def is_npz_run(path: str | Path) -> bool:
    meta = Path(path) / "metadata.json"
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


class NpzIO(ArrayIO):
    """`ArrayIO` over a run folder: parts are batch files, final arrays are held in memory until saved."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._pending: dict[str, dict[str, np.ndarray]] = {}
        self._mem: dict[str, list[np.ndarray]] = {}
        self._empty: dict[str, tuple[tuple[int, ...], Any]] = {}
        self._npz: Any = None

    # paths: "parts/<part>/<name...>" live in batch files; everything else in memory / activations.npz
    @staticmethod
    def _split(path: str) -> tuple[str, str] | None:
        if not path.startswith("parts/"):
            return None
        _, part, name = path.split("/", 2)
        return part, name

    def _files(self, part: str) -> list[Path]:
        return sorted((self.folder / "parts" / part).glob("b*.npz"))

    def _final(self) -> Any:
        if self._npz is None and (self.folder / RUN_FILE).exists():
            self._npz = np.load(self.folder / RUN_FILE, allow_pickle=False)
        return self._npz

    def get_meta(self) -> dict[str, Any]:
        return json.loads((self.folder / "metadata.json").read_text())

    def set_meta(self, meta: Mapping[str, Any]) -> None:
        if meta.get("completed") and self._mem:
            arrays = {k: self._concat(k) for k in self._mem}
            tmp = self.folder / ".activations.tmp.npz"
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, self.folder / RUN_FILE)
        _write_json(self.folder / "metadata.json", {**meta, "format": "probing-npz"})

    def get_attrs(self, group: str) -> dict[str, Any]:
        f = self.folder / group / "attrs.json"
        return json.loads(f.read_text()) if f.is_file() else {}

    def set_attrs(self, group: str, attrs: Mapping[str, Any]) -> None:
        (self.folder / group).mkdir(parents=True, exist_ok=True)
        _write_json(self.folder / group / "attrs.json", {**self.get_attrs(group), **attrs})

    def create(self, path: str, shape: tuple[int, ...], chunk_rows: int, dtype: Any, compress: bool) -> None:
        if self._split(path) is None:
            self._mem[path] = []
            self._empty[path] = (shape, dtype)

    def append(self, path: str, data: np.ndarray) -> None:
        split = self._split(path)
        if split is None:
            self._mem.setdefault(path, []).append(np.asarray(data))
            return
        part, name = split
        self._pending.setdefault(part, {})[name] = np.asarray(data)
        if name == "ids":  # the writer appends ids last: one batch file per flush, written atomically
            folder = self.folder / "parts" / part
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"b{len(self._files(part)):08d}.npz"
            tmp = folder / f".{target.name}.tmp"
            with open(tmp, "wb") as f:
                np.savez(f, **self._pending.pop(part))  # type: ignore[arg-type]
            os.replace(tmp, target)

    def _concat(self, path: str) -> np.ndarray:
        pieces = self._mem.get(path, [])
        if pieces:
            return np.concatenate(pieces)
        shape, dtype = self._empty.get(path, ((), np.float32))
        return np.zeros((0, *shape), dtype=dtype)

    def read(self, path: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        split = self._split(path)
        if split is not None:
            part, name = split
            pieces = []
            for f in self._files(part):
                with np.load(f) as z:
                    if name in z.files:
                        pieces.append(z[name])
            data = np.concatenate(pieces) if pieces else np.zeros(0)
        elif path in self._mem:
            data = self._concat(path)
        else:
            final = self._final()
            if final is None or path not in final.files:
                raise KeyError(path)
            data = final[path]
        return data[start:stop]

    def shape(self, path: str) -> tuple[int, ...]:
        return tuple(self.read(path).shape)

    def exists(self, path: str) -> bool:
        split = self._split(path)
        if split is not None:
            part, name = split
            return any(name in np.load(f).files for f in self._files(part)[:1])
        final = self._final()
        return path in self._mem or (final is not None and path in final.files)

    def native(self, path: str) -> Any:
        return self.read(path)

    def children(self, group: str) -> list[str]:
        if group == "parts":
            d = self.folder / "parts"
            return sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
        return []

    def arrays(self, group: str) -> list[str]:
        split = self._split(group + "/")
        if split is None:
            return []
        part, prefix = split
        files = self._files(part)[:1]
        return sorted(k[len(prefix) :] for f in files for k in np.load(f).files if k.startswith(prefix))

    def delete(self, group: str) -> None:
        if group == "parts":
            shutil.rmtree(self.folder / "parts", ignore_errors=True)

    def ensure_group(self, group: str) -> None:
        if group.startswith("parts"):
            (self.folder / group).mkdir(parents=True, exist_ok=True)

    def write_strings(self, path: str, values: Sequence[str]) -> None:
        self._mem[path] = [np.asarray(list(values), dtype=str)]


class NPZStorage(Storage):
    """Runs as folders of ``.npz`` files under ``root`` (float32 or float16)."""

    def __init__(self, root: str, *, dtype: str = "float32") -> None:
        super().__init__(root)
        if "://" in str(root):
            raise ConfigError("The NPZ storage writes local files only; use zarr for URLs.")
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
    ) -> ChunkedRunWriter:
        run_id = run_id or new_run_id()
        path = Path(self.run_path(run_id))
        meta = dict(metadata or {})
        meta.setdefault("storage", self.describe())
        io = NpzIO(path)
        if rank == 0:
            if is_npz_run(path):
                old = io.get_meta()
                check_can_write(str(path), bool(old.get("completed")), resume)
                if metadata is not None:
                    check_resume(old, meta)
                old["attempts"] = int(old.get("attempts", 0)) + 1
                meta = old
            else:
                if path.exists() and any(path.iterdir()):
                    raise ConfigError(f"{path} exists and is not a probing run; choose another run_id or folder.")
                (path / "parts").mkdir(parents=True, exist_ok=True)
                meta.update(run_id=run_id, completed=False, attempts=0, created=meta.get("created", utc_now()))
            io.set_meta(meta)
        else:
            meta = io.get_meta()
        # chunk_rows=1: every batch is flushed to its own file at once (files are the unit here)
        return ChunkedRunWriter(
            io,
            run_id,
            str(path),
            meta,
            rank=rank,
            world_size=world_size,
            dtype=self.dtype,
            chunk_rows=1,
            compress=False,
            merge_block_bytes=2**62,
        )


def open_npz_run(path: str, allow_partial: bool = False) -> ChunkedRunReader:
    return ChunkedRunReader(NpzIO(Path(path)), path, allow_partial)
