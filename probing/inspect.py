"""``python -m probing info <run>``: what a run holds, for a human (also for incomplete runs)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def human_bytes(n: float) -> str:
    """``1.5 MiB``: a size for people."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _arrays_of(p: str | Path) -> tuple[dict[str, Any], list[tuple[str, tuple[int, ...], str, int]]]:
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
    """A readable summary of a run folder (or URL): metadata, progress and the stored arrays with sizes."""
    p = _location(path)
    lines: list[str] = []
    meta, arrays = _arrays_of(p)
    model = meta.get("model", {})
    ds = meta.get("dataset", {})
    lines.append(f"run         {meta.get('run_id', str(p).rstrip('/').rsplit('/', 1)[-1])}  ({_state(p, meta)})")
    lines.append(f"path        {p}")
    backend = model.get("backend") or "torch"  # runs stored before the JAX backend ran torch
    kind = f"{model.get('model_type')}, {model.get('dtype')}, {backend}"
    lines.append(f"model       {model.get('name_or_path')} ({kind})")
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
    lines.append(f"arrays      {len(arrays)}, {human_bytes(sum(a[3] for a in arrays))} on disk")
    for name, shape, dtype, size in sorted(arrays):
        lines.append(f"  {name:40s} {str(shape):18s} {dtype:10s} {human_bytes(size)}")
    return "\n".join(lines)


def _location(path: str | os.PathLike[str]) -> str | Path:
    """A local run as a `Path`; a URL as it is (``Path`` would fold ``s3://`` into ``s3:/``)."""
    from probing.storage.base import is_url, strip_file_url

    text = strip_file_url(os.fspath(path))
    return text if is_url(text) else Path(text)


def _state(p: str | Path, meta: dict[str, Any]) -> str:
    """``completed``, ``completed, DAMAGED: ...`` (shapes and missing chunks: cheap), or ``INCOMPLETE``
    with the job writing it, if one holds its lease."""
    from probing.storage.lease import DEFAULT_TIMEOUT, _Files, _stale, describe_holder, lease_path

    if not meta.get("completed"):
        holder = _Files(lease_path(str(p))).read()
        if holder and not _stale(holder, DEFAULT_TIMEOUT):
            return f"INCOMPLETE, being written by {describe_holder(holder, DEFAULT_TIMEOUT)}"
        return "INCOMPLETE" + (" (its last writer's lease is stale: resume=true takes it over)" if holder else "")
    problems = quick_check(p)
    return "completed" if not problems else f"completed, DAMAGED: {'; '.join(problems[:3])}"


def quick_check(path: str | os.PathLike[str]) -> list[str]:
    """Shapes against the layout and chunks present: what can be told without reading the data."""
    from probing.errors import DamagedRunError
    from probing.storage.base import open_run
    from probing.storage.verify import expected_lengths

    try:
        reader = open_run(path)
    except DamagedRunError as exc:
        return [str(exc).split(": ", 1)[-1]]
    with reader:
        return [f"{name}: rows {a}..{b - 1}: the chunk is missing"
                for name in expected_lengths(reader) for a, b in reader.store.missing_chunks(name)]


def verify(path: str | os.PathLike[str]) -> int:
    """``info --verify``: read every chunk of a completed run; print what is damaged; 0 if intact, 1 if not."""
    import time

    from probing.errors import DamagedRunError
    from probing.storage.base import open_run
    from probing.storage.verify import expected_lengths

    t0 = time.perf_counter()
    try:
        reader = open_run(path)
    except DamagedRunError as exc:
        print(f"probing: {exc}")
        return 1
    with reader:
        problems = reader.verify()
        size = sum(reader.store.stored_bytes(n) or 0 for n in expected_lengths(reader))
    seconds = time.perf_counter() - t0
    if problems:
        print(f"probing: the run at {path} is DAMAGED ({len(problems)} problem(s)):")
        for line in problems:
            print(f"  {line}")
        print("Recompute the run (a new run_id) to recover; the intact layers still read.")
        return 1
    print(f"probing: {path} verified: every chunk present and matching its checksum ({human_bytes(size)} read in "
          f"{seconds:.1f} s)")
    return 0


def info_main(args: list[str]) -> int:
    """``python -m probing info <run path> [--json] [--verify] [--storage-options JSON]``."""
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m probing info <run path or URL> [--json] [--verify] [--storage-options JSON]\n"
              "  --verify  read every chunk and check it (checksums, missing chunks, shapes)\n"
              "  --storage-options  fsspec options of a URL, as JSON (endpoint, credentials)")
        return 0 if args else 2
    from probing.errors import ProbingError
    from probing.storage.fs_options import bind, parse_options

    args = list(args)
    if "--storage-options" in args:
        i = args.index("--storage-options")
        if i + 1 >= len(args):
            print("probing: error: --storage-options needs a JSON object")
            return 2
        text = args[i + 1]
        del args[i : i + 2]
        try:
            bind(str(args[0]), parse_options(text))
        except ProbingError as exc:
            print(f"probing: error: {exc}")
            return 2

    try:
        if "--verify" in args:
            return verify(args[0])
        if "--json" in args:
            print(json.dumps(_arrays_of(_location(args[0]))[0], indent=2, default=str))
        else:
            print(describe_run(args[0]))
    except (FileNotFoundError, ProbingError) as exc:
        print(f"probing: error: {exc}")
        return 2
    return 0
