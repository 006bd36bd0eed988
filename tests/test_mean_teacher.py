"""Mean Teacher (Unbiased Teacher style) and STAC: burn-in, EMA teacher, carried pseudo-labels,
classification-only unsupervised loss, roles, STAC's once-only pseudo-labelling, end to end."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from minedet.registry import build_method
from minedet.data.datasets import View, StreamBatch
from minedet.data.transforms import BoxMap, Compose, RandomHorizontalFlip, RandomScaleCrop
from minedet.errors import MinedetError
from minedet.methods.mean_teacher import MeanTeacher, MeanTeacherOptions
from minedet.pseudo.semantics import carry
from minedet.methods.stac import Stac, StacOptions
from minedet.structures import Target
from tests.helpers import random_targets, tiny_detector

SIZE = 64


def _batch(n=2, seed=0, empty=(1,)):
    """Labelled (weak, strong) and unlabelled (weak, strong) views; identity maps (photometric)."""
    g = torch.Generator().manual_seed(seed)
    m = BoxMap(size=(SIZE, SIZE))
    lw = [View(torch.rand(3, SIZE, SIZE, generator=g), t, m) for t in random_targets(n, SIZE, empty=empty, seed=seed)]
    ls = [View((v.image * 0.7 + 0.1).clamp(0, 1), v.target, m) for v in lw]
    uw = [View(torch.rand(3, SIZE, SIZE, generator=g), Target.empty(100 + i), m) for i in range(n)]
    us = [View((v.image * 0.8).clamp(0, 1), v.target, m) for v in uw]
    return {
        "labelled": StreamBatch(list(range(n)), [(0, 0)] * n, {"weak": lw, "strong": ls}),
        "unlabelled": StreamBatch([100 + i for i in range(n)], [(0, 0)] * n, {"weak": uw, "strong": us}),
    }


def _sgd_step(m: MeanTeacher, batch: dict, opt: torch.optim.Optimizer, step: int) -> dict:
    opt.zero_grad()
    losses = m(batch)
    sum(losses.values()).backward()
    opt.step()
    m.after_step(step)
    return losses


def _params(det):
    return [p.detach().clone() for p in det.parameters()]


def _fake_teacher(m: MeanTeacher, per_image: list[Target]) -> list:
    """Replace the teacher's predictions by fixed detections (boxes in the weak-view frame)."""
    calls = []

    def predict(images, **kw):
        calls.append(kw)
        return [per_image[i % len(per_image)] for i in range(len(images))]

    m.teacher.predict = predict
    return calls


# ---------------------------------------------------------------------------------------- burn-in
def test_burn_in_is_supervised_only_then_the_teacher_is_copied_at_the_right_step():
    det = tiny_detector("retinanet").train()
    m = MeanTeacher(det, MeanTeacherOptions(burn_in=2, tau=0.5))
    m.train()
    calls = _fake_teacher(m, [Target.empty()])
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    initial = _params(det)
    assert list(m.eval_models()) == ["student"], "no teacher to evaluate during burn-in"

    losses = _sgd_step(m, _batch(), opt, 1)
    assert losses and all(k.startswith("sup/") for k in losses)
    assert not calls, "the teacher is not used during burn-in"
    assert all(torch.equal(a, b) for a, b in zip(_params(m.teacher), initial)), "the teacher waits"
    assert not all(torch.equal(a, b) for a, b in zip(_params(det), initial)), "the student trains"

    losses = _sgd_step(m, _batch(seed=1), opt, 2)  # the last burn-in step
    assert all(k.startswith("sup/") for k in losses) and not calls
    assert all(torch.equal(a, b) for a, b in zip(_params(m.teacher), _params(det))), "copied at step == burn_in"
    assert list(m.eval_models()) == ["teacher", "student"]
    assert m.export_model() is m.teacher

    losses = m(_batch(seed=2))
    assert len(calls) == 1 and any(k.startswith("unsup/") for k in losses)


def test_supervised_loss_sees_both_labelled_views_in_one_forward():
    det = tiny_detector("retinanet").train()
    m = MeanTeacher(det, MeanTeacherOptions(burn_in=0, tau=0.99))
    sizes = []
    orig = det.forward_heads
    det.forward_heads = lambda images: sizes.append(len(images)) or orig(images)
    m(_batch(n=3))
    assert sizes == [9], "labelled weak + strong + unlabelled strong in one batched forward"
    assert set(m.streams()["labelled"]) == {"weak", "strong"}
    m2 = MeanTeacher(tiny_detector("retinanet"), MeanTeacherOptions(sup_views="strong"))
    assert set(m2.streams()["labelled"]) == {"strong"}


# ------------------------------------------------------------------------------ unsupervised loss
REG_PARAMS = {
    "retinanet": ["head.regression_head"],
    "fcos": ["head.regression_head"],
    "faster_rcnn": ["rpn.head.bbox_pred", "roi_heads.box_predictor.bbox_pred"],
}


@pytest.mark.parametrize("name", ["retinanet", "fcos", "faster_rcnn"])
def test_unsup_losses_are_classification_only_and_give_no_regression_gradient(name):
    det = tiny_detector(name).train()
    m = MeanTeacher(det, MeanTeacherOptions(burn_in=0, tau=0.0, max_dets=10, paper=True))
    m.train()
    losses = m(_batch())
    unsup = {k: v for k, v in losses.items() if k.startswith("unsup/")}
    # the regression terms the adapter names are zero: pseudo boxes carry regress=False
    assert {"unsup/" + k for k in det.regression_terms} < set(unsup)
    assert all(float(unsup["unsup/" + k].detach()) == 0.0 for k in det.regression_terms)
    assert {k for k in losses if k.startswith("sup/")}, "supervised terms are all kept"
    pseudo = m.last_step.taught["unsup"]
    assert sum(len(t) for t in pseudo) > 0, "tau=0 must produce pseudo boxes"
    assert all(not t.flag("regress").any() and t.flag("pseudo").all() for t in pseudo)
    # the full detector loss on the pseudo targets has zero regression terms (regress=False)
    full = det.loss(det.forward_heads([v.image for v in _batch()["unlabelled"].views["strong"]]), pseudo)
    for k in {"retinanet": ["bbox_regression"], "fcos": ["bbox_regression", "bbox_ctrness"],
              "faster_rcnn": ["loss_box_reg", "loss_rpn_box_reg"]}[name]:
        assert float(full[k].detach()) == 0.0, k
    sum(unsup.values()).backward()
    reg = [p for n, p in det.model.named_parameters() if any(n.startswith(r) for r in REG_PARAMS[name])]
    assert reg and all(p.grad is None or float(p.grad.abs().sum()) == 0.0 for p in reg)
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in det.parameters())


def test_unsup_regression_true_keeps_box_terms_and_their_gradient():
    det = tiny_detector("retinanet").train()
    m = MeanTeacher(det, MeanTeacherOptions(burn_in=0, tau=0.0, max_dets=10, unsup_regression=True, paper=True))
    losses = m(_batch())
    assert "unsup/bbox_regression" in losses
    sum(v for k, v in losses.items() if k.startswith("unsup/")).backward()
    reg = [p for n, p in det.model.named_parameters() if n.startswith("head.regression_head")]
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in reg)


def test_unsup_loss_is_weighted_by_lambda():
    batch = _batch()
    vals = {}
    for lam in (1.0, 4.0):
        det = tiny_detector("retinanet", seed=0).train()
        m = MeanTeacher(det, MeanTeacherOptions(burn_in=0, tau=0.0, max_dets=10, lambda_unsup=lam, paper=True))
        vals[lam] = m(batch)
    assert torch.allclose(vals[4.0]["unsup/classification"], 4 * vals[1.0]["unsup/classification"], rtol=1e-5)
    assert torch.allclose(vals[4.0]["sup/classification"], vals[1.0]["sup/classification"])


@pytest.mark.parametrize("name", ["retinanet", "fcos", "faster_rcnn"])
def test_no_pseudo_labels_is_just_background(name):
    det = tiny_detector(name).train()
    m = MeanTeacher(det, MeanTeacherOptions(burn_in=0, tau=1.0))
    losses = m(_batch(empty=(0, 1)))
    assert all(len(t) == 0 for t in m.last_step.labels().confident)
    m.after_step(1)
    assert m.log_metrics()["pseudo/boxes_per_image"] == 0.0
    assert any(k.startswith("unsup/") for k in losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


# -------------------------------------------------------------------------------------- the EMA
def test_teacher_follows_the_student_by_ema_exactly():
    det = tiny_detector("retinanet").train()
    m = MeanTeacher(det, MeanTeacherOptions(burn_in=1, ema_decay=0.99, tau=0.99))
    m.train()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    _sgd_step(m, _batch(), opt, 1)  # burn-in ends: teacher == student
    t_prev = _params(m.teacher)
    _sgd_step(m, _batch(seed=3), opt, 2)
    s = _params(det)
    t = _params(m.teacher)
    for a, b, c in zip(t, t_prev, s):
        assert torch.allclose(a, 0.99 * b + 0.01 * c, atol=1e-6)
    moved_t = sum(float((a - b).abs().sum()) for a, b in zip(t, t_prev))
    moved_s = sum(float((c - b).abs().sum()) for b, c in zip(t_prev, s))
    assert 0 < moved_t < 0.02 * moved_s, "the teacher moves 1 % of the way"
    assert all(not p.requires_grad for p in m.teacher.parameters())
    assert not m.teacher.training, "the teacher stays in eval mode when the method trains"


def test_state_dict_holds_the_teacher_and_resume_restores_it():
    det = tiny_detector("retinanet").train()
    m = MeanTeacher(det, MeanTeacherOptions(burn_in=1, ema_decay=0.9))
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    for step in (1, 2):
        _sgd_step(m, _batch(seed=step), opt, step)
    sd = m.state_dict()
    assert any(k.startswith("source.ema.module.") for k in sd) and any(k.startswith("detector.") for k in sd)
    fresh = MeanTeacher(tiny_detector("retinanet", seed=5), MeanTeacherOptions(burn_in=1, ema_decay=0.9))
    assert set(fresh.state_dict()) == set(sd), "same keys before and after burn-in"
    fresh.load_state_dict(sd)
    fresh.load_extra_state(m.extra_state())
    assert fresh.steps_done == 2 and list(fresh.eval_models()) == ["teacher", "student"]
    assert all(torch.equal(a, b) for a, b in zip(_params(fresh.teacher), _params(m.teacher)))


# --------------------------------------------------------------------------- carried pseudo-labels
def test_pseudo_boxes_land_where_the_pixels_went_under_flip_and_scale_crop():
    """A bright square in the file image; the weak view is flipped (base), the strong view is
    flipped back and scaled+cropped. The teacher 'detects' the square in the weak view; the carried
    box must cover the bright pixels of the strong image."""
    file_img = torch.zeros(3, SIZE, SIZE)
    file_img[:, 10:30, 6:22] = 1.0  # rows y 10..29, cols x 6..21 -> box (6, 10, 22, 30)
    box = torch.tensor([[6.0, 10.0, 22.0, 30.0]])
    g = torch.Generator().manual_seed(3)
    base = Compose([RandomHorizontalFlip(1.0)])
    weak_img, _, weak_map = base(file_img, Target.empty(), g)
    strong_tf = Compose([RandomHorizontalFlip(1.0), RandomScaleCrop((1.4, 1.4))])
    strong_img, _, strong_step = strong_tf(weak_img, Target.empty(), g)
    weak = View(weak_img, Target.empty(7), weak_map)
    strong = View(strong_img, Target.empty(7), weak_map.then(strong_step))

    det = tiny_detector("retinanet", num_classes=3).train()
    m = MeanTeacher(det, MeanTeacherOptions(burn_in=0, tau=0.5, geometric=True))
    weak_box = weak_map.apply(box)
    assert weak_box[0, 0] > 30, "the weak view is mirrored"
    _fake_teacher(m, [Target(weak_box, torch.tensor([2]), torch.tensor([0.9]))])
    lab = _batch(n=1)["labelled"]
    m({"labelled": lab, "unlabelled": StreamBatch([7], [(0, 0)], {"weak": [weak], "strong": [strong]})})
    (t,) = m.last_step.taught["unsup"]
    ys, xs = torch.where(strong_img[0] > 0.75)
    bright = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    assert len(t) == 1 and int(t.labels[0]) == 2
    assert torch.allclose(t.boxes[0], bright, atol=1.5), (t.boxes, bright)
    assert not torch.allclose(t.boxes[0], weak_box[0], atol=3.0), "the box really moved"
    assert any(isinstance(x, RandomScaleCrop) for x in m.streams()["unlabelled"]["strong"].transforms)
    assert not any(isinstance(x, RandomScaleCrop) for x in m.streams()["unlabelled"]["weak"].transforms)


def test_carry_drops_boxes_cropped_away_and_is_identity_for_equal_maps():
    t = Target(torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 60.0, 60.0]]), torch.tensor([0, 1]))
    same = BoxMap(size=(SIZE, SIZE))
    assert carry(t, same, same) is t
    shift = BoxMap(1.0, 1.0, -20.0, -20.0, (SIZE, SIZE))  # a crop that loses the first box
    out = carry(t, same, shift)
    assert len(out) == 1 and torch.equal(out.boxes[0], torch.tensor([20.0, 20.0, 40.0, 40.0]))
    assert len(t) == 2, "the input is not mutated"


# ------------------------------------------------------------------------------ quality and roles
def test_quality_against_hidden_truth_is_logged():
    det = tiny_detector("retinanet").train()
    m = MeanTeacher(det, MeanTeacherOptions(burn_in=0, tau=0.5))
    truth = Target(torch.tensor([[5.0, 5.0, 25.0, 25.0], [30.0, 30.0, 50.0, 60.0]]), torch.tensor([0, 1]))
    m.bind({"unlabelled": SimpleNamespace(hidden=object(), hidden_target=lambda image_id: truth)})
    one = Target(truth.boxes[:1], truth.labels[:1], torch.tensor([0.9]))
    _fake_teacher(m, [one, Target(truth.boxes[1:], torch.tensor([2]), torch.tensor([0.8]))])
    m(_batch())
    m.after_step(1)  # what reads a step runs after it
    met = m.log_metrics()
    assert met["pseudo/boxes_per_image"] == 1.0
    assert met["quality/precision"] == 0.5, "the second pseudo box has the wrong class"
    assert met["quality/recall"] == 0.25, "one of four hidden boxes is found"
    assert m.quality.counts("teacher").n_hidden == 4


def test_ignore_below_turns_uncertain_teacher_boxes_into_ignored_ones():
    box = lambda x: [x, 8.0, x + 20.0, 40.0]  # noqa: E731
    dets = Target(torch.tensor([box(2.0), box(22.0), box(42.0)]), torch.tensor([0, 1, 2]), torch.tensor([0.9, 0.5, 0.1]))
    batch = _batch()
    runs = {}
    for ignore in (None, 0.3):
        m = MeanTeacher(tiny_detector("retinanet", seed=0).train(), MeanTeacherOptions(burn_in=0, tau=0.7, ignore_below=ignore))
        calls = _fake_teacher(m, [dets])
        runs[ignore] = m(batch)
        assert calls[0]["score_thresh"] == (0.7 if ignore is None else 0.3)
        assert [p.labels.tolist() for p in m.last_step.labels().confident] == [[0], [0]], "pseudo-labels proper: score > tau only"
        t = m.last_step.taught["unsup"][0]
        if ignore is None:
            assert t.labels.tolist() == [0]
        else:
            assert t.labels.tolist() == [0, 1], "the 0.5 box is kept as an ignored box, the 0.1 box is dropped"
            assert t.flag("weight").tolist() == [1.0, 0.0] and t.flag("regress").tolist() == [False, False]
    # the anchors on the uncertain box no longer count as background
    assert not torch.allclose(runs[None]["unsup/classification"], runs[0.3]["unsup/classification"])
    assert torch.allclose(runs[None]["sup/classification"], runs[0.3]["sup/classification"])
    with pytest.raises(MinedetError, match="ignore_below"):
        build_method({"name": "mean_teacher", "tau": 0.7, "ignore_below": 0.8}, tiny_detector("retinanet"))


def test_a_teacher_box_another_class_contests_is_ignored_not_taught():
    """method.dispute: the teacher's 0.9 box of class 0 has a class-2 detection on it at 0.6: the student is taught
    neither (weight 0 there); the uncontested class-1 box is taught; the run logs how many were contested."""
    box = lambda x: [x, 8.0, x + 20.0, 40.0]  # noqa: E731
    dets = Target(torch.tensor([box(2.0), box(2.0), box(32.0)]), torch.tensor([0, 2, 1]), torch.tensor([0.9, 0.6, 0.8]))
    for dispute in (None, 0.5):
        options = MeanTeacherOptions(burn_in=0, tau=0.7, ignore_below=None, dispute=dispute)
        m = MeanTeacher(tiny_detector("retinanet", seed=0).train(), options)
        calls = _fake_teacher(m, [dets])
        m(_batch())
        m.after_step(1)
        assert calls[0]["score_thresh"] == pytest.approx(0.7 if dispute is None else 0.35)
        t = m.last_step.taught["unsup"][0]
        if dispute is None:
            assert sorted(t.labels.tolist()) == [0, 1] and "pseudo/disputed_per_image" not in m.log_metrics()
        else:
            assert t.labels.tolist() == [1, 0] and t.flag("weight").tolist() == [1.0, 0.0]
            assert m.log_metrics()["pseudo/disputed_per_image"] > 0
    with pytest.raises(MinedetError, match="method.dispute"):
        build_method({"name": "mean_teacher", "dispute": 0}, tiny_detector("retinanet"))
    assert MeanTeacherOptions(dispute=0.5, paper=True).dispute is None


def test_teacher_and_student_roles_and_option_checks():
    det = tiny_detector("faster_rcnn")
    m = build_method({"name": "mean_teacher", "burn_in": 0}, det)
    assert isinstance(m, MeanTeacher)
    assert list(m.eval_models()) == ["teacher", "student"] and m.eval_models()["student"] is det
    with pytest.raises(MinedetError, match="roi_focal"):  # now a detector option: model.extra.roi_cls_loss=focal
        build_method({"name": "mean_teacher", "roi_focal": True}, tiny_detector("faster_rcnn"))
    with pytest.raises(MinedetError, match="burn_inn|did you mean"):
        build_method({"name": "mean_teacher", "burn_inn": 3}, tiny_detector("retinanet"))
    with pytest.raises(MinedetError, match="sup_views"):
        build_method({"name": "mean_teacher", "sup_views": "all"}, tiny_detector("retinanet"))
    with pytest.raises(MinedetError, match="strong_view"):
        build_method({"name": "mean_teacher", "strong_view": "heavy"}, tiny_detector("retinanet"))


def test_schedule_warnings_name_a_teacher_that_cannot_follow_the_student():
    def warnings(max_steps, **opts):
        return build_method({"name": "mean_teacher", **opts}, tiny_detector("retinanet")).schedule_warnings(max_steps)

    assert warnings(1200, burn_in=600, ema_decay=0.995) == []  # the digits preset: a 200-step horizon, 600 steps after
    assert warnings(180000, burn_in=5000, ema_decay=0.9996) == []  # the papers' COCO schedule
    [never] = warnings(500, burn_in=500)
    assert "never leaves burn-in" in never and "method.burn_in" in never
    [slow] = warnings(3000, burn_in=2000, ema_decay=0.9996)  # own data with the library defaults
    assert "about 2500 steps but only 1000" in slow and "33 % student" in slow
    suggested = float(slow.rsplit("method.ema_decay=", 1)[1].split()[0])
    assert warnings(3000, burn_in=2000, ema_decay=suggested) == []  # the suggestion silences it
    assert warnings(1200, burn_in=600, ema_decay=1.0)  # a frozen teacher never follows


# ------------------------------------------------------------------------------------------ STAC
def _confident(det):
    with torch.no_grad():
        for name, p in det.model.named_parameters():
            if name.endswith("cls_logits.bias"):
                p.fill_(2.0)


def test_stac_labels_the_unlabelled_set_once_and_trains_on_the_stored_labels(tiny_digits):
    from minedet.data.coco import load_coco
    from minedet.data.datasets import DetectionDataset, collate

    data = load_coco(tiny_digits.train_json)
    teacher = tiny_detector("retinanet", num_classes=10)
    _confident(teacher)
    calls = []
    orig = teacher.predict
    teacher.predict = lambda images, **kw: calls.append((len(images), kw)) or orig(images, **kw)
    det = tiny_detector("retinanet", num_classes=10, seed=1).train()
    m = Stac(det, StacOptions(tau=0.8, max_dets=5, geometric=True), teacher=teacher)
    unl = DetectionDataset(data, tiny_digits.image_root, views=m.streams()["unlabelled"], with_targets=False,
                           base=Compose([RandomHorizontalFlip(0.5)]))
    lab = DetectionDataset(data, tiny_digits.image_root, views=m.streams()["labelled"])
    m.bind({"labelled": lab, "unlabelled": unl})
    assert sum(n for n, _ in calls) == len(data.images), "every unlabelled image is labelled once"
    assert calls[0][1]["score_thresh"] == 0.8
    assert set(m.source.confident) == set(unl.ids) and any(len(t) for t in m.source.confident.values())
    assert all(t.scores is None or bool((t.scores > 0.8).all()) for t in m.source.confident.values())
    assert "teacher" not in dict(m.named_children()) and not any("teacher" in k for k in m.state_dict())
    n_calls = len(calls)

    batch = {"labelled": collate([lab[0], lab[1]]), "unlabelled": collate([unl[2], unl[3]])}
    seen = []
    orig_loss = det.loss
    det.loss = lambda out, targets, background=None: seen.append(targets) or orig_loss(out, targets, background)
    losses = m(batch)
    assert len(calls) == n_calls, "no teacher forward during training"
    assert {"sup/classification", "unsup/classification", "unsup/bbox_regression"} <= set(losses)
    assert torch.isfinite(sum(losses.values()))
    for t, image_id, v in zip(seen[1], batch["unlabelled"].image_ids, batch["unlabelled"].views["strong"]):
        stored = m.source.confident[image_id]
        assert torch.allclose(t.boxes, carry(stored, BoxMap(), v.map).boxes)
        assert t.flag("pseudo").all() and t.flag("regress").all()


def test_stac_needs_a_teacher_file():
    with pytest.raises(MinedetError, match="method.teacher"):
        build_method({"name": "stac"}, tiny_detector("retinanet"))
    with pytest.raises(MinedetError, match="not found"):
        build_method({"name": "stac", "teacher": "/nonexistent/model.pt"}, tiny_detector("retinanet"))


def test_stac_checks_its_teacher_when_built_not_when_the_data_arrives(tmp_path, monkeypatch):
    """The teacher file is read when the method is built: a teacher of other classes fails there, in one line."""
    from minedet.engine.checkpoint import export_model
    from minedet.models import backbones
    from minedet.models.build import build_detector
    from minedet.models.spec import DetectorSpec
    from tests.helpers import TinyFPN

    monkeypatch.setitem(backbones.BACKBONES, "test_tiny_fpn", lambda *, fpn_channels, **_: TinyFPN(fpn_channels))
    spec = DetectorSpec(name="retinanet", num_classes=3, backbone="test_tiny_fpn", image_size=64, fpn_channels=32)
    path = tmp_path / "model.pt"
    export_model(path, build_detector(spec, pretrained=False))
    with pytest.raises(MinedetError, match="teacher has 3 classes"):
        build_method({"name": "stac", "teacher": str(path)}, tiny_detector("retinanet", num_classes=10))
    assert build_method({"name": "stac", "teacher": str(path)}, tiny_detector("retinanet", num_classes=3)).name == "stac"


# ------------------------------------------------------------------------------------ end to end
def test_mean_teacher_end_to_end_reports_teacher_and_student(tiny_digits, semi_split, tmp_path, capsys):
    from minedet.run import run_training
    from minedet.engine.checkpoint import load_model
    from tests.conftest import tiny_config

    out = tmp_path / "mt"
    cfg = tiny_config(tiny_digits, out, data__train=str(semi_split["labelled"]),
                      data__unlabelled=str(semi_split["unlabelled"]), data__unlabelled_images=str(tiny_digits.image_root),
                      data__hidden=str(semi_split["hidden"]), method__name="mean_teacher", method__burn_in=2,
                      method__tau=0.05, method__paper=True, train__max_steps=4, train__ckpt_every=0)
    result = run_training(cfg, quiet=True)
    assert result["steps"] == 4 and list(result["reports"]) == ["teacher", "student"]
    # 2 steps after burn-in cannot move a 0.9996 EMA: the run says so, once, and trains on
    warned = [x for x in capsys.readouterr().err.splitlines() if "method.ema_decay=0.9996" in x]
    assert len(warned) == 1 and warned[0].startswith("minedet: warning:") and "only 2 follow burn-in" in warned[0]
    ev = json.loads((out / "eval.json").read_text())
    assert ev["roles"] == ["teacher", "student"]
    assert all(0.0 <= ev["eval"][r]["ap"] <= 1.0 for r in ev["roles"])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in rows if r["kind"] == "train"}
    assert not any(k.startswith("unsup/") for k in train[1]) and not any(k.startswith("unsup/") for k in train[2])
    assert "unsup/classification" in train[3] and train[3]["unsup/bbox_regression"] == 0.0
    assert "pseudo/boxes_per_image" in train[4] and "quality/n_hidden" in train[4] and train[4]["quality/n_hidden"] > 0
    _, meta = load_model(out / "model.pt")
    assert meta["role"] == "teacher" and meta["method"] == "mean_teacher"


def test_stac_end_to_end_from_an_exported_teacher_file(tiny_digits, semi_split, tmp_path):
    """The second command of the recipe: method.teacher = the model.pt of a supervised run."""
    from minedet.run import build_spec, run_training
    from minedet.data.coco import load_coco
    from minedet.engine.checkpoint import export_model
    from minedet.models.build import build_detector
    from tests.conftest import tiny_config

    over = dict(data__train=str(semi_split["labelled"]), data__unlabelled=str(semi_split["unlabelled"]),
                data__unlabelled_images=str(tiny_digits.image_root), data__hidden=str(semi_split["hidden"]),
                data__val=None, train__max_steps=1, train__warmup_steps=0, train__ckpt_every=0)
    cfg = tiny_config(tiny_digits, tmp_path / "sup", **over)
    teacher = build_detector(build_spec(cfg, load_coco(cfg.data.train)), pretrained=False)
    export_model(tmp_path / "sup" / "model.pt", teacher, meta={"method": "supervised"})
    out = tmp_path / "stac"
    cfg = tiny_config(tiny_digits, out, method__name="stac", method__teacher=str(tmp_path / "sup" / "model.pt"),
                      method__tau=0.05, **over)
    result = run_training(cfg, quiet=True)
    assert result["steps"] == 1
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    first = [r for r in rows if r["kind"] == "train"][0]
    assert {"sup/classification", "unsup/classification", "unsup/bbox_regression"} <= set(first)
    assert first["quality/n_hidden"] > 0 and "pseudo/boxes_per_image" in first


@pytest.mark.parametrize("preset", ["digits_mean_teacher", "digits_stac", "digits_acrst"])
def test_presets_load_and_name_valid_options(preset):
    import dataclasses

    from minedet.registry import METHODS
    from minedet.config import load_config, preset_path
    from minedet.options import from_dict

    cfg = load_config(preset_path(preset), [])
    cls, opts_cls = METHODS[cfg.method["name"]]
    opts = from_dict(opts_cls, {k: v for k, v in cfg.method.items() if k != "name"}, where="method")
    assert dataclasses.is_dataclass(opts)
    if cfg.data.semi is None:
        assert cfg.data.unlabelled and cfg.data.train and cfg.data.unlabelled != cfg.data.train
    else:  # self-contained: resolve_data builds the digits and the split
        assert cfg.data.digits and cfg.data.semi["percent"] > 0 and cfg.data.unlabelled is None
    if preset in ("digits_mean_teacher", "digits_acrst"):
        m = cls(tiny_detector("retinanet", num_classes=10), opts)
        assert set(m.streams()) == {"labelled", "unlabelled"}


def test_trainer_resume_after_burn_in_reproduces_the_teacher(tmp_path):
    """Checkpoint at step 2 (burn-in 1), resume to 3: teacher, student and step counter equal an
    uninterrupted run's."""
    from minedet.config import TrainConfig
    from minedet.engine.checkpoint import load_checkpoint
    from minedet.engine.optim import optimizer_and_schedule
    from minedet.engine.trainer import Trainer

    def batches(start):
        i = start
        while True:
            yield _batch(seed=i)
            i += 1

    def run(out, steps, resume=None):
        m = MeanTeacher(tiny_detector("retinanet", seed=0), MeanTeacherOptions(burn_in=1, ema_decay=0.9, tau=0.3))
        cfg = TrainConfig(max_steps=steps, lr=0.05, warmup_steps=0, ckpt_every=1, progress=False, schedule="constant")
        optimizer, scheduler = optimizer_and_schedule(m, cfg)
        tr = Trainer(m, cfg, batches, optimizer=optimizer, scheduler=scheduler, out_dir=out)
        if resume:
            tr.resume(resume)
        tr.fit()
        return load_checkpoint(out / "checkpoints" / "last.pt")

    a = run(tmp_path / "a", 3)
    run(tmp_path / "b", 2)
    b = run(tmp_path / "b", 3, resume=tmp_path / "b" / "checkpoints" / "last.pt")
    assert a["method_extra"] == b["method_extra"] == {"steps_done": 3}
    teacher_keys = [k for k in a["method"] if k.startswith("source.ema.module.")]
    assert teacher_keys
    for k, v in a["method"].items():
        assert torch.equal(v, b["method"][k]), k


def test_adaptive_thresholds_come_from_the_teachers_scores_on_labelled_boxes():
    m = MeanTeacher(tiny_detector("retinanet").train(), MeanTeacherOptions(burn_in=0, adaptive=True, max_dets=10))
    m(_batch())
    logged = m.log_metrics()
    taus = [logged[f"pseudo/tau_{k}"] for k in range(3)]
    assert all(0.3 <= t <= 0.9 for t in taus), taus
    assert m.rule.thresholds.values().tolist() == pytest.approx(taus)
    with pytest.raises(MinedetError, match="adaptive"):
        build_method({"name": "stac", "adaptive": True, "teacher": "x.pt"}, tiny_detector("retinanet"))


def test_paper_switch_restores_the_papers_rule_on_every_self_training_method():
    from minedet.methods.acrst import AcrstOptions, StacAcrstOptions
    from minedet.methods.mixed import MixedOptions

    for cls in (MeanTeacherOptions, StacOptions, AcrstOptions, StacAcrstOptions, MixedOptions):
        o = cls(ignore_below=0.3, adaptive=True, paper=True)
        assert (o.ignore_below, o.adaptive) == (None, False), cls.__name__
        assert cls(ignore_below=0.3, adaptive=True).ignore_below == 0.3
    m = build_method({"name": "mean_teacher", "tau": 0.7, "ignore_below": 0.3, "paper": True}, tiny_detector("retinanet"))
    assert m.rule.floor == 0.7, "with paper=true nothing below tau is kept, not even as an ignored box"
