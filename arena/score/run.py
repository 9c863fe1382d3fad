"""`arena score`: plan the grid, run the jobs on an executor, write cells as they finish.

Order: phase 1 runs the attack jobs and the adaptive jobs (they make the audio), phase 2 the
defense rounds and the transfer jobs. A killed scorer loses only its jobs in flight (and the finished rounds
of a defense group not yet complete): cells are written atomically and claims are freed.
"""
from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from functools import partial

from arena.core import paths
from arena.core.hashing import sha256_file
from arena.score.adaptive import REFERENCE
from arena.score.executor import Executor, LocalExecutor
from arena.score.jobs import Cell, JobOutput, RunContext, execute
from arena.score.plan import (
    AdaptiveJob,
    AttackJob,
    DefenseGroup,
    Grid,
    TargetSpec,
    TransferJob,
    plan_adaptive,
    plan_attacks,
    plan_defenses,
    plan_transfer,
)
from arena.score.profiles import Profile
from arena.score.progress import JobProgress
from arena.score.store import ResultsStore
from arena.score.subset import SECRET_SPLIT, DataSubset, load_subset, plugin_seeds
from arena.submissions.entries import Entry
from arena.submissions.manifest import content_hash
from arena.zoo import registry


@dataclass
class ScoreOptions:
    profile: Profile
    device: str = "cpu"
    trusted: bool = False
    seed: int = 0
    wall_s: float | None = None     # default: the profile's
    progress: bool = True
    workers: int | None = None


@dataclass
class ScoreReport:
    computed: int = 0
    reused: int = 0
    jobs: int = 0
    failed_jobs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    sandbox_startup_s: float = 0.0
    job_wall_s: float = 0.0

    def account(self, out: JobOutput) -> None:
        self.jobs += 1
        self.sandbox_startup_s += out.startup_s
        self.job_wall_s += out.wall_s
        if out.failure:
            self.failed_jobs.append(out.failure)

    def as_meta(self) -> dict:
        return dict(seconds=round(self.seconds, 1), computed=self.computed, reused=self.reused,
                    jobs=self.jobs, failed_jobs=self.failed_jobs,
                    sandbox_startup_s=round(self.sandbox_startup_s, 2),
                    job_wall_s=round(self.job_wall_s, 2))


def write_cell(store: ResultsStore, cell: Cell) -> bool:
    """The one place cells enter the store (audio file first, then the row)."""
    artifact = store.write_waves(cell.key, cell.waves) if cell.waves is not None else None
    return store.put(cell.key, cell.kind.value, cell.metrics, error=cell.error, artifact=artifact,
                     **cell.axes)


def _keys_of(job) -> list[str]:
    if isinstance(job, (AttackJob, AdaptiveJob)):
        return job.keys if job.record else []
    if isinstance(job, (DefenseGroup, TransferJob)):
        return [s.key for s in job.sets]
    return []


class Driver:
    """Runs a plan on an executor and records what comes back."""

    def __init__(self, grid: Grid, store: ResultsStore, ctx: RunContext, executor: Executor,
                 report: ScoreReport, progress: JobProgress):
        self.grid, self.store, self.ctx, self.executor = grid, store, ctx, executor
        self.report, self.progress = report, progress

    def phase(self, jobs: list) -> None:
        # what the executor runs is store-free and picklable (a Ray worker runs it too)
        work = partial(execute, grid=self.grid, ctx=self.ctx)
        for job, out, error in self.executor.run(self._startable(jobs), work):
            self._finished(job, out, error)

    def _startable(self, jobs: list):
        """The jobs as the executor takes them (when a slot is free): audio loaded, marked
        started."""
        for job in jobs:
            if isinstance(job, (DefenseGroup, TransferJob)):
                job.load_audio(self.grid, self.store)
            self.progress.started(job.name)
            yield job

    def _finished(self, job, out: JobOutput | None, error: BaseException | None) -> None:
        self.progress.finished(job.name)
        if isinstance(job, DefenseGroup):
            for r in job.rounds:
                r.waves = []
        if error is not None or out is None:  # a harness bug or a lost node must not lose the rest
            self._harness_error(job, error or RuntimeError("the job returned nothing"))
            return
        self.report.account(out)
        try:
            if not isinstance(job, (AttackJob, AdaptiveJob)) or job.record:
                self._record(out.cells)
            else:  # audio regenerated for cells that already exist
                for cell in out.cells:
                    if cell.waves is not None:
                        self.store.write_waves(cell.key, cell.waves)
        except (sqlite3.Error, OSError, ValueError, TypeError) as e:
            # a cell the store refuses loses this job's unwritten cells, not the run
            self._harness_error(job, e)

    def _record(self, cells: list[Cell]) -> None:
        for cell in cells:
            self.report.computed += write_cell(self.store, cell)

    def _harness_error(self, job, error: BaseException) -> None:
        for key in _keys_of(job):
            self.store.release(key)   # the next run redoes them
        self.report.failed_jobs.append(f"{job.name}: harness error: {type(error).__name__}: {error}")


def target_specs(names: list[str] | None = None) -> list[TargetSpec]:
    names = names or registry.available()
    if not names:
        raise FileNotFoundError(f"the model zoo ({registry.zoo_path('dense').parent}) is empty")
    return [TargetSpec(n, registry.resolve(n), sha256_file(registry.resolve(n))) for n in names]


def run_score(store: ResultsStore, options: ScoreOptions, entries: list[Entry],
              models: list[TargetSpec], subset: DataSubset | None = None,
              problems: list[str] | None = None, executor: Executor | None = None) -> ScoreReport:
    """Run every missing cell of the grid; finished cells are reused. `problems`
    (submissions that could not be loaded) are kept in the store's meta for the board."""
    t0 = time.time()
    subset = subset or load_subset(options.profile, progress=options.progress)
    seeds = (plugin_seeds(options.seed, {e.content_hash for e in entries})
             if subset.split == SECRET_SPLIT else {})
    grid = Grid(subset, options.profile, options.seed, tuple(e for e in entries if e.is_attack),
                tuple(e for e in entries if e.track == "defense"),
                tuple(sorted(models, key=lambda m: m.name != "dense")),
                content_hash(paths.PACKAGE / "baselines" / REFERENCE), seeds)
    store.set_meta("last_run", dict(profile=options.profile.name, split=subset.split,
                                    seed_tag=subset.seed_tag, n_utterances=len(subset.ids),
                                    budgets=list(grid.budgets), device=options.device,
                                    models=[m.name for m in grid.models],
                                    entries=[e.name for e in entries], started=t0,
                                    problems=list(problems or [])))
    report = ScoreReport()
    executor = executor or LocalExecutor(options.workers)
    ctx = RunContext(options.device, options.trusted, options.wall_s or options.profile.wall_s)
    with JobProgress(enabled=options.progress) as progress:
        driver = Driver(grid, store, ctx, executor, report, progress)
        attack_jobs, reused = plan_attacks(grid, store)
        adaptive_jobs, reused_a = plan_adaptive(grid, store)
        report.reused += reused + reused_a
        progress.add(len(attack_jobs) + len(adaptive_jobs), "attacks")
        driver.phase([*attack_jobs, *adaptive_jobs])
        groups, reused_d = plan_defenses(grid, store)
        transfers, reused_t = plan_transfer(grid, store)
        report.reused += reused_d + reused_t
        progress.add(len(groups) + len(transfers), "defenses and transfer")
        driver.phase([*groups, *transfers])
    report.seconds = time.time() - t0
    store.set_meta("last_run_report", report.as_meta())
    return report
