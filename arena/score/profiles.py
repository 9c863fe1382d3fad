"""Scoring profiles: how much data, which budgets and how hard attacks try."""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Profile:
    name: str
    split: str
    n_utterances: int
    budgets: tuple[str, ...]  # Budget ids, e.g. "snr30", "linf0.003"
    effort: str               # attacks read it to choose their iteration counts
    batch_seconds: float      # padded audio per batch
    transfer: bool = True     # evaluate dense-crafted audio on every compressed model
    adaptive: bool = True     # attack every defense adaptively (arena/score/adaptive.py)
    eot: int = 4              # draws averaged per step when a defense's purify is random
    wall_s: float = 900.0     # wall-clock limit of one sandbox job (and of one purify request)


PROFILES = {
    # the smoke test: finishes in minutes on a 2-core CPU
    "quick": Profile("quick", "dev", 12, ("snr30", "linf0.003"), "quick", 40.0, eot=2),
    # the committed board: 200 utterances at the budget where the reference attack converges
    # at this effort (docs/data/apgd-convergence-dense-snr30.json); about three hours on 2 CPU
    # cores (resumable)
    "standard": Profile("standard", "dev", 200, ("snr30",), "standard", 40.0, wall_s=3600.0),
    # the GPU/cluster profile: every budget of docs/design.md on the full test split
    "full": Profile("full", "test", 1000, ("snr40", "snr35", "snr30", "snr25", "linf0.001",
                                           "linf0.003", "linf0.01"), "full", 400.0, eot=8,
                    wall_s=3600.0),
}


def get_profile(name: str, split: str | None = None, n: int | None = None) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    p = PROFILES[name]
    if split or n:
        p = replace(p, split=split or p.split, n_utterances=n or p.n_utterances)
    return p
