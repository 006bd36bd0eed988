"""Tests for the embedded ``digits`` dataset (minedet.data.digits)."""

from __future__ import annotations

import json
import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from minedet.data.digits import (
    ALPHA_THRESHOLD,
    CATEGORY_NAMES,
    MAX_IOU,
    DigitsPaths,
    build_digits,
    class_probabilities,
    load_glyphs,
    render_scene,
    sample_classes,
    split_pools,
    first_test_image_id,
    val_first_image_id,
)
from minedet.errors import MinedetError

SMALL = dict(n_train=12, n_val=6, image_size=64, digit_size=(12, 24))


def _iou(a: list[float], b: list[float]) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> DigitsPaths:
    return build_digits(tmp_path_factory.mktemp("digits"), seed=3, **SMALL)


def test_layout_and_valid_coco(small: DigitsPaths) -> None:
    assert small.train_json == small.root / "annotations" / "train.json"
    assert small.val_json == small.root / "annotations" / "val.json"
    assert small.image_root == small.root / "images"
    ids: dict[str, set[int]] = {}
    for split, path, n in (("train", small.train_json, 12), ("val", small.val_json, 6)):
        coco = COCO(str(path))
        data = _load(path)
        assert len(coco.getImgIds()) == n
        assert [(c["id"], c["name"]) for c in data["categories"]] == [(k + 1, str(k)) for k in range(10)]
        assert CATEGORY_NAMES == [str(k) for k in range(10)]
        gen = data["info"]["generator"]
        assert gen["seed"] == 3 and gen["image_size"] == 64 and gen["imbalance"] == 1.0
        assert "version" in data["info"]
        ids[split] = {im["id"] for im in data["images"]}
        for im in data["images"]:
            assert im["file_name"] == f"{split}/{im['id']:09d}.png"
            with Image.open(small.image_root / im["file_name"]) as pil:
                assert pil.mode == "RGB" and pil.size == (im["width"], im["height"]) == (64, 64)
        ann_ids = [a["id"] for a in data["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids) > 0
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            assert all(isinstance(v, float) for v in a["bbox"])
            assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= 64 and y + h <= 64
            assert a["area"] == pytest.approx(w * h)
            assert a["iscrowd"] == 0 and 1 <= a["category_id"] <= 10
            assert a["image_id"] in ids[split]
    assert ids["train"] == set(range(1, 13))
    assert ids["val"] == set(range(100001, 100007))
    assert not ids["train"] & ids["val"]


def test_val_ids_never_collide_with_train() -> None:
    assert val_first_image_id(0) == 100001
    assert val_first_image_id(100000) == 100001
    assert val_first_image_id(100001) == 1000001
    assert val_first_image_id(5_000_000) == 10000001


def test_boxes_are_tight_on_alpha_coverage() -> None:
    rng = np.random.default_rng(0)
    _, labels = load_glyphs()
    pool = np.arange(labels.size)
    n_boxes = 0
    for _ in range(10):
        scene = render_scene(rng, pool, image_size=64, digits_per_image=(1, 4), digit_size=(12, 30))
        cov = scene.coverage >= ALPHA_THRESHOLD
        inside = np.zeros_like(cov)
        for x, y, w, h in scene.boxes.astype(int):
            inside[y : y + h, x : x + w] = True
            # every edge of the box touches a digit pixel
            assert cov[y, x : x + w].any() and cov[y + h - 1, x : x + w].any()
            assert cov[y : y + h, x].any() and cov[y : y + h, x + w - 1].any()
            n_boxes += 1
        assert not (cov & ~inside).any(), "digit pixels outside every box"
        assert scene.image.dtype == np.uint8 and scene.image.shape == (64, 64, 3)
        assert scene.boxes.shape == (len(scene.digits), 4) == (len(scene.source_index), 4)
    assert n_boxes >= 10


def test_digit_is_visible_inside_its_box() -> None:
    """In one-digit scenes, the strongest local contrast is inside the box, not in the ring around it."""
    rng = np.random.default_rng(1)
    _, labels = load_glyphs()
    pool = np.arange(labels.size)
    for _ in range(8):
        scene = render_scene(rng, pool, image_size=96, digits_per_image=(1, 1), digit_size=(20, 30))
        assert len(scene.boxes) == 1
        luma = scene.image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        x, y, w, h = scene.boxes[0].astype(int)
        m = 4
        y0, y1, x0, x1 = max(0, y - m), min(96, y + h + m), max(0, x - m), min(96, x + w + m)
        window = luma[y0:y1, x0:x1]
        # reference: a band around the box, its own 1-px border included (alpha is low there)
        band = np.ones(window.shape, dtype=bool)
        band[y - y0 + 1 : y - y0 + h - 1, x - x0 + 1 : x - x0 + w - 1] = False
        ref = np.median(window[band])
        outside = np.ones(window.shape, dtype=bool)
        outside[y - y0 : y - y0 + h, x - x0 : x - x0 + w] = False
        dev_box = np.abs(luma[y : y + h, x : x + w] - ref).max()
        dev_outside = np.abs(window[outside] - ref).max()
        assert dev_box >= 60.0, "digit does not contrast with its surroundings"
        assert dev_box > dev_outside + 20.0


def test_deterministic_bytes(tmp_path: Path) -> None:
    a = build_digits(tmp_path / "a", seed=5, **SMALL)
    b = build_digits(tmp_path / "b", seed=5, **SMALL)
    fa, fb = _all_files(a.root), _all_files(b.root)
    assert len(fa) == 12 + 6 + 2
    assert fa == fb


def test_seed_changes_output(tmp_path: Path, small: DigitsPaths) -> None:
    other = build_digits(tmp_path / "other", seed=4, **SMALL)
    assert _load(other.train_json)["annotations"] != _load(small.train_json)["annotations"]
    png = "train/000000001.png"
    assert (other.image_root / png).read_bytes() != (small.image_root / png).read_bytes()


def test_train_val_samples_are_disjoint(small: DigitsPaths) -> None:
    train = {a["source_index"] for a in _load(small.train_json)["annotations"]}
    val = {a["source_index"] for a in _load(small.val_json)["annotations"]}
    assert train and val and not train & val
    tr_pool, va_pool = split_pools(load_glyphs()[1], seed=3)
    assert train <= set(tr_pool.tolist()) and val <= set(va_pool.tolist())
    _, labels = load_glyphs()
    for a in _load(small.train_json)["annotations"]:
        assert labels[a["source_index"]] + 1 == a["category_id"]


@pytest.fixture(scope="module")
def with_test(tmp_path_factory: pytest.TempPathFactory) -> DigitsPaths:
    return build_digits(tmp_path_factory.mktemp("digits_test"), seed=3, n_test=6, **SMALL)


def test_test_split_has_its_size_and_its_own_ids(with_test: DigitsPaths) -> None:
    test = _load(with_test.test_json)
    assert with_test.test_json == with_test.root / "annotations" / "test.json"
    assert len(test["images"]) == 6 and len(COCO(str(with_test.test_json)).getImgIds()) == 6
    first = first_test_image_id(SMALL["n_train"], SMALL["n_val"])
    assert [im["id"] for im in test["images"]] == list(range(first, first + 6))
    other = {im["id"] for path in (with_test.train_json, with_test.val_json) for im in _load(path)["images"]}
    assert not other & {im["id"] for im in test["images"]}
    assert all(im["file_name"].startswith("test/") for im in test["images"]) and test["annotations"]
    assert first_test_image_id(4000, 300) == 1000001 and first_test_image_id(2_000_000, 300) == 100000001


def test_test_split_shares_no_glyph_with_train_and_no_image_with_val(with_test: DigitsPaths) -> None:
    """Test glyphs come from the val pool only (never train's); its scenes come from a stream of their own."""
    tr_pool, va_pool = split_pools(load_glyphs()[1], seed=3)
    test = {a["source_index"] for a in _load(with_test.test_json)["annotations"]}
    assert test and not test & set(tr_pool.tolist()) and test <= set(va_pool.tolist())
    pixels = {split: {(with_test.image_root / im["file_name"]).read_bytes() for im in _load(path)["images"]}
              for split, path in (("val", with_test.val_json), ("test", with_test.test_json))}
    assert not pixels["val"] & pixels["test"]
    val = [(a["image_id"] % 100, a["bbox"]) for a in _load(with_test.val_json)["annotations"]]
    assert val != [(a["image_id"] % 100, a["bbox"]) for a in _load(with_test.test_json)["annotations"]]


def test_test_split_is_deterministic_and_leaves_train_and_val_unchanged(tmp_path: Path, small: DigitsPaths,
                                                                      with_test: DigitsPaths) -> None:
    again = build_digits(tmp_path / "again", seed=3, n_test=6, **SMALL)
    assert _all_files(again.root) == _all_files(with_test.root)
    without = {k: v for k, v in _all_files(with_test.root).items() if "test" not in k}
    assert without == _all_files(small.root) and small.test_json is None
    assert _load(with_test.test_json)["info"]["generator"]["n_test"] == 6


def test_split_pools_stratified_disjoint_seeded() -> None:
    _, labels = load_glyphs()
    tr, va = split_pools(labels, seed=0)
    assert not set(tr.tolist()) & set(va.tolist())
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(labels.size))
    for c in range(10):
        n_c = int((labels == c).sum())
        assert abs(int((labels[va] == c).sum()) - 0.25 * n_c) <= 1
    tr2, va2 = split_pools(labels, seed=0)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert not np.array_equal(va, split_pools(labels, seed=1)[1])


def test_class_probabilities_long_tail() -> None:
    p = class_probabilities(10.0)
    assert p.shape == (10,) and p.sum() == pytest.approx(1.0)
    assert p[0] / p[9] == pytest.approx(10.0)
    assert np.all(np.diff(p) < 0), "class 0 most frequent, class 9 rarest"
    assert np.allclose(class_probabilities(1.0), 0.1)
    counts = np.bincount(sample_classes(np.random.default_rng(0), 40000, 10.0), minlength=10)
    assert 8.0 <= counts[0] / counts[9] <= 12.5
    counts1 = np.bincount(sample_classes(np.random.default_rng(0), 40000, 1.0), minlength=10)
    assert 0.85 <= counts1[0] / counts1[9] <= 1.15


def test_imbalance_reaches_annotations(tmp_path: Path) -> None:
    paths = build_digits(
        tmp_path / "imb", n_train=40, n_val=0, image_size=64, digit_size=(12, 16), digits_per_image=(3, 3), imbalance=50.0
    )
    cats = np.bincount([a["category_id"] - 1 for a in _load(paths.train_json)["annotations"]], minlength=10)
    assert cats[:3].sum() > 3 * cats[7:].sum()
    assert _load(paths.val_json)["images"] == []


def test_empty_images(tmp_path: Path) -> None:
    paths = build_digits(tmp_path / "empty", n_train=4, n_val=2, image_size=64, digits_per_image=(0, 0))
    for path in (paths.train_json, paths.val_json):
        coco = COCO(str(path))
        assert len(coco.getImgIds()) > 0 and coco.getAnnIds() == []
    some = build_digits(tmp_path / "some", n_train=12, n_val=0, image_size=64, digit_size=(12, 20), digits_per_image=(0, 1))
    data = _load(some.train_json)
    with_boxes = {a["image_id"] for a in data["annotations"]}
    assert 0 < len(with_boxes) < len(data["images"])
    COCO(str(some.train_json))


def test_little_overlap_in_crowded_scenes(tmp_path: Path) -> None:
    paths = build_digits(tmp_path / "crowd", n_train=12, n_val=0, image_size=64, digit_size=(16, 28), digits_per_image=(6, 6))
    data = _load(paths.train_json)
    per_image: dict[int, list[list[float]]] = {}
    for a in data["annotations"]:
        per_image.setdefault(a["image_id"], []).append(a["bbox"])
    assert min(len(v) for v in per_image.values()) >= 1
    assert max(len(v) for v in per_image.values()) < 6, "crowded scenes must drop digits rather than overlap"
    for boxes in per_image.values():
        for a, b in combinations(boxes, 2):
            assert _iou(a, b) <= MAX_IOU + 1e-9


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"n_train": -1}, "n_train"),
        ({"n_val": -3}, "n_val"),
        ({"n_train": 1.5}, "n_train"),
        ({"seed": -1}, "seed"),
        ({"image_size": 40}, "image_size"),
        ({"image_size": 64, "digit_size": (16, 60)}, "image_size"),
        ({"imbalance": 0.5}, "imbalance"),
        ({"imbalance": math.nan}, "imbalance"),
        ({"digits_per_image": (3, 1)}, "digits_per_image"),
        ({"digits_per_image": (-1, 2)}, "digits_per_image"),
        ({"digit_size": (2, 8)}, "digit_size"),
        ({"digit_size": 12}, "digit_size"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, word: str) -> None:
    with pytest.raises(MinedetError) as err:
        build_digits(tmp_path / "bad", **kwargs)
    msg = str(err.value)
    assert word in msg and "\n" not in msg
    assert not (tmp_path / "bad").exists(), "nothing is written for bad arguments"


def test_out_dir_is_a_file(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(MinedetError, match="not a directory"):
        build_digits(f, n_train=1, n_val=0, image_size=64)


def test_progress_bar_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build_digits(tmp_path / "p", n_train=2, n_val=1, image_size=64, progress=True)
    assert "digits" in capsys.readouterr().err
