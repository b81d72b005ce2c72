#!/usr/bin/env python3
"""DPHuBERT stage script; see `python final_distill.py --help` and cli/dphubert.py."""

from cli.dphubert import final_distill_main

if __name__ == "__main__":
    final_distill_main()
