#!/usr/bin/env python3
"""MelHuBERT pre-training and compression: ``python train.py -m MODE -g MODEL.yaml -c RUNNER.yaml -n EXP_DIR``.

See ``python train.py --help`` and ``cli/train.py``.
"""

from cli.train import main

if __name__ == "__main__":
    main()
