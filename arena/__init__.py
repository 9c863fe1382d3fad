"""ASR Arena: adversarial robustness of compressed speech recognition models.

`from arena import Attack, Defense, AudioBatch, Budget, TargetModel` gives the plugin API;
it is loaded on first use so that `import arena` stays light.
"""
__version__ = "0.1.0"

_API = ("Attack", "TargetedAttack", "Defense", "AudioBatch", "Budget", "ThreatModel", "TargetModel")
__all__ = list(_API)


def __getattr__(name):
    if name in _API:
        from arena.plugins import api

        return getattr(api, name)
    raise AttributeError(f"module 'arena' has no attribute {name!r}")
