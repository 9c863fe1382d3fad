"""ASR Arena: adversarial robustness of compressed speech recognition models."""
__version__ = "0.1.0"

# the plugin API, imported lazily so that `import arena` stays light (no torch)
_PLUGIN_API = ("Attack", "TargetedAttack", "Defense", "AudioBatch", "Budget", "ThreatModel",
               "TargetModel", "ctc_loss", "greedy_matches", "length_mask")


def __getattr__(name):
    if name in _PLUGIN_API:
        import arena.plugins

        return getattr(arena.plugins, name)
    raise AttributeError(f"module 'arena' has no attribute {name!r}")
