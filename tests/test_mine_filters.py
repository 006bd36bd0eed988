"""``minedet mine``'s filters on detections it is handed as they are (a detector that ignores the decoding it is
asked for): score above the floor, class-wise NMS, at most ``max_dets``, clipped and rounded to the image, at
least 1 px, then off the labelled boxes (crowd regions included) and the boxes a reviewer rejected."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from minedet.data.coco import validate_coco
from minedet.mining import mine_dataset
from minedet.structures import Target

#: (box xyxy, label, score) the detector reports, best first, and what becomes of each
DETECTIONS = [
    ([1, 1, 21, 21], 0, 0.95),       # on the labelled box: known
    ([30, 0, 50, 20], 1, 0.90),      # mined
    ([10, 30, 10.5, 40], 0, 0.88),   # half a pixel wide: not reviewable
    ([30, 0, 50, 20], 0, 0.85),      # mined: NMS is class-wise
    ([31, 0, 50, 20], 1, 0.80),      # NMS: the 0.90 box of its class covers it
    ([60, 60, 70, 70], 0, 0.75),      # mined, clipped to the 64 x 64 image
    ([41, 41, 59, 59], 1, 0.70),     # on the crowd region: known
    ([0, 44, 8, 60], 1, 0.65),       # on the rejected box: reviewed before
    ([0, 30, 10, 40], 0, 0.30),      # under the score
]


class FixedDetector(torch.nn.Module):
    """Reports :data:`DETECTIONS` on every image, whatever decoding it is asked for."""

    num_classes = 2

    def __init__(self) -> None:
        super().__init__()
        self.spec = SimpleNamespace(class_names=["a", "b"])

    def predict(self, images, **decode_kw) -> list[Target]:
        boxes, labels, scores = zip(*DETECTIONS)
        return [Target(torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels), torch.tensor(scores))
                for _ in images]


@pytest.fixture
def labelled(tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    data = validate_coco({
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20]},
                        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [40, 40, 20, 20], "iscrowd": 1}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "rejected": [{"id": 3, "image_id": 1, "category_id": 1, "bbox": [0, 44, 8, 16]}],
    }, file=str(tmp_path / "a.json"))
    return data, tmp_path


def test_mine_filters_the_detections_it_is_handed(labelled):
    data, root = labelled
    res = mine_dataset(FixedDetector(), data, root, score=0.6)
    t = res.mined[1]
    assert t.boxes.tolist() == [[30, 0, 50, 20], [30, 0, 50, 20], [60, 60, 64, 64]]
    assert t.labels.tolist() == [1, 0, 0]
    assert t.scores.tolist() == pytest.approx([0.90, 0.85, 0.75])
    assert t.flag("pseudo").all() and t.flag("regress").all() and t.flag("weight").eq(1).all()
    assert res.gates[1].tolist() == pytest.approx([0.90, 0.85, 0.75])
    assert [a["bbox"] for a in res.completed["annotations"][2:]] == [[30, 0, 20, 20], [30, 0, 20, 20], [60, 60, 4, 4]]


def test_at_most_max_dets_detections_are_considered_before_known_boxes_are_taken_out(labelled):
    data, root = labelled
    t = mine_dataset(FixedDetector(), data, root, score=0.6, max_dets=3).mined[1]
    assert t.boxes.tolist() == [[30, 0, 50, 20]] and t.labels.tolist() == [1]


def test_candidates_down_to_the_floor_hold_the_same_filters(labelled):
    data, root = labelled
    res = mine_dataset(FixedDetector(), data, root, score=0.6, collect_down_to=0.2)
    assert res.candidates[1].scores.tolist() == pytest.approx([0.90, 0.85, 0.75, 0.30])
    assert res.at_threshold(0.6)[1].boxes.tolist() == res.mined[1].boxes.tolist()
