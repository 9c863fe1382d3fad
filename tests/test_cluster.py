"""The Ray executor on a real local Ray cluster (two nodes on 127.0.0.1, one CPU each): the
same cells as the local executor, a worker node lost mid-run costs only its jobs in flight
(a re-run fills them, no duplicate, nothing lost), and the sandbox contains a hostile
defense on a Ray worker exactly as it does locally. GPU requests are checked on CPU."""
import dataclasses
import hashlib
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from arena.bench.scale import store_signature  # noqa: E402
from arena.score.cluster import LOOPBACK, RayExecutor, local_cluster  # noqa: E402
from arena.score.executor import LocalExecutor  # noqa: E402
from tests import test_score_run  # noqa: E402

world = test_score_run.world   # the tiny world (a module fixture)
_sub = test_score_run._sub
ENTRIES = ("fgsm", "none")
MODELS = ["dense", "int8"]

# Tries to read a file of the host and to write next to it and into the host's /tmp; says
# what happened in its transcript (so the cell's hypotheses show it).
BREACH = '''
from arena import Defense

class P(Defense):
    def transcribe(self, batch, model):
        words = []
        try:
            words.append("read " + open({canary!r}).read())
        except OSError as e:
            words.append("read denied " + type(e).__name__)
        for target in ({pwned!r}, "/tmp/arena-ray-pwned"):
            try:
                with open(target, "w") as f:
                    f.write("pwned")
                words.append("wrote")
            except OSError as e:
                words.append("write denied " + type(e).__name__)
        return [" ".join(words)] * len(batch.ids)
'''


def _env(world: dict) -> dict:
    return {k: v for k, v in world.items() if k.startswith("ARENA_")}


def _score(world, store_dir: Path, executor, entries=ENTRIES, models=MODELS, submissions=None):
    from arena.score.profiles import get_profile
    from arena.score.run import ScoreOptions, run_score, target_specs
    from arena.score.store import ResultsStore
    from arena.score.subset import load_subset
    from arena.submissions.entries import discover

    with pytest.MonkeyPatch.context() as mp:
        for k, v in _env(world).items():
            mp.setenv(k, v)
        if submissions:
            mp.setenv("ARENA_SUBMISSIONS", str(submissions))
        found, _ = discover(list(entries))
        profile = get_profile("quick")
        store = ResultsStore(store_dir)
        report = run_score(store, ScoreOptions(profile, wall_s=120, progress=False), found,
                           target_specs(models), load_subset(profile, manifest=world["MANIFEST"]),
                           executor=executor)
    return store, report


def _claims(store) -> int:
    with sqlite3.connect(store.path) as db:
        return db.execute("SELECT COUNT(*) FROM claims").fetchone()[0]


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory):
    store, report = _score(world, tmp_path_factory.mktemp("local"), LocalExecutor(2))
    assert report.failed_jobs == []
    return store


@pytest.fixture(scope="module")
def cluster(world):
    # fast node-death detection, so a lost node's jobs fail in seconds
    config = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}
    with local_cluster(nodes=2, cpus_per_node=1, env=_env(world), system_config=config) as c:
        yield c


def test_gpu_jobs_ask_for_a_share_of_a_gpu_on_cpu():
    from arena.score.plan import TargetSpec, TransferJob

    job = TransferJob(TargetSpec("dense", Path("d"), "0"), TargetSpec("int8", Path("i"), "1"), [])
    cpu = RayExecutor("auto", device="cpu").task_options(job)
    assert cpu["num_gpus"] == 0 and cpu["num_cpus"] == 1 and cpu["max_retries"] == 2
    gpu = RayExecutor("auto", device="cuda", gpus_per_job=0.25, workers=8).task_options(job)
    assert gpu["num_gpus"] == 0.25
    with pytest.raises(Exception, match="gpus_per_job"):
        RayExecutor("auto", gpus_per_job=1.5)


@pytest.mark.slow
def test_grid_on_a_two_node_cluster_equals_the_local_run(world, reference, cluster, tmp_path):
    with RayExecutor(cluster.address) as ex:
        assert ex.workers == 2
        store, report = _score(world, tmp_path / "ray", ex)
    assert report.failed_jobs == []
    assert store_signature(store) == store_signature(reference)
    assert store.count() == reference.count() > 0
    # both nodes ran jobs (the startup figures come from the sandbox on each node)
    assert report.sandbox_startup_s > 0


@pytest.mark.slow
def test_sandbox_breach_on_a_ray_worker_is_contained_as_locally(world, cluster, tmp_path):
    canary = tmp_path / "host-secret.txt"
    canary.write_text("the host's secret")
    pwned = tmp_path / "pwned.txt"
    subs = tmp_path / "submissions"
    _sub(subs, "breacher", "defense", BREACH.format(canary=str(canary), pwned=str(pwned)))
    local, _ = _score(world, tmp_path / "local", LocalExecutor(1), entries=("breacher",),
                      models=["dense"], submissions=subs)
    with RayExecutor(cluster.address) as ex:
        remote, _ = _score(world, tmp_path / "ray", ex, entries=("breacher",), models=["dense"],
                           submissions=subs)
    hyps = {h for c in remote.cells() if c["kind"] != "adaptive" for h in c["metrics"]["hypotheses"]}
    assert len(hyps) == 1, hyps
    hyp = hyps.pop()
    # the host file is not there to read, the host folder not there to write; the write
    # to /tmp lands in the sandbox's own /tmp (a private tmpfs), never the host's
    assert hyp == "read denied FileNotFoundError write denied FileNotFoundError wrote", hyp
    assert not pwned.exists() and not Path("/tmp/arena-ray-pwned").exists()
    assert store_signature(remote) == store_signature(local)


@pytest.mark.slow
def test_a_worker_node_lost_mid_run_then_a_rerun_completes_the_grid(world, reference, cluster, tmp_path):
    from arena.score.store import ResultsStore

    # a job lasts a second or two now: an attempt whose removal caught no job in flight
    # (it finished first, or Ray ran it again elsewhere) proves nothing and is made again
    for attempt in range(4):
        store_dir = tmp_path / f"ray-{attempt}"
        worker = next(iter(cluster.worker_nodes))
        result = {}

        def score(result=result, store_dir=store_dir):
            # no retries: the lost node's jobs come back as errors and their claims are freed
            with RayExecutor(cluster.address, max_retries=0) as ex:
                result["first"] = _score(world, store_dir, ex)

        thread = threading.Thread(target=score)
        thread.start()
        watch, deadline = ResultsStore(store_dir), time.time() + 120
        while watch.count() < 4 and time.time() < deadline:   # both attack jobs are in
            time.sleep(0.05)
        while not (frozen := _freeze_if_busy(worker)) and time.time() < deadline:
            time.sleep(0.02)
        try:
            cluster.remove_node(worker)   # its sandbox job in flight (frozen: it cannot finish)
            for pid in frozen:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            thread.join(timeout=300)
            assert not thread.is_alive()
        finally:
            cluster.add_node(num_cpus=1, node_ip_address=LOOPBACK)   # for any later test
        store, report = result["first"]
        if any("harness error" in f for f in report.failed_jobs):
            break
    assert any("harness error" in f for f in report.failed_jobs), report.failed_jobs
    assert store.count() < reference.count()
    assert _claims(store) == 0   # nothing stays claimed by the lost jobs
    with RayExecutor(cluster.address) as ex:
        store, again = _score(world, store_dir, ex)
    assert again.failed_jobs == [] and again.computed == reference.count() - report.computed
    assert store_signature(store) == store_signature(reference)
    axes = [(c["kind"], c["attack"], c["budget"], c["defense"], c["model"], c["source_model"])
            for c in store.cells()]
    assert len(axes) == len(set(axes)) == reference.count()


def _freeze_if_busy(node) -> list[int]:
    """When `node` runs a scoring job (a Ray worker titled "ray::run_on_worker", or a
    slot's fork server with a job's keeper under it), stop every process of the node but
    its raylet, so that the job cannot finish before the node is removed; the stopped pids
    (else [])."""
    from arena.sandbox.control import _tree, proc_stat

    raylet = node.all_processes["raylet"][0].process.pid
    tree = _tree(raylet)
    busy, servers, parents = False, set(), set()
    for pid in tree:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read()
            parents.add(int(proc_stat(pid)[1]))
        except (OSError, ValueError, IndexError):
            continue
        busy |= title.startswith(b"ray::run_on_worker")
        if b"--slot" in title:
            servers.add(pid)
    busy |= bool(servers & parents)
    if not busy:
        return []
    frozen = [pid for pid in tree if pid != raylet]
    for pid in frozen:
        try:
            os.kill(pid, signal.SIGSTOP)
        except OSError:
            pass
    return frozen


def test_submission_files_round_trip_and_are_checked(tmp_path):
    from arena.score.cluster import ClusterError, pack_submission, unpack_submission

    d = tmp_path / "sub"
    _sub(tmp_path, "sub", "attack", "x = 1\n")
    (d / "pkg").mkdir()
    (d / "pkg" / "w.bin").write_bytes(bytes(range(256)))
    files = pack_submission(d)
    out = unpack_submission(files, tmp_path / "copy")
    assert (out / "pkg" / "w.bin").read_bytes() == bytes(range(256))
    assert (out / "plugin.py").read_text() == "x = 1\n"
    with pytest.raises(ClusterError, match="outside"):
        unpack_submission([("../evil.py", b"x")], tmp_path / "copy2")
    assert not (tmp_path / "evil.py").exists()


@pytest.mark.slow
def test_two_half_gpu_jobs_share_one_gpu_at_once(cluster, tmp_path):
    # a node announcing one (pretend) GPU: Ray's accounting, not CUDA, decides the sharing
    node = cluster.add_node(num_cpus=2, num_gpus=1, node_ip_address=LOOPBACK)
    try:
        assert RayExecutor(cluster.address, device="cuda", gpus_per_job=0.25).workers == 4
        ex = RayExecutor(cluster.address, device="cuda", gpus_per_job=0.5)
        assert ex.workers == 2   # 1 GPU / 0.5 per job
        out = list(ex.run(_fake_jobs(2, tmp_path), _fake_fn))
    finally:
        cluster.remove_node(node)
    assert [e for _, _, e in out] == [None] * 2
    assert sorted(o[0] for _, o, _ in out) == [0, 1]
    # each got half of GPU 0, and both were running at the same time
    assert all(o[1:] == (0.5, "0", True) for _, o, _ in out), out


@dataclasses.dataclass
class _FakeJob:
    """Stands in for a plan job: a model file to ship (this file), no submission."""
    i: int
    model: object
    meeting: str      # a folder where the jobs meet: all running at once

    @property
    def name(self):
        return f"fake {self.i}"


def _fake_jobs(n, meeting: Path):
    from arena.score.plan import TargetSpec

    me = Path(__file__)
    spec = TargetSpec("m", me, hashlib.sha256(me.read_bytes()).hexdigest())
    return [_FakeJob(i, spec, str(meeting)) for i in range(n)]


def _fake_fn(job):
    # the model file arrived through the object store, into a job folder of this worker
    # (swept by the node's next job if the worker is killed)
    assert job.model.path.read_bytes().startswith(b'"""The Ray executor on a real local')
    assert job.model.path.parent.name == "model" and "/arena-job-" in str(job.model.path)
    Path(job.meeting, str(job.i)).touch()
    deadline = time.time() + 60
    while len(os.listdir(job.meeting)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    met = len(os.listdir(job.meeting)) == 2
    gpu = ray.get_runtime_context().get_assigned_resources().get("GPU")
    return job.i, gpu, os.environ.get("CUDA_VISIBLE_DEVICES"), met


class _LosesFirstRound:
    """A local executor whose first defense job (a defense's rounds on one model) comes back
    lost (as from a dead node)."""

    def __init__(self):
        self.inner, self.workers, self.lost = LocalExecutor(1), 1, []

    def run(self, jobs, fn):
        from arena.score.plan import DefenseGroup

        for job, out, error in self.inner.run(jobs, fn):
            if isinstance(job, DefenseGroup) and not self.lost:
                self.lost.append(job.name)
                yield job, None, ConnectionError("node lost")
            else:
                yield job, out, error


@pytest.mark.slow
def test_a_lost_defense_job_frees_its_cells_and_the_rerun_fills_them(world, tmp_path):
    ex = _LosesFirstRound()
    store, report = _score(world, tmp_path / "s", ex, models=["dense"])
    assert ex.lost and any("node lost" in f for f in report.failed_jobs), report.failed_jobs
    # the lost group's cells are free for the next run
    # (phase 1: the fgsm attack job and the adaptive job through `none`)
    assert report.jobs == 2 and _claims(store) == 0
    assert {c["kind"] for c in store.cells()} == {"attack", "adaptive"}
    store, again = _score(world, tmp_path / "s", LocalExecutor(1), models=["dense"])
    # the `none` group: clean, fgsm at 2 budgets, the adaptive attack at 2 budgets
    assert again.failed_jobs == [] and again.computed == 5


def test_a_wrong_cluster_address_fails_at_once_with_a_clear_error():
    import socket

    from arena.score.cluster import ClusterError, _check_reachable

    with pytest.raises(ClusterError, match="expected host:port"):
        _check_reachable("headnode")
    free = socket.socket()
    free.bind((LOOPBACK, 0))
    port = free.getsockname()[1]
    free.close()   # nobody listens there now
    t0 = time.time()
    with pytest.raises(ClusterError, match="cannot reach the Ray cluster.*ray start --head"):
        _check_reachable(f"{LOOPBACK}:{port}")
    assert time.time() - t0 < 5
    _check_reachable("auto")   # left to Ray


@pytest.mark.parametrize("kind", ["attack", "adaptive", "round"])
def test_every_job_with_plugin_code_gets_its_submission_on_the_worker(tmp_path, kind):
    """A Ray worker shares no filesystem with the driver: each job that runs a submission
    (attack jobs, defense rounds, and adaptive jobs, which serve a defense's purify) is
    pointed at a copy of it that was checked against its content hash."""
    import dataclasses
    import hashlib

    import numpy as np

    from arena.score.cluster import _localised, pack_submission
    from arena.score.plan import AdaptiveJob, AttackJob, DefenseGroup, TargetSpec
    from arena.submissions.entries import Entry
    from arena.submissions.manifest import content_hash, plugin_spec

    track = "attack" if kind == "attack" else "defense"
    _sub(tmp_path, "sub", track, "x = 1\n")
    folder = tmp_path / "sub"
    entry = Entry(plugin_spec(folder), content_hash(folder), "submission")
    model_bytes = b"model"
    model = TargetSpec("dense", tmp_path / "dense.safetensors", hashlib.sha256(model_bytes).hexdigest())
    job = {"attack": AttackJob(entry, model, ["snr30"], ["k"]),
           "adaptive": AdaptiveJob(entry, model, ["snr30"], ["k"]),
           "round": DefenseGroup(entry, model, [])}[kind]
    (tmp_path / "node").mkdir()
    local = _localised(job, tmp_path / "node", pack_submission(folder),
                       np.frombuffer(model_bytes, dtype=np.uint8))
    moved = local.attack if kind == "attack" else local.defense
    assert moved.path != folder and moved.path.is_relative_to(tmp_path / "node")
    assert (moved.path / "plugin.py").read_text() == "x = 1\n"
    assert local.model.path.read_bytes() == model_bytes
    assert dataclasses.replace(moved, spec=entry.spec) == entry


@pytest.mark.parametrize("swap", ["link", "fifo"])
def test_packing_for_the_object_store_follows_no_file_swapped_after_the_listing(tmp_path, monkeypatch, swap):
    """The driver's pack for Ray is the same no-link copy as every local copy: a file
    swapped for a link to a host file after the listing was read through (the host file went
    into the object store and onto a worker's disk), one swapped for a fifo blocked the
    driver forever; both are now refused as a local job's copy is."""
    from arena.plugins.spec import SubmissionFilesError, submission_files
    from arena.score import cluster as cl

    _sub(tmp_path, "sub", "attack", "x = 1\n")
    folder = tmp_path / "sub"
    listed = submission_files(folder)
    monkeypatch.setattr(cl, "submission_files", lambda _: listed)   # listed before the swap
    canary = tmp_path / "host-secret.txt"
    canary.write_text("the host's secret")
    (folder / "plugin.py").unlink()
    if swap == "link":
        (folder / "plugin.py").symlink_to(canary)
    else:
        os.mkfifo(folder / "plugin.py")
    result: list = []

    def pack():
        try:
            result.append(cl.pack_submission(folder))
        except SubmissionFilesError as e:
            result.append(e)

    t = threading.Thread(target=pack, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():   # blocked opening the fifo: release it, then fail
        os.close(os.open(folder / "plugin.py", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("packing blocked on a fifo")
    assert isinstance(result[0], SubmissionFilesError), result[0]
    assert "plugin.py" in str(result[0])
