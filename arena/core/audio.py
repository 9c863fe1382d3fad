"""The audio contract: 16 kHz mono float32 in [-1, 1], batched as zero-padded (B, T) waves
with their lengths in samples. Everything in the arena that moves audio uses these."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SAMPLE_RATE = 16_000


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, max_len) bool: True on positions below each row's length."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def pad_waves(waves: list[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded (B, T) float32 batch and the lengths (B,) in samples."""
    tensors = [torch.as_tensor(w, dtype=torch.float32) for w in waves]
    lengths = torch.tensor([len(t) for t in tensors], dtype=torch.long)
    out = torch.zeros(len(tensors), int(lengths.max()) if tensors else 0)
    for row, t in enumerate(tensors):
        out[row, : len(t)] = t
    return out, lengths


@dataclass
class AudioBatch:
    ids: list[str]
    wave: torch.Tensor            # (B, T) float32, zero padded, in [-1, 1]
    lengths: torch.Tensor         # (B,) int64 samples
    transcripts: list[str] | None = None   # attacks only
    targets: list[str] | None = None       # targeted attacks only

    def __post_init__(self):
        if not isinstance(self.wave, torch.Tensor) or self.wave.dim() != 2:
            raise ValueError(f"AudioBatch.wave must be a 2-D (B, T) tensor, got "
                             f"{getattr(self.wave, 'shape', type(self.wave).__name__)}")
        if self.wave.dtype != torch.float32:
            raise ValueError(f"AudioBatch.wave must be float32, got {self.wave.dtype}")
        if not isinstance(self.lengths, torch.Tensor) or self.lengths.dim() != 1:
            raise ValueError("AudioBatch.lengths must be a 1-D (B,) tensor")
        if self.lengths.dtype != torch.int64:
            raise ValueError(f"AudioBatch.lengths must be int64, got {self.lengths.dtype}")
        B, T = self.wave.shape
        if self.lengths.shape[0] != B:
            raise ValueError(f"AudioBatch.lengths has {self.lengths.shape[0]} entries for {B} waves")
        if B and (int(self.lengths.min()) < 1 or int(self.lengths.max()) > T):
            raise ValueError(f"AudioBatch.lengths must lie in [1, {T}]")
        self.ids = list(self.ids)
        if len(self.ids) != B:
            raise ValueError(f"AudioBatch.ids has {len(self.ids)} entries for {B} waves")
        for field in ("transcripts", "targets"):
            value = getattr(self, field)
            if value is not None:
                value = list(value)
                setattr(self, field, value)
                if len(value) != B or not all(isinstance(t, str) for t in value):
                    raise ValueError(f"AudioBatch.{field} must be {B} strings")

    @property
    def mask(self) -> torch.Tensor:
        """(B, T) float32: 1 on each row's real samples, 0 on its padding."""
        return length_mask(self.lengths, self.wave.shape[1]).to(self.wave.dtype)

    def __len__(self) -> int:
        return self.wave.shape[0]

    def to(self, device) -> AudioBatch:
        return AudioBatch(list(self.ids), self.wave.to(device), self.lengths.to(device),
                          self.transcripts, self.targets)
