"""Loading any model file the arena ships or makes, by name or path.

A dense file is a safetensors checkpoint (arena.asr.models.save_checkpoint); a packed file
(arena.compress.packed) carries `format = arena-packed` in its header metadata. Names refer
to files in the zoo folder: `dense` is `zoo/dense.safetensors`, `int4+2:4` is
`zoo/int4+2-4.packed.safetensors`.
"""
from __future__ import annotations

from pathlib import Path

from arena import paths
from arena.asr.models import ASRModel, load_checkpoint, read_metadata

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
        from arena.compress.packed import load_packed

        return load_packed(path, device=device)
    return load_checkpoint(path, device=device)
