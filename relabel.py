#!/usr/bin/env python3
"""Stage-2 relabelling (K-means on a trained MelHuBERT layer); see ``python relabel.py --help`` and melhubert/relabel.py."""

import sys

from melhubert.relabel import main

if __name__ == "__main__":
    sys.exit(main())
