#!/usr/bin/env python3
"""DPHuBERT stage script; see `python prune.py --help` and cli/dphubert.py."""

from cli.errors import run_cli
from cli.dphubert import prune_main

if __name__ == "__main__":
    run_cli("prune.py", prune_main)
