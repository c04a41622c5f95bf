"""``python -m probing info <run>``: what a run holds, for a human (also for incomplete runs)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _arrays_of(p: Path) -> tuple[dict[str, Any], list[tuple[str, tuple[int, ...], str, int]]]:
    """Metadata and (name, shape, dtype, bytes on disk) of every stored array of a run folder."""
    from probing.storage.hdf5_store import PARTS_FILE, RUN_FILE, is_hdf5_run
    from probing.storage.npz_store import is_npz_run
    from probing.storage.zarr_store import is_zarr_run

    arrays: list[tuple[str, tuple[int, ...], str, int]] = []
    if is_zarr_run(p):
        import zarr

        group: Any = zarr.open_group(str(p), mode="r")

        def walk(g: Any, prefix: str) -> None:
            for name, arr in g.arrays():
                arrays.append((prefix + name, tuple(arr.shape), str(arr.dtype), _size(p / prefix / name)))
            for name, sub in g.groups():
                walk(sub, f"{prefix}{name}/")

        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # probes/ (reports beside the run) is no zarr node
            walk(group, "")
        return dict(group.attrs["probing"]), arrays
    if is_hdf5_run(p):
        import h5py

        meta: dict[str, Any] = {}
        for fname in (RUN_FILE, PARTS_FILE):
            if not (p / fname).exists():
                continue
            with h5py.File(p / fname, "r") as f:
                if fname == RUN_FILE:
                    meta = json.loads(f.attrs["probing"])
                f.visititems(
                    lambda name, obj: (
                        arrays.append((name, obj.shape, str(obj.dtype), obj.id.get_storage_size()))
                        if isinstance(obj, h5py.Dataset)
                        else None
                    )
                )
        return meta, arrays
    if is_npz_run(p):
        meta = json.loads((p / "metadata.json").read_text())
        npz = p / "activations.npz"
        if npz.exists():
            with np.load(npz) as data:
                arrays.extend((k, data[k].shape, str(data[k].dtype), data[k].nbytes) for k in data.files)
        for part in sorted((p / "parts").glob("*")) if (p / "parts").is_dir() else []:
            files = list(part.glob("b*.npz"))
            arrays.append((f"parts/{part.name} ({len(files)} batch files)", (), "", sum(_size(f) for f in files)))
        return meta, arrays
    raise FileNotFoundError(f"No probing run at {p}.")


def describe_run(path: str | os.PathLike[str]) -> str:
    """A readable summary of a run folder: metadata, progress and the stored arrays with sizes."""
    p = Path(path)
    lines: list[str] = []
    meta, arrays = _arrays_of(p)
    model = meta.get("model", {})
    ds = meta.get("dataset", {})
    lines.append(
        f"run         {meta.get('run_id', p.name)}  ({'completed' if meta.get('completed') else 'INCOMPLETE'})"
    )
    lines.append(f"path        {p}")
    lines.append(f"model       {model.get('name_or_path')} ({model.get('model_type')}, {model.get('dtype')})")
    lines.append(f"strategy    {meta.get('strategy')}   mode {meta.get('mode', 'pooled')}")
    lines.append(f"layers      {', '.join(meta.get('layers', []))}")
    lines.append(f"dataset     {ds.get('n_examples')} examples, fingerprint {ds.get('fingerprint')}")
    lines.append(f"max_length  {meta.get('max_length')}   storage {meta.get('storage')}")
    lines.append(
        f"created     {meta.get('created')}   finished {meta.get('finished', '-')}   "
        f"attempts {int(meta.get('attempts', 0)) + 1}"
    )
    if meta.get("stats"):
        lines.append(f"stats       {json.dumps(meta['stats'])}")
    lines.append(f"versions    {', '.join(f'{k} {v}' for k, v in meta.get('versions', {}).items())}")
    lines.append(f"arrays      {len(arrays)}, {_human(sum(a[3] for a in arrays))} on disk")
    for name, shape, dtype, size in sorted(arrays):
        lines.append(f"  {name:40s} {str(shape):18s} {dtype:10s} {_human(size)}")
    return "\n".join(lines)


def info_main(args: list[str]) -> int:
    """``python -m probing info <run path> [--json]``."""
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m probing info <run path> [--json]")
        return 0 if args else 2
    try:
        if "--json" in args:
            print(json.dumps(_arrays_of(Path(args[0]))[0], indent=2, default=str))
        else:
            print(describe_run(args[0]))
    except FileNotFoundError as exc:
        print(f"probing: error: {exc}")
        return 2
    return 0
