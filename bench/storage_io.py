"""On-disk size and write / read throughput of every storage backend, dtype and codec, on real activations.

Data: (a) 10,000 x 384 pooled vectors (all-MiniLM-L6-v2, last block, mean, built-in sentences);
(b) the UD English EWT dev split at word level (all 7 layers, first sub-token; skipped if ../shared
is absent). Each configuration streams the same arrays through `open_run(...).append(...)` in
batches of 32 examples and finalizes; reading is `open_run(...).activations(layer)` for every layer.
Ratios are against Zarr float32 uncompressed, run in the same process.

    python bench/storage_io.py [--out bench/results/storage_io.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ud-english-ewt"


def pooled_data(n: int) -> dict[str, Any]:
    from probing import ActivationExtractor, MeanStrategy, ModelBackend
    from probing.data.builtin import generate

    model = ModelBackend().load_model("sentence-transformers/all-MiniLM-L6-v2")
    extractor = ActivationExtractor(model, layers=[-1], strategy=MeanStrategy())
    texts = [r["text"] for r in generate(n)]
    parts = [extractor.extract(texts[i : i + 256]).activations["blocks.5"] for i in range(0, n, 256)]
    return {"layers": {"blocks.5": np.concatenate(parts)}, "lengths": None}


def word_data(tmp: str) -> dict[str, Any] | None:
    if not SHARED.is_dir():
        return None
    from probing import ActivationExtractor, DatasetRunner, ModelBackend, WordsStrategy, ZarrStorage, open_run
    from probing.data.loaders import load_conllu

    model = ModelBackend().load_model("sentence-transformers/all-MiniLM-L6-v2")
    extractor = ActivationExtractor(model, layers="all", strategy=WordsStrategy("first"))
    data = load_conllu(str(SHARED / "en_ewt-ud-dev.conllu"))
    run = DatasetRunner(data, 32, extractor, ZarrStorage(tmp), words_field="words", progress=False).run()
    r = open_run(run.path)
    return {"layers": {k: r.activations(k) for k in r.layers}, "lengths": np.diff(r.offsets)}


def storages(root: str) -> dict[str, Any]:
    from probing import HDF5Storage, NPZStorage, ZarrStorage

    out: dict[str, Any] = {}
    for dtype in ("float32", "float16"):
        out[f"zarr {dtype} none"] = ZarrStorage(f"{root}/z-{dtype}-none", dtype=dtype)
        out[f"zarr {dtype} zstd-3"] = ZarrStorage(f"{root}/z-{dtype}-zstd", dtype=dtype, compressor="zstd")
        out[f"zarr {dtype} blosc-zstd-3+shuffle"] = ZarrStorage(f"{root}/z-{dtype}-blosc", dtype=dtype,
                                                                 compressor="blosc")
        out[f"hdf5 {dtype} none"] = HDF5Storage(f"{root}/h-{dtype}-none", dtype=dtype)
        out[f"hdf5 {dtype} gzip-4"] = HDF5Storage(f"{root}/h-{dtype}-gzip", dtype=dtype, compression="gzip",
                                                  compression_level=4)
        out[f"npz {dtype}"] = NPZStorage(f"{root}/n-{dtype}", dtype=dtype)
    return out


def size_of(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def measure(storage: Any, data: dict[str, Any]) -> dict[str, float]:
    from probing import open_run

    layers: dict[str, np.ndarray] = data["layers"]
    lengths = data["lengths"]
    n = len(next(iter(layers.values()))) if lengths is None else len(lengths)
    offsets = np.arange(n + 1) if lengths is None else np.concatenate([[0], np.cumsum(lengths)])
    meta = {"layers": list(layers), "dataset": {"n_examples": n}, "mode": "pooled" if lengths is None else "words"}
    t0 = time.perf_counter()
    if lengths is None:
        w = storage.open_run("r", metadata=meta)
    else:  # token-level rows are placed from their counts, known up front
        from probing.storage.ranges import Ranges

        shapes = {k: v.shape[1:] for k, v in layers.items()}
        layout = storage.layout(n, shapes, ragged=True, total_rows=int(offsets[-1]))
        w = storage.open_run("r", metadata=meta, layout=layout, share=Ranges.span(0, n), row_starts=offsets)
    for b, s in enumerate(range(0, n, 32)):
        e = min(n, s + 32)
        rows = slice(int(offsets[s]), int(offsets[e]))
        md: dict[str, Any] = {"example_ids": np.arange(s, e)}
        if lengths is not None:
            md["row_counts"] = lengths[s:e]
        w.append(b, {k: v[rows] for k, v in layers.items()}, md)
    w.finalize()
    t_write = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = open_run(w.path)
    for k in layers:
        r.activations(k)
    t_read = time.perf_counter() - t0
    raw = sum(v.nbytes for v in layers.values())
    return {"size_mb": size_of(w.path) / 1e6, "write_mb_s": raw / 1e6 / t_write, "read_mb_s": raw / 1e6 / t_read,
            "raw_f32_mb": raw / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--out", default="bench/results/storage_io.json")
    a = ap.parse_args()
    results: dict[str, Any] = {}
    tmp = tempfile.mkdtemp(dir=".")
    try:
        sets = {"pooled 10k x 384": pooled_data(a.n)}
        words = word_data(f"{tmp}/src")
        if words is not None:
            sets[f"UD dev words {len(words['lengths'])} sent. x 7 layers"] = words
        else:
            print("UD EWT not found (../shared absent): word-level set skipped", file=sys.stderr)
        for name, data in sets.items():
            print(f"\n{name}: raw float32 {sum(v.nbytes for v in data['layers'].values()) / 1e6:.1f} MB")
            print(f"{'backend dtype codec':<34}{'size MB':>9}{'x':>6}{'write MB/s':>11}{'x':>6}"
                  f"{'read MB/s':>10}{'x':>6}")
            rows = {}
            for label, storage in storages(f"{tmp}/{abs(hash(name))}").items():
                rows[label] = measure(storage, data)
            base = rows["zarr float32 none"]
            for label, r in rows.items():
                print(f"{label:<34}{r['size_mb']:>9.1f}{r['size_mb'] / base['size_mb']:>6.2f}"
                      f"{r['write_mb_s']:>11.0f}{r['write_mb_s'] / base['write_mb_s']:>6.2f}"
                      f"{r['read_mb_s']:>10.0f}{r['read_mb_s'] / base['read_mb_s']:>6.2f}")
            results[name] = rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
