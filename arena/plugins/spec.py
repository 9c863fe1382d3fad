"""What the sandbox needs to know about a plugin (no torch: the intake imports it).

The submission intake (arena.submissions) reads `submission.toml` and hands the sandbox a
`PluginSpec`; the sandbox worker loads the code with arena.plugins.loader.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path


class Track(str, Enum):
    ATTACK = "attack"
    TARGETED_ATTACK = "targeted-attack"
    DEFENSE = "defense"

    @property
    def is_attack(self) -> bool:
        return self is not Track.DEFENSE


@dataclass(frozen=True)
class PluginSpec:
    name: str
    track: Track
    module: str
    class_name: str
    folder: Path
    limits: dict = field(default_factory=dict)  # may only lower the harness limits

    @property
    def entry(self) -> str:
        return f"{self.module}:{self.class_name}"
