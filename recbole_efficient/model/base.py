"""Shared base of every recbole_efficient model.

A subclass implements :meth:`encode` (hidden states for every position) and says whether
that encoder is causal; the base supplies RecBole's ``calculate_loss`` / ``predict`` /
``full_sort_predict`` for both training modes and both losses, and one streaming-inference
protocol (:meth:`~EfficientSequentialRecommender.init_state`, ``build_state``, ``step``) that
models with a fixed-size causal state implement through three hooks.
"""

import operator
from dataclasses import dataclass
from logging import getLogger

import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss

from recbole_efficient.data.dataset import target_list_field
from recbole_efficient.kernels.cross_entropy import linear_cross_entropy
from recbole_efficient.property_files import model_defaults
from recbole_efficient.validation import EFFICIENT_SPEC


def is_efficient_model(model_class):
    """Whether ``model_class`` is built on :class:`EfficientSequentialRecommender` (RecBole's
    own models are not)."""
    return isinstance(model_class, type) and issubclass(model_class, EfficientSequentialRecommender)


@dataclass
class StreamState:
    """Streaming-inference state of a batch of users.

    ``layers``: one model-specific entry per layer (a tensor or a tuple of tensors) whose size
    does not depend on the history length; ``length [B]``: items consumed so far per row.
    """

    layers: list
    length: torch.Tensor


class EfficientSequentialRecommender(SequentialRecommender):
    """RecBole ``SequentialRecommender`` trained on all positions or on the last one."""

    #: True when the output at position t depends only on items 0..t (see :meth:`is_causal`).
    causal = True
    #: Set by :meth:`drop_sequence_mixer`.
    mixer_dropped = False
    #: Outputs at real positions do not depend on right padding, so batches may be cut to
    #: their longest row (``recbole_efficient.data.dataloader``).
    accepts_trimmed_batches = True
    #: Keys this model reads, checked at start-up (``recbole_efficient.validation``).
    config_spec = EFFICIENT_SPEC
    #: Keys added to this model after checkpoints of it were saved, with the value that
    #: rebuilds those checkpoints' model (``checkpoint.config_from_checkpoint``).
    checkpoint_defaults = {}
    #: Set while a CUDA graph captures :meth:`step` (:class:`CudaGraphStep`): ``_stream_step``
    #: then takes no branch that depends on the data (no host sync, one path for every call).
    static_stream = False
    #: Whether parameters that can take row-sparse gradients (a ``sparse`` optimiser group,
    #: e.g. ELASTIC's memory bank) get them; see :meth:`use_sparse_gradients`.
    sparse_gradients = False

    @classmethod
    def is_causal(cls, config):
        """Whether the encoder built from ``config`` is causal (override when a key decides)."""
        return cls.causal

    @classmethod
    def train_modes(cls, config):
        """Training modes this model supports with ``config``."""
        return ("augmented", "all_positions") if cls.is_causal(config) else ("augmented",)

    def __init__(self, config, dataset):
        # Plain RecBole Config (no recbole_efficient.Config) does not know our yaml files.
        for key, value in model_defaults(type(self).__name__).items():
            if key not in config:
                config[key] = value
        super().__init__(config, dataset)
        self.loss_type = config["loss_type"]
        if self.loss_type not in ("CE", "BPR"):
            raise NotImplementedError(f"loss_type must be 'CE' or 'BPR', got {self.loss_type!r}.")
        self.train_mode = config["train_mode"] or "augmented"
        self.causal = type(self).is_causal(config)
        self.TARGET_SEQ = target_list_field(config)
        self.bpr_loss = BPRLoss()
        self._warned_fallback = False
        # plain RecBole Config has no overall.yaml of ours: auto
        self.compile_setting = config["compile"] if "compile" in config else "auto"
        self.position_wise_compiled = False

    def use_sparse_gradients(self, enabled=True):
        """Give the parameters of ``sparse`` optimiser groups row-sparse gradients.

        Off by default, so that any torch optimiser (RecBole's own trainer builds one Adam over
        every parameter) can step them, with dense gradients; ``optim.build_optimizer`` turns
        it on where it gives those groups LazyAdam. Models with such groups override this.
        """
        self.sparse_gradients = bool(enabled)

    # -- to implement -------------------------------------------------------------------
    def encode(self, item_seq, item_seq_len):
        """Hidden states ``[B, L, d]`` for every position of right-padded ``item_seq``."""
        raise NotImplementedError

    def output_embedding(self):
        """Item output matrix ``[n_items, d]`` and optional bias ``[n_items]``."""
        return self.item_embedding.weight, None

    def encode_last(self, item_seq, item_seq_len):
        """Hidden state ``[B, d]`` at each row's last real position.

        Override where the last layer's position-wise work can be skipped elsewhere.
        """
        return self.gather_indexes(self.encode(item_seq, item_seq_len), item_seq_len - 1)

    def position_wise_modules(self):
        """The sub-modules that act on each position alone (the feed-forward sublayers: linear,
        activation, linear, dropout, residual, LayerNorm), which the ``compile`` key runs
        through ``torch.compile``. Models list theirs."""
        return []

    def drop_sequence_mixer(self):
        """Replace the sequence mixer (attention, recurrence, ...) by the identity, in place.

        What remains (embeddings, feed-forward blocks, norms, output layer) is the *floor*
        the efficiency benchmark divides every model's cost by. Returns ``self``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement drop_sequence_mixer")

    # -- shared ---------------------------------------------------------------------------
    def forward(self, item_seq, item_seq_len):
        return self.encode_last(item_seq, item_seq_len)

    def logits(self, hidden):
        weight, bias = self.output_embedding()
        return F.linear(hidden, weight, bias)  # the bias is added inside the matmul

    def _item_scores(self, hidden, items):
        weight, bias = self.output_embedding()
        out = (hidden * weight[items]).sum(-1)
        return out + bias[items] if bias is not None else out

    def calculate_loss(self, interaction):
        item_seq = interaction[self.ITEM_SEQ]
        item_seq_len = interaction[self.ITEM_SEQ_LEN]
        if self.TARGET_SEQ in interaction:
            return self._all_positions_loss(interaction, item_seq, item_seq_len)
        if self.train_mode == "all_positions" and not self._warned_fallback:
            getLogger().warning("Batch has no per-position targets (built by RecBole's own "
                                "dataset?): training on the last position only.")
            self._warned_fallback = True
        seq_output = self.forward(item_seq, item_seq_len)
        pos_items = interaction[self.POS_ITEM_ID]
        if self.loss_type == "BPR":
            neg_items = interaction[self.NEG_ITEM_ID]
            return self.bpr_loss(self._item_scores(seq_output, pos_items),
                                 self._item_scores(seq_output, neg_items))
        return F.cross_entropy(self.logits(seq_output), pos_items)

    def _all_positions_loss(self, interaction, item_seq, item_seq_len):
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        mask = positions[None, :] < item_seq_len[:, None]
        # Packing costs a scatter and a gather per layer, ~5 % of a step: worth it from ~10 %
        # padding on (measured here; a batch cut to its longest row often has none).
        if int(item_seq_len.sum()) <= 0.9 * mask.numel():
            hidden = self.encode_packed(item_seq, item_seq_len, mask)
        else:
            hidden = self.encode(item_seq, item_seq_len)[mask]
        return self._positions_loss(hidden, interaction[self.TARGET_SEQ][mask])

    def encode_packed(self, item_seq, item_seq_len, mask):
        """Hidden states at the real positions only, ``[mask.sum(), d]`` in row-major order
        (``mask [B, L]``: True at real positions). Override to skip the position-wise work on
        the padding of a batch's shorter rows."""
        return self.encode(item_seq, item_seq_len)[mask]

    def _positions_loss(self, hidden, targets):
        """Mean loss of the hidden states ``[N, d]`` against their target items ``[N]``."""
        if self.loss_type == "BPR":
            # One uniform negative per position, redrawn where it hits the target.
            neg = torch.randint(1, self.n_items, targets.shape, device=targets.device)
            clash = neg == targets
            neg[clash] = (neg[clash] % (self.n_items - 1)) + 1
            return self.bpr_loss(self._item_scores(hidden, targets), self._item_scores(hidden, neg))
        weight, bias = self.output_embedding()
        return linear_cross_entropy(hidden, weight, bias, targets)

    def predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self._item_scores(seq_output, interaction[self.ITEM_ID])

    def full_sort_predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.logits(seq_output)

    # -- streaming inference ------------------------------------------------------------
    # A model streams when its causal encoder keeps a fixed-size state per layer. It
    # implements ``_stream_init``, ``_stream_build`` and ``_stream_step``; the base checks
    # the mode and the position limit, turns off autograd and scores the items.

    def supports_streaming(self):
        """True when :meth:`step` is available for this model and config (and its sequence
        mixer has not been dropped)."""
        return type(self)._stream_step is not EfficientSequentialRecommender._stream_step \
            and self.causal and not self.mixer_dropped

    def stream_limit(self):
        """Most items a streamed history may hold (``None``: unbounded).

        Models with learned absolute positions return ``max_seq_length``: positions past it
        were never trained, so :meth:`step` refuses to go beyond it.
        """
        return None

    def _check_streaming(self):
        if not self.supports_streaming():
            raise NotImplementedError(
                f"{type(self).__name__} has no streaming inference with this config (it needs a "
                "causal encoder with a fixed-size state); score with full_sort_predict instead.")
        if self.training:
            raise RuntimeError(f"{type(self).__name__} streaming inference runs in eval mode only "
                               "(dropout off): call model.eval() first.")

    def _check_limit(self, length):
        limit = self.stream_limit()
        if limit is not None and length.numel() and int(length.max()) > limit:
            raise ValueError(
                f"{type(self).__name__} streams at most MAX_ITEM_LIST_LENGTH={limit} items per "
                f"history (its learned positions end there), got {int(length.max())}. Rebuild the "
                f"state from the most recent items with build_state(item_seq[:, -{limit - 1}:], ...) "
                "or train with a larger MAX_ITEM_LIST_LENGTH.")

    def train(self, mode=True):
        self.__dict__.pop("_stream_cache", None)  # training changes the weights: free it
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        # .to(), .half(), ... may put new Parameter objects in place without registering them
        self.__dict__.pop("_stream_cache", None)
        out = super()._apply(fn, *args, **kwargs)
        # RecBole moves every model to config["device"]: where `compile` learns the device
        if not self.position_wise_compiled and self._compile_wanted():
            self.compile_position_wise()
        return out

    def _compile_wanted(self):
        setting = self.compile_setting
        if setting == "auto":  # CUDA only: on the CPU it measured no faster (README)
            return any(p.is_cuda for p in self.parameters())
        return setting is True

    def compile_position_wise(self):
        """Run every :meth:`position_wise_modules` entry through ``torch.compile``, with the
        number of positions a dynamic dimension: one graph serves every batch length (training
        batches are cut to their longest row, packed batches to their real positions), not one
        graph each. Parameters and state-dict keys are unchanged. Returns ``self``."""
        for module in self.position_wise_modules():
            module.compile(dynamic=True)
        self.position_wise_compiled = True
        return self

    def _stream_weights(self, refresh=False):
        """:meth:`_gather_stream_weights`, kept while every parameter, buffer and submodule of
        the model is the object it was when gathered (a replaced weight, or
        ``load_state_dict(assign=True)``, gathers anew), until the model is converted or
        trained, or ``init_state``/``build_state`` refresh it. It holds the live parameters,
        not copies, so in-place updates (optimiser steps, ``load_state_dict``, writes through
        ``.data``) are seen at once."""
        cache = self.__dict__.get("_stream_cache")
        if refresh or cache is None or not cache.is_current():
            cache = self.__dict__["_stream_cache"] = _GatheredWeights(self)
        return cache.weights

    def _gather_stream_weights(self):
        """Hook: the parameters (and constants) :meth:`_stream_step` reads, gathered once
        instead of at every step (default: nothing). At batch 1 a step is mostly per-call
        overhead, and looking weights up through the module tree costs about as much as the
        arithmetic. Return live parameters, never copies derived from them."""
        return None

    def init_state(self, batch_size):
        """State of ``batch_size`` empty histories."""
        self._check_streaming()
        self._stream_weights(refresh=True)
        device = self.item_embedding.weight.device
        return StreamState(self._stream_init(batch_size),
                           torch.zeros(batch_size, dtype=torch.long, device=device))

    @torch.no_grad()
    def build_state(self, item_seq, item_seq_len):
        """State after the last real item of each right-padded row, in one parallel pass.

        ``item_seq [B, L]``, ``item_seq_len [B]`` (0 gives the empty state). Eval mode only.
        """
        self._check_streaming()
        self._check_limit(item_seq_len)
        self._stream_weights(refresh=True)
        return StreamState(self._stream_build(item_seq, item_seq_len), item_seq_len.clone())

    @torch.no_grad()
    def step(self, item_ids, state):
        """Append one item per row and score every item.

        ``item_ids [B]``, ``state`` from :meth:`init_state`, :meth:`build_state` or a previous
        ``step`` -> ``(scores [B, n_items], new_state)``, equal to ``full_sort_predict`` on the
        whole history. The cost does not depend on the history length; ``state`` is not
        modified. Eval mode only.
        """
        hidden, state = self.advance(item_ids, state)
        return self.logits(hidden), state

    @torch.no_grad()
    def advance(self, item_ids, state):
        """:meth:`step` without the scoring: ``(hidden [B, d], new_state)``, where
        ``logits(hidden)`` are :meth:`step`'s scores. For a caller that keeps ``hidden`` and
        scores later, or never (a server that applies events and recommends on request)."""
        self._check_streaming()
        length = state.length + 1
        self._check_limit(length)
        hidden, layers = self._stream_step(item_ids, state.length, state.layers)
        return hidden, StreamState(layers, length)

    def cuda_graph_step(self, state):
        """:meth:`step` for the fixed batch of users of ``state`` (on a CUDA device), captured
        once as a CUDA graph and replayed at each call: one launch per step instead of one per
        operator. See :class:`CudaGraphStep`."""
        return CudaGraphStep(self, state)

    def _stream_init(self, batch_size):
        """Per-layer states of empty histories."""
        raise NotImplementedError

    def _stream_build(self, item_seq, item_seq_len):
        """Per-layer states after each row's last real item (rows of length 0: empty)."""
        raise NotImplementedError

    def _stream_step(self, item_ids, positions, layers):
        """``item_ids [B]`` at 0-based ``positions [B]`` -> ``(hidden [B, d], new layers)``."""
        raise NotImplementedError


def _flat(layers):
    """The tensors of a streaming state's ``layers`` (tensors, tuples and lists of them)."""
    if isinstance(layers, torch.Tensor):
        return [layers]
    return [t for entry in layers for t in _flat(entry)]


class CudaGraphStep:
    """``model.step`` for a fixed batch of users as a CUDA graph (``model.cuda_graph_step``).

    ``graphed(item_ids)`` appends one item per row (``item_ids [B]`` on the model's device) and
    returns the scores ``[B, n_items]``, equal to :meth:`EfficientSequentialRecommender.step`;
    the state advances in place (:attr:`state`). The scores and the state are the graph's own
    buffers, overwritten by the next call: clone what you keep. The graph reads the weights
    where they were at capture: in-place updates (``load_state_dict``, optimiser steps) are
    seen, replaced parameter objects are not (capture again).
    """

    def __init__(self, model, state, warmup=3):
        model._check_streaming()
        if not state.length.is_cuda:
            raise ValueError("cuda_graph_step needs the state on a CUDA device (model.cuda() "
                             "before init_state/build_state); on the CPU call model.step.")
        self.model = model
        self.limit = model.stream_limit()
        self.longest = int(state.length.max()) if state.length.numel() else 0
        # the warm-up steps read one position past the state: a full history must not get there
        model._check_limit(state.length + 1)
        self.state = StreamState([_clone(entry) for entry in state.layers], state.length.clone())
        self.items = torch.ones_like(state.length)
        model.static_stream = True
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), torch.no_grad():
                for _ in range(warmup):  # lazy initialisations happen before capture, not in it
                    self._step()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph), torch.no_grad():
                self.scores, layers = self._step()
                for old, new in zip(_flat(self.state.layers), _flat(layers)):
                    old.copy_(new)
                self.state.length.add_(1)
        finally:
            model.static_stream = False

    def _step(self):
        hidden, layers = self.model._stream_step(self.items, self.state.length,
                                                 self.state.layers)
        return self.model.logits(hidden), layers

    def __call__(self, item_ids):
        # the length check on the host: reading the device's lengths would wait for the GPU
        if self.limit is not None and self.longest + 1 > self.limit:
            self.model._check_limit(self.state.length + 1)
        self.items.copy_(item_ids)
        self.graph.replay()
        self.longest += 1
        return self.scores


def _clone(entry):
    if isinstance(entry, torch.Tensor):
        return entry.clone()
    return type(entry)(_clone(e) for e in entry)


class _GatheredWeights:
    """What :meth:`EfficientSequentialRecommender._gather_stream_weights` returned, and every
    slot (parameter, buffer, submodule) of the model at that moment, to tell when a slot now
    holds another object. The check is one C-level pass over the slots: a few microseconds."""

    def __init__(self, model):
        slots = [(table, name) for module in model.modules()
                 for table in (module._parameters, module._buffers, module._modules)
                 for name in table]
        self.tables, self.names = (list(column) for column in zip(*slots))
        self.values = list(map(dict.get, self.tables, self.names))
        self.weights = model._gather_stream_weights()

    def is_current(self):
        return all(map(operator.is_, map(dict.get, self.tables, self.names), self.values))
