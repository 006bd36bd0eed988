"""Background Recalibration Loss (minedet.models.brl): build selection, reductions to the plain focal
loss, the recalibration itself, untouched ordinary negatives, empty images and a hand-computed toy."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from minedet.errors import MinedetError
from minedet.models.brl import BRLRetinaNetAdapter, mirror_focal_loss
from minedet.models.detector import HeadOutputs, RetinaNetAdapter
from minedet.structures import Target
from tests.helpers import random_targets, tiny_detector

ALPHA, GAMMA = 0.25, 2.0


@pytest.fixture(scope="module")
def brl():
    return tiny_detector("retinanet", extra={"cls_loss": "brl"}).train()


def _with(det: BRLRetinaNetAdapter, **kw) -> BRLRetinaNetAdapter:
    """Another BRL adapter over the same torchvision model with some options changed."""
    opts = dict(t=det.t, beta=det.beta, gamma=det.gamma, weight=det.weight, confusion_iou=det.confusion_iou,
                pseudo=det.pseudo)
    opts.update(kw)
    return BRLRetinaNetAdapter(det.model, det.num_classes, **opts)


def _plain(det) -> RetinaNetAdapter:
    return RetinaNetAdapter(det.model, det.num_classes)


def _heads(det, n=3, seed=1):
    """Head outputs of n random 64 px images with the class logits as a fresh leaf tensor."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        out = det.forward_heads([torch.rand(3, 64, 64, generator=g) for _ in range(n)])
    logits = out.head["cls_logits"].clone().requires_grad_(True)
    return replace(out, head={**out.head, "cls_logits": logits}), logits


def _cls_grad(det, out, logits, targets):
    loss = det.loss(out, targets)["classification"]
    (grad,) = torch.autograd.grad(loss, logits)
    return loss.detach(), grad


def _flagged_targets():
    ts = random_targets(3, empty=(2,), seed=3)
    t0 = ts[0].with_flags(weight=torch.linspace(0.0, 1.0, len(ts[0])), regress=False)
    t1 = ts[1].with_flags(weight=0.5)
    return [t0, t1, ts[2]]


# ------------------------------------------------------------------------------------------ build
def test_build_picks_brl_adapter_with_options():
    det = tiny_detector("retinanet", extra={"cls_loss": "brl"})
    assert type(det) is BRLRetinaNetAdapter and det.kind == "retinanet"
    assert (det.t, det.beta, det.gamma, det.weight, det.confusion_iou) == (0.5, 1.0, 2.0, 0.1, 0.1)
    det = tiny_detector("retinanet", extra={"cls_loss": "brl", "brl_t": 0.3, "brl_beta": 2, "brl_weight": 0.5,
                                            "brl_gamma": 1.0, "brl_iou": 0.05})
    assert (det.t, det.beta, det.gamma, det.weight, det.confusion_iou) == (0.3, 2.0, 1.0, 0.5, 0.05)
    assert type(tiny_detector("retinanet")) is RetinaNetAdapter
    assert type(tiny_detector("retinanet", extra={"cls_loss": "focal"})) is RetinaNetAdapter


@pytest.mark.parametrize("extra", [
    {"cls_loss": "mirror"},
    {"cls_loss": "brl", "brl_t": 1.5},
    {"cls_loss": "brl", "brl_weight": -0.1},
    {"cls_loss": "brl", "brl_iou": 0.5},
    {"cls_loss": "brl", "brl_beta": "1"},
    {"cls_loss": "brl", "brl_wieght": 0.1},
    {"cls_loss": "brl", "brl_pseudo": "label"},
    {"brl_pseudo": "positive"},
])
def test_build_rejects_bad_options(extra):
    with pytest.raises(MinedetError):
        tiny_detector("retinanet", extra=extra)


# ------------------------------------------------------------------------------------------ reductions
def test_no_confusion_anchors_equals_plain_exactly(brl):
    """brl_iou = 0: no anchor is a confusion anchor, every loss equals the parent's bit for bit
    (per-box weight/regress flags and an empty image included)."""
    det = _with(brl, confusion_iou=0.0)
    out, _ = _heads(det)
    targets = _flagged_targets()
    ours = det.loss(out, targets)
    ref = _plain(det).loss(out, targets)
    assert ours.keys() == ref.keys()
    for k in ref:
        assert torch.equal(ours[k], ref[k]), k


def test_weight_one_and_no_mirror_equals_plain(brl):
    """brl_weight = 1, brl_t = 0: confusion anchors get exactly the focal negative."""
    det = _with(brl, weight=1.0, t=0.0)
    out, logits = _heads(det)
    with torch.no_grad():
        logits.add_(3.0)  # many confident predictions: the mirrored branch would fire if enabled
    targets = _flagged_targets()
    loss, grad = _cls_grad(det, out, logits, targets)
    ref_loss, ref_grad = _cls_grad(_plain(det), out, logits, targets)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-9)
    assert not torch.allclose(_cls_grad(brl, out, logits, targets)[0], ref_loss)


def _roles(det, out, targets):
    """Per image: (confusion, ordinary negative) bool masks over anchors."""
    resized = det._to_resized(targets, out)
    matched = det.match(out, resized)
    conf = [det.confusion_anchors(a, t, m) for a, t, m in zip(out.anchors, resized, matched)]
    neg = [(m == -1) & ~c for m, c in zip(matched, conf)]
    return conf, neg


@pytest.mark.parametrize("weight", [0.0, 0.1])
def test_only_confusion_anchors_change(brl, weight):
    """Positives, ignored anchors and ordinary negatives (IoU in [0.1, 0.4)) keep the parent's
    gradient exactly; confusion anchors get weight * mirror (nothing at all when the weight is 0)."""
    det = _with(brl, weight=weight)
    out, logits = _heads(det)
    with torch.no_grad():
        logits.add_(2.0)
    targets = _flagged_targets()
    conf, neg = _roles(det, out, targets)
    assert sum(int(n.sum()) for n in neg) > 0 and all(bool(c.any()) for c in conf)
    assert bool(conf[2].all()), "an image without boxes is all confusion anchors"
    _, grad = _cls_grad(det, out, logits, targets)
    _, ref = _cls_grad(_plain(det), out, logits, targets)
    for i, c in enumerate(conf):
        torch.testing.assert_close(grad[i][~c], ref[i][~c], rtol=1e-6, atol=1e-10)
        if weight == 0.0:
            assert torch.all(grad[i][c] == 0)
        else:
            assert not torch.allclose(grad[i][c], ref[i][c])


# ------------------------------------------------------------------------------------------ recalibration
def test_confident_prediction_on_confusion_anchor_is_recalibrated(brl):
    """A confident score far from every annotated box (a likely missed object) costs less than under
    the focal loss and is no longer pushed down; a low score on the same anchor is treated as before."""
    out, logits = _heads(brl, n=1)
    targets = random_targets(1, seed=5)
    conf, _ = _roles(brl, out, targets)
    a = int(torch.where(conf[0])[0][0])
    no_mirror = _with(brl, t=0.0)
    with torch.no_grad():
        logits.fill_(-4.0)
        logits[0, a, 1] = 4.0
    brl_loss, brl_grad = _cls_grad(brl, out, logits, targets)
    off_loss, off_grad = _cls_grad(no_mirror, out, logits, targets)
    plain_loss, plain_grad = _cls_grad(_plain(brl), out, logits, targets)
    assert brl_loss < off_loss < plain_loss
    assert brl_grad[0, a, 1] < 0 < off_grad[0, a, 1] and plain_grad[0, a, 1] > 0
    with torch.no_grad():
        logits[0, a, 1] = -0.5  # p = 0.38 <= 1 - t: the ordinary (weighted) focal negative
    torch.testing.assert_close(_cls_grad(brl, out, logits, targets)[0], _cls_grad(no_mirror, out, logits, targets)[0])


def test_mirror_focal_loss_branches_and_gradients():
    x = torch.tensor([-30.0, -2.0, -0.1, 0.0, 0.1, 2.0, 30.0, 120.0], requires_grad=True)
    loss = mirror_focal_loss(x)
    p = torch.sigmoid(x.detach())
    easy = (1 - ALPHA) * p**GAMMA * -torch.log1p(-p.clamp(max=1 - 1e-7))
    hard = (1 - ALPHA) * (1 - p) ** GAMMA * -torch.log(p)
    torch.testing.assert_close(loss[:4], easy[:4])
    torch.testing.assert_close(loss[4:6], hard[4:6])
    assert loss[6] < 1e-20 and loss[7] == 0
    loss.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.all(x.grad[:4] >= 0) and torch.all(x.grad[4:6] < 0)
    # continuous at the threshold p = 0.5 when beta = 1; beta scales only the mirrored branch
    at = mirror_focal_loss(torch.tensor([-1e-4, 1e-4]))
    torch.testing.assert_close(at[0], at[1], rtol=1e-3, atol=0)
    scaled = mirror_focal_loss(torch.tensor([-1.0, 1.0]), beta=3.0)
    torch.testing.assert_close(scaled / mirror_focal_loss(torch.tensor([-1.0, 1.0])), torch.tensor([1.0, 3.0]))
    assert torch.equal(mirror_focal_loss(x.detach(), t=0.0), mirror_focal_loss(x.detach(), t=0.0, beta=5.0))


# ------------------------------------------------------------------------------------------ empty images
def test_empty_images(brl):
    out, logits = _heads(brl, n=2)
    empty = [Target.empty(), Target.empty()]
    loss, grad = _cls_grad(brl, out, logits, empty)
    expect = sum(0.1 * mirror_focal_loss(logits[i].detach()).sum() for i in range(2)) / 2
    torch.testing.assert_close(loss, expect)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.equal(_with(brl, confusion_iou=0.0).loss(out, empty)["classification"],
                       _plain(brl).loss(out, empty)["classification"])


def test_empty_and_mixed_batch_backward_through_model(brl):
    det = tiny_detector("retinanet", extra={"cls_loss": "brl"}).train()
    g = torch.Generator().manual_seed(2)
    images = [torch.rand(3, 64, 64, generator=g) for _ in range(3)]
    for targets in (random_targets(3, empty=(0, 1, 2)), _flagged_targets()):
        det.zero_grad()
        losses = det.loss(det.forward_heads(images), targets)
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        grads = [p.grad for p in det.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(gr).all() for gr in grads)


# ------------------------------------------------------------------------------------------ hand-computed
def _toy(det, anchors, logits):
    k = logits.shape[-1]
    return HeadOutputs(
        images=ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)]),
        input_sizes=[(64, 64)],
        features=[],
        head={"cls_logits": logits.reshape(1, -1, k), "bbox_regression": torch.zeros(1, anchors.shape[0], 4)},
        anchors=[anchors],
        num_anchors_per_level=[anchors.shape[0]],
    )


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def _focal_neg(x):
    p = _sig(x)
    return (1 - ALPHA) * p**GAMMA * -math.log(1 - p)


def _focal_pos(x):
    p = _sig(x)
    return ALPHA * (1 - p) ** GAMMA * -math.log(p)


def _mirror(x, beta=1.0, gamma=2.0):
    p = _sig(x)
    return (1 - ALPHA) * beta * (1 - p) ** gamma * -math.log(p)


def test_one_anchor_hand_computed(brl):
    """One anchor in an image without boxes (so a confusion anchor), K = 2: channel 0 is confident
    (p = 0.88 > 0.5: mirrored branch), channel 1 is not (p = 0.27: focal negative); no positives, so / 1.
    (With a box the single anchor would be that box's low-quality match, whatever the IoU.)"""
    box = Target.empty()
    out = _toy(brl, torch.tensor([[40.0, 40.0, 56.0, 56.0]]), torch.tensor([[2.0, -1.0]]))
    got = brl.loss(out, [box])["classification"]
    assert got.item() == pytest.approx(0.1 * (_mirror(2.0) + _focal_neg(-1.0)), rel=1e-5)
    got = _with(brl, beta=2.0, gamma=1.0, weight=0.3).loss(out, [box])["classification"]
    assert got.item() == pytest.approx(0.3 * (_mirror(2.0, beta=2.0, gamma=1.0) + _focal_neg(-1.0)), rel=1e-5)
    # t = 0.3: mirrored iff p > 0.7, so p = 0.62 (logit 0.5) stays a focal negative, p = 0.88 is mirrored
    out = _toy(brl, torch.tensor([[40.0, 40.0, 56.0, 56.0]]), torch.tensor([[2.0, 0.5]]))
    got = _with(brl, t=0.3).loss(out, [box])["classification"]
    assert got.item() == pytest.approx(0.1 * (_mirror(2.0) + _focal_neg(0.5)), rel=1e-5)


def test_three_anchor_hand_computed(brl):
    """Anchors: confusion (IoU 0), positive (IoU 1, label 1), ordinary negative (IoU 1/3, confident
    p = 0.95 but plain focal); normalised by the one positive."""
    box = Target(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([1]))
    anchors = torch.tensor([[40.0, 40.0, 56.0, 56.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 30.0]])
    logits = torch.tensor([[3.0, 0.2], [0.5, 1.5], [3.0, -2.0]])
    got = brl.loss(_toy(brl, anchors, logits), [box])["classification"].item()
    expect = (0.1 * (_mirror(3.0) + _mirror(0.2))
              + _focal_neg(0.5) + _focal_pos(1.5)
              + _focal_neg(3.0) + _focal_neg(-2.0))
    assert got == pytest.approx(expect, rel=1e-5)
    flagged = brl.loss(_toy(brl, anchors, logits), [box.with_flags(weight=0.5)])["classification"].item()
    expect_w = 0.1 * (_mirror(3.0) + _mirror(0.2)) + 0.5 * (_focal_neg(0.5) + _focal_pos(1.5)) + _focal_neg(3.0) + _focal_neg(-2.0)
    assert flagged == pytest.approx(expect_w, rel=1e-5)


def test_ignored_box_does_not_make_its_surroundings_ordinary_negatives(brl):
    """A weight-0 box (an uncertain pseudo box) ignores the anchor it matches; the anchor beside it
    (IoU 1/3) stays a confusion anchor, as if the box were absent, instead of a full-weight negative."""
    anchors = torch.tensor([[40.0, 40.0, 56.0, 56.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 30.0]])
    logits = torch.tensor([[3.0, 0.2], [0.5, 1.5], [3.0, -2.0]])
    box = Target(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([1]))
    got = brl.loss(_toy(brl, anchors, logits), [box.with_flags(weight=0.0)])["classification"].item()
    expect = 0.1 * (_mirror(3.0) + _mirror(0.2)) + 0.1 * (_mirror(3.0) + _focal_neg(-2.0))
    assert got == pytest.approx(expect, rel=1e-5)
    # a labelled box also near the third anchor (IoU 1/4, its own best anchor is the fourth) makes that
    # anchor an ordinary negative; the weight-0 box still only ignores its match; / 2 matched anchors
    anchors = torch.cat([anchors, torch.tensor([[0.0, 20.0, 10.0, 40.0]])])
    logits = torch.cat([logits, torch.tensor([[-3.0, 2.0]])])
    two = Target(torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 20.0, 10.0, 40.0]]), torch.tensor([1, 0]))
    got = brl.loss(_toy(brl, anchors, logits), [two.with_flags(weight=torch.tensor([0.0, 1.0]))])["classification"]
    expect = (0.1 * (_mirror(3.0) + _mirror(0.2)) + _focal_neg(3.0) + _focal_neg(-2.0)
              + _focal_pos(-3.0) + _focal_neg(2.0)) / 2
    assert got.item() == pytest.approx(expect, rel=1e-5)


@pytest.mark.parametrize("pseudo", ["annotation", "no_norm", "positive"])
def test_what_a_mined_box_is_to_brl(brl, pseudo):
    """model.extra.brl_pseudo: a mined box (pseudo flag) beside a labelled one. Anchors: far (confusion), on the
    mined box (its positive), IoU 1/3 with the mined box only, on the labelled box (its positive).
    ``annotation``: the third anchor is an ordinary negative and both positives normalise; ``no_norm``: the same
    over the labelled positive only; ``positive``: the third anchor stays a confusion anchor as well."""
    anchors = torch.tensor([[40.0, 40.0, 56.0, 56.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 30.0],
                            [0.0, 40.0, 10.0, 60.0]])
    logits = torch.tensor([[3.0, 0.2], [0.5, 1.5], [3.0, -2.0], [-3.0, 2.0]])
    boxes = Target(torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 40.0, 10.0, 60.0]]), torch.tensor([1, 0]))
    boxes = boxes.with_flags(pseudo=torch.tensor([True, False]))
    got = _with(brl, pseudo=pseudo).loss(_toy(brl, anchors, logits), [boxes])["classification"].item()
    near = 0.1 * (_mirror(3.0) + _focal_neg(-2.0)) if pseudo == "positive" else _focal_neg(3.0) + _focal_neg(-2.0)
    total = 0.1 * (_mirror(3.0) + _mirror(0.2)) + _focal_neg(0.5) + _focal_pos(1.5) + near + _focal_pos(-3.0) + _focal_neg(2.0)
    assert got == pytest.approx(total / (2 if pseudo == "annotation" else 1), rel=1e-5)
    # without mined boxes (and on an image with no boxes) every choice is the same loss
    plain = boxes.select(torch.tensor([1]))
    for t in (plain, Target.empty()):
        ref = brl.loss(_toy(brl, anchors, logits), [t])["classification"].item()
        assert _with(brl, pseudo=pseudo).loss(_toy(brl, anchors, logits), [t])["classification"].item() == pytest.approx(ref)


def test_a_box_a_reviewer_rejected_is_background_to_brl(brl):
    """An image with no labels and a rejected box: the anchor on it (IoU 0.64) is an ordinary negative (the plain
    focal loss pushes its confident score down), the anchor far from it stays a confusion anchor; the plain focal
    loss, where every unmatched anchor is a negative, is unchanged by it."""
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [40.0, 40.0, 56.0, 56.0]])
    logits = torch.tensor([[3.0, -2.0], [3.0, 0.2]])
    none = Target.empty()
    rejected = [Target(torch.tensor([[0.0, 0.0, 10.0, 8.0]]), torch.tensor([0]))]
    spared = brl.loss(_toy(brl, anchors, logits), [none])["classification"].item()
    assert spared == pytest.approx(0.1 * (_mirror(3.0) + _focal_neg(-2.0) + _mirror(3.0) + _mirror(0.2)), rel=1e-5)
    taught = brl.loss(_toy(brl, anchors, logits), [none], rejected)["classification"].item()
    assert taught == pytest.approx(_focal_neg(3.0) + _focal_neg(-2.0) + 0.1 * (_mirror(3.0) + _mirror(0.2)), rel=1e-5)
    assert brl.loss(_toy(brl, anchors, logits), [none], [Target.empty()])["classification"].item() == \
        pytest.approx(spared, rel=1e-6)  # an image nobody rejected anything on
    plain = _plain(brl)
    assert plain.loss(_toy(plain, anchors, logits), [none], rejected)["classification"].item() == \
        pytest.approx(plain.loss(_toy(plain, anchors, logits), [none])["classification"].item(), rel=1e-6)


@pytest.mark.parametrize("method", ["supervised", "joint"])
def test_training_on_a_file_with_rejected_boxes_teaches_them_as_background(method):
    """The supervised method and the self-training template (co-mining's two views without mining) hand a
    file's rejected boxes to BRL's loss: a confident head costs more where a reviewer rejected a box than where
    nobody looked."""
    from types import SimpleNamespace

    from minedet.data.datasets import StreamBatch, View
    from minedet.data.transforms import BoxMap
    from minedet.methods.co_mining import PAPER_SETTINGS, CoMining, CoMiningOptions
    from minedet.methods.supervised import Supervised

    def step(rejected: bool) -> float:
        det = tiny_detector("retinanet", extra={"cls_loss": "brl"}).train()
        with torch.no_grad():
            for name, p in det.model.named_parameters():
                if name.endswith("cls_logits.bias"):
                    p.fill_(2.0)  # confident everywhere: BRL spares every anchor far from a label
        m = (Supervised(det) if method == "supervised"
             else CoMining(det, CoMiningOptions(**{**PAPER_SETTINGS, "cogeneration": False})))
        box = Target(torch.tensor([[8.0, 8.0, 40.0, 40.0]]), torch.tensor([0]), image_id=0)
        ds = SimpleNamespace(data=SimpleNamespace(rejected_by_image={0: [object()]} if rejected else {},
                                                  class_names=["a", "b"]),
                             rejected_target=lambda i: box if i == 0 else Target.empty(i), hidden=None)
        m.bind({"labelled": ds})
        g = torch.Generator().manual_seed(0)
        views = [View(torch.rand(3, 64, 64, generator=g), Target.empty(i), BoxMap(size=(64, 64))) for i in (0, 1)]
        batch = {"labelled": StreamBatch([0, 1], [(64, 64)] * 2, {k: views for k in m.streams()["labelled"]})}
        losses = m(batch)
        losses = losses[0] if isinstance(losses, tuple) else losses
        return sum(float(v.detach()) for k, v in losses.items() if k.endswith("/classification"))

    assert step(rejected=True) > step(rejected=False)
