"""``python -m probing runs [FOLDER]``: the runs of a folder, with their content identity, as a table."""

from __future__ import annotations

import argparse
from typing import Any

from probing.storage.identity import StoredRun, stored_runs


def run_rows(folder: str) -> list[dict[str, Any]]:
    """One row per run directly inside ``folder``: name, state, identity, source key and what it holds."""
    rows = []
    for run in stored_runs(folder):
        meta = run.meta
        strategy = dict(meta.get("strategy") or {})
        name = strategy.pop("name", "?")
        layers = meta.get("layers", [])
        rows.append({
            "run": meta.get("run_id", run.path.rsplit("/", 1)[-1]),
            "state": "completed" if run.completed else "incomplete",
            "identity": run.identity or "-",
            "source": run.source or "-",
            "model": (meta.get("model") or {}).get("name_or_path"),
            "strategy": name + (f" {strategy}" if strategy else ""),
            "layers": ",".join(layers) if len(layers) <= 4 else f"{layers[0]}..{layers[-1]} ({len(layers)})",
            "examples": (meta.get("dataset") or {}).get("n_examples"),
            "dtype": (meta.get("storage") or {}).get("dtype"),
            "from": _derived(run),
        })
    return rows


def _derived(run: StoredRun) -> str:
    info = run.meta.get("derived_from")
    return f"{info['reused']} of {info['source'].rsplit('/', 1)[-1]}" if info else ""


def format_rows(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no runs"
    cols = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in cols) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def runs_main(argv: list[str]) -> int:
    """Entry of ``python -m probing runs``."""
    ap = argparse.ArgumentParser(prog="probing runs", description=__doc__)
    ap.add_argument("folder", nargs="?", default="runs", help="a folder of runs (the output_dir; default: runs)")
    a = ap.parse_args(argv)
    print(format_rows(run_rows(a.folder)))
    print("identity: a hash of what determines the values (weights, tokenizer, revision, dtypes, layers, strategy, "
          "max length, data); runs of one source share model and data (docs/storage.md).")
    return 0
