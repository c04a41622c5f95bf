"""The README's quick starts run as written (the Python block, and the CLI lines that need no hub)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from cli_helpers import cli, run_path

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.slow


def test_the_python_quick_start_runs_as_written(tmp_path, monkeypatch, capsys):
    block = re.search(r"## Python quick start\s+```python\n(.*?)```", README.read_text(), re.S)
    assert block is not None
    monkeypatch.chdir(tmp_path)
    exec(compile(block.group(1), "README.md", "exec"), {})  # noqa: S102 - the README's own code
    out = capsys.readouterr().out
    assert "['embeddings', 'blocks.0', 'blocks.5']" in out
    assert float(out.strip().splitlines()[-1]) > 0.9  # "!" at the end of a text is easy to find


def test_the_cli_quick_start_lines_that_need_no_hub(tmp_path):
    proc = cli("data.limit=40", "progress=false", "probe_after_extract=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = str(run_path(proc.stdout))
    for args in (["--help"], ["info", run], ["probe", run, "--labels", "length,depth", "--method", "both"],
                 ["layers", "sentence-transformers/all-MiniLM-L6-v2"], ["--cfg", "job"],
                 ["plot", run, run, "--kind", "curves"], ["report", run]):
        done = cli(*args, cwd=tmp_path)
        assert done.returncode == 0, (args, done.stderr[-2000:])
    assert os.path.isdir(os.path.join(tmp_path, run, "probes"))
    assert len(list(Path(tmp_path, run, "probes").glob("*/report.html"))) == 1  # `probe` wrote it; `report` rewrote it
    assert Path(tmp_path, run, "plots", "curves.png").exists()
