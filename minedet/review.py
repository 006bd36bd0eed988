"""The review round trip: mined boxes out to Label Studio / CVAT as pre-annotations, the reviewer's
export back in, merged into a completed COCO dataset that records where every box came from.

Frames and formats. Every box here is ``(x1, y1, x2, y2)`` in **continuous pixels of the image file**
(origin at the top-left corner of the top-left pixel), the frame of a COCO record's ``bbox =
[x, y, w, h]`` (``x1 = x``, ``x2 = x + w``). Label Studio stores a rectangle as ``x, y, width,
height`` in **percent** of the image's width / height (``x = 100 * x1 / W``) with a ``rotation`` in
degrees about its top-left corner, clockwise; CVAT stores ``xtl, ytl, xbr, ybr`` in pixels.

What goes out (:func:`labelstudio_tasks`, :func:`labelstudio_config`, :func:`review_cvat_xml`):
the images of a ``minedet mine`` output that gained mined boxes (annotations with ``"mined":
true``), with their labelled boxes and their mined boxes. In Label Studio each task carries one
prediction (``model_version``, its mean score) whose regions have ids ``"l<annotation id>"``
(labelled) and ``"m<annotation id>"`` (mined, with its ``score``); ``data`` carries
``minedet_image_id`` and ``file_name``. In CVAT mined boxes have ``source="auto"``, labelled ones
``source="manual"``.

What comes back (:func:`read_reviewed`): per image of the original, the boxes the reviewer kept,
moved or drew (:class:`ReviewedBox`), with the region id they were offered under when the tool
kept it (Label Studio does). An image absent from the export was not reviewed.

How it merges (:func:`merge_reviewed`), per reviewed image:

1. a reviewed box whose region id names an offered box is that box;
2. the remaining reviewed boxes are matched to remaining offered boxes of the same class that
   they equal within ``tolerance`` px on every side (labelled boxes first, then mined);
3. then greedily by IoU (>= ``iou_min``, highest first, any class) to the remaining offered boxes.

A mined box matched to an unchanged box (every side within ``tolerance``, same class) is
``"mined-accepted"`` (kept with its mined coordinates), matched to a changed box
``"mined-corrected"`` (the reviewer's box and class; ``"mined_bbox"`` / ``"mined_category_id"``
keep what was offered), unmatched it is **rejected**. A reviewed box matched to nothing is
``"added"``. Labelled boxes are always kept as they were (``"labelled"``); a labelled box the
reviewer moved or deleted is only counted. Accepted and corrected boxes lose ``"mined"`` and
``"score"`` (they are labels now, not pseudo-labels) and keep the score as ``"mined_score"``.

Rejected boxes are **known non-objects**, recorded in the top-level list ``"rejected"`` of the
output (never in ``"annotations"``): each record has the annotation keys (``id``: the mined
box's id, ``image_id``, ``category_id``, ``bbox``, ``area``) plus ``"score"`` and
``"provenance": "rejected"``. :func:`minedet.data.coco.validate_coco` checks that list and exposes it
as ``CocoData.rejected_by_image``; pycocotools and every loader that reads ``"annotations"`` ignore
it, so a rejected box is never counted as an object. Rejected lists of earlier rounds are kept.
"""

from __future__ import annotations

import math
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import quote, unquote
from xml.sax.saxutils import quoteattr

from minedet.data.coco import CocoData
from minedet.errors import MinedetError

__all__ = [
    "REVIEW_FORMATS",
    "MergeResult",
    "ReviewedBox",
    "images_to_review",
    "labelstudio_config",
    "labelstudio_tasks",
    "merge_reviewed",
    "read_reviewed",
    "review_cvat_xml",
]

REVIEW_FORMATS = ("labelstudio", "cvat", "coco")
DEFAULT_IMAGE_URL = "/data/local-files/?d="  # Label Studio's local-files storage; "?d=" + path
_ROUND = 2  # px decimals of reviewed boxes in the output (as mined boxes)

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ReviewedBox:
    """One box of a reviewer's export.

    Attributes:
        box: ``(x1, y1, x2, y2)``, continuous pixels of the image file.
        label: the class name.
        ref: the region id the box was offered under (``"m17"``: annotation 17, mined;
            ``"l3"``: labelled), when the review tool kept it; else None.
    """

    box: Box
    label: str
    ref: str | None = None


@dataclass(frozen=True)
class MergeResult:
    """The merged dataset (``coco``, a COCO dict with ``"provenance"`` on every annotation and a
    top-level ``"rejected"`` list) and ``counts``: boxes per provenance (``labelled``,
    ``mined-accepted``, ``mined-corrected``, ``added``, ``rejected``), ``reviewed_images``,
    ``unreviewed_mined`` (mined boxes on images absent from the review, left out),
    ``labelled_changed`` (labelled boxes moved or deleted in the review, kept as they were)."""

    coco: dict
    counts: dict[str, int]


# --------------------------------------------------------------------------------------------------
# out: review files


def _xyxy(a: Mapping) -> Box:
    x, y, w, h = (float(v) for v in a["bbox"])
    return (x, y, x + w, y + h)


def images_to_review(data: CocoData) -> list[int]:
    """Ids of the images with at least one mined box (``"mined": true``), in file order."""
    return [im["id"] for im in data.images if any(a.get("mined") for a in data.anns_by_image[im["id"]])]


def labelstudio_config(class_names: Sequence[str], *, from_name: str = "label", to_name: str = "image") -> str:
    """The Label Studio labelling config (XML) that :func:`labelstudio_tasks` fits: an ``Image``
    named ``to_name`` on ``$image`` and ``RectangleLabels`` named ``from_name`` with one label per class."""
    labels = "\n".join(f"    <Label value={quoteattr(n)}/>" for n in class_names)
    return (f"<View>\n  <Image name={quoteattr(to_name)} value=\"$image\"/>\n"
            f"  <RectangleLabels name={quoteattr(from_name)} toName={quoteattr(to_name)}>\n{labels}\n"
            "  </RectangleLabels>\n</View>\n")


def _ls_region(a: Mapping, name: str, w: int, h: int, rid: str, from_name: str, to_name: str) -> dict:
    x1, y1, x2, y2 = _xyxy(a)
    r = {
        "id": rid, "type": "rectanglelabels", "from_name": from_name, "to_name": to_name,
        "original_width": w, "original_height": h, "image_rotation": 0,
        "value": {"x": 100.0 * x1 / w, "y": 100.0 * y1 / h, "width": 100.0 * (x2 - x1) / w,
                  "height": 100.0 * (y2 - y1) / h, "rotation": 0, "rectanglelabels": [name]},
    }
    if a.get("mined"):
        r["score"] = float(a.get("score", 1.0))
    return r


def labelstudio_tasks(
    data: CocoData,
    *,
    image_ids: Iterable[int] | None = None,
    image_url_prefix: str = DEFAULT_IMAGE_URL,
    model_version: str = "minedet",
    from_name: str = "label",
    to_name: str = "image",
) -> list[dict]:
    """Label Studio import tasks, one per image (default: :func:`images_to_review`).

    Each task: ``{"data": {"image": image_url_prefix + file_name (URL-quoted), "minedet_image_id",
    "file_name"}, "predictions": [{"model_version", "score": mean mined score, "result": [...]}]}``;
    a result is a ``rectanglelabels`` region in percent coordinates (module docstring) with id
    ``l<id>`` / ``m<id>`` and, for a mined box, its ``score``. Crowd boxes are left out.
    """
    ids = images_to_review(data) if image_ids is None else list(image_ids)
    names = data.class_names
    tasks = []
    for iid in ids:
        im = data.image(iid)
        w, h = int(im["width"]), int(im["height"])
        result, scores = [], []
        for a in data.anns_by_image[iid]:
            if a.get("iscrowd"):
                continue
            rid = f"{'m' if a.get('mined') else 'l'}{a['id']}"
            result.append(_ls_region(a, names[data.label_of(a["category_id"])], w, h, rid, from_name, to_name))
            if a.get("mined"):
                scores.append(float(a.get("score", 1.0)))
        fn = str(im["file_name"])
        tasks.append({
            "data": {"image": image_url_prefix + quote(fn.replace("\\", "/"), safe="/"), "minedet_image_id": iid, "file_name": fn},
            "predictions": [{"model_version": model_version, "score": sum(scores) / len(scores) if scores else 0.0,
                             "result": result}],
        })
    return tasks


def review_cvat_xml(data: CocoData, *, image_ids: Iterable[int] | None = None, task_name: str = "minedet review") -> bytes:
    """CVAT-for-images 1.1 XML of the images to review (default :func:`images_to_review`), their
    labelled boxes ``source="manual"`` and mined boxes ``source="auto"`` (pixels, see module docstring)."""
    from minedet.data.formats import cvat_xml

    ids = images_to_review(data) if image_ids is None else list(image_ids)
    return cvat_xml(data, image_ids=ids, task_name=task_name,
                    box_source=lambda a: "auto" if a.get("mined") else "manual")


# --------------------------------------------------------------------------------------------------
# in: reviewed exports


class _Images:
    """Find an image of the original by file name (exactly, else by a unique base name)."""

    def __init__(self, data: CocoData) -> None:
        self.data = data
        self.by_name = {str(im["file_name"]).replace("\\", "/"): im["id"] for im in data.images}
        base: dict[str, list[int]] = {}
        for n, i in self.by_name.items():
            base.setdefault(posixpath.basename(n), []).append(i)
        self.by_base = base

    def find(self, name: str, file: str, record: str) -> int:
        n = name.replace("\\", "/")
        if n in self.by_name:
            return self.by_name[n]
        hits = self.by_base.get(posixpath.basename(n), [])
        if len(hits) == 1:
            return hits[0]
        why = "matches several images by base name" if hits else "is not an image of the original dataset"
        raise MinedetError(f"image {name!r} {why}", file=file, record=record)


def _label(name: Any, data: CocoData, file: str, record: str) -> str:
    if not isinstance(name, str) or name not in data.class_names:
        raise MinedetError(f"class {name!r} is not in the class list ({', '.join(data.class_names)})", file=file, record=record)
    return name


def _finite_box(vals: Sequence[Any], file: str, record: str) -> Box:
    try:
        b = tuple(float(v) for v in vals)
    except (TypeError, ValueError, OverflowError):
        raise MinedetError("box coordinates must be numbers", file=file, record=record) from None
    if len(b) != 4 or not all(math.isfinite(v) for v in b):
        raise MinedetError("box coordinates must be 4 finite numbers", file=file, record=record)
    return b  # type: ignore[return-value]


def _ls_box(r: Mapping, w: int, h: int, file: str, rec: str) -> Box:
    """A Label Studio rectangle (percent, rotation about its top-left corner) as an axis-aligned
    xyxy box in pixels (a rotated rectangle becomes the box around it)."""
    v = r.get("value")
    if not isinstance(v, Mapping):
        raise MinedetError('a region needs a "value" object', file=file, record=rec)
    x, y, bw, bh = _finite_box([v.get(k) for k in ("x", "y", "width", "height")], file, rec)
    for k, size in (("original_width", w), ("original_height", h)):
        if r.get(k) is not None and r.get(k) != size:
            raise MinedetError(f"{k} {r.get(k)!r} differs from the image record ({size})", file=file, record=rec)
    x, y, bw, bh = x * w / 100.0, y * h / 100.0, bw * w / 100.0, bh * h / 100.0
    rot = float(v.get("rotation") or 0.0)
    if rot % 360.0 == 0.0:
        return (x, y, x + bw, y + bh)
    c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))
    xs = [x + dx * c - dy * s for dx, dy in ((0, 0), (bw, 0), (bw, bh), (0, bh))]
    ys = [y + dx * s + dy * c for dx, dy in ((0, 0), (bw, 0), (bw, bh), (0, bh))]
    return (min(xs), min(ys), max(xs), max(ys))


def _ls_image_id(task: Mapping, images: _Images, file: str, rec: str) -> int:
    d = task.get("data")
    if not isinstance(d, Mapping):
        raise MinedetError('a task needs a "data" object', file=file, record=rec)
    iid = d.get("minedet_image_id")
    if isinstance(iid, int) and not isinstance(iid, bool):
        images.data.image(iid)  # raises for an unknown id
        return iid
    name = d.get("file_name")
    if not isinstance(name, str):
        url = d.get("image")
        if not isinstance(url, str):
            raise MinedetError('a task needs data "minedet_image_id", "file_name" or "image"', file=file, record=rec)
        name = unquote(url.split("?d=", 1)[1] if "?d=" in url else url.rsplit("/", 1)[-1])
    return images.find(name, file, rec)


def read_labelstudio(path: str | Path, data: CocoData) -> dict[int, list[ReviewedBox]]:
    """A Label Studio JSON export (a list of tasks, each with ``annotations``): per image, the
    ``rectanglelabels`` regions of its latest annotation that was not cancelled. A task without
    one was not reviewed (absent from the result)."""
    from minedet.data.coco import read_json_file

    f = str(path)
    tasks = read_json_file(path)
    if not isinstance(tasks, list):
        raise MinedetError("a Label Studio export is a JSON list of tasks (export as 'JSON', not 'JSON-MIN')", file=f)
    images = _Images(data)
    out: dict[int, list[ReviewedBox]] = {}
    for t, task in enumerate(tasks):
        rec = f"task[{t}]"
        if not isinstance(task, Mapping):
            raise MinedetError("a task must be an object", file=f, record=rec)
        anns = [a for a in task.get("annotations") or [] if isinstance(a, Mapping) and not a.get("was_cancelled")]
        if not anns:
            continue
        iid = _ls_image_id(task, images, f, rec)
        if iid in out:
            raise MinedetError(f"image id={iid} is reviewed by two tasks", file=f, record=rec)
        im = data.image(iid)
        w, h = int(im["width"]), int(im["height"])
        boxes = []
        result = anns[-1].get("result") or []
        for j, r in enumerate(result if isinstance(result, list) else []):
            if not isinstance(r, Mapping) or r.get("type") != "rectanglelabels":
                continue
            rrec = f"{rec} result[{j}]"
            labels = (r.get("value") or {}).get("rectanglelabels") if isinstance(r.get("value"), Mapping) else None
            if not isinstance(labels, list) or len(labels) != 1:
                raise MinedetError("a rectangle needs exactly one label", file=f, record=rrec)
            ref = r.get("id") if isinstance(r.get("id"), str) else None
            boxes.append(ReviewedBox(_ls_box(r, w, h, f, rrec), _label(labels[0], data, f, rrec), ref))
        out[iid] = boxes
    return out


def read_cvat_reviewed(path: str | Path, data: CocoData) -> dict[int, list[ReviewedBox]]:
    """A CVAT-for-images XML export (through :func:`minedet.data.formats.read_cvat`): per
    ``<image>``, matched to the original by name, its boxes. Every image in the file was reviewed."""
    from minedet.data.formats import read_cvat

    recs, _ = read_cvat(path)
    images = _Images(data)
    out: dict[int, list[ReviewedBox]] = {}
    for r in recs:
        iid = images.find(r.file_name, r.source, r.record or "")
        im = data.image(iid)
        if (r.width, r.height) != (im["width"], im["height"]):
            raise MinedetError(f"image is {r.width}x{r.height} but the original says {im['width']}x{im['height']}",
                               file=r.source, record=r.record)
        if iid in out:
            raise MinedetError(f"image id={iid} appears twice", file=r.source, record=r.record)
        out[iid] = [ReviewedBox(b, _label(lab, data, r.source, f"{r.record} box[{j}]")) for j, (lab, b) in enumerate(r.boxes)]
    return out


def read_coco_reviewed(path: str | Path, data: CocoData) -> dict[int, list[ReviewedBox]]:
    """A reviewed COCO file: images matched to the original by file name, classes by name. Every
    image in the file was reviewed. An annotation still marked ``"mined": true`` whose id is a mined
    box of the same image in the original keeps that id as its region id (the file was edited in
    place); other ids mean nothing (tools renumber them)."""
    from minedet.data.coco import load_coco

    rev = load_coco(path)
    f = str(path)
    images = _Images(data)
    mined_ids = {a["id"]: a["image_id"] for a in data.annotations if a.get("mined")}
    out: dict[int, list[ReviewedBox]] = {}
    for im in rev.images:
        rec = f"image id={im['id']}"
        iid = images.find(str(im["file_name"]), f, rec)
        orig = data.image(iid)
        if (im["width"], im["height"]) != (orig["width"], orig["height"]):
            raise MinedetError(f"image is {im['width']}x{im['height']} but the original says {orig['width']}x{orig['height']}",
                               file=f, record=rec)
        if iid in out:
            raise MinedetError(f"image id={iid} appears twice", file=f, record=rec)
        boxes = []
        for a in rev.anns_by_image[im["id"]]:
            if a.get("iscrowd"):
                continue
            name = rev.class_names[rev.label_of(a["category_id"])]
            ref = f"m{a['id']}" if a.get("mined") and mined_ids.get(a["id"]) == iid else None
            boxes.append(ReviewedBox(_xyxy(a), _label(name, data, f, f"annotation id={a['id']}"), ref))
        out[iid] = boxes
    return out


def read_reviewed(path: str | Path, fmt: str, data: CocoData) -> dict[int, list[ReviewedBox]]:
    """The reviewed export at ``path`` in format ``fmt`` (:data:`REVIEW_FORMATS`): image id of
    ``data`` -> its reviewed boxes; images absent were not reviewed."""
    readers = {"labelstudio": read_labelstudio, "cvat": read_cvat_reviewed, "coco": read_coco_reviewed}
    if fmt not in readers:
        raise MinedetError(f"review format must be one of {', '.join(REVIEW_FORMATS)}, got {fmt!r}")
    return readers[fmt](path, data)


# --------------------------------------------------------------------------------------------------
# merge


def _iou(a: Box, b: Box) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _same(a: Box, b: Box, tol: float) -> bool:
    return all(abs(u - v) <= tol + 1e-9 for u, v in zip(a, b))


def _clip(b: Box, w: int, h: int) -> Box | None:
    x1, y1 = round(min(max(b[0], 0.0), w), _ROUND), round(min(max(b[1], 0.0), h), _ROUND)
    x2, y2 = round(min(max(b[2], 0.0), w), _ROUND), round(min(max(b[3], 0.0), h), _ROUND)
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def _match(offered: list[dict], boxes: list[ReviewedBox], names: list[str], label_of, tol: float,
           iou_min: float) -> dict[int, int]:
    """Reviewed box index -> offered index (steps 1-3 of the module docstring)."""
    match: dict[int, int] = {}
    used: set[int] = set()
    refs = {f"{'m' if a.get('mined') else 'l'}{a['id']}": k for k, a in enumerate(offered)}
    for j, b in enumerate(boxes):
        k = refs.get(b.ref) if b.ref else None
        if k is not None and k not in used:
            match[j], _ = k, used.add(k)
    for want_mined in (False, True):
        for j, b in enumerate(boxes):
            if j in match:
                continue
            for k, a in enumerate(offered):
                if (k not in used and bool(a.get("mined")) == want_mined and names[label_of(a["category_id"])] == b.label
                        and _same(_xyxy(a), b.box, tol)):
                    match[j], _ = k, used.add(k)
                    break
    pairs = sorted(((_iou(_xyxy(a), b.box), j, k) for j, b in enumerate(boxes) if j not in match
                    for k, a in enumerate(offered) if k not in used), key=lambda t: (-t[0], t[1], t[2]))
    for v, j, k in pairs:
        if v >= iou_min and j not in match and k not in used:
            match[j], _ = k, used.add(k)
    return match


def _record(a: Mapping, box: Box, cat: int, **extra: Any) -> dict:
    x1, y1, x2, y2 = box
    w, h = round(x2 - x1, _ROUND), round(y2 - y1, _ROUND)
    out = {k: v for k, v in a.items() if k not in ("mined", "score")}
    out.update(bbox=[round(x1, _ROUND), round(y1, _ROUND), w, h], area=round(w * h, 4), category_id=cat, **extra)
    return out


def merge_reviewed(
    original: CocoData, reviewed: Mapping[int, Sequence[ReviewedBox]], *, tolerance: float = 0.5, iou_min: float = 0.5
) -> MergeResult:
    """Merge reviewed boxes into ``original`` (the ``minedet mine`` output) as described in the
    module docstring. Pure: ``original`` is not modified. Boxes are xyxy pixels of the image file;
    reviewed boxes are clipped to their image and rounded to 0.01 px (a box left without area is dropped).

    Returns:
        :class:`MergeResult`: a COCO dict with the original's top-level keys, images and
        categories, every kept annotation in the original's order (then the added ones, new ids
        after the largest id in use), ``"provenance"`` on each, and the ``"rejected"`` list.
    """
    if not (tolerance >= 0 and 0 < iou_min <= 1):
        raise MinedetError(f"tolerance must be >= 0 and iou_min in (0, 1], got {tolerance!r}, {iou_min!r}")
    names, cat_of = original.class_names, {c["name"]: c["id"] for c in original.categories}
    unknown = [i for i in reviewed if i not in {im["id"] for im in original.images}]
    if unknown:
        raise MinedetError(f"reviewed image id={unknown[0]} is not in the original", file=str(original.path))
    kept: dict[int, dict] = {}  # annotation id -> output record
    added: list[dict] = []
    old_rejected = [dict(r) for rs in original.rejected_by_image.values() for r in rs]
    rejected: list[dict] = []
    counts = dict.fromkeys(("labelled", "mined-accepted", "mined-corrected", "added", "rejected",
                            "reviewed_images", "unreviewed_mined", "labelled_changed", "dropped_degenerate"), 0)
    next_id = max([a["id"] for a in original.annotations] + [r["id"] for r in old_rejected], default=0) + 1
    for im in original.images:
        iid, w, h = im["id"], int(im["width"]), int(im["height"])
        offered = [a for a in original.anns_by_image[iid] if not a.get("iscrowd")]
        for a in original.anns_by_image[iid]:
            if not a.get("mined"):
                kept[a["id"]] = {**a, "provenance": a.get("provenance", "labelled")}
        if iid not in reviewed:
            counts["unreviewed_mined"] += sum(1 for a in offered if a.get("mined"))
            continue
        counts["reviewed_images"] += 1
        boxes = []
        for b in reviewed[iid]:
            c = _clip(b.box, w, h)
            if c is None:
                counts["dropped_degenerate"] += 1
            else:
                boxes.append(ReviewedBox(c, b.label, b.ref))
        match = _match(offered, boxes, names, original.label_of, tolerance, iou_min)
        by_offer = {k: j for j, k in match.items()}
        for k, a in enumerate(offered):
            same_label = k in by_offer and names[original.label_of(a["category_id"])] == boxes[by_offer[k]].label
            unchanged = same_label and _same(_xyxy(a), boxes[by_offer[k]].box, tolerance)
            if not a.get("mined"):
                counts["labelled_changed"] += 0 if unchanged else 1
            elif unchanged:
                kept[a["id"]] = _record(a, _xyxy(a), a["category_id"], mined_score=a.get("score"), provenance="mined-accepted")
            elif k in by_offer:
                b = boxes[by_offer[k]]
                kept[a["id"]] = _record(a, b.box, cat_of[b.label], mined_score=a.get("score"), mined_bbox=list(a["bbox"]),
                                        mined_category_id=a["category_id"], provenance="mined-corrected")
            else:
                rejected.append({"id": a["id"], "image_id": iid, "category_id": a["category_id"], "bbox": list(a["bbox"]),
                                 "area": a.get("area"), "score": a.get("score"), "provenance": "rejected"})
        for j, b in enumerate(boxes):
            if j not in match:
                added.append(_record({"id": next_id, "image_id": iid, "iscrowd": 0}, b.box, cat_of[b.label], provenance="added"))
                next_id += 1
    anns = [kept[a["id"]] for a in original.annotations if a["id"] in kept] + added
    for a in anns:
        counts[a["provenance"]] = counts.get(a["provenance"], 0) + 1
    counts["rejected"] = len(rejected)
    coco = {k: v for k, v in original.raw.items() if k not in ("annotations", "rejected")}
    coco["annotations"] = anns
    coco["rejected"] = old_rejected + rejected
    return MergeResult(coco, counts)
