"""How should a multi-rank Zarr run be made readable in dataset order: merge, or an order index?

Writes a run of N x D float32 rows as 2 ranks would (contiguous shares, length-bucketed order within
windows, whole chunks), then measures, in one process:

- merge: `ZarrRunWriter.finalize` copies the parts into one array per layer in dataset order;
  readers then read plain slices;
- index: no copy; a reader keeps (part, row) for every example id and gathers rows from the parts.

and the reader paths that matter: the whole layer, a contiguous block of 10k examples, and 2,000
random examples (a shuffled minibatch loader). Prints times and ratios (index / merge).

    python bench/merge_vs_index.py [--n 200000] [--dim 1024]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from probing.storage.zarr_store import ZarrStorage


def write_parts(root: str, n: int, dim: int, world: int = 2, window: int = 3200) -> Any:
    storage = ZarrStorage(root)
    meta = {"layers": ["blocks.0"], "dataset": {"n_examples": n}, "hidden_size": dim}
    rng = np.random.default_rng(0)
    writers = [storage.open_run("r", metadata=meta)]
    writers += [storage.open_run("r", rank=r, world_size=world) for r in range(1, world)]
    for r, w in enumerate(writers):
        ids = np.arange(n * r // world, n * (r + 1) // world)
        for s in range(0, len(ids), window):
            ids[s : s + window] = rng.permutation(ids[s : s + window])  # bucketing reorders within windows
        for b in range(0, len(ids), 256):
            chunk = ids[b : b + 256]
            rows = (chunk[:, None] + np.arange(dim)[None, :] * 1e-3).astype(np.float32)  # row i is known
            w.append(b, {"blocks.0": rows}, {"example_ids": chunk})
        w.close()
    return writers[0]


class IndexReader:
    """Reads dataset-ordered rows straight from the parts through an id -> (part, row) index."""

    def __init__(self, group: Any) -> None:
        self.parts = [g for _, g in sorted(group["parts"].groups())]
        self.ids = [p["ids"][:] for p in self.parts]
        self.n = sum(len(i) for i in self.ids)

    def rows(self, wanted: np.ndarray, key: str = "blocks.0") -> np.ndarray:
        out = np.empty((len(wanted), self.parts[0][key].shape[1]), np.float32)
        for p, ids in zip(self.parts, self.ids, strict=True):
            order = np.argsort(ids)
            pos = np.searchsorted(ids, wanted, sorter=order)
            pos = np.clip(pos, 0, len(ids) - 1)
            hit = ids[order[pos]] == wanted
            if hit.any():
                src_rows = order[pos[hit]]
                sort = np.argsort(src_rows)
                data = p[key].get_orthogonal_selection((src_rows[sort], slice(None)))
                out[np.flatnonzero(hit)[sort]] = data
        return out

    def all(self, key: str = "blocks.0") -> np.ndarray:
        out = np.empty((self.n, self.parts[0][key].shape[1]), np.float32)
        for p, ids in zip(self.parts, self.ids, strict=True):
            out[ids] = p[key][: len(ids)]
        return out


def timed(fn: Any, repeat: int = 3) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=1024)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(dir=".")
    try:
        t0 = time.perf_counter()
        writer = write_parts(tmp, a.n, a.dim)
        t_write = time.perf_counter() - t0
        rng = np.random.default_rng(1)
        block = np.arange(a.n // 2, a.n // 2 + 10_000)
        random_rows = np.sort(rng.choice(a.n, 2000, replace=False))
        index = IndexReader(writer.group)
        t_index_build, _ = timed(lambda: IndexReader(writer.group), 1)
        i_all, got = timed(index.all, 1)
        assert np.allclose(got[:, 0], np.arange(a.n))
        i_block, got = timed(lambda: index.rows(block))
        assert np.allclose(got[:, 0], block)
        i_rand, got = timed(lambda: index.rows(random_rows))
        assert np.allclose(got[:, 0], random_rows)
        t0 = time.perf_counter()
        writer.finalize()
        t_merge = time.perf_counter() - t0
        from probing import open_run

        arr = open_run(Path(tmp) / "r").array("blocks.0")  # type: ignore[attr-defined]
        m_all, got = timed(lambda: arr[:], 1)
        assert np.allclose(got[:, 0], np.arange(a.n))
        m_block, _ = timed(lambda: arr[block[0] : block[-1] + 1])
        m_rand, got = timed(lambda: arr.get_orthogonal_selection((random_rows, slice(None))))
        assert np.allclose(got[:, 0], random_rows)
        gb = a.n * a.dim * 4 / 1e9
        print(f"N={a.n:,} x D={a.dim} float32 = {gb:.2f} GB; 2 ranks; parts written in {t_write:.1f} s")
        print(f"{'operation':<34}{'merge s':>9}{'index s':>9}{'index/merge':>12}")
        print(f"{'one-time: merge copy / index build':<34}{t_merge:>9.2f}{t_index_build:>9.2f}{t_index_build / t_merge:>12.2f}")
        for name, m, i in [("read whole layer", m_all, i_all), ("read 10k contiguous examples", m_block, i_block),
                           ("read 2,000 random examples", m_rand, i_rand)]:
            print(f"{name:<34}{m:>9.3f}{i:>9.3f}{i / m:>12.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
