"""Typed per-detector options (``model.extra``): every option reaches the adapter, every preset
builds, and a wrong key or value is one line (exit status 2 from the CLI)."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import torch

import minedet
from minedet.cli import main
from minedet.config import load_config
from minedet.data.coco import validate_coco
from minedet.errors import MinedetError
from minedet.models.build import (
    FasterRCNNOptions,
    FCOSOptions,
    RetinaNetOptions,
    build_detector,
    detector_options,
)
from minedet.run import build_spec
from tests.helpers import random_targets, tiny_detector

PRESETS = sorted((Path(minedet.__file__).parent / "configs").glob("*.yaml"))


def _images(n: int = 3, size: int = 64) -> list[torch.Tensor]:
    return [torch.rand(3, size, size, generator=torch.Generator().manual_seed(i)) for i in range(n)]


# ------------------------------------------------------------------------------------------ presets
@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_builds(preset):
    cfg = load_config(preset, [])
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}], "annotations": [],
            "categories": [{"id": i, "name": str(i)} for i in range(3)]}
    spec = build_spec(cfg, validate_coco(coco, file="tiny.json"))
    det = build_detector(spec, pretrained=False)
    assert det.kind == spec.name
    assert isinstance(detector_options(spec.name, spec.extra), (RetinaNetOptions, FCOSOptions, FasterRCNNOptions))


def test_faster_rcnn_defaults_are_torchvision_defaults():
    """The rpn_/box_ options default to torchvision's values, so a spec without them builds the
    same model as before they were typed."""
    from torchvision.models.detection import FasterRCNN

    params = inspect.signature(FasterRCNN.__init__).parameters
    for f in dataclasses.fields(FasterRCNNOptions):
        if f.name.startswith(("rpn_", "box_")):
            assert params[f.name].default == f.default, f.name


# ------------------------------------------------------------------------------------------ options reach the adapter
def test_loss_norm_batch_changes_the_loss_normalisation():
    images, targets = _images(), random_targets(3, 64, empty=(1,), seed=3)
    img = tiny_detector("retinanet", seed=0).train()
    bat = tiny_detector("retinanet", seed=0, extra={"loss_norm": "batch"}).train()
    li = img.loss(img.forward_heads(images), targets)
    lb = bat.loss(bat.forward_heads(images), targets)
    assert not torch.allclose(li["classification"], lb["classification"])


def test_cls_loss_brl_and_its_options_change_the_classification_loss():
    images, targets = _images(), random_targets(3, 64, empty=(1,), seed=3)
    losses = {}
    for name, extra in {"focal": {}, "brl": {"cls_loss": "brl"},
                        "brl_t0": {"cls_loss": "brl", "brl_t": 0.0, "brl_weight": 0.5, "brl_beta": 2,
                                   "brl_gamma": 1.0, "brl_iou": 0.05}}.items():
        det = tiny_detector("retinanet", seed=0, extra=extra).train()
        losses[name] = det.loss(det.forward_heads(images), targets)["classification"]
    assert not torch.allclose(losses["focal"], losses["brl"])
    assert not torch.allclose(losses["brl"], losses["brl_t0"])
    det = tiny_detector("retinanet", extra={"cls_loss": "brl", "brl_t": 0.3, "brl_beta": 2, "brl_weight": 0.5,
                                            "brl_gamma": 1.0, "brl_iou": 0.05})
    assert (det.t, det.beta, det.gamma, det.weight, det.confusion_iou) == (0.3, 2.0, 1.0, 0.5, 0.05)


def test_threshold_on_class_prob_changes_decode():
    """The class probability is below sqrt(p * centerness) wherever p < centerness, so gating on it
    at the same threshold keeps fewer detections (at initialisation p is about the 0.01 prior)."""
    images = _images(2)
    dets = {}
    for rule in ("score", "class_prob"):
        det = tiny_detector("fcos", seed=0, score_thresh=0.02, extra={"threshold_on": rule}).eval()
        with torch.no_grad():
            dets[rule] = det.decode(det.forward_heads(images))
    n_score = sum(len(d) for d in dets["score"])
    n_prob = sum(len(d) for d in dets["class_prob"])
    assert n_score > 0 and n_prob < n_score


def test_roi_cls_loss_focal_changes_the_roi_classification_loss():
    images, targets = _images(2), random_targets(2, 64, seed=1)
    losses = {}
    for rule in ("ce", "focal"):
        det = tiny_detector("faster_rcnn", seed=0, extra={"roi_cls_loss": rule}).train()
        torch.manual_seed(0)  # the RoI sampler draws from the global RNG
        losses[rule] = det.loss(det.forward_heads(images), targets)
    assert not torch.allclose(losses["ce"]["loss_classifier"], losses["focal"]["loss_classifier"])
    assert torch.equal(losses["ce"]["loss_objectness"], losses["focal"]["loss_objectness"])


def test_rpn_and_box_options_reach_torchvision():
    det = tiny_detector("faster_rcnn", extra={"rpn_post_nms_top_n_test": 7, "box_batch_size_per_image": 16}).eval()
    with torch.no_grad():
        out = det.forward_heads(_images(2))
    assert all(len(p) <= 7 for p in out.proposals)
    assert det.model.roi_heads.fg_bg_sampler.batch_size_per_image == 16


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("name, extra, message", [
    ("retinanet", {"loss_nrom": "batch"}, "unknown key model.extra.loss_nrom; did you mean 'loss_norm'?"),
    ("retinanet", {"loss_norm": "anchor"}, "model.extra.loss_norm must be image or batch, got 'anchor'"),
    ("retinanet", {"cls_loss": "mirror"}, "model.extra.cls_loss must be focal or brl, got 'mirror'"),
    ("retinanet", {"cls_loss": "brl", "brl_t": 1.5}, "model.extra.brl_t must be in [0.0, 1.0], got 1.5"),
    ("retinanet", {"cls_loss": "brl", "brl_beta": "1"}, "model.extra.brl_beta must be a number, got '1'"),
    ("retinanet", {"brl_t": 0.3}, "model.extra.brl_t applies only with model.extra.cls_loss=brl"),
    ("retinanet", {"cls_loss": "brl", "loss_norm": "batch"}, "model.extra.loss_norm must be image with"),
    ("retinanet", {"roi_cls_loss": "focal"}, "unknown key model.extra.roi_cls_loss"),
    ("retinanet", [1, 2], "section 'model.extra' must be a mapping"),
    ("fcos", {"threshold_on": "prob"}, "model.extra.threshold_on must be score or class_prob, got 'prob'"),
    ("fcos", {"threshold": "score"}, "did you mean 'threshold_on'?"),
    ("faster_rcnn", {"roi_cls_loss": "bce"}, "model.extra.roi_cls_loss must be ce or focal, got 'bce'"),
    ("faster_rcnn", {"rpn_batch_size_per_image": 1.5}, "model.extra.rpn_batch_size_per_image must be an integer"),
    ("faster_rcnn", {"rpn_post_nms_top_n_test": 0}, "model.extra.rpn_post_nms_top_n_test must be an integer >= 1"),
    ("faster_rcnn", {"box_bg_iou_thresh": 0.6}, "model.extra.box_bg_iou_thresh (0.6) must not exceed"),
    ("faster_rcnn", {"rpn_nms_thresh": 2}, "model.extra.rpn_nms_thresh must be in [0.0, 1.0], got 2.0"),
    ("faster_rcnn", {"box_score_thresh": 0.1}, "model.extra.box_score_thresh is not an option: set model.score_thresh"),
])
def test_bad_options_are_one_line_errors(name, extra, message):
    with pytest.raises(MinedetError) as e:
        tiny_detector(name, extra=extra)
    text = str(e.value)
    assert message in text and "\n" not in text


@pytest.mark.parametrize("override, message", [
    ("model.extra.loss_nrom=batch", "unknown key model.extra.loss_nrom; did you mean 'loss_norm'?"),
    ("model.extra.loss_norm=anchor", "model.extra.loss_norm must be image or batch, got 'anchor'"),
])
def test_cli_bad_option_is_one_line_and_status_2(tiny_digits, tmp_path, capsys, override, message):
    argv = ["train", "digits_retinanet", f"data.train={tiny_digits.train_json}",
            f"data.train_images={tiny_digits.image_root}", f"data.val={tiny_digits.val_json}",
            f"data.val_images={tiny_digits.image_root}", "data.image_size=64", "model.pretrained=false",
            f"train.out_dir={tmp_path / 'run'}", "train.progress=false", override]
    assert main(argv) == 2
    cap = capsys.readouterr()
    lines = [ln for ln in cap.err.splitlines() if ln.startswith("minedet: error:")]
    assert len(lines) == 1 and message in lines[0]
    assert "Traceback" not in cap.err + cap.out
