"""Probe time on a stored run with and without the MDL codelengths, in interleaved rounds (issue 15, point 6).

    python bench/probe_speed.py RUN_PATH [--labels upos] [--rounds 3] [--baseline-src /path/to/older/checkout]

Each round probes the run with ``mdl=False`` and ``mdl=True`` (same process, same labels), and, with
``--baseline-src``, with the code of an older checkout in a subprocess (today's time before this change).
Prints per-round seconds and the median of per-round ratios against the mdl=False run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

OLD = """
import sys, time
sys.path.insert(0, {src!r})
from probing.probes import probe_run
t = time.perf_counter()
probe_run({run!r}, label_fields={labels!r}, write=False, progress=False)
print(time.perf_counter() - t)
"""


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--labels", default="upos")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--baseline-src", default=None, help="a checkout whose probe_run is timed as the baseline")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    from probing.probes import probe_run

    labels = args.labels.split(",")
    rows = []
    for k in range(args.rounds):
        row: dict[str, float] = {}
        if args.baseline_src:
            code = OLD.format(src=args.baseline_src, run=args.run, labels=labels)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            row["before"] = float(out.stdout.strip().splitlines()[-1])
        for mdl in (False, True):
            t = time.perf_counter()
            probe_run(args.run, label_fields=labels, write=False, progress=False, mdl=mdl)
            row["mdl" if mdl else "no_mdl"] = time.perf_counter() - t
        rows.append(row)
        print(f"round {k + 1}: " + ", ".join(f"{n} {v:.1f} s" for n, v in row.items()), flush=True)
    print("\n| run | median s | median ratio to mdl=False |\n|---|---|---|")
    for name in rows[0]:
        ratios = [r[name] / r["no_mdl"] for r in rows]
        print(f"| {name} | {statistics.median(r[name] for r in rows):.1f} | {statistics.median(ratios):.2f} |")
    if "before" in rows[0]:
        print(f"\nmdl=True / before: {statistics.median(r['mdl'] / r['before'] for r in rows):.2f} (median of rounds)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"run": args.run, "labels": labels, "rounds": rows}, f, indent=1)


if __name__ == "__main__":
    main()
