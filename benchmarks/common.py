"""Reusable pieces of the benchmark scripts.

* building any model (ours or RecBole's) from its yaml defaults on a synthetic dataset stub,
* synthetic batches in both training modes and for ``full_sort_predict``,
* one training step (forward + backward + optimiser step) and one inference call,
* synchronised timing and peak memory attributable to one call (CUDA allocator stats; on CPU
  the profiler's allocation events, or peak RSS in a fresh subprocess),
* least-squares growth exponents in log-log space,
* JSON / CSV / markdown / PNG writers.

Peak memory on CPU
------------------
torch has no allocator statistics on CPU, so two measurements are offered:

``profiler`` (default): the call runs once under ``torch.profiler`` with ``profile_memory``;
every allocation and free that goes through torch's CPU allocator is an event with its byte
count. The peak of their running sum is the memory the call itself allocated on top of what
already existed (parameters, optimiser state, input batch): the CPU analogue of CUDA's
``max_memory_allocated() - memory_allocated()``. It is exact and deterministic for tensor
memory, but does not see memory that libraries allocate behind torch's back (oneDNN / MKL
scratch buffers, OpenMP thread stacks) nor the allocator's own slack.

``rss``: the point is measured in a fresh subprocess, with glibc told to serve every block
above 64 KiB by ``mmap`` (``MALLOC_MMAP_THRESHOLD_``) so freed tensors go back to the OS at
once. After one warm-up call the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``)
and the figure is ``VmHWM - VmRSS`` around the measured call. It sees everything the process
touches, but at page granularity, includes library scratch, pays ~5-10 s of interpreter and
import start-up per point, and is Linux-only.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

# Sequence lengths and hidden sizes: keys by which each model spells them (first match wins
# for reading, every key the model has is written).
SIZE_KEYS = {
    "hidden_size": ("hidden_size", "embedding_size"),
    "n_layers": ("n_layers", "num_layers"),
}


# -- models -----------------------------------------------------------------------------
def _yaml_load(path):
    from recbole.config import Config as RecBoleConfig

    loader = RecBoleConfig._build_yaml_loader(None)  # also reads floats such as 1e-12
    return yaml.load(Path(path).read_text(), Loader=loader) or {}


def parse_value(text):
    """A command-line value converted as RecBole's ``--key=value`` parser converts it."""
    from recbole.config import Config as RecBoleConfig

    return RecBoleConfig._convert_config_dict(None, {"value": text})["value"]


def model_yaml_defaults(name):
    """The model's own yaml keys: RecBole's ``properties/model/<name>.yaml`` then ours."""
    import recbole

    from recbole_efficient.config import properties_dir

    merged = {}
    for path in (Path(recbole.__file__).resolve().parent / "properties" / "model" / f"{name}.yaml",
                 properties_dir() / "model" / f"{name}.yaml"):
        if path.is_file():
            merged.update(_yaml_load(path))
    return merged


def is_efficient_model(name):
    from recbole_efficient.model import EfficientSequentialRecommender
    from recbole_efficient.utils import get_model

    cls = get_model(name)
    return isinstance(cls, type) and issubclass(cls, EfficientSequentialRecommender)


def size_overrides(name, hidden_size=None, n_layers=None, extra=None):
    """Config keys to override for ``name``: only keys its yaml defines.

    ``hidden_size`` sets every size key of the model (GRU4Rec: ``embedding_size`` and the
    GRU's ``hidden_size``); ``n_layers`` sets ``n_layers`` or ``num_layers``; ``extra``
    (``{key: value}``) is applied where the model's yaml has the key.
    """
    defaults = model_yaml_defaults(name)
    out = {}
    for value, keys in ((hidden_size, SIZE_KEYS["hidden_size"]), (n_layers, SIZE_KEYS["n_layers"])):
        if value is None:
            continue
        for key in keys:
            if key in defaults:
                out[key] = value
    for key, value in (extra or {}).items():
        if key in defaults:
            out[key] = value
    return out


class SyntheticDataset:
    """The little of a RecBole dataset that sequential model constructors read."""

    def __init__(self, config, n_items, n_users=2):
        self.config = config
        self.iid_field = config["ITEM_ID_FIELD"]
        self.uid_field = config["USER_ID_FIELD"]
        self.item_num = n_items
        self.user_num = n_users

    def num(self, field):
        if field == self.iid_field:
            return self.item_num
        if field == self.uid_field:
            return self.user_num
        raise KeyError(f"SyntheticDataset has no field {field!r} (only item and user ids).")


def build_model(name, max_len, n_items, overrides=None, train_mode=None, device="cpu", seed=0,
                floor=False):
    """``(model, config, info)`` for model ``name`` with ``MAX_ITEM_LIST_LENGTH = max_len``.

    ``n_items`` is the item vocabulary including the padding id 0 (``dataset.num(item)``).
    ``train_mode`` (None: the model's yaml default) is our models' training mode; RecBole's
    models train ``augmented``, or with ``all_positions`` through :func:`recbole_all_positions_loss`
    (``info["loss_fn"]``). ``floor``: the model with its sequence mixer removed
    (``drop_sequence_mixer``), the floor its cost is compared with.
    """
    import recbole_efficient
    from recbole_efficient.data.dataset import target_list_field

    efficient = is_efficient_model(name)
    if str(device).startswith("cuda"):
        # RecBole's Config sets CUDA_VISIBLE_DEVICES=gpu_id; once CUDA is initialised that
        # no longer changes which device "cuda:i" means.
        torch.cuda.init()
    config_dict = {"MAX_ITEM_LIST_LENGTH": int(max_len), "show_progress": False, "seed": seed}
    config_dict.update(overrides or {})
    if efficient and train_mode:
        config_dict["train_mode"] = train_mode
    loss_type = config_dict.get("loss_type", model_yaml_defaults(name).get("loss_type", "CE"))
    if loss_type == "CE":
        config_dict["train_neg_sample_args"] = None
    config = recbole_efficient.Config(model=name, dataset="ml-100k", config_dict=config_dict,
                                      read_cmd_line=False)
    torch.manual_seed(seed)
    model = recbole_efficient.get_model(name)(config, SyntheticDataset(config, n_items))
    if floor:
        model.drop_sequence_mixer()
    model = model.to(device)
    if hasattr(model, "device"):  # RecBole models create some tensors on self.device
        model.device = torch.device(device)
    config["device"] = torch.device(device)
    mode = (config["train_mode"] or "augmented") if efficient else "augmented"
    loss_fn = None
    if not efficient and train_mode == "all_positions":
        mode = "all_positions"
        target = target_list_field(config)
        loss_fn = lambda m, batch: recbole_all_positions_loss(m, batch, target)  # noqa: E731
    info = {
        "model": name,
        "train_mode": mode,
        "loss_fn": loss_fn,
        "floor": bool(floor),
        "n_params": sum(p.numel() for p in model.parameters()),
        "loss_type": config["loss_type"],
        "overrides": dict(overrides or {}),
    }
    return model, config, info


def build_optimizer(model, config):
    """The optimiser our trainer builds from ``learner`` / ``learning_rate`` / ``weight_decay``."""
    from recbole_efficient.optim import build_optimizer as trainer_optimizer

    return trainer_optimizer(model, config["learner"], config["learning_rate"],
                             config["weight_decay"])


def make_batch(config, batch_size, seq_len, n_items, train_mode="augmented", train=True,
               device="cpu", seed=0):
    """Random full-length sequences (no padding) as an ``Interaction``.

    Training batches carry per-position targets (``all_positions``) or one target per row
    (``augmented``, plus a negative item when ``loss_type`` is BPR; ``cloze`` models mask the
    sequence itself and ignore it); inference batches carry only the sequence and its length.
    """
    from recbole.data.interaction import Interaction

    from recbole_efficient.data.dataset import target_list_field

    gen = torch.Generator().manual_seed(seed)
    item = config["ITEM_ID_FIELD"]
    seq = torch.randint(1, n_items, (batch_size, seq_len), generator=gen)
    data = {item + config["LIST_SUFFIX"]: seq,
            config["ITEM_LIST_LENGTH_FIELD"]: torch.full((batch_size,), seq_len, dtype=torch.long)}
    if train:
        if train_mode == "all_positions":
            data[target_list_field(config)] = torch.randint(1, n_items, (batch_size, seq_len),
                                                            generator=gen)
        else:
            data[item] = torch.randint(1, n_items, (batch_size,), generator=gen)
            if config["loss_type"] == "BPR":
                data[config["NEG_PREFIX"] + item] = torch.randint(1, n_items, (batch_size,),
                                                                  generator=gen)
    return Interaction(data).to(device)


def recbole_all_positions_loss(model, batch, target_field):
    """Next-item cross-entropy at every real position for a RecBole sequential model whose
    ``forward`` ends by gathering the last position (SASRec, GRU4Rec, ...) and which scores
    items by ``item_embedding``: the gather is made the identity for this call, and the loss
    is our models' ``all_positions`` loss, so that only the encoders differ. Benchmark only."""
    from recbole_efficient.kernels.cross_entropy import linear_cross_entropy

    seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    model.gather_indexes = lambda output, index: output  # shadows the method for this call
    try:
        hidden = model(seq, lengths)
    finally:
        del model.gather_indexes
    mask = torch.arange(seq.size(1), device=seq.device)[None] < lengths[:, None]
    return linear_cross_entropy(hidden[mask], model.item_embedding.weight, None,
                                batch[target_field][mask])


def _device_type(model):
    return next(model.parameters()).device.type


def train_step(model, optimizer, batch, clip_grad_norm=None, loss_fn=None, amp_dtype=None,
               scaler=None):
    """One training step as RecBole's trainer runs it: forward, backward, optional gradient
    clipping (the ``clip_grad_norm`` config dict), optimiser step. ``loss_fn(model, batch)``
    replaces ``model.calculate_loss``. ``amp_dtype``: the forward under autocast
    (``enable_amp``); ``scaler``: a ``torch.amp.GradScaler`` (``enable_scaler``), gradients
    unscaled before clipping."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(_device_type(model), dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = loss_fn(model, batch) if loss_fn else model.calculate_loss(batch)
    if isinstance(loss, tuple):  # some RecBole models return several losses
        loss = sum(loss)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    if clip_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), **clip_grad_norm)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)  # gradients do not outlive the step


@torch.no_grad()
def inference_step(model, batch, amp_dtype=None):
    model.eval()
    with torch.autocast(_device_type(model), dtype=amp_dtype, enabled=amp_dtype is not None):
        return model.full_sort_predict(batch)


# -- timing and memory ------------------------------------------------------------------
def synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(fn, device="cpu", clock="wall"):
    """Seconds of ``fn()``: wall clock (synchronised on CUDA), or with ``clock="cpu"`` the
    CPU time of this process (user + system), which on a shared machine does not count the
    time other processes hold the cores (CPU only)."""
    now = time.process_time if clock == "cpu" else time.perf_counter
    synchronize(device)
    start = now()
    fn()
    synchronize(device)
    return now() - start


def is_oom(err):
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in str(err).lower()


def cuda_peak_bytes(fn, device):
    """Peak CUDA memory allocated during ``fn()`` above what was allocated before it."""
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def profiler_peak_bytes(fn):
    """Peak of torch's CPU allocations during ``fn()`` minus frees, from profiler events.

    Frees of blocks allocated before the profile started are not reported by the profiler
    (so they cannot lower the figure); the result is what ``fn`` needed on top of the memory
    that existed before it.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")]
    events.sort()
    running = peak = 0
    for _, nbytes in events:
        running += nbytes
        peak = max(peak, running)
    return peak


def peak_bytes(fn, device="cpu"):
    """Peak memory attributable to ``fn()``: CUDA allocator stats, else profiler events."""
    if str(device).startswith("cuda"):
        return cuda_peak_bytes(fn, device)
    return profiler_peak_bytes(fn)


def _proc_status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def rss_peak_call_bytes(fn):
    """``VmHWM - VmRSS`` around ``fn()`` after resetting the peak mark (Linux only)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS high-water mark to the current RSS
    base = _proc_status_kib("VmRSS")
    fn()
    return (_proc_status_kib("VmHWM") - base) * 1024


RSS_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "131072",
           "MALLOC_ARENA_MAX": "2"}


def rss_point_in_subprocess(spec, timeout=600):
    """Peak RSS growth of one training step and one inference call, in a fresh process.

    ``spec``: dict with model, max_len, n_items, batch_size, overrides, train_mode, seed, threads.
    Returns ``{"train": bytes, "inference": bytes}`` (a value is None where the call failed).
    """
    env = dict(os.environ, **RSS_ENV)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--rss-point",
                           json.dumps(spec)], capture_output=True, text=True, env=env,
                          timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RSS_RESULT "):
            return json.loads(line[len("RSS_RESULT "):])
    raise RuntimeError(f"RSS worker failed (rc={proc.returncode}): {proc.stderr[-2000:]}")


def _rss_worker(spec):
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    model, config, info = build_model(spec["model"], spec["max_len"], spec["n_items"],
                                      spec.get("overrides"), spec.get("train_mode"), "cpu",
                                      spec.get("seed", 0), spec.get("floor", False))
    optimizer = build_optimizer(model, config)
    train_batch = make_batch(config, spec["batch_size"], spec["max_len"], spec["n_items"],
                             info["train_mode"], True)
    infer_batch = make_batch(config, spec["batch_size"], spec["max_len"], spec["n_items"],
                             info["train_mode"], False)
    out = {}
    clip = config["clip_grad_norm"]
    for kind, fn in (("train", lambda: train_step(model, optimizer, train_batch, clip,
                                                  info["loss_fn"])),
                     ("inference", lambda: inference_step(model, infer_batch))):
        try:
            fn()  # warm-up: optimiser state, lazy library initialisation
            out[kind] = rss_peak_call_bytes(fn)
        except Exception as err:  # noqa: BLE001 - reported, not raised
            out[kind] = None
            out[kind + "_error"] = f"{type(err).__name__}: {err}"[:300]
    print("RSS_RESULT " + json.dumps(out), flush=True)


# -- statistics -------------------------------------------------------------------------
def median(values):
    return statistics.median(values) if values else None


def fit_exponent(xs, ys):
    """Least-squares slope of log(y) against log(x): 1 = linear growth, 2 = quadratic.

    Points with a missing or non-positive y are ignored; None when fewer than 2 remain.
    """
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys)
           if x and x > 0 and y is not None and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    if sxx == 0:
        return None
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


# -- environment and writers --------------------------------------------------------------
def environment(device="cpu"):
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        import recbole

        env["recbole"] = recbole.__version__
    except Exception:  # noqa: BLE001
        pass
    return env


def write_json(obj, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str) + "\n")


def write_csv(rows, path, fields=None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fields is None:
        fields = []
        for row in rows:
            fields += [k for k in row if k not in fields]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in fields})


def _csv_value(value):
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return "" if value is None else value


def markdown_table(header, rows):
    """GitHub markdown table; cells are converted with ``str`` and '|' is escaped."""
    def cell(v):
        return ("" if v is None else str(v)).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_seconds_ms(seconds):
    if seconds is None:
        return None
    ms = seconds * 1000
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"


def fmt_mib(nbytes):
    if nbytes is None:
        return None
    mib = nbytes / 2**20
    return f"{mib:.0f}" if mib >= 100 else f"{mib:.1f}" if mib >= 1 else f"{mib:.2f}"


def plot_loglog(panels, path, suptitle=None, ncols=None):
    """One PNG with a log-log panel per entry of ``panels`` (``ncols`` per row).

    ``panels``: list of ``{"title", "xlabel", "ylabel", "series": {label: (xs, ys)}}``;
    points with missing or non-positive y are left out of a line.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = ncols or len(panels)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4.2 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, panel in zip(axes.flat, panels):
        drawn = False
        for label, (xs, ys) in panel["series"].items():
            pts = [(x, y) for x, y in zip(xs, ys) if y is not None and y > 0]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
            drawn = True
        ax.set_xscale("log")
        ax.set_yscale("log")
        xs = sorted({x for xs_, _ in panel["series"].values() for x in xs_})
        if xs:
            from matplotlib.ticker import NullFormatter, ScalarFormatter

            ax.set_xticks(xs)
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(panel.get("title", ""), fontsize=10)
        ax.set_xlabel(panel.get("xlabel", ""))
        ax.set_ylabel(panel.get("ylabel", ""))
        ax.grid(True, which="both", alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--rss-point":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import recbole_efficient  # noqa: F401  (NumPy 2 aliases for RecBole)

    _rss_worker(json.loads(sys.argv[2]))
