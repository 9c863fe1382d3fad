"""Submissions: the plugin API (api), the submission.toml schema (manifest), checks
(validate) and installation (submit). Importing this package does not import torch."""
from __future__ import annotations

_API = ("AudioBatch", "Attack", "TargetedAttack", "Defense", "TargetModel")
_BUDGET = ("Budget", "ThreatModel")

__all__ = [*_API, *_BUDGET]


def __getattr__(name):
    if name in _API:
        from arena.plugins import api

        return getattr(api, name)
    if name in _BUDGET:
        from arena.plugins import budget

        return getattr(budget, name)
    raise AttributeError(f"module 'arena.plugins' has no attribute {name!r}")
