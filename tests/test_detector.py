"""The adapter is pinned to torchvision: same detections in eval mode, same losses in train mode."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import random_targets, tiny_detector

DETECTORS = ["retinanet", "fcos", "faster_rcnn"]


def _images(n=3, size=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, size, size, generator=g) for _ in range(n)]


def _tv_targets(targets, detector):
    off = 1 if detector.kind == "faster_rcnn" else 0
    return [{"boxes": t.boxes.clone(), "labels": t.labels.clone() + off} for t in targets]


def _perturb_heads(det):
    """Move the classifier bias off its prior so eval decoding sees many confident candidates."""
    with torch.no_grad():
        for name, p in det.model.named_parameters():
            if name.endswith(("cls_logits.bias", "cls_score.bias")):
                p.add_(3.0)


@pytest.mark.parametrize("name", DETECTORS)
def test_eval_detections_equal_torchvision(name):
    det = tiny_detector(name, score_thresh=0.01).eval()
    _perturb_heads(det)
    images = _images(sizes := 3)
    with torch.no_grad():
        ref = det.model(images)
        ours = det.predict(images)
    assert len(ours) == sizes
    total = 0
    for r, o in zip(ref, ours):
        off = 1 if name == "faster_rcnn" else 0
        assert torch.equal(r["labels"] - off, o.labels)
        torch.testing.assert_close(r["boxes"], o.boxes)
        torch.testing.assert_close(r["scores"], o.scores)
        total += len(o)
    assert total > 0, "the comparison must see detections"


@pytest.mark.parametrize("name", DETECTORS)
@pytest.mark.parametrize("empty", [(), (1,), (0, 1, 2)])
def test_train_losses_equal_torchvision(name, empty):
    det = tiny_detector(name).train()
    images = _images(3)
    targets = random_targets(3, empty=empty)
    torch.manual_seed(7)
    ref = det.model(images, _tv_targets(targets, det))
    torch.manual_seed(7)
    ours = det.loss(det.forward_heads(images), targets)
    assert set(ref) == set(ours)
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("name", DETECTORS)
def test_losses_backpropagate(name):
    det = tiny_detector(name).train()
    out = det.forward_heads(_images(2))
    losses = det.loss(out, random_targets(2, empty=(1,)))
    sum(losses.values()).backward()
    grads = [p.grad for p in det.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", DETECTORS)
def test_no_regression_flag_removes_box_loss(name):
    det = tiny_detector(name).train()
    images = _images(2)
    targets = random_targets(2)
    box_key = {"retinanet": "bbox_regression", "fcos": "bbox_regression", "faster_rcnn": "loss_box_reg"}[name]
    torch.manual_seed(3)
    full = det.loss(det.forward_heads(images), targets)
    torch.manual_seed(3)
    off = det.loss(det.forward_heads(images), [t.with_flags(regress=False) for t in targets])
    assert full[box_key] > 0
    assert off[box_key] == 0
    # classification is untouched by the regression flag
    cls_key = {"retinanet": "classification", "fcos": "classification", "faster_rcnn": "loss_classifier"}[name]
    torch.testing.assert_close(full[cls_key], off[cls_key])


@pytest.mark.parametrize("name", ["retinanet", "fcos"])
def test_zero_weight_ignores_box(name):
    """A box with weight 0 is ignored: its anchors are neither positives nor negatives."""
    det = tiny_detector(name).train()
    images = _images(2)
    ts = random_targets(2)
    out = det.forward_heads(images)
    ignored = det.loss(out, [t.with_flags(weight=0.0) for t in ts])
    weighted = det.loss(out, [t.with_flags(weight=1.0) for t in ts])
    plain = det.loss(out, ts)
    torch.testing.assert_close(weighted["classification"], plain["classification"])
    assert not torch.isclose(ignored["classification"], plain["classification"])


def test_take_splits_a_batch_like_separate_forwards():
    det = tiny_detector("retinanet").eval()
    images = _images(4)
    with torch.no_grad():
        both = det.forward_heads(images)
        first = det.forward_heads(images[:2])
        a = det.decode(both.take(slice(0, 2)))
        b = det.decode(first)
    for x, y in zip(a, b):
        torch.testing.assert_close(x.boxes, y.boxes)


def test_decode_maps_boxes_back_to_input_frame():
    """An input of another size is resized inside the model; detections come back in input pixels."""
    det = tiny_detector("retinanet", score_thresh=0.0).eval()
    _perturb_heads(det)
    img = torch.rand(3, 96, 48)
    with torch.no_grad():
        ref = det.model([img])[0]
        ours = det.predict([img])[0]
    torch.testing.assert_close(ours.boxes, ref["boxes"])
    assert float(ours.boxes[:, 2].max()) <= 48 + 1e-3
    assert float(ours.boxes[:, 3].max()) <= 96 + 1e-3


def test_fcos_class_prob_threshold_gates_before_centerness():
    """Co-mining's FCOS rule: the threshold applies to the class probability, not sqrt(p * centerness)."""
    det = tiny_detector("fcos", score_thresh=0.5).eval()
    with torch.no_grad():
        head = det.model.head
        head.classification_head.cls_logits.bias.fill_(6.0)  # p ~ 0.998
        head.regression_head.bbox_ctrness.bias.fill_(-9.0)  # centerness ~ 1e-4 -> sqrt(p c) ~ 0.01
    out = det.forward_heads(_images(2))
    assert sum(len(t) for t in det.decode(out)) == 0
    gated = det.decode(out, score_rule="class_prob")
    assert all(len(t) > 0 for t in gated)
    assert all(t.scores.min().item() > 0.5 for t in gated), "a per-call rule reports the score it thresholded"
    built = tiny_detector("fcos", score_thresh=0.5, extra={"threshold_on": "class_prob"}).eval()
    built.load_state_dict(det.state_dict())
    own = built.decode(built.forward_heads(_images(2)))
    assert all(len(t) > 0 for t in own)
    assert all(t.scores.max().item() < 0.5 for t in own), "the detector's own rule ranks and reports the rescored score"


def test_retinanet_batch_loss_normalisation_divides_by_the_batch_foreground():
    """loss_norm=batch (detectron2): sum over the batch / the batch's foreground anchors; the
    default (torchvision) divides each image by its own count, so an empty image weighs its whole
    background loss by 1."""
    from minedet.errors import MinedetError
    from tests.helpers import random_targets, tiny_detector

    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    targets = random_targets(3, 64, empty=(1,), seed=3)
    img = tiny_detector("retinanet", seed=0).train()
    bat = tiny_detector("retinanet", seed=0, extra={"loss_norm": "batch"}).train()
    assert bat.loss_norm == "batch" and img.loss_norm == "image"
    out = img.forward_heads(images)
    matched = img.match(out, img._to_resized(targets, out))
    sums = [img.focal_sum(t, lg, m) for t, lg, m in zip(img._to_resized(targets, out), out.head["cls_logits"], matched)]
    counts = [int((m >= 0).sum()) for m in matched]
    assert counts[1] == 0 and counts[0] > 0
    li, lb = img.loss(out, targets), bat.loss(bat.forward_heads(images), targets)
    assert torch.allclose(li["classification"], sum(s / max(1, n) for s, n in zip(sums, counts)) / 3, rtol=1e-5)
    assert torch.allclose(lb["classification"], sum(sums) / sum(counts), rtol=1e-5)
    with pytest.raises(MinedetError, match="loss_norm"):
        tiny_detector("retinanet", extra={"loss_norm": "anchor"})


def test_faster_rcnn_decode_caps_proposals_best_first():
    """Co-generation decodes a training forward: the RoI head sees the best proposals only, at most
    the RPN's test-time count (what inference decodes) and at most ``topk_candidates``."""
    det = tiny_detector("faster_rcnn").train()
    out = det.forward_heads(_images(2))
    assert all(len(p) > 10 for p in out.proposals)
    seen = []
    det.model.roi_heads.box_roi_pool.register_forward_pre_hook(lambda m, args: seen.append(args[1]))
    det.model.rpn._post_nms_top_n["testing"] = 10
    with torch.no_grad():
        det.decode(out)
        det.decode(out, topk_candidates=4)
        det.decode(out, topk_candidates=1000)
    assert [[len(b) for b in boxes] for boxes in seen] == [[10, 10], [4, 4], [10, 10]]
    for b, p in zip(seen[1], out.proposals):
        torch.testing.assert_close(b, p[:4])
