"""pycocotools evaluation: perfect / shifted / empty / false-positive detections, id mapping, purity."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from minedet.engine.evaluate import EvalReport, coco_results, evaluate_detections, merge_results
from minedet.errors import MinedetError
from minedet.structures import Target

# Category ids are deliberately not contiguous: label 0 -> id 5 ("cat"), label 1 -> id 9 ("dog").
CAT_IDS = [5, 9]


def make_gt() -> dict:
    """3 images (image 3 has no boxes), 2 categories; some annotations lack iscrowd/area/id."""
    return {
        "images": [
            {"id": 1, "width": 200, "height": 200, "file_name": "a.png"},
            {"id": 2, "width": 200, "height": 200, "file_name": "b.png"},
            {"id": 3, "width": 200, "height": 200, "file_name": "empty.png"},
        ],
        "categories": [{"id": 9, "name": "dog"}, {"id": 5, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 50, 40], "iscrowd": 0, "area": 2000},
            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [100, 100, 60, 80]},
            {"image_id": 2, "category_id": 5, "bbox": [20, 30, 70, 70]},
            {"image_id": 2, "category_id": 9, "bbox": [120, 20, 50, 50]},
        ],
    }


def perfect_results(gt: dict, score: float = 0.9) -> list[dict]:
    return [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": list(a["bbox"]), "score": score}
        for a in gt["annotations"]
    ]


def test_perfect_detections_give_ap_one() -> None:
    gt = make_gt()
    rep = evaluate_detections(gt, perfect_results(gt))
    assert rep.ap == pytest.approx(1.0)
    assert rep.ap50 == pytest.approx(1.0)
    assert rep.ap75 == pytest.approx(1.0)
    assert rep.per_class == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    assert rep.per_class_ap50 == {"cat": pytest.approx(1.0), "dog": pytest.approx(1.0)}
    assert rep.n_images == 3 and rep.n_detections == 4
    # No ground truth is small (area < 32^2): pycocotools says -1, the report says nan.
    assert math.isnan(rep.aps)


def test_per_class_keys_follow_category_id_order_and_class_names() -> None:
    gt = make_gt()
    rep = evaluate_detections(gt, perfect_results(gt))
    assert list(rep.per_class) == ["cat", "dog"]  # id 5 before id 9, whatever the JSON order
    rep2 = evaluate_detections(gt, perfect_results(gt), class_names=["c0", "c1"])
    assert list(rep2.per_class) == ["c0", "c1"]
    assert list(rep2.per_class_ap50) == ["c0", "c1"]
    with pytest.raises(ValueError):
        evaluate_detections(gt, perfect_results(gt), class_names=["only-one"])


def test_pr50_is_the_precision_curve_whose_mean_is_ap50() -> None:
    gt = make_gt()
    res = perfect_results(gt, score=0.5)
    res.append({"image_id": 3, "category_id": 5, "bbox": [0, 0, 40, 40], "score": 0.99})  # a confident false cat
    res = [r for r in res if not (r["category_id"] == 9 and r["image_id"] == 2)]  # one dog missed
    rep = evaluate_detections(gt, res)
    assert list(rep.pr50) == ["cat", "dog"] and all(len(c) == 101 for c in rep.pr50.values())
    for name, curve in rep.pr50.items():
        assert sum(curve) / len(curve) == pytest.approx(rep.per_class_ap50[name], abs=1e-3)
    dog, cat = rep.pr50["dog"], rep.pr50["cat"]
    assert dog[:51] == [1.0] * 51 and dog[51:] == [0.0] * 50  # half the dogs found, each ranked right
    assert cat[0] == pytest.approx(2 / 3, abs=1e-4) and cat[-1] == pytest.approx(2 / 3, abs=1e-4)  # the false cat first
    gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] == 5]  # no dog on any image
    assert list(evaluate_detections(gt, perfect_results(gt)).pr50) == ["cat"]
    assert json.loads(json.dumps(rep.as_dict()))["pr50"]["dog"] == dog


def test_confusion_counts_pairs_misses_and_false_detections() -> None:
    gt = make_gt()  # categories sorted by id: cat (5), dog (9); image 3 has no box
    res = [
        {"image_id": 1, "category_id": 5, "bbox": [10, 10, 50, 40], "score": 0.9},  # cat as cat
        {"image_id": 1, "category_id": 5, "bbox": [100, 100, 60, 80], "score": 0.8},  # the dog called cat
        {"image_id": 1, "category_id": 9, "bbox": [101, 101, 60, 80], "score": 0.7},  # a second try on it: false
        {"image_id": 2, "category_id": 5, "bbox": [20, 30, 70, 70], "score": 0.1},  # below the score: cat missed
        {"image_id": 3, "category_id": 9, "bbox": [0, 0, 40, 40], "score": 0.9},  # a dog on the empty image
    ]  # image 2's dog: nothing on it, missed
    m = evaluate_detections(gt, res).confusion
    assert m == [[1, 0, 1],   # true cat: 1 as cat, 1 missed
                 [1, 0, 1],   # true dog: 1 as cat, 1 missed
                 [0, 2, 0]]   # background: 2 false dogs
    assert evaluate_detections(gt, perfect_results(gt)).confusion == [[2, 0, 0], [0, 2, 0], [0, 0, 0]]
    assert evaluate_detections(gt, []).confusion == [[0, 0, 2], [0, 0, 2], [0, 0, 0]]
    crowd = copy.deepcopy(gt)
    crowd["annotations"][3]["iscrowd"] = 1  # image 2's dog: a crowd box is never missed, and its detection is not false
    assert evaluate_detections(crowd, perfect_results(gt)).confusion == [[2, 0, 0], [0, 1, 0], [0, 0, 0]]
    assert evaluate_detections(crowd, []).confusion == [[0, 0, 2], [0, 0, 1], [0, 0, 0]]


def test_shifted_boxes_lower_ap() -> None:
    gt = make_gt()
    res = perfect_results(gt)
    for r in res:
        r["bbox"][0] += 6  # IoU ~0.8-0.9: still a hit at 0.5, a miss at high thresholds
    rep = evaluate_detections(gt, res)
    assert 0.0 < rep.ap < 0.99
    assert rep.ap50 == pytest.approx(1.0)


def test_zero_detections_give_zero_not_crash() -> None:
    gt = make_gt()
    rep = evaluate_detections(gt, [])
    assert rep.ap == 0.0 and rep.ap50 == 0.0
    assert rep.per_class == {"cat": 0.0, "dog": 0.0}
    assert rep.n_detections == 0


def test_false_positive_on_empty_image_lowers_ap() -> None:
    gt = make_gt()
    res = perfect_results(gt, score=0.5)
    # A confident false positive on the image that has no boxes at all.
    res.append({"image_id": 3, "category_id": 5, "bbox": [0, 0, 40, 40], "score": 0.99})
    rep = evaluate_detections(gt, res)
    assert rep.per_class["cat"] < 0.99
    assert rep.per_class["dog"] == pytest.approx(1.0)
    assert rep.ap < 0.99


def test_low_score_false_positive_does_not_lower_ap() -> None:
    """Control for the test above: the ranking, not the mere presence, of a false positive matters."""
    gt = make_gt()
    res = perfect_results(gt, score=0.9)
    res.append({"image_id": 3, "category_id": 5, "bbox": [0, 0, 40, 40], "score": 0.01})
    assert evaluate_detections(gt, res).ap == pytest.approx(1.0)


def test_gt_without_any_annotations() -> None:
    gt = make_gt()
    gt["annotations"] = []
    rep = evaluate_detections(gt, [{"image_id": 1, "category_id": 5, "bbox": [0, 0, 5, 5], "score": 0.5}])
    assert math.isnan(rep.ap)  # nothing to measure: -1 in pycocotools
    rep0 = evaluate_detections(gt, [])
    assert math.isnan(rep0.ap)


def test_image_ids_restriction() -> None:
    gt = make_gt()
    # Perfect on image 1, nothing on image 2: all images -> recall 1/2; image 1 only -> AP 1.
    res = [r for r in perfect_results(gt) if r["image_id"] == 1]
    full = evaluate_detections(gt, res)
    only1 = evaluate_detections(gt, res, image_ids=[1])
    assert full.ap < 0.6
    assert only1.ap == pytest.approx(1.0)
    assert only1.n_images == 1
    # Results on images outside the restriction are ignored, not counted.
    res_all = perfect_results(gt)
    res_all[2]["bbox"] = [150, 150, 10, 10]  # a miss on image 2
    restricted = evaluate_detections(gt, res_all, image_ids=[1, 3])
    assert restricted.ap == pytest.approx(1.0)
    assert restricted.n_detections == 2


def test_inputs_not_mutated() -> None:
    gt = make_gt()
    res = perfect_results(gt)
    gt0, res0 = copy.deepcopy(gt), copy.deepcopy(res)
    evaluate_detections(gt, res)
    evaluate_detections(gt, [])
    assert gt == gt0
    assert res == res0


def test_unknown_image_ids_are_user_errors() -> None:
    gt = make_gt()
    with pytest.raises(MinedetError, match="image_id 42"):
        evaluate_detections(gt, [{"image_id": 42, "category_id": 5, "bbox": [0, 0, 5, 5], "score": 0.5}])
    with pytest.raises(MinedetError, match="image ids not in the ground truth"):
        evaluate_detections(gt, [], image_ids=[1, 77])


def test_quiet_suppresses_pycocotools_output(capsys: pytest.CaptureFixture[str]) -> None:
    gt = make_gt()
    evaluate_detections(gt, perfect_results(gt), quiet=True)
    assert capsys.readouterr().out == ""
    evaluate_detections(gt, perfect_results(gt), quiet=False)
    assert "Average Precision" in capsys.readouterr().out


def test_coco_results_converts_xyxy_and_labels() -> None:
    t = Target(
        torch.tensor([[10.0, 20.0, 30.0, 60.0], [0.5, 1.5, 2.5, 4.5]]),
        torch.tensor([1, 0]),
        torch.tensor([0.75, 0.25]),
    )
    res = coco_results([(7, t), (8, Target.empty())], CAT_IDS)
    assert res == [
        {"image_id": 7, "category_id": 9, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.75},
        {"image_id": 7, "category_id": 5, "bbox": [0.5, 1.5, 2.0, 3.0], "score": 0.25},
    ]
    assert all(type(v) in (int, float) for r in res for v in (r["image_id"], r["category_id"], r["score"]))
    # Callable mapping; missing scores count as 1.0.
    res2 = coco_results([(3, Target(t.boxes, t.labels))], lambda lab: 100 + lab)
    assert [r["category_id"] for r in res2] == [101, 100]
    assert [r["score"] for r in res2] == [1.0, 1.0]
    with pytest.raises(ValueError):
        coco_results([(1, t)], [5])  # label 1 has no category id


def test_targets_of_gt_round_trip_to_ap_one() -> None:
    """coco_results + evaluate_detections together: GT turned into detections scores AP 1."""
    gt = make_gt()
    per_image: dict[int, list[dict]] = {im["id"]: [] for im in gt["images"]}
    for a in gt["annotations"]:
        per_image[a["image_id"]].append(a)
    dets = []
    for image_id, anns in per_image.items():
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([CAT_IDS.index(a["category_id"]) for a in anns], dtype=torch.int64)
        dets.append((image_id, Target(boxes, labels, torch.full((len(anns),), 0.8))))
    rep = evaluate_detections(gt, coco_results(dets, CAT_IDS))
    assert rep.ap == pytest.approx(1.0)


def test_report_dict_and_table() -> None:
    gt = make_gt()
    res = perfect_results(gt)
    res[0]["bbox"] = [150, 150, 10, 10]  # miss the cat on image 1
    rep = evaluate_detections(gt, res)
    d = rep.as_dict()
    json.dumps(d, allow_nan=False)  # nan became None
    assert d["aps"] is None
    assert d["per_class"]["dog"] == pytest.approx(1.0)
    assert d["per_class"]["cat"] < 1.0
    text = rep.table()
    lines = text.splitlines()
    assert lines[0].startswith("AP ") and "AP50" in lines[0] and "4 detections" in lines[0]
    assert any(line.startswith("cat") for line in lines) and any(line.startswith("dog") for line in lines)
    assert "100.0" in next(line for line in lines if line.startswith("dog"))


def test_merge_results_concatenates() -> None:
    a = [{"image_id": 1, "category_id": 5, "bbox": [0, 0, 1, 1], "score": 0.1}]
    b = [{"image_id": 2, "category_id": 9, "bbox": [0, 0, 2, 2], "score": 0.2}]
    merged = merge_results([a, [], b])
    assert merged == a + b
    merged[0]["score"] = 0.9
    assert a[0]["score"] == 0.1
    assert isinstance(EvalReport(0, 0, 0, 0, 0, 0).as_dict(), dict)
