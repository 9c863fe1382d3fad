"""CTC on batch-first log-probabilities (B, T, V), as every model in the arena returns them:
the loss (one call for training, the plugin API, the baselines and the benchmarks) and the
greedy-decode match against token ids."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from arena.asr.text import BLANK
from arena.core.audio import length_mask


def ctc_loss(log_probs: torch.Tensor, out_lengths: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor, reduction: str = "none") -> torch.Tensor:
    """CTC loss of padded token ids `targets` (B, S) given log-probs (B, T, V); impossible
    alignments (target longer than the output) count 0 instead of inf."""
    device = log_probs.device
    return F.ctc_loss(log_probs.transpose(0, 1), targets.to(device), out_lengths,
                      target_lengths.to(device), blank=BLANK, reduction=reduction,
                      zero_infinity=True)


def greedy_matches(log_probs: torch.Tensor, out_lengths: torch.Tensor, ids: torch.Tensor,
                   id_lengths: torch.Tensor, blank: int = BLANK) -> torch.Tensor:
    """(B,) bool: the greedy CTC decode of each row equals its id sequence; on device, with
    no host sync (attack loops call it every few steps)."""
    best = log_probs.argmax(-1)
    B, T = best.shape
    dev = best.device
    valid = length_mask(out_lengths.to(dev), T)
    prev = torch.cat([torch.full((B, 1), -1, device=dev, dtype=best.dtype), best[:, :-1]], 1)
    keep = valid & (best != blank) & (best != prev)
    count = keep.sum(1)
    pos = torch.where(keep, keep.cumsum(1) - 1, torch.full_like(best, T))
    collapsed = torch.full((B, T + 1), -1, device=dev, dtype=best.dtype).scatter_(1, pos, best)
    S = ids.shape[1]
    if S > T:
        collapsed = F.pad(collapsed, (0, S - T), value=-1)
    ids, id_lengths = ids.to(dev), id_lengths.to(dev)
    inside = length_mask(id_lengths, S)
    same = ((collapsed[:, :S] == ids) | ~inside).all(1)
    return same & (count == id_lengths)
