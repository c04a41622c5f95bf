"""bench/gpu_check.sh --dry-run: the GPU check runs end to end on a CPU (tiny inputs; figures mean nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_gpu_check_dry_run_writes_every_measurement(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out)}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["dry_run"] is True
    assert len(result["models"]) == 2
    for model in result["models"].values():
        assert model["bare_forward"]["tokens_per_s"] > 0
        assert set(model["runs"]) == {f"{s}, {w} writer" for s in ("mean", "tokens") for w in ("background", "inline")}
        assert all(run["x_bare"] > 0 for run in model["runs"].values())
    assert result["ddp"]["1"]["tokens_per_s"] > 0, result["ddp"]


def test_gpu_check_refuses_unknown_arguments():
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--fast"], capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown argument --fast" in proc.stderr
