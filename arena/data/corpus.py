"""The built-in voice-search corpus: templates x lexicon, spoken by many espeak-ng voices.

Determinism: the seed fixes the sentences and who says them at which rate and pitch, and
each utterance is synthesised in a fork of a freshly initialised synthesizer (espeak-ng
carries state from one utterance to the next), so its audio depends only on its text and
voice setting: the same seed gives the same samples and a byte-identical manifest, on
any x86-64 CPU (the post-processing is exact integer arithmetic, see arena.data.synth, and
the manifest records a checksum of the samples, not of the encoder's bytes).

Held-out speakers and sentences: a voice (accent + variant) and a sentence each belong to
one split by a fixed hash of their name/text, independent of the seed. So the voices of
`dev` and `test` never speak in `train`, no dev/test sentence is in train, and an
organiser's private test seed still never overlaps the public training data.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

from arena.core import paths
from arena.core.audio import SAMPLE_RATE
from arena.data import lexicon
from arena.data.manifest import ManifestError, pcm16_sha256, read_manifest, write_manifest

DEFAULT_SEED = 2026
SPLITS = ("train", "dev", "test")
DEFAULT_SIZES = {"train": 20_000, "dev": 500, "test": 1_000}
TEST_SEED_ENV = "ARENA_TEST_SEED"
MAX_CHARS = 64  # keeps queries under about 4.5 s


def _bucket(key: str, salt: str) -> str:
    h = int.from_bytes(hashlib.sha256(f"{salt}:{key}".encode()).digest()[:8], "big") % 10
    return "dev" if h == 0 else "test" if h == 1 else "train"


def voice_split(voice: str) -> str:
    """The split a speaker (accent+variant) belongs to, fixed for every seed."""
    return _bucket(voice, "voice")


def sentence_split(text: str) -> str:
    """The split a sentence belongs to, fixed for every seed."""
    return _bucket(text, "sentence")


def all_voices() -> list[tuple[str, str]]:
    from arena.data.synth import ACCENTS, VARIANTS

    return [(a, v) for a in ACCENTS for v in VARIANTS]


def voices_of(split: str) -> list[tuple[str, str]]:
    return [av for av in all_voices() if voice_split(f"{av[0]}+{av[1]}") == split]


_SLOT = re.compile(r"\{(\w+)\}")


def fill_template(template: str, rng: random.Random) -> str:
    return _SLOT.sub(lambda m: lexicon.SLOTS[m.group(1)](rng), template)


def resolve_seed(split: str, seed: int | None = None) -> int:
    """An explicit seed wins; the test split then looks at ARENA_TEST_SEED (an organiser's
    private seed); everything else uses the public default."""
    if seed is not None:
        return int(seed)
    if split == "test" and os.environ.get(TEST_SEED_ENV):
        return int(os.environ[TEST_SEED_ENV])
    return DEFAULT_SEED


def seed_tag(seed: int) -> str:
    """Public name of a seed: lets the leaderboard say which data it shows without
    revealing a private seed."""
    return hashlib.sha256(f"arena-seed:{seed}".encode()).hexdigest()[:10]


@dataclass(frozen=True)
class CorpusSpec:
    split: str
    seed: int = DEFAULT_SEED
    size: int | None = None

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; choose one of {', '.join(SPLITS)}")

    @property
    def n(self) -> int:
        return self.size if self.size is not None else DEFAULT_SIZES[self.split]

    @property
    def root(self) -> Path:
        return paths.data_dir() / f"voice-search-{seed_tag(self.seed)}"

    @property
    def manifest(self) -> Path:
        suffix = "" if self.size is None else f"-{self.size}"
        return self.root / f"{self.split}{suffix}.jsonl"

    @property
    def audio_dir(self) -> Path:
        return self.manifest.with_suffix("")


def plan_split(spec: CorpusSpec) -> list[dict]:
    """What to say and who says it: a pure function of (split, seed, size)."""
    rng = random.Random(f"{spec.seed}:{spec.split}")
    voices = voices_of(spec.split)
    seen: set[str] = set()
    plan = []
    attempts = 0
    while len(plan) < spec.n:
        attempts += 1
        if attempts > spec.n * 200:
            raise RuntimeError(f"cannot find {spec.n} distinct sentences for {spec.split}")
        text = re.sub(r"\s+", " ", fill_template(rng.choice(lexicon.TEMPLATES), rng)).strip()
        if len(text) > MAX_CHARS or text in seen or sentence_split(text) != spec.split:
            continue
        seen.add(text)
        accent, variant = rng.choice(voices)
        plan.append(dict(id=f"{spec.split}-{len(plan):06d}", text=text, accent=accent,
                         variant=variant, rate=rng.randint(140, 200), pitch=rng.randint(25, 75)))
    return plan


_WORKER_SYNTH = None


def _init_worker():
    global _WORKER_SYNTH
    from arena.data.synth_server import SynthClient

    _WORKER_SYNTH = SynthClient()


def _render_chunk(args):
    rows, audio_dir, rel = args
    import soundfile as sf

    from arena.data.synth import VoiceSetting, finish_waveform

    out = []
    for row in rows:
        setting = VoiceSetting(row["accent"], row["variant"], row["rate"], row["pitch"])
        pcm = _WORKER_SYNTH.synthesize_raw(row["text"], setting)
        wave = finish_waveform(pcm, _WORKER_SYNTH.native_rate)  # int16, exact
        path = Path(audio_dir) / f"{row['id']}.flac"
        sf.write(str(path), wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        # the checksum covers the samples, not the file: FLAC bytes carry the libFLAC
        # version string, so another soundfile wheel would change every file hash
        out.append(dict(id=row["id"], audio=f"{rel}/{row['id']}.flac", text=row["text"],
                        duration=round(len(wave) / SAMPLE_RATE, 4), voice=setting.voice,
                        rate=row["rate"], pitch=row["pitch"], pcm_sha256=pcm16_sha256(wave)))
    return out


def build_split(spec: CorpusSpec, workers: int | None = None, progress: bool = True) -> Path:
    """Synthesise a split and write its manifest and checksum; returns the manifest path."""
    import multiprocessing as mp

    from rich.progress import Progress

    plan = plan_split(spec)
    spec.audio_dir.mkdir(parents=True, exist_ok=True)
    chunk = 50
    tasks = [(plan[i:i + chunk], str(spec.audio_dir), spec.audio_dir.name)
             for i in range(0, len(plan), chunk)]
    workers = max(1, min(workers or min(os.cpu_count() or 1, 8), len(tasks)))
    rows: list[dict] = []
    ctx = mp.get_context("spawn")
    with Progress(disable=not progress, transient=False) as bar:
        job = bar.add_task(f"building {spec.split} ({spec.n} utterances, seed {seed_tag(spec.seed)})",
                           total=len(plan))
        with ctx.Pool(workers, initializer=_init_worker) as pool:
            for part in pool.imap(_render_chunk, tasks):
                rows.extend(part)
                bar.advance(job, len(part))
    write_manifest(spec.manifest, rows)
    return spec.manifest


def ensure_split(split: str, seed: int | None = None, size: int | None = None,
                 progress: bool = True) -> Path:
    """The manifest of a split, building it first when it is missing, fails its check, or
    was made by the older float resampler (its rows lack `pcm_sha256`)."""
    spec = CorpusSpec(split, resolve_seed(split, seed), size)
    if spec.manifest.is_file():
        try:
            if all(u.pcm_sha256 for u in read_manifest(spec.manifest)):
                return spec.manifest
        except ManifestError:
            pass  # rebuilt below
    return build_split(spec, progress=progress)
