#!/usr/bin/env python3
"""DPHuBERT stage script; see `python save_final_ckpt.py --help` and cli/dphubert.py."""

from cli.errors import run_cli
from cli.dphubert import save_final_main

if __name__ == "__main__":
    run_cli("save_final_ckpt.py", save_final_main)
