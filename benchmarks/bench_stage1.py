#!/usr/bin/env python
"""Stage-1 student step of this toolkit vs the original DPHuBERT model package, HuBERT Base shape.

The step: forward of the gated student through 12 layers (``extract_features``), the
layer-to-layer heads, L1 + cosine loss against fixed teacher targets on layers 4, 8 and 12,
backward (the optimizer update is not timed; it is the same AdamW in both codes). Ours uses
the sparsity-aware forward (``wav2vec2.sparse``, the default of ``distill.py``); the
original computes every unit and multiplies by the gates.

Both students are HuBERT Base with all five DPHuBERT pruning units (conv, head, interm,
attlayer, ffnlayer), the HuBERT Base dropouts, the same random weights (ours, seeded, loaded
strictly into the original's model), the same batch (``--batch`` random utterances of
``--seconds``, full lengths given) and the same heads and targets. Three points of training:

- ``init``: gates at their initialisation (nearly all open);
- ``0.5`` / ``0.75``: expected parameter sparsity 0.5 / 0.75: in every gate group (conv
  channels, heads, FFN units of a layer) a random fraction ``k`` of the units has
  ``log_alpha = +4`` (kept: P(z>0) = 0.996), the others ``-4`` (pruned: P(z>0) = 0.083), layer
  gates at init; ``k`` is found by bisection on the expected sparsity (``counting``).

Timing alternates ours / original (ABBA) in one process so that drifts in machine load hit
both alike; medians and the ratio original / ours (speed-up, > 1 = ours faster) are printed.
Peak memory of one step: CPU, the peak of live tensor bytes allocated during the step (torch
profiler memory events, ``evaluation.profiler.cpu_activation_peak_bytes``); CUDA,
``torch.cuda.max_memory_allocated`` minus what was allocated before the step.

Also printed (ours only): step time vs seconds of audio per batch (4 points), forward time
vs utterance length (1-30 s, dense model, inference mode) so that the attention's quadratic
share shows, and the teacher's share (fp32 / bf16 autocast, targets' relative difference).

The original code is not a dependency: ``--reference PATH`` is a checkout of
github.com/pyf98/DPHuBERT (a folder holding ``wav2vec2/``) or a bare git directory (its HEAD
is exported to a temporary folder); its ``wav2vec2`` package (torch only) is imported under
another module name. Without it the script prints "reference not available" and our figures.

Usage:
    python benchmarks/bench_stage1.py --reference /path/to/DPHuBERT --threads 2
    python benchmarks/bench_stage1.py --device cuda --bf16 --reference ...
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import wav2vec2  # noqa: E402
from lightning_modules.distill_heads import DistillHeads  # noqa: E402
from lightning_modules.distill_loss import distill_loss  # noqa: E402
from lightning_modules.sparsity import SparsityConstraint  # noqa: E402
from wav2vec2 import sparse  # noqa: E402
from wav2vec2.hardconcrete import HardConcrete  # noqa: E402
from wav2vec2.model import hubert_base_config  # noqa: E402

SAMPLE_RATE = 16_000
DISTILL_LAYERS = "4,8,12"
ALL_UNITS = dict(
    extractor_prune_conv_channels=True, encoder_prune_attention_heads=True, encoder_prune_attention_layer=True,
    encoder_prune_feed_forward_intermediate=True, encoder_prune_feed_forward_layer=True,
)
KEPT_LOG_ALPHA, PRUNED_LOG_ALPHA = 4.0, -4.0
REFERENCE_MODULE = "dphubert_reference_wav2vec2"


# --------------------------------------------------------------------------------------------
# The reference package
# --------------------------------------------------------------------------------------------


def _checkout(path: Path, keep: list[Any]) -> Optional[Path]:
    """A folder with the original's ``wav2vec2/`` package: ``path`` itself or an export of its HEAD."""
    if (path / "wav2vec2" / "model.py").is_file():
        return path
    if (path / "HEAD").is_file() or (path / ".git").exists():
        folder = tempfile.TemporaryDirectory(prefix="dphubert-ref-")
        keep.append(folder)
        archive = subprocess.run(["git", f"--git-dir={path if (path / 'HEAD').is_file() else path / '.git'}", "archive", "HEAD", "wav2vec2"],
                                 capture_output=True, check=False)
        if archive.returncode != 0:
            return None
        subprocess.run(["tar", "-x", "-C", folder.name], input=archive.stdout, check=True)
        return Path(folder.name)
    return None


def import_reference(path: Optional[Path], keep: list[Any]) -> Optional[Any]:
    """The original's ``wav2vec2.model`` module, imported as ``dphubert_reference_wav2vec2.model``."""
    if path is None or not path.exists():
        return None
    root = _checkout(path, keep)
    if root is None:
        return None
    package = root / "wav2vec2"
    spec = importlib.util.spec_from_file_location(REFERENCE_MODULE, package / "__init__.py", submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[REFERENCE_MODULE] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return importlib.import_module(f"{REFERENCE_MODULE}.model")


# --------------------------------------------------------------------------------------------
# Models, gates, step
# --------------------------------------------------------------------------------------------


# A 12-layer model small enough to check the script itself in seconds (``--smoke``).
SMOKE_SHAPE = dict(extractor_conv_layer_config=[[64, 10, 5]] + [[64, 3, 2]] * 4 + [[64, 2, 2]] * 2, encoder_embed_dim=64,
                   encoder_num_heads=[4] * 12, encoder_head_dim=16, encoder_ff_interm_features=[128] * 12,
                   encoder_pos_conv_kernel=16, encoder_pos_conv_groups=4)


def build_students(reference: Optional[Any], seed: int, smoke: bool = False) -> tuple[nn.Module, Optional[nn.Module], dict[str, Any]]:
    torch.manual_seed(seed)
    config = hubert_base_config(**ALL_UNITS, **(SMOKE_SHAPE if smoke else {}))
    ours = wav2vec2.wav2vec2_model(**config).train()
    theirs = None
    if reference is not None:
        ref_config = {k: v for k, v in config.items()}
        theirs = reference.wav2vec2_model(**ref_config).train()
        theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs, config


def gate_modules(model: nn.Module) -> list[nn.Module]:
    """Every unit gate group (n > 1) of a model, ours or the original's (same attribute names)."""
    return [m for m in model.modules() if hasattr(m, "log_alpha") and m.log_alpha.numel() > 1]


@torch.no_grad()
def set_keep_fraction(model: nn.Module, keep: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for m in gate_modules(model):
        n = m.log_alpha.numel()
        kept = torch.randperm(n, generator=generator)[: max(1, round(keep * n))]
        values = torch.full((n,), PRUNED_LOG_ALPHA)
        values[kept] = KEPT_LOG_ALPHA
        m.log_alpha.copy_(values)


def set_expected_sparsity(model: nn.Module, teacher_like: nn.Module, target: float, seed: int) -> tuple[float, float]:
    """Bisection on the kept fraction; returns (kept fraction, expected sparsity reached)."""
    constraint = SparsityConstraint("params", teacher_like)
    low, high = 0.0, 1.0
    for _ in range(30):
        mid = 0.5 * (low + high)
        set_keep_fraction(model, mid, seed)
        reached = float(constraint.expected_sparsity(model))
        low, high = (low, mid) if reached < target else (mid, high)
    keep = 0.5 * (low + high)
    set_keep_fraction(model, keep, seed)
    return keep, float(constraint.expected_sparsity(model))


@torch.no_grad()
def reset_gates(model: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, HardConcrete) or (hasattr(m, "log_alpha") and hasattr(m, "reset_parameters")):
            m.reset_parameters()


def live_fraction(model: nn.Module, seed: int) -> float:
    """Fraction of unit gates non-zero in one training-mode sample."""
    torch.manual_seed(seed)
    live = total = 0
    with torch.no_grad():
        for m in gate_modules(model):
            z = m()
            live += int((z > 0).sum())
            total += z.numel()
    return live / max(total, 1)


def make_step(model: nn.Module, heads: nn.Module, targets: list[Tensor], waveforms: Tensor, lengths: Tensor,
              ours: bool, autocast: contextlib.AbstractContextManager, min_saved_rows: float = sparse.MIN_SAVED_ROWS) -> Callable[[], float]:
    def step() -> float:
        with autocast:
            if ours:
                states, _ = sparse.extract_features(model, waveforms, lengths, num_layers=12, min_saved_rows=min_saved_rows)
            else:
                states, _ = model.extract_features(waveforms, lengths, num_layers=12)
            loss = distill_loss(heads(states), targets, None).total
        loss.backward()
        model.zero_grad(set_to_none=True)
        heads.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def alternate(fns: dict[str, Callable[[], Any]], device: torch.device, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Times every function ``repeats`` times, in ABBA order; ``warmup`` untimed calls each first."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            times[name].append(timed(fns[name], device))
    return times


def peak_step_mb(fn: Callable[[], Any], device: torch.device) -> Optional[float]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    from evaluation.profiler import cpu_activation_peak_bytes

    peak = cpu_activation_peak_bytes(fn)
    return None if peak is None else peak / 2**20


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, default=None, help="checkout (or git dir) of the original DPHuBERT code")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the student steps (both codes)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per utterance of the compared step")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--points", default="init,0.5,0.75", help="comma list of init and expected sparsities")
    parser.add_argument("--batch_seconds", default="2,4,8,16", help="seconds of audio per batch for the scaling curve ('' skips)")
    parser.add_argument("--lengths", default="1,2,5,10,20,30", help="utterance seconds for the forward curve ('' skips)")
    parser.add_argument("--no_memory", action="store_true")
    parser.add_argument("--no_teacher", action="store_true", help="skip the teacher's share")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min_saved_rows", type=float, default=sparse.MIN_SAVED_ROWS, help="the sparse path's gather rule")
    parser.add_argument("--smoke", action="store_true", help="a 64-wide 12-layer model instead of Base (checks the script only)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    torch.set_num_threads(max(1, args.threads))
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext
    keep: list[Any] = []
    reference = import_reference(args.reference, keep)
    result: dict[str, Any] = {"device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                              "threads": torch.get_num_threads(), "torch": torch.__version__, "bf16": args.bf16,
                              "batch": args.batch, "seconds": args.seconds, "points": []}
    print(f"device {result['device']}, threads {result['threads']}, torch {torch.__version__}, "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}, gather rule min_saved_rows {args.min_saved_rows:g}, "
          f"load average {os.getloadavg()[0]:.2f}")
    if reference is None:
        print(f"reference not available ({args.reference}): our absolute figures only")

    ours, theirs, config = build_students(reference, args.seed, args.smoke)
    width = config["encoder_embed_dim"]
    shape = SMOKE_SHAPE if args.smoke else {}
    teacher_like = wav2vec2.hubert_base(**shape)  # the size the sparsity is measured against
    ours.to(device)
    if theirs is not None:
        theirs.to(device)
    num_samples = int(round(args.seconds * SAMPLE_RATE))
    generator = torch.Generator().manual_seed(args.seed)
    waveforms = (0.1 * torch.randn(args.batch, num_samples, generator=generator)).to(device)
    lengths = torch.full((args.batch,), num_samples, dtype=torch.long, device=device)
    frames = int(ours.num_frames(lengths)[0])
    targets = [torch.randn(args.batch, frames, width, generator=generator).to(device) for _ in range(3)]
    heads = DistillHeads(DISTILL_LAYERS, "layer2layer", width, width, 12).to(device)
    their_heads = DistillHeads(DISTILL_LAYERS, "layer2layer", width, width, 12).to(device)
    their_heads.load_state_dict(heads.state_dict())
    print(f"batch {args.batch} x {args.seconds:g} s ({frames} frames), distilled layers {DISTILL_LAYERS}, "
          f"median of {args.repeats} after {args.warmup} warm-up, ABBA order")

    header = f"{'point':>6} {'exp.sparsity':>12} {'live':>6} {'ours ms':>9} {'orig ms':>9} {'speed-up':>9} {'ours MB':>8} {'orig MB':>8} {'mem ratio':>9}"
    print(header)
    for point in [p.strip() for p in args.points.split(",") if p.strip()]:
        if point == "init":
            reset_gates(ours, args.seed)
            reached = float(SparsityConstraint("params", teacher_like).expected_sparsity(ours.cpu()))
            ours.to(device)
        else:
            ours.cpu()
            _, reached = set_expected_sparsity(ours, teacher_like, float(point), args.seed)
            ours.to(device)
        if theirs is not None:
            with torch.no_grad():
                for (name, mine), (_, other) in zip(
                    [(n, m) for n, m in ours.named_modules() if isinstance(m, HardConcrete)],
                    [(n, m) for n, m in theirs.named_modules() if hasattr(m, "log_alpha")],
                ):
                    other.log_alpha.copy_(mine.log_alpha)
        live = live_fraction(ours, args.seed)
        fns = {"ours": make_step(ours, heads, targets, waveforms, lengths, True, autocast(), args.min_saved_rows)}
        if theirs is not None:
            fns["orig"] = make_step(theirs, their_heads, targets, waveforms, lengths, False, autocast())
        torch.manual_seed(args.seed)
        times = alternate(fns, device, args.warmup, args.repeats)
        memory = {name: (None if args.no_memory else peak_step_mb(fn, device)) for name, fn in fns.items()}
        ours_ms = _median_ms(times["ours"])
        orig_ms = _median_ms(times["orig"]) if "orig" in times else None
        row = {"point": point, "expected_sparsity": reached, "live_fraction": live, "ours_ms": ours_ms, "orig_ms": orig_ms,
               "speed_up": (orig_ms / ours_ms) if orig_ms else None, "ours_peak_mb": memory.get("ours"),
               "orig_peak_mb": memory.get("orig"),
               "memory_ratio": (memory["ours"] / memory["orig"]) if memory.get("orig") and memory.get("ours") else None,
               "ours_times_s": times["ours"], "orig_times_s": times.get("orig")}
        result["points"].append(row)

        def f(v: Optional[float], spec: str) -> str:
            return "-" if v is None else format(v, spec)

        print(f"{point:>6} {reached:12.3f} {live:6.2f} {ours_ms:9.0f} {f(orig_ms, '9.0f')} {f(row['speed_up'], '8.2f')}x "
              f"{f(row['ours_peak_mb'], '8.0f')} {f(row['orig_peak_mb'], '8.0f')} {f(row['memory_ratio'], '9.2f')}", flush=True)
    print("speed-up = original / ours (goals: >= 1.2 at init, >= 2.0 at 0.75); mem ratio = ours / original peak (goal <= 0.7 at 0.75)")

    if theirs is not None:
        del theirs, fns
    ours.cpu()
    reset_gates(ours, args.seed)
    ours.to(device)

    batch_points = [float(s) for s in args.batch_seconds.split(",") if s.strip()]
    if batch_points:
        print("\nours: stage-1 step (gates at init) vs seconds of audio per batch (batch of 4 s utterances where possible)")
        print(f"{'audio s':>8} {'batch':>6} {'ms':>9} {'ms per audio s':>15}")
        result["step_vs_batch_seconds"] = []
        for total in batch_points:
            per = min(4.0, total)
            batch = max(1, round(total / per))
            n = int(round(per * SAMPLE_RATE))
            wav = (0.1 * torch.randn(batch, n, generator=generator)).to(device)
            lens = torch.full((batch,), n, dtype=torch.long, device=device)
            fr = int(ours.num_frames(lens)[0])
            tg = [torch.randn(batch, fr, width, generator=generator).to(device) for _ in range(3)]
            fn = make_step(ours, heads, tg, wav, lens, True, autocast(), args.min_saved_rows)
            times = alternate({"ours": fn}, device, 1, max(2, args.repeats // 2))["ours"]
            ms = _median_ms(times)
            result["step_vs_batch_seconds"].append({"audio_seconds": batch * per, "batch": batch, "ms": ms})
            print(f"{batch * per:8.0f} {batch:6d} {ms:9.0f} {ms / (batch * per):15.1f}", flush=True)

    length_points = [float(s) for s in args.lengths.split(",") if s.strip()]
    if length_points:
        dense = wav2vec2.hubert_base(**shape).eval().to(device)
        print("\nours: dense HuBERT Base forward (eval, inference mode, batch 1) vs utterance length")
        print(f"{'seconds':>8} {'frames':>7} {'ms':>9} {'ms per s':>9}")
        result["forward_vs_length"] = []
        for seconds in length_points:
            n = int(round(seconds * SAMPLE_RATE))
            wav = (0.1 * torch.randn(1, n, generator=generator)).to(device)

            def forward() -> None:
                with torch.inference_mode(), autocast():
                    dense(wav)

            times = alternate({"f": forward}, device, 1, max(2, args.repeats // 2))["f"]
            ms = _median_ms(times)
            fr = int(dense.num_frames(torch.tensor([n]))[0])
            result["forward_vs_length"].append({"seconds": seconds, "frames": fr, "ms": ms})
            print(f"{seconds:8.0f} {fr:7d} {ms:9.0f} {ms / seconds:9.1f}", flush=True)
        del dense

    if not args.no_teacher:
        teacher = wav2vec2.hubert_base(**shape).eval().to(device)
        print("\nteacher's share (dense HuBERT Base to layer 12, same batch as above):")

        def run_teacher(bf16: bool) -> list[Tensor]:
            context = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with torch.inference_mode(), context:
                states, _ = teacher.extract_features(waveforms, lengths, num_layers=12)
            return [states[i].float() for i in (4, 8, 12)]

        times = alternate({"fp32": lambda: run_teacher(False), "bf16": lambda: run_teacher(True)}, device, 1, args.repeats)
        a, b = run_teacher(False), run_teacher(True)
        rel_max = max(float((x - y).abs().max() / x.abs().max()) for x, y in zip(a, b))
        rel_mean = statistics.mean(float((x - y).abs().mean() / x.abs().mean()) for x, y in zip(a, b))
        rel_norm = max(float((x - y).norm() / x.norm()) for x, y in zip(a, b))
        result["teacher"] = {"fp32_ms": _median_ms(times["fp32"]), "bf16_ms": _median_ms(times["bf16"]),
                             "targets_rel_l2_max": rel_norm, "targets_mean_abs_diff_over_mean_abs": rel_mean,
                             "targets_max_abs_diff_over_max_abs": rel_max}
        print(f"  fp32 inference_mode {_median_ms(times['fp32']):.0f} ms, bf16 autocast {_median_ms(times['bf16']):.0f} ms "
              f"(x{_median_ms(times['fp32']) / _median_ms(times['bf16']):.2f})")
        print(f"  bf16 vs fp32 targets (layers 4/8/12): max|diff|/max|x| {rel_max:.2e}, mean|diff|/mean|x| {rel_mean:.2e}, "
              f"relative L2 {rel_norm:.2e} (worst layer)")
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
