"""One source for a detector's settings: a config's ``model`` section and the spec a checkpoint stores share their
defaults, a run's spec is made from its config, and a saved spec keeps meaning what it meant when it was written."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from minedet.config import ModelConfig, build_config
from minedet.data.coco import CocoData, validate_coco
from minedet.engine.checkpoint import export_model, load_model
from minedet.models import backbones
from minedet.models.build import build_detector
from minedet.models.spec import DetectorSettings, DetectorSpec
from minedet.run import build_spec
from tests.helpers import TinyFPN

SETTINGS = [f.name for f in dataclasses.fields(DetectorSettings)]


def _data(num_classes: int = 3) -> CocoData:
    return validate_coco({"images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}], "annotations": [],
                     "categories": [{"id": i + 1, "name": f"c{i}"} for i in range(num_classes)]}, file="test")


def test_a_config_without_model_settings_builds_the_spec_of_the_spec_defaults():
    spec = build_spec(build_config({}), _data())
    by_hand = DetectorSpec(name="retinanet", num_classes=3, class_names=["c0", "c1", "c2"], image_size=128)
    assert spec == by_hand
    for key in SETTINGS:
        assert getattr(ModelConfig(), key) == getattr(spec, key), key


def test_every_setting_of_the_model_section_reaches_the_spec():
    chosen = {"backbone": "resnet50", "levels": "p3p5", "fpn_channels": 32, "anchor_scale": 2.0, "score_thresh": 0.3,
              "nms_thresh": 0.4, "detections_per_img": 7, "topk_candidates": 50, "extra": {"loss_norm": "batch"}}
    assert set(chosen) == set(SETTINGS)
    cfg = build_config({"model": {"name": "fcos", **chosen}, "data": {"image_size": 96}})
    spec = build_spec(cfg, _data(2))
    assert {k: getattr(spec, k) for k in SETTINGS} == chosen
    assert (spec.name, spec.num_classes, spec.class_names, spec.image_size, spec.max_size) == ("fcos", 2, ["c0", "c1"], 96, None)
    spec.extra["loss_norm"] = "image"  # the spec's options are its own
    assert cfg.model.extra == {"loss_norm": "batch"}


def test_a_saved_spec_reads_back_as_it_was_saved():
    spec = DetectorSpec(name="fcos", num_classes=2, class_names=["a", "b"], fpn_channels=16, extra={"threshold_on": "score"})
    assert DetectorSpec.from_saved(spec.as_dict()) == spec
    with pytest.raises(TypeError):
        DetectorSpec.from_saved({**spec.as_dict(), "colour": "red"})


@pytest.fixture
def tiny_backbone(monkeypatch):
    """The tests' TinyFPN under a backbone name, so that ``load_model`` rebuilds it."""
    monkeypatch.setitem(backbones.BACKBONES, "test_tiny_fpn", lambda *, fpn_channels, **_: TinyFPN(fpn_channels))
    return "test_tiny_fpn"


def test_a_saved_spec_without_fpn_channels_means_the_width_it_was_written_with(tiny_backbone, tmp_path):
    """Specs were first written when a spec's FPN width defaulted to 256: one without the key is a 256-wide model."""
    spec = DetectorSpec(name="retinanet", num_classes=2, backbone=tiny_backbone, image_size=64, fpn_channels=256)
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    export_model(path, build_detector(spec, pretrained=False))
    obj = torch.load(path, weights_only=True)
    del obj["spec"]["fpn_channels"]
    torch.save(obj, path)
    det, _ = load_model(path)
    assert det.spec.fpn_channels == 256
    assert DetectorSpec.from_saved({"name": "fcos", "num_classes": 1}).fpn_channels == 256
