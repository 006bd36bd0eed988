"""Crop-paste of CropBank instances (ACRST Eq. 6-7) and the occlusion rule."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from minedet.data.cropbank import CropBank, SnapshotReader, publish
from minedet.data.paste import Paste, covered_fraction, remove_occluded
from minedet.data.transforms import BoxMap, ColorJitter, Compose
from minedet.structures import Target

RED = (200, 30, 60)


def T(boxes, labels, scores=None) -> Target:
    return Target(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels, dtype=torch.int64),
                  None if scores is None else torch.tensor(scores, dtype=torch.float32))


def write(path, arr: np.ndarray) -> str:
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return str(path)


def colour(rgb) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32).div(255.0)[:, None, None]


def setup(tmp_path, records, *, size=(40, 40), patch=(10, 20, 5, 15), source=1, score=0.8, **kw) -> Paste:
    """A source image (grey, with a RED patch at rows patch[0]:patch[1], cols patch[2]:patch[3]) as
    image 0 of both sources, a bank of ``records`` (boxes in its pixels) and a Paste reading it."""
    arr = np.full((*size, 3), 128, np.uint8)
    r0, r1, c0, c1 = patch
    arr[r0:r1, c0:c1] = RED
    src = write(tmp_path / "src.png", arr)
    bank = CropBank(3)
    if records:
        bank.set_image(source, 0, T(records, [1] * len(records), [score] * len(records)))
    publish(bank.snapshot(version=1), tmp_path / "bank.pt")
    kw = {"scale": (1.0, 1.0), "color": 0.0, "flip": 0.0, **kw}
    return Paste(SnapshotReader(tmp_path / "bank.pt"), [[src], [src]], **kw)


def dest(h=40, w=40) -> torch.Tensor:
    return torch.linspace(0, 1, 3 * h * w).reshape(3, h, w)


def run(paste, image, target, seed=0):
    return paste(image, target, torch.Generator().manual_seed(seed))


def pasted_part(t: Target) -> Target:
    return t.select(t.flag("pasted"))


# ---------------------------------------------------------------------- pixels and labels
def test_pasted_pixels_are_the_crop(tmp_path):
    paste = setup(tmp_path, [[5, 10, 15, 20]], n_range=(1, 1))
    image = dest()
    original = T([[0, 0, 3, 3]], [0])
    out, t, m = run(paste, image, original)
    assert m == BoxMap(size=(40, 40))
    assert len(t) == 2 and t.flag("pasted").tolist() == [False, True]
    assert t.flag("pseudo").tolist() == [False, True]  # the record came from the unlabelled list
    assert t.labels.tolist() == [0, 1] and t.scores is None  # target without scores: none added
    x1, y1, x2, y2 = (int(v) for v in t.boxes[1].tolist())
    assert (x2 - x1, y2 - y1) == (10, 10) and t.boxes[1].tolist() == [x1, y1, x2, y2]
    assert torch.equal(out[:, y1:y2, x1:x2], colour(RED).expand(3, 10, 10))
    outside = torch.ones(40, 40, dtype=torch.bool)
    outside[y1:y2, x1:x2] = False
    assert torch.equal(out[:, outside], image[:, outside])
    assert torch.equal(image, dest())  # input not mutated
    assert torch.equal(t.boxes[0], original.boxes[0])


def test_scores_follow_the_record_when_the_target_has_scores(tmp_path):
    paste = setup(tmp_path, [[5, 10, 15, 20]], n_range=(2, 2), source=0, score=1.0)
    out, t, _ = run(paste, dest(64, 64), T([[0, 0, 3, 3]], [2], [0.7]))
    assert t.scores is not None and t.scores[0].item() == pytest.approx(0.7)
    assert (t.scores[1:] == 1.0).all()
    assert not t.flag("pseudo").any()  # labelled-bank records are ground truth


def test_many_pastes_grow_the_target_inside_the_image(tmp_path):
    paste = setup(tmp_path, [[5, 10, 15, 20]], n_range=(4, 4), size=(40, 40))
    for seed in range(5):
        out, t, _ = run(paste, dest(80, 60), Target.empty(), seed)  # an image with no boxes
        p = pasted_part(t)
        assert 1 <= len(p) <= 4 and len(p) == len(t)
        b = p.boxes
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= 60).all() and (b[:, 3] <= 80).all()
        assert (b[:, 2:] > b[:, :2]).all()
        for x1, y1, x2, y2 in b.int().tolist():  # every crop is the same RED square
            assert torch.allclose(out[:, y1:y2, x1:x2], colour(RED).expand(3, y2 - y1, x2 - x1))


def test_scale_follows_image_area(tmp_path):
    paste = setup(tmp_path, [[5, 10, 15, 20]], n_range=(1, 1))  # 40x40 source
    _, t, _ = run(paste, dest(80, 80), Target.empty())  # 4x the area -> 2x the side
    w, h = (t.boxes[0, 2:] - t.boxes[0, :2]).tolist()
    assert (w, h) == (20.0, 20.0)


def test_crop_larger_than_image_is_shrunk(tmp_path):
    paste = setup(tmp_path, [[0, 0, 40, 40]], n_range=(1, 1), scale=(1.5, 1.5), patch=(0, 40, 0, 40))
    out, t, _ = run(paste, dest(12, 30), Target.empty())
    assert t.boxes.tolist() == [[t.boxes[0, 0].item(), 0.0, t.boxes[0, 0].item() + 12, 12.0]]
    assert 0 <= t.boxes[0, 0] and t.boxes[0, 2] <= 30


def test_flip_and_colour(tmp_path):
    arr = np.zeros((20, 20, 3), np.uint8)
    arr[:, :10] = (150, 60, 90)  # mid tones: jitter cannot clamp them back to themselves
    arr[:, 10:] = (40, 90, 200)
    src = write(tmp_path / "halves.png", arr)
    bank = CropBank(1)
    bank.set_image(0, 0, T([[0, 0, 20, 20]], [0]))
    publish(bank.snapshot(), tmp_path / "b.pt")
    flip = Paste(SnapshotReader(tmp_path / "b.pt"), [[src]], n_range=(1, 1), scale=(1, 1), flip=1.0, color=0.0)
    out, _, _ = run(flip, dest(20, 20), Target.empty())
    assert torch.equal(out[:, :, :10], colour((40, 90, 200)).expand(3, 20, 10))  # right half now on the left
    jitter = Paste(SnapshotReader(tmp_path / "b.pt"), [[src]], n_range=(1, 1), scale=(1, 1), color=0.5)
    out, _, _ = run(jitter, dest(20, 20), Target.empty())
    assert not torch.equal(out[:, :, :10], colour((150, 60, 90)).expand(3, 20, 10))
    assert out.min() >= 0 and out.max() <= 1


# ---------------------------------------------------------------------- occlusion (Eq. 7)
def test_fully_covered_box_removed_partially_covered_kept(tmp_path):
    # a 30-wide, 20-tall crop in a 30x30 image: x = 0 always, y in [0, 10], rows 10..20 always covered
    paste = setup(tmp_path, [[0, 0, 30, 20]], n_range=(1, 1), size=(30, 30), patch=(0, 20, 0, 30))
    original = T([[5, 11, 25, 19], [0, 0, 30, 30]], [0, 2])
    for seed in range(4):
        _, t, _ = run(paste, dest(30, 30), original, seed)
        assert t.labels.tolist() == [2, 1]  # the hidden box is gone, the 2/3-covered one stays
        assert t.flag("pasted").tolist() == [False, True]


def test_half_covered_box_is_ignored_with_the_occlusion_band(tmp_path):
    # as above: rows 10..20 always covered; the 30x30 box is 2/3 covered, the thin one hidden
    paste = setup(tmp_path, [[0, 0, 30, 20]], n_range=(1, 1), size=(30, 30), patch=(0, 20, 0, 30), occlusion_ignore=0.5)
    for seed in range(4):
        _, t, _ = run(paste, dest(30, 30), T([[5, 11, 25, 19], [0, 0, 30, 30]], [0, 2]), seed)
        assert t.labels.tolist() == [2, 1] and t.flag("pasted").tolist() == [False, True]
        assert t.flag("weight").tolist() == [0.0, 1.0], "2/3 under the crop: taught neither as class 2 nor as background"
        assert t.flag("regress").tolist() == [False, True]


def test_earlier_paste_half_covered_by_a_later_one_is_ignored(tmp_path):
    # two 20x14 crops in a 20x20 image: x = 0, y in [0, 6]; the later one covers >= 8/14 of the earlier
    paste = setup(tmp_path, [[0, 0, 20, 14]], n_range=(2, 2), size=(20, 20), patch=(0, 14, 0, 20), occlusion_ignore=0.5)
    kept_both = 0
    for seed in range(8):
        _, t, _ = run(paste, dest(20, 20), Target.empty(), seed)
        if len(t) == 2:  # (a shift of 0 or 1 row covers >= 0.9: the earlier one is removed)
            kept_both += 1
            assert t.flag("weight").tolist() == [0.0, 1.0]
    assert kept_both > 0


def test_remove_occluded_band_ignores_between_its_bounds():
    t = T([[0, 0, 10, 10], [20, 20, 30, 30], [40, 0, 50, 10]], [0, 1, 2]).with_flags(weight=torch.tensor([1.0, 1.0, 0.0]))
    rects = torch.tensor([[0.0, 0.0, 10.0, 6.0], [20.0, 20.0, 30.0, 29.5], [40.0, 0.0, 50.0, 3.0]])  # 0.6, 0.95, 0.3
    out = remove_occluded(t, rects, thresh=0.9, ignore_from=0.5)
    assert out.labels.tolist() == [0, 2], "0.95 covered: removed"
    assert out.flag("weight").tolist() == [0.0, 0.0], "0.6 covered: ignored; an ignored box stays ignored"
    assert out.flag("regress").tolist() == [False, True]
    assert remove_occluded(t, rects, thresh=0.9).flag("weight").tolist() == [1.0, 0.0], "no band: the paper's rule"
    with pytest.raises(ValueError, match="occlusion_ignore"):
        Paste(SnapshotReader("unused.pt"), [[], []], occlusion=0.5, occlusion_ignore=0.7)


def test_earlier_paste_hidden_by_later_one_is_removed(tmp_path):
    paste = setup(tmp_path, [[0, 0, 20, 20]], n_range=(2, 2), size=(20, 20), patch=(0, 20, 0, 20))
    _, t, _ = run(paste, dest(20, 20), T([[2, 2, 6, 6]], [0]))
    assert len(t) == 1 and t.flag("pasted").tolist() == [True] and t.boxes.tolist() == [[0, 0, 20, 20]]


def test_remove_occluded_union_is_exact():
    t = T([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 5]], [0, 1, 2])
    halves = torch.tensor([[0.0, 0.0, 10.0, 5.0], [0.0, 5.0, 10.0, 10.0]])  # each half alone < 0.9
    assert remove_occluded(t, halves).labels.tolist() == [1, 2]  # zero-area box: coverage 0, kept
    same = torch.tensor([[0.0, 0.0, 10.0, 6.0], [0.0, 0.0, 10.0, 6.0]])  # overlap is not counted twice
    assert covered_fraction(t.boxes[:1], same).tolist() == pytest.approx([0.6])
    assert covered_fraction(t.boxes[:1], torch.tensor([[-5.0, -5.0, 15.0, 9.5]])).tolist() == pytest.approx([0.95])
    assert remove_occluded(t, torch.tensor([[-5.0, -5.0, 15.0, 9.5]])).labels.tolist() == [1, 2]
    assert remove_occluded(t, torch.tensor([[-5.0, -5.0, 15.0, 8.5]])).labels.tolist() == [0, 1, 2]
    assert remove_occluded(t, halves, thresh=1.0).labels.tolist() == [1, 2]  # exactly full counts
    thin = torch.tensor([[0, 0, 1, 0.1]], dtype=torch.float64)  # cell areas sum to 0.9999999999999999: still full
    strips = torch.tensor([[0, 0, 0.1, 0.1], [0.1, 0, 0.3, 0.1], [0.3, 0, 1, 0.1]], dtype=torch.float64)
    assert covered_fraction(thin, strips).tolist() == [1.0]


def test_remove_occluded_empty_inputs():
    assert len(remove_occluded(Target.empty(), torch.tensor([[0.0, 0.0, 5.0, 5.0]]))) == 0
    t = T([[0, 0, 10, 10]], [0])
    assert remove_occluded(t, torch.zeros(0, 4)).labels.tolist() == [0]
    assert covered_fraction(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0,)


# ---------------------------------------------------------------------- identity cases
def test_identity_cases(tmp_path):
    image, target = dest(), T([[1, 1, 9, 9]], [0])
    zero = setup(tmp_path, [[5, 10, 15, 20]], n_range=(0, 0))
    out, t, m = run(zero, image, target)
    assert out is image and t is target and m == BoxMap(size=(40, 40))
    empty = setup(tmp_path, [], n_range=(3, 3))  # an empty bank
    out, t, _ = run(empty, image, target)
    assert out is image and t is target
    src = write(tmp_path / "x.png", np.zeros((8, 8, 3)))
    missing = Paste(SnapshotReader(tmp_path / "nothing.pt"), [[src]], n_range=(3, 3))  # no snapshot yet
    out, t, _ = run(missing, image, target)
    assert out is image and t is target
    tiny = setup(tmp_path, [[5, 10, 6, 11]], n_range=(2, 2))  # crops under min_size are skipped
    out, t, _ = run(tiny, image, target)
    assert out is image and t is target


def test_unreadable_source_image_is_skipped(tmp_path, capsys):
    bank = CropBank(2)
    bank.set_image(0, 0, T([[0, 0, 5, 5]], [0]))
    publish(bank.snapshot(), tmp_path / "b.pt")
    paste = Paste(SnapshotReader(tmp_path / "b.pt"), [[tmp_path / "gone.png"]], n_range=(2, 2))
    for seed in range(2):
        out, t, _ = run(paste, dest(), Target.empty(), seed)
        assert len(t) == 0
    err = capsys.readouterr().err
    assert err.count("minedet: warning") == 1 and "gone.png" in err  # warned once


# ---------------------------------------------------------------------- determinism, composition
def test_deterministic_in_g(tmp_path):
    paste = setup(tmp_path, [[5, 10, 15, 20], [0, 0, 12, 30], [20, 20, 38, 39]], n_range=(0, 6), scale=(0.5, 1.5),
                  flip=0.5, color=0.3)
    image, target = dest(48, 56), T([[1, 1, 9, 9], [30, 30, 50, 40]], [0, 2], [0.9, 0.8])
    a = run(paste, image, target, 3)
    b = run(pickle.loads(pickle.dumps(paste)), image, target, 3)  # a fresh worker copy, empty cache
    assert torch.equal(a[0], b[0]) and a[0].numpy().tobytes() == b[0].numpy().tobytes()
    assert torch.equal(a[1].boxes, b[1].boxes) and torch.equal(a[1].labels, b[1].labels)
    assert torch.equal(a[1].scores, b[1].scores)
    outs = {run(paste, image, target, s)[0].numpy().tobytes() for s in range(6)}
    assert len(outs) > 1
    state = torch.get_rng_state()
    run(paste, image, target, 4)
    assert torch.equal(state, torch.get_rng_state())  # no global RNG


def test_inside_compose_cache_is_bounded(tmp_path):
    paste = setup(tmp_path, [[5, 10, 15, 20]], n_range=(1, 1), cache_images=1)
    tf = Compose([paste, ColorJitter(p=1.0)])
    out, t, m = tf(dest(), Target.empty(), torch.Generator().manual_seed(0))
    assert out.shape == (3, 40, 40) and len(t) == 1 and m.apply(t.boxes).tolist() == t.boxes.tolist()
    assert len(paste._cache) == 1
    assert len(pickle.loads(pickle.dumps(paste))._cache) == 0


def test_bad_arguments(tmp_path):
    reader = SnapshotReader(tmp_path / "b.pt")
    for kw in ({"n_range": (3, 1)}, {"n_range": (-1, 2)}, {"scale": (0, 1)}, {"flip": 2.0}, {"occlusion": 0.0}):
        with pytest.raises(ValueError):
            Paste(reader, [[]], **kw)
