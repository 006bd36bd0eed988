"""``propose_score``: the mining score proposed from the model's detections on the labelled boxes, and
``minedet mine`` without ``--score``."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from minedet.cli import main
from minedet.errors import MinedetError
from minedet.mining import precision_recall, propose_score
from tests.test_mine import model_file, sparse  # noqa: F401 - fixtures

LABEL = [10.0, 10.0, 30.0, 30.0]
SHIFTED = [18.0, 18.0, 38.0, 38.0]  # centre inside LABEL, IoU 0.22: a wrong box on a labelled object
OFF = [40.0, 40.0, 60.0, 60.0]  # on no labelled box: a false positive or an object nobody labelled


def _images(right_scores, wrong_scores, off_scores=()):
    """One image per right score: LABEL labelled, detected exactly (right) and shifted (wrong), and OFF detected."""
    dets, targets = [], []
    for i, r in enumerate(right_scores):
        rows = [(LABEL, r), (SHIFTED, wrong_scores[i])] + ([(OFF, off_scores[i])] if off_scores else [])
        dets.append({"boxes": [b for b, _ in rows], "scores": [s for _, s in rows], "labels": [0] * len(rows)})
        targets.append({"boxes": [LABEL], "labels": [0]})
    return dets, targets


def test_score_is_just_below_where_detections_on_labelled_boxes_become_right():
    right = torch.linspace(0.5, 0.95, 20).tolist()
    wrong = torch.linspace(0.05, 0.45, 20).tolist()
    p = propose_score(*_images(right, wrong))
    assert p.score == pytest.approx(0.49) and p.n_region == 40 and p.n_images == 20
    assert p.precision == 1.0 and p.precision_all == 1.0
    assert [c["precision"] for c in p.curve] == [0.0, 1.0]
    # detections on no labelled box may be objects nobody labelled: they lower only the reported lower bound
    q = propose_score(*_images(right, wrong, off_scores=[0.9] * 20))
    assert q.score == p.score and q.precision_all == pytest.approx(0.5)
    assert "0.49" in q.reason and "lower bound" in q.reason


def test_the_target_precision_moves_the_score_along_a_monotone_calibration():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(600, generator=g)
    right = torch.rand(600, generator=g) < scores  # P(right | score) = score
    dets = [{"boxes": [LABEL if ok else SHIFTED], "scores": [float(s)], "labels": [0]} for s, ok in zip(scores, right)]
    targets = [{"boxes": [LABEL], "labels": [0]}] * 600
    proposals = [propose_score(dets, targets, target_precision=t) for t in (0.5, 0.7, 0.9)]
    assert proposals[0].score < proposals[1].score < proposals[2].score
    for t, p in zip((0.5, 0.7, 0.9), proposals):
        above = right[scores > p.score].float().mean()
        assert above >= t - 0.05 and p.precision >= t
        assert all(a["precision"] <= b["precision"] for a, b in zip(p.curve, p.curve[1:]))


def test_no_proposal_without_support_or_when_the_target_is_never_reached():
    few = propose_score(*_images([0.9] * 5, [0.1] * 5))
    assert few.score is None and "only 10 detections" in few.reason
    never = propose_score(*_images([0.2] * 20, [0.9] * 20))  # the confident boxes are the wrong ones
    assert never.score is None and "train longer" in never.reason
    # right only above 0.9, and only 5 of them: too few to rest a score on
    thin = propose_score(*_images([0.95] * 5 + [0.3] * 25, [0.5] * 30))
    assert thin.score is None and "only 5 detections" in thin.reason
    empty = propose_score([{"boxes": [], "scores": [], "labels": []}], [{"boxes": [], "labels": []}])
    assert empty.score is None and empty.n_region == 0
    with pytest.raises(MinedetError, match="target precision"):
        propose_score(*_images([0.9] * 20, [0.1] * 20), target_precision=0.0)
    with pytest.raises(MinedetError, match="one target per image"):
        propose_score([], [{"boxes": [], "labels": []}])


def test_mine_without_score_proposes_one_and_says_what_to_do_when_nothing_is_mined(model_file, sparse, tmp_path,
                                                                                    capsys):
    _, _, _, root, sp, _ = sparse
    common = ["--images", str(root), "--device", "cpu", "--quiet"]
    # a random model: its detections on the labelled boxes are rarely right, so a low target is reachable
    assert main(["mine", str(model_file), str(sp), "--out", str(tmp_path / "a.json"), "--target-precision", "0.02",
                 *common]) == 0
    err = capsys.readouterr().err
    assert "proposed from the model: of the" in err
    proposed = float(err.split("--score ")[1].split()[0])
    assert json.loads((tmp_path / "a.summary.json").read_text())["settings"]["score"] == proposed
    assert main(["mine", str(model_file), str(sp), "--out", str(tmp_path / "b.json"), *common]) == 0
    err = capsys.readouterr().err
    assert "no score proposed" in err and "never 70%" in err and "mining at --score 0.6" in err
    assert main(["mine", str(model_file), str(sp), "--out", str(tmp_path / "c.json"), "--score", "0.999", *common]) == 0
    err = capsys.readouterr().err
    assert "nothing mined: no detection off the labelled boxes scored above 0.999 (the best scored" in err
    suggested = err.split("try --score ")[1].split(",")[0]
    assert main(["mine", str(model_file), str(sp), "--out", str(tmp_path / "d.json"), "--score", suggested, *common]) == 0
    assert "nothing mined" not in capsys.readouterr().err  # the suggested score mines something


def test_a_complete_set_judges_every_detection_so_background_boxes_lower_the_calibration():
    """complete=True (a fully labelled set): a detection on no labelled box is wrong, so confident boxes on the
    background keep the proposal up (or off); on sparse labels they are not judged. A detection whose centre lies in a
    crowd region is not judged either."""
    right = torch.linspace(0.5, 0.95, 20).tolist()
    wrong = torch.linspace(0.05, 0.45, 20).tolist()
    sparse_p = propose_score(*_images(right, wrong, off_scores=[0.9] * 20))
    assert sparse_p.score == pytest.approx(0.49)
    full = propose_score(*_images(right, wrong, off_scores=[0.99] * 20), complete=True)  # above every right one
    assert full.score is None and full.n_region == 60 and "expect most mined boxes to be wrong" in full.reason
    lower = propose_score(*_images(right, wrong, off_scores=[0.3] * 20), complete=True)  # background boxes score low
    assert lower.score == pytest.approx(0.49) and "complete set's 20 images" in lower.reason
    dets, targets = _images(right, wrong, off_scores=[0.9] * 20)
    crowd = [{**t, "crowd": [[35.0, 35.0, 65.0, 65.0]]} for t in targets]  # OFF's centre is in it: not judged
    assert propose_score(dets, crowd, complete=True).score == pytest.approx(0.49)


def test_mine_calibrates_on_a_fully_labelled_set_when_asked(model_file, sparse, tiny_digits, tmp_path, capsys):
    """--calibrate VAL.json --calibrate-images DIR: the proposal is made on the val set, every detection judged, and
    says so (with --folds: every fold's model on every val image); the option refuses --score and a missing image
    folder in one line, before any work."""
    _, _, _, root, sp, _ = sparse
    common = ["--images", str(root), "--device", "cpu", "--quiet"]
    cal = ["--calibrate", str(tiny_digits.val_json), "--calibrate-images", str(tiny_digits.image_root)]
    # a random model: on the val set none of its detections is right, so nothing is proposed, and mine says why
    assert main(["mine", str(model_file), str(sp), "--out", str(tmp_path / "a.json"), "--target-precision", "0.02",
                 *cal, *common]) == 0
    err = capsys.readouterr().err
    assert "no score proposed (the model's detections on the complete set's images are right at most 0%" in err
    assert "expect most mined boxes to be wrong" in err
    # on the training file (a few of its detections are right) a low target is reached, every detection judged
    assert main(["mine", str(model_file), str(sp), "--out", str(tmp_path / "c.json"), "--target-precision", "0.001",
                 "--calibrate", str(sp), "--calibrate-images", str(root), *common]) == 0
    err = capsys.readouterr().err
    assert f"proposed from the model on {sp}: of the" in err and "complete set's" in err
    single, n = err.split("--score ")[1].split(" ")[0], int(err.split(": of the ")[1].split(" ")[0])
    # with held-out folds every fold's model predicts every calibration image, calibrated together: the same model
    # in both folds doubles every detection, so the proposal is the single model's
    assert main(["data", "folds", str(sp), "--k", "2", "--seed", "1", "--out-dir", str(tmp_path / "folds")]) == 0
    for f in (0, 1):
        (tmp_path / f"run{f}").mkdir()
        shutil.copy(model_file, tmp_path / f"run{f}" / "model.pt")
    assert main(["mine", str(tmp_path / "run{fold}" / "model.pt"), str(sp), "--folds", str(tmp_path / "folds" / "folds.json"),
                 "--out", str(tmp_path / "f.json"), "--target-precision", "0.001", "--calibrate", str(sp),
                 "--calibrate-images", str(root), *common]) == 0
    err = capsys.readouterr().err
    assert f"--score {single} proposed from the fold models on {sp}: of the {2 * n} detections" in err
    for extra, says in ((["--score", "0.5"], "--score is given"), (cal[:2], "needs --calibrate-images")):
        args = ["mine", str(model_file), str(sp), "--out", str(tmp_path / "b.json"), *common]
        args += extra if extra == cal[:2] else [*cal, *extra]
        assert main(args) == 2
        assert says in capsys.readouterr().err and not (tmp_path / "b.json").exists()
    assert main(["mine", str(model_file), str(sp), "--out", str(tmp_path / "b.json"), "--calibrate-images",
                 str(root), *common]) == 2
    assert "--calibrate-images without --calibrate" in capsys.readouterr().err


def test_precision_recall_on_a_complete_set_judges_every_detection_and_counts_every_box():
    """Per threshold: detections scoring above it, the share matching a box (one detection per box, a duplicate or a
    shifted box is wrong, a background box is wrong, a box in a crowd region is not judged), and the share of boxes
    matched; an image with no boxes and no detections changes nothing; nothing above a threshold gives NaN."""
    dets = [{"boxes": [LABEL, LABEL, SHIFTED, OFF], "scores": [0.9, 0.8, 0.7, 0.6], "labels": [0, 0, 0, 0]},
            {"boxes": [OFF], "scores": [0.95], "labels": [0]},
            {"boxes": [], "scores": [], "labels": []}]
    targets = [{"boxes": [LABEL], "labels": [0]},
               {"boxes": [LABEL], "labels": [0], "crowd": [[35.0, 35.0, 65.0, 65.0]]},  # OFF lies in a crowd region
               {"boxes": [], "labels": []}]
    rows = precision_recall(dets, targets, [0.5, 0.75, 0.85, 0.99])
    assert [r["n"] for r in rows] == [4, 2, 1, 0] and [r["tp"] for r in rows] == [1, 1, 1, 0]
    assert all(r["n_boxes"] == 2 for r in rows)
    assert [r["precision"] for r in rows[:3]] == [0.25, 0.5, 1.0] and math.isnan(rows[3]["precision"])
    assert [r["recall"] for r in rows] == [0.5, 0.5, 0.5, 0.0]
    with pytest.raises(MinedetError, match="one target per image"):
        precision_recall(dets, targets[:2], [0.5])


def test_mine_without_score_predicts_each_image_once_and_mines_as_with_the_score_given(model_file, sparse, tmp_path,
                                                                                         capsys, monkeypatch):
    from minedet.models.detector import DetectorAdapter

    data, _, source, root, sp, hp = sparse
    # one image loses its labels: the proposal never sees it, so mining must predict it
    bare = dict(source, annotations=[a for a in source["annotations"] if a["image_id"] != source["images"][0]["id"]])
    (tmp_path / "in.json").write_text(json.dumps(bare))
    seen = []
    predict = DetectorAdapter.predict

    def counting(self, images, **kw):
        seen.extend(tuple(im.shape) for im in images)
        return predict(self, images, **kw)

    monkeypatch.setattr(DetectorAdapter, "predict", counting)
    common = ["--images", str(root), "--device", "cpu", "--quiet", "--hidden", str(hp)]
    assert main(["mine", str(model_file), str(tmp_path / "in.json"), "--out", str(tmp_path / "a.json"),
                 "--target-precision", "0.02", *common]) == 0
    proposed = capsys.readouterr().err.split("--score ")[1].split()[0]
    assert len(seen) == len(source["images"])  # the proposal's detections are mined, not made again
    seen.clear()
    assert main(["mine", str(model_file), str(tmp_path / "in.json"), "--out", str(tmp_path / "b.json"),
                 "--score", proposed, *common]) == 0
    assert len(seen) == len(source["images"])
    a, b = (json.loads((tmp_path / f"{x}.json").read_text()) for x in "ab")
    assert a["annotations"] == b["annotations"] and len(a["annotations"]) > len(bare["annotations"])
    mined_on_bare = [x for x in a["annotations"] if x["image_id"] == source["images"][0]["id"]]
    assert mined_on_bare == [x for x in b["annotations"] if x["image_id"] == source["images"][0]["id"]]


def test_agreement_keeps_the_boxes_the_view_agrees_with_at_the_gate_mining_compares(sparse):
    """With ``agree`` the calibration's detections are those the flipped view agrees with, each scored by its gate
    (the lower of the pair), never above its own score: the number mining thresholds, so a proposal holds for it."""
    from minedet.mining import calibration_detections
    from tests.test_mine import _confident, _spread_bias, DIGITS
    from tests.helpers import tiny_detector

    det = _confident(tiny_detector("retinanet", num_classes=10, image_size=64, class_names=DIGITS), _spread_bias())
    data, _, _, root, *_ = sparse
    plain, targets = calibration_detections(det, data, root, complete=True)
    agreed, again = calibration_detections(det, data, root, complete=True, agree="flip")
    assert [t["boxes"].tolist() for t in again] == [t["boxes"].tolist() for t in targets]
    assert sum(len(d["scores"]) for d in agreed) < sum(len(d["scores"]) for d in plain)
    assert sum(len(d["scores"]) for d in agreed) > 0
    for p, a in zip(plain, agreed):
        assert a["image_id"] == p["image_id"]
        own = {(*b, k): s for b, k, s in zip(p["boxes"].tolist(), p["labels"].tolist(), p["scores"].tolist())}
        for b, k, s in zip(a["boxes"].tolist(), a["labels"].tolist(), a["scores"].tolist()):
            assert (*b, k) in own and s <= own[(*b, k)] + 1e-6
    for bad, rule in (({"agree": "blur"}, "agree must be one of"), ({"agree_iou": 1.5}, "agree_iou must be"),
                      ({"floor": -0.1}, "floor must be"), ({"nms": 2}, "nms must be"), ({"max_dets": 0}, "max_dets must")):
        with pytest.raises(MinedetError, match=rule):
            calibration_detections(det, data, root, **bad)


def test_mine_agrees_with_a_flipped_view_when_the_model_trained_on_flips(model_file, sparse, tmp_path, capsys):
    """``--agree auto`` (the default): flip for a model trained on flipped images (its export says data.flip > 0),
    none otherwise, said with the results; the proposal then calibrates the agreed boxes only (fewer detections)."""
    from minedet.engine.checkpoint import export_model, load_model

    _, _, _, root, sp, _ = sparse
    det, meta = load_model(model_file)
    flipped = tmp_path / "flipped.pt"
    export_model(flipped, det, {**meta, "flip": 0.5})
    common = ["--images", str(root), "--device", "cpu", "--quiet", "--target-precision", "0.001",
              "--calibrate", str(sp), "--calibrate-images", str(root)]
    counts = {}
    says = "kept only boxes a flipped view agrees with (--agree auto: the model trained on flipped images"
    for name, model in (("plain", model_file), ("flip", flipped)):
        assert main(["mine", str(model), str(sp), "--out", str(tmp_path / f"{name}.json"), *common]) == 0
        out, err = capsys.readouterr()
        assert (says in out) == (name == "flip")
        counts[name] = int(err.split(": of the ")[1].split(" ")[0])
        assert json.loads((tmp_path / f"{name}.summary.json").read_text())["settings"]["agree"] == name.replace(
            "plain", "none")
    assert 0 < counts["flip"] < counts["plain"]
    assert main(["mine", str(flipped), str(sp), "--out", str(tmp_path / "off.json"), "--agree", "none", *common]) == 0
    out, err = capsys.readouterr()
    assert says not in out and f"of the {counts['plain']} " in err  # the switch: no agreement
