"""Property-based tests of `minedet data convert` (issue 49): Hypothesis mutates a valid file of each format
(YOLO, Pascal VOC, LabelMe, CVAT XML, COCO JSON) -- a value replaced by a hostile one, a line repeated or
dropped, the file cut short -- and the command either exits 2 with exactly one line on stderr and writes
nothing, or exits 0 with one box per shape of the mutated file, each with positive size inside its image:
never a traceback, never a silently dropped or invented box. About 40 examples a format, a few seconds."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from minedet.cli import main

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
W, H = 40, 30
HOSTILE = ["0", "-1", "-0.5", "1e300", "-1e300", "nan", "NaN", "inf", "", "abc", "3.5", "0.5", "41", "100", "1", "2",
           "null", "true", '"x"', "[]", "{}", "0x10", "1e-9"]
_NUM = re.compile(r"-?\d+(?:\.\d+)?")

VALID = {
    "yolo": "0 0.5 0.5 0.25 0.4\n1 0.2 0.3 0.1 0.2\n",
    "voc": ('<annotation><filename>a.png</filename><size><width>40</width><height>30</height></size>'
            '<object><name>cat</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>20</xmax>'
            '<ymax>25</ymax></bndbox></object><object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin>'
            '<xmax>40</xmax><ymax>30</ymax></bndbox></object></annotation>'),
    "labelme": json.dumps({"imagePath": "a.png", "imageWidth": 40, "imageHeight": 30, "shapes": [
        {"label": "cat", "points": [[5, 6], [20, 25]], "shape_type": "rectangle"},
        {"label": "dog", "points": [[1, 1], [30, 2], [12, 20]], "shape_type": "polygon"}]}, indent=0),
    "cvat": ('<annotations><version>1.1</version><image id="0" name="a.png" width="40" height="30">'
             '<box label="cat" xtl="5" ytl="6" xbr="20" ybr="25"/>\n<box label="dog" xtl="0" ytl="0" xbr="40" ybr="30"/>'
             '</image></annotations>'),
    "coco": json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}],
                        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 6, 15, 19], "area": 285},
                                        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 40, 30]}],
                        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}, indent=0),
}


@st.composite
def mutated(draw, text: str) -> str:
    """``text`` with one mutation: a number replaced by a hostile token, a line repeated or dropped, or cut short."""
    kind = draw(st.sampled_from(["number", "number", "number", "repeat", "drop", "cut"]))
    if kind == "number":
        spans = [m.span() for m in _NUM.finditer(text)]
        a, b = draw(st.sampled_from(spans))
        return text[:a] + draw(st.sampled_from(HOSTILE)) + text[b:]
    lines = text.splitlines(keepends=True)
    i = draw(st.integers(0, len(lines) - 1))
    if kind == "repeat":
        return "".join(lines[: i + 1] + lines[i:])
    if kind == "drop":
        return "".join(lines[:i] + lines[i + 1:])
    return text[: draw(st.integers(0, len(text) - 1))]


def _shapes(fmt: str, text: str) -> int:
    """How many shapes the file holds, counted without minedet (the box count a correct conversion has)."""
    if fmt == "yolo":
        return sum(1 for ln in text.splitlines() if ln.strip())
    if fmt == "voc":
        return text.count("<object>")
    if fmt == "cvat":
        return text.count("<box ")
    d = json.loads(text)
    return len(d["shapes"]) if fmt == "labelme" else sum(1 for a in d["annotations"] if not a.get("iscrowd"))


def _convert(fmt: str, text: str, root: Path, capsys) -> tuple[int, str, Path]:
    Image.new("RGB", (W, H)).save(root / "a.png")
    out = root / "out"
    if fmt == "yolo":
        (root / "labels").mkdir()
        (root / "labels" / "a.txt").write_text(text)
        (root / "classes.txt").write_text("cat\ndog\n")
        argv = ["--from", "yolo", str(root / "labels"), "--images", str(root), "--out", str(out / "x.json")]
    elif fmt == "coco":
        (root / "in.json").write_text(text)
        argv = [str(root / "in.json"), "--to", "yolo", "--out", str(out)]
    else:
        name = {"voc": "a.xml", "labelme": "a.json", "cvat": "annotations.xml"}[fmt]
        (root / name).write_text(text)
        argv = ["--from", fmt, str(root / name), "--classes", "cat,dog", "--out", str(out / "x.json")]
    if fmt != "coco":  # into COCO: the output file's folder exists; out of COCO: the folder is made
        out.mkdir()
    capsys.readouterr()
    rc = main(["data", "convert", *argv])  # an exception other than MinedetError propagates: the test fails
    return rc, capsys.readouterr().err, out


def _boxes_written(fmt: str, out: Path) -> tuple[list[list[float]], tuple[int, int]]:
    """The boxes written and the image size they are in (a mutation may declare another valid size, e.g. 41 x 30)."""
    if fmt == "coco":  # YOLO lines back to pixel boxes
        boxes = []
        for ln in (out / "labels" / "a.txt").read_text().splitlines():
            cx, cy, w, h = (float(v) for v in ln.split()[1:])
            boxes.append([(cx - w / 2) * W, (cy - h / 2) * H, w * W, h * H])
        return boxes, (W, H)
    d = json.loads((out / "x.json").read_text())
    sizes = [(im["width"], im["height"]) for im in d["images"]]
    assert len(sizes) == 1 and all(isinstance(v, int) and v > 0 for v in sizes[0]), sizes
    return [a["bbox"] for a in d["annotations"]], sizes[0]


def _check(fmt: str, text: str, capsys) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rc, err, out = _convert(fmt, text, root, capsys)
        if rc == 2:
            lines = err.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("minedet: error: "), err
            assert not out.exists() or not any(out.rglob("*")), "bad input wrote something"
            return
        assert rc == 0, err
        boxes, (iw, ih) = _boxes_written(fmt, out)
        assert len(boxes) == _shapes(fmt, text), (text, boxes)  # none dropped, none made up
        for x, y, w, h in boxes:
            assert w > 0 and h > 0 and x >= -1e-6 and y >= -1e-6 and x + w <= iw + 1e-4 and y + h <= ih + 1e-4, (text, boxes)


def test_the_valid_files_convert_to_every_box(capsys) -> None:
    for fmt, text in VALID.items():
        _check(fmt, text, capsys)


@FUZZ
@given(text=mutated(VALID["yolo"]))
def test_fuzz_yolo(text: str, capsys) -> None:
    _check("yolo", text, capsys)


@FUZZ
@given(text=mutated(VALID["voc"]))
def test_fuzz_voc(text: str, capsys) -> None:
    _check("voc", text, capsys)


@FUZZ
@given(text=mutated(VALID["labelme"]))
def test_fuzz_labelme(text: str, capsys) -> None:
    _check("labelme", text, capsys)


@FUZZ
@given(text=mutated(VALID["cvat"]))
def test_fuzz_cvat(text: str, capsys) -> None:
    _check("cvat", text, capsys)


@FUZZ
@given(text=mutated(VALID["coco"]))
def test_fuzz_coco(text: str, capsys) -> None:
    _check("coco", text, capsys)


def test_a_file_declaring_another_valid_size_converts_in_that_size(capsys) -> None:
    """Hypothesis found it: a LabelMe file (or CVAT image) declaring 41 x 30 is a valid file of another size, not a
    bad one; its boxes are written in the size it declares."""
    assert '"imageWidth": 40' in VALID["labelme"] and 'width="40"' in VALID["cvat"]
    _check("labelme", VALID["labelme"].replace('"imageWidth": 40', '"imageWidth": 41'), capsys)
    _check("cvat", VALID["cvat"].replace('width="40"', 'width="41"'), capsys)
