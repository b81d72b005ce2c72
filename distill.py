#!/usr/bin/env python3
"""DPHuBERT stage script; see `python distill.py --help` and cli/dphubert.py."""

from cli.dphubert import distill_main

if __name__ == "__main__":
    distill_main()
