"""Scores as pure functions of finished cells (DESIGN.md, Scoring).

A cell is a dict like the store returns: kind, attack, budget, defense, model, error and
`metrics` with per-utterance counts `word_edits`, `words`, `char_edits`, `chars` (and for
targeted attacks `target_exact`, `target_char_edits`, `target_chars`). Nothing here reads
files or the clock, so the leaderboard is a pure render of the store.
"""
from __future__ import annotations

from collections import defaultdict
from statistics import mean

NO_DEFENSE = "none"
CLEAN_REGRESSION_MARGIN = 0.05  # absolute clean-WER increase a defense may cost


def corpus_rate(edits, totals) -> float:
    return sum(edits) / max(sum(totals), 1)


def cell_wer(cell: dict) -> float:
    m = cell["metrics"]
    return corpus_rate(m["word_edits"], m["words"])


def cell_cer(cell: dict) -> float:
    m = cell["metrics"]
    return corpus_rate(m["char_edits"], m["chars"])


def _clean_index(clean_cells):
    return {(c["defense"], c["model"]): c for c in clean_cells}


def delta_wer(cell: dict, clean: dict) -> float:
    return cell_wer(cell) - cell_wer(clean)


def cell_table(defense_cells, clean_cells) -> list[dict]:
    """One flat row per (attack, budget, defense, model) with clean/adv WER and ΔWER."""
    clean = _clean_index(clean_cells)
    rows = []
    for c in defense_cells:
        base = clean.get((c["defense"], c["model"]))
        if base is None:
            continue
        m = c["metrics"]
        row = dict(attack=c["attack"], budget=c["budget"], defense=c["defense"], model=c["model"],
                   track=m.get("track", "attack"), clean_wer=cell_wer(base), adv_wer=cell_wer(c),
                   delta_wer=delta_wer(c, base), cer=cell_cer(c), snr_db=m.get("mean_snr_db"),
                   attack_error=m.get("attack_error"), error=c.get("error"))
        if "target_exact" in m:
            row["exact_match"] = mean(m["target_exact"]) if m["target_exact"] else 0.0
            row["cer_to_target"] = corpus_rate(m["target_char_edits"], m["target_chars"])
        rows.append(row)
    return rows


def _errors(rows, key="attack_error"):
    return sorted({r[key] for r in rows if r.get(key)})


def untargeted_attack_scores(rows: list[dict]) -> list[dict]:
    """Score = mean ΔWER over defenses x models (x budgets); higher ranks first."""
    by_attack = defaultdict(list)
    for r in rows:
        if r["track"] == "attack":
            by_attack[r["attack"]].append(r)
    out = []
    for name, rs in by_attack.items():
        per_budget = defaultdict(list)
        for r in rs:
            per_budget[r["budget"]].append(r["delta_wer"])
        out.append(dict(name=name, score=mean(r["delta_wer"] for r in rs),
                        adv_wer=mean(r["adv_wer"] for r in rs),
                        snr_db=_mean_finite(r["snr_db"] for r in rs),
                        by_budget={b: mean(v) for b, v in sorted(per_budget.items())},
                        cells=len(rs), errors=_errors(rs)))
    return _ranked(out, key=lambda r: -r["score"])


def targeted_attack_scores(rows: list[dict]) -> list[dict]:
    """Score = exact-match rate of the target transcript; ties broken by lower CER to target."""
    by_attack = defaultdict(list)
    for r in rows:
        if r["track"] == "targeted-attack":
            by_attack[r["attack"]].append(r)
    out = [dict(name=name, score=mean(r["exact_match"] for r in rs),
                cer_to_target=mean(r["cer_to_target"] for r in rs),
                delta_wer=mean(r["delta_wer"] for r in rs), cells=len(rs), errors=_errors(rs))
           for name, rs in by_attack.items()]
    return _ranked(out, key=lambda r: (-r["score"], r["cer_to_target"]))


def defense_scores(defense_cells, clean_cells, margin: float = CLEAN_REGRESSION_MARGIN) -> list[dict]:
    """Robust WER under the worst untargeted attack per utterance (AutoAttack style),
    per (model, budget), averaged; lower ranks first. A defense whose clean WER is more
    than `margin` above the undefended model's is marked and ranked after all others."""
    clean = _clean_index(clean_cells)
    groups = defaultdict(list)  # (defense, model, budget) -> cells
    for c in defense_cells:
        if c["metrics"].get("track", "attack") == "attack":
            groups[(c["defense"], c["model"], c["budget"])].append(c)
    robust = defaultdict(list)
    for (defense, _model, _budget), cells in groups.items():
        robust[defense].append(worst_case_wer(cells))
    out = []
    for defense, values in robust.items():
        clean_wers = [cell_wer(c) for (d, _), c in clean.items() if d == defense]
        base_wers = [cell_wer(c) for (d, _), c in clean.items() if d == NO_DEFENSE]
        clean_wer = mean(clean_wers) if clean_wers else float("nan")
        base = mean(base_wers) if base_wers else clean_wer
        errors = sorted({c["error"] for c in defense_cells if c["defense"] == defense and c.get("error")}
                        | {c["error"] for (d, _), c in clean.items() if d == defense and c.get("error")})
        out.append(dict(name=defense, score=mean(values), clean_wer=clean_wer,
                        clean_regression=clean_wer - base,
                        regressed=bool(clean_wer - base > margin), cells=len(values), errors=errors))
    return _ranked(out, key=lambda r: (r["regressed"], r["score"]))


def worst_case_wer(cells: list[dict]) -> float:
    """Per utterance, the largest word-edit count over the attacks; then corpus WER."""
    worst: dict[str, int] = {}
    words: dict[str, int] = {}
    for c in cells:
        m = c["metrics"]
        for uid, e, n in zip(m["ids"], m["word_edits"], m["words"]):
            worst[uid] = max(worst.get(uid, 0), e)
            words[uid] = n
    return corpus_rate(worst.values(), [words[u] for u in worst])


def model_robustness(rows: list[dict], defense: str = NO_DEFENSE) -> list[dict]:
    """ΔWER of each untargeted attack on each model without defense (mean over budgets)."""
    table: defaultdict[str, defaultdict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["defense"] == defense and r["track"] == "attack":
            table[r["attack"]][r["model"]].append(r["delta_wer"])
    return [dict(attack=a, **{m: mean(v) for m, v in sorted(models.items())})
            for a, models in sorted(table.items())]


def transfer_table(transfer_cells, clean_cells) -> list[dict]:
    """ΔWER on each model of audio crafted against the source (dense) model, no defense."""
    clean = _clean_index(clean_cells)
    table: defaultdict[tuple[str, str], defaultdict[str, list[float]]] = \
        defaultdict(lambda: defaultdict(list))
    for c in transfer_cells:
        base = clean.get((NO_DEFENSE, c["model"]))
        if base is not None:
            table[(c["attack"], c["budget"])][c["model"]].append(delta_wer(c, base))
    return [dict(attack=a, budget=b, **{m: mean(v) for m, v in sorted(models.items())})
            for (a, b), models in sorted(table.items())]


def budget_curve(rows: list[dict], defense: str = NO_DEFENSE) -> dict[str, dict[str, float]]:
    """attack -> budget -> mean ΔWER over models (for ΔWER-versus-budget plots)."""
    acc: defaultdict[str, defaultdict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["defense"] == defense:
            acc[r["attack"]][r["budget"]].append(r["delta_wer"])
    return {a: {b: mean(v) for b, v in bs.items()} for a, bs in acc.items()}


def _mean_finite(values):
    vals = [v for v in values if v is not None and v == v and abs(v) != float("inf")]
    return mean(vals) if vals else None


def _ranked(rows, key):
    rows = sorted(rows, key=lambda r: (key(r), r["name"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    return rows
