"""Extraction throughput against its limit (the bare forward pass) and the usual hand-written loop.

One process, the same examples for every row: all-MiniLM-L6-v2, 2,048 English sentences of 7-128
tokens (UD English EWT, or built-in sentences joined to that range if ../shared is absent), batch
32, max length 128, 2 threads. Baselines exclude tokenization (batches are pre-tokenized);
`probing` rows include it (it tokenizes per batch while running). Each row: one warm-up pass, then
the median and spread of ``--repeats`` timed passes (bf16 rows: ``--bf16-repeats``, as bf16 is slow
on CPUs without bf16 instructions). Prints real tokens/s, examples/s, the ratio to the naive loop and
to the bare forward with the same batching, and the process's peak RSS so far; then where the time of
the main `probing` row goes (tokenization, set-up, the predict loop beyond the bare forward, finalize),
and the accuracy cost of bf16-mixed against fp32 (cosine and max abs difference per layer); writes
everything as JSON.

    python bench/throughput.py [--n 2048] [--repeats 3] [--out bench/results/throughput.json]
    python bench/throughput.py --peers 5 --out bench/results/peers.json   # probing vs naive vs nnsight
    python bench/throughput.py --peers 5 --jax --out bench/results/jax.json  # + model.backend=jax rows

``--jax`` (the ``probing[jax]`` extra) adds to the peer table the same `DatasetRunner` job with
``model.backend=jax`` (the flax nnx port, jitted per shape bucket, the compiles counted; the first pass
of the warm-up round compiles) and the bare jitted JAX forward on the same bucketed batches, and checks
the JAX run's stored vectors against the torch run's.

nnsight and TransformerLens (``pip install 'probing[bench]'``) do the naive loop's work (all layers,
masked mean, saved). TransformerLens 4's ``TransformerBridge`` wraps the Hugging Face model itself (raw HF
weights, no LayerNorm folding) and forces eager attention; its row stops after the last block
(``stop_at_layer``), so no MLM head is run, and its values equal eager ``output_hidden_states`` exactly.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
    times: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), (max(times) - min(times))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Phases:
    """Wall time of the phases of `DatasetRunner.run`, recorded by wrapping its steps (bench only).

    Per pass: set-up (validation, Lightning objects), tokenization (each window, inside the predict
    loop), the predict loop, and finish (drain the writer, finalize).
    """

    def __init__(self) -> None:
        self.passes: list[dict[str, float]] = []
        self._on = False

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        import probing.data.batches as batches
        from probing.engine.runner import DatasetRunner
        from probing.engine.writer import RunWriterCallback

        originals = (DatasetRunner.build, batches.encode, RunWriterCallback.finish)
        me = self

        def add(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    if me.passes:
                        me.passes[-1][name] = me.passes[-1].get(name, 0.0) + time.perf_counter() - t0
            return wrapper

        DatasetRunner.build = add("setup", originals[0])  # type: ignore[method-assign]
        batches.encode = add("tokenization", originals[1])  # type: ignore[assignment]
        RunWriterCallback.finish = add("finish", originals[2])  # type: ignore[method-assign]
        self._on = True
        try:
            yield
        finally:
            self._on = False
            DatasetRunner.build, batches.encode, RunWriterCallback.finish = originals  # type: ignore[method-assign]

    def start(self) -> None:
        if self._on:
            self.passes.append({"t0": time.perf_counter()})

    def stop(self) -> None:
        if self._on and self.passes:
            p = self.passes[-1]
            p["total"] = time.perf_counter() - p.pop("t0")

    @staticmethod
    def summary(p: dict[str, float], bare_sorted_s: float) -> dict[str, float]:
        """One pass split into phases; the predict loop beyond the bare forward (timed just before it)
        is what hooks, pooling, device copies, queueing storage writes and Lightning cost."""
        finish = p.get("finish", 0.0)
        loop = p["total"] - p.get("setup", 0.0) - finish
        loop_no_tok = loop - p.get("tokenization", 0.0)
        return {
            "total": p["total"],
            "setup (validation, Lightning objects)": p.get("setup", 0.0),
            "tokenization (per window, in the loop)": p.get("tokenization", 0.0),
            "predict loop without tokenization": loop_no_tok,
            "  of which the bare forward (sorted, same batches)": bare_sorted_s,
            "  of which the rest (hooks, pooling, copies, writes, Lightning)": loop_no_tok - bare_sorted_s,
            "finish (drain the writer, finalize)": finish,
            "rest / bare forward": (loop_no_tok - bare_sorted_s) / bare_sorted_s,
            "loop without tokenization: x bare": bare_sorted_s / loop_no_tok,
        }


def other_rows(row: Callable[..., None], probing_run: Callable[..., None], bf16_repeats: int) -> None:
    """The rows beyond the target: bf16-mixed, dataset order, block 1 with and without early stop."""
    row("probing DatasetRunner, all layers, bf16-mixed", lambda: probing_run("all", precision="bf16-mixed"), "sorted",
        bf16_repeats)
    row("probing DatasetRunner, all layers, dataset order", lambda: probing_run("all", bucketing=False), "dataset")
    row("probing DatasetRunner, block 1 only, dataset order (early stop)",
        lambda: probing_run([1], bucketing=False), "dataset")
    row("probing DatasetRunner, block 1 only, dataset order, no early stop",
        lambda: probing_run([1], bucketing=False, early_stop=False), "dataset")


def paired(bare_fn: Callable[[], Any], fn: Callable[[], Any], pairs: int) -> list[tuple[float, float, float, float]]:
    """``pairs`` times: the bare forward, then ``fn``, back to back (after one warm-up of each).

    Returns per pair: wall seconds of each, and CPU seconds of each (all threads of the process:
    this counts the writer's work too, and not the time other tenants of a shared VM take).
    """
    bare_fn()
    fn()
    out = []
    for _ in range(pairs):
        t0, c0 = time.perf_counter(), time.process_time()
        bare_fn()
        t1, c1 = time.perf_counter(), time.process_time()
        fn()
        out.append((t1 - t0, time.perf_counter() - t1, c1 - c0, time.process_time() - c1))
    return out


def nnsight_runner(model: Any, plain: list[dict[str, torch.Tensor]], out: Path) -> Callable[[], None] | None:
    """The naive loop's work through nnsight (all layers, masked mean, saved to disk), or None if absent.

    nnsight 0.8: modules are reached through the wrapper (``nn_model.encoder.layer[i].output``); saved
    values go into a list made before the ``with`` block (PITFALLS.md)."""
    try:
        import warnings

        from nnsight import NNsight
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "submodule named 'output'": BERT layers have one; .output is the output
        nn_model = NNsight(model)
    from probing.layers import find_block_list

    n_blocks = len(find_block_list(model)[1])

    def run() -> None:
        pooled: list[list[np.ndarray]] = []
        with torch.inference_mode():
            for b in plain:
                saved: list[Any] = []
                with nn_model.trace(**b):
                    saved.append(nn_model.embeddings.output.save())
                    for i in range(n_blocks):
                        saved.append(nn_model.encoder.layer[i].output.save())
                m = b["attention_mask"].unsqueeze(-1).float()
                pooled.append([((h * m).sum(1) / m.sum(1)).numpy() for h in saved])
        np.save(out, np.stack([np.concatenate([o[i] for o in pooled]) for i in range(len(pooled[0]))]))

    return run


def transformer_lens_runner(
    path: str, tokenizer: Any, plain: list[dict[str, torch.Tensor]], out: Path
) -> Callable[[], None] | None:
    """The naive loop's work through TransformerLens 4 (``TransformerBridge.run_with_cache``: the embeddings
    and every block's output, masked mean, saved to disk), or None if it is not installed."""
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:
        return None
    bridge = TransformerBridge.boot_transformers(path, tokenizer=tokenizer, device="cpu")
    n_blocks = len(bridge.blocks)
    names = ["embed_ln.hook_out"] + [f"blocks.{i}.hook_out" for i in range(n_blocks)]

    def run() -> None:
        pooled: list[list[np.ndarray]] = []
        with torch.inference_mode():
            for b in plain:
                _, cache = bridge.run_with_cache(
                    b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b.get("token_type_ids"),
                    names_filter=names, return_type=None, stop_at_layer=n_blocks,
                )  # fmt: skip
                m = b["attention_mask"].unsqueeze(-1).float()
                pooled.append([((cache[n] * m).sum(1) / m.sum(1)).numpy() for n in names])
        np.save(out, np.stack([np.concatenate([o[i] for o in pooled]) for i in range(len(pooled[0]))]))

    return run


JAX_ROW = "probing DatasetRunner, model.backend=jax (all layers, mean, zarr)"


def jax_bare(jax_backend: Any, texts: list[str], tokenizer: Any) -> Callable[[], None]:
    """The jitted JAX forward alone (every block's output kept on the device, no pooling, nothing saved) on
    the batches probing makes: length-sorted, batch 32, padded to the shape buckets `JaxForward` uses."""
    from probing.jax.forward import _Compiled, batch_bucket, length_bucket

    lengths = [len(x) for x in tokenizer(texts, truncation=True, max_length=128)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    padded = []
    for s in range(0, len(order), 32):
        b = tokenizer([texts[i] for i in order[s : s + 32]], padding=True, truncation=True, max_length=128,
                      return_tensors="np")
        rows, length = b["input_ids"].shape
        shape = (batch_bucket(rows), length_bucket(length))
        ids, mask = np.zeros(shape, dtype=np.int32), np.zeros(shape, dtype=np.int32)
        ids[:rows, :length], mask[:rows, :length] = b["input_ids"], b["attention_mask"]
        positions = np.broadcast_to(np.arange(shape[1], dtype=np.int32), shape).copy()
        padded.append((ids, mask, positions))
    from probing.layers import find_block_list

    n_blocks = len(find_block_list(jax_backend.model)[1])
    forward = _Compiled(jax_backend.jax_model, n_blocks, frozenset(f"resid_post.{i}" for i in range(n_blocks)))

    def run() -> None:
        for ids, mask, positions in padded:
            for v in forward(ids, mask, positions, None).values():
                v.block_until_ready()

    return run


def peer_rounds(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Each runner once per round, one after the other (after one warm-up of each): seconds per round."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        names = list(fns)
        names = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
        for k in names:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


def compare_runs(fp32_path: str, other_path: str) -> dict[str, dict[str, float]]:
    """Per layer: mean and min cosine between the two runs' vectors, max abs difference, max abs of fp32."""
    from probing import open_run

    ref, other = open_run(fp32_path), open_run(other_path)
    out = {}
    for key in ref.layers:
        x, y = ref.activations(key).astype(np.float64), other.activations(key).astype(np.float64)
        cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
        out[key] = {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
                    "max_abs_diff": float(np.abs(x - y).max()), "max_abs_fp32": float(np.abs(x).max())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bf16-repeats", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=5, help="interleaved (bare, probing) pairs of the target row")
    ap.add_argument("--target-only", action="store_true", help="only the sorted bare forward and the paired row")
    ap.add_argument("--out", default="bench/results/throughput.json")
    ap.add_argument("--skip-cli", action="store_true")
    ap.add_argument("--peers", type=int, default=0, metavar="ROUNDS",
                    help="only the peer table: bare forward, probing, the naive loop and nnsight, ROUNDS rounds")
    ap.add_argument("--jax", action="store_true", help="with --peers: add the model.backend=jax rows")
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

    def row(name: str, fn: Callable[[], Any], group: str, repeats: int | None = None) -> None:
        med, spread = timed(fn, a.repeats if repeats is None else repeats)
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
    last_path: dict[str, str] = {}
    phases = Phases()

    def probing_run(layers: Any, bucketing: bool = True, precision: str = "32-true", early_stop: bool = True,
                    on: Any = None) -> None:
        run_no[0] += 1
        extractor = ActivationExtractor(on or backend, layers=layers, strategy=MeanStrategy(), early_stop=early_stop)
        phases.start()
        result = DatasetRunner(texts, 32, extractor, ZarrStorage(f"{tmp}/runs"), run_id=f"r{run_no[0]}",
                               max_length=128, bucketing=bucketing, progress=False,
                               trainer={"precision": precision}).run()
        phases.stop()
        last_path["jax" if on is not None else precision] = result.path

    print("timing...", file=sys.stderr)
    if a.peers:
        a.tmp_dir = tmp
        jax_fns: dict[str, Callable[[], Any]] = {}
        if a.jax:
            jax_backend = ModelBackend(framework="jax").load_model(MODEL)
            jax_fns = {JAX_ROW: lambda: probing_run("all", on=jax_backend),
                       "bare JAX forward (jitted, probing's bucketed batches)": jax_bare(jax_backend, texts, tok)}
        peers(a, texts, real_tokens, {"bare forward (dataset order)": lambda: bare(plain),
                                      "bare forward (length-sorted, probing's batching)": lambda: bare(by_length)},
              lambda: probing_run("all"), naive, nnsight_runner(model, plain, Path(tmp) / "nnsight.npy"),
              transformer_lens_runner(backend.extra["resolved_path"], tok, plain, Path(tmp) / "tl.npy"),
              jax_fns, last_path)
        shutil.rmtree(tmp, ignore_errors=True)
        return
    row("bare forward, dataset order", lambda: bare(plain), "dataset", 1 if a.target_only else None)
    row("bare forward, length-sorted", lambda: bare(by_length), "sorted")
    if not a.target_only:
        row("bare forward, length-sorted, bf16 autocast", lambda: bare(by_length, True), "sorted", a.bf16_repeats)
        row("bare forward, dataset order, bf16 autocast", lambda: bare(plain, True), "dataset", a.bf16_repeats)
    row("naive loop: output_hidden_states + masked mean, all layers -> numpy", naive, "dataset",
        1 if a.target_only else None)
    # the target row: interleaved with the sorted bare forward, pair by pair, so that the ratio is not
    # skewed by the machine's speed drifting between rows (other tenants of a shared VM)
    with phases.recording():
        pairs = paired(lambda: bare(by_length), lambda: probing_run("all"), a.pairs)
    ratios = [p[0] / p[1] for p in pairs]
    cpu_ratios = [p[2] / p[3] for p in pairs]
    mid = sorted(range(len(pairs)), key=lambda i: ratios[i])[len(pairs) // 2]
    times = [p[1] for p in pairs]
    med = statistics.median(times)
    rows.append({"run": "probing DatasetRunner, all layers, mean, zarr (bucketing)", "group": "sorted",
                 "seconds": med, "spread_s": max(times) - min(times),
                 "tokens_per_s": real_tokens / med, "examples_per_s": len(texts) / med, "peak_rss_mib": peak_rss_mib(),
                 "paired_x_bare_median": ratios[mid], "paired_x_bare_all": ratios,
                 "paired_cpu_x_bare_median": statistics.median(cpu_ratios), "paired_cpu_x_bare_all": cpu_ratios})
    print(f"  probing, all layers, paired with the sorted bare forward: x bare {ratios[mid]:.3f} by wall time "
          f"(pairs: {', '.join(f'{r:.3f}' for r in ratios)}), {statistics.median(cpu_ratios):.3f} by CPU time "
          f"(pairs: {', '.join(f'{r:.3f}' for r in cpu_ratios)})", file=sys.stderr)
    breakdown = phases.summary(phases.passes[1 + mid], pairs[mid][0])
    # each phase's median over all timed pairs: steadier than the phases of one pair on a noisy VM
    per_pair = [phases.summary(p, bare_s) for p, (bare_s, *_) in zip(phases.passes[1:], pairs, strict=True)]
    breakdown_median = {k: statistics.median(s[k] for s in per_pair) for k in per_pair[0]}
    bf16_cost: dict[str, dict[str, float]] = {}
    if a.target_only:
        a.skip_cli = True
    else:
        other_rows(row, probing_run, a.bf16_repeats)
        bf16_cost = compare_runs(last_path["32-true"], last_path["bf16-mixed"])
    nn_run = nnsight_runner(model, plain, Path(tmp) / "nnsight.npy")
    if nn_run is None:
        rows.append({"run": "nnsight", "note": "not installed (pip install 'probing[bench]'); skipped"})
    else:
        row("nnsight 0.8 trace: all layers saved + masked mean -> numpy", nn_run, "dataset")
    tl_run = transformer_lens_runner(backend.extra["resolved_path"], tok, plain, Path(tmp) / "tl.npy")
    if tl_run is None:
        rows.append({"run": "TransformerLens", "note": "not installed (pip install 'probing[bench]'); skipped"})
    else:
        row("TransformerLens 4 bridge: run_with_cache all layers + masked mean -> numpy", tl_run, "dataset")
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
        r["x_bare_same_batching"] = r.get("paired_x_bare_median", r["tokens_per_s"] / bare_tps[r["group"]])
        rss = f"{r['peak_rss_mib']:.0f}" if r.get("peak_rss_mib") else "-"
        spread = 100 * r["spread_s"] / r["seconds"]
        print(f"{r['run']:<70}{r['tokens_per_s']:>10,.0f}{r['examples_per_s']:>8.1f}"
              f"{spread:>7.1f}%{r['x_naive']:>8.2f}{r['x_bare_same_batching']:>8.2f}{rss:>9}")
    print("x bare*: against the bare forward with the same batching (dataset order or length-sorted); for the\n"
          "  main probing row, the median ratio over passes interleaved with the sorted bare forward.")
    print("\nwhere the time of 'probing DatasetRunner, all layers' goes (the median pair; bare = the sorted bare "
          "forward timed just before):")
    print(f"  {'':<58}{'median pair':>12}{'per-phase median':>18}")
    for k, v in breakdown.items():
        print(f"  {k:<58}{v:>12.3f}{breakdown_median[k]:>18.3f}")
    print("\nbf16-mixed against fp32, same examples (mean of the stored vectors):")
    print(f"  {'layer':<14}{'mean cosine':>14}{'min cosine':>14}{'max abs diff':>14}{'max abs fp32':>14}")
    for k, v in bf16_cost.items():
        print(f"  {k:<14}{v['mean_cosine']:>14.6f}{v['min_cosine']:>14.6f}{v['max_abs_diff']:>14.4f}"
              f"{v['max_abs_fp32']:>14.4f}")
    shutil.rmtree(tmp, ignore_errors=True)
    if cli:
        print(f"CLI: {json.dumps(cli)}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"rows": rows, "cli": cli, "model_load_s": load_s, "breakdown_s": breakdown,
                                       "breakdown_median_over_pairs_s": breakdown_median,
                                       "bf16_vs_fp32": bf16_cost, "real_tokens": real_tokens, "n": len(texts),
                                       "load_average": load}, indent=2))


def peers(a: Any, texts: list[str], real_tokens: int, bare_fns: dict[str, Callable[[], Any]],
          probing_fn: Callable[[], Any], naive_fn: Callable[[], Any], nnsight_fn: Callable[[], Any] | None,
          tl_fn: Callable[[], Any] | None = None, jax_fns: dict[str, Callable[[], Any]] | None = None,
          last_path: dict[str, str] | None = None) -> None:
    """The peer table: every runner once per round, ratios per round, medians over rounds."""
    fns: dict[str, Callable[[], Any]] = {**bare_fns, "probing DatasetRunner (all layers, mean, zarr)": probing_fn,
                                         "naive loop (output_hidden_states, mean, npy)": naive_fn, **(jax_fns or {})}
    if nnsight_fn is not None:
        fns["nnsight 0.8 (trace, all layers saved, mean, npy)"] = nnsight_fn
    if tl_fn is not None:
        fns["TransformerLens 4 (bridge, run_with_cache, mean, npy)"] = tl_fn
    times = peer_rounds(fns, a.peers)
    probing_key = "probing DatasetRunner (all layers, mean, zarr)"
    load = os.getloadavg()
    print(f"\n{len(texts)} sentences, {real_tokens:,} real tokens, batch 32, max length 128, {torch.get_num_threads()} "
          f"threads, {a.peers} rounds; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other jobs running)")
    print(f"{'run':<52}{'median s':>10}{'tokens/s':>10}{'probing x (median of rounds)':>30}")
    result: dict[str, Any] = {"rounds": a.peers, "n": len(texts), "real_tokens": real_tokens, "load_average": load,
                              "rows": {}}
    for k, ts in times.items():
        med = statistics.median(ts)
        per_round = [t / p for t, p in zip(ts, times[probing_key], strict=True)]  # > 1: probing is faster
        ratio = statistics.median(per_round)
        print(f"{k:<52}{med:>10.2f}{real_tokens / med:>10,.0f}{ratio:>30.3f}")
        result["rows"][k] = {"seconds": ts, "median_s": med, "tokens_per_s": real_tokens / med,
                             "probing_speedup_per_round": per_round, "probing_speedup_median": ratio}
    saved = {name: Path(a.tmp_dir) / f"{name}.npy" for name in ("naive", "nnsight", "tl")}
    if saved["naive"].exists():
        ref = np.load(saved["naive"])
        for name in ("nnsight", "tl"):
            if saved[name].exists():
                diff = float(np.abs(np.load(saved[name]) - ref).max())
                result[f"{name}_max_abs_diff_vs_naive"] = diff
                print(f"{name}: saved vectors differ from the naive loop's by at most {diff:.2e}")
    if jax_fns and last_path and "jax" in last_path:
        import zarr

        from probing import open_run

        torch_run, jax_run = open_run(last_path["32-true"]), open_run(last_path["jax"])
        diff = max(float(np.abs(torch_run.activations(k) - jax_run.activations(k)).max()) for k in torch_run.layers)
        stats = dict(zarr.open_group(last_path["jax"], mode="r").attrs["probing"])["stats"]
        compiles = stats.get("jax_compiles")
        jax_ratio = result["rows"][JAX_ROW]["probing_speedup_median"]
        result.update({"jax_max_abs_diff_vs_torch": diff, "jax_compiles_last_run": compiles,
                       "jax_x_torch_median": 1 / jax_ratio})
        print(f"JAX run: stored vectors differ from the torch run's by at most {diff:.2e}; "
              f"{compiles} compile(s) in its last pass (XLA caches them within the process: the warm-up pass compiled "
              f"each shape bucket once); "
              f"JAX speed x torch (median of rounds): {1 / jax_ratio:.3f}")
    print("probing x: this runner's time / probing's time in the same round, median over rounds (> 1: probing is\n"
          "  faster). Against the length-sorted bare forward (the same batching as probing) it is the fraction\n"
          "  of the bare forward's speed that probing keeps; peers run in dataset order, as users write them.")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
