"""One trial of a sweep, run inside a Ray worker."""

import logging
import os
import shutil
from pathlib import Path

from recbole.utils import init_logger, init_seed

from recbole_efficient.checkpoint import BEST, LATEST, make_run_dir
from recbole_efficient.config import Config
from recbole_efficient.quick_start import prepare_run


def run_trial(params, model, dataset_name, dataset, fixed, config_files):
    """One Ray Tune trial: the command line's training path plus a report after each epoch."""
    import ray  # Ray loads when a sweep runs, not with the package (it takes seconds)
    from ray import tune

    settings = dict(fixed, show_progress=False)
    settings.update({k: v for k, v in params.items() if k != "__trial_index__"})
    if "__trial_index__" in params:  # seed repeats under a searcher (Ray's Repeater)
        settings["seed"] = fixed["seed"] + params["__trial_index__"]
    # RecBole's Config would point CUDA_VISIBLE_DEVICES at gpu_id ('0' by default): use Ray's.
    settings["gpu_id"] = ",".join(str(i) for i in ray.get_gpu_ids())
    config = Config(model, dataset_name, config_file_list=config_files, config_dict=settings,
                    read_cmd_line=False)
    logging.getLogger().handlers.clear()  # a reused worker must not log into the last trial
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    _, (train_data, valid_data, _), trainer = prepare_run(config, dataset)

    restored = tune.get_checkpoint()
    if restored is not None:
        run_dir = make_run_dir(config["checkpoint_dir"], config["model"])
        with restored.as_directory() as folder:
            for name in (BEST, LATEST):
                if (Path(folder) / name).is_file():
                    shutil.copy2(Path(folder) / name, run_dir / name)
        trainer.resume_checkpoint(run_dir)

    def report(trainer, epoch, valid_result, final):
        if valid_result is None and not final:
            return
        valid_result = valid_result or trainer.last_validation[1] or {}
        # This epoch's validation (what ASHA compares) and the best epoch's (what selects).
        metrics = {k: float(v) for k, v in valid_result.items()}
        metrics.update({f"best_{k}": float(v) for k, v in (trainer.best_valid_result or {}).items()})
        metrics.update(epoch=epoch, epochs_done=epoch + 1, best_epoch=trainer.best_epoch,
                       trial_finished=final,
                       seed=config["seed"], gpu_ids=config["gpu_id"],
                       cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(trainer.run_dir)))

    trainer.epoch_end_hooks.append(report)
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    if trainer.fault:
        raise RuntimeError(trainer.fault)
