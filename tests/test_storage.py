"""Storage round trips: the seed's open_run(run_id) -> RunWriter.append(...) and the reader."""

from __future__ import annotations

import numpy as np
import pytest

from probing import NPZStorage, ZarrStorage, open_run
from probing.errors import RunExistsError, RunIncompleteError

BACKENDS = {"zarr": lambda root, **kw: ZarrStorage(root, chunk_rows=4, **kw), "npz": NPZStorage}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_out_of_order_batches_read_back_in_dataset_order(tmp_path, backend, dtype):
    rng = np.random.default_rng(0)
    n = 23
    data = {
        "blocks.0": rng.normal(size=(n, 5)).astype(np.float32),
        "embeddings": rng.normal(size=(n, 5)).astype(np.float32),
    }
    storage = BACKENDS[backend](str(tmp_path), dtype=dtype)
    writer = storage.open_run("r1", metadata={"layers": ["blocks.0", "embeddings"], "dataset": {"n_examples": n}})
    order = rng.permutation(n)
    for b, start in enumerate(range(0, n, 6)):
        ids = order[start : start + 6]
        writer.append(b, {k: v[ids] for k, v in data.items()}, {"example_ids": ids, "token_counts": ids + 1})
    writer.finalize({"text": [f"t{i} ✓" for i in range(n)], "label": list(range(n))})
    reader = open_run(tmp_path, "r1")
    assert reader.layers == ["blocks.0", "embeddings"]
    for k, v in data.items():
        got = reader.activations(k)
        assert got.dtype == np.dtype(dtype)
        np.testing.assert_allclose(got, v.astype(dtype), rtol=0, atol=0)
    np.testing.assert_array_equal(reader.example_metadata("token_counts"), np.arange(n) + 1)
    assert list(reader.example_metadata("text"))[:2] == ["t0 ✓", "t1 ✓"]
    np.testing.assert_array_equal(reader.example_metadata("label"), np.arange(n))
    assert reader.completed


def test_merge_blocks_follow_the_bucketing_window_and_read_each_part_row_about_once(tmp_path):
    """Rows stored sorted within windows (as bucketing does) merge in blocks of two windows, not the whole run."""
    from probing.storage.chunked import ChunkedRunWriter

    rng = np.random.default_rng(1)
    n, window = 60, 8
    data = rng.normal(size=(n, 3)).astype(np.float32)
    order = np.concatenate([rng.permutation(np.arange(s, min(s + window, n))) for s in range(0, n, window)])
    writer = ZarrStorage(str(tmp_path), chunk_rows=2).open_run(
        "r", metadata={"layers": ["a"], "dataset": {"n_examples": n}}
    )
    assert isinstance(writer, ChunkedRunWriter)
    for b, start in enumerate(range(0, n, 4)):
        ids = order[start : start + 4]
        writer.append(b, {"a": data[ids]}, {"example_ids": ids, "token_counts": ids + 1})
    read_rows, appended = [0], []
    read, append = writer.io.read, writer.io.append

    def counting_read(path, start=0, stop=None):
        out = read(path, start, stop)
        if "/layers/" in path:
            read_rows[0] += len(out)
        return out

    def counting_append(path, values):
        if path.startswith("layers/"):
            appended.append(len(values))
        return append(path, values)

    writer.io.read, writer.io.append = counting_read, counting_append  # type: ignore[method-assign]
    writer.finalize()
    np.testing.assert_array_equal(open_run(tmp_path, "r").activations("a"), data)
    assert 1 < max(appended) <= 2 * 2 * window  # blocks of about two windows (displacement < window + 1 row)
    assert read_rows[0] <= 2 * n  # no block re-reads a whole window it only needs a slice of


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_missing_examples_leave_the_run_incomplete(tmp_path, backend):
    storage = BACKENDS[backend](str(tmp_path))
    writer = storage.open_run("r", metadata={"layers": ["a"], "dataset": {"n_examples": 5}})
    writer.append(0, {"a": np.zeros((3, 2), np.float32)}, {"example_ids": [0, 1, 2]})
    with pytest.raises(RunIncompleteError, match="2 of 5 examples are not stored"):
        writer.finalize()
    with pytest.raises(RunIncompleteError, match="resume=true"):
        open_run(tmp_path / "r")


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_completed_run_is_never_overwritten(tmp_path, backend):
    storage = BACKENDS[backend](str(tmp_path))
    w = storage.open_run("r", metadata={"layers": ["a"], "dataset": {"n_examples": 0}, "hidden_size": 4})
    w.finalize()
    assert open_run(tmp_path / "r").activations("a").shape == (0, 4)
    with pytest.raises(RunExistsError, match="never overwritten"):
        storage.open_run("r", metadata={"layers": ["a"]})
    with pytest.raises(RunExistsError, match="never overwritten"):
        storage.open_run("r", metadata={"layers": ["a"]}, resume=True)


def test_seed_api_without_metadata(tmp_path):
    w = ZarrStorage(str(tmp_path)).open_run("plain")
    w.append(0, {"x": np.ones((2, 3), np.float32)}, {"example_ids": [1, 0]})
    w.finalize()
    r = open_run(tmp_path / "plain")
    assert r.layers == ["x"] and r.n_examples == 2 and r.activations("x").shape == (2, 3)


def test_bad_dtype_and_missing_ids(tmp_path):
    from probing.errors import ConfigError

    with pytest.raises(ConfigError, match="bfloat16 is not a zarr dtype"):
        ZarrStorage(str(tmp_path), dtype="bfloat16")
    w = ZarrStorage(str(tmp_path)).open_run("x")
    with pytest.raises(ConfigError, match="example_ids"):
        w.append(0, {"a": np.ones((1, 2))}, {})


def test_open_run_on_a_folder_lists_runs(tmp_path):
    w = ZarrStorage(str(tmp_path)).open_run("only")
    w.append(0, {"x": np.ones((1, 3), np.float32)}, {"example_ids": [0]})
    w.finalize()
    with pytest.raises(FileNotFoundError, match="only"):
        open_run(tmp_path)
