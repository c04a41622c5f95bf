"""The embedded UD English EWT set: labels of real sentences worked out by hand from their CoNLL-U lines,
edge cases of the format, and the packaged file equal to what the builder makes from the source."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pytest
from conftest import SHARED

from probing.data import ud_ewt
from probing.data.loaders import read_conllu

UD = SHARED / "data" / "ud-english-ewt"
needs_source = pytest.mark.skipif(not UD.is_dir(), reason="../shared/data/ud-english-ewt is absent")

NOMINATIONS = "weblog-blogspot.com_nominations_20041117172713_ENG_20041117_172713"
PROPHET = "weblog-blogspot.com_aggressivevoicedaily_20060814163400_ENG_20060814_163400-0007"

# Labels worked out by hand from each sentence's CoNLL-U lines (tense, subj_number, obj_number, length, depth,
# question). Depth counts words on the longest root-to-leaf path; length counts syntactic words.
HAND_CHECKED = {
    # "From the AP comes this story :" -- root "comes" (VBZ, Fin, Tense=Pres); nsubj "story" Number=Sing; the root
    # has no obj; 7 words -> 04-07; comes(1) > AP(2) > From, the(3); comes > story(2) > this(3): depth 3.
    f"{NOMINATIONS}-0001": ("Pres", "Sing", None, "04-07", "3", False),
    # "President Bush on Tuesday nominated two individuals to replace retiring jurists on federal courts in the
    # Washington area." -- root "nominated" (VBD, Fin, Past); nsubj "Bush" Sing; obj "individuals" Plur; 19 words
    # -> 17-24; nominated(1) > replace(2, advcl) > jurists(3) > courts(4) > area(5) > Washington(6): depth 6 -> 6+.
    f"{NOMINATIONS}-0002": ("Past", "Sing", "Plur", "17-24", "6+", False),
    # "you don't know what that means?" -- "don't" is the token 2-3, words "do" + "n't": 8 words -> 08-11. Root
    # "know" is VerbForm=Inf; its aux "do" is Fin, Tense=Pres -> Pres. nsubj "you" has no Number in EWT -> None;
    # "what" is the obj of "means" (a ccomp), not of the root -> None. know(1) > means(2) > what, that(3): 3.
    # The last word is "?": a question.
    "email-enronsent23_13-0007": ("Pres", None, None, "08-11", "3", True),
    # "you aren't going in for the wedding until sunday now?" -- root "going" is Tense=Pres but VerbForm=Part (not
    # finite); its aux "are" is Fin, Pres -> Pres. Subject "you" -> None; no obj. 12 words (are + n't) -> 12-16;
    # going(1) > wedding(2) > for, the(3): 3. Ends in "?".
    "email-enronsent23_14-0001": ("Pres", None, None, "12-16", "3", True),
    # "Staff were pleasant." -- copular: root "pleasant" (ADJ, no verb form); its cop "were" is Fin, Tense=Past
    # -> Past. nsubj "Staff" Number=Plur. No obj. 4 words -> 04-07; every word hangs off the root: depth 2 -> 1-2.
    "reviews-372582-0002": ("Past", "Plur", None, "04-07", "1-2", False),
    # "i will let you know later." (test file) -- root "let" is Inf; its aux "will" is Fin without Tense (a
    # modal) -> None. nsubj "i" Sing. obj "you" has no Number -> None. 7 words; all attach to the root: depth 2.
    "email-enronsent23_01-0002": (None, "Sing", None, "04-07", "1-2", False),
    # '"They can freely write anything they like about our prophet, ... sent to prison," he added.' -- has an
    # empty node 8.1 (left out: 33 words -> 25+). Root "added" (VBD, Fin, Past); nsubj "he" Sing; the root has a
    # ccomp, no obj -> None. added(1) > write(2) > fined(3, conj) > raises(4, advcl) > doubts(5) > Holocaust(6)
    # > the(7): depth 7 -> 6+. Ends in '.': no question.
    PROPHET: ("Past", "Sing", None, "25+", "6+", False),
}

# two of the sentences above as they are in the files: a multiword token and an empty node
CONLLU = """\
# sent_id = email-enronsent23_13-0007
# text = you don't know what that means?
1	you	you	PRON	PRP	Case=Nom|Person=2|PronType=Prs	4	nsubj	4:nsubj	_
2-3	don't	_	_	_	_	_	_	_	_
2	do	do	AUX	VBP	Mood=Ind|Number=Sing|Person=2|Tense=Pres|VerbForm=Fin	4	aux	4:aux	_
3	n't	not	PART	RB	Polarity=Neg	4	advmod	4:advmod	_
4	know	know	VERB	VB	VerbForm=Inf	0	root	0:root	_
5	what	what	PRON	WP	PronType=Int	7	obj	7:obj	_
6	that	that	PRON	DT	Number=Sing|PronType=Dem	7	nsubj	7:nsubj	_
7	means	mean	VERB	VBZ	Mood=Ind|Number=Sing|Person=3|Tense=Pres|VerbForm=Fin	4	ccomp	4:ccomp	_
8	?	?	PUNCT	.	_	4	punct	4:punct	_

# sent_id = empty-node
# text = They can write anything they like.
1	They	they	PRON	PRP	Case=Nom|Number=Plur|Person=3|PronType=Prs	3	nsubj	3:nsubj	_
2	can	can	AUX	MD	VerbForm=Fin	3	aux	3:aux	_
3	write	write	VERB	VB	VerbForm=Inf	0	root	0:root	_
4	anything	anything	PRON	NN	Number=Sing|PronType=Ind	3	obj	3:obj|6.1:obj	_
5	they	they	PRON	PRP	Case=Nom|Number=Plur|Person=3|PronType=Prs	6	nsubj	6:nsubj	_
6	like	like	VERB	VBP	Mood=Ind|Number=Plur|Person=3|Tense=Pres|VerbForm=Fin	4	acl:relcl	4:acl:relcl	_
6.1	write	write	VERB	VB	VerbForm=Inf	_	_	6:xcomp	CopyOf=3
7	.	.	PUNCT	.	_	3	punct	3:punct	_

# sent_id = lone-root
# text = Thanks
1	Thanks	thanks	NOUN	NNS	Number=Plur	0	root	0:root	_

# sent_id = quoted-question
# text = He asked "why?"
1	He	he	PRON	PRP	Case=Nom|Gender=Masc|Number=Sing|Person=3|PronType=Prs	2	nsubj	2:nsubj	_
2	asked	ask	VERB	VBD	Mood=Ind|Number=Sing|Person=3|Tense=Past|VerbForm=Fin	0	root	0:root	_
3	"	"	PUNCT	``	_	4	punct	4:punct	_
4	why	why	ADV	WRB	PronType=Int	2	obj	2:obj	_
5	?	?	PUNCT	.	_	4	punct	4:punct	_
6	"	"	PUNCT	''	_	4	punct	4:punct	_
"""
LABELS = ud_ewt.SENTENCE_LABELS


@pytest.fixture(scope="module")
def packaged() -> dict[str, dict]:
    return {r["sent_id"]: r for r in ud_ewt.load()}


def test_hand_checked_sentences_of_the_packaged_set(packaged):
    for sent_id, expected in HAND_CHECKED.items():
        record = packaged[sent_id]
        assert tuple(record[k] for k in LABELS) == expected, (sent_id, record["text"])
    assert packaged["email-enronsent23_01-0002"]["split"] == "test" and packaged[PROPHET]["split"] == "train"
    assert len(packaged[PROPHET]["words"]) == 33  # the empty node 8.1 is not a word


def test_labels_and_words_from_conllu_lines(tmp_path):
    path = tmp_path / "x-ud-dev.conllu"
    path.write_text(CONLLU)
    got = {r["sent_id"]: r for r in (ud_ewt.labeled_sentence(s, "train") for s in ud_ewt.read_treebank(path))}
    # the word-level set has the format of the CoNLL-U loader (multiword ranges and empty nodes left out)
    for ref in read_conllu(path):
        assert [got[ref["sent_id"]][k] for k in ("text", "words", "upos", "deprel")] == [
            ref[k] for k in ("text", "words", "upos", "deprel")]
    dont = got["email-enronsent23_13-0007"]
    assert dont["words"] == ["you", "do", "n't", "know", "what", "that", "means", "?"]
    assert tuple(dont[k] for k in LABELS) == HAND_CHECKED["email-enronsent23_13-0007"]
    # empty node 6.1 skipped: 7 words; a modal is finite without Tense; "They" Plur; obj "anything" Sing;
    # write(1) > anything(2) > like(3) > they(4)
    assert tuple(got["empty-node"][k] for k in LABELS) == (None, "Plur", "Sing", "04-07", "4", False)
    assert len(got["empty-node"]["words"]) == 7
    # one word: a noun root, no verb, no subject; depth 1
    assert tuple(got["lone-root"][k] for k in LABELS) == (None, None, None, "01-03", "1-2", False)
    lone = next(s for s in ud_ewt.read_treebank(path) if s["sent_id"] == "lone-root")
    assert ud_ewt.tree_depth(lone["tokens"]) == 1
    # the closing quote after "?" still makes a question; obj "why" has no Number
    assert tuple(got["quoted-question"][k] for k in LABELS) == ("Past", "Sing", None, "04-07", "3", True)


def test_bins_at_their_edges():
    assert [ud_ewt.length_bin(n) for n in (1, 3, 4, 7, 8, 11, 12, 16, 17, 24, 25, 200)] == [
        "01-03", "01-03", "04-07", "04-07", "08-11", "08-11", "12-16", "12-16", "17-24", "17-24", "25+", "25+"]
    assert [ud_ewt.depth_bin(d) for d in (1, 2, 3, 4, 5, 6, 13)] == ["1-2", "1-2", "3", "4", "5", "6+", "6+"]


def test_a_broken_tree_is_a_clear_error(tmp_path):
    from probing.errors import DatasetError

    path = tmp_path / "bad.conllu"
    path.write_text("1\ta\ta\tX\tX\t_\t2\tdep\t_\t_\n2\tb\tb\tX\tX\t_\t1\tdep\t_\t_\n\n")
    with pytest.raises(DatasetError, match="no single root"):
        list(ud_ewt.read_treebank(path))


def test_the_build_is_reproducible_and_ships_the_license(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "en_ewt-ud-dev.conllu").write_text(CONLLU)
    (src / "en_ewt-ud-test.conllu").write_text(CONLLU.split("\n\n")[0] + "\n\n")
    for name in ud_ewt.ATTRIBUTION_FILES:
        (src / name).write_text(f"{name} text")
    a, b = ud_ewt.build(src, tmp_path / "a"), ud_ewt.build(src, tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()  # no time or file name in the gzip header
    rows = [json.loads(line) for line in gzip.decompress(a.read_bytes()).decode().splitlines()]
    assert [r["split"] for r in rows] == ["train"] * 4 + ["test"]
    assert (tmp_path / "a" / "LICENSE.txt").read_text() == "LICENSE.txt text"
    assert "CC BY-SA 4.0" in (tmp_path / "a" / ud_ewt.NOTICE_FILE).read_text()


def test_load_is_a_seeded_sample_of_both_splits():
    first = ud_ewt.load(300, seed=0)
    assert first == ud_ewt.load(300, seed=0) and first != ud_ewt.load(300, seed=1)
    assert ud_ewt.load(500, seed=0)[:300] == first  # a prefix (data.limit) is the same sample, shorter
    splits = [r["split"] for r in first]
    assert 100 < splits.count("train") < 200 and splits.count("train") + splits.count("test") == 300
    assert len(ud_ewt.load()) == 4078


@needs_source
def test_the_packaged_file_is_what_the_builder_makes_from_the_treebank():
    built = ud_ewt.encode_records(ud_ewt.build_records(UD))
    assert ud_ewt.packaged_bytes() == built, "rebuild it: python -m probing.data.ud_ewt --build"
    here = Path(ud_ewt.__file__).parent / ud_ewt.DATA_DIR
    for name in ud_ewt.ATTRIBUTION_FILES:
        assert (here / name).read_bytes() == (UD / name).read_bytes()


def test_the_wheel_ships_the_data_and_its_license(tmp_path):
    """A non-editable install gets the data: the wheel setuptools builds from pyproject.toml holds it."""
    import os

    build_meta = pytest.importorskip("setuptools.build_meta")
    root = Path(__file__).resolve().parents[1]
    cwd = os.getcwd()
    os.chdir(root)
    try:
        name = build_meta.build_wheel(str(tmp_path))
    finally:
        os.chdir(cwd)
    names = set(zipfile.ZipFile(tmp_path / name).namelist())
    for f in (ud_ewt.DATA_FILE, "LICENSE.txt", "README.md", ud_ewt.NOTICE_FILE):
        assert f"probing/data/{ud_ewt.DATA_DIR}/{f}" in names
