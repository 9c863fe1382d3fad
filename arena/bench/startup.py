"""Per-job start-up cost of the sandbox: `python -m arena.bench.startup`.

Runs a do-nothing attack on a tiny model, with bubblewrap and without (--trusted), and
prints the time from process start to "model and plugin loaded" for both (median of
--repeats runs, interleaved) and the difference, which is the cost of the sandbox itself.
"""
from __future__ import annotations

import argparse
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

    rows = {"sandbox": [], "trusted": []}
    walls = {"sandbox": [], "trusted": []}
    with tempfile.TemporaryDirectory() as tmp:
        sub = Path(tmp, "sub")
        sub.mkdir()
        (sub / "submission.toml").write_text(TOML)
        (sub / "noop.py").write_text(NOOP)
        model = args.model or tiny_model_file(tmp)
        batches = synthetic_batches()
        for _ in range(args.repeats):
            for mode in ("sandbox", "trusted"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t = time.time()
                    r = run_attack_job(plugin_spec(sub), model, batches, "snr30", trusted=mode == "trusted")
                    walls[mode].append(time.time() - t)
                if r.status != "ok":
                    raise SystemExit(f"{mode} run failed: {r.status}: {r.error}")
                rows[mode].append(r.startup_s)
    med = {k: statistics.median(v) for k, v in rows.items()}
    wmed = {k: statistics.median(v) for k, v in walls.items()}
    print(f"start-up (process start -> model + plugin loaded), median of {args.repeats}:")
    print(f"  with bubblewrap    {med['sandbox']:.3f} s   (whole job {wmed['sandbox']:.3f} s)")
    print(f"  without (trusted)  {med['trusted']:.3f} s   (whole job {wmed['trusted']:.3f} s)")
    print(f"  sandbox overhead   {med['sandbox'] - med['trusted']:+.3f} s per job "
          f"(whole job {wmed['sandbox'] - wmed['trusted']:+.3f} s)")
    return {"sandbox_s": med["sandbox"], "trusted_s": med["trusted"],
            "job_sandbox_s": wmed["sandbox"], "job_trusted_s": wmed["trusted"]}


if __name__ == "__main__":
    main()
