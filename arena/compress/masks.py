"""Sparsity masks as pure functions (JaxPruner style): weights (and scores) in, bool masks out.

A mask is a bool tensor of the weight's shape, True = kept.

N:M means "keep N of every M": within each group of M consecutive weights along the input
(reduction) dimension, the N with the highest score are kept.

* nn.Linear weight (out, in): groups of M consecutive input columns in each row.
* nn.Conv1d weight (out, in/groups, k): groups of M consecutive input channels for each
  (output channel, kernel tap) pair, i.e. along dim 1 with dim 2 fixed. A depthwise conv
  (in/groups == 1) has no group to form.

When the input dimension is not a multiple of M, the trailing `in % M` columns of every row
are left dense (kept). Scores default to |w| (magnitude).
"""
from __future__ import annotations

import torch

__all__ = ["group_view", "from_group_view", "nm_mask", "unstructured_mask",
           "global_magnitude_masks", "random_mask", "mask_sparsity", "nm_applicable"]


def group_view(t: torch.Tensor) -> torch.Tensor:
    """(rows, taps, in) view in which N:M groups run along the last axis.

    Linear (out, in) -> (out, 1, in); Conv1d (out, in, k) -> (out, k, in)."""
    if t.ndim == 2:
        return t[:, None, :]
    if t.ndim == 3:
        return t.permute(0, 2, 1)
    raise ValueError(f"expected a Linear (2-d) or Conv1d (3-d) weight, got shape {tuple(t.shape)}")


def from_group_view(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Inverse of `group_view` for a weight with `ndim` dimensions."""
    return v[:, 0, :] if ndim == 2 else v.permute(0, 2, 1)


def nm_applicable(weight_shape, m: int) -> bool:
    """True when the input dimension holds at least one full group of M."""
    return weight_shape[1] >= m


def nm_mask(weight: torch.Tensor, n: int, m: int, scores: torch.Tensor | None = None) -> torch.Tensor:
    """Keep N of every M along the input dimension (see module docstring for the grouping).

    Exactly `n` True per full group of `m`; the `in % m` trailing inputs stay dense. `n == m`
    gives an all-True mask. `scores` (same shape as `weight`) default to |weight|.
    """
    if not (1 <= n <= m):
        raise ValueError(f"N:M needs 1 <= N <= M, got {n}:{m}")
    s = (weight.detach().abs() if scores is None else scores.detach()).float()
    v = group_view(s)
    rows, taps, cin = v.shape
    full = (cin // m) * m
    mask_v = torch.ones(v.shape, dtype=torch.bool, device=weight.device)
    if full and n < m:
        g = v[..., :full].reshape(rows, taps, full // m, m)
        idx = g.topk(n, dim=-1, sorted=False).indices
        keep = torch.zeros(g.shape, dtype=torch.bool, device=weight.device)
        keep.scatter_(-1, idx, True)
        mask_v[..., :full] = keep.reshape(rows, taps, full)
    return from_group_view(mask_v, weight.ndim).contiguous()


def _keep_top(scores_flat: torch.Tensor, keep: int) -> torch.Tensor:
    mask = torch.zeros(scores_flat.numel(), dtype=torch.bool, device=scores_flat.device)
    if keep > 0:
        mask[scores_flat.topk(keep, sorted=False).indices] = True
    return mask


def unstructured_mask(weight: torch.Tensor, sparsity: float,
                      scores: torch.Tensor | None = None) -> torch.Tensor:
    """Layer-wise magnitude mask: prune round(sparsity * numel) lowest-score weights."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    s = (weight.detach().abs() if scores is None else scores.detach()).float().flatten()
    keep = s.numel() - int(round(sparsity * s.numel()))
    return _keep_top(s, keep).reshape(weight.shape)


def global_magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One magnitude threshold over all tensors together (global pruning)."""
    if not weights:
        return {}
    flat = torch.cat([w.detach().abs().float().flatten().cpu() for w in weights.values()])
    keep = flat.numel() - int(round(sparsity * flat.numel()))
    mask = _keep_top(flat, keep)
    out, i = {}, 0
    for name, w in weights.items():
        out[name] = mask[i:i + w.numel()].reshape(w.shape).to(w.device)
        i += w.numel()
    return out


def random_mask(weight: torch.Tensor, *, sparsity: float | None = None, n: int | None = None,
                m: int | None = None, seed: int = 0) -> torch.Tensor:
    """Random mask, seeded: N:M (give n, m) or unstructured (give sparsity)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    scores = torch.rand(weight.shape, generator=gen).to(weight.device)
    if n is not None:
        return nm_mask(weight, n, m, scores=scores)
    if sparsity is None:
        raise ValueError("random_mask needs either sparsity or n and m")
    return unstructured_mask(weight, sparsity, scores=scores)


def mask_sparsity(mask: torch.Tensor) -> float:
    return 1.0 - float(mask.float().mean())
