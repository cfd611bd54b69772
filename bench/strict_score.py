"""The strict LoCoMo evidence rule (issue #13): an evidence turn counts as found only when ONE line that was
read covers at least half of that turn's content words.

Content words: the text lowercased, cut into word tokens (letters and digits, with an inner apostrophe
kept: "don't", "caroline's"), a possessive "'s" dropped ("caroline's" -> "caroline"), English stopwords
(STOPWORDS, NLTK's list plus contractions and a few chat fillers) removed; counted as a set. A line's
HTML entities are unescaped first (the proxy's injected block writes `&` as `&amp;`). A turn made only of
stopwords ("Wow, me too!") is scored on all its word tokens instead, so no evidence turn is dropped for it.

Lines are scored one at a time: words spread over several lines do not add up, so a block that names
every word somewhere but never the turn's content in one memory does not count.

    strict_found(["Caroline went to a LGBTQ support group"], ["I went to a LGBTQ support group yesterday"])
    -> [True]    # the line holds 4 of the turn's 5 content words (all but "yesterday")
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Sequence

THRESHOLD = 0.5

STOPWORDS = frozenset(
    """
    a about above after again against ain all am an and any are aren aren't as at be because been before being
    below between both but by can couldn couldn't d did didn didn't do does doesn doesn't doing don don't down
    during each few for from further had hadn hadn't has hasn hasn't have haven haven't having he he'd he'll
    he's her here here's hers herself him himself his how how's i i'd i'll i'm i've if in into is isn isn't it
    it'd it'll it's its itself just let's ll m ma me mightn mightn't more most mustn mustn't my myself needn
    needn't no nor not now o of off on once only or other our ours ourselves out over own re s same shan
    shan't she she'd she'll she's should should've shouldn shouldn't so some such t than that that's the their
    theirs them themselves then there there's these they they'd they'll they're they've this those through to
    too under until up ve very was wasn wasn't we we'd we'll we're we've were weren weren't what what's when
    when's where where's which while who who's whom why why's will with won won't wouldn wouldn't y you you'd
    you'll you're you've your yours yourself yourselves
    also could would might must shall may can't cannot got get gets getting really well oh ok okay yeah yes
    hey hi hello wow lol thanks thank thx haha hmm um uh
    """.split()
)

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def words(text: str) -> list[str]:
    """Lowercased word tokens, possessive "'s" dropped (stopwords kept)."""
    text = html.unescape(text).lower().replace("\u2019", "'").replace("\u2018", "'")
    out = []
    for token in _WORD.findall(text):
        if token.endswith("'s") and token not in STOPWORDS:
            token = token[:-2]
        out.append(token)
    return out


def content_words(text: str) -> frozenset[str]:
    """The text's content words as a set: its word tokens less STOPWORDS."""
    return frozenset(w for w in words(text) if w not in STOPWORDS)


def turn_words(text: str) -> frozenset[str]:
    """The words an evidence turn is scored on: its content words, or all its tokens when it has none."""
    return content_words(text) or frozenset(words(text))


def coverage(line: str | frozenset[str], turn: str | frozenset[str]) -> float:
    """The share of the turn's words (turn_words) that the line holds (0.0 for a turn with no words)."""
    target = turn_words(turn) if isinstance(turn, str) else turn
    if not target:
        return 0.0
    held = frozenset(words(line)) if isinstance(line, str) else line
    return len(target & held) / len(target)


def strict_found(
    lines: Iterable[str], evidence_texts: Sequence[str], threshold: float = THRESHOLD
) -> list[bool]:
    """For each evidence turn: whether one of the lines covers >= threshold of its words."""
    line_sets = [frozenset(words(line)) for line in lines]
    found = []
    for text in evidence_texts:
        target = turn_words(text)
        found.append(
            bool(target) and any(len(target & held) >= threshold * len(target) for held in line_sets)
        )
    return found


def strict_recall(lines: Iterable[str], evidence_texts: Sequence[str], threshold: float = THRESHOLD) -> float:
    """The share of the evidence turns found (strict_found); 0.0 when there is no evidence."""
    if not evidence_texts:
        return 0.0
    found = strict_found(lines, evidence_texts, threshold)
    return sum(found) / len(found)
