"""WER and CER with jiwer, after the same normalisation of reference and hypothesis."""
from __future__ import annotations

import jiwer

from arena.core.text import normalize_text


def _pairs(references, hypotheses):
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    return refs, hyps


def edit_counts(reference: str, hypothesis: str, unit: str = "word") -> tuple[int, int]:
    """(edits, reference length) for one pair; unit is 'word' or 'char'. Empty reference
    counts every hypothesis unit as an insertion over a length of zero."""
    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    if unit == "char":
        ref_units, hyp_units = list(ref), list(hyp)
    else:
        ref_units, hyp_units = ref.split(), hyp.split()
    if not ref_units:
        return len(hyp_units), 0
    if not hyp_units:
        return len(ref_units), len(ref_units)
    if unit == "char":
        out = jiwer.process_characters(ref, hyp)
    else:
        out = jiwer.process_words(ref, hyp)
    return out.substitutions + out.deletions + out.insertions, len(ref_units)


def _rate(references, hypotheses, unit):
    refs, hyps = _pairs(references, hypotheses)
    edits = total = 0
    for r, h in zip(refs, hyps):
        e, n = edit_counts(r, h, unit)
        edits += e
        total += n
    return edits / max(total, 1)


def wer(references, hypotheses) -> float:
    """Corpus word error rate: total word edits over total reference words."""
    return _rate(references, hypotheses, "word")


def cer(references, hypotheses) -> float:
    """Corpus character error rate (spaces count as characters)."""
    return _rate(references, hypotheses, "char")
