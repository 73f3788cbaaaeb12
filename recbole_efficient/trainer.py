"""RecBole trainers with crash-safe, resumable checkpoints, per-model optimiser groups,
numerical-fault stops and ``exclude_history``."""

import importlib
import signal
import threading
import time

import numpy as np
import torch
from recbole.trainer import Trainer as RecBoleTrainer
from recbole.utils import ModelType, set_color

from recbole_efficient import distributed
from recbole_efficient.checkpoint import (BEST, LATEST, config_state, load_checkpoint,
                                          make_run_dir, resume_file, rng_state, save_checkpoint,
                                          set_rng_state)
from recbole_efficient.optim import ClipThenStep, build_optimizer


class _BudgetExhausted(Exception):
    pass


class NonFiniteLoss(ValueError):
    """The training loss became NaN or infinite."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training. ``run_dir``: the run folder to resume from (``None`` when no
    epoch was completed or nothing is saved); ``epoch``: the last completed epoch."""

    def __init__(self, message, run_dir=None, epoch=None):
        super().__init__(message)
        self.run_dir, self.epoch = run_dir, epoch


def resume_command(run_dir):
    return f"python run_recbole_efficient.py --resume={run_dir}"


class EfficientTrainerMixin:
    """Mixed in front of any RecBole trainer class.

    With ``fit(saved=True)`` a run writes into its own run folder (see
    :mod:`recbole_efficient.checkpoint`): ``best.pth`` when validation improves (RecBole's
    ``saved_model_file``) and ``latest.pth`` after every epoch, both atomically and with the
    full training state (RNG states included), so :meth:`resume_checkpoint` continues a run
    exactly where it stopped. Ctrl-C stops training with :class:`TrainingInterrupted`, which
    says how to resume. A NaN/inf loss stops training (``self.fault`` says where and why) and
    keeps the best checkpoint so far.

    ``train_time_budget`` (seconds, optional): no new epoch starts once the budget is spent;
    the best checkpoint so far is kept, so equal-time comparisons run through ``fit`` as usual.

    ``epoch_end_hooks``: callables ``hook(trainer, epoch, valid_result, final)`` run after
    each completed epoch, once its latest state is saved; ``valid_result`` is ``None`` when the
    epoch was not validated, ``final`` is True for the last epoch of the run.
    """

    def __init__(self, config, model):
        if distributed.is_distributed(config):
            with distributed.recbole_trainer_init(config):
                super().__init__(config, model)
            self.model, self.distributed_model = distributed.wrap_model(self.model, config)
        else:
            super().__init__(config, model)
        self.epoch_seconds = []  # training seconds of each epoch of this run
        self.epoch_end_hooks = []
        self.run_dir = None
        self.saved_model_file = None  # run_dir/best.pth once fit(saved=True) starts
        self.fault = None
        self.best_epoch = None
        self.valid_history = []  # [epoch, valid score] of every validation of this run
        self.stop_reason = None  # why the last fit ended: early_stopping, epochs, budget, fault
        self._resumed_stop_reason = None
        self._elapsed_before = 0.0  # wall-clock seconds spent before a resume
        self._resume_rng = None
        self._saved = False
        self._fit_started = None
        self._epoch = None      # epoch being trained
        self._batch = 0         # batches of that epoch so far
        self._epoch_batches = 0
        self._generator = None  # the training loader's shuffling generator
        self._done_epoch = None
        self.last_validation = (None, None)  # (epoch, valid_result) of the latest validation
        self._stop_requested = False    # set by the first Ctrl-C

    # -- fit -------------------------------------------------------------------------------
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None):
        self._saved = saved
        self._generator = getattr(train_data, "generator", None)
        if saved and self.run_dir is None:
            self._open_run_dir()
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng, self._generator)
            self._resume_rng = None
        if self.start_epoch > 0 and self._run_is_over():
            budget = self.config["train_time_budget"]
            # a finished run keeps the reason it ended with (saved in its latest state)
            self.stop_reason = self._resumed_stop_reason or (
                "early_stopping" if self.cur_step > self.stopping_step
                else "budget" if budget and self._elapsed_before >= budget else "epochs")
            self.logger.info(set_color("Nothing left to train", "yellow")
                             + f": the resumed run ended at epoch {self.start_epoch - 1}.")
            return self.best_valid_score, self.best_valid_result
        self._fit_started = time.time() - self._elapsed_before
        self._epoch = self._done_epoch = None
        self.fault = None
        self.stop_reason = None
        restore_sigint = self._catch_sigint()
        try:
            try:
                result = super().fit(train_data, valid_data, verbose=verbose, saved=saved,
                                     show_progress=show_progress, callback_fn=callback_fn)
                self.stop_reason = ("early_stopping" if self.cur_step > self.stopping_step
                                    else "epochs")
            except _BudgetExhausted:
                self.logger.info(set_color("train_time_budget", "yellow")
                                 + f" of {self.config['train_time_budget']}s spent; stopping.")
                self.stop_reason = "budget"
                result = self.best_valid_score, self.best_valid_result
            self._epoch_done(self._epoch, final=True)
            return result
        except NonFiniteLoss as err:
            self.fault = str(err)
            self.stop_reason = "fault"
            self.logger.error(self.fault)
            return self.best_valid_score, self.best_valid_result
        except KeyboardInterrupt:
            raise self._interrupted() from None
        finally:
            restore_sigint()

    def _catch_sigint(self):
        """First Ctrl-C: stop at the next batch or epoch boundary (after saving the epoch that
        is being validated); a second one stops at once. Returns what restores the handler."""
        self._stop_requested = False
        if threading.current_thread() is not threading.main_thread():
            return lambda: None  # signals reach the main thread only (not inside a Ray trial)

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            self.logger.warning("Ctrl-C: stopping at the next batch or after this validation "
                                "(press Ctrl-C again to stop at once).")

        previous = signal.signal(signal.SIGINT, handler)
        return lambda: signal.signal(signal.SIGINT, previous or signal.default_int_handler)

    def _stop_if_requested(self):
        # Every rank stops at the same point (a rank leaving alone would hang the others).
        if distributed.any_rank(self._stop_requested, self.config):
            raise KeyboardInterrupt

    def _run_is_over(self):
        budget = self.config["train_time_budget"]
        return (self.start_epoch >= self.epochs or self.cur_step > self.stopping_step
                or bool(budget and self._elapsed_before >= budget))

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        budget = self.config["train_time_budget"]
        spent = budget and self._epoch is not None and time.time() - self._fit_started >= budget
        if distributed.any_rank(spent, self.config):  # every rank stops at the same epoch
            raise _BudgetExhausted
        # RecBole has finished the previous epoch: its validation and early-stopping update.
        self._epoch_done(self._epoch)
        self._epoch, self._batch, self._epoch_batches = epoch_idx, 0, len(train_data)
        epoch_started = time.time()
        loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func,
                                    show_progress=show_progress)
        self.epoch_seconds.append(time.time() - epoch_started)
        return loss

    def _valid_epoch(self, valid_data, show_progress=False):
        valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self.last_validation = (self._epoch, valid_result)
        self.valid_history.append([self._epoch, float(valid_score)])
        return valid_score, valid_result

    def _epoch_done(self, epoch, final=False):
        if epoch is None or epoch == self._done_epoch:
            return
        self._done_epoch = epoch
        if self._saved:
            self._write_state(LATEST, epoch)
        valid_epoch, valid_result = self.last_validation
        for hook in self.epoch_end_hooks:
            hook(self, epoch, valid_result if valid_epoch == epoch else None, final)
        self._stop_if_requested()

    def _check_nan(self, loss):
        # RecBole calls this once per batch, before the backward pass.
        self._stop_if_requested()
        self._batch += 1
        finite = bool(torch.isfinite(loss).all())
        if not distributed.any_rank(not finite, self.config):
            return
        best = (f"The best checkpoint so far (epoch {self.best_epoch}) is kept: "
                f"{self.saved_model_file}." if self.best_epoch is not None
                else "No checkpoint was saved before the fault.")
        raise NonFiniteLoss(
            f"Training loss is {loss.item() if not finite else 'not finite in another process'} "
            f"at epoch {self._epoch}, batch {self._batch} of "
            f"{self._epoch_batches}: training diverged and was stopped. Lower the learning rate "
            f"(learning_rate={self.config['learning_rate']}, e.g. "
            f"--learning_rate={self.config['learning_rate'] / 10:g}) or clip gradients "
            f"(clip_grad_norm={self.config['clip_grad_norm']}, e.g. "
            "--clip_grad_norm=\"{'max_norm': 1.0}\"). " + best)

    def _interrupted(self):
        epoch = self._done_epoch
        when = (f"after epoch {epoch}" if epoch == self._epoch
                else f"during epoch {self._epoch}")
        if not self._saved or epoch is None:
            message = (f"Training interrupted {when}; nothing was saved to resume from "
                       "(run the command again to start over).")
            run_dir = None
        else:
            run_dir = self.run_dir
            message = (f"Training interrupted {when}. The state after epoch {epoch} is saved in "
                       f"{run_dir}; resume with: {resume_command(run_dir)}")
        self.logger.warning(message)
        return TrainingInterrupted(message, run_dir, epoch)

    # -- checkpoints -----------------------------------------------------------------------
    def _open_run_dir(self):
        # Only rank 0 writes (other ranks take the best weights from it: see evaluate).
        if distributed.is_rank_zero(self.config):
            self.run_dir = make_run_dir(self.checkpoint_dir, self.config["model"])
            self.saved_model_file = str(self.run_dir / BEST)

    def _training_state(self, epoch):
        return {
            "config": config_state(self.config),
            "epoch": int(epoch),
            "cur_step": int(self.cur_step),
            "best_valid_score": float(self.best_valid_score),
            "best_valid_result": {k: float(v) for k, v in (self.best_valid_result or {}).items()},
            "best_epoch": self.best_epoch,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            "train_loss": dict(self.train_loss_dict),
            "epoch_seconds": list(self.epoch_seconds),
            "valid_history": [list(h) for h in self.valid_history],
            "stop_reason": self.stop_reason,
            "elapsed": time.time() - self._fit_started,
            "rng": rng_state(self._generator),
        }

    def _write_state(self, name, epoch):
        if distributed.is_rank_zero(self.config):
            save_checkpoint(self.run_dir / name, self._training_state(epoch))

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        # RecBole calls this when validation improves (every epoch without validation).
        self.best_epoch = int(epoch)
        if not distributed.is_rank_zero(self.config):
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        save_checkpoint(saved_model_file, self._training_state(epoch))
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def _load(self, path):
        return load_checkpoint(path, map_location=self.device,
                               trust_checkpoint=bool(self.config["trust_checkpoint"]))

    def resume_checkpoint(self, resume_file_or_run_dir):
        """Restore the training state of a checkpoint, or of a run folder's ``latest.pth``;
        the run then continues in that checkpoint's folder."""
        path = resume_file(resume_file_or_run_dir)
        checkpoint = self._load(path)
        saved_model = checkpoint["config"]["model"]
        if saved_model.lower() != self.config["model"].lower():
            raise ValueError(f"{path} is a {saved_model} checkpoint; it cannot resume "
                             f"{self.config['model']}.")
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.best_valid_result = checkpoint.get("best_valid_result") or None
        self.best_epoch = checkpoint.get("best_epoch")
        self.train_loss_dict = dict(checkpoint.get("train_loss", {}))
        self.epoch_seconds = list(checkpoint.get("epoch_seconds", []))
        self.valid_history = [list(h) for h in checkpoint.get("valid_history", [])]
        self._resumed_stop_reason = checkpoint.get("stop_reason")
        self._elapsed_before = checkpoint.get("elapsed", 0.0)
        self._resume_rng = checkpoint.get("rng")
        self.run_dir = path.parent
        self.saved_model_file = str(self.run_dir / BEST)
        self.logger.info(f"Checkpoint {path} loaded. Resume training from epoch {self.start_epoch}")

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

    # -- optimiser and evaluation ------------------------------------------------------------
    def _build_optimizer(self, **kwargs):
        # Models may exempt biases/LayerNorm from weight decay (LRURec's AdamW recipe) or flag
        # a sparse group (ELASTIC's memory bank).
        if "params" in kwargs or not hasattr(self.model, "optimizer_groups"):
            optimizer = super()._build_optimizer(**kwargs)
        else:
            optimizer = build_optimizer(self.model, kwargs.get("learner", self.learner),
                                        kwargs.get("learning_rate", self.learning_rate),
                                        kwargs.get("weight_decay", self.weight_decay))
        # RecBole would clip the loss-scaled gradients; clip after the scaler unscales them,
        # in every optimiser built while the scaler is on (RecVAE's trainer builds three).
        clip = getattr(self, "_clip_in_step", None) or self.clip_grad_norm
        if getattr(self, "enable_scaler", False) and clip:
            self._clip_in_step, self.clip_grad_norm = clip, None
            optimizer = ClipThenStep(optimizer, self.model.parameters(), clip)
        return optimizer

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
