"""Budget enforcement: what the harness does to every attack output, whatever the plugin
returned. The plugin never decides how its perturbation is measured."""
from __future__ import annotations

import math

import torch

from arena.core.budget import Budget


def enforce_budget(budget: Budget, clean: torch.Tensor, adv: torch.Tensor | None,
                   lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(projected audio, achieved SNR in dB per row). A missing output (failed batch) is
    the clean input: the attack gets no credit for it."""
    if adv is None:
        adv = clean
    projected = budget.project(clean, adv, lengths)
    return projected, budget.achieved_snr(clean, projected, lengths)


def rounded_snr(value: float) -> float | None:
    """JSON-safe SNR (None for an unchanged utterance, whose SNR is infinite)."""
    return round(value, 3) if math.isfinite(value) else None
