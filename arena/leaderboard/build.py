"""The leaderboard as a pure function of the results store's cells (RobustBench style:
one record per result, the tables a render of those records)."""
from __future__ import annotations

from arena.leaderboard import formulas, safe_text


def latest(cells: list[dict]) -> list[dict]:
    """One cell per axes tuple: the newest (a changed submission gets new keys)."""
    best: dict[tuple, dict] = {}
    for c in cells:
        axes = (c["kind"], c["attack"], c["budget"], c["defense"], c["model"], c["source_model"])
        if axes not in best or c["created"] > best[axes]["created"]:
            best[axes] = c
    return list(best.values())


def build(cells: list[dict], meta: dict | None = None) -> dict:
    meta = meta or {}
    run = meta.get("last_run", {})
    scope = {k: run[k] for k in ("profile", "split", "seed_tag") if k in run}
    cells = [c for c in cells if all(c.get(k) == v for k, v in scope.items())]
    if run.get("entries"):
        allowed = set(run["entries"])
        cells = [c for c in cells if (c["attack"] in allowed or c["attack"] is None)
                 and (c["defense"] in allowed or c["defense"] is None)]
    if run.get("models"):
        cells = [c for c in cells if c["model"] in set(run["models"])]
    cells = latest(cells)
    by_kind = {k: [c for c in cells if c["kind"] == k] for k in ("attack", "defense", "clean", "transfer")}
    rows = formulas.cell_table(by_kind["defense"], by_kind["clean"])
    clean_table = sorted(({"model": c["model"], "defense": c["defense"],
                           "clean_wer": formulas.cell_wer(c), "error": c["error"]}
                          for c in by_kind["clean"]), key=lambda r: (r["model"], r["defense"]))
    attack_errors: dict[str, set[str]] = {}
    for c in by_kind["attack"]:
        if c["error"]:
            attack_errors.setdefault(c["attack"], set()).add(c["error"][:300])
    attacks = formulas.untargeted_attack_scores(rows)
    targeted = formulas.targeted_attack_scores(rows)
    for r in attacks + targeted:
        r["errors"] = sorted(set(r["errors"]) | attack_errors.get(r["name"], set()))
    # errors carry tracebacks and folders: the machine's paths become placeholders
    return safe_text.redact_tree({
        "scope": {**scope, "n_utterances": run.get("n_utterances"), "budgets": run.get("budgets"),
                  "device": run.get("device"), "models": run.get("models")},
        "attacks": attacks,
        "targeted_attacks": targeted,
        "defenses": formulas.defense_scores(by_kind["defense"], by_kind["clean"]),
        "model_robustness": formulas.model_robustness(rows),
        "transfer": formulas.transfer_table(by_kind["transfer"], by_kind["clean"]),
        "budget_curves": formulas.budget_curve(rows),
        "clean": clean_table,
        "cells": rows,
        "report": meta.get("last_run_report", {}),
        "not_scored": run.get("problems", []),
    })
