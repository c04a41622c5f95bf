"""Hydra multirun support: a callback that writes a summary table of the sweep's runs at the end."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def summarize_sweep(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per completed or incomplete run under ``sweep_dir`` (and its probe results, if any)."""
    from probing.storage.base import open_run

    rows = []
    for path in sorted(Path(sweep_dir).rglob("*")):
        if not path.is_dir():
            continue
        try:
            reader = open_run(path, allow_partial=True)
        except (FileNotFoundError, OSError):
            continue
        except Exception as exc:  # noqa: BLE001 - a broken run is reported, not fatal to the summary
            rows.append({"run": str(path), "error": str(exc)})
            continue
        meta = reader.metadata
        total = meta.get("stats", {}).get("total", {})
        row: dict[str, Any] = {
            "run": str(path.relative_to(sweep_dir)),
            "overrides": " ".join(meta.get("overrides", [])),
            "model": meta.get("model", {}).get("name_or_path"),
            "strategy": meta.get("strategy", {}).get("name"),
            "layers": ",".join(meta.get("layers", [])),
            "examples": meta.get("dataset", {}).get("n_examples"),
            "completed": meta.get("completed"),
            "seconds": total.get("seconds"),
            "tokens_per_s": total.get("real_tokens_per_s"),
        }
        for report_file in sorted((path / "probes").rglob("probes_*.json")):
            from probing.probes.results import load_report

            for r in load_report(report_file).results:  # best layer per label and method
                key = f"best {r.label} ({r.method})"
                if not math.isfinite(r.score):
                    continue
                if key not in row or r.score > row[key][1]:
                    row[key] = (r.layer, round(float(r.score), 4))
        rows.append(row)
    return rows


def plot_sweep(sweep_dir: str | Path) -> Path | None:
    """One plot of every job's probe curves (``summary.png``): a line per job, named by its overrides."""
    from probing.probes.plot import plot_reports
    from probing.probes.results import load_report
    from probing.storage.base import open_run

    reports, names = [], []
    for path in sorted(Path(sweep_dir).iterdir()):
        files = sorted((path / "probes").rglob("probes_*.json")) if path.is_dir() else []
        if not files:
            continue
        try:
            with open_run(path, allow_partial=True) as reader:
                overrides = " ".join(reader.metadata.get("overrides", [])) or path.name
        except (FileNotFoundError, OSError):
            continue
        reports.append(load_report(files[-1]))  # the job's latest report
        names.append(f"{path.name}: {overrides}")
    if not reports:
        return None
    return plot_reports(reports, Path(sweep_dir) / "summary.png", names=names, title="Probe accuracy by layer, per job")


def write_summary(sweep_dir: str | Path) -> Path | None:
    """Write ``summary.csv`` and ``summary.md`` (and ``summary.png`` when jobs were probed) into the sweep
    folder; return the CSV path."""
    rows = summarize_sweep(sweep_dir)
    if not rows:
        return None
    rows = [{k: f"{v[1]} @ {v[0]}" if isinstance(v, tuple) else v for k, v in r.items()} for r in rows]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    out = Path(sweep_dir) / "summary.csv"
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    (Path(sweep_dir) / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot = plot_sweep(sweep_dir)
    print(f"sweep summary: {out}" + (f", {plot}" if plot else ""))
    return out


class SweepSummary(Callback):
    """Hydra callback: after all jobs of a multirun, summarize the runs of the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        write_summary(config.hydra.sweep.dir)
