#!/usr/bin/env python
"""File lists for LibriSpeech-layout corpora, or an offline demo corpus. See speech_data/cli.py.

    python prepare_data.py --data /path/to/LibriSpeech --out data/librispeech
    python prepare_data.py --make-demo-corpus demo_corpus --out data/demo
"""

from speech_data.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
