"""The embedded real-data default: English sentences of UD English EWT with SentEval-style labels.

The sentences are the dev and test files of the Universal Dependencies English Web Treebank (v2.15,
CC BY-SA 4.0; the license and attribution ship beside the data, in ``probing/data/ud_ewt_data/``).
Every label is computed here from the treebank's own annotation (its basic dependency tree and
morphological features), in the manner of the SentEval probing tasks (Conneau et al. 2018,
"What you can cram into a single vector"). ``None`` means "no value" (the label does not apply):
probes leave such rows out for that label only.

Sentence labels (one value per sentence):

- ``tense``: ``Past`` or ``Pres``, the tense of the main clause's finite verb. The finite verb is the
  first word, in sentence order, among the root and its ``aux`` / ``aux:pass`` / ``cop`` children
  whose VerbForm is Fin ("has been going": *has*; "the film is good": *is*; "nominated": the root
  itself). Its ``Tense`` feature is the label. ``None`` when there is no finite verb (fragments,
  headlines, "To be continued") or when it has no Tense (modals: "will go", "could have"; imperatives:
  "Go home"), as SentEval's Tense task has only the two classes.
- ``subj_number``: ``Sing`` or ``Plur``, the ``Number`` feature of the head of the root's first
  ``nsubj`` / ``nsubj:pass`` child (SentEval's SubjNum looks at the subject head's tag the same way:
  "John and Mary" counts as its head "John", Sing). ``None`` when the root has no nominal subject
  (imperatives, clausal subjects, fragments) or the head has no Number (EWT gives "you" none, nor
  numerals such as "two").
- ``obj_number``: ``Sing`` or ``Plur``, the same for the root's first ``obj`` child; ``None`` when the root
  has no direct object (most sentences) or its head has no Number.
- ``length``: the number of syntactic words (``words``: punctuation included, a multiword token such as
  "don't" counted as its two words *do* + *n't*), in six bins of about equal size on these files:
  ``01-03``, ``04-07``, ``08-11``, ``12-16``, ``17-24``, ``25+`` (SentEval's SentLen uses six bins too).
- ``depth``: the depth of the dependency tree, the most words on a path from the root to a leaf (a
  one-word sentence has depth 1, "Dogs bark." has depth 2), in bins ``1-2``, ``3``, ``4``, ``5``, ``6+``
  (SentEval's TreeDepth is on constituency trees; this is its dependency-tree counterpart).
- ``question``: True when the sentence's final punctuation (the trailing run of PUNCT words, so a
  closing quote or bracket after it still counts) contains a question mark.

Word-level set (one value per word, for ``+strategy=words``), in the format of
`probing.data.loaders.load_conllu`: ``words`` (the forms of the syntactic words; multiword-token
lines such as ``1-2 don't`` and empty nodes such as ``8.1`` are left out), ``upos`` and ``deprel``
(with its subtype, e.g. ``nsubj:pass``).

Each sentence also has ``sent_id``, ``text`` (the treebank's original text) and ``split``: ``train`` for
the dev file, ``test`` for the test file. The treebank's own split keeps every document (a blog post,
an email thread) on one side, so sentences of one text never sit on both sides of the probe's split,
and each side keeps the mix of the five web genres.

``data=ud_ewt`` (the default of ``python -m probing``, `probing.config.UDEWTData`) takes 2,500 of the
4,078 sentences, in a seeded random order; pooled runs read each sentence's original ``text`` and store
the sentence fields only, word-level runs (``+strategy=words``) read ``words`` and store ``upos`` and
``deprel`` per word, and the probes after extraction take the labels of that level.

The packaged file is built by ``python -m probing.data.ud_ewt --build [SOURCE_DIR]`` from the CoNLL-U
files (default source: ``../shared/data/ud-english-ewt``); a test checks that it equals what the
builder makes from the source.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import random
import shutil
import sys
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from probing.data.loaders import conllu_blocks
from probing.errors import DatasetError

#: the packaged folder (data, LICENSE.txt, README.md) and the data file in it
DATA_DIR = "ud_ewt_data"
DATA_FILE = "ud_ewt.jsonl.gz"
#: source files, in the order they are written, and the split each one gives
SOURCE_FILES = (("en_ewt-ud-dev.conllu", "train"), ("en_ewt-ud-test.conllu", "test"))
#: files copied from the source folder beside the data
ATTRIBUTION_FILES = ("LICENSE.txt", "README.md")
DEFAULT_SOURCE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "ud-english-ewt"

NOTICE_FILE = "NOTICE.md"
NOTICE = """\
# ud_ewt.jsonl.gz: derived from UD English EWT

This file is derived from the Universal Dependencies English Web Treebank (UD_English-EWT v2.15,
https://github.com/UniversalDependencies/UD_English-EWT), whose dev and test files are licensed under
CC BY-SA 4.0 (LICENSE.txt beside this file; README.md is the attribution of the source copy it was built
from). This derived file is shared under the same license.

Changes made: each sentence keeps its sent_id, text, word forms, UPOS and dependency relations; the
other columns are dropped, and labels computed from the annotation are added (tense, subj_number,
obj_number, length, depth, question, split), as defined in probing/data/ud_ewt.py, whose
`python -m probing.data.ud_ewt --build` wrote it.
"""
SENTENCE_LABELS = ("tense", "subj_number", "obj_number", "length", "depth", "question")
WORD_LABELS = ("upos", "deprel")
#: (largest length in the bin, its name); longer sentences are "25+"
LENGTH_BINS = ((3, "01-03"), (7, "04-07"), (11, "08-11"), (16, "12-16"), (24, "17-24"))
LONGEST_LENGTH_BIN = "25+"
DEPTH_BINS = ((2, "1-2"), (3, "3"), (4, "4"), (5, "5"))
DEEPEST_DEPTH_BIN = "6+"
TENSES = ("Past", "Pres")
NUMBERS = ("Sing", "Plur")
FINITE_CHILDREN = ("aux", "aux:pass", "cop")
SUBJECTS = ("nsubj", "nsubj:pass")


# -- reading CoNLL-U -----------------------------------------------------------------------------------
def read_treebank(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Sentences of a CoNLL-U file: ``sent_id``, ``text`` and ``tokens``, the syntactic words as dicts
    (``form``, ``upos``, ``feats`` (a dict), ``head`` (0 for the root, else a 1-based word index),
    ``deprel``). Multiword-token lines and empty nodes are skipped, as `probing.data.loaders.read_conllu`
    does, so word ``i`` has id ``i + 1`` and heads index the list directly."""
    for comments, rows in conllu_blocks(path):
        tokens: list[dict[str, Any]] = []
        for lineno, cols in rows:
            if cols[0] != str(len(tokens) + 1) or not cols[6].isdigit():
                raise DatasetError(f"{path}:{lineno}: word id {cols[0]!r} or head {cols[6]!r} out of sequence.")
            tokens.append({"form": cols[1], "upos": cols[3], "feats": parse_feats(cols[5]),
                           "head": int(cols[6]), "deprel": cols[7]})
        yield _sentence(comments, tokens, path)


def _sentence(comments: dict[str, str], tokens: list[dict[str, Any]], path: Any) -> dict[str, Any]:
    n = len(tokens)
    bad = [t["head"] for t in tokens if t["head"] > n]
    if bad or sum(t["head"] == 0 for t in tokens) != 1:
        sent = comments.get("sent_id", "?")
        raise DatasetError(f"{path}: sentence {sent} has no single root, or a head past its end.")
    return {"sent_id": comments.get("sent_id", ""), "text": comments.get("text", " ".join(t["form"] for t in tokens)),
            "tokens": tokens}


def parse_feats(column: str) -> dict[str, str]:
    """The FEATS column (``Number=Sing|Person=3``) as a dict; ``_`` is none."""
    if column in ("", "_"):
        return {}
    return dict(item.partition("=")[::2] for item in column.split("|"))


# -- the labels ----------------------------------------------------------------------------------------
def _root(tokens: Sequence[dict[str, Any]]) -> int:
    return next(i for i, t in enumerate(tokens) if t["head"] == 0)


def _children(tokens: Sequence[dict[str, Any]], head: int, relations: Sequence[str]) -> list[int]:
    """Indices of the words attached to word ``head`` (0-based) by one of ``relations``, in word order."""
    return [i for i, t in enumerate(tokens) if t["head"] == head + 1 and t["deprel"] in relations]


def tense(tokens: Sequence[dict[str, Any]]) -> str | None:
    """``Past`` / ``Pres`` of the main clause's first finite verb (root or its aux/cop); None if none."""
    root = _root(tokens)
    candidates = sorted([root, *_children(tokens, root, FINITE_CHILDREN)])
    finite = next((i for i in candidates if tokens[i]["feats"].get("VerbForm") == "Fin"), None)
    if finite is None:
        return None
    value = tokens[finite]["feats"].get("Tense")
    return value if value in TENSES else None


def _number_of(tokens: Sequence[dict[str, Any]], relations: Sequence[str]) -> str | None:
    found = _children(tokens, _root(tokens), relations)
    if not found:
        return None
    value = tokens[found[0]]["feats"].get("Number")
    return value if value in NUMBERS else None


def subj_number(tokens: Sequence[dict[str, Any]]) -> str | None:
    """``Sing`` / ``Plur`` of the root's first nominal subject's head; None if none or no Number."""
    return _number_of(tokens, SUBJECTS)


def obj_number(tokens: Sequence[dict[str, Any]]) -> str | None:
    """``Sing`` / ``Plur`` of the root's first direct object's head; None if none or no Number."""
    return _number_of(tokens, ("obj",))


def tree_depth(tokens: Sequence[dict[str, Any]]) -> int:
    """The most words on a path from the root down to a word (a lone root: 1)."""
    depth: dict[int, int] = {}
    for start in range(len(tokens)):
        chain, i = [], start
        while i not in depth:
            if tokens[i]["head"] == 0:
                depth[i] = 1
                break
            chain.append(i)
            i = tokens[i]["head"] - 1
            if len(chain) > len(tokens):
                raise DatasetError("The dependency tree has a cycle.")
        for j in reversed(chain):
            depth[j] = depth[i] + 1
            i = j
    return max(depth.values())


def _bin(value: int, bins: Sequence[tuple[int, str]], last: str) -> str:
    return next((name for top, name in bins if value <= top), last)


def length_bin(n_words: int) -> str:
    return _bin(n_words, LENGTH_BINS, LONGEST_LENGTH_BIN)


def depth_bin(depth: int) -> str:
    return _bin(depth, DEPTH_BINS, DEEPEST_DEPTH_BIN)


def is_question(tokens: Sequence[dict[str, Any]]) -> bool:
    """True when the trailing run of PUNCT words holds a question mark."""
    for t in reversed(tokens):
        if t["upos"] != "PUNCT":
            return False
        if "?" in t["form"]:
            return True
    return False


def labeled_sentence(sentence: dict[str, Any], split: str) -> dict[str, Any]:
    """One record of the packaged set: ids, text, the word-level lists, the split and the labels."""
    tokens = sentence["tokens"]
    return {
        "sent_id": sentence["sent_id"],
        "text": sentence["text"],
        "words": [t["form"] for t in tokens],
        "upos": [t["upos"] for t in tokens],
        "deprel": [t["deprel"] for t in tokens],
        "split": split,
        "tense": tense(tokens),
        "subj_number": subj_number(tokens),
        "obj_number": obj_number(tokens),
        "length": length_bin(len(tokens)),
        "depth": depth_bin(tree_depth(tokens)),
        "question": is_question(tokens),
    }


# -- building and loading the packaged file ----------------------------------------------------------
def build_records(source: str | os.PathLike[str] = DEFAULT_SOURCE) -> list[dict[str, Any]]:
    """The labeled sentences of the source folder's dev and test files, in file order."""
    folder = Path(source)
    missing = [name for name, _ in SOURCE_FILES if not (folder / name).is_file()]
    if missing:
        raise DatasetError(f"{folder}: no {missing} (the UD English EWT dev and test CoNLL-U files).")
    return [labeled_sentence(s, split) for name, split in SOURCE_FILES for s in read_treebank(folder / name)]


def encode_records(records: Sequence[dict[str, Any]]) -> bytes:
    """The JSONL text of ``records`` (one sentence a line, keys in a fixed order), UTF-8."""
    return "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records).encode()


def build(source: str | os.PathLike[str] = DEFAULT_SOURCE, out_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write the gzipped JSONL (the same bytes for the same source: no time or name in the gzip header)
    and copy the license and attribution beside it; returns the data file's path."""
    folder = Path(source)
    out = Path(out_dir) if out_dir is not None else Path(__file__).resolve().parent / DATA_DIR
    records = build_records(folder)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(encode_records(records))
    (out / DATA_FILE).write_bytes(buffer.getvalue())
    for name in ATTRIBUTION_FILES:
        shutil.copyfile(folder / name, out / name)
    (out / NOTICE_FILE).write_text(NOTICE)
    return out / DATA_FILE


def packaged_bytes() -> bytes:
    """The packaged JSONL (decompressed)."""
    ref = resources.files("probing.data").joinpath(DATA_DIR, DATA_FILE)
    try:
        return gzip.decompress(ref.read_bytes())
    except FileNotFoundError:
        raise DatasetError(
            f"The packaged UD English EWT file ({DATA_DIR}/{DATA_FILE}) is missing from this install of probing; "
            "reinstall it, or build it with `python -m probing.data.ud_ewt --build <folder of the CoNLL-U files>`."
        ) from None


def load(n_examples: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The packaged sentences in a seeded random order (dev and test mixed), the first ``n_examples`` of
    them (None: all 4,078), so any prefix (``data.limit``) is a sample of both splits."""
    records = [json.loads(line) for line in packaged_bytes().decode().splitlines()]
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    if n_examples is not None:
        order = order[: int(n_examples)]
    return [records[i] for i in order]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m probing.data.ud_ewt", description=__doc__.split("\n")[0])
    parser.add_argument("--build", action="store_true", help="build the packaged file from the CoNLL-U files")
    parser.add_argument("source", nargs="?", default=str(DEFAULT_SOURCE), help="folder of the UD EWT dev/test files")
    parser.add_argument("--out", default=None, help="output folder (default: the package's own)")
    args = parser.parse_args(argv)
    if not args.build:
        parser.print_help()
        return 0
    try:
        path = build(args.source, args.out)
    except DatasetError as exc:
        print(f"probing: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
