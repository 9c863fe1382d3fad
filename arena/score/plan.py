"""What work exists: the grid as a list of independent jobs, each naming the cells it makes.

Pure planning: reads the store (which cells exist, which audio files are there) and never
runs anything, so any executor (in-process threads, a Ray cluster) can run the plan and only
the driver writes the store. Two phases, because defenses and transfer need the attack
audio: phase 1 = attack jobs and adaptive jobs (the reference attack through each defense);
phase 2 = defense rounds (every attack's audio and the defense's own adaptive audio, mixed)
and transfer jobs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np

from arena.score.anonymise import RoundItem, assign_rounds
from arena.score.keys import content_key
from arena.score.profiles import Profile
from arena.score.store import ResultsStore
from arena.score.subset import DataSubset
from arena.submissions.entries import Entry


class JobKind(str, Enum):
    ATTACK = "attack"
    ADAPTIVE = "adaptive"
    DEFENSE = "defense"
    TRANSFER = "transfer"


class CellKind(str, Enum):
    ATTACK = "attack"
    ADAPTIVE = "adaptive"     # the adaptive attack's audio against one defense
    DEFENSE = "defense"
    CLEAN = "clean"
    TRANSFER = "transfer"


@dataclass(frozen=True)
class TargetSpec:
    name: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class Grid:
    """Everything that defines a run's cells."""
    subset: DataSubset
    profile: Profile
    seed: int
    attacks: tuple[Entry, ...]
    defenses: tuple[Entry, ...]
    models: tuple[TargetSpec, ...]
    reference: str = ""       # content hash of the adaptive evaluation's reference attack
    # the seed each plugin is given, by content hash (the secret split's, subset.plugin_seeds);
    # made by the driver, which alone holds the secret; absent: the run's seed
    plugin_seeds: dict[str, int] = field(default_factory=dict)

    def seed_for(self, entry: Entry) -> int:
        return self.plugin_seeds.get(entry.content_hash, self.seed)

    @property
    def budgets(self) -> tuple[str, ...]:
        return self.profile.budgets

    @property
    def dense(self) -> TargetSpec | None:
        return next((m for m in self.models if m.name == "dense"), None)

    def axes(self, **kw) -> dict:
        return dict(split=self.subset.split, seed_tag=self.subset.seed_tag,
                    profile=self.profile.name, **kw)

    # ------------------------------------------------------------ keys
    def attack_key(self, attack: Entry, budget: str, model: TargetSpec) -> str:
        return content_key(kind="attack", attack=attack.content_hash, budget=budget,
                           model=model.sha256, data=self.subset.key, seed=self.seed,
                           effort=self.profile.effort)

    def adaptive_key(self, defense: Entry, budget: str, model: TargetSpec) -> str:
        return content_key(kind="adaptive", defense=defense.content_hash, reference=self.reference,
                           budget=budget, model=model.sha256, data=self.subset.key, seed=self.seed,
                           effort=self.profile.effort, eot=self.profile.eot)

    def defense_key(self, attack_key: str, defense: Entry, model: TargetSpec) -> str:
        return content_key(kind="defense", attack_cell=attack_key, defense=defense.content_hash,
                           model=model.sha256, seed=self.seed, effort=self.profile.effort)

    def clean_key(self, defense: Entry, model: TargetSpec) -> str:
        return content_key(kind="clean", defense=defense.content_hash, model=model.sha256,
                           data=self.subset.key, seed=self.seed, effort=self.profile.effort)

    def transfer_key(self, attack_key: str, model: TargetSpec) -> str:
        return content_key(kind="transfer", attack_cell=attack_key, model=model.sha256)


@dataclass
class AttackJob:
    """One sandbox process: an attack on one model for every budget in `budgets`. With
    `record` False it only regenerates audio files (the audio is not versioned with the
    store; the attack is seeded, so it is the same audio)."""
    attack: Entry
    model: TargetSpec
    budgets: list[str]
    keys: list[str]
    record: bool = True
    kind: JobKind = JobKind.ATTACK

    @property
    def name(self) -> str:
        return f"{self.attack.name} -> {self.model.name}" + ("" if self.record else " (audio)")


@dataclass
class AdaptiveJob:
    """One purify server (the defense's sandbox) and the harness's attack loop: the reference
    attack through one defense on one model, for every budget in `budgets`."""
    defense: Entry
    model: TargetSpec
    budgets: list[str]
    keys: list[str]
    record: bool = True
    kind: JobKind = JobKind.ADAPTIVE

    @property
    def name(self) -> str:
        return f"adaptive {self.defense.name} on {self.model.name}" + ("" if self.record else " (audio)")


@dataclass
class InputSet:
    """One version of the utterances a defense transcribes: the clean audio or an attack
    cell's audio, and the cell it becomes."""
    key: str
    kind: CellKind
    attack: Entry | None
    budget: str | None
    ids: list[str]
    attack_cell: dict | None = None            # None: the clean audio
    adaptive: bool = False                     # the defense's own adaptive audio
    waves: dict[str, np.ndarray] = field(default_factory=dict)   # filled by `load_audio`

    def load_audio(self, grid: Grid, store: ResultsStore) -> None:
        if self.attack_cell is None:
            self.waves = dict(zip(grid.subset.ids, grid.subset.waves))
        else:
            self.waves = store.read_waves(self.attack_cell["artifact"])


@dataclass
class DefenseRound:
    """One anonymous round of a defense: a process of its own sees only these items."""
    items: list[RoundItem]
    waves: list[np.ndarray] = field(default_factory=list)   # aligned with items, see load


@dataclass
class DefenseGroup:
    """One job: the rounds of one (defense, model) and the cells they complete together."""
    defense: Entry
    model: TargetSpec
    sets: list[InputSet]
    rounds: list[DefenseRound] = field(default_factory=list)
    kind: JobKind = JobKind.DEFENSE

    @property
    def name(self) -> str:
        return f"{self.defense.name} on {self.model.name}"

    def load_audio(self, grid: Grid, store: ResultsStore) -> None:
        """Read the sets' audio and hand each round its waves (just before it runs, so only
        the groups in flight hold audio in memory)."""
        for s in self.sets:
            s.load_audio(grid, store)
        for r in self.rounds:
            r.waves = [self.sets[i.version].waves[i.uid] for i in r.items]
        for s in self.sets:
            s.waves = {}


def submission_of(job) -> Entry | None:
    """The submission a job runs (an adaptive job serves its defense's purify from the
    defense's sandbox); None for a transfer job, which runs none."""
    if isinstance(job, AttackJob):
        return job.attack
    if isinstance(job, (DefenseGroup, AdaptiveJob)):
        return job.defense
    return None


def with_submission_folder(job, folder: Path):
    """The job with its submission's files read from `folder` (a private copy its caller
    checked against the content hash), everything else as it was."""
    entry = submission_of(job)
    if entry is None:
        raise TypeError(f"{type(job).__name__} runs no submission")
    local = dataclasses.replace(entry, spec=dataclasses.replace(entry.spec, folder=folder))
    return dataclasses.replace(job, **{"attack" if isinstance(job, AttackJob) else "defense": local})


@dataclass
class TransferJob:
    """Harness side, no submission code: audio crafted on `source`, transcribed by `model`."""
    source: TargetSpec
    model: TargetSpec
    sets: list[InputSet]
    kind: JobKind = JobKind.TRANSFER

    def load_audio(self, grid: Grid, store: ResultsStore) -> None:
        for s in self.sets:
            s.load_audio(grid, store)

    @property
    def name(self) -> str:
        return f"transfer {self.source.name} -> {self.model.name}"


# ------------------------------------------------------------------ phase 1
def plan_attacks(grid: Grid, store: ResultsStore) -> tuple[list[AttackJob], int]:
    """Attack jobs for missing attack cells, and audio-only jobs where phase 2 needs audio
    whose file is missing; the number of cells reused."""
    jobs: list = []
    reused = 0
    for model in grid.models:
        for attack in grid.attacks:
            reused += _budget_jobs(jobs, AttackJob, attack, model, grid, store,
                                   lambda b, a=attack, m=model: grid.attack_key(a, b, m),
                                   lambda key, cell, a=attack, m=model:
                                   _audio_needed(grid, store, a, m, key, cell))
    return jobs, reused


def plan_adaptive(grid: Grid, store: ResultsStore) -> tuple[list[AdaptiveJob], int]:
    """Adaptive jobs for missing adaptive cells (and audio-only ones, like plan_attacks)."""
    jobs: list = []
    reused = 0
    for model in grid.models if grid.profile.adaptive else ():
        for defense in grid.defenses:
            reused += _budget_jobs(jobs, AdaptiveJob, defense, model, grid, store,
                                   lambda b, d=defense, m=model: grid.adaptive_key(d, b, m),
                                   lambda key, cell, d=defense, m=model:
                                   not (cell["artifact"] and store.has_artifact(cell["artifact"]))
                                   and not store.has(grid.defense_key(key, d, m)))
    return jobs, reused


def _budget_jobs(jobs: list, job_type, entry: Entry, model: TargetSpec, grid: Grid,
                 store: ResultsStore, key_of, audio_needed) -> int:
    """Append to `jobs` one job of `job_type` for the budgets whose cells are missing (and
    claimed) and one audio-only job for those whose audio is needed again; the number of
    cells reused."""
    missing, regen, reused = [], [], 0
    for b in grid.budgets:
        key = key_of(b)
        cell = store.get(key)
        if cell is None and store.claim(key):
            missing.append((b, key))
        elif cell is not None:
            reused += 1
            if audio_needed(key, cell):
                regen.append((b, key))
    for found, record in ((missing, True), (regen, False)):
        if found:
            jobs.append(job_type(entry, model, [b for b, _ in found], [k for _, k in found],
                                 record=record))
    return reused


def _audio_needed(grid: Grid, store: ResultsStore, attack: Entry, model: TargetSpec,
                  key: str, cell: dict) -> bool:
    if cell["artifact"] and store.has_artifact(cell["artifact"]):
        return False
    needers = [grid.defense_key(key, d, model) for d in grid.defenses]
    if model == grid.dense and attack.track == "attack":
        needers += [grid.transfer_key(key, m) for m in grid.models if m != model]
    return any(not store.has(k) for k in needers)


# ------------------------------------------------------------------ phase 2
def plan_defenses(grid: Grid, store: ResultsStore) -> tuple[list[DefenseGroup], int]:
    """For each (defense, model): the input sets still to transcribe, split into anonymous
    rounds; the number of cells reused."""
    groups, reused = [], 0
    for model in grid.models:
        for defense in grid.defenses:
            sets, n_reused = _defense_sets(grid, store, defense, model)
            reused += n_reused
            if sets:
                groups.append(_with_rounds(DefenseGroup(defense, model, sets)))
    return groups, reused


def _defense_sets(grid: Grid, store: ResultsStore, defense: Entry, model: TargetSpec):
    sets, reused = [], 0
    ck = grid.clean_key(defense, model)
    if store.claim(ck):
        sets.append(InputSet(ck, CellKind.CLEAN, None, None, list(grid.subset.ids)))
    else:
        reused += 1
    for attack in grid.attacks:
        for b in grid.budgets:
            ak = grid.attack_key(attack, b, model)
            cell = store.get(ak)
            if cell is None:
                continue  # its attack job failed to record: nothing to defend
            dk = grid.defense_key(ak, defense, model)
            if not store.claim(dk):
                reused += 1
                continue
            if not (cell["artifact"] and store.has_artifact(cell["artifact"])):
                store.release(dk)  # the audio could not be regenerated; the next run retries
                continue
            sets.append(InputSet(dk, CellKind.DEFENSE, attack, b, cell["metrics"]["ids"], cell))
    for b in grid.budgets if grid.profile.adaptive else ():
        cell = store.get(grid.adaptive_key(defense, b, model))
        if cell is None:
            continue  # its adaptive job failed to record
        dk = grid.defense_key(cell["key"], defense, model)
        if not store.claim(dk):
            reused += 1
        elif cell["artifact"] and store.has_artifact(cell["artifact"]):
            sets.append(InputSet(dk, CellKind.DEFENSE, None, b, cell["metrics"]["ids"], cell,
                                 adaptive=True))
        else:
            store.release(dk)
    return sets, reused


def _with_rounds(group: DefenseGroup) -> DefenseGroup:
    versions: dict[str, list[int]] = {}
    for v, s in enumerate(group.sets):
        for uid in s.ids:
            versions.setdefault(uid, []).append(v)
    group.rounds = [DefenseRound(items) for items in assign_rounds(versions)]
    return group


def plan_transfer(grid: Grid, store: ResultsStore) -> tuple[list[TransferJob], int]:
    """Dense-crafted untargeted audio on every other model, no defense."""
    source = grid.dense
    if source is None or not grid.profile.transfer:
        return [], 0
    jobs, reused = [], 0
    for model in grid.models:
        if model == source:
            continue
        sets = []
        for attack in grid.attacks:
            if attack.track != "attack":
                continue
            for b in grid.budgets:
                ak = grid.attack_key(attack, b, source)
                cell = store.get(ak)
                tk = grid.transfer_key(ak, model)
                if cell is None:
                    continue
                if not store.claim(tk):
                    reused += store.has(tk)
                    continue
                if not (cell["artifact"] and store.has_artifact(cell["artifact"])):
                    store.release(tk)
                    continue
                sets.append(InputSet(tk, CellKind.TRANSFER, attack, b, cell["metrics"]["ids"], cell))
        if sets:
            jobs.append(TransferJob(source, model, sets))
    return jobs, reused
