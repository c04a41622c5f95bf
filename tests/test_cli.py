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
    tense = reader.example_metadata("tense")  # UD English EWT: None where the main clause has no tensed verb
    assert set(tense.tolist()) <= {"Past", "Pres", None} and "Pres" in set(tense.tolist())
    assert reader.example_fields[:2] == ["token_counts", "text"] and "upos" not in reader.example_fields
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


BAD_INPUTS = [  # (overrides, what the one error line says); every one is refused before the weights load
    (["+strategy=cls"], "Use strategy 'last'"),
    (["layers=[9]"], "out of range"),
    (["data=files", "data.path=missing.jsonl"], "not found"),
    (["data=files", "data.path={jsonl}", "data.text_field=sentence"], "no field 'sentence'"),
    (["data=files", "data.path={jsonl}", "data.fields=[nope]"], "no field 'nope'"),
    (["data.limt=5"], "Did you mean: 'limit'"),
    (["data.batch_size=abc"], "data.batch_size"),
    (["storage.dtype=bf16"], "expected one of float32, float16"),
    (["data=generated", "+strategy=words"], "needs pre-split input"),
    (["model.name_or_path=./no/such/folder"], "does not exist"),
    (["output_dir={jsonl}"], "is a file, not a folder"),
    (["model.device_map=auto", "trainer=ddp"], "one process per node"),
]


def test_bad_input_is_one_clear_line_exit_2_within_seconds(tmp_path, tiny_models):
    import time

    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text('{"text": "the cat sat", "label": 1}\n')
    for overrides, says in BAD_INPUTS:
        args = [a.format(jsonl=jsonl) for a in overrides]
        t0 = time.perf_counter()
        proc = cli(f"model.name_or_path={tiny_models['gpt2']}", *args, cwd=tmp_path)
        seconds = time.perf_counter() - t0
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("probing: error:") and says in lines[0], (args, lines)
        assert seconds < 5, (args, seconds)  # before torch, Lightning or the weights are loaded
    assert not (tmp_path / "runs").exists()  # nothing half-written


def test_help_lists_the_commands_and_version_is_probings(tmp_path):
    import shutil
    from pathlib import Path

    from probing import __version__

    proc = cli("--help", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m probing")
    for command in ("probe RUN", "info RUN", "layers MODEL"):
        assert command in proc.stdout.split("extraction options")[0]
    assert "python -m probing probe runs/" in proc.stdout and "+model=<" in proc.stdout
    assert cli("--version", cwd=tmp_path).stdout.strip() == f"probing {__version__}"
    script = Path(sys.executable).parent / "probing"  # the console script installed with the package
    assert script.exists() or shutil.which("probing")
    same = subprocess.run([str(script) if script.exists() else "probing", "--version"], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert same.stdout.strip() == f"probing {__version__}"


def test_layers_lists_hook_points_without_loading_weights(tmp_path, tiny_models):
    import shutil

    no_weights = tmp_path / "gpt2-config-only"
    shutil.copytree(tiny_models["gpt2"], no_weights, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    proc = cli("layers", str(no_weights), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "4 blocks in 'h'" in out and "pre-norm" in out and "layers=ln_f" in out and "h.0.attn" in out
    bert = cli("layers", str(tiny_models["bert"]), cwd=tmp_path).stdout
    assert "post-norm" in bert and "encoder.layer.0.attention" in bert
    assert cli("layers", str(tmp_path / "nope"), cwd=tmp_path).returncode == 2


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
        "data=generated",  # every label has a value in every row: each job is probed
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
    png = (tmp_path / "sweep" / "summary.png").read_bytes()  # one plot of every job's probe curves
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_what_will_run_is_said_and_progress_is_logged_when_not_on_a_terminal(tmp_path, tiny_models):
    proc = cli(f"model.name_or_path={tiny_models['bert']}", "data.limit=300", "data.batch_size=2", "progress_every=0.2",
               "output_dir=out", "run_id=p", "probe_after_extract=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr
    for line in ("model ", "examples  300", "layers ", "strategy  mean", "output    out/p (zarr float32)",
                 "writes    about"):
        assert line in err, line
    assert "free there" in err
    progress = [ln for ln in err.splitlines() if "examples/s" in ln]  # stderr is a pipe here: lines, no bar
    assert progress and all("/300 examples" in ln and "tokens/s" in ln and "ETA" in ln for ln in progress)


def test_truncation_is_counted_warned_and_recorded(tmp_path, tiny_models):
    import json

    long = " ".join(["the cat sat on the mat"] * 10)  # 60 words
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"text": t}) for t in [long, "a dog ran", long + " and more"]))
    proc = cli(f"model.name_or_path={tiny_models['bert']}", "data=files", f"data.path={data}", "data.max_length=16",
               "output_dir=out", "run_id=t", "progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 example(s) were longer than max_length=16 tokens" in proc.stdout + proc.stderr
    assert "the longest had 64" in proc.stdout + proc.stderr  # 62 words, [CLS] and [SEP]
    run = open_run(tmp_path / "out" / "t")
    assert run.metadata["max_length"] == 16 and run.metadata["stats"]["truncated"] == 2
    assert list(run.example_metadata("token_counts")) == [16, 5, 16]


def test_ctrl_c_stops_cleanly_says_how_to_resume_and_the_command_finishes_the_run(tmp_path, tiny_models):
    args = [f"model.name_or_path={tiny_models['bert']}", "data.limit=200", "data.batch_size=4", "storage.chunk_rows=8",
            "output_dir=out", "run_id=c", "progress=false", "probe_after_extract=false", "data.bucketing=false"]
    stopped = cli(*args, cwd=tmp_path, env={"PROBING_FAULT": "after_flush:2:SIGINT"})
    assert stopped.returncode == 75, stopped.stderr[-3000:]
    assert "Ctrl-C: stopping after this batch" in stopped.stderr
    command = next(ln for ln in stopped.stderr.splitlines() if "to finish:" in ln).split("to finish: ", 1)[1]
    assert command.startswith("python -m probing ") and command.endswith("run_id=c resume=true")
    resumed = cli(*command.split()[3:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert open_run(tmp_path / "out" / "c").n_examples == 200


def test_a_second_ctrl_c_aborts_at_once(monkeypatch, capsys):
    import signal

    from probing.engine.preemption import EXIT_ABORTED, PreemptionHandler

    codes: list[int] = []
    monkeypatch.setattr("os._exit", codes.append)
    handler = PreemptionHandler()
    handler._handle(signal.SIGINT, None)
    assert handler.signum == signal.SIGINT and codes == []
    handler._handle(signal.SIGINT, None)
    assert codes == [EXIT_ABORTED] and "aborting now" in capsys.readouterr().err
