"""Model kind x export format -> how it loads and the max difference to the toolkit (fp32).

    python benchmarks/export_table.py [--out /tmp/export-table] [--legacy_onnx]

Builds tiny models of every kind (seeded), writes each as the toolkit saves it, exports it
with the ``wav2vec2.export`` functions and loads the result with the stock libraries: ``transformers``
``AutoModel`` (stock class, or shipped code with ``trust_remote_code``), ``onnxruntime``, and
``wav2vec2.load_model`` for safetensors. Differences are over every hidden state: on one
unpadded utterance for stock classes, on a padded batch of unequal lengths otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from export_models import low_rank_file, padded_batch, student  # noqa: E402
from wav2vec2 import load_model, save_model  # noqa: E402
from wav2vec2.export import HiddenStates  # noqa: E402
from wav2vec2.export.graph import dense_copy  # noqa: E402
from wav2vec2.export.hf import save_hf  # noqa: E402
from wav2vec2.export.onnx import run_onnx, save_onnx  # noqa: E402
from wav2vec2.export.safetensors import save_safetensors  # noqa: E402
from wav2vec2.export.source import load_for_export  # noqa: E402


def demo_like_student() -> torch.nn.Module:
    """The demo's final student in miniature: the demo teacher architecture, gates on conv/head/interm, pruned."""
    from lightning_modules.demo_teacher import tiny_teacher_config
    from wav2vec2 import wav2vec2_model

    torch.manual_seed(0)
    config = tiny_teacher_config()
    config.update(extractor_prune_conv_channels=True, encoder_prune_attention_heads=True,
                  encoder_prune_feed_forward_intermediate=True)
    model = wav2vec2_model(**config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("log_alpha"):
                param.copy_(3.0 * torch.randn(param.shape, generator=gen))  # about half the units closed
    model.eval()
    model.prune()
    return model.eval()


def kinds(tmp: Path) -> list[tuple[str, Path, str]]:
    """(label, model file, family for transformers)."""
    rows = []
    for family in ("hubert", "wav2vec2", "wavlm"):
        for hetero in (False, True):
            label = f"{family} {'pruned (heterogeneous)' if hetero else 'homogeneous'}"
            path = tmp / f"{family}-{int(hetero)}.pth"
            save_model(path, student(family, hetero, layer_norm_first=family == "wav2vec2"))
            rows.append((label, path, family))
    low_rank_file(tmp / "lowrank.pth")
    rows.append(("hubert low-rank (suite)", tmp / "lowrank.pth", "hubert"))
    save_model(tmp / "demo-final.pth", demo_like_student())
    rows.append(("demo-like final student", tmp / "demo-final.pth", "hubert"))
    return rows


def states_of(model, waves, lengths=None):
    with torch.no_grad():
        states, _ = model.extract_features(waves, lengths)
    transformer = model.encoder.transformer
    with torch.no_grad():
        return [transformer._preprocess(states[0])] + list(states[1:])


def hf_row(path: Path, family: str, out: Path) -> tuple[str, float]:
    import transformers

    remote = save_hf(load_for_export(path)[0], out, family=family)["kind"] == "remote"
    hf = transformers.AutoModel.from_pretrained(out, trust_remote_code=remote).eval()
    model = load_for_export(path)[0]
    waves, lengths = padded_batch()
    if not remote:
        waves, lengths = waves[:1, : lengths[0]], None
    mask = None if lengths is None else (torch.arange(waves.shape[1])[None] < lengths[:, None]).long()
    with torch.no_grad():
        theirs = hf(waves, attention_mask=mask, output_hidden_states=True).hidden_states
    ours = states_of(model, waves, lengths)
    frames = model.num_frames(lengths) if lengths is not None else torch.tensor([ours[0].shape[1]])
    diff = max((a[r, : int(frames[r])] - b[r, : int(frames[r])]).abs().max().item()
               for a, b in zip(ours, theirs) for r in range(waves.shape[0]))
    how = f"remote code ({type(hf).__name__})" if remote else f"stock {type(hf).__name__}"
    return how + (", padded batch" if remote else ", unpadded"), diff


def onnx_row(path: Path, out: Path, legacy: bool) -> tuple[str, float]:
    model = load_for_export(path)[0]
    with contextlib.redirect_stdout(io.StringIO()):
        save_onnx(model, out, dynamo=not legacy)
    waves, lengths = padded_batch((2300, 900, 1700, 500), seed=5)
    with torch.no_grad():
        ref, frames = HiddenStates(model)(waves, lengths)
    got, _ = run_onnx(out, waves, lengths)
    valid = (torch.arange(ref.shape[2])[None, :] < frames[:, None])[None, :, :, None]
    return f"onnxruntime ({'legacy' if legacy else 'dynamo'}), padded batch", ((got - ref).abs() * valid).max().item()


def safetensors_row(path: Path, out: Path) -> tuple[str, float]:
    model = load_for_export(path)[0]
    save_safetensors(dense_copy(model), out)
    back = load_model(out, verbose=False)
    waves, lengths = padded_batch()
    a, b = states_of(model, waves, lengths), states_of(back, waves, lengths)
    return "wav2vec2.load_model, padded batch", max((x - y).abs().max().item() for x, y in zip(a, b))


def melhubert_row(tmp: Path, legacy: bool) -> tuple[str, float]:
    """A MelHuBERT checkpoint (log-Mel input) through ONNX; hf and safetensors do not apply."""
    from evaluation.upstream import load_upstream
    from wav2vec2.melhubert import MelHuBERTConfig, MelHuBERTModel
    from wav2vec2.melhubert_checkpoint import save_checkpoint

    torch.manual_seed(0)
    config = dict(feat_emb_dim=80, encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                  encoder_attention_heads=4, conv_pos=8, conv_pos_groups=4, num_cluster=10)
    save_checkpoint(tmp / "mel.ckpt", MelHuBERTModel(MelHuBERTConfig(config)).eval())
    model = load_upstream(tmp / "mel.ckpt").model
    with contextlib.redirect_stdout(io.StringIO()):
        save_onnx(model, tmp / "mel.onnx", feature_dim=80, dynamo=not legacy)
    feats = torch.randn(3, 40, 80, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([40, 23, 31])
    feats = feats * (torch.arange(40)[None, :, None] < lengths[:, None, None])
    with torch.no_grad():
        ref, _ = HiddenStates(model)(feats, lengths)
    got, _ = run_onnx(tmp / "mel.onnx", feats, lengths)
    valid = (torch.arange(40)[None, :] < lengths[:, None])[None, :, :, None]
    return f"onnxruntime ({'legacy' if legacy else 'dynamo'}), padded batch", ((got - ref).abs() * valid).max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    parser.add_argument("--legacy_onnx", action="store_true")
    args = parser.parse_args()
    tmp = Path(args.out or tempfile.mkdtemp(prefix="export-table-"))
    tmp.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    print("| model kind | format | loads with | max abs diff |")
    print("|---|---|---|---|")
    for label, path, family in kinds(tmp):
        stem = path.stem
        for fmt, run in (("hf", lambda: hf_row(path, family, tmp / f"{stem}-hf")),
                         ("onnx", lambda: onnx_row(path, tmp / f"{stem}.onnx", args.legacy_onnx)),
                         ("safetensors", lambda: safetensors_row(path, tmp / f"{stem}-st"))):
            how, diff = run()
            print(f"| {label} | {fmt} | {how} | {diff:.1e} |", flush=True)
    how, diff = melhubert_row(tmp, args.legacy_onnx)
    print(f"| MelHuBERT (suite checkpoint) | onnx | {how} | {diff:.1e} |")
    print("| MelHuBERT (suite checkpoint) | hf, safetensors | refused: log-Mel input, not a transformers speech class | - |")


if __name__ == "__main__":
    main()
