"""The five compression modes of ``train.py`` end to end on tiny models of both families.

Every run goes through ``cli.train.run`` (in-process ``train.py``). Expected sizes
come from closed-form per-head / per-unit / per-factor formulas written out here, not from
the code under test; sparsities are counted directly on the reloaded weights.

Tiny MelHuBERT (``configs/melhubert/config_model_tiny.yaml``): 80-dim input, width 64,
2 layers x 4 heads x 16 dims, FFN 256, 50 clusters. Tiny HuBERT (``tests/helpers.py``):
width 32, 3 layers x 4 heads x 8 dims, FFN 24.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml

from cli.train import RunnerError, run
from wav2vec2.checkpoint import open_model_file as load_initial_model
from helpers import tiny_model
from wav2vec2.melhubert_checkpoint import load_melhubert, save_checkpoint
from speech_data.mel_data import MelBatch
from wav2vec2.melhubert import MelHuBERTModel
from test_train_cli import write_manifest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
MEL_MODEL = yaml.safe_load((CONFIGS / "melhubert" / "config_model_tiny.yaml").read_text())

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode"),  # the frozen teachers, on purpose
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]

# Tiny MelHuBERT dimensions (the yaml above).
D, F_IN, C, K, G, D_HEAD, FFN, LAYERS, HEADS = 64, 80, 50, 16, 4, 16, 256, 2, 4


def mel_params(heads: list[int], ffn: list[int], rank: int | None = None, D: int = D, d: int = D_HEAD) -> int:
    """Parameters of a MelHuBERT with these per-layer heads / FFN units (FFN at ``rank`` if given)."""
    total = F_IN * D + D  # pre_extract_proj
    total += D * (D // G) * K + K + D  # weight-normed positional conv (weight_v, weight_g (1, 1, K), bias)
    total += 2 * D  # encoder LayerNorm
    for h, f in zip(heads, ffn):
        if h:
            total += 3 * (D * h * d + h * d) + h * d * D + D  # q, k, v (+ biases), out_proj (+ bias)
        if f:
            total += (rank * (D + f) + f) + (rank * (f + D) + D) if rank else (D * f + f) + (f * D + D)
        total += 4 * D  # two LayerNorms
    return total + D * C + C  # final_proj


def per_head(D: int, d: int) -> int:
    return 4 * D * d + 3 * d  # q/k/v rows + their biases, out_proj columns


def per_unit(D: int) -> int:
    return 2 * D + 1  # fc1 row + bias, fc2 column


# ----------------------------------------------------------------------------------------------
# Fixtures: data, initial models, runner yamls
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mel(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 10-utterance manifest (buckets of 4, 4, 2) and a tiny MelHuBERT checkpoint."""
    root = tmp_path_factory.mktemp("mel")
    manifest = write_manifest(root / "data", [180, 260, 310, 150, 420, 205, 330, 275, 190, 240])
    torch.manual_seed(0)
    path = save_checkpoint(root / "tiny.ckpt", MelHuBERTModel(MEL_MODEL["melhubert"]), task=MEL_MODEL["task"])
    return {"root": root, "manifest": manifest, "ckpt": path}


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo corpus file lists and a tiny HuBERT ``.pth``."""
    from speech_data.demo_corpus import make_demo_corpus
    from speech_data.prepare import prepare_file_lists
    from wav2vec2.checkpoint import save_model

    root = tmp_path_factory.mktemp("audio")
    make_demo_corpus(root / "corpus", num_utterances=12, num_speakers=4, seed=0, workers=2, use_flite=False, show_progress=False)
    prepare_file_lists(root / "corpus", root / "tsv", workers=2, show_progress=False)
    return {"root": root, "tsv": root / "tsv" / "train100.tsv", "pth": save_model(root / "hubert.pth", tiny_model("hubert"))}


def runner_yaml(path: Path, template: str, data: dict[str, Any], *, runner: dict[str, Any] | None = None,
                section: str = "prune", **values: Any) -> Path:
    """A copy of ``configs/<template>`` with test data, no progress bar, and overrides."""
    config = yaml.safe_load((CONFIGS / template).read_text())
    config["runner"].update({"progress_bar": False, "log_step": 1, **(runner or {})})
    config["datarc"] = data
    if values:
        config[section].update(values)
    path.write_text(yaml.safe_dump(config))
    return path


def mel_data(mel: dict[str, Path]) -> dict[str, Any]:
    return {"num_workers": 0, "train_batch_size": 4, "max_timestep": 0, "sets": [str(mel["manifest"])]}


def audio_data(audio: dict[str, Path]) -> dict[str, Any]:
    # 1 s crops, 2 s of audio per batch: a few hundred frames at the tiny CNN's stride of 40 samples.
    return {"sets": [str(audio["tsv"])], "seconds_per_batch": 2.0, "max_sample_size": 16_000, "min_sample_size": 8_000,
            "num_workers": 0}


def train(mode: str, init: Path, model_yaml: Path | str, runner: Path, exp: Path, *extra: str) -> Path:
    return run(["-m", mode, "-i", str(init), "-g", str(model_yaml), "-c", str(runner), "-n", str(exp), "--seed", "5", *extra])


def resume(mode: str, exp: Path, checkpoint: str) -> dict[str, Any]:
    run(["-m", mode, "-n", str(exp), "--seed", "5", "--resume", str(exp / checkpoint)])
    return torch.load(exp / "last-step.ckpt", weights_only=True)


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def features(model: MelHuBERTModel, seed: int = 0) -> list[torch.Tensor]:
    """``extract_features`` twice on a fixed input: equal results prove eval mode (no dropout)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 30, model.config.feat_emb_dim, generator=generator)
    lengths = torch.tensor([30, 21])
    with torch.no_grad():
        first, _ = model.extract_features(x, lengths)
        second, _ = model.extract_features(x, lengths)
    assert not model.training and all(torch.equal(a, b) for a, b in zip(first, second))
    return first


def mel_pool(state: dict[str, torch.Tensor], layers: int = LAYERS) -> list[torch.Tensor]:
    """The weight-pruning pool from released key names: q/k/v/out/fc1/fc2 weights and biases."""
    names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"]
    return [state[f"encoder.layers.{i}.{n}.{p}"] for i in range(layers) for n in names for p in ("weight", "bias")]


# ----------------------------------------------------------------------------------------------
# Weight pruning
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weight_pruned(mel: dict[str, Path]) -> Path:
    """Prune targets 0.3 and 0.6 at events 5 and 7 of a 9-update budget; the gate postpones event 5.

    Tolerance -1000 makes the gate postpone whenever a target exists. With ``average_length``
    2 and period 2 a target exists only for event 5 (snapshot at update 3, once the EMA has its
    3 initial updates); appended events snapshot at the previous event, i.e. no target. So:
    postpone at 5 (budget 9 -> 11, one event appended at 9), prune 0.3 at 7, 0.6 at 9, stop at 11.
    """
    exp = mel["root"] / "weight"
    shutil.rmtree(exp, ignore_errors=True)
    runner = runner_yaml(mel["root"] / "weight.yaml", "weight_pruning/config_runner_tiny.yaml", mel_data(mel),
                         runner={"total_steps": 9, "save_step": 4}, n_iters=2, sparsity=[0.3, 0.6], warnup=5, period=2,
                         pruning_condition="converge", average_length=2, converge_loss_tolerance=-1000.0, smooth_factor=0.9)
    train("weight-pruning", mel["ckpt"], CONFIGS / "weight_pruning" / "config_model_tiny.yaml", runner, exp)
    return exp


def test_weight_pruning_gate_exact_sparsity_folded_export_and_resume(weight_pruned: Path) -> None:
    exp = weight_pruned
    last = load(exp / "last-step.ckpt")
    schedule = last["Pruning"]["schedule"]
    assert schedule["history"] == [[5, "postpone", 0.3], [7, "prune", 0.3], [9, "prune", 0.6]]
    assert last["Step"] == 11 and schedule["total_steps"] == 11  # the trainer followed the grown budget
    assert sorted(p.name for p in exp.glob("before-prune-*")) == ["before-prune-step-7-sparsity-0.ckpt",
                                                                 "before-prune-step-9-sparsity-0.3.ckpt"]

    pool_size = LAYERS * (4 * (D * D + D) + (D * FFN + FFN) + (FFN * D + D))
    P0 = mel_params([HEADS] * LAYERS, [FFN] * LAYERS)
    for name, sparsity in (("last-step.ckpt", 0.6), ("before-prune-step-9-sparsity-0.3.ckpt", 0.3)):
        checkpoint = load(exp / name)
        assert not any(k.endswith(("_orig", "_mask")) for k in checkpoint["model"]), "masks must be folded in the export"
        pool = mel_pool(checkpoint["model"])
        assert sum(t.numel() for t in pool) == pool_size
        masked = int(sparsity * pool_size + 0.5)
        assert sum(int((t == 0).sum()) for t in pool) == masked
        model = load_melhubert(exp / name)  # plain MelHuBERT, eval mode
        assert n_params(model) == P0
        assert sum(int(torch.count_nonzero(p)) for p in model.parameters()) == P0 - masked
        features(model)
    # The Lightning part keeps masks and the schedule for --resume.
    assert any(k.endswith("weight_mask") for k in last["state_dict"])

    # Resume before the postponement (the budget must grow again) and after it (restored budget 11).
    for checkpoint in ("checkpoint-step-4.ckpt", "checkpoint-step-8.ckpt"):
        resumed = resume("weight-pruning", exp, checkpoint)
        assert resumed["Step"] == 11 and resumed["Pruning"] == last["Pruning"]
        for key, value in last["state_dict"].items():
            assert torch.equal(resumed["state_dict"][key], value), (checkpoint, key)


# ----------------------------------------------------------------------------------------------
# Head and row pruning
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def head_pruned(mel: dict[str, Path], weight_pruned: Path) -> Path:
    """l1 / by_layer on the weight-pruned model: 2 heads (one per layer) at updates 2 and 6 of 8."""
    exp = mel["root"] / "heads"
    shutil.rmtree(exp, ignore_errors=True)
    runner = runner_yaml(mel["root"] / "heads.yaml", "head_pruning/l1/config_runner_tiny.yaml", mel_data(mel),
                         runner={"total_steps": 8, "save_step": 6, "warmup_steps": 10}, total_steps=2, interval=[0, 4])
    train("head-pruning", weight_pruned / "last-step.ckpt", CONFIGS / "head_pruning" / "l1" / "config_model_tiny.yaml", runner, exp)
    return exp


def test_head_pruning_l1_removes_heads_updates_config_and_resumes(head_pruned: Path, weight_pruned: Path) -> None:
    exp = head_pruned
    P0 = mel_params([HEADS] * LAYERS, [FFN] * LAYERS)
    last = load(exp / "last-step.ckpt")
    config = last["Upstream_Config"]["melhubert"]
    assert config["encoder_attention_heads"] == 2 and config["encoder_attention_head_dim"] == D_HEAD
    assert "Pruned_heads" not in last  # counts live in the config; the history is under Head_pruning
    assert [step["removed"].keys() for step in last["Head_pruning"]["history"]] == [{"0", "1"}, {"0", "1"}]
    model = load_melhubert(exp / "last-step.ckpt")
    assert n_params(model) == P0 - 2 * 2 * per_head(D, D_HEAD) == mel_params([2, 2], [FFN] * LAYERS)
    features(model)
    assert n_params(load_melhubert(exp / "before-prune-step-2-heads-8.ckpt")) == P0
    assert n_params(load_melhubert(exp / "before-prune-step-6-heads-6.ckpt")) == P0 - 2 * per_head(D, D_HEAD)
    # The optimizer was rebuilt at the last prune: fresh Adam moments of the new shapes, 2 updates old,
    # and the LR warm-up (10 updates, lr 5e-4) continued at update 8 instead of restarting.
    optimizer = last["optimizer_states"][0]
    moments = sorted(tuple(s["exp_avg"].shape) for s in optimizer["state"].values())
    assert moments == sorted(tuple(v.shape) for v in last["model"].values())
    assert {int(s["step"]) for s in optimizer["state"].values()} == {2}
    assert last["lr_schedulers"][0]["last_epoch"] == 8
    assert optimizer["param_groups"][0]["lr"] == pytest.approx(5e-4 * 9 / 10)
    # l1 by_layer removed the head of least Σ|W| in each layer (scores recorded before removal).
    first = last["Head_pruning"]["history"][0]
    for layer, scores in first["scores"].items():
        assert first["removed"][layer] == [min(range(len(scores)), key=scores.__getitem__)]

    # checkpoint-step-6 is written before the prune of update 6 (pending): the resumed run prunes first,
    # rebuilds the optimizer, and ends identical.
    assert load(exp / "checkpoint-step-6.ckpt")["Pruning"]["pending_update"]["step"] == 6
    resumed = resume("head-pruning", exp, "checkpoint-step-6.ckpt")
    assert resumed["Step"] == 8 and resumed["Pruning"]["history"] == last["Pruning"]["history"]
    for key, value in last["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key


def test_data_driven_head_pruning_scores_all_batches_and_protects_one_head_per_layer(mel: dict[str, Path]) -> None:
    exp = mel["root"] / "heads_dd"
    runner = runner_yaml(mel["root"] / "heads_dd.yaml", "head_pruning/data_driven/config_runner_tiny.yaml", mel_data(mel),
                         runner={"total_steps": 3, "save_step": None}, num_heads_each_step=3, total_steps=1,
                         interval=[0], warm_up=1, data_ratio=1.0)
    last = load(train("head-pruning", mel["ckpt"], CONFIGS / "head_pruning" / "data_driven" / "config_model_tiny.yaml", runner, exp))
    (step,) = last["Head_pruning"]["history"]
    assert sorted(step["scored_batch_sizes"]) == [2, 4, 4]  # the whole epoch, incl. the last, smaller bucket
    scores = {int(layer): torch.tensor(s) for layer, s in step["scores"].items()}
    for s in scores.values():
        assert abs(float(s.norm()) - 1.0) < 1e-9  # normalize_by_layer: 2
    # by_whole: the 3 lowest heads overall, never the best of a layer.
    candidates = sorted((float(v), layer, h) for layer, s in scores.items() for h, v in enumerate(s.tolist()) if h != int(s.argmax()))
    expected: dict[str, list[int]] = {}
    for _, layer, h in candidates[:3]:
        expected.setdefault(str(layer), []).append(h)
    assert {k: sorted(v) for k, v in expected.items()} == step["removed"]
    model = load_melhubert(exp / "last-step.ckpt")
    heads = model.config.heads_per_layer
    assert sum(heads) == 5 and min(heads) >= 1
    assert n_params(model) == mel_params(heads, [FFN] * LAYERS) == mel_params([HEADS] * LAYERS, [FFN] * LAYERS) - 3 * per_head(D, D_HEAD)


def test_row_pruning_removes_units_per_layer(mel: dict[str, Path]) -> None:
    exp = mel["root"] / "rows"
    runner = runner_yaml(mel["root"] / "rows.yaml", "row_pruning/config_runner_tiny.yaml", mel_data(mel),
                         runner={"total_steps": 5, "save_step": None}, total_steps=2, interval=2, warm_up=1)
    last = load(train("row-pruning", mel["ckpt"], CONFIGS / "row_pruning" / "config_model_tiny.yaml", runner, exp))
    assert last["Upstream_Config"]["melhubert"]["encoder_ffn_embed_dim"] == FFN - 64
    model = load_melhubert(exp / "last-step.ckpt")
    P0 = mel_params([HEADS] * LAYERS, [FFN] * LAYERS)
    assert n_params(model) == P0 - 2 * LAYERS * 32 * per_unit(D) == mel_params([HEADS] * LAYERS, [FFN - 64] * LAYERS)
    assert n_params(load_melhubert(exp / f"before-prune-step-3-ffn-{FFN - 32}.ckpt")) == P0 - LAYERS * 32 * per_unit(D)
    features(model)


# ----------------------------------------------------------------------------------------------
# Low rank and distillation (chained after head pruning)
# ----------------------------------------------------------------------------------------------


def test_head_pruned_to_low_rank_to_distillation_chain(mel: dict[str, Path], head_pruned: Path) -> None:
    root = mel["root"]
    runner = runner_yaml(root / "low_rank.yaml", "low_rank/config_runner_tiny.yaml", mel_data(mel),
                         runner={"total_steps": 3, "save_step": 2}, section="factorize", rank=8)
    low_rank = train("low-rank", head_pruned / "last-step.ckpt", CONFIGS / "low_rank" / "config_model_tiny.yaml", runner, root / "lr")
    checkpoint = load(low_rank)
    resumed = resume("low-rank", root / "lr", "checkpoint-step-2.ckpt")  # rebuilt factorised, not factorised again
    assert all(torch.equal(resumed["state_dict"][k], v) for k, v in checkpoint["state_dict"].items())
    ranks = checkpoint["Upstream_Config"]["melhubert"]["low_rank"]
    assert ranks == {f"encoder.layers.{i}.feed_forward.{n}": 8 for i in range(LAYERS) for n in ("intermediate_dense", "output_dense")}
    teacher = load_melhubert(low_rank)
    assert n_params(teacher) == mel_params([2, 2], [FFN] * LAYERS, rank=8) == checkpoint["Low_rank"]["params_after"]
    teacher_features = features(teacher)

    # Masked KL into a 1-layer student that starts as the teacher's first (head-pruned, factorised) layer.
    runner = runner_yaml(root / "distill.yaml", "distillation/config_runner_tiny.yaml", mel_data(mel),
                         runner={"total_steps": 3, "save_step": None})
    student_path = train("distillation", low_rank, CONFIGS / "distillation" / "config_model_tiny.yaml", runner, root / "kd")
    distilled = load(student_path)
    assert not any(k.startswith("teacher.") for k in distilled["state_dict"])  # teacher-free checkpoint
    assert distilled["Distillation"]["loss_param"]["type"] == "masked" and distilled["Distillation"]["teacher"] == str(low_rank)
    student = load_melhubert(student_path)
    assert student.num_layers == 1 and student.config.heads_per_layer == [2]
    assert student.config.low_rank == {f"encoder.layers.0.feed_forward.{n}": 8 for n in ("intermediate_dense", "output_dense")}
    assert n_params(student) == mel_params([2], [FFN], rank=8)
    assert features(student)[0].shape == teacher_features[0].shape

    # The student as -i of another mode: the teacher of a layer-to-layer distillation into a random 1-layer model.
    model_cfg = yaml.safe_load((CONFIGS / "distillation" / "config_model_tiny.yaml").read_text())
    model_cfg["melhubert"]["initial_from_teacher"] = False
    model_cfg["loss_param"]["type"] = "layer2layer"
    (root / "l2l_model.yaml").write_text(yaml.safe_dump(model_cfg))
    l2l = load(train("distillation", student_path, root / "l2l_model.yaml", runner, root / "kd_l2l"))
    assert l2l["Distillation"]["pairs"] == [[1, 1]] and "heads.0.weight" in l2l["state_dict"]
    assert n_params(load_melhubert(root / "kd_l2l" / "last-step.ckpt")) == mel_params([HEADS], [FFN])


def test_kl_objective_matches_the_formula(mel: dict[str, Path]) -> None:
    """(1 − α)·CE + α·KL(teacher/T ‖ student/T), batchmean over the scored frames, masked or not."""
    from methods.distillation import DistillationModule, DistillSettings

    torch.manual_seed(1)
    teacher = MelHuBERTModel(MEL_MODEL["melhubert"]).eval()
    student = MelHuBERTModel({**MEL_MODEL["melhubert"], "encoder_layers": 1, "dropout": 0.0, "attention_dropout": 0.0,
                              "activation_dropout": 0.0}).eval()
    features_ = torch.randn(2, 40, F_IN)
    pad_mask = torch.ones(2, 40)
    pad_mask[1, 31:] = 0
    labels = torch.randint(0, C, (2, 40)).masked_fill(pad_mask == 0, -100)
    batch = MelBatch(features_, labels, pad_mask, pad_mask.sum(1).long(), torch.arange(2))
    for kind in ("nomasked", "masked"):
        module = DistillationModule(copy.deepcopy(student), family="melhubert", teacher=copy.deepcopy(teacher),
                                    settings=DistillSettings(type=kind, T=2.0, alpha=0.25))
        generator_seed = 7
        loss, logs = module._posterior_loss(batch, torch.Generator().manual_seed(generator_seed))
        valid = pad_mask.bool()
        frames = valid
        mask = None
        if kind == "masked":
            mask = teacher.draw_mask(pad_mask, torch.Generator().manual_seed(generator_seed))
            frames = valid & mask
            assert 0 < int(frames.sum()) < int(valid.sum())
        with torch.no_grad():
            t = teacher.final_proj(teacher(features_, pad_mask, no_pred=True, teacher_mask_indices=mask)[0][frames])
            s = student.final_proj(student(features_, pad_mask, no_pred=True, teacher_mask_indices=mask)[0][frames])
        p_t, log_p_s = F.softmax(t / 2.0, -1), F.log_softmax(s / 2.0, -1)
        kl = (p_t * (p_t.log() - log_p_s)).sum(-1).mean()
        ce = F.cross_entropy(s, labels[frames])
        assert torch.allclose(loss, 0.75 * ce + 0.25 * kl, atol=1e-5), kind
        assert torch.allclose(logs["kl"], kl, atol=1e-5)
    # The teacher stays in eval mode (no dropout) whatever mode the module is switched to.
    module.train()
    assert module.model.training and not any(m.training for m in module.teacher.modules())


def test_student_starts_from_the_teachers_first_layers(mel: dict[str, Path]) -> None:
    from methods.distillation import melhubert_student

    torch.manual_seed(2)
    teacher = MelHuBERTModel(MEL_MODEL["melhubert"]).eval()
    model_cfg = yaml.safe_load((CONFIGS / "distillation" / "config_model_tiny.yaml").read_text())
    student = melhubert_student(teacher, model_cfg, {"runner": {"frame_period_ms": 20}})
    own, theirs = student.state_dict(), teacher.state_dict()
    copied = [k for k in own if not k.startswith(("final_proj", "encoder.layers.1."))]
    assert all(torch.equal(own[k], theirs[k]) for k in copied)  # input projection, pos-conv, LayerNorm, layer 0
    assert not torch.equal(own["final_proj.weight"], theirs["final_proj.weight"])  # the head starts random
    assert student.num_layers == 1 and not any(k.startswith("encoder.layers.1.") for k in own)


# ----------------------------------------------------------------------------------------------
# wav2vec2 family
# ----------------------------------------------------------------------------------------------

W_D, W_HEAD, W_HEADS, W_FFN, W_LAYERS = 32, 8, 4, 24, 3


def test_waveform_model_head_then_row_pruning(audio: dict[str, Path]) -> None:
    root = audio["root"]
    P0 = n_params(load_initial_model(audio["pth"]).model)
    runner = runner_yaml(root / "heads.yaml", "head_pruning/data_driven/config_runner_tiny.yaml", audio_data(audio),
                         runner={"total_steps": 5, "save_step": None}, num_heads_each_step=2, total_steps=2, interval=[0, 2],
                         warm_up=1)
    heads_path = train("head-pruning", audio["pth"], CONFIGS / "head_pruning" / "data_driven" / "config_model_tiny.yaml", runner,
                       root / "w_heads")
    checkpoint = load(heads_path)
    assert "teacher.encoder.transformer.layers.0.attention.q_proj.weight" not in checkpoint["state_dict"]
    config = checkpoint["wav2vec2"]["config"]
    assert sum(config["encoder_num_heads"]) == W_LAYERS * W_HEADS - 4 and min(config["encoder_num_heads"]) >= 1
    initial = load_initial_model(heads_path)  # the runner's -i loader: strict, eval mode
    assert initial.family == "wav2vec2" and not initial.model.training
    assert n_params(initial.model) == P0 - 4 * per_head(W_D, W_HEAD)
    with torch.no_grad():
        states, _ = initial.model.extract_features(torch.randn(1, 4000), torch.tensor([4000]))
    assert len(states) == W_LAYERS + 1

    # The head-pruned file as -i of row pruning: one step of 4 units in every layer.
    runner = runner_yaml(root / "rows.yaml", "row_pruning/config_runner_tiny.yaml", audio_data(audio),
                         runner={"total_steps": 3, "save_step": None}, num_rows_each_step=4, total_steps=1, interval=1, warm_up=1)
    rows = load(train("row-pruning", heads_path, CONFIGS / "row_pruning" / "config_model_tiny.yaml", runner, root / "w_rows"))
    assert rows["wav2vec2"]["config"]["encoder_ff_interm_features"] == [W_FFN - 4] * W_LAYERS
    assert rows["wav2vec2"]["config"]["encoder_num_heads"] == config["encoder_num_heads"]
    assert n_params(load_initial_model(root / "w_rows" / "last-step.ckpt").model) == (
        P0 - 4 * per_head(W_D, W_HEAD) - W_LAYERS * 4 * per_unit(W_D))


@pytest.fixture(scope="module")
def waveform_low_rank(audio: dict[str, Path]) -> Path:
    runner = runner_yaml(audio["root"] / "low_rank.yaml", "low_rank/config_runner_tiny.yaml", audio_data(audio),
                         runner={"total_steps": 2, "save_step": None}, section="factorize", rank=4)
    return train("low-rank", audio["pth"], CONFIGS / "low_rank" / "config_model_tiny.yaml", runner, audio["root"] / "w_lr")


def test_waveform_low_rank_records_its_structure(audio: dict[str, Path], waveform_low_rank: Path) -> None:
    from wav2vec2.checkpoint import wav2vec2_from_files as load_waveform_files

    files = load(waveform_low_rank)["wav2vec2"]
    assert files["low_rank"] == {f"encoder.transformer.layers.{i}.feed_forward.{n}": 4
                                 for i in range(W_LAYERS) for n in ("intermediate_dense", "output_dense")}
    model = load_waveform_files(files, str(waveform_low_rank))
    P0 = n_params(load_initial_model(audio["pth"]).model)
    # fc1 (24 x 32) and fc2 (32 x 24) become rank-4 factors; biases stay.
    assert n_params(model) == P0 - W_LAYERS * 2 * (W_D * W_FFN - 4 * (W_D + W_FFN))


def test_waveform_low_rank_output_is_a_valid_initial_weight(waveform_low_rank: Path) -> None:
    assert load_initial_model(waveform_low_rank).family == "wav2vec2"


def test_waveform_distillation_layer_to_layer_resumes_with_its_teacher(audio: dict[str, Path]) -> None:
    root = audio["root"]
    model_cfg = yaml.safe_load((CONFIGS / "distillation" / "config_model_tiny.yaml").read_text())
    model_cfg["loss_param"]["type"] = "layer2layer"
    model_cfg["waveform_student"]["encoder_layers"] = 2
    (root / "kd_model.yaml").write_text(yaml.safe_dump(model_cfg))
    runner = runner_yaml(root / "kd.yaml", "distillation/config_runner_tiny.yaml", audio_data(audio),
                         runner={"total_steps": 4, "save_step": 2})
    exp = root / "w_kd"
    last = load(train("distillation", audio["pth"], root / "kd_model.yaml", runner, exp))
    assert last["Distillation"]["pairs"] == [[1, 2], [2, 3]]  # 2 student layers onto 3 teacher layers
    assert not any(k.startswith("teacher.") for k in last["state_dict"])
    teacher = load_initial_model(audio["pth"]).model
    student = load_initial_model(exp / "last-step.ckpt").model
    assert student.num_layers == 2
    assert n_params(student) == n_params(teacher) - sum(p.numel() for p in teacher.encoder.transformer.layers[2].parameters())
    resumed = resume("distillation", exp, "checkpoint-step-2.ckpt")  # the teacher comes back from the recorded -i
    assert resumed["Step"] == 4
    for key, value in last["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------


def test_mode_config_errors_name_file_and_key(mel: dict[str, Path], audio: dict[str, Path]) -> None:
    root = mel["root"]

    def error(mode: str, template: str, model_yaml: Path, init: Path = mel["ckpt"], data: dict[str, Any] | None = None,
              section: str = "prune", runner: dict[str, Any] | None = None, **values: Any) -> str:
        path = runner_yaml(root / "bad.yaml", template, data or mel_data(mel), runner=runner, section=section, **values)
        with pytest.raises((RunnerError, FileNotFoundError)) as info:
            train(mode, init, model_yaml, path, root / "bad_exp")
        assert "bad.yaml" in str(info.value) or "config_model_tiny.yaml" in str(info.value)
        return str(info.value)

    weight = ("weight-pruning", "weight_pruning/config_runner_tiny.yaml", CONFIGS / "weight_pruning" / "config_model_tiny.yaml")
    assert "'prune.sparsity'" in error(*weight, sparsity=[0.5, 0.3, 0.7])
    assert "not before runner.total_steps=16" in error(*weight, period=8)
    heads = ("head-pruning", "head_pruning/l1/config_runner_tiny.yaml", CONFIGS / "head_pruning" / "l1" / "config_model_tiny.yaml")
    assert "'prune.num_heads_each_step'" in error(*heads, num_heads_each_step=3)  # not a multiple of 2 layers
    assert "'prune.num_heads_each_step'" in error(*heads, total_steps=4, interval=[0, 1, 2, 3])  # would empty a layer
    assert "'datarc.sets' holds audio data" in error(*heads, data=audio_data(audio))
    low_rank = ("low-rank", "low_rank/config_runner_tiny.yaml", CONFIGS / "low_rank" / "config_model_tiny.yaml")
    assert "factorises nothing" in error(*low_rank, section="factorize", rank=60)  # 60 * (64 + 256) >= 64 * 256
    assert "set exactly one of" in error(*low_rank, section="factorize", energy=0.9)
    message = error("distillation", "distillation/config_runner_tiny.yaml", CONFIGS / "distillation" / "config_model_tiny.yaml",
                    init=audio["pth"], data=audio_data(audio))
    assert "'loss_param.type'" in message and "layer2layer" in message


def test_waveform_model_weight_pruning_exact_zeros_and_folded_export(audio: dict[str, Path]) -> None:
    root = audio["root"]
    runner = runner_yaml(root / "weight_w.yaml", "weight_pruning/config_runner_tiny.yaml", audio_data(audio),
                         runner={"total_steps": 3, "save_step": None}, n_iters=1, sparsity=[0.5], warnup=1, period=1,
                         pruning_condition="normal")
    exported = load(train("weight-pruning", audio["pth"], CONFIGS / "weight_pruning" / "config_model_tiny.yaml", runner,
                          root / "w_weight"))
    state = exported["wav2vec2"]["state_dict"]
    assert not any(k.endswith(("_orig", "_mask")) for k in state), "masks must be folded in the export"
    pool_names = ("attention.q_proj.", "attention.k_proj.", "attention.v_proj.", "attention.out_proj.",
                  "feed_forward.intermediate_dense.", "feed_forward.output_dense.")
    pool = [v for k, v in state.items() if k.startswith("encoder.transformer.layers.") and any(p in k for p in pool_names)]
    inner = W_HEADS * W_HEAD
    pool_size = W_LAYERS * (3 * (W_D * inner + inner) + (inner * W_D + W_D) + (W_D * W_FFN + W_FFN) + (W_FFN * W_D + W_D))
    assert sum(t.numel() for t in pool) == pool_size
    assert sum(int((t == 0).sum()) for t in pool) == int(0.5 * pool_size + 0.5)
    initial = load_initial_model(root / "w_weight" / "last-step.ckpt")  # a valid -i for every other mode
    assert initial.family == "wav2vec2" and n_params(initial.model) == n_params(load_initial_model(audio["pth"]).model)
