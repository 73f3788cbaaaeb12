"""RecBole's quick-start entry points, resolving models through recbole_efficient."""

import sys
from collections.abc import MutableMapping
from logging import getLogger

import torch.distributed as dist
from recbole.data.transform import construct_transform
from recbole.utils import get_environment, get_flops, init_seed, set_color

from recbole_efficient import distributed
from recbole_efficient.checkpoint import (UnsafeCheckpointError, config_from_checkpoint,
                                         load_checkpoint, resume_file)
from recbole_efficient.config import Config
from recbole_efficient.data import create_dataset, data_preparation
from recbole_efficient.data.fetch import ensure_dataset
from recbole_efficient.utils import get_model, get_trainer


def run_recbole_efficient(model=None, dataset=None, config_file_list=None, config_dict=None,
                          saved=True, queue=None, read_cmd_line=True, resume=None):
    """Train, validate and test one model; returns RecBole's result dict.

    ``resume``: a checkpoint or run folder of an interrupted run; the run continues with its
    saved settings (``config_dict`` and ``--key=value`` override them, e.g. more epochs) and
    ends with the metrics the uninterrupted run would have had. Ctrl-C raises
    :class:`~recbole_efficient.trainer.TrainingInterrupted` after the latest state is saved. A
    NaN/inf loss stops training; the result's ``fault`` says why and its test metrics are those
    of the best checkpoint so far (``None`` when there is none).
    """
    config = _config(model, dataset, config_file_list, config_dict, read_cmd_line, resume)
    ensure_dataset(config)  # fetched by name if need be, before the log and its config dump
    init_seed(config["seed"], config["reproducibility"])
    distributed.init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

    _, (train_data, valid_data, test_data), trainer = prepare_run(config)
    if resume:
        trainer.resume_checkpoint(resume)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"])
    test_result = None
    if not trainer.fault or (saved and trainer.best_epoch is not None):
        test_result = trainer.evaluate(test_data, load_best_model=saved,
                                       show_progress=config["show_progress"])

    logger.info("The running environment of this training is as follows:\n"
                + get_environment(config).draw())
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    result = {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "saved_model_file": trainer.saved_model_file if saved else None,
        "train_epoch_seconds": list(trainer.epoch_seconds),
        "train_steps_per_epoch": len(train_data),
        "train_losses": [trainer.train_loss_dict[e] for e in sorted(trainer.train_loss_dict)],
        "fault": trainer.fault,
        "valid_history": [list(h) for h in trainer.valid_history],
        "best_epoch": trainer.best_epoch,
        "stop_reason": trainer.stop_reason,
    }
    if not config["single_spec"]:
        dist.destroy_process_group()
    if config["local_rank"] == 0 and queue is not None:
        queue.put(result)
    return result


def _config(model, dataset, config_file_list, config_dict, read_cmd_line, resume):
    """The run's Config; with ``resume``, the checkpoint's settings under the given ones."""
    if not resume:
        return Config(model=model, dataset=dataset, config_file_list=config_file_list,
                      config_dict=config_dict, read_cmd_line=read_cmd_line)
    trust = bool((config_dict or {}).get("trust_checkpoint"))
    return config_from_checkpoint(load_checkpoint(resume_file(resume), trust_checkpoint=trust),
                                  config_dict, model=model, dataset=dataset,
                                  config_file_list=config_file_list, read_cmd_line=read_cmd_line)


def prepare_run(config, dataset=None):
    """What one run needs, seeded as RecBole's ``run_recbole`` seeds it: the dataset (built
    unless given), its three dataloaders, the model (FLOPs logged) inside a trainer.

    Returns ``(dataset, (train_data, valid_data, test_data), trainer)``. The command line,
    Ray Tune trials and ``objective_function`` all start here.
    """
    logger = getLogger()
    if dataset is None:
        dataset = create_dataset(config)
        logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    try:
        # Eval rows carry every prefix field in both training modes (all_positions' full
        # dataset holds raw interactions only).
        flops_data = valid_data._dataset if valid_data else dataset
        flops = get_flops(model, flops_data, config["device"], logger, construct_transform(config))
        logger.info(set_color("FLOPs", "blue") + f": {flops}")
    except Exception as err:  # FLOPs are informative only; thop cannot trace every model
        logger.info(set_color("FLOPs", "blue") + f": not counted ({err.__class__.__name__})")
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    return dataset, (train_data, valid_data, test_data), trainer


#: Errors that mean bad input, reported as one line (the CLI exits with status 2).
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, UnsafeCheckpointError)


def _run_rank(rank, *args):
    kwargs = args[-1]
    if not isinstance(kwargs, MutableMapping):
        raise ValueError(f"last argument must be a dict, got {type(kwargs)}")
    kwargs["config_dict"] = dict(kwargs.get("config_dict") or {}, local_rank=rank)
    try:
        run_recbole_efficient(*args[:3], **kwargs)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)  # torch.multiprocessing stops the other ranks


def run(model, dataset, config_file_list=None, config_dict=None, saved=True, nproc=1,
        world_size=-1, ip="localhost", port="5678", group_offset=0, resume=None):
    """Like ``recbole.quick_start.run``: one process, or ``nproc`` spawned DDP workers.

    With several processes, the configuration and the dataset files are checked here, once,
    before any worker starts; a worker that stops on bad input exits with status 2 and
    ``torch.multiprocessing.ProcessExitedException`` is raised here.
    """
    if nproc == 1 and world_size <= 0:
        return run_recbole_efficient(model=model, dataset=dataset, config_file_list=config_file_list,
                                     config_dict=config_dict, saved=saved, resume=resume)
    import torch.multiprocessing as mp

    world_size = nproc if world_size == -1 else world_size
    config_dict = dict(config_dict or {}, world_size=world_size, ip=ip, port=port, nproc=nproc,
                       offset=group_offset)
    config = _config(model, dataset, config_file_list, config_dict, True, resume)
    distributed.check_devices(config)
    ensure_dataset(config)  # once, before any worker starts
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_run_rank, args=(model, dataset, config_file_list,
                              {"config_dict": config_dict, "queue": queue, "resume": resume}),
             nprocs=nproc, join=True)
    return None if queue.empty() else queue.get()


def load_data_and_model(model_file, trust_checkpoint=False, config_dict=None):
    """Config, model (best weights), dataset and the three dataloaders of a checkpoint.

    Works for any model trained through recbole_efficient, ours or RecBole's.
    ``config_dict`` overrides saved settings (e.g. ``{"data_path": ...}``).
    """
    checkpoint = load_checkpoint(model_file, trust_checkpoint=trust_checkpoint)
    config = config_from_checkpoint(checkpoint, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    distributed.init_logger(config)
    logger = getLogger()
    logger.info(config)

    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data


def objective_function(config_dict=None, config_file_list=None, saved=True):
    """Objective for RecBole's ``HyperTuning``, resolving our models (Ray Tune sweeps:
    :func:`recbole_efficient.tune.tune_model`)."""
    config = Config(config_dict=config_dict, config_file_list=config_file_list,
                    read_cmd_line=False)
    init_seed(config["seed"], config["reproducibility"])
    logger = getLogger()
    for hdlr in logger.handlers[:]:  # RecBole's objective silences per-trial logging too
        logger.removeHandler(hdlr)
    _, (train_data, valid_data, test_data), trainer = prepare_run(config)
    best_valid_score, best_valid_result = trainer.fit(train_data, valid_data, verbose=False,
                                                      saved=saved)
    test_result = trainer.evaluate(test_data, load_best_model=saved)
    return {
        "model": config["model"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
    }
