"""Target transcripts for targeted attacks: one fixed sentence per utterance, drawn from the
corpus templates, of similar length, seeded by the utterance id."""
from __future__ import annotations

import random
import re

from arena.data import lexicon
from arena.data.corpus import fill_template


def choose_target(reference: str, utterance_id: str, seed: int = 0, candidates: int = 30) -> str:
    rng = random.Random(f"target:{seed}:{utterance_id}")
    best, best_gap = None, None
    for _ in range(candidates):
        text = re.sub(r"\s+", " ", fill_template(rng.choice(lexicon.TEMPLATES), rng)).strip()
        if text == reference:
            continue
        gap = abs(len(text) - len(reference))
        if best_gap is None or gap < best_gap:
            best, best_gap = text, gap
    return best or "call mom"
