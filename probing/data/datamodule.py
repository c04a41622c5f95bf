"""`ExtractionDataModule`: tokenize, batch (length-bucketed, sharded per rank) and pad dynamically.

Tokenization happens per batch in the collate function (fast tokenizers batch well), so nothing is
held for the whole dataset but one int per example (its token length, from a first chunked pass that
also rejects empty examples before any compute starts).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from probing.data.batching import PlannedBatchSampler, plan_batches, shard_ids
from probing.data.encoded import EncodedDataset, Tokens, encode_dataset, pad_batch
from probing.data.sources import TextDataset

log = logging.getLogger(__name__)


class _IndexedInputs(Dataset[tuple[int, Any]]):
    """``(example_id, text or words)``; the input is left out (None) when the collator pads kept tokens."""

    def __init__(self, dataset: TextDataset, with_inputs: bool = True) -> None:
        self.dataset = dataset
        self.with_inputs = with_inputs

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset.model_input(index) if self.with_inputs else None


class Collator:
    """Tokenize a list of ``(example_id, text or words)`` and pad to the longest in the batch.

    The batch carries ``example_ids``, ``special_tokens_mask`` (for the ``tokens`` strategy) and, for
    pre-split input, ``word_ids`` (the word index of every token, -1 for special and padding tokens).
    With ``tokens`` (from the length pass, `encode_dataset`), batches are padded from them and
    nothing is tokenized again.
    """

    def __init__(self, tokenizer: Any, max_length: int, words: bool = False, tokens: Tokens | None = None) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.words = words
        self.tokens = tokens

    def __call__(self, items: list[tuple[int, Any]]) -> dict[str, torch.Tensor]:
        ids = [i for i, _ in items]
        if self.tokens is not None:
            batch = pad_batch(self.tokens, ids, self.tokenizer)
            batch["example_ids"] = torch.tensor(ids, dtype=torch.long)
            return batch
        enc = self.tokenizer(
            [t for _, t in items],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_special_tokens_mask=True,
            is_split_into_words=self.words,
        )
        keep = ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask")
        batch = {k: v for k, v in enc.items() if k in keep}
        if self.words:
            rows = [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(items))]
            batch["word_ids"] = torch.tensor(rows, dtype=torch.long)
        batch["example_ids"] = torch.tensor(ids, dtype=torch.long)
        return batch


def effective_max_length(tokenizer: Any, model_config: Any, requested: int | None) -> int:
    """The truncation length: the requested one, capped at what the model's positions allow."""
    limits = [
        v
        for v in (getattr(model_config, "max_position_embeddings", None), getattr(model_config, "n_positions", None))
        if isinstance(v, int) and v > 0
    ]
    model_max = min(limits) if limits else None
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        model_max = min(model_max, tok_max) if model_max else tok_max
    if requested is None:
        return model_max or 512
    if model_max is not None and requested > model_max:
        log.warning("max_length %d exceeds the model's %d positions; using %d", requested, model_max, model_max)
        return model_max
    return requested


class ExtractionDataModule(pl.LightningDataModule):
    """Feeds one rank's batches of a `TextDataset` to the extraction module.

    ``done_ids`` (set by the prediction writer before the dataloader is built) are skipped: that is
    how a resumed run computes only what is missing. ``encoded`` is the dataset's one tokenizer pass
    (`encode_dataset`), made here when not given.
    """

    def __init__(
        self,
        dataset: TextDataset,
        tokenizer: Any,
        *,
        batch_size: int = 32,
        max_length: int = 512,
        bucketing: bool = True,
        max_tokens_per_batch: int | None = None,
        num_workers: int = 0,
        encoded: EncodedDataset | None = None,
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.bucketing = bucketing
        self.max_tokens_per_batch = max_tokens_per_batch
        self.num_workers = num_workers
        self.encoded = encoded if encoded is not None else encode_dataset(dataset, tokenizer, max_length)
        self.lengths = self.encoded.lengths
        self.done_ids: np.ndarray = np.zeros(0, dtype=np.int64)
        self.on_plan: Callable[[list[np.ndarray]], None] | None = None

    def rank_ids(self, rank: int, world_size: int) -> np.ndarray:
        """The ids this rank still has to extract."""
        ids = shard_ids(len(self.dataset), rank, world_size)
        if len(self.done_ids):
            ids = ids[~np.isin(ids, self.done_ids)]
        return ids

    def predict_dataloader(self) -> DataLoader[Any]:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        batches = plan_batches(
            self.rank_ids(rank, world),
            self.lengths,
            self.batch_size,
            bucketing=self.bucketing,
            max_tokens_per_batch=self.max_tokens_per_batch,
        )
        if self.on_plan is not None:
            self.on_plan(batches)
        return DataLoader(
            _IndexedInputs(self.dataset, with_inputs=self.encoded.tokens is None),
            batch_sampler=PlannedBatchSampler(batches),
            collate_fn=Collator(
                self.tokenizer, self.max_length, words=self.dataset.words_field is not None, tokens=self.encoded.tokens
            ),
            num_workers=self.num_workers,
            persistent_workers=False,
        )
