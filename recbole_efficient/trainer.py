"""RecBole trainers with safe checkpoints, per-model optimiser groups and ``exclude_history``."""

import importlib
import time

import numpy as np
import torch
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import ModelType, set_color

from recbole_efficient import distributed
from recbole_efficient.checkpoint import config_state, load_checkpoint, save_checkpoint
from recbole_efficient.optim import LazyAdam, OptimizerChain


class _BudgetExhausted(Exception):
    pass


class EfficientTrainerMixin:
    """Mixed in front of any RecBole trainer class.

    ``train_time_budget`` (seconds, optional): no new epoch starts once the budget is spent;
    the best checkpoint so far is kept, so equal-time comparisons run through ``fit`` as usual.
    """

    def __init__(self, config, model):
        if distributed.is_distributed(config):
            with distributed.recbole_trainer_init(config):
                super().__init__(config, model)
            self.model, self.distributed_model = distributed.wrap_model(self.model, config)
        else:
            super().__init__(config, model)
        self.epoch_seconds = []  # training seconds of each epoch of the last fit
        self._fit_started = None

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        self._fit_started = time.time()
        self.epoch_seconds.clear()
        try:
            return super().fit(train_data, valid_data, verbose=verbose, saved=saved,
                               show_progress=show_progress, callback_fn=callback_fn)
        except _BudgetExhausted:
            self.logger.info(set_color("train_time_budget", "yellow")
                             + f" of {self.config['train_time_budget']}s spent; stopping.")
            return self.best_valid_score, self.best_valid_result

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        budget = self.config["train_time_budget"]
        spent = budget and self._fit_started is not None and epoch_idx > self.start_epoch \
            and time.time() - self._fit_started >= budget
        if distributed.any_rank(spent, self.config):  # every rank stops at the same epoch
            raise _BudgetExhausted
        epoch_started = time.time()
        loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func,
                                    show_progress=show_progress)
        self.epoch_seconds.append(time.time() - epoch_started)
        return loss

    def _build_optimizer(self, **kwargs):
        # Models may exempt biases/LayerNorm from weight decay (LRURec's AdamW recipe) or flag
        # a sparse group (ELASTIC's memory bank).
        if "params" in kwargs or not hasattr(self.model, "optimizer_groups"):
            return super()._build_optimizer(**kwargs)
        return build_optimizer(self.model, kwargs.get("learner", self.learner),
                               kwargs.get("learning_rate", self.learning_rate),
                               kwargs.get("weight_decay", self.weight_decay))

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        if not distributed.is_rank_zero(self.config):
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        state = {
            "config": config_state(self.config),
            "epoch": int(epoch),
            "cur_step": int(self.cur_step),
            "best_valid_score": float(self.best_valid_score),
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }
        save_checkpoint(saved_model_file, state)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def _load(self, path):
        return load_checkpoint(path, map_location=self.device,
                               trust_checkpoint=bool(self.config["trust_checkpoint"]))

    def resume_checkpoint(self, resume_file):
        resume_file = str(resume_file)
        self.saved_model_file = resume_file
        checkpoint = self._load(resume_file)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        if checkpoint["config"]["model"].lower() != self.config["model"].lower():
            self.logger.warning("Checkpoint model %s differs from configured model %s.",
                                checkpoint["config"]["model"], self.config["model"])
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.logger.info(f"Checkpoint loaded. Resume training from epoch {self.start_epoch}")

    @torch.no_grad()
    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if not eval_data:
            return
        if load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            if distributed.is_rank_zero(self.config):
                checkpoint = self._load(checkpoint_file)
                self.model.load_state_dict(checkpoint["state_dict"])
                self.model.load_other_parameter(checkpoint.get("other_parameter"))
            # Only rank 0 wrote the file (on its machine, under its name): others take its
            # weights instead of racing to read it (RecBole issue #1811).
            distributed.broadcast_model(self.model, self.config)
            self.logger.info(f"Loading model structure and parameters from {checkpoint_file}")
        if distributed.is_distributed(self.config):
            self._eval_rows = distributed.shard_evaluation(eval_data)
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)

    def _map_reduce(self, result, num_sample):
        # RecBole weights each rank by 4 x its batch count; weight by the users it evaluated.
        return distributed.average_metrics(result, self._eval_rows, self.config)

    def _full_sort_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._full_sort_batch_eval(batched_data)
        if self.config["exclude_history"]:
            item_seq = interaction[self.model.ITEM_SEQ].to(scores.device)
            # Pad id 0 is already -inf, so scattering the padded rows is harmless.
            scores.scatter_(1, item_seq, -np.inf)
        return interaction, scores, positive_u, positive_i


class Trainer(EfficientTrainerMixin, RecBoleTrainer):
    """Drop-in for ``recbole.trainer.Trainer``."""


def get_trainer(model_type, model_name):
    """RecBole's trainer for ``model_name`` (or its generic one) with our mixin in front."""
    module = importlib.import_module("recbole.trainer")
    base = getattr(module, model_name + "Trainer", None)
    if base is None:
        base = {
            ModelType.KNOWLEDGE: getattr(module, "KGTrainer"),
            ModelType.TRADITIONAL: getattr(module, "TraditionalTrainer"),
        }.get(model_type, RecBoleTrainer)
    if base is RecBoleTrainer:
        return Trainer
    return type(base.__name__, (EfficientTrainerMixin, base), {})


def build_optimizer(model, learner, learning_rate, weight_decay):
    """RecBole's optimiser for ``learner`` over ``model.optimizer_groups(weight_decay)`` (all
    trainable parameters if the model has no groups); the trainer and the benchmarks use it.

    A group flagged ``sparse: True`` holds parameters with row-sparse gradients (ELASTIC's
    memory bank): it gets :class:`~recbole_efficient.optim.LazyAdam` at ``lr_scale``
    (default 1) x ``learning_rate``, without weight decay, which updates only the rows in the
    gradient and their moments, so a step costs the same whatever the number of rows. The
    result is then an :class:`~recbole_efficient.optim.OptimizerChain` of the two.
    """
    weight_decay = weight_decay or 0.0
    groups = (model.optimizer_groups(weight_decay) if hasattr(model, "optimizer_groups")
              else [{"params": [p for p in model.parameters() if p.requires_grad]}])
    dense, sparse = [], []
    for group in groups:
        group = dict(group)
        group["lr"] = learning_rate * group.pop("lr_scale", 1.0)
        (sparse if group.pop("sparse", False) else dense).append(group)
    learner = str(learner).lower()
    if learner == "sparse_adam":  # RecBole's meaning: SparseAdam for every parameter
        return torch.optim.SparseAdam(dense + sparse, lr=learning_rate)
    learners = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
                "adagrad": torch.optim.Adagrad, "rmsprop": torch.optim.RMSprop}
    optimizers = []
    if dense:
        optimizers.append(learners.get(learner, torch.optim.Adam)(
            dense, lr=learning_rate, weight_decay=weight_decay))
    if sparse:
        optimizers.append(LazyAdam(sparse, lr=learning_rate))
    return optimizers[0] if len(optimizers) == 1 else OptimizerChain(optimizers)
