"""The embedded default dataset: deterministic English sentences with labels a probe can look for.

Each sentence is built from a template ``<subject> <verb phrase> the <adjective> <object> <adverb>.``
so that its labels are known exactly:

- ``tense``: past, present or future (from the verb form);
- ``number``: singular or plural subject;
- ``negation``: 1 if the verb is negated;
- ``sentiment``: positive or negative (the adjective's polarity, flipped by negation);
- ``split``: train (80%) or test.
"""

from __future__ import annotations

import random
from typing import Any

SUBJECTS = [
    ("the teacher", "the teachers"),
    ("my neighbor", "my neighbors"),
    ("the child", "the children"),
    ("the doctor", "the doctors"),
    ("a student", "some students"),
    ("the manager", "the managers"),
    ("our pilot", "our pilots"),
    ("the artist", "the artists"),
    ("his cousin", "his cousins"),
    ("the farmer", "the farmers"),
    ("the old man", "the old men"),
    ("the woman", "the women"),
    ("the critic", "the critics"),
    ("her friend", "her friends"),
    ("the nurse", "the nurses"),
    ("the engineer", "the engineers"),
]
# lemma, 3rd person singular present, past
VERBS = [
    ("enjoy", "enjoys", "enjoyed"),
    ("like", "likes", "liked"),
    ("love", "loves", "loved"),
    ("recommend", "recommends", "recommended"),
    ("praise", "praises", "praised"),
    ("describe", "describes", "described"),
    ("remember", "remembers", "remembered"),
    ("watch", "watches", "watched"),
    ("review", "reviews", "reviewed"),
    ("discuss", "discusses", "discussed"),
]
POSITIVE = ["wonderful", "delightful", "brilliant", "charming", "excellent", "lovely", "superb", "pleasant"]
NEGATIVE = ["terrible", "awful", "boring", "dreadful", "horrible", "dull", "miserable", "disappointing"]
OBJECTS = ["movie", "meal", "concert", "book", "trip", "play", "lecture", "hotel", "game", "song", "museum", "show"]
ADVERBS = {
    "past": ["yesterday", "last week", "last year", "before the storm", "two days ago"],
    "present": ["every day", "these days", "now", "every weekend", "as usual"],
    "future": ["tomorrow", "next week", "next year", "after lunch", "soon"],
}
LABEL_FIELDS = ("tense", "number", "negation", "sentiment")


def _verb_phrase(verb: tuple[str, str, str], tense: str, plural: bool, negated: bool) -> str:
    lemma, third, past = verb
    if tense == "past":
        return f"did not {lemma}" if negated else past
    if tense == "future":
        return f"will not {lemma}" if negated else f"will {lemma}"
    if negated:
        return f"do not {lemma}" if plural else f"does not {lemma}"
    return lemma if plural else third


def generate(n_examples: int = 3000, seed: int = 0) -> list[dict[str, Any]]:
    """Generate ``n_examples`` labeled sentences; the same ``seed`` gives the same list."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(n_examples):
        tense = rng.choice(("past", "present", "future"))
        plural = rng.random() < 0.5
        negated = rng.random() < 0.5
        positive = rng.random() < 0.5
        subject = rng.choice(SUBJECTS)[1 if plural else 0]
        verb = _verb_phrase(rng.choice(VERBS), tense, plural, negated)
        adjective = rng.choice(POSITIVE if positive else NEGATIVE)
        text = f"{subject} {verb} the {adjective} {rng.choice(OBJECTS)} {rng.choice(ADVERBS[tense])}."
        out.append(
            {
                "text": text[0].upper() + text[1:],
                "tense": tense,
                "number": "plural" if plural else "singular",
                "negation": int(negated),
                "sentiment": "positive" if positive != negated else "negative",
                "split": "test" if i % 5 == 4 else "train",
            }
        )
    return out
