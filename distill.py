#!/usr/bin/env python3
"""DPHuBERT stage script; see `python distill.py --help` and lightning_modules/dphubert_cli.py."""

from lightning_modules.dphubert_cli import distill_main

if __name__ == "__main__":
    distill_main()
