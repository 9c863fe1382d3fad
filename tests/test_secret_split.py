"""The secret scoring split: nothing inside the sandbox can regenerate its transcripts.

On main at 7ad67e8 a defense could rebuild the public split with the package's own corpus
generator (espeak-ng and the lexicon are importable in the sandbox) and answer every input
with the reference transcript of the utterance whose audio has its length: WER 0.000 under
every attack. This test runs that defense in the real sandbox on the public split (where it
still works: the public split is public) and on a secret split (where it must not).
"""
import os
import stat

import pytest

from arena.core.audio import AudioBatch, pad_waves
from arena.data.batching import AudioSet
from arena.data.corpus import DEFAULT_SEED, ensure_split, seed_tag
from arena.sandbox import run_defense_job
from arena.score import subset as subset_mod
from arena.submissions.manifest import plugin_spec

REGENERATE = '''
from arena import Defense
from arena.data.corpus import DEFAULT_SEED, CorpusSpec, build_split
from arena.data.manifest import load_audio, read_manifest

class P(Defense):
    def transcribe(self, batch, model):
        by_length = {}
        for split in ("dev", "test"):  # the public seed, the sizes a test world uses
            manifest = build_split(CorpusSpec(split, DEFAULT_SEED, 4), workers=1, progress=False)
            for u in read_manifest(manifest):
                by_length[len(load_audio(u))] = u.text
        return [by_length.get(int(n), "no idea") for n in batch.lengths]
'''
TOML = 'name = "regen"\ntrack = "defense"\nentry = "plugin:P"\nauthors = ["t"]\nversion = "1"\n'


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("ARENA_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("ARENA_SECRET_FILE", str(tmp_path / "private" / "split.key"))
    sub = tmp_path / "regen"
    sub.mkdir()
    (sub / "submission.toml").write_text(TOML)
    (sub / "plugin.py").write_text(REGENERATE)
    return sub


def _hits(sub, manifest, model_file) -> tuple[int, int]:
    data = AudioSet.from_manifest(manifest)
    wave, lengths = pad_waves([data.wave(i) for i in range(len(data))])
    batch = AudioBatch([f"x{i}" for i in range(len(data))], wave, lengths)
    result = run_defense_job(plugin_spec(sub), model_file, [batch])
    assert result.status == "ok", result.error
    hyps = result.batches[0].transcripts
    return sum(h == t for h, t in zip(hyps, data.texts)), len(data)


def test_secret_is_owner_only_and_long(env):
    path = subset_mod.create_secret()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert subset_mod.secret_seed() >= 2 ** 128
    with pytest.raises(FileExistsError):
        subset_mod.create_secret()
    tag = seed_tag(subset_mod.secret_seed())
    assert len(tag) == 10 and tag != seed_tag(DEFAULT_SEED)


def test_a_missing_secret_says_what_to_do(env):
    with pytest.raises(subset_mod.SecretMissing, match="arena secret init"):
        subset_mod.secret_split(progress=False, size=4)


@pytest.mark.slow
def test_regenerating_the_corpus_works_on_the_public_split_only(env, model_file):
    public = ensure_split("dev", DEFAULT_SEED, size=4, progress=False)
    hits, n = _hits(env, public, model_file)
    assert hits == n == 4  # the weakness: every public transcript recovered in the sandbox
    subset_mod.create_secret()
    secret, _ = subset_mod.secret_split(progress=False, size=4)
    hits, n = _hits(env, secret, model_file)
    assert n == 4 and hits == 0


def test_a_secret_in_an_existing_shared_folder_leaves_its_mode(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o1777)
    monkeypatch.setenv("ARENA_SECRET_FILE", str(shared / "split.key"))
    path = subset_mod.create_secret()
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_on_the_secret_split_each_plugin_gets_a_private_seed_of_its_own(env):
    """Every plugin was given the run's seed (`self.seed`, 0 by default), so a defense could
    regenerate the `noise` baseline's noise (or any attack's seeded randomness) and
    recognise its audio. On the secret split each plugin now gets a seed derived from the
    secret and its own content hash; public splits keep the run's seed (published cells)."""
    import dataclasses

    from arena.core import paths
    from arena.score.profiles import get_profile
    from arena.score.run import ScoreOptions, run_score, target_specs
    from arena.score.store import ResultsStore
    from arena.submissions.entries import discover

    subset_mod.create_secret()
    manifest = ensure_split("dev", DEFAULT_SEED, size=2, progress=False)
    profile = dataclasses.replace(get_profile("quick", n=2), budgets=("snr30",), transfer=False)
    public = subset_mod.load_subset(profile, manifest=manifest)
    entries, _ = discover(["noise", "fgsm", "none", "lowpass"], roots=[(paths.baselines_dir(), "baseline")])

    class Planner:   # the real plan; the jobs are not run, only the grid they carry is kept
        workers = 1

        def __init__(self):
            self.grids = []

        def run(self, jobs, fn):
            self.grids.append(fn.keywords["grid"])
            for job in jobs:
                yield job, None, RuntimeError("not run")

    seeds = {}
    for split in ("dev", "secret"):
        store = ResultsStore(env.parent / f"store-{split}")
        planner = Planner()
        run_score(store, ScoreOptions(profile, progress=False, seed=0), entries, target_specs(["dense"]),
                  dataclasses.replace(public, split=split), executor=planner)
        seeds[split] = {e.name: planner.grids[0].seed_for(e) for e in entries}
    assert set(seeds["dev"].values()) == {0}
    assert len(set(seeds["secret"].values())) == len(entries) and 0 not in seeds["secret"].values()
