"""Every fenced block of the two original READMEs, run as written (docs/coming-from-originals.md).

The READMEs are read from ``../shared/reference/`` beside the repository root (read-only in CI);
without them the README tests skip and say so. Each block is classified by its text (a block the
table does not know fails the test, so a README change cannot slip through) and run from a
scratch directory holding a tiny LibriSpeech (synthetic audio in the LibriSpeech layout). Python
script lines run the script file itself as ``__main__`` in this process with the README's argv
(a new interpreter per line would spend most of the time importing); ``bash`` lines and the HF
converter (whose cache location is read at import) run in a new process. Only sizes and paths
are substituted: ``python3`` -> this interpreter, the README's placeholders
(``LibriSpeech_PATH``, ``[DATA_DIR]``, ``Path/to/CkptFile``, ``EXP_DIR_PATH``, ``path/to/ckpt``,
``model_ckpt``...) -> scratch paths, and the shipped configs that ``./<mode>/config/...`` resolves
to -> the tiny ones (``configs/<mode>/config_*_tiny.yaml``, whose sizes are small) placed where
the resolver looks first, ``./configs/<mode>/``. Flags are never changed.

Also: checkpoints in the ORIGINAL key layouts (a MelHuBERT checkpoint of the original code, a
DPHuBERT stage-1 Lightning checkpoint of the original code, both built here from the layouts)
go through the README snippet / ``prune.py`` unchanged.
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
DPHUBERT_README = REFERENCE / "seed-dphubert-readme.txt"
MELHUBERT_README = REFERENCE / "seed-melhubert-compression-readme.txt"
NUM_CLUSTERS = 50  # configs/*/config_model_tiny.yaml: num_cluster 50

needs_readmes = pytest.mark.skipif(
    not (DPHUBERT_README.is_file() and MELHUBERT_README.is_file()),
    reason=f"the original READMEs are not at {REFERENCE} (CI keeps shared/ beside the clone)",
)


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------


def fenced_blocks(path: Path) -> list[str]:
    """The contents of every ``` fenced block, in order."""
    return [m.group(1) for m in re.finditer(r"^```[^\n]*\n(.*?)^```", path.read_text(), flags=re.S | re.M)]


def classify(block: str) -> str:
    """A name for each block of the two READMEs; unknown blocks fail."""
    text = block.strip()
    rules = [
        ("versions", text.startswith("# Main packages for training")),
        ("prepare_data", text.startswith("python prepare_data.py")),
        ("tsv_tree", text.startswith("data\n")),
        ("convert", text.startswith("mkdir -p pretrained")),
        ("sbatch", text == "sbatch run.sh"),
        ("dphubert_load", "wav2vec2_model(**ckpt[\"config\"])" in text),
        ("citation", text.startswith("@inproceedings")),
        ("preprocess_sh", text.startswith("bash preprocess.sh")),
        ("train_melhubert", text.startswith("python3 train.py -m melhubert")),
        ("train_weight_pruning", "-m weight-pruning" in text),
        ("train_head_l1", "-m head-pruning" in text and "/l1/" in text),
        ("train_head_data_driven", "-m head-pruning" in text and "/data_driven/" in text),
        ("train_distillation", "-m distillation" in text),
        ("melhubert_load", "from model import MelHuBERTConfig, MelHuBERTModel" in text),
    ]
    names = [name for name, hit in rules if hit]
    assert len(names) == 1, f"unclassified README block (add it to the table and run it):\n{block}"
    return names[0]


@needs_readmes
def test_every_block_is_classified_once() -> None:
    names = [classify(b) for b in fenced_blocks(DPHUBERT_README)] + [classify(b) for b in fenced_blocks(MELHUBERT_README)]
    assert sorted(names) == sorted([
        "versions", "prepare_data", "tsv_tree", "convert", "sbatch", "dphubert_load", "citation",
        "preprocess_sh", "train_melhubert", "train_weight_pruning", "train_head_l1", "train_head_data_driven",
        "train_distillation", "melhubert_load",
    ])


# --------------------------------------------------------------------------------------------
# Scratch "user directory": tiny LibriSpeech, tiny configs where the resolver looks first
# --------------------------------------------------------------------------------------------


def write_tiny_librispeech(root: Path, split: str, seconds: list[float], seed: int) -> None:
    """Synthetic speech-like audio (harmonics + noise, 16 kHz) in the LibriSpeech layout, with transcripts.

    Speaker ``seed``, chapter 198.
    """
    rng = np.random.default_rng(seed)
    chapter = root / split / str(seed) / "198"
    chapter.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, duration in enumerate(seconds):
        n = int(duration * 16000)
        t = np.arange(n) / 16000
        f0 = rng.uniform(100, 220)
        audio = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
        audio = 0.1 * audio * (1 + np.sin(2 * np.pi * rng.uniform(2, 5) * t)) + 0.01 * rng.standard_normal(n)
        name = f"{seed}-198-{i:04d}"
        soundfile.write(chapter / f"{name}.flac", audio.astype(np.float32), 16000)
        lines.append(f"{name} HELLO WORLD {i}")
    (chapter / f"{seed}-198.trans.txt").write_text("\n".join(lines) + "\n")


MODE_DIRS = {
    "melhubert": "melhubert", "weight_pruning": "weight_pruning", "head_l1": "head_pruning/l1",
    "head_data_driven": "head_pruning/data_driven", "distillation": "distillation",
}


def write_tiny_configs(cwd: Path, csv: Path) -> None:
    """``cwd/configs/<mode>/config_{model,runner}.yaml``: the shipped tiny configs, data = ``csv``."""
    for name, folder in MODE_DIRS.items():
        source = ROOT / "configs" / folder
        model = yaml.safe_load((source / "config_model_tiny.yaml").read_text())
        runner = yaml.safe_load((source / "config_runner_tiny.yaml").read_text())
        runner["datarc"]["sets"] = [str(csv)]
        runner["runner"]["progress_bar"] = False
        if name == "melhubert":  # sizes only: a few updates instead of 200
            runner["runner"].update(total_steps=6, save_step=None, warmup_steps=1)
        if name == "weight_pruning":  # sizes only: one prune after 2 of 4 updates
            runner["runner"].update(total_steps=4, save_step=None)
            runner["prune"].update(n_iters=1, sparsity=[0.5], warnup=2, period=2)
        if name in ("head_l1", "head_data_driven"):  # one prune step (one head per layer) after 1 of 3 updates
            runner["runner"].update(total_steps=3, save_step=None)
            runner["prune"].update(total_steps=1, interval=[0], warm_up=1)
        if name == "distillation":  # the original's config carries the teacher's architecture
            model["teacher"] = yaml.safe_load((ROOT / "configs/melhubert/config_model_tiny.yaml").read_text())["melhubert"]
            runner["runner"].update(n_epochs=-1, total_steps=4, save_step=None, save_every_x_epochs=None)
        target = cwd / "configs" / folder
        target.mkdir(parents=True, exist_ok=True)
        (target / "config_model.yaml").write_text(yaml.safe_dump(model))
        (target / "config_runner.yaml").write_text(yaml.safe_dump(runner))


def run_block(command: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run one README command line in a new process (``python3`` -> this interpreter, scripts from the root)."""
    argv = shlex.split(command)
    if argv[0] in ("python", "python3"):
        argv[0] = sys.executable
        argv[1] = str(ROOT / argv[1])
    elif argv[0] == "bash":
        argv[1] = str(ROOT / argv[1])
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    print(f"[{time.perf_counter() - started:6.1f} s] {command}")  # shown with pytest -s
    assert result.returncode == 0, f"{command}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    return result


def run_script(command: str, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: D417
    """Run a README ``python[3] SCRIPT.py ARGS`` line in this process: the script file itself as ``__main__``
    with that argv and working directory (a new interpreter per command would cost most of the test's time
    in imports)."""
    argv = shlex.split(command)
    assert argv[0] in ("python", "python3"), command
    script = ROOT / argv[1]
    started = time.perf_counter()
    with monkeypatch.context() as patch:
        patch.chdir(cwd)
        patch.setattr(sys, "argv", [str(script), *argv[2:]])
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exit_:
            assert exit_.code in (None, 0), f"{command}: exit status {exit_.code}"
    print(f"[{time.perf_counter() - started:6.1f} s] {command}")  # shown with pytest -s


def substitute(block: str, **paths: str) -> str:
    for placeholder, value in paths.items():
        block = block.replace(placeholder, value)
    return block


def run_snippet(code: str, namespace: dict[str, Any], cwd: Path) -> dict[str, Any]:
    """``exec`` a README code block with ``cwd`` as the working directory and ``ROOT`` importable."""
    previous = Path.cwd()
    sys.path.insert(0, str(ROOT))
    os.chdir(cwd)
    try:
        exec(compile(code, "<README block>", "exec"), namespace)
    finally:
        os.chdir(previous)
        sys.path.remove(str(ROOT))
    return namespace


# --------------------------------------------------------------------------------------------
# MelHuBERT compression README, in order
# --------------------------------------------------------------------------------------------


@needs_readmes
def test_melhubert_compression_readme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    blocks = {classify(b): b.strip() for b in fenced_blocks(MELHUBERT_README)}
    write_tiny_librispeech(tmp_path / "LibriSpeech", "train-clean-360", [2.6, 3.0, 3.4, 2.8, 3.2, 3.6], seed=1)

    # bash preprocess.sh [DATA_DIR]   (LibriSpeech found at ./LibriSpeech; K-means size for the tiny model)
    data_dir = tmp_path / "DATA_DIR"
    result = run_block(substitute(blocks["preprocess_sh"], **{"[DATA_DIR]": str(data_dir)}), tmp_path,
                       env={"PREPROCESS_ARGS": f"--num-clusters {NUM_CLUSTERS} --kmeans-fraction 1 --workers 1 --no-progress"})
    csv = data_dir / "libri-360-data-cluster-pair.csv"
    assert csv.is_file() and "datarc.sets" in result.stdout
    mean_std = np.load(data_dir / "mean-std.npy")
    assert mean_std.shape == (2, 40) and (mean_std[1] > 0).all()
    rows = csv.read_text().splitlines()
    assert rows[0] == "file_path,label_path,length" and len(rows) == 7
    feature, label, length = rows[1].split(",")
    assert np.load(feature).shape == (int(length), 40)
    labels = np.load(label)
    assert labels.shape == (int(length),) and 0 <= labels.min() and labels.max() < NUM_CLUSTERS

    # The train.py commands: ./<mode>/config/... resolved to ./configs/<mode>/ (tiny copies here).
    write_tiny_configs(tmp_path, csv)
    exp = {name: tmp_path / f"exp_{name}" for name in ("melhubert", "weight", "l1", "dd", "distill")}
    capsys.readouterr()
    run_script(substitute(blocks["train_melhubert"], EXP_DIR_PATH=str(exp["melhubert"])), tmp_path, monkeypatch)
    stderr = capsys.readouterr().err
    assert "melhubert/config/config_model.yaml -> configs/melhubert/config_model.yaml" in stderr
    assert "melhubert/config/config_runner.yaml -> configs/melhubert/config_runner.yaml" in stderr
    assert stderr.count("original MelHuBERT config layout") == 1
    pretrained = exp["melhubert"] / "last-step.ckpt"
    assert pretrained.is_file()
    for name, key in (("weight", "train_weight_pruning"), ("l1", "train_head_l1"), ("dd", "train_head_data_driven"),
                      ("distill", "train_distillation")):
        run_script(substitute(blocks[key], **{"Path/to/CkptFile": str(pretrained), "EXP_DIR_PATH": str(exp[name])}),
                   tmp_path, monkeypatch)
        assert (exp[name] / "last-step.ckpt").is_file(), name

    # Load models: verbatim, on this toolkit's checkpoints (pre-trained, head-pruned, distilled student).
    for checkpoint, layers, heads in ((pretrained, 2, [4, 4]), (exp["l1"] / "last-step.ckpt", 2, [3, 3]),
                                      (exp["distill"] / "last-step.ckpt", 1, [4])):
        T = 37
        namespace = run_snippet(blocks["melhubert_load"], {
            "model_ckpt": str(checkpoint), "device": "cpu", "mel_input": torch.randn(2, T, 80),
            "input_pad_mask": torch.ones(2, T)}, tmp_path)
        assert len(namespace["hidden_states"]) == layers
        assert namespace["last_layer_feat"].shape == (2, T, 64)
        assert namespace["upstream_model"].config.heads_per_layer == heads
        assert namespace["upstream_config"]["num_cluster"] == NUM_CLUSTERS


# --------------------------------------------------------------------------------------------
# DPHuBERT README, in order
# --------------------------------------------------------------------------------------------


TINY_HF = dict(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    conv_dim=(32, 32, 32), conv_kernel=(10, 3, 3), conv_stride=(5, 2, 2),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=12,
)


def offline_hub_cache(home: Path, repo_id: str) -> None:
    """A Hugging Face cache holding a tiny HubertModel under ``repo_id`` (the path substitution for the hub)."""
    import transformers

    torch.manual_seed(0)
    model = transformers.HubertModel(transformers.HubertConfig(**TINY_HF))
    snapshot = home / "hub" / f"models--{repo_id.replace('/', '--')}" / "snapshots" / ("0" * 40)
    model.save_pretrained(snapshot)
    (snapshot.parent.parent / "refs").mkdir(parents=True, exist_ok=True)
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)


@needs_readmes
def test_dphubert_readme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = {classify(b): b.strip() for b in fenced_blocks(DPHUBERT_README)}

    # "versions": torch 1.13 / torchaudio / fairseq / PL 1.8 are not needed (no torchaudio, no fairseq).
    assert "torchaudio=0.13.1" in blocks["versions"]
    import lightning

    assert int(lightning.__version__.split(".")[0]) >= 2 and "torchaudio" not in sys.modules

    # python prepare_data.py --data LibriSpeech_PATH --out data/librispeech  -> the tree block
    corpus = tmp_path / "LibriSpeech"
    write_tiny_librispeech(corpus, "train-clean-100", [2.5, 3.0], seed=2)
    write_tiny_librispeech(corpus, "dev-clean", [2.5], seed=3)
    run_script(substitute(blocks["prepare_data"], LibriSpeech_PATH=str(corpus)), tmp_path, monkeypatch)
    tree = [line.strip("└├─│ ") for line in blocks["tsv_tree"].splitlines()]
    assert tree == ["data", "librispeech", "train100.tsv", "train960.tsv", "valid.tsv"]
    for name in tree[2:]:
        assert (tmp_path / "data" / "librispeech" / name).is_file(), name

    # mkdir -p pretrained; python convert_hubert_from_hf.py   (the hub served from an offline cache)
    offline_hub_cache(tmp_path / "hf_home", "facebook/hubert-base-ls960")
    env = {"HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    for line in blocks["convert"].splitlines():
        if line.startswith("mkdir"):
            subprocess.run(shlex.split(line), cwd=tmp_path, check=True)
        else:  # a new process: the hub cache location is read when huggingface_hub is imported
            run_block(line, tmp_path, env=env)
    converted = tmp_path / "pretrained" / "hubert-base-ls960.hf.pth"
    assert converted.is_file()

    # sbatch run.sh: run.sh and its SLURM semantics belong to issue 14 (see docs/coming-from-originals.md).
    assert blocks["sbatch"] == "sbatch run.sh"

    # Load a compressed model: verbatim, on the converted file and on a pruned one.
    pruned = tmp_path / "pruned.pth"
    stage1, init = original_stage1_checkpoint(tmp_path / "orig", converted)
    from cli.dphubert import prune_main

    prune_main(["--distilled_ckpt", str(stage1), "--original_ckpt", str(init), "--out", str(pruned)])
    for path in (converted, pruned):
        namespace = run_snippet(blocks["dphubert_load"].replace('"path/to/ckpt"', repr(str(path))), {}, tmp_path)
        result = namespace["result"]
        assert result.missing_keys == [] and result.unexpected_keys == []
        ckpt = torch.load(path, weights_only=True)
        assert sum(p.numel() for p in namespace["model"].parameters()) == sum(v.numel() for v in ckpt["state_dict"].values())


@needs_readmes
def test_sbatch_block_belongs_to_issue_14() -> None:
    pytest.skip("`sbatch run.sh`: run.sh and its SLURM semantics are issue 14's (docs/coming-from-originals.md)")


# --------------------------------------------------------------------------------------------
# Checkpoints in the ORIGINAL layouts (need no README)
# --------------------------------------------------------------------------------------------


LOAD_MODELS_SNIPPET = '''
import torch
from model import MelHuBERTConfig, MelHuBERTModel

all_states = torch.load(model_ckpt, map_location="cpu")
upstream_config = all_states["Upstream_Config"]["hubert"]
upstream_config = MelHuBERTConfig(upstream_config)
upstream_model = MelHuBERTModel(upstream_config).to(device)
state_dict = all_states["model"]
upstream_model.load_state_dict(state_dict)
upstream_model.eval() # If you are only used to extract representation
last_layer_feat, _, _, _, _, hidden_states, _ = upstream_model(mel_input, input_pad_mask, get_hidden=True, no_pred=True)
'''


def original_melhubert_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A file in the original MelHuBERT code's layout: released parameter names, ``Upstream_Config["hubert"]``,
    an argparse ``Args``; the config as the original yaml spells it (scalar heads / FFN, ``final_dim``)."""
    config = dict(feat_emb_dim=80, pos_emb_type="conv", pos_conv_depth=1, conv_pos=16, conv_pos_groups=4, encoder_layers=2,
                  encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=4, activation_fn="gelu",
                  layer_norm_first=False, attention_type="original", num_cluster=20, final_dim=40, pred_masked_weight=1.0,
                  pred_nomask_weight=0.0, skip_masked=False, skip_nomask=True, mask_prob=0.7, mask_length=5,
                  mask_selection="static", mask_other=0.0, no_mask_overlap=False, mask_min_space=1, learnable_mask_emb=False,
                  mask_before_proj=True, dropout=0.1, attention_dropout=0.1, activation_dropout=0.1, encoder_layerdrop=0.0)
    D, F, K, G, H = 64, 128, 16, 4, 64
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.1

    state: dict[str, torch.Tensor] = {
        "pre_extract_proj.weight": rand(D, 80), "pre_extract_proj.bias": rand(D),
        "encoder.pos_conv.0.bias": rand(D), "encoder.pos_conv.0.weight_g": rand(1, 1, K).abs() + 0.5,
        "encoder.pos_conv.0.weight_v": rand(D, D // G, K),
        "encoder.layer_norm.weight": 1 + rand(D), "encoder.layer_norm.bias": rand(D),
    }
    for i in range(2):
        p = f"encoder.layers.{i}."
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            state[f"{p}self_attn.{name}.weight"], state[f"{p}self_attn.{name}.bias"] = rand(H, D), rand(H)
        state[f"{p}self_attn_layer_norm.weight"], state[f"{p}self_attn_layer_norm.bias"] = 1 + rand(D), rand(D)
        state[f"{p}fc1.weight"], state[f"{p}fc1.bias"] = rand(F, D), rand(F)
        state[f"{p}fc2.weight"], state[f"{p}fc2.bias"] = rand(D, F), rand(D)
        state[f"{p}final_layer_norm.weight"], state[f"{p}final_layer_norm.bias"] = 1 + rand(D), rand(D)
    state["final_proj.weight"], state["final_proj.bias"] = rand(20, D), rand(20)
    checkpoint = {
        "model": state, "Upstream_Config": {"hubert": config, "task": {"sequence_length": 750}},
        "Optimizer": {}, "Step": 1000, "Runner": {"runner": {"total_steps": 1000}},
        "Args": argparse.Namespace(mode="melhubert", expdir="/home/someone/exp", seed=1337, multi_gpu=False),
    }
    torch.save(checkpoint, path)
    return config, state


def test_original_melhubert_checkpoint_through_the_load_snippet(tmp_path: Path) -> None:
    path = tmp_path / "melhubert-20ms-stage1-libri360.ckpt"
    config, state = original_melhubert_checkpoint(path)
    mel = torch.randn(2, 30, 80)
    pad = torch.ones(2, 30)
    pad[1, 20:] = 0
    namespace = run_snippet(LOAD_MODELS_SNIPPET, {"model_ckpt": str(path), "device": "cpu", "mel_input": mel,
                                                  "input_pad_mask": pad}, ROOT)
    model = namespace["upstream_model"]
    # The weights are the file's: the released names come back unchanged and equal.
    saved = model.state_dict()
    assert sorted(saved) == sorted(state)
    assert all(torch.equal(saved[k], state[k]) for k in state)
    assert len(namespace["hidden_states"]) == 2 and namespace["last_layer_feat"].shape == (2, 30, 64)
    # The padded utterance's real frames equal the utterance alone.
    alone = model(mel[1:, :20], torch.ones(1, 20), get_hidden=True, no_pred=True)[0]
    torch.testing.assert_close(namespace["last_layer_feat"][1, :20], alone[0], atol=1e-5, rtol=1e-5)


def test_toolkit_checkpoints_carry_the_hubert_section(tmp_path: Path) -> None:
    from wav2vec2.melhubert_checkpoint import read_checkpoint, save_checkpoint
    from wav2vec2.melhubert import MelHuBERTModel

    model = MelHuBERTModel(yaml.safe_load((ROOT / "configs/melhubert/config_model_tiny.yaml").read_text())["melhubert"])
    path = save_checkpoint(tmp_path / "ours.ckpt", model)
    upstream = read_checkpoint(path)["Upstream_Config"]
    assert upstream["hubert"] == upstream["melhubert"] and upstream["hubert"]["encoder_layers"] == 2


def original_stage1_checkpoint(folder: Path, teacher_file: Path | None = None) -> tuple[Path, Path]:
    """A stage-1 Lightning checkpoint as the ORIGINAL DPHuBERT code wrote it, and its student-init file.

    Layout: ``state_dict`` with ``teacher_model.*``, ``student_model.*`` (hard-concrete gates on
    conv / head / interm, as run.sh's ``--pruning_units conv,head,interm``), ``distill_linear_projs.{0..3}.*``
    (layers 0.4,8,12-style: entry 0 alone, entries 1-3 one shared Linear), ``lambda1`` / ``lambda2``;
    Lightning 1.8's top-level keys; no ``student_config``.
    """
    from helpers import tiny_config

    from methods.dphubert import build_gated_student
    from wav2vec2.checkpoint import build_model, save_model

    folder.mkdir(parents=True, exist_ok=True)
    init = folder / "student-init.pth"
    if teacher_file is None:
        torch.manual_seed(0)
        save_model(init, build_model(tiny_config("hubert", num_layers=3)))
    else:
        init.write_bytes(teacher_file.read_bytes())
    teacher_state = torch.load(init, weights_only=True)["state_dict"]
    student = build_gated_student(init, "conv,head,interm")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in student.named_parameters():
            if name.endswith("log_alpha"):  # a trained-looking mix of kept and dropped units
                parameter.copy_(torch.randn(parameter.shape, generator=g) * 4)
    D = student.config["encoder_embed_dim"]
    first, shared = torch.nn.Linear(D, D), torch.nn.Linear(D, D)
    projections = torch.nn.ModuleList([first, shared, shared, shared])
    state = {f"teacher_model.{k}": v for k, v in teacher_state.items()}
    state.update({f"student_model.{k}": v for k, v in student.state_dict().items()})
    state.update({f"distill_linear_projs.{k}": v for k, v in projections.state_dict().items()})
    state.update(lambda1=torch.tensor(0.3), lambda2=torch.tensor(-0.1))
    checkpoint = {
        "epoch": 8, "global_step": 50000, "pytorch-lightning_version": "1.8.1", "state_dict": state,
        "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": [],
    }
    path = folder / "ckpts" / "epoch=8-step=50000.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path, init


def test_original_dphubert_stage1_checkpoint_through_prune_py(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.dphubert import prune_main
    from wav2vec2 import counting
    from wav2vec2.checkpoint import CheckpointError, load_model

    stage1, init = original_stage1_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="written by the original DPHuBERT code .* pass --original_ckpt"):
        prune_main(["--distilled_ckpt", str(stage1)])

    # What the masks predict, from the original file directly (the original's own prune flags: layer-0 gates).
    from methods.original_stage1 import convert_original_stage1
    from wav2vec2.checkpoint import student_from_stage_checkpoint as student_from_checkpoint

    converted = convert_original_stage1(torch.load(stage1, weights_only=True), init, str(stage1))
    assert converted["student_config"]["encoder_prune_attention_heads"] is True
    assert converted["student_config"]["encoder_prune_attention_layer"] is False
    assert converted["hyper_parameters"] == {"distill_layers": "0.4,8,12", "distill_mode": "layer2layer"}
    expected = int(counting.num_params(student_from_checkpoint(converted, "x").eval(), "exact"))

    prune_main(["--distilled_ckpt", str(stage1), "--original_ckpt", str(init)])
    out = tmp_path / "pruned.pth"
    pruned = load_model(out, verbose=False)
    assert sum(p.numel() for p in pruned.parameters()) == expected
    saved = torch.load(out, weights_only=True)
    assert sorted(saved["distill_linear_projs"]) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    assert saved["distill_layers"] == "0.4,8,12"
    teacher_params = sum(v.numel() for v in torch.load(init, weights_only=True)["state_dict"].values())
    assert f"sparsity {1 - expected / teacher_params:.4f}" in capsys.readouterr().out


def test_prune_original_ckpt_checked_against_a_toolkit_checkpoint(tmp_path: Path) -> None:
    from helpers import tiny_config

    from methods.original_stage1 import check_original_ckpt
    from wav2vec2.checkpoint import CheckpointError, build_model, save_model

    other = tmp_path / "other.pth"
    save_model(other, build_model(tiny_config("hubert", num_layers=2)))
    config = {**tiny_config("hubert", num_layers=3), "encoder_prune_attention_heads": True}
    with pytest.raises(CheckpointError, match="describes another model .*encoder_num_layers"):
        check_original_ckpt(config, other, "stage1.ckpt")
    same = tmp_path / "same.pth"
    save_model(same, build_model(tiny_config("hubert", num_layers=3)))
    check_original_ckpt(config, same, "stage1.ckpt")  # prune switches aside, the same model: accepted
