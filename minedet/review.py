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
(labelled) and ``"m<annotation id>"`` (mined, with its ``score``). Labelled regions belong to
their own control ``labelled`` (grey labels, ``"readonly": true``): the reviewer sees at a glance
which boxes are the mined ones to check (control ``label``, where new boxes are drawn too).
``data`` carries ``minedet_image_id``, ``file_name`` and ``image`` =
``/data/local-files/?d=<image path relative to Label Studio's LOCAL_FILES_DOCUMENT_ROOT>``
(:func:`local_files_dir`, :func:`labelstudio_setup`). In CVAT every box carries the attribute
``minedet`` = ``labelled`` or ``mined`` (``drawn``: the default of a box the reviewer adds);
mined boxes also have ``source="auto"``, labelled ones ``source="manual"``.

What comes back (:func:`read_reviewed`): per image of the original, the boxes the reviewer kept,
moved or drew (:class:`ReviewedBox`), with the region id they were offered under when the tool
kept it (Label Studio does). An image absent from the export was not reviewed; so is an image that
was offered nothing to check (no mined box) and comes back without a box (a CVAT task made from
every image). Every value is checked: a coordinate or rotation that is not a finite number, a box
that is empty or lies outside its image (by more than 1 % of its size), a field of the wrong type
is a one-line error naming the task and result, never a dropped box or a rejection. The review as
a whole is refused when it cannot be a review of ``original``: ``original`` holds no mined box (the
training file passed instead of the mined one), the review is a file ``minedet mine`` wrote (or a
copy), a task's ``minedet_image_id`` and ``file_name`` name different images, a region id names no
offered box of its image, no offered image was reviewed, or every reviewed image came back blank
(the tool did not show the pre-annotations: merging would reject every mined box).

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
reviewer moved or deleted on an image offered for review is only counted. Accepted and corrected boxes lose ``"mined"`` and
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
import os
import posixpath
import re
import shlex
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
    "labelstudio_setup",
    "labelstudio_tasks",
    "local_files_dir",
    "merge_reviewed",
    "read_reviewed",
    "review_cvat_xml",
    "review_file_paths",
]

REVIEW_FORMATS = ("labelstudio", "cvat", "coco")
LOCAL_FILES_URL = "/data/local-files/?d="  # Label Studio's local-files serving: "?d=" + path under its document root
LABELLED_CONTROL = "labelled"  # the Label Studio control of the labelled (read-only) boxes
CVAT_ROLE = "minedet"  # the CVAT attribute that says what a box is
CVAT_ROLES = ("drawn", "mined", "labelled")  # its values; the first is the default of a box the reviewer draws
_MARGIN = 0.01  # a reviewed box may overhang its image by this share of the image size (tools round)
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


def review_file_paths(out: str | os.PathLike) -> dict[str, Path]:
    """The review files ``minedet mine --out OUT`` writes beside OUT: ``labelstudio.json`` (tasks),
    ``labelstudio.xml`` (labelling config), ``cvat.xml``."""
    out = Path(out)
    return {k: out.with_name(f"{out.stem}.{k}") for k in ("labelstudio.json", "labelstudio.xml", "cvat.xml")}


def local_files_dir(images: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """The image folder as a path relative to Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT`` ``root``
    (POSIX separators). Label Studio serves ``/data/local-files/?d=<path under root>`` only from a
    local-files storage whose folder is a sub-folder of the root, so ``images`` must lie strictly
    under ``root`` (absolute, normalised paths; symlinks are not followed). Default root: the
    parent folder of ``images``."""
    img = Path(os.path.abspath(images))
    top = img.parent if root is None else Path(os.path.abspath(root))
    try:
        rel = img.relative_to(top)
    except ValueError:
        raise MinedetError(f"the images {str(img)!r} are not under the Label Studio document root {str(top)!r} "
                           "(--review-root: a folder that holds the image folder)", file=str(images)) from None
    if rel == Path("."):
        raise MinedetError(f"the images are the Label Studio document root itself; Label Studio serves files only from a "
                           f"sub-folder of the root: pass --review-root {str(top.parent)!r}", file=str(images))
    return rel.as_posix()


def labelstudio_setup(images: str | os.PathLike, root: str | os.PathLike | None = None) -> list[str]:
    """The three lines that make the task images open in Label Studio: its two environment variables
    (set before it starts) and the storage step (a Local Files source storage over the image folder)."""
    local_files_dir(images, root)
    img = os.path.abspath(images)
    top = os.path.dirname(img) if root is None else os.path.abspath(root)
    return ["export LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true",
            f"export LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={shlex.quote(top)}",
            f"in the project: Settings > Cloud Storage > Add Source Storage > Local files, absolute path {shlex.quote(img)} "
            "(no sync: the tasks are imported), and pre-label tasks from predictions"]


def labelstudio_config(class_names: Sequence[str], *, from_name: str = "label", to_name: str = "image") -> str:
    """The Label Studio labelling config (XML) that :func:`labelstudio_tasks` fits: an ``Image``
    named ``to_name`` on ``$image``, ``RectangleLabels`` named ``from_name`` (mined boxes to check,
    new boxes) and ``RectangleLabels`` named ``labelled`` (the labelled boxes, grey), one label per
    class in each."""
    labels = "\n".join(f"    <Label value={quoteattr(n)}/>" for n in class_names)
    grey = "\n".join(f"    <Label value={quoteattr(n)} background=\"#9e9e9e\"/>" for n in class_names)
    return (f"<View>\n  <Image name={quoteattr(to_name)} value=\"$image\"/>\n"
            "  <Header value=\"Mined boxes to check (accept, move, relabel, delete) and missing boxes to draw\"/>\n"
            f"  <RectangleLabels name={quoteattr(from_name)} toName={quoteattr(to_name)}>\n{labels}\n"
            "  </RectangleLabels>\n"
            "  <Header value=\"Labelled boxes (read-only)\"/>\n"
            f"  <RectangleLabels name=\"{LABELLED_CONTROL}\" toName={quoteattr(to_name)} opacity=\"0.2\">\n{grey}\n"
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
    else:
        r.update(from_name=LABELLED_CONTROL, readonly=True)
    return r


def labelstudio_tasks(
    data: CocoData,
    *,
    image_ids: Iterable[int] | None = None,
    image_dir: str = "",
    model_version: str = "minedet",
    from_name: str = "label",
    to_name: str = "image",
) -> list[dict]:
    """Label Studio import tasks, one per image (default: :func:`images_to_review`).

    Each task: ``{"data": {"image": "/data/local-files/?d=" + image_dir/file_name (URL-quoted),
    "minedet_image_id", "file_name"}, "predictions": [{"model_version", "score": mean mined score,
    "result": [...]}]}``; ``image_dir`` is the image folder relative to Label Studio's document
    root (:func:`local_files_dir`). A result is a ``rectanglelabels`` region in percent coordinates
    (module docstring): mined boxes id ``m<id>`` with their ``score`` in control ``from_name``,
    labelled boxes id ``l<id>``, ``"readonly": true``, in control ``labelled``. Crowd boxes are left out.
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
        path = posixpath.join(image_dir, fn.replace("\\", "/")) if image_dir else fn.replace("\\", "/")
        tasks.append({
            "data": {"image": LOCAL_FILES_URL + quote(path, safe="/"), "minedet_image_id": iid, "file_name": fn},
            "predictions": [{"model_version": model_version, "score": sum(scores) / len(scores) if scores else 0.0,
                             "result": result}],
        })
    return tasks


def review_cvat_xml(data: CocoData, *, image_ids: Iterable[int] | None = None, task_name: str = "minedet review") -> bytes:
    """CVAT-for-images 1.1 XML of the images to review (default :func:`images_to_review`), their
    labelled boxes ``source="manual"`` and mined boxes ``source="auto"`` (pixels, see module
    docstring); every label declares the select attribute ``minedet`` (:data:`CVAT_ROLES`, default
    ``drawn``) and every box carries it: ``labelled`` or ``mined``."""
    import xml.etree.ElementTree as ET

    from minedet.data.formats import cvat_xml

    ids = images_to_review(data) if image_ids is None else list(image_ids)
    root = ET.fromstring(cvat_xml(data, image_ids=ids, task_name=task_name,
                                  box_source=lambda a: "auto" if a.get("mined") else "manual"))
    for attrs in root.iterfind("meta/task/labels/label/attributes"):
        spec = ET.SubElement(attrs, "attribute")
        for k, v in (("name", CVAT_ROLE), ("mutable", "False"), ("input_type", "select"),
                     ("default_value", CVAT_ROLES[0]), ("values", "\n".join(CVAT_ROLES))):
            ET.SubElement(spec, k).text = v
    for box in root.iter("box"):
        ET.SubElement(box, "attribute", {"name": CVAT_ROLE}).text = "mined" if box.get("source") == "auto" else "labelled"
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode").encode("utf-8") + b"\n"


# --------------------------------------------------------------------------------------------------
# in: reviewed exports


class _Images:
    """Find an image of the original by file name (exactly, else by a unique base name)."""

    def __init__(self, data: CocoData) -> None:
        self.data = data
        self.ids = {im["id"] for im in data.images}
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


def _number(v: Any, what: str, file: str, rec: str) -> float:
    """A JSON number that is finite (not a string, bool, null, NaN or infinity)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise MinedetError(f"{what} must be a finite number, got {v!r:.40}", file=file, record=rec)
    return float(v)


def _image_box(b: Sequence[float], w: int, h: int, file: str, rec: str) -> Box:
    """A reviewed xyxy pixel box checked against its W x H image: finite, not empty, overhanging
    the image by at most 1 % of its size; returned clipped to the image and rounded to 0.01 px."""
    x1, y1, x2, y2 = (float(v) for v in b)
    mx, my = _MARGIN * w, _MARGIN * h
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or not (x2 > x1 and y2 > y1):
        raise MinedetError(f"box ({x1:.6g}, {y1:.6g}, {x2:.6g}, {y2:.6g}) is empty or not finite", file=file, record=rec)
    if x1 < -mx or y1 < -my or x2 > w + mx or y2 > h + my:
        raise MinedetError(f"box ({x1:.6g}, {y1:.6g}, {x2:.6g}, {y2:.6g}) lies outside the {w}x{h} image", file=file, record=rec)
    c = (round(max(x1, 0.0), _ROUND), round(max(y1, 0.0), _ROUND), round(min(x2, w), _ROUND), round(min(y2, h), _ROUND))
    if not (c[2] > c[0] and c[3] > c[1]):
        raise MinedetError(f"box ({x1:.6g}, {y1:.6g}, {x2:.6g}, {y2:.6g}) has no area inside the {w}x{h} image",
                           file=file, record=rec)
    return c


def _ls_box(r: Mapping, w: int, h: int, file: str, rec: str) -> Box:
    """A Label Studio rectangle (percent, rotation in degrees about its top-left corner) as an
    axis-aligned xyxy box in pixels (a rotated rectangle becomes the box around it), checked."""
    v = r.get("value")
    if not isinstance(v, Mapping):
        raise MinedetError('a region needs a "value" object', file=file, record=rec)
    x, y, bw, bh = (_number(v.get(k), k, file, rec) for k in ("x", "y", "width", "height"))
    rot = _number(v.get("rotation", 0), "rotation", file, rec)
    if not -360.0 <= rot <= 360.0:
        raise MinedetError(f"rotation must be in [-360, 360] degrees, got {rot!r:.40}", file=file, record=rec)
    for k, size in (("original_width", w), ("original_height", h)):
        if r.get(k) is not None and r.get(k) != size:
            raise MinedetError(f"{k} {r.get(k)!r:.40} differs from the image record ({size})", file=file, record=rec)
    if not (bw > 0 and bh > 0):
        raise MinedetError(f"width and height must be > 0, got {bw!r:.20}, {bh!r:.20}", file=file, record=rec)
    x, y, bw, bh = x * w / 100.0, y * h / 100.0, bw * w / 100.0, bh * h / 100.0
    if rot % 360.0 == 0.0:
        return _image_box((x, y, x + bw, y + bh), w, h, file, rec)
    c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))
    xs = [x + dx * c - dy * s for dx, dy in ((0, 0), (bw, 0), (bw, bh), (0, bh))]
    ys = [y + dx * s + dy * c for dx, dy in ((0, 0), (bw, 0), (bw, bh), (0, bh))]
    return _image_box((min(xs), min(ys), max(xs), max(ys)), w, h, file, rec)


def _ls_image_id(task: Mapping, images: _Images, file: str, rec: str) -> int:
    """The image a task names: ``minedet_image_id`` and ``file_name`` (both must name the same image),
    else the image URL's path."""
    d = task.get("data")
    if not isinstance(d, Mapping):
        raise MinedetError('a task needs a "data" object', file=file, record=rec)
    iid = d.get("minedet_image_id")
    if "minedet_image_id" in d and (isinstance(iid, bool) or not isinstance(iid, int) or iid not in images.ids):
        raise MinedetError(f"minedet_image_id {iid!r:.40} is not an image id of the original", file=file, record=rec)
    name = d.get("file_name")
    if "file_name" in d and not isinstance(name, str):
        raise MinedetError(f"file_name must be a string, got {name!r:.40}", file=file, record=rec)
    if name is None and iid is None:
        url = d.get("image")
        if not isinstance(url, str):
            raise MinedetError('a task needs data "minedet_image_id", "file_name" or "image"', file=file, record=rec)
        name = unquote(url.split("?d=", 1)[1] if "?d=" in url else url.rsplit("/", 1)[-1])
    found = images.find(name, file, rec) if name is not None else iid
    if iid is not None and found != iid:
        raise MinedetError(f"minedet_image_id {iid} is {images.data.image(iid)['file_name']!r} in the original but the task's "
                           f"file_name is {name!r}: the export is not of this mined file", file=file, record=rec)
    return found


def _ls_annotation(task: Any, file: str, rec: str) -> list | None:
    """The result list of a task's latest annotation that was not cancelled; None: not reviewed."""
    if not isinstance(task, Mapping):
        raise MinedetError("a task must be an object", file=file, record=rec)
    if "annotations" not in task and "data" not in task:
        raise MinedetError('a task has no "data" and no "annotations": this is not Label Studio\'s JSON export '
                           "(JSON-MIN or CSV?); export the project as 'JSON'", file=file, record=rec)
    anns = task.get("annotations")
    if not isinstance(anns, list):
        raise MinedetError(f'"annotations" must be a list, got {anns!r:.40}', file=file, record=rec)
    live = []
    for k, a in enumerate(anns):
        if not isinstance(a, Mapping):
            raise MinedetError("an annotation must be an object", file=file, record=f"{rec} annotations[{k}]")
        if not isinstance(a.get("was_cancelled", False), bool):
            raise MinedetError('"was_cancelled" must be true or false', file=file, record=f"{rec} annotations[{k}]")
        if not a.get("was_cancelled", False):
            live.append(k)
    if not live:
        return None
    result = anns[live[-1]].get("result")
    if not isinstance(result, list):
        raise MinedetError(f'"result" must be a list, got {result!r:.40}', file=file, record=f"{rec} annotations[{live[-1]}]")
    return result


_REF = re.compile(r"[lm][0-9]+")


def _ls_boxes(result: list, data: CocoData, iid: int, file: str, rec: str) -> list[ReviewedBox]:
    """The ``rectanglelabels`` regions of one task's result, checked (module docstring)."""
    im = data.image(iid)
    w, h = int(im["width"]), int(im["height"])
    offered = {f"{'m' if a.get('mined') else 'l'}{a['id']}" for a in data.anns_by_image[iid] if not a.get("iscrowd")}
    boxes = []
    for j, r in enumerate(result):
        rrec = f"{rec} result[{j}]"
        if not isinstance(r, Mapping) or r.get("type") != "rectanglelabels":
            kind = r.get("type") if isinstance(r, Mapping) else r
            raise MinedetError(f"a result must be a rectanglelabels region, got {kind!r:.40}", file=file, record=rrec)
        labels = r["value"].get("rectanglelabels") if isinstance(r.get("value"), Mapping) else None
        if not isinstance(labels, list) or len(labels) != 1:
            raise MinedetError("a rectangle needs exactly one label", file=file, record=rrec)
        ref = r.get("id") if isinstance(r.get("id"), str) else None
        if ref is not None and _REF.fullmatch(ref) and ref not in offered:
            raise MinedetError(f"region id {ref!r} names no box offered on image id={iid} ({im['file_name']!r}): "
                               "the export is not of this mined file", file=file, record=rrec)
        boxes.append(ReviewedBox(_ls_box(r, w, h, file, rrec), _label(labels[0], data, file, rrec), ref))
    return boxes


def read_labelstudio(path: str | Path, data: CocoData) -> dict[int, list[ReviewedBox]]:
    """A Label Studio JSON export (a list of tasks, each with ``data`` and ``annotations``): per
    image, the ``rectanglelabels`` regions of its latest annotation that was not cancelled. A task
    without one was not reviewed (absent from the result)."""
    from minedet.data.coco import read_json_file

    f = str(path)
    tasks = read_json_file(path)
    if not isinstance(tasks, list):
        raise MinedetError("a Label Studio export is a JSON list of tasks (export the project as 'JSON')", file=f)
    images = _Images(data)
    out: dict[int, list[ReviewedBox]] = {}
    for t, task in enumerate(tasks):
        rec = f"task[{t}]" + (f" id={task['id']}" if isinstance(task, Mapping) and isinstance(task.get("id"), int) else "")
        result = _ls_annotation(task, f, rec)
        if result is None:
            continue
        iid = _ls_image_id(task, images, f, rec)
        if iid in out:
            raise MinedetError(f"image id={iid} is reviewed by two tasks", file=f, record=rec)
        out[iid] = _ls_boxes(result, data, iid, f, rec)
    return out


def read_cvat_reviewed(path: str | Path, data: CocoData) -> dict[int, list[ReviewedBox]]:
    """A CVAT-for-images XML export (through :func:`minedet.data.formats.read_cvat`): per
    ``<image>``, matched to the original by name, its boxes (checked). Every image in the file was reviewed."""
    from minedet.data.formats import read_cvat

    recs, _ = read_cvat(path)
    images = _Images(data)
    out: dict[int, list[ReviewedBox]] = {}
    for r in recs:
        iid = images.find(r.file_name, r.source, r.record or "")
        im = data.image(iid)
        w, h = int(im["width"]), int(im["height"])
        if (r.width, r.height) != (w, h):
            raise MinedetError(f"image is {r.width}x{r.height} but the original says {w}x{h}", file=r.source, record=r.record)
        if iid in out:
            raise MinedetError(f"image id={iid} appears twice", file=r.source, record=r.record)
        out[iid] = [ReviewedBox(_image_box(b, w, h, r.source, f"{r.record} box[{j}]"),
                                _label(lab, data, r.source, f"{r.record} box[{j}]")) for j, (lab, b) in enumerate(r.boxes)]
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
        w, h = int(orig["width"]), int(orig["height"])
        if (im["width"], im["height"]) != (w, h):
            raise MinedetError(f"image is {im['width']}x{im['height']} but the original says {w}x{h}", file=f, record=rec)
        if iid in out:
            raise MinedetError(f"image id={iid} appears twice", file=f, record=rec)
        boxes = []
        for a in rev.anns_by_image[im["id"]]:
            if a.get("iscrowd"):
                continue
            arec = f"annotation id={a['id']}"
            ref = f"m{a['id']}" if a.get("mined") and mined_ids.get(a["id"]) == iid else None
            name = rev.class_names[rev.label_of(a["category_id"])]
            boxes.append(ReviewedBox(_image_box(_xyxy(a), w, h, f, arec), _label(name, data, f, arec), ref))
        out[iid] = boxes
    return out


def _refuse_mine_outputs(path: Path, data: CocoData) -> None:
    """The review must not be the mined file, or a review file ``minedet mine`` wrote beside it, or a copy."""
    orig = Path(str(data.path))
    for p in [orig, *review_file_paths(orig).values()]:
        try:
            same = p.is_file() and (os.path.samefile(p, path) or (
                p.stat().st_size == path.stat().st_size and p.read_bytes() == path.read_bytes()))
        except OSError:
            continue
        if same:
            raise MinedetError(f"this is {p.name}, a file 'minedet mine' wrote (or a copy), not the reviewer's export",
                               file=str(path))


def _check_review(reviewed: Mapping[int, Sequence[ReviewedBox]], data: CocoData, file: str) -> None:
    """Refuse a review that reviewed nothing that was offered, or came back blank."""
    offered = [i for i in images_to_review(data) if i in reviewed]
    if not offered:
        raise MinedetError("no image offered for review (one with mined boxes) was reviewed: nothing to merge "
                           "(Label Studio: no task has a submitted annotation)", file=file)
    if not any(reviewed[i] for i in offered):
        raise MinedetError(f"blank review: none of the {len(offered)} reviewed images holds a box, not even a labelled one; "
                           "the tool did not show the pre-annotations (Label Studio: pre-label tasks from predictions, "
                           "CVAT: import the review XML) and merging would reject every mined box", file=file)


def read_reviewed(path: str | Path, fmt: str, data: CocoData) -> dict[int, list[ReviewedBox]]:
    """The reviewed export at ``path`` in format ``fmt`` (:data:`REVIEW_FORMATS`) of ``data`` (the
    ``minedet mine`` output): image id of ``data`` -> its reviewed boxes; images absent were not
    reviewed. Refuses what cannot be a review of ``data`` (module docstring)."""
    readers = {"labelstudio": read_labelstudio, "cvat": read_cvat_reviewed, "coco": read_coco_reviewed}
    if fmt not in readers:
        raise MinedetError(f"review format must be one of {', '.join(REVIEW_FORMATS)}, got {fmt!r}")
    if not any(a.get("mined") for a in data.annotations):
        raise MinedetError('holds no mined box ("mined": true): pass the file \'minedet mine --out\' wrote, '
                           "not the training file", file=str(data.path))
    path = Path(path)
    _refuse_mine_outputs(path, data)
    reviewed = readers[fmt](path, data)
    offered = set(images_to_review(data))
    reviewed = {i: b for i, b in reviewed.items() if b or i in offered}  # empty and offered nothing: not reviewed
    _check_review(reviewed, data, str(path))
    return reviewed


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
    reviewed boxes are clipped to their image and rounded to 0.01 px (an empty box, or one outside its
    image by more than 1 % of its size, is an error). Labelled boxes moved or deleted are counted only
    on images with mined boxes (the images offered for review).

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
                            "reviewed_images", "unreviewed_mined", "labelled_changed"), 0)
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
        shown = any(a.get("mined") for a in offered)  # labelled boxes were shown with the mined ones
        boxes = [ReviewedBox(_image_box(b.box, w, h, str(original.path), f"reviewed image id={iid}"), b.label, b.ref)
                 for b in reviewed[iid]]
        match = _match(offered, boxes, names, original.label_of, tolerance, iou_min)
        by_offer = {k: j for j, k in match.items()}
        for k, a in enumerate(offered):
            same_label = k in by_offer and names[original.label_of(a["category_id"])] == boxes[by_offer[k]].label
            unchanged = same_label and _same(_xyxy(a), boxes[by_offer[k]].box, tolerance)
            if not a.get("mined"):
                counts["labelled_changed"] += 0 if unchanged or not shown else 1
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
