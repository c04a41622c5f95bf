"""`BatchStream`: one rank's padded batches, window by window, read and tokenized as they are reached.

A window is the next examples of the rank's share that are not stored yet (a resume skips the rest).
For each window the stream reads the inputs and the metadata fields of just those examples, tokenizes
them once (or takes the tokens of a token-level share's first pass), sorts them by length and yields
padded batches. Each batch carries its examples' ids and metadata values, so the writer stores
them beside the activations. Nothing is held for more than one window.

A `TextStream` (streaming) is cut into blocks of ``block`` examples; rank ``r`` of ``W`` takes blocks
``r, r + W, ...`` and reads past the others' without tokenizing them. Blocks are whole write units, so
ranks never share one.

With DataLoader workers, windows (blocks) are dealt to the workers in turn.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from probing.data.batching import plan_batches
from probing.data.encoded import Tokens, encode, pad_batch
from probing.data.sources import TextDataset, TextStream
from probing.errors import DatasetError
from probing.storage.ranges import Ranges


class Carried:
    """Values a batch carries to the writer untouched (metadata fields): Lightning and the DataLoader
    move and convert what a batch holds element by element, which for lists of strings costs about as
    much as a tiny model's forward pass; an object of this class is passed along as it is."""

    __slots__ = ("values",)

    def __init__(self, values: dict[str, list[Any]]) -> None:
        self.values = values


def as_is(batch: Any) -> Any:
    """The DataLoader's collate function: a `BatchStream` yields whole batches."""
    return batch


class BatchStream(IterableDataset[dict[str, Any]]):
    """The batches of one rank.

    Args:
        source: the dataset (`TextDataset`) or stream (`TextStream`).
        tokenizer, max_length: how to tokenize.
        batch_size, bucketing, max_tokens_per_batch: how to batch (see `plan_batches`).
        window: examples per bucketing window (and per block of a stream).
        share: ``(start, stop)`` of a dataset's ids this rank extracts (None for a stream).
        done: ids already stored, skipped.
        example_fields: metadata fields stored per example; row_fields: per-word list fields stored per
            row (word-level runs), cut to the words kept after truncation.
        tokens: the share's tokens from a first pass (token-level runs), if kept.
        row_counts: rows per example of the share (token-level runs).
        rank, world_size: for streams, which blocks are this rank's.
    """

    def __init__(
        self,
        source: TextDataset | TextStream,
        tokenizer: Any,
        max_length: int,
        *,
        batch_size: int,
        bucketing: bool,
        max_tokens_per_batch: int | None,
        window: int,
        share: tuple[int, int] | None,
        done: Ranges,
        example_fields: Sequence[str] = (),
        row_fields: Sequence[str] = (),
        tokens: Tokens | None = None,
        row_counts: np.ndarray | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.source = source
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.batch_size = batch_size
        self.bucketing = bucketing
        self.max_tokens_per_batch = max_tokens_per_batch
        self.window = max(1, int(window))
        self.share = share
        self.done = done
        self.example_fields = list(example_fields)
        self.row_fields = list(row_fields)
        self.tokens = tokens
        self.row_counts = row_counts
        self.rank = rank
        self.world_size = world_size
        self.words = source.words_field is not None

    # -- sizes -----------------------------------------------------------------------------------
    def _remaining(self) -> np.ndarray:
        assert self.share is not None
        return (Ranges.span(*self.share) - self.done).values()

    def __len__(self) -> int:
        """Batches this rank yields (known for a dataset with a fixed batch size only)."""
        if self.share is None or self.max_tokens_per_batch is not None:
            raise TypeError("the number of batches is not known before they are made")
        n = len(self._remaining())
        full, last = divmod(n, self.window)
        return full * -(-self.window // self.batch_size) + -(-last // self.batch_size)

    @property
    def examples(self) -> int | None:
        """Examples this rank extracts (None for a stream)."""
        return None if self.share is None else len(self._remaining())

    # -- iteration -------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.share is None:
            yield from self._stream(worker, workers)
            return
        ids = self._remaining()
        for w, start in enumerate(range(0, len(ids), self.window)):
            if w % workers == worker:
                yield from self._window(ids[start : start + self.window])

    def _window(self, ids: np.ndarray) -> Iterator[dict[str, Any]]:
        assert isinstance(self.source, TextDataset) and self.share is not None
        lo, hi = int(ids[0]), int(ids[-1]) + 1
        pick = ids - lo
        need_inputs = self.tokens is None
        fields, inputs = self.source.block([*self.example_fields, *self.row_fields], lo, hi, inputs=need_inputs)
        values = {f: [v[i] for i in pick] for f, v in fields.items()}
        if self.tokens is not None:  # the share's first pass kept them
            tokens, index, tokenized = self.tokens, ids - self.share[0], 0
        else:
            assert inputs is not None
            tokens = encode([inputs[i] for i in pick], self.tokenizer, self.max_length, words=self.words, first_id=lo)
            index, tokenized = np.arange(len(ids)), len(ids)
        rows = None if self.row_counts is None else self.row_counts[ids - self.share[0]]
        self.source.release_pages()  # the window is read: its pages of a memory-mapped file are not needed again
        yield from self._batches(ids, tokens, index, values, rows, tokenized, None)

    def _stream(self, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        assert isinstance(self.source, TextStream)
        items = iter(self.source)
        text = self.source.text_field
        for k in itertools.count():
            block = list(itertools.islice(items, self.window))
            if not block:
                return
            lo = k * self.window
            if k % self.world_size == self.rank and (k // self.world_size) % workers == worker:
                ids = lo + np.arange(len(block), dtype=np.int64)
                keep = ~self.done.contains(ids)
                if keep.any():
                    mine = [block[i] for i in np.flatnonzero(keep)]
                    ids = ids[keep]
                    inputs = [_stream_text(r, text, int(i)) for r, i in zip(mine, ids, strict=True)]
                    values = {f: [r.get(text if f == "text" and "text" not in r else f) for r in mine]
                              for f in self.example_fields}
                    tokens = encode(inputs, self.tokenizer, self.max_length, first_id=int(ids[0]))
                    yield from self._batches(ids, tokens, np.arange(len(ids)), values, None, len(ids),
                                             lo + len(block))
            if len(block) < self.window:
                return

    def _batches(
        self,
        ids: np.ndarray,
        tokens: Tokens,
        index: np.ndarray,
        values: dict[str, list[Any]],
        rows: np.ndarray | None,
        tokenized: int,
        seen: int | None,
    ) -> Iterator[dict[str, Any]]:
        lengths = tokens.offsets[index + 1] - tokens.offsets[index]
        for b in plan_batches(lengths, self.batch_size, bucketing=self.bucketing,
                              max_tokens_per_batch=self.max_tokens_per_batch):
            batch: dict[str, Any] = pad_batch(tokens, index[b], self.tokenizer)
            batch["example_ids"] = torch.from_numpy(ids[b])
            batch["columns"] = Carried({f: [values[f][i] for i in b] for f in self.example_fields})
            if self.row_fields:
                assert rows is not None
                lists = [values[f] for f in self.row_fields]
                batch["row_columns"] = Carried(self._row_values(ids[b], lists, b, rows[b]))
            batch["n_tokenized"] = tokenized
            if tokenized:  # the window's tokenization: how much truncation cut
                batch["truncated"] = (tokens.truncated, tokens.longest)
            tokenized = 0
            if seen is not None:
                batch["n_seen"] = seen
            yield batch

    def _row_values(self, ids: np.ndarray, lists: list[list[Any]], b: np.ndarray, rows: np.ndarray) -> dict[str, list]:
        """Per-word lists of the batch's examples, cut to their kept words and concatenated."""
        out: dict[str, list[Any]] = {}
        for name, per_example in zip(self.row_fields, lists, strict=True):
            flat: list[Any] = []
            for eid, i, k in zip(ids.tolist(), b.tolist(), rows.tolist(), strict=True):
                items = per_example[i]
                if not isinstance(items, (list, tuple)) or len(items) < k:
                    have = len(items) if isinstance(items, (list, tuple)) else type(items).__name__
                    raise DatasetError(
                        f"Example {eid}: field {name!r} has {have} values for its {k} words; a per-word field "
                        "needs one value per word."
                    )
                flat.extend(items[:k])
            out[name] = flat
        return out


def _stream_text(record: dict[str, Any], field: str, index: int) -> str:
    value = record.get(field)
    if not isinstance(value, str):
        raise DatasetError(f"Example {index}: field {field!r} is a {type(value).__name__}, not a str.")
    if not value.strip():
        raise DatasetError(f"Example {index} has an empty text; remove empty texts from the stream.")
    return value
