"""The process that runs inside the sandbox: `python -m arena.sandbox.worker JOBDIR_INPUT`.

It loads the model once, imports the plugin from its folder, runs every batch (an
exception fails that batch only) and writes after each batch, atomically: the output
tensors (`batch_<i>.safetensors`) and `status.json`. A job killed by its time limit keeps
the batches it finished. Nothing here is trusted by the harness: it re-checks everything.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

T_START = time.time()


def _write_json(path, obj):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _tail(exc: BaseException, lines: int = 6) -> str:
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    text = "".join(tb).strip().splitlines()
    return f"{type(exc).__name__}: {exc}".strip()[:500] + " | " + " / ".join(
        line.strip() for line in text[-lines:-1])[-1200:]


def main(input_dir: str) -> int:
    job = json.load(open(os.path.join(input_dir, "job.json")))
    out_dir = job["output"]
    status = {"started_at": T_START, "ready_at": None, "batches": [], "error": None,
              "forward_calls": 0, "backward_calls": 0}
    status_path = os.path.join(out_dir, "status.json")
    _write_json(status_path, status)
    try:
        import torch
        from safetensors.torch import load_file, save_file

        torch.set_num_threads(int(job.get("threads", 1)))
        from arena.models_io import load_model
        from arena.plugins.api import AudioBatch, Budget, TargetModel

        device = job.get("device", "cpu")
        target = TargetModel(load_model(job["model"], device=device), device=device)
        tensors = load_file(os.path.join(input_dir, "batches.safetensors"))
        sys.path.insert(0, job["submission"])
        import importlib

        module_name, class_name = job["entry"].split(":")
        plugin = getattr(importlib.import_module(module_name), class_name)()
        plugin.effort = job.get("effort", "full")
        plugin.seed = int(job.get("seed", 0))
    except BaseException as e:  # the whole job fails: model, import or constructor
        status["error"] = "setup failed: " + _tail(e)
        _write_json(status_path, status)
        return 2
    status["ready_at"] = time.time()
    _write_json(status_path, status)
    for i, spec in enumerate(job["batches"]):
        t0 = time.time()
        record = {"ok": False, "error": None, "seconds": 0.0}
        try:
            torch.manual_seed(plugin.seed * 100_003 + i)
            batch = AudioBatch(ids=spec["ids"], wave=tensors[f"wave_{i}"].to(device),
                               lengths=tensors[f"lengths_{i}"].to(device),
                               transcripts=spec.get("transcripts"), targets=spec.get("targets"))
            if job["role"] == "attack":
                adv = plugin.run(batch, target, Budget.parse(spec["budget"]))
                if not isinstance(adv, torch.Tensor):
                    raise TypeError(f"run() returned {type(adv).__name__}, not a torch.Tensor")
                tmp = os.path.join(out_dir, f".batch_{i}.tmp")
                save_file({"adv": adv.detach().to("cpu").contiguous()}, tmp)
                os.replace(tmp, os.path.join(out_dir, f"batch_{i}.safetensors"))
            else:
                hyps = plugin.transcribe(batch, target)
                record["transcripts"] = [h if isinstance(h, str) else repr(h) for h in list(hyps)]
            record["ok"] = True
        except BaseException as e:  # one batch fails, the others still run
            if isinstance(e, (KeyboardInterrupt, SystemExit)) and not isinstance(e, SystemExit):
                raise
            record["error"] = _tail(e)
        record["seconds"] = round(time.time() - t0, 4)
        status["batches"].append(record)
        status["forward_calls"] = target.forward_calls
        status["backward_calls"] = target.backward_calls
        _write_json(status_path, status)
    status["finished_at"] = time.time()
    _write_json(status_path, status)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
