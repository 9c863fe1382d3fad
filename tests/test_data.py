import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from arena.core.audio import pad_waves
from arena.data import corpus
from arena.data.batching import AudioSet, length_batches
from arena.data.corpus import CorpusSpec, build_split, plan_split, seed_tag
from arena.data.lexicon import TEMPLATES, lexicon
from arena.data.manifest import ManifestError, load_audio, pcm16_sha256, read_manifest, write_manifest


def test_synthesis_writes_the_audio_contract_rate():
    """synth keeps its own constant (it stays torch-free); it must be the contract's."""
    from arena.core.audio import SAMPLE_RATE
    from arena.data import synth

    assert synth.SAMPLE_RATE == SAMPLE_RATE


def test_lexicon_and_templates_are_big_enough():
    assert len(TEMPLATES) >= 40
    assert len(lexicon()) >= 1000


def test_split_plans_are_disjoint_in_voices_and_sentences():
    plans = {s: plan_split(CorpusSpec(s)) for s in ("train", "dev", "test")}
    assert [len(plans[s]) for s in ("train", "dev", "test")] == [20_000, 500, 1_000]
    voices = {s: {f"{r['accent']}+{r['variant']}" for r in p} for s, p in plans.items()}
    texts = {s: {r["text"] for r in p} for s, p in plans.items()}
    for held_out in ("dev", "test"):
        assert not voices[held_out] & voices["train"]
        assert not texts[held_out] & texts["train"]
    assert not texts["dev"] & texts["test"]
    assert not voices["dev"] & voices["test"]
    # a private test seed gives other sentences but still never a training voice or sentence
    private = plan_split(CorpusSpec("test", seed=987654))
    assert {r["text"] for r in private} != texts["test"]
    assert not {f"{r['accent']}+{r['variant']}" for r in private} & voices["train"]
    assert not {r["text"] for r in private} & texts["train"]


def test_same_seed_gives_byte_identical_corpus(tmp_path, monkeypatch):
    sums = []
    for name in ("a", "bb"):  # different paths and heap layouts must not matter
        monkeypatch.setenv("ARENA_DATA", str(tmp_path / name))
        manifest = build_split(CorpusSpec("dev", seed=5, size=12), workers=2, progress=False)
        sums.append(manifest.with_suffix(".sha256").read_text().split()[0])
        rows = read_manifest(manifest)
        assert len(rows) == 12
        wave = load_audio(rows[0], verify=True)
        assert wave.dtype == np.float32 and 0.1 < np.abs(wave).max() <= 1.0
    assert sums[0] == sums[1]
    monkeypatch.setenv("ARENA_DATA", str(tmp_path / "c"))
    other = build_split(CorpusSpec("dev", seed=6, size=12), workers=1, progress=False)
    assert other.with_suffix(".sha256").read_text().split()[0] != sums[0]


_BUILD = ("import sys; from arena.data.corpus import CorpusSpec, build_split; "
          "m = build_split(CorpusSpec('dev', seed=5, size=4), workers=int(sys.argv[1]), "
          "progress=False); print(m.with_suffix('.sha256').read_text().split()[0])")


def _numpy_dispatch_features() -> str:
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    return ",".join(f for f in __cpu_dispatch__ if __cpu_features__.get(f))


def test_corpus_is_independent_of_cpu_dispatch(tmp_path):
    """Another CPU must give the same manifest checksum (else every score cell is recomputed).

    Different instruction sets are forced here by capping the SIMD level that oneDNN,
    ATen and numpy dispatch to; before the exact resampler, oneDNN's SSE4.1 path alone
    changed ~10k samples per utterance and so the checksum."""
    sums = []
    for name, workers, extra in [
        ("native", 2, {}),
        ("capped", 1, {"ONEDNN_MAX_CPU_ISA": "SSE41", "DNNL_MAX_CPU_ISA": "SSE41",
                       "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1",
                       "NPY_DISABLE_CPU_FEATURES": _numpy_dispatch_features()}),
    ]:
        env = dict(os.environ, ARENA_DATA=str(tmp_path / name), **extra)
        run = subprocess.run([sys.executable, "-c", _BUILD, str(workers)], env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        sums.append(run.stdout.split()[-1])
    assert sums[0] == sums[1]


def test_resampler_is_torchaudios_filter_in_exact_arithmetic():
    torch = pytest.importorskip("torch")
    from torchaudio.functional.functional import _get_sinc_resample_kernel

    from arena.data.synth import _resample_kernel, finish_waveform, resample_exact

    kernel, width, _, _ = _resample_kernel(22050, 16000)
    ref, ref_width = _get_sinc_resample_kernel(22050, 16000, 50, dtype=torch.float64)
    assert width == ref_width
    assert np.abs(kernel / 2**24 - ref[:, 0].numpy()).max() < 1e-7  # 2**-25 rounding only
    # a 1 kHz tone keeps its level and length; the 16 kHz output is int16 peaking at 0.9
    tone = np.rint(20000 * np.sin(2 * np.pi * 1000 * np.arange(22050) / 22050)).astype(np.int64)
    out = resample_exact(tone, 22050, 16000) / 2**24
    assert len(out) == 16000 and abs(np.abs(out[100:-100]).max() / 20000 - 1) < 1e-3
    wave = finish_waveform(tone / 32768.0, 22050)
    assert wave.dtype == np.int16 and len(wave) == 16000 and np.abs(wave).max() == 29490


def test_pcm_checksum_catches_changed_samples(tmp_path):
    samples = (GOOD * 32768).astype(np.int16)
    sf.write(tmp_path / "a.flac", samples, 16000, subtype="PCM_16")
    row = {"id": "a", "audio": "a.flac", "text": "hi", "pcm_sha256": pcm16_sha256(samples)}
    path = tmp_path / "m.jsonl"
    write_manifest(path, [row])
    assert np.array_equal(load_audio(read_manifest(path)[0], verify=True), samples / 32768.0)
    samples[100] += 1
    sf.write(tmp_path / "a.flac", samples, 16000, subtype="PCM_16")
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: samples of .*a\.flac do not match"):
        load_audio(read_manifest(path)[0], verify=True)


def test_stale_corpus_from_float_resampler_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("ARENA_DATA", str(tmp_path))
    spec = CorpusSpec("dev", seed=5, size=2)
    spec.audio_dir.mkdir(parents=True)
    sf.write(spec.audio_dir / "old.flac", GOOD, 16000)
    # an old build: valid checksum, file sha256 only
    write_manifest(spec.manifest, [{"id": "dev-000000", "audio": f"{spec.audio_dir.name}/old.flac",
                                    "text": "old", "sha256": "0" * 64}])
    rows = read_manifest(corpus.ensure_split("dev", seed=5, size=2, progress=False))
    assert len(rows) == 2 and all(r.pcm_sha256 for r in rows)
    assert corpus.ensure_split("dev", seed=5, size=2, progress=False) == spec.manifest


def test_test_seed_from_environment(monkeypatch):
    monkeypatch.setenv(corpus.TEST_SEED_ENV, "4242")
    assert corpus.resolve_seed("test") == 4242
    assert corpus.resolve_seed("dev") == corpus.DEFAULT_SEED
    assert corpus.resolve_seed("test", 7) == 7
    assert seed_tag(4242) != seed_tag(corpus.DEFAULT_SEED) and "4242" not in seed_tag(4242)


def _write(tmp_path, rows, audio=None):
    for name, (wave, rate) in (audio or {}).items():
        sf.write(tmp_path / name, wave, rate)
    path = tmp_path / "m.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = np.sin(np.linspace(0, 300, 8000)).astype(np.float32) * 0.5


def test_manifest_errors_name_file_and_line(tmp_path):
    ok = {"id": "a", "audio": "a.flac", "text": "Hello, World!"}
    path = _write(tmp_path, [ok, "{not json"], {"a.flac": (GOOD, 16000)})
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: broken JSON"):
        read_manifest(path)
    path = _write(tmp_path, [ok, {"id": "b", "audio": "b.flac", "text": "  ?? "}])
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: .*no letters"):
        read_manifest(path)
    path = _write(tmp_path, [{"id": "b", "audio": "b.flac", "text": ""}])
    with pytest.raises(ManifestError, match=r"m\.jsonl:1"):
        read_manifest(path)
    path = _write(tmp_path, [{"id": "b", "text": "x"}])
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: missing field\(s\) audio"):
        read_manifest(path)
    rows = read_manifest(_write(tmp_path, [ok]))
    assert rows[0].text == "hello world"


_LINE = '{"id": "a", "audio": "a.flac", "text": "hello"'


@pytest.mark.parametrize("extra,field", [
    ('"duration": "abc"', "duration"),
    ('"duration": [1]', "duration"),
    ('"duration": null', "duration"),
    ('"duration": true', "duration"),
    ('"duration": NaN', "duration"),
    ('"duration": Infinity', "duration"),
    ('"duration": -1.5', "duration"),
    ('"duration": 1e999', "duration"),
    pytest.param('"duration": ' + "1" * 400, "duration", id="duration-too-large-for-a-float"),
    pytest.param('"duration": ' + "1" * 5000, "duration", id="duration-more-digits-than-int-takes"),
    pytest.param('"duration": [' + "1" * 5000 + "]", "duration", id="duration-list-of-a-long-int"),
    ('"text": ["hello"]', "text"),
    ('"text": 5', "text"),
    ('"id": {"a": 1}', "id"),
    ('"id": 5', "id"),
    ('"id": ""', "id"),
    ('"audio": 5', "audio"),
    ('"audio": ""', "audio"),
    ('"voice": ["x"]', "voice"),
    ('"sha256": null', "sha256"),
    ('"pcm_sha256": 1', "pcm_sha256"),
])
def test_manifest_field_types_are_checked_naming_file_line_and_field(tmp_path, extra, field):
    ok = {"id": "b", "audio": "b.flac", "text": "hi", "duration": 1.5}
    path = _write(tmp_path, [ok, _LINE + ", " + extra + "}"])
    with pytest.raises(ManifestError, match=rf"m\.jsonl:2: field {field}\b"):
        read_manifest(path)


def test_manifest_numbers_and_nesting_beyond_pythons_limits_are_clear_errors(tmp_path):
    path = _write(tmp_path, [_LINE + ', "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"])
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: broken JSON line"):
        read_manifest(path)
    # an unknown field may hold any JSON, a long number included
    rows = read_manifest(_write(tmp_path, [_LINE + ', "extra": ' + "1" * 5000 + ', "duration": 2}']))
    assert rows[0].duration == 2.0 and isinstance(rows[0].duration, float)
    rows = read_manifest(_write(tmp_path, [_LINE + ', "duration": 0}']))
    assert rows[0].duration == 0.0


def test_audio_paths_that_are_no_file_are_clear_errors(tmp_path):
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: field audio is not a usable path"):
        read_manifest(_write(tmp_path, [{"id": "a", "audio": "a\0.flac", "text": "hi"}]))
    (tmp_path / "folder.flac").mkdir()
    for name, message in (("folder.flac", "is not a regular file"), ("x" * 5000, "too long")):
        utt = read_manifest(_write(tmp_path, [{"id": "a", "audio": name, "text": "hi"}]))[0]
        with pytest.raises(ManifestError, match=rf"m\.jsonl:1: audio file .*{message}"):
            load_audio(utt)


@pytest.mark.parametrize("name,wave,rate,message", [
    ("missing.flac", None, None, "not found"),
    ("rate.flac", GOOD, 22050, "sample rate 22050"),
    ("stereo.flac", np.stack([GOOD, GOOD], 1), 16000, "2 channels"),
])
def test_audio_errors_name_file_and_line(tmp_path, name, wave, rate, message):
    audio = {} if wave is None else {name: (wave, rate)}
    path = _write(tmp_path, [{"id": "x", "audio": name, "text": "hi"}], audio)
    utt = read_manifest(path)[0]
    with pytest.raises(ManifestError, match=rf"m\.jsonl:1: .*{message}"):
        load_audio(utt)


def test_corrupt_audio_and_checksum(tmp_path):
    (tmp_path / "bad.flac").write_bytes(b"fLaC garbage")
    rows = [{"id": "x", "audio": "bad.flac", "text": "hi"}]
    path = tmp_path / "m.jsonl"
    write_manifest(path, rows)
    with pytest.raises(ManifestError, match="cannot decode"):
        load_audio(read_manifest(path)[0])
    path.write_text(path.read_text().replace("hi", "ho"))
    with pytest.raises(ManifestError, match="checksum mismatch"):
        read_manifest(path)


def test_librispeech_layout(tmp_path):
    from arena.data.librispeech import librispeech_utterances

    chapter = tmp_path / "LibriSpeech" / "test-clean" / "84" / "121123"
    chapter.mkdir(parents=True)
    for i in range(3):
        sf.write(chapter / f"84-121123-000{i}.flac", GOOD[: 2000 * (i + 1)], 16000)
    (chapter / "84-121123.trans.txt").write_text(
        "84-121123-0000 GO DO YOU HEAR\n84-121123-0001 BUT IN LESS THAN FIVE MINUTES\n"
        "84-121123-0002 THE STAIRCASE GROANED\n")
    utts = librispeech_utterances(tmp_path, "test-clean")
    assert [u.text for u in utts] == ["go do you hear", "but in less than five minutes",
                                      "the staircase groaned"]
    assert len(load_audio(utts[2])) == 6000
    with pytest.raises(ManifestError, match="no LibriSpeech subset"):
        librispeech_utterances(tmp_path, "dev-other")
    (chapter / "84-121123.trans.txt").write_text("84-121123-0000 GO\n")
    with pytest.raises(ManifestError, match="Translation not found"):
        librispeech_utterances(tmp_path, "test-clean")


def test_length_batches_respect_budget_and_cover_everything():
    durations = np.random.default_rng(0).uniform(0.5, 4.0, 200)
    batches = length_batches(durations, max_seconds=20.0, shuffle=True, seed=1)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for b in batches:
        assert len(b) == 1 or max(durations[b]) * len(b) <= 20.0
    wave, lengths = pad_waves([np.ones(3), np.ones(5)])
    assert wave.shape == (2, 5) and lengths.tolist() == [3, 5] and wave[0, 3:].abs().sum() == 0


def test_audioset_roundtrip(tmp_path):
    path = _write(tmp_path, [{"id": "a", "audio": "a.flac", "text": "hello"}], {"a.flac": (GOOD, 16000)})
    ds = AudioSet.from_manifest(path)
    assert ds.texts == ["hello"] and abs(ds.durations[0] - 0.5) < 1e-6
    assert np.abs(ds.wave(0) - GOOD).max() < 1e-3
