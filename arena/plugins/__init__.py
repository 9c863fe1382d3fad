"""The plugin API a submission codes against (api), the sandbox's view of a plugin (spec) and
the in-sandbox loader (loader). Importing this package does not import torch."""
from __future__ import annotations

_API = ("AudioBatch", "Attack", "TargetedAttack", "Defense", "TargetModel", "Budget", "ThreatModel",
        "ctc_loss", "greedy_matches", "length_mask")

__all__ = list(_API)


def __getattr__(name):
    if name in _API:  # lazily: `import arena` and the intake stay torch-free
        from arena.plugins import api

        return getattr(api, name)
    raise AttributeError(f"module 'arena.plugins' has no attribute {name!r}")
