"""`arena score`: plan the grid, run the jobs on an executor, write cells as they finish.

Order: phase 1 runs the attack jobs and the adaptive jobs (they make the audio), phase 2 the
defense rounds and the transfer jobs. A killed scorer loses only its jobs in flight (and the finished rounds
of a defense group not yet complete): cells are written atomically and claims are freed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial

from arena.core import paths
from arena.core.hashing import sha256_file
from arena.score.adaptive import REFERENCE
from arena.score.executor import Executor, LocalExecutor
from arena.score.jobs import Cell, JobOutput, RunContext, defense_cells, execute
from arena.score.plan import (
    AdaptiveJob,
    AttackJob,
    DefenseGroup,
    DefenseRound,
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
from arena.score.subset import DataSubset, load_subset
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
        self.groups: dict[str, tuple[DefenseGroup, dict[int, JobOutput]]] = {}
        self.failed_groups: dict[str, str] = {}

    def phase(self, jobs: list) -> None:
        # what the executor runs is store-free and picklable (a Ray worker runs it too)
        work = partial(execute, grid=self.grid, ctx=self.ctx)
        for job, out, error in self.executor.run(self._startable(jobs), work):
            self._finished(job, out, error)

    def _startable(self, jobs: list):
        """The jobs as the executor takes them (when a slot is free): marked started, and a
        round whose defense already failed as a whole answered here without running."""
        for job in self._prepared(jobs):
            if isinstance(job, DefenseRound) and job.group not in self.groups:
                continue  # its group was abandoned (a harness error); the next run redoes it
            self.progress.started(job.name)
            failed = self.failed_groups.get(job.group) if isinstance(job, DefenseRound) else None
            if failed is not None:
                # the defense failed as a whole in an earlier round (load error, timeout): its
                # other rounds would too; they score WER 1.0 without running (only it loses)
                self._finished(job, JobOutput(errors={i.name: failed for i in job.items}), None)
                continue
            yield job

    def _finished(self, job, out: JobOutput | None, error: BaseException | None) -> None:
        self.progress.finished(job.name)
        if error is not None or out is None:  # a harness bug or a lost node must not lose the rest
            self._harness_error(job, error or RuntimeError("the job returned nothing"))
            return
        if isinstance(job, DefenseRound) and job.group not in self.groups:
            return  # a round of an abandoned group, still in flight when it was abandoned
        if isinstance(job, DefenseRound):
            if out.failure and job.group in self.failed_groups:
                out.failure = None  # one failure per defense group in the report
            elif out.failure and _whole_job_failed(out):
                self.failed_groups[job.group] = out.failure
            self.report.account(out)
            self._round_done(job, out)
            return
        self.report.account(out)
        if not isinstance(job, (AttackJob, AdaptiveJob)) or job.record:
            self._record(out.cells)
        else:  # audio regenerated for cells that already exist
            for cell in out.cells:
                if cell.waves is not None:
                    self.store.write_waves(cell.key, cell.waves)

    def _prepared(self, jobs: list):
        for job in jobs:
            if isinstance(job, DefenseGroup):
                job.load_audio(self.grid, self.store)
                self.groups[job.rounds[0].group] = (job, {})
                yield from job.rounds
                for s in job.sets:
                    s.waves = {}
            else:
                if isinstance(job, TransferJob):
                    job.load_audio(self.grid, self.store)
                yield job

    def _round_done(self, job: DefenseRound, out: JobOutput) -> None:
        group, outputs = self.groups[job.group]
        outputs[group.rounds.index(job)] = out
        if len(outputs) == len(group.rounds):
            ordered = [outputs[i] for i in range(len(group.rounds))]
            self._record(defense_cells(group, ordered, self.grid))
            del self.groups[job.group]

    def _record(self, cells: list[Cell]) -> None:
        for cell in cells:
            self.report.computed += write_cell(self.store, cell)

    def _harness_error(self, job, error: BaseException) -> None:
        if isinstance(job, DefenseRound):
            group, _ = self.groups.pop(job.group, (None, None))
            keys = _keys_of(group) if group else []
        else:
            keys = _keys_of(job)
        for key in keys:
            self.store.release(key)
        self.report.failed_jobs.append(f"{job.name}: harness error: {type(error).__name__}: {error}")


def _whole_job_failed(out: JobOutput) -> bool:
    """No item answered: the plugin did not load, hung or crashed before its first batch."""
    return bool(out.errors) and not any(v is not None for v in out.answers.values())


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
    grid = Grid(subset, options.profile, options.seed, tuple(e for e in entries if e.is_attack),
                tuple(e for e in entries if e.track == "defense"),
                tuple(sorted(models, key=lambda m: m.name != "dense")),
                content_hash(paths.PACKAGE / "baselines" / REFERENCE))
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
        progress.add(sum(len(g.rounds) for g in groups) + len(transfers), "defenses and transfer")
        driver.phase([*groups, *transfers])
    report.seconds = time.time() - t0
    store.set_meta("last_run_report", report.as_meta())
    return report
