"""Global unstructured magnitude pruning of the transformer's linear layers.

Pool
    In every encoder layer: weight **and** bias of ``q_proj``, ``k_proj``, ``v_proj``,
    ``out_proj`` and both FFN linears (a ``LowRankLinear`` contributes its ``down`` / ``up``
    factors). All entries compete in one global ranking by ``|value|``. Input projections,
    positional conv, LayerNorms and prediction heads are never pruned.

Masks
    ``attach_masks`` turns each pooled tensor ``name`` of a Linear into a parameter
    ``name_orig`` (the same ``nn.Parameter`` object, so an existing optimiser keeps working)
    and a buffer ``name_mask`` (same dtype, 1 = kept, 0 = pruned): the key names of
    ``torch.nn.utils.prune`` and of the original MelHuBERT code's weight-pruned checkpoints. A forward
    pre-hook sets ``module.name = name_orig * name_mask`` before every call, so gradients of
    masked entries are zero and masked entries cannot come back however the optimiser moves
    ``name_orig``; a forward hook then swaps that attribute for its detached value (same
    storage), so the module stays deep-copyable and ``module.weight`` always reads the masked
    tensor outside forward too. Our ``SelfAttention`` and ``FeedForward`` call their Linear
    modules, so Linear-level masking covers every use (tested).

    Reloading a masked state dict: ``attach_masks(fresh_model)`` then
    ``load_state_dict(strict=True)``. Export: ``fold_masks(model)`` writes ``orig * mask`` into
    plain ``weight`` / ``bias`` parameters and removes masks and hooks.

Pruning step
    ``prune_to(model, s)`` first folds the current masks into ``name_orig`` (masked entries
    become exact zeros), then masks exactly ``k = floor(s·N + 0.5)`` of the ``N`` pooled
    entries (``s`` is the **cumulative** target): entries masked before are selected first,
    then the smallest ``|value|``; ties at the threshold are broken by position in the pool
    (layer order; q, k, v, out, fc1, fc2; weight before bias; row-major), so the count is exact
    and the result deterministic. Lowering the target below the current sparsity is refused.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Optional

import torch
from torch import Tensor, nn

from wav2vec2.low_rank import LowRankLinear
from wav2vec2.measure import find_transformer

MASKED_NAMES = ("weight", "bias")
_ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")
_FFN_LINEARS = ("intermediate_dense", "output_dense")


class _MaskHooks:
    """Forward pre-hook / forward hook / load hook of one masked Linear (no module reference, so deepcopy-safe)."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def pre(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        for name in self.names:
            setattr(module, name, getattr(module, name + "_orig") * getattr(module, name + "_mask"))

    def post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        # The graph already holds the product; keep only its detached value as the attribute.
        for name in self.names:
            setattr(module, name, getattr(module, name).detach())

    def after_load(self, module: nn.Module, incompatible_keys: Any) -> None:
        refresh(module)


def refresh(module: nn.Module) -> None:
    """Recompute the masked attributes of one masked module from ``*_orig`` and ``*_mask``."""
    for name in masked_names(module):
        with torch.no_grad():
            setattr(module, name, getattr(module, name + "_orig") * getattr(module, name + "_mask"))


def masked_names(module: nn.Module) -> list[str]:
    """Names (``weight``, ``bias``) of ``module``'s masked tensors, [] if it is not masked."""
    return [name for name in MASKED_NAMES if name + "_mask" in module._buffers]  # noqa: SLF001


def is_masked(module: nn.Module) -> bool:
    return bool(masked_names(module))


def has_masks(model: nn.Module) -> bool:
    """True if any module of ``model`` carries weight-pruning masks."""
    return any(is_masked(m) for m in model.modules())


def pruning_targets(model: nn.Module) -> list[nn.Linear]:
    """The pooled Linear modules of the model's transformer, in pool order."""
    targets: list[nn.Linear] = []

    def add(module: Optional[nn.Module]) -> None:
        if module is None:
            return
        if isinstance(module, LowRankLinear):
            targets.extend([module.down, module.up])
        elif isinstance(module, nn.Linear):
            targets.append(module)
        else:
            raise TypeError(f"cannot weight-prune a {type(module).__name__}")

    for layer in find_transformer(model).layers:
        if layer.attention is not None:
            for name in _ATTENTION_PROJECTIONS:
                add(getattr(layer.attention, name))
        if layer.feed_forward is not None:
            for name in _FFN_LINEARS:
                add(getattr(layer.feed_forward, name))
    return targets


def _pool(model: nn.Module) -> Iterator[tuple[nn.Linear, str]]:
    for module in pruning_targets(model):
        for name in MASKED_NAMES:
            if name + "_mask" in module._buffers or getattr(module, name, None) is not None:  # noqa: SLF001
                yield module, name


def attach_masks(model: nn.Module) -> int:
    """Give every pooled tensor an all-ones mask (no-op where one exists); returns the pool size."""
    total = 0
    for module in pruning_targets(model):
        names = []
        for name in MASKED_NAMES:
            if name + "_mask" in module._buffers:  # noqa: SLF001
                total += getattr(module, name + "_orig").numel()
                continue
            param = module._parameters.get(name)  # noqa: SLF001
            if param is None:
                continue
            del module._parameters[name]  # noqa: SLF001
            module.register_parameter(name + "_orig", param)  # same object: optimiser state survives
            module.register_buffer(name + "_mask", torch.ones_like(param, requires_grad=False))
            names.append(name)
            total += param.numel()
        if names:
            all_names = tuple(masked_names(module))
            _remove_hooks(module)
            hooks = _MaskHooks(all_names)
            module.register_forward_pre_hook(hooks.pre)
            module.register_forward_hook(hooks.post)
            module.register_load_state_dict_post_hook(hooks.after_load)
            refresh(module)
    return total


def _remove_hooks(module: nn.Module) -> None:
    # Scan the hook dicts instead of keeping handles: handles of a deep-copied module would
    # point at the original's dicts.
    for hooks in (module._forward_pre_hooks, module._forward_hooks, module._load_state_dict_post_hooks):  # noqa: SLF001
        for key in [k for k, hook in hooks.items() if isinstance(getattr(hook, "__self__", None), _MaskHooks)]:
            del hooks[key]


@torch.no_grad()
def _fold_into_orig(model: nn.Module) -> None:
    for module, name in _pool(model):
        getattr(module, name + "_orig").mul_(getattr(module, name + "_mask"))


def pool_size(model: nn.Module) -> int:
    """Number of entries ``N`` in the pruning pool."""
    return sum(_effective(module, name).numel() for module, name in _pool(model))


def _effective(module: nn.Module, name: str) -> Tensor:
    if name + "_mask" in module._buffers:  # noqa: SLF001
        return getattr(module, name + "_orig") * getattr(module, name + "_mask")
    return getattr(module, name)


@torch.no_grad()
def pool_zeros(model: nn.Module) -> int:
    """Entries of the pool that are zero in the effective (masked) weights."""
    return sum(int((_effective(module, name) == 0).sum()) for module, name in _pool(model))


def global_sparsity(model: nn.Module) -> float:
    """Fraction of zero entries in the pool."""
    return pool_zeros(model) / pool_size(model)


@torch.no_grad()
def count_nonzero_params(model: nn.Module) -> int:
    """Nonzero entries over **all** parameters of the model, masks applied."""
    total = 0
    for module in model.modules():
        names = set(masked_names(module))
        for name, param in module.named_parameters(recurse=False):
            base = name[: -len("_orig")] if name.endswith("_orig") else None
            if base in names:
                total += int(torch.count_nonzero(param * module._buffers[base + "_mask"]))  # noqa: SLF001
            else:
                total += int(torch.count_nonzero(param))
    return total


def target_count(sparsity: float, size: int) -> int:
    """``round(sparsity · size)`` with halves rounded up (not Python's banker's rounding)."""
    return int(math.floor(sparsity * size + 0.5))


@torch.no_grad()
def prune_to(model: nn.Module, sparsity: float, method: str = "l1",
             generator: torch.Generator | None = None) -> dict[str, float]:
    """Mask exactly ``round(sparsity · N)`` pooled entries (cumulative target), in place.

    ``method``: ``"l1"`` ranks entries by |value| (torch's ``L1Unstructured``), ``"random"``
    by uniform noise from ``generator`` (``RandomUnstructured``, a baseline). Attaches masks
    first if needed. Returns ``{"pool": N, "masked": k, "sparsity": k / N}``.
    """
    if method not in ("l1", "random"):
        raise ValueError(f"method must be 'l1' or 'random', got {method!r}")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    attach_masks(model)
    _fold_into_orig(model)
    entries = list(_pool(model))
    # Scores: |value|, and -1 for entries already masked so they are selected first.
    def score(values: Tensor) -> Tensor:
        if method == "random":
            return torch.rand(values.shape, generator=generator).to(values.device)
        return values.detach().abs().float()

    scores = torch.cat([
        torch.where(getattr(m, n + "_mask") == 0, -1.0, score(getattr(m, n + "_orig"))).flatten()
        for m, n in entries
    ])
    size = scores.numel()
    k = target_count(sparsity, size)
    already = int((scores < 0).sum())
    if k < already:
        raise ValueError(f"target sparsity {sparsity} ({k} entries) is below the current one ({already} entries masked)")
    keep = torch.ones(size, dtype=torch.bool, device=scores.device)
    if k > 0:
        threshold = torch.kthvalue(scores, k).values
        below = scores < threshold
        ties = (scores == threshold).nonzero().squeeze(-1)
        keep[below] = False
        keep[ties[: k - int(below.sum())]] = False  # lowest pool positions first
    offset = 0
    for module, name in entries:
        mask = module._buffers[name + "_mask"]  # noqa: SLF001
        mask.copy_(keep[offset : offset + mask.numel()].view_as(mask).to(mask.dtype))
        offset += mask.numel()
    for module in pruning_targets(model):
        refresh(module)
    return {"pool": float(size), "masked": float(k), "sparsity": k / size}


@torch.no_grad()
def fold_masks(model: nn.Module) -> None:
    """Export: write ``orig * mask`` into plain ``weight`` / ``bias`` parameters and drop the masks.

    Reuses the ``*_orig`` parameter objects, so an optimiser built before still points at them.
    """
    for module in model.modules():
        names = masked_names(module)
        if not names:
            continue
        _remove_hooks(module)
        for name in names:
            param = module._parameters.pop(name + "_orig")  # noqa: SLF001
            mask = module._buffers.pop(name + "_mask")  # noqa: SLF001
            param.mul_(mask)
            if name in module.__dict__:
                del module.__dict__[name]  # the masked plain attribute
            module.register_parameter(name, param)
