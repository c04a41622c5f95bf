"""Tokenize blocks of examples into flat arrays, and pad batches from them.

Every example is tokenized once. A pooled run tokenizes each bucketing window as it is reached (so the
first batch comes after one window, not after the whole dataset); a token-level run needs each
example's row count before any row is placed, so it tokenizes its share first (`encode_range`) and
keeps the tokens for the batches while they fit `KEEP_TOKENS_BYTES` (beyond that it keeps only the
counts and tokenizes each window again). Tokens are packed into flat arrays (5-10 bytes per token),
and a batch is padded from them exactly as the tokenizer would pad it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from probing.errors import DatasetError

#: most bytes of tokens kept from a token-level share's first pass; bigger shares keep only their counts
KEEP_TOKENS_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Tokens:
    """The tokens of a block of examples, packed: example ``i`` is ``[offsets[i], offsets[i + 1])``.

    ``type_ids`` is None when the tokenizer gives no token type ids, ``word_ids`` (-1 for special
    tokens) when the input is not pre-split into words.
    """

    offsets: np.ndarray
    input_ids: np.ndarray
    special: np.ndarray
    type_ids: np.ndarray | None
    word_ids: np.ndarray | None
    #: examples cut at max_length, and the most tokens one of them had before the cut
    truncated: int = 0
    longest: int = 0

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def nbytes(self) -> int:
        arrays = (self.offsets, self.input_ids, self.special, self.type_ids, self.word_ids)
        return sum(a.nbytes for a in arrays if a is not None)

    def __len__(self) -> int:
        return len(self.offsets) - 1


def _flat(rows: Iterable[Iterable[Any]], dtype: Any, total: int) -> np.ndarray:
    return np.fromiter(itertools.chain.from_iterable(rows), dtype=dtype, count=total)


def encode(inputs: Sequence[Any], tokenizer: Any, max_length: int, *, words: bool = False, first_id: int = 0) -> Tokens:
    """Tokenize one block of inputs (texts, or word lists when ``words``) into `Tokens`.

    Raises `DatasetError` naming the example (``first_id`` + position) when the tokenizer fails on
    one, or when an example gives no token at all.
    """
    with_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    try:
        enc = tokenizer(
            list(inputs),
            truncation=True,
            max_length=max_length,
            is_split_into_words=words,
            return_special_tokens_mask=True,
            return_token_type_ids=with_types,
            return_attention_mask=False,
        )
    except Exception:  # noqa: BLE001 - the tokenizer raises many kinds; find the example
        for i, item in enumerate(inputs):
            try:
                tokenizer([item], is_split_into_words=words, truncation=True, max_length=max_length)
            except Exception as one:  # noqa: BLE001
                from probing.data.diagnose import invalid_text

                bad = invalid_text([item], first_id + i)
                why = (f"{bad}, which is not valid Unicode (a lone surrogate)" if bad
                       else f"example {first_id + i} cannot be tokenized ({type(one).__name__}: {one})")
                raise DatasetError(f"{why[0].upper()}{why[1:]}; fix or remove it.") from one
        raise
    ids = enc["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    empty = np.flatnonzero(lengths == 0)
    if len(empty):
        raise DatasetError(
            f"{len(empty)} example(s) give no tokens at all (first ids: {(first_id + empty[:5]).tolist()}), e.g. "
            "empty texts with a tokenizer that adds no special tokens. Remove them from the dataset."
        )
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    truncated, longest = _truncation(enc, lengths, max_length, tokenizer)
    word_ids = None
    if words:
        rows = ([-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(ids)))
        word_ids = _flat(rows, np.int32, total)
    return Tokens(
        offsets=offsets,
        input_ids=_flat(ids, np.int32, total),
        special=_flat(enc["special_tokens_mask"], np.int8, total),
        type_ids=_flat(enc["token_type_ids"], np.int8, total) if with_types else None,
        word_ids=word_ids,
        truncated=truncated,
        longest=longest,
    )


def _truncation(enc: Any, lengths: np.ndarray, max_length: int, tokenizer: Any) -> tuple[int, int]:
    """How many examples truncation cut, and the longest of them before the cut (fast tokenizers keep
    what they cut; for others, examples that reach max_length are counted, at max_length)."""
    encodings = getattr(enc, "encodings", None)
    if not encodings:
        at_limit = int((lengths >= max_length).sum())
        return at_limit, max_length if at_limit else 0
    specials = int(tokenizer.num_special_tokens_to_add()) if hasattr(tokenizer, "num_special_tokens_to_add") else 0
    cut = [(len(e.ids), e.overflowing) for e in encodings if e.overflowing]
    longest = max((n + sum(len(o.ids) - specials for o in over) for n, over in cut), default=0)
    return len(cut), int(longest)


def concat(parts: Sequence[Tokens]) -> Tokens:
    """Blocks of `Tokens` one after the other."""
    if len(parts) == 1:
        return parts[0]
    shifts = np.cumsum([0, *[int(p.offsets[-1]) for p in parts[:-1]]])
    offsets = np.concatenate([[0], *[p.offsets[1:] + s for p, s in zip(parts, shifts, strict=True)]])

    def cat(key: str) -> np.ndarray | None:
        arrays = [getattr(p, key) for p in parts]
        return None if any(a is None for a in arrays) else np.concatenate(arrays)

    ids, special = cat("input_ids"), cat("special")
    assert ids is not None and special is not None
    return Tokens(offsets.astype(np.int64), ids, special, cat("type_ids"), cat("word_ids"),
                  truncated=sum(p.truncated for p in parts), longest=max(p.longest for p in parts))


@dataclass(frozen=True)
class EncodedRange:
    """A token-level share's first pass: per example its token count and row count, and the tokens
    themselves when they fit the budget (else None)."""

    lengths: np.ndarray
    row_counts: np.ndarray
    tokens: Tokens | None
    truncated: int = 0
    longest: int = 0


def encode_range(
    inputs: Callable[[int, int], Sequence[Any]],
    start: int,
    stop: int,
    tokenizer: Any,
    max_length: int,
    count_rows: Callable[[Tokens], np.ndarray],
    *,
    words: bool = False,
    chunk: int = 2048,
    keep_bytes: int = KEEP_TOKENS_BYTES,
) -> EncodedRange:
    """Tokenize examples ``start..stop`` in chunks: token counts, row counts (``count_rows``) and the tokens."""
    lengths: list[np.ndarray] = []
    rows: list[np.ndarray] = []
    parts: list[Tokens] = []
    truncated = longest = 0
    kept = 0
    keep = keep_bytes > 0
    for a in range(start, stop, chunk):
        b = min(a + chunk, stop)
        tokens = encode(inputs(a, b), tokenizer, max_length, words=words, first_id=a)
        truncated, longest = truncated + tokens.truncated, max(longest, tokens.longest)
        lengths.append(tokens.lengths)
        rows.append(count_rows(tokens))
        if keep:
            kept += tokens.nbytes
            if kept > keep_bytes:
                keep, parts = False, []  # over budget: counts only from here on
            else:
                parts.append(tokens)
    empty = np.zeros(0, dtype=np.int64)
    return EncodedRange(
        lengths=np.concatenate(lengths) if lengths else empty,
        row_counts=np.concatenate(rows) if rows else empty,
        tokens=(concat(parts) if parts else None) if keep and stop > start else None,
        truncated=truncated,
        longest=longest,
    )


def pad_batch(tokens: Tokens, index: Sequence[int] | np.ndarray, tokenizer: Any) -> dict[str, torch.Tensor]:
    """The batch of examples ``index`` (positions in ``tokens``) padded to the longest, as the tokenizer pads.

    Returns ``input_ids``, ``attention_mask``, ``special_tokens_mask`` (padding counts as special,
    as in transformers), ``token_type_ids`` when the tokenizer has them, and ``word_ids`` for pre-split
    input.
    """
    index = np.asarray(index, dtype=np.int64)
    starts = tokens.offsets[index]
    ends = tokens.offsets[index + 1]
    width = int((ends - starts).max()) if len(index) else 0
    left = getattr(tokenizer, "padding_side", "right") == "left"
    shape = (len(index), width)
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
