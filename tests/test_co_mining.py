"""Co-mining: one batched forward, complementary supervision, baselines as switches."""

from __future__ import annotations

import pytest
import torch

from minedet.pseudo.semantics import carry

from minedet.data.datasets import View, StreamBatch
from minedet.data.transforms import BoxMap
from minedet.methods.co_mining import DRIFT_WINDOW, PAPER_SETTINGS, CoMining, CoMiningOptions
from minedet.errors import MinedetError
from minedet.pseudo.quality import FALSE_KINDS
from minedet.structures import Target
from tests.helpers import random_targets, tiny_detector


def _opts(**kw) -> CoMiningOptions:
    """The release's behaviour (method.paper) with ``kw`` on top: each test switches on what it tests."""
    return CoMiningOptions(**{**PAPER_SETTINGS, **kw})


def _batch(n=2, size=64, seed=0, empty=()):
    g = torch.Generator().manual_seed(seed)
    targets = random_targets(n, size, empty=empty)
    m = BoxMap(size=(size, size))
    o = [View(torch.rand(3, size, size, generator=g), t, m) for t in targets]
    a = [View((v.image * 0.7 + 0.1).clamp(0, 1), v.target, m) for v in o]
    return {"labelled": StreamBatch(list(range(n)), [(0, 0)] * n, {"o": o, "a": a})}


def _confident(det):
    with torch.no_grad():
        for name, p in det.model.named_parameters():
            if name.endswith("cls_logits.bias"):
                p.fill_(2.0)


@pytest.mark.parametrize("name", ["retinanet", "fcos", "faster_rcnn"])
def test_step_returns_both_branch_losses_and_backpropagates(name):
    det = tiny_detector(name).train()
    m = CoMining(det, _opts(tau=0.3))
    losses = m(_batch(empty=(1,)))
    assert any(k.startswith("o/") for k in losses) and any(k.startswith("a/") for k in losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in det.parameters())


def test_branches_are_one_batched_forward():
    det = tiny_detector("retinanet").train()
    calls = []
    orig = det.forward_heads
    det.forward_heads = lambda images: calls.append(len(images)) or orig(images)
    CoMining(det)(_batch(n=3))
    assert calls == [6]


def test_complementary_supervision_uses_the_other_branch():
    """C_o = P^g_a ∪ Y and C_a = P^g_o ∪ Y: the loss of branch o sees what branch a mined."""
    det = tiny_detector("retinanet").train()
    _confident(det)
    m = CoMining(det, _opts(tau=0.5, iou_gt=0.4))
    seen = []
    orig = det.loss
    det.loss = lambda out, targets, background=None: seen.append(targets) or orig(out, targets, background)
    batch = _batch(n=2)
    m(batch)
    (t_o, t_a) = seen
    gts = [v.target for v in batch["labelled"].views["o"]]
    mined = {b: m.last_step.labels(b).confident for b in ("o", "a")}
    for i in range(2):
        assert len(t_o[i]) == len(gts[i]) + len(mined["a"][i])
        assert len(t_a[i]) == len(gts[i]) + len(mined["o"][i])
        assert torch.equal(t_o[i].boxes[: len(gts[i])], gts[i].boxes)
        assert t_o[i].flag("pseudo")[len(gts[i]):].all() and not t_o[i].flag("pseudo")[: len(gts[i])].any()
    assert sum(len(x) for x in mined["o"]) > 0, "a confident detector must mine boxes"


def test_mined_boxes_never_duplicate_same_class_ground_truth():
    det = tiny_detector("retinanet").train()
    _confident(det)
    m = CoMining(det, _opts(tau=0.5))
    batch = _batch(n=2)
    m(batch)
    from torchvision.ops import box_iou

    for name in ("o", "a"):
        for gt, p in zip([v.target for v in batch["labelled"].views[name]], m.last_step.labels(name).confident):
            if len(gt) and len(p):
                iou = box_iou(p.boxes, gt.boxes) * (p.labels[:, None] == gt.labels[None, :])
                assert float(iou.max()) <= 0.4


def test_gt_match_any_drops_other_class_boxes_on_labelled_objects():
    from torchvision.ops import box_iou

    from minedet.errors import MinedetError

    batch = _batch(n=2)
    worst = {}
    for mode in ("same", "any"):
        det = tiny_detector("retinanet").train()
        _confident(det)
        m = CoMining(det, _opts(tau=0.5, gt_match=mode))
        m(batch)
        worst[mode] = max(float(box_iou(p.boxes, v.target.boxes).max()) for v, p in
                          zip(batch["labelled"].views["o"], m.last_step.labels("o").confident) if len(p) and len(v.target))
    assert worst["any"] <= 0.4 < worst["same"]  # the release keeps other-class boxes on labelled objects
    with pytest.raises(MinedetError, match="gt_match"):
        CoMining(tiny_detector("retinanet"), _opts(gt_match="class"))


def test_high_tau_mines_nothing_and_equals_joint():
    det = tiny_detector("retinanet").train()
    batch = _batch(n=2)
    torch.manual_seed(0)
    cm = CoMining(det, _opts(tau=0.999))(batch)
    joint = CoMining(det, _opts(cogeneration=False))(batch)
    for k in joint:
        torch.testing.assert_close(cm[k], joint[k])


def test_single_branch_cogeneration_and_views():
    det = tiny_detector("retinanet").train()
    m = CoMining(det, _opts(siamese=False, tau=0.3))
    assert list(m.streams()["labelled"]) == ["o"]
    losses = m(_batch())
    assert all(k.startswith("o/") for k in losses)
    assert set(CoMining(det, _opts(view="blur")).streams()["labelled"]) == {"o", "a"}


def test_fcos_mines_on_the_class_probability_and_decodes_as_before():
    """The release gates FCOS pseudo-labels by class probability; the method asks decode for that rule
    per call and never changes how the detector decodes at evaluation (or in the exported model)."""
    det = tiny_detector("fcos", score_thresh=0.5).train()
    with torch.no_grad():
        head = det.model.head
        head.classification_head.cls_logits.bias.fill_(6.0)  # p ~ 0.998
        head.regression_head.bbox_ctrness.bias.fill_(-9.0)  # centerness ~ 1e-4 -> sqrt(p c) ~ 0.01
    m = CoMining(det, _opts(tau=0.5, max_dets=5))
    batch = _batch(n=2)
    m(batch)
    assert all(len(t) > 0 for t in m.last_step.labels("o").confident), "class probability 0.998 > tau: mined"
    det.eval()
    images = [v.image for v in batch["labelled"].views["o"]]
    assert all(len(t) == 0 for t in det.predict(images)), "evaluation keeps sqrt(p * centerness) ~ 0.01 < 0.5"


def test_carry_maps_boxes_between_flipped_views():
    t = Target(torch.tensor([[10.0, 5, 20, 15]]), torch.tensor([0]))
    moved = carry(t, BoxMap(size=(32, 64)), BoxMap(-1.0, 1.0, 64.0, 0.0, (32, 64)))
    assert moved.boxes.tolist() == [[44.0, 5.0, 54.0, 15.0]]


def test_end_to_end_on_sparse_digits_logs_quality_and_renders(tiny_digits, tmp_path):
    """run_training with co_mining on a 'hard' split: hidden truth is measured, never trained on."""
    import json

    from minedet.run import run_training
    from minedet.data.coco import load_coco, save_coco
    from minedet.data.splits import sparsify
    from tests.conftest import tiny_config

    split = sparsify(load_coco(tiny_digits.train_json).raw, "hard", 0)
    train, hidden = tmp_path / "hard.json", tmp_path / "hard.hidden.json"
    save_coco(train, split.kept)
    save_coco(hidden, split.hidden)
    cfg = tiny_config(tiny_digits, tmp_path / "run", data__train=str(train), data__hidden=str(hidden),
                      method__name="co_mining", method__tau=0.05, method__paper=True, method__render_every=2,
                      method__render_images=2)
    res = run_training(cfg, quiet=True)
    assert res["steps"] == 4
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert all("o/classification" in r and "a/classification" in r for r in train_rows)
    assert any("quality/o_n_hidden" in r for r in train_rows)
    assert all(0 < r["time/cogeneration"] < r["step_time"] for r in train_rows), "co-generation is timed inside the step"
    assert all(abs(r["loss"] - sum(v for k, v in r.items() if k.startswith(("o/", "a/")))) < 1e-6 for r in train_rows)
    # running totals: the last row's total equals the sum of every step's counts
    assert train_rows[-1]["quality/o_total_n_hidden"] == sum(r["quality/o_n_hidden"] for r in train_rows)
    assert train_rows[-1]["quality/a_total_n_pseudo"] == sum(r["quality/a_n_pseudo"] for r in train_rows)
    # what the false mined boxes lie on, logged with the precision (their sum is tested in test_filters)
    assert all(f"quality/{b}_total_false_{k}" in train_rows[-1] for b in "oa" for k in FALSE_KINDS)
    # per-class counts of mined boxes (class names as keys) add up to the step's boxes
    for r in train_rows:
        per_class = sum(v for k, v in r.items() if k.startswith("pseudo/o_class/"))
        assert per_class == r["quality/o_n_pseudo"]
    assert sorted(p.name for p in (tmp_path / "run" / "renders").glob("mined_step*.png")) == [
        "mined_step000002.png", "mined_step000004.png"]
    # inference uses one branch: the exported model is the plain detector (strict load into a fresh one)
    from minedet.engine.checkpoint import load_model

    det, _ = load_model(res["model"])
    assert type(det).__name__ == type(cfg_detector(cfg)).__name__
    assert sum(p.numel() for p in det.parameters()) == sum(p.numel() for p in cfg_detector(cfg).parameters())
    assert len(det.eval().predict([torch.rand(3, 64, 64)])) == 1


def cfg_detector(cfg):
    """A fresh plain detector of the run's architecture."""
    from minedet.run import build_spec
    from minedet.data.coco import load_coco
    from minedet.models.build import build_detector

    return build_detector(build_spec(cfg, load_coco(cfg.data.train)), pretrained=False)


def test_quality_totals_survive_a_resume():
    from minedet.pseudo.quality import QualityCounts

    m = CoMining(tiny_detector("retinanet"))
    m.quality.totals["o"] = QualityCounts(n_pseudo=5, n_hidden=7, tp=3, iou_sum=2.4, per_class_pseudo={1: 4, 3: 1})
    state = m.extra_state()
    fresh = CoMining(tiny_detector("retinanet"))
    fresh.load_extra_state(state)
    assert fresh.quality.counts("o") == m.quality.counts("o") and fresh.quality.counts("a") == QualityCounts()


def test_per_class_counts_of_mined_boxes_are_logged():
    det = tiny_detector("retinanet")
    _confident(det)
    m = CoMining(det, _opts(tau=0.5))
    m(_batch(n=2, empty=(1,)))
    m.after_step(1)
    metrics = m.log_metrics()
    for branch in ("o", "a"):
        per_class = {k: v for k, v in metrics.items() if k.startswith(f"pseudo/{branch}_class/")}
        assert per_class, "a confident head mines boxes"
        assert sum(per_class.values()) == metrics[f"pseudo/{branch}_boxes_per_image"] * 2
        assert all(k.rsplit("/", 1)[1] in {"0", "1", "2"} for k in per_class)  # no dataset bound: class ids


# ------------------------------------------------------------------ beyond the paper (issue: pseudo-labels that help)
class _Labelled:
    """A stand-in labelled stream for bind(): ids and their targets (the labelled density)."""

    def __init__(self, boxes_per_image: list[int]):
        self.ids = list(range(len(boxes_per_image)))
        self._n = boxes_per_image
        self.hidden = None
        self.data = type("Data", (), {"class_names": [str(k) for k in range(10)]})()

    def target(self, image_id):
        n = self._n[image_id]
        return Target(torch.tensor([[0.0, 0, 4, 4]] * n).reshape(n, 4), torch.zeros(n, dtype=torch.long))


def test_uncertain_mined_boxes_are_ignored_not_background():
    """ignore_below: a detection in [ignore_below, tau] that misses the labels joins the targets with
    weight 0 and no regression; it changes the classification loss, never the box loss."""
    det = tiny_detector("retinanet").train()
    _confident(det)  # every location scores sigmoid(2) = 0.88
    batch = _batch(n=2)
    plain = CoMining(det, _opts(tau=0.95))
    ignoring = CoMining(det, _opts(tau=0.95, ignore_below=0.5))
    lp, li = plain(batch), ignoring(batch)
    assert all(len(t) == 0 for t in ignoring.last_step.labels("o").confident), "nothing above tau is mined"
    ignored = ignoring.last_step.labels("o").ignored
    assert sum(len(t) for t in ignored) > 0
    assert all(t.flag("weight").eq(0).all() and not t.flag("regress").any() for t in ignored)
    assert float(li["o/classification"].detach()) != float(lp["o/classification"].detach())
    # an ignored box adds nothing to the box loss (its anchors still count in the foreground normaliser)
    out = det.forward_heads([v.image for v in batch["labelled"].views["o"]])
    assert float(det.loss(out, ignored)["bbox_regression"].detach()) == 0.0


def test_drift_guard_caps_a_model_that_scores_everything_high(capsys):
    """cap_ratio bounds mined boxes per image by the labelled density; a run whose cap cuts most images
    over a window of steps warns once, at the window's end."""
    det = tiny_detector("retinanet").train()
    _confident(det)
    m = CoMining(det, _opts(tau=0.5, cap_ratio=1.0, iou_gt=0.99, max_dets=100))
    m.bind({"labelled": _Labelled([2, 2, 3, 1])})  # 2 labelled boxes per image -> cap 2
    assert m.cap == 2
    m(_batch(n=2))
    m(_batch(n=2, seed=1))
    assert all(len(t) <= 2 for t in m.last_step.labels("o").confident) and any(len(t) == 2 for t in m.last_step.labels("o").confident)
    assert "feeding on itself" not in capsys.readouterr().err  # not on one image: at the end of a window
    m.after_step(DRIFT_WINDOW - 1)
    assert "feeding on itself" not in capsys.readouterr().err
    m.after_step(DRIFT_WINDOW)
    m(_batch(n=2, seed=2))
    m.after_step(2 * DRIFT_WINDOW)
    err = capsys.readouterr().err
    assert err.count("hit its cap") == 1 and "on 8 of 8 images" in err  # 2 steps x 2 images x 2 branches
    uncapped = CoMining(det, _opts(tau=0.5, iou_gt=0.99, max_dets=100))
    uncapped(_batch(n=2))
    assert max(len(t) for t in uncapped.last_step.labels("o").confident) > 4


def test_renders_leave_the_drift_guard_alone(tmp_path, capsys):
    """A render mines through the same rule as training, but its images are not training: a run that only
    renders a capped model's boxes counts nothing against the cap and never warns."""
    det = tiny_detector("retinanet").train()
    _confident(det)
    views = _batch(n=2)["labelled"].views

    class Rendered(_Labelled):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return {"views": {br: views[br][i] for br in views}}

    def run(renders: bool):
        m = CoMining(det, _opts(tau=0.5, cap_ratio=1.0, iou_gt=0.99, max_dets=100, render_images=2))
        m.bind({"labelled": Rendered([1, 1])}, out_dir=tmp_path)  # cap 1: the model mines more on every image
        if renders:
            assert m.renders.render(1).exists() and m.renders.render(2).exists()
            m.after_step(DRIFT_WINDOW)
            assert "pseudo/capped" not in m.log_metrics() and "hit its cap" not in capsys.readouterr().err
        m(_batch(n=2))
        if renders:
            m.renders.render(3)
        m.after_step(1)
        return m.log_metrics()["pseudo/capped"]

    assert run(renders=True) == run(renders=False) > 0


def _detects_labels_plus(det, extra: int) -> None:
    """Stub the detector's decoding: each image's labelled boxes at score 0.9, plus ``extra`` small boxes
    (2 px, off every labelled box) at score 0.9: ``extra`` new objects per image."""
    def decode(out, **kw):
        dets = []
        for gt in det.stub_gts:
            g = torch.Generator().manual_seed(len(dets))
            xy = torch.rand(extra, 2, generator=g) * 60
            boxes = torch.cat([gt.boxes, torch.cat([xy, xy + 2], 1)])
            labels = torch.cat([gt.labels, torch.zeros(extra, dtype=torch.long)])
            dets.append(Target(boxes, labels, torch.full((len(boxes),), 0.9)))
        return dets
    det.decode = decode


def test_precision_proxy_warns_when_few_confident_detections_lie_on_labels(capsys):
    """pseudo/on_labels: the share of confident detections the labelled boxes account for (no hidden truth
    needed). A detector proposing 30 new objects per image warns once at a window's end, with the cap off
    (the release's mode); one finding its labels and a new object beside them does not."""
    from minedet.methods.co_mining import PROXY_FLOOR

    batch = _batch(n=2)
    gts = [v.target for v in batch["labelled"].views["o"]]
    n_gt = sum(len(t) for t in gts)
    for extra, warns in ((1, False), (30, True)):
        det = tiny_detector("retinanet").train()
        det.stub_gts = gts
        _detects_labels_plus(det, extra)
        m = CoMining(det, _opts(tau=0.5))
        m(batch)
        m.after_step(1)
        logged = m.log_metrics()
        share = logged["pseudo/on_labels"]
        assert logged["pseudo/offered_per_image"] == extra, "the new objects per image the detector would mine"
        assert share == pytest.approx(n_gt / (n_gt + 2 * extra))  # both branches: each image's labels + extra
        assert (share < PROXY_FLOOR) == warns
        m.after_step(DRIFT_WINDOW - 1)
        assert "lie on labelled boxes" not in capsys.readouterr().err  # at a window's end only
        m.after_step(DRIFT_WINDOW)
        err = capsys.readouterr().err
        assert ("lie on labelled boxes" in err) == warns
        if warns:
            assert f"only {2 * n_gt} of the {2 * (n_gt + 2 * extra)} confident" in err
            m(batch)
            m.after_step(2 * DRIFT_WINDOW)
            assert "lie on labelled boxes" not in capsys.readouterr().err, "once per run"
    # during the warm-up nothing is mined and the proxy is not measured (an untrained detector's scores)
    m = CoMining(det, _opts(tau=0.5, mine_after=DRIFT_WINDOW + 1))
    m(batch)
    m.after_step(DRIFT_WINDOW)
    assert "pseudo/on_labels" not in m.log_metrics() and "lie on labelled boxes" not in capsys.readouterr().err


def test_containment_drops_a_mined_box_enclosing_labelled_objects():
    from minedet.pseudo import filters as pf

    gt = Target(torch.tensor([[10.0, 10, 20, 20], [30, 10, 40, 20]]), torch.tensor([0, 0]))
    mined = Target(torch.tensor([[5.0, 5, 45, 25], [50, 50, 60, 60]]), torch.tensor([0, 0]), torch.tensor([0.9, 0.8]))
    assert len(pf.drop_overlapping(mined, gt, 0.4)) == 2, "the release's IoU rule keeps the enclosing box"
    kept = pf.drop_containing(mined, gt, 0.8)
    assert kept.boxes.tolist() == [[50.0, 50.0, 60.0, 60.0]]
    assert len(pf.drop_containing(mined, Target.empty(), 0.8)) == 2


def test_part_rule_drops_a_shifted_box_on_a_labelled_object():
    from minedet.pseudo import filters as pf

    gt = Target(torch.tensor([[10.0, 10, 30, 30]]), torch.tensor([0]))
    # a box shifted by half its side: IoU 1/3 (kept by the IoU rule), half of its own area on the labelled box
    mined = Target(torch.tensor([[20.0, 10, 40, 30], [50, 50, 70, 70], [28, 10, 48, 30]]), torch.tensor([0, 0, 0]),
                   torch.tensor([0.9, 0.8, 0.7]))
    assert len(pf.drop_overlapping(mined, gt, 0.4)) == 3
    assert pf.drop_parts(mined, gt, 0.5).boxes.tolist() == [[50.0, 50.0, 70.0, 70.0], [28.0, 10.0, 48.0, 30.0]]
    assert len(pf.drop_parts(mined, gt, 0.05)) == 1  # the one touching the labelled box by a tenth goes too
    assert len(pf.drop_parts(mined, Target.empty(), 0.1)) == 3
    kept = pf.drop_known(mined, gt, 0.4, part=0.5)
    assert kept.boxes.tolist() == [[50.0, 50.0, 70.0, 70.0], [28.0, 10.0, 48.0, 30.0]]
    with pytest.raises(MinedetError, match="method.part"):
        CoMining(tiny_detector("retinanet"), CoMiningOptions(part=0.0))
    with pytest.raises(MinedetError, match="auto .the detector's. or null, got 'some'"):
        CoMining(tiny_detector("retinanet"), CoMiningOptions(part="some"))
    assert CoMiningOptions(part=0.3, paper=True).part is None


@pytest.mark.parametrize("name, part, dropped", [("faster_rcnn", "auto", True), ("faster_rcnn", None, False),
                                                  ("retinanet", "auto", False), ("retinanet", 0.5, True)])
def test_the_part_rule_is_the_detectors(monkeypatch, name, part, dropped):
    """part=auto: a mined box with half its area on a labelled box is dropped on Faster R-CNN (where self-training
    learnt pieces of digits), kept on RetinaNet; a number or null decides on either detector."""
    det = tiny_detector(name)
    gt = Target(torch.tensor([[10.0, 10, 30, 30]]), torch.tensor([0]), image_id=0)
    half_on = Target(torch.tensor([[20.0, 10, 40, 30], [40, 40, 60, 60]]), torch.tensor([0, 1]), torch.tensor([0.9, 0.9]))
    monkeypatch.setattr(det, "decode", lambda out, **kw: [half_on])
    m = CoMining(det, _opts(tau=0.5, part=part, mine_after=0, cap_ratio=None))
    view = View(torch.zeros(3, 64, 64), gt, BoxMap(size=(64, 64)))
    m({"labelled": StreamBatch([0], [(0, 0)], {"o": [view], "a": [view]})})
    mined = m.last_step.labels("o").confident[0]
    assert [40.0, 40, 60, 60] in mined.boxes.tolist()
    assert ([20.0, 10, 40, 30] not in mined.boxes.tolist()) is dropped


def test_no_mining_during_the_warm_up():
    det = tiny_detector("retinanet").train()
    _confident(det)
    m = CoMining(det, _opts(tau=0.5, mine_after=3))
    m(_batch())
    assert all(len(t) == 0 for t in m.last_step.labels("o").confident)
    m.after_step(3)
    m(_batch())
    assert any(len(t) > 0 for t in m.last_step.labels("o").confident)


def test_boxes_a_reviewer_rejected_stay_background():
    """Detections on a region the data's "rejected" list names are neither mined nor ignored."""
    from types import SimpleNamespace

    from torchvision.ops import box_iou

    runs = {}
    for iou in (None, 0.5):
        det = tiny_detector("retinanet").train()
        _confident(det)
        m = CoMining(det, _opts(tau=0.5, iou_gt=0.99, ignore_below=0.1, rejected_iou=iou))
        m(_batch())
        first = m.last_step.labels("o").targets()[0]
        assert len(first), "the confident untrained head finds boxes to mine"
        rejected = Target(first.boxes[:1].clone(), first.labels[:1].clone(), image_id=0)
        ds = SimpleNamespace(data=SimpleNamespace(rejected_by_image={0: [object()]}, class_names=[]),
                             rejected_target=lambda i, r=rejected: r if i == 0 else Target.empty(i), hidden=None)
        m.bind({"labelled": ds})
        m(_batch())
        got = m.last_step.labels("o").targets()[0]
        runs[iou] = int((box_iou(got.boxes, rejected.boxes) > 0.5).sum()) if len(got) else 0
    assert runs[None] > 0 and runs[0.5] == 0


def test_defaults_are_the_guards_and_paper_restores_the_release():
    d, p = CoMiningOptions(), CoMiningOptions(paper=True)
    assert (d.ignore_below, d.contain, d.cap_ratio, d.mine_after) == ("auto", 0.8, 1.0, 100)
    assert (p.ignore_below, p.contain, p.cap_ratio, p.mine_after, p.adaptive) == (None, None, None, 0, False)
    det = tiny_detector("retinanet").train()
    _confident(det)
    paper, default = CoMining(det, p), CoMining(det, d)
    paper(_batch())
    default(_batch())
    assert any(len(t) for t in paper.last_step.labels("o").confident) and not any(len(t) for t in default.last_step.labels("o").confident), \
        "the default mines nothing in its first 100 steps"


def test_the_ignored_band_is_the_detectors_and_off_on_brls_loss():
    """ignore_below=auto: the band from 0.3 on a focal-loss detector; none on BRL's loss, which has its own rule for
    uncertain far negatives; a number sets the band on either; a word other than auto is one clear error."""
    def ignored(extra=None, **o):
        det = tiny_detector("retinanet", **({"extra": extra} if extra else {})).train()
        _confident(det)  # every location scores 0.88: inside [0.3, 0.95]
        m = CoMining(det, _opts(**{"tau": 0.95, **o}))
        m(_batch())
        return sum(len(t) for t in m.last_step.labels("o").ignored or [])

    brl = {"cls_loss": "brl"}
    assert ignored(ignore_below="auto") > 0
    assert ignored(brl, ignore_below="auto") == 0
    assert ignored(brl, ignore_below=0.5) > 0
    assert ignored(ignore_below=None) == 0
    assert ignored(ignore_below="auto", tau=0.2) == 0  # auto never reaches above tau (no error, no band)
    with pytest.raises(MinedetError, match="null .no band. or auto"):
        CoMining(tiny_detector("retinanet"), _opts(ignore_below="sometimes"))


@pytest.mark.parametrize("name, default", [("retinanet", True), ("fcos", False), ("faster_rcnn", True)])
def test_mined_boxes_regress_by_the_detectors_default_unless_told(name, default):
    """Eq. 2 lets mined boxes supervise box regression; minedet's default follows the detector (FCOS measured
    better with mined boxes teaching classification only); ``pseudo_regress`` and ``paper`` override it."""
    def regress_flags(**o):
        det = tiny_detector(name).train()
        _confident(det)
        with torch.no_grad():
            if name == "fcos":
                det.model.head.classification_head.cls_logits.bias.fill_(6.0)
            if name == "faster_rcnn":  # softmax over background (0) and the classes: class 1 wins everywhere
                det.model.roi_heads.box_predictor.cls_score.bias[1].add_(10.0)
        m = CoMining(det, CoMiningOptions(tau=0.5, mine_after=0, cap_ratio=None, max_dets=5, **o))
        m(_batch())
        mined = [t for t in m.last_step.labels("o").confident if len(t)]
        assert mined, "a confident detector mines something"
        flags = {bool(f) for t in mined for f in t.flag("regress")}
        assert len(flags) == 1
        return flags.pop()

    assert regress_flags() is default
    assert regress_flags(pseudo_regress=not default) is (not default)
    assert regress_flags(paper=True) is True


def test_a_two_view_run_over_few_passes_is_told_what_twice_the_batch_did():
    def notes(n, **o):
        return CoMining(tiny_detector("retinanet"), CoMiningOptions(**o)).budget_notes({"labelled": n})

    [line] = notes(3.6)
    assert "3.6 times" in line and "twice the batch" in line and "data.batch_size" in line
    assert notes(3.6, cogeneration=False) != [], "joint trains on the same two views: the same trade-off"
    assert notes(14.0) == [] and notes(3.6, siamese=False, cogeneration=False) == [] and \
        CoMining(tiny_detector("retinanet"), CoMiningOptions()).budget_notes({}) == []


def test_the_run_counts_its_passes_and_prints_the_note(tiny_digits, tmp_path, capsys):
    from minedet.run import build_run, passes
    from tests.conftest import tiny_config

    few = tiny_config(tiny_digits, tmp_path / "few", method__name="co_mining", train__max_steps=4, train__accumulate=2)
    run = build_run(few)
    n = len(run.datasets["labelled"])
    assert passes(few, run.datasets) == {"labelled": pytest.approx(4 * 2 * 2 / n)}
    assert "minedet: note: this run goes over each training image about" in capsys.readouterr().err
    many = tiny_config(tiny_digits, tmp_path / "many", method__name="co_mining", train__max_steps=4 * n)
    build_run(many)
    assert "minedet: note" not in capsys.readouterr().err
    build_run(few, quiet=True)
    assert "minedet: note" not in capsys.readouterr().err


def test_a_warm_up_as_long_as_the_run_is_named_before_training():
    def warnings(steps, **o):
        return CoMining(tiny_detector("retinanet"), CoMiningOptions(**o)).schedule_warnings(steps)

    assert warnings(900) == [] and warnings(50, cogeneration=False) == []
    [line] = warnings(100)  # the default warm-up of 100 steps on a 100-step run
    assert "nothing is ever mined" in line and "method.mine_after" in line


def test_a_detection_of_another_class_contests_a_mined_box():
    from minedet.pseudo import filters as pf

    mined = Target(torch.tensor([[10.0, 10, 30, 30], [50, 50, 70, 70], [80, 10, 100, 30]]), torch.tensor([3, 3, 3]),
                   torch.tensor([0.8, 0.8, 0.8]))
    others = Target(torch.tensor([[11.0, 10, 31, 30], [50, 50, 70, 70], [80, 10, 100, 30], [200, 200, 220, 220]]),
                    torch.tensor([8, 8, 3, 8]), torch.tensor([0.5, 0.3, 0.9, 0.9]))
    # first: another class at 0.5 >= 0.5 x 0.8 on it; second: another class too weak; third: only its own class
    assert pf.disputed(mined, others, 0.5).tolist() == [True, False, False]
    assert pf.disputed(mined, others, 0.3).tolist() == [True, True, False]
    assert pf.disputed(mined, Target.empty(), 0.5).tolist() == [False, False, False]
    assert pf.disputed(Target.empty(), others, 0.5).tolist() == []


def test_demoted_mined_boxes_are_ignored_not_taught():
    from minedet.pseudo.semantics import PseudoLabels

    mined = Target(torch.tensor([[10.0, 10, 30, 30], [50, 50, 70, 70]]), torch.tensor([3, 5]), torch.tensor([0.8, 0.9]))
    labels = PseudoLabels([mined], [mined], None).demote([torch.tensor([True, False])])
    assert labels.confident[0].labels.tolist() == [5]
    (ignored,) = labels.ignored
    assert ignored.labels.tolist() == [3] and ignored.flag("weight").tolist() == [0.0]
    assert not ignored.flag("regress").any()
    assert len(labels.targets()[0]) == 2  # the contested box is still in the targets: its anchors are not background


@pytest.mark.parametrize("dispute, taught", [(None, [0, 2]), (0.5, [2])])
def test_a_mined_box_another_class_contests_in_either_view_is_ignored(monkeypatch, tmp_path, dispute, taught):
    """method.dispute: the class-0 box the original view mines is contested by the class 1 the other view sees on the
    same object, so the other branch is not taught a 0 there (weight 0: not background either); the uncontested
    class-2 box is taught either way. On an image with no labels."""
    det = tiny_detector("retinanet").train()
    first, second = [10.0, 10, 30, 30], [40, 34, 60, 54]
    seen = {"o": Target(torch.tensor([first, second]), torch.tensor([0, 2]), torch.tensor([0.8, 0.9])),
            "a": Target(torch.tensor([first, second]), torch.tensor([1, 2]), torch.tensor([0.5, 0.9]))}
    calls = []

    def decode(out, score_thresh, **kw):
        calls.append(score_thresh)
        t = seen["o" if len(calls) % 2 else "a"]
        return [t.select(t.scores >= score_thresh)]

    monkeypatch.setattr(det, "decode", decode)
    m = CoMining(det, _opts(tau=0.6, mine_after=0, dispute=dispute))
    batch = _batch(n=1, empty=(0,))
    m(batch)
    assert calls[0] == pytest.approx(0.6 * (dispute or 1.0)), "a contesting class below tau is decoded"
    assert sorted(m.last_step.labels("o").confident[0].labels.tolist()) == taught
    ignored = m.last_step.labels("o").ignored
    assert (ignored is not None and ignored[0].labels.tolist() == [0]) is (dispute is not None)
    m.after_step(1)
    assert (m.log_metrics().get("pseudo/disputed_per_image", 0.0) > 0) is (dispute is not None)
    # a render draws what training is taught: the contested box is not among the mined boxes drawn
    views = batch["labelled"].views

    class Rendered(_Labelled):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            return {"views": {br: views[br][i] for br in views}}

    drawn = []
    import minedet.viz

    real = minedet.viz.draw_boxes
    monkeypatch.setattr("minedet.viz.draw_boxes", lambda image, groups: drawn.append(groups[1].labels) or real(image, groups))
    m.bind({"labelled": Rendered([0])}, out_dir=tmp_path)
    assert m.renders.render(1).exists()
    assert [sorted(labels) for labels in drawn] == [[str(k) for k in taught], ["2"]]  # branch o, then a
    with pytest.raises(MinedetError, match="method.dispute"):
        CoMining(det, CoMiningOptions(dispute=1.5))
    assert CoMiningOptions(dispute=0.5, paper=True).dispute is None


class _Val:
    """A stand-in val dataset for the val check: a few 64 px images, each with two labelled boxes of class 0."""

    def __init__(self, n: int = 3):
        self.boxes = {i: Target(torch.tensor([[4.0, 4, 20, 20], [30, 30, 50, 50]]), torch.zeros(2, dtype=torch.long))
                      for i in range(n)}

    def __len__(self):
        return len(self.boxes)

    def __getitem__(self, i):
        return {"views": {"o": View(torch.zeros(3, 64, 64), self.boxes[i], BoxMap(size=(64, 64)))}, "orig_size": (64, 64),
                "image_id": i}

    def target(self, image_id):
        return self.boxes[image_id]


def _predicts(det, right: int, wrong: int) -> None:
    """Stub the detector's predict: per image ``right`` of the val boxes and ``wrong`` boxes off them, at 0.9."""
    def predict(images, **kw):
        boxes = torch.cat([torch.tensor([[4.0, 4, 20, 20], [30, 30, 50, 50]])[:right],
                           torch.tensor([[55.0, 2, 62, 9]] * wrong).reshape(wrong, 4)])
        return [Target(boxes, torch.zeros(len(boxes), dtype=torch.long), torch.full((len(boxes),), 0.9)) for _ in images]
    det.predict = predict


def test_val_check_pauses_the_mining_while_confident_val_detections_are_mostly_wrong(capsys):
    """min_val_precision: at a window's end (from mine_after on) the student's detections above tau on the val images
    are matched to their labels; below the share asked the mining pauses (nothing mined reaches the loss, one warning),
    at or above it the mining resumes (one note); the state travels in the checkpoint."""
    det = tiny_detector("retinanet").train()
    _confident(det)
    m = CoMining(det, _opts(tau=0.5, iou_gt=0.99, max_dets=100, mine_after=10, min_val_precision=0.7))
    m.bind_val(_Val())
    _predicts(det, right=1, wrong=1)  # 50 % right
    m.after_step(DRIFT_WINDOW - 1)
    assert "pseudo/val_precision" not in m.log_metrics()  # between checks nothing is measured
    m.after_step(DRIFT_WINDOW)
    logged = m.log_metrics()
    assert logged["pseudo/val_precision"] == 0.5 and logged["pseudo/paused"] == 1.0 and logged["time/val_check"] >= 0
    assert "paused its mining at step 50: only 50 %" in capsys.readouterr().err
    m(_batch(n=2))
    assert all(len(t) == 0 for t in m.last_step.labels("o").confident), "paused: nothing mined"
    state = m.extra_state()
    resumed = CoMining(det, _opts(tau=0.5, iou_gt=0.99, max_dets=100, mine_after=10, min_val_precision=0.7))
    resumed.load_extra_state(state)
    resumed(_batch(n=2))
    assert all(len(t) == 0 for t in resumed.last_step.labels("o").confident), "the pause survives a resume"
    _predicts(det, right=2, wrong=0)
    m.after_step(2 * DRIFT_WINDOW)
    assert m.log_metrics()["pseudo/paused"] == 0.0
    assert "resumed its mining at step 100 (val precision 100 %)" in capsys.readouterr().err
    m(_batch(n=2))
    assert sum(len(t) for t in m.last_step.labels("o").confident) > 0
    _predicts(det, right=0, wrong=2)
    m.after_step(3 * DRIFT_WINDOW)
    assert m.log_metrics()["pseudo/paused"] == 1.0 and "paused its mining" not in capsys.readouterr().err  # warned once


def test_val_check_waits_for_the_warm_up_and_needs_a_val_set(capsys):
    """No check before mine_after; without a val set a note says the mining is never paused; off by default (and
    under method.paper)."""
    det = tiny_detector("retinanet").train()
    _confident(det)
    _predicts(det, right=0, wrong=2)
    m = CoMining(det, _opts(tau=0.5, iou_gt=0.99, mine_after=2 * DRIFT_WINDOW, min_val_precision=0.7))
    m.bind_val(_Val())
    m.after_step(DRIFT_WINDOW)
    assert "pseudo/paused" not in m.log_metrics()
    m.after_step(2 * DRIFT_WINDOW)
    assert m.log_metrics()["pseudo/paused"] == 1.0
    blind = CoMining(det, _opts(tau=0.5, min_val_precision=0.7))
    blind.bind_val(None)
    assert "never paused" in capsys.readouterr().err
    blind.after_step(DRIFT_WINDOW)
    assert "pseudo/paused" not in blind.log_metrics()
    assert CoMiningOptions().min_val_precision is None and CoMiningOptions(min_val_precision=0.7, paper=True).min_val_precision is None
    with pytest.raises(MinedetError, match="min_val_precision must be in"):
        CoMining(det, _opts(min_val_precision=1.5))


def test_a_run_hands_its_val_set_to_the_val_check(tiny_digits, tmp_path, capsys):
    """build_run binds the run's val dataset: the check predicts the real val images (a detector scoring everything
    high finds mostly wrong boxes there, so the mining pauses)."""
    from minedet.run import build_run
    from tests.conftest import tiny_config

    cfg = tiny_config(tiny_digits, tmp_path / "run", method__name="co_mining", method__mine_after=0,
                      method__min_val_precision=0.9)
    run = build_run(cfg, quiet=True)
    _confident(run.method.detector)
    run.method.after_step(DRIFT_WINDOW)
    logged = run.method.log_metrics()
    assert logged["pseudo/paused"] == 1.0 and 0.0 <= logged["pseudo/val_precision"] < 0.9
    assert "paused its mining at step 50" in capsys.readouterr().err


def test_the_val_check_reads_images_spread_over_the_whole_val_set():
    """Val files often list one scene after another: the check predicts CHECK_IMAGES images spread evenly over the set
    (every image of a smaller one), not the first ones."""
    from minedet.methods.co_mining import CHECK_IMAGES, check_indices

    spread = check_indices(10 * CHECK_IMAGES)
    assert len(spread) == len(set(spread)) == CHECK_IMAGES and spread == sorted(spread)
    assert spread[0] == 0 and spread[-1] >= 9 * CHECK_IMAGES and spread[1] - spread[0] == 10
    assert check_indices(7) == list(range(7)) and check_indices(0) == []
