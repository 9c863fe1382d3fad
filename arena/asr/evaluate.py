"""Batched evaluation: transcripts, WER and CER of a model on an audio set."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from arena.asr.metrics import cer, wer
from arena.core.audio import pad_waves
from arena.data.batching import AudioSet, length_batches


@dataclass
class EvalResult:
    wer: float
    cer: float
    n_utterances: int
    audio_seconds: float
    seconds: float
    hypotheses: dict[str, str]


@torch.no_grad()
def transcribe_set(model, data: AudioSet, device="cpu", batch_seconds: float = 120.0) -> list[str]:
    model.eval()
    hyps: list[str | None] = [None] * len(data)
    for idx in length_batches(data.durations, batch_seconds):
        wave, lengths = pad_waves([data.wave(i) for i in idx])
        for i, h in zip(idx, model.transcribe(wave.to(device), lengths.to(device))):
            hyps[i] = h
    return hyps  # type: ignore[return-value]


def evaluate(model, data: AudioSet, device="cpu", batch_seconds: float = 120.0) -> EvalResult:
    t0 = time.time()
    hyps = transcribe_set(model, data, device, batch_seconds)
    return EvalResult(wer=wer(data.texts, hyps), cer=cer(data.texts, hyps),
                      n_utterances=len(data), audio_seconds=float(data.durations.sum()),
                      seconds=time.time() - t0, hypotheses=dict(zip(data.ids, hyps)))
