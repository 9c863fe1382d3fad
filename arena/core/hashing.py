"""Content hashes of files: what identifies a corpus, a model or a submission."""
from __future__ import annotations

import hashlib


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
