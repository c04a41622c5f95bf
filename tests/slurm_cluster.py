"""A Slurm cluster on this machine for tests: munged, slurmctld and slurmd from Debian's packages.

``with slurm_cluster() as cluster: job = cluster.sbatch(...)``. Everything lives in one temporary
folder (munge key and socket, slurm.conf, state, spool, logs, pid files) and uses free ports, so it
touches neither /etc/slurm nor a Slurm that may already run here. Every step is bounded in time, and
on exit every process the cluster started is ended, jobs included, even when the test failed.

One node (``localhost``) by default. ``slurm_cluster(nodes=2)`` runs one slurmd per network namespace
(``ip netns``), each with its own address on a bridge, so that a job's ranks really talk over a
network between nodes; namespaces, veths and bridge are removed on exit.

Raises `SlurmUnavailable` (a test turns it into a skip) where Slurm cannot run: not Linux, not root,
no apt-get to install the packages, or daemons that do not come up.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
BINARIES = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scontrol", "scancel")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run on this machine; the message says why."""


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without the variables of a Slurm job, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))}
    env.update(extra)
    return env


def ensure_packages(timeout: int = 600) -> None:
    """Install Debian's munge and Slurm packages with apt-get if a binary is missing."""
    if all(shutil.which(b) for b in BINARIES):
        return
    if not shutil.which("apt-get"):
        raise SlurmUnavailable(f"Slurm is not installed and there is no apt-get to install {' '.join(PACKAGES)}")
    env = clean_env(DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *PACKAGES]):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise SlurmUnavailable(f"{' '.join(cmd)} took more than {timeout} s") from exc
        if proc.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-1000:]}")
    missing = [b for b in BINARIES if not shutil.which(b)]
    if missing:
        raise SlurmUnavailable(f"still missing after apt-get install: {missing}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SLURM_CONF = """\
ClusterName=probingtest
SlurmctldHost={host}({ctld_addr})
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
KillWait=10
MinJobAge=600
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool-%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
{node_lines}
PartitionName=debug Nodes={node_names} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class Network:
    """A bridge and one network namespace per node, joined by veths: node i has address ``addrs[i]``."""

    tag: str
    n: int
    subnet: int = 231  # 10.<subnet>.0.0/24
    namespaces: list[str] = field(default_factory=list)
    ifname: str = "pnode0"  # the node's interface, in each namespace (GLOO_SOCKET_IFNAME)

    @property
    def bridge(self) -> str:
        return f"pbr{self.tag}"

    @property
    def host_addr(self) -> str:
        return f"10.{self.subnet}.0.254"

    @property
    def addrs(self) -> list[str]:
        return [f"10.{self.subnet}.0.{i + 1}" for i in range(self.n)]

    def up(self) -> None:
        ip = _ip
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.host_addr}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")
        for i, addr in enumerate(self.addrs):
            ns, host_end = f"probing-{self.tag}-{i}", f"pv{self.tag}{i}"
            ip("netns", "add", ns)
            self.namespaces.append(ns)
            ip("link", "add", host_end, "type", "veth", "peer", "name", self.ifname, "netns", ns)
            ip("link", "set", host_end, "master", self.bridge, "up")
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", self.ifname)
            ip("-n", ns, "link", "set", self.ifname, "up")
            ip("-n", ns, "link", "set", "lo", "up")

    def down(self) -> None:
        for ns in self.namespaces:  # deleting a namespace deletes its veth pair
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", self.bridge, check=False)


def _ip(*args: str, check: bool = True) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if check and proc.returncode != 0:
        raise SlurmUnavailable(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")


@dataclass
class SlurmCluster:
    """A running cluster: its folder, config, nodes and the commands to use it."""

    root: Path
    conf: Path
    cpus: int  # per node
    nodes: list[str] = field(default_factory=lambda: ["localhost"])
    network: Network | None = None
    daemons: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm client commands (and, exported, for the jobs)."""
        return clean_env(SLURM_CONF=str(self.conf))

    def run(self, *cmd: str, timeout: float = 30, check: bool = True, **kw: Any) -> subprocess.CompletedProcess[str]:
        env = kw.pop("env", None) or self.env
        proc = subprocess.run(list(cmd), env=env, capture_output=True, text=True, timeout=timeout, **kw)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def sbatch(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
        """Submit a batch job (``sbatch --parsable ARGS``); returns its id."""
        out = self.run("sbatch", "--parsable", *args, env={**(env or self.env), "SLURM_CONF": str(self.conf)}, cwd=cwd)
        return out.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, Restarts, ExitCode, ...); {} once it is forgotten."""
        proc = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        fields: dict[str, str] = {}
        for token in proc.stdout.split():
            key, sep, value = token.partition("=")
            if sep:
                fields[key] = value
        return fields

    def wait_job(self, job_id: str, timeout: float) -> dict[str, str]:
        """Poll until the job has finished (no requeue pending); returns its last state. Bounded.

        Slurm holds a requeued job for 120 s (Reason=BeginTime) before it may start again; that hold
        is lifted here (``scontrol update StartTime=now``, once the node is idle again) so that tests
        do not wait for it.
        """
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        held_since = None
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in FINISHED:
                return info
            if info.get("JobState") == "PENDING" and info.get("Reason") == "BeginTime":
                held_since = held_since or time.monotonic()
                # Not at once: slurmd refuses a credential issued in the same second as the revocation of
                # the previous one ("Job credential revoked"), and the previous start must be cleaned up.
                if time.monotonic() - held_since > 3 and set(self.node_state().split()) == {"idle"}:
                    self.run("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)
            else:
                held_since = None
            time.sleep(0.5)
        self.run("scancel", job_id, check=False)
        raise TimeoutError(f"job {job_id} not finished after {timeout} s: {info}\n{self.logs()}")

    def wait_idle(self, timeout: float) -> None:
        """Poll ``sinfo`` until every node is idle. Bounded."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name, proc in self.daemons.items():
                if proc.poll() is not None:
                    raise SlurmUnavailable(f"{name} exited ({proc.returncode}) while starting:\n{self.logs()}")
            state = self.node_state()
            if state and set(state.split()) == {"idle"}:
                return
            time.sleep(0.5)
        raise SlurmUnavailable(f"node not idle after {timeout} s (sinfo: {state!r}):\n{self.logs()}")

    def node_state(self) -> str:
        """One state per node (``idle``, ``allocated``, ``completing``...), space-separated."""
        return " ".join(self.run("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=10).stdout.split())

    def logs(self, tail: int = 2000) -> str:
        out = []
        for p in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out")) + [self.root / "munge/munged.log"]:
            if p.exists():
                out.append(f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)

    # -- shutdown -----------------------------------------------------------------------------
    def cancel_all(self, timeout: float = 30) -> None:
        """Cancel every job and wait (bounded) until the queue is empty."""
        with contextlib.suppress(Exception):
            ids = self.run("squeue", "-h", "-o", "%i", check=False, timeout=10).stdout.split()
            if ids:
                self.run("scancel", *ids, check=False, timeout=10)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                left = self.run("squeue", "-h", "-t", "all", "-o", "%T", check=False, timeout=10).stdout.split()
                if not [s for s in left if s not in FINISHED]:
                    return
                time.sleep(0.5)

    def our_processes(self) -> list[int]:
        """Pids of processes that belong to this cluster: their environment names our slurm.conf.

        Catches what the daemons leave behind (slurmstepd, job steps, tasks), which are not their
        children once daemonized.
        """
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                env = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in env.split(b"\0"):
                pids.append(int(entry.name))
        return pids

    def stop(self) -> None:
        """End every process this cluster started: jobs first, then slurmd, slurmctld, munged."""
        self.cancel_all()
        names = [n for n in self.daemons if n.startswith("slurmd")] + ["slurmctld", "munged"]
        for name in names:
            proc = self.daemons.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        for pid in self.our_processes():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _spawn(cluster: SlurmCluster, name: str, cmd: list[str], env: dict[str, str], user: str | None = None) -> None:
    out = open(cluster.root / f"{name}.out", "wb")  # noqa: SIM115 - closed with the process
    preexec = None
    if user is not None:
        pw = pwd.getpwnam(user)

        def preexec() -> None:  # type: ignore[misc]
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)

    cluster.daemons[name] = subprocess.Popen(
        cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=preexec
    )
    out.close()


@contextlib.contextmanager
def slurm_cluster(start_timeout: float = 60, install: bool = True, nodes: int = 1) -> Iterator[SlurmCluster]:
    """Bring up munged, slurmctld and ``slurmd -N localhost`` in a temporary folder; end them all on exit.

    With ``nodes`` > 1: nodes ``pnode0``, ``pnode1``... each in its own network namespace, the CPUs
    shared out between them.
    """
    if not Path("/proc").is_dir() or not hasattr(os, "geteuid"):
        raise SlurmUnavailable("a local Slurm needs Linux")
    if os.geteuid() != 0:
        raise SlurmUnavailable("a local Slurm needs root (slurmd launches jobs as their user)")
    if install:
        ensure_packages()
    elif not all(shutil.which(b) for b in BINARIES):
        raise SlurmUnavailable("Slurm is not installed")
    root = Path(tempfile.mkdtemp(prefix="probing-slurm-"))
    root.chmod(0o755)
    cpus = os.cpu_count() or 1
    cluster = SlurmCluster(root=root, conf=root / "slurm.conf", cpus=cpus)
    try:
        if nodes > 1:
            if cpus < nodes:
                raise SlurmUnavailable(f"{nodes} nodes need at least {nodes} CPUs, this machine has {cpus}")
            if not (shutil.which("ip") and shutil.which("nsenter")):
                raise SlurmUnavailable("several nodes need `ip` (iproute2) and `nsenter` for network namespaces")
            cluster.network = Network(tag=f"{os.getpid() % 10000:04d}", n=nodes, subnet=200 + os.getpid() % 50)
            cluster.network.up()
            cluster.nodes = [f"pnode{i}" for i in range(nodes)]
            cluster.cpus = cpus // nodes
            addrs, ctld_addr = cluster.network.addrs, cluster.network.host_addr
        else:
            addrs, ctld_addr = ["127.0.0.1"], "127.0.0.1"
        node_lines = "\n".join(
            f"NodeName={name} NodeAddr={addr} CPUs={cluster.cpus} State=UNKNOWN"
            for name, addr in zip(cluster.nodes, addrs, strict=True)
        )
        # munge: a fresh key (1024 random bytes, 0400), its own socket; run as the munge user if there is one
        munge_dir = root / "munge"
        munge_dir.mkdir(mode=0o755)
        key = munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        user = "munge" if _user_exists("munge") else None
        if user is not None:
            pw = pwd.getpwnam(user)
            for p in (munge_dir, key):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        socket_path = munge_dir / "munge.socket"
        munged = ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={socket_path}"]
        munged += [
            f"--pid-file={munge_dir}/munged.pid",
            f"--log-file={munge_dir}/munged.log",
            f"--seed-file={munge_dir}/seed",
        ]
        _spawn(cluster, "munged", munged, clean_env(), user=user)
        _wait_for(lambda: socket_path.exists(), 15, "munged did not create its socket", cluster)

        (root / "state").mkdir()
        cluster.conf.write_text(
            SLURM_CONF.format(
                host=socket.gethostname().split(".")[0],
                ctld_addr=ctld_addr,
                ctld_port=free_port(),
                slurmd_port=free_port(),
                munge_socket=socket_path,
                root=root,
                node_lines=node_lines,
                node_names=",".join(cluster.nodes),
            )
        )
        env = cluster.env
        _spawn(cluster, "slurmctld", ["slurmctld", "-D", "-i", "-f", str(cluster.conf)], env)
        for i, name in enumerate(cluster.nodes):
            # nsenter, not `ip netns exec`: that also remounts /sys, which hides /sys/fs/cgroup from slurmd
            netns = ["nsenter", f"--net=/run/netns/{cluster.network.namespaces[i]}"] if cluster.network else []
            (root / f"spool-{name}").mkdir()
            _spawn(cluster, f"slurmd-{name}", [*netns, "slurmd", "-D", "-N", name, "-f", str(cluster.conf)], env)
        cluster.wait_idle(start_timeout)
        yield cluster
    finally:
        cluster.stop()
        if cluster.network is not None:
            cluster.network.down()
        if not os.environ.get("PROBING_SLURM_KEEP"):  # set it to keep the logs and state for a post-mortem
            shutil.rmtree(root, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _wait_for(ok: Any, timeout: float, message: str, cluster: SlurmCluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ok():
            return
        for name, proc in cluster.daemons.items():
            if proc.poll() is not None:
                raise SlurmUnavailable(f"{name} exited ({proc.returncode}):\n{cluster.logs()}")
        time.sleep(0.2)
    raise SlurmUnavailable(f"{message} within {timeout} s:\n{cluster.logs()}")
