#!/usr/bin/env python3
"""Pre-train the demo's tiny HuBERT-style teacher on the demo corpus; see cli/demo_teacher.py."""

from cli.demo_teacher import main

if __name__ == "__main__":
    main()
