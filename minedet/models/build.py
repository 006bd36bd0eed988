"""Build a detector adapter from plain values: a dict of builders, one per detector name.

``build_detector("retinanet", num_classes=10, backbone="effnet_lite0", image_size=128)`` returns a
:class:`~minedet.models.detector.DetectorAdapter` over torchvision's ``RetinaNet``. The anchor
sizes follow the backbone's strides: ``anchor_scale * stride`` (torchvision's default is 4, i.e.
32 px on stride 8); small-object data such as the digits scenes use 2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import MultiScaleRoIAlign

from minedet.errors import MinedetError
from minedet.models.detector import DetectorAdapter, FasterRCNNAdapter, FCOSAdapter, RetinaNetAdapter


@dataclass
class DetectorSpec:
    """Everything needed to rebuild a detector (stored in every checkpoint).

    Attributes:
        name: "retinanet" | "fcos" | "faster_rcnn".
        num_classes: K foreground classes.
        class_names: names of the K classes (index = label).
        backbone: a name in :data:`minedet.models.backbones.BACKBONES`.
        image_size: images are resized so the short side is ``image_size`` (long side at most
            ``max_size``, default ``image_size`` * 1333/800) inside torchvision's transform.
        levels: FPN levels ("p3p7", "p3p5", "p2p6", "p2p5"); default per detector.
        fpn_channels: FPN width (and head width).
        anchor_scale: anchor side = anchor_scale * stride (RetinaNet and Faster R-CNN).
        score_thresh, nms_thresh, detections_per_img, topk_candidates: inference settings.
        extra: detector-specific options (e.g. ``roi_cls_loss`` for Faster R-CNN,
            ``threshold_on`` for FCOS).
    """

    name: str
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    backbone: str = "effnet_lite0"
    image_size: int = 800
    max_size: int | None = None
    levels: str | None = None
    fpn_channels: int = 256
    anchor_scale: float = 4.0
    score_thresh: float = 0.05
    nms_thresh: float | None = None
    detections_per_img: int = 100
    topk_candidates: int = 1000
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def _strides(backbone: nn.Module) -> tuple[list[str], list[int]]:
    with torch.no_grad():
        was = backbone.training
        backbone.eval()
        feats = backbone(torch.zeros(1, 3, 256, 256))
        backbone.train(was)
    return list(feats.keys()), [256 // f.shape[-1] for f in feats.values()]


def _backbone(spec: DetectorSpec, default_levels: str, pretrained: bool, weights_path: str | None) -> nn.Module:
    from minedet.models.backbones import build_backbone

    return build_backbone(
        spec.backbone,
        pretrained=pretrained,
        weights_path=weights_path,
        levels=spec.levels or default_levels,
        fpn_channels=spec.fpn_channels,
    )


def _norm(backbone: nn.Module) -> dict:
    return {
        "image_mean": list(getattr(backbone, "image_mean", [0.485, 0.456, 0.406])),
        "image_std": list(getattr(backbone, "image_std", [0.229, 0.224, 0.225])),
    }


def _sizes(spec: DetectorSpec) -> dict:
    max_size = spec.max_size or max(spec.image_size, round(spec.image_size * 1333 / 800))
    return {"min_size": spec.image_size, "max_size": max_size}


def _anchors(strides: list[int], scale: float) -> AnchorGenerator:
    sizes = tuple(tuple(int(round(scale * s * 2 ** (i / 3))) for i in range(3)) for s in strides)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))


def build_retinanet(spec: DetectorSpec, backbone: nn.Module) -> DetectorAdapter:
    _, strides = _strides(backbone)
    anchors = _anchors(strides, spec.anchor_scale)
    head = RetinaNetHead(backbone.out_channels, anchors.num_anchors_per_location()[0], spec.num_classes)
    model = RetinaNet(
        backbone,
        spec.num_classes,
        anchor_generator=anchors,
        head=head,
        score_thresh=spec.score_thresh,
        nms_thresh=0.5 if spec.nms_thresh is None else spec.nms_thresh,
        detections_per_img=spec.detections_per_img,
        topk_candidates=spec.topk_candidates,
        **_sizes(spec),
        **_norm(backbone),
    )
    cls_loss = spec.extra.get("cls_loss", "focal")
    if cls_loss == "brl":
        from minedet.models.brl import BRLRetinaNetAdapter

        return BRLRetinaNetAdapter.from_extra(model, spec.num_classes, spec.extra)
    if cls_loss != "focal":
        raise MinedetError(f"unknown RetinaNet cls_loss {cls_loss!r}; known: focal, brl")
    return RetinaNetAdapter(model, spec.num_classes, loss_norm=spec.extra.get("loss_norm", "image"))


def build_fcos(spec: DetectorSpec, backbone: nn.Module) -> DetectorAdapter:
    _, strides = _strides(backbone)
    anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
    model = FCOS(
        backbone,
        spec.num_classes,
        anchor_generator=anchors,
        score_thresh=spec.score_thresh,
        nms_thresh=0.6 if spec.nms_thresh is None else spec.nms_thresh,
        detections_per_img=spec.detections_per_img,
        topk_candidates=spec.topk_candidates,
        **_sizes(spec),
        **_norm(backbone),
    )
    return FCOSAdapter(model, spec.num_classes, threshold_on=spec.extra.get("threshold_on", "score"))


def build_faster_rcnn(spec: DetectorSpec, backbone: nn.Module) -> DetectorAdapter:
    names, strides = _strides(backbone)
    anchors = AnchorGenerator(
        tuple((int(round(spec.anchor_scale * s)),) for s in strides), ((0.5, 1.0, 2.0),) * len(strides)
    )
    pooled = [n for n in names if n not in ("pool", "p6", "p7")]
    model = FasterRCNN(
        backbone,
        spec.num_classes + 1,
        rpn_anchor_generator=anchors,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=pooled, output_size=7, sampling_ratio=2),
        box_score_thresh=spec.score_thresh,
        box_nms_thresh=0.5 if spec.nms_thresh is None else spec.nms_thresh,
        box_detections_per_img=spec.detections_per_img,
        **{k: v for k, v in spec.extra.items() if k.startswith(("rpn_", "box_"))},
        **_sizes(spec),
        **_norm(backbone),
    )
    return FasterRCNNAdapter(model, spec.num_classes, roi_cls_loss=spec.extra.get("roi_cls_loss", "ce"))


DETECTORS: dict[str, tuple[Callable[[DetectorSpec, nn.Module], DetectorAdapter], str]] = {
    "retinanet": (build_retinanet, "p3p7"),
    "fcos": (build_fcos, "p3p7"),
    "faster_rcnn": (build_faster_rcnn, "p2p6"),
}


def build_detector(
    spec: DetectorSpec, *, pretrained: bool = True, weights_path: str | None = None, backbone: nn.Module | None = None
) -> DetectorAdapter:
    """Build the adapter for ``spec``. ``backbone`` (a module with ``out_channels``) overrides
    ``spec.backbone``; ``pretrained`` loads the backbone's ImageNet weights (offline)."""
    if spec.name not in DETECTORS:
        raise MinedetError(f"unknown detector {spec.name!r}; known: {', '.join(DETECTORS)}")
    if spec.num_classes < 1:
        raise MinedetError(f"num_classes must be >= 1, got {spec.num_classes}")
    builder, levels = DETECTORS[spec.name]
    if backbone is None:
        backbone = _backbone(spec, levels, pretrained, weights_path)
    adapter = builder(spec, backbone)
    adapter.spec = spec
    return adapter
