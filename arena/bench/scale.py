"""`arena bench scale`: one small grid run three ways, each into its own fresh store.

1. the local executor with 1 worker, 2. with 2 workers, 3. a Ray cluster of 2 nodes (one
CPU each) that the command starts on 127.0.0.1 and shuts down. It reports the wall time of
each run (the cluster's start-up and its workers' first imports are reported apart:
an organiser's cluster is up before scoring starts), `speedup_2_workers` (1-worker wall /
2-worker wall), `ray_vs_local` (Ray wall / 2-worker wall), `identical` (the three stores
hold the same cells: keys and metrics, timings aside) and `startup_share` (sandbox
start-up seconds / sandbox job wall seconds, over the three runs). `parallel_ceiling`: what
two processes gain over one on this machine for a pure CPU loop, to read the speed-up
against (on a shared or hyperthreaded 2-core machine it is well below 2).

The grid: the quick profile (its own 12 utterances, or the first `n` of its split), real zoo
models and baselines (defaults below), so the jobs do the work a real run does. Sandbox jobs
are forked by each process's slot (sandbox/slot.py); every run starts its own (the local
runs' slot is stopped before each), and its start is counted in the run's start-up.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from arena.sandbox import slot
from arena.score.executor import LocalExecutor
from arena.score.profiles import get_profile
from arena.score.run import ScoreOptions, ScoreReport, run_score, target_specs
from arena.score.store import ResultsStore
from arena.score.subset import load_subset
from arena.submissions.entries import discover

DEFAULT_ENTRIES = ("fgsm", "pgd", "none", "lowpass")
DEFAULT_MODELS = ("dense", "int8")
VOLATILE = ("seconds",)   # metrics that time the job: differ run to run by nature


def store_signature(store: ResultsStore) -> str:
    """The store's cells as one comparable string: keys, kinds, metrics and errors."""
    rows = []
    for c in store.cells():
        m = {k: v for k, v in c["metrics"].items() if k not in VOLATILE}
        rows.append((c["key"], c["kind"], json.dumps(m, sort_keys=True), c["error"]))
    return json.dumps(sorted(rows))


def _run(root: Path, name: str, executor, grid: dict) -> tuple[ResultsStore, ScoreReport, float]:
    slot.stop()   # each run starts its own fork server, and counts its start-up
    store = ResultsStore(root / name)
    t0 = time.time()
    report = run_score(store, ScoreOptions(grid["profile"], progress=False, wall_s=1800),
                       grid["entries"], grid["models"], grid["subset"], executor=executor)
    return store, report, time.time() - t0


def _row(report: ScoreReport, wall: float) -> dict:
    return dict(wall_s=round(wall, 2), jobs=report.jobs, cells=report.computed,
                failed_jobs=report.failed_jobs, sandbox_startup_s=round(report.sandbox_startup_s, 2),
                job_wall_s=round(report.job_wall_s, 2),
                startup_share=round(report.sandbox_startup_s / report.job_wall_s, 3)
                if report.job_wall_s else None)


SPIN = "import time\nt = time.perf_counter()\nx = 0\nfor i in range(12_000_000):\n    x += i\n" \
       "print(time.perf_counter() - t)"


def parallel_ceiling() -> float:
    """What 2 processes can gain on this machine at all: a pure-Python loop run alone, then
    two copies at once; (2 x alone) / (wall of the pair). 2.0 on two free cores; less when
    the cores are shared (other load, hyperthreads, a hypervisor's quota)."""
    def spin(k: int) -> float:
        t = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", SPIN], stdout=subprocess.DEVNULL)
                 for _ in range(k)]
        for proc in procs:
            proc.wait()
        return time.perf_counter() - t

    alone = min(spin(1) for _ in range(2))
    pair = min(spin(2) for _ in range(2))
    return round(2 * alone / pair, 3)


def _warm_up(nodes: int) -> float:
    """Start one Ray worker per node (each task takes a node's only CPU) and import the job
    code there: what a long-running cluster has done before any scoring."""
    import ray

    from arena.score import cluster

    t0 = time.time()

    @ray.remote(num_cpus=1)
    def warm():
        import arena.score.jobs  # noqa: F401  (torch and the job code, as a job needs them)
        return cluster.LOOPBACK

    ray.get([warm.remote() for _ in range(nodes)])
    return time.time() - t0


def bench_scale(n: int | None = None, entries=DEFAULT_ENTRIES, models=DEFAULT_MODELS, *,
                keep: str | None = None) -> dict:
    """Run the grid three ways; `keep`: write the three stores there instead of a temporary
    folder that is removed."""
    from arena.score.cluster import RayExecutor, local_cluster

    profile = get_profile("quick", n=n)
    found, problems = discover(list(entries))
    grid = dict(profile=profile, entries=found, models=target_specs(list(models)),
                subset=load_subset(profile, progress=False))
    root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="arena-bench-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    ceiling = parallel_ceiling()
    try:
        s1, r1, w1 = _run(root, "local-1", LocalExecutor(1), grid)
        s2, r2, w2 = _run(root, "local-2", LocalExecutor(2), grid)
        t0 = time.time()
        with local_cluster(nodes=2, cpus_per_node=1):
            cluster_s = time.time() - t0
            warm_s = _warm_up(2)
            with RayExecutor(None, workers=2) as ex:   # the driver is connected already
                s3, r3, w3 = _run(root, "ray-2-nodes", ex, grid)
        sigs = {store_signature(s) for s in (s1, s2, s3)}
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    startup = r1.sandbox_startup_s + r2.sandbox_startup_s + r3.sandbox_startup_s
    job_wall = r1.job_wall_s + r2.job_wall_s + r3.job_wall_s
    return dict(
        grid=dict(profile=profile.name, split=profile.split, n_utterances=profile.n_utterances,
                  budgets=list(profile.budgets), entries=[e.name for e in found],
                  models=list(models), problems=problems),
        cpu_count=os.cpu_count(), load_avg_before=[round(x, 2) for x in load_before],
        load_avg_after=[round(x, 2) for x in os.getloadavg()],
        runs={"local_1_worker": _row(r1, w1), "local_2_workers": _row(r2, w2),
              "ray_2_nodes": {**_row(r3, w3), "cluster_start_s": round(cluster_s, 2),
                              "worker_warm_up_s": round(warm_s, 2)}},
        parallel_ceiling=ceiling,
        speedup_2_workers=round(w1 / w2, 3),
        ray_vs_local=round(w3 / w2, 3),
        identical=len(sigs) == 1 and r1.computed > 0,
        startup_share=round(startup / job_wall, 3) if job_wall else None,
        stores=str(root) if keep else None,
    )


def print_scale(r: dict) -> None:
    g = r["grid"]
    print(f"grid: {', '.join(g['entries'])} x {', '.join(g['models'])}, {g['n_utterances']} "
          f"{g['split']} utterances, budgets {', '.join(g['budgets'])}; {r['cpu_count']} cores, "
          f"load {r['load_avg_before']} -> {r['load_avg_after']}")
    for name, row in r["runs"].items():
        extra = ""
        if "cluster_start_s" in row:
            extra = (f"; cluster start {row['cluster_start_s']:.1f} s, worker warm-up "
                     f"{row['worker_warm_up_s']:.1f} s (not in the wall time)")
        print(f"{name:<16} {row['wall_s']:8.1f} s  {row['jobs']} jobs, {row['cells']} cells, "
              f"start-up {row['sandbox_startup_s']:.1f} of {row['job_wall_s']:.1f} job s"
              f"{extra}")
        for f in row["failed_jobs"]:
            print(f"  failed: {f}")
    print(f"speedup_2_workers {r['speedup_2_workers']:.2f}x (this machine's ceiling for 2 "
          f"processes: {r['parallel_ceiling']:.2f}x)  ray_vs_local {r['ray_vs_local']:.2f}  "
          f"identical {r['identical']}  startup_share {r['startup_share']}")
