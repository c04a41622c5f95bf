"""NPZ runs are a Zarr run exported at finalize: is the time linear in the run's size?

Writes pooled runs of N examples x 7 layers x 384 float32 (all-MiniLM-L6-v2's shape) through
`NPZStorage` (batches of 32 in dataset order) and times finalize (the export to ``activations.npz``
included), against the same run in `ZarrStorage` (finalize only marks it completed); prints seconds
and microseconds per example, so a quadratic cost shows as a growing per-example time.

    python bench/npz_export.py [--sizes 250 500 1000 10000 100000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from probing import NPZStorage, ZarrStorage, open_run


def finalize_seconds(storage, n: int, layers: int = 7, dim: int = 384) -> float:  # type: ignore[no-untyped-def]
    keys = ["embeddings", *[f"blocks.{i}" for i in range(layers - 1)]]
    rng = np.random.default_rng(0)
    block = rng.normal(size=(32, dim)).astype(np.float32)
    w = storage.open_run("r", metadata={"layers": keys, "dataset": {"n_examples": n}})
    for s in range(0, n, 32):
        ids = np.arange(s, min(n, s + 32))
        w.append(s, {k: block[: len(ids)] for k in keys}, {"example_ids": ids})
    t0 = time.perf_counter()
    w.finalize({"text": [f"sentence {i}" for i in range(n)]})
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000, 10_000, 100_000])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "npz_export.json"))
    a = ap.parse_args()
    rows = []
    print(f"{'examples':>9} {'npz finalize s':>15} {'us/example':>11} {'zarr finalize s':>16} {'npz MB':>8}")
    for n in a.sizes:
        tmp = tempfile.mkdtemp(dir=".")
        try:
            t_npz = finalize_seconds(NPZStorage(f"{tmp}/npz"), n)
            t_zarr = finalize_seconds(ZarrStorage(f"{tmp}/zarr"), n)
            size = (Path(tmp) / "npz" / "r" / "activations.npz").stat().st_size / 1e6
            with open_run(f"{tmp}/npz/r") as r:
                assert r.activations("blocks.5").shape == (n, 384)
            rows.append({"examples": n, "npz_finalize_s": t_npz, "zarr_finalize_s": t_zarr, "npz_mb": size})
            print(f"{n:>9,} {t_npz:>15.2f} {1e6 * t_npz / n:>11.1f} {t_zarr:>16.3f} {size:>8.1f}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    Path(a.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
