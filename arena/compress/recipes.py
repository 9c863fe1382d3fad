"""Recipe names <-> CompressionConfig.

Grammar: "dense", or "+"-joined parts in any order, at most one of each kind:

* `intB`      B-bit weights (B in 2..8); int2 is ternary by default;
              `int2t` = ternary, `int2f` = four-level; a `gG` suffix sets the group size
              (`int4g64`: one scale per 64 inputs instead of per output channel).
* `N:M`       keep N of every M (2:4, 1:4, 4:8, ...).
* `spXX`      unstructured magnitude sparsity of XX percent (e.g. `sp50`).

Examples: int8, int4, int2, 2:4, 1:4, 4:8, int4+2:4, int2+2:4, int4+1:4, int8+2:4.
"""
from __future__ import annotations

import re
from dataclasses import replace

from arena.compress.modules import CompressionConfig

__all__ = ["parse_recipe", "recipe_name", "ZOO_RECIPES"]

ZOO_RECIPES = ("int8", "int4", "int2", "2:4", "1:4", "int4+2:4", "int2+2:4", "int4+1:4")

_INT = re.compile(r"^int([2-8])([tf])?(?:g(\d+))?$")
_NM = re.compile(r"^(\d+):(\d+)$")
_SP = re.compile(r"^sp(\d+(?:\.\d+)?)$")


def parse_recipe(recipe: str, **overrides) -> CompressionConfig:
    """"int4+2:4" -> CompressionConfig(bits=4, n=2, m=4); keyword overrides go to the config."""
    text = recipe.strip().lower()
    kw: dict = {}
    if text not in ("dense", ""):
        for part in text.split("+"):
            part = part.strip()
            if (mt := _INT.match(part)):
                if "bits" in kw:
                    raise ValueError(f"recipe {recipe!r}: two bit widths")
                kw["bits"] = int(mt.group(1))
                if mt.group(2):
                    if kw["bits"] != 2:
                        raise ValueError(f"recipe {recipe!r}: t/f modes are for int2 only")
                    kw["int2_mode"] = "ternary" if mt.group(2) == "t" else "four-level"
                if mt.group(3):
                    kw["group_size"] = int(mt.group(3))
            elif (mt := _NM.match(part)):
                if "n" in kw or "sparsity" in kw:
                    raise ValueError(f"recipe {recipe!r}: two sparsity patterns")
                n, m = int(mt.group(1)), int(mt.group(2))
                if not 1 <= n <= m:
                    raise ValueError(f"recipe {recipe!r}: N:M needs 1 <= N <= M")
                kw["n"], kw["m"] = n, m
            elif (mt := _SP.match(part)):
                if "n" in kw or "sparsity" in kw:
                    raise ValueError(f"recipe {recipe!r}: two sparsity patterns")
                kw["sparsity"] = float(mt.group(1)) / 100.0
            else:
                raise ValueError(f"recipe {recipe!r}: cannot parse {part!r} "
                                 "(expected intB[t|f][gG], N:M or spXX)")
    return replace(CompressionConfig(**kw), **overrides) if overrides else CompressionConfig(**kw)


def recipe_name(cfg: CompressionConfig) -> str:
    """Canonical recipe name of a config (inverse of parse_recipe for the fields it sets)."""
    parts = []
    if cfg.bits is not None:
        p = f"int{cfg.bits}"
        if cfg.bits == 2 and cfg.int2_mode != "ternary":
            p += "f"
        if cfg.group_size:
            p += f"g{cfg.group_size}"
        parts.append(p)
    if cfg.n is not None:
        parts.append(f"{cfg.n}:{cfg.m}")
    elif cfg.sparsity:
        parts.append(f"sp{cfg.sparsity * 100:g}")
    return "+".join(parts) or "dense"
