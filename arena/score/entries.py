"""The competitors: baselines and submissions, each read from its submission.toml."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from arena import paths


@dataclass(frozen=True)
class Entry:
    name: str
    track: str           # attack | targeted-attack | defense
    path: Path
    content_hash: str
    origin: str          # baseline | submission

    @property
    def is_attack(self) -> bool:
        return self.track in ("attack", "targeted-attack")


class EntryError(ValueError):
    pass


def discover(names: list[str] | None = None, *, tracks: tuple[str, ...] | None = None,
             roots: list[tuple[Path, str]] | None = None) -> tuple[list[Entry], list[str]]:
    """All valid entries (baselines first) and the problems of the invalid ones.

    A broken submission folder never stops scoring: it is reported and skipped.
    """
    from arena.plugins.manifest import SubmissionError, content_hash, load_manifest

    roots = roots or [(paths.baselines_dir(), "baseline"), (paths.submissions_dir(), "submission")]
    entries, problems, seen = [], [], set()
    for root, origin in roots:
        if not root.is_dir():
            continue
        for folder in sorted(p for p in root.iterdir() if (p / "submission.toml").is_file()):
            try:
                m = load_manifest(folder)
            except SubmissionError as e:
                problems.append(f"{folder}: {e}")
                continue
            if m.name in seen:
                problems.append(f"{folder}: name {m.name!r} already taken by a {origin} entry; skipped")
                continue
            seen.add(m.name)
            entries.append(Entry(m.name, m.track, folder.resolve(), content_hash(folder), origin))
    if tracks:
        entries = [e for e in entries if e.track in tracks]
    if names:
        wanted = set(names)
        unknown = wanted - {e.name for e in entries}
        if unknown:
            raise EntryError(f"unknown entries: {', '.join(sorted(unknown))}; known: "
                             f"{', '.join(e.name for e in entries)}")
        entries = [e for e in entries if e.name in wanted]
    return entries, problems
