"""model.init: a run starts from the weights of an exported model (train again after a review)."""

from __future__ import annotations

import pytest
import torch

from minedet.errors import MinedetError
from minedet.run import build_run, run_training
from tests.conftest import tiny_config


def test_a_run_starts_from_an_exported_models_weights(tiny_digits, tmp_path):
    first = run_training(tiny_config(tiny_digits, tmp_path / "a", train__max_steps=2, train__ckpt_every=0), quiet=True)
    from minedet.engine.checkpoint import load_model

    src, _ = load_model(first["model"])
    fresh = build_run(tiny_config(tiny_digits, tmp_path / "b"), quiet=True).method.detector
    init = build_run(tiny_config(tiny_digits, tmp_path / "c", model__init=first["model"]), quiet=True).method.detector
    same = [torch.equal(a, b) for a, b in zip(init.model.state_dict().values(), src.model.state_dict().values())]
    assert all(same)
    assert not all(torch.equal(a, b) for a, b in zip(fresh.model.state_dict().values(), src.model.state_dict().values()))
    with pytest.raises(MinedetError, match="model.init: the model has fpn_channels=32"):
        build_run(tiny_config(tiny_digits, tmp_path / "d", model__init=first["model"], model__fpn_channels=16), quiet=True)
