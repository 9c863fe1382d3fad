"""The one place plugin code is imported: submissions inside the sandbox worker only; the
arena's own reference baselines also in the harness (load_reference)."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import tomllib
from pathlib import Path

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


def load_reference(folder, name: str):
    """The module of one of the arena's own baselines, imported in the harness process: only
    for reference code the harness runs itself (the adaptive evaluation, benchmarks), never
    for submissions. Named by folder so that two loads of different folders never collide."""
    entry = tomllib.loads((Path(folder) / "submission.toml").read_text())["entry"]
    module_name = entry.split(":")[0]
    spec = importlib.util.spec_from_file_location(f"arena_reference_{name}",
                                                  Path(folder) / f"{module_name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the reference {name!r} from {folder}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
