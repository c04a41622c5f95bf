"""Extraction throughput against its limit (the bare forward pass) and the usual hand-written loop.

One process, the same examples for every row: all-MiniLM-L6-v2, 2,048 English sentences of 7-128
tokens (UD English EWT, or built-in sentences joined to that range if ../shared is absent), batch
32, max length 128, 2 threads. Baselines exclude tokenization (batches are pre-tokenized);
`probing` rows include it (it tokenizes per batch while running). Each row: one warm-up pass, then
the median and spread of ``--repeats`` timed passes. Prints real tokens/s, examples/s, the ratio to
the naive loop and to the bare forward with the same batching, and the process's peak RSS so far;
writes the table as JSON.

    python bench/throughput.py [--n 2048] [--repeats 3] [--out bench/results/throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

UD = Path(__file__).resolve().parents[2] / "shared" / "data" / "ud-english-ewt"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def sentences(tokenizer: Any, n: int) -> list[str]:
    """``n`` sentences of 7-128 tokens, in file order."""
    if UD.is_dir():
        from probing.data.loaders import read_conllu

        pool = [s["text"] for f in ("en_ewt-ud-dev.conllu", "en_ewt-ud-test.conllu") for s in read_conllu(UD / f)]
    else:
        from probing.data.builtin import generate

        base = [r["text"] for r in generate(4 * n)]
        pool = [" ".join(base[i : i + 1 + i % 6]) for i in range(0, 4 * n, 2)]
    lengths = [len(x) for x in tokenizer(pool)["input_ids"]]
    picked = [t for t, k in zip(pool, lengths, strict=True) if 7 <= k <= 128]
    if len(picked) < n:
        raise SystemExit(f"only {len(picked)} sentences of 7-128 tokens available")
    return picked[:n]


def batches(tokenizer: Any, texts: list[str], order: list[int], size: int = 32) -> list[dict[str, torch.Tensor]]:
    out = []
    for s in range(0, len(order), size):
        idx = order[s : s + size]
        out.append(dict(tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=128,
                                  return_tensors="pt")))
    return out


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), (max(times) - min(times))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="bench/results/throughput.json")
    ap.add_argument("--skip-cli", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(2)
    from probing import ActivationExtractor, DatasetRunner, MeanStrategy, ModelBackend, ZarrStorage

    t0 = time.perf_counter()
    backend = ModelBackend().load_model(MODEL)
    load_s = time.perf_counter() - t0
    model, tok = backend.model, backend.tokenizer
    texts = sentences(tok, a.n)
    lengths = [len(x) for x in tok(texts, truncation=True, max_length=128)["input_ids"]]
    real_tokens = sum(lengths)
    dataset_order = list(range(len(texts)))
    sorted_order = sorted(dataset_order, key=lambda i: -lengths[i])
    plain, by_length = batches(tok, texts, dataset_order), batches(tok, texts, sorted_order)
    rows: list[dict[str, Any]] = []
    tmp = tempfile.mkdtemp(dir=".")

    def row(name: str, fn: Callable[[], Any], group: str) -> None:
        med, spread = timed(fn, a.repeats)
        rows.append({"run": name, "group": group, "seconds": med, "spread_s": spread,
                     "tokens_per_s": real_tokens / med, "examples_per_s": len(texts) / med,
                     "peak_rss_mib": peak_rss_mib()})
        print(f"  {name}: {real_tokens / med:,.0f} tokens/s", file=sys.stderr)

    def bare(bs: list[dict[str, torch.Tensor]], bf16: bool = False) -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for b in bs:
                model(**b)

    def naive() -> None:
        out: list[list[np.ndarray]] = []
        with torch.inference_mode():
            for b in plain:
                hs = model(**b, output_hidden_states=True).hidden_states
                m = b["attention_mask"].unsqueeze(-1).float()
                out.append([((h * m).sum(1) / m.sum(1)).numpy() for h in hs])
        arrays = [np.concatenate([o[i] for o in out]) for i in range(len(out[0]))]
        np.save(Path(tmp) / "naive.npy", np.stack(arrays))

    run_no = [0]

    def probing_run(layers: Any, bucketing: bool = True, precision: str = "32-true", early_stop: bool = True) -> None:
        run_no[0] += 1
        extractor = ActivationExtractor(backend, layers=layers, strategy=MeanStrategy(), early_stop=early_stop)
        DatasetRunner(texts, 32, extractor, ZarrStorage(f"{tmp}/runs"), run_id=f"r{run_no[0]}", max_length=128,
                      bucketing=bucketing, progress=False, trainer={"precision": precision}).run()

    print("timing...", file=sys.stderr)
    row("bare forward, dataset order", lambda: bare(plain), "dataset")
    row("bare forward, length-sorted", lambda: bare(by_length), "sorted")
    row("bare forward, length-sorted, bf16 autocast", lambda: bare(by_length, True), "sorted")
    row("bare forward, dataset order, bf16 autocast", lambda: bare(plain, True), "dataset")
    row("naive loop: output_hidden_states + masked mean, all layers -> numpy", naive, "dataset")
    row("probing DatasetRunner, all layers, mean, zarr (bucketing)", lambda: probing_run("all"), "sorted")
    row("probing DatasetRunner, all layers, bf16-mixed", lambda: probing_run("all", precision="bf16-mixed"), "sorted")
    row("probing DatasetRunner, all layers, dataset order", lambda: probing_run("all", bucketing=False), "dataset")
    row("probing DatasetRunner, block 1 only, dataset order (early stop)",
        lambda: probing_run([1], bucketing=False), "dataset")
    row("probing DatasetRunner, block 1 only, dataset order, no early stop",
        lambda: probing_run([1], bucketing=False, early_stop=False), "dataset")
    try:
        import nnsight  # noqa: F401

        rows.append({"run": "nnsight", "note": "installed but not wired in this bench"})
    except ImportError:
        rows.append({"run": "nnsight", "note": "not installed beside torch 2.13 (optional); skipped"})
    cli: dict[str, Any] = {}
    if not a.skip_cli:
        data = Path(tmp) / "texts.jsonl"
        data.write_text("\n".join(json.dumps({"text": t}) for t in texts))
        t0 = time.time()
        proc = subprocess.run([sys.executable, "-m", "probing", "data=files", f"data.path={data}", "progress=false",
                               f"output_dir={tmp}/cli", "run_id=cli"], capture_output=True, text=True)
        wall = time.time() - t0
        if proc.returncode == 0:
            import zarr

            meta = dict(zarr.open_group(f"{tmp}/cli/cli", mode="r").attrs["probing"])
            total = meta["stats"]["total"]
            part = next(iter(meta["stats"]["parts"].values()))
            cli = {"wall_s": wall, "extract_s": total["seconds"], "tokens_per_s": total["real_tokens_per_s"],
                   "start_to_first_batch_s": part.get("first_batch_unix", t0) - t0}
            rows.append({"run": "probing CLI (python -m probing), all layers, mean, zarr", "group": "sorted",
                         "seconds": total["seconds"], "tokens_per_s": total["real_tokens_per_s"],
                         "examples_per_s": len(texts) / total["seconds"], "spread_s": 0.0, "peak_rss_mib": None})
        else:
            cli = {"error": proc.stderr[-2000:]}
    shutil.rmtree(tmp, ignore_errors=True)
    naive_tps = next(r["tokens_per_s"] for r in rows if r["run"].startswith("naive"))
    bare_tps = {"dataset": rows[0]["tokens_per_s"], "sorted": rows[1]["tokens_per_s"]}
    print(f"\n{len(texts)} sentences, {real_tokens:,} real tokens, batch 32, max length 128, "
          f"{torch.get_num_threads()} threads; model load {load_s:.1f} s (excluded)")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other work on the machine)")
    print(f"{'run':<70}{'tokens/s':>10}{'ex/s':>8}{'spread':>8}{'x naive':>8}{'x bare*':>8}{'RSS MiB':>9}")
    for r in rows:
        if "tokens_per_s" not in r:
            print(f"{r['run']:<70}  {r.get('note', '')}")
            continue
        r["x_naive"] = r["tokens_per_s"] / naive_tps
        r["x_bare_same_batching"] = r["tokens_per_s"] / bare_tps[r["group"]]
        rss = f"{r['peak_rss_mib']:.0f}" if r.get("peak_rss_mib") else "-"
        print(f"{r['run']:<70}{r['tokens_per_s']:>10,.0f}{r['examples_per_s']:>8.1f}"
              f"{100 * r['spread_s'] / r['seconds']:>7.1f}%{r['x_naive']:>8.2f}{r['x_bare_same_batching']:>8.2f}{rss:>9}")
    print("x bare*: against the bare forward with the same batching (dataset order or length-sorted).")
    if cli:
        print(f"CLI: {json.dumps(cli)}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"rows": rows, "cli": cli, "model_load_s": load_s,
                                       "real_tokens": real_tokens, "n": len(texts)}, indent=2))


if __name__ == "__main__":
    main()
