"""Every config group option composes (Hydra compose API), as the lightning-hydra-template tests do."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException, MissingConfigException

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = {
    g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in CONF.iterdir() if g.is_dir() and g.name != "__pycache__"
}


def _compose(overrides: list[str]):  # type: ignore[no-untyped-def]
    with initialize_config_module("probing.conf", version_base="1.3"):
        return compose("config", overrides=overrides)


def test_default_config_is_the_embedded_job():
    cfg = _compose([])
    assert cfg.model.name_or_path == "sentence-transformers/all-MiniLM-L6-v2"
    assert cfg.model.dtype == "float32" and cfg.strategy.name == "mean" and cfg.layers == "all"
    assert cfg.data.source == "builtin" and cfg.storage.backend == "zarr" and cfg.trainer.accelerator == "cpu"


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes(group, option):
    plus = "+" if group in ("model", "strategy") else ""
    cfg = _compose([f"{plus}{group}={option}"])
    assert cfg[group] is not None
    if group == "model":
        assert cfg.model.dtype == "float32"  # defaults live in config.yaml, options override only what differs


def test_card_command_composes():
    cfg = _compose(["+model=distilbert", "+strategy=mean"])
    assert cfg.model.name_or_path == "distilbert-base-uncased" and cfg.strategy.name == "mean"


def test_wrong_option_lists_valid_choices():
    with pytest.raises(MissingConfigException, match=r"(?s)Available options in 'model'.*distilbert"):
        _compose(["+model=distilbertt"])
    with pytest.raises(ConfigCompositionException):
        _compose(["nonexistent_key=1"])
