"""The competitors: baselines and submissions, each read from its submission.toml."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from arena.core import paths
from arena.plugins.spec import PluginSpec
from arena.submissions.manifest import SubmissionError, content_hash, load_manifest


@dataclass(frozen=True)
class Entry:
    spec: PluginSpec     # what the sandbox runs
    content_hash: str
    origin: str          # baseline | submission

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def track(self) -> str:  # attack | targeted-attack | defense
        return self.spec.track.value

    @property
    def path(self) -> Path:
        return self.spec.folder

    @property
    def is_attack(self) -> bool:
        return self.spec.track.is_attack


class EntryError(ValueError):
    pass


def discover(names: list[str] | None = None, *, tracks: tuple[str, ...] | None = None,
             roots: list[tuple[Path, str]] | None = None) -> tuple[list[Entry], list[str]]:
    """All valid entries (baselines first) and the problems of the invalid ones.

    A broken submission folder never stops scoring: it is reported and skipped.
    """
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
            # `arena submit` installs a submission as submissions/<its name>/: one whose
            # manifest names another entry (rewritten after it was checked, e.g. while its
            # folder was being validated) would take that entry's place on the board, and
            # the real one, sorted later, would be skipped as a duplicate
            if origin == "submission" and m.name != folder.name:
                problems.append(f"{folder}: installed as {folder.name!r} but its submission.toml "
                                f"names {m.name!r}; skipped (submit it again)")
                continue
            if m.name in seen:
                problems.append(f"{folder}: name {m.name!r} already taken by a {origin} entry; skipped")
                continue
            seen.add(m.name)
            entries.append(Entry(m.spec(), content_hash(folder), origin))
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
