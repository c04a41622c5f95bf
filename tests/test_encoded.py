"""The one tokenizer pass (probing.data.encoded): batches padded from it equal what the tokenizer gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAMILIES

from probing import ModelBackend
from probing.data.datamodule import Collator
from probing.data.encoded import encode_dataset
from probing.data.sources import TextDataset
from probing.errors import DatasetError


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("words", [False, True])
def test_batches_padded_from_the_length_pass_equal_the_tokenizers_own(
    tiny_models, sentences, family: str, padding_side: str, words: bool
) -> None:
    tokenizer = ModelBackend().load_model(tiny_models[family], padding_side=padding_side).tokenizer
    rows = [{"text": s, "words": s.split()} for s in sentences]
    dataset = TextDataset(rows, words_field="words" if words else None)
    encoded = encode_dataset(dataset, tokenizer, max_length=9, chunk=3)  # truncation, several chunks
    assert encoded.tokens is not None
    np.testing.assert_array_equal(encoded.lengths, encode_dataset(dataset, tokenizer, 9, keep_bytes=0).lengths)
    assert encode_dataset(dataset, tokenizer, 9, keep_bytes=0).tokens is None
    cached = Collator(tokenizer, 9, words=words, tokens=encoded.tokens)
    plain = Collator(tokenizer, 9, words=words)
    for ids in ([0, 1, 2], [7, 2], [3], list(range(len(rows)))):
        items = [(i, dataset.model_input(i)) for i in ids]
        got, want = cached(items), plain(items)
        assert sorted(got) == sorted(want)
        for key, value in want.items():
            assert got[key].dtype == value.dtype == torch.long, key
            torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=key)


def test_tokens_are_dropped_over_the_budget_and_empty_examples_are_still_refused(tiny_models, sentences) -> None:
    tokenizer = ModelBackend().load_model(tiny_models["bert"]).tokenizer
    dataset = TextDataset([{"text": s} for s in sentences * 4])
    small = encode_dataset(dataset, tokenizer, 64, chunk=4, keep_bytes=200)
    assert small.tokens is None and (small.lengths > 0).all()
    with pytest.raises(DatasetError, match="give no tokens"):
        encode_dataset(
            TextDataset([{"text": "a dog"}, {"text": ""}]), ModelBackend().load_model(tiny_models["gpt2"]).tokenizer, 64
        )
