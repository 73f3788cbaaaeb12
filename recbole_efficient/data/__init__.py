from recbole_efficient.data.dataloader import data_preparation
from recbole_efficient.data.dataset import SequentialDataset, create_dataset

__all__ = ["SequentialDataset", "create_dataset", "data_preparation"]
