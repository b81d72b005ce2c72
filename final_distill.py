#!/usr/bin/env python3
"""DPHuBERT stage script; see `python final_distill.py --help` and cli/dphubert.py."""

from cli.errors import run_cli
from cli.dphubert import final_distill_main

if __name__ == "__main__":
    run_cli("final_distill.py", final_distill_main)
