"""The compatibility decisions of docs/coming-from-originals.md, one by one (tiny models, no README needed)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lightning_modules.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY_MEL = yaml.safe_load((ROOT / "configs/melhubert/config_model_tiny.yaml").read_text())["melhubert"]


def tiny_melhubert(seed: int = 0, **overrides):
    from wav2vec2.melhubert import MelHuBERTModel

    torch.manual_seed(seed)
    return MelHuBERTModel({**TINY_MEL, **overrides}).eval()


# --------------------------------------------------------------------------------------------
# Config paths and shipped configs
# --------------------------------------------------------------------------------------------


def test_original_config_paths_resolve_to_the_shipped_ones(tmp_path: Path) -> None:
    from originals.config_paths import resolve_config_path

    for original, ours in [
        ("./melhubert/config/config_runner.yaml", "configs/melhubert/config_runner.yaml"),
        ("./weight_pruning/config/config_model.yaml", "configs/weight_pruning/config_model.yaml"),
        ("head_pruning/config/l1/config_model_10ms.yaml", "configs/head_pruning/l1/config_model_10ms.yaml"),
        ("./head_pruning/config/data_driven/config_runner.yaml", "configs/head_pruning/data_driven/config_runner.yaml"),
        ("./row_pruning/config/config_model.yaml", "configs/row_pruning/config_model.yaml"),
        ("./distillation/config/config_runner_20ms.yaml", "configs/distillation/config_runner.yaml"),  # HEAD's name
    ]:
        path, note = resolve_config_path(Path(original), cwd=tmp_path)  # nothing under tmp_path: the toolkit's
        assert path == ROOT / ours and note is not None and ours in note
    # A folder of the user's own configs/ wins over the toolkit's.
    (tmp_path / "configs/melhubert").mkdir(parents=True)
    (tmp_path / "configs/melhubert/config_model.yaml").write_text("melhubert: {}\n")
    assert resolve_config_path(Path("./melhubert/config/config_model.yaml"), cwd=tmp_path)[0] == tmp_path / "configs/melhubert/config_model.yaml"
    # Existing files and other paths are left alone; an original path without a counterpart names both.
    assert resolve_config_path(Path("nowhere/config_model.yaml"), cwd=tmp_path) == (Path("nowhere/config_model.yaml"), None)
    with pytest.raises(FileNotFoundError, match=r"melhubert/config/config_model_30ms.yaml is an original .*configs/melhubert/config_model_30ms.yaml"):
        resolve_config_path(Path("./melhubert/config/config_model_30ms.yaml"), cwd=tmp_path)


def test_10ms_configs_change_only_the_frame_period_keys() -> None:
    def flat(path: Path) -> dict:
        data = yaml.safe_load(path.read_text())
        return {f"{section}.{k}": v for section, values in data.items() if isinstance(values, dict) for k, v in values.items()}

    for folder in ("weight_pruning", "head_pruning/l1", "head_pruning/data_driven", "row_pruning", "low_rank", "distillation"):
        twenty, ten = flat(ROOT / "configs" / folder / "config_model.yaml"), flat(ROOT / "configs" / folder / "config_model_10ms.yaml")
        changed = {k: (twenty[k], ten[k]) for k in twenty if twenty[k] != ten.get(k)}
        assert changed == {"melhubert.feat_emb_dim": (80, 40), "melhubert.mask_length": (5, 10),
                           "task.sequence_length": (750, 1500)}, folder
        assert set(ten) == set(twenty), folder
    # Pre-training at 10 ms: the original MelHuBERT 10 ms config's span length.
    assert yaml.safe_load((ROOT / "configs/melhubert/config_model_10ms.yaml").read_text())["melhubert"]["mask_length"] == 5


def test_distillation_defaults_to_masked_as_the_original_config() -> None:
    from methods.distillation import DistillSettings

    assert DistillSettings.from_config({"loss_param": {"T": 1}}, "m.yaml").type == "masked"
    shipped = yaml.safe_load((ROOT / "configs/distillation/config_model.yaml").read_text())
    assert shipped["loss_param"]["type"] == "masked"
    assert yaml.safe_load((ROOT / "configs/distillation/config_model_nomasked.yaml").read_text())["loss_param"]["type"] == "nomasked"


def test_teacher_section_must_describe_the_i_model() -> None:
    from methods.distillation import check_teacher_section

    teacher = tiny_melhubert()
    check_teacher_section(dict(TINY_MEL), teacher, "m.yaml")  # the original's full section, matching: accepted
    check_teacher_section({"encoder_layers": 2}, teacher, "m.yaml")  # keys it leaves out are -i's
    with pytest.raises(ConfigError, match=r"m.yaml: section 'teacher' does not describe the -i model \(encoder_layers: 2 vs 12"):
        check_teacher_section({**TINY_MEL, "encoder_layers": 12}, teacher, "m.yaml")


# --------------------------------------------------------------------------------------------
# Compression options
# --------------------------------------------------------------------------------------------


def test_weight_pruning_strategies() -> None:
    from lightning_modules.config import Section
    from methods.weight_pruning import strategy_method
    from methods.ops_weight import pool_size, prune_to

    def method(name: str) -> str:
        return strategy_method(Section({"prune": {"strategy": name}}, "prune", "r.yaml"))

    assert (method("L1Unstructured"), method("RandomUnstructured")) == ("l1", "random")
    with pytest.raises(ConfigError, match="LnStructured removes whole rows.*-m head-pruning or -m row-pruning"):
        method("LnStructured")
    with pytest.raises(ConfigError, match="must be one of L1Unstructured, RandomUnstructured"):
        method("Identity")

    masks = {}
    for name, seed in (("l1", 0), ("random", 0), ("random_again", 0), ("random_other", 1)):
        model = tiny_melhubert()
        kind = "l1" if name == "l1" else "random"
        result = prune_to(model, 0.5, kind, torch.Generator().manual_seed(seed))
        assert result["masked"] == round(0.5 * pool_size(model))
        masks[name] = torch.cat([b.flatten() for n, b in model.named_buffers() if n.endswith("_mask")])
    assert torch.equal(masks["random"], masks["random_again"])  # seeded: a resumed run draws the same masks
    assert not torch.equal(masks["random"], masks["l1"]) and not torch.equal(masks["random"], masks["random_other"])


def test_head_pruning_test_reverse_removes_the_best_heads() -> None:
    from methods.ops_heads import head_scores_l1, prune_heads

    scores = head_scores_l1(tiny_melhubert())
    removed, _, _ = prune_heads(tiny_melhubert(), 2, "l1", "by_layer", reverse=True)
    assert removed == {layer: [int(s.argmax())] for layer, s in scores.items()}
    removed, _, _ = prune_heads(tiny_melhubert(), 2, "l1", "by_layer")
    assert removed == {layer: [int(s.argmin())] for layer, s in scores.items()}


def test_multi_gpu_maps_to_devices_or_refuses(tmp_path: Path) -> None:
    from cli.train import RunnerError, run

    if torch.cuda.is_available():
        pytest.skip("refusal path: needs a machine without CUDA")
    csv = tmp_path / "pairs.csv"
    csv.write_text("file_path,label_path,length\n")
    runner = yaml.safe_load((ROOT / "configs/melhubert/config_runner_tiny.yaml").read_text())
    runner["datarc"]["sets"] = [str(csv)]
    (tmp_path / "runner.yaml").write_text(yaml.safe_dump(runner))
    with pytest.raises(RunnerError, match="--multi_gpu: no CUDA GPU is visible; drop the flag"):
        run(["-m", "melhubert", "-g", str(ROOT / "configs/melhubert/config_model_tiny.yaml"), "-c", str(tmp_path / "runner.yaml"),
             "-n", str(tmp_path / "exp"), "--multi_gpu"])
    assert not (tmp_path / "exp").exists()


# --------------------------------------------------------------------------------------------
# DPHuBERT flags and model API
# --------------------------------------------------------------------------------------------


def test_deprecated_dphubert_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from lightning_modules.cli import add_data_args, add_trainer_args, apply_deprecated_aliases, new_parser

    parser = new_parser("x")
    add_data_args(parser)
    add_trainer_args(parser)
    cfg = apply_deprecated_aliases(parser.parse_args(["--exp_dir", "e", "--gpus", "4", "--resume_checkpoint", "a.ckpt"]))
    assert (cfg.devices, cfg.resume, cfg.gpus, cfg.resume_checkpoint) == ("4", "a.ckpt", None, None)
    err = capsys.readouterr().err
    assert "--gpus is deprecated (original DPHuBERT name); use --devices 4" in err
    assert "--resume_checkpoint is deprecated (original DPHuBERT name); use --resume a.ckpt" in err
    with pytest.raises(ValueError, match="--gpus 2 conflicts with --devices 1"):
        apply_deprecated_aliases(parser.parse_args(["--exp_dir", "e", "--gpus", "2", "--devices", "1"]))
    # The original's batch handling is selectable.
    cfg = parser.parse_args(["--exp_dir", "e", "--crop_mode", "shortest", "--drop_long", "true"])
    assert (cfg.crop_mode, cfg.drop_long) == ("shortest", True)


def test_factories_and_get_num_params() -> None:
    import wav2vec2
    from helpers import tiny_config
    from wav2vec2 import counting
    from wav2vec2.checkpoint import build_model

    with torch.device("meta"):
        wavlm = wav2vec2.wavlm_base()
        xlarge = wav2vec2.hubert_xlarge()
    assert sum(p.numel() for p in wavlm.parameters()) == 94_381_680  # = WavLM Base+ (same architecture)
    assert (xlarge.config["encoder_num_layers"], xlarge.config["encoder_embed_dim"], xlarge.config["encoder_num_heads"][0],
            xlarge.config["encoder_ff_interm_features"][0]) == (48, 1280, 16, 5120)
    model = build_model(tiny_config("hubert", prune=("head", "interm")))
    expected = model.get_num_params()
    assert expected.requires_grad and torch.equal(expected, counting.num_params(model, "expected"))
    plain = build_model(tiny_config("hubert"))
    assert int(plain.get_num_params()) == sum(p.numel() for p in plain.parameters())


def test_import_huggingface_wavlm_helper() -> None:
    transformers = pytest.importorskip("transformers")
    from wav2vec2.utils import import_huggingface_model
    from wav2vec2.utils.import_huggingface_wavlm import import_huggingface_model as same

    assert import_huggingface_model is same
    torch.manual_seed(0)
    hf = transformers.WavLMModel(transformers.WavLMConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(32, 32, 32),
        conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
    )).eval()
    ours = import_huggingface_model(hf).eval()
    waveform = torch.randn(1, 4000)
    with torch.no_grad():
        expected = hf(waveform).last_hidden_state
        got, _ = ours(waveform)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------------------
# Data: the original's outputs, stage-2 relabelling, preprocess.sh
# --------------------------------------------------------------------------------------------


def write_original_outputs(folder: Path, lengths: list[int], num_clusters: int = 8) -> Path:
    """DATA_DIR as the original's preprocess.sh left it: float64 normalised features, int64 labels, csv, mean-std."""
    rng = np.random.default_rng(0)
    (folder / "feature").mkdir(parents=True)
    (folder / "cluster").mkdir()
    lines = ["file_path,label_path,length"]
    for i, length in enumerate(lengths):
        feature, label = folder / "feature" / f"{i}-1-000{i}.npy", folder / "cluster" / f"{i}-1-000{i}.npy"
        np.save(feature, rng.standard_normal((length, 40)))  # float64, as the original wrote
        np.save(label, rng.integers(0, num_clusters, length).astype(np.int64))
        lines.append(f"{feature},{label},{length}")
    np.save(folder / "mean-std.npy", np.stack([np.full(40, 14.0), np.full(40, 4.0)]))
    csv = folder / "libri-360-data-cluster-pair.csv"
    csv.write_text("\n".join(lines) + "\n")
    return csv


def test_original_outputs_are_read_and_relabelled(tmp_path: Path) -> None:
    from wav2vec2.melhubert_checkpoint import save_checkpoint
    from speech_data.mel_data import MelDataset, read_manifests
    from speech_data.mel_relabel import main

    csv = write_original_outputs(tmp_path / "DATA_DIR", [61, 80, 95])
    features, labels = MelDataset(read_manifests([csv]), frame_period_ms=20).load(0)
    assert features.dtype == np.float32 and features.shape == (31, 80) and labels.shape == (31,)

    checkpoint = save_checkpoint(tmp_path / "stage1.ckpt", tiny_melhubert())
    out = tmp_path / "DATA_DIR"
    assert main(["-i", str(checkpoint), "--manifest", str(csv), "--layer", "2", "--out", str(out), "--num-clusters", "5",
                 "--kmeans-fraction", "1", "--no-progress"]) == 0
    new_csv = out / "libri-360-data-cluster-pair-cluster_stage2.csv"
    rows = read_manifests([new_csv])
    assert [r.length for r in rows] == [61, 80, 95]
    for row in rows:
        labels = np.load(row.label_path)
        assert labels.shape == ((row.length + 1) // 2,) and labels.max() < 5  # one label per 20 ms model frame
    features, labels = MelDataset(rows, frame_period_ms=20).load(2)
    assert features.shape[0] == labels.shape[0] == 48
    assert main(["-i", str(checkpoint), "--manifest", str(csv), "--layer", "3", "--out", str(out)]) == 1  # 2 layers


def test_preprocess_sh_without_librispeech_says_what_to_run(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(ROOT / "preprocess.sh"), str(tmp_path / "DATA")], cwd=tmp_path,
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "no LibriSpeech train-clean-360 found" in result.stderr
    assert f"bash preprocess.sh {tmp_path / 'DATA'} /path/to/LibriSpeech" in result.stderr


def test_preprocess_reads_the_original_kaldi_archive(tmp_path: Path) -> None:
    kaldiio = pytest.importorskip("kaldiio")
    from speech_data.mel_data import MelDataset, read_manifests
    from speech_data.mel_preprocess import main

    # The archive as the original distributed it: scp paths from another machine (only base names count).
    archive = tmp_path / "libri-360"
    archive.mkdir()
    rng = np.random.default_rng(0)
    feats = {f"19-198-000{i}": (rng.standard_normal((n, 40)) * 3 + 12).astype(np.float32) for i, n in enumerate((50, 73))}
    kaldiio.save_ark(str(archive / "feats.ark"), feats, scp=str(tmp_path / "local.scp"))
    lines = [f"{utt} /home/elsewhere/feats.ark:{loc.rsplit(':', 1)[1]}" for utt, loc in
             (line.split() for line in (tmp_path / "local.scp").read_text().splitlines())]
    (archive / "train-clean-360.scp").write_text("\n".join(lines) + "\n")
    labels = {utt: rng.integers(0, 512, len(m)) for utt, m in feats.items()}
    ark, scp = b"", []
    for utt, ids in labels.items():
        head = f"{utt} ".encode()
        scp.append(f"{utt} /data/x/train-clean-360-k512-e10.bas.ark:{len(ark) + len(head)}")
        ark += head + " ".join(map(str, ids)).encode() + b"\n"
    (archive / "train-clean-360-k512-e10.bas.ark").write_bytes(ark)
    (archive / "train-clean-360-k512-e10.bas.scp").write_text("\n".join(scp) + "\n")
    stacked = np.concatenate(list(feats.values())).astype(np.float64)
    sums, squares = stacked.sum(0), (stacked**2).sum(0)
    (archive / "train-clean-360.mean-var").write_text(
        "[ " + ", ".join(str(float(v)) for v in sums) + " ]\n[ " + ", ".join(str(float(v)) for v in squares) + f" ]\n{len(stacked)}\n")

    out = tmp_path / "DATA_DIR"
    assert main(["--from-kaldi", str(archive), "--out", str(out)]) == 0
    mean_std = np.load(out / "mean-std.npy")
    np.testing.assert_allclose(mean_std, [stacked.mean(0), stacked.std(0)], rtol=1e-9)
    rows = read_manifests([out / "libri-360-data-cluster-pair.csv"])
    assert [r.length for r in rows] == [50, 73]
    features, ids = MelDataset(rows, frame_period_ms=10).load(1)
    np.testing.assert_allclose(features, (feats["19-198-0001"] - mean_std[0]) / mean_std[1], atol=1e-5)
    np.testing.assert_array_equal(ids, labels["19-198-0001"])
    # Bad input names the file.
    (archive / "train-clean-360-k512-e10.bas.scp").write_text("19-198-0000 broken-line\n")
    assert main(["--from-kaldi", str(archive), "--out", str(tmp_path / "again")]) == 1


def test_toolkit_loading_keeps_the_namespace_allowance_of_model_py(tmp_path: Path) -> None:
    import argparse

    import model  # noqa: F401  (the README's import allows argparse.Namespace process-wide)
    from wav2vec2.melhubert_checkpoint import load_melhubert, save_checkpoint

    path = save_checkpoint(tmp_path / "x.ckpt", tiny_melhubert())
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["Args"] = argparse.Namespace(seed=1)
    torch.save(checkpoint, path)
    load_melhubert(path)  # the toolkit's reader allows the Namespace for itself ...
    assert torch.load(path, weights_only=True)["Args"].seed == 1  # ... and leaves the process-wide allowance alone


def test_train_argv_translation_covers_every_option_form(capsys: pytest.CaptureFixture[str]) -> None:
    from originals.config_paths import translate_train_argv

    model, runner = str(ROOT / "configs/weight_pruning/config_model.yaml"), str(ROOT / "configs/weight_pruning/config_runner.yaml")
    for argv, expected in [
        (["-g", "./weight_pruning/config/config_model.yaml", "-c", "./weight_pruning/config/config_runner.yaml"],
         ["-g", model, "-c", runner]),
        (["-g./weight_pruning/config/config_model.yaml", "--runner_config=./weight_pruning/config/config_runner.yaml"],
         ["-g" + model, "--runner_config=" + runner]),
        (["--model_config", "./weight_pruning/config/config_model.yaml", "-m", "weight-pruning"], ["--model_config", model, "-m", "weight-pruning"]),
    ]:
        assert translate_train_argv(argv) == expected
        assert capsys.readouterr().err.count("original MelHuBERT config layout") == 1
    assert translate_train_argv(["-m", "melhubert", "-g", "mine.yaml", "-n", "x"]) == ["-m", "melhubert", "-g", "mine.yaml", "-n", "x"]
    assert capsys.readouterr().err == ""
