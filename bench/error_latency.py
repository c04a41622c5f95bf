"""Seconds from start to the error message, for the bad inputs of tests/test_cli.py, per version of `probing`.

Each case is a fresh ``python -m probing`` subprocess (a tiny random GPT-2 saved to a folder, a small
JSONL file); the time is the wall time until the process exits, and the message is its last stderr
line. ``--compare LABEL=PYTHON ...`` runs every case with each interpreter, back to back.

    python bench/error_latency.py [--compare before=/old/.venv/bin/python after=.venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = [
    ("cls on a decoder", ["+strategy=cls"]),
    ("layer out of range", ["layers=[9]"]),
    ("missing data file", ["data=files", "data.path=missing.jsonl"]),
    ("missing text field", ["data=files", "data.path={jsonl}", "data.text_field=sentence"]),
    ("missing label field", ["data=files", "data.path={jsonl}", "data.fields=[nope]"]),
    ("misspelled key", ["data.limt=5"]),
    ("wrong type", ["data.batch_size=abc"]),
    ("wrong value", ["storage.dtype=bf16"]),
    ("words without word lists", ["+strategy=words"]),
    ("missing model folder", ["model.name_or_path=./no/such/folder"]),
    ("output_dir is a file", ["output_dir={jsonl}"]),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--compare", nargs="+", default=[f"current={sys.executable}"])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "error_latency.json"))
    a = ap.parse_args()
    versions = [tuple(v.split("=", 1)) for v in a.compare]
    tmp = Path(tempfile.mkdtemp())
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_tiny_model

    model = make_tiny_model("gpt2", tmp / "gpt2")
    jsonl = tmp / "data.jsonl"
    jsonl.write_text('{"text": "the cat sat", "label": 1}\n')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    for name, overrides in CASES:
        for label, python in versions:
            args = [o.format(jsonl=jsonl) for o in overrides]
            t0 = time.perf_counter()
            proc = subprocess.run([python, "-m", "probing", f"model.name_or_path={model}", *args, "data.limit=4"],
                                  cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
            seconds = time.perf_counter() - t0
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            rows.append({"case": name, "version": label, "seconds": round(seconds, 2), "exit": proc.returncode,
                         "stderr_lines": len(lines), "message": lines[-1][:160] if lines else ""})
            print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"{'case':<26}" + "".join(f"{v:>12}" for v, _ in versions) + "   exit codes / lines of stderr")
    for name, _ in CASES:
        got = [r for r in rows if r["case"] == name]
        print(f"{name:<26}" + "".join(f"{r['seconds']:>11.1f}s" for r in got) + "   "
              + ", ".join(f"{r['exit']}/{r['stderr_lines']}" for r in got))
    Path(a.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
