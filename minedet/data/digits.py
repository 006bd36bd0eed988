"""The embedded default dataset ``digits``: scikit-learn's handwritten digits composed into scenes.

Source: ``sklearn.datasets.load_digits()`` (bundled with scikit-learn, nothing is downloaded): 1797
greyscale 8x8 glyphs with values 0..16 and 10 classes. The 1797 samples are split once, seeded and
stratified by class, into disjoint train (75 %) and val (25 %) pools, so no handwriting sample appears
in both splits. An optional test split (``n_test``) draws its scenes from a stream no other split uses and its
glyphs from the val pool only: no test image is a train or val image and no test glyph is a train glyph, but the
1797 glyphs are all in the train or val pool, so test shares handwriting with val (never with train). Each scene is an RGB image with a smooth random background (colour gradient plus
low-frequency noise) on which 0..k digits are alpha-composited: the glyph is upsampled smoothly to a
side drawn from ``digit_size`` (aspect slightly jittered), its intensity becomes the alpha mask, and
its colour is drawn to contrast with the local background. Mild pixel noise is added last.

Output layout (COCO JSON + PNG)::

    out_dir/annotations/train.json      out_dir/images/train/000000001.png ...
    out_dir/annotations/val.json        out_dir/images/val/000100001.png ...
    out_dir/annotations/test.json       out_dir/images/test/001000001.png ...   (only when n_test > 0)

``file_name`` is relative to ``out_dir/images`` (``"train/000000001.png"``). Image ids are unique across
splits: train ``1..n_train``, val ``100001..`` (the val base grows by powers of ten if ``n_train`` is
larger), test after val (:func:`first_test_image_id`). Category id = digit + 1 (ids 1..10, names ``"0"``..``"9"``). Each annotation's ``bbox`` is
``[x, y, w, h]`` in image pixels (floats, COCO convention): the tight box of the pixels whose digit alpha
is at least :data:`ALPHA_THRESHOLD`. ``"source_index"`` (not a COCO key) is the index of the glyph in
``load_digits()``.

Class frequencies follow ``p_k ∝ R ** (-k / (K - 1))`` with ``R = imbalance``: class "0" is the most
frequent, class "9" the rarest, and ``p_0 / p_9 == R`` (R = 1 is uniform). Classes are drawn first,
then a glyph of that class uniformly from the split's pool.

Deterministic: the same arguments give byte-identical JSON and PNG files. The pool split, the train
scenes, the val scenes and the test scenes each use their own ``numpy.random.default_rng`` stream derived from
``SeedSequence([seed, stream])``; the test stream is one no benchmark drew from before the split existed, and
``n_test`` leaves the train and val files byte-identical.
"""

from __future__ import annotations

import functools
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from minedet.errors import MinedetError
from minedet.io import write_bytes_atomic, write_text_atomic

__all__ = [
    "ALPHA_THRESHOLD",
    "CATEGORY_NAMES",
    "DigitsPaths",
    "Scene",
    "build_digits",
    "class_probabilities",
    "load_glyphs",
    "render_glyph",
    "render_scene",
    "sample_classes",
    "split_pools",
    "first_test_image_id",
    "val_first_image_id",
]

CATEGORY_NAMES: list[str] = [str(d) for d in range(10)]
NUM_CLASSES = len(CATEGORY_NAMES)

#: A pixel belongs to a digit's box when the digit's alpha there is at least this.
ALPHA_THRESHOLD = 0.2
#: Fraction of each class's samples that go to the val pool.
VAL_FRACTION = 0.25
#: Largest IoU a new digit box may have with any box already placed in the scene.
MAX_IOU = 0.05
#: Positions tried for one digit before it is given up.
PLACEMENT_TRIES = 12
#: Width/height ratio of a digit is drawn from ``[1 / ASPECT_MAX, ASPECT_MAX]`` (log-uniform).
ASPECT_MAX = 1.25
#: Minimum luminance difference (0..255) between a digit's colour and its local background.
MIN_CONTRAST = 90.0
#: Streams derived from the seed.
_STREAM_POOLS, _STREAM_TRAIN, _STREAM_VAL, _STREAM_TEST = 0, 1, 2, 3
_PNG_COMPRESS_LEVEL = 6
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class DigitsPaths:
    """Where :func:`build_digits` wrote the dataset.

    Attributes:
        root: ``out_dir``.
        train_json: ``out_dir/annotations/train.json`` (COCO).
        val_json: ``out_dir/annotations/val.json`` (COCO).
        image_root: ``out_dir/images``; every ``file_name`` is relative to it.
        test_json: ``out_dir/annotations/test.json`` (COCO) when the build has a test split, else None.
    """

    root: Path
    train_json: Path
    val_json: Path
    image_root: Path
    test_json: Path | None = None


@dataclass(frozen=True)
class Scene:
    """One rendered scene.

    Attributes:
        image: uint8 ``[H, W, 3]`` RGB.
        boxes: float64 ``[N, 4]`` in COCO ``[x, y, w, h]``, image pixels (x right, y down, origin at
            the top-left corner of the top-left pixel).
        digits: int64 ``[N]`` digit classes 0..9 (COCO category id = digit + 1).
        source_index: int64 ``[N]`` index of each glyph in ``load_digits()``.
        coverage: float32 ``[H, W]`` the largest digit alpha at each pixel (0 = pure background).
    """

    image: np.ndarray
    boxes: np.ndarray
    digits: np.ndarray
    source_index: np.ndarray
    coverage: np.ndarray


@functools.lru_cache(maxsize=1)
def load_glyphs() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as ``(glyphs float32 [1797, 8, 8] in [0, 1], labels int64 [1797])``.

    The arrays are read-only (they are cached).
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    glyphs = np.asarray(bunch.images, dtype=np.float32) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    glyphs.setflags(write=False)
    labels.setflags(write=False)
    return glyphs, labels


def split_pools(labels: np.ndarray, seed: int, val_fraction: float = VAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of sample indices into disjoint train and val pools.

    Args:
        labels: int ``[M]`` class of each sample.
        seed: non-negative int.
        val_fraction: share of each class that goes to val (rounded per class).

    Returns:
        ``(train_idx, val_idx)``: sorted int64 arrays, disjoint, together ``0..M-1``.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(np.random.SeedSequence([seed, _STREAM_POOLS]))
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(idx.size)]
        n_val = int(round(val_fraction * idx.size))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return (np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(val)).astype(np.int64))


def class_probabilities(imbalance: float, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Long-tailed class distribution: ``p_k ∝ imbalance ** (-k / (num_classes - 1))``.

    Class 0 is the most frequent and class ``num_classes - 1`` the rarest; ``p[0] / p[-1] == imbalance``.

    Returns:
        float64 ``[num_classes]`` summing to 1.
    """
    _check_imbalance(imbalance)
    if num_classes == 1:
        return np.ones(1)
    ranks = np.arange(num_classes, dtype=np.float64)
    p = float(imbalance) ** (-ranks / (num_classes - 1))
    return p / p.sum()


def sample_classes(rng: np.random.Generator, n: int, imbalance: float, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Draw ``n`` classes i.i.d. from :func:`class_probabilities`; int64 ``[n]``."""
    return rng.choice(num_classes, size=n, p=class_probabilities(imbalance, num_classes)).astype(np.int64)


def render_glyph(glyph: np.ndarray, width: int, height: int) -> np.ndarray:
    """Upsample an 8x8 glyph (values in [0, 1]) to an alpha patch.

    The glyph gets a one-cell empty border first, so strokes touching the 8x8 edge fade out
    instead of being cut: the 8x8 area maps to about ``width x height`` pixels and the returned patch is
    ``round(1.25 * height) x round(1.25 * width)``. Upsampling is bicubic, then a soft threshold sharpens
    the blurred strokes.

    Returns:
        float32 ``[round(1.25 * height), round(1.25 * width)]`` alpha in [0, 1].
    """
    padded = np.pad(np.asarray(glyph, dtype=np.float32), 1)
    pw, ph = _patch_side(width), _patch_side(height)
    up = np.asarray(Image.fromarray(padded).resize((pw, ph), Image.Resampling.BICUBIC), dtype=np.float32)
    # Soft threshold: 0 below 0.15, 1 above 0.6; smoothstep in between keeps edges anti-aliased.
    t = np.clip((up - 0.15) / 0.45, 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def _patch_side(side: int) -> int:
    return max(3, int(round(side * 1.25)))


def _max_patch_side(digit_size: tuple[int, int]) -> int:
    return _patch_side(int(math.ceil(digit_size[1] * math.sqrt(ASPECT_MAX))))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth random background: float32 ``[size, size, 3]`` in [0, 255]."""
    c0, c1 = rng.uniform(0.0, 255.0, size=(2, 3))
    theta = rng.uniform(0.0, 2.0 * math.pi)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    t = np.cos(theta) * coords[None, :] + np.sin(theta) * coords[:, None]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    bg = c0[None, None, :] + (c1 - c0)[None, None, :] * t[:, :, None]
    grid = rng.normal(0.0, 30.0, size=(3, 4, 4)).astype(np.float32)
    for ch in range(3):
        low = Image.fromarray(np.ascontiguousarray(grid[ch])).resize((size, size), Image.Resampling.BICUBIC)
        bg[:, :, ch] += np.asarray(low, dtype=np.float32)
    return np.clip(bg, 0.0, 255.0).astype(np.float32)


def _luma(rgb: np.ndarray) -> float:
    return float(np.dot(rgb, _LUMA))


def _foreground_colour(rng: np.random.Generator, local_bg: np.ndarray) -> np.ndarray:
    """A random RGB colour whose luminance differs from ``local_bg``'s by at least MIN_CONTRAST."""
    bg_l = _luma(local_bg)
    for _ in range(24):
        c = rng.uniform(0.0, 255.0, size=3)
        if abs(_luma(c) - bg_l) >= MIN_CONTRAST:
            return c
    return np.zeros(3) if bg_l >= 128.0 else np.full(3, 255.0)


def _iou_xywh(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``[x, y, w, h]`` box with each of ``boxes`` ``[N, 4]``."""
    if boxes.size == 0:
        return np.zeros(0)
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y2 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter
    return inter / np.maximum(union, 1e-9)


def render_scene(
    rng: np.random.Generator,
    pool: np.ndarray,
    *,
    image_size: int = 128,
    digits_per_image: tuple[int, int] = (1, 6),
    digit_size: tuple[int, int] = (16, 40),
    imbalance: float = 1.0,
) -> Scene:
    """Render one scene from the glyphs in ``pool`` (indices into :func:`load_glyphs`).

    The number of digits is drawn uniformly from ``digits_per_image`` (inclusive); each digit's class
    from :func:`class_probabilities`, then its glyph uniformly among the pool's glyphs of that class.
    A digit is placed at a random position with its whole patch inside the image; a position whose
    tight box has IoU > :data:`MAX_IOU` with a box already placed is rejected, and after
    :data:`PLACEMENT_TRIES` rejections the digit is dropped, so a scene may hold fewer digits than drawn.

    Args:
        rng: the generator to draw from (advanced in place).
        pool: int ``[P]`` glyph indices allowed in this scene; must cover every class.

    Returns:
        a :class:`Scene` (boxes in COCO ``[x, y, w, h]`` image pixels).
    """
    glyphs, labels = load_glyphs()
    pool = np.asarray(pool, dtype=np.int64)
    by_class = [pool[labels[pool] == c] for c in range(NUM_CLASSES)]
    size = int(image_size)
    bg = _background(rng, size)
    canvas = bg.copy()
    coverage = np.zeros((size, size), dtype=np.float32)
    n = int(rng.integers(digits_per_image[0], digits_per_image[1] + 1))
    classes = sample_classes(rng, n, imbalance)
    boxes: list[np.ndarray] = []
    digits: list[int] = []
    sources: list[int] = []
    for c in classes:
        candidates = by_class[int(c)]
        src = int(candidates[rng.integers(candidates.size)])
        side = rng.uniform(digit_size[0], digit_size[1])
        aspect = math.exp(rng.uniform(-1.0, 1.0) * math.log(ASPECT_MAX)) ** 0.5
        alpha = render_glyph(glyphs[src], max(2, int(round(side * aspect))), max(2, int(round(side / aspect))))
        ys, xs = np.nonzero(alpha >= ALPHA_THRESHOLD)
        if ys.size == 0:
            continue
        ph, pw = alpha.shape
        local = np.array([xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()], dtype=np.float64)
        placed = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        for _ in range(PLACEMENT_TRIES):
            ox = int(rng.integers(0, size - pw + 1))
            oy = int(rng.integers(0, size - ph + 1))
            box = local + np.array([ox, oy, 0.0, 0.0])
            if np.all(_iou_xywh(box, placed) <= MAX_IOU):
                break
        else:
            continue
        region = (slice(oy, oy + ph), slice(ox, ox + pw))
        colour = _foreground_colour(rng, bg[region].reshape(-1, 3).mean(axis=0))
        a = alpha[:, :, None]
        canvas[region] = canvas[region] * (1.0 - a) + colour[None, None, :] * a
        coverage[region] = np.maximum(coverage[region], alpha)
        boxes.append(box)
        digits.append(int(c))
        sources.append(src)
    sigma = rng.uniform(2.0, 6.0)
    canvas += rng.normal(0.0, sigma, size=canvas.shape).astype(np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Scene(
        image=image,
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        digits=np.asarray(digits, dtype=np.int64),
        source_index=np.asarray(sources, dtype=np.int64),
        coverage=coverage,
    )


def _png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False, compress_level=_PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise MinedetError(f"{name} must be an integer, got {value!r}", record="digits")
    if value < minimum:
        raise MinedetError(f"{name} must be >= {minimum}, got {value}", record="digits")
    return int(value)


def _check_range(name: str, value: Any, minimum: int) -> tuple[int, int]:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise MinedetError(f"{name} must be a pair (low, high), got {value!r}", record="digits")
    lo = _check_int(f"{name}[0]", value[0], minimum)
    hi = _check_int(f"{name}[1]", value[1], minimum)
    if lo > hi:
        raise MinedetError(f"{name} must have low <= high, got ({lo}, {hi})", record="digits")
    return lo, hi


def _check_imbalance(imbalance: Any) -> float:
    if isinstance(imbalance, bool) or not isinstance(imbalance, (int, float, np.integer, np.floating)):
        raise MinedetError(f"imbalance must be a number >= 1, got {imbalance!r}", record="digits")
    if not math.isfinite(float(imbalance)) or float(imbalance) < 1.0:
        raise MinedetError(f"imbalance must be a finite number >= 1, got {imbalance!r}", record="digits")
    return float(imbalance)


def _coco_split(
    split: str,
    rng: np.random.Generator,
    pool: np.ndarray,
    first_id: int,
    count: int,
    image_root: Path,
    info: dict[str, Any],
    scene_kwargs: dict[str, Any],
    bar: Any,
) -> dict[str, Any]:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i in range(count):
        image_id = first_id + i
        scene = render_scene(rng, pool, **scene_kwargs)
        file_name = f"{split}/{image_id:09d}.png"
        write_bytes_atomic(image_root / file_name, _png_bytes(scene.image))
        h, w = scene.image.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        for box, digit, src in zip(scene.boxes, scene.digits, scene.source_index):
            bbox = [float(v) for v in box]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(digit) + 1,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                    "source_index": int(src),
                }
            )
        bar.update(1)
    categories = [{"id": k + 1, "name": name, "supercategory": "digit"} for k, name in enumerate(CATEGORY_NAMES)]
    return {
        "info": {**info, "split": split},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def val_first_image_id(n_train: int) -> int:
    """First val image id: 100001, or the next ``10**k + 1`` above ``n_train`` so ids never collide."""
    first = 100_001
    while first <= n_train:
        first = (first - 1) * 10 + 1
    return first


def first_test_image_id(n_train: int, n_val: int) -> int:
    """First test image id: the next ``10**k + 1`` above the last val id (1000001 for the usual sizes)."""
    return val_first_image_id(val_first_image_id(n_train) + n_val - 1)


def build_digits(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_train: int = 1000,
    n_val: int = 200,
    n_test: int = 0,
    image_size: int = 128,
    digits_per_image: tuple[int, int] = (1, 6),
    digit_size: tuple[int, int] = (16, 40),
    imbalance: float = 1.0,
    progress: bool = False,
) -> DigitsPaths:
    """Build the ``digits`` dataset under ``out_dir`` (COCO JSON + PNG, layout in the module docstring).

    Args:
        out_dir: output directory (created if missing). Existing files under the same names are replaced;
            other files are left alone.
        seed: non-negative int; the same arguments give byte-identical files.
        n_train, n_val: number of images per split (>= 0).
        n_test: images of the test split (>= 0; none by default): its own scene stream, glyphs of the val pool.
        image_size: side of the square RGB images, in pixels.
        digits_per_image: inclusive range of digits drawn per image; ``(0, k)`` allows empty images.
            Digits that cannot be placed without overlap (IoU > 0.05) are dropped.
        digit_size: inclusive range of the digit side in pixels: the 8x8 glyph area is scaled to about
            this side (width/height ratio jittered within 1.25), so a tight box can be a few pixels larger.
        imbalance: most/least frequent class ratio ``R >= 1``; class "0" most frequent, "9" rarest.
        progress: show a tqdm bar.

    Returns:
        :class:`DigitsPaths`.

    Raises:
        MinedetError: on a bad argument (one line naming it).
    """
    seed = _check_int("seed", seed, 0)
    n_train = _check_int("n_train", n_train, 0)
    n_val = _check_int("n_val", n_val, 0)
    n_test = _check_int("n_test", n_test, 0)
    image_size = _check_int("image_size", image_size, 8)
    digits_per_image = _check_range("digits_per_image", digits_per_image, 0)
    digit_size = _check_range("digit_size", digit_size, 4)
    imbalance = _check_imbalance(imbalance)
    _check_digit_fits(image_size, digit_size)
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise MinedetError("output path exists and is not a directory", file=str(root))

    from tqdm import tqdm

    _, labels = load_glyphs()
    train_pool, val_pool = split_pools(labels, seed)
    image_root = root / "images"
    paths = DigitsPaths(
        root=root,
        train_json=root / "annotations" / "train.json",
        val_json=root / "annotations" / "val.json",
        image_root=image_root,
        test_json=root / "annotations" / "test.json" if n_test else None,
    )
    scene_kwargs = {
        "image_size": image_size,
        "digits_per_image": digits_per_image,
        "digit_size": digit_size,
        "imbalance": imbalance,
    }
    info = _digits_info(seed, n_train, n_val, scene_kwargs)
    splits = [("train", _STREAM_TRAIN, train_pool, 1, n_train, paths.train_json, info),
              ("val", _STREAM_VAL, val_pool, val_first_image_id(n_train), n_val, paths.val_json, info)]
    if n_test:  # the train and val files stay byte-identical: only test.json's info names n_test
        test_info = {**info, "generator": {**info["generator"], "n_test": n_test, "test_glyphs": "the val pool"}}
        splits.append(("test", _STREAM_TEST, val_pool, first_test_image_id(n_train, n_val), n_test, paths.test_json, test_info))
    with tqdm(total=n_train + n_val + n_test, desc="digits", unit="img", disable=not progress) as bar:
        for split, stream, pool, first_id, count, json_path, split_info in splits:
            rng = np.random.default_rng(np.random.SeedSequence([seed, stream]))
            coco = _coco_split(split, rng, pool, first_id, count, image_root, split_info, scene_kwargs, bar)
            write_text_atomic(json_path, json.dumps(coco, ensure_ascii=False, separators=(",", ":")) + "\n")
    return paths


def _check_digit_fits(image_size: int, digit_size: tuple[int, int]) -> None:
    """Check the largest digit patch ``digit_size`` can give fits in an ``image_size`` image."""
    need = _max_patch_side(digit_size)
    if image_size < need:
        raise MinedetError(
            f"image_size must be >= {need} for digit_size {digit_size} (a digit patch up to {need} px), got {image_size}",
            record="digits",
        )


def _digits_info(seed: int, n_train: int, n_val: int, scene_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The COCO ``info`` record of a digits build: the source and every generator argument
    (``scene_kwargs``: image_size, digits_per_image, digit_size, imbalance) and constant."""
    import minedet

    return {
        "description": "minedet digits: scikit-learn handwritten digits composed into scenes",
        "source": "sklearn.datasets.load_digits",
        "version": minedet.__version__,
        "generator": {
            "seed": seed,
            "n_train": n_train,
            "n_val": n_val,
            "image_size": scene_kwargs["image_size"],
            "digits_per_image": list(scene_kwargs["digits_per_image"]),
            "digit_size": list(scene_kwargs["digit_size"]),
            "imbalance": scene_kwargs["imbalance"],
            "val_fraction": VAL_FRACTION,
            "max_iou": MAX_IOU,
            "alpha_threshold": ALPHA_THRESHOLD,
            "class_order": "p_k proportional to imbalance**(-k/9): class '0' most frequent, '9' rarest",
        },
    }
