"""Training-step time, peak memory and inference latency against sequence length.

    python -m benchmarks.efficiency --models SoftmaxSASRec SASRec LightSANs GRU4Rec

Every model (ours from ``recbole_efficient.model.MODELS`` or RecBole's) is built from its yaml
defaults with ``MAX_ITEM_LIST_LENGTH = L`` on random full-length sequences, then measured at
each length L in two settings:

* ``tokens``: a constant number of tokens per batch (batch = ``--tokens_per_batch`` // L),
* ``batch``: a constant batch size (``--batch_size``),

for a training step (forward + backward + gradient clipping if configured + optimiser step)
and for ``full_sort_predict`` on one batch. Each figure is the median of ``--repeats`` calls
after ``--warmup`` calls; models are interleaved call by call so that machine noise hits them
alike. Peak memory is what one call allocates on top of the memory that existed before it
(parameters, optimiser state, the batch): see ``benchmarks/measure.py`` for how it is measured
on CPU and CUDA. Growth exponents are least-squares slopes in log-log space of the cost per
sequence (figure / batch size) against L: 1 = linear, 2 = quadratic, in both settings.

A ``--models`` entry is a model name, or a variant ``Name@item,item,...`` shown under that
label: ``key=value`` items override config keys (``ELASTIC@use_imr=False``), ``floor`` removes
the model's sequence mixer (``LRURec@floor``: ``drop_sequence_mixer``, leaving embeddings,
feed-forward blocks and output layer). ``--floors`` adds the floor of every entry that has one
and reports each model's cost relative to its floor, the number an efficient model pushes down.

``--preset train``: the long-sequence training setting (forward + backward + optimiser step,
next-item cross-entropy over all 3,417 items at every position, hidden 64, 2 layers, 16,384
tokens per batch, L in {200, 1000, 2000}); ``--preset inference``: batch 16, the whole history
encoded, the last position scored against all items, no gradients. Both: every model of ours
with its floor and RecBole's SASRec (trained at every position too, see
``benchmarks.steps.recbole_all_positions_loss``); any flag given explicitly wins over the
preset.

Outputs in ``--out``: efficiency.json (meta + raw points + exponents), efficiency.csv (raw
points), efficiency.md (tables), efficiency_time.png and efficiency_memory.png.
"""

from __future__ import annotations

import argparse
import gc
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import torch

from benchmarks import cli, measure, models, report, rss_point, steps
from recbole_efficient.model import get_model

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "efficiency"
RECBOLE_BASELINES = ("SASRec", "LightSANs", "GRU4Rec")
SETTINGS = ("tokens", "batch")
KINDS = ("train", "inference")
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
STATUS_TEXT = {"too_slow": "too slow", "oom": "OOM", "error": "error", "skipped": "skipped"}
# Both presets: ML-1M's item count, the LRURec paper's sizes, every model next to its floor.
_PRESET_SIZES = {"lengths": [200, 1000, 2000], "n_items": 3417, "hidden_size": 64,
                 "n_layers": 2, "floors": True, "reference": "SASRec",
                 "max_seconds_per_point": 0, "cpu_memory": "none"}
PRESETS = {
    "train": dict(_PRESET_SIZES, kinds=["train"], settings=["tokens"], tokens_per_batch=16384,
                  train_mode="all_positions", warmup=1),
    "inference": dict(_PRESET_SIZES, kinds=["inference"], settings=["batch"], batch_size=16),
}


class Variant(NamedTuple):
    """One ``--models`` entry: ``label`` as given, the model class name, config overrides and
    whether the sequence mixer is removed."""

    label: str
    model: str
    overrides: dict
    floor: bool


def parse_variant(text):
    """``Name`` or ``Name@key=value,...,floor`` -> :class:`Variant` (ValueError if malformed)."""
    model, _, spec = text.partition("@")
    overrides, floor = {}, False
    for item in filter(None, (part.strip() for part in spec.split(","))):
        if item == "floor":
            floor = True
        elif "=" in item:
            key, value = cli.key_value(item)
            overrides[key] = value
        else:
            raise ValueError(f"{text!r}: variant items are key=value or 'floor', got {item!r}")
    return Variant(text, model.strip(), overrides, floor)


def floor_label(variant):
    return variant.label + ("," if "@" in variant.label else "@") + "floor"


def build_parser():
    p = cli.parser("efficiency", __doc__)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="the long-sequence training or inference setting (see the module "
                        "docstring); explicit flags win")
    p.add_argument("--models", nargs="+", default=None,
                   help="model class names or variants Name@key=value,...[,floor] (default: "
                        "every recbole_efficient model, then " + ", ".join(RECBOLE_BASELINES)
                        + "; with --preset: ours, then SASRec)")
    p.add_argument("--floors", action="store_true",
                   help="add each model's floor (Name@floor: sequence mixer removed) and report "
                        "costs relative to it")
    p.add_argument("--lengths", nargs="+", type=int, default=[50, 200, 500, 1000, 2000])
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    p.add_argument("--tokens_per_batch", type=int, default=4096,
                   help="tokens setting: batch = max(1, tokens_per_batch // L)")
    p.add_argument("--batch_size", type=int, default=4, help="batch setting: sequences per batch")
    p.add_argument("--n_items", type=int, default=2000,
                   help="item vocabulary incl. the padding id 0 (dataset.num(item_id))")
    p.add_argument("--hidden_size", type=int, default=None,
                   help="hidden size (GRU4Rec: embedding_size and hidden_size); default: yaml")
    p.add_argument("--n_layers", type=int, default=None,
                   help="layers (n_layers or num_layers); default: yaml")
    cli.add_set_option(p)
    p.add_argument("--train_mode", choices=["augmented", "all_positions"], default=None,
                   help="for recbole_efficient models (default: each model's yaml); RecBole's "
                        "models always train augmented")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--max_seconds_per_point", type=float, default=30.0,
                   help="skip a point (status too_slow) whose warmup+repeats would exceed this, "
                        "and the larger lengths of that model and setting; 0: no limit")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--amp", choices=sorted(AMP_DTYPES), default="off",
                   help="autocast dtype of the forward (RecBole's enable_amp; CUDA's default is "
                        "fp16); training with fp16 also uses a GradScaler (enable_scaler)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: elapsed time; cpu: this process's CPU time (CPU device only), "
                        "steadier on a machine shared with other jobs")
    p.add_argument("--cpu_memory", choices=["profiler", "rss", "none"], default="profiler",
                   help="how peak memory is measured on CPU (see benchmarks/measure.py)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads on CPU; 0: torch's default. One thread by default: "
                        "on a shared machine multi-threaded small ops stall on descheduled threads "
                        "(GRU4Rec steps varied 10x with 2 threads under load, not with 1)")
    p.add_argument("--reference", default=None,
                   help="model that time ratios are relative to (default: the first model)")
    p.add_argument("--seed", type=int, default=2020)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.preset:
        out = DEFAULT_OUT.parent / f"efficiency_{args.preset}"
        parser.set_defaults(**PRESETS[args.preset], out=str(out))
        args = parser.parse_args(argv)
    args.models = args.models or models.default_models(
        ("SASRec",) if args.preset else RECBOLE_BASELINES)
    variants = []
    for text in args.models:
        try:
            variant = parse_variant(text)
            get_model(variant.model)
        except ValueError as err:
            parser.error(str(err))
        if variant.floor and not models.has_floor(variant.model):
            parser.error(f"{text}: {variant.model} has no drop_sequence_mixer(), so no floor")
        variants.append(variant)
    if args.floors:  # each floor right after its model
        labels = set(args.models)
        args.models = [label for v in variants for label in
                       ([v.label, floor_label(v)] if not v.floor and models.has_floor(v.model)
                        and floor_label(v) not in labels else [v.label])]
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    if args.device.startswith("cuda") and args.clock == "cpu":
        parser.error("--clock cpu measures CPU work; use --clock wall with --device cuda")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    args.lengths = sorted(set(args.lengths))
    if args.reference is None or args.reference not in args.models:
        args.reference = args.models[0]
    return args


def batch_size_for(setting, seq_len, args):
    if setting == "tokens":
        return max(1, args.tokens_per_batch // seq_len)
    return args.batch_size


def model_overrides(name, seq_len, args, variant_overrides=None):
    """Config overrides of model ``name`` at length ``seq_len``: sizes and ``--set`` keys its
    yaml defines, then a variant's own overrides."""
    over = models.size_overrides(name, args.hidden_size, args.n_layers, dict(args.extra))
    defaults = models.model_yaml_defaults(name)
    if "k_interests" in defaults:  # LightSANs: no more interests than positions
        k = over.get("k_interests", defaults["k_interests"])
        if k > seq_len:
            over["k_interests"] = seq_len
    over.update(variant_overrides or {})
    return over


class EfficiencyBenchmark:
    """Measures every model of ``args`` at every length; :meth:`run` returns the results
    (``command``: the command line they record)."""

    def __init__(self, args, log=print, command=None):
        self.args = args
        self.log = log
        self.command = command
        self.device = torch.device(args.device)
        self.variants = {label: parse_variant(label) for label in args.models}
        self.points = []
        self.model_info = {}
        self.stopped = {}    # (model, kind, setting) -> why larger lengths are skipped
        self.last = {}       # (model, kind, setting) -> (L, batch, median seconds)

    # -- measurement ------------------------------------------------------------------------
    def run(self):
        started = time.perf_counter()
        threads = torch.get_num_threads()
        if self.args.threads and self.device.type == "cpu":
            torch.set_num_threads(self.args.threads)
        try:
            for seq_len in self.args.lengths:
                self._run_length(seq_len)
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            self.wall_seconds = time.perf_counter() - started
            return self.results()
        finally:
            torch.set_num_threads(threads)

    def _build_all(self, seq_len):
        built, errors = {}, {}
        for name in self.args.models:
            if all((name, k, s) in self.stopped for k in self.args.kinds for s in self.args.settings):
                continue
            variant = self.variants[name]
            over = model_overrides(variant.model, seq_len, self.args, variant.overrides)
            try:
                model, config, info = models.build_model(variant.model, seq_len, self.args.n_items,
                                                         over, self.args.train_mode,
                                                         self.device, self.args.seed,
                                                         floor=variant.floor)
                optimizer = models.optimizer_for(model, config)
            except Exception as err:  # noqa: BLE001 - recorded as the point's status
                errors[name] = f"{type(err).__name__}: {err}"[:300]
                self.log(f"  {name}: build failed: {errors[name]}")
                continue
            self.model_info.setdefault(name, {"train_mode": info["train_mode"],
                                              "loss_type": info["loss_type"],
                                              "overrides": {k: v for k, v in over.items()
                                                            if k != "k_interests"},
                                              "n_params": {}})
            self.model_info[name]["n_params"][seq_len] = info["n_params"]
            scaler = (torch.amp.GradScaler(self.device.type) if self.args.amp == "fp16"
                      else None)
            built[name] = {"model": model, "config": config, "info": info,
                           "optimizer": optimizer, "overrides": over,
                           "clip": config["clip_grad_norm"], "scaler": scaler}
        return built, errors

    def _run_length(self, seq_len):
        args = self.args
        self.log(f"L={seq_len}")
        built, errors = self._build_all(seq_len)
        for kind in args.kinds:
            groups = {}
            for setting in args.settings:
                groups.setdefault(batch_size_for(setting, seq_len, args), []).append(setting)
            for batch, settings in groups.items():
                self._run_group(kind, seq_len, batch, settings, built, errors)

    def _predicted_step_seconds(self, name, kind, setting, seq_len, batch):
        """Lower bound of one call's time from the previous length: work at least ~ tokens."""
        prev = self.last.get((name, kind, setting))
        if prev is None:
            return None
        prev_len, prev_batch, prev_t = prev
        return 0.8 * prev_t * (seq_len * batch) / (prev_len * prev_batch)

    def _run_group(self, kind, seq_len, batch, settings, built, errors):
        """Measure every model for one (kind, L, batch); shared by settings with that batch."""
        args = self.args
        n_calls = args.warmup + args.repeats
        limit = args.max_seconds_per_point or None
        outcome = {}  # name -> dict(status, note, times, mem)
        todo = []
        for name in args.models:
            live = [s for s in settings if (name, kind, s) not in self.stopped]
            if not live:
                outcome[name] = {"status": "skipped",
                                 "note": self.stopped[(name, kind, settings[0])]}
                continue
            if name in errors:
                outcome[name] = {"status": "error", "note": errors[name]}
                continue
            if name not in built:
                continue
            pred = max((self._predicted_step_seconds(name, kind, s, seq_len, batch) or 0)
                       for s in live)
            if limit and pred * n_calls > limit:
                outcome[name] = {"status": "too_slow",
                                 "note": f"predicted >= {pred:.1f} s per call from the previous "
                                         f"length; {n_calls} calls exceed {limit:g} s"}
                continue
            todo.append(name)

        calls = {}
        for name in todo:
            b = built[name]
            cfg, mode = b["config"], b["info"]["train_mode"]
            data = steps.make_batch(cfg, batch, seq_len, args.n_items, mode, kind == "train",
                                    self.device, args.seed)
            amp = AMP_DTYPES[args.amp]
            if kind == "train":
                calls[name] = (lambda m=b["model"], o=b["optimizer"], d=data, c=b["clip"],
                               f=b["info"]["loss_fn"], s=b["scaler"]:
                               steps.train_step(m, o, d, c, f, amp, s))
            else:
                calls[name] = lambda m=b["model"], d=data: steps.inference_step(m, d, amp)
            outcome[name] = {"status": "ok", "times": [], "elapsed": 0.0}

        active = list(todo)
        for call_idx in range(n_calls):
            for name in list(active):
                res = outcome[name]
                try:
                    t = measure.timed(calls[name], self.device, self.args.clock)
                except Exception as err:  # noqa: BLE001
                    res.update(status="oom" if measure.is_oom(err) else "error",
                               note=f"{type(err).__name__}: {err}"[:300])
                    active.remove(name)
                    self._free_after_error()
                    continue
                res["elapsed"] += t
                remaining = n_calls - call_idx - 1
                # First call: tolerant (one-off initialisation); second: the honest estimate.
                if limit and call_idx <= 1 and \
                        res["elapsed"] + t * remaining > limit * (2 if call_idx == 0 else 1):
                    res.update(status="too_slow",
                               note=f"{t:.2f} s per call; {n_calls} calls exceed {limit:g} s")
                    active.remove(name)
                    continue
                if call_idx >= args.warmup:
                    res["times"].append(t)

        for name in active:
            res = outcome[name]
            res["mem"], res["mem_method"] = self._memory(name, kind, seq_len, batch, built,
                                                          calls[name])

        for name, res in outcome.items():
            info = built.get(name, {}).get("info") or {}
            mode = info.get("train_mode") or self.model_info.get(name, {}).get("train_mode")
            for setting in settings:
                self._record(name, mode, kind, setting, seq_len, batch, res, settings, info)
        self._log_group(kind, seq_len, batch, settings, outcome)

    def _memory(self, name, kind, seq_len, batch, built, call):
        args = self.args
        try:
            if self.device.type == "cuda":
                return measure.cuda_peak_bytes(call, self.device), "cuda_max_memory_allocated"
            if args.cpu_memory == "profiler":
                return measure.profiler_peak_bytes(call), "cpu_profiler_allocations"
            if args.cpu_memory == "rss":
                b = built[name]
                spec = {"model": self.variants[name].model, "max_len": seq_len,
                        "n_items": args.n_items, "batch_size": batch,
                        "overrides": b["overrides"], "train_mode": args.train_mode,
                        "seed": args.seed, "threads": args.threads,
                        "floor": self.variants[name].floor}
                key = (name, seq_len, batch)
                cache = self.__dict__.setdefault("_rss_cache", {})
                if key not in cache:  # one subprocess measures both kinds
                    cache[key] = rss_point.in_subprocess(spec)
                return cache[key].get(kind), "cpu_rss_subprocess"
        except Exception as err:  # noqa: BLE001 - memory is reported as missing
            self.log(f"  {name}: memory measurement failed: {type(err).__name__}: {err}")
        return None, None

    def _free_after_error(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _record(self, name, mode, kind, setting, seq_len, batch, res, settings, info):
        times = res.get("times") or []
        status = res["status"]
        key = (name, kind, setting)
        if status == "ok":
            self.last[key] = (seq_len, batch, measure.median(times))
        elif status in ("too_slow", "oom") and key not in self.stopped:
            self.stopped[key] = f"{STATUS_TEXT[status]} at L={seq_len}"
        note = res.get("note", "")
        if len(settings) > 1:
            note = (note + "; " if note else "") + "measured once for settings " + "+".join(settings)
        self.points.append({
            "model": name, "train_mode": mode, "kind": kind, "setting": setting,
            "seq_len": seq_len, "batch_size": batch, "tokens": batch * seq_len,
            "status": status,
            "time_s_median": measure.median(times) if status == "ok" else None,
            "time_s_min": min(times) if status == "ok" else None,
            "time_s_max": max(times) if status == "ok" else None,
            "time_s_all": [round(t, 6) for t in times] if status == "ok" else [],
            "repeats": len(times) if status == "ok" else 0,
            "peak_mem_bytes": res.get("mem") if status == "ok" else None,
            "mem_method": res.get("mem_method") if status == "ok" else None,
            "n_params": info.get("n_params"),
            "note": note,
        })

    def _log_group(self, kind, seq_len, batch, settings, outcome):
        parts = []
        for name, res in outcome.items():
            if res["status"] == "ok":
                mem = report.fmt_mib(res.get("mem"))
                parts.append(f"{name} {report.fmt_seconds_ms(measure.median(res['times']))} ms"
                             + (f" / {mem} MiB" if mem else ""))
            else:
                parts.append(f"{name} {STATUS_TEXT.get(res['status'], res['status'])}")
        self.log(f"  {kind:9s} B={batch:<5d} [{'+'.join(settings)}]: " + ", ".join(parts))

    # -- results ----------------------------------------------------------------------------
    def exponents(self):
        rows = []
        for name in self.args.models:
            for kind in self.args.kinds:
                for setting in self.args.settings:
                    pts = sorted((p for p in self.points if p["model"] == name and p["kind"] == kind
                                  and p["setting"] == setting and p["status"] == "ok"),
                                 key=lambda p: p["seq_len"])
                    xs = [p["seq_len"] for p in pts]
                    per_seq_t = [p["time_s_median"] / p["batch_size"] for p in pts]
                    per_seq_m = [p["peak_mem_bytes"] / p["batch_size"]
                                 if p["peak_mem_bytes"] else None for p in pts]
                    rows.append({
                        "model": name, "train_mode": self.model_info.get(name, {}).get("train_mode"),
                        "kind": kind, "setting": setting,
                        "time_exponent": _round(measure.fit_exponent(xs, per_seq_t)),
                        "memory_exponent": _round(measure.fit_exponent(xs, per_seq_m)),
                        # between the two largest lengths: closest to the asymptotic growth
                        "time_exponent_tail": _round(measure.fit_exponent(xs[-2:],
                                                                          per_seq_t[-2:])),
                        "memory_exponent_tail": _round(measure.fit_exponent(xs[-2:],
                                                                            per_seq_m[-2:])),
                        "lengths": xs,
                    })
        return rows

    def results(self):
        args = self.args
        meta = {
            "command": self.command,
            "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "wall_seconds": round(getattr(self, "wall_seconds", 0.0), 1),
            "environment": report.environment(self.device),
            "args": {k: v for k, v in vars(args).items()},
            "memory_method": ("cuda_max_memory_allocated" if self.device.type == "cuda"
                              else {"profiler": "cpu_profiler_allocations",
                                    "rss": "cpu_rss_subprocess", "none": None}[args.cpu_memory]),
        }
        return {"meta": meta, "models": self.model_info, "points": self.points,
                "exponents": self.exponents()}


def _round(x, nd=2):
    return None if x is None else round(x, nd)


# -- writers --------------------------------------------------------------------------------
CSV_FIELDS = ["model", "train_mode", "kind", "setting", "seq_len", "batch_size", "tokens", "status",
              "time_s_median", "time_s_min", "time_s_max", "repeats", "peak_mem_bytes",
              "mem_method", "n_params", "time_s_all", "note"]
SECTIONS = {"train": ("Training step (forward + backward + optimiser step)", "Time per step"),
            "inference": ("Inference (`full_sort_predict` on one batch)", "Latency per batch")}
MEMORY_METHODS = {
    "cpu_profiler_allocations": "peak of torch's CPU tensor allocations during the call "
                                "(torch.profiler memory events), above what existed before it",
    "cpu_rss_subprocess": "peak RSS growth during the call, in a fresh subprocess per point "
                          "(glibc mmap threshold 64 KiB, peak mark reset after one warm-up call)",
    "cuda_max_memory_allocated": "torch.cuda.max_memory_allocated during the call minus "
                                 "memory_allocated before it",
    None: "not measured",
}
SHORT = {"train": "train", "inference": "infer", "tokens": "const. tokens",
         "batch": "const. batch", "time": "time", "memory": "mem"}


def _ms(p):
    return report.fmt_seconds_ms(p["time_s_median"])


def _us_per_token(p):
    return None if p["time_s_median"] is None else f"{p['time_s_median'] / p['tokens'] * 1e6:.1f}"


def _mib(p):
    return report.fmt_mib(p["peak_mem_bytes"])


class _Report:
    """The results of one run, looked up by model, kind, setting and length, as table rows."""

    def __init__(self, results):
        self.results, self.meta = results, results["meta"]
        self.args = args = self.meta["args"]
        self.models, self.lengths = args["models"], args["lengths"]
        self.points = {(p["model"], p["kind"], p["setting"], p["seq_len"]): p
                       for p in results["points"]}
        self.expo = {(e["model"], e["kind"], e["setting"]): e for e in results["exponents"]}
        self.modes = {m: (results["models"].get(m) or {}).get("train_mode", "")
                      for m in self.models}
        variants = [parse_variant(m) for m in self.models]
        self.floors = {v.label: floor_label(v) for v in variants
                       if not v.floor and floor_label(v) in self.models}

    def exponent(self, m, kind, setting, key):
        """``"full / tail"`` exponents (tail: the two largest lengths), or the full one alone
        when there are only two lengths."""
        e = self.expo.get((m, kind, setting)) or {}
        full, tail = e.get(key), e.get(key + "_tail")
        if full is None:
            return ""
        return f"{full:.2f}" if tail is None or len(e.get("lengths", [])) <= 2 \
            else f"{full:.2f} / {tail:.2f}"

    def cell(self, m, kind, setting, length, value):
        p = self.points.get((m, kind, setting, length))
        if p is None:
            return ""
        if p["status"] != "ok":
            return STATUS_TEXT.get(p["status"], p["status"])
        v = value(p)
        return v if v is not None else "n/a"

    def ratio_cell(self, m, to, kind, setting, length):
        p, r = (self.points.get((x, kind, setting, length)) for x in (m, to))
        if p and r and p["status"] == "ok" and r["status"] == "ok":
            return f"{p['time_s_median'] / r['time_s_median']:.2f}"
        return self.cell(m, kind, setting, length, None) if p and p["status"] != "ok" else ""

    def length_table(self, kind, setting, value=None, exponent_key=None, relative_to=None):
        """A row per model, a column per length: ``value(point)``, or the time relative to
        model ``relative_to(m)`` (rows without one are left out); then the exponent."""
        columns = [f"L={L} (B={batch_size_for(setting, L, argparse.Namespace(**self.args))})"
                   if setting == "tokens" else f"L={L}" for L in self.lengths]
        headers = ["model", "train_mode"] + columns
        if exponent_key:
            headers.append("exponent (all / last 2)")
        rows = []
        for m in self.models:
            to = relative_to(m) if relative_to else None
            if relative_to and to is None:
                continue
            row = [m, self.modes[m]] + [self.ratio_cell(m, to, kind, setting, L) if to else
                                        self.cell(m, kind, setting, L, value)
                                        for L in self.lengths]
            rows.append(row + ([self.exponent(m, kind, setting, exponent_key)]
                               if exponent_key else []))
        return report.markdown_table(headers, rows)

    def models_table(self):
        rows = []
        for m in self.models:
            info = self.results["models"].get(m) or {}
            n_params = info.get("n_params") or {}
            first = n_params[min(n_params, key=int)] if n_params else None  # JSON keys are str
            rows.append([m, self.modes[m], None if first is None else f"{first:,}",
                         ", ".join(f"{k}={v}" for k, v in (info.get("overrides") or {}).items())])
        return report.markdown_table(["model", "train_mode", "parameters (at smallest L)",
                                      "overrides"], rows)

    def exponents_table(self):
        """Every exponent of every model in one table (None if nothing was measured)."""
        cols = [(k, s, q) for k in self.args["kinds"] for q in ("time", "memory")
                for s in self.args["settings"] if q == "time" or self.meta["memory_method"]]
        if not cols:
            return None
        return report.markdown_table(
            ["model", "train_mode"] + [f"{SHORT[k]} {SHORT[q]}, {SHORT[s]}" for k, s, q in cols],
            [[m, self.modes[m]] + [self.exponent(m, k, s, f"{q}_exponent") for k, s, q in cols]
             for m in self.models])

    def kind_tables(self, kind):
        """``(heading, table)`` of every table of a training step or an inference call."""
        what, ref = SECTIONS[kind][1], self.args["reference"]
        specs = [(f"{what} (ms)", dict(value=_ms, exponent_key="time_exponent")),
                 ("Time per token (µs)", dict(value=_us_per_token))]
        if self.floors:
            specs.append((f"{what} relative to the model's floor (its sequence mixer removed)",
                          dict(relative_to=self.floors.get)))
        specs.append((f"{what} relative to {ref}", dict(relative_to=lambda m: ref)))
        if self.meta["memory_method"]:
            specs.append(("Peak memory (MiB)", dict(value=_mib, exponent_key="memory_exponent")))
        return [(f"### {heading}, {_setting_title(setting, self.args)}",
                 self.length_table(kind, setting, **spec))
                for heading, spec in specs for setting in self.args["settings"]]

    def preamble(self):
        """The run's command, date, machine, sizes and methods, a bullet each."""
        meta, args, env = self.meta, self.args, self.meta["environment"]
        amp = args.get("amp", "off")
        limit = args["max_seconds_per_point"]
        return [
            f"- command: `{meta['command'] or 'efficiency.run'}`",
            f"- date (UTC): {meta['date_utc']}; wall time of the run: {meta['wall_seconds']} s",
            f"- device: {env['device']}{' (' + env['gpu'] + ')' if env.get('gpu') else ''}; "
            f"{env['cpu_count']} CPUs, torch {env['torch']} with {env['torch_threads']} threads; "
            f"{env['platform']}"
            + (f"; autocast {amp}" + (" with a GradScaler" if amp == "fp16" else "")
               if amp != "off" else ""),
            f"- models built from their yaml defaults, n_items={args['n_items']}"
            + (f", hidden_size={args['hidden_size']}" if args["hidden_size"] else "")
            + (f", n_layers={args['n_layers']}" if args["n_layers"] else "")
            + (", " + ", ".join(f"{k}={v}" for k, v in args["extra"]) if args["extra"] else "")
            + "; random full-length sequences (no padding)",
            f"- each figure: median of {args['repeats']} calls after {args['warmup']} warm-up "
            f"calls ({'CPU time of the process' if args.get('clock') == 'cpu' else 'wall clock'}), "
            "models interleaved call by call; "
            + (f"a point is skipped (too slow) when its calls would exceed {limit:g} s, and so "
               "are larger L of that model and setting" if limit else "no time limit per point"),
            f"- peak memory: {MEMORY_METHODS[meta['memory_method']]}",
            "- exponent: least-squares slope of log(cost per sequence) against log(L) over the "
            "measured lengths (cost per sequence = figure / batch size): 1 = linear, 2 = "
            "quadratic in L",
        ]


def _setting_title(setting, args):
    if setting == "tokens":
        return f"constant tokens per batch ({args['tokens_per_batch']}; batch = tokens // L)"
    return f"constant batch size ({args['batch_size']})"


def markdown_report(results):
    """efficiency.md of ``results`` (what :meth:`EfficiencyBenchmark.run` returns, or the JSON
    it was written to)."""
    view = _Report(results)
    lines = ["# Efficiency: time and memory against sequence length", "", *view.preamble(), "",
             view.models_table()]
    exponents = view.exponents_table()
    if exponents:
        lines += ["", "## Growth exponents in L (all lengths / two largest lengths)", "",
                  "Slope of log(cost per sequence) against log(L); 1 = linear, 2 = quadratic.",
                  "", exponents]
    for kind in (k for k in SECTIONS if k in view.args["kinds"]):
        lines += ["", f"## {SECTIONS[kind][0]}"]
        for heading, table in view.kind_tables(kind):
            lines += ["", heading, "", table]
    return "\n".join(lines + [""])


def plots(results, out):
    args, points = results["meta"]["args"], results["points"]

    def panels(value, ylabel):
        out_panels = []
        for kind in args["kinds"]:
            for setting in args["settings"]:
                series = {}
                for m in args["models"]:
                    pts = sorted((p for p in points if p["model"] == m and p["kind"] == kind
                                  and p["setting"] == setting and p["status"] == "ok"),
                                 key=lambda p: p["seq_len"])
                    if pts:
                        series[m] = ([p["seq_len"] for p in pts], [value(p) for p in pts])
                label = "training step" if kind == "train" else "inference"
                short = (f"{args['tokens_per_batch']} tokens/batch" if setting == "tokens"
                         else f"batch {args['batch_size']}")
                out_panels.append({"title": f"{label}, {short}", "xlabel": "sequence length L",
                                   "ylabel": ylabel, "series": series})
        return out_panels

    files = []
    time_png = Path(out) / "efficiency_time.png"
    report.plot_loglog(panels(lambda p: p["time_s_median"] * 1000, "ms per call"), time_png,
                       "Time vs sequence length (log-log)", ncols=len(args["settings"]))
    files.append(time_png)
    if results["meta"]["memory_method"]:
        mem_png = Path(out) / "efficiency_memory.png"
        report.plot_loglog(
            panels(lambda p: p["peak_mem_bytes"] / 2**20 if p["peak_mem_bytes"] else None,
                   "peak MiB per call"), mem_png,
            "Peak memory vs sequence length (log-log)", ncols=len(args["settings"]))
        files.append(mem_png)
    return files


def write_outputs(results, out):
    """efficiency.json, .csv, .md and the plots in ``out``; returns their paths and the
    markdown."""
    text = markdown_report(results)
    files = report.write_results(out, "efficiency", results, text, results["points"], CSV_FIELDS)
    return files + plots(results, out), text


def main(argv=None):
    args = parse_args(argv)
    models.allow_many_graphs()
    results = EfficiencyBenchmark(args, command=cli.command_line("efficiency", argv)).run()
    files, text = write_outputs(results, args.out)
    print(text)
    print("wrote " + ", ".join(str(f) for f in files))
    return results


if __name__ == "__main__":
    main()
