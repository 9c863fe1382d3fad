"""LibriSpeech folder layout through torchaudio.datasets.LIBRISPEECH (download=False).

The metadata walk is torchaudio's; audio is read through our manifest checks so the same
errors (missing file, wrong rate, stereo, empty text) name the offending file.
"""
from __future__ import annotations

from pathlib import Path

from torchaudio.datasets import LIBRISPEECH

from arena.core.text import TextError, normalize_text
from arena.data.manifest import ManifestError, Utterance, load_audio


def librispeech_utterances(root, subset: str = "test-clean",
                           folder_in_archive: str = "LibriSpeech") -> list[Utterance]:
    """Utterances of one LibriSpeech subset found under root/folder_in_archive/subset."""
    base = Path(root) / folder_in_archive / subset
    if not base.is_dir():
        raise ManifestError(f"{base}: no LibriSpeech subset folder (nothing is downloaded)")
    ds = LIBRISPEECH(str(root), url=subset, folder_in_archive=folder_in_archive, download=False)
    out = []
    for n in range(len(ds)):
        try:
            rel, rate, text, spk, chapter, utt = ds.get_metadata(n)
        except FileNotFoundError as e:
            raise ManifestError(f"{base}: {e}") from None
        audio = Path(ds._archive) / rel if not Path(rel).is_absolute() else Path(rel)
        transcript_file = audio.parent / f"{spk}-{chapter}.trans.txt"
        try:
            text = normalize_text(text, strict=True)
        except TextError as e:
            raise ManifestError(f"{transcript_file}: {e}") from None
        out.append(Utterance(id=audio.stem, audio=audio, text=text, duration=0.0,
                             voice=f"librispeech-{spk}", source=str(transcript_file)))
    if not out:
        raise ManifestError(f"{base}: no utterances found")
    return out


__all__ = ["librispeech_utterances", "load_audio"]
