"""Annotation formats through globox: Pascal VOC (1-based convention, classes, errors, fuzzing), YOLO, LabelMe and
CVAT into COCO and back to the pixel, images without boxes, and bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minedet.cli import main
from minedet.data.coco import load_coco, save_coco, validate_coco
from minedet.data.formats import find_voc_xml, read_voc_file, voc_to_coco
from minedet.errors import MinedetError

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def voc(filename: str, w: int, h: int, objects: list[tuple[str, int, int, int, int, int]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><pose>Left</pose><truncated>0</truncated><difficult>{d}</difficult>"
        f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for n, x1, y1, x2, y2, d in objects
    )
    return (f'<?xml version="1.0"?>\n<annotation><folder>VOC2007</folder><filename>{filename}</filename>'
            f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>")


@pytest.fixture()
def voc_root(tmp_path: Path) -> Path:
    ann = tmp_path / "VOC2007" / "Annotations"
    ann.mkdir(parents=True)
    (tmp_path / "VOC2007" / "JPEGImages").mkdir()
    (ann / "000002.xml").write_text(voc("000002.jpg", 100, 50, [("dog", 1, 1, 100, 50, 0), ("cat", 10, 20, 10, 20, 1)]))
    (ann / "000001.xml").write_text(voc("000001.jpg", 30, 40, [("cat", 5, 6, 14, 26, 0)]))
    (ann / "000003.xml").write_text(voc("000003.jpg", 30, 40, []))
    return tmp_path / "VOC2007"


def test_convention_one_based_inclusive(voc_root: Path) -> None:
    d = voc_to_coco(voc_root)
    assert [im["file_name"] for im in d["images"]] == ["000001.jpg", "000002.jpg", "000003.jpg"]  # sorted paths
    assert [im["id"] for im in d["images"]] == [1, 2, 3]
    assert d["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    a = {x["id"]: x for x in d["annotations"]}
    assert a[1]["bbox"] == [4.0, 5.0, 10.0, 21.0] and a[1]["image_id"] == 1  # xmin-1, w = xmax-xmin+1
    assert a[2]["bbox"] == [0.0, 0.0, 100.0, 50.0] and a[2]["category_id"] == 2  # full image exactly
    assert a[3]["bbox"] == [9.0, 19.0, 1.0, 1.0] and a[3]["difficult"] == 1  # one pixel, difficult kept
    assert all(x["iscrowd"] == 0 and x["area"] == x["bbox"][2] * x["bbox"][3] for x in d["annotations"])
    data = validate_coco(d, file="voc", strict=True)  # a full-image box needs no clipping
    assert data.anns_by_image[3] == []


def test_class_names_order_and_unknown_class(voc_root: Path) -> None:
    d = voc_to_coco(voc_root, class_names=["dog", "cat", "bird"])
    assert [c["name"] for c in d["categories"]] == ["dog", "cat", "bird"]
    assert d["annotations"][0]["category_id"] == 2
    with pytest.raises(MinedetError, match=r"000002.xml: object\[0\]: class 'dog' is not in the class list"):
        voc_to_coco(voc_root, class_names=["cat"])
    with pytest.raises(MinedetError, match="class names repeat"):
        voc_to_coco(voc_root, class_names=["cat", "cat"])


def test_filename_from_stem(voc_root: Path) -> None:
    p = voc_root / "Annotations" / "000001.xml"
    p.write_text(p.read_text().replace("000001.jpg", "wrong.png"))
    assert voc_to_coco([p])["images"][0]["file_name"] == "wrong.png"
    assert voc_to_coco([p], image_ext_from_xml=False)["images"][0]["file_name"] == "000001.jpg"


def test_find_xml(voc_root: Path, tmp_path: Path) -> None:
    ann = voc_root / "Annotations"
    assert find_voc_xml(voc_root) == find_voc_xml(ann) == sorted(ann.glob("*.xml"))
    assert len(find_voc_xml([ann / "000001.xml", ann, ann / "000001.xml"])) == 3  # duplicates removed
    (tmp_path / "empty").mkdir()
    with pytest.raises(MinedetError, match="no .xml files"):
        find_voc_xml(tmp_path / "empty")
    with pytest.raises(MinedetError, match="not found"):
        find_voc_xml(tmp_path / "missing")


def test_duplicate_file_name_is_an_error(voc_root: Path) -> None:
    (voc_root / "Annotations" / "000004.xml").write_text(voc("000001.jpg", 30, 40, []))
    with pytest.raises(MinedetError, match="also named by"):
        voc_to_coco(voc_root)


@pytest.mark.parametrize(
    "text,fragment",
    [
        ('<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]><annotation>&e;</annotation>', "DOCTYPE/ENTITY"),
        ("<annotation><size><width>4</width><height>4</height></size>", "line 1 column 59: not well-formed XML"),
        ("<notvoc/>", "expected <annotation>"),
        ("<annotation><filename>a</filename><size><width>4</width></size></annotation>", "size: missing <height>"),
        ("<annotation><filename>a</filename><size><width>4.5</width><height>4</height></size></annotation>", "positive integer"),
        ("<annotation><size><width>4</width><height>4</height></size></annotation>", "missing <filename>"),
        ("<annotation><filename>a</filename><size><width>4</width><height>4</height></size>"
         "<object><bndbox><xmin>1</xmin></bndbox></object></annotation>", "object[0]: missing <name>"),
        ("<annotation><filename>a</filename><size><width>4</width><height>4</height></size>"
         "<object><name>a</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>nan</xmax><ymax>2</ymax></bndbox></object></annotation>",
         "object[0]: <xmax> is not finite"),
        ("<annotation><filename>a</filename><size><width>4</width><height>4</height></size>"
         "<object><name>a</name><difficult>yes</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>",
         "<difficult> must be 0 or 1"),
    ],
)
def test_bad_xml(tmp_path: Path, text: str, fragment: str) -> None:
    p = tmp_path / "bad.xml"
    p.write_text(text)
    with pytest.raises(MinedetError) as e:
        voc_to_coco([p], class_names=["a"])
    msg = str(e.value)
    assert fragment in msg and str(p) in msg and "\n" not in msg


def test_no_objects_and_no_classes(tmp_path: Path) -> None:
    p = tmp_path / "a.xml"
    p.write_text(voc("a.jpg", 4, 4, []))
    with pytest.raises(MinedetError, match="no class names"):
        voc_to_coco([p])
    assert voc_to_coco([p], class_names=["x"])["annotations"] == []


def test_read_single_file(voc_root: Path) -> None:
    r = read_voc_file(voc_root / "Annotations" / "000001.xml")
    assert (r.file_name, r.width, r.height) == ("000001.jpg", 30, 40)
    assert r.boxes == [("cat", (4.0, 5.0, 14.0, 26.0))] and r.extras == [{"difficult": 0}]  # xyxy, x1 = xmin - 1


# ---------------------------------------------------------------------------------------------- fuzz

_tags = st.sampled_from(["annotation", "filename", "size", "width", "height", "object", "name", "bndbox",
                         "xmin", "ymin", "xmax", "ymax", "difficult"])
_leaf = st.sampled_from(["", "0", "1", "5", "-3", "1e400", "nan", "abc", "3.5", "&amp;", "<", "]]>"])
_xml = st.recursive(_leaf, lambda c: st.builds(lambda t, kids: f"<{t}>{''.join(kids)}</{t}>", _tags, st.lists(c, max_size=4)), max_leaves=20)


@FUZZ
@given(body=_xml, junk=st.binary(max_size=40))
def test_fuzz_voc_only_minedet_error(tmp_path: Path, body: str, junk: bytes) -> None:
    for i, data in enumerate((f"<annotation>{body}</annotation>".encode(), body.encode(), junk)):
        p = tmp_path / f"f{i}.xml"
        p.write_bytes(data)
        try:
            d = voc_to_coco([p])
        except MinedetError as e:
            assert "\n" not in str(e)
            continue
        for a in d["annotations"]:
            assert a["bbox"][2] >= 1 and a["bbox"][3] >= 1


# ---------------------------------------------------------------------------------------------- every format

CLASSES = ["cat", "dog"]
# (file_name, width, height, [(class, [x, y, w, h])]): integer and fractional boxes, a full-image box, an image
# without boxes, and an image in a sub-folder
SCENE = [
    ("a.png", 64, 48, [("cat", [10.0, 20.0, 30.0, 12.0]), ("dog", [0.5, 1.25, 12.75, 8.5])]),
    ("b.png", 40, 20, []),
    ("sub/c.png", 33, 17, [("dog", [0.0, 0.0, 33.0, 17.0]), ("cat", [3.0, 4.0, 1.0, 1.0])]),
]


def _write_images(root: Path, scene=SCENE) -> Path:
    for name, w, h, _ in scene:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h), (90, 90, 90)).save(p)
    return root


def _coco(scene=SCENE) -> dict:
    anns = []
    for i, (_, _, _, boxes) in enumerate(scene, start=1):
        for c, b in boxes:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": CLASSES.index(c) + 1, "bbox": b,
                         "area": b[2] * b[3], "iscrowd": 0})
    return {"images": [{"id": i, "file_name": n, "width": w, "height": h} for i, (n, w, h, _) in enumerate(scene, start=1)],
            "annotations": anns, "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}


def _boxes_by_file(d: dict) -> dict[str, tuple[int, int, list[tuple[str, list[float]]]]]:
    names = {c["id"]: c["name"] for c in d["categories"]}
    out = {im["file_name"]: (im["width"], im["height"], []) for im in d["images"]}
    by_id = {im["id"]: im["file_name"] for im in d["images"]}
    for a in d["annotations"]:
        out[by_id[a["image_id"]]][2].append((names[a["category_id"]], a["bbox"]))
    return out


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _from_args(fmt: str, out_dir: Path, images: Path) -> list[str]:
    if fmt == "yolo":
        return ["--from", "yolo", str(out_dir), "--images", str(images)]
    if fmt == "cvat":
        return ["--from", "cvat", str(out_dir / "annotations.xml")]
    return ["--from", fmt, str(out_dir)]


@pytest.mark.parametrize("fmt", ["yolo", "voc", "labelme", "cvat"])
def test_coco_to_format_and_back_agrees_to_the_pixel(fmt: str, tmp_path: Path, capsys) -> None:
    images = _write_images(tmp_path / "images")
    src = tmp_path / "src.json"
    save_coco(src, _coco())
    out_dir = tmp_path / fmt
    rc, out, err = _run(["data", "convert", str(src), "--to", fmt, "--out", str(out_dir)], capsys)
    assert rc == 0, err
    assert "3 images, 4 boxes" in out
    back = tmp_path / "back.json"
    rc, out, err = _run(["data", "convert", *_from_args(fmt, out_dir, images), "--out", str(back)], capsys)
    assert rc == 0, err
    # the converted file passes `data check` with its images, strictly (no clipping, no dropped box)
    rc, out, err = _run(["data", "check", str(back), "--images", str(images), "--strict"], capsys)
    assert rc == 0, err
    got, want = _boxes_by_file(json.loads(back.read_text())), _boxes_by_file(_coco())
    assert set(got) == set(want)
    for name, (w, h, boxes) in want.items():
        gw, gh, gboxes = got[name]
        assert (gw, gh) == (w, h)
        assert [c for c, _ in gboxes] == [c for c, _ in boxes], name
        for (_, g), (_, b) in zip(gboxes, boxes):
            assert g == pytest.approx(b, abs=1e-6), (fmt, name)  # to the pixel, and far below
    assert got["b.png"][2] == []  # the image without boxes survives the round trip


def test_written_files_look_like_the_format(tmp_path: Path) -> None:
    from minedet.data.formats import coco_to_format

    data = validate_coco(_coco(), file="scene.json")
    coco_to_format(data, "yolo", tmp_path / "y")
    assert (tmp_path / "y" / "labels" / "b.txt").read_text() == ""  # an image without boxes: an empty label file
    first = (tmp_path / "y" / "labels" / "a.txt").read_text().splitlines()[0].split()
    assert first[0] == "0" and [float(v) for v in first[1:]] == pytest.approx([25 / 64, 26 / 48, 30 / 64, 12 / 48])
    assert "names:" in (tmp_path / "y" / "data.yaml").read_text()
    coco_to_format(data, "voc", tmp_path / "v")
    xml = (tmp_path / "v" / "Annotations" / "a.xml").read_text()
    assert "<xmin>11</xmin>" in xml and "<xmax>40</xmax>" in xml and "<difficult>0</difficult>" in xml  # 1-based, integers
    coco_to_format(data, "labelme", tmp_path / "l")
    lm = json.loads((tmp_path / "l" / "sub" / "c.json").read_text())
    assert lm["imagePath"] == "c.png" and lm["shapes"][0]["shape_type"] == "rectangle"
    coco_to_format(data, "cvat", tmp_path / "c")
    cv = (tmp_path / "c" / "annotations.xml").read_text()
    assert "<version>1.1</version>" in cv and 'xtl="10" ytl="20" xbr="40" ybr="32"' in cv and '<image id="1" name="b.png"' in cv


def _hand_made(fmt: str, root: Path) -> list[str]:
    """The same two images as a user's tool would write them: one box [10, 5, 20, 10] (COCO xywh) on a 40x20
    image, and an image without boxes. Returns the `convert --from` arguments."""
    _write_images(root / "images", [("p.png", 40, 20, []), ("q.png", 40, 20, [])])
    if fmt == "yolo":
        (root / "labels").mkdir()
        (root / "labels" / "p.txt").write_text("1 0.5 0.5 0.5 0.5\n")
        (root / "classes.txt").write_text("cat\ndog\n")  # q.png has no label file: no boxes
        return ["--from", "yolo", str(root)]
    if fmt == "voc":
        (root / "ann").mkdir()
        (root / "ann" / "p.xml").write_text(voc("p.png", 40, 20, [("dog", 11, 6, 30, 15, 0)]))
        (root / "ann" / "q.xml").write_text(voc("q.png", 40, 20, []))
        return ["--from", "voc", str(root / "ann"), "--classes", "cat,dog"]
    if fmt == "labelme":
        for n, shapes in (("p", [{"label": "dog", "points": [[30, 15], [10, 5]], "shape_type": "rectangle"}]), ("q", [])):
            (root / "images" / f"{n}.json").write_text(json.dumps(
                {"version": "5.4.1", "imagePath": f"{n}.png", "imageWidth": 40, "imageHeight": 20, "imageData": None, "shapes": shapes}))
        return ["--from", "labelme", str(root / "images"), "--classes", "cat,dog"]
    (root / "annotations.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?><annotations><version>1.1</version><meta><task><labels>'
        "<label><name>cat</name></label><label><name>dog</name></label></labels></task></meta>"
        '<image id="0" name="p.png" width="40" height="20"><box label="dog" occluded="0" xtl="10" ytl="5" xbr="30" ybr="15" '
        'z_order="0"/></image><image id="1" name="q.png" width="40" height="20"/></annotations>')
    return ["--from", "cvat", str(root / "annotations.xml")]


@pytest.mark.parametrize("fmt", ["yolo", "voc", "labelme", "cvat"])
def test_hand_made_files_convention_and_image_without_boxes(fmt: str, tmp_path: Path, capsys) -> None:
    args = _hand_made(fmt, tmp_path)
    out = tmp_path / "x.json"
    rc, _, err = _run(["data", "convert", *args, "--out", str(out)], capsys)
    assert rc == 0, err
    d = load_coco(out, strict=True, image_root=tmp_path / "images", check_images=True)
    assert d.class_names == ["cat", "dog"]
    by_name = {im["file_name"]: im["id"] for im in d.images}
    assert set(by_name) == {"p.png", "q.png"}
    p = d.anns_by_image[by_name["p.png"]]
    assert [(a["bbox"], a["category_id"]) for a in p] == [([10.0, 5.0, 20.0, 10.0], 2)]
    assert d.anns_by_image[by_name["q.png"]] == []


def _rect(p: list[float], q: list[float], label: str = "cat") -> dict:
    return {"label": label, "points": [p, q], "shape_type": "rectangle"}


def _labelme(shapes: list[dict], w: int = 8, h: int = 8) -> str:
    return json.dumps({"version": "5.4.1", "imagePath": "a.png", "imageWidth": w, "imageHeight": h, "imageData": None, "shapes": shapes})


def _billion_laughs() -> str:
    ents = '<!ENTITY lol "lol">' + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
                                              for i in range(1, 10))
    return f'<?xml version="1.0"?><!DOCTYPE annotation [{ents}]><annotation><filename>&lol9;</filename></annotation>'


BAD_CASES = {
    # name: (format, files to write {relative path: text}, extra args, fragment of the one-line message)
    "voc_missing": ("voc", {}, ["{root}/nope.xml"], "nope.xml: file or folder not found"),
    "voc_unknown_class": ("voc", {"a.xml": voc("a.png", 8, 8, [("cow", 1, 1, 4, 4, 0)])},
                          ["{root}/a.xml", "--classes", "cat,dog"], "a.xml: object[0]: class 'cow' is not in the class list"),
    "voc_malformed": ("voc", {"a.xml": "<annotation><size>"}, ["{root}/a.xml"], "not well-formed XML"),
    "voc_billion_laughs": ("voc", {"a.xml": _billion_laughs()}, ["{root}/a.xml"], "DOCTYPE/ENTITY declarations are not allowed"),
    "cvat_missing": ("cvat", {}, ["{root}/annotations.xml"], "annotations.xml: file or folder not found"),
    "cvat_malformed": ("cvat", {"annotations.xml": "<annotations><image name='a'"}, ["{root}/annotations.xml"], "not well-formed XML"),
    "cvat_billion_laughs": ("cvat", {"annotations.xml": _billion_laughs().replace("annotation", "annotations")},
                            ["{root}/annotations.xml"], "DOCTYPE/ENTITY declarations are not allowed"),
    "cvat_unknown_class": ("cvat", {"annotations.xml": '<annotations><image name="a.png" width="8" height="8">'
                                    '<box label="cow" xtl="1" ytl="1" xbr="4" ybr="4"/></image></annotations>'},
                           ["{root}/annotations.xml", "--classes", "cat,dog"], "box[0]: class 'cow' is not in the class list"),
    "cvat_rotated": ("cvat", {"annotations.xml": '<annotations><image name="a.png" width="8" height="8">'
                              '<box label="cat" xtl="1" ytl="1" xbr="4" ybr="4" rotation="30"/></image></annotations>'},
                     ["{root}/annotations.xml"], "is rotated"),
    "labelme_missing": ("labelme", {}, ["{root}/nope"], "nope: file or folder not found"),
    "labelme_not_json": ("labelme", {"a.json": "{not json"}, ["{root}/a.json"], "a.json: line 1 column 2: not valid JSON"),
    "labelme_unknown_class": ("labelme", {"a.json": json.dumps({"imagePath": "a.png", "imageWidth": 8, "imageHeight": 8, "shapes": [
        {"label": "cow", "points": [[1, 1], [4, 4]], "shape_type": "rectangle"}]})},
        ["{root}/a.json", "--classes", "cat,dog"], "a.json: shapes[0]: class 'cow' is not in the class list"),
    "yolo_missing": ("yolo", {}, ["{root}/nope"], "nope: YOLO labels folder not found"),
    "yolo_unknown_class": ("yolo", {"labels/a.txt": "0 0.5 0.5 0.1 0.1\n5 0.5 0.5 0.2 0.2\n", "classes.txt": "cat\ndog\n"},
                           ["{root}"], "a.txt: line 2: class '5' is not in the class list (0..1)"),
    "yolo_four_values": ("yolo", {"labels/a.txt": "0 0.5 0.5 0.1\n", "classes.txt": "cat\ndog\n"},
                         ["{root}"], "a.txt: line 1: expected 'class cx cy w h' (5 values), got 4"),
    "yolo_no_names": ("yolo", {"labels/a.txt": "0 0.5 0.5 0.1 0.1\n"}, ["{root}"], "YOLO needs class names"),
    "yolo_label_without_image": ("yolo", {"labels/zz.txt": "0 0.5 0.5 0.1 0.1\n", "classes.txt": "cat\n"},
                                 ["{root}"], "zz.txt: label file without an image"),
    # degenerate shapes (issue 49.3): refused, one line naming file + shape + rule, never dropped or made up
    "labelme_polygon_one_point": ("labelme", {"a.json": _labelme([_rect([1, 1], [4, 4]), {"label": "cat", "points": [[2, 2]],
                                  "shape_type": "polygon"}])}, ["{root}/a.json"], "a.json: shapes[1]: a polygon needs three or more"),
    "labelme_rectangle_one_point": ("labelme", {"a.json": _labelme([{"label": "cat", "points": [[2, 2]], "shape_type": "rectangle"}])},
                                    ["{root}/a.json"], "a.json: shapes[0]: a rectangle needs two [x, y] points"),
    "labelme_rectangle_zero_size": ("labelme", {"a.json": _labelme([_rect([2, 2], [2, 5])])}, ["{root}/a.json"],
                                    "a.json: shapes[0]: box has no area"),
    "labelme_point_shape": ("labelme", {"a.json": _labelme([{"label": "cat", "points": [[2, 2]], "shape_type": "point"}])},
                            ["{root}/a.json"], "a.json: shapes[0]: shape_type 'point' has no box"),
    "labelme_nan": ("labelme", {"a.json": _labelme([_rect([1, 1], [4, 4])]).replace("4]", "NaN]", 1)}, ["{root}/a.json"],
                    "a.json: shapes[0]: box coordinates must be finite"),
    "yolo_zero_width": ("yolo", {"labels/a.txt": "0 0.5 0.5 0.1 0.1\n0 0.5 0.5 0 0.1\n", "classes.txt": "cat\n"}, ["{root}"],
                        "a.txt: line 2: box width and height must be > 0"),
    "yolo_nan": ("yolo", {"labels/a.txt": "0 nan 0.5 0.1 0.1\n", "classes.txt": "cat\n"}, ["{root}"], "a.txt: line 1: box values must be finite"),
    "yolo_negative": ("yolo", {"labels/a.txt": "0 0.5 0.5 0.1 -0.1\n", "classes.txt": "cat\n"}, ["{root}"], "a.txt: line 1: box width"),
    # issue 49.7: the label file and line, never "converted annotations: annotation id=1"
    "yolo_outside_image": ("yolo", {"labels/a.txt": "0 0.5 0.5 0.1 0.1\n\n0 2.0 0.5 0.1 0.1\n", "classes.txt": "cat\n"}, ["{root}"],
                           "a.txt: line 3: box (15.6,3.6,16.4,4.4) lies more than 1 px outside its 8x8 image"),
    "voc_outside_image": ("voc", {"a.xml": voc("a.png", 8, 8, [("cat", 1, 1, 4, 4, 0), ("cat", 12, 1, 14, 4, 0)])}, ["{root}/a.xml"],
                          "a.xml: object[1]: box (11,0,14,4) lies more than 1 px outside its 8x8 image"),
    "cvat_zero_size": ("cvat", {"annotations.xml": '<annotations><image name="a.png" width="8" height="8">'
                                '<box label="cat" xtl="1" ytl="1" xbr="1" ybr="4"/></image></annotations>'},
                       ["{root}/annotations.xml"], "image[0] name='a.png' box[0]: box has no area"),
    "cvat_polygon": ("cvat", {"annotations.xml": '<annotations><image name="a.png" width="8" height="8">'
                              '<polygon label="cat" points="1,1;2,2"/></image></annotations>'},
                     ["{root}/annotations.xml"], "image[0] name='a.png' polygon[0]: <polygon> is not a box"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_one_line_exit_2(case: str, tmp_path: Path, capsys) -> None:
    fmt, files, extra, fragment = BAD_CASES[case]
    root = tmp_path / "in"
    _write_images(root / "images", [("a.png", 8, 8, [])])
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = [a.format(root=root) for a in extra]
    rc, _, err = _run(["data", "convert", "--from", fmt, *args, "--out", str(out_dir / "x.json")], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]
    assert not any(out_dir.iterdir()), "nothing may be written for bad input"


def test_to_format_bad_input(tmp_path: Path, capsys) -> None:
    d = _coco()
    d["annotations"].append({"id": 99, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0.5, 3], "area": 1.5, "iscrowd": 0})
    src = tmp_path / "s.json"
    save_coco(src, d)
    rc, _, err = _run(["data", "convert", str(src), "--to", "voc", "--out", str(tmp_path / "v")], capsys)
    assert rc == 2 and "annotation id=99" in err and "1-based" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "v").exists()  # every file is built before any is written
    rc, _, err = _run(["data", "convert", str(tmp_path / "missing.json"), "--to", "yolo", "--out", str(tmp_path / "y")], capsys)
    assert rc == 2 and "file not found" in err
    rc, _, err = _run(["data", "convert", str(src), "--from", "voc", "--to", "yolo", "--out", str(tmp_path / "y")], capsys)
    assert rc == 2 and "not both" in err


def test_labelme_polygon_is_its_extent_and_edge_boxes_are_clipped(tmp_path: Path, capsys) -> None:
    """A polygon's box is its extent; a box sticking out by <= 1 px (tool rounding) is clipped, never dropped."""
    (tmp_path / "a.json").write_text(_labelme([{"label": "cat", "points": [[1, 2], [5, 1], [3, 6]], "shape_type": "polygon"},
                                               _rect([7.5, -0.5], [8.6, 3])]))
    rc, out, err = _run(["data", "convert", "--from", "labelme", str(tmp_path / "a.json"), "--out", str(tmp_path / "x.json")], capsys)
    assert rc == 0, err
    d = json.loads((tmp_path / "x.json").read_text())
    assert [a["bbox"] for a in d["annotations"]] == [[1.0, 1.0, 4.0, 5.0], [7.5, 0.0, 0.5, 3.0]]


def test_to_format_refuses_a_box_it_would_drop(tmp_path: Path, capsys) -> None:
    d = _coco()
    d["annotations"].append({"id": 77, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0, 3], "area": 0, "iscrowd": 0})
    save_coco(tmp_path / "s.json", d, validate=False)
    rc, _, err = _run(["data", "convert", str(tmp_path / "s.json"), "--to", "yolo", "--out", str(tmp_path / "y")], capsys)
    assert rc == 2 and "annotation id=77" in err and "zero area" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "y").exists()
