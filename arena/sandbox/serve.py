"""A defense's `purify`, served from its sandbox to the harness (the adaptive evaluation).

One sandbox job per (defense, model): the worker loads the defense once, then answers
requests over a pipe (channel.recv) with frames through the same capped Receiver as every
job (channel.py): the defense's code only ever runs in the sandbox, and all that reaches the
harness is its purified audio, re-validated here. The attacker's gradient is taken in the
harness's own process on its own copy of the model (arena/score/adaptive.py), so nothing a
defense does to torch or to autograd in its process can touch it.
"""
from __future__ import annotations

import os
import select
import time
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from arena.plugins.spec import PluginSpec
from arena.sandbox.channel import frame
from arena.sandbox.jobs import (
    RESULT_SLACK,
    JobResult,
    Launch,
    SandboxLimits,
    UntrustedJSONError,
    _prepare,
    _Setup,
    job_result,
    new_jobdir,
    parse_untrusted_json,
    remove_tree,
)

READY_BYTES = 4096


def send_until(fd: int, name: str, data: bytes, deadline: float) -> bool:
    """channel.send with a deadline (time.monotonic()): False when the reader stopped reading
    (a stopped or hung sandbox must not block the harness on a full pipe) or is gone."""
    view = memoryview(frame(name, data))
    os.set_blocking(fd, False)
    try:
        while view:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [fd], [], left)[1]:
                return False
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                continue
    except OSError:          # EPIPE: the worker is gone
        return False
    return True


class PurifyError(RuntimeError):
    """The defense's purify server failed (crashed, hung, broke a limit, bad output)."""


class PurifyServer:
    """`with PurifyServer(spec, model_path) as server: server.purify(wave, lengths)`.

    `overrides` says which of purify/transcribe the defense's class overrides (self-reported
    by its process). The wall-clock limit applies to the defense's own time: loading, and
    all its answers together (the attack between requests is the harness's time, not the
    defense's); the job's CPU and memory limits to the whole job. Going past it kills the
    job. After the block, `result` holds the job's JobResult."""

    def __init__(self, plugin: PluginSpec, model_path, *, device="cpu",
                 limits: SandboxLimits | None = None, trusted=False, seed=0, effort="full",
                 workdir=None):
        self.plugin, self.model_path, self.device = plugin, Path(model_path).resolve(), device
        self.limits, self.trusted, self.seed, self.effort = limits or SandboxLimits(), trusted, seed, effort
        self.workdir = workdir
        self.overrides: dict[str, bool] = {}
        self.requests = 0
        self.defense_s = 0.0              # time spent waiting for the defense's answers
        self.result: JobResult | None = None
        self.error: str | None = None     # the worker's own report of a failed request
        self._deadline = 0.0
        self._wall_s = 0.0
        self._launch: Launch | None = None
        self._jobdir: Path | None = None

    def __enter__(self) -> PurifyServer:
        setup = _Setup("purify", self.plugin, self.limits, self.trusted, self.device)
        if setup.error:
            raise PurifyError(setup.error)
        self._jobdir = new_jobdir(self.workdir)
        try:
            job = setup.job("purify", self.plugin, self.device, self.seed, self.effort, 1)
            _prepare(self._jobdir, Path(self.plugin.folder).resolve(), self.model_path, [], [], job)
            caps = {"status.json": 1 << 20, "ready.json": READY_BYTES}
            self._wall_s = setup.limits.wall_s
            self._deadline = time.monotonic() + self._wall_s
            self._launch = Launch(self._jobdir, caps, setup, requests=True)
            if self._launch.start_error:
                raise PurifyError(self._launch.start_error)
            if not self._launch.receiver.wait_for("ready.json", self._deadline):
                raise PurifyError(self._failure("the defense did not load"))
            self.overrides = self._ready()
        except BaseException:
            self._close()
            raise
        return self

    def _ready(self) -> dict[str, bool]:
        path = self._launch.out / "ready.json"
        try:
            data = parse_untrusted_json(path.read_bytes())   # depth and numbers bounded
            return {k: bool(data.get(k) is True) for k in ("purify", "transcribe")}
        except (OSError, UntrustedJSONError, AttributeError) as e:
            raise PurifyError(self._failure(f"ready.json is malformed ({e})")) from None

    def purify(self, wave: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The defense's purify of (B, T) float32 audio: (B, T) float32, finite."""
        launch, k = self._launch, self.requests
        if launch is None or self.result is not None:   # stopped by an earlier failure
            raise PurifyError(f"the purify server has stopped: {self._why() or 'closed'}")
        name = f"purified-{k}.safetensors"
        wave = wave.detach().to("cpu", torch.float32).contiguous()
        launch.receiver.caps[name] = wave.numel() * 4 + RESULT_SLACK
        data = save({"wave": wave, "lengths": lengths.detach().to("cpu", torch.long).contiguous()})
        started = time.monotonic()
        self._deadline = started + max(self._wall_s - self.defense_s, 0.0)
        if not send_until(launch.requests, f"request-{k}", data, self._deadline):
            raise PurifyError(self._failure(f"request {k} could not be sent (the defense "
                                            "stopped reading)"))
        answered = launch.receiver.wait_for(name, self._deadline)
        self.defense_s += time.monotonic() - started
        if not answered:
            raise PurifyError(self._failure(f"no answer to request {k} (the defense's time: "
                                            f"{self.defense_s:.0f} s of {self._wall_s:g} s)"))
        self.requests += 1
        path = launch.out / name
        try:
            out = load_file(str(path))["wave"]
        except Exception as e:  # noqa: BLE001 - untrusted bytes
            raise PurifyError(f"purify output {k} is unreadable: {type(e).__name__}") from None
        finally:
            path.unlink(missing_ok=True)
        if tuple(out.shape) != tuple(wave.shape):
            raise PurifyError(f"purify returned shape {tuple(out.shape)} for input {tuple(wave.shape)}")
        if out.dtype != torch.float32:
            raise PurifyError(f"purify returned dtype {out.dtype}, expected torch.float32")
        if not bool(torch.isfinite(out).all()):
            raise PurifyError("purify returned NaN or Inf")
        return out

    def _failure(self, what: str) -> str:
        """Stop the job and say why it failed (its limits, its crash, its own error)."""
        self._stop()
        why = self._why()
        return f"{what}: {why}" if why else what

    def _why(self) -> str | None:
        return (self.result.error if self.result and self.result.error else None) or self.error

    def _stop(self) -> None:
        if self._launch is None or self.result is not None:
            return
        launch = self._launch
        launch.close_requests()          # EOF: an honest server exits by itself
        rc, timed_out = launch.wait(min(max(self._deadline - time.monotonic(), 0.0), 30.0))
        _, recs, self.result = job_result(launch, 1, rc, timed_out)
        error = recs[0].get("error") if recs and isinstance(recs[0], dict) else None
        self.error = error[:2000] if isinstance(error, str) else None

    def _close(self) -> None:
        try:
            self._stop()
        finally:
            if self._jobdir is not None and not remove_tree(self._jobdir):
                warnings.warn(f"could not remove the job folder {self._jobdir}", stacklevel=2)

    def __exit__(self, *exc) -> None:
        self._close()
