"""Turn espeak-ng's IPA output into a consistent phone sequence.

``espeak-ng --ipa --sep=' '`` prints one token per espeak phoneme, words separated by two
spaces, clauses by newlines, and stress marks glued to vowels. espeak's phonemes are not a
clean phone set: some bundle a vowel with a following r or l (``ɑːɹ``, ``əl``), a diphthong
with a schwa (``aɪə``), or carry a diacritic (``t̪``). We therefore:

1. drop stress marks (ˈ ˌ), combining diacritics and palatalisation (ʲ); normalise ASCII ``:``
   and a doubled vowel (``aa``) to the length mark ``ː``;
2. split every token greedily into the longest units of a fixed table: affricates (tʃ dʒ),
   diphthongs (aɪ aʊ eɪ oʊ ɔɪ əʊ eə ɪə ʊə ...), a vowel plus ``ː``, else single symbols.
   So ``ɑːɹ`` -> ``ɑː ɹ``, ``əl`` -> ``ə l``, ``aɪə`` -> ``aɪ ə``, whatever the accent.

Word boundaries are removed: the result is a flat list of phones.
"""

from __future__ import annotations

import unicodedata

STRESS_MARKS = "ˈˌ"
LENGTH_MARK = "ː"
VOWELS = frozenset("aeiouyæɐɑɒɔəɚɛɜɝɞɤɨɪʉʊʌʏøœɘɵɯᵻ")
AFFRICATES = ("tʃ", "dʒ")
DIPHTHONGS = (
    "aɪ", "aʊ", "eɪ", "oʊ", "ɔɪ", "əʊ", "eə", "ɪə", "iə", "ʊə", "ɛə", "oə", "ɔə", "ɑə",
    "ʌʊ", "æʊ", "əɪ", "əu", "ʌʉ", "ei", "oɪ",
)  # fmt: skip
_MULTI_SYMBOL_UNITS = tuple(sorted(AFFRICATES + DIPHTHONGS, key=len, reverse=True))
_DROPPED = set(STRESS_MARKS) | {"ʲ", "\u200d"}  # ʲ: palatalised variants; U+200D: zero-width joiner


def _normalise(token: str) -> str:
    token = token.replace(":", LENGTH_MARK)
    kept = [
        character
        for character in unicodedata.normalize("NFD", token)
        if character not in _DROPPED and unicodedata.category(character) != "Mn"
    ]
    token = "".join(kept)
    # espeak writes some long vowels as a doubled letter (en-029 "aa").
    for vowel in VOWELS:
        token = token.replace(vowel + vowel, vowel + LENGTH_MARK)
    return token


def split_token(token: str) -> list[str]:
    """Split one normalised espeak token into phones by greedy longest match."""
    phones: list[str] = []
    position = 0
    while position < len(token):
        unit = next((u for u in _MULTI_SYMBOL_UNITS if token.startswith(u, position)), token[position])
        position += len(unit)
        if position < len(token) and token[position] == LENGTH_MARK:
            unit += LENGTH_MARK
            position += 1
        phones.append(unit)
    return phones


def ipa_to_phones(espeak_output: str) -> list[str]:
    """Phones of an ``espeak-ng --ipa --sep=' '`` output (any number of lines), in order."""
    phones: list[str] = []
    for token in espeak_output.split():
        normalised = _normalise(token)
        if normalised:
            phones += split_token(normalised)
    return phones
