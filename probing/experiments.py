"""The experiment registry: one JSON line per finished run and per probe report, in the folder of the runs.

Every `DatasetRunner` run (the CLI's job among them) appends a ``run`` entry when it completes, and every
written probe report (`probing.probe_run`, ``python -m probing probe``) a ``probe`` entry, to the registry
of the folder that holds the run: ``<output_dir>/registry.jsonl`` (for ``ZarrStorage(root)``, ``root``).
``python -m probing runs FOLDER`` lists it with the runs found by scanning the folder (runs made before
the registry existed still show) and filters by model, label and date.

An entry (`SCHEMA` 1) is a JSON object: ``kind`` (run | probe), ``time`` (UTC), ``run_id``, ``path``,
``model`` (name or path, revision, type, dtype, weights fingerprint), ``layers``, ``strategy``, ``mode``,
``dataset`` (fingerprint, examples), ``identity`` (`probing.storage.identity`), ``versions`` (probing,
torch, transformers, ...), ``config`` (the CLI's, credentials redacted), ``git_commit`` of the caller's
working directory (None outside a git checkout) and, for a run, ``stats``; for a probe report, ``report``
(its files, methods, labels, rows) and ``figures``: per label and method the best layer with its score,
95% CI, control score and selectivity.

Concurrent writers: a line is appended with one ``write`` on a file opened ``O_APPEND``, under an
exclusive ``flock`` (several processes, several hosts on a filesystem with locks). A line torn by a
crash mid-write is skipped with a warning when read, and the next append starts on a fresh line.

On an fsspec URL (``s3://``, ``gs://``) a file cannot be appended to (objects are written whole), so
each entry is its own object, ``<root>/registry.d/<time>-<random>.json``: written whole, never rewritten,
so concurrent writers cannot lose each other's entries; reading lists the folder. The registry stays
with the runs it describes (a local file elsewhere would be lost with the machine that wrote it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import os
import secrets
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SCHEMA = 1
REGISTRY_FILE = "registry.jsonl"
REGISTRY_DIR = "registry.d"


def _is_url(path: str) -> bool:
    return "://" in path


def registry_path(root: str | os.PathLike[str]) -> str:
    """Where the registry of a folder of runs is: ``<root>/registry.jsonl``, or ``<root>/registry.d`` for a URL."""
    text = os.fspath(root)
    if _is_url(text):
        return f"{text.rstrip('/')}/{REGISTRY_DIR}"
    return str(Path(text) / REGISTRY_FILE)


def parent_of(run_path: str) -> str:
    """The folder holding a run (its registry's root)."""
    return run_path.rstrip("/").rsplit("/", 1)[0] if _is_url(run_path) else str(Path(run_path).parent)


def git_commit(cwd: str | None = None) -> str | None:
    """``git rev-parse HEAD`` of the working directory; None outside a checkout or without git (quietly)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or os.getcwd(), capture_output=True, text=True,
                             timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) >= 7 else None


def _jsonable(value: Any) -> Any:
    """JSON values: NaN and inf become None (JSON has no NaN), everything else as ``json`` writes it."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    try:
        return _jsonable(value.item())  # numpy scalars
    except AttributeError:
        return str(value)


# -- writing ---------------------------------------------------------------------------------------------
def append_entry(root: str | os.PathLike[str], entry: Mapping[str, Any]) -> str:
    """Append one entry to the registry of ``root``; returns where it went. Safe with concurrent writers."""
    record = {"schema": SCHEMA, "time": _now(), **_jsonable(dict(entry))}
    line = json.dumps(record, sort_keys=False, allow_nan=False)
    target = registry_path(root)
    if _is_url(target):
        from probing.storage.fs_options import url_to_fs

        fs, path = url_to_fs(target)
        name = f"{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%dT%H%M%S%fZ')}-{secrets.token_hex(4)}.json"
        fs.pipe_file(f"{path}/{name}", (line + "\n").encode())  # one whole object: never appended to, never torn
        return f"{target}/{name}"
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    data = (line + "\n").encode()
    fd = os.open(target, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        with _locked(fd):
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                data = b"\n" + data  # the last line was torn by a crash: start this one on its own line
            written = os.write(fd, data)  # one write, O_APPEND: the line lands whole at the end
            if written != len(data):
                raise OSError(f"short write to {target}: {written} of {len(data)} bytes")
    finally:
        os.close(fd)
    return target


@contextlib.contextmanager
def _locked(fd: int) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: O_APPEND alone
        yield
        return
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _run_fields(meta: Mapping[str, Any], path: str) -> dict[str, Any]:
    """What a run entry says about the run, from its stored metadata."""
    from probing.storage.identity import fingerprinted, run_identity

    model = dict(meta.get("model") or {})
    dataset = dict(meta.get("dataset") or {})
    return {
        "run_id": meta.get("run_id", path.rstrip("/").rsplit("/", 1)[-1]),
        "path": path,
        "created": meta.get("created"),
        "completed": bool(meta.get("completed")),
        "model": {k: model.get(k) for k in ("name_or_path", "revision", "model_type", "dtype", "weights",
                                             "weights_fingerprint", "tokenizer_fingerprint")},
        "layers": list(meta.get("layers") or []),
        "strategy": meta.get("strategy"),
        "mode": meta.get("mode", "pooled"),
        "max_length": meta.get("max_length"),
        "dataset": {k: dataset.get(k) for k in ("fingerprint", "n_examples", "text_field", "words_field")},
        "storage": meta.get("storage"),
        "identity": run_identity(dict(meta)) if fingerprinted(dict(meta)) else None,
        "versions": meta.get("versions"),
        "config": meta.get("config"),
        "overrides": meta.get("overrides"),
    }


def run_entry(meta: Mapping[str, Any], path: str, stats: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The registry entry of a finished run."""
    return {"kind": "run", **_run_fields(meta, path), "stats": dict(stats or meta.get("stats", {}).get("total", {})),
            "git_commit": git_commit()}


def record_run(root: str, path: str, stats: Mapping[str, Any] | None = None) -> str | None:
    """Append the entry of the run at ``path`` to ``root``'s registry; a failure is a warning, not an error
    (the run itself is stored)."""
    try:
        from probing.storage.base import open_run

        with open_run(path) as reader:
            meta = dict(reader.metadata)
        return append_entry(root, run_entry(meta, path, stats))
    except Exception as exc:  # noqa: BLE001 - the registry must never fail a run that is stored
        log.warning("could not record run %s in the registry of %s: %s", path, root, exc)
        return None


def probe_figures(report: Any) -> list[dict[str, Any]]:
    """Per label and method of a `ProbeReport`: the best layer, its score, 95% CI, control score, selectivity."""
    out = []
    for s in report.summary:
        best = next((r for r in report.results if r.label == s["label"] and r.method == s["method"]
                     and r.layer == s["best_layer"]), None)
        out.append({
            "label": s["label"],
            "method": s["method"],
            "metric": s.get("metric"),
            "best_layer": s["best_layer"],
            "best_layer_index": s.get("best_layer_index"),
            "score": None if best is None else best.score,
            "ci_low": None if best is None else best.ci_low,
            "ci_high": None if best is None else best.ci_high,
            "baseline": None if best is None else best.baseline,
            "control_score": None if best is None else best.control_score,
            "selectivity": None if best is None else best.selectivity,
            "expected_layer": s.get("expected_layer"),
        })
    return out


def probe_entry(report: Any, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The registry entry of a written probe report (with its run's fields when its metadata is given)."""
    run = _run_fields(meta, report.run_path) if meta else {"run_id": report.run_id, "path": report.run_path,
                                                            "model": {"name_or_path": report.model}}
    return {
        "kind": "probe",
        **run,
        "report": {"files": dict(report.files), "methods": list(report.methods),
                   "label_fields": list(report.label_fields), "n_rows": report.n_rows,
                   "layers": list(report.layers), "settings": dict(report.settings)},
        "figures": probe_figures(report),
        "git_commit": git_commit(),
    }


def record_probe_report(report: Any) -> str | None:
    """Append a written probe report to the registry of the folder holding its run (skipped when the report
    has no run path or no files); a failure is a warning."""
    if not report.run_path or not report.files:
        return None
    try:
        meta = None
        with contextlib.suppress(Exception):
            from probing.storage.base import open_run

            with open_run(report.run_path, allow_partial=True) as reader:
                meta = dict(reader.metadata)
        root = parent_of(report.run_path)
        if _is_url(root):
            from probing.storage.fs_options import bind, options_for

            if not options_for(root):  # the run was opened with its own storage_options: its folder shares them
                bind(root, options_for(report.run_path))
        return append_entry(root, probe_entry(report, meta))
    except Exception as exc:  # noqa: BLE001 - the report itself is written
        log.warning("could not record the probe report of %s in its registry: %s", report.run_path, exc)
        return None


# -- reading ---------------------------------------------------------------------------------------------
def read_entries(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every entry of ``root``'s registry, oldest first; a torn or unreadable line is skipped with a warning."""
    target = registry_path(root)
    if _is_url(target):
        return _read_objects(target)
    p = Path(target)
    if not p.is_file():
        return []
    out = []
    with p.open("rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                log.warning("%s line %d is not a whole JSON entry (torn by a crash mid-write?): skipped", p, number)
                continue
            if isinstance(entry, dict):
                out.append(entry)
    return out


def _read_objects(target: str) -> list[dict[str, Any]]:
    from probing.storage.fs_options import url_to_fs

    fs, path = url_to_fs(target)
    try:
        names = sorted(fs.ls(path, detail=False))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if not str(name).endswith(".json"):
            continue
        try:
            entry = json.loads(fs.cat_file(name))
        except (ValueError, OSError) as exc:
            log.warning("registry entry %s is unreadable (%s): skipped", name, exc)
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


__all__ = ["REGISTRY_FILE", "SCHEMA", "append_entry", "git_commit", "parent_of", "probe_entry", "probe_figures",
           "read_entries", "record_probe_report", "record_run", "registry_path", "run_entry"]
