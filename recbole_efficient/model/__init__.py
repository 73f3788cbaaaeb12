"""Models of recbole_efficient, by class name."""

from recbole_efficient.model.base import EfficientSequentialRecommender
from recbole_efficient.model.elastic import ELASTIC
from recbole_efficient.model.linrec import LinRec
from recbole_efficient.model.linrec_bert import LinRecBERT
from recbole_efficient.model.lrurec import LRURec
from recbole_efficient.model.softmax_sasrec import SoftmaxSASRec

MODELS = {cls.__name__: cls for cls in (SoftmaxSASRec, LRURec, LinRec, LinRecBERT, ELASTIC)}

__all__ = ["EfficientSequentialRecommender", "MODELS", *MODELS]
