"""Compression core: masks, schedules, pruning algorithms, fake quantization, compressed
modules (`compress_`), recipes, the packed file format and size accounting, GPU loading and
benchmarks. See DESIGN.md (arena/compress) and the module docstrings."""
from arena.compress.modules import (CompressedConv1d, CompressedLinear, CompressionConfig,
                                    compress_, compression_hooks, update_masks)
from arena.compress.recipes import ZOO_RECIPES, parse_recipe, recipe_name
from arena.compress.schedules import Gradual, OneShot

__all__ = ["CompressionConfig", "CompressedLinear", "CompressedConv1d", "compress_",
           "compression_hooks", "update_masks", "parse_recipe", "recipe_name", "ZOO_RECIPES",
           "OneShot", "Gradual", "export_packed", "load_packed", "size_report"]


def __getattr__(name):  # packed is imported lazily (models_io imports it on demand)
    if name in ("export_packed", "load_packed", "size_report"):
        from arena.compress import packed

        return getattr(packed, name)
    raise AttributeError(name)
