"""`minedet demo --sparse`: the plain detector and co-mining on the same sparse labels."""

from __future__ import annotations

import json
from pathlib import Path

from minedet.cli import main
from minedet.cli.demo import sparse_methods


def test_sparse_methods_take_co_mining_options_and_loss_from_its_preset():
    m = sparse_methods("hard", [])
    assert m["supervised"] == ({"name": "supervised"}, {})
    block, extra = m["co_mining"]
    assert block["name"] == "co_mining" and block["tau"] == 0.6 and block["iou_gt"] == 0.4
    assert extra == {"cls_loss": "brl"}


def test_sparse_methods_extreme_uses_the_release_tau_unless_overridden():
    assert sparse_methods("extreme", [])["co_mining"][0]["tau"] == 0.5
    assert sparse_methods("extreme", ["method.tau=0.7"])["co_mining"][0]["tau"] == 0.7
    m = sparse_methods("hard", ["method.tau=0.3", "train.max_steps=5"])
    assert m["co_mining"][0]["tau"] == 0.3 and m["supervised"] == ({"name": "supervised"}, {})


def test_demo_sparse_runs_both_methods_on_the_same_labels(tmp_path, capsys):
    over = [f"data.cache_dir={tmp_path / 'cache'}", "data.digits.n_train=6", "data.digits.n_val=3",
            "data.digits.image_size=64", "data.image_size=64", "data.batch_size=2", "model.pretrained=false",
            "model.fpn_channels=32", "train.ckpt_every=0", "method.tau=0.05", "method.ignore_below=0.01"]
    assert main(["demo", "--sparse", "hard", "--steps", "2", "--out", str(tmp_path / "runs"), *over]) == 0
    out = capsys.readouterr().out
    assert "'hard' labels" in out and "supervised" in out and "co_mining" in out and "brl" in out
    sup = json.loads((tmp_path / "runs" / "hard_supervised" / "config.json").read_text())
    cm = json.loads((tmp_path / "runs" / "hard_co_mining" / "config.json").read_text())
    assert sup["method"] == {"name": "supervised"}
    assert sup["model"]["extra"] == {} and cm["model"]["extra"] == {"cls_loss": "brl"}  # co-mining as its preset trains it
    assert cm["method"]["name"] == "co_mining" and cm["method"]["tau"] == 0.05  # the override reached co-mining only
    assert sup["data"]["train"] == cm["data"]["train"] and cm["data"]["train"].endswith("train_hard_seed0.json")
    assert cm["data"]["hidden"].endswith("train_hard_seed0.hidden.json")


def test_demo_prints_where_everything_it_wrote_is(tmp_path, capsys):
    over = [f"data.cache_dir={tmp_path / 'cache'}", "data.digits.n_train=6", "data.digits.n_val=3",
            "data.digits.image_size=64", "data.image_size=64", "data.batch_size=2", "model.pretrained=false",
            "model.fpn_channels=32", "train.ckpt_every=0"]
    assert main(["demo", "--steps", "2", "--out", str(tmp_path / "demo"), *over]) == 0
    out = capsys.readouterr().out
    assert "pycocotools AP" in out
    said = {line.split(":", 1)[0]: line.split(":", 1)[1].split()[0] for line in out.splitlines()
            if line.startswith(("model:", "renders:", "curves:"))}
    assert set(said) == {"model", "renders", "curves"}
    for path in map(Path, said.values()):
        assert path.is_relative_to(tmp_path / "demo") and path.stat().st_size > 1000
