"""``logger=mlflow``: a CLI job logged to a real local sqlite tracking store, read back with MlflowClient and
compared with the report files the job wrote (params = the config, metrics per layer = the CSV)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

pytest.importorskip("mlflow", reason="the mlflow extra (pip install 'probing[mlflow]') is not installed")


def test_cli_job_logged_to_sqlite_equals_its_report(tiny_models, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from probing.cli import compose_config, run_job
    from probing.mlflow_log import flatten

    out = tmp_path / "out"
    db = tmp_path / "track" / "mlflow.db"
    db.parent.mkdir()
    cfg = compose_config([
        f"model.name_or_path={tiny_models['gpt2']}", "data.limit=40", "progress=false", "run_id=m",
        f"output_dir={out}", "probe.split_field=null", "probe.label_fields=[length]", "probe.k_folds=2",
        "probe.n_bootstrap=20", "logger=mlflow", f"mlflow.tracking_uri=sqlite:///{db}",
        f"mlflow.artifact_location={tmp_path / 'artifacts'}", "mlflow.experiment=t",
    ])
    result = run_job(cfg)
    assert "logged to MLflow" in capsys.readouterr().out
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("t").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["probing.run_id"] == "m"
    stored = json.loads((out / "m" / "zarr.json").read_text())["attributes"]["probing"]["config"]
    expected = flatten({k: v for k, v in stored.items() if k != "hydra"})
    assert {k: run.data.params[k] for k in expected} == expected  # the config the run stored, flattened
    assert run.data.params["model.name_or_path"] == str(tiny_models["gpt2"])
    (report_dir,) = (out / "m" / "probes").iterdir()
    rows = list(csv.DictReader((report_dir / "probes_sklearn.csv").open()))
    assert len(rows) == 5  # embeddings + 4 blocks
    for figure in ("score", "ci_low", "ci_high", "selectivity"):
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, f"length/sklearn/{figure}")}
        want = {int(r["layer_index"]): float(r[figure]) for r in rows if math.isfinite(float(r[figure]))}
        assert history.keys() == want.keys() and set(want) == {0, 1, 2, 3, 4}  # step = hidden_states index
        for step, value in want.items():
            assert history[step] == pytest.approx(value, abs=1e-6)
    artifacts = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"probes_sklearn.csv", "probes_sklearn.json", "probes_sklearn.png"} <= artifacts
    assert (tmp_path / "artifacts").is_dir()  # the explicit artifact location, not ./mlruns
    assert result.path == str(out / "m")
