"""Peak memory and throughput of `python -m probing` on the embedded default, by dataset size and batching.

Each configuration runs as a fresh subprocess of the CLI; its peak RSS comes from ``wait4``. Prints a
table with ratios against the first row (2k examples, bucketing on) and writes it as JSON.

    python bench/cli_scaling.py [--sizes 2000 20000] [--out bench/results/cli_scaling.json]
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


def run_cli(args: list[str], cwd: str) -> dict[str, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "probing", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = proc.stdout.read() if proc.stdout else ""
    if status != 0:
        raise RuntimeError(f"probing failed: {proc.stderr.read() if proc.stderr else ''}")
    run = Path(cwd) / next(ln[5:].strip() for ln in out.splitlines() if ln.startswith("run: "))
    import zarr

    stats = dict(zarr.open_group(str(run), mode="r").attrs["probing"])["stats"]["total"]
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, **stats}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--out", default="bench/results/cli_scaling.json")
    a = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        configs = [(n, True) for n in a.sizes] + [(a.sizes[0], False)]
        for n, bucketing in configs:
            args = [f"data.n_examples={n}", f"data.bucketing={str(bucketing).lower()}", "progress=false", "output_dir=runs",
                    "probe_after_extract=false"]
            r = run_cli(args, tmp)
            rows.append({"examples": n, "bucketing": bucketing, **r})
            print(f"done: {n} bucketing={bucketing}", file=sys.stderr)
    base = rows[0]
    print(f"{'examples':>8} {'bucketing':>9} {'wall s':>7} {'extract s':>9} {'tokens/s':>9} {'x base':>6} "
          f"{'padding':>7} {'peak RSS MiB':>12} {'x base':>6}")
    for r in rows:
        print(f"{r['examples']:>8} {str(r['bucketing']):>9} {r['wall_s']:>7.1f} {r['seconds']:>9.1f} "
              f"{r['real_tokens_per_s']:>9,.0f} {r['real_tokens_per_s'] / base['real_tokens_per_s']:>6.2f} "
              f"{100 * r['padding_fraction']:>6.1f}% {r['peak_rss_mib']:>12.0f} {r['peak_rss_mib'] / base['peak_rss_mib']:>6.2f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
