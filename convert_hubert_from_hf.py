#!/usr/bin/env python
"""Convert a Hugging Face HuBERT / wav2vec 2.0 / WavLM checkpoint to a teacher file.

    python convert_hubert_from_hf.py --model facebook/hubert-base-ls960 --out pretrained/hubert-base-ls960.hf.pth
    python convert_hubert_from_hf.py --model microsoft/wavlm-base-plus --out pretrained/wavlm-base-plus.hf.pth
    python convert_hubert_from_hf.py --model ./my_saved_model_dir --out pretrained/mine.pth
    python convert_hubert_from_hf.py        # HuBERT Base -> pretrained/hubert-base-ls960.hf.pth (the original's default)

The name is historical (DPHuBERT's script); every family goes through the same path. The
output is ``{"state_dict", "config", "source", ...}``, loaded strictly by
``wav2vec2.checkpoint.load_model``. Nothing is loaded with strict=False: a missing, extra or
mis-shaped weight stops the conversion with the key named.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, Sequence

from wav2vec2.checkpoint import CheckpointError, summary
from wav2vec2.convert import build_converted_model, convert_hf_model, save_converted


def _tristate(value: str) -> Optional[bool]:
    return {"auto": None, "true": True, "false": False}[value]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # With no arguments it does what the original DPHuBERT script did (its README runs it bare).
    parser.add_argument("--model", default="facebook/hubert-base-ls960",
                        help="hub id (downloaded) or a local save_pretrained directory (default: %(default)s)")
    parser.add_argument("--out", default="pretrained/hubert-base-ls960.hf.pth", help="output file (default: %(default)s)")
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    parser.add_argument("--cache-dir", default=None, help="transformers cache directory")
    parser.add_argument("--local-files-only", action="store_true", help="never contact the hub")
    parser.add_argument(
        "--normalize-waveform", choices=("auto", "true", "false"), default="auto",
        help="per-utterance waveform normalisation inside the model; auto: preprocessor_config.json do_normalize, "
             "else True for stable-layer-norm (Large) models",
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    info: dict[str, Any] = {}
    try:
        config, state_dict = convert_hf_model(
            args.model, normalize_waveform=_tristate(args.normalize_waveform), revision=args.revision,
            cache_dir=args.cache_dir, local_files_only=args.local_files_only, info=info,
        )
        model = build_converted_model(config, state_dict, source=args.model)
        save_converted(
            args.out, model, source=str(args.model), converter="hf", revision=args.revision,
            model_type=info["model_type"], transformers_version=info["transformers_version"],
            dropped_keys=info["dropped"], normalize_waveform_from=info["normalize_waveform_from"],
        )
    except (CheckpointError, OSError) as error:  # ConversionError included; OSError: unknown id / no network
        print(f"error: {error}", file=sys.stderr)
        return 1
    if info["dropped"]:
        print(f"dropped (training-only / task head): {', '.join(info['dropped'])}")
    print(f"normalize_waveform={config['normalize_waveform']} ({info['normalize_waveform_from']})")
    print(summary(model, str(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
