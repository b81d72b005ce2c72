#!/usr/bin/env python
"""Forward-pass latency: our HuBERT Base (``wav2vec2.hubert_base``) vs transformers' ``HubertModel``.

Both models have the HuBERT Base architecture (``HubertConfig()`` defaults) and, by default,
the same weights: ours are random (seeded) and copied into the transformers model through a
simple name mapping, and the outputs are compared before timing. Input: ``--seconds`` of
random 16 kHz audio, batch ``--batch``, fp32, eval mode, ``torch.inference_mode()``.

Timing: ``--warmup`` untimed runs of each model, then ``--repeats`` timed runs of each,
interleaved (ours, theirs, theirs, ours, ...) so that drifts in machine load hit both alike;
the median of each is reported with the ratio ours / transformers (goal: <= 1.0). On CUDA
every timed region is bracketed by ``torch.cuda.synchronize()``.

Usage:
    python benchmarks/bench_forward.py                       # CPU, all cores
    python benchmarks/bench_forward.py --threads 1 --repeats 20
    python benchmarks/bench_forward.py --device cuda
    python benchmarks/bench_forward.py --profile             # torch.profiler tables as well
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable

import torch


def build_models(device: torch.device, copy_weights: bool, attn_implementation: str | None):
    import transformers

    import wav2vec2

    torch.manual_seed(0)
    ours = wav2vec2.hubert_base().eval().to(device)
    kwargs = {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    config = transformers.HubertConfig(**kwargs)
    theirs = transformers.HubertModel(config).eval()
    if copy_weights:
        # The toolkit's own converter (strict: any unmapped or missing weight is an error).
        from wav2vec2.checkpoint import load_weights
        from wav2vec2.convert.hf import convert_hf_state_dict

        load_weights(ours, convert_hf_state_dict(theirs.state_dict(), source="transformers HubertModel"))
    theirs = theirs.to(device)
    return ours, theirs, getattr(theirs.config, "_attn_implementation", "?")


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    def run(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return run


def profile(name: str, fn: Callable[[], object], device: torch.device, rows: int) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities, record_shapes=False) as prof:
        fn()
    sort = "cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\n--- torch.profiler: {name} (sorted by {sort}) ---")
    print(prof.key_averages().table(sort_by=sort, row_limit=rows))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU intra-op threads (default: all cores)")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length at 16 kHz")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--no-copy-weights", action="store_true", help="leave transformers' random weights")
    parser.add_argument("--attn-implementation", default=None, help="transformers attention backend (default: its own)")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler op tables of one run each")
    parser.add_argument("--profile-rows", type=int, default=15)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    torch.set_num_threads(max(1, args.threads))

    import transformers

    ours, theirs, attn = build_models(device, not args.no_copy_weights, args.attn_implementation)
    num_samples = int(round(args.seconds * 16000))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, num_samples, generator=generator).to(device)

    def run_ours():
        return ours(x)[0]

    def run_theirs():
        return theirs(x).last_hidden_state

    with torch.inference_mode():
        a, b = run_ours(), run_theirs()
        max_diff = float((a - b).abs().max())
        timed = timer(device)
        for _ in range(args.warmup):
            timed(run_ours)
            timed(run_theirs)
        times_ours, times_theirs = [], []
        for i in range(args.repeats):
            order = [(run_ours, times_ours), (run_theirs, times_theirs)]
            for fn, bucket in order if i % 2 == 0 else order[::-1]:
                bucket.append(timed(fn))
        if args.profile:
            profile("ours (wav2vec2.hubert_base)", run_ours, device, args.profile_rows)
            profile("transformers HubertModel", run_theirs, device, args.profile_rows)

    med_ours = statistics.median(times_ours)
    med_theirs = statistics.median(times_theirs)
    result = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "transformers_attn_implementation": attn,
        "input": [args.batch, num_samples],
        "output_frames": int(a.shape[1]),
        "weights_copied": not args.no_copy_weights,
        "max_abs_output_diff": max_diff if not args.no_copy_weights else None,
        "repeats": args.repeats,
        "ours_median_s": med_ours,
        "transformers_median_s": med_theirs,
        "ours_min_s": min(times_ours),
        "transformers_min_s": min(times_theirs),
        "ratio_ours_over_transformers": med_ours / med_theirs,
    }
    print(f"device {result['device']}, threads {result['threads']}, torch {torch.__version__}, "
          f"transformers {transformers.__version__} (attention: {attn})")
    print(f"input {args.batch} x {num_samples} samples ({args.seconds:g} s), {a.shape[1]} frames, fp32, inference_mode")
    if not args.no_copy_weights:
        print(f"same weights: max |ours - transformers| on the last hidden state = {max_diff:.2e}")
    print(f"ours          median {med_ours * 1e3:9.2f} ms  (min {min(times_ours) * 1e3:.2f}, n={len(times_ours)})")
    print(f"transformers  median {med_theirs * 1e3:9.2f} ms  (min {min(times_theirs) * 1e3:.2f}, n={len(times_theirs)})")
    print(f"ratio ours / transformers = {result['ratio_ours_over_transformers']:.3f}  (goal <= 1.0)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
