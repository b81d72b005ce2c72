"""Per-layer features of every utterance in a file list, from any toolkit model.

    python extract_feature.py -c MODEL_FILE -t data/dev.tsv -o feats/ [-f 10|20] [-m MODE] [-d cpu|cuda]
                              [--format npy|safetensors] [--layer K] [--mean_std mean-std.npy]

The compression suite's command (``-c CKPT -f 10|20 -m MODE -d DEVICE``) for every model file
the toolkit reads: MelHuBERT checkpoints of every mode, DPHuBERT students, converted teachers,
safetensors exports. ``-m`` names the mode the checkpoint was trained with and is checked
against what the file holds (the loader finds the family itself); ``-f`` is checked against
the model's frame period. MelHuBERT log-Mel features are normalised with the training
statistics: ``--mean_std``, else the ``mean-std.npy`` found next to the checkpoint (or up to
three folders above it); without either the command stops, unless ``--per_utterance_norm``.

Output, one file per utterance named by its id (the audio file name without extension):
``--format npy``: ``ID.npy`` float32 ``(layers + 1, T, D)`` (h0 = input projection, then each
layer; no final LayerNorm), or ``(T, D)`` with ``--layer K``; ``--format safetensors``:
``ID.safetensors`` with tensors ``hidden_state_0`` ... ``hidden_state_N`` of ``(T, D)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

MODES = ("melhubert", "weight-pruning", "head-pruning", "row-pruning", "distillation", "low-rank", "dphubert", "any")
MELHUBERT_MODES = MODES[:6]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--ckpt", required=True, help="model file (any the toolkit writes)")
    parser.add_argument("-t", "--tsv", required=True, help="file list: root on line 1, then relative_path<TAB>num_samples")
    parser.add_argument("-o", "--out", required=True, help="output folder")
    parser.add_argument("-f", "--frame_period", type=int, choices=(10, 20), default=None, help="expected frame period in ms")
    parser.add_argument("-m", "--mode", choices=MODES, default="any", help="training mode of the checkpoint (checked)")
    parser.add_argument("-d", "--device", default="cpu")
    parser.add_argument("--format", choices=("npy", "safetensors"), default="npy")
    parser.add_argument("--layer", type=int, default=None, help="write only hidden state K (0 = input projection)")
    parser.add_argument("--mean_std", default=None, help="MelHuBERT: mean-std.npy of the training corpus")
    parser.add_argument("--per_utterance_norm", action="store_true",
                        help="MelHuBERT without statistics: normalise each utterance by itself (differs from training)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from speech_data.tsv import read_file_list

    args = build_parser().parse_args(argv)
    upstream = _load(args)
    file_list = read_file_list(args.tsv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    upstream = upstream.to(device).eval()
    if args.layer is not None and not 0 <= args.layer < upstream.num_hidden_states:
        raise SystemExit(f"--layer must be in [0, {upstream.num_hidden_states - 1}] for {args.ckpt}, got {args.layer}")
    for note in upstream.info.notes:
        print(f"note: {note}")
    for index in tqdm(range(len(file_list)), desc="extract", unit="utt"):
        waveform = _read_audio(file_list.path(index))
        with torch.no_grad():
            states, frames = upstream.layers(waveform[None].to(device))
        n = int(frames[0])
        layers = [s[0, :n].float().cpu() for s in states]
        _write(out, file_list.utterance_id(index), layers, args.format, args.layer)
    print(f"wrote {len(file_list)} {args.format} files to {out} ({upstream.num_hidden_states} hidden states, "
          f"{upstream.frame_period_ms} ms frames)")
    return 0


def _load(args: argparse.Namespace):
    from evaluation.upstream import MEAN_STD_FILE, load_upstream
    from wav2vec2.export.safetensors import is_safetensors_model

    if is_safetensors_model(args.ckpt):
        from evaluation.upstream import Upstream, UpstreamInfo, _wav2vec2_frame_period
        from wav2vec2.checkpoint import load_model

        model = load_model(args.ckpt, verbose=False)
        upstream = Upstream(model, UpstreamInfo(Path(args.ckpt).stem, str(args.ckpt), "wav2vec2"),
                            frame_period_ms=_wav2vec2_frame_period(model))
    else:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore" if args.per_utterance_norm else "default")
            upstream = load_upstream(args.ckpt, mean_std=args.mean_std)
    if upstream.family == "melhubert" and upstream.mel_mean is None and not args.per_utterance_norm:
        raise SystemExit(f"{args.ckpt}: no log-Mel statistics: pass --mean_std (the {MEAN_STD_FILE} of the training "
                         f"corpus) or --per_utterance_norm")
    if args.mode in MELHUBERT_MODES and args.mode != "low-rank" and upstream.family != "melhubert":
        raise SystemExit(f"{args.ckpt}: -m {args.mode} expects a MelHuBERT checkpoint, found a {upstream.family} model")
    if args.mode == "dphubert" and upstream.family != "wav2vec2":
        raise SystemExit(f"{args.ckpt}: -m dphubert expects a wav2vec2-family model, found {upstream.family}")
    if args.frame_period is not None and args.frame_period != upstream.frame_period_ms:
        raise SystemExit(f"{args.ckpt}: -f {args.frame_period} but the model produces {upstream.frame_period_ms} ms frames")
    return upstream


def _read_audio(path: Path) -> torch.Tensor:
    import soundfile

    try:
        samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as error:  # soundfile's own error types; re-raised with the file named
        raise SystemExit(f"{path}: cannot read audio ({error})") from error
    if rate != 16_000:
        raise SystemExit(f"{path}: sample rate {rate} Hz, expected 16000 (resample the corpus first)")
    return torch.from_numpy(samples.mean(axis=1))


def _write(out: Path, utterance_id: str, layers: list[torch.Tensor], fmt: str, layer: int | None) -> None:
    if fmt == "npy":
        array = layers[layer].numpy() if layer is not None else torch.stack(layers).numpy()
        target = out / f"{utterance_id}.npy"
        tmp = out / f"{utterance_id}.partial.npy"
        np.save(tmp, array)
    else:
        from safetensors.torch import save_file

        chosen = {f"hidden_state_{i}": t.contiguous() for i, t in enumerate(layers) if layer is None or i == layer}
        target = out / f"{utterance_id}.safetensors"
        tmp = out / f"{utterance_id}.partial.safetensors"
        save_file(chosen, str(tmp))
    tmp.replace(target)


if __name__ == "__main__":
    sys.exit(main())
