"""Scoring formulas on hand-made cells, and the results store."""
import json
import multiprocessing as mp
import re
import sqlite3
from contextlib import closing

import numpy as np
import pytest

from arena.leaderboard import formulas
from arena.leaderboard.build import build
from arena.leaderboard.publish import LayeredStore, ReadOnlyStore
from arena.score.store import SCHEMA, ResultsStore, StoreError


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
    assert [(r["attack"], r["model"]) for r in table] == [("pgd", "dense"), ("pgd", "int4")]
    assert [r["delta_wer"] for r in table] == [pytest.approx(3 / 8), pytest.approx(1.0)]
    assert all(r["ci_low"] <= r["delta_wer"] <= r["ci_high"] for r in table)
    transfer = [dict(cell("transfer", "pgd", "snr30", None, model="int4", edits=(1, 1)),
                     source_model="dense")]
    (row,) = formulas.transfer_table(transfer, clean)
    assert (row["attack"], row["budget"], row["source_model"], row["model"]) == \
        ("pgd", "snr30", "dense", "int4")
    assert row["delta_wer"] == pytest.approx(0.25) and row["ci_low"] <= 0.25 <= row["ci_high"]


def test_leaderboard_build_keeps_the_newest_cell_and_json_keys():
    cells = CLEAN + [cell("defense", "pgd", "snr30", "none", edits=(0, 1), created=1.0),
                     cell("defense", "pgd", "snr30", "none", edits=(4, 4), created=2.0)]
    board = build(cells, {"last_run": {"profile": "quick", "split": "dev", "seed_tag": "t"}})
    assert board["attacks"][0]["score"] == pytest.approx(7 / 8)
    assert {"attacks", "targeted_attacks", "defenses"} <= set(board)


# ---------------------------------------------------------------- issue 14: bounded scores
def test_per_utterance_wer_is_capped_in_every_aggregate():
    # a defense that answers 2,000 words on u1: that utterance costs 1.0, not 500
    verbose = cell("defense", "pgd", "snr30", "none", edits=(2000, 0))
    assert formulas.cell_wer(verbose) == pytest.approx(0.5)
    (row,) = formulas.cell_table([verbose], CLEAN)
    assert row["adv_wer"] == pytest.approx(0.5) and row["delta_wer"] <= 1.0
    assert formulas.worst_case_wer([verbose]) == pytest.approx(0.5)
    assert formulas.defense_scores([verbose], CLEAN)[0]["score"] == pytest.approx(0.5)
    assert formulas.untargeted_attack_scores([row])[0]["score"] <= 1.0
    cer = cell("defense", "cw", "snr30", "none", edits=(4, 4), track="targeted-attack",
               target_exact=[False, False], target_char_edits=[900, 0], target_chars=[10, 10])
    (row,) = formulas.cell_table([cer], CLEAN)
    assert row["cer_to_target"] == pytest.approx(0.5)


# ---------------------------------------------------------------- issue 14: collusion
def ucell(kind, attack=None, budget="snr30", defense=None, model="dense", edits=(), words=None,
          track="attack", **extra):
    """A cell over utterances u00, u01, ... (words default to 6 each)."""
    words = list(words or [6] * len(edits))
    m = dict(ids=[f"u{i:02d}" for i in range(len(edits))], word_edits=list(edits), words=words,
             char_edits=[3 * e for e in edits], chars=[5 * n for n in words], track=track, **extra)
    return dict(kind=kind, attack=attack, budget=budget, defense=defense, model=model, source_model=None,
                metrics=m, error=None, created=1.0, split="dev", seed_tag="t", profile="quick")


META = {"last_run": {"profile": "quick", "split": "dev", "seed_tag": "t"}}
HONEST = ("none", "lowpass", "smoothing")
N = 12


def _colluding_world(with_sacrifice: bool) -> list[dict]:
    """pgd really works; `wm` only adds a watermark (no effect on honest defenses); the
    sacrificial defense is clean-honest but answers 2,000 words whenever it hears it."""
    cells = [ucell("clean", defense=d, edits=[0] * N) for d in HONEST + ("sacrifice",)]
    for i, d in enumerate(HONEST):
        cells.append(ucell("defense", "pgd", defense=d, edits=[3 + (u + i) % 3 for u in range(N)]))
        cells.append(ucell("defense", "wm", defense=d, edits=[(u + i) % 2 for u in range(N)]))
    if with_sacrifice:
        cells.append(ucell("defense", "pgd", defense="sacrifice", edits=[3] * N))
        cells.append(ucell("defense", "wm", defense="sacrifice", edits=[2000] * N))
    return cells


def test_a_colluding_defense_moves_an_attack_score_at_most_by_the_bound():
    honest = {r["name"]: r for r in build(_colluding_world(False), META)["attacks"]}
    board = build(_colluding_world(True), META)
    colluded = {r["name"]: r for r in board["attacks"]}
    # the bound from the honest defenses' values alone (module docstring)
    wm_values = [r["delta_wer"] for r in formulas.cell_table(
        [c for c in _colluding_world(False) if c["kind"] == "defense" and c["attack"] == "wm"],
        [c for c in _colluding_world(False) if c["kind"] == "clean"])]
    bound = formulas.median_shift_bound(wm_values)
    assert bound < 0.1
    shift = colluded["wm"]["score"] - honest["wm"]["score"]
    assert abs(shift) <= bound + 1e-12
    assert abs(shift) <= colluded["wm"]["defense_influence_bound"] + 1e-12
    # a mean over defenses put wm first (mean ΔWER ~ 83); the median keeps it below pgd
    assert [r["name"] for r in board["attacks"]] == ["pgd", "wm"]
    assert colluded["wm"]["score"] < 0.2 and "sacrifice" in colluded["wm"]["defenses"]


def test_a_colluding_defense_cannot_buy_targeted_exact_matches():
    def world(with_sacrifice):
        cells = [ucell("clean", defense=d, edits=[0] * N) for d in HONEST + ("sacrifice",)]
        defenses = HONEST + (("sacrifice",) if with_sacrifice else ())
        for d in defenses:
            hit = d == "sacrifice"   # it recognises the attack and answers the target
            cells.append(ucell("defense", "cw", defense=d, edits=[6] * N, track="targeted-attack",
                               target_exact=[hit or u == 0 for u in range(N)],
                               target_char_edits=[0 if hit else 5] * N, target_chars=[20] * N))
        return cells
    before = build(world(False), META)["targeted_attacks"][0]["score"]
    after = build(world(True), META)["targeted_attacks"][0]
    assert before == pytest.approx(1 / N)
    assert abs(after["score"] - before) <= after["defense_influence_bound"] + 1e-12
    assert after["score"] == pytest.approx(1 / N)   # the mean would have given 0.31


def test_a_regressed_defense_does_not_count_for_attacks():
    cells = CLEAN + [cell("defense", "pgd", "snr30", "none", edits=(1, 1)),
                     cell("defense", "pgd", "snr30", "bad", edits=(4, 4)),
                     cell("defense", "pgd", "snr30", "lowpass", edits=(1, 1))]
    assert formulas.eligible_defenses(CLEAN) == {"none", "lowpass"}
    board = build(cells, META)
    assert board["attacks"][0]["defenses"] == ["lowpass", "none"]
    assert board["attacks"][0]["score"] == pytest.approx(1 / 8)


def test_a_defense_that_only_spares_clean_audio_is_regressed():
    """`switch` answers clean audio with the bare model (the corpus's digital silence gives
    it away) and purifies everything else with a filter that breaks speech: its clean WER
    equals `none`'s, so the clean check passed it, ranked it first and counted it in the
    attack medians (main at cedd2ba). On the noise baseline's audio it shows the filter's
    cost, and is regressed: ranked last and out of the medians."""
    cells = [ucell("clean", defense=d, edits=[1] * N) for d in ("none", "smoothing", "switch")]
    for d, noise, pgd in (("none", 1, 5), ("smoothing", 1, 4), ("switch", 3, 3)):
        cells.append(ucell("defense", "noise", defense=d, edits=[noise] * N))
        cells.append(ucell("defense", "pgd", defense=d, edits=[pgd] * N))
    board = build(cells, META)
    by_name = {r["name"]: r for r in board["defenses"]}
    assert by_name["switch"]["clean_regression"] == pytest.approx(0.0)
    assert by_name["switch"]["noise_regression"] == pytest.approx(2 / 6)
    assert by_name["switch"]["regressed"] and not by_name["smoothing"]["regressed"]
    assert [r["name"] for r in board["defenses"]][-1] == "switch"   # best robust score, last
    assert by_name["switch"]["score"] < by_name["smoothing"]["score"]
    assert "switch" not in board["attacks"][0]["defenses"]
    assert formulas.eligible_defenses([c for c in cells if c["kind"] == "clean"]) == {
        "none", "smoothing", "switch"}   # the clean check alone let it in
    # failing on the noise is no way out: its lost utterances count WER 1.0
    failed = [dict(c, error="purify failed") if c["defense"] == "switch" and c["attack"] == "noise"
              else c for c in cells]
    assert {r["name"]: r for r in build(failed, META)["defenses"]}["switch"]["regressed"]


def test_median_shift_bound_holds_for_any_answer():
    import random
    from statistics import median

    rng = random.Random(3)
    for _ in range(300):
        others = [rng.uniform(-1, 1) for _ in range(rng.randint(1, 7))]
        bound = formulas.median_shift_bound(others)
        reached = [median(others + [x]) for x in (-1.0, 1.0, *(rng.uniform(-1, 1) for _ in range(20)))]
        assert max(reached) - min(reached) <= bound + 1e-12
        assert min(reached) - 1e-12 <= median(others) <= max(reached) + 1e-12
        assert max(reached) - min(reached) >= bound - 1e-12   # and the bound is tight
    assert formulas.median_shift_bound([0.3]) == pytest.approx(1.0)  # alone with `none`: x in [-1, 1]


# ---------------------------------------------------------------- issue 16: intervals, ranks
def _varied(n, offset=0, seed=0):
    import random

    rng = random.Random(seed)
    return [min(6, rng.choice([0, 0, 1, 2, 5, 6]) + offset) for _ in range(n)]


def test_every_score_and_table_cell_has_an_interval_and_rank_range():
    cells = [ucell("clean", defense=d, edits=_varied(N, seed=9) if d == "none" else [1] * N)
             for d in ("none", "lowpass")]
    cells += [ucell("clean", defense="none", model="int4", edits=[0] * N)]
    for a, off in (("pgd", 1), ("fgsm", 0)):
        for d in ("none", "lowpass"):
            cells.append(ucell("defense", a, defense=d, edits=_varied(N, off, seed=1)))
        cells.append(ucell("defense", a, defense="none", model="int4", edits=_varied(N, off, seed=2)))
        cells.append(dict(ucell("transfer", a, model="int4", edits=_varied(N, seed=4)), source_model="dense"))
    cells.append(ucell("defense", "cw", defense="none", edits=[6] * N, track="targeted-attack",
                       target_exact=[u % 3 == 0 for u in range(N)], target_char_edits=[1] * N,
                       target_chars=[20] * N))
    board = build(cells, META)
    from arena.leaderboard import render

    data = render.to_json(board)
    for key in ("attacks", "targeted_attacks", "defenses"):
        assert data[key]
        for r in data[key]:
            assert r["ci_low"] <= r["score"] <= r["ci_high"], (key, r)
            assert 1 <= r["rank_lo"] <= r["rank"] <= r["rank_hi"] <= len(data[key])
    for r in data["defenses"]:
        assert r["clean_wer_ci_low"] <= r["clean_wer"] <= r["clean_wer_ci_high"]
    for key in ("model_robustness", "transfer", "clean"):
        assert data[key] and all(r["ci_low"] <= r["delta_wer" if key != "clean" else "clean_wer"]
                                 <= r["ci_high"] for r in data[key])
    assert {r["model"] for r in data["model_robustness"]} == {"dense", "int4"}
    assert any(r["ci_high"] - r["ci_low"] > 0.05 for r in data["model_robustness"])


def test_paired_resampling_separates_a_consistent_difference_that_marginal_intervals_do_not():
    # b makes one more word error than a on every utterance; the utterances vary so much
    # that their intervals overlap, but every paired resample puts b ahead
    base = _varied(N, seed=5)
    cells = [ucell("clean", defense="none", edits=[0] * N),
             ucell("defense", "a", defense="none", edits=base),
             ucell("defense", "b", defense="none", edits=[e + 1 for e in base]),
             ucell("defense", "twin", defense="none", edits=base)]
    ranked = build(cells, META)["attacks"]
    by = {r["name"]: r for r in ranked}
    assert by["b"]["ci_low"] < by["a"]["ci_high"]                     # intervals overlap
    assert (by["b"]["rank_lo"], by["b"]["rank_hi"]) == (1, 1)         # yet b is separated
    # a and its twin are indistinguishable: they share a range
    assert (by["a"]["rank_lo"], by["a"]["rank_hi"]) == (2, 3)
    assert (by["twin"]["rank_lo"], by["twin"]["rank_hi"]) == (2, 3)


def test_rank_ranges_rule():
    rng = np.random.default_rng(0)
    boot, other = rng.normal(size=1000), rng.normal(size=1000)
    # 0 is far ahead; 2 beats 1 in every paired resample (same noise, +0.01); 3 has its own
    # noise, so nothing separates it from 1 or 2; 4 has no resamples
    reps = [np.r_[0, 5 + boot], np.r_[0, boot], np.r_[0, boot + 0.01], np.r_[0, other], None]
    lo, hi = formulas.rank_ranges(reps, higher_is_better=True)
    assert (lo, hi) == ([1, 3, 2, 2, 1], [2, 5, 4, 5, 5])
    lo, hi = formulas.rank_ranges(reps, higher_is_better=False, tiers=[1, 0, 0, 0, 0])
    assert (lo[0], hi[0]) == (5, 5)        # a worse tier is behind everyone


def test_board_is_a_pure_function_of_the_cells():
    import json
    import random

    cells = _colluding_world(True)
    shuffled = cells[:]
    random.Random(1).shuffle(shuffled)
    a, b = build(cells, META), build(shuffled, META)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_intervals_narrow_with_more_utterances():
    def width(n):
        cells = [ucell("clean", defense="none", edits=[0] * n),
                 ucell("defense", "pgd", defense="none", edits=_varied(n, seed=8))]
        r = build(cells, META)["attacks"][0]
        return r["ci_high"] - r["ci_low"]
    assert width(200) < 0.5 * width(12)


def test_build_is_fast_on_a_600_cell_board():
    import time

    cells = [ucell("clean", defense=d, model=m, edits=_varied(N, seed=1))
             for d in ("none", "d1", "d2", "d3", "d4", "d5") for m in ("m0", "m1", "m2", "m3", "m4")]
    for a in range(10):
        for b in ("snr30", "snr35"):
            for d in ("none", "d1", "d2", "d3", "d4", "d5"):
                for m in ("m0", "m1", "m2", "m3", "m4"):
                    cells.append(ucell("defense", f"a{a}", b, d, m, edits=_varied(N, a % 3, seed=a)))
    t0 = time.perf_counter()
    board = build(cells, META)
    elapsed = time.perf_counter() - t0
    assert len(board["cells"]) == 600 and len(board["attacks"]) == 10
    assert elapsed < 3.0, f"build took {elapsed:.2f} s (vectorised: ~0.3 s on 2 cores)"


# ---------------------------------------------------------------- issue 16: targeted audio
def test_defense_score_counts_targeted_attack_audio():
    cells = [cell("defense", "pgd", "snr30", "lowpass", edits=(0, 0)),
             cell("defense", "cw", "snr30", "lowpass", edits=(4, 4), track="targeted-attack",
                  target_exact=[True, True], target_char_edits=[0, 0], target_chars=[5, 5])]
    (row,) = formulas.defense_scores(cells, CLEAN)
    assert row["score"] == pytest.approx(1.0)   # without the targeted audio: 0.0


# ---------------------------------------------------------------- issue 14: counters
def test_query_counts_are_labelled_self_reported_everywhere():
    from rich.console import Console

    from arena.leaderboard import render

    attack = cell("attack", "pgd", "snr30", None, edits=(0, 0))
    attack["metrics"].update(forward_calls=7, backward_calls=5, counts_self_reported=True)
    cells = CLEAN + [attack, cell("attack", "pgd", "linf0.003", None, edits=(0, 0)),
                     cell("defense", "pgd", "snr30", "none", edits=(4, 4))]
    cells[-2]["metrics"].update(forward_calls=3, backward_calls=1)
    board = build(cells, META)
    (row,) = board["attacks"]
    assert (row["forward_calls_self_reported"], row["backward_calls_self_reported"],
            row["queries_self_reported"]) == (10, 6, 16)
    data = render.to_json(board)
    text = json.dumps(data)
    assert '"forward_calls"' not in text and '"backward_calls"' not in text
    assert "queries_self_reported" in render.to_csv(board).splitlines()[0]
    console = Console(record=True, width=300)
    render.print_terminal(board, console)
    out = console.export_text()
    assert "queries_self_reported" in out and "10 fwd / 6 bwd" in out and "self-reported" in out
    assert "0.875 [" in out   # the score with its interval


def test_terminal_and_csv_show_intervals_and_rank_ranges():
    from rich.console import Console

    from arena.leaderboard import render

    base = _varied(N, seed=5)
    cells = [ucell("clean", defense="none", edits=[0] * N),
             ucell("defense", "a", defense="none", edits=base),
             ucell("defense", "twin", defense="none", edits=base)]
    board = build(cells, META)
    console = Console(record=True, width=300)
    render.print_terminal(board, console)
    out = console.export_text()
    assert "1-2" in out and "[" in out
    import csv
    import io

    rows = [r for r in csv.DictReader(io.StringIO(render.to_csv(board))) if r["track"] == "attacks"]
    assert [r["rank_range"] for r in rows] == ["1-2", "1-2"]
    assert all(r["score_95ci"].startswith(f"{float(r['score']):.3f} [") for r in rows)


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


OLD_SCHEMA = """
CREATE TABLE cells (key TEXT PRIMARY KEY, kind TEXT, attack TEXT, budget TEXT, defense TEXT,
                    model TEXT, metrics TEXT, error TEXT, created REAL);
CREATE TABLE claims (key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT);
INSERT INTO meta VALUES ('last_run', '{"profile": "quick"}');
"""


def _sql(path, script: str) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.executescript(script)


def _tree(root) -> dict:
    """Every file and folder under root with its bytes (None for a folder)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None
            for p in root.rglob("*")}


def _unreadable_store(root, case: str) -> str:
    """A store this code must refuse; returns what the error names."""
    root.mkdir()
    path = root / "results.sqlite"
    if case == "junk":
        path.write_bytes(b"not a database, just some bytes\n" * 200)
        return "file is not a database"
    if case == "old schema":
        _sql(path, OLD_SCHEMA)
        return "no column source_model, split, seed_tag, profile, artifact"
    if case == "other tables":
        _sql(path, "CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('hi');")
        return "no table cells"
    _sql(path, SCHEMA + f"INSERT INTO meta VALUES ('schema_version', '{case.split(' ')[-1]}');")
    return {"version 99": "schema version 99", "version abc": "unknown schema version"}[case]


@pytest.mark.parametrize("case", ["junk", "old schema", "other tables", "version 99", "version abc"])
def test_a_store_that_cannot_be_read_is_refused_by_name_and_left_as_it_is(tmp_path, case):
    root = tmp_path / "store"
    problem = _unreadable_store(root, case)
    before = _tree(root)
    message = rf"{re.escape(str(root / 'results.sqlite'))}: .*{re.escape(problem)}"
    for read in (ResultsStore, lambda r: LayeredStore(r, None), lambda r: ReadOnlyStore(r).cells(),
                 lambda r: ReadOnlyStore(r).meta(), lambda r: ReadOnlyStore(r).get("k")):
        with pytest.raises(StoreError, match=message):
            read(root)
        assert _tree(root) == before       # no byte, journal mode, table or folder added


def test_reading_a_store_leaves_its_file_as_it_is(tmp_path):
    """A committed store (rollback journal, one file): reading it through ResultsStore switched
    it to WAL, rewriting its header, so `git status` showed the published store modified."""
    store = ResultsStore(tmp_path)
    store.put("k1", "clean", {"x": 1})
    store.set_meta("last_run", {"profile": "quick"})
    _sql(store.path, "PRAGMA journal_mode=DELETE")
    before = store.path.read_bytes()
    reader = ResultsStore(tmp_path)
    assert reader.cells() and reader.meta() and reader.has("k1") and reader.get("k1") and reader.count() == 1
    assert store.path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "artifacts", "results.sqlite"]


def test_a_cell_or_meta_that_does_not_parse_is_named_and_the_rest_stays_readable(tmp_path):
    store = ResultsStore(tmp_path)
    for key in ("k1", "k2", "k3"):
        store.put(key, "clean", {"x": key})
    store.set_meta("last_run", {"profile": "quick"})
    _sql(store.path, "UPDATE cells SET metrics='{not json' WHERE key='k1'; "
                     "UPDATE cells SET metrics='[1]' WHERE key='k3'; "
                     "UPDATE meta SET value='{' WHERE name='last_run'")
    where = re.escape(str(store.path))
    for read in (lambda: store.get("k1"), store.cells, lambda: ReadOnlyStore(tmp_path).cells()):
        with pytest.raises(StoreError, match=rf"{where}: cell k1 has unreadable metrics"):
            read()
    with pytest.raises(StoreError, match=rf"{where}: cell k3 has unreadable metrics \(not a JSON object"):
        store.get("k3")
    with pytest.raises(StoreError, match=rf"{where}: meta last_run is unreadable"):
        store.meta()
    assert store.get("k2")["metrics"] == {"x": "k2"} and store.count() == 3


def test_a_new_store_records_its_schema_version_and_an_older_one_is_read_by_its_columns(tmp_path):
    def version(path):
        with closing(sqlite3.connect(path)) as db:
            return db.execute("SELECT value FROM meta WHERE name='schema_version'").fetchall()

    new = ResultsStore(tmp_path / "new")
    assert version(new.path) == [("1",)]
    assert new.meta() == {}                          # the version is the store's, not the board's
    new.set_meta("a", 1)
    assert new.meta() == {"a": 1} and ResultsStore(new.root).meta() == {"a": 1}
    # every store written before versions: the current columns, no version; read, not stamped
    root = tmp_path / "unversioned"
    root.mkdir()
    _sql(root / "results.sqlite", SCHEMA)
    store = ResultsStore(root)
    assert store.put("k", "clean", {"x": 1}) and ReadOnlyStore(root).get("k")["metrics"] == {"x": 1}
    assert version(store.path) == []
    # an empty file (what a crash between creating and filling a store leaves) is a new store
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "results.sqlite").write_bytes(b"")
    assert ResultsStore(tmp_path / "empty").count() == 0


def test_recorded_convergence_curves_are_on_the_board_with_a_verdict_per_effort(tmp_path):
    from arena.leaderboard.build import build
    from arena.leaderboard.publish import record_convergence
    from arena.leaderboard.site import convergence_html
    from arena.score.store import ResultsStore

    def pt(steps, d):
        return dict(steps=steps, delta_wer=d, ci_low=d - 0.05, ci_high=d + 0.05, seconds=1.0)

    curve = dict(attack="apgd", model="dense", budget="snr30", split="dev", n_utterances=64,
                 clean_wer=0.05, tolerance=0.03, converged_at=25,
                 points=[pt(12, 0.80), pt(25, 0.93), pt(50, 0.94), pt(100, 0.95), pt(200, 0.95)],
                 effort_steps={"quick": 25, "standard": 50, "full": 200})
    assert record_convergence(curve, tmp_path) == "apgd/dense/snr30"
    record_convergence(dict(curve, budget="linf0.01", points=[pt(12, 0.5), pt(50, 0.7)]), tmp_path)
    store = ResultsStore(tmp_path)
    rows = build(store.cells(), store.meta())["convergence"]
    assert [(r["attack"], r["budget"]) for r in rows] == [("apgd", "linf0.01"), ("apgd", "snr30")]
    snr = rows[1]["efforts"]
    assert snr["quick"] == dict(steps=25, delta_wer=0.93, at_4x=0.95, converged=True)
    assert snr["standard"]["converged"] is True and snr["full"]["converged"] is None
    linf = rows[0]["efforts"]
    assert linf["quick"]["converged"] is None          # 25 and 100 steps were not measured
    assert linf["standard"]["delta_wer"] == 0.7 and linf["standard"]["at_4x"] is None
    html = convergence_html(rows)
    assert "standard (50 steps): converged" in html and "not measured" in html
    curve["points"][-1] = pt(200, 0.99)                # 0.94 at 50 vs 0.99 at 200: not converged
    record_convergence(curve, tmp_path)
    rows = build(store.cells(), store.meta())["convergence"]
    assert rows[1]["efforts"]["standard"]["converged"] is False


def test_publishing_switches_profile_only_when_named_and_whole(tmp_path, monkeypatch):
    """A bare --publish keeps the board's profile; --publish --profile P makes the board P's
    when the run is P's whole grid (its own split and size), and is refused otherwise."""
    from arena.leaderboard import publish as pub
    from arena.leaderboard.scoring import ScoreRequest, profile_name

    quick = {"profile": "quick", "split": "dev", "n_utterances": 12}
    whole = dict(manifest=None, attacks=None, defenses=None, models=None, committed=quick)
    assert pub.filters_of(profile="standard", split="dev", n_utterances=200, **whole,
                          switch_profile=True) == []
    assert pub.filters_of(profile="standard", split="dev", n_utterances=200, **whole) == [
        "profile standard (the published board is quick)",
        "--limit 200 (the published board has 12 utterances)"]
    shrunk = pub.filters_of(profile="standard", split="dev", n_utterances=50, **whole,
                            switch_profile=True)
    assert shrunk == ["--limit 50 (the published board has 200 utterances)"]
    assert pub.filters_of(profile="standard", split="test", n_utterances=200, **whole,
                          switch_profile=True) == ["split test (the published board is dev)"]

    board = tmp_path / "board"
    monkeypatch.setenv("ARENA_LEADERBOARD", str(board))
    bare = ScoreRequest(None, None, None, None, None, None, None, None, False, None, True, None,
                        None, 0.25, progress=False)
    assert profile_name(bare, "cpu") == "quick"          # no board yet: the device's default
    from arena.score.store import ResultsStore
    ResultsStore(board).set_meta("last_run", {**quick, "profile": "standard"})
    assert profile_name(bare, "cpu") == "standard"       # republishing keeps the board's
    assert profile_name(bare, "cuda") == "standard"
    local = ScoreRequest(None, None, None, None, None, None, None, None, False, None, False, None,
                         None, 0.25, progress=False)
    assert profile_name(local, "cpu") == "quick"


def test_a_long_transcript_is_counted_whole_and_stored_short():
    """A defense may return transcripts of up to 10,000 characters: the edit counts take
    all of it, the cell keeps max(200, 4x the reference) characters, marked as cut."""
    from arena.score.jobs import KEEP_CHARS, transcript_metrics
    from arena.score.plan import Grid
    from arena.score.profiles import get_profile
    from arena.score.subset import DataSubset

    subset = DataSubset("dev", "t", "0" * 64, ["a", "b"], ["open the door", "call mom"],
                        [np.zeros(160, np.float32)] * 2, ["", ""])
    grid = Grid(subset, get_profile("quick"), 0, (), (), ())
    long = "open the door " + "spam " * 2000
    m = transcript_metrics(grid, {"a": long, "b": "call mom"})
    assert m["word_edits"][0] == 2000 and m["words"][0] == 3     # every extra word counted
    kept = m["hypotheses"][0]
    assert len(kept) == KEEP_CHARS + 1 and kept.endswith("…") and long.startswith(kept[:-1])
    assert m["hypotheses"][1] == "call mom" and m["word_edits"][1] == 0
    assert len(json.dumps(m)) < 2000


def test_a_target_is_reached_in_the_normal_form_as_its_edits_are_counted():
    """A defense answering "Close the window." for the target "close the window" reached it
    (0 char edits to the target): the exact match compared the raw text and said no."""
    from arena.score.jobs import transcript_metrics
    from arena.score.plan import Grid
    from arena.score.profiles import get_profile
    from arena.score.subset import DataSubset

    subset = DataSubset("dev", "t", "0" * 64, ["a", "b", "c"], ["open the door", "call mom", "stop"],
                        [np.zeros(160, np.float32)] * 3, ["close the window", "turn it off", "play"])
    grid = Grid(subset, get_profile("quick"), 0, (), (), ())
    m = transcript_metrics(grid, {"a": "Close the window.", "b": "turn  it off", "c": "pray"},
                           targeted=True)
    assert m["target_char_edits"] == [0, 0, 1]
    assert m["target_exact"] == [True, True, False]


def test_oracle_agreement_compares_transcripts_in_the_normal_form():
    """An honest defense whose transcribe writes "Open the door." agrees with our model's
    "open the door" on its purify: it showed 0.0, the signature of a purify that does not
    model its transcribe. A transcript the store cut short never agrees."""
    adaptive = [dict(kind="adaptive", attack="adaptive:apgd", budget="snr30", defense=d, model="dense",
                     metrics=dict(oracle="bpda", ids=["u1", "u2"],
                                  oracle_hypotheses=["open the door", "call mom"]))
                for d in ("caps", "other")]
    answers = {"caps": ["Open the door.", "CALL  mom!"], "other": ["open the door", "call mom x" * 40 + "…"]}
    cells = [cell("defense", "adaptive:apgd", "snr30", d, track="adaptive", hypotheses=h)
             for d, h in answers.items()]
    oracles = formulas._oracles(adaptive, cells)
    assert oracles["caps"]["oracle_agreement"] == 1.0       # before: 0.0
    assert oracles["other"]["oracle_agreement"] == 0.5


def test_cells_of_a_budget_the_board_does_not_show_stay_off_it():
    # an older run of the profile scored linf0.01 too; the board's run is snr30 only: that
    # attack cell's self-reported queries and its error were added to the board's row
    meta = {"last_run": {"profile": "quick", "split": "dev", "seed_tag": "t", "budgets": ["snr30"]}}
    cells = CLEAN + [cell("defense", "pgd", "snr30", "none", edits=(4, 3)),
                     cell("attack", "pgd", "snr30", forward_calls=10, backward_calls=6),
                     cell("attack", "pgd", "linf0.01", forward_calls=1000, backward_calls=1000,
                          error="old budget failed")]
    (row,) = build(cells, meta)["attacks"]
    assert (row["forward_calls_self_reported"], row["backward_calls_self_reported"]) == (10, 6)
    assert row["errors"] == []
