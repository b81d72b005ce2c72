#!/usr/bin/env python3
"""DPHuBERT stage script; see `python distill.py --help` and lightning_modules/dphubert_cli.py."""

from lightning_modules.cli_errors import run_cli
from lightning_modules.dphubert_cli import distill_main

if __name__ == "__main__":
    run_cli("distill.py", distill_main)
