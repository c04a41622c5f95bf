"""Probe curves of several runs on one plot: find each run's stored probe report and draw them together."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from probing.errors import ConfigError, ProbingError
from probing.probes.results import ProbeReport, load_report


def find_report(run: str | os.PathLike[str] | ProbeReport) -> ProbeReport:
    """The probe report of ``run``: a report itself, its JSON file, a folder holding one, or a run folder (its
    newest report under ``<run>/probes/``)."""
    if isinstance(run, ProbeReport):
        return run
    p = Path(run)
    if p.is_file() or (p.is_dir() and list(p.glob("probes_*.json"))):
        return load_report(p)
    found = sorted(p.glob("probes/*/probes_*.json"), key=lambda f: (f.parent.name, f.name))
    if not found:
        raise ProbingError(
            f"No probe report in {p} (looked for probes/*/probes_*.json). Probe the run first: "
            f"python -m probing probe {p}"
        )
    return load_report(found[-1])


def only_labels(report: ProbeReport, labels: Sequence[str]) -> ProbeReport:
    """``report`` restricted to ``labels`` (each must be one of its label fields)."""
    unknown = [lab for lab in labels if lab not in report.label_fields]
    if unknown:
        raise ConfigError(f"Label(s) {unknown} not in the report of {report.run_id}; it has {report.label_fields}.")
    return dataclasses.replace(report, label_fields=[lab for lab in report.label_fields if lab in labels],
                               results=[r for r in report.results if r.label in labels])


def plot_curves(runs: Sequence[str | os.PathLike[str] | ProbeReport], out: str | os.PathLike[str] | IO[bytes], *,
                labels: Sequence[str] | None = None, names: Sequence[str] | None = None,
                title: str | None = None) -> Path:
    """The probe scores by layer of every run in ``runs`` on one PNG (one panel per label, one line per run and
    method, with CIs, control task, baselines, best and expected layers: `probing.probes.plot.plot_reports`)."""
    from probing.probes.plot import plot_reports

    if not runs:
        raise ConfigError("plot_curves needs at least one run or report.")
    reports = [find_report(r) for r in runs]
    if labels:
        reports = [only_labels(r, labels) for r in reports]
    return plot_reports(reports, out, names=names, title=title)
