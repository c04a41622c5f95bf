"""The reader beyond the round trip: URLs, partial runs, bounded-memory reading, empty runs."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest

from probing import HDF5Storage, NPZStorage, ZarrStorage, open_run
from probing.errors import ConfigError, RunIncompleteError


def write(storage, run_id, n, dim=8, finalize=True, seed=0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    data = rng.normal(size=(n, dim)).astype(np.float32)
    w = storage.open_run(run_id, metadata={"layers": ["x"], "dataset": {"n_examples": n}, "hidden_size": dim})
    order = rng.permutation(n)
    for b, s in enumerate(range(0, n, 7)):
        ids = order[s : s + 7]
        w.append(b, {"x": data[ids]}, {"example_ids": ids, "token_counts": ids % 5 + 1})
    if finalize:
        w.finalize({"text": [f"é{i}" for i in range(n)]})
    else:
        w.close()
    return data, w


@pytest.mark.parametrize("url", ["memory://probing-test", "file://{tmp}"])
def test_zarr_runs_at_fsspec_urls(tmp_path, url):
    root = url.format(tmp=tmp_path)
    data, w = write(ZarrStorage(root, chunk_rows=4), "r", 30)
    r = open_run(root, "r")
    np.testing.assert_array_equal(r.activations("x"), data)
    assert list(r.example_metadata("text"))[:2] == ["é0", "é1"]
    assert w.path.endswith("/r") and w.path.startswith("memory://" if "memory" in url else str(tmp_path))


@pytest.mark.parametrize(
    "make", [lambda p: ZarrStorage(p, chunk_rows=7), lambda p: HDF5Storage(p, chunk_rows=7), NPZStorage]
)
def test_partial_runs_are_refused_unless_asked(tmp_path, make):
    data, w = write(make(str(tmp_path)), "p", 40, finalize=False)
    with pytest.raises(RunIncompleteError, match="allow_partial"):
        open_run(tmp_path / "p")
    if True:
        w.store.close()
    with pytest.warns(UserWarning, match=r"\d+ of 40 examples are finished"):
        r = open_run(tmp_path / "p", allow_partial=True)
    ids = r.example_ids
    assert len(ids) == r.n_examples > 0
    np.testing.assert_array_equal(r.activations("x"), data[ids])
    np.testing.assert_array_equal(r.example_metadata("token_counts"), ids % 5 + 1)


def test_iter_batches_reads_more_than_the_memory_budget_in_batches(tmp_path):
    n, dim = 40_000, 256  # 41 MB of float32
    storage = ZarrStorage(str(tmp_path), chunk_rows=1024)
    w = storage.open_run("big", metadata={"layers": ["x"], "dataset": {"n_examples": n}})
    for s in range(0, n, 2000):
        ids = np.arange(s, s + 2000)
        w.append(s, {"x": np.full((2000, dim), s, np.float32)}, {"example_ids": ids})
    w.finalize()
    r = open_run(tmp_path / "big")
    budget = 16 * 2**20  # the layer is 41 MB
    tracemalloc.start()
    total = 0
    for batch in r.iter_batches("x", 2048):
        total += len(batch)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert total == n
    assert peak < budget, f"peak {peak / 2**20:.1f} MiB while reading {n * dim * 4 / 2**20:.0f} MiB"
    ds = r.torch_dataset()
    tracemalloc.start()
    for i in range(0, n, 97):
        assert float(ds[i]["x"][0]) == (i // 2000) * 2000
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < budget


@pytest.mark.parametrize("make", [ZarrStorage, HDF5Storage, NPZStorage])
def test_empty_runs_for_every_backend(tmp_path, make):
    w = make(str(tmp_path)).open_run("e", metadata={"layers": ["x"], "dataset": {"n_examples": 0}, "hidden_size": 4})
    w.finalize({"text": []})
    r = open_run(tmp_path / "e")
    assert r.activations("x").shape == (0, 4) and r.n_examples == 0
    assert list(r.iter_batches("x", 3)) == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert r.to_xarray().shape == (1, 0, 4)


def test_hdf5_refuses_several_processes_before_compute(tmp_path, tiny_models):
    from probing import ActivationExtractor, DatasetRunner, ModelBackend

    extractor = ActivationExtractor(ModelBackend().load_model(tiny_models["bert"]), layers=[0])
    with pytest.raises(ConfigError, match="one writer at a time.*zarr"):
        DatasetRunner(["a"], 2, extractor, HDF5Storage(str(tmp_path)), trainer={"devices": 2, "strategy": "ddp"})
    assert not any(tmp_path.iterdir())


def test_zarr_sharding_and_codecs_round_trip(tmp_path):
    for i, kwargs in enumerate(
        [{"shard_chunks": 4}, {"compressor": "zstd"}, {"compressor": "blosc", "shard_chunks": 2}]
    ):
        data, w = write(ZarrStorage(str(tmp_path / str(i)), chunk_rows=4, **kwargs), "s", 45)
        r = open_run(tmp_path / str(i) / "s")
        np.testing.assert_array_equal(r.activations("x"), data)
        if "shard_chunks" in kwargs:
            assert r.array("x").shards == (4 * kwargs["shard_chunks"], 8)


@pytest.mark.parametrize("make", [lambda p: ZarrStorage(p, chunk_rows=5), lambda p: HDF5Storage(p, chunk_rows=5)])
def test_token_level_rows_cut_mid_example_are_resumed_exactly(tmp_path, make):
    """Rows are written in whole chunks, so a chunk boundary falls inside examples: an interrupted run
    keeps exactly the examples whose rows all reached disk, and a resume completes the rest."""
    rng = np.random.default_rng(1)
    n, dim = 30, 4
    counts = rng.integers(0, 6, size=n)  # 0 to 5 rows per example, chunks of 5 rows
    rows = [rng.normal(size=(int(c), dim)).astype(np.float32) for c in counts]
    meta = {"layers": ["x"], "dataset": {"n_examples": n}, "hidden_size": dim, "mode": "tokens"}
    # the first 18 examples in a shuffled order (as a bucketing window would send them), then the rest
    order = np.concatenate([rng.permutation(18), 18 + rng.permutation(n - 18)])
    starts = np.concatenate([[0], np.cumsum(counts)])  # token-level rows are placed by a layout given up front
    from probing.storage.ranges import Ranges

    def open_(resume=False):  # type: ignore[no-untyped-def]
        storage = make(str(tmp_path))
        layout = storage.layout(n, {"x": (dim,)}, ragged=True, total_rows=int(starts[-1]))
        return storage.open_run("t", metadata=meta, layout=layout, share=Ranges.span(0, n), row_starts=starts,
                                resume=resume)

    def append(w, ids, b):  # type: ignore[no-untyped-def]
        acts = np.concatenate([rows[i] for i in ids]) if len(ids) else np.zeros((0, dim), np.float32)
        w.append(b, {"x": acts}, {"example_ids": ids, "token_counts": counts[ids] + 2, "row_counts": counts[ids]})

    w = open_()
    for b, s in enumerate(range(0, 17, 3)):  # 18 examples, then "killed": buffered rows are lost
        append(w, order[s : s + 3], b)
    w.store.close()
    w.release()  # a killed writer's lease is stale at once on its own host
    with pytest.warns(UserWarning, match=r"\d+ of 30 examples are finished"):
        part = open_run(tmp_path / "t", allow_partial=True)
    done = part.example_ids
    assert 0 < len(done) < 18 and set(done) <= set(order[:18])
    for j, i in enumerate(done):
        np.testing.assert_array_equal(part.rows_of("x", j), rows[i])
    part.close()
    w = open_(resume=True)
    todo = np.setdiff1d(np.arange(n), w.done_ids())
    assert len(todo) == n - len(done)
    for b, s in enumerate(range(0, len(todo), 4)):
        append(w, todo[s : s + 4], b)
    w.finalize()
    r = open_run(tmp_path / "t")
    for i in range(n):
        np.testing.assert_array_equal(r.rows_of("x", i), rows[i])
