"""ACRST's semi-supervised multi-label classifier (minedet.models.multilabel)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from PIL import Image

from minedet.data.coco import load_coco, save_coco
from minedet.data.datasets import DetectionDataset
from minedet.errors import MinedetError
from minedet.io import save_torch_atomic
from minedet.models.multilabel import (
    MultiLabelClassifier,
    MultiLabelOptions,
    MultiLabelBatches,
    MultiLabelMeanTeacher,
    focal_bce,
    image_labels,
    image_probabilities,
    image_truth,
    load_multilabel,
    negative_label_quality,
    new_classifier,
    save_multilabel,
)
from minedet.structures import Target

COLOURS = {0: (255, 0, 0), 1: (0, 0, 255)}  # class 0: red square, class 1: blue square


def _squares(root, name: str, n: int, seed: int, *, first_id: int = 1, erase: int | None = None):
    """n black 32x32 PNGs; image i holds class c's square iff bit c of (i % 4) is set (so every
    combination appears, none included). ``erase``: that class's boxes go to a hidden-truth file
    instead. Returns the DetectionDataset."""
    rng = np.random.default_rng(seed)
    images, anns, hidden = [], [], []
    for k in range(n):
        iid = first_id + k
        arr = np.zeros((32, 32, 3), np.uint8)
        for c in (0, 1):
            if not (k % 4) >> c & 1:
                continue
            s = int(rng.integers(8, 14))
            x, y = (int(v) for v in rng.integers(0, 32 - s, 2))
            arr[y : y + s, x : x + s] = COLOURS[c]
            ann = {"id": len(anns) + len(hidden) + 1, "image_id": iid, "category_id": c + 1,
                   "bbox": [x, y, s, s], "area": s * s, "iscrowd": 0}
            (hidden if c == erase else anns).append(ann)
        Image.fromarray(arr).save(root / f"{name}_{iid}.png")
        images.append({"id": iid, "file_name": f"{name}_{iid}.png", "width": 32, "height": 32})
    cats = [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]
    save_coco(root / f"{name}.json", {"images": images, "annotations": anns, "categories": cats})
    hid = None
    if erase is not None:
        save_coco(root / f"{name}_hidden.json", {"images": images, "annotations": hidden, "categories": cats})
        hid = load_coco(root / f"{name}_hidden.json")
    return DetectionDataset(load_coco(root / f"{name}.json"), root, hidden=hid)


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    root = tmp_path_factory.mktemp("squares")
    lab = _squares(root, "lab", 16, seed=0)
    unl = _squares(root, "unl", 16, seed=1, first_id=101)
    unl = DetectionDataset(unl.data, root, with_targets=False)
    val = _squares(root, "val", 16, seed=2, first_id=201)
    return lab, unl, val


FAST = dict(image_size=32, batch_size=8, lr=3e-3, pretrained=False)


class TinyNet(nn.Module):
    """Two conv + BatchNorm stages, global max pool, linear head: milliseconds per step on a CPU
    (EfficientNet-Lite0 takes about a second per step on a busy 2-core machine)."""

    def __init__(self, num_classes: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                                  nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(32, num_classes)
        self.image_mean, self.image_std = [0.5] * 3, [0.5] * 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def tiny(seed: int = 0, num_classes: int = 2) -> MultiLabelClassifier:
    torch.manual_seed(seed)
    return MultiLabelClassifier(num_classes, "tiny", image_size=32, net=TinyNet(num_classes))


# --------------------------------------------------------------------------------------- loss


def test_focal_bce_is_bce_without_focusing_or_weighting():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 3, generator=g) * 3
    targets = (torch.rand(4, 3, generator=g) > 0.5).float()
    expected = F.binary_cross_entropy_with_logits(logits, targets)
    assert torch.allclose(focal_bce(logits, targets, gamma=0.0, alpha=None), expected, atol=1e-6)
    assert not torch.allclose(focal_bce(logits, targets, gamma=2.0), expected, atol=1e-4)


def test_focal_bce_hand_computed_entry_and_alpha():
    # one easy positive: p = sigmoid(2) = 0.8808; BCE = -log p = 0.12693; (1 - p)^2 = 0.014209
    x, y = torch.tensor([[2.0]]), torch.tensor([[1.0]])
    p = 1 / (1 + math.exp(-2.0))
    bce = -math.log(p)
    assert float(focal_bce(x, y, gamma=2.0)) == pytest.approx((1 - p) ** 2 * bce, rel=1e-5)
    assert float(focal_bce(x, y, gamma=2.0)) == pytest.approx(0.0018035, rel=1e-3)
    assert float(focal_bce(x, y, gamma=2.0)) < 0.02 * bce  # easy examples are down-weighted
    # alpha weights positives by alpha, negatives by 1 - alpha
    assert float(focal_bce(x, y, gamma=2.0, alpha=0.25)) == pytest.approx(0.25 * (1 - p) ** 2 * bce, rel=1e-5)
    neg = float(focal_bce(x, torch.zeros_like(y), gamma=2.0, alpha=0.25))
    assert neg == pytest.approx(0.75 * p**2 * -math.log(1 - p), rel=1e-5)
    # a hard example keeps most of its weight
    hard = float(focal_bce(torch.tensor([[-2.0]]), y, gamma=2.0))
    assert hard == pytest.approx(p**2 * -math.log(1 - p), rel=1e-5)


def test_focal_bce_mask_ignores_entries_and_all_masked_is_zero():
    logits = torch.tensor([[3.0, -1.0], [0.5, 2.0]], requires_grad=True)
    targets = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    mask = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    loss = focal_bce(logits, targets, gamma=2.0, mask=mask)
    unmasked = torch.stack([focal_bce(logits[0:1, 1:2], targets[0:1, 1:2]), focal_bce(logits[1:2, 0:1], targets[1:2, 0:1])])
    assert torch.allclose(loss, unmasked.mean())
    # changing a masked entry changes nothing; NaN under a zero mask does not leak
    poisoned = logits.detach().clone()
    poisoned[0, 0] = float("nan")
    assert torch.allclose(focal_bce(poisoned, targets, mask=mask), loss.detach())
    loss.backward()
    assert logits.grad[0, 0] == 0 and logits.grad[1, 1] == 0 and logits.grad[0, 1] != 0
    zero = focal_bce(logits, targets, mask=torch.zeros(2, 2))
    assert math.isfinite(float(zero.detach())) and float(zero.detach()) == 0.0
    zero.backward()  # still a graph
    with pytest.raises(ValueError):
        focal_bce(logits, targets, mask=torch.ones(3))


# --------------------------------------------------------------------------------------- labels / model


def test_image_labels_including_empty_target():
    t = Target(torch.tensor([[0, 0, 4, 4], [1, 1, 5, 5], [2, 2, 6, 6]], dtype=torch.float32), torch.tensor([2, 0, 2]))
    assert image_labels(t, 4).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert image_labels(Target.empty(), 3).tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        image_labels(t, 2)


def test_classifier_shapes_for_list_and_batch_inputs():
    torch.manual_seed(0)
    model = MultiLabelClassifier(3, image_size=32, pretrained=False).eval()
    out = model([torch.rand(3, 20, 30), torch.rand(3, 64, 48), torch.rand(3, 32, 32)])
    assert out.shape == (3, 3)
    assert model(torch.rand(2, 3, 50, 40)).shape == (2, 3)
    assert model.resize([torch.rand(3, 20, 30)]).shape == (1, 3, 32, 32)
    model.train()
    p = model.probabilities(torch.rand(2, 3, 32, 32))
    assert p.shape == (2, 3) and bool(((p >= 0) & (p <= 1)).all()) and model.training  # mode restored
    assert not p.requires_grad
    assert set(model.state_dict()) == {f"net.{k}" for k in model.net.state_dict()}  # mean/std not saved


def test_pretrained_classifier_loads_package_weights():
    from minedet.models.backbones import effnet_lite_package_file, load_effnet_lite_weights

    sd = load_effnet_lite_weights("effnet_lite0", effnet_lite_package_file("effnet_lite0"))
    model = MultiLabelClassifier(2, pretrained=True)
    assert torch.equal(model.net.conv_stem.weight, sd["conv_stem.weight"])
    assert model.net.classifier.out_features == 2


def test_options_are_validated():
    with pytest.raises(MinedetError, match="batch_size"):
        MultiLabelOptions(batch_size=0)
    with pytest.raises(MinedetError, match="ema_decay"):
        MultiLabelOptions(ema_decay=1.5)
    with pytest.raises(MinedetError, match="lr"):
        MultiLabelOptions(lr=0.0)


# --------------------------------------------------------------------------------------- training


def _mean_prob_gap(probs: dict[int, torch.Tensor], truth: dict[int, torch.Tensor]) -> float:
    """min over classes of (mean prob where present) - (mean prob where absent)."""
    p = torch.stack([probs[i] for i in sorted(probs)])
    t = torch.stack([truth[i] for i in sorted(probs)]) > 0.5
    return min(float(p[t[:, k], k].mean() - p[~t[:, k], k].mean()) for k in range(p.shape[1]))


def _stage(lab, unl, opts, model=None):
    """The SSMLL pre-stage as ACRST declares it (what the run trains before the detector)."""
    from minedet.methods.base import PreStage

    module = MultiLabelMeanTeacher(model if model is not None else new_classifier(2, opts), opts)
    return PreStage("multilabel", module, lambda s, r, w: MultiLabelBatches(lab, unl, 2, opts, rank=r, world=w)(s),
                    opts.steps, opts.lr, opts.seed, result=lambda m: m.result(), save=save_multilabel,
                    load=load_multilabel if model is None else _load_tiny, use=lambda a: None,
                    meta={"multilabel": repr(opts)})


def _load_tiny(path):
    """A saved tiny classifier (load_multilabel builds only the registered backbones)."""
    model = tiny()
    model.load_state_dict(torch.load(path, weights_only=True)["model"])
    return model.eval()


def _train(lab, unl, opts, out, model=None, **train):
    """Train the classifier through the one training loop (minedet.run.train_prestage)."""
    from minedet.config import TrainConfig
    from minedet.engine.dist import DistInfo
    from minedet.run import train_prestage

    return train_prestage(_stage(lab, unl, opts, model), TrainConfig(progress=False, **train), out, DistInfo())


def test_train_multilabel_learns_colours_and_is_deterministic(squares, tmp_path):
    lab, unl, val = squares
    opts = MultiLabelOptions(steps=60, burn_in=30, **FAST)
    truth = image_truth(val)
    untrained = image_probabilities(tiny(), val)
    assert _mean_prob_gap(untrained, truth) < 0.1
    a = _train(lab, unl, opts, tmp_path / "a", model=tiny())
    assert not a.training and a.image_size == 32
    assert (tmp_path / "a" / "multilabel.pt").is_file() and (tmp_path / "a" / "multilabel" / "metrics.jsonl").is_file()
    pa = image_probabilities(a, val)
    assert set(pa) == set(val.ids)
    assert _mean_prob_gap(pa, truth) > 0.3  # chance is 0
    q = negative_label_quality(pa, truth, tau_ml=0.5, pos_thresh=0.5)
    assert q["neg_accuracy"] > 0.8 and q["neg_recall"] > 0.8
    b = _train(lab, unl, opts, tmp_path / "b", model=tiny())
    pb = image_probabilities(b, val)
    assert all(torch.equal(pa[i], pb[i]) for i in pa)
    c = _train(lab, unl, MultiLabelOptions(steps=60, burn_in=30, seed=1, **FAST), tmp_path / "c", model=tiny())
    pc = image_probabilities(c, val)
    assert any(not torch.equal(pa[i], pc[i]) for i in pa)
    # a run whose result file exists loads it instead of training
    again = _train(lab, unl, MultiLabelOptions(steps=60, burn_in=30, seed=1, **FAST), tmp_path / "a", model=tiny())
    assert all(torch.equal(pa[i], p) for i, p in image_probabilities(again, val).items())


def test_interrupted_prestage_resumes_bit_exactly(squares, tmp_path):
    from minedet.config import TrainConfig
    from minedet.engine.dist import DistInfo
    from minedet.run import train_prestage

    lab, unl, _ = squares
    opts = MultiLabelOptions(steps=8, burn_in=3, ema_decay=0.9, **FAST)
    whole = _train(lab, unl, opts, tmp_path / "whole", model=tiny(), ckpt_every=5)
    st = _stage(lab, unl, opts, tiny())
    inner = st.batches

    def crashing(start, rank, world):
        for i, b in enumerate(inner(start, rank, world)):
            if start + i == 6:
                raise RuntimeError("power cut")
            yield b

    st.batches = crashing
    part = tmp_path / "part"
    with pytest.raises(RuntimeError, match="power cut"):
        train_prestage(st, TrainConfig(progress=False, ckpt_every=5), part, DistInfo())
    assert not (part / "multilabel.pt").exists() and (part / "multilabel" / "checkpoints" / "last.pt").is_file()
    resumed = _train(lab, unl, opts, part, model=tiny(), ckpt_every=5)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(resumed.probabilities(x), whole.probabilities(x))
    rows = [json.loads(r) for r in (part / "multilabel" / "metrics.jsonl").read_text().splitlines()]
    assert {"sup/ml", "unsup/ml"} <= set(rows[-1]) and rows[-1]["step"] == 8
    # a checkpoint of another configuration (seed) is not resumed: that run starts from step 0
    other = tmp_path / "other"
    (other / "multilabel").mkdir(parents=True)
    (part / "multilabel.pt").unlink()
    import shutil

    shutil.copytree(part / "multilabel" / "checkpoints", other / "multilabel" / "checkpoints")
    fresh = _train(lab, unl, MultiLabelOptions(steps=8, burn_in=3, ema_decay=0.9, seed=3, **FAST), other, model=tiny(),
                   log_every=1)
    assert not torch.equal(fresh.probabilities(x), whole.probabilities(x))
    first = json.loads((other / "multilabel" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1


def test_new_classifier_is_seeded_and_leaves_the_global_rng_alone():
    opts = MultiLabelOptions(image_size=32, pretrained=False)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b = new_classifier(3, opts), new_classifier(3, opts)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = new_classifier(3, MultiLabelOptions(image_size=32, pretrained=False, seed=1))
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_batches_resume_mid_stream_and_shard_over_ranks(squares):
    lab, unl, _ = squares
    opts = MultiLabelOptions(steps=10, burn_in=2, **FAST)
    make = MultiLabelBatches(lab, unl, 2, opts)
    it = make(0)
    run = [next(it) for _ in range(5)]
    assert set(run[1]) == {"labelled"} and set(run[2]) == {"labelled", "unlabelled"}
    later = next(make(3))
    assert torch.equal(later["labelled"][0], run[3]["labelled"][0]) and torch.equal(later["unlabelled"][1], run[3]["unlabelled"][1])
    weak, strong = run[3]["unlabelled"]
    assert weak.shape == strong.shape == (8, 3, 32, 32) and not torch.equal(weak, strong)
    r0, r1 = (next(MultiLabelBatches(lab, unl, 2, opts, rank=r, world=2)(3)) for r in (0, 1))
    assert torch.equal(r0["labelled"][0], run[3]["labelled"][0][0::2]) and torch.equal(r1["labelled"][1], run[3]["labelled"][1][1::2])
    with pytest.raises(MinedetError, match="multiple of the 3 processes"):
        MultiLabelBatches(lab, unl, 2, opts, world=3)


def _steps(module, batches, n):
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    out = []
    for step in range(n):
        losses = module(next(batches))
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        module.after_step(module.steps_done + 1)
        out.append(losses)
    return out


def test_teacher_is_copied_at_burn_in_then_follows_by_ema(squares):
    lab, unl, _ = squares
    opts = MultiLabelOptions(steps=5, burn_in=3, ema_decay=0.9, **FAST)
    mt = MultiLabelMeanTeacher(tiny(), opts)
    it = MultiLabelBatches(lab, unl, 2, opts)(0)
    losses = _steps(mt, it, 2)
    assert mt.teacher is None and all(set(x) == {"sup/ml"} for x in losses)
    assert set(_steps(mt, it, 1)[0]) == {"sup/ml"}  # the step that ends burn-in, then the copy
    assert all(torch.equal(mt.teacher.state_dict()[k], v) for k, v in mt.student.state_dict().items())
    after = _steps(mt, it, 1)[0]
    assert set(after) == {"sup/ml", "unsup/ml"} and all(math.isfinite(v.item()) for v in after.values())
    teacher, student = mt.teacher, mt.student
    diffs = [float((t - s).detach().abs().max()) for t, s in zip(teacher.parameters(), student.parameters())]
    assert max(diffs) > 0  # the teacher lags the student
    x = torch.rand(2, 3, 32, 32)
    assert not torch.equal(teacher.probabilities(x), student.probabilities(x))
    assert not any(p.requires_grad for p in teacher.parameters())
    out = mt.result()
    assert out is not teacher and not out.training and all(p.requires_grad for p in out.parameters())
    assert torch.equal(out.probabilities(x), teacher.probabilities(x))


def test_teacher_follows_by_ema_rule(squares):
    lab, unl, _ = squares
    opts = MultiLabelOptions(steps=3, burn_in=1, ema_decay=0.75, **FAST)
    mt = MultiLabelMeanTeacher(tiny(), opts)
    it = MultiLabelBatches(lab, unl, 2, opts)(0)
    _steps(mt, it, 1)  # copy
    before = {k: v.clone() for k, v in mt.teacher.state_dict().items()}
    _steps(mt, it, 1)
    s = mt.student.state_dict()
    w = "net.head.weight"
    assert torch.allclose(mt.teacher.state_dict()[w], 0.75 * before[w] + 0.25 * s[w], atol=1e-6)
    assert not torch.equal(mt.teacher.state_dict()[w], s[w])


def test_pseudo_labels_are_binary_teacher_decisions_on_the_weak_view(squares):
    lab, unl, _ = squares
    opts = MultiLabelOptions(steps=2, burn_in=0, pos_thresh=0.6, **FAST)
    mt = MultiLabelMeanTeacher(tiny(), opts)
    weak, strong = next(MultiLabelBatches(lab, unl, 2, opts)(0))["unlabelled"]
    with torch.no_grad():
        mt.ema.module.net.head.bias.copy_(torch.tensor([5.0, -5.0]))  # class 0 present, class 1 absent
    pseudo = mt.pseudo_labels(weak)
    probs = mt.ema.module.probabilities(weak)
    assert torch.equal(pseudo, (probs >= 0.6).float())
    assert pseudo[:, 0].sum() > 0 and pseudo[:, 1].sum() < 8


def test_without_unlabelled_and_with_images_without_boxes(squares, tmp_path):
    lab, _, _ = squares
    assert any(len(lab.target(i)) == 0 for i in lab.ids)  # every 4th image has no square
    empty = _squares(tmp_path, "empty", 0, seed=0)
    empty_unl = DetectionDataset(empty.data, tmp_path, with_targets=False)  # behaves like None
    opts = MultiLabelOptions(steps=3, burn_in=1, **FAST)
    for k, unl in enumerate((None, empty_unl)):
        assert set(next(MultiLabelBatches(lab, unl, 2, opts)(2))) == {"labelled"}
        model = _train(lab, unl, opts, tmp_path / f"r{k}", model=tiny())
        assert not model.training
    with pytest.raises(MinedetError, match="labelled image"):
        MultiLabelBatches(empty_unl, None, 2, opts)


# --------------------------------------------------------------------------------------- inference / measurement


def test_image_probabilities_shards_cover_every_image_once(squares):
    _, _, val = squares
    model = tiny()
    full = image_probabilities(model, val, batch_size=5)
    r0 = image_probabilities(model, val, batch_size=3, rank=0, world=2)
    r1 = image_probabilities(model, val, batch_size=3, rank=1, world=2)
    assert not set(r0) & set(r1) and set(r0) | set(r1) == set(val.ids) == set(full)
    assert all(torch.allclose({**r0, **r1}[i], full[i], atol=1e-6) for i in full)
    assert all(p.shape == (2,) for p in full.values())
    with pytest.raises(ValueError):
        image_probabilities(model, val, rank=2, world=2)


def test_image_truth_includes_hidden_annotations(tmp_path):
    ds = _squares(tmp_path, "h", 4, seed=0, erase=1)
    assert all(int(ds.target(i).labels.eq(1).sum()) == 0 for i in ds.ids)
    truth = image_truth(ds)
    assert [truth[i].tolist() for i in ds.ids] == [[0, 0], [1, 0], [0, 1], [1, 1]]


def test_negative_label_quality_hand_computed():
    probs = {1: torch.tensor([0.1, 0.9, 0.3]), 2: torch.tensor([0.05, 0.15, 0.8]), 3: torch.tensor([0.75, 0.1, 0.6])}
    truth = {1: torch.tensor([0.0, 1.0, 1.0]), 2: torch.tensor([1.0, 0.0, 1.0]), 3: torch.tensor([1.0, 0.0, 0.0]), 9: torch.zeros(3)}
    q = negative_label_quality(probs, truth, tau_ml=0.2, pos_thresh=0.7)
    # negatives (p < 0.2): (1,0) absent ok, (2,0) present wrong, (2,1) absent ok, (3,1) absent ok -> 3/4
    # truly absent: (1,0), (2,1), (3,1), (3,2) -> 3 of 4 predicted negative
    assert q["neg_accuracy"] == pytest.approx(0.75) and q["neg_recall"] == pytest.approx(0.75)
    # positives (p >= 0.7): (1,1) ok, (2,2) ok, (3,0) ok -> 3/3; truly present: 5 -> 3/5
    assert q["pos_accuracy"] == pytest.approx(1.0) and q["pos_recall"] == pytest.approx(0.6)
    assert (q["n_pairs"], q["n_neg_pred"], q["n_neg_true"], q["n_pos_pred"], q["n_pos_true"]) == (9, 4, 4, 3, 5)
    empty = negative_label_quality({}, truth)
    assert math.isnan(empty["neg_accuracy"]) and math.isnan(empty["pos_recall"]) and empty["n_pairs"] == 0
    with pytest.raises(ValueError, match="no truth"):
        negative_label_quality({5: torch.zeros(3)}, truth)


# --------------------------------------------------------------------------------------- files


def test_save_load_round_trip_and_wrong_files(tmp_path):
    torch.manual_seed(0)
    model = MultiLabelClassifier(3, image_size=40, pretrained=False).eval()
    path = tmp_path / "ml.pt"
    save_multilabel(model, path)
    back = load_multilabel(path)
    assert (back.num_classes, back.backbone, back.image_size, back.training) == (3, "effnet_lite0", 40, False)
    x = torch.rand(2, 3, 33, 47)
    assert torch.equal(back(x), model(x))
    assert [p.name for p in tmp_path.iterdir()] == ["ml.pt"]  # no temporary left behind
    other = tmp_path / "other.pt"
    save_torch_atomic(other, {"format": "minedet-model", "model": {}})
    with pytest.raises(MinedetError, match="other.pt.*not a minedet multi-label"):
        load_multilabel(other)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(MinedetError, match="junk.pt") as e:
        load_multilabel(junk)
    assert "\n" not in str(e.value)
    bad = tmp_path / "bad.pt"
    save_torch_atomic(bad, {"format": "minedet-multilabel", "num_classes": 4, "backbone": "effnet_lite0",
                            "image_size": 40, "model": model.state_dict()})
    with pytest.raises(MinedetError, match="bad.pt.*does not fit"):
        load_multilabel(bad)
