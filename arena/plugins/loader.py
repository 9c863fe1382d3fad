"""The one place plugin code is imported: inside the sandbox worker, never in the harness."""
from __future__ import annotations

import importlib
import sys

from arena.plugins.api import BASES


def load_plugin(folder: str, module: str, class_name: str, track: str, effort: str, seed: int = 0):
    """Import `module` from `folder` and make one instance of its entry class, checking that
    it subclasses the base class of its track; set its `effort` and `seed` (the job's)."""
    sys.path.insert(0, folder)
    loaded = importlib.import_module(module)
    cls = getattr(loaded, class_name, None)
    if cls is None:
        raise AttributeError(f"module {module!r} has no class {class_name!r}")
    base = BASES[track]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{module}:{class_name} must be a subclass of arena.{base.__name__} "
                        f"for track {track!r}")
    plugin = cls()
    plugin.effort = effort
    plugin.seed = int(seed)
    return plugin
