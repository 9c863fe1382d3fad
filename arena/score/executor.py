"""Executors run the plan's jobs and hand results back; only the driver writes the store.

`LocalExecutor` runs up to `workers` jobs at once in threads: a sandbox job is a child
process (the thread only waits on it) and each sets its own thread count to 1, so N workers
use about N cores. A Ray executor (arena.score.cluster) offers the same `run`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any, Protocol

Outcome = tuple[Any, Any, BaseException | None]   # (job, output, error)


class Executor(Protocol):
    @property
    def workers(self) -> int:
        """How many jobs may be in flight at once."""
        ...

    def run(self, jobs: Iterable[Any], fn: Callable[[Any], Any]) -> Iterator[Outcome]:
        """Run fn(job) for every job; yield (job, output, None) or (job, None, error) as
        each finishes, in completion order."""
        ...


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


class LocalExecutor:
    def __init__(self, workers: int | None = None):
        self.workers = max(1, workers or default_workers())

    def run(self, jobs: Iterable[Any], fn: Callable[[Any], Any]) -> Iterator[Outcome]:
        # jobs are pulled lazily: a job prepared (its audio loaded) only when a worker is
        # about to be free, so memory holds the jobs in flight, not the whole grid
        pending: dict[Future, Any] = {}
        source = iter(jobs)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="arena-job") as pool:
            while True:
                while len(pending) < self.workers:
                    job = next(source, None)
                    if job is None:
                        break
                    pending[pool.submit(fn, job)] = job
                if not pending:
                    return
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    job = pending.pop(future)
                    error = future.exception()
                    yield job, (None if error else future.result()), error
