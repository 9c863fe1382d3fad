"""Pruning algorithms, registered by name and built from a config, and mask-gradient modes.

Algorithms (`ALGORITHMS`, `build_algorithm(name, **kw)`):

* `magnitude` — masks from |w|, recomputed at the schedule's update steps, fixed in between.
* `random`    — seeded random masks (one fixed random score per weight, so masks of rising
  sparsity are nested), recomputed at update steps.
* `ste`       — the mask is recomputed from the dense weights at EVERY forward pass; the
  dense weights get gradients (default grad mode "ste"), so pruned weights can come back.

Gradient modes for the masked weight w * mask (`masked_weight`):

* `zero`  — d/dw = g * mask: pruned weights get zero gradient.
* `ste`   — d/dw = g: straight-through, dense weights get the full gradient.
* `srste` — d/dw = g + lambda * (1 - mask) * w (SR-STE, Zhou et al. 2021): the straight-through
  gradient plus a decay that pulls pruned weights towards zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from arena.compress.masks import nm_mask, random_mask, unstructured_mask

__all__ = ["GRAD_MODES", "masked_weight", "ALGORITHMS", "register_algorithm", "build_algorithm",
           "PruningAlgorithm", "Magnitude", "Random", "STE"]

GRAD_MODES = ("zero", "ste", "srste")


class _MaskedWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, mask, mode, lam):
        ctx.save_for_backward(w, mask)
        ctx.mode, ctx.lam = mode, lam
        return w * mask

    @staticmethod
    def backward(ctx, g):
        w, mask = ctx.saved_tensors
        if ctx.mode == "zero":
            gw = g * mask
        elif ctx.mode == "ste":
            gw = g
        else:
            gw = g + ctx.lam * (1 - mask) * w
        return gw, None, None, None


def masked_weight(w: torch.Tensor, mask: torch.Tensor, mode: str = "zero",
                  srste_lambda: float = 2e-4) -> torch.Tensor:
    """w * mask with the gradient rule of `mode` (see module docstring)."""
    if mode not in GRAD_MODES:
        raise ValueError(f"grad mode must be one of {GRAD_MODES}, got {mode!r}")
    return _MaskedWeight.apply(w, mask.to(w.dtype), mode, float(srste_lambda))


@dataclass(frozen=True)
class PruningAlgorithm:
    """Base: `mask(weight, n=, m=, sparsity=, layer_index=)` -> bool mask (True = kept)."""

    name: ClassVar[str] = "base"
    default_grad_mode: ClassVar[str] = "zero"
    dynamic: ClassVar[bool] = False  # True: mask recomputed at every forward
    seed: int = 0

    def scores(self, weight: torch.Tensor, layer_index: int) -> torch.Tensor:
        return weight.detach().abs()

    def mask(self, weight: torch.Tensor, *, n: int | None = None, m: int | None = None,
             sparsity: float | None = None, layer_index: int = 0) -> torch.Tensor:
        s = self.scores(weight, layer_index)
        if n is not None:
            return nm_mask(weight, n, m, scores=s)
        return unstructured_mask(weight, float(sparsity or 0.0), scores=s)


ALGORITHMS: dict[str, type[PruningAlgorithm]] = {}


def register_algorithm(cls):
    ALGORITHMS[cls.name] = cls
    return cls


@register_algorithm
@dataclass(frozen=True)
class Magnitude(PruningAlgorithm):
    name: ClassVar[str] = "magnitude"


@register_algorithm
@dataclass(frozen=True)
class Random(PruningAlgorithm):
    name: ClassVar[str] = "random"

    def mask(self, weight, *, n=None, m=None, sparsity=None, layer_index=0):
        seed = self.seed * 1_000_003 + layer_index
        if n is not None:
            return random_mask(weight, n=n, m=m, seed=seed)
        return random_mask(weight, sparsity=float(sparsity or 0.0), seed=seed)


@register_algorithm
@dataclass(frozen=True)
class STE(PruningAlgorithm):
    name: ClassVar[str] = "ste"
    default_grad_mode: ClassVar[str] = "ste"
    dynamic: ClassVar[bool] = True


def build_algorithm(name: str, **kwargs) -> PruningAlgorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown pruning algorithm {name!r}; known: {sorted(ALGORITHMS)}")
    return ALGORITHMS[name](**kwargs)
