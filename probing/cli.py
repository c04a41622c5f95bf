"""Command line: ``python -m probing [overrides]`` runs an extraction job from the Hydra config (and
probes it when the data has labels); ``python -m probing info <run>`` describes a stored run;
``python -m probing probe <run> [--labels ...]`` probes a stored run.

This module only turns a config into objects and calls `DatasetRunner`; the work happens there.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("probing")


def build_dataset(data_cfg: Any) -> Any:
    """The dataset a config names (``data.source``: builtin, files, conllu, hf).

    Files and treebanks come as memory-mapped ``datasets`` tables; with ``data.streaming=true`` as a
    `TextStream`, read front to back without being prepared first.
    """
    from probing.data import loaders
    from probing.errors import ConfigError

    source = data_cfg.source
    streaming = bool(data_cfg.get("streaming", False))
    if source == "builtin":
        from probing.data.builtin import generate

        data: Any = generate(int(data_cfg.n_examples), int(data_cfg.seed))
        streaming = False
    elif source == "files":
        data = loaders.load_files(data_cfg.path, data_cfg.get("format"), streaming=streaming)
    elif source == "conllu":
        data = loaders.load_conllu(data_cfg.path, streaming=streaming)
    elif source == "hf":
        if not data_cfg.get("name"):
            raise ConfigError("data=hf needs data.name (a Hugging Face dataset id).")
        data = loaders.load_hf(data_cfg.name, data_cfg.get("config"), data_cfg.get("split", "train"),
                               streaming=streaming)
    else:
        raise ConfigError(f"Unknown data.source {source!r}; expected one of ['builtin', 'files', 'conllu', 'hf'].")
    split_map = data_cfg.get("split_map")
    if split_map:
        data = loaders.rename_values(data, "split", dict(split_map))
    fields = data_cfg.get("fields")
    inputs = [data_cfg.get("words_field") or data_cfg.text_field]
    data = loaders.select_fields(data, list(fields) if fields else None, inputs)
    limit = data_cfg.get("limit")
    if streaming:
        from probing.data.sources import TextStream

        if limit is not None:
            data = data.take(int(limit))
        paths = data_cfg.get("path")
        described = [source, data_cfg.get("name"), data_cfg.get("config"), data_cfg.get("split"), limit,
                     dict(split_map or {}), list(fields or [])]
        fingerprint = None
        if paths:
            fingerprint = loaders.files_fingerprint([paths] if isinstance(paths, str) else list(paths), *described)
        return TextStream(data, data_cfg.text_field, data_cfg.get("words_field"),
                          fields=list(fields) if fields else None, fingerprint=fingerprint)
    if limit is not None:
        data = data.select(range(min(int(limit), len(data)))) if hasattr(data, "select") else data[: int(limit)]
    return data


def _output_location(cfg: Any) -> tuple[str, str | None, list[str]]:
    """Where the run goes: ``output_dir``/``run_id``; in a Hydra multirun, ``<sweep dir>/job<N>``."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return str(cfg.output_dir), cfg.run_id, []
    overrides = list(hc.overrides.task)
    if hc.mode == RunMode.MULTIRUN:
        name = f"job{hc.job.num}" if cfg.run_id is None else f"{cfg.run_id}-{hc.job.num}"
        return str(hc.sweep.dir), name, overrides
    return str(cfg.output_dir), cfg.run_id, overrides


def run_job(cfg: Any) -> Any:
    """Run the extraction job described by a composed config; returns the `RunResult`."""
    from omegaconf import OmegaConf

    from probing.backend import ModelBackend
    from probing.engine.runner import DatasetRunner
    from probing.extractor import ActivationExtractor
    from probing.storage.registry import get_storage
    from probing.strategies import get_strategy

    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    output_dir, run_id, overrides = _output_location(cfg)
    dataset = build_dataset(cfg.data)
    storage_opts = {k: v for k, v in config["storage"].items() if k != "backend"}
    storage = get_storage(cfg.storage.backend, output_dir, **storage_opts)
    strategy = get_strategy(cfg.strategy.name, **{k: v for k, v in config["strategy"].items() if k != "name"})
    model = ModelBackend().load_model(
        cfg.model.name_or_path,
        device="cpu",
        dtype=cfg.model.dtype,
        revision=cfg.model.revision,
        padding_side=cfg.model.padding_side,
        gguf_file=cfg.model.gguf_file,
    )
    layers = config["layers"]
    extractor = ActivationExtractor(model, layers=layers, strategy=strategy, early_stop=bool(cfg.early_stop))
    d = cfg.data
    runner = DatasetRunner(
        dataset,
        batch_size=int(d.batch_size),
        extractor=extractor,
        storage=storage,
        run_id=run_id,
        text_field=d.text_field,
        words_field=d.get("words_field"),
        max_length=d.max_length,
        bucketing=bool(d.bucketing),
        max_tokens_per_batch=d.max_tokens_per_batch,
        num_workers=int(d.num_workers),
        resume=bool(cfg.resume),
        trainer=dict(config["trainer"]),
        progress=bool(cfg.progress),
        config=config,
        overrides=overrides,
    )
    result = runner.run()
    if result.global_rank == 0:
        s = result.stats
        print(
            f"probing: stored {result.n_examples} examples x {len(result.layers)} layers "
            f"({cfg.strategy.name}) of {cfg.model.name_or_path} in {s.get('seconds', 0):.1f} s "
            f"({s.get('real_tokens_per_s', 0):,.0f} tokens/s, padding {100 * s.get('padding_fraction', 0):.1f}%)\n"
            f"run: {result.path}"
        )
    if result.global_rank == 0 and cfg.get("probe_after_extract", "auto") not in (False, "false", "off"):
        _probe_after(result.path, config.get("probe", {}), explicit=cfg.get("probe_after_extract") is True)
    return result


def _probe_after(run_path: str, probe_cfg: dict[str, Any], explicit: bool) -> None:
    """Probe the run just written and print the per-layer table (skipped quietly if it has no labels)."""
    from probing.errors import ProbingError
    from probing.probes.report import format_table
    from probing.probes.run import probe_run

    try:
        report = probe_run(run_path, **probe_cfg)
    except ProbingError as exc:  # no labels, too few rows...: the extraction itself succeeded
        if explicit:
            raise
        print(f"probing: no probes after extraction ({exc}); `python -m probing probe {run_path}` probes it later")
        return
    print(format_table(report))
    files = getattr(report, "files", None) or {}
    if files:
        print("probes: " + ", ".join(str(v) for v in files.values()))


def _hydra_entry() -> None:
    import hydra
    from omegaconf import DictConfig

    @hydra.main(version_base="1.3", config_path="pkg://probing.conf", config_name="config")
    def _main(cfg: DictConfig) -> None:
        from probing.engine.preemption import EXIT_PREEMPTED, Preempted
        from probing.errors import ProbingError

        try:
            run_job(cfg)
        except ProbingError as exc:
            print(f"probing: error: {exc}", file=sys.stderr)
            sys.exit(2)
        except Preempted as exc:
            print(f"probing: {exc}", file=sys.stderr)
            sys.exit(EXIT_PREEMPTED)

    _main()


def check_overrides(args: list[str]) -> str | None:
    """Return an error message if an override names a key or group that does not exist (None if all do).

    Hydra's own message for a wrong key does not say which keys exist; this one lists them.
    """
    from hydra import compose, initialize_config_module
    from omegaconf import DictConfig

    from probing.errors import close_matches

    items = [a for a in args if "=" in a and not a.startswith("-") and not a.lstrip("+~").startswith("hydra")]
    conf_dir = Path(__file__).resolve().parent / "conf"
    try:
        import probing.conf as conf_pkg

        conf_dir = Path(next(iter(conf_pkg.__path__)))
    except (ImportError, StopIteration):
        pass
    groups = sorted(p.name for p in conf_dir.iterdir() if p.is_dir() and not p.name.startswith("_"))
    selections = []
    for item in items:
        key, _, value = item.partition("=")
        name = key.lstrip("+~")
        if "." not in name and name in groups:
            selections.append(f"{key}={value.split(',')[0]}")
    try:
        with initialize_config_module("probing.conf", version_base="1.3"):
            cfg = compose("config", overrides=selections)
    except Exception as exc:  # noqa: BLE001 - Hydra's own message (it lists the options of a group)
        return str(exc)
    for item in items:
        key = item.partition("=")[0]
        name = key.lstrip("+~")
        if key.startswith("+") and "." not in name and name not in groups and name not in cfg:
            return f"no config group {name!r}.{close_matches(name, groups)} Config groups: {groups}."
        if key.startswith(("+", "~")) or name in groups:
            continue
        node: Any = cfg
        walked: list[str] = []
        for part in key.split("."):
            if not isinstance(node, DictConfig) or part not in node:
                where = ".".join(walked) or "the top level"
                valid = sorted(str(k) for k in node) if isinstance(node, DictConfig) else []
                hint = close_matches(part, valid)
                return (
                    f"unknown option {key!r}: no {part!r} at {where}.{hint} Valid there: {valid}. "
                    f"Config groups: {groups} (model and strategy are selected with a plus: +model=distilbert)."
                )
            walked.append(part)
            node = node[part]
    return None


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m probing`` and the ``probing`` script."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "info":
        from probing.inspect import info_main

        sys.exit(info_main(args[1:]))
    if args and args[0] == "probe":
        from probing.probes.cli import probe_main

        sys.exit(probe_main(args[1:]))
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    problem = check_overrides(args)
    if problem is not None:
        print(f"probing: error: {problem}", file=sys.stderr)
        sys.exit(2)
    _hydra_entry()
