"""Batch planning: every id once, per-rank shares, windows, length bucketing, token budgets."""

from __future__ import annotations

import numpy as np
import pytest

from probing import ModelBackend
from probing.data.batches import BatchStream
from probing.data.batching import plan_batches, shard_ids
from probing.data.sources import TextDataset
from probing.storage.ranges import Ranges


@pytest.mark.parametrize("n", [0, 1, 7, 101])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_every_id_once(n, world):
    ids = np.concatenate([shard_ids(n, r, world) for r in range(world)])
    np.testing.assert_array_equal(ids, np.arange(n))


def test_bucketing_sorts_by_length_and_keeps_every_example():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=80)
    batches = plan_batches(lengths, 8, bucketing=True)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(80))
    assert (np.diff(lengths[np.concatenate(batches)]) <= 0).all()
    plain = plan_batches(lengths, 8, bucketing=False)
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded < 0.7 * sum(len(b) * lengths[b].max() for b in plain)


def test_token_budget_caps_examples_times_longest():
    lengths = np.array([50, 50, 10, 10, 10, 10, 10, 10, 3])
    batches = plan_batches(lengths, 8, bucketing=False, max_tokens_per_batch=60)
    assert [b.tolist() for b in batches] == [[0], [1], [2, 3, 4, 5, 6, 7], [8]]
    for b in batches:
        assert len(b) * lengths[b].max() <= 60 or len(b) == 1


def test_a_rank_streams_its_share_window_by_window_and_skips_done_ids(tiny_models):
    tokenizer = ModelBackend().load_model(tiny_models["bert"]).tokenizer
    rng = np.random.default_rng(1)
    words = ["the", "cat", "dog", "sat", "ran", "on", "mat"]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 12))) for _ in range(100)]
    done = Ranges.of([25, 26, 27, 60])
    stream = BatchStream(TextDataset(texts), tokenizer, 64, batch_size=4, bucketing=True, max_tokens_per_batch=None,
                         window=10, share=(20, 70), done=done, example_fields=["text"])
    batches = list(stream)
    assert len(batches) == len(stream)
    ids = np.concatenate([b["example_ids"].numpy() for b in batches])
    want = np.setdiff1d(np.arange(20, 70), [25, 26, 27, 60])
    np.testing.assert_array_equal(np.sort(ids), want)  # its share, each id once, done ones skipped
    assert sum(b["n_tokenized"] for b in batches) == len(want)  # nothing outside the share is tokenized
    # windows are the next 10 remaining ids: sorting by length never crosses one
    window_of = {int(i): k // 10 for k, i in enumerate(want)}
    seen = [window_of[int(i)] for i in ids]
    assert seen == sorted(seen)
    for b in batches:
        for i, text in zip(b["example_ids"].tolist(), b["columns"].values["text"], strict=True):
            assert text == texts[i]
        lengths = b["attention_mask"].sum(1).tolist()
        assert lengths == sorted(lengths, reverse=True)
