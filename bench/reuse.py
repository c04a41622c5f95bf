"""Reuse timings: a first extraction, an identical rerun, a layer subset and a pooled strategy from a
token-level run, against computing each (all-MiniLM-L6-v2, built-in sentences, CPU, one process).

Each row is the wall time of `DatasetRunner.run()` (the model is loaded once, before; the weights
fingerprint, computed once per runner, is timed apart). "computed" rows run with ``reuse=False``.

    python bench/reuse.py [--n 1000] [--out bench/results/reuse.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--out", default="bench/results/reuse.json")
    a = ap.parse_args()
    from probing import ActivationExtractor, DatasetRunner, MeanStrategy, ModelBackend, TokensStrategy, ZarrStorage
    from probing.data.builtin import generate
    from probing.storage.identity import weights_fingerprint

    t0 = time.perf_counter()
    model = ModelBackend().load_model("sentence-transformers/all-MiniLM-L6-v2")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    weights_fingerprint(model.model)
    fingerprint_s = time.perf_counter() - t0
    texts = [r["text"] for r in generate(a.n)]
    root = tempfile.mkdtemp(prefix="probing-reuse-")
    rows: list[dict[str, Any]] = []

    def timed(name: str, layers: Any, strategy: Any, reuse: bool = True) -> Any:
        ext = ActivationExtractor(model, layers=layers, strategy=strategy)
        t = time.perf_counter()
        res = DatasetRunner(texts, batch_size=32, extractor=ext, storage=ZarrStorage(root), progress=False,
                            announce=False, reuse=reuse).run()
        rows.append({"case": name, "seconds": round(time.perf_counter() - t, 3), "served": res.stats.get("reused")})
        return res

    try:
        timed("first run: mean, all 7 layers", "all", MeanStrategy())
        timed("identical rerun", "all", MeanStrategy())
        timed("layer subset [0, -1] (served)", [0, -1], MeanStrategy())
        timed("layer subset [0, -1] (computed)", [0, -1], MeanStrategy(), reuse=False)
        timed("token-level run, every token, all layers", "all", TokensStrategy(keep_special=True))
        timed("mean of blocks.5 (the first run has it: a layer subset)", [-1], MeanStrategy())
        from probing import MaxStrategy

        timed("max of blocks.5 (served from tokens)", [-1], MaxStrategy())
        timed("max of blocks.5 (computed)", [-1], MaxStrategy(), reuse=False)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out = {"n_examples": a.n, "model_load_s": round(load_s, 3), "weights_fingerprint_s": round(fingerprint_s, 3),
           "rows": rows, "machine": "2-core shared VM, other engineers' tests running"}
    print(f"model load {load_s:.2f} s, weights fingerprint {fingerprint_s:.3f} s, {a.n} examples")
    print("| case | seconds | served as |\n|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['seconds']} | {r['served'] or 'computed'} |")
    Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
