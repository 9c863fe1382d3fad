"""The leaderboard as a pure function of the results store's cells (RobustBench style:
one record per result, the tables a render of those records)."""
from __future__ import annotations

from arena.leaderboard import formulas, safe_text
from arena.score.keys import ADAPTIVE_ATTACK

AXES = ("kind", "attack", "budget", "defense", "model", "source_model")


def latest(cells: list[dict]) -> list[dict]:
    """One cell per axes tuple: the newest (a changed submission gets new keys)."""
    best: dict[tuple, dict] = {}
    for c in cells:
        axes = tuple(c.get(k) for k in AXES)
        if axes not in best or c["created"] > best[axes]["created"]:
            best[axes] = c
    return list(best.values())


def scoped_cells(cells: list[dict], meta: dict) -> list[dict]:
    """The cells the board shows: its last run's scope (profile, split, seed tag), entries,
    models, budgets and utterance count, the newest cell per axes."""
    run = meta.get("last_run", {})
    scope = {k: run[k] for k in ("profile", "split", "seed_tag") if k in run}
    cells = [c for c in cells if all(c.get(k) == v for k, v in scope.items())]
    if run.get("entries"):
        allowed = set(run["entries"])
        allowed |= {None, ADAPTIVE_ATTACK}
        cells = [c for c in cells if c["attack"] in allowed
                 and (c["defense"] in allowed or c["defense"] is None)]
    if run.get("models"):
        cells = [c for c in cells if c["model"] in set(run["models"])]
    if run.get("budgets"):
        # an older run of the same profile with other budgets left attack cells under these
        # axes: without this their self-reported queries and errors joined the board's (the
        # published board summed linf0.01 cells into snr30-only query counts)
        budgets = set(run["budgets"])
        cells = [c for c in cells if c.get("budget") is None or c["budget"] in budgets]
    if run.get("n_utterances"):  # a --limit run's cells share the axes, not the data
        cells = [c for c in cells if len(c["metrics"].get("ids", ())) == run["n_utterances"]]
    return latest(cells)


def build(cells: list[dict], meta: dict | None = None) -> dict:
    meta = meta or {}
    run = meta.get("last_run", {})
    cells = scoped_cells(cells, meta)
    scope = {k: run[k] for k in ("profile", "split", "seed_tag") if k in run}
    # a fixed order, so the board (resampling included) depends on the cells, not on their order
    cells = sorted(cells, key=lambda c: tuple(str(c.get(k)) for k in AXES))
    by_kind = {k: [c for c in cells if c["kind"] == k]
               for k in ("attack", "adaptive", "defense", "clean", "transfer")}
    # one resampler for the whole board: every interval and rank range is paired over utterances
    rs = formulas.Resampler.of(by_kind["defense"] + by_kind["clean"] + by_kind["transfer"])
    rows = formulas.cell_table(by_kind["defense"], by_kind["clean"], rs)
    attack_errors: dict[str, set[str]] = {}
    for c in by_kind["attack"]:
        if c["error"]:
            attack_errors.setdefault(c["attack"], set()).add(c["error"][:300])
    eligible = formulas.eligible_defenses(by_kind["clean"], defense_cells=by_kind["defense"])
    counts = formulas.self_reported_counts(by_kind["attack"])
    attacks = formulas.untargeted_attack_scores(rows, eligible, counts)
    targeted = formulas.targeted_attack_scores(rows, eligible, counts)
    for r in attacks + targeted:
        r["errors"] = sorted(set(r["errors"]) | attack_errors.get(r["name"], set()))
    # errors carry tracebacks and folders: the machine's paths become placeholders
    return safe_text.redact_tree(formulas.strip_private({
        "scope": {**scope, "n_utterances": run.get("n_utterances"), "budgets": run.get("budgets"),
                  "device": run.get("device"), "models": run.get("models")},
        "attacks": attacks,
        "targeted_attacks": targeted,
        "defenses": formulas.defense_scores(by_kind["defense"], by_kind["clean"], rs=rs,
                                            adaptive_cells=by_kind["adaptive"]),
        "model_robustness": formulas.model_robustness(rows),
        "transfer": formulas.transfer_table(by_kind["transfer"], by_kind["clean"], rs),
        "budget_curves": formulas.budget_curve(rows),
        "clean": formulas.clean_table(by_kind["clean"], rs),
        "convergence": formulas.convergence_table(meta.get("convergence") or {}),
        "cells": rows,
        "report": meta.get("last_run_report", {}),
        "not_scored": run.get("problems", []),
    }))
