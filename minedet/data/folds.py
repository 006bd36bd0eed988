"""Held-out folds for mining: each image is mined by a model that never trained on it.

A model mining the images it trained on has been taught, step after step, that their unlabelled
objects are background; it learns to score them low (on the nuclei benchmark the mined recall stays
under 0.1 while the same model finds 0.8 of the nuclei of an image it never saw). The usual remedy in
label cleaning is out-of-fold prediction (cross-fitting): split the images into K folds, train K
models, each on the other K-1 folds, and let model ``f`` mine fold ``f``.

Rules:

* Tiles cut from one big image (``minedet data tile``: the image record's ``"tile"`` block) form one
  group and stay in one fold. Other images are their own group. With ``strips`` S > 1, each big image
  is cut into S strips along its longer side (a tile belongs to the strip holding its centre) and each
  strip is a group: a single orthomosaic can then fill K folds.
* No pixel of a held-out tile is in its model's training set: a fold's training set leaves out its
  own images and every tile of the same big image that overlaps one of them (with ``data tile
  --overlap``, the tiles along a seam between strips).
* Groups are shuffled with ``numpy.random.default_rng(seed)`` (after ordering by group key), then
  each goes to the fold holding the fewest images so far (lowest fold on ties): folds are as even as
  the groups allow, and the result depends on the seed and the content only.
* The folds file (:func:`folds_record`) lists each fold's image ids; :func:`read_folds` checks that
  it covers the dataset's images exactly once, so a stale file is refused, not silently misused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from minedet.data.coco import CocoData
from minedet.data.tiles import Tile, cut_box, tile_of
from minedet.errors import MinedetError

__all__ = ["assign_folds", "fold_training_set", "folds_record", "read_folds"]


def _window(rec: Mapping, file: str | None = None) -> tuple[tuple, Tile] | None:
    """(the big image's key, its :class:`~minedet.data.tiles.Tile`) of a tile record; None for another image. A
    malformed ``"tile"`` block is one MinedetError naming ``file`` and the record."""
    try:
        tile = tile_of(rec)
    except MinedetError as e:
        raise MinedetError(e.rule, file=file, record=e.record) from None
    return None if tile is None else ((str(rec["tile"].get("source_file", "")), tile.source), tile)


def _group_key(rec: Mapping, strips: int, file: str) -> tuple:
    placed = _window(rec, file)
    if placed is None:
        return ("image", "", int(rec["id"]), 0)
    (name, source), t = placed
    x0, y0, x1, y1 = t.window
    centre, length = ((x0 + x1) / 2, t.source_width) if t.source_width >= t.source_height else ((y0 + y1) / 2,
                                                                                               t.source_height)
    return ("source", name, source, min(strips - 1, int(strips * centre / length)))


def assign_folds(data: CocoData, k: int, seed: int = 0, strips: int = 1) -> list[list[int]]:
    """Image ids of each of ``k`` folds (see the module docstring); every image in exactly one fold.

    Raises:
        MinedetError: ``k`` < 2, ``strips`` < 1, or fewer groups (big-image strips / images) than folds.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise MinedetError(f"folds must be an integer >= 2, got {k!r}", file=str(data.path))
    if isinstance(strips, bool) or not isinstance(strips, int) or strips < 1:
        raise MinedetError(f"strips must be an integer >= 1, got {strips!r}", file=str(data.path))
    groups: dict[tuple, list[int]] = {}
    for rec in sorted(data.images, key=lambda r: int(r["id"])):
        groups.setdefault(_group_key(rec, strips, str(data.path)), []).append(int(rec["id"]))
    if len(groups) < k:
        if any(g[0] == "source" for g in groups):
            what = f"big images or strips of them (--strips {strips}: tiles of one strip stay in one fold)"
        else:
            what = "images"
        raise MinedetError(f"{k} folds need at least {k} {what}; the data has {len(groups)}", file=str(data.path))
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    folds: list[list[int]] = [[] for _ in range(k)]
    for i in order:
        smallest = min(range(k), key=lambda f: (len(folds[f]), f))
        folds[smallest].extend(groups[keys[int(i)]])
    return [sorted(f) for f in folds]


def fold_training_set(source: Mapping, held_out: Sequence[int]) -> dict:
    """The COCO dict without the held-out images, the tiles overlapping one of them in its big image, and their
    annotations (other keys as they are)."""
    out = set(int(i) for i in held_out)
    held = [w for w in (_window(im) for im in source.get("images", []) if int(im["id"]) in out) if w is not None]

    def overlaps(im: Mapping) -> bool:
        placed = _window(im)
        if placed is None:
            return False
        key, t = placed
        return any(k == key and cut_box(t.window, h.window) is not None for k, h in held)

    out |= {int(im["id"]) for im in source.get("images", []) if int(im["id"]) not in out and overlaps(im)}
    return {**source,
            "images": [im for im in source.get("images", []) if int(im["id"]) not in out],
            "annotations": [a for a in source.get("annotations", []) if int(a["image_id"]) not in out]}


def folds_record(data_file: str, folds: list[list[int]], seed: int, train_files: list[str],
                 strips: int = 1) -> dict[str, Any]:
    """The folds file's content: which images each fold holds out, and its training file."""
    return {"data": data_file, "k": len(folds), "seed": seed, "strips": strips,
            "folds": [{"fold": f, "train": train_files[f], "image_ids": ids} for f, ids in enumerate(folds)]}


def read_folds(record: Any, data: CocoData, *, file: str) -> dict[int, int]:
    """Image id -> fold from a folds file's content, checked against ``data``.

    Raises:
        MinedetError: not a folds file, an image in no fold or in two, an image id the data lacks.
    """
    folds = record.get("folds") if isinstance(record, Mapping) else None
    if not isinstance(folds, list) or len(folds) < 2:
        raise MinedetError("not a folds file ('minedet data folds'): needs a list 'folds' of at least 2", file=file)
    of: dict[int, int] = {}
    for f, entry in enumerate(folds):
        ids = entry.get("image_ids") if isinstance(entry, Mapping) else None
        if not isinstance(ids, list):
            raise MinedetError("each fold needs a list 'image_ids'", file=file, record=f"fold {f}")
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, int):
                raise MinedetError(f"image id {i!r} is not an integer", file=file, record=f"fold {f}")
            if i in of:
                raise MinedetError(f"image id {i} is in folds {of[i]} and {f}", file=file, record=f"fold {f}")
            of[i] = f
    have = {int(im["id"]) for im in data.images}
    missing, extra = sorted(have - of.keys()), sorted(of.keys() - have)
    if missing:
        raise MinedetError(f"image id {missing[0]} of {data.path} is in no fold ({len(missing)} such images): "
                           "the folds were made for other data", file=file)
    if extra:
        raise MinedetError(f"image id {extra[0]} is not in {data.path} ({len(extra)} such ids): "
                           "the folds were made for other data", file=file)
    return of
