"""The typed configuration: every group option composes from the schema (Hydra's compose API, as the
lightning-hydra-template tests do), builds its objects, and bad keys, types and values are one clear
error before anything heavy is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from probing.cli import compose_config, to_job
from probing.config import Config, group_options
from probing.errors import ConfigError


def test_default_config_is_the_embedded_job():
    job = to_job(compose_config([]))
    assert isinstance(job, Config)
    assert job.model.name_or_path == "sentence-transformers/all-MiniLM-L6-v2" and job.model.dtype == "float32"
    assert job.strategy._target_.endswith("MeanStrategy") and job.layers == "all"
    assert job.data.source == "ud_ewt" and job.storage.backend == "zarr" and job.trainer.accelerator == "cpu"
    assert job.data.max_length is None  # the model's own limit, capped at 512: the same default as the Python API


def test_the_generated_set_keeps_its_old_name():
    for name in ("generated", "builtin"):
        job = to_job(compose_config([f"data={name}", "data.n_examples=10"]))
        assert job.data.source == "generated" and len(job.data.load()) == 10
        assert job.data.label_fields(word_level=False) is None  # probes find tense, number, negation, sentiment


def test_the_default_data_names_its_labels_per_level():
    job = to_job(compose_config(["data.n_examples=5"]))
    assert job.data.label_fields(word_level=False) == ["tense", "subj_number", "obj_number", "length", "depth",
                                                       "question"]
    assert job.data.label_fields(word_level=True) == ["upos", "deprel"]
    rows = job.data.load()
    assert len(rows) == 5 and all(len(r["words"]) == len(r["upos"]) for r in rows)
    words, pooled = job.data.for_level(word_level=True), job.data.for_level(word_level=False)
    assert words.words_field == "words" and words.fields is None  # per-word lists become per-row fields
    assert pooled.words_field is None and "upos" not in pooled.fields and "tense" in pooled.fields  # text in


@pytest.mark.parametrize(("group", "option"), [(g, o) for g, opts in group_options().items() for o in opts])
def test_every_option_composes_and_builds(group, option, tmp_path):
    from hydra.utils import instantiate

    plus = "+" if group in ("model", "strategy") else ""
    cfg = compose_config([f"{plus}{group}={option}"])
    job = to_job(cfg)
    assert getattr(job, group) is not None
    if group == "model":
        assert job.model.dtype == "float32"  # defaults live in the schema, options override only what differs
    if group == "strategy":
        assert type(instantiate(cfg.strategy)).__module__ == "probing.strategies"
    if group == "storage":
        assert instantiate(cfg.storage, root=str(tmp_path)).name == option


def test_the_cards_command_composes():
    job = to_job(compose_config(["+model=distilbert", "+strategy=mean"]))
    assert job.model.name_or_path == "distilbert-base-uncased" and job.strategy._target_.endswith("MeanStrategy")


def test_options_of_a_group_option_are_typed(tmp_path):
    job = to_job(compose_config(["+strategy=cls_pooler", "data=files", "data.path=[a.csv,b.csv]", "storage=hdf5",
                                 "storage.compression=gzip", "data.split_map={dev: train}"]))
    assert job.strategy.use_pooler is True and job.data.paths() == ["a.csv", "b.csv"]
    assert job.storage.compression == "gzip" and job.data.split_map == {"dev": "train"}


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["data.limt=5"], r"unknown option 'data.limt'.*Did you mean: 'limit'.*max_length"),
        (["+modle=gpt2"], r"unknown option 'modle'.*Did you mean: 'model'"),
        (["+model=gpt3"], r"Available options in 'model'.*gpt2"),
        (["data=filez"], r"Available options in 'data'.*files"),
        (["+data.foo=1"], r"unknown option 'data.foo'"),
        (["data.batch_size=abc"], r"data.batch_size.*'abc'.*Integer"),
        (["+strategy=cls", "strategy.use_pooler=maybe"], r"strategy.use_pooler.*'maybe'.*bool"),
        (["storage.dtype=bf16"], r"storage.dtype='bf16': expected one of float32, float16"),
        (["model.padding_side=middle"], r"model.padding_side='middle': expected one of null, left, right"),
        (["+strategy=words", "strategy.pool=median"], r"strategy.pool='median': expected one of first, last, mean"),
        (["data.batch_size=0"], r"data.batch_size=0: expected a number >= 1"),
        (["probe.dev_fraction=1.5"], r"probe.dev_fraction=1.5"),
        (["progress=sometimes"], r"progress='sometimes'"),
    ],
)
def test_bad_keys_types_and_values_name_the_key_the_value_and_what_is_allowed(overrides, match):
    with pytest.raises(ConfigError, match=match):
        to_job(compose_config(overrides))


def test_the_schema_is_checked_before_torch_lightning_or_datasets_is_imported():
    code = (
        "import sys\nfrom probing.cli import compose_config, to_job\n"
        "try:\n    to_job(compose_config(['storage.dtype=bf16']))\n"
        "except Exception as e:\n    print(type(e).__name__)\n"
        "print(sorted(m for m in ('torch', 'lightning', 'datasets', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["ConfigError", "[]"]


def test_every_option_has_one_default_in_the_schema():
    cfg = compose_config([])
    assert OmegaConf.to_container(cfg.probe)["c_grid"] == [0.001, 0.01, 0.1, 1.0, 10.0]
    from pathlib import Path

    conf = Path(__file__).resolve().parents[1] / "conf"
    # the YAML only lists the defaults: no option of a group is defined in a file any more
    assert sorted(p.relative_to(conf).as_posix() for p in conf.rglob("*.yaml")) == [
        "config.yaml", "hydra/launcher/submitit_slurm.yaml"
    ]


def test_get_strategy_refuses_options_the_strategy_does_not_take():
    from probing import get_strategy
    from probing.errors import ConfigError

    assert get_strategy("cls", use_pooler=True).use_pooler is True
    with pytest.raises(ConfigError, match=r"Strategy 'mean' takes no option 'use_pooler'; its options: none"):
        get_strategy("mean", use_pooler=True)
