"""Per-job start-up cost of the sandbox: `python -m arena.bench.startup`.

Runs a do-nothing attack on a tiny model three ways: forked by this thread's slot (the
default where the harness is root: sandbox/slot.py), as a bubblewrap sandbox of its own
(ARENA_FORK_SERVER=0) and without a sandbox (--trusted), and prints the time from the job's
start to "model and plugin loaded" for each (median of --repeats runs, interleaved). The
slot's own start (its server importing torch, once per worker thread) is the first served
job's start-up, reported apart.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

from arena.sandbox import run_attack_job
from arena.submissions.manifest import plugin_spec
from arena.submissions.validate import synthetic_batches, tiny_model_file

NOOP = '''from arena import Attack

class Noop(Attack):
    def run(self, batch, model, budget):
        return batch.wave
'''
TOML = 'name = "bench-noop"\ntrack = "attack"\nentry = "noop:Noop"\nauthors = ["arena"]\nversion = "1"\n'


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None, help="model file (default: a tiny random model)")
    args = ap.parse_args(argv)

    modes = ("served", "sandbox", "trusted")
    rows: dict[str, list[float]] = {m: [] for m in modes}
    walls: dict[str, list[float]] = {m: [] for m in modes}
    saved = os.environ.get("ARENA_FORK_SERVER")
    with tempfile.TemporaryDirectory() as tmp:
        sub = Path(tmp, "sub")
        sub.mkdir()
        (sub / "submission.toml").write_text(TOML)
        (sub / "noop.py").write_text(NOOP)
        model = args.model or tiny_model_file(tmp)
        batches = synthetic_batches()

        def run(mode: str):
            os.environ["ARENA_FORK_SERVER"] = "0" if mode == "sandbox" else "1"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t = time.time()
                r = run_attack_job(plugin_spec(sub), model, batches, "snr30", trusted=mode == "trusted")
                wall = time.time() - t
            if r.status != "ok":
                raise SystemExit(f"{mode} run failed: {r.status}: {r.error}")
            return r.startup_s, wall

        try:
            first = run("served")[0]     # starts this thread's slot
            for _ in range(args.repeats):
                for mode in modes:
                    startup, wall = run(mode)
                    rows[mode].append(startup)
                    walls[mode].append(wall)
        finally:
            if saved is None:
                os.environ.pop("ARENA_FORK_SERVER", None)
            else:
                os.environ["ARENA_FORK_SERVER"] = saved
    med = {k: statistics.median(v) for k, v in rows.items()}
    wmed = {k: statistics.median(v) for k, v in walls.items()}
    print(f"start-up (job start -> model + plugin loaded), median of {args.repeats}:")
    print(f"  forked by a slot     {med['served']:.3f} s   (whole job {wmed['served']:.3f} s; "
          f"the slot's own start, once per worker: {first:.3f} s)")
    print(f"  bubblewrap, own      {med['sandbox']:.3f} s   (whole job {wmed['sandbox']:.3f} s)")
    print(f"  without (trusted)    {med['trusted']:.3f} s   (whole job {wmed['trusted']:.3f} s)")
    print(f"  sandbox overhead     {med['sandbox'] - med['trusted']:+.3f} s per job of its own, "
          f"{med['served'] - med['trusted']:+.3f} s per served job")
    return {"served_s": med["served"], "slot_start_s": first, "sandbox_s": med["sandbox"],
            "trusted_s": med["trusted"], "job_served_s": wmed["served"],
            "job_sandbox_s": wmed["sandbox"], "job_trusted_s": wmed["trusted"]}


if __name__ == "__main__":
    main()
