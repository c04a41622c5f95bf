"""Tokenizing blocks (probing.data.encoded): batches padded from flat tokens equal what the tokenizer gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAMILIES

from probing import ModelBackend
from probing.data.encoded import encode, encode_range, pad_batch
from probing.data.sources import TextDataset
from probing.errors import DatasetError
from probing.strategies import TokensStrategy


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("words", [False, True])
def test_batches_padded_from_encoded_tokens_equal_the_tokenizers_own(
    tiny_models, sentences, family: str, padding_side: str, words: bool
) -> None:
    tokenizer = ModelBackend().load_model(tiny_models[family], padding_side=padding_side).tokenizer
    rows = [{"text": s, "words": s.split()} for s in sentences]
    dataset = TextDataset(rows, words_field="words" if words else None)
    tokens = encode(dataset.inputs(), tokenizer, max_length=9, words=words)  # 9: some examples are truncated
    for ids in ([0, 1, 2], [7, 2], [3], list(range(len(rows)))):
        got = pad_batch(tokens, ids, tokenizer)
        enc = tokenizer([dataset.inputs()[i] for i in ids], padding=True, truncation=True, max_length=9,
                        return_tensors="pt", return_special_tokens_mask=True, is_split_into_words=words)
        want = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids",
                                                        "special_tokens_mask")}
        if words:
            rows = [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(ids))]
            want["word_ids"] = torch.tensor(rows)
        assert sorted(got) == sorted(want)
        for key, value in want.items():
            assert got[key].dtype == torch.long, key
            torch.testing.assert_close(got[key], value.long(), rtol=0, atol=0, msg=key)


def test_a_first_pass_keeps_tokens_within_its_budget_and_counts_rows(tiny_models, sentences) -> None:
    tokenizer = ModelBackend().load_model(tiny_models["bert"]).tokenizer
    dataset = TextDataset([{"text": s} for s in sentences * 4])
    strategy = TokensStrategy()  # rows: the tokens between [CLS] and [SEP]
    full = encode_range(dataset.inputs, 0, len(dataset), tokenizer, 64, strategy.count_rows, chunk=5)
    assert full.tokens is not None and len(full.tokens) == len(dataset)
    words = np.array([len(s.split()) for s in sentences * 4])  # the word-level tokenizer: one token per word
    np.testing.assert_array_equal(full.lengths, words + 2)
    np.testing.assert_array_equal(full.row_counts, words)
    small = encode_range(dataset.inputs, 0, len(dataset), tokenizer, 64, strategy.count_rows, chunk=4, keep_bytes=200)
    assert small.tokens is None
    np.testing.assert_array_equal(small.lengths, full.lengths)
    np.testing.assert_array_equal(small.row_counts, full.row_counts)


def test_an_example_with_no_tokens_is_named(tiny_models) -> None:
    gpt2 = ModelBackend().load_model(tiny_models["gpt2"]).tokenizer  # adds no special tokens: "" has none
    with pytest.raises(DatasetError, match=r"no tokens.*\[11\]"):
        encode(["a dog", ""], gpt2, 64, first_id=10)
