"""Size, compute and speed of upstream models, measured the way the field reports them.

What is measured (all on ``Upstream.layers``, the full feature extraction: CNN or log-Mel
front end, projection, every transformer layer; no final LayerNorm, no heads):

* **Parameters**: ``sum(p.numel())`` (MelHuBERT's K-means head excluded); **nonzero
  parameters** additionally, which is what unstructured weight pruning lowers. Zeros stored
  in dense tensors run through dense kernels: they save no time and no MACs here.
* **MACs** (multiply-accumulates; FLOPs ~ 2 x MACs) of convolutions, linear maps and the
  two attention matrix products; norms, activations, softmax, bias additions and the log-Mel
  FFT are not counted (the SUPERB profiler's convention, which also flags FFT ops as
  untracked). Two numbers:
    - per second of audio on a 10 s input (SUPERB's pseudo-input mode, 160,000 samples);
    - over a file list (``--tsv``): total MACs of every utterance at its own length and total
      MACs / total seconds (SUPERB's "MACs over the 32 test-clean utterances" when given that
      list). Only the lengths in the tsv are read, not the audio.
  Method: ``wav2vec2.counting.num_macs(model, n, "exact")`` (closed form) for wav2vec2-family
  models without low-rank layers or weight masks; otherwise forward hooks
  (``wav2vec2.measure``), which see ``LowRankLinear`` factors as they run. Both agree
  where both apply (tested). For weight-pruned models the JSON also gives the MACs an ideal
  sparse kernel would need (nonzero weights only); the table keeps the dense MACs.
* **Latency and real-time factor** of one forward pass over a 10 s utterance (batch 1 by
  default): warm-up passes first, then the median (and min / max) of ``repeats`` timed
  passes, under ``torch.inference_mode`` in eval mode. RTF = seconds of compute per second of
  audio (lower is faster); speed-up = reference latency / latency.
    - CPU: ``torch.set_num_threads(threads)`` for the measurement (restored after), fp32.
    - GPU (when CUDA is available): ``torch.cuda.synchronize()`` before starting and before
      stopping the clock, fp32 and bf16 autocast (``torch.autocast("cuda", torch.bfloat16)``).
* **Peak memory** of one forward pass:
    - GPU: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``: the
      caching allocator's peak of live tensors, weights and input included;
    - CPU: weights and buffers plus the peak of live tensor bytes allocated during the pass,
      read from the torch profiler's allocator events (``profile_memory=True``, the
      "Total Allocated" counter of its memory events). This is the CPU analogue of the GPU
      number; it is not the process RSS (which includes the Python heap and allocator
      caches and cannot be attributed to one pass). ``tracemalloc`` is not used: it only
      sees Python-heap allocations, not tensor storage.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from .upstream import SAMPLE_RATE, Upstream

PROFILE_KIND = "profile"
DEFAULT_SECONDS = 10.0


# --------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------


def has_low_rank(model: nn.Module) -> bool:
    from wav2vec2.low_rank import LowRankLinear

    return any(isinstance(m, LowRankLinear) for m in model.modules())


def has_weight_masks(model: nn.Module) -> bool:
    return any(name.endswith("_mask") for name, _ in model.named_buffers())


@torch.no_grad()
def nonzero_params(upstream: Upstream) -> int:
    """Nonzero entries of the upstream's parameters (masks applied where a model carries them)."""
    from methods.ops_weight import count_nonzero_params

    total = count_nonzero_params(upstream.model)
    if upstream.family == "melhubert" and upstream.model.final_proj is not None:
        total -= int(torch.count_nonzero(upstream.model.final_proj.weight)) + int(torch.count_nonzero(upstream.model.final_proj.bias))
    return total


@torch.no_grad()
def matrix_sparsity(upstream: Upstream) -> float:
    """Fraction of exact zeros among the weights of linear and conv layers (masks applied).

    Only weight matrices count: zero-initialised biases or masked-prediction embeddings
    would otherwise make every model look slightly "sparse".
    """
    zeros = total = 0
    for name, module in upstream.model.named_modules():
        if _is_head_module(upstream, name) or not isinstance(module, (nn.Linear, nn.Conv1d)):
            continue
        weight = module.weight  # for a masked module: orig * mask, refreshed by its hooks
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return zeros / total if total else 0.0


def _is_head_module(upstream: Upstream, name: str) -> bool:
    return upstream.family == "melhubert" and name.startswith("final_proj")


def macs_method(upstream: Upstream) -> str:
    """``"formula"`` where ``wav2vec2.counting.num_macs`` applies, ``"hooks"`` otherwise."""
    model = upstream.model
    if upstream.family == "wav2vec2" and not has_low_rank(model) and not has_weight_masks(model):
        return "formula"
    return "hooks"


def count_macs(upstream: Upstream, num_samples: int, sparse: bool = False, method: Optional[str] = None) -> int:
    """MACs of ``upstream.layers`` on one utterance of ``num_samples`` samples (batch 1).

    ``method``: ``"formula"``, ``"hooks"`` or None (``macs_method``). ``sparse=True`` (hooks
    only) counts nonzero weights of linear and conv layers: an ideal sparse kernel.
    """
    method = method or macs_method(upstream)
    if sparse:
        method = "hooks"
    if method == "formula":
        from wav2vec2.counting import num_macs

        if upstream.family != "wav2vec2":
            raise ValueError(f"{upstream.name}: the MACs formula covers the wav2vec2 family only")
        return int(round(float(num_macs(upstream.model, num_samples, "exact"))))
    from wav2vec2.measure import count_macs as hook_macs

    parameter = next(upstream.model.parameters(), None)
    if parameter is None:
        return 0  # the fbank pseudo-model: only the uncounted front end
    waveform = torch.zeros(1, num_samples, dtype=parameter.dtype, device=parameter.device)
    lengths = torch.tensor([num_samples], device=parameter.device)
    with torch.inference_mode():
        inputs, input_lengths = upstream.model_inputs(waveform, lengths)
    # The same computation layers() runs: extract_features of the wrapped model.
    return hook_macs(upstream.model, inputs, input_lengths, sparse=sparse, forward=upstream.model.extract_features)


@dataclass
class CorpusMacs:
    """MACs over a file list: every utterance at its own length, batch 1."""

    tsv: str
    num_utterances: int
    total_seconds: float
    total_macs: int
    macs_per_second: float


def corpus_macs(upstream: Upstream, lengths: Sequence[int], tsv: str = "", method: Optional[str] = None) -> CorpusMacs:
    """Total MACs of the utterances of ``lengths`` samples; equal lengths are counted once."""
    cache: dict[int, int] = {}
    total = 0
    for n in lengths:
        if n not in cache:
            cache[n] = count_macs(upstream, int(n), method=method)
        total += cache[n]
    seconds = sum(lengths) / SAMPLE_RATE
    return CorpusMacs(tsv, len(lengths), seconds, total, total / seconds if seconds else math.nan)


# --------------------------------------------------------------------------------------------
# Timing and memory
# --------------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Latency of one forward pass (seconds) over ``audio_seconds`` of audio per row."""

    device: str
    precision: str  # "fp32" or "bf16"
    threads: Optional[int]
    batch_size: int
    audio_seconds: float
    warmup: int
    repeats: int
    median_s: float
    min_s: float
    max_s: float
    peak_memory_mb: Optional[float]
    activation_peak_mb: Optional[float]

    @property
    def rtf(self) -> float:
        """Real-time factor: compute seconds per second of audio (batch rows count as audio)."""
        return self.median_s / (self.audio_seconds * self.batch_size)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rtf": self.rtf}


@contextlib.contextmanager
def torch_threads(threads: Optional[int]) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` inside the block (no-op for None), restored after."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls after ``warmup`` untimed ones (synchronised on GPU)."""
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def tensor_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def cpu_activation_peak_bytes(fn: Callable[[], Any]) -> Optional[int]:
    """Peak of live tensor bytes allocated during ``fn()`` on CPU (torch profiler memory events).

    Returns None when the profiler records no memory events (then nothing can be said).
    """
    from torch.profiler import ProfilerActivity, profile

    handle, trace = tempfile.mkstemp(suffix=".json")
    os.close(handle)
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        prof.export_chrome_trace(trace)
        events = json.loads(Path(trace).read_text()).get("traceEvents", [])
    except (RuntimeError, ValueError, OSError):  # a profiler build without memory events: report nothing
        return None
    finally:
        os.unlink(trace)
    totals = [e["args"]["Total Allocated"] for e in events
              if e.get("name") == "[memory]" and "Total Allocated" in e.get("args", {}) and e["args"].get("Device Type", 0) == 0]
    return max(totals) if totals else None


def time_upstream(
    upstream: Upstream,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    seconds: float = DEFAULT_SECONDS,
    batch_size: int = 1,
    threads: Optional[int] = 1,
    warmup: int = 3,
    repeats: int = 10,
    measure_memory: bool = True,
    seed: int = 0,
) -> Timing:
    """Latency, peak memory of ``upstream.layers`` on ``batch_size`` random utterances of ``seconds``.

    The upstream is moved to ``device`` (and left there). ``precision`` ``"bf16"`` runs under
    ``torch.autocast(device, torch.bfloat16)`` with fp32 weights (mixed precision inference).
    """
    device = torch.device(device)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    upstream.to(device).eval()
    num_samples = int(round(seconds * SAMPLE_RATE))
    generator = torch.Generator().manual_seed(seed)
    waveforms = (0.1 * torch.randn(batch_size, num_samples, generator=generator)).to(device)
    lengths = torch.full((batch_size,), num_samples, dtype=torch.long, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()

    def forward() -> None:
        with torch.inference_mode(), autocast:
            upstream.layers(waveforms, lengths)

    with torch_threads(threads if device.type == "cpu" else None):
        times = time_calls(forward, device, warmup, repeats)
        peak_mb = activation_mb = None
        if measure_memory:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
                forward()
                torch.cuda.synchronize(device)
                peak = torch.cuda.max_memory_allocated(device)
                peak_mb, activation_mb = peak / 2**20, (peak - before) / 2**20
            else:
                activation = cpu_activation_peak_bytes(forward)
                if activation is not None:
                    resident = tensor_bytes(upstream) + waveforms.numel() * waveforms.element_size()
                    peak_mb, activation_mb = (resident + activation) / 2**20, activation / 2**20
    return Timing(
        device=str(device), precision=precision, threads=threads if device.type == "cpu" else None,
        batch_size=batch_size, audio_seconds=seconds, warmup=warmup, repeats=repeats,
        median_s=statistics.median(times), min_s=min(times), max_s=max(times),
        peak_memory_mb=peak_mb, activation_peak_mb=activation_mb,
    )


# --------------------------------------------------------------------------------------------
# A whole profile
# --------------------------------------------------------------------------------------------


@dataclass
class ModelProfile:
    """Everything ``profile_model.py`` reports for one model."""

    name: str
    source: str
    family: str
    num_layers: int
    hidden_dim: int
    params: int
    nonzero_params: int
    weight_sparsity: float  # zeros among linear / conv weights
    macs_method: str
    seconds: float
    macs: int  # one utterance of ``seconds``
    macs_per_second: float
    sparse_macs_per_second: Optional[float] = None  # weight-pruned models: ideal sparse kernel
    corpus: Optional[CorpusMacs] = None
    timings: list[Timing] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def timing(self, device_type: str, precision: str = "fp32") -> Optional[Timing]:
        for t in self.timings:
            if t.device.split(":")[0] == device_type and t.precision == precision:
                return t
        return None

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("timings", "corpus")}
        data["corpus"] = asdict(self.corpus) if self.corpus is not None else None
        data["timings"] = [t.to_dict() for t in self.timings]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelProfile":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        corpus = known.pop("corpus", None)
        timings = known.pop("timings", [])
        profile = cls(**known)
        profile.corpus = CorpusMacs(**corpus) if corpus else None
        timing_fields = Timing.__dataclass_fields__
        profile.timings = [Timing(**{k: v for k, v in t.items() if k in timing_fields}) for t in timings]
        return profile


# A weight-pruned model: at least this fraction of its parameters are exact zeros.
SPARSE_THRESHOLD = 0.01


def profile_upstream(
    upstream: Upstream,
    seconds: float = DEFAULT_SECONDS,
    corpus_lengths: Optional[Sequence[int]] = None,
    corpus_name: str = "",
    cpu: bool = True,
    gpu: Optional[bool] = None,
    threads: Optional[int] = 1,
    warmup: int = 3,
    repeats: int = 10,
    batch_size: int = 1,
    measure_memory: bool = True,
) -> ModelProfile:
    """Count and time one upstream. ``gpu=None``: time on GPU when CUDA is available."""
    upstream = upstream.cpu().eval()
    num_samples = int(round(seconds * SAMPLE_RATE))
    method = macs_method(upstream)
    macs = count_macs(upstream, num_samples, method=method)
    params = upstream.num_params()
    nonzero = nonzero_params(upstream)
    notes = list(upstream.info.notes)
    profile = ModelProfile(
        name=upstream.name, source=upstream.info.source, family=upstream.family,
        num_layers=upstream.num_hidden_states - 1, hidden_dim=upstream.hidden_dim,
        params=params, nonzero_params=nonzero, weight_sparsity=matrix_sparsity(upstream), macs_method=method, seconds=seconds,
        macs=macs, macs_per_second=macs / seconds, notes=notes,
    )
    if profile.weight_sparsity >= SPARSE_THRESHOLD:
        sparse = count_macs(upstream, num_samples, sparse=True)
        profile.sparse_macs_per_second = sparse / seconds
        notes.append(f"{100 * profile.weight_sparsity:.1f}% of linear/conv weights are zero (unstructured): dense kernels run them, "
                     f"so MACs and latency do not drop; an ideal sparse kernel would need {sparse / seconds / 1e9:.3f} GMACs/s")
    if upstream.family in ("melhubert", "fbank"):
        notes.append("log-Mel front end (FFT) not counted in MACs; included in latency")
    if corpus_lengths is not None:
        profile.corpus = corpus_macs(upstream, corpus_lengths, corpus_name, method)
    if cpu:
        profile.timings.append(time_upstream(upstream, "cpu", "fp32", seconds, batch_size, threads, warmup, repeats, measure_memory))
    if gpu is None:
        gpu = torch.cuda.is_available()
    if gpu:
        if not torch.cuda.is_available():
            raise RuntimeError("--gpu was requested but CUDA is not available")
        for precision in ("fp32", "bf16"):
            profile.timings.append(time_upstream(upstream, "cuda", precision, seconds, batch_size, None, warmup, repeats, measure_memory))
        upstream.cpu()
        torch.cuda.empty_cache()
    return profile


# --------------------------------------------------------------------------------------------
# Tables and files
# --------------------------------------------------------------------------------------------


def _ratio(value: Optional[float], reference: Optional[float]) -> Optional[float]:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def _fmt(value: Optional[float], pattern: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, pattern)


def table_rows(profiles: Sequence[ModelProfile]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the comparison table; ratios are relative to the first profile.

    params ratio and MACs ratio are this / reference (0.25 = four times smaller); speed-up is
    reference latency / this latency (2.0 = twice as fast), per device and precision.
    """
    reference = profiles[0]
    devices = []
    for t in reference.timings:
        key = (t.device.split(":")[0], t.precision)
        if key not in devices:
            devices.append(key)
    header = ["model", "params (M)", "nonzero (M)", "params ratio", "GMACs/s", "MACs ratio"]
    if any(p.corpus for p in profiles):
        header += ["corpus GMACs"]
    for device, precision in devices:
        label = f"{device} {precision}" if device == "cuda" else device
        header += [f"{label} ms/10s" if reference.seconds == 10 else f"{label} ms", f"{label} RTF", f"{label} speed-up", f"{label} peak MB"]
    rows = []
    for p in profiles:
        row = [
            p.name, _fmt(p.params / 1e6, ".3f"), _fmt(p.nonzero_params / 1e6, ".3f"),
            _fmt(_ratio(p.params, reference.params), ".3f"), _fmt(p.macs_per_second / 1e9, ".3f"),
            _fmt(_ratio(p.macs_per_second, reference.macs_per_second), ".3f"),
        ]
        if "corpus GMACs" in header:
            row.append(_fmt(p.corpus.total_macs / 1e9, ".1f") if p.corpus else "-")
        for device, precision in devices:
            t, r = p.timing(device, precision), reference.timing(device, precision)
            row += [
                _fmt(t.median_s * 1e3 if t else None, ".1f"), _fmt(t.rtf if t else None, ".4f"),
                _fmt(_ratio(r.median_s, t.median_s) if (t and r) else None, ".2f"),
                _fmt(t.peak_memory_mb if t else None, ".0f"),
            ]
        rows.append(row)
    return header, rows


def format_table(profiles: Sequence[ModelProfile], markdown: bool = False) -> str:
    """The comparison table as aligned text (or Markdown), with the notes below it."""
    header, rows = table_rows(profiles)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    else:
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in [header, *rows]]
        lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"{p.name}: {note}" for p in profiles for note in p.notes]
    settings = _settings_line(profiles[0])
    footer = [settings] + notes
    prefix = "- " if markdown else "  "
    return "\n".join(lines + [""] + [prefix + line for line in footer])


def _settings_line(reference: ModelProfile) -> str:
    parts = [f"ratios and speed-ups relative to {reference.name}", f"MACs per second of audio on a {reference.seconds:g} s input"]
    cpu = reference.timing("cpu")
    if cpu is not None:
        parts.append(f"CPU: {cpu.threads} thread(s), batch {cpu.batch_size}, median of {cpu.repeats} after {cpu.warmup} warm-up")
    if reference.corpus is not None:
        parts.append(f"corpus: {reference.corpus.num_utterances} utterances, {reference.corpus.total_seconds:.1f} s from {reference.corpus.tsv}")
    return "; ".join(parts)


def write_json(path: str | os.PathLike[str], profiles: Sequence[ModelProfile], settings: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"kind": PROFILE_KIND, "version": 1, "reference": profiles[0].name, "settings": settings,
               "environment": environment(), "models": [p.to_dict() for p in profiles]}
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def read_json(path: str | os.PathLike[str]) -> list[ModelProfile]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("kind") != PROFILE_KIND:
        raise ValueError(f"{path}: not a profile_model.py JSON file (kind {data.get('kind')!r})")
    return [ModelProfile.from_dict(m) for m in data["models"]]


def environment() -> dict[str, Any]:
    """Torch version, CPU count and GPU name, stored with every measurement."""
    info: dict[str, Any] = {"torch": torch.__version__, "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
