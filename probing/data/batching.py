"""Which examples go to which rank, and into which batch.

Each rank takes a contiguous share of the example ids (so N < world size just leaves some ranks idle,
and nothing is duplicated or dropped). Within its share a rank works window by window: a window is the
next `window` examples not yet stored, and bucketing sorts them by token length (longest first) so
that batches hold examples of similar length, which removes most padding. Every row still goes to its
place in dataset order when it is written.
"""

from __future__ import annotations

import numpy as np

from probing.errors import ConfigError

#: batches per bucketing window, at most
WINDOW_BATCHES = 100


def shard_range(n_examples: int, rank: int, world_size: int) -> tuple[int, int]:
    """The contiguous share ``[start, stop)`` of ``range(n_examples)`` that ``rank`` of ``world_size`` extracts."""
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside world size {world_size}.")
    return n_examples * rank // world_size, n_examples * (rank + 1) // world_size


def shard_ids(n_examples: int, rank: int, world_size: int) -> np.ndarray:
    """`shard_range` as an id array."""
    return np.arange(*shard_range(n_examples, rank, world_size), dtype=np.int64)


def window_examples(batch_size: int, bytes_per_example: float, budget: int) -> int:
    """Examples per bucketing window: `WINDOW_BATCHES` batches, fewer when their rows would pass ``budget`` bytes
    (the writer holds a window's rows until their write units are complete), and never under 4 batches."""
    fit = int(budget // max(bytes_per_example, 1.0))
    return max(4 * batch_size, min(WINDOW_BATCHES * batch_size, fit))


def plan_batches(
    lengths: np.ndarray,
    batch_size: int,
    *,
    bucketing: bool = True,
    max_tokens_per_batch: int | None = None,
) -> list[np.ndarray]:
    """Split one window's examples (positions ``0..len(lengths)-1``) into batches.

    Args:
        lengths: token length of each example of the window.
        batch_size: most examples per batch.
        bucketing: sort by length, longest first (the first batch is the largest: memory errors show early).
        max_tokens_per_batch: if set, also cap ``examples * longest length`` per batch (a token
            budget: short examples get bigger batches, up to ``batch_size``).
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    if max_tokens_per_batch is not None and max_tokens_per_batch < 1:
        raise ConfigError(f"max_tokens_per_batch must be >= 1, got {max_tokens_per_batch}.")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable") if bucketing and len(lengths) > 1 else np.arange(len(lengths))
    if max_tokens_per_batch is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[np.ndarray] = []
    start = 0
    longest = 0
    for pos in range(len(order)):
        longest_with = max(longest, int(lengths[order[pos]]))
        count = pos - start + 1
        if pos > start and (count > batch_size or count * longest_with > max_tokens_per_batch):
            batches.append(order[start:pos])
            start, longest = pos, int(lengths[order[pos]])
        else:
            longest = longest_with
    if start < len(order):
        batches.append(order[start:])
    return batches
