"""Low-rank approximation of linear layers by truncated SVD.

The original MelHuBERT compression code advertises low-rank approximation but ships none, so
the method is defined here.

Factorisation
    A chosen ``nn.Linear`` with weight ``W`` ``(out, in)`` and SVD ``W = U Σ Vᵀ`` is replaced
    by ``LowRankLinear(in, out, r)``: ``down`` = ``nn.Linear(in, r, bias=False)`` with weight
    ``Σ_r^{1/2} V_rᵀ`` ``(r, in)`` and ``up`` = ``nn.Linear(r, out)`` with weight
    ``U_r Σ_r^{1/2}`` ``(out, r)`` and the original bias, so ``y = up(down(x)) ≈ W x + b``.
    The square root splits the scale evenly between the factors (balanced gradients when the
    factors are retrained). The SVD is computed in float64 from the eigendecomposition of the
    smaller Gram matrix (``WᵀW`` or ``WWᵀ``), several times faster than LAPACK's SVD on CPU
    and equal to it up to float64 rounding for float32 weights; directions whose singular
    value is below ``1e-10·σ_max`` get zero factors. At ``r = min(in, out)`` the factors
    reproduce the layer up to float rounding.

Which layers
    Modules are selected by ``fnmatch`` patterns on their path inside the model passed in
    (``FFN_PATTERNS``, ``ATTENTION_PATTERNS`` or any custom list); only plain ``nn.Linear``
    modules without weight-pruning masks are candidates. A candidate is factorised only when
    it saves parameters: ``r·(in + out) < in·out``; otherwise it stays dense and is left out
    of the returned structure.

Rank rules (exactly one per call)
    - ``rank=k``: ``r = min(k, in, out)`` for every candidate;
    - ``energy=e`` (0 < e ≤ 1): the smallest ``r`` whose squared singular values keep at least
      the fraction ``e`` of ``‖W‖_F²``;
    - ``param_budget=P``: uniform energy retention. Every candidate keeps the same energy
      fraction ``e`` (rule above, rank ≥ 1), and ``e`` is the largest value for which the
      whole model (``sum(p.numel())`` after factorisation, candidates that would not save
      parameters counted dense) has at most ``P`` parameters. The model size is
      non-decreasing in ``e`` and only changes at the layers' cumulative-energy breakpoints,
      so the search is a bisection over those breakpoints. ``ValueError`` if even rank 1
      everywhere does not fit.

Structure
    ``{module path: rank}`` (a plain dict, stored next to the model config) describes a
    factorised model; ``apply_low_rank_structure(fresh_model, ranks)`` puts empty
    ``LowRankLinear`` modules of the right shapes in place so the factorised state dict loads
    with ``strict=True`` (keys ``<path>.down.weight``, ``<path>.up.weight``, ``<path>.up.bias``).

Structured pruning on top: ``wav2vec2.surgery.slice_outputs`` / ``slice_inputs`` (used by head and row
pruning) slice ``up`` rows / ``down`` columns of a ``LowRankLinear``, so factorised models can
still lose heads or FFN units.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn


FFN_PATTERNS: tuple[str, ...] = ("*feed_forward.intermediate_dense", "*feed_forward.output_dense")
ATTENTION_PATTERNS: tuple[str, ...] = ("*attention.q_proj", "*attention.k_proj", "*attention.v_proj", "*attention.out_proj")


class LowRankLinear(nn.Module):
    """``x (..., in) -> up(down(x)) (..., out)`` with ``down: in -> rank`` (no bias), ``up: rank -> out``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank must be in [1, {min(in_features, out_features)}], got {rank}")
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @property
    def in_features(self) -> int:
        return self.down.in_features

    @property
    def out_features(self) -> int:
        return self.up.out_features

    @property
    def rank(self) -> int:
        return self.down.out_features

    @property
    def bias(self) -> Optional[Tensor]:
        return self.up.bias

    def dense_weight(self) -> Tensor:
        """The represented weight ``up.weight @ down.weight``, ``(out, in)``."""
        return self.up.weight @ self.down.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, bias={self.bias is not None}"

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, rank: int, svd: Optional[tuple[Tensor, Tensor, Tensor]] = None) -> "LowRankLinear":
        """Truncated-SVD factors of ``linear`` (``svd`` = precomputed float64 ``(U, S, Vh)``)."""
        weight = linear.weight
        U, S, Vh = svd if svd is not None else svd_float64(weight)
        module = cls(linear.in_features, linear.out_features, rank, linear.bias is not None, weight.device, weight.dtype)
        root = S[:rank].sqrt()
        module.up.weight.copy_((U[:, :rank] * root).to(weight.dtype))
        module.down.weight.copy_((root[:, None] * Vh[:rank]).to(weight.dtype))
        if linear.bias is not None:
            module.up.bias.copy_(linear.bias)
        return module


def svd_float64(weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Thin SVD ``(U (out, k), S (k,) descending, Vh (k, in))`` of ``weight`` in float64, ``k = min(out, in)``."""
    W = weight.detach().double()
    transpose = W.shape[1] > W.shape[0]
    A = W.T if transpose else W  # (m, n) with n <= m: eigendecompose the n x n Gram matrix
    eigenvalues, V = torch.linalg.eigh(A.T @ A)  # ascending
    eigenvalues, V = eigenvalues.flip(0), V.flip(1)
    S = eigenvalues.clamp(min=0.0).sqrt()
    usable = S > S.max().clamp(min=torch.finfo(S.dtype).tiny) * 1e-10
    U = torch.where(usable, A @ V / torch.where(usable, S, torch.ones_like(S)), torch.zeros((), dtype=A.dtype))
    if transpose:  # W = A^T = V S U^T
        return V, S, U.T
    return U, S, V.T


# --------------------------------------------------------------------------------------------
# Helpers shared with structured pruning
# --------------------------------------------------------------------------------------------


def linear_weight(module: nn.Module) -> Tensor:
    """Effective ``(out, in)`` weight of an ``nn.Linear`` (masked if weight-pruned) or ``LowRankLinear``."""
    if isinstance(module, LowRankLinear):
        return module.dense_weight()
    if isinstance(module, nn.Linear):
        return module.weight
    raise TypeError(f"expected nn.Linear or LowRankLinear, got {type(module).__name__}")


def linear_bias(module: nn.Module) -> Optional[Tensor]:
    return module.bias  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Rank selection
# --------------------------------------------------------------------------------------------


def max_saving_rank(in_features: int, out_features: int) -> int:
    """Largest ``r`` with ``r·(in + out) < in·out`` (0 if none)."""
    return (in_features * out_features - 1) // (in_features + out_features)


def energy_rank(singular_values: Tensor, energy: float) -> int:
    """Smallest ``r ≥ 1`` whose top-``r`` squared singular values hold ``≥ energy`` of the total."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    cumulative = cumulative_energy(singular_values)
    # 1e-12 absorbs float64 rounding of the last cumulative value (1 - tiny).
    return int(torch.searchsorted(cumulative, torch.tensor(energy - 1e-12, dtype=cumulative.dtype)).item()) + 1


def cumulative_energy(singular_values: Tensor) -> Tensor:
    """``c[r-1]`` = fraction of ``Σσ²`` held by the top ``r`` singular values (float64, ``(k,)``)."""
    power = singular_values.double() ** 2
    total = power.sum()
    if float(total) == 0.0:
        return torch.ones_like(power)  # an all-zero weight: rank 1 keeps "everything"
    cumulative = (power.cumsum(0) / total).clamp(max=1.0)
    cumulative[-1] = 1.0  # full rank holds all the energy exactly (no 1 - 1e-16 left over)
    return cumulative


@dataclass
class Candidate:
    """One linear layer considered for factorisation."""

    path: str
    in_features: int
    out_features: int
    svd: tuple[Tensor, Tensor, Tensor]  # float64 U (out, k), S (k,), Vh (k, in)

    @property
    def dense_cost(self) -> int:
        return self.in_features * self.out_features

    def cost(self, rank: int) -> int:
        """Weight parameters at ``rank`` (dense if factorising would not save parameters)."""
        if rank <= max_saving_rank(self.in_features, self.out_features):
            return rank * (self.in_features + self.out_features)
        return self.dense_cost


def budget_ranks(candidates: Sequence[Candidate], fixed_params: int, param_budget: int) -> dict[str, int]:
    """Ranks under uniform energy retention for the largest energy that fits ``param_budget``.

    ``fixed_params``: parameters outside the candidates' weights (biases included). Returns a
    rank for every candidate (the caller keeps layers dense where the rank saves nothing).
    """
    if not candidates:
        raise ValueError("no layer matches the low-rank patterns")
    cumulative = [cumulative_energy(cand.svd[1]) for cand in candidates]
    levels = torch.unique(torch.cat(cumulative))  # sorted breakpoints of e

    def ranks_at(level: Tensor) -> list[int]:
        return [int(torch.searchsorted(cum, level).item()) + 1 for cum in cumulative]

    def size_at(level: Tensor) -> int:
        return fixed_params + sum(cand.cost(r) for cand, r in zip(candidates, ranks_at(level)))

    if size_at(levels[0]) > param_budget:
        raise ValueError(f"parameter budget {param_budget} is below the rank-1 size {size_at(levels[0])}")
    low, high = 0, len(levels) - 1  # invariant: levels[low] fits
    while low < high:
        mid = (low + high + 1) // 2
        if size_at(levels[mid]) <= param_budget:
            low = mid
        else:
            high = mid - 1
    return dict(zip((cand.path for cand in candidates), ranks_at(levels[low])))


# --------------------------------------------------------------------------------------------
# Factorising a model and rebuilding one
# --------------------------------------------------------------------------------------------


def _matches(path: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)


def _is_masked(module: nn.Module) -> bool:
    return "weight_mask" in module._buffers  # noqa: SLF001 - see methods.ops_weight


def find_candidates(model: nn.Module, patterns: Iterable[str]) -> list[tuple[str, nn.Linear]]:
    """Plain, unmasked ``nn.Linear`` modules whose path matches a pattern, in model order."""
    patterns = list(patterns)
    found = []
    for path, module in model.named_modules():
        if type(module) is nn.Linear and _matches(path, patterns):
            if _is_masked(module):
                raise ValueError(f"{path} carries weight-pruning masks; fold them (ops_weight.fold_masks) first")
            found.append((path, module))
    return found


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent_path), name, new)


@torch.no_grad()
def factorize(
    model: nn.Module,
    patterns: Sequence[str] = FFN_PATTERNS,
    *,
    rank: Optional[int] = None,
    energy: Optional[float] = None,
    param_budget: Optional[int] = None,
) -> dict[str, int]:
    """Replace matching linear layers by truncated-SVD ``LowRankLinear`` factors, in place.

    Exactly one of ``rank`` / ``energy`` / ``param_budget`` (see the module docstring).
    Returns ``{path: rank}`` of the layers actually factorised (new ``nn.Parameter`` objects:
    rebuild the optimiser afterwards).
    """
    if sum(x is not None for x in (rank, energy, param_budget)) != 1:
        raise ValueError("give exactly one of rank, energy, param_budget")
    if rank is not None and rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    candidates = [
        Candidate(path, m.in_features, m.out_features, svd_float64(m.weight))
        for path, m in find_candidates(model, patterns)
    ]
    if not candidates:
        raise ValueError(f"no nn.Linear matches the patterns {list(patterns)}")
    if rank is not None:
        ranks = {cand.path: min(rank, cand.in_features, cand.out_features) for cand in candidates}
    elif energy is not None:
        ranks = {cand.path: energy_rank(cand.svd[1], energy) for cand in candidates}
    else:
        assert param_budget is not None
        fixed = sum(p.numel() for p in model.parameters()) - sum(cand.dense_cost for cand in candidates)
        ranks = budget_ranks(candidates, fixed, param_budget)
    applied: dict[str, int] = {}
    for cand in candidates:
        r = ranks[cand.path]
        if r > max_saving_rank(cand.in_features, cand.out_features):
            continue  # would not save parameters: stays dense
        linear = model.get_submodule(cand.path)
        assert isinstance(linear, nn.Linear)
        _replace(model, cand.path, LowRankLinear.from_linear(linear, r, cand.svd))
        applied[cand.path] = r
    return applied


def low_rank_structure(model: nn.Module) -> dict[str, int]:
    """``{path: rank}`` of every ``LowRankLinear`` in ``model``."""
    return {path: m.rank for path, m in model.named_modules() if isinstance(m, LowRankLinear)}


def apply_low_rank_structure(model: nn.Module, ranks: Mapping[str, int]) -> nn.Module:
    """Replace the ``nn.Linear`` at each path with an uninitialised ``LowRankLinear`` of that rank.

    For rebuilding a factorised model before ``load_state_dict(strict=True)``. Returns ``model``.
    """
    for path, r in ranks.items():
        linear = model.get_submodule(path)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{path}: expected nn.Linear to factorise, found {type(linear).__name__}")
        weight = linear.weight
        _replace(model, path, LowRankLinear(linear.in_features, linear.out_features, int(r), linear.bias is not None, weight.device, weight.dtype))
    return model
