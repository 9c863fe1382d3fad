"""Progress of a scoring run: a live bar on a terminal, plain log lines otherwise (a run
with its output in a file still says what it is doing: job n/N, the job, elapsed, ETA)."""
from __future__ import annotations

import sys
import threading
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class JobProgress:
    def __init__(self, enabled: bool = True, stream=None, tty: bool | None = None):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty() if tty is None else tty
        self.total = self.done = 0
        self.t0 = time.time()
        self._lock = threading.Lock()
        self._bar: Progress | None = None
        self._task = TaskID(0)

    def __enter__(self) -> JobProgress:
        if self.enabled and self.tty:
            self._bar = Progress(TextColumn("[bold]score"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.description}", markup=False), TimeElapsedColumn(),
                                 console=None, transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task("", total=0)
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def add(self, n: int, phase: str) -> None:
        with self._lock:
            self.total += n
            if self._bar is not None:
                self._bar.update(self._task, total=self.total)
            elif self.enabled:
                self._line(f"{phase}: {n} jobs")

    def started(self, name: str) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.update(self._task, description=name)

    def finished(self, name: str) -> None:
        with self._lock:
            self.done += 1
            if self._bar is not None:
                self._bar.update(self._task, advance=1)
            elif self.enabled:
                elapsed = time.time() - self.t0
                eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
                self._line(f"job {self.done}/{self.total} {name}  elapsed {elapsed:.0f} s  "
                           f"eta {eta:.0f} s")

    def _line(self, text: str) -> None:
        print(f"[score] {text}", file=self.stream, flush=True)
