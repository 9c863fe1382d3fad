"""What the zoo holds: file sizes and the accuracy fields of each model (for `arena models`).

Accuracy fields (`test_wer`, `rel_wer_regression`, `fine_tuned`) come from the model file's
metadata, else from `arena/zoo/cards/<stem>.json` when present; null when unknown.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["list_models"]

FIELDS = {"wer": "test_wer", "rel_wer_regression": "rel_wer_regression", "fine_tuned": "fine_tuned"}


def _decode(v):
    if v is None or not isinstance(v, str):
        return v
    try:
        return json.loads(v)
    except ValueError:
        return v


def list_models() -> list[dict]:
    from arena import paths
    from arena.asr.models import read_metadata
    from arena.models_io import DENSE, available, file_stem, resolve

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
            from arena.compress.packed import _dense_sizes

            ref = _dense_sizes(meta.get("arch", ""), meta.get("config", "{}"))[0]
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
