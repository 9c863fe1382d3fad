"""JSONL manifests: one utterance per line with id, audio path, text, duration and voice.

Audio paths are relative to the manifest's folder. A split may carry a checksum file
(`NAME.sha256`) holding the SHA-256 of the manifest bytes; each line may carry the SHA-256
of its audio file (`sha256`) and/or of its decoded 16-bit samples (`pcm_sha256`, see
`pcm16_sha256`; the built-in corpus uses this one, which does not change with the FLAC
encoder's version). The loader verifies what is present.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from arena.core.audio import SAMPLE_RATE
from arena.core.hashing import sha256_file
from arena.core.text import TextError, normalize_text

REQUIRED = ("id", "audio", "text")
OPTIONAL = ("voice", "sha256", "pcm_sha256")   # strings, "" when absent


class ManifestError(ValueError):
    """Bad corpus input; the message names the file and, where there is one, the line."""


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: Path
    text: str
    duration: float
    voice: str = ""
    sha256: str = ""
    pcm_sha256: str = ""
    source: str = field(default="", compare=False)  # "manifest:line" for error messages


def pcm16_sha256(samples: np.ndarray) -> str:
    """SHA-256 of a waveform as 16-bit little-endian samples.

    Float input in [-1, 1) is taken as value * 32768 (what soundfile decodes 16-bit audio
    to), so the hash of a decoded file equals the hash of the int16 samples written.
    """
    samples = np.asarray(samples)
    if samples.dtype.kind == "f":
        samples = np.clip(np.rint(samples.astype(np.float64) * 32768.0), -32768, 32767)
    return hashlib.sha256(samples.astype("<i2").tobytes()).hexdigest()


def checksum_path(manifest: Path) -> Path:
    return manifest.with_suffix(".sha256")


def read_manifest(path, verify: bool = True) -> list[Utterance]:
    """Parse and check a manifest; raise ManifestError naming file and line on bad input."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    raw = path.read_bytes()
    check = checksum_path(path)
    if verify and check.is_file():
        expected = check.read_text().split()[0]
        actual = hashlib.sha256(raw).hexdigest()
        if expected != actual:
            raise ManifestError(f"{path}: checksum mismatch (expected {expected[:12]}…, "
                                f"got {actual[:12]}…); the manifest was modified or is incomplete")
    out, seen = [], set()
    for lineno, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        row = _parse_line(line, where)
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}")
        for name in REQUIRED + OPTIONAL:
            if name in row and not isinstance(row[name], str):
                raise ManifestError(f"{where}: field {name} must be a string, got {_shown(row[name])}")
        for name in ("id", "audio"):
            if not row[name]:
                raise ManifestError(f"{where}: field {name} is empty")
        duration = _duration(row.get("duration", 0.0), where)
        try:
            text = normalize_text(row["text"], strict=True)
        except TextError as e:
            raise ManifestError(f"{where}: {e}") from None
        uid = row["id"]
        if uid in seen:
            raise ManifestError(f"{where}: duplicate id {uid!r}")
        seen.add(uid)
        try:
            audio = (path.parent / row["audio"]).resolve()
        except (OSError, ValueError, RuntimeError) as e:   # a NUL byte, a symlink loop
            raise ManifestError(f"{where}: field audio is not a usable path ({e})") from None
        out.append(Utterance(id=uid, audio=audio, text=text, duration=duration,
                             voice=row.get("voice", ""), sha256=row.get("sha256", ""),
                             pcm_sha256=row.get("pcm_sha256", ""), source=where))
    if not out:
        raise ManifestError(f"{path}: manifest has no utterances")
    return out


class _LongInt:
    """A JSON integer with more digits than int() takes (Python's limit is 4300): kept as its
    length, so that the field holding it is named in the error (an unknown field may hold it)."""

    def __init__(self, digits: str):
        self.digits = len(digits.lstrip("-"))

    def __repr__(self) -> str:
        return f"<an integer of {self.digits} digits>"


def _parse_int(digits: str):
    try:
        return int(digits)
    except ValueError:
        return _LongInt(digits)


def _parse_line(line: str, where: str) -> dict:
    try:
        row = json.loads(line, parse_int=_parse_int)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{where}: broken JSON line ({e.msg})") from None
    except (ValueError, RecursionError) as e:   # e.g. arrays nested deeper than the parser goes
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:120]
        raise ManifestError(f"{where}: broken JSON line ({reason})") from None
    if not isinstance(row, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def _duration(value, where: str) -> float:
    """Seconds: a finite, non-negative JSON number (not a boolean)."""
    seconds = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except OverflowError:   # an integer beyond the float range
            pass
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ManifestError(f"{where}: field duration must be a finite, non-negative number of "
                            f"seconds, got {_shown(value)}")
    return seconds


def _shown(value) -> str:
    """A JSON value for an error message: its kind and its (shortened, ASCII) text."""
    if isinstance(value, _LongInt):
        return repr(value)[1:-1]
    kind = {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value))
    if kind is None:
        return "null"
    try:
        text = json.dumps(value, default=repr)
    except (ValueError, RecursionError):
        text = "..."
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


def load_audio(utt: Utterance, verify: bool = False) -> np.ndarray:
    """Mono float32 waveform at 16 kHz; ManifestError on missing, stereo, wrong rate."""
    where = utt.source or str(utt.audio)
    try:
        found = utt.audio.is_file()
    except OSError as e:   # e.g. a name too long
        raise ManifestError(f"{where}: audio file {utt.audio}: {e.strerror}") from None
    if not found:
        what = "is not a regular file" if utt.audio.exists() else "not found"
        raise ManifestError(f"{where}: audio file {utt.audio} {what}")
    if verify and utt.sha256 and sha256_file(utt.audio) != utt.sha256:
        raise ManifestError(f"{where}: audio file {utt.audio} does not match its checksum")
    try:
        wave, rate = sf.read(str(utt.audio), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises several types for corrupt files
        raise ManifestError(f"{where}: cannot decode audio {utt.audio}: {e}") from None
    if rate != SAMPLE_RATE:
        raise ManifestError(f"{where}: {utt.audio} has sample rate {rate} Hz, expected {SAMPLE_RATE}")
    if wave.shape[1] != 1:
        raise ManifestError(f"{where}: {utt.audio} has {wave.shape[1]} channels, expected mono")
    if wave.shape[0] == 0:
        raise ManifestError(f"{where}: {utt.audio} is empty")
    wave = wave[:, 0]
    if not np.isfinite(wave).all():
        raise ManifestError(f"{where}: {utt.audio} holds NaN or infinite samples")
    if verify and utt.pcm_sha256 and pcm16_sha256(wave) != utt.pcm_sha256:
        raise ManifestError(f"{where}: samples of {utt.audio} do not match pcm_sha256")
    return wave


def write_manifest(path, rows: list[dict]) -> str:
    """Write JSONL rows (sorted keys, one per line) and the checksum file; return the hash."""
    path = Path(path)
    data = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode()
    digest = hashlib.sha256(data).hexdigest()
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    checksum_path(path).write_text(f"{digest}  {path.name}\n")
    return digest
