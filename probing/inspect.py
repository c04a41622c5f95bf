"""``python -m probing info <run>``: what a run holds, for a human (also for incomplete runs)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _arrays_of(p: Path) -> tuple[dict[str, Any], list[tuple[str, tuple[int, ...], str, int]]]:
    """Metadata and (name, shape, dtype, bytes on disk) of every stored array of a run (any backend)."""
    from probing.storage.registry import backend_of

    backend = backend_of(str(p))
    if backend is None:
        raise FileNotFoundError(f"No probing run at {p}.")
    store = backend.open_existing(str(p))
    try:
        meta = dict(store.get_attrs("").get("probing", {}))
        arrays: list[tuple[str, tuple[int, ...], str, int]] = []

        def walk(group: str) -> None:
            for name in store.arrays(group):
                path = f"{group}/{name}" if group else name
                dtype = str(store.read(path, 0, 0).dtype)
                arrays.append((path, store.shape(path), "str" if dtype == "object" else dtype,
                               store.stored_bytes(path) or 0))
            for sub in store.groups(group):
                walk(f"{group}/{sub}" if group else sub)

        walk("")
        return meta, arrays
    finally:
        store.close()


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
