"""The CLI as users call it: subprocesses of ``python -m probing``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from cli_helpers import TIMEOUT, cli, run_path

from probing import open_run


def test_default_job_on_the_embedded_model(tmp_path):
    proc = cli("data.limit=48", "progress=false", f"output_dir={tmp_path}/runs", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stored 48 examples x 7 layers (mean)" in proc.stdout
    reader = open_run(run_path(proc.stdout))
    assert reader.layers == ["embeddings"] + [f"blocks.{i}" for i in range(6)]
    acts = reader.activations(-1)
    assert acts.shape == (48, 384) and np.isfinite(acts).all()
    assert set(reader.example_metadata("tense")) <= {"past", "present", "future"}
    info = subprocess.run(
        [sys.executable, "-m", "probing", "info", str(run_path(proc.stdout))],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert info.returncode == 0 and "completed" in info.stdout and "(48, 384)" in info.stdout


def test_the_cards_command_with_a_local_folder(tmp_path, tiny_models):
    proc = cli(
        "+model=distilbert",
        "+strategy=mean",
        f"model.name_or_path={tiny_models['distilbert']}",
        "layers=[0,-1]",
        "data.limit=10",
        "progress=false",
        "output_dir=out",
        "run_id=card",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reader = open_run(tmp_path / "out" / "card")
    assert reader.layers == ["blocks.0", "blocks.3"]
    assert reader.metadata["strategy"] == {"name": "mean"}
    assert reader.metadata["config"]["model"]["name_or_path"] == str(tiny_models["distilbert"])


def test_errors_are_one_clear_line_and_exit_2(tmp_path, tiny_models):
    proc = cli(f"model.name_or_path={tiny_models['gpt2']}", "+strategy=cls", "data.limit=4", cwd=tmp_path)
    assert proc.returncode == 2
    assert "probing: error:" in proc.stderr and "Use strategy 'last'" in proc.stderr
    proc = cli(f"model.name_or_path={tiny_models['bert']}", "layers=[9]", "data.limit=4", cwd=tmp_path)
    assert proc.returncode == 2 and "out of range" in proc.stderr
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_wrong_keys_and_groups_list_the_valid_choices(tmp_path):
    proc = cli("data.limt=5", cwd=tmp_path)
    assert proc.returncode == 2 and "Did you mean: 'limit'" in proc.stderr and "max_length" in proc.stderr
    proc = cli("+modle=gpt2", cwd=tmp_path)
    assert proc.returncode == 2 and "Did you mean: 'model'" in proc.stderr
    proc = cli("+model=gpt3", cwd=tmp_path)
    assert proc.returncode == 2 and "Available options in 'model'" in proc.stderr and "gpt2" in proc.stderr


def test_two_job_multirun_writes_runs_and_a_summary(tmp_path, tiny_models):
    proc = cli(
        "-m",
        "+strategy=mean,last",
        f"model.name_or_path={tiny_models['bert']}",
        "layers=1",
        "data.limit=12",
        "progress=false",
        "hydra.sweep.dir=sweep",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [open_run(tmp_path / "sweep" / f"job{i}") for i in (0, 1)]
    assert [r.metadata["strategy"]["name"] for r in runs] == ["mean", "last"]
    assert all(r.layers == ["blocks.1"] and r.n_examples == 12 for r in runs)
    summary = (tmp_path / "sweep" / "summary.csv").read_text()
    assert "job0" in summary and "job1" in summary and "+strategy=last" in summary
