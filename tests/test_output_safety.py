"""No command writes over its inputs: one rule (minedet.io.check_outputs), refused in one line before anything
is written. Each test runs the CLI with an output that is, or would replace, one of the command's inputs and
checks exit status 2, a one-line message and that no file under the test folder changed, appeared or vanished."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from minedet.cli import main


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_symlink() or p.is_file()}


def _refused(capsys, root: Path, argv: list[str], *needles: str) -> str:
    before = _tree(root)
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    assert _tree(root) == before  # inputs byte-identical, nothing written
    return err


@pytest.fixture()
def ds(tmp_path):
    """tmp/imgs/a.png (24x16) and tmp/data.json (one box on it); a dummy model file tmp/model.pt."""
    (tmp_path / "imgs").mkdir()
    Image.fromarray(np.full((16, 24, 3), 200, np.uint8)).save(tmp_path / "imgs" / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": 24, "height": 16}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8], "area": 64, "iscrowd": 0}],
            "categories": [{"id": 1, "name": "x"}]}
    (tmp_path / "data.json").write_text(json.dumps(coco))
    (tmp_path / "model.pt").write_bytes(b"not read: the outputs are refused first")
    return tmp_path


@pytest.fixture()
def model_pt(ds, monkeypatch):
    """predict reads the model before it lists the images: a stand-in detector, never run."""
    det = SimpleNamespace(spec=SimpleNamespace(class_names=["x"]))
    import minedet.cli.infer  # noqa: F401 - imported before the patch, so it binds the real load_model

    monkeypatch.setattr("minedet.cli.infer.load_model", lambda *a, **k: (det, {}), raising=False)
    monkeypatch.setattr("minedet.engine.checkpoint.load_model", lambda *a, **k: (det, {}))
    return ds / "model.pt"


def test_predict_refuses_the_image_folder_and_a_link_to_it(ds, model_pt, capsys):
    _refused(capsys, ds, ["predict", model_pt, ds / "imgs", "--out", ds / "imgs"], "input folder")
    (ds / "link").symlink_to(ds / "imgs")
    _refused(capsys, ds, ["predict", model_pt, ds / "imgs" / "a.png", "--out", ds / "link"], "imgs")
    # one image given as a file, rendered into its own folder: the render would replace it
    _refused(capsys, ds, ["predict", model_pt, ds / "imgs" / "a.png", "--out", ds / "imgs" / "x" / ".."],
             "a.png")


def test_eval_refuses_a_report_over_the_ground_truth_and_plots_into_the_images(ds, capsys):
    _refused(capsys, ds, ["eval", ds / "model.pt", ds / "data.json", "--images", ds / "imgs", "--out", ds / "data.json"],
             "refusing to overwrite the input file")
    _refused(capsys, ds, ["eval", ds / "model.pt", ds / "data.json", "--images", ds / "imgs", "--plot", ds / "imgs"],
             "input folder")


def test_convert_to_labelme_refuses_to_write_over_the_input_coco(ds, capsys):
    # LabelMe writes <stem>.json per image: image a.png beside a.json would replace it
    (ds / "imgs" / "a.json").write_bytes((ds / "data.json").read_bytes())
    _refused(capsys, ds, ["data", "convert", ds / "imgs" / "a.json", "--to", "labelme", "--out", ds / "imgs"],
             "a.json", "refusing to overwrite the input file")


def test_convert_from_labelme_refuses_an_output_that_is_a_source(ds, capsys):
    shape = {"label": "x", "points": [[1, 1], [5, 5]], "shape_type": "rectangle"}
    (ds / "imgs" / "a.json").write_text(json.dumps({"imagePath": "a.png", "imageWidth": 24, "imageHeight": 16,
                                                    "shapes": [shape]}))
    _refused(capsys, ds, ["data", "convert", "--from", "labelme", ds / "imgs", "--out", ds / "imgs" / "a.json"],
             "refusing to overwrite the input file")


def test_tile_refuses_to_write_tiles_into_the_image_root(ds, capsys):
    _refused(capsys, ds, ["data", "tile", ds / "data.json", "--images", ds / "imgs", "--size", "8", "--out", ds / "imgs"],
             "input folder")
    # OUT/images is where the tiles go: the image root there is refused too
    (ds / "o").mkdir()
    (ds / "imgs").rename(ds / "o" / "images")
    _refused(capsys, ds, ["data", "tile", ds / "data.json", "--images", ds / "o" / "images", "--size", "8",
                          "--out", ds / "o"], "input folder")


def test_sparsify_refuses_an_output_linked_to_the_input(ds, capsys):
    (ds / "out.hidden.json").symlink_to(ds / "data.json")
    _refused(capsys, ds, ["data", "sparsify", ds / "data.json", ds / "out.json", "--mode", "easy", "--seed", "0"],
             "out.hidden.json", "refusing to overwrite the input file")


def test_split_semi_refuses_an_output_that_is_the_input_by_a_hard_link(ds, capsys):
    os.link(ds / "data.json", ds / "data.semi50pct.seed0.manifest.json")
    _refused(capsys, ds, ["data", "split-semi", ds / "data.json", "--percent", "50", "--seed", "0"],
             "manifest.json", "refusing to overwrite the input file")


def test_merge_reviewed_refuses_to_write_over_the_review(ds, capsys):
    (ds / "review.json").write_text("[]")
    _refused(capsys, ds, ["data", "merge-reviewed", ds / "data.json", ds / "review.json", "--format", "labelstudio",
                          "--out", ds / "review.json"], "refusing to overwrite the input file")


def test_folds_refuses_a_fold_file_over_the_input(ds, capsys):
    (ds / "data.json").rename(ds / "fold0.train.json")
    _refused(capsys, ds, ["data", "folds", ds / "fold0.train.json", "--k", "2", "--out-dir", ds],
             "refusing to overwrite the input file")


def test_mine_refuses_the_data_as_output_and_the_images_as_gallery(ds, capsys):
    base = ["mine", ds / "model.pt", ds / "data.json", "--images", ds / "imgs"]
    _refused(capsys, ds, [*base, "--out", ds / "data.json"], "refusing to overwrite the input file")
    _refused(capsys, ds, [*base, "--out", ds / "done.json", "--gallery", ds / "imgs"], "input folder")
    # a review file beside OUT (OUT_STEM.labelstudio.json) would replace the input
    (ds / "data.json").rename(ds / "done.labelstudio.json")
    _refused(capsys, ds, ["mine", ds / "model.pt", ds / "done.labelstudio.json", "--images", ds / "imgs",
                          "--out", ds / "imgs" / ".." / "done.json"], "refusing to overwrite the input file")


def test_export_refuses_to_write_over_the_model(ds, capsys):
    _refused(capsys, ds, ["export", ds / "model.pt", "--out", ds / "model.pt"], "refusing to overwrite the input file")


def test_digits_refuses_an_output_folder_that_is_a_file(ds, capsys):
    _refused(capsys, ds, ["data", "digits", ds / "data.json", "--train", "1", "--val", "1"], "not a folder")
