"""Shared fixtures: tiny random models of each family, saved to folders and loaded back offline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _var in [v for v in os.environ if v.startswith(("SLURM_", "PROBING_RUN_ID"))]:
    del os.environ[_var]  # Lightning would think it runs under SLURM; run ids would be shared

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "bird",
    "sat",
    "ran",
    "flew",
    "on",
    "over",
    "under",
    "mat",
    "tree",
    "house",
    "and",
    "but",
    "very",
    "big",
    "small",
    "red",
    "blue",
    "green",
    "quickly",
    "slowly",
    "today",
    "yesterday",
    "it",
    "is",
    "was",
    "not",
    "happy",
    "sad",
    ".",
    ",",
    "!",
    "?",
    "é",
    "ü",
]
SENTENCES = [
    "the cat sat on the mat",
    "a dog ran",
    "the very big red bird flew quickly over the small green tree and the blue house yesterday",
    "it is",
    "the dog was not happy .",
    "a small cat sat under the tree but it was sad !",
    "blue",
    "the bird flew over the house today , and the dog ran slowly",
]
FAMILIES = ("bert", "distilbert", "gpt2", "llama")
SHARED = Path(__file__).resolve().parents[2] / "shared"


def _tokenizer(family: str) -> object:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if family in ("bert", "distilbert"):
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    elif family == "gpt2":
        specials = ["<|endoftext|>"]
    else:
        specials = ["<unk>", "<s>", "</s>"]
    vocab = {w: i for i, w in enumerate(specials + list(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[1] if family in ("bert", "distilbert") else specials[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if family in ("bert", "distilbert"):
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
        )
    if family == "gpt2":
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<|endoftext|>", bos_token="<|endoftext|>"
        )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _model(family: str, vocab_size: int) -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    common = {"vocab_size": vocab_size}
    if family == "bert":
        cfg = tf.BertConfig(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=48,
            max_position_embeddings=64,
            **common,
        )
        return tf.BertModel(cfg)
    if family == "distilbert":
        cfg = tf.DistilBertConfig(dim=32, n_layers=4, n_heads=2, hidden_dim=48, max_position_embeddings=64, **common)
        return tf.DistilBertModel(cfg)
    if family == "gpt2":
        cfg = tf.GPT2Config(n_embd=32, n_layer=4, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0, **common)
        return tf.GPT2LMHeadModel(cfg)
    cfg = tf.LlamaConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        **common,
    )
    return tf.LlamaForCausalLM(cfg)


def make_tiny_model(family: str, folder: Path) -> Path:
    """Save a tiny random model of ``family`` and its tokenizer into ``folder``."""
    tok = _tokenizer(family)
    model = _model(family, len(tok))  # type: ignore[arg-type]
    model.save_pretrained(folder)
    tok.save_pretrained(folder)  # type: ignore[attr-defined]
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders of tiny random BERT, DistilBERT, GPT-2 and Llama models."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {f: make_tiny_model(f, root / f) for f in FAMILIES}


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    return list(SENTENCES)
