"""Mixed supervision: one COCO file whose images say how completely they were labelled.

Each image record may carry ``"labels"``:

* ``"complete"`` (the default when the key is missing): every object is boxed;
* ``"sparse"``: the boxes present are true, but some objects were not boxed;
* ``"none"``: never labelled (no annotation may name it; ``minedet data check`` enforces this).

:func:`split_mixed` writes such a file from a completely labelled dataset (seeded; the boxes it
erases become the hidden truth, for measurement only); :func:`select_kinds` cuts a file into the
images of some kinds, which is how a training run gets its ``labelled`` / ``sparse`` /
``unlabelled`` streams from one file.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable

import numpy as np

from minedet import __version__
from minedet.data.coco import LABEL_KINDS, CocoData, validate_coco
from minedet.data.splits import _check_dict, _check_percent, _check_seed, _image_ids, _subset, canonical_sha256, round_half_up, sparsify
from minedet.errors import MinedetError

__all__ = ["LABEL_KINDS", "MixedSplit", "image_kinds", "is_mixed", "kind_counts", "select_kinds", "select_images",
           "split_mixed"]


def image_kinds(data: CocoData, missing: str = "complete") -> dict[int, str]:
    """image id -> ``complete`` | ``sparse`` | ``none`` (an image without a flag: ``missing``)."""
    return {int(im["id"]): im.get("labels", missing) for im in data.images}


def is_mixed(data: CocoData) -> bool:
    """True when any image record carries a ``"labels"`` flag."""
    return any("labels" in im for im in data.images)


def kind_counts(data: CocoData, missing: str = "complete") -> dict[str, dict[str, int]]:
    """Per kind: images and boxes (what ``minedet data stats`` reports as the mix; ``missing``: the kind of an image
    without a flag)."""
    out = {k: {"images": 0, "boxes": 0} for k in LABEL_KINDS}
    for i, kind in image_kinds(data, missing).items():
        out[kind]["images"] += 1
        out[kind]["boxes"] += len(data.anns_by_image.get(i, []))
    return out


def select_images(data: CocoData, ids: Iterable[int], *, what: str) -> CocoData:
    """The images ``ids`` of ``data`` (file order) with their annotations, as a new :class:`CocoData`
    named ``"FILE [what]"`` in messages."""
    keep = set(int(i) for i in ids)
    raw = data.raw
    sub = _subset(raw, [im for im in raw["images"] if im["id"] in keep],
                  [a for a in raw["annotations"] if a["image_id"] in keep])
    if "rejected" in raw:
        sub["rejected"] = [r for r in raw["rejected"] if r["image_id"] in keep]
    return validate_coco(sub, file=f"{data.path} [{what}]")


def select_kinds(data: CocoData, kinds: Iterable[str], missing: str = "complete") -> CocoData:
    """The images of ``data`` whose flag is one of ``kinds`` (``missing``: the kind of an image without a flag)."""
    kinds = tuple(kinds)
    ids = [i for i, k in image_kinds(data, missing).items() if k in kinds]
    return select_images(data, ids, what="+".join(kinds) + " images")


@dataclass
class MixedSplit:
    """``mixed``: every image, flagged, with the boxes kept; ``hidden``: the same images with the
    boxes erased (the sparse images' erased boxes, every box of the unlabelled images)."""

    mixed: dict
    hidden: dict
    manifest: dict


def split_mixed(d: dict, percent: float, sparse: float, mode: str, seed: int) -> MixedSplit:
    """Flag a completely labelled COCO dict's images ``complete`` / ``sparse`` / ``none``.

    The N image ids sorted ascending are shuffled by ``numpy.random.default_rng(seed).permutation``;
    the first ``k_c = round_half_up(percent / 100 * N)`` are complete, the next
    ``k_s = round_half_up(sparse / 100 * N)`` sparse (their boxes erased by :func:`sparsify` with
    ``mode`` and ``seed``), the rest unlabelled (all boxes erased). Images without boxes take part
    in the draw like any other.

    Raises:
        MinedetError: percentages outside [0, 100] or summing past 100, no image left complete or sparse.
    """
    for name, p in (("percent", percent), ("sparse", sparse)):
        if p != 0:
            _check_percent(p)
        elif isinstance(p, bool) or not isinstance(p, (int, float)):
            raise MinedetError(f"{name} must be a number in [0, 100], got {p!r}")
    if percent + sparse > 100:
        raise MinedetError(f"complete {percent:g}% + sparse {sparse:g}% of the images is more than 100%")
    _check_seed(seed)
    _check_dict(d)
    ids = np.sort(_image_ids(d))
    n = len(ids)
    k_c = round_half_up(Fraction(repr(float(percent))) * n / 100)
    k_s = round_half_up(Fraction(repr(float(sparse))) * n / 100)
    if k_c + k_s == 0:
        raise MinedetError(f"{percent:g}% complete and {sparse:g}% sparse of {n} images leaves no labelled image")
    order = np.random.default_rng(seed).permutation(ids)
    complete, sparse_ids = set(order[:k_c].tolist()), set(order[k_c:k_c + k_s].tolist())
    kind = {int(i): "complete" if i in complete else "sparse" if i in sparse_ids else "none" for i in ids.tolist()}
    images = [{**im, "labels": kind[int(im["id"])]} for im in d["images"]]
    by_kind = {k: [a for a in d["annotations"] if kind[a["image_id"]] == k] for k in LABEL_KINDS}
    sp = sparsify(_subset(d, [im for im in d["images"] if kind[int(im["id"])] == "sparse"], by_kind["sparse"]), mode, seed)
    kept_ids = {a["id"] for a in sp.kept["annotations"]}
    mixed_anns = [a for a in d["annotations"] if kind[a["image_id"]] == "complete" or a["id"] in kept_ids]
    hidden_anns = [a for a in d["annotations"] if kind[a["image_id"]] == "none"
                   or (kind[a["image_id"]] == "sparse" and a["id"] not in kept_ids)]
    manifest = {
        "minedet_version": __version__, "kind": "mixed", "percent": float(percent), "sparse": float(sparse),
        "mode": mode, "seed": int(seed), "source_sha256": canonical_sha256(d),
        "draw": "numpy.random.default_rng(seed).permutation(sorted image ids): complete, then sparse, then none",
        "rounding": "k = round half up(percent / 100 * N)",
        "images": {k: sum(1 for v in kind.values() if v == k) for k in LABEL_KINDS},
        "annotations": {"kept": len(mixed_anns), "hidden": len(hidden_anns)},
    }
    plain = [{k: v for k, v in im.items() if k != "labels"} for im in d["images"]]  # the truth is complete
    return MixedSplit(_subset(d, images, mixed_anns), _subset(d, plain, hidden_anns), manifest)
