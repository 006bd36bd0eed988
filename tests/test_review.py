"""The review round trip: mined boxes out to Label Studio and CVAT, a scripted reviewer edits the export as the
tool would write it (accept some, move one, reject one, add one), merge-reviewed brings it back with provenance."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minedet.cli import main
from minedet.data.coco import load_coco, save_coco, validate_coco
from minedet.data.datasets import coco_target
from minedet.errors import MinedetError
from minedet.review import labelstudio_config, labelstudio_tasks, merge_reviewed, read_reviewed, review_cvat_xml

CATS = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
IMAGES = [
    {"id": 1, "file_name": "a.png", "width": 100, "height": 80},
    {"id": 2, "file_name": "sub/b.png", "width": 64, "height": 64},
    {"id": 3, "file_name": "c.png", "width": 50, "height": 50},  # labelled only: nothing to review
    {"id": 4, "file_name": "d.png", "width": 50, "height": 50},  # a mined box the Label Studio reviewer never opens
]


def _ann(i, img, cat, bbox, score=None):
    a = {"id": i, "image_id": img, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0}
    if score is not None:
        a.update(mined=True, score=score)
    return a


def mined_coco() -> dict:
    """What `minedet mine --out` writes: labelled boxes, then mined ones ("mined": true, "score")."""
    return {"info": {"description": "toy"}, "images": copy.deepcopy(IMAGES), "categories": copy.deepcopy(CATS), "annotations": [
        _ann(1, 1, 1, [10.0, 10.0, 20.0, 20.0]),
        _ann(2, 2, 2, [30.0, 30.0, 10.0, 12.0]),
        _ann(3, 3, 1, [1.0, 1.0, 5.0, 5.0]),
        _ann(10, 1, 2, [50.0, 10.0, 20.0, 20.0], 0.9),   # accepted
        _ann(11, 1, 1, [10.0, 50.0, 30.0, 20.0], 0.8),   # moved 6 px right
        _ann(12, 1, 2, [70.0, 50.0, 20.0, 20.0], 0.7),   # rejected
        _ann(13, 2, 1, [2.5, 3.25, 20.0, 10.0], 0.65),   # accepted
        _ann(14, 4, 2, [5.0, 5.0, 10.0, 10.0], 0.61),    # on an image the LS reviewer skips
    ]}


ADDED = ("dog", [5.0, 40.0, 10.0, 10.0])  # drawn by the reviewer on sub/b.png
MOVED = [16.0, 50.0, 30.0, 20.0]


@pytest.fixture()
def original(tmp_path: Path):
    p = tmp_path / "mined.json"
    save_coco(p, mined_coco())
    return p, load_coco(p)


# -------------------------------------------------------------------------------- the reviewer, scripted per tool


def review_labelstudio(tasks: list[dict], *, keep_ids: bool = True) -> list[dict]:
    """Label Studio's JSON export after the review: each opened task gets an annotation made from the prediction
    (regions keep their ids when keep_ids), edited; the task of d.png was never opened."""
    out = []
    for k, t in enumerate(copy.deepcopy(tasks)):
        t["id"] = 100 + k
        name = t["data"]["file_name"]
        result = []
        for r in t["predictions"][0]["result"]:
            r = dict(r, origin="prediction")
            r.pop("score", None)
            if r["id"] == "m12":
                continue  # rejected
            if r["id"] == "m11":
                r["value"] = dict(r["value"], x=r["value"]["x"] + 6 * 100 / r["original_width"])
                r["origin"] = "prediction-changed"
            if not keep_ids:
                r["id"] = f"x{len(result)}"
            result.append(r)
        if name == "sub/b.png":
            result.append({"id": "Zq3k9", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
                           "original_width": 64, "original_height": 64, "image_rotation": 0, "origin": "manual",
                           "value": {"x": 5 / 64 * 100, "y": 40 / 64 * 100, "width": 10 / 64 * 100, "height": 10 / 64 * 100,
                                     "rotation": 0, "rectanglelabels": ["dog"]}})
        t["annotations"] = [] if name == "d.png" else [
            {"id": 1, "completed_by": 1, "was_cancelled": True, "result": []},  # a cancelled draft does not count
            {"id": 2, "completed_by": 1, "was_cancelled": False, "result": result},
        ]
        out.append(t)
    return out


def review_cvat(xml: bytes) -> bytes:
    """CVAT's 'CVAT for images 1.1' export after the review (every image of the task is in it)."""
    root = ET.fromstring(xml)
    for img in root.iter("image"):
        for b in list(img.iter("box")):
            coords = [float(b.get(k)) for k in ("xtl", "ytl", "xbr", "ybr")]
            if img.get("name") == "a.png" and coords == [70, 50, 90, 70]:
                img.remove(b)  # rejected
            elif img.get("name") == "a.png" and coords == [10, 50, 40, 70]:
                b.set("xtl", "16.00")
                b.set("xbr", "46.00")
                b.set("source", "manual")
        if img.get("name") == "sub/b.png":
            ET.SubElement(img, "box", {"label": "dog", "source": "manual", "occluded": "0", "xtl": "5.00", "ytl": "40.00",
                                       "xbr": "15.00", "ybr": "50.00", "z_order": "0"})
    return ET.tostring(root, encoding="utf-8")


def review_coco(d: dict) -> dict:
    """A COCO export from another tool: ids renumbered, "mined"/"score" gone, category ids in another order."""
    d = copy.deepcopy(d)
    cat_new = {1: 7, 2: 3}
    anns = []
    for a in d["annotations"]:
        if a["id"] == 12:
            continue
        bbox = MOVED if a["id"] == 11 else a["bbox"]
        anns.append({"id": len(anns) + 1, "image_id": a["image_id"], "category_id": cat_new[a["category_id"]], "bbox": bbox,
                     "area": bbox[2] * bbox[3], "iscrowd": 0})
    anns.append({"id": len(anns) + 1, "image_id": 2, "category_id": 3, "bbox": ADDED[1], "area": 100.0, "iscrowd": 0})
    return {"images": d["images"], "annotations": anns,
            "categories": [{"id": 3, "name": "dog"}, {"id": 7, "name": "cat"}]}


def _write_review(fmt: str, data, tmp_path: Path, *, keep_ids: bool = True) -> Path:
    if fmt == "labelstudio":
        p = tmp_path / "export.json"
        p.write_text(json.dumps(review_labelstudio(labelstudio_tasks(data, image_ids=[1, 2, 4]), keep_ids=keep_ids)))
    elif fmt == "cvat":
        p = tmp_path / "annotations.xml"
        p.write_bytes(review_cvat(review_cvat_xml(data, image_ids=[1, 2, 4])))
    else:
        p = tmp_path / "reviewed_coco.json"
        p.write_text(json.dumps(review_coco(mined_coco())))
    return p


def _check_merged(d: dict, fmt: str) -> None:
    """Every box and its provenance."""
    anns = {a["id"]: a for a in d["annotations"]}
    prov = {i: a["provenance"] for i, a in anns.items()}
    want = {1: "labelled", 2: "labelled", 3: "labelled", 10: "mined-accepted", 11: "mined-corrected", 13: "mined-accepted"}
    if fmt != "labelstudio":  # CVAT / COCO exports hold every image: d.png was reviewed, its box kept
        want[14] = "mined-accepted"
    added = [a for a in d["annotations"] if a["provenance"] == "added"]
    assert {i: p for i, p in prov.items() if p != "added"} == want
    assert len(added) == 1 and added[0]["image_id"] == 2 and added[0]["category_id"] == 2
    assert added[0]["bbox"] == pytest.approx(ADDED[1], abs=0.01) and added[0]["id"] == 15  # after the largest id in use
    orig = {a["id"]: a for a in mined_coco()["annotations"]}
    for i in (1, 2, 3):
        assert {k: v for k, v in anns[i].items() if k != "provenance"} == orig[i]  # labelled boxes untouched
    for i in [10, 13] + ([14] if 14 in want else []):
        assert anns[i]["bbox"] == orig[i]["bbox"] and anns[i]["category_id"] == orig[i]["category_id"]
        assert "mined" not in anns[i] and "score" not in anns[i] and anns[i]["mined_score"] == orig[i]["score"]
    assert anns[11]["bbox"] == pytest.approx(MOVED, abs=0.01) and anns[11]["mined_bbox"] == orig[11]["bbox"]
    assert anns[11]["category_id"] == 1 and "mined" not in anns[11]
    assert [(r["id"], r["image_id"], r["bbox"], r["provenance"]) for r in d["rejected"]] == [(12, 1, [70.0, 50.0, 20.0, 20.0], "rejected")]
    assert 12 not in anns


# -------------------------------------------------------------------------------- tests


def test_labelstudio_tasks_are_pre_annotations(original) -> None:
    _, data = original
    tasks = labelstudio_tasks(data, model_version="m1")
    assert [t["data"]["minedet_image_id"] for t in tasks] == [1, 2, 4]  # images with mined boxes only
    t = tasks[0]
    assert t["data"]["image"] == "/data/local-files/?d=a.png"
    pred = t["predictions"][0]
    assert pred["model_version"] == "m1" and pred["score"] == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    regions = {r["id"]: r for r in pred["result"]}
    assert set(regions) == {"l1", "m10", "m11", "m12"}
    r = regions["m11"]
    assert r["type"] == "rectanglelabels" and r["score"] == 0.8 and "score" not in regions["l1"]
    assert r["value"]["rectanglelabels"] == ["cat"] and (r["original_width"], r["original_height"]) == (100, 80)
    assert [r["value"][k] for k in ("x", "y", "width", "height")] == pytest.approx([10.0, 62.5, 30.0, 25.0])  # percent
    cfg = labelstudio_config(data.class_names)
    assert '<RectangleLabels name="label" toName="image">' in cfg and '<Label value="dog"/>' in cfg


def test_cvat_review_file(original) -> None:
    _, data = original
    root = ET.fromstring(review_cvat_xml(data))
    assert root.findtext("version") == "1.1"
    assert [lab.findtext("name") for lab in root.iterfind("meta/task/labels/label")] == ["cat", "dog"]
    assert [im.get("name") for im in root.iter("image")] == ["a.png", "sub/b.png", "d.png"]
    boxes = [(b.get("label"), b.get("source"), [b.get(k) for k in ("xtl", "ytl", "xbr", "ybr")]) for b in root.find("image")]
    assert boxes[0] == ("cat", "manual", ["10", "10", "30", "30"]) and boxes[2] == ("cat", "auto", ["10", "50", "40", "70"])


@pytest.mark.parametrize("fmt", ["labelstudio", "cvat", "coco"])
def test_scripted_review_merges_back_with_provenance(fmt: str, original, tmp_path: Path, capsys) -> None:
    src, data = original
    review = _write_review(fmt, data, tmp_path)
    out = tmp_path / "completed.json"
    rc = main(["data", "merge-reviewed", str(src), str(review), "--format", fmt, "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    d = json.loads(out.read_text())
    _check_merged(d, fmt)
    assert "mined-accepted 2" in cap.out or "mined-accepted 3" in cap.out
    if fmt == "labelstudio":
        assert "1 mined boxes on images nobody reviewed were left out" in cap.out
    # the completed file passes `data check`; the rejected box is a known non-object, never a training target
    assert main(["data", "check", str(out)]) == 0
    done = load_coco(out)
    assert [r["id"] for r in done.rejected_by_image[1]] == [12]
    t = coco_target(done, 1)
    assert len(t) == 3 and not t.flag("pseudo").any()  # l1, m10, m11: labels now, not pseudo-labels


def test_label_studio_without_region_ids_matches_by_geometry(original, tmp_path: Path) -> None:
    _, data = original
    merged = merge_reviewed(data, read_reviewed(_write_review("labelstudio", data, tmp_path, keep_ids=False), "labelstudio", data))
    _check_merged(merged.coco, "labelstudio")
    assert merged.counts["labelled_changed"] == 0


def test_a_second_round_keeps_the_first_rounds_records(original, tmp_path: Path) -> None:
    _, data = original
    first = merge_reviewed(data, read_reviewed(_write_review("cvat", data, tmp_path), "cvat", data)).coco
    d = copy.deepcopy(first)  # round 2: mine once more on the merged file, the reviewer rejects the new box
    d["annotations"].append(_ann(40, 3, 2, [20.0, 20.0, 10.0, 10.0], 0.95))
    again = validate_coco(d, file="round2.json")
    res = merge_reviewed(again, {3: []})
    assert [r["id"] for r in res.coco["rejected"]] == [12, 40]
    prov = {a["id"]: a["provenance"] for a in res.coco["annotations"]}
    assert prov[11] == "mined-corrected" and prov[15] == "added" and 40 not in prov
    assert res.counts["labelled_changed"] == 1  # the reviewer of round 2 deleted the labelled box of c.png: kept


def test_a_labelled_box_moved_by_the_reviewer_stays_labelled(original) -> None:
    from minedet.review import ReviewedBox

    _, data = original
    res = merge_reviewed(data, {2: [ReviewedBox((33.0, 30.0, 43.0, 42.0), "dog", None),  # l2 nudged 3 px
                                    ReviewedBox((2.5, 3.25, 22.5, 13.25), "cat", None)]})
    anns = {a["id"]: a for a in res.coco["annotations"]}
    assert anns[2]["bbox"] == [30.0, 30.0, 10.0, 12.0] and anns[2]["provenance"] == "labelled"
    assert res.counts["labelled_changed"] == 1 and res.counts["added"] == 0


BAD = {
    "json_min": ("labelstudio", lambda p: p.write_text(json.dumps({"image": "a.png"})), "JSON list of tasks"),
    "unknown_label": ("labelstudio", None, "class 'cow' is not in the class list"),
    "unknown_image": ("cvat", lambda p: p.write_text('<annotations><image name="zz.png" width="8" height="8"/></annotations>'),
                      "image 'zz.png' is not an image of the original dataset"),
    "wrong_size": ("cvat", lambda p: p.write_text('<annotations><image name="a.png" width="8" height="8"/></annotations>'),
                   "image is 8x8 but the original says 100x80"),
    "malformed": ("cvat", lambda p: p.write_text("<annotations><image"), "not well-formed XML"),
    "billion_laughs": ("cvat", lambda p: p.write_text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        "<annotations>&b;</annotations>"), "DOCTYPE/ENTITY declarations are not allowed"),
    "missing": ("coco", None, "file not found"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_review_exports_are_one_line_exit_2(case: str, original, tmp_path: Path, capsys) -> None:
    src, data = original
    fmt, write, fragment = BAD[case]
    p = tmp_path / ("review.json" if fmt != "cvat" else "review.xml")
    if case == "unknown_label":
        tasks = review_labelstudio(labelstudio_tasks(data))
        tasks[0]["annotations"][-1]["result"][0]["value"]["rectanglelabels"] = ["cow"]
        p.write_text(json.dumps(tasks))
    elif write is not None:
        write(p)
    out = tmp_path / "out.json"
    rc = main(["data", "merge-reviewed", str(src), str(p), "--format", fmt, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
    assert not out.exists()


def test_coco_loader_rules_for_review_fields() -> None:
    d = mined_coco()
    d["annotations"][0]["provenance"] = "rejected"
    with pytest.raises(MinedetError, match='annotation id=1: provenance must be one of .* belong in the top-level "rejected" list'):
        validate_coco(d, file="x.json")
    d = mined_coco()
    d["rejected"] = [{"id": 1, "image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1]}]
    with pytest.raises(MinedetError, match=r"rejected\[0\]: image_id 99 is not an image"):
        validate_coco(d, file="x.json")
    d["rejected"] = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]
    ok = validate_coco(d, file="x.json")
    assert len(ok.annotations) == 8 and [r["id"] for r in ok.rejected_by_image[1]] == [1]


# -------------------------------------------------------------------------------- Label Studio set-up (issue 50)


def test_label_studio_files_pass_label_studios_own_validator(original) -> None:
    """Config and every task's prediction pass label-studio-sdk's validator; labelled boxes are read-only regions of
    their own control, mined boxes the regions to check (with scores); image URLs are local-files paths."""
    from label_studio_sdk.label_interface import LabelInterface

    _, data = original
    li = LabelInterface(labelstudio_config(data.class_names))
    li.validate()
    tasks = labelstudio_tasks(data, image_dir="photos/set 1")
    for t in tasks:
        assert all(t["data"].get(o.value_name) for o in li.objects if o.value_is_variable)
        assert li.validate_prediction(t["predictions"][0], return_errors=True) == []
    regions = {r["id"]: r for r in tasks[0]["predictions"][0]["result"]}
    assert regions["l1"]["from_name"] == "labelled" and regions["l1"]["readonly"] is True and "score" not in regions["l1"]
    assert regions["m10"]["from_name"] == "label" and not regions["m10"].get("readonly") and regions["m10"]["score"] == 0.9
    assert tasks[1]["data"]["image"] == "/data/local-files/?d=photos/set%201/sub/b.png"
    bad = copy.deepcopy(tasks[0]["predictions"][0])
    bad["result"][0]["value"]["rectanglelabels"] = ["cow"]
    assert li.validate_prediction(bad, return_errors=True)  # the validator does catch a broken region


def test_local_files_root(tmp_path: Path) -> None:
    from minedet.review import labelstudio_setup, local_files_dir

    imgs = tmp_path / "data" / "images"
    assert local_files_dir(imgs) == "images"  # default root: the parent of the image folder
    assert local_files_dir(imgs, tmp_path) == "data/images"
    lines = labelstudio_setup(imgs)
    assert lines[:2] == ["export LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true",
                         f"export LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={tmp_path / 'data'}"]
    assert "Local files" in lines[2] and str(imgs) in lines[2] and len(lines) == 3
    with pytest.raises(MinedetError, match="not under the Label Studio document root"):
        local_files_dir(imgs, tmp_path / "elsewhere")
    with pytest.raises(MinedetError, match="sub-folder of the root"):
        local_files_dir(imgs, imgs)


def test_mine_refuses_a_review_root_that_does_not_hold_the_images(tmp_path: Path, capsys) -> None:
    imgs = tmp_path / "images"
    imgs.mkdir()
    src = tmp_path / "train.json"
    save_coco(src, mined_coco())
    rc = main(["mine", str(tmp_path / "model.pt"), str(src), "--images", str(imgs), "--out", str(tmp_path / "m.json"),
               "--review-root", str(tmp_path / "other")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "not under the Label Studio document root" in err, err
    assert not (tmp_path / "m.json").exists()


def test_cvat_review_marks_labelled_and_mined_boxes(original) -> None:
    _, data = original
    root = ET.fromstring(review_cvat_xml(data))
    spec = root.find("meta/task/labels/label/attributes/attribute")
    assert spec.findtext("name") == "minedet" and spec.findtext("values").split("\n") == ["drawn", "mined", "labelled"]
    roles = [(b.get("label"), b.findtext("attribute[@name='minedet']")) for b in root.find("image").iter("box")]
    assert roles == [("cat", "labelled"), ("dog", "mined"), ("cat", "mined"), ("dog", "mined")]


def test_cvat_task_made_from_all_images_merges_without_false_alarms(original, tmp_path: Path, capsys) -> None:
    """The CVAT task holds every image; images offered nothing come back without boxes: not reviewed, no alarm."""
    src, data = original
    root = ET.fromstring(review_cvat(review_cvat_xml(data, image_ids=[1, 2, 4])))
    ET.SubElement(root, "image", {"id": "9", "name": "c.png", "width": "50", "height": "50"})  # labelled only
    review = tmp_path / "annotations.xml"
    review.write_bytes(ET.tostring(root))
    out = tmp_path / "completed.json"
    assert main(["data", "merge-reviewed", str(src), str(review), "--format", "cvat", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert "moved or deleted" not in cap.out and "(3 reviewed)" in cap.out, cap.out
    _check_merged(json.loads(out.read_text()), "cvat")


# -------------------------------------------------------------------------------- merges that must refuse (issue 50)


def _ls_export(data, edit=None) -> list[dict]:
    tasks = review_labelstudio(labelstudio_tasks(data, image_ids=[1, 2, 4]))
    if edit is not None:
        edit(tasks)
    return tasks


def _blank(tasks):  # a project that did not pre-label from predictions: the reviewer submits empty annotations
    for t in tasks:
        t["annotations"] = [{"id": 1, "was_cancelled": False, "result": []}]


def _json_min(tasks):  # Label Studio's JSON-MIN: one flat record per task, regions under the control's name
    tasks[:] = [{"image": t["data"]["image"], "id": t["id"], "minedet_image_id": t["data"]["minedet_image_id"],
                 "file_name": t["data"]["file_name"], "annotator": 1, "annotation_id": 2, "lead_time": 3.5,
                 "label": [dict(r["value"], original_width=r["original_width"], original_height=r["original_height"])
                           for r in t["annotations"][-1]["result"]] if t["annotations"] else []} for t in tasks]


def _swap_names(tasks):  # an export of another mined file: same ids, other images
    tasks[0]["data"]["file_name"], tasks[1]["data"]["file_name"] = tasks[1]["data"]["file_name"], tasks[0]["data"]["file_name"]


def _foreign_region(tasks):
    tasks[0]["annotations"][-1]["result"][1]["id"] = "m99"


def _unopened(tasks):  # the tasks file itself: predictions, no annotations
    for t in tasks:
        t["annotations"] = []


REFUSED = {
    "blank_labelstudio": ("labelstudio", _blank, "blank review"),
    "json_min": ("labelstudio", _json_min, "JSON-MIN"),
    "id_and_file_name_disagree": ("labelstudio", _swap_names, "minedet_image_id 1 is 'a.png' in the original but the task's"),
    "region_of_another_mine_output": ("labelstudio", _foreign_region, "region id 'm99' names no box offered on image id=1"),
    "nothing_reviewed": ("labelstudio", _unopened, "nothing to merge"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_merges_that_would_be_wrong_are_refused(case: str, original, tmp_path: Path, capsys) -> None:
    src, data = original
    fmt, edit, fragment = REFUSED[case]
    p = tmp_path / "export.json"
    p.write_text(json.dumps(_ls_export(data, edit)))
    out = tmp_path / "out.json"
    rc = main(["data", "merge-reviewed", str(src), str(p), "--format", fmt, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
    assert not out.exists()


def test_blank_cvat_review_and_wrong_files_are_refused(original, tmp_path: Path, capsys) -> None:
    src, data = original
    root = ET.fromstring(review_cvat_xml(data))
    for img in root.iter("image"):  # a CVAT task whose review annotations were never imported
        for b in list(img.iter("box")):
            img.remove(b)
    blank = tmp_path / "blank.xml"
    blank.write_bytes(ET.tostring(root))
    train = tmp_path / "train.json"
    d = mined_coco()
    d["annotations"] = [a for a in d["annotations"] if not a.get("mined")]
    save_coco(train, d)
    export = tmp_path / "export.json"
    export.write_text(json.dumps(_ls_export(data)))
    written = src.with_name("mined.cvat.xml")  # what `minedet mine` wrote beside mined.json
    written.write_bytes(review_cvat_xml(data))
    copy_of_mined = tmp_path / "copy.json"
    copy_of_mined.write_bytes(src.read_bytes())
    cases = [([str(src), str(blank), "--format", "cvat"], "blank review"),
             ([str(train), str(export), "--format", "labelstudio"], 'holds no mined box ("mined": true)'),
             ([str(src), str(written), "--format", "cvat"], "this is mined.cvat.xml, a file 'minedet mine' wrote"),
             ([str(src), str(copy_of_mined), "--format", "coco"], "this is mined.json, a file 'minedet mine' wrote")]
    for argv, fragment in cases:
        out = tmp_path / "out.json"
        rc = main(["data", "merge-reviewed", *argv, "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and fragment in err, (argv, err)
        assert not out.exists()


# -------------------------------------------------------------------------------- values that vanish (issue 49 point 2)


def _set_value(key, v):
    def edit(tasks):
        tasks[0]["annotations"][-1]["result"][1]["value"][key] = v
    return edit


VANISHING = {
    "x_text": (_set_value("x", "12"), "task[0] id=100 result[1]", "x must be a finite number"),
    "x_negative": (_set_value("x", -40.0), "task[0] id=100 result[1]", "lies outside the 100x80 image"),
    "width_huge": (_set_value("width", 1e300), "task[0] id=100 result[1]", "lies outside the 100x80 image"),
    "y_nan": (_set_value("y", float("nan")), "task[0] id=100 result[1]", "y must be a finite number"),
    "rotation_text": (_set_value("rotation", "90"), "task[0] id=100 result[1]", "rotation must be a finite number"),
    "rotation_nan": (_set_value("rotation", float("nan")), "task[0] id=100 result[1]", "rotation must be a finite number"),
    "rotation_huge": (_set_value("rotation", 1e30), "task[0] id=100 result[1]", "rotation must be in [-360, 360]"),
    "width_zero": (_set_value("width", 0), "task[0] id=100 result[1]", "width and height must be > 0"),
    "result_object": (lambda ts: ts[0]["annotations"][-1].update(result={}), "task[0] id=100 annotations[1]",
                      '"result" must be a list'),
    "annotations_text": (lambda ts: ts[0].update(annotations="done"), "task[0] id=100", '"annotations" must be a list'),
    "region_text": (lambda ts: ts[0]["annotations"][-1]["result"].__setitem__(1, "m10"), "task[0] id=100 result[1]",
                    "must be a rectanglelabels region"),
}


@pytest.mark.parametrize("case", sorted(VANISHING))
def test_unreadable_review_values_are_one_line_naming_task_and_result(case: str, original, tmp_path: Path, capsys) -> None:
    """Never a traceback, never a dropped reviewed box recorded as a rejection."""
    src, data = original
    edit, where, rule = VANISHING[case]
    p = tmp_path / "export.json"
    p.write_text(json.dumps(_ls_export(data, edit)))
    out = tmp_path / "out.json"
    rc = main(["data", "merge-reviewed", str(src), str(p), "--format", "labelstudio", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and where in err and (rule or "must be a finite number") in err, err
    assert not out.exists()


# -------------------------------------------------------------------------------- property: mutated exports

HOSTILE_JSON = ["abc", float("nan"), float("inf"), -1e9, 1e300, None, [], {}]
HOSTILE_XML = ["abc", "nan", "inf", "-1e9", "1e308", ""]


def _json_slots(x, path=()):
    """Every (path, key) of a JSON document: a place to put a hostile value."""
    items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
    for k, v in items:
        yield path, k
        yield from _json_slots(v, path + (k,))


def _at(x, path):
    for k in path:
        x = x[k]
    return x


def _merge(src: Path, review: Path, fmt: str, out: Path, capsys) -> tuple[int, str, dict | None]:
    if out.exists():
        out.unlink()
    rc = main(["data", "merge-reviewed", str(src), str(review), "--format", fmt, "--out", str(out)])
    err = capsys.readouterr().err
    return rc, err, json.loads(out.read_text()) if out.exists() else None


def _one_line_or_same(rc: int, err: str, got: dict | None, baseline: dict) -> None:
    """A mutated export either is refused in one line (nothing written) or merges exactly as the valid one did:
    no box dropped, none invented, none turned into a rejection."""
    if rc == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("minedet: error:") and got is None, err
    else:
        assert rc == 0 and got == baseline, err


@settings(max_examples=50, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_label_studio_export_is_refused_or_merges_the_same(original, tmp_path: Path, capsys, data) -> None:
    src, mined = original
    valid = _ls_export(mined)
    p, out = tmp_path / "export.json", tmp_path / "out.json"
    p.write_text(json.dumps(valid))
    rc, err, baseline = _merge(src, p, "labelstudio", out, capsys)
    assert rc == 0 and baseline is not None, err
    export = copy.deepcopy(valid)
    for _ in range(data.draw(st.integers(1, 3))):
        slots = list(_json_slots(export))
        path, key = data.draw(st.sampled_from(slots))
        parent = _at(export, path)
        if isinstance(parent, dict) and data.draw(st.booleans()):
            del parent[key]
        else:
            parent[key] = data.draw(st.sampled_from(HOSTILE_JSON))
    p.write_text(json.dumps(export))
    _one_line_or_same(*_merge(src, p, "labelstudio", out, capsys), baseline)


@settings(max_examples=50, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_cvat_export_is_refused_or_merges_the_same(original, tmp_path: Path, capsys, data) -> None:
    src, mined = original
    valid = review_cvat(review_cvat_xml(mined, image_ids=[1, 2, 4]))
    p, out = tmp_path / "annotations.xml", tmp_path / "out.json"
    p.write_bytes(valid)
    rc, err, baseline = _merge(src, p, "cvat", out, capsys)
    assert rc == 0 and baseline is not None, err
    root = ET.fromstring(valid)
    for _ in range(data.draw(st.integers(1, 3))):
        slots = [(el, k) for el in root.iter() if el.tag in ("image", "box") for k in el.attrib
                 if k in ("name", "width", "height", "label", "xtl", "ytl", "xbr", "ybr")]  # what the reader uses
        el, key = data.draw(st.sampled_from(slots))
        if data.draw(st.booleans()):
            del el.attrib[key]
        else:
            el.set(key, data.draw(st.sampled_from(HOSTILE_XML)))
    p.write_bytes(ET.tostring(root))
    _one_line_or_same(*_merge(src, p, "cvat", out, capsys), baseline)
