"""Annotation-degradation tools: seeded, exact, pure functions over COCO dicts.

Two families of degraded training sets, each measured against the truth it hides:

* **Sparse annotation** (SAOD, :func:`sparsify`): every image stays, some of its boxes are erased.
  The easy / hard / extreme / 50miss protocols come from the BRL paper (Zhang, Chen, Shen, Hao, Zhu,
  Savvides, "Solving Missing-Annotation Object Detection with Background Recalibration Loss",
  ICASSP 2020) as used by Co-mining (Wang, Yang, Cao, Zhang, AAAI 2021). No official script exists;
  these definitions are minedet's, stated exactly below.
* **Semi-supervised** (SSOD, :func:`split_semi`): a percentage of the images keeps its boxes, the
  rest becomes unlabelled ("COCO-standard" of Unbiased Teacher, Liu et al., ICLR 2021, used by ACRST,
  Zhang, Pan, Wang, AAAI 2022).

Rules shared by every function here:

* Inputs are COCO dicts (as :attr:`minedet.data.coco.CocoData.raw` holds them); they are never
  mutated. Outputs are new dicts; annotation and image records in them are shallow copies.
* Randomness comes from a local ``numpy.random.default_rng(seed)``. Before drawing, images are
  ordered by image id and annotations by annotation id, so the result depends on the seed and the
  content only, not on the order of records in the file. Output lists keep the input's order.
* Every erased box goes to a *hidden truth* dict with the same images and categories and the erased
  annotations under their original ids, so ``kept ∪ hidden`` is the original, disjoint by id.
* Counts are exact. "round" below always means round half up on the exact decimal value of the
  number given (``round(0.5 * 3) = 2``), never Python's round-half-to-even.
* The manifest records ``source_sha256``: the SHA-256 of the *canonical JSON* of the input dict
  (``json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` in UTF-8), so it
  identifies the content whatever the file's formatting. The CLI adds the file's own SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from minedet import __version__
from minedet.errors import MinedetError

__all__ = [
    "MODES",
    "SparseSplit",
    "SemiSplit",
    "sparsify",
    "split_semi",
    "split_semi_from_supervision_file",
    "check_hidden_matches",
    "synthetic_coco",
    "canonical_sha256",
    "round_half_up",
]

MODES = ("easy", "hard", "extreme", "missing", "keep1")

BRL_CITATION = (
    "Zhang, Chen, Shen, Hao, Zhu, Savvides. Solving Missing-Annotation Object Detection with Background "
    "Recalibration Loss. ICASSP 2020; protocol as used by Wang, Yang, Cao, Zhang. Co-mining: Self-Supervised "
    "Learning for Sparsely Annotated Object Detection. AAAI 2021"
)
SSOD_CITATION = (
    "COCO-standard: Liu et al. Unbiased Teacher for Semi-Supervised Object Detection. ICLR 2021; "
    "Zhang, Pan, Wang. Semi-Supervised Object Detection with Adaptive Class-Rebalancing Self-Training. AAAI 2022"
)

MODE_RULES = {
    "easy": "erase exactly 1 annotation of every image that has >= 1 (an image with 1 box ends with 0: BRL protocol)",
    "hard": "erase floor(n/2) of every image's n annotations (an image with 1 box keeps it)",
    "extreme": "keep exactly 1 annotation of every image that has >= 1 (erase n-1)",
    "missing": "erase round_half_up(rate * n_c) of each category c's n_c instances, uniformly over the whole "
    "dataset (rate 0.5 = COCO-50miss)",
    "keep1": "keep exactly 1 annotation per (image, category) pair, erase the others",
}


@dataclass(frozen=True)
class SparseSplit:
    """Result of :func:`sparsify`: the sparse training set, the hidden truth, and the manifest."""

    kept: dict
    hidden: dict
    manifest: dict


@dataclass(frozen=True)
class SemiSplit:
    """Result of :func:`split_semi`.

    Attributes:
        labelled: labelled images with all their annotations.
        unlabelled: the other images with no annotations (``"annotations": []``).
        hidden: the unlabelled images with their annotations (the truth the split hides).
        manifest: how the split was made (see :func:`split_semi`).
    """

    labelled: dict
    unlabelled: dict
    hidden: dict
    manifest: dict


# --------------------------------------------------------------------------------------------------
# helpers


def round_half_up(x: float | Fraction) -> int:
    """Round half up on the exact decimal value of ``x`` (``repr`` of a float): 2.5 -> 3, 0.29*100 -> 29."""
    q = x if isinstance(x, Fraction) else Fraction(repr(float(x)))
    return math.floor(q + Fraction(1, 2))


def canonical_sha256(d: Any) -> str:
    """SHA-256 of the canonical JSON bytes of ``d`` (sorted keys, no spaces, UTF-8)."""
    b = json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True).encode("utf-8")
    return hashlib.sha256(b).hexdigest()


def _check_dict(d: Any, what: str = "dataset") -> None:
    if not isinstance(d, dict):
        raise MinedetError(f"{what} must be a COCO dict, got {type(d).__name__}")
    for k in ("images", "annotations", "categories"):
        if not isinstance(d.get(k), list):
            raise MinedetError(f'{what} has no "{k}" list')
    if not all(isinstance(c, dict) and isinstance(c.get("id"), int) for c in d["categories"]):
        raise MinedetError(f"{what}: every category needs an integer id")


def _not_valid(e: Exception) -> MinedetError:
    return MinedetError(
        f"dataset is not a valid COCO dict ({type(e).__name__}: {e}); check it with 'minedet data check' / load_coco"
    )


def _image_ids(d: dict) -> np.ndarray:
    try:
        ids = np.fromiter((im["id"] for im in d["images"]), dtype=np.int64, count=len(d["images"]))
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise _not_valid(e) from None
    if len(np.unique(ids)) != len(ids):
        raise MinedetError("dataset has duplicate image ids")
    return ids


def _ann_arrays(d: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Annotation ids, image ids, category ids, and the file positions that sort them by annotation id."""
    anns = d["annotations"]
    n = len(anns)
    try:
        aid = np.fromiter((a["id"] for a in anns), dtype=np.int64, count=n)
        iid = np.fromiter((a["image_id"] for a in anns), dtype=np.int64, count=n)
        cid = np.fromiter((a["category_id"] for a in anns), dtype=np.int64, count=n)
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise _not_valid(e) from None
    order = np.argsort(aid, kind="stable")
    if n and np.any(aid[order][1:] == aid[order][:-1]):
        raise MinedetError("dataset has duplicate annotation ids")
    return aid, iid, cid, order


def _group_rank(groups: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For items in ``groups`` (sorted order irrelevant), their rank by ``keys`` inside their group
    and their group's size. Returns (rank[N], size[N])."""
    n = len(groups)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.lexsort((keys, groups))
    g = groups[order]
    start = np.ones(n, dtype=bool)
    start[1:] = g[1:] != g[:-1]
    starts = np.flatnonzero(start)
    sizes = np.diff(np.append(starts, n))
    grp_index = np.cumsum(start) - 1
    rank_sorted = np.arange(n) - starts[grp_index]
    rank = np.empty(n, np.int64)
    size = np.empty(n, np.int64)
    rank[order] = rank_sorted
    size[order] = sizes[grp_index]
    return rank, size


def _subset(d: dict, images: list[dict], annotations: list[dict]) -> dict:
    out = {k: v for k, v in d.items() if k not in ("images", "annotations", "categories")}
    out["images"] = [dict(im) for im in images]
    out["annotations"] = [dict(a) for a in annotations]
    out["categories"] = [dict(c) for c in d["categories"]]
    return out


def _per_category(d: dict, kept_cids: np.ndarray, hidden_cids: np.ndarray, all_cids: np.ndarray) -> dict:
    out = {}
    for c in sorted(d["categories"], key=lambda c: c["id"]):
        cid = c["id"]
        out[str(cid)] = {
            "name": c.get("name"),
            "before": int(np.count_nonzero(all_cids == cid)),
            "after": int(np.count_nonzero(kept_cids == cid)),
            "hidden": int(np.count_nonzero(hidden_cids == cid)),
        }
    return out


# --------------------------------------------------------------------------------------------------
# sparse annotation


def sparsify(d: dict, mode: str, seed: int, rate: float | None = None) -> SparseSplit:
    """Erase box annotations by a named protocol; the erased boxes become the hidden truth.

    Modes (n = number of annotations of an image, crowd boxes included; the erased/kept subset is
    drawn uniformly at random within each image / category):

    * ``easy``: erase exactly one annotation of every image with n >= 1. An image with a single
      box ends with none; that is the BRL protocol ("randomly erases one instance annotation").
    * ``hard``: erase ``floor(n / 2)`` annotations of every image, so an image with 1 box keeps it
      and one with 5 keeps 3.
    * ``extreme``: keep exactly one annotation of every image with n >= 1.
    * ``missing``: erase ``round_half_up(rate * n_c)`` of each category c's ``n_c`` instances,
      chosen uniformly over the whole dataset. ``rate=0.5`` is COCO-50miss (Zhang et al. 2020).
    * ``keep1``: keep one annotation per category per image (minedet's definition; no canonical
      reference protocol).

    Images that end with no annotation stay in the dataset (they are not negatives: their objects
    are merely unlabelled). ``rate`` is required for ``missing`` and refused for the other modes.

    Args:
        d: a COCO dict (validated, e.g. ``load_coco(...).raw``); not mutated.
        mode: one of :data:`MODES`.
        seed: seed of the local ``numpy.random.default_rng``.
        rate: fraction in [0, 1] erased per category (``missing`` only).

    Returns:
        :class:`SparseSplit` (kept, hidden, manifest). ``kept`` and ``hidden`` have the input's
        images, categories and other top-level keys; their annotations (original ids, input order)
        partition the input's. The manifest holds: ``minedet_version``, ``protocol``, ``citation``,
        ``mode``, ``rule``, ``rate``, ``seed``, ``rounding``, ``source_sha256`` (canonical JSON, see the
        module docstring), ``images``, ``images_emptied`` (had boxes, now none), ``annotations``
        (before/after/hidden totals) and ``per_category`` (category id -> name, before, after, hidden).
    """
    rate = _check_sparsify_args(mode, seed, rate)
    _check_dict(d)
    img_ids = _image_ids(d)
    aid, iid, cid, order = _ann_arrays(d)
    known = np.isin(iid, img_ids)
    if not known.all():
        bad = int(aid[np.flatnonzero(~known)[0]])
        raise MinedetError(f"annotation id={bad} names an image that is not in the dataset")
    erase = _erase_mask(mode, rate, seed, iid, cid, order)

    anns = d["annotations"]
    kept_anns = [a for a, e in zip(anns, erase.tolist()) if not e]
    hidden_anns = [a for a, e in zip(anns, erase.tolist()) if e]
    kept = _subset(d, d["images"], kept_anns)
    hidden = _subset(d, d["images"], hidden_anns)
    manifest = _sparse_manifest(d, mode, rate, seed, iid, cid, erase)
    return SparseSplit(kept=kept, hidden=hidden, manifest=manifest)


def _check_seed(seed: Any, what: str = "seed") -> None:
    """Check ``seed`` is a non-negative integer (``what`` names it in the error)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise MinedetError(f"{what} must be a non-negative integer, got {seed!r}")


def _check_sparsify_args(mode: str, seed: Any, rate: Any) -> float | None:
    """Check :func:`sparsify`'s mode (one of :data:`MODES`), rate (a number in [0, 1], given for
    ``missing`` only) and seed. Returns the rate as a float (None outside ``missing``)."""
    if mode not in MODES:
        raise MinedetError(f"unknown sparsify mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "missing":
        if rate is None:
            raise MinedetError("mode 'missing' needs a rate in [0, 1] (0.5 = COCO-50miss)")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (0.0 <= float(rate) <= 1.0):
            raise MinedetError(f"rate must be a number in [0, 1], got {rate!r}")
        rate = float(rate)
    elif rate is not None:
        raise MinedetError(f"rate only applies to mode 'missing', not {mode!r}")
    _check_seed(seed)
    return rate


def _erase_mask(
    mode: str, rate: float | None, seed: int, iid: np.ndarray, cid: np.ndarray, order: np.ndarray
) -> np.ndarray:
    """Bool[N] over the annotations in file order: True = erased by ``mode`` (see :func:`sparsify`).

    ``iid``/``cid`` are the annotations' image and category ids in file order, ``order`` the file
    positions sorted by annotation id (:func:`_ann_arrays`). One draw: ``default_rng(seed).random(N)``.
    """
    rng = np.random.default_rng(seed)
    n = len(iid)
    # Work in annotation-id order so file order cannot matter. One uniform key per annotation;
    # priority = rank of (key, annotation id), so even equal keys have a fixed order.
    iid_s, cid_s = iid[order], cid[order]
    keys = rng.random(n)
    prio = np.empty(n, np.int64)
    prio[np.lexsort((np.arange(n), keys))] = np.arange(n)
    rank, size = _group_rank(_erase_groups(mode, iid_s, cid_s), prio)  # lowest priorities first
    if mode == "easy":
        erase_s = rank < np.minimum(size, 1)
    elif mode == "hard":
        erase_s = rank < size // 2
    elif mode == "extreme":
        erase_s = rank < size - 1
    elif mode == "missing":
        erase_s = _erase_per_category(rate, cid_s, rank)
    else:  # keep1
        erase_s = rank >= 1
    erase = np.empty(n, bool)
    erase[order] = erase_s
    return erase


def _erase_groups(mode: str, iid_s: np.ndarray, cid_s: np.ndarray) -> np.ndarray:
    """The group of each annotation (annotation-id order) within which ``mode`` erases: its image
    (easy/hard/extreme), its category (missing), or its (image, category) pair (keep1)."""
    if mode in ("easy", "hard", "extreme"):
        return iid_s
    if mode == "missing":
        return cid_s
    _, groups = np.unique(np.stack([iid_s, cid_s], axis=1), axis=0, return_inverse=True)
    return groups.reshape(-1)


def _erase_per_category(rate: float, cid_s: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Mode ``missing``: erase the ``round_half_up(rate * n_c)`` lowest-ranked annotations of each category c."""
    if not len(cid_s):
        return np.zeros(0, bool)
    q = Fraction(repr(rate))
    cats, counts = np.unique(cid_s, return_counts=True)
    n_erase = np.array([round_half_up(q * int(c)) for c in counts.tolist()], dtype=np.int64)
    return rank < n_erase[np.searchsorted(cats, cid_s)]


def _sparse_manifest(
    d: dict, mode: str, rate: float | None, seed: int, iid: np.ndarray, cid: np.ndarray, erase: np.ndarray
) -> dict:
    """The manifest of a sparse split (keys listed in :func:`sparsify`)."""
    n = len(iid)
    n_hidden = int(np.count_nonzero(erase))
    had = set(iid.tolist())
    still = set(iid[~erase].tolist())
    return {
        "minedet_version": __version__,
        "kind": "sparse",
        "protocol": "COCO-50miss" if (mode == "missing" and rate == 0.5) else mode,
        "citation": BRL_CITATION,
        "mode": mode,
        "rule": MODE_RULES[mode],
        "rate": rate,
        "seed": int(seed),
        "rounding": "floor(n/2)" if mode == "hard" else ("round half up" if mode == "missing" else "exact"),
        "draw": "numpy.random.default_rng(seed).random(N) over annotations sorted by id; per group, the "
        "annotations with the smallest keys are erased (kept for extreme/keep1)",
        "source_sha256": canonical_sha256(d),
        "images": len(d["images"]),
        "images_emptied": len(had - still),
        "annotations": {"before": n, "after": n - n_hidden, "hidden": n_hidden},
        "per_category": _per_category(d, cid[~erase], cid[erase], cid),
    }


# --------------------------------------------------------------------------------------------------
# semi-supervised


def _check_percent(percent: Any) -> float:
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not (0.0 < float(percent) <= 100.0):
        raise MinedetError(f"percent must be a number in (0, 100], got {percent!r}")
    return float(percent)


def _semi_parts(d: dict, labelled_ids: set[int], pool_ids: set[int]) -> tuple[dict, dict, dict]:
    lab_imgs = [im for im in d["images"] if im["id"] in labelled_ids]
    unl_imgs = [im for im in d["images"] if im["id"] in pool_ids and im["id"] not in labelled_ids]
    unl_set = {im["id"] for im in unl_imgs}
    lab_anns = [a for a in d["annotations"] if a["image_id"] in labelled_ids]
    hid_anns = [a for a in d["annotations"] if a["image_id"] in unl_set]
    return _subset(d, lab_imgs, lab_anns), _subset(d, unl_imgs, []), _subset(d, unl_imgs, hid_anns)


def split_semi(d: dict, percent: float, seed: int) -> SemiSplit:
    """Split a COCO dict into labelled / unlabelled images (COCO-standard protocol).

    ``k = round_half_up(percent / 100 * N)`` image ids are drawn **without replacement** from the N
    image ids sorted ascending, with ``numpy.random.default_rng(seed).choice(ids, k, replace=False)``.
    (MMDetection's split tool draws with replacement, a known bug, so it labels fewer images than it
    says; Unbiased Teacher's list uses ``int()``, i.e. floor, and positions: see
    :func:`split_semi_from_supervision_file`.) Every image is in exactly one of labelled/unlabelled;
    images without boxes take part in the draw like any other.

    Returns:
        :class:`SemiSplit`. Its manifest holds ``minedet_version``, ``protocol``, ``citation``,
        ``percent``, ``seed``, ``rounding``, ``draw``, ``source_sha256``, ``images`` (N),
        ``labelled`` (k), ``unlabelled`` (N - k), annotation counts, and ``labelled_image_ids`` (sorted).

    Raises:
        MinedetError: percent outside (0, 100], an empty dataset, or k == 0 (too few images for percent).
    """
    p = _check_percent(percent)
    _check_seed(seed)
    _check_dict(d)
    ids = np.sort(_image_ids(d))
    _ann_arrays(d)
    n = len(ids)
    if n == 0:
        raise MinedetError("dataset has no images to split")
    k = round_half_up(Fraction(repr(p)) * n / 100)
    if k == 0:
        raise MinedetError(f"{p:g}% of {n} images rounds to 0 labelled images; use a larger percent")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(ids, size=k, replace=False))
    lab_ids = set(chosen.tolist())
    labelled, unlabelled, hidden = _semi_parts(d, lab_ids, set(ids.tolist()))
    manifest = {
        "minedet_version": __version__,
        "kind": "semi",
        "protocol": "COCO-standard (labelled percentage of the training images)",
        "citation": SSOD_CITATION,
        "percent": p,
        "seed": int(seed),
        "rounding": "k = round half up(percent / 100 * N)",
        "draw": "numpy.random.default_rng(seed).choice(sorted image ids, k, replace=False)",
        "source_sha256": canonical_sha256(d),
        "images": n,
        "labelled": k,
        "unlabelled": n - k,
        "annotations": {
            "labelled": len(labelled["annotations"]),
            "hidden": len(hidden["annotations"]),
        },
        "labelled_image_ids": chosen.tolist(),
    }
    return SemiSplit(labelled=labelled, unlabelled=unlabelled, hidden=hidden, manifest=manifest)


def detectron2_image_order(d: dict) -> list[int]:
    """The image list Unbiased Teacher's positions index: detectron2's ``load_coco_json`` order
    (image ids sorted ascending) after ``filter_images_with_only_crowd_annotations`` (keep an image
    only if it has at least one annotation whose ``iscrowd`` is 0 or missing)."""
    has_box = {a["image_id"] for a in d["annotations"] if not a.get("iscrowd", 0)}
    return sorted(i for i in (im["id"] for im in d["images"]) if i in has_box)


def split_semi_from_supervision_file(
    d: dict, path: str | os.PathLike, percent: float, seed_index: int
) -> SemiSplit:
    """Reproduce an Unbiased Teacher split from its ``COCO_supervision.txt``.

    That file is JSON: ``{percent string: {seed index string: [position, ...]}}``, e.g.
    ``{"1.0": {"0": [59733, ...], ...}, "0.5": {...}}`` (percent strings as Python's ``str(float)``:
    "0.01", "0.1", "0.5", "1.0", "2.0", "5.0", "10.0"; seed indices "0".."9").

    The positions are **not image ids**. They index detectron2's training list, which is built as:
    images sorted by image id ascending (``load_coco_json``), then images with no annotation whose
    ``iscrowd`` is 0 (missing counts as 0) removed (``filter_images_with_only_crowd_annotations``,
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``); see :func:`detectron2_image_order`. For COCO train2017
    that list has 117,266 images. The number of positions must equal ``int(percent / 100 * M)``
    (floor, as Unbiased Teacher asserts) for the M listed images, or the file does not belong to
    this dataset. The labelled set is the images at those positions; the unlabelled set is the other
    images of that list. Images removed by the filter (no non-crowd boxes) are in **neither** set, as
    in Unbiased Teacher; the manifest lists them under ``excluded_image_ids``.

    The positions are applied to ``d`` as given: if box normalisation emptied an image that had a
    box in the original file, positions shift (the CLI refuses that case).
    """
    from minedet.data.coco import read_json_file

    p = _check_percent(percent)
    _check_seed(seed_index, "seed index")
    _check_dict(d)
    _image_ids(d)
    _ann_arrays(d)
    f = str(path)
    key, pos, rec = _supervision_positions(read_json_file(path), p, int(seed_index), f)
    order = detectron2_image_order(d)
    _check_positions(pos, len(order), p, f, rec)
    lab_ids = {order[x] for x in pos}
    labelled, unlabelled, hidden = _semi_parts(d, lab_ids, set(order))
    in_list = set(order)
    excluded = sorted(im["id"] for im in d["images"] if im["id"] not in in_list)
    m = len(order)
    manifest = {
        "minedet_version": __version__,
        "kind": "semi",
        "protocol": "COCO-standard, Unbiased Teacher COCO_supervision.txt positions",
        "citation": SSOD_CITATION,
        "percent": p,
        "seed": int(seed_index),
        "supervision_file": f,
        "supervision_key": [key, str(int(seed_index))],
        "rounding": "k = floor(percent / 100 * M) (Unbiased Teacher)",
        "draw": "positions into image ids sorted ascending, images without a non-crowd box removed "
        "(detectron2 load_coco_json + filter_images_with_only_crowd_annotations)",
        "source_sha256": canonical_sha256(d),
        "images": len(d["images"]),
        "images_listed": m,
        "labelled": len(lab_ids),
        "unlabelled": m - len(lab_ids),
        "annotations": {
            "labelled": len(labelled["annotations"]),
            "hidden": len(hidden["annotations"]),
        },
        "labelled_image_ids": sorted(lab_ids),
        "excluded_image_ids": excluded,
    }
    return SemiSplit(labelled=labelled, unlabelled=unlabelled, hidden=hidden, manifest=manifest)


def _supervision_positions(table: Any, p: float, seed_index: int, f: str) -> tuple[str, list[int], str]:
    """Look up the positions for percent ``p`` and ``seed_index`` in a parsed ``COCO_supervision.txt``.

    Checks the table is an object with a percent key equal to ``p`` (compared as floats), that key
    holds an object with the seed index, and that entry is a list of integers. Returns the percent
    key as written in the file, the positions, and the record name (``'"1.0"/"0"'``) for errors.
    """
    if not isinstance(table, dict):
        raise MinedetError("supervision file must be a JSON object keyed by percent", file=f)
    key = _percent_key(table, p)
    if key is None:
        have = ", ".join(sorted(map(str, table), key=lambda s: (len(s), s)))
        raise MinedetError(f"no entry for percent {p!r}; the file has: {have or 'none'}", file=f)
    seeds = table[key]
    if not isinstance(seeds, dict) or str(seed_index) not in seeds:
        raise MinedetError(f"no seed index {seed_index} under percent {key!r}", file=f, record=f'"{key}"')
    pos = seeds[str(seed_index)]
    rec = f'"{key}"/"{seed_index}"'
    if not isinstance(pos, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in pos):
        raise MinedetError("positions must be a list of integers", file=f, record=rec)
    return key, pos, rec


def _percent_key(table: dict, p: float) -> str | None:
    """The first key of ``table`` whose float value equals ``p`` (keys that are not numbers are skipped)."""
    for kk in table:
        try:
            if float(kk) == p:
                return kk
        except (TypeError, ValueError):
            continue
    return None


def _check_positions(pos: list[int], m: int, p: float, f: str, rec: str) -> None:
    """Check supervision-file positions fit a list of ``m`` images: exactly ``int(p / 100 * m)`` of
    them (Unbiased Teacher's floor), no repeats, each in ``0..m-1``."""
    expected = int(p / 100.0 * m)
    if len(pos) != expected:
        raise MinedetError(
            f"{len(pos)} positions, but {p:g}% of this dataset's {m} images with boxes is {expected} "
            "(floor): the file was made for another dataset",
            file=f,
            record=rec,
        )
    if len(set(pos)) != len(pos):
        raise MinedetError("positions repeat", file=f, record=rec)
    bad = [x for x in pos if not 0 <= x < m]
    if bad:
        raise MinedetError(f"position {bad[0]} outside 0..{m - 1}", file=f, record=rec)


# --------------------------------------------------------------------------------------------------
# checks and synthetic data


def check_hidden_matches(kept: dict, hidden: dict, *, kept_file: str | None = None, hidden_file: str | None = None) -> None:
    """Check a split and its hidden truth belong together: same image ids, same categories (id and
    name), and no annotation id in both. Raises MinedetError naming the hidden file otherwise."""
    f = hidden_file
    _check_dict(kept, "split")
    _check_dict(hidden, "hidden truth")
    ki = {im.get("id") for im in kept["images"]}
    hi = {im.get("id") for im in hidden["images"]}
    if ki != hi:
        diff = sorted(map(repr, ki ^ hi))[:3]
        raise MinedetError(
            f"image ids differ from {kept_file or 'the split'} (e.g. {', '.join(diff)})", file=f
        )
    kc = {(c.get("id"), c.get("name")) for c in kept["categories"]}
    hc = {(c.get("id"), c.get("name")) for c in hidden["categories"]}
    if kc != hc:
        raise MinedetError(f"categories differ from {kept_file or 'the split'}", file=f)
    both = {a.get("id") for a in kept["annotations"]} & {a.get("id") for a in hidden["annotations"]}
    if both:
        raise MinedetError(
            f"annotation id={sorted(map(repr, both))[0]} is in both the split and the hidden truth", file=f
        )


def synthetic_coco(n_images: int, n_boxes: int, n_categories: int, seed: int) -> dict:
    """A random but valid COCO dict for benchmarks and tests.

    Images are 640x480 (``file_name`` ``"{id:012d}.jpg"``, ids 1..n_images), boxes are spread over
    images uniformly (so some images have none) and over categories with a Zipf-like imbalance
    (category ``c`` about ``1 / (c + 1)`` as frequent); each box ``[x, y, w, h]`` lies inside its image.
    Annotation ids are 1..n_boxes, category ids 1..n_categories.
    """
    if n_images < 1 or n_categories < 1 or n_boxes < 0:
        raise MinedetError("synthetic_coco needs n_images >= 1, n_categories >= 1, n_boxes >= 0")
    rng = np.random.default_rng(seed)
    W, H = 640, 480
    img = rng.integers(1, n_images + 1, size=n_boxes)
    p = 1.0 / np.arange(1, n_categories + 1)
    cat = rng.choice(np.arange(1, n_categories + 1), size=n_boxes, p=p / p.sum())
    w = np.round(rng.uniform(2, 200, n_boxes), 2)
    h = np.round(rng.uniform(2, 200, n_boxes), 2)
    x = np.round(rng.uniform(0, 1, n_boxes) * (W - w), 2)
    y = np.round(rng.uniform(0, 1, n_boxes) * (H - h), 2)
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": W, "height": H} for i in range(1, n_images + 1)]
    anns = [
        {"id": j + 1, "image_id": ii, "category_id": cc, "bbox": [xx, yy, ww, hh], "area": round(ww * hh, 4), "iscrowd": 0}
        for j, (ii, cc, xx, yy, ww, hh) in enumerate(
            zip(img.tolist(), cat.tolist(), x.tolist(), y.tolist(), w.tolist(), h.tolist())
        )
    ]
    cats = [{"id": c, "name": f"class{c}", "supercategory": "synthetic"} for c in range(1, n_categories + 1)]
    return {"info": {"description": f"minedet synthetic_coco seed={seed}"}, "images": images, "annotations": anns, "categories": cats}
