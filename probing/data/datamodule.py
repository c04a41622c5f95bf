"""`ExtractionDataModule`: one rank's share of the data, tokenized and batched as it is reached.

``setup`` runs on every rank once the processes know their rank: it picks the rank's contiguous share
of the ids, checks it for empty texts, and, for a token-level run, tokenizes the share to count each
example's rows (the writer places rows before computing them). Nothing outside the share is read or
tokenized. ``predict_dataloader`` then gives the `BatchStream` of the examples still to do (the
writer callback sets ``done`` after opening the run).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader

from probing.config import DEFAULT_MAX_LENGTH
from probing.data.batches import BatchStream, as_is
from probing.data.batching import shard_range
from probing.data.encoded import EncodedRange, encode_range
from probing.data.sources import TextDataset, TextStream
from probing.errors import DatasetError
from probing.storage.ranges import Ranges
from probing.strategies import TokenLevelStrategy

log = logging.getLogger(__name__)


def model_max_length(tokenizer: Any, model_config: Any) -> int | None:
    """The longest input the model takes (its positions, and the tokenizer's limit), if it says."""
    limits = [
        v
        for v in (getattr(model_config, "max_position_embeddings", None), getattr(model_config, "n_positions", None))
        if isinstance(v, int) and v > 0
    ]
    model_max = min(limits) if limits else None
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        model_max = min(model_max, tok_max) if model_max else tok_max
    return model_max


def effective_max_length(tokenizer: Any, model_config: Any, requested: int | None) -> int:
    """The truncation length, the same for the API and the CLI: the requested one, or by default the model's
    own limit capped at `DEFAULT_MAX_LENGTH`; never more than the model's positions allow."""
    model_max = model_max_length(tokenizer, model_config)
    if requested is None:
        return min(model_max or DEFAULT_MAX_LENGTH, DEFAULT_MAX_LENGTH)
    if model_max is not None and requested > model_max:
        log.warning("max_length %d exceeds the model's %d positions; using %d", requested, model_max, model_max)
        return model_max
    return requested


class ExtractionDataModule(pl.LightningDataModule):
    """Feeds one rank's batches of a `TextDataset` (or `TextStream`) to the extraction module.

    Args:
        dataset: the data.
        tokenizer, max_length: how to tokenize.
        batch_size, bucketing, max_tokens_per_batch: how to batch.
        window: examples per bucketing window.
        num_workers: DataLoader worker processes (tokenize in parallel with the forward pass).
        token_level: the strategy of a token-level run (rows per example are counted in ``setup``).
        example_fields / row_fields: metadata fields the batches carry (see `BatchStream`).
    """

    def __init__(
        self,
        dataset: TextDataset | TextStream,
        tokenizer: Any,
        *,
        batch_size: int = 32,
        max_length: int = 512,
        bucketing: bool = True,
        max_tokens_per_batch: int | None = None,
        window: int = 3200,
        num_workers: int = 0,
        token_level: TokenLevelStrategy | None = None,
        example_fields: tuple[str, ...] = (),
        row_fields: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.bucketing = bucketing
        self.max_tokens_per_batch = max_tokens_per_batch
        self.window = window
        self.num_workers = num_workers
        self.token_level = token_level
        self.example_fields = example_fields
        self.row_fields = row_fields
        self.rank, self.world_size = 0, 1
        self.share: tuple[int, int] | None = None
        self.encoded: EncodedRange | None = None
        self.done = Ranges()
        self.stream: BatchStream | None = None

    @property
    def streaming(self) -> bool:
        return isinstance(self.dataset, TextStream)

    def setup(self, stage: str) -> None:
        trainer = self.trainer
        self.rank = trainer.global_rank if trainer is not None else 0
        self.world_size = trainer.world_size if trainer is not None else 1
        if self.streaming:
            return
        assert isinstance(self.dataset, TextDataset)
        self.share = shard_range(len(self.dataset), self.rank, self.world_size)
        lo, hi = self.share
        empty = self.dataset.empty_examples(lo, hi)
        if len(empty):
            raise DatasetError(
                f"{len(empty)} example(s) have an empty (or whitespace-only, or zero-width-only) text, e.g. ids "
                f"{empty[:5].tolist()}: a model sees only its special tokens there, and the vector would look like "
                "any other. Remove them from the data (example ids are dataset positions, so they are not skipped)."
            )
        if self.token_level is not None:
            self.encoded = encode_range(
                self.dataset.inputs, lo, hi, self.tokenizer, self.max_length, self.token_level.count_rows,
                words=self.dataset.words_field is not None,
            )
            self.dataset.release_pages()

    @property
    def row_counts(self) -> np.ndarray | None:
        """Rows per example of this rank's share (token-level runs)."""
        return None if self.encoded is None else self.encoded.row_counts

    @property
    def token_counts(self) -> np.ndarray | None:
        """Tokens per example of this rank's share (token-level runs)."""
        return None if self.encoded is None else self.encoded.lengths

    def batch_stream(self, block: int | None = None) -> BatchStream:
        """This rank's batches of the examples not yet done (``block``: a stream's block size)."""
        return BatchStream(
            self.dataset,
            self.tokenizer,
            self.max_length,
            batch_size=self.batch_size,
            bucketing=self.bucketing,
            max_tokens_per_batch=self.max_tokens_per_batch,
            window=block if self.streaming and block else self.window,
            share=self.share,
            done=self.done,
            example_fields=self.example_fields,
            row_fields=self.row_fields,
            tokens=None if self.encoded is None else self.encoded.tokens,
            row_counts=self.row_counts,
            rank=self.rank,
            world_size=self.world_size,
        )

    def predict_dataloader(self) -> DataLoader[Any]:
        if self.stream is None:
            self.stream = self.batch_stream()
        return DataLoader(self.stream, batch_size=None, collate_fn=as_is, num_workers=self.num_workers,
                          persistent_workers=False)
