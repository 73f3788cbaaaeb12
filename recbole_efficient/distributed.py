"""Multi-process training through RecBole's DDP path: gloo on CPU, NCCL on GPUs.

RecBole 1.2.1 starts one process per GPU (``--nproc``, ``--world_size``, ``--ip``, ``--port``,
``--group_offset``), shards every dataloader with a ``DistributedSampler`` and averages
gradients with ``DistributedDataParallel``. Its path assumes CUDA (NCCL, ``device_ids``), pads
evaluation shards with duplicated users, weights the per-rank metrics by batch count, lets
every rank open its own log file and tensorboard writer, and has each rank reload the best
checkpoint from a file only rank 0 wrote (under its own timestamped name), the race behind the
test-time hang of RecBole issue #1811. The helpers below keep RecBole's flow and fix those.
"""

import logging
import os
import sys
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from recbole_efficient.validation import ConfigError, Int, Rule

__all__ = ["DISTRIBUTED_SPEC", "uses_cuda", "check_devices", "init_process_group", "is_distributed",
           "is_rank_zero", "init_logger", "recbole_trainer_init", "wrap_model", "any_rank",
           "broadcast_model", "shard_evaluation", "average_metrics"]


def _gpu_ids(cfg):
    gpu_id = cfg["gpu_id"]
    if isinstance(gpu_id, (tuple, list)):
        gpu_id = ",".join(map(str, gpu_id))
    return [g for g in ("" if gpu_id is None else str(gpu_id)).split(",") if g.strip()]


def uses_cuda(cfg):
    """RecBole's device rule: CUDA when ``gpu_id`` names a GPU and CUDA is available."""
    return bool(_gpu_ids(cfg)) and torch.cuda.is_available()


def _port_ok(port):
    return str(port).isdigit() and 1 <= int(port) <= 65535


#: Keys of RecBole's multi-process path (set by ``recbole_efficient.run`` / the CLI flags).
DISTRIBUTED_SPEC = (
    Int("nproc", 1, example=2),
    Int("offset", 0),
    Rule(("world_size", "nproc"), lambda c, m: c["world_size"] == -1 or (
        isinstance(c["world_size"], int) and c["world_size"] >= 1),
         "world_size={world_size!r} must be the total number of processes over all machines "
         "(an integer >= 1, or -1 for --nproc); e.g. --world_size=4."),
    Rule(("port",), lambda c, m: _port_ok(c["port"]),
         "port={port!r} must be a TCP port number in [1, 65535]; e.g. --port=29500."),
    Rule(("nproc", "world_size", "offset"),
         lambda c, m: c["world_size"] == -1 or c["offset"] + c["nproc"] <= c["world_size"],
         "group_offset={offset} + nproc={nproc} exceeds world_size={world_size}: the ranks of "
         "this machine would be {offset}..{offset}+{nproc}-1; set --world_size to the total "
         "number of processes, and --group_offset to the ranks started on earlier machines."),
)


def check_devices(cfg):
    """One GPU per process on a GPU machine (RecBole: a bare AssertionError).

    Called once the config has made ``gpu_id`` the visible GPUs (asking whether CUDA is
    available earlier would fix the visible set too soon).
    """
    if uses_cuda(cfg) and len(_gpu_ids(cfg)) < cfg["nproc"]:
        raise ConfigError([
            f"nproc={cfg['nproc']} starts one process per GPU, but gpu_id={cfg['gpu_id']!r} "
            f"names {len(_gpu_ids(cfg))}; list one GPU per process (e.g. --gpu_id="
            f"{','.join(map(str, range(cfg['nproc'])))}), or pass --gpu_id='' to run the "
            "processes on CPU (gloo)."])


def init_process_group(cfg):
    """What RecBole's ``Config._init_device`` does for one worker, on gloo when on CPU."""
    cfg["gpu_id"] = ",".join(_gpu_ids(cfg))
    os.environ["CUDA_VISIBLE_DEVICES"] = cfg["gpu_id"]
    check_devices(cfg)
    cuda = uses_cuda(cfg)
    rank = cfg["local_rank"] + cfg["offset"]
    dist.init_process_group(backend="nccl" if cuda else "gloo", rank=rank,
                            world_size=cfg["world_size"],
                            init_method=f"tcp://{cfg['ip']}:{cfg['port']}")
    if cuda:
        # CUDA_VISIBLE_DEVICES holds gpu_id, so local rank r uses the r-th GPU listed.
        cfg["device"] = torch.device("cuda", cfg["local_rank"])
        torch.cuda.set_device(cfg["device"])
    else:
        cfg["device"] = torch.device("cpu")
    cfg["single_spec"] = False
    if rank != 0:
        cfg["state"] = "error"
        cfg["show_progress"] = False
        cfg["verbose"] = False


def is_distributed(config):
    return not config["single_spec"]


def is_rank_zero(config):
    """True in a single process and in the process of global rank 0."""
    return not is_distributed(config) or dist.get_rank() == 0


_run_log_handlers = []  # the handlers RecBole's init_logger added for the latest run


def init_logger(config):
    """RecBole's logger (log file, console) on rank 0; errors to stderr only elsewhere.

    RecBole's ``init_logger`` calls ``logging.basicConfig``, which does nothing once the root
    logger has handlers: a second run in one process would keep writing into the first run's
    log file. The previous run's handlers are removed first."""
    from recbole.utils import init_logger as recbole_init_logger

    if is_rank_zero(config):
        root = logging.getLogger()
        for handler in _run_log_handlers:
            root.removeHandler(handler)
            handler.close()
        before = set(root.handlers)
        recbole_init_logger(config)
        _run_log_handlers[:] = [h for h in root.handlers if h not in before]
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"rank {dist.get_rank()}: %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.ERROR, handlers=[handler], force=True)


class _NullWriter:
    """Tensorboard writer of ranks other than 0: every call does nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


@contextmanager
def recbole_trainer_init(config):
    """Around RecBole's ``Trainer.__init__`` on a worker: its DDP wrap passes ``device_ids``
    (CUDA only), so it is skipped here and done by :func:`wrap_model`; ranks other than 0 get
    no tensorboard writer (RecBole opens one on every rank)."""
    import recbole.trainer.trainer as recbole_trainer

    open_writer = recbole_trainer.get_tensorboard
    config["single_spec"] = True
    if not (dist.is_initialized() and dist.get_rank() == 0):
        recbole_trainer.get_tensorboard = lambda logger: _NullWriter()
    try:
        yield
    finally:
        config["single_spec"] = False
        recbole_trainer.get_tensorboard = open_writer


def wrap_model(model, config):
    """``DistributedDataParallel`` around ``model`` (rank 0's weights are broadcast to all)."""
    if config["device"].type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model, DistributedDataParallel(model, device_ids=[config["device"].index])
    return model, DistributedDataParallel(model)


def any_rank(flag, config):
    """``flag`` OR-ed over all ranks (decisions that end an epoch loop must agree)."""
    if not is_distributed(config):
        return bool(flag)
    value = torch.tensor([int(bool(flag))], device=config["device"])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_model(model, config):
    """Give every rank rank 0's parameters, buffers and ``other_parameter``."""
    if not is_distributed(config):
        return
    for tensor in model.state_dict().values():
        dist.broadcast(tensor, src=0)
    other = [model.other_parameter()]
    dist.broadcast_object_list(other, src=0, device=config["device"])
    model.load_other_parameter(other[0])


def shard_evaluation(eval_data):
    """Rows this rank evaluates, with no row duplicated across ranks.

    ``DistributedSampler`` pads every shard to the same size by repeating rows, which counts
    some users twice; evaluation has no collective per batch, so uneven shards are safe.
    """
    sampler = eval_data.sampler
    if isinstance(sampler, torch.utils.data.distributed.DistributedSampler) and not sampler.shuffle:
        sampler.total_size = len(sampler.dataset)
        sampler.num_samples = len(range(sampler.rank, sampler.total_size, sampler.num_replicas))
    return len(sampler)


def average_metrics(result, rows, config):
    """Per-rank metrics averaged over all ranks, weighted by evaluated rows (users).

    Exact for RecBole's per-user metrics (NDCG, Hit, MRR, Recall, Precision, MAP, GAUC);
    item-distribution metrics (ItemCoverage, Gini, ...) become the weighted mean of the ranks'.
    """
    keys = list(result)
    values = torch.tensor([float(rows)] + [float(result[k]) * rows for k in keys],
                          dtype=torch.float64, device=config["device"])
    dist.all_reduce(values)
    total = values[0].item()
    return {k: round(values[i + 1].item() / max(total, 1.0), config["metric_decimal_place"])
            for i, k in enumerate(keys)}
