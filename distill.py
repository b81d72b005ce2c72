#!/usr/bin/env python3
"""DPHuBERT stage script; see `python distill.py --help` and cli/dphubert.py."""

from cli.errors import run_cli
from cli.dphubert import distill_main

if __name__ == "__main__":
    run_cli("distill.py", distill_main)
