"""Images that break the pipeline: every command reads image files through one guard
(minedet.data.images.open_image): decompression bombs, truncated files and links out of the image root are one
line naming the file; a 1 x 3000 px image is predicted; tiles of a.png and a.PNG do not share names; a tile batch
below 1 is an argparse error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minedet.cli import main


def _coco(root: Path, names_sizes: list[tuple[str, int, int]]) -> Path:
    ims = [{"id": i, "file_name": n, "width": w, "height": h} for i, (n, w, h) in enumerate(names_sizes, start=1)]
    path = root / "data.json"
    path.write_text(json.dumps({"images": ims, "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    return path


def _png(path: Path, w: int, h: int, value: int = 120) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(value).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _one_line_2(capsys, argv, *needles) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


@pytest.fixture()
def tiny_model(monkeypatch):
    """predict and eval run a tiny real RetinaNet (64 px) instead of loading a model file."""
    import minedet.cli.infer  # noqa: F401 - bound before the patch
    from tests.helpers import tiny_detector

    det = tiny_detector("retinanet", num_classes=1, image_size=64).eval()
    det.spec.class_names = ["x"]
    monkeypatch.setattr("minedet.engine.checkpoint.load_model", lambda *a, **k: (det, {}))
    return det


@pytest.mark.parametrize("side", [40, 50])  # Pillow warns above MAX_IMAGE_PIXELS and refuses above twice it
def test_a_decompression_bomb_is_one_line_in_check_tile_and_predict(tmp_path, capsys, monkeypatch, side, tiny_model):
    _png(tmp_path / "imgs" / "bomb.png", side, side)
    data = _coco(tmp_path, [("bomb.png", side, side)])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    _one_line_2(capsys, ["data", "check", data, "--images", tmp_path / "imgs"], "bomb.png", "DecompressionBomb")
    _one_line_2(capsys, ["data", "tile", data, "--images", tmp_path / "imgs", "--size", "16", "--out", tmp_path / "t"],
                "bomb.png", "DecompressionBomb")
    _one_line_2(capsys, ["predict", "m.pt", tmp_path / "imgs", "--out", tmp_path / "p"], "bomb.png", "DecompressionBomb")
    assert not (tmp_path / "t").exists() and not (tmp_path / "p").exists()


def test_a_big_image_is_read_once_the_pixel_limit_is_raised(tmp_path, capsys, monkeypatch):
    """An orthomosaic above Pillow's bomb limit is tiled after MINEDET_MAX_PIXELS raises it; a bad value is one line."""
    _png(tmp_path / "imgs" / "big.png", 50, 50)
    data = _coco(tmp_path, [("big.png", 50, 50)])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setenv("MINEDET_MAX_PIXELS", "not a number")
    _one_line_2(capsys, ["data", "check", data, "--images", tmp_path / "imgs"], "MINEDET_MAX_PIXELS")
    monkeypatch.setenv("MINEDET_MAX_PIXELS", "2500")
    assert main(["data", "tile", str(data), "--images", str(tmp_path / "imgs"), "--size", "32", "--out",
                 str(tmp_path / "t")]) == 0
    assert len(json.loads((tmp_path / "t" / "tiles.json").read_text())["images"]) == 4
    assert Image.MAX_IMAGE_PIXELS == 1000  # the limit is Pillow's again outside the guard


def test_a_truncated_image_is_one_line(tmp_path, capsys, tiny_model):
    _png(tmp_path / "imgs" / "cut.png", 64, 48)
    raw = (tmp_path / "imgs" / "cut.png").read_bytes()
    (tmp_path / "imgs" / "cut.png").write_bytes(raw[: len(raw) // 2])
    data = _coco(tmp_path, [("cut.png", 64, 48)])
    _one_line_2(capsys, ["data", "check", data, "--images", tmp_path / "imgs"], "cut.png")
    _one_line_2(capsys, ["predict", "m.pt", tmp_path / "imgs", "--out", tmp_path / "p"], "cut.png")


def test_a_one_pixel_thin_image_is_predicted_and_evaluated(tmp_path, capsys, tiny_model):
    _png(tmp_path / "imgs" / "thin.png", 3000, 1)
    _png(tmp_path / "imgs" / "tall.png", 1, 3000)
    assert main(["predict", "m.pt", str(tmp_path / "imgs"), "--out", str(tmp_path / "p"), "--score", "0"]) == 0
    res = json.loads((tmp_path / "p" / "detections.json").read_text())
    assert [(im["width"], im["height"]) for im in res["images"]] == [(1, 3000), (3000, 1)]
    assert res["results"] and all(x >= 0 and y >= 0 and w >= 0 and h >= 0 for r in res["results"] for x, y, w, h in [r["bbox"]])
    data = _coco(tmp_path / "imgs", [("thin.png", 3000, 1), ("tall.png", 1, 3000)])
    assert main(["eval", "m.pt", str(data), "--out", str(tmp_path / "ev.json")]) == 0


def test_tiles_of_images_whose_names_differ_by_case_or_suffix_do_not_collide(tmp_path, capsys):
    for i, n in enumerate(("a.png", "a.PNG", "a.bmp", "b.png")):
        _png(tmp_path / "imgs" / n, 40, 30, value=i)
    data = _coco(tmp_path, [(n, 40, 30) for n in ("a.png", "a.PNG", "a.bmp", "b.png")])
    assert main(["data", "tile", str(data), "--images", str(tmp_path / "imgs"), "--size", "32", "--overlap", "8",
                 "--out", str(tmp_path / "t")]) == 0
    tiles = json.loads((tmp_path / "t" / "tiles.json").read_text())
    names = [im["file_name"] for im in tiles["images"]]
    assert len({n.lower() for n in names}) == len(names) == 4 * 2  # two tiles per image
    assert "images/b_x0_y0.png" in names  # a name nobody shares is unchanged
    for im in tiles["images"]:  # every tile holds its own image's pixels
        src = np.asarray(Image.open(tmp_path / "imgs" / im["tile"]["source_file"]).convert("RGB"))
        x, y = im["tile"]["x"], im["tile"]["y"]
        got = np.asarray(Image.open(tmp_path / "t" / im["file_name"]))
        assert np.array_equal(got, src[y:y + im["height"], x:x + im["width"]])


@pytest.mark.parametrize("batch", ["0", "-1", "two"])
def test_a_tile_batch_below_one_is_an_argparse_error(tmp_path, capsys, batch):
    for cmd in (["predict", "m.pt", str(tmp_path), "--out", str(tmp_path / "p"), "--tile", "64"],
                ["eval", "m.pt", "d.json", "--tile", "64"], ["mine", "m.pt", "d.json", "--images", ".", "--out", "o.json"]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--batch-size", batch])
        assert e.value.code == 2 and "--batch-size" in capsys.readouterr().err


def test_a_symlink_out_of_the_image_root_is_refused_unless_allowed(tmp_path, capsys, monkeypatch):
    _png(tmp_path / "elsewhere" / "secret.png", 40, 30)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").symlink_to(tmp_path / "elsewhere" / "secret.png")
    data = _coco(tmp_path, [("a.png", 40, 30)])
    argv = ["data", "tile", data, "--images", tmp_path / "imgs", "--size", "32", "--out", tmp_path / "t"]
    _one_line_2(capsys, argv, "a.png", "outside the image root", "MINEDET_FOLLOW_LINKS=1")
    _one_line_2(capsys, ["data", "check", data, "--images", tmp_path / "imgs"], "outside the image root")
    from minedet.data.coco import load_coco
    from minedet.errors import MinedetError
    from minedet.mining import mine_dataset
    from tests.helpers import tiny_detector

    det = tiny_detector("retinanet", num_classes=1, image_size=64)
    det.spec.class_names = ["x"]
    with pytest.raises(MinedetError, match="outside the image root"):  # mining reads through the same guard
        mine_dataset(det, load_coco(data), tmp_path / "imgs")
    assert not (tmp_path / "t").exists()
    monkeypatch.setenv("MINEDET_FOLLOW_LINKS", "1")
    assert main([str(a) for a in argv]) == 0
    # a link that stays inside the root is an ordinary file
    monkeypatch.delenv("MINEDET_FOLLOW_LINKS")
    _png(tmp_path / "imgs" / "sub" / "b.png", 40, 30)
    (tmp_path / "imgs" / "a.png").unlink()
    (tmp_path / "imgs" / "a.png").symlink_to(tmp_path / "imgs" / "sub" / "b.png")
    assert main(["data", "check", str(data), "--images", str(tmp_path / "imgs")]) == 0
