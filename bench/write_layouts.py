"""How should several ranks make a run readable in dataset order? Three ways, measured in one process.

Writes N x D float32 rows as 2 ranks would (contiguous shares, batches shuffled within windows of
3,200 examples, as length bucketing does), three ways, into a local Zarr store that counts the bytes
handed to it:

- direct: `probing`'s writer: each rank puts rows straight to their place in dataset order, in whole
  chunks; the chunk where the two shares meet is a seam, copied into place at finalize;
- parts + merge: each rank appends rows in arrival order to its own part, and finalize copies every
  part into one array in dataset order (what `probing` did before);
- order index: the parts only; a reader keeps (part, row) for every example and gathers rows.

Then times the reads that matter: the whole layer, 10k contiguous examples, 2,000 random examples.
Every layout stores a crc32c per chunk, as `probing` does (docs/reliability.md). The direct writer is
`probing`'s own, called once per batch of 32 (its per-batch bookkeeping is in its write time); the
other two write whole chunks with bare zarr calls.

    python bench/write_layouts.py [--n 200000] [--dim 1024] [--out bench/results/write_layouts.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec

from probing.storage.ranges import Ranges
from probing.storage.zarr_store import ZarrStorage

WINDOW = 3200
BATCH = 32


class Counting:
    """A zarr LocalStore that counts the bytes written per key prefix."""

    def __init__(self) -> None:
        self.bytes = 0

    def open_group(self, path: str, mode: str) -> Any:
        from zarr.storage import LocalStore

        counter = self

        class Store(LocalStore):
            async def set(self, key, value):  # type: ignore[no-untyped-def]
                if not key.endswith("zarr.json"):
                    counter.bytes += len(value)
                await super().set(key, value)

        return zarr.open_group(store=Store(path, read_only=mode == "r"), mode=mode)


def arrival_orders(n: int, world: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for r in range(world):
        ids = np.arange(n * r // world, n * (r + 1) // world)
        for s in range(0, len(ids), WINDOW):
            ids[s : s + WINDOW] = rng.permutation(ids[s : s + WINDOW])
        out.append(ids)
    return out


def rows(ids: np.ndarray, dim: int) -> np.ndarray:
    return (ids[:, None] + np.arange(dim)[None, :] * 1e-3).astype(np.float32)  # row i is known


def direct(root: str, n: int, dim: int, counting: Counting) -> dict[str, float]:
    import probing.storage.zarr_store as zs

    original = zs._open_group
    zs._open_group = counting.open_group  # type: ignore[assignment]
    try:
        storage = ZarrStorage(root)
        layout = storage.layout(n, {"blocks.0": (dim,)})
        meta = {"layers": ["blocks.0"], "dataset": {"n_examples": n}}
        orders = arrival_orders(n, 2)
        shares = [Ranges.span(int(o.min()), int(o.max()) + 1) for o in orders]
        t0 = time.perf_counter()
        writers = [storage.open_run("r", metadata=meta, world_size=2, layout=layout, share=shares[0])]
        writers.append(storage.open_run("r", rank=1, world_size=2, share=shares[1]))
        for w, ids in zip(writers, orders, strict=True):
            for b in range(0, len(ids), BATCH):
                w.append(b, {"blocks.0": rows(ids[b : b + BATCH], dim)}, {"example_ids": ids[b : b + BATCH]})
            w.close(finished=True)
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        writers[0].finalize()
        return {"write_s": t_write, "finalize_s": time.perf_counter() - t0}
    finally:
        zs._open_group = original  # type: ignore[assignment]


def parts(root: str, n: int, dim: int, counting: Counting, merge: bool) -> dict[str, float]:
    group = counting.open_group(root, "w")
    chunk = max(1, (2 * 2**20) // (dim * 4))
    t0 = time.perf_counter()
    for r, ids in enumerate(arrival_orders(n, 2)):
        arr = group.create_array(f"parts/{r}/x", shape=(len(ids), dim), chunks=(chunk, dim), dtype="float32",
                                 compressors=[Crc32cCodec()], config={"write_empty_chunks": True})
        group.create_array(f"parts/{r}/ids", shape=(len(ids),), chunks=(len(ids),), dtype="int64")[:] = ids
        for s in range(0, len(ids), chunk):  # whole chunks, in arrival order
            arr[s : s + chunk] = rows(ids[s : s + chunk], dim)
    t_write = time.perf_counter() - t0
    out = {"write_s": t_write, "finalize_s": 0.0}
    if merge:
        t0 = time.perf_counter()
        final = group.create_array("layers/x", shape=(n, dim), chunks=(chunk, dim), dtype="float32",
                                   compressors=[Crc32cCodec()], config={"write_empty_chunks": True})
        srcs = [(group[f"parts/{r}/x"], group[f"parts/{r}/ids"][:]) for r in range(2)]
        block = 2 * WINDOW
        for e0 in range(0, n, block):
            e1 = min(n, e0 + block)
            buf = np.empty((e1 - e0, dim), np.float32)
            for arr, ids in srcs:
                sel = np.flatnonzero((ids >= e0) & (ids < e1))
                if len(sel):
                    data = arr[int(sel.min()) : int(sel.max()) + 1]
                    buf[ids[sel] - e0] = data[sel - sel.min()]
            final[e0:e1] = buf
        out["finalize_s"] = time.perf_counter() - t0
        shutil.rmtree(Path(root) / "parts")
    return out


class IndexReader:
    """Dataset-ordered rows straight from the parts, through an id -> (part, row) index."""

    def __init__(self, group: Any) -> None:
        self.parts = [(group[f"parts/{r}/x"], group[f"parts/{r}/ids"][:]) for r in range(2)]
        self.n = sum(len(i) for _, i in self.parts)

    def rows(self, wanted: np.ndarray) -> np.ndarray:
        out = np.empty((len(wanted), self.parts[0][0].shape[1]), np.float32)
        for arr, ids in self.parts:
            order = np.argsort(ids)
            pos = np.clip(np.searchsorted(ids, wanted, sorter=order), 0, len(ids) - 1)
            hit = ids[order[pos]] == wanted
            if hit.any():
                src = order[pos[hit]]
                sort = np.argsort(src)
                out[np.flatnonzero(hit)[sort]] = arr.get_orthogonal_selection((src[sort], slice(None)))
        return out

    def all(self) -> np.ndarray:
        out = np.empty((self.n, self.parts[0][0].shape[1]), np.float32)
        for arr, ids in self.parts:
            out[ids] = arr[:]
        return out


def timed(fn: Any, repeat: int = 3) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), result


def reads(arr_all: Any, arr_block: Any, arr_rows: Any, n: int) -> dict[str, float]:
    rng = np.random.default_rng(1)
    block = np.arange(n // 2, n // 2 + 10_000)
    random_rows = np.sort(rng.choice(n, 2000, replace=False))
    t_all, got = timed(arr_all, 3)  # median of 3: the first read after a write pays for writeback
    assert np.allclose(got[:, 0], np.arange(n))
    t_block, got = timed(lambda: arr_block(block))
    assert np.allclose(got[:, 0], block)
    t_rand, got = timed(lambda: arr_rows(random_rows))
    assert np.allclose(got[:, 0], random_rows)
    return {"read_all_s": t_all, "read_10k_s": t_block, "read_2k_random_s": t_rand}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "write_layouts.json"))
    a = ap.parse_args()
    stored = a.n * a.dim * 4
    results: dict[str, dict[str, float]] = {}
    for name in ("direct", "parts + merge", "order index"):
        tmp = tempfile.mkdtemp(dir=".")
        try:
            counting = Counting()
            if name == "direct":
                r = direct(tmp, a.n, a.dim, counting)
                arr = zarr.open_group(str(Path(tmp) / "r"), mode="r")["layers/blocks.0"]
            else:
                r = parts(tmp, a.n, a.dim, counting, merge=name == "parts + merge")
                group = zarr.open_group(tmp, mode="r")
            if name == "order index":
                index = IndexReader(group)
                r.update(reads(index.all, index.rows, index.rows, a.n))
            else:
                arr = arr if name == "direct" else group["layers/x"]
                r.update(reads(lambda arr=arr: arr[:], lambda b, arr=arr: arr[int(b[0]) : int(b[-1]) + 1],
                               lambda w, arr=arr: arr.get_orthogonal_selection((w, slice(None))), a.n))
            r["written_per_stored"] = counting.bytes / stored
            results[name] = r
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    gb = stored / 1e9
    print(f"N={a.n:,} x D={a.dim} float32 = {gb:.2f} GB, 2 ranks, windows of {WINDOW} (this machine, one process)")
    cols = ["write_s", "finalize_s", "written_per_stored", "read_all_s", "read_10k_s", "read_2k_random_s"]
    print(f"{'layout':<15}" + "".join(f"{c:>18}" for c in cols))
    for name, r in results.items():
        print(f"{name:<15}" + "".join(f"{r[c]:>18.3f}" for c in cols))
    base = results["direct"]
    print("ratios against direct:")
    for name, r in results.items():
        print(f"{name:<15}" + "".join(f"{r[c] / base[c] if base[c] else float('nan'):>18.2f}" for c in cols))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"n": a.n, "dim": a.dim, "results": results}, indent=2))


if __name__ == "__main__":
    main()
