"""The one way results leave the sandbox: named files sent as frames over a pipe.

No host folder is writable from inside the sandbox; the worker sends each output file as
`<name> <size>\\n<size bytes>` on an inherited pipe, and the harness's Receiver writes only
the names it expects, each up to its own size cap, into the job's output folder (which the
sandbox never sees). So the bytes a job can put on the host disk are bounded by what its
batches legitimately need, and the plugin (which shares the worker's process and can
write to the pipe too) can only spoil its own results. The sender side has no
dependencies: the worker imports it before torch.
"""
from __future__ import annotations

import os
import re
import select
import threading
import time

HEADER_MAX = 160
_HEADER = re.compile(rb"([A-Za-z0-9._-]{1,100}) ([0-9]{1,12})")


def frame(name: str, data: bytes) -> bytes:
    """One frame: `<name> <size>\\n` and the bytes (what `recv` and the Receiver read)."""
    return f"{name} {len(data)}\n".encode() + data


def send(fd: int, name: str, data: bytes) -> None:
    """Write one frame (blocking; the harness reads as fast as it is sent)."""
    view = memoryview(frame(name, data))
    while view:
        n = os.write(fd, view)
        view = view[n:]


def close_fds_except(keep: set[int]) -> None:
    """Close every descriptor above 2 not in `keep` (what a sandboxed process inherited by
    accident, e.g. bwrap's own pipes, must not be shared with anything else)."""
    for name in os.listdir("/proc/self/fd"):
        n = int(name)
        if n > 2 and n not in keep:
            try:
                os.close(n)
            except OSError:
                pass   # the listing's own descriptor, closed already


def recv(fd: int) -> tuple[str, bytes] | None:
    """Read one frame written by `send` (the worker reading the harness's requests, so the
    sender is trusted); None at EOF."""
    header = bytearray()
    while not header.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            return None
        header += byte
        if len(header) > HEADER_MAX:
            raise ValueError("request frame header too long")
    m = _HEADER.fullmatch(bytes(header[:-1]))
    if m is None:
        raise ValueError(f"malformed request frame header {bytes(header[:60])!r}")
    size, data = int(m.group(2)), bytearray()
    while len(data) < size:
        chunk = os.read(fd, min(size - len(data), 1 << 20))
        if not chunk:
            return None
        data += chunk
    return m.group(1).decode(), bytes(data)


class PipeReader(threading.Thread):
    """Reads a pipe in a thread until EOF or stop(); subclasses consume `chunks()`."""

    def __init__(self, fd: int, name: str):
        super().__init__(name=name, daemon=True)
        self.fd = fd
        self._halt = threading.Event()
        self._until = 0.0

    def stop(self, drain_s: float = 2.0) -> None:
        """Finish: read what is left until EOF, or for at most `drain_s` (a process outside
        the sandbox's PID namespace, in --trusted mode, may keep the pipe open)."""
        self._until = time.monotonic() + drain_s
        self._halt.set()

    def chunks(self):
        """The pipe's bytes as they arrive, until EOF or (after stop()) drained."""
        while True:
            ready, _, _ = select.select([self.fd], [], [], 0.1)
            if self._halt.is_set() and (not ready or time.monotonic() > self._until):
                return
            if not ready:
                continue
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return
            yield chunk


class Receiver(PipeReader):
    """Reads frames from `fd` into `out_dir` until EOF or stop(). `caps` maps each allowed
    file name to its size cap. Any other name, a size over its cap or a malformed header
    sets `error` and calls `on_error()` (which kills the job)."""

    def __init__(self, fd: int, out_dir: str, caps: dict[str, int], on_error):
        super().__init__(fd, "arena-job-receiver")
        self.out_dir, self.caps, self.on_error = out_dir, caps, on_error
        self.error: str | None = None
        self.received: set[str] = set()
        self.bytes = 0
        self.closed = False
        self._arrived = threading.Condition()

    def wait_for(self, name: str, deadline: float) -> bool:
        """Block until file `name` has arrived (True), or the stream ended or `deadline`
        (time.monotonic()) passed (False). For jobs that answer requests (the purify server)."""
        with self._arrived:
            while name not in self.received:
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    return False
                self._arrived.wait(min(left, 0.5))
            return True

    def _notify(self, name: str | None) -> None:
        with self._arrived:
            if name is None:
                self.closed = True
            else:
                self.received.add(name)
            self._arrived.notify_all()

    def run(self) -> None:
        header = bytearray()
        out = None           # (fd, name, tmp path, bytes left)
        try:
            for chunk in self.chunks():
                view = memoryview(chunk)
                while view:
                    if out is None:
                        nl = bytes(view[:HEADER_MAX + 1]).find(b"\n")
                        if nl < 0:
                            header += view
                            view = view[len(view):]
                            if len(header) > HEADER_MAX:
                                return self._fail("an output frame header is longer than "
                                                  f"{HEADER_MAX} bytes")
                            continue
                        header += view[:nl]
                        view = view[nl + 1:]
                        out = self._open(bytes(header))
                        header.clear()
                        if out is None:
                            return
                    else:
                        fd, name, tmp, left = out
                        part = view[:left]
                        os.write(fd, part)
                        self.bytes += len(part)
                        view = view[len(part):]
                        left -= len(part)
                        out = (fd, name, tmp, left)
                    if out is not None and out[3] == 0:
                        fd, name, tmp, _ = out
                        os.close(fd)
                        os.replace(tmp, os.path.join(self.out_dir, name))
                        self._notify(name)
                        out = None
        except OSError as e:
            self._fail(f"could not store the job's output: {e}")
        finally:
            if out is not None:      # a frame cut short: drop it
                os.close(out[0])
                try:
                    os.unlink(out[2])
                except OSError:
                    pass
            os.close(self.fd)
            self._notify(None)

    def _open(self, header: bytes):
        m = _HEADER.fullmatch(header)
        if m is None:
            return self._fail(f"malformed output frame header {header[:60]!r}")
        name, size = m.group(1).decode(), int(m.group(2))
        if name not in self.caps:
            return self._fail(f"unexpected output file {name!r}")
        if size > self.caps[name]:
            return self._fail(f"output file {name} is {size} bytes, over its cap of "
                              f"{self.caps[name]} bytes")
        tmp = os.path.join(self.out_dir, f".part-{name}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        return (fd, name, tmp, size)

    def _fail(self, msg: str):
        if self.error is None:
            self.error = msg
            self.on_error()
        return None

