"""Scoring profiles: how much data, which budgets and how hard attacks try."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    split: str
    n_utterances: int
    budgets: tuple[str, ...]  # Budget ids, e.g. "snr30", "linf0.003"
    effort: str               # attacks read it to choose their iteration counts
    batch_seconds: float      # padded audio per batch
    transfer: bool = True     # evaluate dense-crafted audio on every compressed model


PROFILES = {
    # the default without a GPU: finishes in minutes on a 2-core CPU
    "quick": Profile("quick", "dev", 12, ("snr30", "linf0.003"), "quick", 40.0),
    # the default with a GPU: every budget of docs/design.md on the full test split
    "full": Profile("full", "test", 1000, ("snr40", "snr35", "snr30", "snr25", "linf0.001",
                                           "linf0.003", "linf0.01"), "full", 400.0),
}


def get_profile(name: str, split: str | None = None, n: int | None = None) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    p = PROFILES[name]
    if split or n:
        p = Profile(p.name, split or p.split, n or p.n_utterances, p.budgets, p.effort,
                    p.batch_seconds, p.transfer)
    return p
