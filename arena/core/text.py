"""The transcript normal form every reference, hypothesis and target is compared in."""
from __future__ import annotations

import re
import unicodedata

ALPHABET = "abcdefghijklmnopqrstuvwxyz' "


class TextError(ValueError):
    """A transcript that cannot be brought to the normal form (empty or no letters)."""


_DROP = re.compile(r"[^a-z' ]+")
SPACES = re.compile(r"\s+")


def normalize_text(text: str, strict: bool = False) -> str:
    """Lower-case letters, apostrophes and single spaces (docs/design.md, Text).

    Accents are folded (café -> cafe), hyphens become spaces, other symbols are dropped.
    With strict=True an empty result raises TextError instead of returning "".
    """
    # punctuation (dashes, slashes, quotes other than the apostrophe) separates words
    spaced = "".join(" " if unicodedata.category(c).startswith(("P", "Z")) and c not in "'\u2019"
                     else c for c in text)
    folded = unicodedata.normalize("NFKD", spaced.replace("\u2019", "'"))
    folded = folded.encode("ascii", "ignore").decode()
    folded = folded.lower()
    folded = _DROP.sub(" ", SPACES.sub(" ", folded))
    out = SPACES.sub(" ", folded).strip()
    if strict and not any(c.isalpha() for c in out):
        raise TextError(f"transcript {text!r} has no letters after normalisation")
    return out
