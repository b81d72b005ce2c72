"""Stage-2 targets: K-means on a trained MelHuBERT's hidden layer -> new labels and manifest.

``python relabel.py -i MODEL.ckpt --manifest DATA/libri-360-data-cluster-pair.csv --layer 8 --out DATA``
writes ``DATA/cluster_stage2/<utt>.npy`` (one label per model frame: 10 ms or 20 ms),
``DATA/cluster_stage2-kmeans-k<K>.npy`` and ``DATA/<manifest stem>-cluster_stage2.csv`` (same
features, new labels; set ``datarc.sets`` to it and pre-train again). The labels of the
original's second stage were made this way from layer 8 of the first-stage model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from wav2vec2.melhubert_checkpoint import CheckpointError, load_melhubert
from speech_data.fbank import stack_frames
from speech_data.kmeans import KMeansConfig, KMeansModel
from wav2vec2.melhubert import MelHuBERTModel
from speech_data.mel_preprocess import PreprocessError, relabel_manifest


def layer_features(model: MelHuBERTModel, layer: int, device: torch.device | str = "cpu"):
    """Tensor[T, 40] normalised 10 ms log-Mel -> Tensor[T', D]: the output of transformer layer ``layer`` (1..N).

    A 20 ms model (``feat_emb_dim`` 80) stacks frame pairs first, so T' = ceil(T / 2).
    """
    if not 1 <= layer <= model.num_layers:
        raise ValueError(f"--layer must be in 1..{model.num_layers} (the model's layers), got {layer}")
    model = model.to(device).eval()
    stacked = model.config.feat_emb_dim == 80

    def features(mel: torch.Tensor) -> torch.Tensor:
        x = mel.to(device=device, dtype=torch.float32)
        if stacked:
            x = stack_frames(x)
        hidden, _ = model.extract_features(x[None], num_layers=layer)
        return hidden[layer][0]

    return features


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relabel.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--checkpoint", type=Path, required=True, help="trained MelHuBERT checkpoint (.ckpt)")
    parser.add_argument("--manifest", type=Path, required=True, help="file_path,label_path,length csv (preprocess output)")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--layer", type=int, default=8, help="transformer layer whose output is clustered (default 8)")
    parser.add_argument("--num-clusters", type=int, default=512)
    parser.add_argument("--kmeans-fraction", type=float, default=0.1, help="fraction of utterances whose frames fit K-means")
    parser.add_argument("--max-frames", type=int, default=None, help="cap on K-means fitting frames (seeded subsample)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kmeans-model", type=Path, default=None, help="reuse these centres (.npy) instead of fitting")
    parser.add_argument("--label-dir-name", default="cluster_stage2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = load_melhubert(args.checkpoint)
        feature_fn = layer_features(model, args.layer, args.device)
        config = KMeansConfig(num_clusters=args.num_clusters, fraction=args.kmeans_fraction, max_frames=args.max_frames,
                              seed=args.seed)
        reused = KMeansModel.load(args.kmeans_model) if args.kmeans_model is not None else None
        manifest, kmeans = relabel_manifest(args.manifest, feature_fn, args.out, config, label_dir_name=args.label_dir_name,
                                            kmeans_model=reused, device=args.device, progress=not args.no_progress)
    except (CheckpointError, PreprocessError, ValueError, FileNotFoundError) as error:
        print(f"relabel.py: error: {error}", file=sys.stderr)
        return 1
    print(f"relabel.py: layer {args.layer} of {args.checkpoint}, {kmeans.num_clusters} clusters -> {manifest}")
    return 0
