"""`RowView`: a token-level (ragged) run seen as a table of rows, so probes treat each word or token
as one example.

Per-row fields (``upos``, ``words``, ``word_index``, ``token_id``) are read as they are; per-example
fields (``split``, ``text``, labels) are repeated over each example's rows; ``sentence_id`` is the
example each row belongs to (the group that folds never split); ``word`` is the word form (the
control task's type).
"""

from __future__ import annotations

import numpy as np

from probing.storage.layout import Column
from probing.storage.reader import RunReader


class RowView:
    """Wraps a ragged `RunReader`: ``n_examples`` counts rows, ``example_metadata`` gives per-row values."""

    def __init__(self, reader: RunReader) -> None:
        self.reader = reader
        self.path = reader.path
        self.metadata = reader.metadata
        self._repeats = np.diff(reader.offsets)

    @property
    def run_id(self) -> str:
        return self.reader.run_id

    @property
    def layers(self) -> list[str]:
        return list(self.reader.layers)

    def layer_key(self, layer: int | str) -> str:
        return str(self.reader.layer_key(layer))

    @property
    def n_examples(self) -> int:
        return int(self._repeats.sum())

    @property
    def example_fields(self) -> list[str]:
        fields = list(self.reader.row_fields)
        if "words" in fields:
            fields.append("word")
        fields.append("sentence_id")
        fields += [f for f in self.reader.example_fields if f not in fields and f not in ("token_counts", "row_counts")]
        return fields

    def activations(self, layer: int | str) -> np.ndarray:
        return np.asarray(self.reader.activations(layer))

    def read_rows(self, layer: int | str, rows: np.ndarray) -> np.ndarray:
        return self.reader.read_rows(layer, rows)

    def column(self, field: str) -> Column | None:
        """How a field is stored (`RunReader.column`); the synthetic ``sentence_id`` and ``word`` are plain."""
        return self.reader.column("words" if field == "word" else field)

    def example_metadata(self, field: str) -> np.ndarray:
        if field == "sentence_id":
            return np.repeat(self.reader.example_ids, self._repeats)
        if field == "word" and "words" in self.reader.row_fields:
            field = "words"
        if field in self.reader.row_fields:
            return np.asarray(self.reader.row_metadata(field))
        return np.repeat(np.asarray(self.reader.example_metadata(field)), self._repeats, axis=0)


#: what probes read: a run's examples, or a token-level run's rows
Rows = RunReader | RowView


def as_rows(reader: RunReader) -> Rows:
    """``reader`` itself for pooled runs; a `RowView` for token-level runs."""
    return RowView(reader) if getattr(reader, "ragged", False) else reader


