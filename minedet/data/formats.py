"""Other annotation formats in and out of COCO: YOLO, Pascal VOC, LabelMe, CVAT for images 1.1.

The formats are read and written by the ``globox`` library (``Annotation.from_yolo_darknet``,
``from_pascal_voc``, ``from_labelme``, ``from_cvat`` and the matching ``to_*``); minedet stands in
front of it and behind it:

* **in front**: every XML file is first parsed by ``defusedxml`` with DTDs forbidden, so no entity
  is ever expanded (billion laughs) and no external reference is followed, before globox sees it;
  image sizes for YOLO are read from the image files (Pillow, header only); class names come
  from a names file or ``data.yaml``.
* **behind**: globox's exceptions (``ParsingError``, its ``assert``\\ s on box order) become one
  :class:`~minedet.errors.MinedetError` naming the file, the record (``object[2]``,
  ``image[0] name='a.jpg'``, ``line 3``) and the rule broken; every box is checked finite and
  ordered; the COCO dict is assembled here and passes :func:`minedet.data.coco.validate_coco`
  (the rules of ``minedet data check``) before anything is written.

Coordinate frames. Inside minedet a box is ``[x1, y1, x2, y2]`` in **continuous image
coordinates** (origin at the top-left corner of the top-left pixel, x right, y down), the frame
of the COCO ``bbox = [x, y, w, h]`` (``x = x1``, ``w = x2 - x1``). Per format:

* **YOLO** (darknet txt, one file per image, ``class cx cy w h`` normalised by the image size):
  continuous, ``x1 = (cx - w/2) * W``; the class is an index into the names list.
* **Pascal VOC** (one XML per image): **1-based, inclusive pixel indices**; pixel ``i`` covers
  ``[i - 1, i]``, so ``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax`` (COCO
  ``w = xmax - xmin + 1``, detectron2's VOC convention); ``<difficult>1`` is kept as the
  annotation key ``"difficult": 1`` (globox does not read it; minedet reads it from the same
  defused tree).
* **LabelMe** (one JSON per image): ``rectangle`` shapes (two corner points) and ``polygon``
  shapes (three or more points; the box is their extent, globox's ``include_poly``), continuous
  coordinates. ``imagePath`` is relative to the JSON file.
* **CVAT for images 1.1** (one ``annotations.xml``): ``<box xtl ytl xbr ybr>`` in continuous
  coordinates; rotated boxes are refused.

**Degenerate shapes: one policy, every reader.** A shape a reader meets becomes exactly one box,
or the conversion is refused with one line naming the file, the shape (``line 3``,
``object[2]``, ``shapes[1]``, ``image[0] name='a.jpg' box[2]``) and the rule; nothing is skipped
and nothing is made up. The rules (:func:`_check_box`): a shape of a kind that has no box
(a LabelMe ``point``/``line``/``circle``, a CVAT ``<polygon>``/``<points>``/``<polyline>``/...) is
refused; a rectangle needs two points and a polygon three; every coordinate is finite; the box
has positive width and height; it lies inside its image, up to :data:`EDGE_TOLERANCE` px (the
rounding of annotation tools, VOC's 0- vs 1-based slips), and such a box is clipped to the image.
CVAT ``<tag>`` (an image-level label, not a shape) is not a box and is not read.

COCO ``iscrowd`` boxes have no counterpart in the other formats and are not exported (counted).
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from minedet.errors import MinedetError

__all__ = [
    "FORMATS",
    "ImageBoxes",
    "coco_to_format",
    "convert_to_coco",
    "cvat_xml",
    "find_files",
    "find_voc_xml",
    "images_to_coco",
    "parse_xml_safely",
    "read_class_names",
    "read_cvat",
    "read_labelme",
    "read_voc",
    "read_yolo",
    "voc_to_coco",
]

FORMATS = ("yolo", "voc", "labelme", "cvat")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
_LIB_ERRORS = (ValueError, AssertionError, KeyError, TypeError, IndexError, OverflowError)
_DECIMALS = 6  # imported coordinates are rounded to 1e-6 px (removes float noise of the normalised formats)
EDGE_TOLERANCE = 1.0  # px a foreign box may stick out of its image before it is refused (inside it, clipped)


@dataclass(frozen=True)
class ImageBoxes:
    """One image as read from a foreign format.

    Attributes:
        source: the annotation file it came from (for error messages).
        record: names the image inside ``source`` (``None`` for one-image-per-file formats).
        file_name: the image path relative to the image root (COCO ``file_name``).
        width, height: the image size in pixels.
        boxes: ``(class name, (x1, y1, x2, y2))`` per box, continuous image coordinates (see the
            module docstring), in file order.
        extras: per box, extra COCO annotation keys (VOC: ``{"difficult": 0|1}``).
        records: per box, how error messages name it (``object[2]``, ``line 3``); default ``box[i]``.
    """

    source: str
    record: str | None
    file_name: str
    width: int
    height: int
    boxes: list[tuple[str, tuple[float, float, float, float]]]
    extras: list[dict[str, Any]] = field(default_factory=list)
    records: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# shared helpers


def _globox():
    try:
        import globox
    except ModuleNotFoundError as e:  # pragma: no cover - a declared dependency
        raise MinedetError(f"the globox package is needed for annotation formats ({e})") from None
    return globox


def _lib_error(e: BaseException) -> str:
    msg = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
    return f"globox: {msg}"


def parse_xml_safely(path: str | os.PathLike) -> ET.Element:
    """Parse an XML file with ``defusedxml``, DTDs forbidden (no entity expansion, no external
    references); the root element. Every failure is one MinedetError naming the file."""
    from defusedxml import DefusedXmlException
    from defusedxml import ElementTree as DET

    f = str(path)
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise MinedetError("file not found", file=f) from None
    except IsADirectoryError:
        raise MinedetError("is a directory, expected an XML file", file=f) from None
    except OSError as e:
        raise MinedetError(f"cannot read file ({e.strerror or e})", file=f) from None
    try:
        return DET.fromstring(data, forbid_dtd=True)
    except DefusedXmlException:
        raise MinedetError("DOCTYPE/ENTITY declarations are not allowed in annotation XML", file=f) from None
    except ET.ParseError as e:
        line, col = getattr(e, "position", (0, 0))
        raise MinedetError("not well-formed XML", file=f, record=f"line {line} column {col}") from None
    except (ValueError, LookupError, RecursionError) as e:  # e.g. an unknown encoding declaration
        raise MinedetError(f"not readable XML ({type(e).__name__})", file=f) from None


def find_files(
    sources: str | os.PathLike | Iterable[str | os.PathLike], suffix: str, *, sub: str | None = None, what: str = "annotation"
) -> list[Path]:
    """Expand files and folders into a sorted, de-duplicated list of files ending in ``suffix``.

    A folder contributes every ``*suffix`` file below it (recursively, hidden files skipped), or
    those below its ``sub`` folder when it has one (a VOC root holding ``Annotations/``).
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    out: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.is_dir():
            folder = p / sub if sub and (p / sub).is_dir() else p
            found = sorted(q for q in folder.rglob(f"*{suffix}") if q.is_file() and not q.name.startswith("."))
            if not found:
                raise MinedetError(f"no {suffix} files in this folder", file=str(folder))
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise MinedetError("file or folder not found", file=str(p))
    if not out:
        raise MinedetError(f"no {what} files given")
    seen: set[Path] = set()
    uniq = []
    for p in sorted(out, key=str):
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            uniq.append(p)
    return uniq


def find_voc_xml(sources: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """VOC XML files of files and folders (a VOC root's ``Annotations/`` is understood), sorted."""
    return find_files(sources, ".xml", sub="Annotations", what="VOC XML")


def _r(v: float) -> float:
    return round(float(v), _DECIMALS) + 0.0  # + 0.0: no "-0.0"


def _check_box(box: Sequence[float], size: tuple[int, int], file: str, record: str) -> tuple[float, float, float, float]:
    """The box rules of every reader (module docstring): ``box`` ``(x1, y1, x2, y2)`` continuous
    pixels of an image of ``size`` ``(W, H)``; returns it clipped to the image and rounded, or
    raises one MinedetError naming ``file`` and ``record``."""
    x1, y1, x2, y2 = (float(v) for v in box)
    text = f"({x1:g},{y1:g},{x2:g},{y2:g})"
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise MinedetError(f"box coordinates must be finite {text}", file=file, record=record)
    if not (x2 > x1 and y2 > y1):
        raise MinedetError(f"box has no area {text}: a box needs x2 > x1 and y2 > y1", file=file, record=record)
    w, h = size
    t = EDGE_TOLERANCE
    if x1 < -t or y1 < -t or x2 > w + t or y2 > h + t:
        raise MinedetError(f"box {text} lies more than {t:g} px outside its {w}x{h} image", file=file, record=record)
    out = (_r(max(x1, 0.0)), _r(max(y1, 0.0)), _r(min(x2, w)), _r(min(y2, h)))
    if not (out[2] > out[0] and out[3] > out[1]):
        raise MinedetError(f"box has no area inside its {w}x{h} image {text}", file=file, record=record)
    return out


def _num_text(v: float) -> str:
    """A coordinate as text: integers without ``.0`` (readers that ``int()`` VOC values), else repr."""
    v = round(float(v), 9) + 0.0
    return str(int(v)) if v == int(v) else repr(v)


def _relative_name(name: str, json_dir: Path, root: Path) -> str:
    """LabelMe ``imagePath`` (relative to the JSON) as a path relative to ``root``; its base name
    when it is absolute or leaves ``root``."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
        return posixpath.basename(posix)
    try:
        rel = (json_dir / posix).resolve().relative_to(root.resolve())
    except ValueError:
        return posixpath.basename(posix)
    return rel.as_posix()


# --------------------------------------------------------------------------------------------------
# Pascal VOC


def _voc_int(el: ET.Element | None, tag: str) -> str | None:
    t = None if el is None else el.findtext(tag)
    if t is None or not t.strip():
        return f"missing <{tag}>"
    try:
        v = float(t)
    except ValueError:
        return f"<{tag}> must be a positive integer, got {t.strip()[:40]!r}"
    return None if math.isfinite(v) and v == int(v) and v > 0 else f"<{tag}> must be a positive integer, got {t.strip()[:40]!r}"


def _diagnose_voc(root: ET.Element, f: str, lib: BaseException) -> MinedetError:
    """The first rule the file breaks, once globox has refused it."""
    size = root.find("size")
    if size is None:
        return MinedetError("missing <size>", file=f)
    for tag in ("width", "height"):
        if (why := _voc_int(size, tag)) is not None:
            return MinedetError(why, file=f, record="size")
    if not (root.findtext("filename") or "").strip():
        return MinedetError("missing <filename>", file=f)
    for i, obj in enumerate(root.iter("object")):
        rec = f"object[{i}]"
        if not (obj.findtext("name") or "").strip():
            return MinedetError("missing <name>", file=f, record=rec)
        box = obj.find("bndbox")
        if box is None:
            return MinedetError("missing <bndbox>", file=f, record=rec)
        vals = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            t = box.findtext(tag)
            if t is None or not t.strip():
                return MinedetError(f"missing <{tag}>", file=f, record=rec)
            try:
                v = float(t)
            except ValueError:
                return MinedetError(f"<{tag}> is not a number: {t.strip()[:40]!r}", file=f, record=rec)
            if not math.isfinite(v):
                return MinedetError(f"<{tag}> is not finite: {t.strip()[:40]!r}", file=f, record=rec)
            vals.append(v)
        if vals[2] < vals[0] or vals[3] < vals[1]:
            return MinedetError(f"box has xmax < xmin or ymax < ymin ({','.join(f'{v:g}' for v in vals)})", file=f, record=rec)
    return MinedetError(f"not a Pascal VOC annotation ({_lib_error(lib)})", file=f)


def _voc_difficult(root: ET.Element, f: str) -> list[int]:
    out = []
    for i, obj in enumerate(root.iter("object")):
        t = (obj.findtext("difficult") or "").strip()
        if t not in ("", "0", "1"):
            raise MinedetError(f"<difficult> must be 0 or 1, got {t[:20]!r}", file=f, record=f"object[{i}]")
        out.append(int(t or 0))
    return out


def read_voc_file(path: str | os.PathLike, *, filename_from_stem: bool = False) -> ImageBoxes:
    """One Pascal VOC XML file (defusedxml check, then ``globox.Annotation.from_pascal_voc``).

    Returns boxes in continuous coordinates (``x1 = xmin - 1``, see the module docstring) and
    ``extras`` ``{"difficult": 0|1}`` per box. ``filename_from_stem``: the image is the XML's stem
    + ``.jpg`` instead of ``<filename>``.
    """
    f = str(path)
    root = parse_xml_safely(path)
    if root.tag != "annotation":
        raise MinedetError(f"root element is <{root.tag[:40]}>, expected <annotation>", file=f)
    try:
        ann = _globox().Annotation.from_pascal_voc(path)
    except (_globox().ParsingError, *_LIB_ERRORS) as e:
        raise _diagnose_voc(root, f, e) from None
    if (why := _voc_int(root.find("size"), "width")) or (why := _voc_int(root.find("size"), "height")):
        raise MinedetError(why, file=f, record="size")
    difficult = _voc_difficult(root, f)
    w, h = ann.image_size
    boxes = []
    for i, b in enumerate(ann.boxes):
        x1, y1, x2, y2 = b.ltrb
        boxes.append((str(b.label).strip(), _check_box((x1 - 1.0, y1 - 1.0, x2, y2), (int(w), int(h)), f, f"object[{i}]")))
    name = Path(f).stem + ".jpg" if filename_from_stem else str(ann.image_id).strip()
    return ImageBoxes(f, None, name, int(w), int(h), boxes, [{"difficult": d} for d in difficult],
                      [f"object[{i}]" for i in range(len(boxes))])


def read_voc(sources: str | os.PathLike | Iterable[str | os.PathLike], *, filename_from_stem: bool = False) -> list[ImageBoxes]:
    """Every VOC XML file of ``sources`` (files and folders, see :func:`find_voc_xml`), sorted by path."""
    return [read_voc_file(p, filename_from_stem=filename_from_stem) for p in find_voc_xml(sources)]


# --------------------------------------------------------------------------------------------------
# YOLO


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a YOLO ``data.yaml`` (``names:`` list or ``{index: name}``) or a names file
    (``classes.txt`` / ``obj.names``: one name a line, blank lines ignored)."""
    p = Path(path)
    f = str(p)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise MinedetError("class names file not found", file=f) from None
    except (OSError, UnicodeDecodeError) as e:
        raise MinedetError(f"cannot read class names ({type(e).__name__})", file=f) from None
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError:
            raise MinedetError("not valid YAML", file=f) from None
        names = d.get("names") if isinstance(d, dict) else None
        if isinstance(names, dict):
            keys = sorted(names)
            if keys != list(range(len(keys))):
                raise MinedetError("names: the keys must be the class indices 0..K-1", file=f)
            names = [names[k] for k in keys]
        if not isinstance(names, list):
            raise MinedetError('no "names:" list in this YAML file', file=f)
    else:
        names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    names = [str(n).strip() for n in names]
    if not names or any(not n for n in names):
        raise MinedetError("class names must be non-empty", file=f)
    if len(set(names)) != len(names):
        raise MinedetError("class names repeat", file=f)
    return names


def _yolo_layout(src: Path, images: str | os.PathLike | None) -> tuple[Path, Path]:
    """(labels folder, images folder): ``src`` is the labels folder or a root holding ``labels/``;
    the images folder defaults to ``images/`` beside it (ultralytics' rule: the last path
    component ``labels`` becomes ``images``)."""
    labels = src / "labels" if (src / "labels").is_dir() else src
    if not labels.is_dir():
        raise MinedetError("YOLO labels folder not found", file=str(src))
    if images is not None:
        img = Path(images)
    else:
        parts = list(labels.parts)
        idx = max((i for i, q in enumerate(parts) if q == "labels"), default=None)
        if idx is None:
            raise MinedetError("cannot tell where the images are; pass --images DIR", file=str(labels))
        parts[idx] = "images"
        img = Path(*parts)
    if not img.is_dir():
        raise MinedetError("image folder not found", file=str(img))
    return labels, img


def _find_names(src: Path, labels: Path) -> Path:
    for d in dict.fromkeys([src, labels, labels.parent, src.parent]):
        for n in ("data.yaml", "dataset.yaml", "classes.txt", "obj.names"):
            if (d / n).is_file():
                return d / n
    raise MinedetError("YOLO needs class names: pass --names data.yaml|classes.txt", file=str(src))


def _image_size(p: Path) -> tuple[int, int]:
    from minedet.data.images import read_size

    return read_size(p, file=str(p))


def _yolo_line(text: str, size: tuple[int, int], class_names: Sequence[str], file: str, rec: str):
    """One non-blank line ``class cx cy w h`` of a label file: ``(class name, box)`` through
    ``globox.BoundingBox.from_yolo_darknet``, every value checked first."""
    vals = text.split()
    if len(vals) == 6:
        raise MinedetError("6 values on a line (a prediction file?); labels have 5", file=file, record=rec)
    if len(vals) != 5:
        raise MinedetError(f"expected 'class cx cy w h' (5 values), got {len(vals)}", file=file, record=rec)
    try:
        k = int(vals[0])
    except ValueError:
        k = -1
    if not 0 <= k < len(class_names) or str(k) != vals[0]:
        raise MinedetError(f"class {vals[0][:40]!r} is not in the class list (0..{len(class_names) - 1})", file=file, record=rec)
    try:
        cx, cy, w, h = (float(v) for v in vals[1:])
    except ValueError:
        raise MinedetError("box values must be numbers", file=file, record=rec) from None
    if not all(math.isfinite(v) for v in (cx, cy, w, h)):
        raise MinedetError(f"box values must be finite ({cx:g} {cy:g} {w:g} {h:g})", file=file, record=rec)
    if not (w > 0 and h > 0):
        raise MinedetError(f"box width and height must be > 0, got {w:g} x {h:g}", file=file, record=rec)
    gb = _globox()
    try:
        b = gb.BoundingBox.from_yolo_darknet(text, image_size=size)
    except (gb.ParsingError, *_LIB_ERRORS) as e:
        raise MinedetError(f"not a YOLO label line ({_lib_error(e)})", file=file, record=rec) from None
    return class_names[k], _check_box(b.ltrb, size, file, rec)


def _read_yolo_file(t: Path, size: tuple[int, int], class_names: Sequence[str]) -> tuple[list, list[str]]:
    """(boxes, records ``line N``) of one label file; blank lines are allowed (ultralytics)."""
    try:
        lines = t.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MinedetError(f"cannot read file ({type(e).__name__})", file=str(t)) from None
    boxes, records = [], []
    for n, ln in enumerate(lines, start=1):
        if ln.strip():
            boxes.append(_yolo_line(ln, size, class_names, str(t), f"line {n}"))
            records.append(f"line {n}")
    return boxes, records


def read_yolo(
    src: str | os.PathLike, *, images: str | os.PathLike | None = None, names: str | os.PathLike | Sequence[str] | None = None
) -> tuple[list[ImageBoxes], list[str]]:
    """A YOLO (darknet txt) dataset through ``globox.Annotation.from_yolo_darknet``.

    Args:
        src: the labels folder (``labels/``, or ``labels/train``), or a root holding ``labels/``.
        images: the image folder; default: ``src``'s path with its last ``labels`` replaced by ``images``.
        names: class names (a list) or the file holding them (``data.yaml`` / ``classes.txt``);
            default: ``data.yaml``, ``dataset.yaml``, ``classes.txt`` or ``obj.names`` beside the labels.

    Every image file under ``images`` is one image (its size read from the file); its label file is
    the same relative path with ``.txt`` under the labels folder, and an image without one has no
    boxes (YOLO's background images). A label file without an image is an error.

    Returns:
        (images sorted by file name, class names in index order).
    """
    src = Path(src)
    labels, img_root = _yolo_layout(src, images)
    if names is None or isinstance(names, (str, os.PathLike)):
        class_names = read_class_names(names if names is not None else _find_names(src, labels))
    else:
        class_names = [str(n) for n in names]
    imgs = sorted(p for p in img_root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    by_label: dict[Path, Path] = {}
    for p in imgs:
        t = (labels / p.relative_to(img_root)).with_suffix(".txt")
        if t in by_label:
            raise MinedetError(f"images {str(by_label[t])!r} and {str(p)!r} share the label file {t.name!r}", file=str(t))
        by_label[t] = p
    for t in sorted(labels.rglob("*.txt")):
        if t not in by_label and t.name not in ("classes.txt",):
            raise MinedetError("label file without an image (its size is needed)", file=str(t))
    out = []
    for t, p in by_label.items():
        size = _image_size(p)
        boxes, records = _read_yolo_file(t, size, class_names) if t.is_file() else ([], [])
        out.append(ImageBoxes(str(t), None, p.relative_to(img_root).as_posix(), size[0], size[1], boxes, records=records))
    return out, class_names


# --------------------------------------------------------------------------------------------------
# LabelMe


_LABELME_POINTS = {"rectangle": (2, "two [x, y] points"), "polygon": (3, "three or more [x, y] points")}


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _labelme_shape(s: Any, size: tuple[int, int], f: str, rec: str) -> tuple[str, tuple[float, float, float, float]]:
    """One entry of ``shapes``: ``(label, box)`` through ``globox.BoundingBox.from_labelme``."""
    if not isinstance(s, dict) or not isinstance(s.get("label"), str) or not s["label"].strip():
        raise MinedetError('a shape is an object with a non-empty string "label"', file=f, record=rec)
    kind = s.get("shape_type") or "polygon"  # old LabelMe files write no shape_type for polygons
    if kind not in _LABELME_POINTS:
        raise MinedetError(f"shape_type {str(kind)[:40]!r} has no box; minedet reads rectangle and polygon", file=f, record=rec)
    least, what = _LABELME_POINTS[kind]
    pts = s.get("points")
    ok = isinstance(pts, list) and all(isinstance(q, list) and len(q) == 2 and all(_is_num(v) for v in q) for q in pts)
    if not ok or len(pts) < least or (kind == "rectangle" and len(pts) != 2):
        raise MinedetError(f"a {kind} needs {what}", file=f, record=rec)
    if not all(math.isfinite(v) for q in pts for v in q):  # before globox: min()/max() would hide a NaN
        raise MinedetError(f"box coordinates must be finite ({str(pts)[:60]})", file=f, record=rec)
    gb = _globox()
    try:
        b = gb.BoundingBox.from_labelme(s)
    except (gb.ParsingError, *_LIB_ERRORS) as e:
        raise MinedetError(f"not a LabelMe shape ({_lib_error(e)})", file=f, record=rec) from None
    return s["label"], _check_box(b.ltrb, size, f, rec)


def _labelme_file(p: Path, root: Path) -> ImageBoxes:
    from minedet.data.coco import read_json_file

    f = str(p)
    d = read_json_file(p)
    if not isinstance(d, dict):
        raise MinedetError("a LabelMe file is a JSON object", file=f)
    for k in ("imagePath", "imageWidth", "imageHeight", "shapes"):
        if k not in d:
            raise MinedetError(f'missing key "{k}"', file=f)
    if not isinstance(d["imagePath"], str) or not d["imagePath"].strip():
        raise MinedetError('"imagePath" must be a non-empty string', file=f)
    size = (d["imageWidth"], d["imageHeight"])
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise MinedetError(f'"imageWidth" and "imageHeight" must be positive integers, got {size[0]!r:.40}, {size[1]!r:.40}', file=f)
    if not isinstance(d["shapes"], list):
        raise MinedetError('"shapes" must be a list', file=f)
    boxes = [_labelme_shape(s, size, f, f"shapes[{i}]") for i, s in enumerate(d["shapes"])]
    name = _relative_name(d["imagePath"], p.parent, root)
    return ImageBoxes(f, None, name, size[0], size[1], boxes, records=[f"shapes[{i}]" for i in range(len(boxes))])


def read_labelme(sources: str | os.PathLike | Iterable[str | os.PathLike], *, images: str | os.PathLike | None = None) -> list[ImageBoxes]:
    """LabelMe JSON files (rectangles and polygons, each shape through
    ``globox.BoundingBox.from_labelme``), sorted by path; records are ``shapes[i]``.

    ``file_name`` is the image (``imagePath``, relative to its JSON file) relative to ``images``
    when given, else to the folder given in ``sources`` (a file's own folder); an ``imagePath``
    that is absolute or leaves that folder becomes its base name.
    """
    srcs = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    out = []
    for s in srcs:
        root = Path(images) if images is not None else (Path(s) if Path(s).is_dir() else Path(s).parent)
        out += [_labelme_file(p, root) for p in find_files([s], ".json", what="LabelMe JSON")]
    return sorted(out, key=lambda r: r.source)


# --------------------------------------------------------------------------------------------------
# CVAT for images 1.1


_CVAT_NOT_BOXES = ("polygon", "polyline", "points", "ellipse", "cuboid", "skeleton", "mask")


def _cvat_box_check(node: ET.Element, f: str, rec: str) -> None:
    for kind in _CVAT_NOT_BOXES:
        if node.find(f".//{kind}") is not None:
            raise MinedetError(f"<{kind}> is not a box; minedet reads <box> only (export boxes from CVAT)",
                               file=f, record=f"{rec} {kind}[0]")
    for i, b in enumerate(node.iter("box")):
        rot = b.get("rotation")
        try:
            rotated = rot is not None and float(rot) % 360.0 != 0.0
        except ValueError:
            rotated = True
        if rotated:
            raise MinedetError(f"box[{i}] is rotated ({rot!r}); only axis-aligned boxes are supported", file=f, record=rec)
        for k in ("label", "xtl", "ytl", "xbr", "ybr"):
            if b.get(k) is None:
                raise MinedetError(f'box[{i}] has no "{k}" attribute', file=f, record=rec)
        for k in ("xtl", "ytl", "xbr", "ybr"):
            try:
                float(b.get(k))
            except ValueError:
                raise MinedetError(f'box[{i}] "{k}" is not a number: {b.get(k)[:40]!r}', file=f, record=rec) from None


def read_cvat(path: str | os.PathLike) -> tuple[list[ImageBoxes], list[str]]:
    """A CVAT-for-images XML file (defusedxml, then ``globox.Annotation.from_cvat`` per ``<image>``).

    Returns:
        (images in file order, the label names of ``<meta>`` in their order, ``[]`` without meta).
    """
    f = str(path)
    root = parse_xml_safely(path)
    if root.tag != "annotations":
        raise MinedetError(f"root element is <{root.tag[:40]}>, expected <annotations> (CVAT for images)", file=f)
    if root.find("track") is not None:
        raise MinedetError("CVAT for video (<track>) is not supported; export 'CVAT for images 1.1'", file=f)
    meta = [(el.findtext("name") or "").strip() for el in root.iterfind("meta/*/labels/label")]
    gb = _globox()
    out = []
    for i, node in enumerate(root.findall("image")):
        rec = f"image[{i}] name={node.get('name')!r}"
        _cvat_box_check(node, f, rec)
        try:
            ann = gb.Annotation.from_cvat(node)
        except (gb.ParsingError, *_LIB_ERRORS) as e:
            raise MinedetError(f'an <image> needs "name", integer "width" and "height" ({_lib_error(e)})', file=f, record=rec) from None
        w, h = ann.image_size
        if w <= 0 or h <= 0:
            raise MinedetError("width/height must be positive", file=f, record=rec)
        boxes = [(str(b.label), _check_box(b.ltrb, (int(w), int(h)), f, f"{rec} box[{j}]")) for j, b in enumerate(ann.boxes)]
        out.append(ImageBoxes(f, rec, str(ann.image_id), int(w), int(h), boxes, records=[f"{rec} box[{j}]" for j in range(len(boxes))]))
    return out, [m for m in meta if m]


# --------------------------------------------------------------------------------------------------
# to COCO


def _class_list(images: Sequence[ImageBoxes], class_names: Sequence[str] | None) -> list[str]:
    if class_names is not None:
        names = [str(n).strip() for n in class_names]
        if not names or any(not n for n in names):
            raise MinedetError("class names must be non-empty")
        if len(set(names)) != len(names):
            raise MinedetError("class names repeat")
        return names
    names = sorted({lab for r in images for lab, _ in r.boxes})
    if not names:
        raise MinedetError("no boxes in any file, so no class names; pass them explicitly (--classes)")
    return names


def images_to_coco(
    images: Sequence[ImageBoxes], class_names: Sequence[str] | None = None, *, description: str = "", **info: Any
) -> dict:
    """Assemble a COCO dict from images read by the ``read_*`` functions.

    Categories get ids 1..K in ``class_names`` order (default: every name found, sorted), images
    ids 1..N in the given order, annotations ids 1..M in (image, box) order with
    ``bbox = [x1, y1, x2 - x1, y2 - y1]``, ``area = w * h``, ``iscrowd = 0`` and the image's
    ``extras``. A class not in the list, or two records naming the same image, is an error.
    """
    names = _class_list(images, class_names)
    cat_of = {n: i + 1 for i, n in enumerate(names)}
    imgs, anns = [], []
    seen: dict[str, str] = {}
    for img_id, r in enumerate(images, start=1):
        where = r.source + (f" ({r.record})" if r.record else "")
        if r.file_name in seen:
            raise MinedetError(f"file_name {r.file_name!r} also named by {seen[r.file_name]}", file=r.source, record=r.record)
        seen[r.file_name] = where
        imgs.append({"id": img_id, "file_name": r.file_name, "width": r.width, "height": r.height})
        for i, (lab, (x1, y1, x2, y2)) in enumerate(r.boxes):
            if lab not in cat_of:
                rec = r.records[i] if i < len(r.records) else f"{r.record + ' ' if r.record else ''}box[{i}]"
                raise MinedetError(f"class {lab!r} is not in the class list ({', '.join(names)})", file=r.source, record=rec)
            w, h = _r(x2 - x1), _r(y2 - y1)
            a = {"id": len(anns) + 1, "image_id": img_id, "category_id": cat_of[lab], "bbox": [x1, y1, w, h],
                 "area": _r(w * h), "iscrowd": 0}
            if i < len(r.extras):
                a.update(r.extras[i])
            anns.append(a)
    head = {"description": description or "converted by minedet", **info}
    return {"info": head, "images": imgs, "annotations": anns, "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}


def voc_to_coco(
    sources: str | os.PathLike | Iterable[str | os.PathLike],
    *,
    class_names: list[str] | None = None,
    image_ext_from_xml: bool = True,
) -> dict:
    """Pascal VOC XML files to one COCO dict (see :func:`images_to_coco`); annotations carry
    ``"difficult": 0|1``; boxes follow the 1-based convention of the module docstring."""
    recs = read_voc(sources, filename_from_stem=not image_ext_from_xml)
    return images_to_coco(recs, class_names, description="converted from Pascal VOC XML by minedet",
                          box_convention="x=xmin-1, w=xmax-xmin+1")


def convert_to_coco(
    fmt: str,
    sources: Sequence[str | os.PathLike],
    *,
    class_names: Sequence[str] | None = None,
    images: str | os.PathLike | None = None,
    names_file: str | os.PathLike | None = None,
    filename_from_stem: bool = False,
) -> dict:
    """Read ``sources`` in format ``fmt`` (one of :data:`FORMATS`) into one COCO dict.

    ``class_names`` fixes the categories (ids 1..K in that order); YOLO takes them from
    ``names_file`` (or finds ``data.yaml`` / ``classes.txt``) and CVAT from its ``<meta>`` when
    not given. ``images`` is the image folder (YOLO: where the images are; LabelMe: the root
    ``file_name`` is relative to). The result passes :func:`minedet.data.coco.validate_coco`.
    """
    from minedet.data.coco import validate_coco

    if fmt not in FORMATS:
        raise MinedetError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if fmt == "voc":
        d = voc_to_coco(sources, class_names=list(class_names) if class_names else None, image_ext_from_xml=not filename_from_stem)
    elif fmt == "yolo":
        if len(sources) != 1:
            raise MinedetError("YOLO takes one labels folder (or a root holding labels/ and images/)")
        recs, names = read_yolo(sources[0], images=images, names=names_file if class_names is None else class_names)
        d = images_to_coco(recs, names, description="converted from YOLO by minedet")
    elif fmt == "labelme":
        d = images_to_coco(read_labelme(sources, images=images), class_names, description="converted from LabelMe by minedet")
    else:
        recs = []
        meta: list[str] = []
        for p in find_files(sources, ".xml", what="CVAT XML"):
            r, m = read_cvat(p)
            recs += r
            meta = meta or m
        d = images_to_coco(recs, class_names if class_names is not None else (meta or None),
                           description="converted from CVAT for images by minedet")
    validate_coco(d, file="converted annotations", strict=True)  # a guard: every reader has applied these rules per shape
    return d


# --------------------------------------------------------------------------------------------------
# from COCO


def _annotations(data, *, voc: bool = False) -> tuple[list[tuple[dict, Any, list[dict]]], int]:
    """(image record, globox Annotation, its COCO annotations) per image, crowd boxes skipped; and
    the number skipped. ``voc``: boxes in VOC's 1-based frame."""
    gb = _globox()
    names = data.class_names
    out, n_crowd = [], 0
    for im in data.images:
        boxes, anns = [], []
        for a in data.anns_by_image[im["id"]]:
            if a.get("iscrowd"):
                n_crowd += 1
                continue
            x, y, w, h = a["bbox"]
            x1, y1 = (x + 1.0, y + 1.0) if voc else (x, y)
            if voc and (w < 1.0 or h < 1.0):
                raise MinedetError(f"a box under 1 px ({w:g}x{h:g}) has no 1-based inclusive VOC form",
                                   file=str(data.path), record=f"annotation id={a['id']}")
            boxes.append(gb.BoundingBox(label=names[data.label_of(a["category_id"])], xmin=x1, ymin=y1, xmax=x + w, ymax=y + h))
            anns.append(a)
        out.append((im, gb.Annotation(str(im["file_name"]), (int(im["width"]), int(im["height"])), boxes), anns))
    return out, n_crowd


def _fix_numbers(el: ET.Element) -> ET.Element:
    for node in el.iter():
        if node.tag in ("xmin", "ymin", "xmax", "ymax") and node.text:
            node.text = _num_text(float(node.text))
        if node.tag == "box":
            for k in ("xtl", "ytl", "xbr", "ybr"):
                node.set(k, _num_text(float(node.get(k))))
    return el


def _xml_bytes(root: ET.Element) -> bytes:
    ET.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"


def cvat_xml(
    data,
    *,
    image_ids: Iterable[int] | None = None,
    task_name: str = "minedet",
    box_source: Callable[[dict], str] | None = None,
) -> bytes:
    """A CVAT-for-images 1.1 ``annotations.xml`` of ``data`` (a CocoData): ``<version>``, ``<meta>``
    with the labels (type bbox), then per image ``<image id name width height>`` (ids 0..N-1 in
    order) with ``globox``'s ``<box label xtl ytl xbr ybr>`` (continuous pixels) plus
    ``occluded="0" z_order="0" source=...`` (``box_source(annotation)``, default ``"manual"``).

    ``image_ids``: only these images (default all).
    """
    keep = None if image_ids is None else set(image_ids)
    items, _ = _annotations(data)
    items = [t for t in items if keep is None or t[0]["id"] in keep]
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "name").text = task_name
    ET.SubElement(task, "size").text = str(len(items))
    ET.SubElement(task, "mode").text = "annotation"
    labels = ET.SubElement(task, "labels")
    for n in data.class_names:
        lab = ET.SubElement(labels, "label")
        ET.SubElement(lab, "name").text = n
        ET.SubElement(lab, "type").text = "bbox"
        ET.SubElement(lab, "attributes")
    for k, (im, ann, anns) in enumerate(items):
        node = ann.to_cvat()
        node.attrib = {"id": str(k), **node.attrib}
        for b, a in zip(node.iter("box"), anns):
            b.set("occluded", "0")
            b.set("z_order", "0")
            b.set("source", box_source(a) if box_source else "manual")
        root.append(_fix_numbers(node))
    return _xml_bytes(root)


def _stem_path(out: Path, file_name: str, suffix: str, taken: dict[Path, str]) -> Path:
    p = out / Path(file_name.replace("\\", "/")).with_suffix(suffix)
    if p in taken:
        raise MinedetError(f"images {taken[p]!r} and {file_name!r} would share the label file {p.name!r}")
    taken[p] = file_name
    return p


def coco_to_format(data, fmt: str, out_dir: str | os.PathLike, *, inputs: Sequence[str | os.PathLike] = ()) -> dict[str, Any]:
    """Write ``data`` (a CocoData) as ``fmt`` files under ``out_dir``; every file is built in memory
    first and checked against ``inputs`` (:func:`minedet.io.check_outputs`: no output replaces an
    input), then each is written atomically (bad input writes nothing).

    Layout: ``yolo``: ``labels/<stem>.txt`` per image (empty for an image without boxes, class =
    index in ``data.class_names``) and ``data.yaml`` (``names``, ``nc``); ``voc``:
    ``Annotations/<stem>.xml`` per image (``<filename>`` = ``file_name``, 1-based boxes,
    ``<difficult>``); ``labelme``: ``<stem>.json`` per image with ``imagePath`` = the image's base
    name (the JSON belongs beside its image); ``cvat``: ``annotations.xml`` (:func:`cvat_xml`).
    ``<stem>`` keeps the sub-folders of ``file_name``.

    Returns ``{"files": [paths], "images": N, "boxes": M, "crowd_skipped": C}``.
    """
    from minedet.io import check_outputs, write_bytes_atomic

    if fmt not in FORMATS:
        raise MinedetError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise MinedetError("output path exists and is not a folder", file=str(out))
    items, n_crowd = _annotations(data, voc=fmt == "voc")
    files: dict[Path, bytes] = {}
    taken: dict[Path, str] = {}
    if fmt == "cvat":
        files[out / "annotations.xml"] = cvat_xml(data)
    elif fmt == "yolo":
        import yaml

        label_to_id = {n: i for i, n in enumerate(data.class_names)}
        for im, ann, _ in items:
            text = ann.to_yolo_darknet(label_to_id=label_to_id)
            files[_stem_path(out / "labels", im["file_name"], ".txt", taken)] = (text + "\n" if text else "").encode()
        files[out / "data.yaml"] = yaml.safe_dump({"names": list(data.class_names), "nc": data.num_classes},
                                                  sort_keys=False, allow_unicode=True).encode()
    elif fmt == "voc":
        for im, ann, anns in items:
            node = ann.to_pascal_voc()
            for obj, a in zip(node.iter("object"), anns):
                d = ET.Element("difficult")
                d.text = str(int(a.get("difficult", 0) or 0))
                obj.insert(1, d)
            files[_stem_path(out / "Annotations", im["file_name"], ".xml", taken)] = _xml_bytes(_fix_numbers(node))
    else:
        for im, ann, _ in items:
            d = ann.to_labelme()
            d["imagePath"] = posixpath.basename(str(im["file_name"]).replace("\\", "/"))
            d = {"version": "5.4.1", "flags": {}, **d}
            d["shapes"] = [{**s, "group_id": None, "description": "", "flags": {}} for s in d["shapes"]]
            files[_stem_path(out, im["file_name"], ".json", taken)] = (json.dumps(d, indent=1, allow_nan=False) + "\n").encode()
    check_outputs(inputs, files=files, folders=[out])
    for p, b in files.items():
        write_bytes_atomic(p, b)
    return {"files": sorted(files), "images": len(items), "boxes": sum(len(t[2]) for t in items), "crowd_skipped": n_crowd}
