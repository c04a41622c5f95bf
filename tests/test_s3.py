"""s3:// runs against a real S3 API server (moto's, on 127.0.0.1), credentials and endpoint passed ONLY
through ``storage_options`` (every AWS_* variable is unset): extract via the API and the CLI, open_run,
probes, info, runs, resume after a SIGKILL, DDP on 2 ranks, and the lease (one writer) on S3."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from cli_helpers import cli

pytest.importorskip("s3fs", reason="the cloud extra (pip install 'probing[cloud]') is not installed")
moto_server = pytest.importorskip("moto.server", reason="moto[server] (pip install 'probing[cloud-test]') is absent")

from probing import (  # noqa: E402
    ActivationExtractor,
    DatasetRunner,
    MeanStrategy,
    ModelBackend,
    ZarrStorage,
    open_run,
    probe_run,
)
from probing.storage import fs_options  # noqa: E402

BUCKET = "probing-test"
N = 41
ARGS = ["data.batch_size=4", "storage.chunk_rows=6", f"data.limit={N}", "progress=false", "run_id=r",
        "probe_after_extract=false", "reuse=false"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3():  # type: ignore[no-untyped-def]
    """A moto S3 server on a free loopback port with one bucket; yields the storage_options that reach it."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    options = {"key": "testing", "secret": "testing",
               "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    import boto3

    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket=BUCKET)
    try:
        yield options
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def no_aws_env(monkeypatch):  # type: ignore[no-untyped-def]
    """Nothing but storage_options may reach the server: no AWS_* variable, no bound options left over."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    fs_options.clear()
    yield
    fs_options.clear()


def _hydra_options(options: dict) -> str:  # type: ignore[type-arg]
    ck = options["client_kwargs"]
    return (f"storage.storage_options={{key:{options['key']},secret:{options['secret']},"
            f"client_kwargs:{{endpoint_url:'{ck['endpoint_url']}',region_name:{ck['region_name']}}}}}")


def _fs(options):  # type: ignore[no-untyped-def]
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True, **options)


@pytest.fixture(scope="module")
def local_reference(tiny_models, tmp_path_factory):  # type: ignore[no-untyped-def]
    """The same CLI job into a local folder: what every S3 run must equal."""
    cwd = tmp_path_factory.mktemp("s3_reference")
    proc = cli(f"model.name_or_path={tiny_models['gpt2']}", *ARGS, "output_dir=out", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return open_run(cwd / "out" / "r")


def _assert_same(got, ref) -> None:  # type: ignore[no-untyped-def]
    assert got.layers == ref.layers and got.n_examples == ref.n_examples
    for layer in ref.layers:
        np.testing.assert_allclose(got.activations(layer), ref.activations(layer), atol=1e-5)
    assert list(got.example_metadata("text")) == list(ref.example_metadata("text"))


def test_api_run_open_probe_info_runs_on_s3(s3, tiny_models, tmp_path):
    """DatasetRunner into s3:// (options on ZarrStorage only), then in a fresh binding open_run(url,
    storage_options), probes (report in the bucket), info, the registry and `runs`."""
    from probing.experiments import read_entries
    from probing.inspect import describe_run
    from probing.runs import filter_rows, registry_rows

    model = ModelBackend().load_model(str(tiny_models["bert"]))
    ds = [{"text": f"word{i} and more {'x' * (i % 5)}", "label": i % 2} for i in range(30)]
    ex = ActivationExtractor(model, layers=[0, -1], strategy=MeanStrategy())
    url = f"s3://{BUCKET}/api"
    run = DatasetRunner(ds, 8, ex, ZarrStorage(url, storage_options=s3, chunk_rows=8), announce=False,
                        progress=False).run()
    local = DatasetRunner(ds, 8, ex, ZarrStorage(str(tmp_path), chunk_rows=8), announce=False, progress=False).run()
    assert run.path.startswith(url + "/")
    objects = _fs(s3).find(f"{BUCKET}/api")
    assert any(o.endswith("/layers/blocks.0/c/0/0") for o in objects), objects[:20]
    fs_options.clear()  # a reader that only knows the URL and its options
    with pytest.raises(Exception):  # noqa: B017 - botocore's NoCredentialsError or fsspec's wrapper of it
        open_run(run.path).activations(0)
    fs_options.clear()
    with open_run(run.path, storage_options=s3) as got, open_run(local.path) as ref:
        for layer in ref.layers:
            np.testing.assert_array_equal(got.activations(layer), ref.activations(layer))
        assert list(got.example_metadata("label")) == list(ref.example_metadata("label"))
    report = probe_run(run.path, label_fields=["label"], split_field=None, k_folds=2, n_bootstrap=20)
    assert report.files["json"].startswith(run.path + "/probes/")
    stored = json.loads(_fs(s3).cat_file(report.files["json"]))
    assert stored["files"] == report.files
    assert stored["results"][0]["score"] == pytest.approx(report.results[0].score, abs=1e-6)
    text = describe_run(run.path)
    assert "(completed)" in text and f"path        {run.path}" in text and "layers/blocks.0" in text
    fs_options.bind(url, s3)
    entries = read_entries(url)
    assert [e["kind"] for e in entries] == ["run", "probe"]
    assert entries[1]["figures"][0]["score"] == pytest.approx(
        max(r.score for r in report.results))
    rows = filter_rows(registry_rows(url), label="label")
    assert [r["run"] for r in rows] == [run.run_id] and "label" in rows[0]["probes"]


def test_cli_extract_probe_info_on_s3(s3, tiny_models, tmp_path, local_reference):
    """`output_dir=s3://...` with storage.storage_options: extract, probe after it, `info` and `probe` as
    subcommands (their own --storage-options); the stored config has no secret."""
    out = f"s3://{BUCKET}/cli"
    model = f"model.name_or_path={tiny_models['gpt2']}"
    args = [a for a in ARGS if a != "probe_after_extract=false"]
    proc = cli(model, *args, f"output_dir={out}", _hydra_options(s3), "probe.n_bootstrap=20", "probe.k_folds=2",
               "probe.split_field=null", "probe.label_fields=[length]", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"run: {out}/r" in proc.stdout and "probes: s3://" in proc.stdout
    with open_run(f"{out}/r", storage_options=s3) as got:
        _assert_same(got, local_reference)
        stored = got.metadata["config"]["storage"]["storage_options"]
        assert stored["secret"] == "***" and stored["key"] == "***"
        assert stored["client_kwargs"]["endpoint_url"] == s3["client_kwargs"]["endpoint_url"]
    opts = json.dumps(s3)
    info = subprocess.run([sys.executable, "-m", "probing", "info", f"{out}/r", "--storage-options", opts],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert info.returncode == 0, info.stdout + info.stderr
    assert "(completed)" in info.stdout and f"{N} examples" in info.stdout
    bare = subprocess.run([sys.executable, "-m", "probing", "info", f"{out}/r"], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert bare.returncode != 0  # without the options nothing reaches the server: the options are what is used
    probe = cli("probe", f"{out}/r", "--labels", "length", "--split-field", "none", "--k-folds", "2",
                "--n-bootstrap", "10", "--storage-options", opts, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr[-3000:]
    fs_options.bind(out, s3)
    from probing.experiments import read_entries

    kinds = [e["kind"] for e in read_entries(out)]
    assert kinds.count("run") == 1 and kinds.count("probe") == 2
    assert all(e["config"] is None or e["config"]["storage"]["storage_options"]["secret"] == "***"
               for e in read_entries(out))


@pytest.mark.slow
def test_s3_run_killed_then_resumed_equals_uninterrupted(s3, tiny_models, tmp_path, local_reference):
    """SIGKILL after 3 flushes, then resume=true: every example exactly once, equal to the local run."""
    out = f"s3://{BUCKET}/resume"
    model = f"model.name_or_path={tiny_models['gpt2']}"
    killed = cli(model, *ARGS, f"output_dir={out}", _hydra_options(s3), cwd=tmp_path,
                 env={"PROBING_FAULT": "after_flush:3"}, timeout=240)
    assert killed.returncode == -9, killed.stderr[-3000:]
    again = cli(model, *ARGS, f"output_dir={out}", _hydra_options(s3), cwd=tmp_path, timeout=240)
    assert again.returncode == 2 and "resume=true" in again.stderr  # the killed run's lease is stale (pid gone)
    resumed = cli(model, *ARGS, f"output_dir={out}", _hydra_options(s3), "resume=true", cwd=tmp_path, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with open_run(f"{out}/r", storage_options=s3) as got:
        _assert_same(got, local_reference)
        parts = got.metadata["stats"]["parts"]
        first, second = parts["a000-r00000"], parts["a001-r00000"]
        assert second["skipped_as_done"] >= 18 and second["skipped_as_done"] % 6 == 0  # whole chunks were kept
        assert second["skipped_as_done"] + second["examples"] == N  # nothing twice, nothing missing
        assert first["status"] != "done"
        assert got.verify() == []


@pytest.mark.slow
def test_ddp_two_ranks_on_s3(s3, tiny_models, tmp_path, local_reference):
    out = f"s3://{BUCKET}/ddp"
    proc = cli(f"model.name_or_path={tiny_models['gpt2']}", *ARGS, f"output_dir={out}", _hydra_options(s3),
               "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open_run(f"{out}/r", storage_options=s3) as got:
        assert got.metadata["stats"]["world_size"] == 2
        assert sum(p["rows_stored"] for p in got.metadata["stats"]["parts"].values()) == N
        _assert_same(got, local_reference)


_HOLD = """
import sys, time
from probing.storage import fs_options
from probing.storage.lease import acquire
fs_options.bind(sys.argv[1], __import__("json").loads(sys.argv[2]))
lease = acquire(sys.argv[1], 60)
print("held", flush=True)
time.sleep(60)
"""

_RACE = """
import sys, json, time
from probing.storage import fs_options
from probing.storage.lease import acquire, RunLockedError
fs_options.bind(sys.argv[1], json.loads(sys.argv[2]))
while time.time() < float(sys.argv[3]):
    time.sleep(0.001)
try:
    acquire(sys.argv[1], 60)
    print("won", flush=True)
    time.sleep(3)
except RunLockedError:
    print("refused", flush=True)
"""


def test_lease_on_s3_refuses_a_second_writer(s3, tmp_path):
    """The lease object is created with If-None-Match (s3fs mode "xb"): a second writer, in another
    process, is refused at once, naming the holder; 4 processes starting together: exactly one wins."""
    from probing.errors import ProbingError
    from probing.storage.lease import RunLockedError, acquire

    run = f"s3://{BUCKET}/lease/r"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, run, json.dumps(s3)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        fs_options.bind(run, s3)
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            acquire(run, 60)
        storage = ZarrStorage(f"s3://{BUCKET}/lease", storage_options=s3)
        with pytest.raises(ProbingError, match="being written by another job"):
            storage.open_run("r", metadata={"model": {}})
    finally:
        holder.kill()
        holder.wait(30)
    lease = acquire(run, 60)  # its holder is dead (same host, pid gone): taken over at once
    lease.release()
    assert not _fs(s3).exists(f"{BUCKET}/lease/r.lease")

    race = f"s3://{BUCKET}/race/r"
    start = time.time() + 4.0  # every process imports first, then all try at once
    procs = [subprocess.Popen([sys.executable, "-c", _RACE, race, json.dumps(s3), str(start)], stdout=subprocess.PIPE,
                              text=True) for _ in range(4)]
    outcomes = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert outcomes == ["refused", "refused", "refused", "won"], outcomes
