"""Sparsity schedules as small frozen dataclasses (JaxPruner style).

A schedule maps a training step to a sparsity level in [0, 1] (None = no mask yet, dense) and
says at which steps masks are recomputed. For N:M targets the sparsity is turned into a
number of kept weights per group, `n_t = max(N, M - floor(s_t * M))`, so a gradual N:M
schedule walks 4:4 -> 3:4 -> 2:4 (and a one-shot one jumps dense -> N:M at a step).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

__all__ = ["OneShot", "Gradual", "Schedule", "nm_at", "SCHEDULES", "schedule_from_dict"]


@dataclass(frozen=True)
class OneShot:
    """Dense before `step`, the target sparsity from `step` on (one mask update at `step`)."""

    step: int = 0

    def sparsity_at(self, t: int, target: float) -> float | None:
        return target if t >= self.step else None

    def is_update_step(self, t: int) -> bool:
        return t == self.step

    def resolved(self, total_steps: int) -> OneShot:
        return self


@dataclass(frozen=True)
class Gradual:
    """Zhu & Gupta (2017) cubic schedule, updated every `every` steps from `start` to `end`:

        s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3,   t0 = start, n * dt = end - start

    evaluated at the last update step <= t; s_i before `start` is "dense" (None) when
    `initial_sparsity` is 0. `final_sparsity=None` uses the target of the method (for N:M,
    1 - N/M). `end=None` is filled in by `resolved(total_steps)` as 3/4 of the run.
    """

    start: int = 0
    end: int | None = None
    every: int = 100
    final_sparsity: float | None = None
    initial_sparsity: float = 0.0

    def _final(self, target: float) -> float:
        return target if self.final_sparsity is None else self.final_sparsity

    def sparsity_at(self, t: int, target: float) -> float | None:
        if self.end is None:
            raise ValueError("Gradual.end is unset: call resolved(total_steps) first")
        s_f, s_i = self._final(target), self.initial_sparsity
        if t < self.start:
            return None if s_i == 0 else s_i
        if t >= self.end:
            return s_f
        span = self.end - self.start
        t_upd = self.start + ((t - self.start) // self.every) * self.every
        frac = min(1.0, (t_upd - self.start) / span)
        return s_f + (s_i - s_f) * (1.0 - frac) ** 3

    def is_update_step(self, t: int) -> bool:
        if self.end is None:
            raise ValueError("Gradual.end is unset: call resolved(total_steps) first")
        return self.start <= t <= self.end and ((t - self.start) % self.every == 0 or t == self.end)

    def resolved(self, total_steps: int) -> Gradual:
        if self.end is not None:
            return self
        end = max(self.start + 1, int(0.75 * total_steps))
        every = max(1, min(self.every, (end - self.start) // 10 or 1))
        return replace(self, end=end, every=every)


Schedule = OneShot | Gradual
SCHEDULES = {"one_shot": OneShot, "oneshot": OneShot, "gradual": Gradual}


def schedule_from_dict(d: dict | None) -> Schedule:
    """{'kind': 'gradual', 'start': 0, ...} -> Gradual(...); None -> OneShot(0)."""
    if d is None:
        return OneShot(0)
    d = dict(d)
    kind = d.pop("kind", "one_shot")
    return SCHEDULES[kind](**d)


def schedule_to_dict(s: Schedule) -> dict:
    return {"kind": "gradual" if isinstance(s, Gradual) else "one_shot", **asdict(s)}


def nm_at(sparsity: float | None, n: int, m: int) -> int | None:
    """Kept-per-group count for a schedule sparsity on the way to N:M (None = dense)."""
    if sparsity is None:
        return None
    k = max(n, m - int(math.floor(sparsity * m + 1e-9)))
    return None if k >= m else k
