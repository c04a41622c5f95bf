"""A multirun over layers or pooling strategies runs the model once: one *source* run first, then every job
is served from it (`probing.storage.identity`: a layer subset, or a pooled strategy from every token).

Before the jobs start (Hydra's ``on_multirun_start``), `source_overrides` reads the sweep's command
line. When only ``layers`` and/or ``strategy`` are swept (the strategies among mean, max, last, cls),
one run with the union of the layers (and, for a strategy sweep, ``tokens`` with every token) is
extracted into ``<sweep dir>/_source`` by a plain ``python -m probing`` process. Each job then finds
it with ``reuse`` (on by default when no run_id is given) and runs no forward pass. Any other swept
key, ``reuse=false``, or a launcher other than Hydra's basic one (submitit: the source would run on
the submitting host) leaves the sweep as it was: one extraction per job.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from probing.storage.identity import POOLABLE

log = logging.getLogger(__name__)

SOURCE_RUN = "_source"


def _selectors(value: str) -> list[Any] | None:
    """``0`` / ``[0,3]`` / ``blocks.2`` as a list of simple selectors (None for ranges, ``all`` and the like)."""
    parsed = yaml.safe_load(value)
    items = parsed if isinstance(parsed, list) else [parsed]
    ok = all(isinstance(x, int) and not isinstance(x, bool) or isinstance(x, str) and ":" not in x and x != "all"
             for x in items)
    return items if ok else None


def source_overrides(task: list[str], sweep_dir: str) -> list[str] | None:
    """The overrides of the one extraction that serves every job of the sweep ``task``, or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(task)
    swept = [o for o in parsed if o.is_sweep_override()]
    if not swept or any(o.key_or_group not in ("layers", "strategy") for o in swept):
        return None
    out = []
    for o in parsed:
        if o.key_or_group in ("run_id", "output_dir", "probe_after_extract") or o.key_or_group.startswith("hydra"):
            continue
        if o.key_or_group == "reuse" and str(o.value()).lower() == "false":
            return None
        if not o.is_sweep_override():
            out.append(str(o.input_line))
            continue
        values = [str(v) for v in o.sweep_string_iterator()]
        if o.key_or_group == "layers":
            union: list[Any] = []
            for v in values:
                items = _selectors(v)
                if items is None:
                    return None
                union += [x for x in items if x not in union]
            out.append("layers=[" + ",".join(str(x) for x in union) + "]")
        else:  # strategy: pooled ones from every token
            if any(v not in POOLABLE for v in values):
                return None
            out += ["+strategy=tokens", "strategy.keep_special=true"]
    return [*out, f"output_dir={sweep_dir}", f"run_id={SOURCE_RUN}", "probe_after_extract=false", "reuse=false"]


class SweepSource(Callback):
    """Hydra callback: extract the sweep's source run once before its jobs (see the module docstring)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        launcher = str(config.hydra.get("launcher", {}).get("_target_", ""))
        if launcher and not launcher.endswith("BasicLauncher"):
            return  # a cluster launcher: the source would run here, on the submitting host; jobs extract as before
        task = list(config.hydra.overrides.task)
        overrides = source_overrides(task, str(config.hydra.sweep.dir))
        if overrides is None:
            return
        log.info("sweep: one source run for every job: python -m probing %s", " ".join(overrides))
        proc = subprocess.run([sys.executable, "-m", "probing", *overrides], check=False)
        if proc.returncode:  # the jobs then run as they would have (each its own extraction)
            log.warning("sweep: the source run failed (exit %s); every job extracts on its own", proc.returncode)
