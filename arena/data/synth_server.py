"""A small synthesis process: reads JSON requests on stdin, answers raw float32 PCM.

It imports neither torch nor anything large, so forking it per utterance is cheap; each
request is served by a fork of the same freshly initialised synthesizer, so no state
carries from one utterance to the next (see arena.data.corpus).
Protocol: one JSON line {text, accent, variant, rate, pitch} -> 8-byte little-endian
length, then that many bytes of float32 samples at the native rate (length 0 = failure).
"""
from __future__ import annotations

import json
import os
import struct
import sys


def serve() -> None:
    from arena.data.synth import EspeakSynth, VoiceSetting

    synth = EspeakSynth.get()
    out = sys.stdout.fileno()
    os.write(out, struct.pack("<q", synth.native_rate))
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            try:
                pcm = synth.synthesize_raw(req["text"], VoiceSetting(
                    req["accent"], req["variant"], req["rate"], req["pitch"])).tobytes()
            except BaseException:
                pcm = b""
            data = struct.pack("<q", len(pcm)) + pcm
            view = memoryview(data)
            while view:
                view = view[os.write(out, view):]
            os._exit(0)
        os.waitpid(pid, 0)


class SynthClient:
    """Starts a synth server subprocess and asks it for utterances one at a time."""

    def __init__(self):
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-m", "arena.data.synth_server"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.native_rate = struct.unpack("<q", self._read(8))[0]

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.proc.stdout.read(n - len(buf))
            if not chunk:
                raise RuntimeError("synthesis server exited")
            buf += chunk
        return buf

    def synthesize_raw(self, text: str, setting):
        import numpy as np

        req = dict(text=text, accent=setting.accent, variant=setting.variant,
                   rate=setting.rate, pitch=setting.pitch)
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        n = struct.unpack("<q", self._read(8))[0]
        if n <= 0:
            raise RuntimeError(f"synthesis failed for {text!r} with {setting}")
        return np.frombuffer(self._read(n), dtype=np.float32).copy()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)


if __name__ == "__main__":
    try:
        serve()
    except BrokenPipeError:
        pass  # the pool worker that started us was terminated (build finished): not an error
