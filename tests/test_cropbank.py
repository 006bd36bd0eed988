"""CropBank records, Pseudo Recall / class probabilities (ACRST Eq. 8-9), sampling and the file hand-off."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from minedet.data.cropbank import (BankSnapshot, CropBank, SnapshotReader, class_probabilities, publish,
                                   pseudo_recall, union)
from minedet.structures import Target


def T(boxes, labels, scores=None) -> Target:
    return Target(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.int64),
                  None if scores is None else torch.tensor(scores, dtype=torch.float32))


def labelled_bank() -> CropBank:
    items = [
        (0, T([[0, 0, 10, 10], [5, 5, 20, 20]], [0, 1])),
        (1, Target.empty()),  # an image with no boxes
        (2, T([[1, 2, 3, 4]], [1])),
        (7, T([[2, 2, 8, 9], [0, 0, 4, 4], [3, 3, 6, 6]], [2, 2, 0])),
    ]
    return CropBank.from_targets(3, 0, items)


# ---------------------------------------------------------------------- the bank
def test_from_targets_counts_and_arrays():
    bank = labelled_bank()
    assert len(bank) == 6 and bank.num_images() == 3
    assert bank.class_counts().tolist() == [2, 2, 2]
    a = bank.arrays()
    assert a["source"].dtype == np.int8 and a["index"].dtype == np.int32 and a["labels"].dtype == np.int16
    assert a["boxes"].dtype == np.float32 and a["boxes"].shape == (6, 4) and a["scores"].dtype == np.float32
    assert a["index"].tolist() == [0, 0, 2, 7, 7, 7] and (a["source"] == 0).all()
    assert a["labels"].tolist() == [0, 1, 1, 2, 2, 0]
    assert a["boxes"][2].tolist() == [1, 2, 3, 4]
    assert (a["scores"] == 1.0).all()  # ground truth


def test_empty_bank():
    bank = CropBank(4)
    assert len(bank) == 0 and bank.nbytes() == 0 and bank.class_counts().tolist() == [0, 0, 0, 0]
    assert all(len(v) == 0 for v in bank.arrays().values())
    snap = bank.snapshot()
    assert len(snap) == 0 and snap.sample(5, torch.Generator().manual_seed(0)).shape == (0,)
    back = CropBank(4)
    back.load_state_dict(bank.state_dict())
    assert len(back) == 0


def test_set_image_replaces_and_removes():
    bank = CropBank(3)
    bank.set_image(1, 5, T([[0, 0, 4, 4], [1, 1, 3, 3]], [0, 1], [0.9, 0.8]))
    bank.set_image(1, 6, T([[0, 0, 2, 2]], [2], [0.75]))
    assert len(bank) == 3 and bank.class_counts().tolist() == [1, 1, 1]
    first = bank.arrays()
    bank.set_image(1, 5, T([[2, 2, 9, 9]], [2], [0.95]))  # latest pseudo-labels win
    assert len(bank) == 2 and bank.class_counts().tolist() == [0, 0, 2]
    a = bank.arrays()
    assert a is not first and len(first["labels"]) == 3  # an older flat copy is left untouched
    assert a["index"].tolist() == [5, 6] and a["scores"].tolist() == pytest.approx([0.95, 0.75])
    bank.set_image(1, 5, Target.empty())
    assert len(bank) == 1 and bank.arrays()["index"].tolist() == [6]
    bank.set_image(1, 99, Target.empty())  # removing an absent image is a no-op
    assert len(bank) == 1
    with pytest.raises(ValueError):
        bank.set_image(1, 0, T([[0, 0, 1, 1]], [3]))
    with pytest.raises(ValueError):
        bank.set_image(2, 0, T([[0, 0, 1, 1]], [0]))


def test_state_dict_round_trip(tmp_path):
    bank = labelled_bank()
    bank.set_image(1, 3, T([[0, 0, 5, 5]], [1], [0.7]))
    path = tmp_path / "bank.pt"
    torch.save(bank.state_dict(), path)
    state = torch.load(path, weights_only=True)
    back = CropBank(3)
    back.load_state_dict(state)
    assert len(back) == len(bank) and back.class_counts().tolist() == bank.class_counts().tolist()
    for k, v in bank.arrays().items():
        np.testing.assert_array_equal(back.arrays()[k], v)
    back.set_image(0, 7, Target.empty())  # per-image grouping survives the round trip
    assert len(back) == len(bank) - 3
    with pytest.raises(ValueError):
        CropBank(4).load_state_dict(state)


def test_nbytes_small():
    bank = CropBank(80)
    g = torch.Generator().manual_seed(0)
    for i in range(200):
        n = int(torch.randint(0, 6, (), generator=g))
        xy = torch.rand(n, 2, generator=g) * 100
        boxes = torch.cat([xy, xy + 5], 1)
        bank.set_image(1, i, Target(boxes, torch.randint(0, 80, (n,), generator=g), torch.rand(n, generator=g)))
    a = bank.arrays()
    assert bank.nbytes() == sum(v.nbytes for v in a.values())
    assert bank.nbytes() / len(bank) < 40


def test_union():
    lab = labelled_bank()
    pse = CropBank(3)
    pse.set_image(1, 0, T([[0, 0, 3, 3]], [2], [0.8]))
    both = union(lab, pse)
    assert len(both) == len(lab) + 1
    assert both.class_counts().tolist() == [2, 2, 3]
    a = both.arrays()
    assert a["source"].tolist() == [0] * 6 + [1]  # source 1 index 0 is not labelled image 0
    assert a["scores"][-1] == pytest.approx(0.8)
    assert len(lab.merge(lab)) == 2 * len(lab)  # the same image in two banks: records concatenated
    with pytest.raises(ValueError):
        union(lab, CropBank(5))


# ---------------------------------------------------------------------- Eq. 8-9
def test_pseudo_recall_hand_computed():
    dets = [
        T([[0, 0, 1, 1]] * 4, [0, 0, 2, 1], [0.9, 0.05, 0.5, 0.1]),  # 0.05 and 0.1 (not > 0.1) ignored
        T([[0, 0, 1, 1]] * 2, [2, 0], [0.25, 0.3]),
        Target.empty(),  # an image with no detections
    ]
    pr = pseudo_recall(dets, 4)
    assert pr.shape == (4,)
    assert pr.tolist() == pytest.approx([0.9 + 0.3, 0.0, 0.5 + 0.25, 0.0])
    assert pseudo_recall([], 3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        pseudo_recall([T([[0, 0, 1, 1]], [0])], 2)  # detections need scores


def test_class_probabilities_eq9():
    pr = torch.tensor([4.0, 1.0, 0.25])
    mu = class_probabilities(pr, 0.6)
    w = np.array([4.0, 1.0, 0.25]) ** -0.6
    assert mu.tolist() == pytest.approx((w / w.sum()).tolist())
    assert mu.sum().item() == pytest.approx(1.0)
    assert mu[2] > mu[1] > mu[0]  # the most neglected class is sampled most
    assert class_probabilities(pr, 0.0).tolist() == pytest.approx([1 / 3] * 3)  # beta 0: FBR


def test_class_probabilities_floor_and_all_zero():
    mu = class_probabilities(torch.tensor([2.0, 0.0, 1.0]), 0.6)
    w = np.array([2.0, 0.5, 1.0]) ** -0.6  # PR floor = 0.5 * min positive = 0.5
    assert mu.tolist() == pytest.approx((w / w.sum()).tolist())
    assert (mu[1] / mu[2]).item() == pytest.approx(2**0.6)
    assert torch.isfinite(mu).all()
    assert class_probabilities(torch.zeros(4), 0.6).tolist() == pytest.approx([0.25] * 4)


def test_class_probabilities_present():
    pr = torch.tensor([4.0, 1.0, 0.25])
    mu = class_probabilities(pr, 0.6, present=torch.tensor([True, True, False]))
    w = np.array([4.0, 1.0]) ** -0.6
    assert mu.tolist() == pytest.approx((w / w.sum()).tolist() + [0.0])
    assert class_probabilities(pr, 0.6, present=torch.zeros(3, dtype=torch.bool)).tolist() == [0, 0, 0]
    with pytest.raises(ValueError):
        class_probabilities(pr, -1.0)


# ---------------------------------------------------------------------- sampling
def test_sample_follows_class_probs():
    bank = CropBank(4)
    for i in range(30):  # class 0 is frequent, 2 is rare, 3 absent
        bank.set_image(0, i, T([[0, 0, 5, 5]] * 3, [0, 0, 1]))
    bank.set_image(0, 30, T([[0, 0, 5, 5]], [2]))
    snap = bank.snapshot(torch.tensor([0.2, 0.3, 0.4, 0.1]), version=3)
    assert snap.version == 3 and snap.num_classes == 4
    expected = np.array([0.2, 0.3, 0.4, 0.0]) / 0.9  # absent class 3 renormalised away
    np.testing.assert_allclose(snap.sampling_probs(), expected)
    idx = snap.sample(20000, torch.Generator().manual_seed(0))
    assert idx.shape == (20000,) and idx.min() >= 0 and idx.max() < len(snap)
    freq = np.bincount(snap.labels[idx], minlength=4) / len(idx)
    np.testing.assert_allclose(freq, expected, atol=0.02)
    # uniform within a class: every class-0 record gets picked
    assert len(np.unique(idx[snap.labels[idx] == 0])) == 60


def test_sample_deterministic_and_edge_cases():
    snap = labelled_bank().snapshot()
    a = snap.sample(50, torch.Generator().manual_seed(7))
    b = snap.sample(50, torch.Generator().manual_seed(7))
    c = snap.sample(50, torch.Generator().manual_seed(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert snap.sample(0, torch.Generator()).shape == (0,)
    state = torch.get_rng_state()
    snap.sample(10, torch.Generator().manual_seed(1))
    assert torch.equal(state, torch.get_rng_state())  # no global RNG
    zero = labelled_bank().snapshot(torch.zeros(3))  # nothing left: uniform over present classes
    np.testing.assert_allclose(zero.sampling_probs(), [1 / 3] * 3)
    back = pickle.loads(pickle.dumps(snap))
    np.testing.assert_array_equal(back.sample(50, torch.Generator().manual_seed(7)), a)


# ---------------------------------------------------------------------- publish / read
def test_publish_and_reader(tmp_path):
    path = tmp_path / "bank" / "snapshot.pt"
    path.parent.mkdir()
    reader = SnapshotReader(path)
    assert reader.current() is None
    bank = labelled_bank()
    publish(bank.snapshot(version=1), path)
    s1 = reader.current()
    assert isinstance(s1, BankSnapshot) and s1.version == 1 and len(s1) == 6
    assert reader.current() is s1  # unchanged file: no reload
    bank.set_image(1, 0, T([[0, 0, 3, 3]], [2], [0.8]))
    publish(bank.snapshot(torch.tensor([0.1, 0.2, 0.7]), version=2), path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    s2 = reader.current()
    assert s2 is not s1 and s2.version == 2 and len(s2) == 7
    np.testing.assert_allclose(s2.class_probs, [0.1, 0.2, 0.7], rtol=1e-6)
    np.testing.assert_array_equal(s2.source, bank.arrays()["source"])
    assert os.listdir(path.parent) == ["snapshot.pt"]  # no temporary files left
    worker = pickle.loads(pickle.dumps(reader))  # a DataLoader worker's copy loads by itself
    assert worker._snap is None and worker.current().version == 2
    path.unlink()
    assert reader.current() is None
