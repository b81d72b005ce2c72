#!/usr/bin/env python3
"""Pre-train the demo's tiny HuBERT-style teacher on the demo corpus; see lightning_modules/demo_teacher.py."""

from lightning_modules.demo_teacher import main

if __name__ == "__main__":
    main()
