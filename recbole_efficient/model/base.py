"""Shared base of every recbole_efficient model.

A subclass implements :meth:`encode` (hidden states for every position) and says whether
that encoder is causal; the base supplies RecBole's ``calculate_loss`` / ``predict`` /
``full_sort_predict`` for both training modes and both losses.
"""

from logging import getLogger

import torch
import torch.nn.functional as F
import yaml
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.loss import BPRLoss

from recbole_efficient.data.dataset import target_list_field


def _yaml_loader():
    from recbole.config import Config as RecBoleConfig

    # RecBole's loader also reads floats such as 1e-12 that plain YAML 1.1 leaves as strings.
    return RecBoleConfig._build_yaml_loader(None)


def model_defaults(model_class):
    """Our overall.yaml + ``properties/model/<Model>.yaml`` as one dict."""
    from recbole_efficient.config import properties_dir

    merged = {}
    for path in (properties_dir() / "overall.yaml",
                 properties_dir() / "model" / f"{model_class.__name__}.yaml"):
        if path.is_file():
            merged.update(yaml.load(path.read_text(), Loader=_yaml_loader()) or {})
    return merged


class EfficientSequentialRecommender(SequentialRecommender):
    """RecBole ``SequentialRecommender`` trained on all positions or on the last one."""

    #: True when the output at position t depends only on items 0..t.
    causal = True

    def __init__(self, config, dataset):
        # Plain RecBole Config (no recbole_efficient.Config) does not know our yaml files.
        for key, value in model_defaults(type(self)).items():
            if key not in config:
                config[key] = value
        super().__init__(config, dataset)
        self.loss_type = config["loss_type"]
        if self.loss_type not in ("CE", "BPR"):
            raise NotImplementedError(f"loss_type must be 'CE' or 'BPR', got {self.loss_type!r}.")
        self.train_mode = config["train_mode"] or "augmented"
        self.TARGET_SEQ = target_list_field(config)
        self.bpr_loss = BPRLoss()
        self._warned_fallback = False

    # -- to implement -------------------------------------------------------------------
    def encode(self, item_seq, item_seq_len):
        """Hidden states ``[B, L, d]`` for every position of right-padded ``item_seq``."""
        raise NotImplementedError

    def output_embedding(self):
        """Item output matrix ``[n_items, d]`` and optional bias ``[n_items]``."""
        return self.item_embedding.weight, None

    # -- shared ---------------------------------------------------------------------------
    def forward(self, item_seq, item_seq_len):
        return self.gather_indexes(self.encode(item_seq, item_seq_len), item_seq_len - 1)

    def logits(self, hidden):
        weight, bias = self.output_embedding()
        out = hidden @ weight.t()
        return out + bias if bias is not None else out

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
        hidden = self.encode(item_seq, item_seq_len)
        positions = torch.arange(item_seq.size(1), device=item_seq.device)
        mask = positions[None, :] < item_seq_len[:, None]
        hidden = hidden[mask]
        targets = interaction[self.TARGET_SEQ][mask]
        if self.loss_type == "BPR":
            # One uniform negative per position, redrawn where it hits the target.
            neg = torch.randint(1, self.n_items, targets.shape, device=targets.device)
            clash = neg == targets
            neg[clash] = (neg[clash] % (self.n_items - 1)) + 1
            return self.bpr_loss(self._item_scores(hidden, targets), self._item_scores(hidden, neg))
        return F.cross_entropy(self.logits(hidden), targets)

    def predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self._item_scores(seq_output, interaction[self.ITEM_ID])

    def full_sort_predict(self, interaction):
        seq_output = self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN])
        return self.logits(seq_output)
