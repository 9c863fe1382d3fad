"""`arena score`: build the grid, run the jobs in the sandbox, write cells as they finish.

The pipeline as data (after the NIPS 2017 competition's eval_lib): a cell's key is the
content hash of everything that determines it; the store holds finished cells; scoring
and the leaderboard are pure functions of the store. Order of work per target model:
1. attack jobs — one sandbox job per (attack, model) over all missing budgets; the harness
   projects each output into its budget, clips, rounds to int16 and records the SNR;
2. defense jobs — one sandbox job per (defense, model) over the clean audio and every
   attacked set it has not scored yet, shuffled and renamed (no transcripts, no names);
3. transfer — audio crafted against the dense model, transcribed by each compressed model.
Failure policy: a failed attack batch gets the clean audio (no credit) and an error on
the cell; a failed defense batch scores WER 1.0 on its utterances and an error.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import arena
from arena.asr.metrics import edit_counts
from arena.core.audio import AudioBatch, pad_waves
from arena.core.hashing import sha256_file as file_sha256
from arena.data.batching import AudioSet, length_batches
from arena.data.corpus import ensure_split, resolve_seed, seed_tag
from arena.data.manifest import read_manifest
from arena.plugins.api import Budget
from arena.sandbox import SandboxLimits, run_attack_job, run_defense_job
from arena.score.profiles import Profile
from arena.score.store import ResultsStore
from arena.score.targets import choose_target
from arena.submissions.entries import Entry
from arena.zoo import registry as models_io
from arena.zoo.registry import load_model

SCORER_VERSION = "2"  # 2: the int16 grid is k / 32768 (clean audio passes unchanged)


def content_key(**parts) -> str:
    blob = json.dumps({"harness": f"{arena.__version__}/{SCORER_VERSION}", **parts}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


@dataclass
class TargetSpec:
    name: str
    path: Path
    sha256: str


@dataclass
class DataSubset:
    split: str
    seed_tag: str
    manifest_sha256: str
    ids: list[str]
    texts: list[str]
    waves: list[np.ndarray]
    targets: list[str]

    @property
    def key(self) -> dict:
        return {"split": self.split, "manifest": self.manifest_sha256,
                "ids": hashlib.sha256("\n".join(self.ids).encode()).hexdigest()}

    def durations(self):
        return np.array([len(w) / 16_000 for w in self.waves])


def load_subset(profile: Profile, seed: int | None = None, progress: bool = True,
                manifest=None) -> DataSubset:
    """A fixed, seeded sample of the profile's split (the whole split when it is smaller),
    or of any manifest in the corpus format when `manifest` is given."""

    if manifest is None:
        corpus_seed = resolve_seed(profile.split, seed)
        manifest, split, tag = ensure_split(profile.split, corpus_seed, progress=progress), \
            profile.split, seed_tag(corpus_seed)
    else:
        manifest, tag = Path(manifest), "manifest"
        split = manifest.stem
    utts = read_manifest(manifest)
    if profile.n_utterances < len(utts):
        pick = sorted(random.Random(f"subset:{split}").sample(range(len(utts)), profile.n_utterances))
        utts = [utts[i] for i in pick]
    data = AudioSet.from_utterances(utts)
    checksum = manifest.with_suffix(".sha256")
    manifest_sha = checksum.read_text().split()[0] if checksum.is_file() else file_sha256(manifest)
    return DataSubset(split, tag, manifest_sha, data.ids, data.texts,
                      [data.wave(i) for i in range(len(data))],
                      [choose_target(t, i) for t, i in zip(data.texts, data.ids)])


@dataclass
class ScoreOptions:
    profile: Profile
    device: str = "cpu"
    trusted: bool = False
    seed: int = 0
    wall_s: float = 900.0
    progress: bool = True
    log: object = print


@dataclass
class ScoreReport:
    computed: int = 0
    reused: int = 0
    failed_jobs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    sandbox_startup_s: float = 0.0
    job_wall_s: float = 0.0


def _batches(subset: DataSubset, profile: Profile, with_transcripts=False, with_targets=False):

    out = []
    for idx in length_batches(subset.durations(), profile.batch_seconds):
        wave, lengths = pad_waves([subset.waves[i] for i in idx])
        out.append((idx, AudioBatch(ids=[subset.ids[i] for i in idx], wave=wave, lengths=lengths,
                                    transcripts=[subset.texts[i] for i in idx] if with_transcripts else None,
                                    targets=[subset.targets[i] for i in idx] if with_targets else None)))
    return out


def _counts(reference: str, hypothesis: str):
    we, wn = edit_counts(reference, hypothesis, "word")
    ce, cn = edit_counts(reference, hypothesis, "char")
    return we, wn, ce, cn


class Scorer:
    def __init__(self, store: ResultsStore, subset: DataSubset, options: ScoreOptions):
        self.store, self.subset, self.opt = store, subset, options
        self.report = ScoreReport()

    # ------------------------------------------------------------ keys
    def attack_key(self, attack: Entry, budget: str, model: TargetSpec) -> str:
        return content_key(kind="attack", attack=attack.content_hash, budget=budget,
                           model=model.sha256, data=self.subset.key, seed=self.opt.seed,
                           effort=self.opt.profile.effort)

    def defense_key(self, attack_key: str, defense: Entry, model: TargetSpec) -> str:
        return content_key(kind="defense", attack_cell=attack_key, defense=defense.content_hash,
                           model=model.sha256, seed=self.opt.seed, effort=self.opt.profile.effort)

    def clean_key(self, defense: Entry, model: TargetSpec) -> str:
        return content_key(kind="clean", defense=defense.content_hash, model=model.sha256,
                           data=self.subset.key, seed=self.opt.seed, effort=self.opt.profile.effort)

    def transfer_key(self, attack_key: str, model: TargetSpec) -> str:
        return content_key(kind="transfer", attack_cell=attack_key, model=model.sha256)

    def _axes(self, **kw):
        return dict(split=self.subset.split, seed_tag=self.subset.seed_tag,
                    profile=self.opt.profile.name, **kw)

    # ------------------------------------------------------------ attacks
    def run_attack(self, attack: Entry, model: TargetSpec, budgets: list[str],
                   regenerate: bool = False) -> None:
        """One sandbox job for every missing budget of (attack, model). With `regenerate`,
        only the adversarial audio of cells whose artifact file is missing is recomputed:
        the audio is not versioned with the store, so a fresh clone has the cells only, and
        a new defense needs the audio (the attack is seeded, so it is the same audio)."""

        todo = []
        for b in budgets:
            key = self.attack_key(attack, b, model)
            cell = self.store.get(key)
            if regenerate:
                if cell is not None and cell["artifact"] and not self.store.has_artifact(cell["artifact"]):
                    todo.append((b, key))
            elif cell is None and self.store.claim(key):
                todo.append((b, key))
        if regenerate and not todo:
            return
        if not todo:
            self.report.reused += len(budgets)
            return
        if not regenerate:
            self.report.reused += len(budgets) - len(todo)
        targeted = attack.track == "targeted-attack"
        plan = _batches(self.subset, self.opt.profile, with_transcripts=True, with_targets=targeted)
        batches, batch_budgets = [], []
        for b, _ in todo:
            for _, batch in plan:
                batches.append(batch)
                batch_budgets.append(Budget.parse(b))
        result = run_attack_job(attack.spec, model.path, batches, batch_budgets,
                                device=self.opt.device, trusted=self.opt.trusted, seed=self.opt.seed,
                                effort=self.opt.profile.effort, limits=self._limits())
        self._account(result, f"attack {attack.name} on {model.name}")
        per_budget = len(plan)
        for j, (b, key) in enumerate(todo):
            outcomes = result.batches[j * per_budget:(j + 1) * per_budget] if result.batches else []
            budget = Budget.parse(b)
            ids, snrs, waves, errors, seconds = [], [], [], [], 0.0
            for i, (idx, batch) in enumerate(plan):
                outcome = outcomes[i] if i < len(outcomes) else None
                adv = outcome.adv if outcome is not None and outcome.ok else None
                if adv is None:  # failure policy: the clean input, no credit
                    why = outcome.error if outcome is not None else (result.error or "no output")
                    errors.append(f"batch {i}: {why}")
                    adv = batch.wave
                seconds += outcome.seconds if outcome is not None else 0.0
                projected = budget.project(batch.wave, adv, batch.lengths)
                snr = budget.achieved_snr(batch.wave, projected, batch.lengths)
                for row, uid in enumerate(batch.ids):
                    ids.append(uid)
                    snrs.append(float(snr[row]))
                    waves.append(projected[row, : int(batch.lengths[row])])
            error = "; ".join(errors)[:2000] or None
            if result.status != "ok" and not error:
                error = result.error
            artifact = self.store.write_artifact(key, _pack_waves(ids, waves))
            if regenerate:
                continue
            finite = [s for s in snrs if np.isfinite(s)]
            metrics = dict(ids=ids, snr_db=[round(s, 3) if np.isfinite(s) else None for s in snrs],
                           mean_snr_db=float(np.mean(finite)) if finite else None,
                           forward_calls=result.forward_calls, backward_calls=result.backward_calls,
                           seconds=round(seconds, 3), track=attack.track,
                           failed_batches=len(errors), n=len(ids))
            self.store.put(key, "attack", metrics, error=error, artifact=artifact,
                           **self._axes(attack=attack.name, budget=b, model=model.name))
            self.report.computed += 1

    # ------------------------------------------------------------ defenses
    def run_defense(self, defense: Entry, model: TargetSpec, attacks: list[Entry],
                    budgets: list[str]) -> None:
        """One sandbox job over every set this defense still has to transcribe on `model`."""

        sets = []  # (cell key, kind, attack entry|None, budget|None, waves by id)
        ck = self.clean_key(defense, model)
        if self.store.claim(ck):
            sets.append((ck, "clean", None, None, dict(zip(self.subset.ids, self.subset.waves))))
        else:
            self.report.reused += 1
        for attack in attacks:
            for b in budgets:
                ak = self.attack_key(attack, b, model)
                cell = self.store.get(ak)
                if cell is None:
                    continue  # its attack job failed to record; nothing to defend
                dk = self.defense_key(ak, defense, model)
                if not self.store.claim(dk):
                    self.report.reused += 1
                    continue
                waves = self._attack_audio(attack, b, model, cell)
                if waves is None:
                    self.store.release(dk)
                    continue
                sets.append((dk, "defense", attack, b, waves))
        if not sets:
            return
        # shuffle and rename: the defense sees anonymous audio only
        pool = [(s, uid, wave) for s, (_, _, _, _, waves) in enumerate(sets) for uid, wave in waves.items()]
        rng = random.Random(f"defense:{self.opt.seed}:{defense.name}:{model.name}")
        rng.shuffle(pool)
        names = [f"x{n:06d}" for n in range(len(pool))]
        durations = np.array([len(w) / 16_000 for _, _, w in pool])
        batches, members = [], []
        for idx in length_batches(durations, self.opt.profile.batch_seconds):
            wave, lengths = pad_waves([pool[i][2] for i in idx])
            batches.append(AudioBatch(ids=[names[i] for i in idx], wave=wave, lengths=lengths))
            members.append(idx)
        result = run_defense_job(defense.spec, model.path, batches, device=self.opt.device,
                                 trusted=self.opt.trusted, seed=self.opt.seed,
                                 effort=self.opt.profile.effort, limits=self._limits())
        self._account(result, f"defense {defense.name} on {model.name}")
        hyps: dict[int, str | None] = {}
        batch_error: dict[int, str] = {}
        for b, idx in enumerate(members):
            outcome = result.batches[b] if b < len(result.batches) else None
            ok = outcome is not None and outcome.ok and outcome.transcripts is not None
            for row, i in enumerate(idx):
                hyps[i] = outcome.transcripts[row] if ok else None
                if not ok:
                    batch_error[i] = (outcome.error if outcome is not None else result.error) or "no output"
        text_of = dict(zip(self.subset.ids, self.subset.texts))
        target_of = dict(zip(self.subset.ids, self.subset.targets))
        by_set: dict[int, list[int]] = {}
        for i, (s, _, _) in enumerate(pool):
            by_set.setdefault(s, []).append(i)
        for s, (key, kind, attack, budget, waves) in enumerate(sets):
            order = sorted(by_set.get(s, []), key=lambda i: self.subset.ids.index(pool[i][1]))
            m = dict(ids=[], word_edits=[], words=[], char_edits=[], chars=[], hypotheses=[])
            errors = set()
            targeted = attack is not None and attack.track == "targeted-attack"
            if targeted:
                m.update(target_exact=[], target_char_edits=[], target_chars=[])
            for i in order:
                uid = pool[i][1]
                ref, hyp = text_of[uid], hyps.get(i)
                we, wn, ce, cn = _counts(ref, hyp or "")
                if hyp is None:  # failure policy: WER 1.0 on this utterance
                    we, ce = wn, cn
                    errors.add(batch_error.get(i, "no output"))
                m["ids"].append(uid)
                m["word_edits"].append(we)
                m["words"].append(wn)
                m["char_edits"].append(ce)
                m["chars"].append(cn)
                m["hypotheses"].append(hyp)
                if targeted:
                    te, tn = edit_counts(target_of[uid], hyp or "", "char")
                    m["target_exact"].append(bool(hyp is not None and hyp.strip() == target_of[uid]))
                    m["target_char_edits"].append(te if hyp is not None else tn)
                    m["target_chars"].append(tn)
            if attack is not None:
                acell = self.store.get(self.attack_key(attack, budget, model))
                m["track"] = attack.track
                m["mean_snr_db"] = acell["metrics"].get("mean_snr_db")
                m["attack_error"] = acell["error"]
            error = "; ".join(sorted(errors))[:2000] or None
            self.store.put(key, kind, m, error=error, **self._axes(
                attack=attack.name if attack else None, budget=budget, defense=defense.name,
                model=model.name))
            self.report.computed += 1

    # ------------------------------------------------------------ transfer
    def run_transfer(self, source: TargetSpec, model: TargetSpec, attacks: list[Entry],
                     budgets: list[str]) -> None:
        """Audio crafted against `source`, transcribed by `model` without defense (harness
        side: only our own model code runs here, no submission code)."""

        todo = []
        for attack in attacks:
            if attack.track != "attack":
                continue
            for b in budgets:
                ak = self.attack_key(attack, b, source)
                cell = self.store.get(ak)
                tk = self.transfer_key(ak, model)
                if cell is None:
                    continue
                if self.store.claim(tk):
                    todo.append((tk, attack, b, cell))
                elif self.store.has(tk):
                    self.report.reused += 1
        if not todo:
            return
        net = load_model(model.path, device=self.opt.device)
        text_of = dict(zip(self.subset.ids, self.subset.texts))
        for tk, attack, b, cell in todo:
            waves = self._attack_audio(attack, b, source, cell)
            if waves is None:
                self.store.release(tk)
                continue
            ids = list(waves)
            hyps = {}
            for idx in length_batches(np.array([len(waves[u]) for u in ids]) / 16_000,
                                      self.opt.profile.batch_seconds):
                wave, lengths = pad_waves([waves[ids[i]] for i in idx])
                for i, h in zip(idx, net.transcribe(wave.to(self.opt.device), lengths.to(self.opt.device))):
                    hyps[ids[i]] = h
            m = dict(ids=[], word_edits=[], words=[], char_edits=[], chars=[], track=attack.track)
            for uid in ids:
                we, wn, ce, cn = _counts(text_of[uid], hyps[uid])
                for k, v in zip(("ids", "word_edits", "words", "char_edits", "chars"), (uid, we, wn, ce, cn)):
                    m[k].append(v)
            self.store.put(tk, "transfer", m, **self._axes(attack=attack.name, budget=b,
                                                           model=model.name, source_model=source.name))
            self.report.computed += 1

    # ------------------------------------------------------------ helpers
    def _attack_audio(self, attack: Entry, budget: str, model: TargetSpec, cell: dict):
        """The adversarial audio of an attack cell by utterance id, regenerated first when
        its file is missing; None (and a failed job) when it cannot be had."""
        if not self.store.has_artifact(cell["artifact"] or ""):
            self.run_attack(attack, model, list(self.opt.profile.budgets), regenerate=True)
        if not self.store.has_artifact(cell["artifact"] or ""):
            self.report.failed_jobs.append(f"attack {attack.name} on {model.name} ({budget}): "
                                           "adversarial audio missing and not regenerated")
            return None
        return _unpack_waves(self.store.read_artifact(cell["artifact"]))

    def _limits(self):

        return SandboxLimits(wall_s=self.opt.wall_s, cpu_s=self.opt.wall_s * 4)

    def _account(self, result, what: str) -> None:
        self.report.sandbox_startup_s += getattr(result, "startup_s", 0.0) or 0.0
        self.report.job_wall_s += getattr(result, "wall_s", 0.0) or 0.0
        if result.status != "ok":
            self.report.failed_jobs.append(f"{what}: {result.status}: {result.error}")


def _pack_waves(ids, waves) -> dict:
    flat = torch.cat([w.float().flatten() for w in waves]) if waves else torch.zeros(0)
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    index = torch.tensor(list(range(len(ids))), dtype=torch.long)
    return {"audio": flat, "lengths": lengths, "order": index,
            "ids": torch.tensor(list(json.dumps(ids).encode()), dtype=torch.uint8)}


def _unpack_waves(tensors: dict) -> dict[str, np.ndarray]:
    ids = json.loads(bytes(tensors["ids"].tolist()).decode())
    out, start = {}, 0
    for uid, n in zip(ids, tensors["lengths"].tolist()):
        out[uid] = tensors["audio"][start:start + n].numpy()
        start += n
    return out


def target_specs(names: list[str] | None = None) -> list[TargetSpec]:

    names = names or models_io.available()
    if not names:
        raise FileNotFoundError(f"the model zoo ({models_io.zoo_path('dense').parent}) is empty")
    specs = []
    for n in names:
        p = models_io.resolve(n)
        specs.append(TargetSpec(n, p, file_sha256(p)))
    return specs


def run_score(store: ResultsStore, options: ScoreOptions, entries: list[Entry],
              models: list[TargetSpec], subset: DataSubset | None = None,
              problems: list[str] | None = None) -> ScoreReport:
    """Run every missing cell of the grid; finished cells are reused.

    `problems` (submissions that could not be loaded) are kept in the store's meta so the
    leaderboard lists them. An error of the harness itself in one job is reported and the
    run goes on with the next job; that job's claims are released for the next run.
    """

    t0 = time.time()
    subset = subset or load_subset(options.profile, progress=options.progress)
    scorer = Scorer(store, subset, options)
    attacks = [e for e in entries if e.is_attack]
    defenses = [e for e in entries if e.track == "defense"]
    budgets = list(options.profile.budgets)
    dense = next((m for m in models if m.name == "dense"), None)
    store.set_meta("last_run", dict(profile=options.profile.name, split=subset.split,
                                    seed_tag=subset.seed_tag, n_utterances=len(subset.ids),
                                    budgets=budgets, device=options.device,
                                    models=[m.name for m in models],
                                    entries=[e.name for e in entries], started=t0,
                                    problems=list(problems or [])))
    steps = len(models) * (len(attacks) + len(defenses)) + (len(models) - 1 if dense else 0)
    columns = [TextColumn("[bold]score"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.description}"), TimeElapsedColumn()]
    with Progress(*columns, disable=not options.progress, transient=False) as bar:
        task = bar.add_task("", total=steps)

        def step(what: str, job, *args) -> None:
            bar.update(task, description=what)
            try:
                job(*args)
            except Exception as e:  # a harness bug must not lose the rest of the run
                store.release_all()
                scorer.report.failed_jobs.append(f"{what}: harness error: {type(e).__name__}: {e}")
            bar.advance(task)

        # dense first, so transfer has its source audio
        for model in sorted(models, key=lambda m: m.name != "dense"):
            for attack in attacks:
                step(f"{attack.name} -> {model.name}", scorer.run_attack, attack, model, budgets)
            for defense in defenses:
                step(f"{defense.name} on {model.name}", scorer.run_defense, defense, model,
                     attacks, budgets)
            if dense is not None and model is not dense and options.profile.transfer:
                step(f"transfer dense -> {model.name}", scorer.run_transfer, dense, model,
                     attacks, budgets)
    scorer.report.seconds = time.time() - t0
    store.set_meta("last_run_report", dict(seconds=round(scorer.report.seconds, 1),
                                           computed=scorer.report.computed,
                                           reused=scorer.report.reused,
                                           failed_jobs=scorer.report.failed_jobs,
                                           sandbox_startup_s=round(scorer.report.sandbox_startup_s, 2),
                                           job_wall_s=round(scorer.report.job_wall_s, 2)))
    return scorer.report
