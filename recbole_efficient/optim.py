"""The optimiser of a model's parameter groups (:func:`build_optimizer`), and the optimisers
it needs for a sparse group (ELASTIC's memory bank)."""

import math

import torch

__all__ = ["ClipThenStep", "LazyAdam", "OptimizerChain", "build_optimizer"]


def _touched_rows(grad):
    """``(rows, values)`` of a row-sparse gradient, or of a dense one's non-zero rows."""
    if grad.is_sparse:
        grad = grad.coalesce()
        return grad.indices()[0], grad.values()
    rows = grad.flatten(1).ne(0).any(1).nonzero().squeeze(1)
    return rows, grad.index_select(0, rows)


class LazyAdam(torch.optim.Optimizer):
    """Adam for parameters with sparse (row) gradients: only the rows in the gradient and
    their moments are updated, so a step costs O(rows touched), whatever the number of rows.

    A dense gradient names its touched rows by their non-zero entries: multi-process
    training adds a zero multiple of every parameter to the loss (RecBole's
    ``sync_grad_loss``), which makes the bank's gradient dense.

    The update of a touched row is ``torch.optim.Adam``'s (no weight decay); rows absent from
    a gradient keep their parameters and moments, as in ``torch.optim.SparseAdam``. One
    gather and one scatter per state on the coalesced rows cost about half of SparseAdam's
    sparse-tensor arithmetic on CPU.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                rows, values = _touched_rows(param.grad)
                state = self.state[param]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                exp_avg = state["exp_avg"].index_select(0, rows).lerp_(values, 1 - beta1)
                exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2)
                exp_avg_sq.addcmul_(values, values, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, exp_avg)
                state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
                bias1 = 1 - beta1 ** state["step"]
                bias2 = 1 - beta2 ** state["step"]
                denom = exp_avg_sq.sqrt_().div_(math.sqrt(bias2)).add_(group["eps"])
                param.index_add_(0, rows, exp_avg.div_(denom), alpha=-group["lr"] / bias1)
        return loss


class OptimizerChain:
    """Optimisers over disjoint parameter groups, stepped, zeroed and saved as one."""

    def __init__(self, optimizers):
        self.optimizers = list(optimizers)

    @property
    def param_groups(self):
        return [group for opt in self.optimizers for group in opt.param_groups]

    def zero_grad(self, set_to_none=True):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def state_dict(self):
        return {"chain": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict):
        for opt, state in zip(self.optimizers, state_dict["chain"], strict=True):
            opt.load_state_dict(state)


class ClipThenStep:
    """An optimiser whose ``step`` first clips the gradient norm of ``params``.

    RecBole's trainer clips before ``GradScaler.step``, i.e. the loss-scaled gradients
    (x65,536 at first): under ``enable_scaler`` every step's gradient is clipped to
    ``max_norm`` / scale, which with SGD shrinks every update by the scale and with Adam(W)
    turns clipping into normalising every gradient to one norm. A scaler unscales the
    gradients before calling ``step``, so clipping here sees the true norms. Other attributes
    are the wrapped optimiser's.
    """

    def __init__(self, optimizer, params, clip_grad_norm):
        self.optimizer = optimizer
        self.params = [p for p in params if p.requires_grad]
        self.clip_grad_norm = dict(clip_grad_norm)

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        torch.nn.utils.clip_grad_norm_(self.params, **self.clip_grad_norm)
        self.optimizer.step()
        return loss

    def __getattr__(self, name):  # param_groups, zero_grad, state_dict, ...
        if name == "optimizer":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.optimizer, name)


def build_optimizer(model, learner, learning_rate, weight_decay):
    """RecBole's optimiser for ``learner`` over ``model.optimizer_groups(weight_decay)`` (all
    trainable parameters if the model has no groups); the trainer and the benchmarks use it.

    A group flagged ``sparse: True`` holds parameters that can take row-sparse gradients
    (ELASTIC's memory bank; the model is switched to them, ``use_sparse_gradients``): it gets
    :class:`LazyAdam` at ``lr_scale``
    (default 1) x ``learning_rate``, without weight decay, which updates only the rows in the
    gradient and their moments, so a step costs the same whatever the number of rows. The
    result is then an :class:`OptimizerChain` of the two.
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
    if sparse and hasattr(model, "use_sparse_gradients"):
        model.use_sparse_gradients(True)  # the optimisers below take row-sparse gradients
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
