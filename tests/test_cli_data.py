"""`minedet data ...`: the bad-input corpus (one file per rule) and the happy paths of every subcommand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minedet.cli import main
from minedet.data.coco import load_coco, save_coco
from minedet.data.splits import check_hidden_matches, synthetic_coco

BAD = Path(__file__).parent / "bad_inputs"

# file -> (extra CLI arguments, expected message fragment). Every file in tests/bad_inputs is here
# (except the helpers in HELPERS); "{dir}" is the corpus folder, "{out}" a fresh output path.
CORPUS: dict[str, tuple[list[str], str]] = {
    "not_json.json": ([], "not valid JSON"),
    "not_utf8.json": ([], "not UTF-8"),
    "top_level_list.json": ([], "top level must be a JSON object"),
    "missing_images.json": ([], 'missing top-level key "images"'),
    "missing_annotations.json": ([], 'missing top-level key "annotations"'),
    "missing_categories.json": ([], 'missing top-level key "categories"'),
    "images_not_list.json": ([], '"images" must be a list'),
    "image_missing_file_name.json": ([], 'image id=1: missing key "file_name"'),
    "image_not_object.json": ([], "images[2]: image must be an object"),
    "annotation_missing_bbox.json": ([], 'annotation id=1: missing key "bbox"'),
    "category_missing_name.json": ([], 'categories[0]: missing key "name"'),
    "duplicate_image_id.json": ([], "image id=1: duplicate image id"),
    "duplicate_annotation_id.json": ([], "annotation id=1: duplicate annotation id"),
    "duplicate_category_id.json": ([], "category id=1: duplicate category id"),
    "duplicate_category_name.json": ([], "duplicate category name"),
    "image_id_not_int.json": ([], "images[0]: image id must be an integer"),
    "unknown_image_id.json": ([], "image_id 99 is not an image in this file"),
    "unknown_category_id.json": ([], "category_id 5 is not a category in this file"),
    "bbox_three_numbers.json": ([], "bbox must be a list of 4 numbers"),
    "bbox_strings.json": ([], "bbox must be a list of 4 numbers"),
    "bbox_nan.json": ([], "bbox numbers must be finite"),
    "bbox_infinite.json": ([], "bbox numbers must be finite"),
    "bbox_negative_size.json": ([], "negative width/height"),
    "box_outside_image.json": ([], "lies entirely outside its 8x8 image"),
    "image_zero_width.json": ([], "width/height must be positive integers"),
    "image_float_height.json": ([], "width/height must be positive integers"),
    "file_name_absolute.json": ([], "is absolute"),
    "file_name_escapes.json": ([], "escapes the image root"),
    "categories_empty.json": ([], '"categories" is empty'),
    "iscrowd_bad.json": ([], "iscrowd must be 0 or 1"),
    "area_negative.json": ([], "area must be a finite number >= 0"),
    "clipped_box.json": (["--strict"], "extends outside its 8x8 image (strict mode)"),
    "zero_area_box.json": (["--strict"], "zero area"),
    "image_file_missing.json": (["--images", "{dir}/images"], "not found"),
    "image_file_corrupt.json": (["--images", "{dir}/images"], "cannot be decoded"),
    "image_file_wrong_size.json": (["--images", "{dir}/images"], "is 4x4 but the record says 8x8"),
    "supervision_wrong_count.txt": ([], "the file was made for another dataset"),
    "supervision_out_of_range.txt": ([], "position 5 outside 0..0"),
    "supervision_no_percent.txt": ([], "no entry for percent 1.0"),
    "voc_doctype.xml": ([], "DOCTYPE/ENTITY declarations are not allowed"),
    "voc_malformed.xml": ([], "not well-formed XML"),
    "voc_missing_bndbox.xml": ([], "object[1]: missing <bndbox>"),
    "voc_bad_number.xml": ([], "object[0]: <xmin> is not a number"),
    "voc_missing_size.xml": ([], "missing <size>"),
    "voc_inverted_box.xml": ([], "object[0]: box has xmax < xmin"),
}
HELPERS = {"valid.json", "images"}


def _argv(name: str, extra: list[str], out: Path) -> list[str]:
    extra = [a.format(dir=BAD, out=out) for a in extra]
    f = str(BAD / name)
    if name.endswith(".xml"):
        return ["data", "convert", f, "--out", str(out / "voc.json"), *extra]
    if name.startswith("supervision_"):
        return ["data", "split-semi", str(BAD / "valid.json"), "--percent", "100" if "range" in name else "1",
                "--seed", "0", "--out-dir", str(out), "--split-file", f, *extra]
    return ["data", "check", f, *extra]


def test_corpus_is_complete() -> None:
    present = {p.name for p in BAD.iterdir()}
    assert present - HELPERS == set(CORPUS), "every bad input needs an expected message (and vice versa)"


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_bad_input_is_one_line_exit_2(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    extra, fragment = CORPUS[name]
    rc = main(_argv(name, extra, tmp_path))
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert fragment in lines[0], lines[0]
    assert name in lines[0]  # the line names the file
    assert not any(tmp_path.iterdir()), "no output may be written for bad input"


def test_degenerate_boxes_pass_without_strict(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "check", str(BAD / "clipped_box.json")]) == 0
    assert "clipped to their image: 1; zero-area boxes dropped: 0" in capsys.readouterr().out
    assert main(["data", "check", str(BAD / "zero_area_box.json")]) == 0
    assert "clipped to their image: 0; zero-area boxes dropped: 1" in capsys.readouterr().out
    assert main(["data", "check", str(BAD / "valid.json"), "--images", str(BAD / "images")]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "images 2 (1 without boxes)" in out


@pytest.fixture()
def train_json(tmp_path: Path) -> Path:
    p = tmp_path / "train.json"
    save_coco(p, synthetic_coco(30, 120, 3, seed=4))
    return p


@pytest.mark.parametrize("mode,rate", [("easy", None), ("hard", None), ("extreme", None), ("missing", "0.5"), ("keep1", None)])
def test_sparsify_writes_three_files(train_json: Path, mode: str, rate: str | None, capsys) -> None:
    out = train_json.parent / f"train_{mode}.json"
    argv = ["data", "sparsify", str(train_json), str(out), "--mode", mode, "--seed", "3"]
    if rate:
        argv += ["--rate", rate]
    assert main(argv) == 0
    kept, hidden = load_coco(out), load_coco(train_json.parent / f"train_{mode}.hidden.json")
    manifest = json.loads((train_json.parent / f"train_{mode}.manifest.json").read_text())
    check_hidden_matches(kept.raw, hidden.raw)
    assert len(kept.annotations) + len(hidden.annotations) == 120
    assert manifest["mode"] == mode and manifest["seed"] == 3
    assert manifest["annotations"]["after"] == len(kept.annotations)
    assert len(manifest["source_file_sha256"]) == 64 and "--mode " + mode in manifest["command"]
    # same command, same bytes
    first = out.read_bytes()
    assert main(argv) == 0
    assert out.read_bytes() == first


def test_sparsify_refuses_bad_requests(train_json: Path, capsys) -> None:
    d = train_json.parent
    assert main(["data", "sparsify", str(train_json), str(train_json), "--mode", "easy", "--seed", "0"]) == 2
    assert "refusing to overwrite the input" in capsys.readouterr().err
    # OUT.hidden.json would be the input
    src = d / "x.hidden.json"
    src.write_bytes(train_json.read_bytes())
    assert main(["data", "sparsify", str(src), str(d / "x.json"), "--mode", "easy", "--seed", "0"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["data", "sparsify", str(train_json), str(d / "o.txt"), "--mode", "easy", "--seed", "0"]) == 2
    assert "must end in .json" in capsys.readouterr().err
    assert main(["data", "sparsify", str(train_json), str(d / "o.json"), "--mode", "missing", "--seed", "0"]) == 2
    assert "needs a rate" in capsys.readouterr().err
    assert main(["data", "sparsify", str(train_json), str(d / "o.json"), "--mode", "hard", "--seed", "0", "--rate", "0.5"]) == 2
    assert "only applies to mode 'missing'" in capsys.readouterr().err
    assert main(["data", "sparsify", str(train_json), str(d / "o.json"), "--mode", "missing", "--seed", "0", "--rate", "1.5"]) == 2
    assert "rate must be a number in [0, 1]" in capsys.readouterr().err
    assert not (d / "o.json").exists()


def test_split_semi_cli(train_json: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "semi"
    assert main(["data", "split-semi", str(train_json), "--percent", "10", "--seed", "1", "--out-dir", str(out)]) == 0
    tag = "train.semi10pct.seed1"
    lab = load_coco(out / f"{tag}.labelled.json")
    unl = load_coco(out / f"{tag}.unlabelled.json")
    hid = load_coco(out / f"{tag}.unlabelled.hidden.json")
    man = json.loads((out / f"{tag}.manifest.json").read_text())
    assert len(lab.images) == 3 == man["labelled"] and len(unl.images) == 27
    assert not unl.annotations
    check_hidden_matches(unl.raw, hid.raw)
    assert man["labelled_image_ids"] == sorted(im["id"] for im in lab.images)
    assert main(["data", "split-semi", str(train_json), "--percent", "0", "--seed", "1", "--out-dir", str(out)]) == 2
    assert "percent must be a number in (0, 100]" in capsys.readouterr().err


def test_split_semi_cli_from_supervision_file(train_json: Path, tmp_path: Path) -> None:
    sup = tmp_path / "COCO_supervision.txt"
    d = load_coco(train_json)
    m = sum(1 for v in d.anns_by_image.values() if v)
    sup.write_text(json.dumps({"10.0": {"0": list(range(int(10.0 / 100 * m)))}}))
    assert main(["data", "split-semi", str(train_json), "--percent", "10", "--seed", "0",
                 "--out-dir", str(tmp_path), "--split-file", str(sup)]) == 0
    man = json.loads((tmp_path / "train.semi10pct.seed0.ubteacher.manifest.json").read_text())
    with_boxes = sorted(i for i, v in d.anns_by_image.items() if v)
    assert man["labelled_image_ids"] == with_boxes[: int(0.1 * m)]


def test_stats_and_plot(train_json: Path, tmp_path: Path, capsys) -> None:
    png = tmp_path / "stats.png"
    assert main(["data", "stats", str(train_json), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "class1" in out and "COCO sizes" in out and "images 30" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["data", "stats", str(train_json), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["annotations"] == 120


def test_convert_voc(tmp_path: Path, capsys) -> None:
    ann = tmp_path / "VOC" / "Annotations"
    ann.mkdir(parents=True)
    (ann / "001.xml").write_text(
        "<annotation><filename>001.jpg</filename><size><width>20</width><height>10</height></size>"
        "<object><name>dog</name><difficult>1</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>5</xmax>"
        "<ymax>6</ymax></bndbox></object></annotation>"
    )
    (ann / "002.xml").write_text("<annotation><filename>002.jpg</filename><size><width>20</width><height>10</height></size></annotation>")
    out = tmp_path / "voc.json"
    assert main(["data", "convert", str(tmp_path / "VOC"), "--out", str(out), "--classes", "cat,dog"]) == 0
    d = load_coco(out)
    assert d.class_names == ["cat", "dog"]
    assert d.annotations[0]["bbox"] == [0.0, 1.0, 5.0, 5.0] and d.annotations[0]["difficult"] == 1
    assert d.anns_by_image[2] == []
    assert main(["data", "convert", str(tmp_path / "VOC"), "--out", str(out), "--classes", "cat"]) == 2
    assert "class 'dog' is not in the class list" in capsys.readouterr().err


def test_digits_calls_builder(tmp_path: Path, monkeypatch, capsys) -> None:
    import minedet.data.digits as digits

    seen = {}

    def fake(out_dir, **kw):
        seen.update(kw, out_dir=out_dir)
        root = Path(out_dir)
        return digits.DigitsPaths(root, root / "train.json", root / "val.json", root / "images")

    monkeypatch.setattr(digits, "build_digits", fake)
    argv = ["data", "digits", str(tmp_path), "--seed", "5", "--train", "7", "--val", "3", "--imbalance", "4", "--image-size", "96"]
    assert main(argv) == 0
    assert seen == dict(out_dir=str(tmp_path), seed=5, n_train=7, n_val=3, image_size=96, imbalance=4.0, progress=True)
    assert "train.json" in capsys.readouterr().out
    assert main(["data", "digits", str(tmp_path), "--train", "0"]) == 2


@pytest.mark.parametrize("cmd,needle", [("sparsify", "ICASSP 2020"), ("split-semi", "without replacement"),
                                        ("split-semi", "ICLR 2021"), ("convert", "xmin - 1"), ("convert", "defusedxml"),
                                        ("merge-reviewed", '"provenance": "mined-corrected"'), ("stats", "96^2")])
def test_help_explains_protocol(cmd: str, needle: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["data", cmd, "--help"])
    assert e.value.code == 0
    assert needle.lower() in " ".join(capsys.readouterr().out.split()).lower()
