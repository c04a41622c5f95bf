"""`RunLoader`: shuffled batches of one layer's rows, read whole chunks at a time, for training (SAEs, probes).

Why chunks: a random row costs a whole chunk read (a chunk is the unit zarr/HDF5 decode and checksum),
so reading single rows at random reads each byte many times over. The loader instead reads *whole
chunks in a random order* and shuffles rows inside a bounded buffer:

1. The layer's rows are cut into read units: the array's write unit (a chunk, or a shard), about 2 MiB
   by default (`probing.storage.layout.CHUNK_BYTES`).
2. Each epoch, the units are permuted with ``seed`` and ``epoch`` (identical in every process), and
   consumer ``c`` of ``C = world_size x num_workers`` (DDP rank, then DataLoader worker) takes
   ``perm[c::C]``: every row goes to exactly one consumer, none twice.
3. A consumer reads ``buffer_chunks`` units into its buffer, permutes the rows it holds, and yields
   every whole batch; the fewer than ``batch_size`` rows left over stay in the buffer for the next
   window (the last batch of an epoch may be short, or dropped with ``drop_last``).

Reading: ``read_ahead`` units (default: ``buffer_chunks``, i.e. the whole next window) are read by up to
8 background threads straight into free slots of the buffer while the current window is mixed, so the
disk never waits for the mixing and the mixing only waits for the disk (double buffering; with fewer
slots ahead, most of the next window is read only after the current one is done). A unit of an uncompressed local
Zarr array (how probing stores activations by default) is read from its chunk file with one ``preadv``
and its crc32c checked in place (`probing.storage.chunk_files`); other arrays (compressed, sharded,
remote, HDF5) are read through their store and copied into the slot. Batches are gathered from the
buffer (one copy) and converted to ``dtype`` by torch.

Workers: the loader reads with its own threads and hands out whole batches, so ``num_workers=0`` is its
fast path. A DataLoader worker sends each batch through shared memory, which cost about 10 ms per 12 MB
batch on the development VM (one worker: about half the in-process speed; docs/storage.md); use workers
when the training step needs the main process's CPU, not for read speed.

Memory, per consumer: the buffer, ``(buffer_chunks + read_ahead) x unit_rows + batch_size`` rows of the
stored dtype, plus the batch being gathered and the one handed out. With the defaults (32 + 32 units of at
most 2 MiB) that is at most about 130 MiB per consumer (a DataLoader worker is one);
`RunLoader.buffer_bytes` gives it. ``read_ahead=8`` takes about half (and read 14-15% slower in one measurement here).

Shuffle quality: each batch is a uniform sample without replacement of the rows in the buffer, so it
draws on ``K = buffer_chunks`` units; with ``n`` rows per unit and batch size ``B``, the expected
number of distinct source units in a batch is ``K * (1 - C(K n - n, B) / C(K n, B))`` (close to
``K * (1 - (1 - 1/K)^B)``), which `expected_distinct_chunks` computes and the tests check. Rows of
units in different windows never meet in one batch: raise ``buffer_chunks`` for a wider mix.
Without ``shuffle``, each consumer takes a contiguous run of units and yields rows in stored order.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from probing.errors import ConfigError
from probing.storage.layout import layer_path


def expected_distinct_chunks(buffer_chunks: int, unit_rows: int, batch_size: int) -> float:
    """Expected distinct source units in a batch drawn without replacement from ``buffer_chunks`` full units
    of ``unit_rows`` rows each (the hypergeometric chance that a unit contributes no row, complemented)."""
    total = buffer_chunks * unit_rows
    if batch_size > total:
        return float(buffer_chunks)
    # C(total - n, B) / C(total, B) as a product, stable for large numbers
    log_p = sum(math.log1p(-unit_rows / (total - i)) for i in range(batch_size)) if total > unit_rows else -math.inf
    return buffer_chunks * (1.0 - math.exp(log_p))


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class RunLoader(IterableDataset[Any]):
    """Batches ``[batch_size, *row_shape]`` of one layer of a completed run (see the module docstring).

    Iterate it directly, or hand it to ``torch.utils.data.DataLoader(loader, batch_size=None,
    num_workers=w)`` (or `RunLoader.dataloader`): it yields whole batches and splits the units between
    workers itself. Each process opens its own reader of the run (nothing open is pickled).

    Args:
        path: the run's folder (or URL).
        layer: a layer selector (`RunReader.layer_key`).
        batch_size: rows per batch.
        shuffle: units in a random order and rows shuffled in the buffer; False: stored order.
        seed: the shuffle's seed; the same seed, epoch, world size and worker count give the same batches.
        rank, world_size: this process's DDP rank and the number of ranks (default: torch.distributed's,
            else 0 and 1).
        buffer_chunks: read units held and mixed at once (memory: see the module docstring).
        drop_last: drop each consumer's last, short batch.
        dtype: output dtype (``torch.float32`` by default; None keeps the stored dtype).
        return_index: yield ``(rows, row_index)`` with each row's position in the layer (int64): the
            key to per-row metadata (``reader.row_metadata``) and to labels.
        read_ahead: units read by background threads (at most 8 at once) into their own slots while the
            current window is mixed (the disk keeps busy; that many units more in memory); default
            ``buffer_chunks``: the next window is read while this one is mixed.
    """

    def __init__(
        self,
        path: str,
        layer: int | str,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        buffer_chunks: int = 32,
        drop_last: bool = False,
        dtype: torch.dtype | None = torch.float32,
        return_index: bool = False,
        read_ahead: int | None = None,
    ) -> None:
        from probing.storage.base import open_run

        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
        if buffer_chunks < 1:
            raise ConfigError(f"buffer_chunks must be >= 1, got {buffer_chunks}.")
        d_rank, d_world = _distributed()
        self.rank = d_rank if rank is None else int(rank)
        self.world_size = d_world if world_size is None else int(world_size)
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ConfigError(f"rank {self.rank} of world_size {self.world_size}: expected 0 <= rank < world_size.")
        self.path = path
        reader = open_run(path)  # a partial run is refused here, with what to do
        self.key = reader.layer_key(layer)
        array = layer_path(self.key)
        shape = reader.store.shape(array)
        self.unit_rows = max(1, int(reader.store.write_rows(array)))
        self.row_shape = tuple(int(s) for s in shape[1:])
        self.stored_dtype = np.dtype(reader.store.read(array, 0, 0).dtype)
        # kept for a pass in this process (opening a run reads and checks its metadata: ~0.2 s here); a
        # DataLoader worker or another process gets a pickled copy without it and opens its own
        self._reader: Any = reader
        self._reader_pid = os.getpid()
        self.total_rows = int(shape[0])
        self.n_units = -(-self.total_rows // self.unit_rows)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.epoch = 0
        self.buffer_chunks = int(buffer_chunks)
        self.drop_last = drop_last
        self.dtype = dtype
        self.return_index = return_index
        self.read_ahead = self.buffer_chunks if read_ahead is None else max(1, int(read_ahead))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"] = None  # open files are not pickled: the worker opens the run itself
        return state

    def _open(self) -> Any:
        """The reader opened in ``__init__`` when in the same process (kept open for the next pass), else a new
        one, closed after the pass."""
        from probing.storage.base import open_run

        if self._reader is not None and self._reader_pid == os.getpid():
            return contextlib.nullcontext(self._reader)
        return open_run(self.path)

    # -- the plan ----------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Use the permutation of epoch ``epoch`` (as ``DistributedSampler.set_epoch``; call before iterating)."""
        self.epoch = int(epoch)

    @property
    def buffer_bytes(self) -> int:
        """Bytes of one consumer's shuffle buffer."""
        return ((self.buffer_chunks + self.read_ahead) * self.unit_rows + self.batch_size) * \
            int(np.prod(self.row_shape)) * self.stored_dtype.itemsize

    def units_of(self, consumer: int, consumers: int) -> np.ndarray:
        """The unit indices consumer ``consumer`` of ``consumers`` reads this epoch, in reading order."""
        if self.shuffle:
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n_units)
            return perm[consumer::consumers]
        lo = self.n_units * consumer // consumers
        hi = self.n_units * (consumer + 1) // consumers
        return np.arange(lo, hi)

    def _consumer(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        return self.rank * workers + worker, self.world_size * workers

    # -- reading -----------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        from probing.storage.chunk_files import ChunkFiles

        consumer, consumers = self._consumer()
        units = [int(u) for u in self.units_of(consumer, consumers)]
        rng = np.random.default_rng([self.seed, self.epoch, consumer, 1])
        U, B, K = self.unit_rows, self.batch_size, self.buffer_chunks
        # the buffer: K + read_ahead slots of one unit each (a window being mixed, and the units being read
        # ahead, straight into their slots), then B rows that carry a window's leftover into the next
        n_slots = K + self.read_ahead
        carry_at = n_slots * U
        pool = np.empty((carry_at + B, *self.row_shape), dtype=self.stored_dtype)
        index = np.empty(carry_at + B, dtype=np.int64)
        array = layer_path(self.key)
        with self._open() as reader, ThreadPoolExecutor(min(8, self.read_ahead)) as io:
            files = ChunkFiles.of(reader.store, array, str(self.path)) if self.unit_rows == reader.store.chunk_rows(
                array) else None
            if files is None:  # through the store: its chunk listing once (a missing chunk is damage), not in threads
                reader._read(array, 0, 0)

            def read(unit: int, slot: int) -> int:
                a, b = unit * U, min(self.total_rows, (unit + 1) * U)
                index[slot * U : slot * U + b - a] = np.arange(a, b)
                if files is not None:  # the chunk file straight into its slot (chunk_files.py)
                    return files.read_into(unit, pool[slot * U : (slot + 1) * U])
                pool[slot * U : slot * U + b - a] = reader._read(array, a, b)
                return b - a

            free = deque(range(n_slots))
            flight: deque[tuple[int, Any]] = deque()
            queued = iter(units)

            def submit() -> None:
                while free:
                    unit = next(queued, None)
                    if unit is None:
                        return
                    slot = free.popleft()
                    flight.append((slot, io.submit(read, unit, slot)))

            submit()
            fill = 0  # rows in the carry area
            while flight:
                window = [flight.popleft() for _ in range(min(K, len(flight)))]
                parts = [np.arange(carry_at, carry_at + fill)]
                for slot, fut in window:
                    parts.append(np.arange(slot * U, slot * U + fut.result()))
                members = np.concatenate(parts)
                order = members[rng.permutation(len(members))] if self.shuffle else members
                whole = len(order) // B
                for i in range(whole):
                    pick = order[i * B : (i + 1) * B]
                    yield self._batch(pool, pick, index)
                rest = order[whole * B :]
                pool[carry_at : carry_at + len(rest)] = pool[rest]  # a gather: a copy first, then the assignment
                index[carry_at : carry_at + len(rest)] = index[rest]
                fill = len(rest)
                free.extend(slot for slot, _ in window)
                submit()
        if fill and not self.drop_last:
            yield self._batch(pool, np.arange(carry_at, carry_at + fill), index)

    def _batch(self, pool: np.ndarray, pick: np.ndarray, index: np.ndarray) -> Any:
        """Rows ``pick`` of the buffer gathered into the batch's own numpy memory, in ``dtype``.

        Numpy memory: a DataLoader worker's torch-allocated batches grew its RSS to ~2 GB over a 2 GB run in
        bench/readback.py. (Gathering straight into shared memory in a worker, to save the copy torch makes
        when it sends a batch, was measured no faster: the hand-over itself costs ~10 ms per 12 MB batch.)
        A float16 -> float32 conversion is done by torch (~10x numpy's astype).
        """
        stored = torch.from_numpy(pool[:0]).dtype
        out_dtype = stored if self.dtype is None else self.dtype
        shape = (len(pick), *self.row_shape)
        out = torch.from_numpy(np.empty(shape, dtype=torch.empty(0, dtype=out_dtype).numpy().dtype))
        if out_dtype == stored:
            np.take(pool, pick, axis=0, out=out.numpy(), mode="clip")  # clip: no buffering; picks are in range
        else:
            out.copy_(torch.from_numpy(pool[pick]))
        rows_index = torch.from_numpy(index[pick])
        return (out, rows_index) if self.return_index else out

    def __len__(self) -> int:
        """Batches this rank yields in total over its workers when run without DataLoader workers (an
        estimate with workers: each worker's last batch may be short)."""
        units = self.units_of(self.rank, self.world_size)
        rows = sum(min(self.total_rows, (int(u) + 1) * self.unit_rows) - int(u) * self.unit_rows for u in units)
        return rows // self.batch_size if self.drop_last else -(-rows // self.batch_size)

    def dataloader(self, num_workers: int = 0, **kwargs: Any) -> DataLoader[Any]:
        """A ``DataLoader`` over this loader's batches (``batch_size=None``: batches are made here)."""
        return DataLoader(self, batch_size=None, num_workers=num_workers,
                          persistent_workers=False, **kwargs)

    def __repr__(self) -> str:
        return (f"RunLoader({self.path!r}, layer={self.key!r}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"units={self.n_units}x{self.unit_rows} rows, rank={self.rank}/{self.world_size}, "
                f"buffer={self.buffer_bytes / 2**20:.1f} MiB)")
