"""Tiny random models of every family `probing` names sites for, saved to folders with their tokenizer.

Each entry builds the bare model class of its family from a tiny config (hidden 32-64, 2-3 blocks);
the tokenizer is a WordLevel one over `conftest.WORDS`. Tests keep the tokenizer object they built: the
reference tokenizes with it, never with what `ModelBackend` loads back, so a tokenizer that transformers
swaps on load (the Qwen2 case, see `probing.backend.load_tokenizer`) shows as a mismatch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ENCODER = "encoder"
DECODER = "decoder"


def _configs() -> dict[str, tuple[str, str, Callable[[int], Any]]]:
    import transformers as tf

    small = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 48}
    dec = {**small, "num_key_value_heads": 2, "max_position_embeddings": 64, "bos_token_id": 1, "eos_token_id": 2}
    enc = {**small, "max_position_embeddings": 64, "pad_token_id": 0}
    return {
        "bert": (ENCODER, "BertModel", lambda v: tf.BertConfig(vocab_size=v, **enc)),
        "distilbert": (
            ENCODER,
            "DistilBertModel",
            lambda v: tf.DistilBertConfig(
                vocab_size=v, dim=32, n_layers=2, n_heads=4, hidden_dim=48, max_position_embeddings=64, pad_token_id=0
            ),
        ),
        "roberta": (
            ENCODER,
            "RobertaModel",
            lambda v: tf.RobertaConfig(vocab_size=v, **{**enc, "max_position_embeddings": 66}),
        ),
        "electra": (ENCODER, "ElectraModel", lambda v: tf.ElectraConfig(vocab_size=v, embedding_size=16, **enc)),
        "modernbert": (
            ENCODER,
            "ModernBertModel",
            lambda v: tf.ModernBertConfig(
                vocab_size=v,
                hidden_size=32,
                num_hidden_layers=3,
                num_attention_heads=4,
                intermediate_size=48,
                max_position_embeddings=64,
                pad_token_id=0,
                bos_token_id=2,
                eos_token_id=3,
                cls_token_id=2,
                sep_token_id=3,
            ),
        ),
        "t5": (
            ENCODER,
            "T5EncoderModel",
            lambda v: tf.T5Config(
                vocab_size=v,
                d_model=32,
                d_kv=8,
                d_ff=48,
                num_layers=2,
                num_heads=4,
                pad_token_id=0,
                eos_token_id=3,
                decoder_start_token_id=0,
            ),
        ),
        "gpt2": (
            DECODER,
            "GPT2Model",
            lambda v: tf.GPT2Config(
                vocab_size=v, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2
            ),
        ),
        "gpt_neox": (
            DECODER,
            "GPTNeoXModel",
            lambda v: tf.GPTNeoXConfig(vocab_size=v, **{k: x for k, x in dec.items() if k != "num_key_value_heads"}),
        ),
        "llama": (DECODER, "LlamaModel", lambda v: tf.LlamaConfig(vocab_size=v, **dec)),
        "mistral": (DECODER, "MistralModel", lambda v: tf.MistralConfig(vocab_size=v, **dec)),
        # the configuration of issue 16: hidden 64, 3 blocks, 4 heads, 2 key-value heads
        "qwen2": (
            DECODER,
            "Qwen2Model",
            lambda v: tf.Qwen2Config(
                vocab_size=v, **{**dec, "hidden_size": 64, "num_hidden_layers": 3, "intermediate_size": 96}
            ),
        ),
        "qwen3": (DECODER, "Qwen3Model", lambda v: tf.Qwen3Config(vocab_size=v, head_dim=8, **dec)),
        "gemma2": (DECODER, "Gemma2Model", lambda v: tf.Gemma2Config(vocab_size=v, head_dim=8, **dec)),
        "gemma3_text": (DECODER, "Gemma3TextModel", lambda v: tf.Gemma3TextConfig(vocab_size=v, head_dim=8, **dec)),
        "phi3": (DECODER, "Phi3Model", lambda v: tf.Phi3Config(vocab_size=v, pad_token_id=0, **dec)),
        "opt": (
            DECODER,
            "OPTModel",
            lambda v: tf.OPTConfig(
                vocab_size=v,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                ffn_dim=48,
                word_embed_proj_dim=32,
                max_position_embeddings=64,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=0,
            ),
        ),
    }


FAMILIES: tuple[str, ...] = tuple(_configs())


def tokenizer(kind: str) -> Any:
    """A WordLevel tokenizer: ``[CLS] text [SEP]`` for encoders, ``<s> text`` for decoders."""
    from conftest import WORDS
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] if kind == ENCODER else ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {w: i for i, w in enumerate(specials + list(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[1] if kind == ENCODER else "<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == ENCODER:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
        )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def build(family: str, folder: Path) -> tuple[Path, Any, torch.nn.Module]:
    """Save a tiny random ``family`` model and its tokenizer into ``folder``; returns (folder, tokenizer, model)."""
    import transformers as tf

    kind, cls_name, make_config = _configs()[family]
    tok = tokenizer(kind)
    torch.manual_seed(0)
    model = getattr(tf, cls_name)(make_config(len(tok))).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, tok, model
