"""The dataset a `probing.config.DataConfig` describes, ready for a run: loaded, split values renamed,
fields kept, cut to ``limit``; a `TextStream` when ``streaming`` is set."""

from __future__ import annotations

from typing import Any

from probing.data import loaders


def prepare_dataset(data: Any) -> Any:
    """Load ``data`` (a `DataConfig`): a ``datasets.Dataset``, a list of dicts, or a `TextStream`."""
    dataset = data.load()
    if data.split_map:
        dataset = loaders.rename_values(dataset, "split", dict(data.split_map))
    inputs = [data.words_field or data.text_field]
    dataset = loaders.select_fields(dataset, list(data.fields) if data.fields else None, inputs)
    if getattr(data, "streaming", False):
        from probing.data.sources import TextStream

        if data.limit is not None:
            dataset = dataset.take(int(data.limit))
        described = [data.source, getattr(data, "name", None), getattr(data, "config", None),
                     getattr(data, "split", None), data.limit, dict(data.split_map or {}), list(data.fields or [])]
        paths = data.paths()
        fingerprint = loaders.files_fingerprint(paths, *described) if paths else None
        return TextStream(dataset, data.text_field, data.words_field,
                          fields=list(data.fields) if data.fields else None, fingerprint=fingerprint)
    if data.limit is not None:
        n = min(int(data.limit), len(dataset))
        dataset = dataset.select(range(n)) if hasattr(dataset, "select") else dataset[:n]
    return dataset
