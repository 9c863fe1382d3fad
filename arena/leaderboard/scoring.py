"""`arena score` as one function: choose the entries and the store, refuse what may not be
published, run the grid (locally or on a Ray cluster), then write the board's site.

The CLI only parses options into a `ScoreRequest` and prints the `ScoreOutcome`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from arena.core.device import default_device
from arena.data.manifest import ManifestError
from arena.leaderboard import build as lb_build
from arena.leaderboard import publish as pub
from arena.leaderboard.site import subset_clean
from arena.score.cluster import ClusterError, RayExecutor
from arena.score.profiles import PROFILES, Profile, get_profile
from arena.score.run import ScoreOptions, ScoreReport, run_score, target_specs
from arena.score.subset import load_subset
from arena.submissions.entries import Entry, discover


class ScoreRefused(ValueError):
    """The request itself is wrong (unknown entries, a filtered publish, ...)."""


class ScoreFailed(RuntimeError):
    """The run could not start (no zoo, a broken manifest, an unreachable cluster)."""


@dataclass
class ScoreRequest:
    profile: str | None = None
    split: str | None = None
    n_utterances: int | None = None
    manifest: str | None = None
    attacks: list[str] | None = None
    defenses: list[str] | None = None
    models: list[str] | None = None
    device: str | None = None
    trusted: bool = False
    store_dir: str | None = None
    publish: bool = False
    workers: int | None = None
    cluster: str | None = None
    gpus_per_job: float = 0.25
    progress: bool = True


@dataclass
class ScoreOutcome:
    board: dict
    report: ScoreReport
    site: dict
    filtered: list[str] = field(default_factory=list)
    published: bool = False


def select_entries(attacks: list[str] | None, defenses: list[str] | None
                   ) -> tuple[list[Entry], list[str]]:
    """Every valid entry, narrowed to the named attacks and defenses; and the problems of the
    submissions that could not be loaded."""
    entries, problems = discover()
    if attacks:
        entries = [e for e in entries if not e.is_attack or e.name in set(attacks)]
    if defenses:
        entries = [e for e in entries if e.is_attack or e.name in set(defenses)]
    missing = set((attacks or []) + (defenses or [])) - {e.name for e in entries}
    if missing:
        raise ScoreRefused(f"unknown entries: {', '.join(sorted(missing))}")
    return entries, problems


def _store_and_filters(req: ScoreRequest, profile: Profile):
    published_root = Path(req.store_dir) if (req.publish and req.store_dir) else pub.published_root()
    if not req.publish and req.store_dir and pub.same_place(req.store_dir, pub.published_root()):
        raise ScoreRefused(f"{req.store_dir} is the published board: only `arena score --publish` "
                           "writes it (a local run uses leaderboard/local/)")
    filtered = pub.filters_of(profile=profile.name, split=profile.split,
                              n_utterances=profile.n_utterances, manifest=req.manifest,
                              attacks=_joined(req.attacks), defenses=_joined(req.defenses),
                              models=_joined(req.models), committed=committed_scope(req),
                              switch_profile=req.publish and req.profile is not None)
    if req.publish and filtered:
        raise ScoreRefused("--publish scores the whole grid of the published board; this run "
                           "is filtered: " + "; ".join(filtered))
    if req.publish:
        return pub.publishing_store(published_root), filtered
    if req.store_dir:
        return pub.LayeredStore(req.store_dir, None), filtered
    return pub.local_store(), filtered


def _joined(names: list[str] | None) -> str | None:
    """A name list as the user wrote it (the board says `--attacks noop,fgsm`)."""
    return ",".join(names) if names else None


def _executor(req: ScoreRequest, device: str) -> RayExecutor | None:
    if not req.cluster:
        return None
    executor = RayExecutor(req.cluster, device=device, gpus_per_job=req.gpus_per_job,
                           workers=req.workers)
    try:
        executor.connect()
        executor.check()   # the cluster has what the jobs ask for (CPUs, GPUs)
    except ClusterError as e:
        executor.close()
        raise ScoreFailed(str(e)) from None
    return executor


def committed_scope(req: ScoreRequest) -> dict:
    """The published board's last run (profile, split, size) as the request's store sees it."""
    root = Path(req.store_dir) if (req.publish and req.store_dir) else pub.published_root()
    return pub.committed_scope(pub.open_published(root))


def profile_name(req: ScoreRequest, device: str) -> str:
    """The named profile; for a bare `--publish` the published board's own (so republishing
    never switches it); otherwise full with a GPU, quick without."""
    if req.profile:
        return req.profile
    if req.publish and committed_scope(req).get("profile") in PROFILES:
        return committed_scope(req)["profile"]
    return "full" if device.startswith("cuda") else "quick"


def score_board(req: ScoreRequest, warn: Callable[[str], None] = print) -> ScoreOutcome:
    """Run the requested grid and write its board's site (published or local)."""
    device = default_device(req.device)
    profile = get_profile(profile_name(req, device), req.split, req.n_utterances)
    entries, problems = select_entries(req.attacks, req.defenses)
    store, filtered = _store_and_filters(req, profile)
    if req.trusted:
        warn("WARNING: --trusted runs plugin code WITHOUT the sandbox")
    for p in problems:
        warn(f"skipped: {p}")
    options = ScoreOptions(profile=profile, device=device, trusted=req.trusted,
                           progress=req.progress, workers=req.workers)
    try:
        models = target_specs(req.models)
        subset = load_subset(profile, progress=req.progress, manifest=req.manifest)
    except (FileNotFoundError, ManifestError) as e:
        raise ScoreFailed(str(e)) from None
    executor = _executor(req, device)
    try:
        report = run_score(store, options, entries, models, subset=subset, problems=problems,
                           executor=executor)
    finally:
        if executor is not None:
            executor.close()
    clean = subset_clean(subset)
    if req.publish:
        result = pub.publish(store, store.pending_meta.get("last_run"),
                             site_builder=lambda st, b, ctx: pub.write_store_site(st, b, ctx, clean=clean))
        board, site = lb_build.build(store.cells(), store.meta()), result.site
    else:
        store.set_meta("local_run", {"filtered": filtered})
        board = lb_build.build(store.cells(), store.meta())
        site = pub.write_store_site(store, board, pub.local_context(store, filtered), clean=clean)
    return ScoreOutcome(board, report, site, filtered, req.publish)
