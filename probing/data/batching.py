"""Which examples go into which batch, on which rank.

Each rank takes a contiguous share of the example ids (so N < world size just leaves some ranks
idle, and nothing is duplicated or dropped), removes the ids already stored (resume), and batches the
rest. With bucketing, ids are sorted by token length within windows, which removes most padding; the
output order is restored by example id when the run is finalized.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from probing.errors import ConfigError


def shard_ids(n_examples: int, rank: int, world_size: int) -> np.ndarray:
    """The contiguous share of ``range(n_examples)`` that ``rank`` of ``world_size`` extracts."""
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside world size {world_size}.")
    start = n_examples * rank // world_size
    stop = n_examples * (rank + 1) // world_size
    return np.arange(start, stop, dtype=np.int64)


def plan_batches(
    ids: np.ndarray,
    lengths: np.ndarray,
    batch_size: int,
    *,
    bucketing: bool = True,
    max_tokens_per_batch: int | None = None,
    window: int = 100,
) -> list[np.ndarray]:
    """Split ``ids`` into batches.

    Args:
        ids: example ids to batch, in dataset order.
        lengths: token length of every example of the dataset (indexed by id).
        batch_size: most examples per batch.
        bucketing: sort by length (longest first) within windows of ``window * batch_size`` ids.
        max_tokens_per_batch: if set, also cap ``examples * longest length`` per batch (a token
            budget: short examples get bigger batches, up to ``batch_size``).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    if max_tokens_per_batch is not None and max_tokens_per_batch < 1:
        raise ConfigError(f"max_tokens_per_batch must be >= 1, got {max_tokens_per_batch}.")
    ids = np.asarray(ids, dtype=np.int64)
    if bucketing and len(ids) > 1:
        span = max(1, window * batch_size)
        parts = []
        for start in range(0, len(ids), span):
            chunk = ids[start : start + span]
            parts.append(chunk[np.argsort(-lengths[chunk], kind="stable")])
        ids = np.concatenate(parts)
    if max_tokens_per_batch is None:
        return [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]
    batches: list[np.ndarray] = []
    start = 0
    longest = 0
    for pos in range(len(ids)):
        longest_with = max(longest, int(lengths[ids[pos]]))
        count = pos - start + 1
        if pos > start and (count > batch_size or count * longest_with > max_tokens_per_batch):
            batches.append(ids[start:pos])
            start, longest = pos, int(lengths[ids[pos]])
        else:
            longest = longest_with
    if start < len(ids):
        batches.append(ids[start:])
    return batches


class PlannedBatchSampler(Sampler[list[int]]):
    """A batch sampler over a fixed plan (one rank's batches)."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.batches:
            yield b.tolist()

    def __len__(self) -> int:
        return len(self.batches)
