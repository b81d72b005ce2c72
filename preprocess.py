"""Prepare MelHuBERT training data: ``python preprocess.py --tsv TSV --out DIR [options]``.

Thin entry point; see ``speech_data/mel_preprocess.py`` (and ``--help``) for what it does.
"""

import sys

from speech_data.mel_preprocess import main

if __name__ == "__main__":  # the guard matters: worker processes are spawned and re-import this file
    sys.exit(main())
