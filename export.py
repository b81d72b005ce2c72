"""Export a compressed model for use outside the toolkit: Hugging Face, ONNX or safetensors.

    python export.py MODEL_FILE OUT --format hf|onnx|safetensors [--family hubert|wav2vec2] [--push_to_hub REPO]

MODEL_FILE is any model file the toolkit writes: DPHuBERT final / pruned ``.pth``, a stage
checkpoint (its gated student is pruned first), a compression-suite checkpoint (weight-pruned,
low-rank, MelHuBERT), a converted teacher, or a safetensors export. OUT is a folder (hf,
safetensors) or a ``.onnx`` file. MelHuBERT models export to ONNX only (they take log-Mel
features, which the ``transformers`` speech classes do not).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

FORMATS = ("hf", "onnx", "safetensors")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model file written by the toolkit (or a safetensors export)")
    parser.add_argument("out", help="output folder (hf, safetensors) or .onnx file")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--family", choices=("hubert", "wav2vec2"), default="hubert",
                        help="transformers class for the wav2vec 2.0 / HuBERT architecture (WavLM is detected)")
    parser.add_argument("--remote_code", action="store_true", help="hf: ship the modeling file even when a stock class fits")
    parser.add_argument("--legacy_onnx", action="store_true", help="onnx: the TorchScript-tracing exporter instead of dynamo")
    parser.add_argument("--opset", type=int, default=None, help="onnx: opset (default: wav2vec2.export.onnx.OPSET)")
    parser.add_argument("--push_to_hub", metavar="REPO_ID", default=None, help="hf: upload the folder to this Hub repository")
    args = parser.parse_args(argv)

    from wav2vec2.export.source import load_for_export

    model, family, notes = load_for_export(args.model)
    for note in notes:
        print(f"note: {note}")
    if family != "wav2vec2" and args.format != "onnx":
        parser.error(f"{args.model}: a {family} model exports to --format onnx only (it takes log-Mel features)")
    if args.format == "hf":
        from wav2vec2.export.hf import save_hf

        result = save_hf(model, args.out, family=args.family, force_remote_code=args.remote_code)
        how = "AutoModel.from_pretrained(DIR)" if result["kind"] == "stock" else "AutoModel.from_pretrained(DIR, trust_remote_code=True)"
        print(f"wrote {args.out}: {result['class']} ({result['kind']}); load with {how}")
        for reason in result["reasons"]:
            print(f"  not a stock class: {reason}")
        if args.push_to_hub:
            push_to_hub(args.out, args.push_to_hub)
    elif args.format == "onnx":
        from wav2vec2.export.onnx import OPSET, save_onnx

        opset = args.opset or OPSET
        feature_dim = int(model.config.feat_emb_dim) if family == "melhubert" else None
        meta: dict[str, Any] = {"family": family, "source": str(args.model), "input": "log-Mel features" if feature_dim else "16 kHz waveform"}
        path = save_onnx(model, args.out, feature_dim=feature_dim, dynamo=not args.legacy_onnx, opset=opset, metadata=meta)
        print(f"wrote {path} (opset {opset}; inputs: inputs, lengths; outputs: hidden_states, frame_lengths)")
    else:
        from wav2vec2.export.graph import dense_copy
        from wav2vec2.export.safetensors import save_safetensors

        folder = save_safetensors(dense_copy(model), args.out, extra={"source": str(args.model)})
        print(f"wrote {folder}/model.safetensors and config.json; wav2vec2.load_model({str(folder)!r}) reads it")
    return 0


def push_to_hub(folder: str, repo_id: str) -> None:
    """Upload ``folder`` to the Hub repository ``repo_id`` (created if missing)."""
    try:
        from huggingface_hub import HfApi
    except ImportError as error:
        raise SystemExit("--push_to_hub needs huggingface_hub: pip install 'speech-ssl-compress[hf]'") from error
    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    api.upload_folder(folder_path=folder, repo_id=repo_id)
    print(f"pushed {folder} to https://huggingface.co/{repo_id}")


if __name__ == "__main__":
    sys.exit(main())
