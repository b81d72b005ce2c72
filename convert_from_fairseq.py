#!/usr/bin/env python
"""Convert a fairseq wav2vec 2.0 / HuBERT checkpoint to a teacher file, without fairseq.

    python convert_from_fairseq.py --checkpoint hubert_base_ls960.pt --out pretrained/hubert-base-ls960.fairseq.pth
    python convert_from_fairseq.py --checkpoint hubert_large_ll60k.pt --out pretrained/hubert-large-ll60k.fairseq.pth
    python convert_from_fairseq.py --checkpoint wav2vec_small.pt --out pretrained/wav2vec2-base-ls960.fairseq.pth

Pre-trained (``wav2vec2``, ``hubert``) and CTC fine-tuned (``wav2vec_ctc``, ``hubert_ctc``)
files are supported. The checkpoint is read with torch's restricted unpickler, with inert
stand-ins for the omegaconf / fairseq classes it pickles (see ``wav2vec2/convert/fairseq.py``);
``--trust-pickle`` uses ``torch.load(weights_only=False)`` instead, for files you trust.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, Sequence

from wav2vec2.checkpoint import CheckpointError, summary
from wav2vec2.convert import build_converted_model, convert_fairseq_checkpoint, save_converted


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="fairseq .pt file")
    parser.add_argument("--out", required=True, help="output file, e.g. pretrained/hubert-base-ls960.fairseq.pth")
    parser.add_argument(
        "--trust-pickle", action="store_true",
        help="load with torch.load(weights_only=False) (runs pickled code; needs omegaconf for hydra-era files)",
    )
    parser.add_argument(
        "--normalize-waveform", choices=("auto", "true", "false"), default="auto",
        help="per-utterance waveform normalisation inside the model; auto: the checkpoint's task normalize",
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    info: dict[str, Any] = {}
    normalize = {"auto": None, "true": True, "false": False}[args.normalize_waveform]
    try:
        config, state_dict = convert_fairseq_checkpoint(
            args.checkpoint, trust_pickle=args.trust_pickle, normalize_waveform=normalize, info=info
        )
        model = build_converted_model(config, state_dict, source=args.checkpoint)
        save_converted(
            args.out, model, source=str(args.checkpoint), converter="fairseq", arch=info["arch"],
            dropped_keys=info["dropped"], defaulted_fields=info["defaulted"],
            normalize_waveform_from=info["normalize_waveform_from"],
        )
    except (CheckpointError, FileNotFoundError) as error:  # the message names the field or key
        print(f"error: {error}", file=sys.stderr)
        return 1
    if info["dropped"]:
        print(f"dropped (pre-training / fine-tuning only): {', '.join(info['dropped'])}")
    if info["defaulted"]:
        print(f"fields missing from the checkpoint, fairseq defaults used: {', '.join(info['defaulted'])}")
    for note in info.get("notes", []):
        print(f"note: {note}")
    print(f"normalize_waveform={config['normalize_waveform']} ({info['normalize_waveform_from']})")
    print(summary(model, str(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
