"""Running one job of the plan: attack, adaptive attack, a defense's rounds or transfer. Each
function takes the job and what it needs by value and returns its results; none touches the
store, so the same function runs in a local thread or on a Ray worker and gives the same
cells.

Failure policy: a failed attack batch gets the clean audio (no credit) and an error on the
cell; a failed defense batch scores WER 1.0 on its utterances and an error; so does a defense
whose purify fails under the adaptive attack (on the utterances it left unanswered).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from arena.asr.metrics import edit_counts
from arena.core.audio import SAMPLE_RATE, AudioBatch, pad_waves
from arena.core.budget import Budget
from arena.core.text import normalize_text
from arena.data.batching import length_batches
from arena.plugins.spec import copy_submission, submission_files
from arena.sandbox import JobResult, SandboxLimits, new_jobdir, run_attack_job, run_defense_rounds
from arena.sandbox.jobs import remove_tree
from arena.sandbox.serve import PurifyError, PurifyServer
from arena.score.adaptive import (
    ADAPTIVE_ATTACK,
    Randomness,
    Reference,
    attack_batch,
    oracle_transcripts,
    purify_randomness,
)
from arena.score.enforce import enforce_budget, rounded_snr
from arena.score.plan import (
    AdaptiveJob,
    AttackJob,
    CellKind,
    DefenseGroup,
    Grid,
    TransferJob,
    submission_of,
    with_submission_folder,
)
from arena.submissions.manifest import content_hash
from arena.zoo.registry import load_model


@dataclass(frozen=True)
class RunContext:
    device: str = "cpu"
    trusted: bool = False
    wall_s: float = 900.0

    def limits(self) -> SandboxLimits:
        return SandboxLimits(wall_s=self.wall_s, cpu_s=self.wall_s * 4)


@dataclass
class Cell:
    """A finished cell, ready for the store (`waves`: the adversarial audio, if any)."""
    key: str
    kind: CellKind
    metrics: dict
    axes: dict
    error: str | None = None
    waves: dict[str, torch.Tensor] | None = None


@dataclass
class JobOutput:
    cells: list[Cell] = field(default_factory=list)
    answers: dict[str, str | None] = field(default_factory=dict)   # defense rounds: name -> text
    errors: dict[str, str] = field(default_factory=dict)           # defense rounds: name -> why
    failure: str | None = None     # the job as a whole failed (for the run report)
    startup_s: float = 0.0
    wall_s: float = 0.0


def _batches(grid: Grid, waves: list[np.ndarray], ids: list[str], *, attack: bool = False,
             targeted: bool = False) -> list[tuple[list[int], AudioBatch]]:
    """Length-bucketed padded batches of `waves` (index lists and batches)."""
    text_of, target_of = grid.subset.text_of(), grid.subset.target_of()
    durations = np.array([len(w) / SAMPLE_RATE for w in waves])
    out = []
    for idx in length_batches(durations, grid.profile.batch_seconds):
        wave, lengths = pad_waves([waves[i] for i in idx])
        names = [ids[i] for i in idx]
        out.append((idx, AudioBatch(names, wave, lengths,
                                    transcripts=[text_of[n] for n in names] if attack else None,
                                    targets=[target_of[n] for n in names] if targeted else None)))
    return out


def _sandbox_output(result: JobResult, out: JobOutput, what: str) -> None:
    out.startup_s, out.wall_s = result.startup_s, result.wall_s
    if result.status != "ok":
        out.failure = f"{what}: {result.status}: {result.error}"


# ------------------------------------------------------------------ attacks
def run_attack(job: AttackJob, grid: Grid, ctx: RunContext) -> JobOutput:
    """One sandbox process for every budget of the job; the harness projects each output
    into its budget, clips, rounds to int16 and records the SNR."""
    targeted = job.attack.track == "targeted-attack"
    plan = _batches(grid, grid.subset.waves, grid.subset.ids, attack=True, targeted=targeted)
    batches = [b for _ in job.budgets for _, b in plan]
    budgets = [Budget.parse(b) for b in job.budgets for _ in plan]
    result = run_attack_job(job.attack.spec, job.model.path, batches, budgets, device=ctx.device,
                            trusted=ctx.trusted, seed=grid.seed_for(job.attack),
                            effort=grid.profile.effort, limits=ctx.limits())
    out = JobOutput()
    _sandbox_output(result, out, f"attack {job.name}")
    for j, (budget_id, key) in enumerate(zip(job.budgets, job.keys)):
        outcomes = result.batches[j * len(plan):(j + 1) * len(plan)]
        out.cells.append(_attack_cell(job, grid, budget_id, key, plan, outcomes, result))
    return out


def _attack_cell(job: AttackJob, grid: Grid, budget_id: str, key: str, plan, outcomes,
                 result: JobResult) -> Cell:
    budget = Budget.parse(budget_id)
    waves, snrs, errors, seconds, calls = {}, [], [], 0.0, [0, 0]
    for i, (_, batch) in enumerate(plan):
        outcome = outcomes[i] if i < len(outcomes) else None
        if outcome is not None:
            calls[0] += outcome.forward_calls
            calls[1] += outcome.backward_calls
        adv = outcome.adv if outcome is not None and outcome.ok else None
        if adv is None:
            errors.append(f"batch {i}: {(outcome.error if outcome else None) or result.error or 'no output'}")
        seconds += outcome.seconds if outcome is not None else 0.0
        projected, snr = enforce_budget(budget, batch.wave, adv, batch.lengths)
        for row, uid in enumerate(batch.ids):
            waves[uid] = projected[row, : int(batch.lengths[row])]
            snrs.append(float(snr[row]))
    error = "; ".join(errors)[:2000] or (result.error if result.status != "ok" else None)
    finite = [s for s in snrs if np.isfinite(s)]
    metrics = dict(ids=list(waves), snr_db=[rounded_snr(s) for s in snrs],
                   mean_snr_db=float(np.mean(finite)) if finite else None,
                   forward_calls=calls[0], backward_calls=calls[1], counts_self_reported=True,
                   seconds=round(seconds, 3), track=job.attack.track,
                   failed_batches=len(errors), n=len(waves))
    axes = grid.axes(attack=job.attack.name, budget=budget_id, model=job.model.name)
    return Cell(key, CellKind.ATTACK, metrics, axes, error, waves)


# ------------------------------------------------------------------ adaptive
def run_adaptive(job: AdaptiveJob, grid: Grid, ctx: RunContext) -> JobOutput:
    """The reference attack through one defense (adaptive.py) for each budget of the job; the
    audio is projected like an attack's and joins the defense's anonymous rounds."""
    reference = Reference.load()
    # the attack runs in this process, beside other jobs: one thread each, like a sandbox job
    torch.set_num_threads(1)
    net = load_model(job.model.path, device=ctx.device)
    for p in net.parameters():
        p.requires_grad_(False)
    plan = _batches(grid, grid.subset.waves, grid.subset.ids, attack=True)
    out = JobOutput()
    server = PurifyServer(job.defense.spec, job.model.path, device=ctx.device, limits=ctx.limits(),
                          trusted=ctx.trusted, seed=grid.seed_for(job.defense), effort=grid.profile.effort)
    try:
        with server:
            # always through purify: what the defense says it overrides (self-reported) only
            # labels the cell, so a forged answer cannot buy a weaker attack
            randomness = purify_randomness(server, plan[0][1])
            for budget_id, key in zip(job.budgets, job.keys):
                out.cells.append(_adaptive_cell(job, grid, budget_id, key, plan, randomness, reference,
                                                net, server))
    except PurifyError as e:       # the server did not start or load: every utterance fails
        done = {c.key for c in out.cells}
        out.cells += [_adaptive_cell(job, grid, b, k, plan, None, reference, net, None, str(e))
                      for b, k in zip(job.budgets, job.keys) if k not in done]
    if server.result is not None:
        _sandbox_output(server.result, out, job.name)
    return out


def _adaptive_cell(job: AdaptiveJob, grid: Grid, budget_id: str, key: str, plan,
                   randomness: Randomness | None, reference: Reference, net,
                   server: PurifyServer | None, failure: str | None = None) -> Cell:
    budget = Budget.parse(budget_id)
    axes = grid.axes(attack=ADAPTIVE_ATTACK, budget=budget_id, defense=job.defense.name,
                     model=job.model.name)
    overrides = server.overrides if server is not None else {}
    eot = grid.profile.eot if randomness in (Randomness.RANDOM, Randomness.KEYED) else 1
    metrics = dict(track="adaptive", eot=eot, reference=reference.content_hash,
                   steps=reference.steps(grid.profile.effort),
                   oracle=oracle_label(overrides.get("purify"), overrides.get("transcribe")))
    waves, snrs, oracle_hyps, failed = {}, [], [], []
    steps = reference.steps(grid.profile.effort)
    for _, batch in plan:
        adv = None
        if failure is None and server is not None:
            try:
                adv = attack_batch(reference, net, server, batch, budget, steps, eot,
                                   dither=randomness is Randomness.KEYED)
            except PurifyError as e:
                failure = str(e)
        projected, snr = enforce_budget(budget, batch.wave, adv, batch.lengths)
        hyps = None
        if adv is not None and server is not None:
            try:
                hyps = oracle_transcripts(net, server, projected, batch.lengths)
            except PurifyError as e:
                failure = str(e)
        if hyps is None:
            failed += batch.ids
        for row, uid in enumerate(batch.ids):
            waves[uid] = projected[row, : int(batch.lengths[row])]
            snrs.append(float(snr[row]))
            oracle_hyps.append(hyps[row] if hyps is not None else None)
    finite = [s for s in snrs if np.isfinite(s)]
    metrics.update(ids=list(waves), snr_db=[rounded_snr(s) for s in snrs], n=len(waves),
                   mean_snr_db=float(np.mean(finite)) if finite else None,
                   oracle_hypotheses=oracle_hyps, purify_failed=failed)
    error = f"the defense's purify failed: {failure}"[:2000] if failure else None
    return Cell(key, CellKind.ADAPTIVE, metrics, axes, error, waves)


def oracle_label(purify: bool | None, transcribe: bool | None) -> str:
    """How the adaptive attack reached the defense, from what its class overrides
    (self-reported by its process, so a label, never a reason to attack less): through its
    own purify ("bpda"), through the identity to the bare model because it only implements
    transcribe ("transfer"), or exactly (neither: the defense is the model, "white-box")."""
    if purify is None:
        return "failed"
    return "bpda" if purify else ("transfer" if transcribe else "white-box")


# ------------------------------------------------------------------ defenses
def run_defense_group(group: DefenseGroup, grid: Grid, ctx: RunContext) -> JobOutput:
    """Every anonymous round of one (defense, model), each in a sandboxed process of its
    own; then the group's cells (answers mapped back from the names the defense saw)."""
    plans = [_batches(grid, r.waves, [item.name for item in r.items]) for r in group.rounds]
    results = run_defense_rounds(group.defense.spec, group.model.path,
                                 [[b for _, b in plan] for plan in plans], device=ctx.device,
                                 trusted=ctx.trusted, seed=grid.seed_for(group.defense),
                                 effort=grid.profile.effort, limits=ctx.limits())
    out = JobOutput()
    outputs = []
    for plan, result in zip(plans, results):
        answered = JobOutput()
        _sandbox_output(result, answered, f"defense {group.name}")
        out.failure = out.failure or answered.failure   # one failure per group in the report
        out.startup_s += answered.startup_s
        out.wall_s += answered.wall_s
        for b, (_, batch) in enumerate(plan):
            outcome = result.batches[b] if b < len(result.batches) else None
            texts = outcome.transcripts if outcome is not None and outcome.ok else None
            for row, name in enumerate(batch.ids):
                answered.answers[name] = texts[row] if texts is not None else None
                if texts is None:
                    why = outcome.error if outcome else None
                    answered.errors[name] = why or result.error or "no output"
        outputs.append(answered)
    out.cells = defense_cells(group, outputs, grid)
    return out


def defense_cells(group: DefenseGroup, outputs: list[JobOutput], grid: Grid) -> list[Cell]:
    """The group's cells once all its rounds have answered (missing answers: WER 1.0)."""
    answers: dict[tuple[int, str], str | None] = {}
    why: dict[tuple[int, str], str] = {}
    for job, out in zip(group.rounds, outputs):
        for item in job.items:
            answers[(item.version, item.uid)] = out.answers.get(item.name)
            if item.name in out.errors or item.name not in out.answers:
                why[(item.version, item.uid)] = out.errors.get(item.name) or out.failure or "no output"
    cells = []
    for v, s in enumerate(group.sets):
        hyps = {uid: answers.get((v, uid)) for uid in s.ids}
        errors = {why[(v, uid)] for uid in s.ids if (v, uid) in why}
        source = s.attack_cell
        if s.adaptive and source is not None:  # where its purify failed under attack, it lost
            for uid in source["metrics"].get("purify_failed", []):
                hyps[uid] = None
                errors.add(source["error"] or "purify failed")
        targeted = s.attack is not None and s.attack.track == "targeted-attack"
        m = transcript_metrics(grid, hyps, targeted=targeted)
        if source is not None:
            m.update(track="adaptive" if s.adaptive or s.attack is None else s.attack.track,
                     mean_snr_db=source["metrics"].get("mean_snr_db"),
                     attack_error=source["error"])
        name = ADAPTIVE_ATTACK if s.adaptive else (s.attack.name if s.attack else None)
        axes = grid.axes(attack=name, budget=s.budget, defense=group.defense.name,
                         model=group.model.name)
        cells.append(Cell(s.key, s.kind, m, axes, "; ".join(sorted(errors))[:2000] or None))
    return cells


KEEP_CHARS = 200   # a stored transcript keeps max(this, 4x its reference) characters


def _kept(hyp: str | None, reference: str) -> str | None:
    """The transcript as the cell stores it (counts are taken on all of it): a defense's
    transcripts of up to 10,000 characters each would otherwise put megabytes in every
    cell of the versioned store; one cut short ends in "…", so it never equals the model's
    own transcript (formulas._oracles) by being cut."""
    cap = max(KEEP_CHARS, 4 * len(reference))
    return hyp if hyp is None or len(hyp) <= cap else hyp[:cap] + "…"


def transcript_metrics(grid: Grid, hyps: dict[str, str | None], targeted: bool = False) -> dict:
    """Per-utterance edit counts against the references (and the targets), in subset order.
    A missing transcript (None) counts as every word wrong."""
    text_of, target_of = grid.subset.text_of(), grid.subset.target_of()
    m: dict[str, list] = dict(ids=[], word_edits=[], words=[], char_edits=[], chars=[], hypotheses=[])
    if targeted:
        m.update(target_exact=[], target_char_edits=[], target_chars=[])
    for uid in (u for u in grid.subset.ids if u in hyps):
        hyp = hyps[uid]
        we, wn = edit_counts(text_of[uid], hyp or "", "word")
        ce, cn = edit_counts(text_of[uid], hyp or "", "char")
        if hyp is None:
            we, ce = wn, cn
        for k, v in zip(("ids", "word_edits", "words", "char_edits", "chars", "hypotheses"),
                        (uid, we, wn, ce, cn, _kept(hyp, text_of[uid]))):
            m[k].append(v)
        if targeted:
            te, tn = edit_counts(target_of[uid], hyp or "", "char")
            # in the normal form, as the edit counts are (docs/design.md, Text): compared
            # raw, "Turn off the lights." missed a target its char edits counted as reached
            m["target_exact"].append(bool(hyp is not None
                                          and normalize_text(hyp) == normalize_text(target_of[uid])))
            m["target_char_edits"].append(te if hyp is not None else tn)
            m["target_chars"].append(tn)
    return m


# ------------------------------------------------------------------ transfer
def run_transfer(job: TransferJob, grid: Grid, ctx: RunContext) -> JobOutput:
    """Our own model code only (no submission runs here), so no sandbox."""
    net = load_model(job.model.path, device=ctx.device)
    out = JobOutput()
    for s in job.sets:
        ids = list(s.ids)
        hyps: dict[str, str | None] = {}
        for _, batch in _batches(grid, [s.waves[u] for u in ids], ids):
            texts = net.transcribe(batch.wave.to(ctx.device), batch.lengths.to(ctx.device))
            hyps.update(zip(batch.ids, texts))
        metrics = {**transcript_metrics(grid, hyps), "track": s.attack.track if s.attack else "attack"}
        metrics.pop("hypotheses")
        axes = grid.axes(attack=s.attack.name if s.attack else None, budget=s.budget,
                         model=job.model.name, source_model=job.source.name)
        out.cells.append(Cell(s.key, s.kind, metrics, axes))
    return out


class SubmissionChangedError(RuntimeError):
    """The submission's folder no longer holds what its cells are keyed by."""


def _pinned(job, dest: Path):
    """The job pointed at a private copy of its submission, checked against the content
    hash its cells are keyed by (as a Ray worker's copy is, cluster._localised). The job
    otherwise read the live folder when it started: an `arena submit --replace` between
    discovery and the job ran the new code under the old version's keys, and putting the
    old version back then reused those cells for code that never produced them."""
    entry = submission_of(job)
    if entry is None:
        raise TypeError(f"{type(job).__name__} runs no submission to pin")
    folder = dest / "submission"
    folder.mkdir()
    copy_submission(submission_files(entry.path), folder)   # what the hash covers; no links
    got = content_hash(folder)
    if got != entry.content_hash:
        raise SubmissionChangedError(f"submission {entry.name} changed since this run read it "
                                     f"(content hash {got[:12]}, expected "
                                     f"{entry.content_hash[:12]}); the next run scores it")
    return with_submission_folder(job, folder)


def execute(job: AttackJob | AdaptiveJob | DefenseGroup | TransferJob, grid: Grid,
            ctx: RunContext) -> JobOutput:
    """Run any job of the plan (what an executor calls)."""
    if isinstance(job, TransferJob):
        return run_transfer(job, grid, ctx)
    dest = new_jobdir(None)
    try:
        return _execute(_pinned(job, dest), grid, ctx)
    finally:
        remove_tree(dest)


def _execute(job: AttackJob | AdaptiveJob | DefenseGroup, grid: Grid, ctx: RunContext) -> JobOutput:
    if isinstance(job, AttackJob):
        return run_attack(job, grid, ctx)
    if isinstance(job, AdaptiveJob):
        return run_adaptive(job, grid, ctx)
    return run_defense_group(job, grid, ctx)


