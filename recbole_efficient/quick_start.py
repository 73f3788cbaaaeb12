"""RecBole's quick-start entry points, resolving models through recbole_efficient."""

import sys
from collections.abc import MutableMapping
from logging import getLogger

import torch.distributed as dist
from recbole.data.transform import construct_transform
from recbole.utils import get_environment, get_flops, init_logger, init_seed, set_color

from recbole_efficient.checkpoint import load_checkpoint
from recbole_efficient.config import Config
from recbole_efficient.data import create_dataset, data_preparation
from recbole_efficient.utils import get_model, get_trainer


def run_recbole_efficient(model=None, dataset=None, config_file_list=None, config_dict=None,
                          saved=True, queue=None, read_cmd_line=True):
    """Train, validate and test one model; returns RecBole's result dict."""
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list,
                    config_dict=config_dict, read_cmd_line=read_cmd_line)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)

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
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"])
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
    }
    if not config["single_spec"]:
        dist.destroy_process_group()
    if config["local_rank"] == 0 and queue is not None:
        queue.put(result)
    return result


def _run_rank(rank, *args):
    kwargs = args[-1]
    if not isinstance(kwargs, MutableMapping):
        raise ValueError(f"last argument must be a dict, got {type(kwargs)}")
    kwargs["config_dict"] = dict(kwargs.get("config_dict") or {}, local_rank=rank)
    run_recbole_efficient(*args[:3], **kwargs)


def run(model, dataset, config_file_list=None, config_dict=None, saved=True, nproc=1,
        world_size=-1, ip="localhost", port="5678", group_offset=0):
    """Like ``recbole.quick_start.run``: one process, or ``nproc`` spawned DDP workers."""
    if nproc == 1 and world_size <= 0:
        return run_recbole_efficient(model=model, dataset=dataset, config_file_list=config_file_list,
                                     config_dict=config_dict, saved=saved)
    import torch.multiprocessing as mp

    world_size = nproc if world_size == -1 else world_size
    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = dict(config_dict or {}, world_size=world_size, ip=ip, port=port, nproc=nproc,
                       offset=group_offset)
    mp.spawn(_run_rank, args=(model, dataset, config_file_list,
                              {"config_dict": config_dict, "queue": queue}),
             nprocs=nproc, join=True)
    return None if queue.empty() else queue.get()


def config_from_checkpoint(checkpoint, config_dict=None):
    """Rebuild the training Config from a checkpoint's plain-data config."""
    saved = checkpoint["config"]
    if isinstance(saved, dict):
        inputs = dict(saved["inputs"], **(config_dict or {}))
        return Config(model=saved["model"], dataset=saved["dataset"], config_dict=inputs,
                      read_cmd_line=False)
    # A trusted RecBole-format checkpoint holds the Config object itself.
    for key, value in (config_dict or {}).items():
        saved[key] = value
    return saved


def load_data_and_model(model_file, trust_checkpoint=False, config_dict=None):
    """Config, model (best weights), dataset and the three dataloaders of a checkpoint.

    Works for any model trained through recbole_efficient, ours or RecBole's.
    ``config_dict`` overrides saved settings (e.g. ``{"data_path": ...}``).
    """
    checkpoint = load_checkpoint(model_file, trust_checkpoint=trust_checkpoint)
    config = config_from_checkpoint(checkpoint, config_dict)
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
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
    """Objective for RecBole's ``HyperTuning`` and Ray Tune, resolving our models."""
    config = Config(config_dict=config_dict, config_file_list=config_file_list,
                    read_cmd_line=False)
    init_seed(config["seed"], config["reproducibility"])
    logger = getLogger()
    for hdlr in logger.handlers[:]:  # RecBole's objective silences per-trial logging too
        logger.removeHandler(hdlr)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
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
