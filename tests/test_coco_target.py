"""One conversion of COCO annotation records to a Target (``coco_target``), and who keeps crowd regions: training
targets and hidden truth leave them out, mining counts them as known boxes."""

from __future__ import annotations

import torch

from minedet.data.coco import validate_coco
from minedet.data.datasets import DetectionDataset, coco_target
from minedet.mining import gt_target


def _data(**extra):
    return validate_coco({
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64},
                   {"id": 2, "file_name": "b.png", "width": 64, "height": 64}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 2, 10, 20]},
            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [30, 30, 5, 5], "iscrowd": 1},
            {"id": 3, "image_id": 1, "category_id": 9, "bbox": [40, 40, 8, 8], "mined": True, "score": 0.9},
        ],
        "categories": [{"id": 7, "name": "seven"}, {"id": 9, "name": "nine"}],
        **extra,
    }, file="test.json")


def test_records_become_xyxy_boxes_with_contiguous_labels_and_crowds_left_out():
    t = coco_target(_data(), 1)
    assert t.image_id == 1 and t.scores is None
    assert t.boxes.tolist() == [[1, 2, 11, 22], [40, 40, 48, 48]]
    assert t.labels.tolist() == [0, 1]
    assert t.flag("pseudo").tolist() == [False, True]  # the mined box


def test_crowd_regions_are_kept_when_asked():
    t = coco_target(_data(), 1, crowd=True)
    assert t.boxes.tolist() == [[1, 2, 11, 22], [30, 30, 35, 35], [40, 40, 48, 48]]
    assert t.labels.tolist() == [0, 1, 1]


def test_an_image_without_boxes_is_an_empty_target():
    for crowd in (False, True):
        t = coco_target(_data(), 2, crowd=crowd)
        assert len(t) == 0 and t.boxes.shape == (0, 4) and t.labels.dtype == torch.int64 and t.image_id == 2


def test_given_records_are_converted_instead_of_the_images_annotations():
    data = _data()
    t = coco_target(data, 2, [{"id": 5, "image_id": 2, "category_id": 9, "bbox": [0, 0, 4, 4]}])
    assert t.boxes.tolist() == [[0, 0, 4, 4]] and t.labels.tolist() == [1] and not t.flags


def test_training_and_hidden_truth_leave_crowds_out_mining_counts_them_as_known():
    data = _data(rejected=[{"id": 1, "image_id": 1, "category_id": 7, "bbox": [50, 0, 4, 4]}])
    ds = DetectionDataset(data, ".", hidden=data)
    assert ds.target(1).boxes.tolist() == [[1, 2, 11, 22], [40, 40, 48, 48]]
    assert ds.hidden_target(1).boxes.tolist() == [[1, 2, 11, 22], [40, 40, 48, 48]]
    known = gt_target(data, 1)
    assert known.boxes.tolist() == [[1, 2, 11, 22], [30, 30, 35, 35], [40, 40, 48, 48]]
    assert known.labels.tolist() == [0, 1, 1]
    for rejected in (gt_target(data, 1, rejected=True), ds.rejected_target(1)):
        assert rejected.boxes.tolist() == [[50, 0, 54, 4]] and rejected.labels.tolist() == [0]
    assert len(gt_target(data, 2, rejected=True)) == 0 and len(ds.rejected_target(2)) == 0
