"""Scores as pure functions of finished cells (docs/design.md, Scoring).

A cell is a dict like the store returns: kind, attack, budget, defense, model, error and
`metrics` with per-utterance `ids`, `word_edits`, `words`, `char_edits`, `chars` (and for
targeted attacks `target_exact`, `target_char_edits`, `target_chars`). Nothing here reads
files or the clock, and the resampling has a fixed seed, so the leaderboard is a pure
function of the store.

Rules (docs/threat-model.md quotes this section)
-------------------------------------------------
Bounded per utterance. An utterance's word (char) edits count at most its reference length
in every aggregate, so per-utterance WER is at most 1.0: a defense that answers 2,000 words
costs 1.0 on that utterance, not 500, and every WER lies in [0, 1], every ΔWER in [-1, 1].

Attack score. For each (model, budget) the attack's ΔWER is the MEDIAN over the eligible
defenses: the reference `none` plus every defense whose WER is at most
CLEAN_REGRESSION_MARGIN above the undefended model's both on clean audio and on the
`noise` baseline's audio (random noise of the budget's size; the defense table's
`regressed` flag, see `regressions`). The score is the mean of these medians over
(model, budget). Targeted attacks: the same with the exact-match rate. Why: with a
mean, one sacrificial defense that recognises an attack's watermark and answers garbage
moved that attack to rank 1; eligibility only depends on a defense's own WER on clean and
benign-noise audio, so a colluder cannot exclude honest defenses.

Bound. In one (model, budget) group let t_1 <= ... <= t_k be the values of the OTHER
eligible defenses, with sentinels t_0 = -1 and t_(k+1) = +1 (values are bounded). Whatever
one defense d answers (garbage, the target, a crash), and whether it takes part at all, the
group's median stays in
    k = 2m + 1:  [(t_m + t_(m+1)) / 2, (t_(m+1) + t_(m+2)) / 2]   (width (t_(m+2) - t_m) / 2)
    k = 2m:      [t_m, t_(m+1)]                                    (width t_(m+1) - t_m)
so d moves the attack's score by at most the mean of these widths over (model, budget):
about half the spread of the honest defenses around their median (k >= 3). It is only
small when several honest defenses take part: with `none` alone (k = 1) the width is 1
(the median is then the mean of two), which is why the reference defenses are always run.
The board publishes the bound per attack as `defense_influence_bound` (the largest over
every defense taking part and a newcomer). j colluding defenses move each median by at
most j order statistics of the others; a defense that fails the clean check counts for
nothing.

Intervals. Every score carries a 95% percentile bootstrap interval (`ci_low`, `ci_high`;
secondary values `<name>_ci_low`, `<name>_ci_high`): N_BOOT resamples with replacement of
the board's utterance ids, drawn once from BOOT_SEED and applied to every cell (paired:
one resample reweights the same utterances in every cell, so comparisons between entries
are resampled jointly). Eligibility and `regressed` are fixed at the point estimates.

Rank ranges. Entry i is significantly better than j when it is better in at least 97.5% of
the paired resamples (ties count against). rank_lo = 1 + the number of entries
significantly better than i, rank_hi = N - the number significantly worse; both widened to
contain the point rank. Entries that no resample separates share a range. Defenses: a
regressed defense is always worse than any other; targeted attacks: ranges by exact-match
only (the CER tie-break orders point ranks).
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from arena.core.text import normalize_text

NO_DEFENSE = "none"
CLEAN_REGRESSION_MARGIN = 0.05  # absolute clean-WER increase a defense may cost
BENIGN_ATTACK = "noise"   # the baseline's random noise at each budget: perturbed, not adversarial
N_BOOT = 1000
BOOT_SEED = 20240611
SIGNIFICANT = 0.975   # fraction of paired resamples in which one entry must beat another
CI = (2.5, 97.5)


# ------------------------------------------------------------------ per-utterance counts
def capped(edits, totals) -> list:
    """Edits counted at most the reference length per utterance (per-utterance rate <= 1)."""
    return [min(e, n) for e, n in zip(edits, totals)]


def corpus_rate(edits, totals) -> float:
    """Capped corpus rate: sum(min(edits, n)) / sum(n)."""
    totals = list(totals)
    return sum(capped(edits, totals)) / max(sum(totals), 1)


def cell_wer(cell: dict) -> float:
    m = cell["metrics"]
    return corpus_rate(m["word_edits"], m["words"])


def cell_cer(cell: dict) -> float:
    m = cell["metrics"]
    return corpus_rate(m["char_edits"], m["chars"])


# ------------------------------------------------------------------ bootstrap
class Resampler:
    """Bootstrap weights over utterance ids, shared by every cell of a board (paired).

    Row 0 of `w` is all ones (the point estimate), rows 1..N_BOOT count how often each id
    was drawn, so every statistic is computed once for all replicates with the same code.
    """

    def __init__(self, ids: Iterable[str], n_boot: int = N_BOOT, seed: int = BOOT_SEED):
        self.ids = sorted(set(ids))
        self.pos = {u: i for i, u in enumerate(self.ids)}
        n = len(self.ids)
        self.w = np.ones((n_boot + 1, n))
        if n and n_boot:
            draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
            flat = (draws + n * np.arange(n_boot)[:, None]).ravel()
            self.w[1:] = np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n)
        self._cache: dict = {}

    @classmethod
    def of(cls, cells: Iterable[dict], **kw) -> Resampler:
        return cls((u for c in cells for u in c["metrics"].get("ids", [])), **kw)

    def vectors(self, cell: dict, num: str, den: str | None, cap: bool = True):
        """(numerator, denominator) per id of the board, 0 where the cell has no such id;
        without `den` the denominator counts the cell's utterances."""
        key = (id(cell), num, den)
        if key not in self._cache:
            m = cell["metrics"]
            idx = [self.pos[u] for u in m["ids"]]
            a, b = np.zeros(len(self.ids)), np.zeros(len(self.ids))
            values = np.asarray(m[num], dtype=float)
            totals = np.asarray(m[den], dtype=float) if den else np.ones(len(idx))
            a[idx] = np.minimum(values, totals) if cap else values
            b[idx] = totals
            self._cache[key] = (cell, a, b)   # holding the cell keeps its id() unique
        return self._cache[key][1:]

    def rates(self, nums: np.ndarray, dens: np.ndarray) -> np.ndarray:
        """(ids x k) numerators and denominators -> (replicates x k) rates."""
        if nums.shape[1] == 0:
            return np.zeros((self.w.shape[0], 0))
        num, den = self.w @ nums, self.w @ dens
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1), np.where(num > 0, np.nan, 0.0))

    def cell_rates(self, cells: list[dict], num: str, den: str | None) -> np.ndarray:
        if not cells:
            return np.zeros((self.w.shape[0], 0))
        pairs = [self.vectors(c, num, den) for c in cells]
        return self.rates(np.stack([p[0] for p in pairs], 1), np.stack([p[1] for p in pairs], 1))


def interval(reps) -> tuple[float | None, float | None]:
    """95% percentile interval of the resampled rows (row 0 is the point estimate)."""
    if reps is None or len(reps) < 2:
        return None, None
    boot = np.asarray(reps)[1:]
    if not np.isfinite(boot).all():
        return None, None
    lo, hi = np.percentile(boot, CI)
    return float(lo), float(hi)


def _with_ci(row: dict, name: str, reps, primary: bool = False) -> dict:
    row[name] = _num(reps[0]) if reps is not None else None
    lo, hi = interval(reps)
    prefix = "" if primary else f"{name}_"
    row[f"{prefix}ci_low"], row[f"{prefix}ci_high"] = lo, hi
    return row


# ------------------------------------------------------------------ cell rows
def _clean_index(clean_cells):
    return {(c["defense"], c["model"]): c for c in clean_cells}


def delta_wer(cell: dict, clean: dict) -> float:
    return cell_wer(cell) - cell_wer(clean)


def cell_table(defense_cells, clean_cells, rs: Resampler | None = None) -> list[dict]:
    """One flat row per (attack, budget, defense, model) with clean/adv WER and ΔWER (capped;
    `ci_low`, `ci_high`: ΔWER's interval). Each row keeps its resampled values under the
    private key `_rep` (stripped by build)."""
    rs = rs or Resampler.of(list(defense_cells) + list(clean_cells))
    clean = _clean_index(clean_cells)
    pairs = [(c, clean[(c["defense"], c["model"])]) for c in defense_cells
             if (c["defense"], c["model"]) in clean]
    if not pairs:
        return []
    cells = [c for c, _ in pairs]
    bases = list({id(b): b for _, b in pairs}.values())
    base_col = {id(b): i for i, b in enumerate(bases)}
    adv = rs.cell_rates(cells, "word_edits", "words")
    base = rs.cell_rates(bases, "word_edits", "words")[:, [base_col[id(b)] for _, b in pairs]]
    delta = adv - base
    lows, highs = (np.percentile(delta[1:], CI, axis=0) if delta.shape[0] > 1
                   else (delta[0], delta[0]))
    targeted = [i for i, c in enumerate(cells) if "target_exact" in c["metrics"]]
    exact = rs.cell_rates([cells[i] for i in targeted], "target_exact", None)
    to_target = rs.cell_rates([cells[i] for i in targeted], "target_char_edits", "target_chars")
    tcol = {i: j for j, i in enumerate(targeted)}
    rows = []
    for i, c in enumerate(cells):
        m = c["metrics"]
        row = dict(attack=c["attack"], budget=c["budget"], defense=c["defense"], model=c["model"],
                   track=m.get("track", "attack"), clean_wer=_num(base[0, i]), adv_wer=_num(adv[0, i]),
                   delta_wer=_num(delta[0, i]), ci_low=_num(lows[i]), ci_high=_num(highs[i]),
                   cer=cell_cer(c), snr_db=m.get("mean_snr_db"),
                   attack_error=m.get("attack_error"), error=c.get("error"))
        row["_rep"] = {"delta_wer": delta[:, i], "adv_wer": adv[:, i]}
        if i in tcol:
            j = tcol[i]
            row["exact_match"], row["cer_to_target"] = _num(exact[0, j]), _num(to_target[0, j])
            row["_rep"].update(exact_match=exact[:, j], cer_to_target=to_target[:, j])
        rows.append(row)
    return rows


def _errors(rows, key="attack_error"):
    return sorted({r[key] for r in rows if r.get(key)})


# ------------------------------------------------------------------ attacks
def regressions(clean_cells, defense_cells=()) -> dict[str, dict[str, float | None]]:
    """Per defense: `clean_regression`, its mean clean WER minus `none`'s, and
    `noise_regression`, its mean WER on the BENIGN_ATTACK's audio minus `none`'s on the same
    (model, budget) cells (None where there is nothing to compare). The second closes what
    the first leaves open: the corpus is noiseless synthesis, so clean audio is recognisable
    (exact digital silence) and a defense could answer it with the bare model while
    purifying everything else with a filter that breaks speech; on random noise of the
    budget's size (which fills the silence like any attack) it would show its real cost."""
    clean = _clean_index(clean_cells)
    base = _mean([cell_wer(c) for (d, _), c in clean.items() if d == NO_DEFENSE])
    # a failed cell counts (its lost utterances at WER 1.0): failing on noise is no way out
    noisy = {(c["defense"], c["model"], c["budget"]): cell_wer(c) for c in defense_cells
             if c["attack"] == BENIGN_ATTACK}
    out: dict[str, dict[str, float | None]] = {}
    for defense in {d for d, _ in clean} | {d for d, _, _ in noisy}:
        wer = _mean([cell_wer(c) for (d, _), c in clean.items() if d == defense])
        pairs = [(v, noisy[(NO_DEFENSE, m, b)]) for (d, m, b), v in noisy.items()
                 if d == defense and (NO_DEFENSE, m, b) in noisy]
        noise = sum(v - n for v, n in pairs) / len(pairs) if pairs else None
        out[defense] = {
            "clean_regression": wer - base if wer is not None and base is not None else None,
            "noise_regression": noise}
    return out


def is_regressed(regression: dict, margin: float = CLEAN_REGRESSION_MARGIN) -> bool:
    return any(v is not None and v > margin for v in regression.values())


def eligible_defenses(clean_cells, margin: float = CLEAN_REGRESSION_MARGIN,
                      defense_cells=()) -> set[str]:
    """`none` and every defense within `margin` of `none` on clean audio and on the benign
    noise (`regressions`)."""
    return {NO_DEFENSE} | {d for d, r in regressions(clean_cells, defense_cells).items()
                           if not is_regressed(r, margin)}


def median_shift_bound(others) -> float:
    """How far one defense can move the median of its value together with `others` (the
    values of the other eligible defenses), whatever it answers: see the module docstring."""
    t = [-1.0] + sorted(float(v) for v in others) + [1.0]   # sentinels t_0, t_(k+1)
    k = len(t) - 2
    m = k // 2
    return (t[m + 2] - t[m]) / 2 if k % 2 else t[m + 1] - t[m]


def _influence_bound(groups: dict, primary: str) -> float | None:
    """Largest move of the score (mean over groups of medians) that any single defense
    taking part, or a newcomer, can cause."""
    if not groups:
        return None
    defenses = {r["defense"] for rs in groups.values() for r in rs}
    worst = 0.0
    for d in defenses | {None}:   # None: a defense that is not on the board yet
        shifts = [median_shift_bound(r[primary] for r in rs
                                     if r["defense"] != d and r[primary] is not None)
                  for rs in groups.values()]
        worst = max(worst, sum(shifts) / len(shifts))
    return worst


def _attack_scores(rows: list[dict], track: str, keys: tuple[str, ...],
                   eligible: set[str] | None, counts: dict | None) -> list[dict]:
    by_attack: dict[str, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["track"] == track:
            by_attack[r["attack"]][(r["model"], r["budget"])].append(r)
    out = []
    for name, groups in by_attack.items():
        all_rows = [r for rs in groups.values() for r in rs]
        kept = {g: [r for r in rs if eligible is None or r["defense"] in eligible
                    or r["defense"] == NO_DEFENSE] for g, rs in groups.items()}
        kept = {g: rs for g, rs in kept.items() if rs}
        medians = {k: {g: np.median(np.stack([r["_rep"][k] for r in rs]), axis=0)
                       for g, rs in kept.items()} for k in keys}
        row: dict = dict(name=name)
        for i, k in enumerate(keys):
            reps = np.mean(list(medians[k].values()), axis=0) if kept else None
            _with_ci(row, "score" if i == 0 else k, reps, primary=i == 0)
            if i == 0:
                row["_score"] = reps
        per_budget = defaultdict(list)
        for (_, budget), v in medians[keys[0]].items():
            per_budget[budget].append(v[0])
        row.update(by_budget={b: float(np.mean(v)) for b, v in sorted(per_budget.items())},
                   defenses=sorted({r["defense"] for rs in kept.values() for r in rs}),
                   defense_influence_bound=_influence_bound(kept, keys[0]),
                   cells=len(all_rows), errors=_errors(all_rows))
        row.update(_counts(counts, name))
        out.append(row)
    return out


def untargeted_attack_scores(rows: list[dict], eligible: set[str] | None = None,
                             counts: dict | None = None) -> list[dict]:
    """Score = mean over (model, budget) of the median ΔWER over eligible defenses (all
    defenses in `rows` when `eligible` is None); higher ranks first."""
    out = _attack_scores(rows, "attack", ("delta_wer", "adv_wer"), eligible, counts)
    snr = defaultdict(list)
    for r in rows:
        snr[r["attack"]].append(r["snr_db"])
    for row in out:
        row["snr_db"] = _mean_finite(snr[row["name"]])
    return _ranked(out, key=lambda r: -_sortable(r["score"]), higher_is_better=True,
                   tier=lambda r: int(r["score"] is None))


def targeted_attack_scores(rows: list[dict], eligible: set[str] | None = None,
                           counts: dict | None = None) -> list[dict]:
    """Score = mean over (model, budget) of the median exact-match rate of the target over
    eligible defenses; ties broken by lower CER to the target."""
    out = _attack_scores(rows, "targeted-attack", ("exact_match", "cer_to_target", "delta_wer"),
                         eligible, counts)
    return _ranked(out, key=lambda r: (-_sortable(r["score"]), _sortable(r["cer_to_target"], 1)),
                   higher_is_better=True, tier=lambda r: int(r["score"] is None))


def self_reported_counts(attack_cells) -> dict[str, dict]:
    """Forward/backward calls per attack, summed over its attack cells. The plugin's own
    process counts them, so they can be forged: every name says `self_reported`."""
    out: dict[str, dict] = defaultdict(lambda: {"forward_calls_self_reported": 0,
                                                "backward_calls_self_reported": 0})
    for c in attack_cells:
        m = c["metrics"]
        for what in ("forward_calls", "backward_calls"):
            v = m.get(f"{what}_self_reported", m.get(what))
            if isinstance(v, (int, float)) and math.isfinite(v):
                out[c["attack"]][f"{what}_self_reported"] += int(v)
    for v in out.values():
        v["queries_self_reported"] = v["forward_calls_self_reported"] + v["backward_calls_self_reported"]
    return dict(out)


def _counts(counts: dict | None, name: str) -> dict:
    keys = ("queries_self_reported", "forward_calls_self_reported", "backward_calls_self_reported")
    found = (counts or {}).get(name, {})
    return {k: found.get(k) for k in keys}


# ------------------------------------------------------------------ defenses
def defense_scores(defense_cells, clean_cells, margin: float = CLEAN_REGRESSION_MARGIN,
                   rs: Resampler | None = None, adaptive_cells=()) -> list[dict]:
    """Robust WER under the worst attack per utterance (AutoAttack style) over every attack's
    audio, targeted attacks' and the adaptive attack's included, per (model, budget),
    averaged; lower ranks first. Also, with intervals: `non_adaptive_wer` (the worst case
    without the adaptive attack) and `adaptive_wer` (the adaptive attack alone); `adaptive`
    says how the attack reached the defense ("bpda": through its purify; "transfer": it only
    implements transcribe, so the attack went through the bare model; "white-box": the
    defense is the bare model; self-reported by the defense's process) and
    `oracle_agreement` how often our model on its purify agreed with its transcribe on the
    adaptive audio. A defense whose WER on clean or on benign-noise audio is more than
    `margin` above the undefended model's (`regressions`) is marked and ranked after all
    others."""
    rs = rs or Resampler.of(list(defense_cells) + list(clean_cells))
    clean = _clean_index(clean_cells)
    groups = defaultdict(list)  # (defense, model, budget) -> cells
    for c in defense_cells:
        groups[(c["defense"], c["model"], c["budget"])].append(c)
    keys = sorted(groups, key=lambda g: tuple(str(x) for x in g))
    columns = {"score": _worst_case_reps([groups[g] for g in keys], rs),
               "non_adaptive_wer": _worst_case_reps(
                   [[c for c in groups[g] if not _adaptive(c)] or groups[g] for g in keys], rs)}
    adaptive_of = {g: [c for c in groups[g] if _adaptive(c)] for g in keys}
    with_adaptive = [g for g in keys if adaptive_of[g]]
    adaptive_reps = dict(zip(with_adaptive, _worst_case_reps([adaptive_of[g] for g in with_adaptive], rs).T))
    per_defense: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for j, g in enumerate(keys):
        for name, reps in columns.items():
            per_defense[g[0]][name].append(reps[:, j])
        if g in adaptive_reps:
            per_defense[g[0]]["adaptive_wer"].append(adaptive_reps[g])
    clean_cells_of = defaultdict(list)
    for (d, _), c in sorted(clean.items()):
        clean_cells_of[d].append(c)
    regressed_by = regressions(clean_cells, defense_cells)
    oracles = _oracles(adaptive_cells, defense_cells)
    out = []
    for defense, values in per_defense.items():
        row = _with_ci(dict(name=defense), "score", np.mean(values["score"], axis=0), primary=True)
        row["_score"] = np.mean(values["score"], axis=0)
        _with_ci(row, "non_adaptive_wer", np.mean(values["non_adaptive_wer"], axis=0))
        _with_ci(row, "adaptive_wer", np.mean(values["adaptive_wer"], axis=0)
                 if values.get("adaptive_wer") else None)
        row.update(oracles.get(defense, dict(adaptive=None, oracle_agreement=None)))
        cw = clean_cells_of.get(defense, [])
        _with_ci(row, "clean_wer", rs.cell_rates(cw, "word_edits", "words").mean(axis=1) if cw else None)
        regression = regressed_by.get(defense, {"clean_regression": None, "noise_regression": None})
        errors = sorted({c["error"] for c in defense_cells if c["defense"] == defense and c.get("error")}
                        | {c["error"] for c in cw if c.get("error")})
        row.update(regression, regressed=is_regressed(regression, margin),
                   cells=len(values["score"]), errors=errors)
        out.append(row)
    return _ranked(out, key=lambda r: (r["regressed"], _sortable(r["score"], 1)),
                   higher_is_better=False, tier=lambda r: int(r["regressed"]))


def _adaptive(cell: dict) -> bool:
    return cell["metrics"].get("track") == "adaptive"


def _oracles(adaptive_cells, defense_cells) -> dict[str, dict]:
    """Per defense: how the adaptive attack reached it, and the share of utterances where our
    model on its purify gave the transcript its transcribe gave (1.0 for an honest
    deterministic purify-then-transcribe defense)."""
    answers = {(c["defense"], c["model"], c["budget"]): c["metrics"] for c in defense_cells if _adaptive(c)}
    kinds: dict[str, set] = defaultdict(set)
    agree: dict[str, list[bool]] = defaultdict(list)
    for c in adaptive_cells:
        m = c["metrics"]
        kinds[c["defense"]].add(m.get("oracle"))
        got = answers.get((c["defense"], c["model"], c["budget"]))
        if not got or "hypotheses" not in got:
            continue
        theirs = dict(zip(got["ids"], got["hypotheses"]))
        for uid, ours in zip(m.get("ids", []), m.get("oracle_hypotheses", [])):
            if ours is not None and uid in theirs:
                agree[c["defense"]].append(_same_text(ours, theirs[uid]))
    return {d: dict(adaptive="/".join(sorted(str(k) for k in ks)),
                    oracle_agreement=float(np.mean(agree[d])) if agree[d] else None)
            for d, ks in kinds.items()}


def _same_text(ours: str, theirs: str | None) -> bool:
    """Whether two transcripts say the same in the normal form the WER is counted in: an
    honest defense answering "Open the door." was reported as never agreeing with its own
    purify (a cheat's signature). A stored transcript cut short (ending in "…") never
    agrees."""
    if theirs is None or theirs.endswith("…"):
        return False
    return normalize_text(ours) == normalize_text(theirs)


def _worst_case_reps(groups: list[list[dict]], rs: Resampler) -> np.ndarray:
    """Per group, per utterance the largest capped word-edit count over its cells; then the
    corpus WER of that, for every replicate (replicates x groups)."""
    if not groups:
        return np.zeros((rs.w.shape[0], 0))
    nums, dens = [], []
    for cells in groups:
        pairs = [rs.vectors(c, "word_edits", "words") for c in cells]
        nums.append(np.max([p[0] for p in pairs], axis=0))
        dens.append(np.max([p[1] for p in pairs], axis=0))
    return rs.rates(np.stack(nums, 1), np.stack(dens, 1))


def worst_case_wer(cells: list[dict]) -> float:
    """Per utterance, the largest (capped) word-edit count over the attacks; then corpus WER."""
    return float(_worst_case_reps([cells], Resampler.of(cells, n_boot=0))[0, 0])


# ------------------------------------------------------------------ tables
def convergence_table(curves: dict) -> list[dict]:
    """One row per recorded curve (`arena bench convergence --record`): ΔWER per step count
    with its interval, and for each profile's effort whether ΔWER there is within the
    curve's tolerance of ΔWER at 4x the steps (None: the curve lacks one of the two)."""
    rows = []
    for key in sorted(curves):
        c = curves[key]
        at = {p["steps"]: p["delta_wer"] for p in c.get("points", [])}
        efforts = {}
        for effort, steps in sorted((c.get("effort_steps") or {}).items()):
            if steps in at and 4 * steps in at:
                efforts[effort] = dict(steps=steps, delta_wer=at[steps], at_4x=at[4 * steps],
                                       converged=abs(at[4 * steps] - at[steps]) <= c["tolerance"])
            else:
                efforts[effort] = dict(steps=steps, delta_wer=at.get(steps), at_4x=None, converged=None)
        rows.append(dict(attack=c["attack"], model=c["model"], budget=c["budget"],
                         n_utterances=c.get("n_utterances"), clean_wer=c.get("clean_wer"),
                         points=c.get("points", []), converged_at=c.get("converged_at"),
                         tolerance=c.get("tolerance"), efforts=efforts))
    return rows


def clean_table(clean_cells, rs: Resampler | None = None) -> list[dict]:
    """Clean WER per (model, defense) with its interval."""
    cells = sorted(clean_cells, key=lambda c: (c["model"], c["defense"]))
    rs = rs or Resampler.of(cells)
    reps = rs.cell_rates(cells, "word_edits", "words")
    return [_with_ci({"model": c["model"], "defense": c["defense"]}, "clean_wer", reps[:, i], primary=True)
            | {"error": c["error"]} for i, c in enumerate(cells)]


def model_robustness(rows: list[dict], defense: str = NO_DEFENSE) -> list[dict]:
    """ΔWER of each untargeted attack on each model without defense (mean over budgets),
    one row per (attack, model)."""
    table: defaultdict[tuple[str, str], list] = defaultdict(list)
    for r in rows:
        if r["defense"] == defense and r["track"] == "attack":
            table[(r["attack"], r["model"])].append(r["_rep"]["delta_wer"])
    return [_with_ci(dict(attack=a, model=m), "delta_wer", np.mean(v, axis=0), primary=True)
            | {"budgets": len(v)} for (a, m), v in sorted(table.items())]


def transfer_table(transfer_cells, clean_cells, rs: Resampler | None = None) -> list[dict]:
    """ΔWER on each model of audio crafted against the source (dense) model, no defense; one
    row per (attack, budget, source model, model)."""
    rs = rs or Resampler.of(list(transfer_cells) + list(clean_cells))
    clean = _clean_index(clean_cells)
    cells = [c for c in transfer_cells if (NO_DEFENSE, c["model"]) in clean]
    adv = rs.cell_rates(cells, "word_edits", "words")
    base = rs.cell_rates([clean[(NO_DEFENSE, c["model"])] for c in cells], "word_edits", "words")
    table: defaultdict[tuple, list] = defaultdict(list)
    for i, c in enumerate(cells):
        table[(c["attack"], c["budget"], c.get("source_model"), c["model"])].append(adv[:, i] - base[:, i])
    return [_with_ci(dict(attack=a, budget=b, source_model=s, model=m), "delta_wer",
                     np.mean(v, axis=0), primary=True)
            for (a, b, s, m), v in sorted(table.items(), key=lambda kv: tuple(map(str, kv[0])))]


def budget_curve(rows: list[dict], defense: str = NO_DEFENSE) -> dict[str, dict[str, float]]:
    """attack -> budget -> mean ΔWER over models (for ΔWER-versus-budget plots)."""
    acc: defaultdict[str, defaultdict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["defense"] == defense and r["delta_wer"] is not None:
            acc[r["attack"]][r["budget"]].append(r["delta_wer"])
    return {a: {b: float(np.mean(v)) for b, v in bs.items()} for a, bs in acc.items()}


# ------------------------------------------------------------------ helpers
def _num(v) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _sortable(v, missing: float = -1.0) -> float:
    return missing if v is None else v


def _mean_finite(values):
    vals = [v for v in values if v is not None and v == v and abs(v) != float("inf")]
    return sum(vals) / len(vals) if vals else None


def _ranked(rows, key, higher_is_better: bool, tier=None):
    """Point ranks by `key`, rank ranges from the paired resamples in each row's `_score`."""
    rows = sorted(rows, key=lambda r: (key(r), r["name"]))
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    lo, hi = rank_ranges([r.get("_score") for r in rows], higher_is_better,
                         [tier(r) if tier else 0 for r in rows])
    for i, r in enumerate(rows):
        r["rank_lo"], r["rank_hi"] = min(lo[i], i + 1), max(hi[i], i + 1)
    return rows


def rank_ranges(reps: list, higher_is_better: bool = True, tiers: list[int] | None = None):
    """(rank_lo, rank_hi) lists by the rule in the module docstring. `reps`: per entry its
    resampled scores (row 0 the point estimate) or None (never separated from others)."""
    n = len(reps)
    if n == 0:
        return [], []
    tier = np.asarray(tiers if tiers is not None else [0] * n)
    width = max((len(r) for r in reps if r is not None), default=1)
    s = np.full((n, max(width - 1, 0)), np.nan)
    for i, r in enumerate(reps):
        if r is not None and len(r) == width:
            s[i] = np.asarray(r)[1:] * (1 if higher_is_better else -1)
    if s.shape[1]:
        beats = (s[:, None, :] > s[None, :, :]).mean(axis=2) >= SIGNIFICANT
    else:
        beats = np.zeros((n, n), bool)
    beats |= tier[:, None] < tier[None, :]
    beats &= ~(tier[:, None] > tier[None, :])
    np.fill_diagonal(beats, False)
    rank_lo = 1 + beats.sum(axis=0)      # entries that beat i
    rank_hi = n - beats.sum(axis=1)      # entries i beats
    return [int(v) for v in rank_lo], [int(v) for v in rank_hi]


def strip_private(obj):
    """The board without resampled arrays (keys starting with '_')."""
    if isinstance(obj, dict):
        return {k: strip_private(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list):
        return [strip_private(v) for v in obj]
    return obj
