#!/usr/bin/env python3
"""MelHuBERT pre-training and compression: ``python train.py -m MODE -g MODEL.yaml -c RUNNER.yaml -n EXP_DIR``.

See ``python train.py --help`` and ``cli/train.py``.
"""

import sys

from cli.train import main
from originals.config_paths import translate_train_argv

if __name__ == "__main__":
    # The original MelHuBERT README's -g/-c paths (./weight_pruning/config/...) -> configs/<mode>/.
    main(translate_train_argv(sys.argv[1:]))
