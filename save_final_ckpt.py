#!/usr/bin/env python3
"""DPHuBERT stage script; see `python save_final_ckpt.py --help` and lightning_modules/dphubert_cli.py."""

from lightning_modules.cli_errors import run_cli
from lightning_modules.dphubert_cli import save_final_main

if __name__ == "__main__":
    run_cli("save_final_ckpt.py", save_final_main)
