"""What a detector is, as plain values: the settings a config chooses and the spec a checkpoint stores.

:class:`DetectorSettings` holds the detector's settings that a config's ``model`` section chooses, with their
defaults written once: :class:`minedet.config.ModelConfig` extends it with where the weights come from, and
:class:`DetectorSpec` extends it with what the data decides (classes, image size). A run's spec is made from its
config by :meth:`DetectorSpec.from_settings`. No torch here: the config reads these without building anything.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping


@dataclass(kw_only=True)
class DetectorSettings:
    """The detector's settings a config chooses (``model.*``) and every spec records.

    Attributes:
        backbone: a name in :data:`minedet.models.backbones.BACKBONES`.
        levels: FPN levels ("p3p7", "p3p5", "p2p6", "p2p5"); None takes the detector's default.
        fpn_channels: FPN width (and head width).
        anchor_scale: anchor side = anchor_scale * stride (RetinaNet and Faster R-CNN).
        score_thresh, nms_thresh, detections_per_img, topk_candidates: inference settings (``nms_thresh`` None
            takes the detector's default).
        extra: detector-specific options, the fields of this detector's options class
            (:class:`~minedet.models.build.RetinaNetOptions`, :class:`~minedet.models.build.FCOSOptions`,
            :class:`~minedet.models.build.FasterRCNNOptions`); checked by
            :func:`~minedet.models.build.build_detector`.
    """

    backbone: str = "effnet_lite0"
    levels: str | None = None
    fpn_channels: int = 64
    anchor_scale: float = 4.0
    score_thresh: float = 0.05
    nms_thresh: float | None = None
    detections_per_img: int = 100
    topk_candidates: int = 1000
    extra: dict = field(default_factory=dict)


#: What a saved spec without a key means: the default that key had when specs were first written, where it differs
#: from today's. Specs written so far hold every key; this keeps a shorter one meaning what it meant then.
SAVED_SPEC_DEFAULTS: dict[str, Any] = {"fpn_channels": 256}


@dataclass(kw_only=True)
class DetectorSpec(DetectorSettings):
    """Everything needed to rebuild a detector (stored in every checkpoint and exported model).

    Attributes (besides :class:`DetectorSettings`'):
        name: "retinanet" | "fcos" | "faster_rcnn".
        num_classes: K foreground classes.
        class_names: names of the K classes (index = label).
        image_size: images are resized so the short side is ``image_size`` (long side at most
            ``max_size``, default ``image_size`` * 1333/800) inside torchvision's transform.
    """

    name: str
    num_classes: int
    class_names: list[str] = field(default_factory=list)
    image_size: int = 800
    max_size: int | None = None

    @classmethod
    def from_settings(cls, settings: DetectorSettings, *, name: str, num_classes: int, class_names: list[str],
                      image_size: int, max_size: int | None = None) -> DetectorSpec:
        """The spec of a detector with ``settings`` (a config's ``model`` section) for data of ``num_classes``
        classes named ``class_names``, resized to ``image_size`` (``extra`` is copied, not shared)."""
        chosen = {f.name: getattr(settings, f.name) for f in dataclasses.fields(DetectorSettings)}
        return cls(**{**chosen, "extra": dict(settings.extra)}, name=name, num_classes=num_classes,
                   class_names=list(class_names), image_size=image_size, max_size=max_size)

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> DetectorSpec:
        """The spec of a saved dict (:meth:`as_dict` of an earlier run: a checkpoint's or an exported model's);
        a key it lacks means what it meant when it was written (:data:`SAVED_SPEC_DEFAULTS`). An unknown key or
        a missing ``name`` / ``num_classes`` is a ``TypeError``."""
        return cls(**{**SAVED_SPEC_DEFAULTS, **saved})

    def as_dict(self) -> dict:
        return asdict(self)
