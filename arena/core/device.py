"""Which device to run on when the user does not say."""
from __future__ import annotations

import torch


def default_device(device: str | None = None) -> str:
    if device:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"
