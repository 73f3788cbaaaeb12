"""Safe checkpoints: plain data loads with weights_only=True; pickled code is refused."""

import pickle

import pytest
import torch

from recbole_efficient.checkpoint import (UnsafeCheckpointError, config_state, load_checkpoint,
                                          save_checkpoint, to_primitive)


class _RunsCodeOnLoad:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        # Unpickling this object creates a file: proof that code ran.
        return (open, (self.marker, "w"))


def test_crafted_pickle_is_refused_by_default(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "config": _RunsCodeOnLoad(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match="trust_checkpoint=True"):
        load_checkpoint(path)
    assert not marker.exists()


def test_trusted_load_unpickles(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"x": _RunsCodeOnLoad(str(marker))}, path)
    load_checkpoint(path, trust_checkpoint=True)
    assert marker.exists()


def test_unsafe_error_is_an_unpickling_error():
    assert issubclass(UnsafeCheckpointError, pickle.UnpicklingError)


def test_plain_checkpoint_roundtrip(tmp_path):
    path = tmp_path / "ok.pth"
    state = {"config": {"model": "M", "final": {"a": [1, 2.5, None, "s"], "b": {"c": True}}},
             "state_dict": {"w": torch.arange(3.0)}, "epoch": 2}
    save_checkpoint(path, state)
    out = torch.load(path, weights_only=True)
    assert out["config"] == state["config"] and torch.equal(out["state_dict"]["w"], torch.arange(3.0))


def test_config_state_is_plain_data(tiny):
    from recbole_efficient import Config
    from helpers import TINY

    _, cfg = tiny
    config = Config(model="SoftmaxSASRec", dataset=TINY, config_dict=cfg(), read_cmd_line=False)
    state = config_state(config)

    def plain(v):
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        if isinstance(v, list):
            return all(plain(x) for x in v)
        return v is None or isinstance(v, (bool, int, float, str))

    assert plain(state) and state["model"] == "SoftmaxSASRec"
    assert to_primitive(torch.tensor(3)) == 3
