"""Tiled prediction reports every object once, also when the detector's boxes are a few pixels off: an object cut
by a tile edge gives a piece whose box stops 3-6 px inside the tile border (a detector's usual box error), which
the seam merge must still recognise as the piece of the object a neighbouring tile sees whole."""

from __future__ import annotations

import pytest
import torch

from minedet.data.tiles import tile_grid
from minedet.engine.tiled import predict_tiled
from minedet.structures import Target
from tests.test_tiles import OracleDetector, scene


class ShrinkingOracle(OracleDetector):
    """The oracle's boxes, each side moved 3-6 px inwards (drawn per box from a seeded generator); a box that
    shrinks to nothing is not reported."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.g = torch.Generator().manual_seed(seed)

    def predict(self, images, **decode_kw) -> list[Target]:
        out = []
        for d in super().predict(images, **decode_kw):
            s = torch.randint(3, 7, (len(d), 4), generator=self.g).float()
            b = d.boxes + s * torch.tensor([1.0, 1.0, -1.0, -1.0])
            keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            out.append(Target(b[keep], d.labels[keep], d.scores[keep]))
        return out


def _matches(merged: Target, objs: list[tuple]) -> list[int]:
    """For each object, how many merged boxes of its class have their centre inside it."""
    c = (merged.boxes[:, :2] + merged.boxes[:, 2:]) / 2
    return [int(((c[:, 0] > x1) & (c[:, 0] < x2) & (c[:, 1] > y1) & (c[:, 1] < y2) & (merged.labels == k)).sum())
            for x1, y1, x2, y2, k in objs]


@pytest.mark.parametrize("width, size, overlap, sizes, cell", [
    (640, 128, 48, (14, 40), 60),   # small tiles: many objects cross a seam
    (1400, 512, 128, (20, 90), 100),
])
def test_shrunk_boxes_on_cut_objects_give_one_detection_per_object(width, size, overlap, sizes, cell):
    img, objs = scene(width, width, cell=cell, fill=0.7, sizes=sizes, seed=3)
    image = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    edges = {e for t in tile_grid(width, width, size, overlap) for e in (t.x, t.x + t.width)} - {0, width}
    assert sum(any(o[0] < e < o[2] for e in edges) for o in objs) > 15  # many objects are cut by a tile edge
    for det in (ShrinkingOracle(0), ShrinkingOracle(1)):
        merged = predict_tiled(det, image, size, overlap)
        got = _matches(merged, objs)
        assert got.count(0) == 0, "an object was lost"
        assert max(got) == 1 and len(merged) == len(objs), "an object was reported twice"


@pytest.mark.parametrize("size, overlap", [(128, 48), (512, 128)])
def test_a_perfect_detector_still_gives_exactly_each_object_once(size, overlap):
    img, objs = scene(640, 640, cell=60, fill=0.7, sizes=(14, 40), seed=4)
    merged = predict_tiled(OracleDetector(), torch.from_numpy(img).permute(2, 0, 1).contiguous(), size, overlap)
    assert sorted(tuple(b) + (k,) for b, k in zip(merged.boxes.tolist(), merged.labels.tolist())) == \
        sorted(tuple(float(v) for v in o[:4]) + (o[4],) for o in objs)


def test_shrunk_scene_is_the_whole_image_prediction():
    """Tiled (with box error) finds what the whole image finds: the same objects, each once."""
    img, objs = scene(400, 300, cell=60, fill=0.7, sizes=(14, 40), seed=5)
    image = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    whole = ShrinkingOracle(2).predict([image.float().div(255)])[0]
    tiled = predict_tiled(ShrinkingOracle(2), image, 128, 48)
    assert _matches(whole, objs) == _matches(tiled, objs) == [1] * len(objs)
    assert len(tiled) == len(objs)
