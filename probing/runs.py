"""``python -m probing runs [FOLDER]``: the runs of a folder, with their content identity and their best
probe figures, as a table; ``--model``, ``--label`` and ``--since`` filter it.

Two sources, merged by run path: the runs found by scanning the folder (every run, also those made before
the experiment registry existed) and the folder's registry (`probing.experiments`: runs and probe reports,
also runs in a bucket, which are not scanned).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
from typing import Any

from probing.storage.identity import StoredRun, stored_runs


def _short_layers(layers: list[str]) -> str:
    return ",".join(layers) if len(layers) <= 4 else f"{layers[0]}..{layers[-1]} ({len(layers)})"


def _strategy(strategy: Any) -> str:
    strategy = dict(strategy or {})
    name = strategy.pop("name", "?")
    return str(name) + (f" {strategy}" if strategy else "")


def run_rows(folder: str) -> list[dict[str, Any]]:
    """One row per run directly inside ``folder``: name, state, identity, source key and what it holds."""
    rows = []
    for run in stored_runs(folder):
        meta = run.meta
        layers = meta.get("layers", [])
        rows.append({
            "run": meta.get("run_id", run.path.rsplit("/", 1)[-1]),
            "state": "completed" if run.completed else "incomplete",
            "identity": run.identity or "-",
            "source": run.source or "-",
            "model": (meta.get("model") or {}).get("name_or_path"),
            "strategy": _strategy(meta.get("strategy")),
            "layers": _short_layers(layers),
            "examples": (meta.get("dataset") or {}).get("n_examples"),
            "dtype": (meta.get("storage") or {}).get("dtype"),
            "from": _derived(run),
        })
    return rows


def _derived(run: StoredRun) -> str:
    info = run.meta.get("derived_from")
    return f"{info['reused']} of {info['source'].rsplit('/', 1)[-1]}" if info else ""


def _fmt(value: Any) -> str:
    return "nan" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"


def _figure_text(fig: dict[str, Any]) -> str:
    """``tense 0.912 [0.89,0.93] @blocks.3 sel 0.41``."""
    ci = f" [{_fmt(fig.get('ci_low'))},{_fmt(fig.get('ci_high'))}]" if fig.get("ci_low") is not None else ""
    sel = f" sel {_fmt(fig.get('selectivity'))}" if fig.get("selectivity") is not None else ""
    return f"{fig['label']} {_fmt(fig.get('score'))}{ci} @{fig.get('best_layer')}{sel}"


def _date(value: Any) -> str:
    return str(value or "")[:19].replace("T", " ")


def registry_rows(folder: str) -> list[dict[str, Any]]:
    """The scanned runs and the registry's runs of ``folder``, one row each (newest probe figures attached),
    with the fields the filters use (``_model``, ``_labels``, ``_time``)."""
    from probing.experiments import read_entries

    scanned = {r["run"]: r for r in run_rows(folder) if "://" not in folder}
    entries = read_entries(folder)
    rows: dict[str, dict[str, Any]] = {}
    for run_id, row in scanned.items():
        rows[run_id] = {**row, "created": "", "probes": "", "_labels": set(), "_time": ""}
    for e in entries:
        run_id = str(e.get("run_id"))
        model = (e.get("model") or {}).get("name_or_path")
        found = rows.get(run_id)
        if found is not None:
            row = found
        else:  # only in the registry: a run in a bucket, or one moved or deleted since
            layers = list(e.get("layers") or [])
            row = rows[run_id] = {
                "run": run_id, "state": ("completed" if e.get("completed") else "incomplete") + " (registry)",
                "identity": e.get("identity") or "-", "source": "-", "model": model,
                "strategy": _strategy(e.get("strategy")), "layers": _short_layers(layers),
                "examples": (e.get("dataset") or {}).get("n_examples"),
                "dtype": (e.get("storage") or {}).get("dtype"), "from": "", "created": "", "probes": "",
                "_labels": set(), "_time": "",
            }
        row["created"] = row["created"] or _date(e.get("created") or e.get("time"))
        row["_time"] = row["_time"] or str(e.get("created") or e.get("time") or "")
        if e.get("kind") == "probe":
            figures = list(e.get("figures") or [])
            row["_labels"] |= {str(f.get("label")) for f in figures}
            row["probes"] = "; ".join(_figure_text(f) for f in figures)  # the newest report's figures
    for row in rows.values():
        if not row["created"]:
            row["_time"] = ""
    return list(rows.values())


def _since(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError as exc:
        from probing.errors import ConfigError

        raise ConfigError(f"--since {text!r}: expected a date (2026-12-01) or a time (2026-12-01T09:30).") from exc
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def _time_of(row: dict[str, Any]) -> dt.datetime | None:
    text = row.get("_time") or ""
    try:
        when = dt.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)


def filter_rows(rows: list[dict[str, Any]], *, model: str | None = None, label: str | None = None,
                since: str | None = None) -> list[dict[str, Any]]:
    """Rows whose model contains ``model`` (case-insensitive), that were probed for ``label``, created at or
    after ``since`` (a run without a known time is left out by ``since``)."""
    start = _since(since) if since else None
    out = []
    for r in rows:
        if model and model.lower() not in str(r.get("model") or "").lower():
            continue
        if label and label not in r.get("_labels", set()):
            continue
        if start is not None:
            when = _time_of(r)
            if when is None or when < start:
                continue
        out.append(r)
    return out


def format_rows(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no runs"
    cols = [c for c in rows[0] if not c.startswith("_")]
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def runs_main(argv: list[str]) -> int:
    """Entry of ``python -m probing runs``."""
    from probing.errors import ProbingError

    ap = argparse.ArgumentParser(prog="probing runs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", default="runs", help="a folder or URL of runs (default: runs)")
    ap.add_argument("--model", default=None, help="only runs whose model name or path contains this")
    ap.add_argument("--label", default=None, help="only runs probed for this label (from the registry)")
    ap.add_argument("--since", default=None, help="only runs created on or after this date (2026-12-01)")
    ap.add_argument("--storage-options", default=None, help="fsspec options of a URL folder, as JSON")
    a = ap.parse_args(argv)
    try:
        from probing.storage.fs_options import bind, parse_options

        bind(a.folder, parse_options(a.storage_options))
        rows = filter_rows(registry_rows(a.folder), model=a.model, label=a.label, since=a.since)
    except ProbingError as exc:
        print(f"probing: error: {exc}")
        return 2
    print(format_rows(rows))
    print("identity: a hash of what determines the values (weights, tokenizer, revision, dtypes, layers, strategy, "
          "max length, data); runs of one source share model and data (docs/storage.md). probes: the newest "
          "report's best layer per label (score [95% CI] @layer, selectivity); registry: <folder>/registry.jsonl.")
    return 0
