"""Locating the transformer, reading its per-layer structure, and honest size / compute counts.

Family-agnostic: every function works on any module tree that contains exactly one
``wav2vec2.components.Transformer`` (our ``Wav2Vec2Model`` for wav2vec 2.0 / HuBERT / WavLM,
and MelHuBERT built on the same ``Transformer``), or on a wrapper around one.

Counting, unlike ``wav2vec2.counting`` (closed-form formulas for plain ``nn.Linear`` layers and
hard-concrete gates), measures what is actually there:

- ``count_params``: ``sum(p.numel())`` over all parameters (a weight-pruned model counts its
  dense ``weight_orig`` tensors; use ``ops_weight.count_nonzero_params`` for nonzeros);
- ``count_macs``: multiply-accumulates of one real forward pass, gathered by forward hooks:
  every ``nn.Linear`` (so ``LowRankLinear``'s two factors are counted as they run), every
  ``nn.Conv1d``, the weight-normed positional convolution, and the two attention matrix
  products of every ``SelfAttention``. Norms, activations, softmax and bias additions are not
  counted (the convention of ``wav2vec2.counting.num_macs``, which it reproduces exactly on an
  unfactorised model). ``sparse=True`` counts only nonzero weights of linear / conv layers
  (what an ideal sparse kernel would do for a weight-pruned model).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, TypedDict

import torch
from torch import Tensor, nn

from wav2vec2 import components as c


class LayerStructure(TypedDict):
    """Per-layer architecture of a transformer, enough to rebuild it before a strict load.

    ``remaining_heads`` is None unless the layers use WavLM attention; then it lists, per
    layer, the original indices of the kept heads (``[]`` for a removed attention block).
    """

    num_heads: list[int]
    remaining_heads: Optional[list[list[int]]]
    ff_interm_features: list[int]
    use_attention: list[bool]
    use_feed_forward: list[bool]


# --------------------------------------------------------------------------------------------
# Finding the transformer and describing it
# --------------------------------------------------------------------------------------------


def find_transformer_path(model: nn.Module) -> tuple[str, c.Transformer]:
    """``(module path, transformer)`` of the single ``Transformer`` inside ``model``.

    Raises ``ValueError`` if there is none or more than one (e.g. a distillation wrapper that
    holds a teacher and a student: pass the student itself).
    """
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, c.Transformer)]
    if not found:
        raise ValueError(f"no wav2vec2.components.Transformer found in {type(model).__name__}")
    if len(found) > 1:
        names = ", ".join(repr(name) for name, _ in found)
        raise ValueError(f"{type(model).__name__} holds several transformers ({names}); pass the one to compress")
    return found[0]


def find_transformer(model: nn.Module) -> c.Transformer:
    """The single ``wav2vec2.components.Transformer`` inside ``model`` (see ``find_transformer_path``)."""
    return find_transformer_path(model)[1]


def layer_structure(transformer: c.Transformer) -> LayerStructure:
    """Heads, kept WavLM head indices, FFN width and block flags of every layer."""
    layers = list(transformer.layers)
    wavlm = any(isinstance(layer.attention, c.WavLMSelfAttention) for layer in layers)
    if not wavlm and transformer.rel_attn_embed is not None:
        wavlm = True  # WavLM whose every attention block is gone: the bucket embedding remains
    return {
        "num_heads": [layer.attention.num_heads if layer.attention is not None else 0 for layer in layers],
        "remaining_heads": (
            [list(layer.attention.remaining_heads) if layer.attention is not None else [] for layer in layers]
            if wavlm
            else None
        ),
        "ff_interm_features": [layer.feed_forward.interm_features if layer.feed_forward is not None else 0 for layer in layers],
        "use_attention": [layer.attention is not None for layer in layers],
        "use_feed_forward": [layer.feed_forward is not None for layer in layers],
    }


def _owners(model: nn.Module, transformer: c.Transformer) -> list[nn.Module]:
    """Modules of ``model`` (itself included) whose subtree contains ``transformer``."""
    path = next((name for name, module in model.named_modules() if module is transformer), None)
    if path is None:
        raise ValueError("the transformer is not part of this model")
    parts = path.split(".") if path else []
    # Every prefix of the path is an owner: "", "encoder", "encoder.transformer".
    return [model.get_submodule(".".join(parts[:i])) for i in range(len(parts) + 1)]


def sync_structure(model: nn.Module, transformer: Optional[c.Transformer] = None) -> LayerStructure:
    """Write the transformer's current structure into the configs that rebuild it; return it.

    - every ``Wav2Vec2Model`` owning the transformer gets ``encoder_num_heads`` (or WavLM's
      ``encoder_remaining_heads``), ``encoder_ff_interm_features``, ``encoder_use_attention``
      and ``encoder_use_feed_forward`` rewritten, so ``wav2vec2_model(**model.config)`` builds
      the pruned architecture;
    - any other owning module that defines ``update_layer_structure(structure)`` (the hook
      for MelHuBERT, which keeps its own config) has it called with the structure.
    """
    from wav2vec2.model import Wav2Vec2Model  # local: keep this module importable on its own

    transformer = find_transformer(model) if transformer is None else transformer
    structure = layer_structure(transformer)
    for owner in _owners(model, transformer):
        if isinstance(owner, Wav2Vec2Model):
            config = dict(owner.config)
            config["encoder_use_attention"] = list(structure["use_attention"])
            config["encoder_use_feed_forward"] = list(structure["use_feed_forward"])
            config["encoder_ff_interm_features"] = list(structure["ff_interm_features"])
            if "encoder_remaining_heads" in config:
                assert structure["remaining_heads"] is not None
                config["encoder_remaining_heads"] = [list(h) for h in structure["remaining_heads"]]
            else:
                config["encoder_num_heads"] = list(structure["num_heads"])
            owner.config = config
        else:
            hook = getattr(owner, "update_layer_structure", None)
            if callable(hook):
                hook(structure)
    return structure


# --------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------


def count_params(model: nn.Module) -> int:
    """``sum(p.numel())`` over every parameter (shared parameters once), hard-concrete gates
    (``log_alpha``) excepted: they steer training and are gone after ``prune()``."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.endswith("log_alpha"))


def _nonzero(weight: Tensor) -> int:
    return int(torch.count_nonzero(weight))


@contextlib.contextmanager
def counting_macs(model: nn.Module, sparse: bool = False) -> Iterator[dict[str, int]]:
    """Count MACs of the forward passes run inside the block, by category.

    - ``linear``: each ``nn.Linear`` call, rows * in * out (sparse: rows * nnz(weight));
    - ``conv``: each ``nn.Conv1d``, B * T_out * C_out * C_in/groups * k (sparse: B * T_out * nnz);
    - ``pos_conv``: the positional conv, B * T * D * D/G * K on the T frames it returns
      (the extra frame of an even kernel is dropped, as in ``wav2vec2.counting``);
    - ``attention``: scores and context of each ``SelfAttention``, 2 * B * H * T * T * d.
    """
    counts = {"linear": 0, "conv": 0, "pos_conv": 0, "attention": 0}
    handles = []

    def linear_hook(module: nn.Linear, inputs: tuple[Any, ...], output: Tensor) -> None:
        rows = inputs[0].numel() // module.in_features
        per_row = _nonzero(module.weight) if sparse else module.in_features * module.out_features
        counts["linear"] += rows * per_row

    def conv_hook(module: nn.Conv1d, inputs: tuple[Any, ...], output: Tensor) -> None:
        batch, _, frames = output.shape
        per_frame = _nonzero(module.weight) if sparse else module.weight.numel()
        counts["conv"] += batch * frames * per_frame

    def pos_conv_hook(module: c.ConvolutionalPositionalEmbedding, inputs: tuple[Any, ...], output: Tensor) -> None:
        batch, frames, _ = output.shape
        per_frame = _nonzero(module.conv.weight) if sparse else module.conv.weight_v.numel()
        counts["pos_conv"] += batch * frames * per_frame

    def attention_hook(module: c.SelfAttention, inputs: tuple[Any, ...], output: Tensor) -> None:
        batch, frames, _ = inputs[0].shape
        counts["attention"] += 2 * batch * module.num_heads * frames * frames * module.head_dim

    for module in model.modules():
        if isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
        elif isinstance(module, nn.Conv1d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, c.ConvolutionalPositionalEmbedding):
            handles.append(module.register_forward_hook(pos_conv_hook))
        elif isinstance(module, c.SelfAttention):
            handles.append(module.register_forward_hook(attention_hook))
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def count_macs(model: nn.Module, *inputs: Any, sparse: bool = False, forward: Optional[Callable[..., Any]] = None, **kwargs: Any) -> int:
    """MACs of one eval-mode forward ``(forward or model)(*inputs, **kwargs)``.

    The model is put in eval mode (no layer drop) for the pass and restored afterwards.
    MelHuBERT: ``count_macs(model, features, pad_mask, no_pred=True)`` or pass ``forward``.
    """
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.inference_mode(), counting_macs(model, sparse) as counts:
            (forward or model)(*inputs, **kwargs)
    finally:
        for module, mode in modes.items():
            module.training = mode
    return sum(counts.values())


def count_linear_macs(model: nn.Module, num_samples: int, sparse: bool = False) -> int:
    """MACs of a waveform model (``Wav2Vec2Model``) on one utterance of ``num_samples`` samples.

    Equals ``wav2vec2.counting.num_macs(model, num_samples, "exact")`` for an unfactorised,
    ungated model; also correct for low-rank (``LowRankLinear``) and, with ``sparse=True``,
    weight-pruned models.
    """
    parameter = next(model.parameters())
    waveform = torch.zeros(1, num_samples, dtype=parameter.dtype, device=parameter.device)
    return count_macs(model, waveform, sparse=sparse)
