"""Storage: one conformance suite that every array store and every backend passes (as zarr-python's
StoreTests), and the costs that must not grow: bytes written per byte stored, memory of the writer."""

from __future__ import annotations

import numpy as np
import pytest

from probing import HDF5Storage, NPZStorage, ZarrStorage, open_run
from probing.errors import ConfigError, RunExistsError, RunIncompleteError
from probing.storage.arrays import STR, ArrayStore
from probing.storage.hdf5_store import HDF5Arrays
from probing.storage.layout import Column
from probing.storage.ranges import Ranges
from probing.storage.zarr_store import ZarrArrays


# -- every ArrayStore ----------------------------------------------------------------------------------
class ArrayStoreSuite:
    """What `probing.storage.writer` and `probing.storage.reader` need of a backend's store."""

    def make(self, path: str, mode: str) -> ArrayStore:
        raise NotImplementedError

    def test_arrays_round_trip_by_rows(self, tmp_path):
        s = self.make(str(tmp_path / "r"), "w")
        rng = np.random.default_rng(0)
        data = rng.normal(size=(50, 3, 2)).astype(np.float16)
        s.create("layers/x", 50, (3, 2), np.float16, 8)
        s.write("layers/x", 16, data[16:40])  # whole chunks
        s.write("layers/x", 0, data[:16])
        s.write("layers/x", 40, data[40:])  # the partial last chunk
        np.testing.assert_array_equal(s.read("layers/x"), data)
        np.testing.assert_array_equal(s.read("layers/x", 5, 13), data[5:13])
        assert s.shape("layers/x") == (50, 3, 2) and s.chunk_rows("layers/x") == 8
        for dtype, values in [
            (np.int64, np.arange(7)),
            (np.bool_, np.array([True, False] * 3 + [True])),
            (STR, np.array(["a", "é", "", "long text " * 5, "b", "c", "d"], dtype=object)),
        ]:
            s.create("examples/f", 7, (), dtype, 3)
            s.write("examples/f", 0, values)
            got = s.read("examples/f")
            assert list(got) == list(values) and (got.dtype == object) == (dtype == STR)
        s.close()
        r = self.make(str(tmp_path / "r"), "r")
        np.testing.assert_array_equal(r.read("layers/x", 45, 50), data[45:])
        r.close()

    def test_an_array_of_unknown_length_grows_and_is_cut_to_size(self, tmp_path):
        s = self.make(str(tmp_path / "r"), "w")
        s.create("x", None, (4,), np.float32, 10)
        s.write("x", 0, np.ones((10, 4), np.float32))
        s.write("x", 30, np.full((10, 4), 2, np.float32))  # far ahead: nothing stored for rows never written
        s.set_rows("x", 35)
        assert s.shape("x") == (35, 4)
        np.testing.assert_array_equal(s.read("x", 30, 35), np.full((5, 4), 2, np.float32))
        s.close()

    def test_attributes_groups_and_deletion(self, tmp_path):
        s = self.make(str(tmp_path / "r"), "w")
        s.set_attrs("", {"probing": {"a": 1, "nested": [1, 2]}})
        s.set_attrs("parts/p0", {"done": [[0, 4]]})
        s.set_attrs("parts/p0", {"done": [[0, 8]]})  # replaces, does not merge
        s.create("parts/p0/seams/t/u1/c0", 3, (), np.int64, 3)
        assert s.get_attrs("")["probing"] == {"a": 1, "nested": [1, 2]}
        assert s.get_attrs("parts/p0") == {"done": [[0, 8]]}
        assert s.get_attrs("parts/nope") == {}
        assert s.groups("parts") == ["p0"] and s.groups("nothing") == []
        assert s.arrays("parts/p0/seams/t/u1") == ["c0"]
        s.delete("parts")
        assert not s.exists("parts/p0") and s.groups("parts") == []
        s.delete("parts")  # absent: no error
        s.close()


class TestZarrArrays(ArrayStoreSuite):
    def make(self, path: str, mode: str) -> ArrayStore:
        return ZarrArrays(path, mode)

    def test_the_write_unit_of_a_sharded_array_is_its_shard(self, tmp_path):
        s = self.make(str(tmp_path / "r"), "w")
        s.create("x", 100, (2,), np.float32, 5, shard_rows=20)
        assert s.chunk_rows("x") == 5 and s.write_rows("x") == 20


class TestHDF5Arrays(ArrayStoreSuite):
    def make(self, path: str, mode: str) -> ArrayStore:
        return HDF5Arrays(path, mode)


# -- every backend ---------------------------------------------------------------------------------------
class BackendSuite:
    """Runs through the seed API (``Storage.open_run(run_id) -> RunWriter.append``) and `open_run`."""

    def storage(self, root: str, **kw: object):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    @pytest.mark.parametrize("dtype", ["float32", "float16"])
    def test_out_of_order_batches_read_back_in_dataset_order(self, tmp_path, dtype):
        rng = np.random.default_rng(0)
        n = 23
        data = {k: rng.normal(size=(n, 5)).astype(np.float32) for k in ("blocks.0", "embeddings")}
        writer = self.storage(str(tmp_path), dtype=dtype).open_run(
            "r1", metadata={"layers": ["blocks.0", "embeddings"], "dataset": {"n_examples": n}}
        )
        order = rng.permutation(n)
        for b, start in enumerate(range(0, n, 6)):
            ids = order[start : start + 6]
            writer.append(b, {k: v[ids] for k, v in data.items()}, {"example_ids": ids, "token_counts": ids + 1})
        writer.finalize({"text": [f"t{i} ✓" for i in range(n)], "label": list(range(n))})
        with open_run(tmp_path, "r1") as reader:
            assert reader.layers == ["blocks.0", "embeddings"] and reader.completed
            for k, v in data.items():
                got = reader.activations(k)
                assert got.dtype == np.dtype(dtype)
                np.testing.assert_array_equal(got, v.astype(dtype))
            np.testing.assert_array_equal(reader.example_metadata("token_counts"), np.arange(n) + 1)
            assert list(reader.example_metadata("text"))[:2] == ["t0 ✓", "t1 ✓"]
            np.testing.assert_array_equal(reader.example_metadata("label"), np.arange(n))

    def test_missing_examples_leave_the_run_incomplete(self, tmp_path):
        writer = self.storage(str(tmp_path)).open_run("r", metadata={"layers": ["a"], "dataset": {"n_examples": 5}})
        writer.append(0, {"a": np.zeros((3, 2), np.float32)}, {"example_ids": [0, 1, 2]})
        with pytest.raises(RunIncompleteError, match="2 of 5 examples are not stored"):
            writer.finalize()
        with pytest.raises(RunIncompleteError, match="resume=true"):
            open_run(tmp_path / "r")

    def test_a_completed_run_is_never_overwritten(self, tmp_path):
        storage = self.storage(str(tmp_path))
        w = storage.open_run("r", metadata={"layers": ["a"], "dataset": {"n_examples": 0}, "hidden_size": 4})
        w.finalize()
        with open_run(tmp_path / "r") as r:
            assert r.activations("a").shape == (0, 4)
        for resume in (False, True):
            with pytest.raises(RunExistsError, match="never overwritten"):
                storage.open_run("r", metadata={"layers": ["a"]}, resume=resume)

    def test_metadata_keeps_its_types(self, tmp_path):
        n = 6
        w = self.storage(str(tmp_path)).open_run("r", metadata={"layers": ["a"], "dataset": {"n_examples": n}})
        w.append(0, {"a": np.ones((n, 2), np.float32)}, {"example_ids": np.arange(n)})
        w.finalize({
            "flag": [True, False, True, True, False, False],
            "count": [1, None, 3, 4, None, 6],
            "score": [0.5, 1.0, None, 2.0, 3.0, 4.0],
            "name": ["a", "b", None, "d", "e", "f"],
            "mixed": [1, "two", [3], {"four": 4}, None, 6.5],
        })
        with open_run(tmp_path / "r") as r:
            flag = r.example_metadata("flag")
            assert flag.dtype == np.bool_ and flag.tolist() == [True, False, True, True, False, False]
            count = r.example_metadata("count")
            assert isinstance(count, np.ma.MaskedArray) and count.dtype == np.int64
            assert count.tolist() == [1, None, 3, 4, None, 6]
            score = r.example_metadata("score")
            assert score.dtype == np.float64 and score.mask.tolist() == [False, False, True, False, False, False]
            assert score[3] == 2.0
            assert list(r.example_metadata("name")) == ["a", "b", None, "d", "e", "f"]
            assert list(r.example_metadata("mixed")) == [1, "two", [3], {"four": 4}, None, 6.5]

    def test_ids_outside_the_run_or_stored_twice_are_refused(self, tmp_path):
        w = self.storage(str(tmp_path)).open_run("r", metadata={"layers": ["a"], "dataset": {"n_examples": 4}})
        with pytest.raises(ConfigError, match="outside"):
            w.append(0, {"a": np.ones((1, 2), np.float32)}, {"example_ids": [4]})
        w.append(0, {"a": np.ones((2, 2), np.float32)}, {"example_ids": [0, 1]})
        with pytest.raises(ConfigError, match="already stored"):
            w.append(1, {"a": np.ones((1, 2), np.float32)}, {"example_ids": [1]})
        with pytest.raises(ConfigError, match="example_ids"):
            w.append(2, {"a": np.ones((1, 2), np.float32)}, {})

    def test_an_interrupted_run_reads_its_finished_examples_only(self, tmp_path):
        storage = self.storage(str(tmp_path), chunk_rows=4)
        w = storage.open_run("r", metadata={"layers": ["a"], "dataset": {"n_examples": 20}})
        data = np.arange(40, dtype=np.float32).reshape(20, 2)
        w.append(0, {"a": data[:10]}, {"example_ids": np.arange(10), "token_counts": np.arange(10) + 2})
        w.store.close()  # "killed": rows 8-9 wait in memory for the rest of their chunk
        w.release()  # ...and its lease dies with it
        with pytest.warns(UserWarning, match="8 of 20 examples are finished"):
            r = open_run(tmp_path / "r", allow_partial=True)
        np.testing.assert_array_equal(r.example_ids, np.arange(8))
        np.testing.assert_array_equal(r.activations("a"), data[:8])
        np.testing.assert_array_equal(r.example_metadata("token_counts"), np.arange(8) + 2)
        r.close()
        w = storage.open_run("r", metadata={"layers": ["a"], "dataset": {"n_examples": 20}}, resume=True)
        todo = np.setdiff1d(np.arange(20), w.done_ids())
        np.testing.assert_array_equal(todo, np.arange(8, 20))
        w.append(0, {"a": data[todo]}, {"example_ids": todo, "token_counts": todo + 2})
        w.finalize()
        with open_run(tmp_path / "r") as r:
            np.testing.assert_array_equal(r.activations("a"), data)


class TestZarrRuns(BackendSuite):
    def storage(self, root: str, **kw: object) -> ZarrStorage:
        return ZarrStorage(root, **kw)  # type: ignore[arg-type]


class TestShardedZarrRuns(BackendSuite):
    def storage(self, root: str, **kw: object) -> ZarrStorage:
        return ZarrStorage(root, shard_chunks=2, **kw)  # type: ignore[arg-type]


class TestHDF5Runs(BackendSuite):
    def storage(self, root: str, **kw: object) -> HDF5Storage:
        return HDF5Storage(root, **kw)  # type: ignore[arg-type]


class TestNpzRuns(BackendSuite):
    def storage(self, root: str, **kw: object) -> NPZStorage:
        return NPZStorage(root, **kw)  # type: ignore[arg-type]


# -- several writers -------------------------------------------------------------------------------------
def write_two_ranks(storage, n: int, dim: int, window: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """Write a pooled run as two ranks would (contiguous shares, batches shuffled within windows); returns
    the data and the writers (rank 0 first)."""
    rng = np.random.default_rng(seed)
    data = {k: rng.normal(size=(n, dim)).astype(np.float32) for k in ("blocks.0", "blocks.1")}
    layout = storage.layout(n, {k: (dim,) for k in data}, example_columns={"text": Column("str")})
    meta = {"layers": list(data), "dataset": {"n_examples": n}}
    shares = [Ranges.span(0, n // 2), Ranges.span(n // 2, n)]
    writers = [storage.open_run("r", metadata=meta, world_size=2, layout=layout, share=shares[0])]
    writers.append(storage.open_run("r", rank=1, world_size=2, share=shares[1]))
    for w, share in zip(writers, shares, strict=True):
        ids = share.values()
        for s in range(0, len(ids), window):
            ids[s : s + window] = rng.permutation(ids[s : s + window])  # bucketing reorders within windows
        for b in range(0, len(ids), 32):
            chunk = ids[b : b + 32]
            w.append(b, {k: v[chunk] for k, v in data.items()},
                     {"example_ids": chunk, "columns": {"text": [f"t{i}" for i in chunk]}})
        w.close(finished=True)
    return data, writers


@pytest.mark.parametrize("shard_chunks", [None, 4])
def test_two_writers_put_every_row_in_place_once(tmp_path, shard_chunks):
    storage = ZarrStorage(str(tmp_path), chunk_rows=16, shard_chunks=shard_chunks)
    data, writers = write_two_ranks(storage, 1000, 4, window=100)
    meta = writers[0].finalize()
    assert meta["stats"]["finalize_seconds"] < 5
    with open_run(tmp_path / "r") as r:
        for k, v in data.items():
            np.testing.assert_array_equal(r.activations(k), v)
        assert list(r.example_metadata("text")) == [f"t{i}" for i in range(1000)]


class CountingStore:
    """Wraps zarr's LocalStore: counts the bytes handed to it per key, as the disk would see them."""

    def __init__(self) -> None:
        self.written: dict[str, int] = {}

    def open_group(self, path: str, mode: str):  # type: ignore[no-untyped-def]
        import zarr
        from zarr.storage import LocalStore

        counts = self.written

        class Counting(LocalStore):
            async def set(self, key, value):  # type: ignore[no-untyped-def]
                counts[key] = counts.get(key, 0) + len(value)
                await super().set(key, value)

        return zarr.open_group(store=Counting(path, read_only=mode == "r"), mode=mode)


@pytest.mark.parametrize("shard_chunks", [None, 8])
def test_each_activation_byte_is_written_about_once(tmp_path, monkeypatch, shard_chunks):
    """Rows go straight to their place in whole units (chunks, or shards): no copy at finalize, no shard
    rewritten per chunk; only the seam units where the two ranks' shares meet are written twice."""
    import probing.storage.zarr_store as zs

    counting = CountingStore()
    monkeypatch.setattr(zs, "_open_group", counting.open_group)
    storage = ZarrStorage(str(tmp_path), chunk_rows=64, shard_chunks=shard_chunks, dtype="float16")
    n, dim = 20_000, 32
    data, writers = write_two_ranks(storage, n, dim, window=3200)
    writers[0].finalize()
    stored = sum(f.stat().st_size for f in (tmp_path / "r" / "layers").rglob("*") if f.name != "zarr.json")
    written = sum(v for k, v in counting.written.items() if "/layers/" in f"/{k}" and not k.endswith("zarr.json"))
    assert stored >= 2 * n * dim * 2  # both layers, float16
    assert written / stored <= 1.15, (written, stored)
    with open_run(tmp_path / "r") as r:
        for k, v in data.items():
            np.testing.assert_array_equal(r.activations(k), v.astype(np.float16))


def test_the_writer_holds_about_a_window_of_rows(tmp_path):
    storage = ZarrStorage(str(tmp_path), chunk_rows=64)
    n, window = 6000, 500
    layout = storage.layout(n, {"a": (8,)})
    w = storage.open_run("r", metadata={"layers": ["a"], "dataset": {"n_examples": n}}, layout=layout)
    rng = np.random.default_rng(0)
    held = 0
    for s in range(0, n, window):
        ids = s + rng.permutation(min(window, n - s))
        for b in range(0, len(ids), 50):
            w.append(b, {"a": np.ones((len(ids[b : b + 50]), 8), np.float32)}, {"example_ids": ids[b : b + 50]})
            held = max(held, w._tables["rows"].open_rows)
    w.finalize()
    assert window / 2 < held <= window + 64  # a window's rows, plus the unit it shares with the next


def test_open_run_on_a_folder_lists_runs(tmp_path):
    w = ZarrStorage(str(tmp_path)).open_run("only")
    w.append(0, {"x": np.ones((1, 3), np.float32)}, {"example_ids": [0]})
    w.finalize()
    with pytest.raises(FileNotFoundError, match="only"):
        open_run(tmp_path)


def test_bad_dtype_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(ConfigError, match="bfloat16 is not a zarr dtype"):
        ZarrStorage(str(tmp_path), dtype="bfloat16")
