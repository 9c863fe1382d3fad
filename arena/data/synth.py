"""Speech synthesis with espeak-ng, driven through ctypes from the `espeakng-loader` wheel.

espeak-ng keeps global state, so one process holds one synthesizer; `EspeakSynth` is a
per-process singleton. Synthesis is synchronous: the callback collects 16-bit samples at
the library's native rate (22,050 Hz), which we resample to 16 kHz.
"""
from __future__ import annotations

import ctypes
import threading
import zlib
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000

# espeak_AUDIO_OUTPUT, espeak_PARAMETER and espeak_POSITION_TYPE values from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4
_POS_CHARACTER = 1
_CHARS_UTF8 = 1

# English accents of espeak-ng (en-Shaw is a spelling reform, not an accent)
ACCENTS = ["en", "en-us", "en-029", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
           "en-gb-x-rp", "en-us-nyc"]
# voice variants that still sound like a person speaking (whispers, robots and effect voices
# are left out: no voice-search user sounds like them)
VARIANTS = """Alex Alicia Andrea Andy Annie AnxiousAndy Denis Diogo Gene Gene2 Henrique Hugo
Jacky Lee Marco Mario Michael Mike Nguyen Reed RicishayMax Storm Tweaky adam anika
announcer antonio aunty belinda benjamin boris caleb david ed edward edward2 f1 f2 f3 f4
f5 grandma grandpa gustave ian iven iven2 iven3 iven4 john kaukovalta klatt klatt2 klatt3
linda m1 m2 m3 m4 m5 m6 m7 m8 marcelo max michel miguel mike2 norbert pablo paul pedro
quincy rob robert sandro shelby steph steph2 steph3 travis victor zac""".split()


_LIBC = ctypes.CDLL(None)


class SynthesisError(RuntimeError):
    pass


@dataclass(frozen=True)
class VoiceSetting:
    """One way of speaking: an accent, a voice variant, a rate (words/min) and a pitch (0-99)."""

    accent: str
    variant: str
    rate: int = 175
    pitch: int = 50

    @property
    def voice(self) -> str:
        """The speaker identity (accent + variant); rate and pitch are within-speaker."""
        return f"{self.accent}+{self.variant}"


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.c_void_p)


class EspeakSynth:
    _instance: "EspeakSynth | None" = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        import espeakng_loader

        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.restype = ctypes.c_int
        data_path = espeakng_loader.get_data_path()
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                           data_path.encode(), 0)
        if rate <= 0:
            # older builds want the folder that *contains* espeak-ng-data
            parent = data_path.rsplit("/", 1)[0]
            rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, parent.encode(), 0)
        if rate <= 0:
            raise SynthesisError(f"espeak-ng failed to initialise with data at {data_path}")
        self.native_rate = rate
        self._chunks: list[np.ndarray] = []

        def collect(wav, numsamples, events):
            if numsamples > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
            return 0

        self._callback = _CALLBACK(collect)  # keep a reference: ctypes does not
        self._lib.espeak_SetSynthCallback(self._callback)
        self._lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint,
                                           ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
                                           ctypes.c_void_p, ctypes.c_void_p]
        self._resampler = None

    @classmethod
    def get(cls) -> "EspeakSynth":
        with cls._lock:
            if cls._instance is None:
                cls._instance = EspeakSynth()
            return cls._instance

    def synthesize(self, text: str, setting: VoiceSetting) -> np.ndarray:
        """Float32 mono waveform at 16 kHz, peak-normalised to 0.9, silence trimmed.

        The output depends on what this process synthesised before (espeak-ng keeps
        state); the corpus builder forks per utterance to make it depend on nothing else.
        """
        return finish_waveform(self.synthesize_raw(text, setting), self.native_rate)

    def synthesize_raw(self, text: str, setting: VoiceSetting) -> np.ndarray:
        """Float32 samples in [-1, 1) at the library's native rate."""
        with self._lock:
            # espeak-ng draws from libc's rand() (breathiness, flutter): seed it from the
            # request so the same text and setting give the same samples
            seed = zlib.crc32(f"{text}|{setting}".encode())
            _LIBC.srand(ctypes.c_uint(seed))
            self._lib.espeak_ng_SetRandSeed(ctypes.c_long(seed))
            name = f"{setting.accent}+{setting.variant}".encode()
            if self._lib.espeak_SetVoiceByName(name) != 0:
                raise SynthesisError(f"espeak-ng has no voice {name.decode()!r}")
            self._lib.espeak_SetParameter(_PARAM_RATE, int(setting.rate), 0)
            self._lib.espeak_SetParameter(_PARAM_PITCH, int(setting.pitch), 0)
            self._lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
            self._chunks = []
            data = text.encode("utf-8") + b"\0"
            err = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8,
                                         None, None)
            if err != 0:
                raise SynthesisError(f"espeak_Synth failed with code {err} on {text!r}")
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if not chunks:
            raise SynthesisError(f"espeak-ng produced no audio for {text!r}")
        return np.concatenate(chunks).astype(np.float32) / 32768.0


def finish_waveform(pcm: np.ndarray, native_rate: int) -> np.ndarray:
    import torch
    import torchaudio.functional as AF

    # trim leading/trailing near-silence, keep 50 ms of margin
    loud = np.flatnonzero(np.abs(pcm) > 0.01)
    if loud.size:
        margin = native_rate // 20
        pcm = pcm[max(0, loud[0] - margin): loud[-1] + margin]
    wave = AF.resample(torch.from_numpy(pcm), native_rate, SAMPLE_RATE).numpy()
    peak = float(np.abs(wave).max())
    if peak > 0:
        wave = wave * (0.9 / peak)
    return wave.astype(np.float32)
