"""Fake quantization of weights with straight-through gradients.

Symmetric, one scale per output channel, or per group of `group_size` consecutive elements of
the row-flattened weight (Linear: input features; Conv1d: the (in/groups, kernel) block
flattened, kernel fastest). A weight is represented as integer codes times a scale:

* int8: codes in [-127, 127] (255 levels), scale = absmax / 127.
* int4: codes in [-7, 7] (15 levels), scale = absmax / 7.
* int2, mode "ternary" (THE DEFAULT for int2): codes in {-1, 0, 1}, value = code * scale.
  TWN rule: threshold 0.7 * mean|w| over the non-zero weights of the group, scale = mean |w|
  of the weights above it. Ternary has a zero level, so it combines with N:M sparsity.
* int2, mode "four-level": codes in {-2, -1, 0, 1} stored as is, value = (code + 0.5) * scale,
  i.e. the symmetric grid {-1.5, -0.5, 0.5, 1.5} * scale (no zero level; pruned weights are
  zeroed by the mask after quantization), scale = 1.25 * mean|w| over the non-zero weights
  (~sigma for a Gaussian, close to the Lloyd-Max 4-level grid).

Scales are rounded to fp16 (and clamped to [2^-14, 65504]) before use, so the packed file's
fp16 scales reproduce the fake-quantized weights bit for bit: both sides compute
`dequantize(codes, scales)` with the same fp32 arithmetic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["QuantSpec", "quantize", "dequantize", "fake_quant", "ste", "num_levels",
           "INT2_MODES"]

INT2_MODES = ("ternary", "four-level")
_FP16_MIN, _FP16_MAX = 2.0 ** -14, 65504.0


@dataclass(frozen=True)
class QuantSpec:
    bits: int
    int2_mode: str = "ternary"
    group_size: int | None = None

    def __post_init__(self):
        if self.bits not in (2, 3, 4, 5, 6, 7, 8):
            raise ValueError(f"unsupported bit width {self.bits}")
        if self.int2_mode not in INT2_MODES:
            raise ValueError(f"int2_mode must be one of {INT2_MODES}")

    @property
    def mode(self) -> str:
        return self.int2_mode if self.bits == 2 else "int"

    def code_offset(self) -> int:
        """Added to a code to make it a non-negative integer for bit packing."""
        return 2 if self.mode == "four-level" else (1 if self.mode == "ternary" else 2 ** (self.bits - 1))


def num_levels(spec: QuantSpec) -> int:
    return {"ternary": 3, "four-level": 4}.get(spec.mode, 2 ** spec.bits - 1)


def _rows_groups(w: torch.Tensor, group_size: int | None):
    rows = w.reshape(w.shape[0], -1)
    k = rows.shape[1]
    g = k if not group_size or group_size >= k else group_size
    ng = math.ceil(k / g)
    pad = ng * g - k
    if pad:
        rows = torch.nn.functional.pad(rows, (0, pad))
    return rows.reshape(rows.shape[0], ng, g), k, pad


def _fp16_scale(s: torch.Tensor) -> torch.Tensor:
    return s.clamp(_FP16_MIN, _FP16_MAX).half().float()


@torch.no_grad()
def quantize(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes (int8 tensor, shape of w) and fp16-representable fp32 scales (out, n_groups)."""
    x, k, pad = _rows_groups(w.detach().float(), spec.group_size)
    a = x.abs()
    if spec.mode == "int":
        qmax = 2 ** (spec.bits - 1) - 1
        scale = _fp16_scale(a.amax(-1, keepdim=True) / qmax)
        codes = torch.clamp(torch.round(x / scale), -qmax, qmax)
    else:
        nz = (a > 0).float()
        mean_nz = (a.sum(-1, keepdim=True) / nz.sum(-1, keepdim=True).clamp_min(1))
        if spec.mode == "ternary":
            thr = 0.7 * mean_nz
            above = (a > thr).float()
            alpha = (a * above).sum(-1, keepdim=True) / above.sum(-1, keepdim=True).clamp_min(1)
            alpha = torch.where(above.sum(-1, keepdim=True) > 0, alpha, torch.ones_like(alpha))
            scale = _fp16_scale(alpha)
            codes = torch.sign(x) * above
        else:  # four-level {-1.5, -0.5, 0.5, 1.5} * s, code = floor(w / s) in [-2, 1]
            scale = _fp16_scale(torch.where(mean_nz > 0, 1.25 * mean_nz, torch.ones_like(mean_nz)))
            codes = torch.clamp(torch.floor(x / scale), -2, 1)
    codes = codes.reshape(x.shape[0], -1)[:, :k].reshape(w.shape).to(torch.int8)
    return codes, scale.squeeze(-1)


def dequantize(codes: torch.Tensor, scales: torch.Tensor, spec: QuantSpec,
               dtype=torch.float32) -> torch.Tensor:
    """codes * scale (with the four-level half-step), in fp32, same shape as codes."""
    shape = codes.shape
    c = codes.to(torch.float32)
    if spec.mode == "four-level":
        c = c + 0.5
    x, k, pad = _rows_groups(c, spec.group_size)
    out = x * scales.to(torch.float32).reshape(x.shape[0], x.shape[1], 1)
    return out.reshape(x.shape[0], -1)[:, :k].reshape(shape).to(dtype)


def ste(w: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
    """Value of w_hat, gradient straight through to w (exact: w - w.detach() is exactly 0)."""
    return w_hat.detach() + (w - w.detach())


def fake_quant(w: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize-dequantize with a straight-through gradient; `mask` zeroes pruned weights
    after quantization (needed for the four-level grid, a no-op for the others)."""
    codes, scales = quantize(w, spec)
    w_hat = dequantize(codes, scales, spec, dtype=w.dtype)
    if mask is not None:
        w_hat = w_hat * mask
    return ste(w, w_hat)
