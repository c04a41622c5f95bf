"""Command line: ``python -m probing [overrides]`` extracts (and probes, when the data has labels);
``probe``, ``info`` and ``layers`` are subcommands. The ``probing`` console script is the same.

An extraction's configuration is composed once from the typed schema (`probing.config`) with the
overrides; a wrong key, type or value is one ``probing: error:`` line (exit 2) before anything heavy is
imported, and `probing.preflight` checks the data, the layers and the output folder before the model's
weights load. Hydra's own entry point runs multirun sweeps (``-m``) and Hydra's flags (``--cfg``...).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

log = logging.getLogger("probing")

HELP = """\
usage: python -m probing [COMMAND] [ARGS]        (the `probing` script is the same)

commands:
  (none)          extract activations over a dataset, store them, probe them when the data has labels
                    python -m probing +model=distilbert +strategy=mean layers=[0,3,-1] data.limit=500
  probe RUN       probe every layer of a stored run (baselines, control task, CIs; CSV, JSON, PNG)
                    python -m probing probe runs/<run id> --labels tense,number
  info RUN        what a run holds: settings, progress, arrays and sizes (--verify: check every chunk)
                    python -m probing info runs/<run id> --verify
  layers MODEL    a model's hook points: block indices, the embeddings, module names (no weights loaded)
                    python -m probing layers openai-community/gpt2
  runs [FOLDER]   the runs of a folder (default runs/) with their identity and what they hold
  plot RUN [RUN2] a PNG: --kind pca (per layer, coloured by --label), cka (layers of one run or two), curves
                    python -m probing plot runs/a runs/b --kind curves --out a_vs_b.png
  report RUN      one self-contained HTML report: metadata, probe table, curves, PCA, CKA (opens offline)

extraction options are Hydra overrides (key=value); config groups are chosen with
  +model=<{models}>  +strategy=<{strategies}>
  data=<{data}>  storage=<{storage}>  trainer=<{trainer}>
every option and its default: python -m probing --cfg job     sweeps: python -m probing -m layers=0,2,4

  --version       the version of probing
  --hydra-help    Hydra's own help
"""


def _help() -> str:
    from probing.config import group_options

    g = {k: "|".join(v) for k, v in group_options().items()}
    return HELP.format(models=g["model"], strategies=g["strategy"], data=g["data"], storage=g["storage"],
                       trainer=g["trainer"])


# -- composing the configuration ---------------------------------------------------------------------
def compose_config(overrides: list[str]) -> Any:
    """The job's configuration (an OmegaConf DictConfig) from the schema, ``conf/config.yaml`` and
    ``overrides``; raises `ConfigError` with a message that names what is wrong and what is allowed."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from probing.config import register
    from probing.errors import ConfigError

    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("probing.conf", version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except Exception as exc:  # noqa: BLE001 - Hydra and OmegaConf raise many kinds; all are the user's input
        raise ConfigError(_explain(exc, overrides)) from exc
    check_keys(cfg)
    return cfg


def check_keys(cfg: Any, where: str = "") -> None:
    """Refuse keys the schema does not have (``+key=value`` adds them past Hydra's own check)."""
    from dataclasses import is_dataclass

    from omegaconf import DictConfig, OmegaConf

    from probing.config import Config, group_options, option_names
    from probing.errors import ConfigError, close_matches

    kind = OmegaConf.get_type(cfg)
    if not (isinstance(kind, type) and is_dataclass(kind)):
        return
    valid = option_names(kind)
    for key in cfg:
        if key == "hydra" and kind is Config:
            continue
        if key not in valid and not str(key).startswith("_"):
            path = f"{where}{key}"
            groups = sorted(group_options()) if kind is Config else []
            hint = close_matches(str(key), dict.fromkeys([*valid, *groups]))
            raise ConfigError(
                f"unknown option {path!r}.{hint} Valid {'at the top level' if not where else 'in ' + where[:-1]}: "
                f"{valid}." + (f" Config groups: {groups} (model and strategy with a plus: +model=distilbert)."
                               if groups else "")
            )
        node = cfg[key]
        if isinstance(node, DictConfig):
            check_keys(node, f"{where}{key}.")


def _valid_keys(key: str, overrides: list[str]) -> tuple[str, list[str]]:
    """The node holding ``key`` (a dotted path) and the keys that node accepts, from the schema."""
    from probing.config import DATA, MODELS, STORAGE, STRATEGIES, TRAINERS, Config, ProbeConfig, option_names

    options: dict[str, dict[str, Any]] = {"data": DATA, "storage": STORAGE, "trainer": TRAINERS, "model": MODELS,
                                          "strategy": STRATEGIES}
    chosen = {"data": "ud_ewt", "storage": "zarr", "trainer": "cpu"}
    for o in overrides:
        name, _, value = o.lstrip("+~").partition("=")
        if name in options:
            chosen[name] = value.split(",")[0]
    parent = key.rpartition(".")[0]
    group = parent.split(".")[0]
    if not parent:
        return "the top level", option_names(Config)
    if group == "probe":
        return parent, option_names(ProbeConfig)
    node = options.get(group, {}).get(chosen.get(group, ""))
    if node is None:
        node = {"model": Config().model, "strategy": Config().strategy}.get(group)
    return parent, option_names(node) if node is not None else []


def _explain(exc: BaseException, overrides: list[str] | None = None) -> str:
    """One readable sentence for a composition error: the key or option, what was wrong, what is allowed."""
    from omegaconf.errors import ConfigKeyError, ValidationError

    from probing.config import group_options, option_names
    from probing.errors import close_matches

    cause: BaseException = exc
    while cause.__cause__ is not None and not isinstance(cause, (ConfigKeyError, ValidationError)):
        cause = cause.__cause__
    text = str(cause).split("\n")[0]
    key = getattr(cause, "full_key", None)
    if isinstance(cause, ConfigKeyError) and key:
        parent, _, name = str(key).rpartition(".")
        kind = getattr(cause, "object_type", None)
        valid = option_names(kind) if kind is not None and hasattr(kind, "__dataclass_fields__") else []
        groups = group_options()
        where = parent or "the top level"
        hint = close_matches(name, [*valid, *groups])
        return (f"unknown option {key!r}: no {name!r} at {where}.{hint} Valid there: {valid}. Config groups: "
                f"{sorted(groups)} (model and strategy are chosen with a plus: +model=distilbert).")
    if isinstance(cause, ValidationError) and key:
        return f"{key}: {text}"
    message = str(exc)
    if "Could not find" in message:  # a group option that does not exist: Hydra lists the options
        lines = [ln.strip() for ln in message.split("Config search path")[0].splitlines() if ln.strip()]
        return " ".join(lines).replace("In 'config': ", "")
    if "Could not override" in message or "Could not append to config" in message:
        first = message.splitlines()[0]
        key = first.split("'")[1] if "'" in first else ""
        key = key.lstrip("+~").split("=")[0]
        where, valid = _valid_keys(key, list(overrides or []))
        name = key.rpartition(".")[2]
        group_names = sorted(group_options())
        hint = close_matches(name, dict.fromkeys([*valid, *(group_names if where == "the top level" else [])]))
        there = f"Valid there: {valid}." if valid else f"{where} takes no options here (choose one: +{where}=...)."
        return (f"unknown option {key!r}: no {name!r} at {where}.{hint} {there} Config groups: "
                f"{group_names} (model and strategy are chosen with a plus: +model=distilbert).")
    return message.splitlines()[0] if message else type(exc).__name__


def to_job(cfg: Any) -> Any:
    """The composed config as the typed `probing.config.Config`, its values checked."""
    from omegaconf import OmegaConf

    from probing.config import Config

    job = OmegaConf.to_object(cfg)
    if not isinstance(job, Config):  # composed from YAML only (no schema): not a probing config
        raise TypeError(f"expected a probing Config, got {type(job).__name__}")
    return job


# -- the extraction job ------------------------------------------------------------------------------
def _output_location(job: Any) -> tuple[str, str | None, list[str]]:
    """Where the run goes: ``output_dir``/``run_id``; in a Hydra multirun, ``<sweep dir>/job<N>``."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return str(job.output_dir), job.run_id, []
    overrides = list(hc.overrides.task)
    if hc.mode == RunMode.MULTIRUN:
        name = f"job{hc.job.num}" if job.run_id is None else f"{job.run_id}-{hc.job.num}"
        return str(hc.sweep.dir), name, overrides
    return str(job.output_dir), job.run_id, overrides


def run_job(cfg: Any, overrides: list[str] | None = None) -> Any:
    """Run the extraction job of a composed config; returns the `RunResult`."""
    from omegaconf import OmegaConf

    from probing.config import WordsConfig
    from probing.preflight import check_job

    job = to_job(cfg)
    job.data = job.data.for_level(isinstance(job.strategy, WordsConfig))  # the default data: text or word lists
    output_dir, run_id, hydra_overrides = _output_location(job)
    from probing.storage.fs_options import bind, redacted

    options = getattr(job.storage, "storage_options", None)
    if options and "://" not in output_dir:
        from probing.errors import ConfigError

        raise ConfigError(
            f"storage.storage_options were given but output_dir={output_dir!r} is a local folder: they are fsspec "
            "options of a URL output_dir (output_dir=s3://bucket/runs, gs://bucket/runs). Drop them or give a URL."
        )
    bind(output_dir, options)  # every open under output_dir (lease, run, probes, registry) gets them
    if job.logger == "mlflow":
        from probing.mlflow_log import check_available

        check_available()
    plan = check_job(job, output_dir)  # data, layers, model folder, output folder: before the weights load
    from probing.preflight import check_accelerator

    check_accelerator(job.trainer.accelerator, job.trainer.devices)

    from hydra.utils import instantiate

    from probing.backend import ModelBackend
    from probing.data.prepare import prepare_dataset
    from probing.engine.runner import DatasetRunner
    from probing.extractor import ActivationExtractor

    config: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    if (config.get("storage") or {}).get("storage_options"):  # stored with the run and in the registry: no secrets
        config["storage"]["storage_options"] = redacted(config["storage"]["storage_options"])
    dataset = prepare_dataset(job.data)
    storage = instantiate(cfg.storage, root=output_dir)
    strategy = instantiate(cfg.strategy)
    model = ModelBackend(framework=job.model.backend).load_model(
        job.model.name_or_path,
        device="cpu",
        dtype=job.model.dtype,
        revision=job.model.revision,
        padding_side=job.model.padding_side,
        gguf_file=job.model.gguf_file,
        device_map=config["model"].get("device_map"),
    )
    d = job.data

    def make_runner(backend: Any, name: str | None, reuse: bool) -> Any:
        extractor = ActivationExtractor(backend, layers=config["layers"], strategy=strategy, early_stop=job.early_stop)
        return DatasetRunner(
            dataset,
            batch_size=d.batch_size,
            extractor=extractor,
            storage=storage,
            run_id=name,
            text_field=d.text_field,
            words_field=d.words_field,
            max_length=d.max_length,
            bucketing=d.bucketing,
            max_tokens_per_batch=d.max_tokens_per_batch,
            num_workers=d.num_workers,
            resume=job.resume,
            trainer=config["trainer"],
            progress=job.progress,
            progress_every=job.progress_every,
            config=config,
            overrides=hydra_overrides or list(overrides or []),
            announce=plan.announce,
            on_nonfinite=job.on_nonfinite,
            allow_empty=d.allow_empty,
            lease_timeout=job.lease_timeout_s,
            reuse=reuse,
        )

    # reuse=auto: on when the user gave no run_id (a sweep's job<N> is not the user's)
    reuse = (job.run_id is None) if job.reuse == "auto" else bool(job.reuse)
    runner = make_runner(model, run_id, reuse)
    result = runner.run()
    if result.global_rank == 0 and result.stats.get("reused"):
        print(f"probing: served from {result.stats['source']} ({result.stats['reused']}), the model was not run\n"
              f"run: {result.path}")
    elif result.global_rank == 0:
        s = result.stats
        print(
            f"probing: stored {result.n_examples} examples x {len(result.layers)} layers "
            f"({strategy.name}) of {job.model.name_or_path} in {s.get('seconds', 0):.1f} s "
            f"({s.get('real_tokens_per_s', 0):,.0f} tokens/s, padding {100 * s.get('padding_fraction', 0):.1f}%)\n"
            f"run: {result.path}"
        )
    baseline = job.probe.baseline_model
    probe_cfg = {k: v for k, v in config.get("probe", {}).items() if k != "baseline_model"}
    if not probe_cfg.get("label_fields"):  # the data's own labels (UD EWT: sentence or word level)
        probe_cfg["label_fields"] = job.data.label_fields(strategy.mode == "words")
    report = None
    if result.global_rank == 0 and job.probe_after_extract is not False:
        if result.stats.get("reused") == "layers" and not probe_cfg.get("layers"):
            probe_cfg["layers"] = list(result.layers)  # the stored run has more layers than were asked for
        report = _probe_after(result.path, probe_cfg, explicit=job.probe_after_extract is True or baseline is not None)
    if baseline == "random":
        from probing.baseline_model import SEED, random_weights

        print(f"probing: the random-weights baseline: {job.model.name_or_path}'s architecture, initialised from its "
              f"config with seed {SEED}, extracted and probed the same way")
        # with reuse, a rerun finds its stored random-weights run by identity (its weights' fingerprint)
        random_result = make_runner(random_weights(model, SEED), f"{result.run_id}-random", reuse).run()
        if random_result.global_rank == 0 and report is not None:
            random_report = _probe_after(random_result.path, probe_cfg, explicit=True)
            _plot_against_random(report, random_report)
    if job.logger == "mlflow" and result.global_rank == 0:
        from probing.mlflow_log import log_job

        where = log_job(job.mlflow, output_dir, result, report, config)
        print(f"probing: logged to MLflow: {where}")
    return result


def _plot_against_random(report: Any, random_report: Any) -> None:
    """Draw the trained model's curves beside the random-weights model's, into the trained report's folder."""
    from pathlib import Path

    from probing.probes.plot import plot_reports

    files = getattr(report, "files", None) or {}
    if not files.get("json"):
        return
    target = Path(files["json"]).with_name("probes_vs_random_weights.png")
    plot_reports([report, random_report], target, names=["trained", "random weights"],
                 title=f"Probe score by layer: {report.model}, trained vs random weights")
    report.files["vs_random"] = str(target)
    print(f"probes: trained vs random weights: {target}")
    _write_html(report, {"Probe score by layer, trained vs random weights": target})


def _probe_after(run_path: str, probe_cfg: dict[str, Any], explicit: bool) -> Any:
    """Probe the run just written and print the per-layer table (skipped quietly if it has no labels);
    returns the `ProbeReport` (None when skipped)."""
    from probing.errors import ProbingError
    from probing.probes.report import format_table
    from probing.probes.run import probe_run

    try:
        report = probe_run(run_path, **probe_cfg)
    except ProbingError as exc:  # no labels, too few rows...: the extraction itself succeeded
        if explicit:
            raise
        print(f"probing: no probes after extraction ({exc}); `python -m probing probe {run_path}` probes it later")
        return None
    print(format_table(report))
    files = getattr(report, "files", None) or {}
    if files:
        print("probes: " + ", ".join(str(v) for v in files.values()))
        _write_html(report)
    return report


def _write_html(report: Any, extra_images: dict[str, Any] | None = None) -> None:
    """The run's self-contained HTML report beside the probe report's files (`probing.viz.html`)."""
    from probing.viz.html import write_html_report

    path = write_html_report(report.run_path, report, extra_images=extra_images)
    report.files["html"] = str(path)
    print(f"report: {path}")


def _run_reporting(cfg: Any, overrides: list[str] | None = None) -> int:
    """Run a job; turn its errors into one line and an exit code (2: bad input, 74: a write the storage
    refused, 75: stopped, resumable). ``PROBING_DEBUG=1`` or ``hydra.verbose=true`` re-raise (a traceback)."""
    from probing.engine.preemption import EXIT_PREEMPTED, Preempted
    from probing.errors import ProbingError

    verbose = bool(cfg.get("hydra", {}).get("verbose", False)) if "hydra" in cfg else False
    try:
        run_job(cfg, overrides)
    except ProbingError as exc:
        if os.environ.get("PROBING_DEBUG") or verbose:
            raise
        print(f"probing: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except Preempted as exc:
        print(f"probing: {exc}\nprobing: to finish: {exc.resume_command(list(overrides or []))}", file=sys.stderr)
        return EXIT_PREEMPTED
    return 0


def _hydra_entry() -> None:
    """Hydra's entry point: multirun sweeps, launchers and Hydra's flags."""
    import hydra
    from omegaconf import DictConfig

    from probing.config import register

    register()

    @hydra.main(version_base="1.3", config_path="pkg://probing.conf", config_name="config")
    def _main(cfg: DictConfig) -> None:
        code = _run_reporting(cfg)
        if code:
            sys.exit(code)

    _main()


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stdout,
                        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")


#: subcommand -> (module, function taking the remaining arguments and returning an exit code)
SUBCOMMANDS = {
    "probe": ("probing.probes.cli", "probe_main"),
    "info": ("probing.inspect", "info_main"),
    "layers": ("probing.hooks", "layers_main"),
    "runs": ("probing.runs", "runs_main"),
    "plot": ("probing.viz.cli", "plot_main"),
    "report": ("probing.viz.cli", "report_main"),
}


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m probing`` and the ``probing`` script."""
    import importlib

    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in SUBCOMMANDS:
        module, function = SUBCOMMANDS[args[0]]
        sys.exit(getattr(importlib.import_module(module), function)(args[1:]))
    if args and args[0] in ("-h", "--help", "help"):
        print(_help())
        return
    if args and args[0] == "--version":
        from probing import __version__

        print(f"probing {__version__}")
        return
    if args and args[0] == "--hydra-help":
        args[0] = "--help"
    if any(a.startswith("-") for a in args):  # -m, --cfg, --info, ...: Hydra's own entry point
        sys.argv = [sys.argv[0], *args]
        _hydra_entry()
        return
    from probing.errors import ConfigError

    try:
        cfg = compose_config(args)
        _configure_logging(bool(cfg.get("hydra", {}).get("verbose", False)) if "hydra" in cfg else False)
        code = _run_reporting(cfg, args)
    except ConfigError as exc:
        if os.environ.get("PROBING_DEBUG"):
            raise
        print(f"probing: error: {exc}", file=sys.stderr)
        code = 2
    if code:
        sys.exit(code)
