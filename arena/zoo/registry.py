"""The zoo's registry: every model the arena ships, by name -> file, card and loader.

Loading any model file the arena ships or makes, by name or path.

A dense file is a safetensors checkpoint (arena.asr.models.save_checkpoint); a packed file
(arena.compress.packed) carries `format = arena-packed` in its header metadata. Names refer
to files in the zoo folder: `dense` is `zoo/dense.safetensors`, `int4+2:4` is
`zoo/int4+2-4.packed.safetensors`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from arena.asr.models import ASRModel, build_model, load_checkpoint, read_metadata
from arena.compress.packed import dense_sizes, load_packed
from arena.core import paths

DENSE = "dense"


def file_stem(name: str) -> str:
    """File-system-safe stem of a zoo name (':' is not safe in every archive format)."""
    return name.replace(":", "-")


def zoo_path(name: str) -> Path:
    zoo = paths.zoo_dir()
    if name == DENSE:
        return zoo / "dense.safetensors"
    return zoo / f"{file_stem(name)}.packed.safetensors"


def resolve(name_or_path) -> Path:
    p = Path(str(name_or_path))
    if p.suffix == ".safetensors" and p.exists():
        return p
    path = zoo_path(str(name_or_path))
    if not path.is_file():
        known = ", ".join(available()) or "none"
        raise FileNotFoundError(f"no model {name_or_path!r} (looked for {path}); zoo has: {known}")
    return path


def available() -> list[str]:
    """Names of the models present in the zoo folder, dense first."""
    zoo = paths.zoo_dir()
    names = [DENSE] if (zoo / "dense.safetensors").is_file() else []
    for f in sorted(zoo.glob("*.packed.safetensors")):
        meta = read_metadata(f)
        names.append(meta.get("name", f.name.removesuffix(".packed.safetensors")))
    return names


def load_model(name_or_path, device="cpu") -> ASRModel:
    """The deployed model for a zoo name or a file path, in eval mode on `device`."""
    path = resolve(name_or_path)
    meta = read_metadata(path)
    if meta.get("format") == "arena-packed":
        return load_packed(path, build_model, device=device)
    return load_checkpoint(path, device=device)


FIELDS = {"wer": "test_wer", "rel_wer_regression": "rel_wer_regression", "fine_tuned": "fine_tuned"}


def _decode(v):
    if v is None or not isinstance(v, str):
        return v
    try:
        return json.loads(v)
    except ValueError:
        return v


def list_models() -> list[dict]:
    out = []
    dense_bytes = None
    names = available()
    if DENSE in names:
        dense_bytes = os.path.getsize(resolve(DENSE))
    for name in names:
        path = Path(resolve(name))
        meta = read_metadata(path)
        ref = dense_bytes
        if ref is None and meta.get("format") == "arena-packed":
            ref = dense_sizes(meta.get("arch", ""), meta.get("config", "{}"), build_model)[0]
        card_path = paths.zoo_dir() / "cards" / f"{file_stem(name)}.json"
        card = json.loads(card_path.read_text()) if card_path.is_file() else {}
        size = os.path.getsize(path)
        row = {"name": name, "path": str(path), "bytes": size,
               "size_ratio": (size / ref) if ref else None,
               "recipe": meta.get("recipe", "dense" if name == DENSE else None)}
        for key, mkey in FIELDS.items():
            v = _decode(meta.get(mkey))
            if v is None:
                v = card.get(mkey, card.get(key))
            row[key] = v
        out.append(row)
    return out
