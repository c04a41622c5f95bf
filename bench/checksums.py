"""What per-chunk checksums (zarr's crc32c codec) cost on write and read, against no checksums.

Writes a float32 array of ``--rows`` x ``--dim`` (the layer of a run) in whole chunks through
`probing`'s Zarr store, then reads it back in blocks, with and without checksums, uncompressed and
with zstd. Rounds are interleaved (on, off, on, off, ...) and the table gives the median of the
per-round ratios, so a noisy machine shifts both sides of a ratio alike. The page cache is not
dropped: reads are from memory, which is where a checksum's CPU cost shows most.

    python bench/checksums.py [--rows 200000] [--dim 384] [--rounds 5] [--out bench/results/checksums.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from probing.storage.zarr_store import ZarrArrays, _compressors


def one(root: Path, data: np.ndarray, chunk: int, checksums: bool, compressor: str) -> tuple[float, float]:
    path = root / f"a-{checksums}-{compressor}"
    shutil.rmtree(path, ignore_errors=True)
    store = ZarrArrays(str(path), "w", _compressors(compressor, None), checksums=checksums)
    store.create("x", len(data), data.shape[1:], data.dtype, chunk, compress=compressor != "none")
    t0 = time.perf_counter()
    for a in range(0, len(data), chunk):
        store.write("x", a, data[a : a + chunk])
    write = time.perf_counter() - t0
    reader = ZarrArrays(str(path), "r")
    t0 = time.perf_counter()
    for a in range(0, len(data), 16 * chunk):
        reader.read("x", a, a + 16 * chunk)
    read = time.perf_counter() - t0
    shutil.rmtree(path, ignore_errors=True)
    return write, read


def run_rounds(rounds: int, n: int) -> dict[str, list[float]]:
    """Extraction seconds of the embedded default (all-MiniLM-L6-v2, all layers, mean) with and without
    checksums, interleaved."""
    from probing import ActivationExtractor, DatasetRunner, MeanStrategy, ModelBackend, ZarrStorage
    from probing.data.builtin import generate

    model = ModelBackend().load_model("sentence-transformers/all-MiniLM-L6-v2")
    data = generate(n, seed=0)
    out: dict[str, list[float]] = {"crc32c": [], "plain": []}
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        for r in range(rounds):
            for checksums in (True, False):
                extractor = ActivationExtractor(model, layers="all", strategy=MeanStrategy())
                storage = ZarrStorage(f"{tmp}/{r}-{checksums}", checksums=checksums)
                t0 = time.perf_counter()
                DatasetRunner(data, 32, extractor, storage, progress=False, announce=False).run()
                out["crc32c" if checksums else "plain"].append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--chunk", type=int, default=1365)  # about 2 MiB of float32 x 384, as runs use
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default="bench/results/checksums.json")
    parser.add_argument("--run-examples", type=int, default=2000, help="examples of the run rounds (0: none)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    data = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    mb = data.nbytes / 2**20
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        for _ in range(args.rounds):
            for compressor in ("none", "zstd"):
                for checksums in (True, False):
                    w, r = one(Path(tmp), data, args.chunk, checksums, compressor)
                    rec = results.setdefault(f"{compressor}/{'crc32c' if checksums else 'plain'}", {"w": [], "r": []})
                    rec["w"].append(w)
                    rec["r"].append(r)
    print(f"{mb:.0f} MiB float32 ({args.rows} x {args.dim}), chunks of {args.chunk} rows, "
          f"{args.rounds} interleaved rounds")
    print("| codecs | write MiB/s (crc32c) | write MiB/s (none) | write ratio | read MiB/s (crc32c) "
          "| read MiB/s (none) | read ratio |")
    print("|---|---|---|---|---|---|---|")
    table = {}
    for compressor in ("none", "zstd"):
        on, off = results[f"{compressor}/crc32c"], results[f"{compressor}/plain"]
        wr = statistics.median(a / b for a, b in zip(on["w"], off["w"], strict=True))
        rr = statistics.median(a / b for a, b in zip(on["r"], off["r"], strict=True))
        row = {
            "write_mib_s_crc32c": mb / statistics.median(on["w"]),
            "write_mib_s_plain": mb / statistics.median(off["w"]),
            "write_time_ratio": wr, "read_mib_s_crc32c": mb / statistics.median(on["r"]),
            "read_mib_s_plain": mb / statistics.median(off["r"]), "read_time_ratio": rr,
        }
        table[compressor] = row
        print(f"| {compressor} | {row['write_mib_s_crc32c']:.0f} | {row['write_mib_s_plain']:.0f} | {wr:.3f} | "
              f"{row['read_mib_s_crc32c']:.0f} | {row['read_mib_s_plain']:.0f} | {rr:.3f} |")
    print("ratio: time with crc32c / time without, median of per-round ratios (1.05 = 5% slower)")
    runs = run_rounds(args.rounds, args.run_examples) if args.run_examples else {}
    if runs:
        ratio = statistics.median(a / b for a, b in zip(runs["crc32c"], runs["plain"], strict=True))
        print(f"\nwhole run, embedded default ({args.run_examples} examples, 7 layers, mean): "
              f"{statistics.median(runs['crc32c']):.2f} s with crc32c, {statistics.median(runs['plain']):.2f} s "
              f"without; ratio {ratio:.3f} (median of {args.rounds} interleaved rounds)")
        table["run"] = {"seconds_crc32c": runs["crc32c"], "seconds_plain": runs["plain"], "time_ratio": ratio}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "table": table, "raw": results}, indent=2))


if __name__ == "__main__":
    main()
