#!/usr/bin/env python3
"""Stage-2 relabelling (K-means on a trained MelHuBERT layer); see ``python relabel.py --help`` and speech_data/mel_relabel.py."""

import sys

from speech_data.mel_relabel import main

if __name__ == "__main__":
    sys.exit(main())
