"""The compression library, model-agnostic: N:M and unstructured masks (masks), schedules,
pruning algorithms, fake quantization (quant), compressed modules (`compress_`), recipes and
the packed file format with its size accounting (packed). The zoo (arena.zoo) applies it to
the ASR models; nothing here imports a model architecture."""
from arena.compress.modules import (
    CompressedConv1d,
    CompressedLinear,
    CompressionConfig,
    compress_,
    compression_hooks,
    update_masks,
)
from arena.compress.packed import export_packed, load_packed, size_report
from arena.compress.recipes import ZOO_RECIPES, parse_recipe, recipe_name
from arena.compress.schedules import Gradual, OneShot

__all__ = ["CompressionConfig", "CompressedLinear", "CompressedConv1d", "compress_",
           "compression_hooks", "update_masks", "parse_recipe", "recipe_name", "ZOO_RECIPES",
           "OneShot", "Gradual", "export_packed", "load_packed", "size_report"]
