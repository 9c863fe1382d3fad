"""Perturbation budgets (docs/design.md, Budgets) and their harness-side enforcement.

`Budget.project` is what the harness applies to every attack output: the plugin never
gets to decide how its perturbation is measured.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum

import torch

from arena.core.audio import length_mask

# int16 audio as floats is k / 32768 for k in [-32768, 32767] (what soundfile reads from a
# 16-bit file): clean corpus audio is on this grid, so an unchanged input stays unchanged
INT16_SCALE = 32768.0
INT16_MIN, INT16_MAX = -32768.0, 32767.0


class ThreatModel(str, Enum):
    SNR = "snr"     # utterance-level L2: ||delta||_2 <= ||x||_2 * 10**(-snr/20)
    LINF = "linf"   # max |delta| <= epsilon


def _mask(lengths: torch.Tensor, T: int, like: torch.Tensor) -> torch.Tensor:
    return length_mask(lengths.to(like.device), T).to(like.dtype)


def quantize_int16(x: torch.Tensor) -> torch.Tensor:
    """Round to the int16 grid and clip to its range: round(x * 32768) / 32768."""
    return torch.round(x * INT16_SCALE).clamp(INT16_MIN, INT16_MAX) / INT16_SCALE


_ID = re.compile(r"^(snr|linf)([0-9.eE+-]+)$")


@dataclass(frozen=True)
class Budget:
    threat: ThreatModel
    value: float  # SNR in dB for ThreatModel.SNR, epsilon for ThreatModel.LINF

    def __post_init__(self):
        object.__setattr__(self, "threat", ThreatModel(self.threat))
        object.__setattr__(self, "value", float(self.value))
        if not math.isfinite(self.value) or (self.threat is ThreatModel.LINF and self.value <= 0):
            raise ValueError(f"budget value {self.value!r} is not valid for {self.threat.value}")

    # ------------------------------------------------------------ naming
    @property
    def id(self) -> str:
        return f"{self.threat.value}{self.value:g}"

    def __str__(self) -> str:
        return self.id

    @classmethod
    def parse(cls, text: str | Budget) -> Budget:
        if isinstance(text, Budget):
            return text
        m = _ID.match(str(text).strip().lower())
        if not m:
            raise ValueError(f"budget {text!r}: expected e.g. 'snr30' or 'linf0.003'")
        try:
            return cls(ThreatModel(m.group(1)), float(m.group(2)))
        except ValueError as e:
            raise ValueError(f"budget {text!r}: {e}") from None

    # ------------------------------------------------------------ measurement
    def max_l2(self, clean: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Allowed L2 norm of the perturbation per utterance (SNR budgets)."""
        x = clean.float() * _mask(lengths, clean.shape[-1], clean.float())
        return x.norm(dim=-1) * 10.0 ** (-self.value / 20.0)

    def _delta(self, clean, adv, lengths):
        m = _mask(lengths, clean.shape[-1], clean.float())
        return (adv.float() - clean.float()) * m

    def achieved_snr(self, clean, adv, lengths) -> torch.Tensor:
        """SNR in dB of adv against clean per utterance (inf when they are equal)."""
        m = _mask(lengths, clean.shape[-1], clean.float())
        signal = (clean.float() * m).norm(dim=-1)
        noise = self._delta(clean, adv, lengths).norm(dim=-1)
        snr = 20.0 * torch.log10(signal.clamp_min(1e-12) / noise.clamp_min(1e-30))
        return torch.where(noise > 0, snr, torch.full_like(snr, math.inf))

    def overshoot(self, clean, adv, lengths) -> torch.Tensor:
        """Ratio of the perturbation size to the allowed size per utterance (>1: over budget)."""
        delta = self._delta(clean, adv, lengths)
        if self.threat is ThreatModel.LINF:
            return delta.abs().amax(dim=-1) / self.value
        allowed = self.max_l2(clean, lengths)
        norm = delta.norm(dim=-1)
        ratio = norm / allowed.clamp_min(1e-30)
        return torch.where(norm > 0, ratio, torch.zeros_like(ratio))

    # ------------------------------------------------------------ enforcement
    def project(self, clean: torch.Tensor, adv: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """adv projected into the budget ball around clean, padding zeroed, clipped to [-1, 1]
        and rounded to the int16 grid; the result is within budget after rounding (rows that
        cannot be, e.g. silent utterances under an SNR budget, come back as the clean input)."""
        clean = clean.float()
        adv = torch.nan_to_num(adv.detach().float().to(clean.device), nan=0.0, posinf=0.0, neginf=0.0)
        m = _mask(lengths, clean.shape[-1], clean)
        delta = (adv - clean) * m
        if self.threat is ThreatModel.LINF:
            lo = torch.ceil((clean - self.value) * INT16_SCALE - 1e-6).clamp(INT16_MIN, INT16_MAX)
            hi = torch.floor((clean + self.value) * INT16_SCALE + 1e-6).clamp(INT16_MIN, INT16_MAX)
            q = torch.round((clean + delta.clamp(-self.value, self.value)) * INT16_SCALE)
            out = torch.maximum(torch.minimum(q, hi), lo) / INT16_SCALE
            bad = (lo > hi).any(dim=-1)  # no grid point in the box (epsilon below half a step)
            out = torch.where(bad[:, None], clean, out) * m
            return out
        allowed = self.max_l2(clean, lengths)
        norm = delta.norm(dim=-1)
        top = torch.where(norm > allowed, allowed / norm.clamp_min(1e-30), torch.ones_like(norm))

        def rounded(scale):
            out = quantize_int16(clean + delta * scale[:, None]) * m
            return out, ((out - clean) * m).norm(dim=-1) <= allowed

        # rounding to the grid can push a perturbation that sits on the ball just outside
        # it: bisect each such row's scale for the largest one that rounds inside (a fixed
        # shrink step threw away up to 0.27 dB); rows with no fitting scale keep the clean
        # input (delta 0), e.g. silent utterances under an SNR budget
        result, ok = rounded(top)
        result = torch.where(ok[:, None], result, clean * m)
        lo, hi = torch.zeros_like(top), top.clone()
        for _ in range(24):
            if bool(ok.all()):
                break
            mid = (lo + hi) / 2
            out, fits = rounded(mid)
            better = fits & ~ok
            result = torch.where(better[:, None], out, result)
            lo = torch.where(better, mid, lo)
            hi = torch.where(~fits & ~ok, mid, hi)
        return result * m
