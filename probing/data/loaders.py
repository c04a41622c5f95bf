"""Load datasets for real use: local CSV / TSV / JSON / JSONL / Parquet files, CoNLL-U treebanks, and
Hugging Face datasets by name, all through Hugging Face ``datasets``.

Files become memory-mapped Arrow tables (written once to the datasets cache, then read from disk), never
a Python list: a run of any size holds only the blocks it is working on. With ``streaming=True`` they
are read front to back without being prepared first (a ``datasets.IterableDataset``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from probing.errors import ConfigError, DatasetError

FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
CONLLU_COLUMNS = ("id", "form", "lemma", "upos", "xpos", "feats", "head", "deprel", "deps", "misc")


def _paths(path: str | Sequence[str] | None, what: str) -> list[Path]:
    if path is None or path == "" or (not isinstance(path, str) and len(path) == 0):
        raise ConfigError(f"{what} needs data.path (a file, or a list of files).")
    paths = [Path(os.path.expanduser(p)) for p in ([path] if isinstance(path, str) else path)]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"Data file(s) not found: {missing}.")
    return paths


def files_fingerprint(paths: Sequence[str | os.PathLike[str]], *extra: Any) -> str:
    """An identity of local files (path, size, modification time) and the options that select from them."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}".encode())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def conllu_blocks(path: str | os.PathLike[str]) -> Iterator[tuple[dict[str, str], list[tuple[int, list[str]]]]]:
    """The sentences of a CoNLL-U file, as they are written: per sentence its comments (``sent_id``,
    ``text``, ...) and its word lines as ``(line number, the 10 columns)``.

    Multiword-token lines (``1-2``) and empty nodes (``1.1``) are skipped: words are the syntactic
    words that carry the tags. A word line without 10 tab-separated columns is an error naming the line.
    """
    comments: dict[str, str] = {}
    rows: list[tuple[int, list[str]]] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                if rows:
                    yield comments, rows
                comments, rows = {}, []
            elif line.startswith("#"):
                key, _, value = line[1:].partition("=")
                if value:
                    comments[key.strip()] = value.strip()
            else:
                cols = line.split("\t")
                if len(cols) != 10:
                    raise DatasetError(
                        f"{path}:{lineno}: a CoNLL-U word line has 10 tab-separated columns, this one {len(cols)}."
                    )
                if "-" in cols[0] or "." in cols[0]:
                    continue
                rows.append((lineno, cols))
    if rows:
        yield comments, rows


def read_conllu(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Sentences of a CoNLL-U file as dicts: ``words`` plus one list per column (``upos``, ``xpos``,
    ``lemma``, ``deprel``, ``head``), and ``sent_id`` / ``text`` from the comments (`conllu_blocks`)."""
    for comments, rows in conllu_blocks(path):
        yield _sentence(comments, [cols for _, cols in rows])


def _sentence(comments: dict[str, Any], rows: list[list[str]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "sent_id": comments.get("sent_id", ""),
        "text": comments.get("text", " ".join(r[1] for r in rows)),
        "words": [r[1] for r in rows],
    }
    for name in ("lemma", "upos", "xpos", "deprel"):
        out[name] = [r[CONLLU_COLUMNS.index(name)] for r in rows]
    out["head"] = [int(r[6]) if r[6].isdigit() else -1 for r in rows]
    return out


def _split_name(path: Path) -> str:
    for name in ("train", "dev", "test", "validation"):
        if f"-{name}" in path.stem or f"_{name}" in path.stem or path.stem == name:
            return name
    return path.stem


def _conllu_sentences(paths: list[str], stamps: list[str]) -> Iterator[dict[str, Any]]:
    """The sentences of several CoNLL-U files, each with its file's ``split`` (``stamps`` key the cache)."""
    for p in paths:
        split = _split_name(Path(p))
        for s in read_conllu(p):
            yield {**s, "split": split}


def load_conllu(path: str | Sequence[str], *, streaming: bool = False) -> Any:
    """Sentences of one or more CoNLL-U files as a ``datasets.Dataset`` (Arrow); each gets a ``split`` from
    its file name (train/dev/test)."""
    import datasets

    paths = [str(p) for p in _paths(path, "data.source=conllu")]
    kwargs = {"paths": paths, "stamps": [files_fingerprint([p]) for p in paths]}  # a changed file is read again
    if streaming:
        return datasets.IterableDataset.from_generator(_conllu_sentences, gen_kwargs=kwargs)
    _quiet_datasets()
    try:
        return datasets.Dataset.from_generator(_conllu_sentences, gen_kwargs=kwargs)
    except Exception as exc:  # noqa: BLE001 - datasets wraps the generator's error; name the file and line
        raise _unreadable([Path(p) for p in paths], "conllu", exc) from exc


def load_files(path: str | Sequence[str], fmt: str | None = None, *, streaming: bool = False) -> Any:
    """Local CSV / TSV / JSON / JSONL / Parquet files as a ``datasets.Dataset`` (or ``IterableDataset``)."""
    paths = _paths(path, "data.source=files")
    if fmt is None:
        kinds = {FILE_FORMATS.get(p.suffix.lower()) for p in paths}
        if None in kinds or len(kinds) != 1:
            raise ConfigError(
                f"Cannot tell the format of {[str(p) for p in paths]}; set data.format to csv, json "
                "or parquet (one format per run)."
            )
        fmt = kinds.pop()
    import datasets

    _quiet_datasets()
    kwargs: dict[str, Any] = {"sep": "\t"} if fmt == "csv" and paths[0].suffix.lower() == ".tsv" else {}
    try:
        return datasets.load_dataset(fmt, data_files=[str(p) for p in paths], split="train", streaming=streaming,
                                     **kwargs)
    except Exception as exc:  # noqa: BLE001 - "An error occurred while generating the dataset", StopIteration...
        raise _unreadable(paths, str(fmt), exc) from exc


def _quiet_datasets() -> None:
    """``datasets`` logs a failed parse (we name the file and line instead) and draws progress bars; on a
    terminal the bars stay (preparing a large file takes a while), elsewhere they are noise in the log."""
    import sys

    import datasets

    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    if not sys.stderr.isatty():
        datasets.disable_progress_bars()


def _unreadable(paths: Sequence[Path], fmt: str, exc: BaseException) -> DatasetError:
    """The error for files ``datasets`` could not load: the first bad line found, else its own message."""
    from probing.data.diagnose import find_problem

    if isinstance(exc, DatasetError):
        return exc
    if isinstance(exc.__cause__, DatasetError):  # raised by our own generator (CoNLL-U), wrapped by datasets
        return exc.__cause__
    for p in paths:
        problem = find_problem(p, fmt)
        if problem:
            return DatasetError(problem + ".")
    cause = exc.__cause__ or exc
    return DatasetError(
        f"Could not read {[str(p) for p in paths]} as {fmt}: {type(cause).__name__}: {cause}. Check the files "
        "(one format per run; data.format sets it)."
    )


def load_hf(name: str, config: str | None = None, split: str = "train", *, streaming: bool = False) -> Any:
    """A Hugging Face dataset by name: needs the hub or a local cache."""
    import datasets

    try:
        return datasets.load_dataset(name, config, split=split, streaming=streaming)
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; all mean "not reachable / not there"
        raise DatasetError(
            f"Could not load the Hugging Face dataset {name!r} (config {config!r}, split {split!r}): {exc}. "
            "It needs the hub or a local cache (HF_DATASETS_OFFLINE=1 uses the cache only); for local files "
            "use data=files data.path=..., or data=conllu for treebanks."
        ) from exc


def _columns(data: Any) -> list[str] | None:
    names = getattr(data, "column_names", None)
    return list(names) if names is not None else None


def select_fields(data: Any, fields: Sequence[str] | None, keep: Sequence[str]) -> Any:
    """Keep only ``fields`` (plus the input fields in ``keep``); None keeps everything."""
    if not fields:
        return data
    wanted = list(dict.fromkeys([*keep, *fields]))
    if hasattr(data, "select_columns"):
        present = _columns(data)
        if present is not None:
            missing = [f for f in wanted if f not in present]
            if missing:
                raise DatasetError(f"Fields {missing} are not in the dataset; its fields are {present}.")
        return data.select_columns(wanted)
    present_keys = set().union(*(r.keys() for r in data)) if data else set()
    missing = [f for f in wanted if f not in present_keys]
    if missing:
        raise DatasetError(f"Fields {missing} are not in the dataset; its fields are {sorted(present_keys)}.")
    return [{k: r.get(k) for k in wanted} for r in data]


def rename_values(data: Any, field: str, mapping: dict[str, str]) -> Any:
    """Rename values of one field (e.g. ``split: {dev: train}`` to train probes on a dev file)."""
    if hasattr(data, "map"):
        mapping = dict(mapping)
        return data.map(_Rename(field, mapping), batched=True)
    return [{**r, field: mapping.get(r.get(field), r.get(field))} for r in data]


class _Rename:
    """A picklable, hashable value renaming for ``datasets.map`` (its cache key is its content)."""

    def __init__(self, field: str, mapping: dict[str, str]) -> None:
        self.field = field
        self.mapping = mapping

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        return {self.field: [self.mapping.get(v, v) for v in batch[self.field]]}
