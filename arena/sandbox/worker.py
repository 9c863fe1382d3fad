"""Runs inside the sandbox: `python -m arena.sandbox.worker JOBDIR`.

JOBDIR/input (read-only): job.json, batches.safetensors, model.safetensors, submission/.
JOBDIR/output (the only writable path): status.json (rewritten atomically after every
batch) and result-<i>.safetensors (attacks: {"adv": tensor}) for each finished batch.
The harness trusts none of it: it re-validates everything it reads.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

T0 = time.time()


def _tail(exc: BaseException, lines: int = 8) -> str:
    text = "".join(traceback.format_exception(exc)).strip().splitlines()
    head = f"{type(exc).__name__}: {exc}"[:500]
    return head + "\n" + "\n".join(text[-lines:])


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _drop_privileges(uid: int) -> None:
    """Become an unprivileged user (all capabilities dropped) before any submission code."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise RuntimeError("could not drop privileges")


def main(jobdir: str) -> int:
    inp, out = os.path.join(jobdir, "input"), os.path.join(jobdir, "output")
    status_path = os.path.join(out, "status.json")
    with open(os.path.join(inp, "job.json")) as f:
        job = json.load(f)
    status = {"started_at": T0, "loaded_at": None, "load_s": None, "load_error": None,
              "batches": [], "forward_calls": 0, "backward_calls": 0, "done": False}
    _write_json(status_path, status)

    threads = int(job.get("threads", 1))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(threads)
    try:
        from arena.core.audio import AudioBatch
        from arena.core.budget import Budget
        from arena.plugins.api import TargetModel
        from arena.plugins.loader import load_plugin
        from arena.zoo.registry import load_model

        device = job.get("device", "cpu")
        model = TargetModel(load_model(os.path.join(inp, "model.safetensors"), device=device), device)
        tensors = load_file(os.path.join(inp, "batches.safetensors"))
        if job.get("drop_uid") is not None:
            _drop_privileges(int(job["drop_uid"]))
        # -------- from here on, submission code runs (unprivileged)
        plugin = load_plugin(os.path.join(inp, "submission"), job["module"], job["class_name"],
                             job["track"], job.get("effort", "full"), int(job.get("seed", 0)))
    except BaseException as e:  # noqa: BLE001 - reported, never raised
        status["load_error"] = _tail(e)
        _write_json(status_path, status)
        return 3
    status["loaded_at"] = time.time()
    status["load_s"] = status["loaded_at"] - T0
    _write_json(status_path, status)

    role, seed = job["role"], int(job.get("seed", 0))
    for i, meta in enumerate(job["batches"]):
        t = time.time()
        rec = {"ok": False, "error": None, "seconds": None}
        try:
            torch.manual_seed(seed * 1_000_003 + i)
            batch = AudioBatch(ids=meta["ids"], wave=tensors[f"wave_{i}"], lengths=tensors[f"lengths_{i}"],
                               transcripts=meta.get("transcripts"), targets=meta.get("targets")).to(device)
            if role == "attack":
                adv = plugin.run(batch, model, Budget.parse(meta["budget"]))
                if not isinstance(adv, torch.Tensor):
                    raise TypeError(f"run() returned {type(adv).__name__}, not a torch.Tensor")
                path = os.path.join(out, f"result-{i}.safetensors")
                save_file({"adv": adv.detach().to("cpu").contiguous()}, path + ".tmp")
                os.replace(path + ".tmp", path)
            else:
                hyps = plugin.transcribe(batch, model)
                if not isinstance(hyps, (list, tuple)):
                    raise TypeError(f"transcribe() returned {type(hyps).__name__}, not a list of str")
                rec["transcripts"] = [h if isinstance(h, str) else None for h in hyps]
                if any(not isinstance(h, str) for h in hyps):
                    raise TypeError("transcribe() must return str items, got "
                                    + ", ".join(sorted({type(h).__name__ for h in hyps})))
            rec["ok"] = True
        except BaseException as e:  # noqa: BLE001 - one failed batch does not lose the others
            rec["error"] = _tail(e)
        rec["seconds"] = time.time() - t
        status["batches"].append(rec)
        status["forward_calls"], status["backward_calls"] = model.forward_calls, model.backward_calls
        _write_json(status_path, status)
    status["done"] = True
    _write_json(status_path, status)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
