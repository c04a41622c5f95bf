"""The shuffled loader (`RunReader.loader`), against planted runs: row ``i`` holds ``i`` in column 0, so
every batch says which rows it carries without trusting the loader's own index."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probing import open_run
from probing.errors import ConfigError, RunIncompleteError
from probing.storage.loader import expected_distinct_chunks
from probing.storage.ranges import Ranges
from probing.storage.zarr_store import ZarrStorage


def plant_token_run(root: str, n: int = 120, dim: int = 4, chunk_rows: int = 16, dtype: str = "float32",
                    seed: int = 0) -> tuple[str, int]:
    """A token-level run of ``n`` examples (0-9 rows each) whose row ``i`` is ``[i, example, 0, ...]``."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 10, size=n)
    starts = np.concatenate([[0], np.cumsum(counts)])
    total = int(starts[-1])
    acts = np.zeros((total, dim), np.float32)
    acts[:, 0] = np.arange(total)
    acts[:, 1] = np.repeat(np.arange(n), counts)
    storage = ZarrStorage(root, chunk_rows=chunk_rows, dtype=dtype)
    layout = storage.layout(n, {"x": (dim,)}, ragged=True, total_rows=total)
    meta = {"layers": ["x"], "dataset": {"n_examples": n}, "mode": "tokens"}
    w = storage.open_run("t", metadata=meta, layout=layout, share=Ranges.span(0, n), row_starts=starts)
    for b, s in enumerate(range(0, n, 7)):
        ids = np.arange(s, min(n, s + 7))
        w.append(b, {"x": acts[starts[s] : starts[ids[-1] + 1]]},
                 {"example_ids": ids, "token_counts": counts[ids], "row_counts": counts[ids]})
    w.finalize()
    return w.path, total


def plant_pooled_run(root: str, n: int, dim: int = 3, chunk_rows: int = 16) -> str:
    storage = ZarrStorage(root, chunk_rows=chunk_rows)
    data = np.zeros((n, dim), np.float32)
    data[:, 0] = np.arange(n)
    w = storage.open_run("p", metadata={"layers": ["x"], "dataset": {"n_examples": n}},
                         layout=storage.layout(n, {"x": (dim,)}))
    for b, s in enumerate(range(0, n, 50)):
        w.append(b, {"x": data[s : s + 50]}, {"example_ids": np.arange(s, min(n, s + 50))})
    w.finalize()
    return w.path


@pytest.fixture(scope="module")
def token_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int]:
    return plant_token_run(str(tmp_path_factory.mktemp("tok")))


def rows_seen(batches: list[torch.Tensor]) -> np.ndarray:
    return np.concatenate([b[:, 0].numpy() for b in batches]).astype(np.int64)


def test_ranks_times_workers_see_every_row_exactly_once(token_run: tuple[str, int]) -> None:
    path, total = token_run
    seen = []
    with open_run(path) as r:
        for rank in range(2):
            loader = r.loader("x", batch_size=10, seed=3, rank=rank, world_size=2, buffer_chunks=3)
            for batch in loader.dataloader(num_workers=2):
                assert batch.dtype == torch.float32 and batch.shape[1] == 4
                seen.append(rows_seen([batch]))
    seen_all = np.sort(np.concatenate(seen))
    np.testing.assert_array_equal(seen_all, np.arange(total))  # the union is every row, none twice


@pytest.mark.parametrize("dtype", [torch.float32, None])
def test_worker_batches_equal_the_same_consumers_in_process(tmp_path, dtype) -> None:
    """DataLoader worker ``w`` of 2 is consumer ``w`` of 2, as rank ``w`` of 2 is in-process: the same batches,
    values and index alike, whether they come through a worker (sent to this process in shared memory) or not."""
    path, _ = plant_token_run(str(tmp_path), n=80, dtype="float16")

    def key(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[bytes, bytes]:
        return batch[0].numpy().tobytes(), batch[1].numpy().tobytes()

    with open_run(path) as r:
        kw = {"batch_size": 9, "seed": 5, "buffer_chunks": 2, "dtype": dtype, "return_index": True}
        in_process = [key(b) for rank in range(2) for b in r.loader("x", rank=rank, world_size=2, **kw)]
        from_workers = list(r.loader("x", **kw).dataloader(num_workers=2))
    assert all(rows.is_shared() for rows, _ in from_workers)  # they did come from the worker processes
    assert {rows.dtype for rows, _ in from_workers} == {dtype or torch.float16}
    assert sorted(map(key, from_workers)) == sorted(in_process)


def test_rows_keep_their_values_and_index(token_run: tuple[str, int]) -> None:
    path, total = token_run
    with open_run(path) as r:
        offsets = r.offsets
        loader = r.loader("x", batch_size=32, seed=1, return_index=True)
        for rows, index in loader:
            np.testing.assert_array_equal(rows[:, 0].numpy(), index.numpy())  # planted: row i holds i
            example = np.searchsorted(offsets, index.numpy(), side="right") - 1
            np.testing.assert_array_equal(rows[:, 1].numpy(), example)


def test_the_same_seed_gives_the_same_batches_and_epochs_differ(token_run: tuple[str, int]) -> None:
    path, total = token_run
    with open_run(path) as r:
        a = rows_seen(list(r.loader("x", 16, seed=7, buffer_chunks=4)))
        b = rows_seen(list(r.loader("x", 16, seed=7, buffer_chunks=4)))
        c = rows_seen(list(r.loader("x", 16, seed=8, buffer_chunks=4)))
        loader = r.loader("x", 16, seed=7, buffer_chunks=4)
        loader.set_epoch(1)
        d = rows_seen(list(loader))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    for order in (a, c, d):
        np.testing.assert_array_equal(np.sort(order), np.arange(total))


def test_without_shuffle_rows_come_in_stored_order(token_run: tuple[str, int]) -> None:
    path, total = token_run
    with open_run(path) as r:
        batches = list(r.loader("x", 25, shuffle=False))
        assert [len(b) for b in batches[:-1]] == [25] * (len(batches) - 1)
        np.testing.assert_array_equal(rows_seen(batches), np.arange(total))
        kept = list(r.loader("x", 25, shuffle=False, drop_last=True))
        assert len(kept) == total // 25 and all(len(b) == 25 for b in kept)


def test_batches_draw_on_as_many_chunks_as_the_closed_form_says(tmp_path) -> None:
    """64 chunks of 16 rows, 8 chunks per buffer, batches of 32: each window of 128 rows gives 4 whole
    batches, each a uniform draw from 8 chunks. Mean distinct chunks per batch vs the hypergeometric
    expectation (7.37 of 8); without shuffle a batch spans 2 chunks, within-chunk shuffling alone too."""
    n, unit, k, bs = 1024, 16, 8, 32
    path = plant_pooled_run(str(tmp_path), n, chunk_rows=unit)
    expected = expected_distinct_chunks(k, unit, bs)
    exact = k * (1 - math.comb(k * unit - unit, bs) / math.comb(k * unit, bs))
    assert expected == pytest.approx(exact, rel=1e-9)
    with open_run(path) as r:
        counts = []
        for seed in range(6):
            for batch in r.loader("x", bs, seed=seed, buffer_chunks=k):
                assert len(batch) == bs
                counts.append(len(np.unique(batch[:, 0].numpy().astype(int) // unit)))
        plain = [len(np.unique(b[:, 0].numpy().astype(int) // unit)) for b in r.loader("x", bs, shuffle=False)]
    sd = np.std(counts) / math.sqrt(len(counts))
    assert abs(np.mean(counts) - expected) < 4 * sd + 0.02, (np.mean(counts), expected)
    assert np.mean(plain) == 2.0


def test_a_float16_run_is_read_as_float32_or_as_stored(tmp_path) -> None:
    path, total = plant_token_run(str(tmp_path), n=40, dtype="float16")
    with open_run(path) as r:
        b32 = next(iter(r.loader("x", 8, shuffle=False)))
        b16 = next(iter(r.loader("x", 8, shuffle=False, dtype=None)))
    assert b32.dtype == torch.float32 and b16.dtype == torch.float16
    np.testing.assert_array_equal(b32[:, 0].numpy(), np.arange(8))


def test_bad_arguments_and_partial_runs_are_refused(token_run: tuple[str, int], tmp_path) -> None:
    path, _ = token_run
    with open_run(path) as r:
        with pytest.raises(ConfigError, match="batch_size"):
            r.loader("x", 0)
        with pytest.raises(ConfigError, match="rank 2 of world_size 2"):
            r.loader("x", 4, rank=2, world_size=2)
    storage = ZarrStorage(str(tmp_path), chunk_rows=4)
    w = storage.open_run("half", metadata={"layers": ["x"], "dataset": {"n_examples": 8}},
                         layout=storage.layout(8, {"x": (2,)}))
    w.append(0, {"x": np.ones((4, 2), np.float32)}, {"example_ids": np.arange(4)})
    w.close()
    w.release()
    with pytest.warns(UserWarning), open_run(w.path, allow_partial=True) as part, \
            pytest.raises(RunIncompleteError, match="completed runs"):
        part.loader("x", 2)


# -- the direct chunk-file path (probing/storage/chunk_files.py) ------------------------------------------
def _chunk_files(path: str):
    from probing.storage.chunk_files import ChunkFiles

    with open_run(path) as r:
        return ChunkFiles.of(r.store, "layers/x", path)


def test_chunk_files_read_what_zarr_reads_and_apply_only_where_they_can(tmp_path) -> None:
    import zarr

    path, total = plant_token_run(str(tmp_path / "plain"), n=60)
    files = _chunk_files(path)
    assert files is not None and files.checksum and files.chunk_rows == 16
    stored = np.asarray(zarr.open_array(f"{path}/layers/x", mode="r")[:])  # zarr itself, not probing's reader
    out = np.empty((16, 4), np.float32)
    for chunk in range(-(-total // 16)):
        n = files.read_into(chunk, out)
        np.testing.assert_array_equal(out[:n], stored[chunk * 16 : chunk * 16 + n])
    # compressed or sharded arrays are read through zarr (None: no direct path)
    zstd = ZarrStorage(str(tmp_path / "z"), chunk_rows=16, compressor="zstd")
    w = zstd.open_run("z", metadata={"layers": ["x"], "dataset": {"n_examples": 32}},
                      layout=zstd.layout(32, {"x": (4,)}))
    w.append(0, {"x": np.ones((32, 4), np.float32)}, {"example_ids": np.arange(32)})
    w.finalize()
    assert _chunk_files(w.path) is None
    sharded = ZarrStorage(str(tmp_path / "s"), chunk_rows=8, shard_chunks=2)
    w = sharded.open_run("s", metadata={"layers": ["x"], "dataset": {"n_examples": 32}},
                         layout=sharded.layout(32, {"x": (4,)}))
    w.append(0, {"x": np.ones((32, 4), np.float32)}, {"example_ids": np.arange(32)})
    w.finalize()
    assert _chunk_files(w.path) is None


def test_the_loader_gives_the_same_batches_with_or_without_the_direct_path(tmp_path) -> None:
    """A run stored with zstd is read through zarr; the same rows stored plain are read from the files:
    the same seed gives the same batches, row for row (the plan does not depend on how chunks are read)."""
    plain, total = plant_token_run(str(tmp_path / "plain"), n=90, seed=4)
    rng = np.random.default_rng(4)
    counts = rng.integers(0, 10, size=90)
    starts = np.concatenate([[0], np.cumsum(counts)])
    storage = ZarrStorage(str(tmp_path / "zstd"), chunk_rows=16, compressor="zstd")
    acts = np.zeros((total, 4), np.float32)
    acts[:, 0] = np.arange(total)
    acts[:, 1] = np.repeat(np.arange(90), counts)
    w = storage.open_run("t", metadata={"layers": ["x"], "dataset": {"n_examples": 90}, "mode": "tokens"},
                         layout=storage.layout(90, {"x": (4,)}, ragged=True, total_rows=total),
                         share=Ranges.span(0, 90), row_starts=starts)
    w.append(0, {"x": acts}, {"example_ids": np.arange(90), "token_counts": counts, "row_counts": counts})
    w.finalize()
    assert _chunk_files(plain) is not None and _chunk_files(w.path) is None
    for shuffle in (True, False):
        with open_run(plain) as a, open_run(w.path) as b:
            got_a = list(a.loader("x", 10, shuffle=shuffle, seed=2, buffer_chunks=3, read_ahead=2))
            got_b = list(b.loader("x", 10, shuffle=shuffle, seed=2, buffer_chunks=3, read_ahead=2))
        assert len(got_a) == len(got_b)
        for x, y in zip(got_a, got_b, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
        assert sorted(rows_seen(got_a).tolist()) == list(range(total))


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_chunk_file_is_an_error_naming_the_rows(tmp_path, damage: str) -> None:
    from pathlib import Path

    from probing.errors import DamagedRunError

    path, _ = plant_token_run(str(tmp_path), n=60)
    chunk = Path(path) / "layers" / "x" / "c" / "2" / "0"
    data = bytearray(chunk.read_bytes())
    if damage == "flip":
        data[5] ^= 0x10
        chunk.write_bytes(bytes(data))
    elif damage == "truncate":
        chunk.write_bytes(bytes(data[:-9]))
    files = _chunk_files(path)
    assert files is not None
    if damage == "delete":
        chunk.unlink()
    with pytest.raises(DamagedRunError, match=r"layer x, rows 32\.\.47"):
        files.read_into(2, np.empty((16, 4), np.float32))
    with open_run(path) as r, pytest.raises(DamagedRunError, match="layer x"):
        list(r.loader("x", 8, shuffle=True, seed=0))
