"""Speech synthesis with espeak-ng, driven through ctypes from the `espeakng-loader` wheel.

espeak-ng keeps global state, so one process holds one synthesizer; `EspeakSynth` is a
per-process singleton. Synthesis is synchronous: the callback collects 16-bit samples at
the library's native rate (22,050 Hz), which we resample to 16 kHz in exact integer
arithmetic (`finish_waveform`), so the audio is the same on every CPU.
"""
from __future__ import annotations

import ctypes
import functools
import math
import threading
import zlib
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

# = arena.core.audio.SAMPLE_RATE, written out because this module (and the synthesis
# server that runs it) stays free of torch, which arena.core.audio imports
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
    _instance: EspeakSynth | None = None
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

    @classmethod
    def get(cls) -> EspeakSynth:
        with cls._lock:
            if cls._instance is None:
                cls._instance = EspeakSynth()
            return cls._instance

    def synthesize(self, text: str, setting: VoiceSetting) -> np.ndarray:
        """Float32 mono waveform at 16 kHz, peak-normalised to 0.9, silence trimmed: the
        samples the corpus stores (16-bit values / 32768).

        The output depends on what this process synthesised before (espeak-ng keeps
        state); the corpus builder forks per utterance to make it depend on nothing else.
        """
        pcm16 = finish_waveform(self.synthesize_raw(text, setting), self.native_rate)
        return pcm16.astype(np.float32) / 32768.0

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
    """16-bit samples at 16 kHz: silence trimmed (50 ms margin), resampled, peak at 0.9.

    Exact integer arithmetic throughout, so the corpus is byte-identical on every CPU.
    (torchaudio's resample ran its conv1d through oneDNN, whose result depends on the
    instruction set it dispatches to: a different CPU gave different samples.)
    """
    ints = np.rint(np.asarray(pcm, dtype=np.float64) * 32768.0).astype(np.int64)
    # trim leading/trailing near-silence (|x| > 0.01, i.e. >= 328/32768), keep 50 ms margin
    loud = np.flatnonzero(np.abs(ints) >= 328)
    if loud.size:
        margin = native_rate // 20
        ints = ints[max(0, loud[0] - margin): loud[-1] + margin]
    acc = resample_exact(ints, native_rate, SAMPLE_RATE)
    peak = int(np.abs(acc).max()) if acc.size else 0
    if peak == 0:
        return np.zeros(len(acc), dtype=np.int16)
    # round(acc * 0.9 * 32767 / peak), half up, in integers: the old float path gave
    # lrint(0.9 * 32767) = 29490 at the peak as well
    num, den = 2 * _GAIN_NUM, 2 * _GAIN_DEN * peak
    if peak > _MAX_ACC:
        raise SynthesisError(f"resampler overflow guard: peak {peak} > {_MAX_ACC}")
    return ((acc * num + den // 2) // den).astype(np.int16)


_GAIN_NUM, _GAIN_DEN = 294_903, 10  # 0.9 * 32767 as a fraction
_KERNEL_BITS = 24                   # kernel taps are integers in units of 2**-24
_MAX_ACC = (1 << 62) // (2 * _GAIN_NUM)


def _sin_cos_small(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sin and cos for |x| <= pi/2 by Taylor series in plain float64 + and *.

    libm and numpy's sin/cos pick SIMD variants by CPU and can differ in the last bit;
    elementwise IEEE + and * cannot, so these values are the same on every machine.
    """
    x2 = x * x
    s = np.zeros_like(x)
    c = np.zeros_like(x)
    for i in range(13, -1, -1):  # error below 1e-20 for |x| <= pi/2
        s = s * x2 + float(Fraction((-1) ** i, math.factorial(2 * i + 1)))
        c = c * x2 + float(Fraction((-1) ** i, math.factorial(2 * i)))
    return s * x, c


@functools.lru_cache(maxsize=4)
def _resample_kernel(orig: int, new: int) -> tuple[np.ndarray, int, int, int]:
    """Integer polyphase kernel (new phases x taps), width and reduced rates.

    The same filter as torchaudio's default resample (Hann-windowed sinc, 6 zero
    crossings, rolloff 0.99), with every time offset an exact fraction N/D, so the taps
    are reproducible bit for bit.
    """
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    low = min(orig, new)                     # cutoff = low * 99/100 (rolloff 0.99)
    zeros = 6                                # lowpass filter width in zero crossings
    width = -(-zeros * 100 * orig // (99 * low))
    k = np.arange(-width, width + orig, dtype=np.int64)[None, :]
    j = np.arange(new, dtype=np.int64)[:, None]
    # t = cutoff * (k / orig - j / new) in units of the cutoff period, as N / D
    den = 100 * orig * new
    num = np.clip(99 * low * (k * new - j * orig), -zeros * den, zeros * den)
    nearest = (2 * num + den) // (2 * den)   # sin(pi t) = (-1)^n sin(pi (t - n))
    frac = (num - nearest * den) / den       # |frac| <= 1/2, exact ints divided once
    sin_frac, _ = _sin_cos_small(np.pi * frac)
    sign = np.where(nearest % 2 == 0, 1.0, -1.0)
    t_pi = np.pi * (num / den)
    safe = np.where(num == 0, 1.0, t_pi)
    sinc = np.where(num == 0, 1.0, sign * sin_frac / safe)
    _, cos_w = _sin_cos_small(np.pi * (num / (2 * zeros * den)))
    taps = sinc * (cos_w * cos_w) * (99 * low / (100 * orig))
    kernel = np.rint(taps * float(1 << _KERNEL_BITS)).astype(np.int64)
    return kernel, width, orig, new


def resample_exact(ints: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Resample integer samples; returns int64 in units of 2**-24 of the input scale.

    Integer products and sums are exact whatever order a SIMD path adds them in.
    """
    kernel, width, o, n = _resample_kernel(orig, new)
    x = np.asarray(ints, dtype=np.int64)
    if x.size and int(np.abs(x).max()) > 32768:
        raise SynthesisError("resample_exact expects 16-bit sample values")
    padded = np.concatenate([np.zeros(width, np.int64), x, np.zeros(width + o, np.int64)])
    frames = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1])[::o]
    out = (frames @ kernel.T).reshape(-1)
    return out[: -(-n * len(x) // o)]
