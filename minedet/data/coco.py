"""COCO JSON: the only place minedet reads or writes detection annotation files.

Format (https://cocodataset.org/#format-data), the keys minedet needs::

    {"images":      [{"id": int, "file_name": str, "width": int, "height": int, ...}, ...],
     "annotations": [{"id": int, "image_id": int, "category_id": int,
                      "bbox": [x, y, w, h], "area": float, "iscrowd": 0|1, ...}, ...],
     "categories":  [{"id": int, "name": str, ...}, ...],
     ...any other top-level key ("info", "licenses") is kept as is}

``bbox`` is ``[x, y, w, h]`` in image pixels: ``(x, y)`` is the top-left corner in continuous
coordinates (origin at the top-left corner of the top-left pixel, x right, y down), ``w, h >= 0``.

Validation (:func:`validate_coco`) turns every problem into one :class:`~minedet.errors.MinedetError`
naming the file, the record (``"image id=3"``, ``"annotation id=17"``, ``"categories[2]"``) and the
rule broken. Degenerate-but-common boxes follow one policy:

* a box partly outside its image is **clipped** to the image (counted in ``n_clipped``);
* a box of zero area (``w == 0`` or ``h == 0``) is **dropped** (counted in ``n_dropped``);
* ``strict=True`` turns both into errors;
* a box of positive area lying entirely outside its image (touching the border counts as outside)
  is always an error: no clipping could make it mean anything.

Review provenance (written by ``minedet data merge-reviewed``, :mod:`minedet.review`): an
annotation may carry ``"provenance"``, one of :data:`PROVENANCE` (``labelled``, ``mined-accepted``,
``mined-corrected``, ``added``); boxes a reviewer rejected are **not** annotations but records of
an optional top-level list ``"rejected"`` (same keys as an annotation: ``id`` unique in that list,
``image_id``, ``category_id``, ``bbox``), known non-objects that no loader counts as objects
(:attr:`CocoData.rejected_by_image`; pycocotools ignores the key).

Nothing here mutates its input: normalised records are copies.
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from minedet.errors import MinedetError
from minedet.io import atomic_open

__all__ = ["CocoData", "PROVENANCE", "load_coco", "validate_coco", "save_coco", "coco_dict", "read_json_file"]

PROVENANCE = ("labelled", "mined-accepted", "mined-corrected", "added")

_REQUIRED_TOP = ("images", "annotations", "categories")
_IMAGE_KEYS = ("id", "file_name", "width", "height")
_ANN_KEYS = ("id", "image_id", "category_id", "bbox")
_CAT_KEYS = ("id", "name")
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class CocoData:
    """A validated, normalised COCO detection dataset.

    Attributes:
        path: the JSON file it came from (or the name given to :func:`validate_coco`).
        raw: the validated, normalised JSON dict: same top-level keys as the file (``"info"`` and
            other unknown keys kept), ``"images"`` and ``"categories"`` as copies in file order,
            ``"annotations"`` normalised (see :func:`validate_coco`) in file order, dropped boxes removed.
        categories: category records sorted by id.
        images: image records in file order.
        anns_by_image: image id -> its normalised annotations in file order; every image is a key
            (an image without boxes maps to ``[]``).
        n_clipped: boxes clipped to their image during normalisation.
        n_dropped: zero-area boxes dropped during normalisation.
        emptied_image_ids: images that had at least one non-crowd box in the file but none after
            dropping zero-area boxes (they matter to detectron2-style "filter empty images" rules).
        rejected_by_image: image id -> the records of the top-level ``"rejected"`` list (boxes a
            reviewer rejected: known non-objects, never annotations); only images that have some.
    """

    path: Path
    raw: dict
    categories: list[dict]
    images: list[dict]
    anns_by_image: dict[int, list[dict]]
    n_clipped: int = 0
    n_dropped: int = 0
    emptied_image_ids: frozenset[int] = field(default_factory=frozenset)
    rejected_by_image: dict[int, list[dict]] = field(default_factory=dict)

    @property
    def cat_ids(self) -> list[int]:
        """Category ids in ascending order; label ``i`` is ``cat_ids[i]``."""
        return [c["id"] for c in self.categories]

    @property
    def class_names(self) -> list[str]:
        """Category names in label order (ascending category id)."""
        return [c["name"] for c in self.categories]

    @property
    def num_classes(self) -> int:
        return len(self.categories)

    @property
    def annotations(self) -> list[dict]:
        """All normalised annotations in file order."""
        return self.raw["annotations"]

    def label_of(self, cat_id: int) -> int:
        """Contiguous label ``0..K-1`` of a category id (labels follow ascending category id)."""
        try:
            return self._label_map()[cat_id]
        except (KeyError, TypeError):
            raise MinedetError(f"unknown category id {cat_id!r}", file=str(self.path)) from None

    def cat_id_of(self, label: int) -> int:
        """Category id of a contiguous label ``0..K-1``."""
        ids = self.cat_ids
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(ids):
            raise MinedetError(f"label {label!r} outside 0..{len(ids) - 1}", file=str(self.path))
        return ids[label]

    def image(self, image_id: int) -> dict:
        """The image record with this id."""
        try:
            return self._image_map()[image_id]
        except (KeyError, TypeError):
            raise MinedetError(f"unknown image id {image_id!r}", file=str(self.path)) from None

    # lazily built lookup tables (the dataclass is frozen, so cache through object.__setattr__)
    def _label_map(self) -> dict[int, int]:
        m = self.__dict__.get("_labels")
        if m is None:
            m = {cid: i for i, cid in enumerate(self.cat_ids)}
            object.__setattr__(self, "_labels", m)
        return m

    def _image_map(self) -> dict[int, dict]:
        m = self.__dict__.get("_images")
        if m is None:
            m = {im["id"]: im for im in self.images}
            object.__setattr__(self, "_images", m)
        return m


# --------------------------------------------------------------------------------------------------
# reading


def read_json_file(path: str | os.PathLike) -> Any:
    """Read a JSON file; every failure (missing, not UTF-8, not JSON) is one MinedetError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MinedetError("file not found", file=str(path)) from None
    except IsADirectoryError:
        raise MinedetError("is a directory, expected a JSON file", file=str(path)) from None
    except OSError as e:
        raise MinedetError(f"cannot read file ({e.strerror or e})", file=str(path)) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise MinedetError(f"not UTF-8 text (byte {e.start})", file=str(path)) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise MinedetError(f"not valid JSON: {e.msg}", file=str(path), record=f"line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise MinedetError("not valid JSON: nested too deeply", file=str(path)) from None


def load_coco(
    path: str | os.PathLike,
    *,
    strict: bool = False,
    image_root: str | os.PathLike | None = None,
    check_images: bool = False,
) -> CocoData:
    """Read and validate a COCO detection JSON file.

    Args:
        path: the JSON file.
        strict: make clipped and zero-area boxes errors instead of fixing them.
        image_root: folder the ``file_name`` entries are relative to (needed for ``check_images``).
        check_images: open every image file, check it decodes (PIL ``verify``) and that its size
            matches the record's ``width`` x ``height``.

    Returns:
        the :class:`CocoData` (see :func:`validate_coco` for the normalisation).

    Raises:
        MinedetError: one line naming the file, the record and the rule broken.
    """
    d = read_json_file(path)
    return validate_coco(d, file=str(path), strict=strict, image_root=image_root, check_images=check_images)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _rec(kind: str, index: int, rec: Any) -> str:
    """Name a record: ``"image id=3"`` when it has a usable id, else ``"images[5]"``."""
    if isinstance(rec, dict):
        rid = rec.get("id")
        if _is_int(rid):
            return f"{kind} id={rid}"
    return f"{kind}s[{index}]" if kind != "category" else f"categories[{index}]"


def _check_file_name(name: Any, file: str, rec: str) -> None:
    if not isinstance(name, str) or not name:
        raise MinedetError("file_name must be a non-empty string", file=file, record=rec)
    if "\x00" in name:
        raise MinedetError("file_name contains a NUL character", file=file, record=rec)
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise MinedetError(f"file_name {name!r} is absolute; it must be relative to the image root", file=file, record=rec)
    norm = posixpath.normpath(posix)
    if norm == ".." or norm.startswith("../") or norm == ".":
        raise MinedetError(f"file_name {name!r} escapes the image root", file=file, record=rec)


def _check_image_file(img: dict, root: Path, file: str, rec: str) -> None:
    from minedet.data.images import read_size

    p = root / img["file_name"].replace("\\", "/")
    if not p.is_file():
        raise MinedetError(f"image file {str(p)!r} not found", file=file, record=rec)
    size = read_size(p, root=root, file=file, record=rec, decode=True)  # every pixel: a truncated file fails here
    if size != (img["width"], img["height"]):
        raise MinedetError(
            f"image file {str(p)!r} is {size[0]}x{size[1]} but the record says {img['width']}x{img['height']}",
            file=file,
            record=rec,
        )


def validate_coco(
    d: Any,
    *,
    file: str | os.PathLike,
    strict: bool = False,
    image_root: str | os.PathLike | None = None,
    check_images: bool = False,
) -> CocoData:
    """Validate and normalise a parsed COCO detection dict (never mutates ``d``).

    Rules (each broken rule is a MinedetError naming ``file`` and the record): the top level is an
    object with list-valued ``images``, ``annotations``, ``categories``; every record is an object
    with its required keys (image: id, file_name, width, height; annotation: id, image_id,
    category_id, bbox; category: id, name); ids are integers, unique per list; category names are
    non-empty unique strings; there is at least one category; image width/height are positive
    integers; ``file_name`` is relative and stays inside the image root; annotations name a known
    image and category; ``bbox`` is 4 finite numbers with ``w, h >= 0``; ``area`` (if present) is a
    finite number >= 0; ``iscrowd`` (if present) is 0 or 1.

    Normalisation of each kept annotation (a copy): ``bbox`` as 4 floats, clipped to
    ``[0, width] x [0, height]``; ``area`` kept if given and the box was not clipped, otherwise
    ``w * h`` of the normalised box; ``iscrowd`` defaults to 0. Zero-area boxes are dropped.

    Args:
        d: the parsed JSON.
        file: the file name used in error messages (and as :attr:`CocoData.path`).
        strict: clipped or zero-area boxes are errors.
        image_root: folder ``file_name`` is relative to; needed when ``check_images``.
        check_images: check every image file exists, decodes, and has the recorded size.
    """
    file = str(file)
    root = _check_top_level(d, file, image_root, check_images)
    cats, cat_ids = _validate_categories(d["categories"], file)
    images, sizes = _validate_images(d["images"], file)
    if check_images:
        for i, im in enumerate(images):
            _check_image_file(im, root, file, _rec("image", i, im))
    anns = _validate_annotations(d["annotations"], file, sizes, cat_ids, strict)
    _check_unlabelled_images(images, anns.kept, file)
    rejected = _validate_rejected(d.get("rejected"), file, sizes, cat_ids)
    raw = {k: v for k, v in d.items()}
    raw["images"] = images
    raw["annotations"] = anns.kept
    raw["categories"] = cats
    return CocoData(
        path=Path(file),
        raw=raw,
        categories=sorted(cats, key=lambda c: c["id"]),
        images=images,
        anns_by_image=anns.by_image(images),
        n_clipped=anns.n_clipped,
        n_dropped=anns.n_dropped,
        emptied_image_ids=anns.emptied(),
        rejected_by_image=rejected,
    )


def _check_top_level(
    d: Any, file: str, image_root: str | os.PathLike | None, check_images: bool
) -> Path | None:
    """Check the top level is an object with the three lists, and that ``check_images`` has an
    existing image folder. Returns the image folder as a Path (None when not given)."""
    if not isinstance(d, dict):
        raise MinedetError(f"top level must be a JSON object, got {type(d).__name__}", file=file)
    for key in _REQUIRED_TOP:
        if key not in d:
            raise MinedetError(f'missing top-level key "{key}"', file=file)
        if not isinstance(d[key], list):
            raise MinedetError(f'"{key}" must be a list, got {type(d[key]).__name__}', file=file)
    if check_images and image_root is None:
        raise MinedetError("checking image files needs the image folder (image_root / --images)", file=file)
    root = Path(image_root) if image_root is not None else None
    if check_images and not root.is_dir():
        raise MinedetError("image folder not found", file=str(root))
    return root


def _validate_categories(records: list, file: str) -> tuple[list[dict], set[int]]:
    """Check the category records (objects with an integer ``id`` unique in the list and a non-empty
    ``name`` unique in the list; at least one). Returns their copies in file order and their ids."""
    cats: list[dict] = []
    cat_ids: set[int] = set()
    names: set[str] = set()
    for i, c in enumerate(records):
        rec = _rec("category", i, c)
        if not isinstance(c, dict):
            raise MinedetError("category must be an object", file=file, record=f"categories[{i}]")
        for k in _CAT_KEYS:
            if k not in c:
                raise MinedetError(f'missing key "{k}"', file=file, record=f"categories[{i}]")
        if not _is_int(c["id"]):
            raise MinedetError("category id must be an integer", file=file, record=f"categories[{i}]")
        if c["id"] in cat_ids:
            raise MinedetError("duplicate category id", file=file, record=rec)
        if not isinstance(c["name"], str) or not c["name"]:
            raise MinedetError("category name must be a non-empty string", file=file, record=rec)
        if c["name"] in names:
            raise MinedetError(f"duplicate category name {c['name']!r}", file=file, record=rec)
        cat_ids.add(c["id"])
        names.add(c["name"])
        cats.append(dict(c))
    if not cats:
        raise MinedetError('"categories" is empty: at least one category is needed', file=file)
    return cats, cat_ids


# an image record's optional "labels" flag: how completely its boxes were labelled (minedet.data.mixed)
LABEL_KINDS = ("complete", "sparse", "none")


def _check_unlabelled_images(images: list[dict], anns: list[dict], file: str) -> None:
    """An image flagged ``"labels": "none"`` has no box."""
    none = {im["id"]: i for i, im in enumerate(images) if im.get("labels") == "none"}
    for a in anns:
        if a["image_id"] in none:
            i = none[a["image_id"]]
            raise MinedetError(f'image is flagged "labels": "none" but annotation id={a["id"]} boxes it',
                               file=file, record=_rec("image", i, images[i]))


def _validate_images(records: list, file: str) -> tuple[list[dict], dict[int, tuple[int, int]]]:
    """Check the image records (objects with the image keys, an integer ``id`` unique in the list,
    positive integer width/height, a relative ``file_name`` inside the image root). Returns their
    copies in file order and image id -> (width, height)."""
    images: list[dict] = []
    sizes: dict[int, tuple[int, int]] = {}
    for i, im in enumerate(records):
        rec = _rec("image", i, im)
        if not isinstance(im, dict):
            raise MinedetError("image must be an object", file=file, record=f"images[{i}]")
        for k in _IMAGE_KEYS:
            if k not in im:
                raise MinedetError(f'missing key "{k}"', file=file, record=rec)
        if not _is_int(im["id"]):
            raise MinedetError("image id must be an integer", file=file, record=f"images[{i}]")
        if im["id"] in sizes:
            raise MinedetError("duplicate image id", file=file, record=rec)
        w, h = im["width"], im["height"]
        if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
            raise MinedetError(f"width/height must be positive integers, got {w!r}x{h!r}", file=file, record=rec)
        _check_file_name(im["file_name"], file, rec)
        if "labels" in im and im["labels"] not in LABEL_KINDS:
            raise MinedetError(f'"labels" must be one of {", ".join(LABEL_KINDS)}, got {im["labels"]!r}', file=file, record=rec)
        sizes[im["id"]] = (w, h)
        images.append(dict(im))
    return images, sizes


@dataclass
class _Annotations:
    """What :func:`_validate_annotations` returns: the kept, normalised annotations (file order),
    the clipped / dropped counts and the images that had a non-crowd box in the file."""

    kept: list[dict] = field(default_factory=list)
    n_clipped: int = 0
    n_dropped: int = 0
    had_box: set[int] = field(default_factory=set)

    def by_image(self, images: list[dict]) -> dict[int, list[dict]]:
        """Image id -> its kept annotations in file order; every image is a key."""
        out: dict[int, list[dict]] = {im["id"]: [] for im in images}
        for a in self.kept:
            out[a["image_id"]].append(a)
        return out

    def emptied(self) -> frozenset[int]:
        """Images that had a non-crowd box in the file and keep none."""
        still = {a["image_id"] for a in self.kept if not a["iscrowd"]}
        return frozenset(iid for iid in self.had_box if iid not in still)


def _validate_annotations(
    records: list, file: str, sizes: dict[int, tuple[int, int]], cat_ids: set[int], strict: bool
) -> _Annotations:
    """Check every annotation record (:func:`_check_annotation`) and normalise its box
    (:func:`_normalise_box`), one record after the other, so the first broken rule in file order is
    the one reported."""
    out = _Annotations()
    ann_ids: set[int] = set()
    for i, a in enumerate(records):
        rec = _rec("annotation", i, a)
        x, y, bw, bh, crowd, area = _check_annotation(a, i, rec, file, sizes, cat_ids, ann_ids)
        iid = a["image_id"]
        if not crowd:
            out.had_box.add(iid)
        box = _normalise_box(x, y, bw, bh, sizes[iid], strict, file, rec)
        if box is None:
            out.n_dropped += 1
            continue
        x, y, bw, bh, clipped = box
        out.n_clipped += clipped
        if bw <= 0 or bh <= 0:  # float underflow after clipping
            out.n_dropped += 1
            continue
        ann = dict(a)
        ann["bbox"] = [x, y, bw, bh]
        ann["area"] = float(area) if (area is not None and not clipped) else bw * bh
        ann["iscrowd"] = int(crowd)
        out.kept.append(ann)
    return out


def _check_annotation(
    a: Any,
    i: int,
    rec: str,
    file: str,
    sizes: dict[int, tuple[int, int]],
    cat_ids: set[int],
    ann_ids: set[int],
) -> tuple[float, float, float, float, Any, Any]:
    """Check one annotation record: an object with the annotation keys, an integer ``id`` not in
    ``ann_ids`` (added to it), a known ``image_id`` and ``category_id``, a valid ``bbox``
    (:func:`_check_bbox`), ``iscrowd``, ``area`` and ``provenance``. Returns the bbox as floats
    ``x, y, w, h`` and the raw ``iscrowd`` (default 0) and ``area`` (None if absent)."""
    if not isinstance(a, dict):
        raise MinedetError("annotation must be an object", file=file, record=f"annotations[{i}]")
    for k in _ANN_KEYS:
        if k not in a:
            raise MinedetError(f'missing key "{k}"', file=file, record=rec)
    aid = a["id"]
    if not _is_int(aid):
        raise MinedetError("annotation id must be an integer", file=file, record=f"annotations[{i}]")
    if aid in ann_ids:
        raise MinedetError("duplicate annotation id", file=file, record=rec)
    ann_ids.add(aid)
    iid = a["image_id"]
    if not _is_int(iid) or iid not in sizes:
        raise MinedetError(f"image_id {iid!r} is not an image in this file", file=file, record=rec)
    if not _is_int(a["category_id"]) or a["category_id"] not in cat_ids:
        raise MinedetError(f"category_id {a['category_id']!r} is not a category in this file", file=file, record=rec)
    x, y, bw, bh = _check_bbox(a["bbox"], file, rec)
    crowd = a.get("iscrowd", 0)
    if not (_is_int(crowd) or isinstance(crowd, bool)) or crowd not in (0, 1):
        raise MinedetError(f"iscrowd must be 0 or 1, got {crowd!r}", file=file, record=rec)
    area = a.get("area")
    if area is not None:
        _check_area(area, file, rec)
    _check_provenance(a.get("provenance"), file, rec)
    return x, y, bw, bh, crowd, area


def _check_bbox(bbox: Any, file: str, rec: str) -> tuple[float, float, float, float]:
    """Check ``bbox`` is a list of 4 finite numbers ``[x, y, w, h]`` with ``w, h >= 0``; returns them as floats."""
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_num(v) for v in bbox)):
        raise MinedetError("bbox must be a list of 4 numbers [x, y, w, h]", file=file, record=rec)
    try:
        x, y, bw, bh = (float(v) for v in bbox)
    except OverflowError:  # an integer too large for a float
        raise MinedetError("bbox numbers must be finite", file=file, record=rec) from None
    if not all(math.isfinite(v) for v in (x, y, bw, bh)):
        raise MinedetError("bbox numbers must be finite", file=file, record=rec)
    if bw < 0 or bh < 0:
        raise MinedetError(f"bbox has negative width/height ({bw:g}x{bh:g})", file=file, record=rec)
    return x, y, bw, bh


def _check_area(area: Any, file: str, rec: str) -> None:
    """Check a given ``area`` is a finite number >= 0."""
    try:
        ok = _is_num(area) and math.isfinite(float(area)) and area >= 0
    except OverflowError:
        ok = False
    if not ok:
        raise MinedetError(f"area must be a finite number >= 0, got {area!r}", file=file, record=rec)


def _check_provenance(prov: Any, file: str, rec: str) -> None:
    """Check a given ``provenance`` is one of :data:`PROVENANCE` (a rejected box is not an annotation)."""
    if prov is not None and prov not in PROVENANCE:
        hint = ' (rejected boxes belong in the top-level "rejected" list)' if prov == "rejected" else ""
        raise MinedetError(f"provenance must be one of {', '.join(PROVENANCE)}, got {prov!r}{hint}", file=file, record=rec)


def _normalise_box(
    x: float, y: float, bw: float, bh: float, size: tuple[int, int], strict: bool, file: str, rec: str
) -> tuple[float, float, float, float, bool] | None:
    """Apply the box policy (module docstring) to ``[x, y, w, h]`` in a ``size = (W, H)`` image.

    Returns None for a zero-area box (dropped; an error when ``strict``), else the box clipped to
    ``[0, W] x [0, H]`` as ``x, y, w, h`` and whether it was clipped (an error when ``strict``).
    A box lying entirely outside the image is always an error. The clipped box may have
    underflowed to zero width or height; the caller drops it.
    """
    W, H = size
    if bw == 0 or bh == 0:
        if strict:
            raise MinedetError(f"bbox has zero area ({bw:g}x{bh:g}) (strict mode)", file=file, record=rec)
        return None
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + bw, float(W)), min(y + bh, float(H))
    if x2 <= x1 or y2 <= y1:
        raise MinedetError(
            f"bbox [{x:g}, {y:g}, {bw:g}, {bh:g}] lies entirely outside its {W}x{H} image", file=file, record=rec
        )
    clipped = (x1, y1, x2, y2) != (x, y, x + bw, y + bh)
    if not clipped:
        return x, y, bw, bh, False
    if strict:
        raise MinedetError(
            f"bbox [{x:g}, {y:g}, {bw:g}, {bh:g}] extends outside its {W}x{H} image (strict mode)",
            file=file,
            record=rec,
        )
    return x1, y1, x2 - x1, y2 - y1, True


def _validate_rejected(rej: Any, file: str, sizes: dict[int, tuple[int, int]], cat_ids: set[int]) -> dict[int, list[dict]]:
    """Check the optional top-level ``"rejected"`` list (see the module docstring); image id -> copies."""
    if rej is None:
        return {}
    if not isinstance(rej, list):
        raise MinedetError(f'"rejected" must be a list, got {type(rej).__name__}', file=file)
    out: dict[int, list[dict]] = {}
    ids: set[int] = set()
    for i, r in enumerate(rej):
        rec = f"rejected[{i}]"
        if not isinstance(r, dict):
            raise MinedetError("a rejected box must be an object", file=file, record=rec)
        for k in _ANN_KEYS:
            if k not in r:
                raise MinedetError(f'missing key "{k}"', file=file, record=rec)
        if not _is_int(r["id"]) or r["id"] in ids:
            raise MinedetError("id must be an integer, unique in the rejected list", file=file, record=rec)
        ids.add(r["id"])
        if not _is_int(r["image_id"]) or r["image_id"] not in sizes:
            raise MinedetError(f"image_id {r['image_id']!r} is not an image in this file", file=file, record=rec)
        if not _is_int(r["category_id"]) or r["category_id"] not in cat_ids:
            raise MinedetError(f"category_id {r['category_id']!r} is not a category in this file", file=file, record=rec)
        b = r["bbox"]
        try:
            ok = (isinstance(b, list) and len(b) == 4 and all(_is_num(v) for v in b)
                  and all(math.isfinite(float(v)) for v in b) and b[2] >= 0 and b[3] >= 0)
        except OverflowError:  # an integer too large for a float
            ok = False
        if not ok:
            raise MinedetError("bbox must be 4 finite numbers [x, y, w, h] with w, h >= 0", file=file, record=rec)
        out.setdefault(r["image_id"], []).append(dict(r))
    return out


# --------------------------------------------------------------------------------------------------
# writing


def coco_dict(
    images: Iterable[Mapping], annotations: Iterable[Mapping], categories: Iterable[Mapping], **extra: Any
) -> dict:
    """Assemble a COCO dict: ``extra`` top-level keys (e.g. ``info``) first, then the three lists (copied)."""
    out: dict[str, Any] = dict(extra)
    out["images"] = [dict(x) for x in images]
    out["annotations"] = [dict(x) for x in annotations]
    out["categories"] = [dict(x) for x in categories]
    return out


def save_coco(path: str | os.PathLike, d: dict, *, validate: bool = True) -> None:
    """Write a COCO dict as compact UTF-8 JSON, atomically (temporary name, then rename).

    With ``validate`` (the default) the dict is first checked by :func:`validate_coco` (non-strict),
    so a file minedet writes always loads back; the dict is written as given, not normalised.
    """
    if validate:
        validate_coco(d, file=str(path))
    try:
        with atomic_open(path, "w", encoding="utf-8") as f:
            json.dump(d, f, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            f.write("\n")
    except (TypeError, ValueError) as e:  # not JSON-serialisable / NaN: nothing was written
        raise MinedetError(f"cannot write as JSON ({e})", file=str(path)) from None
