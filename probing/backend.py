"""Load a Hugging Face model and its tokenizer: `ModelBackend.load_model` -> `BackendModel`.

The model is loaded without its task head (``AutoModel``): hidden states are the same as the full
model's and no compute is spent on a language-model head. The dtype is always explicit.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from probing.embedded import EMBEDDED_MODELS
from probing.errors import ConfigError, DeviceError, ModelLoadError

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}




def available_devices() -> list[str]:
    """The devices this machine offers, as strings torch understands."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


def resolve_device(device: str | torch.device) -> torch.device:
    """Check that ``device`` exists here and return it; raise `DeviceError` naming what exists."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise DeviceError(
            f"Unknown device {device!r}. Available on this machine: {', '.join(available_devices())}."
        ) from exc
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"Device {device!r} was requested but CUDA is not available here "
                f"(torch {torch.__version__}). Available: {', '.join(available_devices())}. "
                "Use device='cpu', or install a CUDA build of torch on a GPU machine."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"Device {device!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s). "
                f"Available: {', '.join(available_devices())}."
            )
        return dev
    if dev.type == "mps" and "mps" in available_devices():
        return dev
    raise DeviceError(f"Device {device!r} is not available. Available: {', '.join(available_devices())}.")


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map a dtype name (``float32``, ``bf16``, ...) to a torch dtype; never 'auto'."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise ConfigError(
            f"Unknown model dtype {dtype!r}; expected one of {sorted(set(DTYPES))}. "
            "'auto' is not accepted: the dtype of extracted activations must be explicit."
        ) from None


@dataclass
class BackendModel:
    """A loaded model with its tokenizer.

    Attributes:
        model: the transformer without task head, in eval mode.
        tokenizer: its tokenizer, with a pad token set.
        device: where the model's weights are.
        name_or_path: what it was loaded from (hub id or folder).
        is_decoder: True for causal (decoder-only) language models.
        revision: the hub revision or the resolved commit, when known.
    """

    model: torch.nn.Module
    tokenizer: Any
    device: torch.device
    name_or_path: str
    is_decoder: bool
    revision: str | None = None
    dtype: torch.dtype = torch.float32
    extra: dict[str, Any] = field(default_factory=dict)
    #: ``torch`` or ``jax``: which framework runs the forward pass (`FRAMEWORKS`)
    framework: str = "torch"
    #: the flax nnx port (`probing.jax`) when ``framework == "jax"``; the torch ``model`` is kept beside it
    #: for its config, module names (layer selection), weights fingerprint and the CLS pooler
    jax_model: Any = None
    #: jitted JAX forwards of this model by (blocks run, sites): extractors of one model share compiles
    jax_compiled: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def model_type(self) -> str:
        return str(getattr(self.model.config, "model_type", "unknown"))


def _is_decoder(config: Any) -> bool:
    if getattr(config, "is_encoder_decoder", False):
        return False
    archs = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return True
    decoder_types = {
        "gpt2",
        "gpt_neo",
        "gpt_neox",
        "gptj",
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "phi",
        "phi3",
        "gemma",
        "gemma2",
        "gemma3",
        "olmo",
        "olmo2",
        "opt",
        "bloom",
        "falcon",
        "smollm3",
    }
    return getattr(config, "model_type", "") in decoder_types or bool(getattr(config, "is_decoder", False))


#: tokenizer classes that only wrap the folder's ``tokenizer.json`` (no vocabulary logic of their own)
GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


#: encoder-decoder families whose encoder loads alone (the decoder's weights are left unread)
ENCODER_CLASSES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}


def _model_class(config: Any, name: str) -> Any:
    """The class to load: a checkpoint saved as an encoder alone (``T5EncoderModel``, whose config says
    ``is_encoder_decoder: false`` yet `AutoModel` would build the whole ``T5Model`` with a random
    decoder) loads as that class, and so does the encoder of a T5 checkpoint; other encoder-decoder
    models are refused; the rest loads as `AutoModel` (no task head)."""
    import transformers
    from transformers import AutoModel

    archs = getattr(config, "architectures", None) or []
    encoder = next((a for a in archs if a.endswith("EncoderModel") and hasattr(transformers, a)), None)
    if encoder is None and getattr(config, "is_encoder_decoder", False):
        encoder = ENCODER_CLASSES.get(getattr(config, "model_type", ""))
        if encoder is None:
            raise ModelLoadError(
                f"{name!r} is an encoder-decoder model ({config.model_type}); `probing` supports encoder-only "
                f"and decoder-only models, and the encoder of {', '.join(sorted(ENCODER_CLASSES))}."
            )
    return AutoModel if encoder is None else getattr(transformers, encoder)


def load_tokenizer(path: str, *, gguf: bool = False, **kwargs: Any) -> Any:
    """The tokenizer saved at ``path``, as saved: the class its ``tokenizer_config.json`` declares.

    transformers 5 (`AutoTokenizer`) swaps the declared class for its own one for some model types
    (``MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS``: qwen2, phi3, modernbert, ...). When the folder
    declares a generic class (``TokenizersBackend``, what ``save_pretrained`` of a tokenizers-built
    tokenizer writes), the swapped-in class (e.g. ``Qwen2Tokenizer``) rebuilds a byte-level BPE from
    the vocabulary and ignores the folder's ``tokenizer.json``: every text is tokenized differently
    from the saved tokenizer (``"the cat sat"`` -> ``[1, 4, 4]`` instead of ``[1, 3, 5, 8]``), and
    every activation differs silently. A generic declaration is therefore loaded as declared.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.models.auto.tokenization_auto import get_tokenizer_config

    if not gguf:  # a GGUF file carries its own tokenizer
        declared = get_tokenizer_config(path, **kwargs).get("tokenizer_class")
        if declared in GENERIC_TOKENIZER_CLASSES:
            return PreTrainedTokenizerFast.from_pretrained(path, **kwargs)
    return AutoTokenizer.from_pretrained(path, **kwargs)


def _ensure_pad_token(tokenizer: Any, name: str) -> None:
    """Decoder tokenizers (GPT-2, Llama) often lack a pad token: reuse EOS (or UNK)."""
    if tokenizer.pad_token is not None:
        return
    for attr in ("eos_token", "unk_token", "bos_token"):
        token = getattr(tokenizer, attr, None)
        if token is not None:
            tokenizer.pad_token = token
            log.info("tokenizer of %s has no pad token; using %s %r", name, attr, token)
            return
    raise ModelLoadError(
        f"The tokenizer of {name!r} has no pad, EOS, UNK or BOS token to pad batches with. "
        "Add a pad token to the tokenizer (tokenizer.add_special_tokens) and save it to a folder."
    )


#: the frameworks a `ModelBackend` can run a model with
FRAMEWORKS = ("torch", "jax")


class ModelBackend:
    """Loads models and tokenizers with Hugging Face ``transformers`` (PyTorch), and for
    ``framework="jax"`` also ports the loaded model to flax nnx (`probing.jax`): the JAX forward then
    replaces the torch one and everything downstream is the same.

    The JAX backend runs float32 only, with the torch model on the CPU (JAX places its own copy on its
    default device); its families are `probing.jax.convert.FAMILIES`.
    """

    def __init__(self, framework: str = "torch") -> None:
        if framework not in FRAMEWORKS:
            raise ConfigError(f"framework={framework!r} is not one of {FRAMEWORKS} (model.backend in the CLI).")
        self.framework = framework

    def load_model(
        self,
        model_name: str | os.PathLike[str],
        device: str | torch.device = "cpu",
        *,
        dtype: str | torch.dtype = "float32",
        revision: str | None = None,
        padding_side: str | None = None,
        gguf_file: str | None = None,
        trust_remote_code: bool = False,
        device_map: str | dict[str, Any] | None = None,
    ) -> BackendModel:
        """Load ``model_name`` (hub id or local folder) onto ``device``.

        Args:
            model_name: a hub id (needs network or a local cache) or a folder with ``config.json``.
            device: ``cpu``, ``cuda``, ``cuda:1``, ``mps``; checked before loading.
            dtype: weights dtype, float32 by default (never transformers' "auto").
            revision: hub revision (branch, tag or commit).
            padding_side: ``left`` or ``right``; default: the tokenizer's own.
            gguf_file: name of a GGUF file inside the folder, to load dequantized weights from it.
            device_map: spread the model over devices with accelerate (``"auto"``, a dict, ...;
                see `probing.placement`); replaces ``device``. Quantized checkpoints are checked there too.
        """
        from probing.placement import check_device_map, check_quantization, input_device

        dev = resolve_device(device)
        check_device_map(device_map)
        torch_dtype = resolve_dtype(dtype)
        if self.framework == "jax":
            from probing.jax import require_jax

            require_jax()
            if torch_dtype != torch.float32 or device_map is not None or dev.type != "cpu":
                raise ConfigError(
                    f"model.backend=jax runs float32 weights with the torch copy on the CPU (JAX places its own on "
                    f"its default device); got dtype={dtype!r}, device={str(device)!r}, device_map={device_map!r}. "
                    "Use dtype=float32, device=cpu and no device_map, or model.backend=torch."
                )
        if padding_side not in (None, "left", "right"):
            raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
        name = os.fspath(model_name)
        if name in EMBEDDED_MODELS and not Path(name).is_dir():
            with contextlib.suppress(ImportError):  # not installed: fall through to the hub / cache
                name = EMBEDDED_MODELS[name]()
        is_local = Path(name).expanduser().is_dir()
        if not is_local and name.startswith((".", "/", "~")):
            raise ModelLoadError(f"Model folder {name!r} does not exist.")

        from transformers import AutoConfig
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "load report" tables about the unused LM head are noise here
        kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        path = str(Path(name).expanduser()) if is_local else name
        try:
            config = AutoConfig.from_pretrained(path, **kwargs)
            if self.framework == "jax":
                from probing.jax.convert import check_family

                check_family(config, name)  # before the weights load
            model_class = _model_class(config, name)
            check_quantization(config, name)  # before the weights load
            tokenizer = load_tokenizer(path, gguf=bool(gguf_file), **kwargs)
            placement = {} if device_map is None else {"device_map": device_map}
            model = model_class.from_pretrained(path, config=config, dtype=torch_dtype, **kwargs, **placement)
        except (ModelLoadError, ConfigError):
            raise
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ValueError...: say which folder
            if is_local and type(exc).__name__ == "SafetensorError":
                raise ModelLoadError(
                    f"The weights in {name!r} cannot be read ({exc}): a file is truncated or damaged (an "
                    "interrupted download or copy?). Copy or download the model again."
                ) from exc
            if not isinstance(exc, (OSError, ValueError)):
                raise
            if is_local:
                raise ModelLoadError(f"Could not load a model from folder {name!r}: {exc}") from exc
            raise ModelLoadError(
                f"Could not load {name!r} from the Hugging Face hub or the local cache "
                f"(offline: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '0')}). Point at a local "
                "folder holding config.json, the weights and the tokenizer instead, e.g. "
                f"`model.name_or_path=/path/to/folder` or `load_model('/path/to/folder')`. ({exc})"
            ) from exc
        finally:
            hf_logging.set_verbosity(verbosity)
        _ensure_pad_token(tokenizer, name)
        if padding_side is not None:
            tokenizer.padding_side = padding_side
        model.eval()
        model.requires_grad_(False)
        if device_map is None:
            model.to(dev)
        else:
            dev = input_device(model)
        jax_model = None
        if self.framework == "jax":
            from probing.jax.convert import to_jax

            jax_model = to_jax(model)
        return BackendModel(
            framework=self.framework,
            jax_model=jax_model,
            model=model,
            tokenizer=tokenizer,
            device=dev,
            name_or_path=os.fspath(model_name),
            is_decoder=_is_decoder(config),
            revision=revision or getattr(config, "_commit_hash", None),
            dtype=torch_dtype,
            extra={
                "resolved_path": path,
                **({"gguf_file": gguf_file} if gguf_file else {}),
                **({"device_map": dict(getattr(model, "hf_device_map", None) or {"": str(dev)})} if device_map else {}),
            },
        )
