"""Shared fixtures: a tiny digits dataset built once per test session."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_digits(tmp_path_factory):
    """12 train / 6 val images of 64 px with 1-3 digits each (some val images empty)."""
    from minedet.data.digits import build_digits

    root = tmp_path_factory.mktemp("digits")
    return build_digits(root, seed=0, n_train=12, n_val=6, image_size=64, digits_per_image=(0, 3), digit_size=(14, 24))


@pytest.fixture(scope="session")
def semi_split(tiny_digits, tmp_path_factory):
    """``tiny_digits``' train split, half labelled (split_semi 50 %, seed 0): paths of the
    labelled, unlabelled and hidden-truth JSON files."""
    from minedet.data.coco import load_coco, save_coco
    from minedet.data.splits import split_semi

    res = split_semi(load_coco(tiny_digits.train_json).raw, 50, 0)
    out = tmp_path_factory.mktemp("semi")
    paths = {}
    for k in ("labelled", "unlabelled", "hidden"):
        paths[k] = out / f"{k}.json"
        save_coco(paths[k], getattr(res, k))
    return paths


def tiny_config(paths, out_dir, **over):
    """A config dict for a few fast CPU steps on ``tiny_digits``."""
    from minedet.config import build_config

    d = {
        "data": {"train": str(paths.train_json), "train_images": str(paths.image_root), "val": str(paths.val_json),
                 "val_images": str(paths.image_root), "image_size": 64, "batch_size": 2, "flip": 0.5},
        "model": {"name": "retinanet", "backbone": "effnet_lite0", "pretrained": False, "levels": "p3p5",
                  "fpn_channels": 32, "anchor_scale": 2.0},
        "method": {"name": "supervised"},
        "train": {"max_steps": 4, "lr": 0.01, "warmup_steps": 2, "ckpt_every": 2, "log_every": 1, "progress": False,
                  "out_dir": str(out_dir), "seed": 0},
    }
    for key, value in over.items():
        section, name = key.split("__", 1)
        if section == "method":
            d["method"][name] = value
        else:
            d[section][name] = value
    return build_config(d)
