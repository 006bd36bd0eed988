"""ACRST: CropBank wiring, FBR targets (pastes, occlusion), AFFR refresh, two-stage filtering,
selective supervision, Table 10 quality variants, state, end to end."""

from __future__ import annotations

import json

import pytest

from minedet.methods.self_training import Group
import torch

from minedet.registry import build_method
from minedet.data.datasets import View, StreamBatch
from minedet.data.transforms import BoxMap
from minedet.errors import MinedetError
from minedet.methods.acrst import Acrst, AcrstOptions
from minedet.structures import Target
from tests.helpers import random_targets, tiny_detector

SIZE = 64


def _det(boxes, labels, scores, image_id=-1):
    return Target(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.int64),
                  torch.tensor(scores, dtype=torch.float32), image_id=image_id)


def _batch(n=2, seed=0, pasted=None, flip_weak=False):
    """Labelled + unlabelled (weak, strong) views. ``pasted``: per unlabelled image a Target of
    pasted instances (pasted=True) already in its strong view."""
    g = torch.Generator().manual_seed(seed)
    m = BoxMap(size=(SIZE, SIZE))
    lw = [View(torch.rand(3, SIZE, SIZE, generator=g), t, m) for t in random_targets(n, SIZE, empty=(1,), seed=seed)]
    ls = [View((v.image * 0.7 + 0.1).clamp(0, 1), v.target, m) for v in lw]
    wm = BoxMap(-1.0, 1.0, SIZE, 0.0, (SIZE, SIZE)) if flip_weak else m
    uw = [View(torch.rand(3, SIZE, SIZE, generator=g), Target.empty(100 + i), wm) for i in range(n)]
    us = []
    for i, v in enumerate(uw):
        t = Target.empty(100 + i) if pasted is None else pasted[i]
        us.append(View((v.image * 0.8).clamp(0, 1), t, m))
    return {
        "labelled": StreamBatch(list(range(n)), [(0, 0)] * n, {"weak": lw, "strong": ls}),
        "unlabelled": StreamBatch([100 + i for i in range(n)], [(0, 0)] * n, {"weak": uw, "strong": us}),
    }


def _fake_teacher(m, per_image):
    def predict(images, **kw):
        return [per_image[i % len(per_image)] for i in range(len(images))]

    m.teacher.predict = predict


def _acrst(**kw) -> Acrst:
    kw.setdefault("burn_in", 0)
    kw.setdefault("two_stage", False)
    return Acrst(tiny_detector("retinanet", num_classes=3).train(), AcrstOptions(**kw))


def _pasted(boxes, labels):
    t = Target(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels))
    return t.with_flags(pasted=True, pseudo=True)


# ------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("bad, msg", [({"bank": "both_"}, "method.bank"), ({"n_min": 3, "n_max": 1}, "n_min"),
                                      ({"beta": -1.0}, "beta"), ({"paste_on": "labelled"}, "paste_on"),
                                      ({"refresh_every": 0}, "refresh_every"), ({"crop_scale": [1.2, 0.8]}, "crop_scale"),
                                      ({"multilabel": {"step": 3}}, "method.multilabel.step"),
                                      ({"occlusion_ignore": 0.95}, "method.occlusion_ignore"),
                                      ({"occlusion": 0.4}, r"occlusion_ignore \(0.5 by default\).*set it to null")])
def test_bad_options_are_one_line_errors(bad, msg):
    with pytest.raises(MinedetError, match=msg):
        _acrst(**bad)


def test_registry_builds_acrst_and_rejects_unknown_keys():
    det = tiny_detector("retinanet", num_classes=3)
    m = build_method({"name": "acrst", "beta": 0.4, "bank": "pseudo"}, det)
    assert isinstance(m, Acrst) and m.options.beta == 0.4 and m.options.bank == "pseudo"
    with pytest.raises(MinedetError, match="did you mean 'beta'"):
        build_method({"name": "acrst", "betta": 0.4}, det)


# ------------------------------------------------------------------- FBR targets, occlusion, SS
def test_unsup_targets_drop_pseudo_boxes_hidden_by_a_paste_and_add_the_pasted_ones():
    m = _acrst(tau=0.5)
    _fake_teacher(m, [_det([[2, 2, 12, 12], [30, 30, 50, 50]], [0, 1], [0.9, 0.9])])
    pasted = [_pasted([[0, 0, 20, 20]], [2]), Target.empty(101)]  # covers the first box of image 0 entirely
    m(_batch(pasted=pasted))
    t0, t1 = m.last_step.taught["unsup"]
    assert len(t0) == 2 and t0.labels.tolist() == [1, 2], "the covered pseudo box goes, the paste comes"
    assert t0.flag("pasted").tolist() == [False, True]
    assert t0.flag("regress").tolist() == [False, True], "selective supervision: only pastes regress"
    assert len(t1) == 2 and not t1.flag("regress").any(), "no paste: both pseudo boxes stay, none regresses"


def test_ignored_uncertain_boxes_follow_the_occlusion_rule_and_stay_out_of_the_bank():
    m = _acrst(tau=0.7, ignore_below=0.3)
    _fake_teacher(m, [_det([[2, 2, 12, 12], [30, 30, 50, 50], [40, 2, 60, 20]], [0, 1, 2], [0.5, 0.9, 0.4])])
    pasted = [_pasted([[0, 0, 20, 20]], [2]), Target.empty(101)]  # hides the uncertain box at (2, 2) in image 0
    m(_batch(pasted=pasted))
    t0, t1 = m.last_step.taught["unsup"]
    assert t0.labels.tolist() == [1, 2, 2] and t0.flag("weight").tolist() == [1.0, 0.0, 1.0]
    assert t0.flag("pasted").tolist() == [False, False, True]
    assert t1.labels.tolist() == [1, 0, 2] and t1.flag("weight").tolist() == [1.0, 0.0, 0.0]
    assert [p.labels.tolist() for p in m.last_step.labels().confident] == [[1], [1]], "the pseudo bank sees score > tau only"


def test_pseudo_box_half_hidden_by_a_paste_is_ignored_by_default_unless_paper_or_null():
    dets = [_det([[0, 0, 10, 20], [30, 30, 50, 50]], [0, 1], [0.9, 0.9])]
    pasted = [_pasted([[0, 0, 10, 12]], [2]), Target.empty(101)]  # covers 60 % of the first box of image 0
    m = _acrst(tau=0.5)  # the default band: covered by half or more -> ignored
    _fake_teacher(m, dets)
    m(_batch(pasted=pasted))
    t0 = m.last_step.taught["unsup"][0]
    assert t0.labels.tolist() == [0, 1, 2] and t0.flag("weight").tolist() == [0.0, 1.0, 1.0]
    for kept in (_acrst(tau=0.5, paper=True), _acrst(tau=0.5, occlusion_ignore=None)):
        _fake_teacher(kept, dets)
        kept(_batch(pasted=pasted))
        assert kept.last_step.taught["unsup"][0].flag("weight").tolist() == [1.0, 1.0, 1.0], "Eq. 7 alone keeps it"


def test_selective_supervision_keeps_regression_only_from_pastes():
    m = _acrst(tau=0.5)
    _fake_teacher(m, [_det([[30, 30, 50, 50]], [1], [0.9])])
    losses = m(_batch(pasted=[_pasted([[4, 4, 24, 24]], [2]), Target.empty(101)]))
    assert "unsup/bbox_regression" in losses and float(losses["unsup/bbox_regression"].detach()) > 0
    m2 = _acrst(tau=0.5)
    _fake_teacher(m2, [_det([[30, 30, 50, 50]], [1], [0.9])])
    losses = m2(_batch(pasted=[Target.empty(100), Target.empty(101)]))
    assert float(losses["unsup/bbox_regression"].detach()) == 0.0, "carried pseudo boxes never regress"


def test_without_selective_supervision_no_regression_from_unlabelled_images():
    m = _acrst(tau=0.5, selective_supervision=False)
    _fake_teacher(m, [_det([[30, 30, 50, 50]], [1], [0.9])])
    losses = m(_batch(pasted=[_pasted([[4, 4, 24, 24]], [2]), Target.empty(101)]))
    assert losses["unsup/bbox_regression"].item() == 0.0 and "unsup/classification" in losses
    assert not m.last_step.taught["unsup"][0].flag("regress").any()
    # a pasted *pseudo* crop in a labelled image does not regress either; a pasted GT crop does
    gt = Target(torch.tensor([[1.0, 1, 9, 9], [20, 20, 40, 40], [40, 40, 60, 60]]), torch.tensor([0, 1, 2]),
                flags={"pasted": torch.tensor([False, True, True]), "pseudo": torch.tensor([False, True, False])})
    view = View(torch.rand(3, SIZE, SIZE), gt, BoxMap(size=(SIZE, SIZE)))
    sup = Group("labelled", ("strong",), "sup")
    assert m.acrst.targets(sup, gt, view).flag("regress").tolist() == [True, False, True]
    assert _acrst().acrst.targets(sup, gt, view).flag("regress").tolist() == [True, True, True]


# ------------------------------------------------------------------------------ two-stage filter
def test_two_stage_vetoes_classes_the_image_level_classifier_calls_absent():
    dets = [_det([[2, 2, 12, 12], [30, 30, 50, 50], [40, 2, 60, 20]], [0, 1, 2], [0.9, 0.8, 0.3])]
    m = _acrst(tau=0.5, two_stage=True)
    m.acrst.image_probs = {100: torch.tensor([0.9, 0.1, 0.9]), 101: torch.tensor([0.9, 0.9, 0.9])}
    _fake_teacher(m, dets)
    m(_batch())
    p0, p1 = m.last_step.labels().confident
    assert p0.labels.tolist() == [0], "class 1 is vetoed (0.1 < tau_ml), class 2 fails stage one (0.3 < tau)"
    assert p1.labels.tolist() == [0, 1]
    single = _acrst(tau=0.5, two_stage=False)
    single.acrst.image_probs = m.acrst.image_probs
    _fake_teacher(single, dets)
    single(_batch())
    assert single.last_step.labels().confident[0].labels.tolist() == [0, 1]


def test_quality_of_single_two_stage_and_mining_variants_is_logged_against_hidden_truth():
    from types import SimpleNamespace

    hidden = {100: _det([[2, 2, 12, 12], [40, 2, 60, 20]], [0, 2], [1.0, 1.0]), 101: Target.empty(101)}
    ds = SimpleNamespace(hidden=True, hidden_target=lambda i: Target(hidden[i].boxes, hidden[i].labels, image_id=i))
    m = _acrst(tau=0.5, two_stage=True, mining_pos=0.7)
    m.datasets.update({"unlabelled": ds})  # what bind() would set
    m.acrst.data = (None, ds)
    m.acrst.image_probs = {100: torch.tensor([0.9, 0.1, 0.9]), 101: torch.tensor([0.9, 0.9, 0.9])}
    _fake_teacher(m, [_det([[2, 2, 12, 12], [30, 30, 50, 50], [40, 2, 60, 20]], [0, 1, 2], [0.9, 0.8, 0.3])])
    m(_batch())
    m.after_step(1)
    met = m.log_metrics()
    # image 100: single keeps {0 (TP), 1 (FP)}; two-stage keeps {0}; mining keeps {0, 1, 2 (positive class)}
    # image 101: no hidden boxes, single/two-stage keep {0, 1}, mining {0, 1, 2}: all false positives
    assert met["quality_single/precision"] == pytest.approx(1 / 4)
    assert met["quality_two_stage/precision"] == pytest.approx(1 / 3)
    assert met["quality_mining/recall"] == pytest.approx(1.0) and met["quality_single/recall"] == pytest.approx(0.5)


# ------------------------------------------------------------------------------------ AFFR, bank
def test_pseudo_recall_accumulates_and_refresh_sets_the_class_probabilities():
    from minedet.data.cropbank import class_probabilities

    m = _acrst(tau=0.5, refresh_every=2, beta=0.6)
    _fake_teacher(m, [_det([[2, 2, 12, 12], [30, 30, 50, 50], [40, 2, 60, 20], [5, 40, 20, 60]], [0, 0, 1, 2],
                           [0.9, 0.6, 0.3, 0.05])])
    m(_batch())
    m.after_step(1)
    expected = torch.tensor([1.5, 0.3, 0.0], dtype=torch.float64) * 2  # two images; 0.05 <= pr_thresh 0.1
    assert torch.allclose(m.acrst.pr_window, expected)
    assert torch.allclose(m.acrst.class_probs, torch.full((3,), 1 / 3)), "no refresh before refresh_every steps"
    m(_batch())
    m.after_step(2)
    assert torch.allclose(m.acrst.class_probs, class_probabilities(2 * expected, 0.6).float())
    assert m.acrst.class_probs[2] > m.acrst.class_probs[1] > m.acrst.class_probs[0], "neglected classes are drawn more"
    assert float(m.acrst.pr_window.sum()) == 0.0, "a new window starts"
    uniform = _acrst(tau=0.5, refresh_every=1, affr=False)
    _fake_teacher(uniform, [_det([[2, 2, 12, 12]], [0], [0.9])])
    uniform(_batch())
    uniform.after_step(1)
    assert torch.allclose(uniform.acrst.class_probs, torch.full((3,), 1 / 3)), "affr off = beta 0 = uniform FBR"


def test_pseudo_bank_keeps_the_latest_pseudo_labels_in_file_pixels():
    m = _acrst(tau=0.5)
    m.acrst.index_of = {100: 0, 101: 1}
    _fake_teacher(m, [_det([[2, 2, 12, 12]], [1], [0.9])])
    m(_batch(flip_weak=True))  # the weak view is flipped: file x = 64 - view x
    m.after_step(1)
    arrays = m.acrst.pseudo_bank.snapshot(m.acrst.class_probs, 1)
    assert len(m.acrst.pseudo_bank) == 2
    assert sorted(arrays.boxes[:, 0].tolist()) == [52.0, 52.0] and set(arrays.labels.tolist()) == {1}
    _fake_teacher(m, [Target.empty()])
    m(_batch())
    m.after_step(2)
    assert len(m.acrst.pseudo_bank) == 0, "an image's records are replaced by its latest (empty) pseudo-labels"


def test_extra_state_round_trip_restores_bank_and_affr_state():
    m = _acrst(tau=0.5, refresh_every=1)
    m.acrst.index_of = {100: 0, 101: 1}
    _fake_teacher(m, [_det([[2, 2, 12, 12], [30, 30, 50, 50]], [0, 2], [0.9, 0.8])])
    m(_batch())
    m.after_step(1)
    state = m.extra_state()
    n = _acrst(tau=0.5, refresh_every=1)
    n.load_extra_state(state)
    assert len(n.acrst.pseudo_bank) == len(m.acrst.pseudo_bank) == 4
    assert torch.equal(n.acrst.class_probs, m.acrst.class_probs) and torch.equal(n.acrst.pr_last, m.acrst.pr_last)
    assert n.steps_done == m.steps_done == 1


# ---------------------------------------------------------------------------------- end to end
def test_acrst_end_to_end_pastes_filters_and_reports(tiny_digits, semi_split, tmp_path):
    from minedet.run import run_training
    from minedet.engine.checkpoint import load_model
    from tests.conftest import tiny_config

    out = tmp_path / "acrst"
    cfg = tiny_config(tiny_digits, out, data__train=str(semi_split["labelled"]),
                      data__unlabelled=str(semi_split["unlabelled"]), data__unlabelled_images=str(tiny_digits.image_root),
                      data__hidden=str(semi_split["hidden"]), method__name="acrst", method__burn_in=2,
                      method__tau=0.05, method__ignore_below=0.01, method__refresh_every=1, method__n_min=1, method__n_max=3,
                      method__multilabel={"steps": 4, "burn_in": 2, "batch_size": 2, "image_size": 32, "pretrained": False},
                      train__max_steps=4, train__ckpt_every=2)
    result = run_training(cfg, quiet=True)
    assert result["steps"] == 4 and list(result["reports"]) == ["teacher", "student"]
    assert (out / "multilabel.pt").is_file() and (out / "multilabel_quality.json").is_file()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in rows if r["kind"] == "train"}
    assert "unsup/bbox_regression" in train[3], "selective supervision keeps the regression term"
    assert train[4]["bank/labelled"] > 0 and "bank/bytes" in train[4]
    assert train[4]["quality_two_stage/n_hidden"] > 0 and "affr/mu_0" in train[4]
    losses = [v for k, v in train[4].items() if k.startswith(("sup/", "unsup/"))]
    assert train[4]["loss"] == pytest.approx(sum(losses)), "bank/, affr/ and quality_*/ metrics are not losses"
    _, meta = load_model(out / "model.pt")
    assert meta["role"] == "teacher" and meta["method"] == "acrst"
    # resume from the step-2 checkpoint: the classifier is reused, not retrained
    mtime = (out / "multilabel.pt").stat().st_mtime_ns
    result = run_training(cfg, quiet=True, resume=str(out / "checkpoints" / "last.pt"))
    assert (out / "multilabel.pt").stat().st_mtime_ns == mtime


def test_bind_inserts_the_paste_into_the_strong_views_only(tiny_digits, semi_split, tmp_path):
    from minedet.run import make_dataset
    from minedet.data.paste import Paste
    from tests.conftest import tiny_config

    cfg = tiny_config(tiny_digits, tmp_path)
    m = Acrst(tiny_detector("retinanet", num_classes=10), AcrstOptions(paste_on="unlabelled", n_min=2, n_max=2, two_stage=False))
    streams = m.streams()
    lab = make_dataset(str(semi_split["labelled"]), str(tiny_digits.image_root), cfg, views=streams["labelled"], train=True)
    unl = make_dataset(str(semi_split["unlabelled"]), str(tiny_digits.image_root), cfg, views=streams["unlabelled"],
                       train=True, with_targets=False)
    m.bind({"labelled": lab, "unlabelled": unl}, None)
    assert isinstance(unl.views["strong"].transforms[0], Paste)
    assert not any(isinstance(t, Paste) for t in lab.views["strong"].transforms)
    assert not any(isinstance(t, Paste) for t in unl.views["weak"].transforms)
    sample = unl[0]
    strong = sample["views"]["strong"].target
    assert len(strong) == 2 and strong.flag("pasted").all(), "two crops from the labelled bank"
    assert len(sample["views"]["weak"].target) == 0, "the teacher's view is untouched"


# ------------------------------------------------------------------------------------ data.semi
def test_data_semi_splits_once_and_is_idempotent(tiny_digits, tmp_path):
    from minedet.run import resolve_data
    from minedet.data.coco import load_coco
    from tests.conftest import tiny_config

    cfg = tiny_config(tiny_digits, tmp_path / "run", data__semi={"percent": 50, "seed": 1},
                      data__cache_dir=str(tmp_path / "cache"))
    cfg = resolve_data(cfg, quiet=True)
    lab, unl, hid = load_coco(cfg.data.train), load_coco(cfg.data.unlabelled), load_coco(cfg.data.hidden)
    full = load_coco(tiny_digits.train_json)
    lab_ids, unl_ids = {im["id"] for im in lab.images}, {im["id"] for im in unl.images}
    assert lab_ids.isdisjoint(unl_ids) and lab_ids | unl_ids == {im["id"] for im in full.images}
    assert len(lab_ids) == 6 and not unl.annotations
    assert {a["image_id"] for a in hid.annotations} <= unl_ids
    assert cfg.data.unlabelled_images == cfg.data.train_images == str(tiny_digits.image_root)
    again = resolve_data(cfg, quiet=True)  # run_training resolves once more: nothing changes
    assert (again.data.train, again.data.unlabelled, again.data.hidden) == (cfg.data.train, cfg.data.unlabelled, cfg.data.hidden)
    other = resolve_data(tiny_config(tiny_digits, tmp_path / "run", data__semi={"percent": 50, "seed": 1},
                                     data__cache_dir=str(tmp_path / "cache")), quiet=True)
    assert other.data.train == cfg.data.train, "the same split is found in the cache"
    with pytest.raises(MinedetError, match="data.semi"):
        resolve_data(tiny_config(tiny_digits, tmp_path / "r2", data__semi={"pct": 5}, data__cache_dir=str(tmp_path / "c2")))


# -------------------------------------------------------------------------- STAC + ACRST (Table 7)
def test_stac_acrst_labels_once_through_both_stages_and_pastes(tiny_digits, semi_split, tmp_path):
    from minedet.run import build_spec, run_training
    from minedet.data.coco import load_coco
    from minedet.engine.checkpoint import export_model
    from minedet.models.build import build_detector
    from tests.conftest import tiny_config

    over = dict(data__train=str(semi_split["labelled"]), data__unlabelled=str(semi_split["unlabelled"]),
                data__unlabelled_images=str(tiny_digits.image_root), data__hidden=str(semi_split["hidden"]),
                data__val=None, train__max_steps=2, train__warmup_steps=0, train__ckpt_every=0)
    cfg = tiny_config(tiny_digits, tmp_path / "sup", **over)
    teacher = build_detector(build_spec(cfg, load_coco(cfg.data.train)), pretrained=False)
    export_model(tmp_path / "sup" / "model.pt", teacher, meta={"method": "supervised"})
    out = tmp_path / "stac_acrst"
    cfg = tiny_config(tiny_digits, out, method__name="stac_acrst", method__teacher=str(tmp_path / "sup" / "model.pt"),
                      method__tau=0.001, method__pr_thresh=0.001, method__max_dets=5, method__n_min=1, method__n_max=2,
                      method__multilabel={"steps": 2, "burn_in": 1, "batch_size": 2, "image_size": 32, "pretrained": False},
                      **over)
    result = run_training(cfg, quiet=True)
    assert result["steps"] == 2
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    first = [r for r in rows if r["kind"] == "train"][0]
    assert first["bank/pseudo"] > 0 and first["bank/labelled"] > 0, "the once-only labels fill the pseudo bank"
    assert "affr/mu_0" in first and abs(sum(first[f"affr/mu_{k}"] for k in range(10)) - 1) < 1e-5
    assert {"sup/classification", "unsup/classification", "unsup/bbox_regression"} <= set(first)
    assert (out / "multilabel.pt").is_file()


def test_stac_acrst_selective_supervision_flags():
    det = tiny_detector("retinanet", num_classes=3)
    teacher = tiny_detector("retinanet", num_classes=3)
    from minedet.methods.acrst import StacAcrst, StacAcrstOptions

    def stored(m, regress):
        m.source.confident = {100: _det([[30, 30, 50, 50]], [1], [0.95]).with_flags(pseudo=True, regress=regress),
                              101: Target.empty(101)}
        m.source.filled = True
        m(batch)
        return m.last_step.taught["unsup"][0]

    batch = _batch(pasted=[_pasted([[4, 4, 24, 24]], [2]), Target.empty(101)])
    t = stored(StacAcrst(det, StacAcrstOptions(two_stage=False), teacher=teacher), regress=False)
    assert t.flag("pasted").tolist() == [False, True] and t.flag("regress").tolist() == [False, True]
    m2 = StacAcrst(det, StacAcrstOptions(two_stage=False, selective_supervision=False), teacher=teacher)
    assert stored(m2, regress=True).flag("regress").tolist() == [True, True], "without SS: STAC regresses every pseudo box"


@pytest.mark.parametrize("name, reg_keys", [("fcos", {"unsup/bbox_regression", "unsup/bbox_ctrness"}),
                                            ("faster_rcnn", {"unsup/loss_box_reg", "unsup/loss_rpn_box_reg"})])
def test_acrst_on_fcos_and_faster_rcnn_selective_supervision(name, reg_keys):
    for ss in (True, False):
        m = Acrst(tiny_detector(name, num_classes=3).train(), AcrstOptions(burn_in=0, two_stage=False, tau=0.5,
                                                                            selective_supervision=ss))
        _fake_teacher(m, [_det([[30, 30, 50, 50]], [1], [0.9])])
        losses = m(_batch(pasted=[_pasted([[4, 4, 24, 24]], [2]), Target.empty(101)]))
        assert reg_keys <= set(losses)
        regressed = [losses[k].item() > 0 for k in reg_keys]
        assert (any(regressed) if ss else not any(regressed)), (ss, {k: float(losses[k]) for k in reg_keys})
        total = sum(losses.values())
        assert torch.isfinite(total)
        total.backward()


def test_dataloader_workers_pick_up_a_republished_bank(tiny_digits, semi_split, tmp_path):
    """The bank reaches DataLoader worker processes through the snapshot file: a refresh published
    while persistent workers run is what the next samples paste from."""
    import os

    from minedet.run import make_dataset
    from minedet.data.cropbank import CropBank, publish
    from minedet.data.datasets import infinite_loader
    from tests.conftest import tiny_config

    cfg = tiny_config(tiny_digits, tmp_path)
    m = Acrst(tiny_detector("retinanet", num_classes=10), AcrstOptions(n_min=3, n_max=3, two_stage=False, paste_on="unlabelled"))
    streams = m.streams()
    lab = make_dataset(str(semi_split["labelled"]), str(tiny_digits.image_root), cfg, views=streams["labelled"], train=True)
    unl = make_dataset(str(semi_split["unlabelled"]), str(tiny_digits.image_root), cfg, views=streams["unlabelled"],
                       train=True, with_targets=False)
    m.bind({"labelled": lab, "unlabelled": unl}, tmp_path)  # workers read the snapshots from the run's folder
    assert m.acrst.channel.path == tmp_path / "cropbank.pt"

    def only(label: int, version: int) -> None:
        bank = CropBank(10)
        bank.set_image(0, 0, Target(torch.tensor([[10.0, 10, 30, 30]]), torch.tensor([label])))
        publish(bank.snapshot(None, version), m.acrst.channel.path)
        st = os.stat(m.acrst.channel.path)
        os.utime(m.acrst.channel.path, ns=(st.st_atime_ns, st.st_mtime_ns + version * 1_000_000_000))

    only(4, 1)
    it = infinite_loader(unl, 2, seed=0, workers=1)
    first = next(it)
    assert {int(k) for v in first.views["strong"] for k in v.target.labels} == {4}
    only(7, 2)
    labels = set()
    for _ in range(4):  # samples already prefetched may still come from the old bank
        labels |= {int(k) for v in next(it).views["strong"] for k in v.target.labels}
    assert 7 in labels
