"""Build a detector adapter from plain values: a dict of builders, one per detector name.

``build_detector("retinanet", num_classes=10, backbone="effnet_lite0", image_size=128)`` returns a
:class:`~minedet.models.detector.DetectorAdapter` over torchvision's ``RetinaNet``. The anchor
sizes follow the backbone's strides: ``anchor_scale * stride`` (torchvision's default is 4, i.e.
32 px on stride 8); small-object data such as the digits scenes use 2.

Detector-specific options (``model.extra`` in a config, :attr:`DetectorSpec.extra`) are typed per
detector: :class:`RetinaNetOptions`, :class:`FCOSOptions`, :class:`FasterRCNNOptions`. They are built
and checked once, in :func:`build_detector` (:func:`detector_options`): an unknown key or a bad value
is one :class:`~minedet.errors.MinedetError` line naming ``model.extra.<key>``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Union

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import MultiScaleRoIAlign

from minedet.errors import MinedetError
from minedet.models.detector import DetectorAdapter, FasterRCNNAdapter, FCOSAdapter, RetinaNetAdapter
from minedet.models.spec import DetectorSpec
from minedet.options import from_dict


def _one_of(key: str, value: Any, choices: tuple[str, ...]) -> None:
    """Check ``model.extra.<key>`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise MinedetError(f"model.extra.{key} must be {' or '.join(choices)}, got {value!r}")


def _in_range(key: str, value: Any, lo: float, hi: float) -> None:
    """Check ``model.extra.<key>`` is a number in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MinedetError(f"model.extra.{key} must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise MinedetError(f"model.extra.{key} must be in [{lo}, {hi}], got {value}")


def _positive_int(key: str, value: Any) -> None:
    """Check ``model.extra.<key>`` is an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MinedetError(f"model.extra.{key} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True)
class RetinaNetOptions:
    """RetinaNet's ``model.extra`` options.

    Attributes:
        loss_norm: ``"image"`` (torchvision: each image's loss over its own foreground anchors, then
            the image mean) or ``"batch"`` (detectron2: the batch's sums over the batch's
            foreground anchors); see :class:`~minedet.models.detector.RetinaNetAdapter`.
        cls_loss: ``"focal"`` or ``"brl"`` (Background Recalibration Loss,
            :class:`~minedet.models.brl.BRLRetinaNetAdapter`, which normalises per image: it
            takes ``loss_norm="image"`` only).
        brl_t, brl_beta, brl_gamma, brl_weight, brl_iou: BRL's options, ``cls_loss="brl"`` only
            (defaults and sources in :mod:`minedet.models.brl`): t in [0, 1], iou in [0, 0.4],
            beta, gamma, weight >= 0.
        brl_pseudo: what a mined box (``pseudo`` flag) is to BRL, ``cls_loss="brl"`` only:
            ``"annotation"`` (as a label: its positives count in the image's normaliser and anchors near it
            are ordinary negatives), ``"no_norm"`` (as a label, but its positives leave the normaliser alone) or
            ``"positive"`` (it only adds the positives it matches; see :mod:`minedet.models.brl`).
    """

    loss_norm: str = "image"
    cls_loss: str = "focal"
    brl_t: float = 0.5
    brl_beta: float = 1.0
    brl_gamma: float = 2.0
    brl_weight: float = 0.1
    brl_iou: float = 0.1
    brl_pseudo: str = "annotation"

    def __post_init__(self) -> None:
        _one_of("loss_norm", self.loss_norm, ("image", "batch"))
        _one_of("cls_loss", self.cls_loss, ("focal", "brl"))
        _one_of("brl_pseudo", self.brl_pseudo, ("annotation", "no_norm", "positive"))
        limits = {"brl_t": (0.0, 1.0), "brl_iou": (0.0, 0.4)}
        defaults = RetinaNetOptions.__dataclass_fields__
        for key in ("brl_t", "brl_beta", "brl_gamma", "brl_weight", "brl_iou", "brl_pseudo"):
            if key != "brl_pseudo":
                _in_range(key, getattr(self, key), *limits.get(key, (0.0, math.inf)))
            if self.cls_loss != "brl" and getattr(self, key) != defaults[key].default:
                raise MinedetError(f"model.extra.{key} applies only with model.extra.cls_loss=brl")
        if self.cls_loss == "brl" and self.loss_norm != "image":
            raise MinedetError("model.extra.loss_norm must be image with model.extra.cls_loss=brl "
                               "(BRL normalises each image by its own positives)")


@dataclass(frozen=True)
class FCOSOptions:
    """FCOS's ``model.extra`` options.

    Attributes:
        threshold_on: what ``score_thresh`` gates: ``"score"`` (torchvision: sqrt(class probability
            x centerness)) or ``"class_prob"`` (the Co-mining release: the class probability before
            centerness rescoring); see :class:`~minedet.models.detector.FCOSAdapter`.
    """

    threshold_on: str = "score"

    def __post_init__(self) -> None:
        _one_of("threshold_on", self.threshold_on, ("score", "class_prob"))


_COUNT_KEYS = frozenset({"rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train",
                         "rpn_post_nms_top_n_test", "rpn_batch_size_per_image", "box_batch_size_per_image"})


@dataclass(frozen=True)
class FasterRCNNOptions:
    """Faster R-CNN's ``model.extra`` options.

    Attributes:
        roi_cls_loss: ``"ce"`` (torchvision) or ``"focal"`` (Unbiased Teacher's focal RoI
            classifier); see :class:`~minedet.models.detector.FasterRCNNAdapter`.
        rpn_*, box_*: torchvision ``FasterRCNN`` keyword arguments of the same name, with its
            defaults (proposal counts, NMS, matcher IoUs, sampler sizes). The box score threshold,
            NMS threshold and detections per image are ``model.score_thresh``, ``model.nms_thresh``
            and ``model.detections_per_img``. Counts are integers >= 1, the others numbers in
            [0, 1]; a background IoU may not exceed its foreground IoU.
    """

    roi_cls_loss: str = "ce"
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_score_thresh: float = 0.0
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25

    def __post_init__(self) -> None:
        _one_of("roi_cls_loss", self.roi_cls_loss, ("ce", "focal"))
        for key, value in self.torchvision_kwargs().items():
            if key in _COUNT_KEYS:
                _positive_int(key, value)
            else:
                _in_range(key, value, 0.0, 1.0)
        for stage in ("rpn", "box"):
            fg, bg = getattr(self, f"{stage}_fg_iou_thresh"), getattr(self, f"{stage}_bg_iou_thresh")
            if bg > fg:
                raise MinedetError(f"model.extra.{stage}_bg_iou_thresh ({bg}) must not exceed "
                                   f"model.extra.{stage}_fg_iou_thresh ({fg})")

    def torchvision_kwargs(self) -> dict[str, Any]:
        """The ``rpn_*`` / ``box_*`` options as keyword arguments of torchvision's ``FasterRCNN``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.startswith(("rpn_", "box_"))}


DetectorOptions = Union[RetinaNetOptions, FCOSOptions, FasterRCNNOptions]

# keys of torchvision's FasterRCNN that the spec sets: named in the error instead of "unknown key"
_SPEC_KEYS = {
    "box_score_thresh": "model.score_thresh",
    "box_nms_thresh": "model.nms_thresh",
    "box_detections_per_img": "model.detections_per_img",
}


def detector_options(name: str, extra: Mapping[str, Any] | None) -> DetectorOptions:
    """The typed options of detector ``name`` from a ``model.extra`` mapping (missing keys take
    the defaults). Raises MinedetError (one line naming ``model.extra.<key>``) for an unknown key
    or a bad value."""
    if name not in DETECTORS:
        raise MinedetError(f"unknown detector {name!r}; known: {', '.join(DETECTORS)}")
    for key, owner in _SPEC_KEYS.items():
        if isinstance(extra, Mapping) and key in extra:
            raise MinedetError(f"model.extra.{key} is not an option: set {owner}")
    return from_dict(DETECTORS[name][2], dict(extra) if isinstance(extra, Mapping) else extra, where="model.extra")


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


def build_retinanet(spec: DetectorSpec, backbone: nn.Module, options: RetinaNetOptions) -> DetectorAdapter:
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
    o = options
    if o.cls_loss == "brl":
        from minedet.models.brl import BRLRetinaNetAdapter

        return BRLRetinaNetAdapter(model, spec.num_classes, t=o.brl_t, beta=o.brl_beta, gamma=o.brl_gamma,
                                   weight=o.brl_weight, confusion_iou=o.brl_iou, pseudo=o.brl_pseudo)
    return RetinaNetAdapter(model, spec.num_classes, loss_norm=o.loss_norm)


def build_fcos(spec: DetectorSpec, backbone: nn.Module, options: FCOSOptions) -> DetectorAdapter:
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
    return FCOSAdapter(model, spec.num_classes, threshold_on=options.threshold_on)


def build_faster_rcnn(spec: DetectorSpec, backbone: nn.Module, options: FasterRCNNOptions) -> DetectorAdapter:
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
        **options.torchvision_kwargs(),
        **_sizes(spec),
        **_norm(backbone),
    )
    return FasterRCNNAdapter(model, spec.num_classes, roi_cls_loss=options.roi_cls_loss)


# name -> (builder, default FPN levels, options class)
DETECTORS: dict[str, tuple[Callable[[DetectorSpec, nn.Module, Any], DetectorAdapter], str, type]] = {
    "retinanet": (build_retinanet, "p3p7", RetinaNetOptions),
    "fcos": (build_fcos, "p3p7", FCOSOptions),
    "faster_rcnn": (build_faster_rcnn, "p2p6", FasterRCNNOptions),
}


def build_detector(
    spec: DetectorSpec, *, pretrained: bool = True, weights_path: str | None = None, backbone: nn.Module | None = None
) -> DetectorAdapter:
    """Build the adapter for ``spec``. ``backbone`` (a module with ``out_channels``) overrides
    ``spec.backbone``; ``pretrained`` loads the backbone's ImageNet weights (offline).
    ``spec.extra`` becomes the detector's options class (:func:`detector_options`) before anything
    is built."""
    if spec.name not in DETECTORS:
        raise MinedetError(f"unknown detector {spec.name!r}; known: {', '.join(DETECTORS)}")
    if spec.num_classes < 1:
        raise MinedetError(f"num_classes must be >= 1, got {spec.num_classes}")
    options = detector_options(spec.name, spec.extra)
    builder, levels, _ = DETECTORS[spec.name]
    if backbone is None:
        backbone = _backbone(spec, levels, pretrained, weights_path)
    adapter = builder(spec, backbone, options)
    adapter.spec = spec
    return adapter
