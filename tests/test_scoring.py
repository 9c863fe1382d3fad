"""Scoring formulas on hand-made cells, and the results store."""
import multiprocessing as mp

import pytest

from arena.leaderboard import formulas
from arena.leaderboard.build import build
from arena.score.store import ResultsStore


def cell(kind, attack=None, budget=None, defense=None, model="dense", edits=(0, 0), words=(4, 4),
         track="attack", created=1.0, error=None, **extra):
    m = dict(ids=["u1", "u2"][: len(edits)], word_edits=list(edits), words=list(words),
             char_edits=[2 * e for e in edits], chars=[4 * n for n in words], track=track, **extra)
    return dict(kind=kind, attack=attack, budget=budget, defense=defense, model=model,
                source_model=None, metrics=m, error=error, created=created, split="dev",
                seed_tag="t", profile="quick")


CLEAN = [cell("clean", defense="none", edits=(0, 1)), cell("clean", defense="lowpass", edits=(1, 0)),
         cell("clean", defense="bad", edits=(4, 4))]


def test_delta_wer_and_untargeted_ranking():
    cells = [
        cell("defense", "pgd", "snr30", "none", edits=(4, 3)),      # adv 7/8, clean 1/8 -> 0.75
        cell("defense", "pgd", "snr30", "lowpass", edits=(2, 2)),   # 4/8 - 1/8 = 0.375
        cell("defense", "noise", "snr30", "none", edits=(0, 2)),    # 2/8 - 1/8 = 0.125
        cell("defense", "noise", "snr30", "lowpass", edits=(1, 0)), # 1/8 - 1/8 = 0
    ]
    rows = formulas.cell_table(cells, CLEAN)
    assert [round(r["delta_wer"], 4) for r in rows] == [0.75, 0.375, 0.125, 0.0]
    ranked = formulas.untargeted_attack_scores(rows)
    assert [r["name"] for r in ranked] == ["pgd", "noise"]
    assert ranked[0]["score"] == pytest.approx(0.5625) and ranked[1]["score"] == pytest.approx(0.0625)
    assert ranked[0]["rank"] == 1


def test_defense_score_is_worst_attack_per_utterance():
    cells = [
        cell("defense", "a1", "snr30", "lowpass", edits=(4, 0)),
        cell("defense", "a2", "snr30", "lowpass", edits=(0, 3)),
        cell("defense", "a1", "snr30", "none", edits=(4, 4)),
        cell("defense", "a1", "snr30", "bad", edits=(0, 0)),
    ]
    ranked = formulas.defense_scores(cells, CLEAN)
    by = {r["name"]: r for r in ranked}
    assert by["lowpass"]["score"] == pytest.approx(7 / 8)   # max per utterance: 4 and 3
    assert by["none"]["score"] == pytest.approx(1.0)
    # 'bad' is the most robust but its clean WER regressed (1.0 vs 0.125): ranked last
    assert by["bad"]["regressed"] and [r["name"] for r in ranked] == ["lowpass", "none", "bad"]


def test_targeted_scores():
    cells = [
        cell("defense", "cw", "snr30", "none", edits=(4, 4), track="targeted-attack",
             target_exact=[True, False], target_char_edits=[0, 3], target_chars=[10, 10]),
        cell("defense", "cw2", "snr30", "none", edits=(4, 4), track="targeted-attack",
             target_exact=[False, False], target_char_edits=[5, 5], target_chars=[10, 10]),
    ]
    ranked = formulas.targeted_attack_scores(formulas.cell_table(cells, CLEAN))
    assert [(r["name"], r["score"]) for r in ranked] == [("cw", 0.5), ("cw2", 0.0)]
    assert ranked[0]["cer_to_target"] == pytest.approx(0.15)


def test_model_robustness_and_transfer_tables():
    clean = CLEAN + [cell("clean", defense="none", model="int4", edits=(0, 0))]
    cells = [cell("defense", "pgd", "snr30", "none", edits=(2, 2)),
             cell("defense", "pgd", "snr30", "none", model="int4", edits=(4, 4))]
    table = formulas.model_robustness(formulas.cell_table(cells, clean))
    assert table == [{"attack": "pgd", "dense": pytest.approx(3 / 8), "int4": pytest.approx(1.0)}]
    transfer = [dict(cell("transfer", "pgd", "snr30", None, model="int4", edits=(1, 1)),
                     source_model="dense")]
    assert formulas.transfer_table(transfer, clean) == [
        {"attack": "pgd", "budget": "snr30", "int4": pytest.approx(0.25)}]


def test_leaderboard_build_keeps_the_newest_cell_and_json_keys():
    cells = CLEAN + [cell("defense", "pgd", "snr30", "none", edits=(0, 1), created=1.0),
                     cell("defense", "pgd", "snr30", "none", edits=(4, 4), created=2.0)]
    board = build(cells, {"last_run": {"profile": "quick", "split": "dev", "seed_tag": "t"}})
    assert board["attacks"][0]["score"] == pytest.approx(7 / 8)
    assert {"attacks", "targeted_attacks", "defenses"} <= set(board)


def test_store_put_is_idempotent_and_claims_exclude(tmp_path):
    a, b = ResultsStore(tmp_path), ResultsStore(tmp_path)
    b.owner = "other"
    assert a.claim("k1") and not b.claim("k1")
    assert a.put("k1", "clean", {"x": 1}, model="dense")
    assert not b.put("k1", "clean", {"x": 2}, model="dense")
    assert a.count() == 1 and b.get("k1")["metrics"] == {"x": 1}
    assert not b.claim("k1")  # finished cells are never claimed again
    assert a.claim("k2", lease_s=-1) and b.claim("k2")  # an expired lease is free


def _hammer(root, worker):
    store = ResultsStore(root)
    for i in range(40):
        key = f"cell{i}"
        if store.claim(key):
            store.put(key, "clean", {"by": worker})


def test_two_processes_never_duplicate_a_cell(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(str(tmp_path), w)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    store = ResultsStore(tmp_path)
    assert store.count() == 40
    assert len({c["key"] for c in store.cells()}) == 40
