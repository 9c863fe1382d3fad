"""The Ray executor: the plan's jobs as Ray tasks on a cluster (`arena score --cluster`).

Same `run(jobs, fn)` as the local executor, so the cells are the same. No shared filesystem
is assumed: the driver puts each submission's files and each model file into Ray's object
store once (by content hash), a job travels as a task argument (with its audio), and the
worker writes the files into a temporary folder, checks their hashes and points the job at
them before running `fn` (normally `execute`, which starts the sandbox on that node).

A job that needs a GPU asks Ray for a fraction of one (`gpus_per_job`), so several small
jobs share a GPU. A node that dies loses only its jobs in flight: Ray retries them
elsewhere (`max_retries`); once the retries are spent the job comes back as an error and
the driver frees its claims, so the next run does it.

Ray is an optional extra (`pip install -e ".[cluster]"`): imported only in here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from arena.plugins.spec import copy_submission, submission_files
from arena.sandbox import new_jobdir
from arena.score.executor import Outcome
from arena.score.plan import submission_of, with_submission_folder
from arena.submissions.manifest import content_hash

LOOPBACK = "127.0.0.1"


class ClusterError(RuntimeError):
    """Ray missing, the cluster unreachable or without the resources a job needs."""


def _ray():
    try:
        import ray
    except ImportError:
        raise ClusterError('the Ray executor needs Ray: pip install -e ".[cluster]"') from None
    return ray


# ------------------------------------------------------------------ what travels
def pack_submission(folder) -> list[tuple[str, bytes | None]]:
    """A submission's files as (relative path, bytes) pairs, bytes None for a folder:
    exactly the entries the sandbox receives and the content hash covers.

    Read through copy_submission, the one copy every other path makes (install, a local
    job's private copy): a plain read_bytes followed a file swapped for a link after the
    listing (a host file went into the object store and onto a worker's disk, refused only
    there by the hash check) and blocked the driver for good on one swapped for a fifo."""
    files = submission_files(folder)
    with tempfile.TemporaryDirectory(prefix="arena-pack-") as tmp:
        copy_submission(files, tmp)
        return [(f.rel, None if f.is_dir else Path(tmp, *f.rel.split("/")).read_bytes())
                for f in files]


def unpack_submission(files: list[tuple[str, bytes | None]], dest: Path) -> Path:
    dest.mkdir(parents=True)
    for rel, data in files:
        target = dest.joinpath(*rel.split("/"))
        if not target.resolve().is_relative_to(dest.resolve()):
            raise ClusterError(f"submission file {rel!r} points outside its folder")
        if data is None:
            target.mkdir()
        else:
            target.write_bytes(data)
    return dest


def _localised(job, tmp: Path, submission, model: np.ndarray):
    """The job pointed at copies of its files under `tmp`, each checked against its hash."""
    model_dir = tmp / "model"
    model_dir.mkdir()
    model_path = model_dir / job.model.path.name
    got = hashlib.sha256(model.tobytes()).hexdigest()
    if got != job.model.sha256:
        raise ClusterError(f"model {job.model.name}: received sha256 {got[:12]}, expected "
                           f"{job.model.sha256[:12]}")
    with open(model_path, "wb") as f:
        f.write(model.tobytes())
    job = dataclasses.replace(job, model=dataclasses.replace(job.model, path=model_path))
    entry = submission_of(job)
    if entry is not None:
        folder = unpack_submission(submission, tmp / "submission")
        got = content_hash(folder)
        if got != entry.content_hash:
            raise ClusterError(f"submission {entry.name}: received content hash {got[:12]}, "
                               f"expected {entry.content_hash[:12]}")
        job = with_submission_folder(job, folder)
    return job


def run_on_worker(fn: Callable[[Any], Any], job, submission, model: np.ndarray):
    """What a Ray task runs: materialise the job's files on this node, run fn(job). Their
    folder is one of this process's job folders: swept by the next job of the node if a
    killed worker leaves it."""
    tmp = new_jobdir(None)
    try:
        return fn(_localised(job, tmp, submission, model))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ------------------------------------------------------------------ the executor
class RayExecutor:
    """Runs jobs as Ray tasks on the cluster at `address` ("auto": the one `ray start`
    made on this machine, or RAY_ADDRESS). With `device` cuda every job asks for
    `gpus_per_job` of a GPU."""

    def __init__(self, address: str | None = "auto", *, device: str = "cpu",
                 gpus_per_job: float = 0.25, cpus_per_job: float = 1.0, max_retries: int = 2,
                 workers: int | None = None):
        if not 0 < gpus_per_job <= 1 and not (gpus_per_job > 1 and float(gpus_per_job).is_integer()):
            raise ClusterError(f"gpus_per_job must be in (0, 1] or a whole number, got {gpus_per_job}")
        self.address, self.device = address, str(device)
        self.gpus_per_job, self.cpus_per_job = gpus_per_job, cpus_per_job
        self.max_retries, self._workers = max_retries, workers
        self._owns_connection = False
        self._refs: dict[tuple[str, str], Any] = {}   # (kind, content hash) -> ObjectRef
        self._task: Any = None   # the Ray remote function, made on connect

    @property
    def gpu(self) -> bool:
        return self.device.startswith("cuda")

    def task_options(self, job) -> dict:
        """The resources one job asks Ray for (transfer jobs too: they run the model)."""
        return {"num_cpus": self.cpus_per_job, "num_gpus": self.gpus_per_job if self.gpu else 0,
                "max_retries": self.max_retries, "retry_exceptions": False,
                "name": f"arena: {job.name}"[:200]}

    # ---------------------------------------------------------------- connection
    def connect(self) -> None:
        ray = _ray()
        if not ray.is_initialized():
            _check_reachable(self.address)
            try:
                # log_to_driver off: worker output would otherwise land in our stdout
                # (and break `arena score --json`); job logs come back in JobOutput
                ray.init(address=self.address, log_to_driver=False)
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise ClusterError(f"cannot reach the Ray cluster at {self.address!r}: {e}") from None
            self._owns_connection = True
        if self._task is None:
            self._task = ray.remote(run_on_worker)

    def check(self) -> None:
        """ClusterError unless the cluster can run a job as asked (its GPUs, for cuda)."""
        self.connect()
        res = _ray().cluster_resources()
        if self.gpu and res.get("GPU", 0) <= 0:
            raise ClusterError("--device cuda but the Ray cluster has no GPU; "
                               "start its nodes with GPUs or score with --device cpu")
        if res.get("CPU", 0) < self.cpus_per_job:
            raise ClusterError(f"the Ray cluster has {res.get('CPU', 0):g} CPUs; a job needs "
                               f"{self.cpus_per_job:g}")

    @property
    def workers(self) -> int:
        """Jobs kept in flight: as many as the cluster can run at once."""
        if self._workers:
            return self._workers
        self.check()
        res = _ray().cluster_resources()
        slots = int(res.get("CPU", 0) // self.cpus_per_job) if self.cpus_per_job else 0
        if self.gpu:
            by_gpu = int(math.floor(res.get("GPU", 0) / self.gpus_per_job + 1e-9))
            slots = min(slots, by_gpu) if slots else by_gpu
        return max(1, slots)

    def close(self) -> None:
        self._refs.clear()
        if self._owns_connection:
            _ray().shutdown()
            self._owns_connection = False
        self._task = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- running
    def _ref(self, kind: str, key: str, make: Callable[[], Any]):
        if (kind, key) not in self._refs:
            self._refs[(kind, key)] = _ray().put(make())
        return self._refs[(kind, key)]

    def _submit(self, fn_ref, job):
        entry = submission_of(job)
        sub = self._ref("submission", entry.content_hash, lambda: pack_submission(entry.path)) \
            if entry is not None else None
        # a uint8 array: read zero-copy from the node's object store on the worker
        model = self._ref("model", job.model.sha256,
                          lambda: np.frombuffer(job.model.path.read_bytes(), dtype=np.uint8))
        return self._task.options(**self.task_options(job)).remote(fn_ref, job, sub, model)

    def run(self, jobs: Iterable[Any], fn: Callable[[Any], Any]) -> Iterator[Outcome]:
        """fn must be picklable (a module-level function or a functools.partial of one):
        it runs on the worker. Jobs are pulled lazily, as slots free up."""
        ray = _ray()
        self.connect()
        limit = self.workers
        fn_ref = ray.put(fn)
        pending: dict[Any, Any] = {}
        source = iter(jobs)
        while True:
            while len(pending) < limit:
                job = next(source, None)
                if job is None:
                    break
                try:
                    pending[self._submit(fn_ref, job)] = job
                except (OSError, ValueError) as e:   # its files could not be read or packed
                    yield job, None, e
            if not pending:
                return
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    yield job, ray.get(ref), None
                except Exception as e:   # task error, worker or node lost after its retries
                    yield job, None, _unwrapped(e)


def _check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """A clear error at once for a host:port nobody answers on (Ray itself retries for
    minutes). "auto", "ray://..." and the like are left to Ray."""
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"--cluster {address!r}: expected host:port (the head's GCS port, "
                           "6379 by default) or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ClusterError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}; "
                           "is `ray start --head` running there?") from None


def _unwrapped(e: Exception) -> BaseException:
    """The job's own exception where Ray wrapped one (RayTaskError keeps it as .cause)."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, BaseException) else e


# ------------------------------------------------------------------ a local test cluster
@contextmanager
def local_cluster(nodes: int = 2, cpus_per_node: int = 1, *, env: dict | None = None,
                  system_config: dict | None = None):
    """A Ray cluster of `nodes` nodes on this machine, loopback only, with the driver
    connected; shut down on exit. Yields the `ray.cluster_utils.Cluster`.

    Loopback only: Ray maps 127.0.0.1 in an address to the machine's outward IP unless its
    "no multi-node clusters" switch is set, and a cluster whose head listens on 127.0.0.1
    while the driver dials the outward IP hangs. The switch only changes that mapping;
    the nodes still form one cluster. `env`: extra environment for the nodes' workers."""
    ray = _ray()
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    saved_env = {k: os.environ.get(k) for k in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", *(env or {}))}
    saved_switch = ray_constants.ENABLE_RAY_CLUSTER
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.update(env or {})
    ray_constants.ENABLE_RAY_CLUSTER = False
    cluster = None
    try:
        node: dict[str, Any] = dict(num_cpus=cpus_per_node, node_ip_address=LOOPBACK)
        head = dict(node, include_dashboard=False)
        if system_config:
            head["_system_config"] = system_config
        cluster = Cluster(initialize_head=True, head_node_args=head)
        for _ in range(nodes - 1):
            cluster.add_node(**node)
        ray.init(address=cluster.address, _node_ip_address=LOOPBACK, log_to_driver=False)
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = saved_switch
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
