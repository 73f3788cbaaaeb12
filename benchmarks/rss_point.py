"""Peak RSS growth of one training step and one inference call of one model, measured in this
fresh process (``--cpu_memory rss`` of :mod:`benchmarks.efficiency`).

    python -m benchmarks.rss_point '{"model": "LRURec", "max_len": 200, "n_items": 3417, ...}'

A process of its own because RSS also counts what earlier points left behind; see
:mod:`benchmarks.measure` for the method.
"""

from __future__ import annotations

import json
import sys

import torch

from benchmarks import measure, models, steps

MODULE = "benchmarks.rss_point"


def in_subprocess(spec, timeout=600):
    """``{"train": bytes, "inference": bytes}`` of the point ``spec`` (model, max_len,
    n_items, batch_size, overrides, train_mode, seed, threads, floor), measured in a fresh
    process; a value is None where the call failed, with the error under ``<kind>_error``."""
    return measure.rss_in_subprocess(MODULE, spec, timeout)


def measure_point(spec):
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    model, config, info = models.build_model(spec["model"], spec["max_len"], spec["n_items"],
                                             spec.get("overrides"), spec.get("train_mode"), "cpu",
                                             spec.get("seed", 0), spec.get("floor", False))
    optimizer = models.optimizer_for(model, config)
    batches = {train: steps.make_batch(config, spec["batch_size"], spec["max_len"],
                                       spec["n_items"], info["train_mode"], train)
               for train in (True, False)}
    out = {}
    clip = config["clip_grad_norm"]
    for kind, fn in (("train", lambda: steps.train_step(model, optimizer, batches[True], clip,
                                                        info["loss_fn"])),
                     ("inference", lambda: steps.inference_step(model, batches[False]))):
        try:
            fn()  # warm-up: optimiser state, lazy library initialisation
            out[kind] = measure.rss_peak_call_bytes(fn)
        except Exception as err:  # noqa: BLE001 - reported, not raised
            out[kind] = None
            out[kind + "_error"] = f"{type(err).__name__}: {err}"[:300]
    return out


if __name__ == "__main__":
    print(measure.RSS_RESULT + json.dumps(measure_point(json.loads(sys.argv[1]))), flush=True)
