"""Read-back speed of `reader.loader` against the disk's own sequential read bandwidth.

1. Two synthetic token-level runs of >= 2 GB each (float32 and float16; one layer of 768, ~64 rows per
   example) are written through the real API (`ZarrStorage.open_run` -> `RunWriter.append` ->
   `finalize`), not by running a model: the values are random, the files are what an extraction writes.
2. Each round (interleaved, ``--rounds``): the page cache is emptied for the run's files with
   ``posix_fadvise(POSIX_FADV_DONTNEED)`` (works without root; `fincore` confirms), then
   - the disk: ``dd`` of a 4 GB file with ``iflag=direct`` (no page cache at all), and a plain
     ``cat`` of every chunk file of the float32 run, in order, after the same eviction;
   - the loader, each configuration in its own process (its peak RSS, and its workers', is its own):
     shuffled or not, float16 or float32 run, 1 or 2 DataLoader workers (``num_workers=0``, the loader in
     the training process, is reported too).
   MB/s are bytes of the stored layer read per second (a float16 run is half the bytes per row: rows/s
   are given too). Ratios are against the dd figure of the same round; medians over rounds.
3. Everything written is deleted at the end (the disk is shared).

    python bench/readback.py [--gb 2] [--rounds 3] [--dir /tmp/probing-readback] [--out bench/results/readback.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DIM = 768
BATCH = 4096


def evict(paths: list[Path]) -> None:
    """Drop the page cache of these files (no root needed; dirty pages are written first)."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def files_of(run: Path) -> list[Path]:
    return sorted(p for p in (run / "layers").rglob("*") if p.is_file() and p.name != "zarr.json")


def cached_fraction(paths: list[Path]) -> float | None:
    """Share of the files' bytes in the page cache (from util-linux `fincore`), None if unavailable."""
    if shutil.which("fincore") is None:
        return None
    total = cached = 0
    for i in range(0, len(paths), 500):
        out = subprocess.run(["fincore", "-b", "-n", "-o", "RES,SIZE", *map(str, paths[i : i + 500])],
                             capture_output=True, text=True).stdout.split()
        cached += sum(int(x) for x in out[0::2])
        total += sum(int(x) for x in out[1::2])
    return cached / total if total else None


def write_run(root: Path, dtype: str, gb: float) -> Path:
    """A token-level run of ``gb`` GB of activations through the storage API (random values)."""
    from probing.storage.ranges import Ranges
    from probing.storage.zarr_store import ZarrStorage

    itemsize = np.dtype(dtype).itemsize
    total_rows = int(gb * 1e9 / (DIM * itemsize)) + 1
    rng = np.random.default_rng(0)
    counts = rng.integers(16, 113, size=total_rows // 32 + 2)  # mean 64 rows per example
    starts = np.concatenate([[0], np.cumsum(counts)])
    n = int(np.searchsorted(starts, total_rows))  # the first n examples hold >= total_rows rows
    counts, starts = counts[:n], starts[: n + 1]
    storage = ZarrStorage(str(root), dtype=dtype)
    layout = storage.layout(n, {"blocks.6": (DIM,)}, ragged=True, total_rows=int(starts[-1]))
    meta = {"layers": ["blocks.6"], "dataset": {"n_examples": n}, "mode": "tokens"}
    w = storage.open_run(f"tok-{dtype}", metadata=meta, layout=layout, share=Ranges.span(0, n), row_starts=starts)
    block = rng.standard_normal((200_000, DIM), dtype=np.float32)  # reused: values do not matter here
    for b, s in enumerate(range(0, n, 256)):
        ids = np.arange(s, min(n, s + 256))
        rows = int(starts[ids[-1] + 1] - starts[s])
        at = (b * 7919) % (len(block) - rows)
        w.append(b, {"blocks.6": block[at : at + rows]},
                 {"example_ids": ids, "token_counts": counts[ids], "row_counts": counts[ids]})
    w.finalize()
    return Path(w.path)


def dd_direct(path: Path) -> float:
    """MB/s of ``dd iflag=direct`` (O_DIRECT: the page cache is not involved)."""
    size = path.stat().st_size
    t0 = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=16M", "iflag=direct"], check=True, capture_output=True)
    return size / 1e6 / (time.perf_counter() - t0)


def cat_files(paths: list[Path]) -> float:
    """MB/s of reading every file whole, in order, buffered (after `evict`)."""
    t0 = time.perf_counter()
    size = 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            size += len(f.read())
    return size / 1e6 / (time.perf_counter() - t0)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def one(run: str, shuffle: bool, workers: int, keep_dtype: bool = False) -> dict[str, Any]:
    """Run the loader over the whole layer once (called in a fresh process). Peak RSS of this process
    is above its RSS after the imports (torch, zarr, probing: ~600 MiB, not the loader's); a worker's peak
    is its own (it starts as a fork of this process). ``keep_dtype``: batches in the stored dtype (no
    float16 -> float32 conversion)."""
    import torch  # noqa: F401 - imports before the clock: the loader's time is reading, not importing

    import probing.storage.loader  # noqa: F401
    from probing import open_run

    base_rss = _status_kib("VmRSS") / 1024  # after the imports: what the loader adds is the peak above it
    t0 = time.perf_counter()
    rows = 0
    with open_run(run) as r:
        loader = r.loader("blocks.6", BATCH, shuffle=shuffle, seed=0, **({"dtype": None} if keep_dtype else {}))
        itemsize = loader.stored_dtype.itemsize
        for batch in loader.dataloader(num_workers=workers):
            rows += len(batch)
    seconds = time.perf_counter() - t0
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
    peak_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"rows": rows, "seconds": seconds, "mb_s": rows * DIM * itemsize / 1e6 / seconds,
            "rows_per_s": rows / seconds, "peak_rss_mib": round(peak_self, 1),
            "peak_worker_rss_mib": round(peak_children, 1) if workers else None,
            "buffer_mib": round(loader.buffer_bytes / 2**20, 1)}


def name(dtype: str, shuffle: bool, workers: int, keep_dtype: bool) -> str:
    out = " -> float16 batches" if keep_dtype else ""
    return f"{dtype} {'shuffled' if shuffle else 'in order'} workers={workers}{out}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "probing-readback"))  # outside the repo
    ap.add_argument("--out", default="bench/results/readback.json")
    ap.add_argument("--keep", action="store_true", help="keep the runs in --dir and reuse them when there")
    ap.add_argument("--one", nargs=4, metavar=("RUN", "SHUFFLE", "WORKERS", "KEEP_DTYPE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one[0], a.one[1] == "1", int(a.one[2]), a.one[3] == "1")))
        return
    root = Path(a.dir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        runs = {dt: (root / f"tok-{dt}" if a.keep and (root / f"tok-{dt}" / "zarr.json").exists()
                     else write_run(root, dt, a.gb)) for dt in ("float32", "float16")}
        write_s = time.perf_counter() - t0
        big = root / "dd.bin"
        if not (a.keep and big.exists()):
            subprocess.run(["dd", "if=/dev/urandom", f"of={big}", "bs=16M", f"count={int(2 * a.gb * 1e9 / 2**24)}"],
                           check=True, capture_output=True)
        files = {dt: files_of(p) for dt, p in runs.items()}
        sizes = {dt: sum(f.stat().st_size for f in fs) / 1e9 for dt, fs in files.items()}
        print(f"wrote {sizes} GB (layer files) in {write_s:.0f} s; dd file {big.stat().st_size / 1e9:.1f} GB")
        configs = [(dt, sh, w, False) for dt in ("float32", "float16") for sh in (True, False) for w in (0, 1, 2)]
        configs += [("float16", True, 0, True), ("float16", False, 0, True)]  # batches kept in float16
        rounds: list[dict[str, Any]] = []
        for k in range(a.rounds):
            rec: dict[str, Any] = {"load_average_1min": os.getloadavg()[0]}
            evict([big])
            rec["dd_direct_mb_s"] = dd_direct(big)
            evict(files["float32"])
            rec["cached_before_cat"] = cached_fraction(files["float32"])
            rec["cat_chunk_files_mb_s"] = cat_files(files["float32"])
            for dt, sh, w, keep in configs:
                evict(files[dt])
                out = subprocess.run([sys.executable, __file__, "--one", str(runs[dt]), str(int(sh)), str(w),
                                      str(int(keep))], check=True, capture_output=True, text=True).stdout
                res = json.loads(out.strip().splitlines()[-1])
                rec[name(dt, sh, w, keep)] = res
            rounds.append(rec)
            print(f"round {k}: dd {rec['dd_direct_mb_s']:.0f} MB/s, cat {rec['cat_chunk_files_mb_s']:.0f} MB/s, "
                  f"cached before {rec['cached_before_cat']}")
        table = []
        for dt, sh, w, keep in configs:
            key = name(dt, sh, w, keep)
            per = [r[key] for r in rounds]
            table.append({
                "config": key,
                "mb_s": statistics.median(p["mb_s"] for p in per),
                "rows_per_s": statistics.median(p["rows_per_s"] for p in per),
                "of_dd": statistics.median(p["mb_s"] / r["dd_direct_mb_s"] for p, r in zip(per, rounds, strict=True)),
                "of_cat": statistics.median(p["mb_s"] / r["cat_chunk_files_mb_s"]
                                            for p, r in zip(per, rounds, strict=True)),
                "peak_rss_mib": max(p["peak_rss_mib"] for p in per),
                "peak_worker_rss_mib": max((p["peak_worker_rss_mib"] or 0) for p in per) or None,
                "buffer_mib": per[0]["buffer_mib"],
            })
        summary = {
            "dd_direct_mb_s": statistics.median(r["dd_direct_mb_s"] for r in rounds),
            "cat_chunk_files_mb_s": statistics.median(r["cat_chunk_files_mb_s"] for r in rounds),
            "layer_gb": sizes, "write_seconds": write_s, "batch_rows": BATCH, "dim": DIM,
            "cache": "posix_fadvise DONTNEED per file before each measurement (no sudo); dd with iflag=direct",
            "machine": f"{os.cpu_count()}-core shared VM; 1-min load average at the rounds' starts: "
                       f"{[round(r['load_average_1min'], 1) for r in rounds]}",
        }
        print(f"\ndisk: dd iflag=direct {summary['dd_direct_mb_s']:.0f} MB/s, cat of the chunk files "
              f"{summary['cat_chunk_files_mb_s']:.0f} MB/s")
        print("| loader | MB/s | rows/s | of dd | of cat | peak RSS MiB (main above imports / worker) | buffer MiB |")
        print("|---|---|---|---|---|---|---|")
        for t in table:
            print(f"| {t['config']} | {t['mb_s']:.0f} | {t['rows_per_s']:,.0f} | {t['of_dd']:.2f} | {t['of_cat']:.2f} "
                  f"| {t['peak_rss_mib']:.0f} / {t['peak_worker_rss_mib'] or '-'} | {t['buffer_mib']} |")
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"summary": summary, "table": table, "rounds": rounds}, indent=1))
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
