"""``logger=mlflow``: a job's config, probe scores and report files in an MLflow tracking store.

Optional (``pip install 'probing[mlflow]'``) and offline: the default tracking URI is a sqlite file
beside the runs (``sqlite:////abs/<output_dir>/mlflow.db``) and artifacts go to an explicit local folder
(``<output_dir>/mlartifacts``); nothing is sent over a network unless ``mlflow.tracking_uri`` says so.
One MLflow run per job:

- params: the job's config flattened to dotted keys (``model.name_or_path``, ``probe.k_folds``, ...;
  credentials redacted), plus the run's id, path and identity;
- metrics, one series per label and method (``<label>/<method>/score``, ``.../ci_low``, ``.../ci_high``,
  ``.../control_score``, ``.../selectivity``), with ``step`` = the layer's index as transformers counts
  ``hidden_states`` (embeddings 0, block ``i`` is ``i + 1``; a layer without one: its place in the report);
- artifacts: every file of the report's folder (CSV, JSON, PNG, and report.html when there is one).

MLflow's folder store (``./mlruns``) is refused by default since MLflow 3.x, hence sqlite.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from probing.errors import ConfigError

#: MLflow's limits (mlflow.utils.validation): params per batch, metrics per batch, characters of a param value
MAX_PARAMS, MAX_METRICS, MAX_VALUE = 100, 1000, 6000
FIGURES = ("score", "ci_low", "ci_high", "control_score", "selectivity")


def check_available() -> None:
    """Refuse ``logger=mlflow`` before any compute when MLflow is not installed."""
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("logger=mlflow needs MLflow, which is not installed: pip install 'probing[mlflow]' "
                          "(or logger=null; every run is in <output_dir>/registry.jsonl anyway).")


def default_locations(output_dir: str) -> tuple[str, str]:
    """The default tracking URI and artifact location: a sqlite file and a folder in ``output_dir`` (the
    working directory when the runs go to a URL: the tracking store is a local database)."""
    base = Path.cwd() if "://" in output_dir else Path(output_dir).expanduser()
    base = base.resolve()
    base.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{base / 'mlflow.db'}", str(base / "mlartifacts")


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``: nested dicts to dotted keys, other values as JSON text."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:MAX_VALUE]
    return out


def metric_series(report: Any) -> list[tuple[str, float, int]]:
    """``(key, value, step)`` of every finite figure of a `ProbeReport`, one series per label and method."""
    out = []
    for r in report.results:
        step = r.layer_index if r.layer_index is not None else report.layers.index(r.layer)
        for figure in FIGURES:
            value = float(getattr(r, figure))
            if math.isfinite(value):
                out.append((f"{r.label}/{r.method}/{figure}", value, int(step)))
    return out


def report_folder(report: Any) -> Path | None:
    """The local folder holding a report's files (None when there is none, or it is in a bucket)."""
    files = [str(v) for v in (getattr(report, "files", None) or {}).values()]
    local = [Path(f) for f in files if "://" not in f and Path(f).is_file()]
    return local[0].parent if local else None


def log_job(settings: Any, output_dir: str, result: Any, report: Any, config: Mapping[str, Any]) -> str:
    """Log one job (`RunResult`, its `ProbeReport` or None, the job's config) as one MLflow run; returns
    ``<tracking uri> experiment <name> run <id>``."""
    import time

    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from probing.experiments import git_commit

    uri, artifacts = default_locations(output_dir)
    uri = settings.tracking_uri or uri
    artifacts = settings.artifact_location or artifacts
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    experiment_id = (experiment.experiment_id if experiment is not None
                     else client.create_experiment(settings.experiment, artifact_location=_as_uri(artifacts)))
    tags = {"probing.run_id": result.run_id, "probing.path": result.path}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    run = client.create_run(experiment_id, run_name=result.run_id, tags=tags)
    rid = run.info.run_id
    try:
        params = {**flatten({k: v for k, v in config.items() if k != "hydra"}), "run.path": result.path,
                  "run.n_examples": str(result.n_examples)}
        items = [Param(k, v) for k, v in sorted(params.items())]
        for i in range(0, len(items), MAX_PARAMS):
            client.log_batch(rid, params=items[i : i + MAX_PARAMS])
        if report is not None:
            now = int(time.time() * 1000)
            metrics = [Metric(k, v, now, step) for k, v, step in metric_series(report)]
            for i in range(0, len(metrics), MAX_METRICS):
                client.log_batch(rid, metrics=metrics[i : i + MAX_METRICS])
            folder = report_folder(report)
            if folder is not None:
                client.log_artifacts(rid, str(folder), artifact_path="report")
            client.log_batch(rid, tags=[RunTag("probing.report", json.dumps(report.files))])
        client.set_terminated(rid, "FINISHED")
    except BaseException:
        client.set_terminated(rid, "FAILED")
        raise
    return f"{uri} experiment {settings.experiment!r} run {rid}"


def _as_uri(location: str) -> str:
    """A local folder as a ``file://`` URI (what MLflow expects of an artifact location); URIs as they are."""
    return location if "://" in location else Path(os.path.expanduser(location)).resolve().as_uri()


__all__ = ["check_available", "default_locations", "flatten", "log_job", "metric_series"]
