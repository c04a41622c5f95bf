"""Run ``python -m probing`` as a subprocess, as users do, bounded in time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TIMEOUT = 300


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PROBING_", "MASTER_", "LOCAL_RANK"))}
    base.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "probing", *args], cwd=cwd, env=base, capture_output=True, text=True, timeout=timeout
    )


def run_path(stdout: str) -> Path:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("run: "))
    return Path(line[5:].strip())
