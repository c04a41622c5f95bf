"""Command line: ``python -m probing [overrides]`` runs an extraction job from the Hydra config;
``python -m probing info <run>`` describes a stored run.

This module only turns a config into objects and calls `DatasetRunner`; the work happens there.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger("probing")


def build_dataset(data_cfg: Any) -> Any:
    """The dataset a config names (``data.source``: builtin, files, conllu, hf)."""
    from probing.data import loaders
    from probing.errors import ConfigError

    source = data_cfg.source
    if source == "builtin":
        from probing.data.builtin import generate

        data: Any = generate(int(data_cfg.n_examples), int(data_cfg.seed))
    elif source == "files":
        data = loaders.load_files(data_cfg.path, data_cfg.get("format"))
    elif source == "conllu":
        data = loaders.load_conllu(data_cfg.path)
    elif source == "hf":
        if not data_cfg.get("name"):
            raise ConfigError("data=hf needs data.name (a Hugging Face dataset id).")
        data = loaders.load_hf(data_cfg.name, data_cfg.get("config"), data_cfg.get("split", "train"))
    else:
        raise ConfigError(f"Unknown data.source {source!r}; expected one of ['builtin', 'files', 'conllu', 'hf'].")
    fields = data_cfg.get("fields")
    inputs = [data_cfg.get("words_field") or data_cfg.text_field]
    data = loaders.select_fields(data, list(fields) if fields else None, inputs)
    limit = data_cfg.get("limit")
    if limit is not None:
        data = data.select(range(min(int(limit), len(data)))) if hasattr(data, "select") else data[: int(limit)]
    return data


def run_job(cfg: Any) -> Any:
    """Run the extraction job described by a composed config; returns the `RunResult`."""
    from omegaconf import OmegaConf

    from probing.backend import ModelBackend
    from probing.engine.runner import DatasetRunner
    from probing.extractor import ActivationExtractor
    from probing.storage import get_storage
    from probing.strategies import get_strategy

    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    dataset = build_dataset(cfg.data)
    storage_opts = {k: v for k, v in config["storage"].items() if k != "backend"}
    storage = get_storage(cfg.storage.backend, cfg.output_dir, **storage_opts)
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
        run_id=cfg.run_id,
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
    return result


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


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m probing`` and the ``probing`` script."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "info":
        from probing.inspect import info_main

        sys.exit(info_main(args[1:]))
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    _hydra_entry()
