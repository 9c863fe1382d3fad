"""The job plan: anonymous defense rounds (no job holds two versions of an utterance) and
the executor; a hostile defense that groups near-identical inputs finds no twins."""
import pytest

from arena.score.anonymise import assign_rounds, restore
from arena.score.executor import LocalExecutor
from tests.test_score_run import _sub, world  # noqa: F401  (the module fixture)

# A defense that looks for two versions of one utterance in its job (the attack that
# worked on main at 7ad67e8: one job held the clean audio and every attacked copy). It
# answers "twins found" for every input that has a near-identical partner in its job.
TWINS = '''
import torch
from arena import Defense

class P(Defense):
    def transcribe(self, batch, model):
        flat = [batch.wave[i, : int(batch.lengths[i])] for i in range(len(batch.ids))]
        seen = getattr(P, "seen", [])
        P.seen = seen + flat
        out = []
        for w in flat:
            twins = [v for v in P.seen if v is not w and len(v) == len(w)
                     and float((v - w).norm()) < 0.5 * float(w.norm())]
            out.append("twins found" if twins else "no twins")
        return out
'''


def test_rounds_hold_each_utterance_once_and_cover_every_version():
    versions = {f"u{i}": list(range(5)) for i in range(7)}
    versions["short"] = [0, 3]
    rounds = assign_rounds(versions)
    assert len(rounds) == 5
    seen = set()
    for items in rounds:
        uids = [i.uid for i in items]
        assert len(uids) == len(set(uids)), "a round holds two versions of one utterance"
        seen |= {(i.version, i.uid) for i in items}
    assert seen == {(v, u) for u, vs in versions.items() for v in vs}
    names = [i.name for items in rounds for i in items]
    assert len(set(names)) == len(names) and all(len(n) == 16 for n in names)


def test_assignment_is_not_reproducible_from_public_values():
    versions = {f"u{i}": list(range(6)) for i in range(20)}
    a = [[(i.uid, i.version) for i in r] for r in assign_rounds(versions)]
    b = [[(i.uid, i.version) for i in r] for r in assign_rounds(versions)]
    assert a != b  # drawn from the OS's RNG, not from a seed a plugin could replay


def test_restore_maps_answers_back_by_name():
    rounds = assign_rounds({"u1": [0, 1], "u2": [0, 1]})
    answers = [{i.name: f"{i.uid}/{i.version}" for i in items} for items in rounds]
    assert restore(rounds, answers) == {(v, u): f"{u}/{v}" for u in ("u1", "u2") for v in (0, 1)}


def test_local_executor_runs_jobs_in_parallel_and_reports_errors():
    import threading
    import time

    running, peak = [0], [0]
    lock = threading.Lock()

    def job(x):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)
        with lock:
            running[0] -= 1
        if x == 3:
            raise ValueError("job 3 broke")
        return x * 10

    out = list(LocalExecutor(2).run(range(6), job))
    assert peak[0] == 2
    assert sorted(o for _, o, e in out if e is None) == [0, 10, 20, 40, 50]
    assert [str(e) for j, _, e in out if e is not None] == ["job 3 broke"]


@pytest.mark.slow
def test_a_defense_grouping_twins_never_sees_two_versions(world, tmp_path):  # noqa: F811
    from arena.leaderboard import build as lb_build
    from arena.score.profiles import get_profile
    from arena.score.run import ScoreOptions, run_score, target_specs
    from arena.score.store import ResultsStore
    from arena.score.subset import load_subset
    from arena.submissions.entries import discover

    subs = tmp_path / "submissions"
    _sub(subs, "twin-finder", "defense", TWINS)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in world.items():
            if k.startswith("ARENA_"):
                mp.setenv(k, v)
        mp.setenv("ARENA_SUBMISSIONS", str(subs))
        entries, _ = discover()
        entries = [e for e in entries if e.name in ("noop", "noise", "twin-finder")]
        profile = get_profile("quick")
        store = ResultsStore(tmp_path / "store")
        run_score(store, ScoreOptions(profile, wall_s=60, progress=False), entries,
                  target_specs(["dense"]), load_subset(profile, manifest=world["MANIFEST"]))
        board = lb_build.build(store.cells(), store.meta())
    hyps = [h for c in store.cells() if c["defense"] == "twin-finder" and c["kind"] != "adaptive"
            for h in c["metrics"]["hypotheses"]]
    # clean + (2 attacks + the adaptive attack) x budgets
    assert len(hyps) == 4 * (1 + 3 * len(profile.budgets))
    errors = {c["error"] for c in store.cells() if c["defense"] == "twin-finder" and c["error"]}
    assert not errors
    assert set(hyps) == {"no twins"}, "a defense job held two versions of one utterance"
    assert board["defenses"][0]["name"] == "twin-finder"
