"""Batch planning: every id once, per-rank shares, length bucketing, token budgets."""

from __future__ import annotations

import numpy as np
import pytest

from probing.data.batching import plan_batches, shard_ids


@pytest.mark.parametrize("n", [0, 1, 7, 101])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_every_id_once(n, world):
    ids = np.concatenate([shard_ids(n, r, world) for r in range(world)])
    np.testing.assert_array_equal(ids, np.arange(n))


def test_bucketing_sorts_within_windows_and_keeps_every_id():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=1000)
    ids = np.arange(1000)
    batches = plan_batches(ids, lengths, 8, bucketing=True, window=10)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), ids)
    plain = plan_batches(ids, lengths, 8, bucketing=False)
    padded = sum(len(b) * lengths[b].max() for b in batches)
    padded_plain = sum(len(b) * lengths[b].max() for b in plain)
    assert padded < 0.7 * padded_plain
    first_window = np.concatenate(batches[:10])
    assert set(first_window) == set(range(80))  # sorting never crosses a window
    assert (np.diff(lengths[first_window]) <= 0).all()


def test_token_budget_caps_examples_times_longest():
    lengths = np.array([50, 50, 10, 10, 10, 10, 10, 10, 3])
    batches = plan_batches(np.arange(9), lengths, 8, bucketing=False, max_tokens_per_batch=60)
    assert [b.tolist() for b in batches] == [[0], [1], [2, 3, 4, 5, 6, 7], [8]]
    for b in batches:
        assert len(b) * lengths[b].max() <= 60 or len(b) == 1
