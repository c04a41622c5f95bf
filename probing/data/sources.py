"""Normalize what users pass as a dataset into one indexable `TextDataset`.

Accepted: a list of strings; an iterable of dicts with a text field (other fields are kept as
per-example metadata); a Hugging Face ``datasets.Dataset``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from probing.errors import DatasetError


class TextDataset(Sequence[dict[str, Any]]):
    """An indexable dataset of examples with a text field and optional metadata fields."""

    def __init__(self, data: Any, text_field: str = "text", words_field: str | None = None) -> None:
        self.words_field = words_field
        if words_field is not None:
            text_field = words_field  # the input is the word list; text() joins it
        self.text_field = text_field
        self._hf = None
        if _is_hf_dataset(data):
            if text_field not in data.column_names:
                raise DatasetError(
                    f"The dataset has no column {text_field!r}; its columns are {data.column_names}. "
                    "Set the text field (data.text_field=...)."
                )
            self._hf = data
            self._records: list[dict[str, Any]] = []
            self.fields = [c for c in data.column_names]
            return
        if isinstance(data, (str, bytes)):
            raise DatasetError("The dataset is a single string; pass a list of strings or of dicts.")
        if data is None:
            raise DatasetError("The dataset is None; pass a list of strings, dicts, or a datasets.Dataset.")
        records: list[dict[str, Any]] = []
        for i, item in enumerate(_iterate(data)):
            if isinstance(item, str):
                records.append({text_field: item})
            elif isinstance(item, dict):
                if text_field not in item:
                    raise DatasetError(
                        f"Example {i} has no {text_field!r} field (fields: {sorted(item)}). Every example "
                        f"needs one, or set the text field to one of its fields."
                    )
                records.append(item)
            else:
                raise DatasetError(
                    f"Example {i} is a {type(item).__name__}; expected a str or a dict with a {text_field!r} field."
                )
        self._records = records
        fields: list[str] = [text_field]
        for r in records:
            for k in r:
                if k not in fields:
                    fields.append(k)
        self.fields = fields

    def __len__(self) -> int:
        return len(self._hf) if self._hf is not None else len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        if self._hf is not None:
            return dict(self._hf[int(index)])
        return self._records[index]

    def text(self, index: int) -> str:
        """The text of example ``index`` (its words joined by spaces for pre-split input)."""
        return _as_text(self.model_input(index), index, self.text_field)

    def model_input(self, index: int) -> str | list[str]:
        """What the tokenizer gets: the text, or the word list of pre-split input."""
        value = self[index][self.text_field]
        return _check_input(value, index, self.text_field, self.words_field is not None)

    def inputs(self, start: int = 0, stop: int | None = None) -> list[Any]:
        """Tokenizer inputs of examples ``start..stop`` (fast column access for HF datasets)."""
        stop = len(self) if stop is None else stop
        if self._hf is not None:
            values = list(self._hf[start:stop][self.text_field])
            return [
                _check_input(v, start + i, self.text_field, self.words_field is not None) for i, v in enumerate(values)
            ]
        return [self.model_input(i) for i in range(start, stop)]

    def texts(self, start: int = 0, stop: int | None = None) -> list[str]:
        """The texts of examples ``start..stop``."""
        return [_as_text(v, start + i, self.text_field) for i, v in enumerate(self.inputs(start, stop))]

    def column(self, field: str) -> list[Any]:
        """All values of a metadata field, in dataset order (None where an example lacks it)."""
        if self._hf is not None:
            return list(self._hf[field])
        return [r.get(field) for r in self._records]

    @property
    def metadata_fields(self) -> list[str]:
        """Fields other than the text."""
        return [f for f in self.fields if f != self.text_field]

    def fingerprint(self) -> str:
        """A content hash of the texts and fields (stable across processes and runs)."""
        h = hashlib.sha256()
        h.update(f"{len(self)}|{self.text_field}|{','.join(self.fields)}".encode())
        step = 4096
        for start in range(0, len(self), step):
            for t in self.texts(start, min(start + step, len(self))):  # words joined: same content
                h.update(t.encode("utf-8", "surrogatepass"))
                h.update(b"\x00")
        return h.hexdigest()[:16]


def _check_input(value: Any, index: int, field: str, words: bool) -> Any:
    if words:
        if not isinstance(value, (list, tuple)) or not all(isinstance(w, str) for w in value):
            raise DatasetError(f"Example {index}: field {field!r} must be a list of words (str) for pre-split input.")
        return list(value)
    if not isinstance(value, str):
        raise DatasetError(f"Example {index}: field {field!r} is a {type(value).__name__}, not a str.")
    return value


def _as_text(value: Any, index: int, field: str) -> str:
    return " ".join(value) if isinstance(value, list) else value


def _is_hf_dataset(data: Any) -> bool:
    return type(data).__module__.startswith("datasets.") and hasattr(data, "column_names")


def _iterate(data: Any) -> Iterable[Any]:
    try:
        return iter(data)
    except TypeError:
        raise DatasetError(f"The dataset ({type(data).__name__}) is not iterable.") from None
