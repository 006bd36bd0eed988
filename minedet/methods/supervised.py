"""Plain supervised training (the 'original' baseline of Co-mining; the supervised baseline of ACRST)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from minedet.data.transforms import Compose, view_transform
from minedet.methods.base import Method, prefixed
from minedet.models.detector import DetectorAdapter


@dataclass
class SupervisedOptions:
    """``view``: the input the detector sees: ``none`` (Co-mining's 'original'), or ``color`` /
    ``blur`` / ``strong`` (Co-mining's 'augmented' baseline)."""

    view: str = "none"


class Supervised(Method):
    name = "supervised"
    #: chosen on the real tree crowns' dev tiles (half the crowns erased at random, or a quarter of the area labelled
    #: in a hurry), over seeds 0 and 1: BRL's loss on twice the batch (a two-view step's compute) led co-mining with
    #: its val check on both; seed 2 made them level, and it stays as the simpler recipe (one view, no mining loop;
    #: docs/findings.md, Sparse labels). On complete digits BRL's loss costs little.
    #: ``model.extra.cls_loss=focal data.batch_size=8``: the plain baseline
    own_data = {"retinanet": {"model.extra.cls_loss": "brl", "data.batch_size": "16"}}

    def __init__(self, detector: DetectorAdapter, options: SupervisedOptions | None = None) -> None:
        super().__init__(detector)
        self.options = options or SupervisedOptions()
        self._view = view_transform(self.options.view)

    def streams(self) -> dict[str, dict[str, Compose]]:
        return {"labelled": {"o": self._view}}

    def training_step(self, batch: dict) -> dict[str, Tensor]:
        views = batch["labelled"].views["o"]
        out = self.detector.forward_heads(self.images(views))
        background = self.known_background("labelled", batch["labelled"].image_ids, views)
        return prefixed(self.detector.loss(out, self.targets(views), background), "sup")
