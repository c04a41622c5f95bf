"""fsspec ``storage_options`` (endpoint, credentials, anything the filesystem takes) for URL runs.

Options are bound to a URL prefix for the life of the process: `bind` ``("s3://bucket/runs",
{"key": ..., "client_kwargs": {"endpoint_url": ...}})`` once, where the run is named
(`probing.ZarrStorage(url, storage_options=...)`, `probing.open_run(url, storage_options=...)`, the CLI's
``storage.storage_options``), and every later open of a path under that prefix gets them: the zarr
group, the run's lease, the metadata, the probes reading the run and writing their report, ``info``,
resume, reuse and the loader. So no call in between has to carry them, and none can forget them.

The longest bound prefix wins (a run's own options override its folder's). Paths that are not URLs
never get options (a local folder needs none).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from probing.errors import ConfigError

_BOUND: dict[str, dict[str, Any]] = {}
_LOCK = threading.Lock()


def _key(url: str) -> str:
    return url.rstrip("/")


def bind(url: str, options: Mapping[str, Any] | None) -> None:
    """Use ``options`` for every fsspec open of ``url`` and of any path under it (None or ``{}``: nothing)."""
    if not options:
        return
    if not isinstance(options, Mapping):
        raise ConfigError(
            f"storage_options must be a mapping of fsspec options (e.g. {{key: ..., secret: ..., client_kwargs: "
            f"{{endpoint_url: ...}}}}), got {type(options).__name__}: {options!r}."
        )
    if "://" not in url:
        return
    with _LOCK:
        _BOUND[_key(url)] = _plain(options)


def _plain(value: Any) -> Any:
    """Plain dicts and lists (an OmegaConf node from the CLI's config becomes what fsspec expects)."""
    if isinstance(value, Mapping) or hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, (str, bytes))):
        return [_plain(v) for v in value]
    return value


#: option names whose values are never stored or logged (run metadata, the registry, MLflow params)
SECRET_WORDS = ("secret", "key", "token", "password", "credential", "session")


def redacted(options: Any) -> Any:
    """``storage_options`` with every credential-like value replaced by ``"***"`` (what is stored)."""
    if not options:
        return options
    value = _plain(options)

    def walk(v: Any, name: str = "") -> Any:
        if isinstance(v, dict):
            return {k: walk(x, k) for k, x in v.items()}
        if any(w in name.lower() for w in SECRET_WORDS):
            return "***"
        return v

    return walk(value)


def options_for(url: str) -> dict[str, Any]:
    """The options bound to the longest prefix of ``url`` (a copy; ``{}`` for local paths or none bound)."""
    if "://" not in url:
        return {}
    u = _key(url)
    with _LOCK:
        best = max((k for k in _BOUND if u == k or u.startswith(k + "/")), key=len, default=None)
        return json.loads(json.dumps(_BOUND[best])) if best is not None else {}


def url_to_fs(url: str, like: str | None = None) -> tuple[Any, str]:
    """``(filesystem, path inside it)`` of a URL, with its bound options (or, when none are bound to it, those
    of ``like``: a run's lease ``<run>.lease`` sits beside the run, outside a prefix bound to the run only)."""
    import fsspec

    options = options_for(url) or (options_for(like) if like else {})
    fs, path = fsspec.core.url_to_fs(url, **options)
    return fs, path


def parse_options(text: str | None) -> dict[str, Any] | None:
    """``--storage-options '{"key": ...}'`` (JSON) of the subcommands; None when not given."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(
            f"--storage-options {text!r} is not JSON ({exc}). Give a JSON object, e.g. "
            '\'{"key": "...", "secret": "...", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}}\'.'
        ) from exc
    if not isinstance(value, dict):
        raise ConfigError(f"--storage-options must be a JSON object, got {type(value).__name__}: {text!r}.")
    return value


def clear() -> None:
    """Forget every binding (tests)."""
    with _LOCK:
        _BOUND.clear()


__all__ = ["bind", "clear", "options_for", "parse_options", "redacted", "url_to_fs"]
