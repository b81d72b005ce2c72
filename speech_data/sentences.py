"""Seeded English sentence generator for the offline demo corpus.

A small phrase-structure grammar over a fixed vocabulary (a few hundred words chosen to cover
the English phone inventory) produces sentences of one to five clauses, so utterances last from
about one to about fifteen seconds when spoken. Everything is driven by the ``random.Random``
passed in: the same generator state gives the same sentence on every machine.

Sentences contain lower-case words separated by single spaces and no punctuation, so the
LibriSpeech-style transcript is simply ``sentence.upper()`` and it matches what was spoken.
"""

from __future__ import annotations

import random

NAMES = (
    "mary john thomas anna robert helen william margaret edward alice george elizabeth henry "
    "catherine arthur emily walter clara frank martha peter susan charles lucy james dorothy "
    "oliver ruth samuel grace daniel rose"
).split()

NOUNS = (
    "man woman child boy girl farmer captain doctor teacher soldier sailor king queen stranger "
    "neighbor house garden river forest mountain village city road bridge window door table "
    "letter book horse dog cat bird ship boat lamp fire stone tree field church castle market "
    "island valley kitchen basket candle coat hat key box bottle wagon train clock picture song "
    "story question answer journey friend brother sister mother father uncle servant merchant "
    "hunter painter priest lady gentleman wolf fox sheep cow apple bread cheese coffee water "
    "chair bell wheel shadow mirror cottage meadow orchard harbor tower ladder engine whistle "
    "feather pocket blanket violin soup judge widow pupil guard thief baker miller cousin"
).split()

ADJECTIVES = (
    "old young little great small tall dark bright quiet heavy gentle strange silent cold warm "
    "green red blue golden empty narrow broad ancient careful hungry tired happy honest curious "
    "distant wooden silver lonely proud clever busy patient rough smooth sudden yellow foolish "
    "friendly anxious ordinary enormous beautiful wicked thick thin pale"
).split()

TRANSITIVE_VERBS = (
    "found opened carried watched followed painted visited built closed remembered wrote read "
    "crossed noticed lifted bought sold brought mended cleaned pushed pulled touched answered "
    "promised borrowed hid forgot loved feared admired described measured tied washed"
).split()

INTRANSITIVE_VERBS = (
    "waited laughed smiled walked slept arrived returned listened whispered wandered trembled "
    "hesitated sang shouted paused stayed worked prayed nodded sighed vanished stumbled"
).split()

ADVERBS = (
    "slowly quietly suddenly carefully again often early late together alone happily "
    "eagerly gravely softly proudly patiently"
).split()

PREPOSITIONS = "near behind beside under across through beyond inside over along toward above".split()

TIME_PHRASES = (
    "in the morning",
    "at night",
    "after dinner",
    "before the storm",
    "on the third day",
    "last winter",
    "early in the spring",
    "during the long summer",
    "every evening",
    "the next day",
    "a week later",
    "at midnight",
)

CONJUNCTIONS = "and but because while so when until although then".split()

NUMBERS = "two three four five six seven eight nine ten eleven twelve twenty forty".split()

POSSESSIVES = "his her their our my your".split()

# How many clauses a sentence has, and how often: mostly two or three, like read speech.
CLAUSE_COUNTS = (1, 2, 3, 4, 5)
CLAUSE_WEIGHTS = (0.18, 0.32, 0.28, 0.15, 0.07)


_IRREGULAR_PLURALS = {
    "child": "children", "man": "men", "woman": "women", "gentleman": "gentlemen",
    "wolf": "wolves", "thief": "thieves", "sheep": "sheep",
}
# Mass nouns never appear after a number ("twenty waters").
_MASS_NOUNS = frozenset("bread cheese coffee water soup".split())
COUNTABLE_NOUNS = tuple(noun for noun in NOUNS if noun not in _MASS_NOUNS)


def plural(noun: str) -> str:
    """English plural of a vocabulary noun (irregulars listed, the rest by spelling rules)."""
    if noun in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _article_for(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(rng: random.Random) -> str:
    form = rng.random()
    if form < 0.18:
        return rng.choice(NAMES)
    noun = rng.choice(NOUNS)
    if rng.random() < 0.5:
        noun = f"{rng.choice(ADJECTIVES)} {noun}"
    if form < 0.30:
        return f"{rng.choice(POSSESSIVES)} {noun}"
    if form < 0.40:
        return f"{_article_for(noun)} {noun}"
    if form < 0.48:
        return f"{rng.choice(('this', 'that', 'every'))} {noun}"
    return f"the {noun}"


def _prepositional_phrase(rng: random.Random) -> str:
    noun = rng.choice(NOUNS)
    if rng.random() < 0.4:
        noun = f"{rng.choice(ADJECTIVES)} {noun}"
    return f"{rng.choice(PREPOSITIONS)} the {noun}"


def _clause(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.38:
        words = [_noun_phrase(rng), rng.choice(TRANSITIVE_VERBS), _noun_phrase(rng)]
        if rng.random() < 0.4:
            words.append(_prepositional_phrase(rng))
    elif kind < 0.62:
        words = [_noun_phrase(rng), rng.choice(INTRANSITIVE_VERBS)]
        if rng.random() < 0.5:
            words.append(rng.choice(ADVERBS))
        if rng.random() < 0.6:
            words.append(_prepositional_phrase(rng))
    elif kind < 0.74:
        words = [rng.choice(TIME_PHRASES), _noun_phrase(rng), rng.choice(TRANSITIVE_VERBS), _noun_phrase(rng)]
    elif kind < 0.84:
        noun = plural(rng.choice(COUNTABLE_NOUNS))
        words = ["there were", rng.choice(NUMBERS), rng.choice(ADJECTIVES), noun, _prepositional_phrase(rng)]
    elif kind < 0.93:
        adjectives = rng.sample(ADJECTIVES, 2)
        words = [_noun_phrase(rng), "was", adjectives[0]]
        if rng.random() < 0.5:
            words += ["and", adjectives[1]]
    else:
        words = [rng.choice(NAMES), "said that", _noun_phrase(rng), rng.choice(INTRANSITIVE_VERBS)]
    return " ".join(words)


def make_sentence(rng: random.Random, num_clauses: int | None = None) -> str:
    """One sentence of ``num_clauses`` clauses (drawn from CLAUSE_WEIGHTS when None).

    Returns lower-case words separated by single spaces, without punctuation.
    """
    if num_clauses is None:
        num_clauses = rng.choices(CLAUSE_COUNTS, weights=CLAUSE_WEIGHTS)[0]
    parts = [_clause(rng)]
    for _ in range(num_clauses - 1):
        parts.append(rng.choice(CONJUNCTIONS))
        parts.append(_clause(rng))
    return " ".join(parts)
