"""Probes per layer: does a layer of a stored run encode a label, beyond what baselines explain?

`probe_run` trains a linear probe per layer and label field (scikit-learn, or all layers at once
in torch), with a majority-class baseline, a control task (selectivity), a bootstrap CI and
macro-F1, and writes a CSV/JSON table and a PNG plot; `format_table` prints a short table,
`plot_reports` compares several runs, `probe_main` is ``python -m probing probe``.

Names are imported lazily: ``import probing.probes`` loads neither scikit-learn, torch nor matplotlib.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "probe_run": "probing.probes.run",
    "parse_methods": "probing.probes.run",
    "probe_main": "probing.probes.cli",
    "ProbeReport": "probing.probes.results",
    "ProbeResult": "probing.probes.results",
    "load_report": "probing.probes.results",
    "format_table": "probing.probes.report",
    "write_report": "probing.probes.report",
    "plot_reports": "probing.probes.plot",
    "control_labels": "probing.probes.control",
    "bootstrap_ci": "probing.probes.metrics",
    "accuracy": "probing.probes.metrics",
    "macro_f1": "probing.probes.metrics",
    "majority_baseline": "probing.probes.metrics",
    "make_folds": "probing.probes.data",
    "sklearn_fit_predict": "probing.probes.sklearn_probe",
    "torch_fit_predict": "probing.probes.torch_probe",
}

__all__ = [
    "ProbeReport",
    "ProbeResult",
    "accuracy",
    "bootstrap_ci",
    "control_labels",
    "format_table",
    "load_report",
    "macro_f1",
    "majority_baseline",
    "make_folds",
    "parse_methods",
    "plot_reports",
    "probe_main",
    "probe_run",
    "sklearn_fit_predict",
    "torch_fit_predict",
    "write_report",
]

if TYPE_CHECKING:
    from probing.probes.cli import probe_main
    from probing.probes.control import control_labels
    from probing.probes.data import make_folds
    from probing.probes.metrics import accuracy, bootstrap_ci, macro_f1, majority_baseline
    from probing.probes.plot import plot_reports
    from probing.probes.report import format_table, write_report
    from probing.probes.results import ProbeReport, ProbeResult, load_report
    from probing.probes.run import parse_methods, probe_run
    from probing.probes.sklearn_probe import sklearn_fit_predict
    from probing.probes.torch_probe import torch_fit_predict


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'probing.probes' has no attribute {name!r}")
