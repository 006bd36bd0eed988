"""``minedet train METHOD --train ... --val ...``: your own COCO data with no YAML."""

from __future__ import annotations

import json

import pytest

from minedet.cli import main
from minedet.data.coco import load_coco
from minedet.run import own_data_config, propose_sizes

@pytest.fixture(scope="module")
def tiny_digits(tmp_path_factory):
    """Enough 64-px images that every class has a training box."""
    from minedet.data.digits import build_digits

    d = build_digits(tmp_path_factory.mktemp("own"), seed=0, n_train=40, n_val=6, image_size=64,
                     digits_per_image=(2, 3), digit_size=(14, 24))
    assert all(any(a["category_id"] == c["id"] for a in json.loads(d.train_json.read_text())["annotations"])
               for c in json.loads(d.train_json.read_text())["categories"])
    return d


# keeps the CPU run tiny; everything else comes from the own_data preset and the data
TINY = ["train.max_steps=2", "train.eval_every=0", "train.ckpt_every=0", "train.progress=false", "model.pretrained=false",
        "model.fpn_channels=16", "data.batch_size=2"]


def test_method_name_trains_on_the_given_files(tiny_digits, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "co_mining", "--train", str(tiny_digits.train_json), "--images", str(tiny_digits.image_root),
               "--val", str(tiny_digits.val_json), "--val-images", str(tiny_digits.image_root), "--out", str(out), *TINY])
    assert rc == 0
    err = capsys.readouterr().err
    assert "from the training boxes: data.image_size=128" in err and "model.anchor_scale=" in err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"]["name"] == "co_mining" and cfg["data"]["train"] == str(tiny_digits.train_json)
    assert json.loads((out / "eval.json").read_text())["method"] == "co_mining"


def test_proposals_follow_the_boxes_and_yield_to_overrides(tiny_digits):
    data = load_coco(tiny_digits.train_json)
    proposed = propose_sizes(data)
    assert proposed["data.image_size"] == 128  # 64 px images: the lower bound
    assert 1.0 <= proposed["model.anchor_scale"] <= 8.0
    cfg = own_data_config("supervised", train=str(tiny_digits.train_json), val=str(tiny_digits.val_json),
                          overrides=["data.image_size=96", "model.anchor_scale=3"], quiet=True)
    assert cfg.data.image_size == 96 and cfg.model.anchor_scale == 3.0


def test_each_method_writes_into_its_own_folder_unless_told(tiny_digits):
    def out(method, *overrides):
        return own_data_config(method, train=str(tiny_digits.train_json), val=str(tiny_digits.val_json),
                               overrides=list(overrides), quiet=True).train.out_dir

    assert out("co_mining") == "runs/co_mining" and out("supervised") == "runs/supervised"
    assert out("co_mining", "train.out_dir=elsewhere") == "elsewhere"


def test_co_mining_proposes_brls_loss_on_retinanet_and_yields_to_the_command_line(tiny_digits, capsys):
    def loss(method, *overrides):
        cfg = own_data_config(method, train=str(tiny_digits.train_json), val=str(tiny_digits.val_json),
                              overrides=list(overrides))
        return cfg.model.extra.get("cls_loss", "focal")

    assert loss("co_mining") == "brl"
    assert ("co_mining on retinanet trains best with method.min_val_precision=0.7, model.extra.cls_loss=brl"
            in capsys.readouterr().err)
    assert loss("co_mining", "model.extra.cls_loss=focal") == "focal"
    assert "trains best with method.min_val_precision=0.7 (" in capsys.readouterr().err  # the user's loss; the check stays
    assert loss("co_mining", "method.paper=true") == "focal"  # the paper's loss with the paper's rule
    cfg = own_data_config("co_mining", train=str(tiny_digits.train_json), val=str(tiny_digits.val_json),
                          overrides=["model.name=fcos"], quiet=True)
    assert "cls_loss" not in cfg.model.extra  # BRL is a RetinaNet loss
    assert cfg.method.get("min_val_precision") == 0.7  # the val check on any detector: own data always has a val set


def test_supervised_proposes_brls_loss_on_twice_the_batch_on_retinanet_with_steps_at_that_batch(tiny_digits, capsys):
    cfg = own_data_config("supervised", train=str(tiny_digits.train_json), val=str(tiny_digits.val_json))
    assert (cfg.model.extra.get("cls_loss"), cfg.data.batch_size) == ("brl", 16)
    err = capsys.readouterr().err
    assert "supervised on retinanet trains best with model.extra.cls_loss=brl, data.batch_size=16" in err
    assert "at batch 16: train.max_steps=600" in err  # 40 images: 100 passes at batch 16 is 250, the minimum 600
    plain = _own(tiny_digits, "model.extra.cls_loss=focal", "data.batch_size=8")
    assert (plain.model.extra.get("cls_loss"), plain.data.batch_size) == ("focal", 8)
    fcos = _own(tiny_digits, "model.name=fcos")
    assert "cls_loss" not in fcos.model.extra and fcos.data.batch_size == 8  # measured on RetinaNet only


def test_co_mining_on_own_data_checks_its_mining_on_the_val_set_unless_told_otherwise(tiny_digits):
    def check(*overrides):
        return own_data_config("co_mining", train=str(tiny_digits.train_json), val=str(tiny_digits.val_json),
                               overrides=list(overrides), quiet=True).method.get("min_val_precision")

    assert check() == 0.7
    assert check("method.min_val_precision=0.5") == 0.5
    assert check("method.min_val_precision=null") is None  # mine whatever the val set says
    assert check("method.paper=true") is None  # the release's rule


def test_data_that_cannot_support_the_run_is_one_line(tiny_digits, tmp_path, capsys):
    assert main(["train", "co_mining", "--train", str(tiny_digits.train_json)]) == 2
    assert "needs --val" in capsys.readouterr().err
    raw = json.loads(tiny_digits.train_json.read_text())
    raw["categories"].append({"id": 999, "name": "unicorn"})
    bad = tmp_path / "train.json"
    bad.write_text(json.dumps(raw))
    assert main(["train", "co_mining", "--train", str(bad), "--val", str(tiny_digits.val_json)]) == 2
    err = capsys.readouterr().err
    assert "'unicorn' has no box" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "co_mining", "--val", str(tiny_digits.val_json)]) == 2
    assert "--train" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["mean_teacher"])
def test_semi_supervised_methods_ask_for_unlabelled_images(method, tiny_digits, tmp_path, capsys):
    rc = main(["train", method, "--train", str(tiny_digits.train_json), "--val", str(tiny_digits.val_json),
               "--out", str(tmp_path / "x"), *TINY])
    assert rc == 2 and "data.unlabelled" in capsys.readouterr().err


def _own(tiny_digits, *overrides, quiet=True):
    return own_data_config("supervised", train=str(tiny_digits.train_json), val=str(tiny_digits.val_json),
                           overrides=list(overrides), quiet=quiet)


def test_steps_are_proposed_from_the_number_of_images_and_an_explicit_count_wins(tiny_digits, capsys):
    cfg = _own(tiny_digits, "data.batch_size=4", quiet=False)  # the command line's batch counts: 100 passes = 1000 steps
    assert (cfg.train.max_steps, cfg.train.warmup_steps) == (1000, 67)  # the preset's warm-up, scaled with the steps
    assert "100 passes over the 40 training images at batch 4: train.max_steps=1000, train.warmup_steps=67" \
        in capsys.readouterr().err
    assert _own(tiny_digits, "data.batch_size=2").train.max_steps == 2000
    small = _own(tiny_digits, "data.batch_size=8", quiet=False)  # 100 passes = 500 steps: raised to the minimum
    assert small.train.max_steps == 600
    assert "120 passes over the 40 training images at batch 8: train.max_steps=600" in capsys.readouterr().err
    explicit = _own(tiny_digits, "train.max_steps=70", quiet=False)
    assert (explicit.train.max_steps, explicit.train.warmup_steps) == (70, 200)  # the preset's; the run clamps it
    assert "passes over" not in capsys.readouterr().err


def test_image_size_is_rounded_up_to_a_multiple_of_32():
    from minedet.data.coco import validate_coco

    raw = {"images": [{"id": i, "file_name": f"{i}.png", "width": 600, "height": 400} for i in (1, 2, 3)],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600,
                            "iscrowd": 0}],
           "categories": [{"id": 1, "name": "tree"}]}
    assert propose_sizes(validate_coco(raw, file="x.json"))["data.image_size"] == 416  # 400 px: not shrunk to 384


def test_crowd_slivers_do_not_shrink_the_proposed_anchors():
    """A tiler leaves thin crowd slivers of cut boxes at tile edges: ignored regions, not objects to fit anchors to
    (on the tree-crown tiles they halved the proposal and the detector barely trained)."""
    from minedet.data.coco import validate_coco

    boxes = [{"id": i, "image_id": 1, "category_id": 1, "bbox": [20 * i, 10, 32, 32], "area": 1024, "iscrowd": 0}
             for i in range(1, 11)]
    slivers = [{"id": 100 + i, "image_id": 1, "category_id": 1, "bbox": [0, 40 * i, 3, 30], "area": 90, "iscrowd": 1}
               for i in range(1, 6)]
    raw = {"images": [{"id": 1, "file_name": "1.png", "width": 400, "height": 400}], "annotations": boxes + slivers,
           "categories": [{"id": 1, "name": "tree"}]}
    proposed = propose_sizes(validate_coco(raw, file="x.json"))
    assert proposed["model.anchor_scale"] == 4.0  # 32 px boxes at 416 / 400: 33 px, 4 x stride 8


def _train(tiny_digits, *extra):
    return main(["train", "supervised", "--train", str(tiny_digits.train_json), "--images", str(tiny_digits.image_root),
                 "--val", str(tiny_digits.val_json), "--val-images", str(tiny_digits.image_root), *TINY, *extra])


def test_a_second_round_never_replaces_the_first(tiny_digits, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _train(tiny_digits) == 0
    first = tmp_path / "runs" / "supervised" / "model.pt"
    err = capsys.readouterr().err
    assert "train.warmup_steps=200 >= train.max_steps=2" in err and "warm-up cut to 0 steps" in err
    before = first.read_bytes()
    assert _train(tiny_digits, "model.init=runs/supervised/model.pt") == 0  # the round two, no --out
    out = capsys.readouterr()
    assert "runs/supervised holds the model.pt of an earlier run; this run writes to runs/supervised-2" in out.err
    assert "runs/supervised-2/model.pt" in out.out
    assert first.read_bytes() == before and (tmp_path / "runs" / "supervised-2" / "model.pt").is_file()
    assert _train(tiny_digits, "--out", "runs/supervised") == 0  # an explicit --out is kept too
    assert (tmp_path / "runs" / "supervised-3" / "model.pt").is_file() and first.read_bytes() == before
    capsys.readouterr()
    last = "runs/supervised/checkpoints/last.pt"  # --resume continues in place, but never over its own init
    assert _train(tiny_digits, "--out", "runs/supervised", "--resume", last, "model.init=runs/supervised/model.pt") == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "model.init is this run's own output" in errors[0] and "Traceback" not in err
    assert first.read_bytes() == before


def test_a_run_never_writes_into_a_folder_it_reads(tiny_digits, capsys):
    """`--out` naming the image folder would put a model and logs among the user's images: one line, nothing written."""
    before = sorted(p.name for p in tiny_digits.image_root.iterdir())
    assert _train(tiny_digits, "--out", str(tiny_digits.image_root)) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "input folder" in errors[0] and "Traceback" not in err, err
    assert sorted(p.name for p in tiny_digits.image_root.iterdir()) == before


def test_mixed_on_own_data_takes_an_unflagged_file_as_sparse_on_brls_loss_with_a_scaled_burn_in(tiny_digits, capsys):
    def mixed(*overrides, quiet=True):
        return own_data_config("mixed", train=str(tiny_digits.train_json), val=str(tiny_digits.val_json),
                               overrides=list(overrides), quiet=quiet)

    cfg = mixed(quiet=False)
    assert (cfg.data.unflagged, cfg.model.extra.get("cls_loss"), cfg.data.batch_size) == ("sparse", "brl", 8)
    assert (cfg.train.max_steps, cfg.method["burn_in"], cfg.method["ema_decay"]) == (600, 100, 0.99)
    err = capsys.readouterr().err
    assert "mixed on retinanet trains best with data.unflagged=sparse, method.ema_decay=0.99, model.extra.cls_loss=brl" \
        in err and "the teacher starts after a sixth of the 600 steps: method.burn_in=100" in err
    assert mixed("train.max_steps=1200").method["burn_in"] == 200  # a sixth of the steps the command line sets
    assert mixed("method.burn_in=7").method["burn_in"] == 7
    assert mixed("data.unflagged=complete").data.unflagged == "complete"
    assert "cls_loss" not in mixed("model.name=fcos").model.extra  # BRL is a RetinaNet loss
    # every teacher method leaves burn-in within the run; a method without a teacher is given none
    teacher = own_data_config("mean_teacher", train=str(tiny_digits.train_json), val=str(tiny_digits.val_json),
                              overrides=["train.max_steps=900"], quiet=True)
    assert teacher.method["burn_in"] == 150
    assert "burn_in" not in _own(tiny_digits).method
