"""One tokenizer pass over the whole dataset: token lengths for bucketing, and the tokens themselves.

The length pass must tokenize every example before any batch is planned (bucketing sorts by token
length, and examples with no tokens are rejected before compute starts). Its output is kept, packed
into flat arrays, so that batches are padded from it instead of being tokenized a second time
(measured: 2.2% of an all-MiniLM-L6-v2 run over 2,048 sentences on 2 CPU cores). Above a memory
budget only the lengths are kept and batches are tokenized as they are drawn, as before: the design
holds nothing per token for datasets of any size.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from probing.data.sources import TextDataset
from probing.errors import DatasetError

#: most bytes of kept tokens (ids, special-token mask, type ids, word ids: 5-10 bytes per token);
#: bigger datasets keep only their lengths
KEEP_TOKENS_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Tokens:
    """Every example's tokens, packed: example ``i`` is ``[offsets[i], offsets[i + 1])`` of each array.

    ``type_ids`` is None when the tokenizer gives no token type ids, ``word_ids`` (-1 for special
    tokens) when the input is not pre-split into words.
    """

    offsets: np.ndarray
    input_ids: np.ndarray
    special: np.ndarray
    type_ids: np.ndarray | None
    word_ids: np.ndarray | None

    @property
    def nbytes(self) -> int:
        arrays = (self.offsets, self.input_ids, self.special, self.type_ids, self.word_ids)
        return sum(a.nbytes for a in arrays if a is not None)


@dataclass(frozen=True)
class EncodedDataset:
    """Token count of every example after truncation, and its `Tokens` when they fit the budget."""

    lengths: np.ndarray
    tokens: Tokens | None


def _flat(rows: Iterable[Iterable[Any]], dtype: Any, total: int) -> np.ndarray:
    return np.fromiter(itertools.chain.from_iterable(rows), dtype=dtype, count=total)


def encode_dataset(
    dataset: TextDataset,
    tokenizer: Any,
    max_length: int,
    *,
    chunk: int = 2048,
    keep_bytes: int = KEEP_TOKENS_BYTES,
) -> EncodedDataset:
    """Tokenize ``dataset`` once, in chunks; raises `DatasetError` on examples with no tokens.

    Tokens are kept while they fit ``keep_bytes`` (0: never) and while the tokenizer can pad.
    """
    n = len(dataset)
    words = dataset.words_field is not None
    lengths = np.zeros(n, dtype=np.int32)
    keep = keep_bytes > 0 and getattr(tokenizer, "pad_token_id", None) is not None
    with_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    parts: list[dict[str, np.ndarray]] = []
    kept = 0
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        enc = tokenizer(
            dataset.inputs(start, stop),
            truncation=True,
            max_length=max_length,
            is_split_into_words=words,
            return_special_tokens_mask=keep,
            return_token_type_ids=keep and with_types,
            return_attention_mask=False,
        )
        ids = enc["input_ids"]
        lengths[start:stop] = [len(x) for x in ids]
        if not keep:
            continue
        total = int(lengths[start:stop].sum())
        part = {"input_ids": _flat(ids, np.int32, total), "special": _flat(enc["special_tokens_mask"], np.int8, total)}
        if with_types:
            part["type_ids"] = _flat(enc["token_type_ids"], np.int8, total)
        if words:
            rows = ([-1 if w is None else w for w in enc.word_ids(i)] for i in range(stop - start))
            part["word_ids"] = _flat(rows, np.int32, total)
        kept += sum(a.nbytes for a in part.values()) + 8 * (stop - start)
        if kept > keep_bytes:
            keep, parts = False, []  # over budget: lengths only from here on
        else:
            parts.append(part)
    empty = np.flatnonzero(lengths == 0)
    if len(empty):
        raise DatasetError(
            f"{len(empty)} example(s) give no tokens at all (first ids: {empty[:5].tolist()}), e.g. empty "
            "texts with a tokenizer that adds no special tokens. Remove them from the dataset."
        )
    if not keep:
        return EncodedDataset(lengths, None)

    def joined(key: str, dtype: Any = None) -> np.ndarray | None:
        arrays = [p[key] for p in parts if key in p]
        if arrays:
            return np.concatenate(arrays)
        return None if dtype is None else np.zeros(0, dtype=dtype)  # no examples at all

    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    input_ids, special = joined("input_ids", np.int32), joined("special", np.int8)
    assert input_ids is not None and special is not None
    tokens = Tokens(offsets, input_ids, special, type_ids=joined("type_ids"), word_ids=joined("word_ids"))
    return EncodedDataset(lengths, tokens)


def pad_batch(tokens: Tokens, ids: Sequence[int], tokenizer: Any) -> dict[str, torch.Tensor]:
    """The batch of examples ``ids`` padded to the longest, as the tokenizer pads (side, pad values).

    Returns ``input_ids``, ``attention_mask``, ``special_tokens_mask`` (padding counts as special,
    as in transformers), ``token_type_ids`` when kept, and ``word_ids`` for pre-split input.
    """
    starts = tokens.offsets[np.asarray(ids)]
    ends = tokens.offsets[np.asarray(ids) + 1]
    width = int((ends - starts).max()) if len(ids) else 0
    left = getattr(tokenizer, "padding_side", "right") == "left"
    shape = (len(ids), width)
    out = {
        "input_ids": np.full(shape, tokenizer.pad_token_id, dtype=np.int64),
        "attention_mask": np.zeros(shape, dtype=np.int64),
        "special_tokens_mask": np.ones(shape, dtype=np.int64),
    }
    sources = {"input_ids": tokens.input_ids, "special_tokens_mask": tokens.special}
    if tokens.type_ids is not None:
        out["token_type_ids"] = np.full(shape, getattr(tokenizer, "pad_token_type_id", 0), dtype=np.int64)
        sources["token_type_ids"] = tokens.type_ids
    if tokens.word_ids is not None:
        out["word_ids"] = np.full(shape, -1, dtype=np.int64)
        sources["word_ids"] = tokens.word_ids
    for row, (s, e) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        cols = slice(width - (e - s), width) if left else slice(0, e - s)
        out["attention_mask"][row, cols] = 1
        for key, flat in sources.items():
            out[key][row, cols] = flat[s:e]
    return {k: torch.from_numpy(v) for k, v in out.items()}
