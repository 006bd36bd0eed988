"""minedet mine: completed datasets, the co-generation filters, test-time agreement, PR against the
hidden truth, the review gallery and the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torchvision.ops import box_iou

from minedet.cli import main
from minedet.data.coco import load_coco, save_coco, validate_coco
from minedet.data.splits import sparsify
from minedet.errors import MinedetError
from minedet.mining import (
    augmented_view,
    gt_target,
    mine_dataset,
    pr_against_hidden,
    recall_at_precision,
    write_gallery,
)
from minedet.structures import Target
from tests.helpers import tiny_detector

DIGITS = [str(i) for i in range(10)]


def _confident(det, bias: torch.Tensor | float):
    """Make a random RetinaNet confident by its classification bias (and its scores varied): a float for every class, or a
    Tensor[K] per class (the head's channels are anchor-major: channel ``a * K + k``)."""
    head = det.model.head.classification_head
    per_class = torch.as_tensor(bias, dtype=torch.float32).reshape(-1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        # He-scaled weights instead of torchvision's std 0.01, so scores vary with the image (no ties)
        for m in head.modules():
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
        head.cls_logits.weight.mul_(2.0)
        head.cls_logits.bias.copy_(per_class.repeat(head.cls_logits.bias.numel() // per_class.numel()))
    return det.eval()


def _spread_bias() -> torch.Tensor:
    """Class k gets logit bias from -3 (class 0) to 0 (class 9): 4-50 boxes per image above 0.6."""
    return torch.linspace(-3.0, 0.0, 10)


@pytest.fixture(scope="module")
def det():
    return _confident(tiny_detector("retinanet", num_classes=10, image_size=64, class_names=DIGITS), _spread_bias())


@pytest.fixture(scope="module")
def sparse(tiny_digits, tmp_path_factory):
    """(sparse CocoData, hidden CocoData, the sparse JSON dict as on disk, image root, sparse path, hidden path)."""
    d = tmp_path_factory.mktemp("sparse")
    full = load_coco(tiny_digits.train_json)
    split = sparsify(full.raw, "easy", 0)
    sp, hp = d / "sparse.json", d / "sparse.hidden.json"
    save_coco(sp, split.kept)
    save_coco(hp, split.hidden, validate=False)
    return load_coco(sp), load_coco(hp), json.loads(sp.read_text()), tiny_digits.image_root, sp, hp


def _mine(det, data, root, **kw):
    kw.setdefault("score", 0.6)
    return mine_dataset(det, data, root, **kw)


def _rows(t: Target) -> set[tuple]:
    return {(*[round(v, 2) for v in b], int(k)) for b, k in zip(t.boxes.tolist(), t.labels.tolist())}


# --------------------------------------------------------------------------------------------------
# the library


def test_original_annotations_untouched_and_mined_fields(det, sparse) -> None:
    data, _, source, root, *_ = sparse
    before = copy.deepcopy(source)
    res = _mine(det, data, root, source=source)
    assert source == before  # input not mutated
    out = res.completed
    n = len(source["annotations"])
    assert out["annotations"][:n] == source["annotations"]
    assert out["images"] == source["images"] and out["categories"] == source["categories"]
    assert {k for k in out if k != "annotations"} == {k for k in source if k != "annotations"}
    new = out["annotations"][n:]
    assert len(new) == res.n_mined > 0
    ids = [a["id"] for a in out["annotations"]]
    assert len(set(ids)) == len(ids)
    assert [a["id"] for a in new] == list(range(max(a["id"] for a in source["annotations"]) + 1, max(ids) + 1))
    cat_ids = {c["id"] for c in source["categories"]}
    for a in new:
        assert a["mined"] is True and a["iscrowd"] == 0 and a["category_id"] in cat_ids
        assert a["score"] > 0.6
        x, y, w, h = a["bbox"]
        assert w >= 1 and h >= 1 and a["area"] == pytest.approx(w * h, abs=1e-3)
    # the completed dict loads back; mined boxes become pseudo-flagged targets there
    back = validate_coco(out, file="completed", strict=True)
    assert len(back.annotations) == len(out["annotations"])
    # mined Targets match the JSON
    per_image = {}
    for a in new:
        per_image.setdefault(a["image_id"], []).append(a)
    for iid, t in res.mined.items():
        assert len(t) == len(per_image.get(iid, []))
        if len(t):
            assert bool(t.flag("pseudo").all())
            assert torch.all(t.scores[:-1] >= t.scores[1:])  # sorted by score


def test_mined_boxes_never_duplicate_same_class_ground_truth(det, sparse) -> None:
    data, _, _, root, *_ = sparse
    loose = _mine(det, data, root, iou_gt=1.0, gt_match="same")  # nothing dropped for overlapping ground truth
    strict = _mine(det, data, root, iou_gt=0.4, gt_match="same")
    dup_loose = 0
    for im in data.images:
        iid = im["id"]
        gt = gt_target(data, iid)
        for res, name in ((strict, "strict"), (loose, "loose")):
            m = res.mined[iid]
            if len(m) == 0 or len(gt) == 0:
                continue
            iou = box_iou(m.boxes, gt.boxes) * (m.labels[:, None] == gt.labels[None, :])
            if name == "strict":
                assert float(iou.max()) <= 0.4
            else:
                dup_loose += int((iou > 0.4).any(1).sum())
        assert _rows(strict.mined[iid]) <= _rows(loose.mined[iid])
    assert dup_loose > 0  # the rule had something to drop
    assert strict.n_mined == loose.n_mined - dup_loose


def test_by_default_a_labelled_box_of_any_class_is_not_mined_again(det, sparse) -> None:
    data, _, _, root, *_ = sparse
    same = _mine(det, data, root, iou_gt=0.4, gt_match="same", score=0.05)
    anyc = _mine(det, data, root, iou_gt=0.4, score=0.05)
    assert anyc.settings.gt_match == "any"
    other_class_dups = 0
    for im in data.images:
        iid = im["id"]
        gt = gt_target(data, iid)
        assert _rows(anyc.mined[iid]) <= _rows(same.mined[iid])
        if len(gt) and len(anyc.mined[iid]):
            assert float(box_iou(anyc.mined[iid].boxes, gt.boxes).max()) <= 0.4
        if len(gt) and len(same.mined[iid]):
            other_class_dups += int((box_iou(same.mined[iid].boxes, gt.boxes) > 0.4).any(1).sum())
    assert other_class_dups > 0 and anyc.n_mined == same.n_mined - other_class_dups
    with pytest.raises(MinedetError, match="gt_match"):
        _mine(det, data, root, gt_match="class")


def test_part_drops_mined_boxes_lying_mostly_on_labelled_boxes(det, sparse) -> None:
    data, _, _, root, *_ = sparse
    plain = _mine(det, data, root, iou_gt=0.4, score=0.05)
    parted = _mine(det, data, root, iou_gt=0.4, score=0.05, part=0.3)
    assert parted.settings.part == 0.3 and plain.settings.part is None
    dropped = 0
    for im in data.images:
        iid = im["id"]
        gt = gt_target(data, iid)
        assert _rows(parted.mined[iid]) <= _rows(plain.mined[iid])
        for b in parted.mined[iid].boxes:
            lt, rb = torch.maximum(b[:2], gt.boxes[:, :2]), torch.minimum(b[2:], gt.boxes[:, 2:])
            on = float((rb - lt).clamp(min=0).prod(-1).sum()) if len(gt) else 0.0
            assert on < 0.3 * float((b[2:] - b[:2]).prod())
        dropped += len(plain.mined[iid]) - len(parted.mined[iid])
    assert dropped > 0  # the rule had something to drop
    with pytest.raises(MinedetError, match="part"):
        _mine(det, data, root, part=0.0)


def test_images_without_boxes(det, sparse, tiny_digits) -> None:
    data, _, source, root, *_ = sparse
    bare = dict(source, annotations=[])
    bare_data = validate_coco(bare, file="bare.json")
    res = _mine(det, bare_data, root, source=bare)
    assert res.n_mined > 0 and set(res.mined) == {im["id"] for im in bare["images"]}
    assert all(a["mined"] for a in res.completed["annotations"])
    assert [a["id"] for a in res.completed["annotations"]] == list(range(1, res.n_mined + 1))
    # a detector that finds nothing: the completed dict is the source, every image maps to no box
    shy = _confident(tiny_detector("retinanet", num_classes=10, image_size=64, class_names=DIGITS), -10.0)
    res = _mine(shy, data, root, source=source)
    assert res.completed == source and res.n_mined == 0 and len(res.mined) == len(data.images)
    assert res.gains() == []


def test_filtering_collected_candidates_equals_mining_at_that_threshold(det, sparse) -> None:
    data, _, _, root, *_ = sparse
    for agree in ("none", "flip"):
        low = _mine(det, data, root, score=0.6, collect_down_to=0.3, agree=agree)
        assert low.settings.floor == pytest.approx(0.3)
        for t in (0.6,):  # the operating point: the completed JSON must not depend on the floor
            direct = _mine(det, data, root, score=t, agree=agree)
            filtered = low.at_threshold(t)
            for iid in direct.mined:
                assert _rows(filtered[iid]) == _rows(direct.mined[iid]), (agree, t, iid)
        assert sum(len(v) for v in low.candidates.values()) > low.n_mined  # the floor collected more
    with pytest.raises(MinedetError, match="below the lowest collected"):
        low.at_threshold(0.2)


def test_agreement_only_removes_boxes(det, sparse) -> None:
    data, _, _, root, *_ = sparse
    base = _mine(det, data, root)
    assert base.n_mined > 0
    removed = 0
    for agree in ("color", "flip"):
        res = _mine(det, data, root, agree=agree)
        for iid, t in res.mined.items():
            assert _rows(t) <= _rows(base.mined[iid])
            if len(t):
                assert torch.all(res.gates[iid][: len(t)] > 0.6)
                # reported score = mean of the two views; the gate (min of both) never exceeds it
                assert torch.all(res.gates[iid][: len(t)] <= t.scores + 1e-6)
        removed += base.n_mined - res.n_mined
        again = _mine(det, data, root, agree=agree)  # the colour view is seeded: same result
        assert all(torch.equal(again.mined[i].boxes, res.mined[i].boxes) for i in res.mined)
    assert removed > 0


def test_augmented_view_maps_back_and_is_seeded() -> None:
    img = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(0))
    flipped, m = augmented_view(img, "flip", image_id=1)
    assert torch.equal(flipped, img.flip(-1))
    assert torch.allclose(m.apply(torch.tensor([[2.0, 3.0, 10.0, 8.0]])), torch.tensor([[20.0, 3.0, 28.0, 8.0]]))
    a, _ = augmented_view(img, "color", image_id=5, seed=0)
    b, _ = augmented_view(img, "color", image_id=5, seed=0)
    c, _ = augmented_view(img, "color", image_id=6, seed=0)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, img)
    with pytest.raises(MinedetError):
        augmented_view(img, "blur", image_id=1)


def test_bad_settings_and_class_mismatch(det, sparse) -> None:
    data, _, _, root, *_ = sparse
    with pytest.raises(MinedetError, match="score"):
        mine_dataset(det, data, root, score=1.5)
    with pytest.raises(MinedetError, match="agree"):
        mine_dataset(det, data, root, agree="blur")
    other = tiny_detector("retinanet", num_classes=3, image_size=64, class_names=["a", "b", "c"])
    with pytest.raises(MinedetError, match="trained on classes"):
        mine_dataset(other, data, root)
    with pytest.raises(MinedetError, match="not found"):
        mine_dataset(det, data, root / "nope")


def _hand_data():
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    images = [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in (1, 2, 3)]
    data = validate_coco({"images": images, "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}], "categories": cats}, file="d.json")
    hidden = validate_coco({"images": images, "annotations": [
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 20, 20]},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [10, 10, 30, 30]},
        {"id": 4, "image_id": 2, "category_id": 2, "bbox": [60, 10, 30, 30]},
    ], "categories": cats}, file="h.json")
    return data, hidden


def _t(boxes, labels, scores, iid):
    return Target(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.int64),
                  torch.tensor(scores, dtype=torch.float32), image_id=iid)


def test_pr_against_hidden_hand_built() -> None:
    data, hidden = _hand_data()
    exact = {
        1: _t([[50, 50, 70, 70]], [1], [0.95], 1),
        2: _t([[10, 10, 40, 40], [60, 10, 90, 40]], [0, 1], [0.95, 0.95], 2),
        3: _t([], [], [], 3),  # an image with nothing hidden and nothing mined
    }
    rows = pr_against_hidden(exact, hidden, data, [0.3, 0.5, 0.9])
    assert [r["threshold"] for r in rows] == [0.3, 0.5, 0.9]
    for r in rows:
        assert (r["precision"], r["recall"], r["tp"], r["n_mined"], r["n_hidden"]) == (1.0, 1.0, 3, 3, 3)
        assert r["miou"] == pytest.approx(1.0)
    # a partial case: one right box (0.8), a wrong-class box on a hidden box (0.7), a false box (0.4)
    partial = {
        2: _t([[10, 10, 40, 40], [60, 10, 90, 40], [0, 60, 20, 90]], [0, 0, 1], [0.8, 0.7, 0.4], 2),
    }
    rows = pr_against_hidden(partial, hidden, data, [0.3, 0.5, 0.75, 0.9])
    got = [(r["n_mined"], r["tp"], r["precision"], r["recall"]) for r in rows]
    assert got[0] == (3, 1, pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert got[1] == (2, 1, 0.5, pytest.approx(1 / 3))
    assert got[2] == (1, 1, 1.0, pytest.approx(1 / 3))
    assert got[3][:2] == (0, 0) and got[3][3] == 0.0 and got[3][2] != got[3][2]  # precision undefined (NaN)
    best = recall_at_precision(rows, 0.9)
    assert best["threshold"] == 0.75 and best["recall"] == pytest.approx(1 / 3)
    assert recall_at_precision(rows[:2], 0.9) is None


def test_pr_against_hidden_refuses_other_categories_and_images() -> None:
    data, hidden = _hand_data()
    other = validate_coco(dict(hidden.raw, categories=[{"id": 1, "name": "cat"}, {"id": 2, "name": "cow"}]), file="h2.json")
    with pytest.raises(MinedetError, match="categories"):
        pr_against_hidden({}, other, data)
    extra = validate_coco(dict(hidden.raw, images=hidden.raw["images"] + [{"id": 9, "file_name": "9.png", "width": 9, "height": 9}],
                               annotations=hidden.raw["annotations"] + [{"id": 9, "image_id": 9, "category_id": 1, "bbox": [0, 0, 5, 5]}]),
                          file="h3.json")
    with pytest.raises(MinedetError, match="image id=9"):
        pr_against_hidden({}, extra, data)


def test_pr_on_a_mine_result_uses_gates(det, sparse) -> None:
    data, hidden, _, root, *_ = sparse
    res = _mine(det, data, root, collect_down_to=0.3)
    rows = pr_against_hidden(res, hidden, data, [0.3, 0.6, 0.9])
    assert [r["n_mined"] for r in rows] == [sum(len(v) for v in res.at_threshold(t).values()) for t in (0.3, 0.6, 0.9)]
    assert rows[1]["n_mined"] == res.n_mined
    assert all(r["n_hidden"] == len(hidden.annotations) for r in rows)
    with pytest.raises(MinedetError, match="below the lowest"):
        pr_against_hidden(res, hidden, data, [0.2])


def test_gallery_sorted_by_gain(det, sparse, tmp_path) -> None:
    data, _, _, root, *_ = sparse
    res = _mine(det, data, root)
    entries = write_gallery(res, data, root, tmp_path / "g", max_images=3)
    assert len(entries) == 3
    assert [e["mined"] for e in entries] == sorted((e["mined"] for e in entries), reverse=True)
    assert entries[0]["mined"] == max(len(t) for t in res.mined.values())
    page = (tmp_path / "g" / "index.html").read_text()
    for e in entries:
        assert (tmp_path / "g" / e["png"]).stat().st_size > 0 and e["png"] in page
    assert not list((tmp_path / "g").glob(".*"))


# --------------------------------------------------------------------------------------------------
# the command


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An exported, loadable small RetinaNet over the digits classes, made confident by its bias.

    Its backbone is the tests' TinyFPN, registered under a test-only name in the backbone registry
    for the duration of this module (so ``load_model`` rebuilds it, fast, as it would a real one).
    """
    from minedet.engine.checkpoint import export_model
    from minedet.models import backbones
    from minedet.models.build import DetectorSpec, build_detector
    from tests.helpers import TinyFPN

    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(backbones.BACKBONES, "test_tiny_fpn", lambda *, fpn_channels, **_: TinyFPN(fpn_channels))
        torch.manual_seed(0)
        spec = DetectorSpec(name="retinanet", num_classes=10, class_names=DIGITS, backbone="test_tiny_fpn",
                            image_size=64, max_size=64, fpn_channels=32, anchor_scale=2.0)
        d = _confident(build_detector(spec, pretrained=False), _spread_bias())
        path = tmp_path_factory.mktemp("model") / "model.pt"
        export_model(path, d, {"method": "test"})
        yield path


def _no_temp_files(*dirs: Path) -> None:
    for d in dirs:
        assert not [p for p in d.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"], d


def test_cli_writes_completed_json_gallery_and_pr(model_file, sparse, tmp_path, capsys, tiny_digits) -> None:
    data, hidden, source, root, sp, hp = sparse
    out = tmp_path / "out" / "completed.json"
    gal = tmp_path / "gallery"
    rc = main(["mine", str(model_file), str(sp), "--images", str(root), "--out", str(out), "--hidden", str(hp),
               "--gallery", str(gal), "--gallery-images", "4", "--agree", "flip", "--device", "cpu", "--quiet"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert "mined boxes per class" in cap.out and "recall at precision >= 0.9" in cap.out
    completed = load_coco(out)
    n = len(source["annotations"])
    raw = json.loads(out.read_text())
    assert raw["annotations"][:n] == source["annotations"]
    assert all(a.get("mined") for a in raw["annotations"][n:])
    summary = json.loads((gal / "summary.json").read_text())
    assert summary["mined_boxes"] == len(raw["annotations"]) - n
    assert sum(c["mined"] for c in summary["per_class"]) == summary["mined_boxes"]
    pr = json.loads((gal / "pr.json").read_text())
    assert [r["threshold"] for r in pr["rows"]] == pytest.approx([0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    assert all(r["n_hidden"] == len(hidden.annotations) for r in pr["rows"])
    assert "recall_at_precision_0.9" in pr
    row6 = next(r for r in pr["rows"] if abs(r["threshold"] - 0.6) < 1e-9)
    assert row6["n_mined"] == summary["mined_boxes"]
    assert (gal / "pr.png").stat().st_size > 0 and (gal / "index.html").is_file()
    pngs = sorted(gal.glob("0*_image*.png"))
    assert 0 < len(pngs) <= 4
    _no_temp_files(out.parent, gal)

    # round trip: the completed JSON trains (mined boxes are pseudo-labelled ground truth there)
    from minedet.run import run_training
    from tests.conftest import tiny_config

    assert len(completed.annotations) == len(raw["annotations"])
    cfg = tiny_config(tiny_digits, tmp_path / "run", data__train=str(out), train__max_steps=2, train__ckpt_every=2)
    result = run_training(cfg, quiet=True)
    assert result["steps"] == 2


def test_cli_without_gallery_writes_reports_beside_out(model_file, sparse, tmp_path, capsys) -> None:
    data, _, _, root, sp, hp = sparse
    out = tmp_path / "c.json"
    rc = main(["mine", str(model_file), str(sp), "--images", str(root), "--out", str(out), "--hidden", str(hp),
               "--score", "0.7", "--device", "cpu", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert {p.name for p in tmp_path.iterdir()} == {"c.json", "c.summary.json", "c.pr.json", "c.pr.png",
                                                   "c.labelstudio.json", "c.labelstudio.xml", "c.cvat.xml"}
    # --part reaches the filter: the same run with it mines fewer boxes
    parted = tmp_path / "p" / "c.json"
    parted.parent.mkdir()
    rc = main(["mine", str(model_file), str(sp), "--images", str(root), "--out", str(parted), "--score", "0.05",
               "--part", "0.3", "--device", "cpu", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    plain = tmp_path / "q" / "c.json"
    plain.parent.mkdir()
    assert main(["mine", str(model_file), str(sp), "--images", str(root), "--out", str(plain), "--score", "0.05",
                 "--device", "cpu", "--quiet"]) == 0
    n_mined = [sum(1 for a in json.loads(f.read_text())["annotations"] if a.get("mined")) for f in (parted, plain)]
    assert n_mined[0] < n_mined[1]


def test_cli_class_mismatch_is_one_line_exit_2(model_file, tiny_digits, tmp_path, capsys) -> None:
    d = json.loads(Path(tiny_digits.train_json).read_text())
    d["categories"] = [dict(c, name=f"digit{c['name']}") for c in d["categories"]]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(d))
    out = tmp_path / "o.json"
    rc = main(["mine", str(model_file), str(bad), "--images", str(tiny_digits.image_root), "--out", str(out),
               "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "trained on classes" in err
    assert not out.exists()
    _no_temp_files(tmp_path)


@pytest.mark.parametrize("case", ["model", "data", "images", "image_file", "image_size", "hidden", "same_out"])
def test_cli_bad_inputs_are_one_line_exit_2(case, model_file, sparse, tmp_path, capsys) -> None:
    data, _, source, root, sp, hp = sparse
    args = {"model": str(model_file), "data": str(sp), "images": str(root), "out": str(tmp_path / "o.json"), "hidden": None}
    if case == "model":
        (tmp_path / "m.pt").write_bytes(b"not a model")
        args["model"] = str(tmp_path / "m.pt")
    elif case == "data":
        args["data"] = str(tmp_path / "missing.json")
    elif case == "images":
        args["images"] = str(tmp_path / "no_images")
    elif case == "image_file":
        d = copy.deepcopy(source)
        d["images"][0]["file_name"] = "gone.png"
        (tmp_path / "d.json").write_text(json.dumps(d))
        args["data"] = str(tmp_path / "d.json")
    elif case == "image_size":  # boxes would land in the wrong frame: refuse
        d = copy.deepcopy(source)
        d["images"][0]["width"] += 8
        (tmp_path / "d.json").write_text(json.dumps(d))
        args["data"] = str(tmp_path / "d.json")
    elif case == "hidden":
        args["hidden"] = str(tmp_path / "missing.hidden.json")
    elif case == "same_out":
        args["out"] = str(sp)
    argv = ["mine", args["model"], args["data"], "--images", args["images"], "--out", args["out"], "--device", "cpu", "--quiet"]
    if args["hidden"]:
        argv += ["--hidden", args["hidden"]]
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and err.startswith("minedet: error:"), err
    assert not (tmp_path / "o.json").exists()
    _no_temp_files(tmp_path)


@pytest.mark.parametrize("fmt", ["labelstudio", "cvat"])
def test_cli_review_round_trip(fmt, model_file, sparse, tmp_path, capsys) -> None:
    """mine -> the review file a tool imports -> a scripted reviewer edits it as the tool would export it (accept,
    move one 3 px, reject one, add one) -> merge-reviewed: every box and its provenance."""
    import xml.etree.ElementTree as ET

    data, _, source, root, sp, _ = sparse
    out = tmp_path / "m.json"
    rc = main(["mine", str(model_file), str(sp), "--images", str(root), "--out", str(out), "--device", "cpu", "--quiet",
               "--review-root", str(root.parent)])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "review:" in printed  # and the Label Studio set-up: two environment variables, the storage step
    assert "  export LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true\n" in printed
    assert f"  export LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root.parent.absolute()}\n" in printed
    assert f"Add Source Storage > Local files, absolute path {root.absolute()} " in printed
    mined = [a for a in json.loads(out.read_text())["annotations"] if a.get("mined")]
    reject = mined[0]
    move = next(a for a in mined if a["image_id"] != reject["image_id"])
    add_on = reject["image_id"]
    im_of = {im["id"]: im for im in source["images"]}
    if fmt == "labelstudio":
        tasks = json.loads(out.with_name("m.labelstudio.json").read_text())
        assert {t["data"]["minedet_image_id"] for t in tasks} == {a["image_id"] for a in mined}
        im_by_id = {im["id"]: im for im in source["images"]}  # ?d= is the image's path under the document root
        assert all(t["data"]["image"] == f"/data/local-files/?d={root.name}/{im_by_id[t['data']['minedet_image_id']]['file_name']}"
                   for t in tasks)
        for t in tasks:
            result = [dict(r) for r in t["predictions"][0]["result"] if r["id"] != f"m{reject['id']}"]
            for r in result:
                if r["id"] == f"m{move['id']}":
                    r["value"] = dict(r["value"], x=r["value"]["x"] + 3 * 100 / r["original_width"])
            if t["data"]["minedet_image_id"] == add_on:
                result.append({"id": "new1", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
                               "value": {"x": 0, "y": 0, "width": 10, "height": 10, "rotation": 0, "rectanglelabels": ["7"]}})
            t["annotations"] = [{"id": 1, "result": result, "was_cancelled": False}]
        review = tmp_path / "export.json"
        review.write_text(json.dumps(tasks))
    else:
        xml = ET.fromstring(out.with_name("m.cvat.xml").read_bytes())
        by_name = {img.get("name"): img for img in xml.iter("image")}

        def find(a):
            x, y, w, h = a["bbox"]
            img = by_name[im_of[a["image_id"]]["file_name"]]
            want = [x, y, x + w, y + h]
            return img, next(b for b in img.iter("box") if b.get("source") == "auto"
                             and [float(b.get(k)) for k in ("xtl", "ytl", "xbr", "ybr")] == pytest.approx(want, abs=1e-6))

        img, b = find(reject)
        img.remove(b)
        _, b = find(move)
        b.set("xtl", str(float(b.get("xtl")) + 3))
        b.set("xbr", str(float(b.get("xbr")) + 3))
        w, h = im_of[add_on]["width"], im_of[add_on]["height"]
        ET.SubElement(by_name[im_of[add_on]["file_name"]], "box", {"label": "7", "xtl": "0", "ytl": "0",
                                                                    "xbr": str(w / 10), "ybr": str(h / 10)})
        review = tmp_path / "annotations.xml"
        review.write_bytes(ET.tostring(xml))
    done = tmp_path / "done.json"
    rc = main(["data", "merge-reviewed", str(out), str(review), "--format", fmt, "--out", str(done)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    d = json.loads(done.read_text())
    prov = {a["id"]: a["provenance"] for a in d["annotations"]}
    for a in source["annotations"]:
        assert prov[a["id"]] == "labelled"
    for a in mined:
        want = {reject["id"]: None, move["id"]: "mined-corrected"}.get(a["id"], "mined-accepted")
        assert prov.get(a["id"]) == want, (a, want)
    anns = {a["id"]: a for a in d["annotations"]}
    assert anns[move["id"]]["bbox"][0] == pytest.approx(move["bbox"][0] + 3, abs=0.01)
    assert all(anns[a["id"]]["bbox"] == a["bbox"] for a in mined if prov.get(a["id"]) == "mined-accepted")
    added = [a for a in d["annotations"] if a["provenance"] == "added"]
    assert len(added) == 1 and added[0]["image_id"] == add_on
    assert [r["id"] for r in d["rejected"]] == [reject["id"]]
    assert f"mined-accepted {len(mined) - 2}, mined-corrected 1, added 1, rejected 1" in cap.out


def test_your_own_data_loop_at_toy_scale(model_file, sparse, tiny_digits, tmp_path, capsys) -> None:
    """The README's loop at toy scale: YOLO labels in -> COCO -> mine -> review in Label Studio -> merge-reviewed ->
    train again on the merged file (the model_file fixture stands in for the first `minedet train`)."""
    from minedet.run import run_training
    from tests.conftest import tiny_config

    _, _, source, root, sp, _ = sparse
    yolo = tmp_path / "yolo"  # the user's own data, as YOLO labels
    assert main(["data", "convert", str(sp), "--to", "yolo", "--out", str(yolo)]) == 0
    own = tmp_path / "own.json"
    assert main(["data", "convert", "--from", "yolo", str(yolo / "labels" / "train"), "--images", str(root / "train"),
                 "--names", str(yolo / "data.yaml"), "--out", str(own)]) == 0
    assert len(json.loads(own.read_text())["annotations"]) == len(source["annotations"])
    mined = tmp_path / "mined.json"
    assert main(["mine", str(model_file), str(own), "--images", str(root / "train"), "--out", str(mined),
                 "--device", "cpu", "--quiet"]) == 0
    tasks = json.loads(mined.with_name("mined.labelstudio.json").read_text())
    for t in tasks:  # the reviewer keeps every box but the least confident mined one of each image
        regions = t["predictions"][0]["result"]
        worst = min((r for r in regions if "score" in r), key=lambda r: r["score"])
        t["annotations"] = [{"id": 1, "was_cancelled": False, "result": [r for r in regions if r is not worst]}]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    done = tmp_path / "done.json"
    capsys.readouterr()
    assert main(["data", "merge-reviewed", str(mined), str(export), "--format", "labelstudio", "--out", str(done)]) == 0
    assert f"rejected {len(tasks)}" in capsys.readouterr().out
    assert len(json.loads(done.read_text())["rejected"]) == len(tasks) > 0
    cfg = tiny_config(tiny_digits, tmp_path / "run", data__train=str(done), data__train_images=str(root / "train"),
                      train__max_steps=2, train__ckpt_every=2)
    assert run_training(cfg, quiet=True)["steps"] == 2


def test_boxes_a_reviewer_rejected_are_not_mined_again(det, sparse) -> None:
    data, _, source, root, *_ = sparse
    first = _mine(det, data, root, source=source)
    iid, t = next((i, t) for i, t in first.mined.items() if len(t))
    x1, y1, x2, y2 = t.boxes[0].tolist()
    d = copy.deepcopy(source)
    d["rejected"] = [{"id": 1, "image_id": iid, "category_id": data.cat_id_of(int(t.labels[0])),
                      "bbox": [x1, y1, x2 - x1, y2 - y1], "provenance": "rejected"}]
    again = _mine(det, validate_coco(d, file="round2.json"), root, source=d)
    assert again.completed["rejected"] == d["rejected"]
    kept, before = _rows(again.mined[iid]), _rows(first.mined[iid])
    assert kept < before and _rows(t.select(torch.tensor([0]))) & kept == set()
    gone = before - kept
    rej = torch.tensor([[x1, y1, x2, y2]])
    for row in gone:  # only boxes on the rejected one went
        assert float(box_iou(torch.tensor([row[:4]]), rej)) > 0.4
    assert all(_rows(again.mined[i]) == _rows(first.mined[i]) for i in first.mined if i != iid)
