#!/usr/bin/env python3
"""DPHuBERT stage script; see `python prune.py --help` and cli/dphubert.py."""

from cli.dphubert import prune_main

if __name__ == "__main__":
    prune_main()
