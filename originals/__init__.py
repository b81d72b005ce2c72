"""Compatibility with the two original projects' READMEs (DPHuBERT, MelHuBERT compression).

Only what a user copying a command from those READMEs needs and the toolkit's own layout does
not give: the original config paths, the original checkpoint layouts. Decisions are listed in
``docs/coming-from-originals.md``.
"""
