"""What is wrong with a data file, in words: the file, the line, and what to do.

`datasets` reports a bad file as "An error occurred while generating the dataset" (or a bare
``StopIteration`` for an empty JSONL file). `find_problem` reads the file line by line to name the
first line that is not UTF-8, not JSON (JSON Lines), or holds a string that is not valid Unicode (a
lone surrogate escape such as ``"\\ud800"``), and says when a file has no records at all. It runs on a
file's head before the model loads (`probing.preflight`) and on the whole file only when loading
failed, so a good file costs nothing more.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

#: bytes of a file's head that the cheap check (before the model loads) looks at
HEAD_BYTES = 1 << 20


def find_problem(path: str | Path, fmt: str, *, head_only: bool = False) -> str | None:
    """The first problem of a CSV/TSV/JSON/JSONL/CoNLL-U file (``path: line N: ...``), or None.

    ``head_only``: look at the first `HEAD_BYTES` only (and do not call a file empty that is longer).
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            raw = f.read(HEAD_BYTES if head_only else -1)
    except OSError as exc:
        return f"{p}: cannot be read ({exc.strerror or exc})"
    if fmt == "parquet":
        return None
    truncated = head_only and size > len(raw)
    if not raw.strip():
        return f"{p} is empty: it holds no records. Point data.path at a file with data, or drop this one"
    text, problem = _decode(p, raw, truncated)
    if problem:
        return problem
    lines = text.splitlines()
    if truncated and lines:
        lines = lines[:-1]  # the last line of a head may be cut anywhere
    if fmt == "csv":
        return _csv_problem(p, text, truncated)
    if fmt == "json" and (p.suffix.lower() == ".jsonl" or _looks_like_lines(lines)):
        return _jsonl_problem(p, lines)
    return None


def _looks_like_lines(lines: list[str]) -> bool:
    """A ``.json`` file whose first line is a whole JSON object is JSON Lines (else: an array or one
    pretty-printed document, which `datasets` reads or rejects itself)."""
    first = next((ln for ln in lines if ln.strip()), "")
    try:
        return isinstance(json.loads(first), dict)
    except ValueError:
        return False


def _decode(p: Path, raw: bytes, truncated: bool) -> tuple[str, str | None]:
    try:
        return raw.decode("utf-8-sig"), None  # a byte-order mark is not part of the first field's name
    except UnicodeDecodeError as exc:
        if truncated and exc.start >= len(raw) - 4:  # a character cut by the head's end
            return raw[: exc.start].decode("utf-8"), None
        line = raw.count(b"\n", 0, exc.start) + 1
        byte = raw[exc.start]
        return "", (
            f"{p}: line {line}: not UTF-8 (byte 0x{byte:02x} at offset {exc.start}). Data files are read as UTF-8: "
            f"convert it, e.g. `iconv -f latin1 -t utf-8 {p.name} > {p.stem}.utf8{p.suffix}`"
        )


def _jsonl_problem(p: Path, lines: list[str]) -> str | None:
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            return (f"{p}: line {lineno}: not a JSON record ({exc.args[0] if exc.args else exc}). Each line of a JSON "
                    "Lines file is one JSON object: fix or remove the line")
        if not isinstance(record, dict):
            return f"{p}: line {lineno}: a JSON {type(record).__name__}, not an object with fields"
        bad = _invalid_unicode(record)
        if bad is not None:
            return (f"{p}: line {lineno}: field {bad[0]!r} holds {bad[1]}, which is not valid Unicode (a lone "
                    "surrogate escape). Fix the text or remove the line")
    return None


def _csv_problem(p: Path, text: str, truncated: bool) -> str | None:
    reader = csv.reader(io.StringIO(text), delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
    try:
        header = next(reader, None)
        if header is None:
            return f"{p} is empty: it holds no records"
        if not truncated and next(reader, None) is None:
            return f"{p} has a header ({', '.join(header)}) but no rows: it holds no records"
    except csv.Error as exc:
        return f"{p}: line {reader.line_num}: not readable as CSV ({exc})"
    return None


def _invalid_unicode(value: Any, field: str = "") -> tuple[str, str] | None:
    """(field, the offending code point) of the first string that is not encodable as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return field, f"U+{ord(value[exc.start]):04X}"
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            found = _invalid_unicode(v, str(k))
            if found:
                return found
    if isinstance(value, list):
        for v in value:
            found = _invalid_unicode(v, field)
            if found:
                return found
    return None


def invalid_text(texts: list[Any], first_id: int = 0) -> str | None:
    """For texts given in Python: ``example 3: U+D800`` for the first that is not valid Unicode."""
    for i, t in enumerate(texts):
        found = _invalid_unicode(t)
        if found:
            return f"example {first_id + i}{f' field {found[0]!r}' if found[0] else ''} holds {found[1]}"
    return None


__all__ = ["find_problem", "invalid_text"]
