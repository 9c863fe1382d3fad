"""`arena score` end to end on a tiny world: real espeak audio, real tiny models (dense and a
packed int8), real baselines, the real SQLite store, the real sandbox.

- a failing submission (crash, time-out, NaN output, broken manifest) shows in the
  leaderboard with its error and does not stop the run;
- SIGKILL at random moments, then a re-run, gives the leaderboard of an uninterrupted run
  with no duplicate cells.
"""
import copy
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from arena.asr.models import TINY_CONFIG
from arena.core import paths

TOML = 'name = "{name}"\ntrack = "{track}"\nentry = "plugin:P"\nauthors = ["t"]\nversion = "1"\n'
CRASH = "from arena import Attack\nclass P(Attack):\n    def run(self, batch, model, budget):\n" \
        "        raise ValueError('boom at step 3 \\ud800')\n"   # a lone surrogate: no character
NAN = "from arena import Attack\nclass P(Attack):\n    def run(self, batch, model, budget):\n" \
      "        return batch.wave * float('nan')\n"
HANG = "from arena import Defense\nclass P(Defense):\n    def purify(self, wave, lengths):\n" \
       "        while True:\n            pass\n"


def _sub(root: Path, name: str, track: str, code: str) -> None:
    d = root / name
    d.mkdir(parents=True)
    (d / "submission.toml").write_text(TOML.format(name=name, track=track))
    (d / "plugin.py").write_text(code)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Environment variables of a world with 4 dev utterances, a two-model zoo, four
    baselines and no submissions yet."""
    from arena.asr.models import build_model, save_checkpoint
    from arena.compress.modules import compress_
    from arena.compress.packed import export_packed
    from arena.compress.recipes import parse_recipe
    from arena.data.corpus import DEFAULT_SEED, ensure_split

    root = tmp_path_factory.mktemp("world")
    env = {"ARENA_DATA": root / "data", "ARENA_ZOO": root / "zoo", "ARENA_BASELINES": root / "baselines",
           "ARENA_SUBMISSIONS": root / "submissions", "ARENA_RUNS": root / "runs"}
    env = {k: str(v) for k, v in env.items()}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        manifest = ensure_split("dev", DEFAULT_SEED, size=4, progress=False)
        torch.manual_seed(0)
        dense = build_model("conformer-ctc", **TINY_CONFIG).eval()
        Path(env["ARENA_ZOO"]).mkdir()
        save_checkpoint(dense, Path(env["ARENA_ZOO"]) / "dense.safetensors")
        int8 = compress_(copy.deepcopy(dense), parse_recipe("int8"))
        export_packed(int8, Path(env["ARENA_ZOO"]) / "int8.packed.safetensors", name="int8", recipe="int8")
    for name in ("noop", "fgsm", "noise", "none", "lowpass"):
        shutil.copytree(paths.PACKAGE / "baselines" / name, Path(env["ARENA_BASELINES"]) / name)
    Path(env["ARENA_SUBMISSIONS"]).mkdir()
    env["MANIFEST"] = str(manifest)
    return env


def _score(world: dict, store: Path, *extra: str, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, **{k: v for k, v in world.items() if k.startswith("ARENA_")}}
    return subprocess.run([sys.executable, "-m", "arena.cli", "score", "--manifest", world["MANIFEST"],
                           "--store", str(store), "--json", *extra],
                          env=env, capture_output=True, text=True, timeout=timeout)


def test_failing_submissions_show_with_their_error_and_do_not_stop_the_run(world, tmp_path):
    subs = tmp_path / "submissions"
    _sub(subs, "crasher", "attack", CRASH)
    _sub(subs, "nan-maker", "attack", NAN)
    _sub(subs, "hanger", "defense", HANG)
    # its own lower wall-clock limit (a submission may only lower them): the hang is found
    # in seconds while every other job keeps the run's 20 s
    with open(subs / "hanger" / "submission.toml", "a") as f:
        f.write("\n[limits]\nwall_s = 5\n")
    (subs / "broken").mkdir()
    (subs / "broken" / "submission.toml").write_text('name = "broken"\ntrack = "sideways"\n')
    from arena.leaderboard import build as lb_build
    from arena.score.profiles import get_profile
    from arena.score.run import ScoreOptions, run_score, target_specs
    from arena.score.store import ResultsStore
    from arena.score.subset import load_subset
    from arena.submissions.entries import discover

    with pytest.MonkeyPatch.context() as mp:
        for k, v in world.items():
            if k.startswith("ARENA_"):
                mp.setenv(k, v)
        mp.setenv("ARENA_SUBMISSIONS", str(subs))
        entries, problems = discover()
        entries = [e for e in entries if e.name in ("noop", "fgsm", "none", "crasher", "nan-maker", "hanger")]
        profile = get_profile("quick")
        store = ResultsStore(tmp_path / "store")
        report = run_score(store, ScoreOptions(profile, wall_s=20, progress=False), entries,
                           target_specs(["dense"]), load_subset(profile, manifest=world["MANIFEST"]),
                           problems=problems)
        board = lb_build.build(store.cells(), store.meta())
    attacks = {r["name"]: r for r in board["attacks"]}
    assert set(attacks) == {"noop", "fgsm", "crasher", "nan-maker"}
    assert any("boom at step 3 ?" in e for e in attacks["crasher"]["errors"])   # stored, as "?"
    assert any("NaN" in e for e in attacks["nan-maker"]["errors"])
    assert not attacks["fgsm"]["errors"] and not attacks["noop"]["errors"]
    # failure policy: a failed attack is scored on the clean audio, so it gains nothing
    assert attacks["crasher"]["score"] == pytest.approx(0.0)
    defenses = {r["name"]: r for r in board["defenses"]}
    assert any("wall-clock limit" in e for e in defenses["hanger"]["errors"]), defenses["hanger"]
    assert defenses["hanger"]["score"] == pytest.approx(1.0)  # failed defense: WER 1.0
    assert defenses["none"]["errors"] == []
    assert any("broken" in p and "track" in p for p in board["not_scored"])
    # crasher, nan-maker, hanger's rounds and hanger's purify under the adaptive attack
    assert len(report.failed_jobs) == 4, report.failed_jobs
    assert any(f.startswith("adaptive hanger on dense: timeout") for f in report.failed_jobs)
    assert defenses["hanger"]["adaptive_wer"] == pytest.approx(1.0)
    n_sets = 4 * len(profile.budgets)  # attacked sets: 4 attacks x the profile's budgets
    b = len(profile.budgets)
    # + per defense: the adaptive audio per budget, and its cells (attacked sets, clean,
    # the adaptive audio)
    assert store.count() == n_sets + 2 * b + 2 * (n_sets + 1 + b)


def _board_signature(board: dict) -> str:
    """The leaderboard without timings."""
    keep = {k: board[k] for k in ("attacks", "targeted_attacks", "defenses", "model_robustness",
                                  "transfer", "clean")}
    return json.dumps(keep, sort_keys=True)


@pytest.mark.slow
def test_sigkill_at_random_moments_then_rerun_equals_uninterrupted(world, tmp_path):
    # trusted (no bwrap) to keep the many restarts fast: this test is about the store
    args = ("--trusted", "--attacks", "noop,fgsm,noise", "--defenses", "none")
    t0 = time.time()
    clean = _score(world, tmp_path / "uninterrupted", *args)
    full_s = time.time() - t0
    assert clean.returncode == 0, clean.stderr[-3000:]
    reference = json.loads(clean.stdout)

    store = tmp_path / "killed"
    env = {**os.environ, **{k: v for k, v in world.items() if k.startswith("ARENA_")}}
    rng = random.Random(7)
    kills = 0
    for attempt in range(12):
        proc = subprocess.Popen([sys.executable, "-m", "arena.cli", "score", "--manifest",
                                 world["MANIFEST"], "--store", str(store), "--json", *args],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=rng.uniform(1.0, 0.6 * full_s) if attempt < 4 else 300)
            break
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            kills += 1
    assert proc.returncode == 0, err[-3000:]
    assert kills >= 2
    resumed = json.loads(out)
    assert _board_signature(resumed) == _board_signature(reference)

    from arena.score.store import ResultsStore

    a, b = ResultsStore(tmp_path / "uninterrupted"), ResultsStore(store)
    assert b.count() == a.count()
    assert sorted(c["key"] for c in b.cells()) == sorted(c["key"] for c in a.cells())
    axes = [(c["kind"], c["attack"], c["budget"], c["defense"], c["model"]) for c in b.cells()]
    assert len(axes) == len(set(axes)), "duplicate cells"

    # a fresh clone has the cells but not the adversarial audio (not versioned): a new
    # defense makes the seeded attacks run again for their audio, and nothing is lost
    shutil.rmtree(store / "artifacts")
    same = _score(world, store, *args)  # nothing new: nothing runs, no audio is remade
    assert same.returncode == 0, same.stderr[-3000:]
    assert json.loads(same.stdout)["report"]["computed"] == 0
    assert not list((store / "artifacts").glob("*.safetensors"))
    more = _score(world, store, "--trusted", "--attacks", "noop,fgsm,noise", "--defenses", "none,lowpass")
    assert more.returncode == 0, more.stderr[-3000:]
    board = json.loads(more.stdout)
    assert board["report"]["failed_jobs"] == []
    lowpass = next(r for r in board["defenses"] if r["name"] == "lowpass")
    assert lowpass["errors"] == [] and lowpass["clean_wer"] is not None
    from arena.score.profiles import get_profile

    b = len(get_profile("quick").budgets)
    n_sets = 3 * b
    # per model: clean, the attacked sets, the adaptive audio per budget and its cells
    assert ResultsStore(store).count() == a.count() + 2 * (1 + n_sets + 2 * b)


def test_a_submission_replaced_after_discovery_is_not_run_under_the_old_keys(tmp_path):
    """A job read the live submission folder when it started: `arena submit --replace`
    between discovery and the job ran the new code under the old version's cell keys (and
    putting the old version back reused those cells). The job runs a copy checked against
    the hash its keys were made from, or fails as a harness error (the next run scores it)."""
    import numpy as np

    from arena.score.jobs import RunContext, SubmissionChangedError, execute
    from arena.score.plan import AttackJob, Grid, TargetSpec
    from arena.score.profiles import get_profile
    from arena.score.subset import DataSubset
    from arena.submissions.entries import Entry
    from arena.submissions.manifest import content_hash, load_manifest

    _sub(tmp_path, "swapper", "attack", NAN.replace("float('nan')", "1.0"))
    folder = tmp_path / "swapper"
    entry = Entry(load_manifest(folder).spec(), content_hash(folder), "submission")
    subset = DataSubset("dev", "t", "0" * 64, ["a"], ["open the door"], [np.zeros(160, np.float32)], ["x"])
    grid = Grid(subset, get_profile("quick"), 0, (entry,), (), ())
    job = AttackJob(entry, TargetSpec("dense", tmp_path / "m.safetensors", "0" * 64), ["snr30"], ["k"])
    (folder / "plugin.py").write_text(NAN)          # replaced after the run read it
    with pytest.raises(SubmissionChangedError, match="swapper changed"):
        execute(job, grid, RunContext(wall_s=20))
