"""In-memory audio sets, length-bucketed batches and padding."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from rich.progress import track

from arena.core.audio import SAMPLE_RATE
from arena.data.manifest import Utterance, load_audio, read_manifest


@dataclass
class AudioSet:
    """Utterances with their audio decoded (int16 to halve memory), in manifest order."""

    ids: list[str]
    texts: list[str]
    audio: list[np.ndarray]  # int16

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def durations(self) -> np.ndarray:
        return np.array([len(a) / SAMPLE_RATE for a in self.audio])

    def subset(self, idx) -> AudioSet:
        idx = list(idx)
        return AudioSet([self.ids[i] for i in idx], [self.texts[i] for i in idx],
                        [self.audio[i] for i in idx])

    def wave(self, i: int) -> np.ndarray:
        return self.audio[i].astype(np.float32) / 32768.0  # the int16 grid soundfile reads

    @classmethod
    def from_utterances(cls, utts: list[Utterance], progress: bool = False) -> AudioSet:
        audio = []
        for u in track(utts, description="loading audio", disable=not progress):
            w = load_audio(u, verify=True)
            audio.append(np.clip(np.round(w * 32768), -32768, 32767).astype(np.int16))
        return cls([u.id for u in utts], [u.text for u in utts], audio)

    @classmethod
    def from_manifest(cls, path, limit: int | None = None, progress: bool = False) -> AudioSet:
        utts = read_manifest(path)
        return cls.from_utterances(utts[:limit] if limit else utts, progress=progress)


def length_batches(durations, max_seconds: float, max_batch: int = 512,
                   shuffle: bool = False, seed: int = 0) -> list[list[int]]:
    """Group indices of similar length so padding is small: sort by duration, cut into
    batches whose padded size (count x longest) stays under max_seconds."""
    order = np.argsort(np.asarray(durations), kind="stable")
    batches, current, longest = [], [], 0.0
    for i in order:
        d = float(durations[i])
        if current and (max(longest, d) * (len(current) + 1) > max_seconds
                        or len(current) >= max_batch):
            batches.append(current)
            current, longest = [], 0.0
        current.append(int(i))
        longest = max(longest, d)
    if current:
        batches.append(current)
    if shuffle:
        random.Random(seed).shuffle(batches)
    return batches
