"""slurm/extract.sbatch on a real Slurm (one node on localhost, see slurm_cluster.py): DDP ranks launched
by srun on CPU (gloo), preemption, requeue and resume. Skipped where Slurm cannot run."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_model
from slurm_cluster import SlurmCluster, SlurmUnavailable, slurm_cluster

from probing import ActivationExtractor, DatasetRunner, MeanStrategy, ModelBackend, ZarrStorage, open_run
from probing.data.builtin import generate

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:The `srun` command is available")]

SCRIPT = Path(__file__).resolve().parents[1] / "slurm" / "extract.sbatch"
N = 57
# Preempted runs: ~100 rows a rank, ~12 chunk flushes, so that a signal at the 1st or 2nd flush is mid-run even
# though the forward pass may run up to 4 batches ahead of the (background) writer.
N_PREEMPTED = 201
JOB_TIMEOUT = 240
# 1 node x 2 tasks on CPU; the script's GPU and CPU requests are overridden on the sbatch command line
RESOURCES = ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10"]
OVERRIDES = ["data=generated", "data.batch_size=4", "storage.chunk_rows=8", "progress=false"]  # the reference's data


@pytest.fixture(scope="module")
def slurm() -> Iterator[SlurmCluster]:
    """A one-node Slurm on localhost for this module (installed with apt-get unless PROBING_SLURM_INSTALL=0)."""
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(slurm_cluster(install=os.environ.get("PROBING_SLURM_INSTALL") != "0"))
        except SlurmUnavailable as exc:
            pytest.skip(f"no local Slurm here: {exc}")
        yield cluster


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model("bert", tmp_path_factory.mktemp("slurm_model") / "bert")


@pytest.fixture(scope="module")
def reference(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``reference(n)``: the same extraction of the first n examples in this process, one rank, Python API."""
    runs = {}

    def run(n: int):  # type: ignore[no-untyped-def]
        if n not in runs:
            model = ModelBackend().load_model(model_dir)
            extractor = ActivationExtractor(model, layers="all", strategy=MeanStrategy())
            storage = ZarrStorage(str(tmp_path_factory.mktemp("slurm_reference")), chunk_rows=8)
            runner = DatasetRunner(generate(n), 4, extractor, storage, max_length=128, progress=False)
            runs[n] = open_run(runner.run().path)
        return runs[n]

    return run


def python_wrapper(folder: Path) -> Path:
    """A python that drops PROBING_FAULT on a requeued start (SLURM_RESTART_COUNT > 0): the fault fires once."""
    path = folder / "python"
    lines = [
        "#!/bin/sh",
        '[ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && unset PROBING_FAULT',
        f'exec "{sys.executable}" "$@"',
    ]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def submit(
    slurm: SlurmCluster, tmp_path: Path, model_dir: Path, n: int, resources: list[str] = RESOURCES, **env: str
) -> str:
    job_env = {k: v for k, v in slurm.env.items() if not k.startswith("PROBING_")}
    job_env.update(
        PROBING_ACCELERATOR="cpu",
        PROBING_DEVICES=next(r for r in resources if r.startswith("--ntasks-per-node=")).split("=")[1],
        PROBING_PYTHON=str(python_wrapper(tmp_path)),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        **env,
    )
    return slurm.sbatch(
        *resources,
        f"--output={tmp_path}/job-%j.out",
        f"--chdir={tmp_path}",
        str(SCRIPT),
        f"model.name_or_path={model_dir}",
        f"output_dir={tmp_path / 'runs'}",
        f"data.limit={n}",
        *OVERRIDES,
        env=job_env,
    )


def finished(slurm: SlurmCluster, job: str, tmp_path: Path) -> tuple[dict[str, str], str]:
    info = slurm.wait_job(job, JOB_TIMEOUT)
    log = (tmp_path / f"job-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED", f"{info}\n{log[-4000:]}"
    return info, log


def assert_same(got, ref, n: int) -> None:  # type: ignore[no-untyped-def]
    """n rows in dataset order, equal to the one-process run."""
    assert got.layers == ref.layers
    for layer in ref.layers:
        a = got.activations(layer)
        assert a.shape == (n, 32)
        np.testing.assert_allclose(a, ref.activations(layer), atol=1e-5)
    np.testing.assert_array_equal(got.example_metadata("token_counts"), ref.example_metadata("token_counts"))
    assert list(got.example_metadata("text")) == [r["text"] for r in generate(n)]


def first_attempt_rows(run) -> int:  # type: ignore[no-untyped-def]
    parts = run.metadata["stats"]["parts"]
    return sum(p["rows_stored"] for name, p in parts.items() if name.startswith("a000"))


def test_sbatch_two_ranks_equal_one_process(slurm, model_dir, reference, tmp_path):  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    job = submit(slurm, tmp_path, model_dir, N)
    info, log = finished(slurm, job, tmp_path)
    print(f"slurm job {job}: 1 node x 2 tasks, N={N}, {time.monotonic() - t0:.1f} s from sbatch to COMPLETED")
    assert info["Restarts"] == "0"
    run = open_run(tmp_path / "runs" / f"slurm-{job}")  # the run id is the job id
    assert run.metadata["attempts"] == 0
    assert run.metadata["stats"]["world_size"] == 2
    assert_same(run, reference(N), N)


def test_preempted_job_is_requeued_and_resumes(slurm, model_dir, reference, tmp_path):  # type: ignore[no-untyped-def]
    # every rank sends itself SIGUSR1 after its 2nd chunk flush (of ~12): mid-run, as `--signal=USR1@120` does
    n = N_PREEMPTED
    t0 = time.monotonic()
    job = submit(slurm, tmp_path, model_dir, n, PROBING_FAULT="after_flush:2:SIGUSR1")
    info, log = finished(slurm, job, tmp_path)
    print(f"slurm job {job}: 1 node x 2 tasks, N={n}, preempted once, {time.monotonic() - t0:.1f} s to COMPLETED")
    assert int(info["Restarts"]) >= 1, log[-4000:]
    assert "requeueing job" in log and "start 2" in log, log[-4000:]
    run = open_run(tmp_path / "runs" / f"slurm-{job}")
    assert run.metadata["attempts"] >= 1
    assert 0 < first_attempt_rows(run) < n  # stopped mid-run, kept what it had
    assert_same(run, reference(n), n)


def _stopped_tasks(slurm: SlurmCluster) -> int:
    n = 0
    for pid in slurm.our_processes():
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"probing" in cmd and stat.rsplit(")", 1)[1].split()[0] == "T":
                n += 1
    return n


def test_signal_to_batch_shell_is_forwarded_and_requeues(slurm, model_dir, reference, tmp_path):  # type: ignore[no-untyped-def]
    # `--signal=B:USR1@...` or `scancel --batch --signal=USR1` signals only the batch shell: it must pass the
    # signal on to the tasks and requeue. Each rank stops itself (SIGSTOP) after its 1st flush so that the
    # signal arrives mid-run for sure; SIGCONT lets them handle it.
    n = N_PREEMPTED
    t0 = time.monotonic()
    job = submit(slurm, tmp_path, model_dir, n, PROBING_FAULT="after_flush:1:SIGSTOP")
    deadline = time.monotonic() + JOB_TIMEOUT
    while _stopped_tasks(slurm) < 2:
        assert time.monotonic() < deadline and slurm.job(job).get("JobState") in ("PENDING", "RUNNING")
        time.sleep(0.5)
    slurm.run("scancel", "--batch", f"--signal={signal.SIGUSR1.name[3:]}", job)
    log_path = tmp_path / f"job-{job}.out"
    while "passing SIGUSR1 to the tasks" not in log_path.read_text():
        assert time.monotonic() < deadline, log_path.read_text()[-4000:]
        time.sleep(0.5)
    slurm.run("scancel", "--signal=CONT", job)  # the steps only; the tasks now handle their pending SIGUSR1
    info, log = finished(slurm, job, tmp_path)
    print(f"slurm job {job}: 1 node x 2 tasks, N={n}, batch shell signalled, {time.monotonic() - t0:.1f} s")
    assert int(info["Restarts"]) >= 1, log[-4000:]
    run = open_run(tmp_path / "runs" / f"slurm-{job}")
    assert run.metadata["attempts"] >= 1
    assert 0 < first_attempt_rows(run) < n
    assert_same(run, reference(n), n)


@pytest.fixture(scope="module")
def slurm_two_nodes() -> Iterator[SlurmCluster]:
    """Two Slurm nodes, each slurmd in its own network namespace (10.x.0.1 and 10.x.0.2 on a bridge)."""
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(
                slurm_cluster(nodes=2, install=os.environ.get("PROBING_SLURM_INSTALL") != "0")
            )
        except SlurmUnavailable as exc:
            pytest.skip(f"no two-node local Slurm here: {exc}")
        yield cluster


def test_two_nodes_preempted_requeued_resumed(slurm_two_nodes, model_dir, reference, tmp_path):  # type: ignore[no-untyped-def]
    # num_nodes=2, one rank per node; the ranks reach each other over the bridge (gloo), not loopback.
    # Lightning would resolve the first node's name for MASTER_ADDR; these node names are not in DNS.
    slurm, n = slurm_two_nodes, N_PREEMPTED
    assert slurm.network is not None
    resources = ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10"]
    net = {"MASTER_ADDR": slurm.network.addrs[0], "GLOO_SOCKET_IFNAME": slurm.network.ifname}
    t0 = time.monotonic()
    job = submit(slurm, tmp_path, model_dir, n, resources, PROBING_FAULT="after_flush:2:SIGUSR1", **net)
    info, log = finished(slurm, job, tmp_path)
    print(f"slurm job {job}: 2 nodes x 1 task, N={n}, preempted once, {time.monotonic() - t0:.1f} s to COMPLETED")
    assert "on pnode[0-1] (2 nodes x 1 cpu tasks)" in log and int(info["Restarts"]) >= 1, log[-4000:]
    run = open_run(tmp_path / "runs" / f"slurm-{job}")
    assert run.metadata["attempts"] >= 1 and run.metadata["stats"]["world_size"] == 2
    assert 0 < first_attempt_rows(run) < n
    assert_same(run, reference(n), n)
