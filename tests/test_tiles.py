"""Big images: ``minedet data tile``, tiled prediction (``predict --tile``), ``mine`` per big image.

The synthetic scenes are solid red / green / blue rectangles on black, and ``OracleDetector``
"detects" them exactly from the pixels (connected components per colour channel), so a tile that
cuts a rectangle reports the visible piece, as a real detector would report a truncated object.
Every box below is xyxy; which frame (tile or big image) is said where it matters.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from minedet.cli import main
from minedet.data.coco import load_coco, save_coco
from minedet.data.datasets import DetectionDataset, load_image
from minedet.data.tiles import Tile, cut_box, merge_tile_detections, tile_coco, tile_grid, tile_of
from minedet.engine.tiled import predict_tiled
from minedet.structures import Target

CLASSES = ["red", "green", "blue"]


class OracleDetector(torch.nn.Module):
    """Finds the solid rectangles of a scene: one box per connected component of each channel
    (boxes xyxy in the input image's pixels, label = channel, score 0.9). Counts its inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.spec = SimpleNamespace(class_names=list(CLASSES))
        self.inputs: list[tuple[int, int]] = []

    def predict(self, images, **decode_kw) -> list[Target]:
        out = []
        for im in images:
            self.inputs.append((int(im.shape[-2]), int(im.shape[-1])))
            a = (im > 0.5).cpu().numpy()
            boxes, labels = [], []
            for c in range(3):
                lab, _ = ndimage.label(a[c])
                for sl in ndimage.find_objects(lab):
                    boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
                    labels.append(c)
            b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            out.append(Target(b, torch.tensor(labels, dtype=torch.int64), torch.full((len(b),), 0.9)))
        return out


def scene(width: int, height: int, *, cell: int = 120, fill: float = 0.35, sizes=(20, 90), seed: int = 0):
    """(uint8 image [H, W, 3], list of (x1, y1, x2, y2, label)): rectangles placed one per grid cell
    at most, at least 10 px apart, integer pixel edges."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.uint8)
    objs = []
    for cy in range(0, height - cell + 1, cell):
        for cx in range(0, width - cell + 1, cell):
            if rng.random() > fill:
                continue
            w, h = (int(v) for v in rng.integers(sizes[0], min(sizes[1], cell - 10) + 1, size=2))
            x = cx + 5 + int(rng.integers(0, cell - 10 - w + 1))
            y = cy + 5 + int(rng.integers(0, cell - 10 - h + 1))
            k = int(rng.integers(0, 3))
            img[y:y + h, x:x + w, k] = 255
            objs.append((x, y, x + w, y + h, k))
    return img, objs


def as_set(boxes: torch.Tensor, labels: torch.Tensor) -> set[tuple]:
    return {(*(float(v) for v in b), int(k)) for b, k in zip(boxes.tolist(), labels.tolist())}


def coco_of(images: list[tuple[str, np.ndarray, list[tuple]]]) -> dict:
    """A COCO dict of (file name, image, objects) with boxes [x, y, w, h] in big-image pixels."""
    ims, anns = [], []
    for i, (name, img, objs) in enumerate(images, start=1):
        ims.append({"id": i, "file_name": name, "width": int(img.shape[1]), "height": int(img.shape[0])})
        for x1, y1, x2, y2, k in objs:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": k + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    return {"images": ims, "annotations": anns, "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}


@pytest.fixture(scope="module")
def big_scene(tmp_path_factory):
    """A 3000 x 3000 px scene with about 200 rectangles, as a PNG."""
    root = tmp_path_factory.mktemp("big")
    img, objs = scene(3000, 3000, seed=1)
    Image.fromarray(img).save(root / "big.png")
    return root / "big.png", img, objs


# --------------------------------------------------------------------------------------------- grid / cut rule
def test_grid_covers_the_image_with_the_overlap_and_stays_inside():
    tiles = tile_grid(1000, 700, 256, 64)
    xs, ys = sorted({t.x for t in tiles}), sorted({t.y for t in tiles})
    assert xs == [0, 192, 384, 576, 744] and ys == [0, 192, 384, 444]
    assert all(t.width == 256 and t.height == 256 and t.x + 256 <= 1000 and t.y + 256 <= 700 for t in tiles)
    covered = np.zeros((700, 1000), bool)
    for t in tiles:
        covered[t.y:t.y + t.height, t.x:t.x + t.width] = True
    assert covered.all()
    small = tile_grid(100, 300, 256, 64)  # smaller than a tile along x: one column of the image's width
    assert [(t.x, t.y, t.width, t.height) for t in small] == [(0, 0, 100, 256), (0, 44, 100, 256)]


def test_a_cut_box_follows_the_visible_fraction_rule(tmp_path):
    # one 400 x 100 image, tiles of 256 with overlap 56: x0 = 0 and 144
    d = {"images": [{"id": 1, "file_name": "a.png", "width": 400, "height": 100}],
         "annotations": [
             # x 226..276: 30 px of 50 inside tile x0=0 (0.6, kept clipped), all of it inside x0=144
             {"id": 7, "image_id": 1, "category_id": 1, "bbox": [226, 10, 50, 20]},
             # x 120..170: inside x0=0 whole; 26 of 50 px (0.52) inside x0=144
             {"id": 8, "image_id": 1, "category_id": 2, "bbox": [120, 40, 50, 20]},
             # x 100..160: 16 of 60 px (0.27) inside x0=144 -> crowd there (or dropped)
             {"id": 9, "image_id": 1, "category_id": 1, "bbox": [100, 70, 60, 20]}],
         "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    data = load_coco_dict(d, tmp_path)
    t = tile_coco(data, 256, 56, min_visible=0.5)
    assert [im["tile"]["x"] for im in t.coco["images"]] == [0, 144]
    got = {(a["image_id"], a["source_ann"]): a for a in t.coco["annotations"]}
    assert got[(1, 7)]["bbox"] == [226.0, 10.0, 30.0, 20.0] and got[(1, 7)]["iscrowd"] == 0 and got[(1, 7)]["visible"] == 0.6
    assert got[(2, 7)]["bbox"] == [82, 10, 50, 20] and got[(2, 7)]["visible"] == 1.0
    assert got[(2, 8)]["iscrowd"] == 0 and got[(2, 8)]["bbox"] == [0.0, 40.0, 26.0, 20.0]
    assert got[(2, 9)]["iscrowd"] == 1 and got[(2, 9)]["bbox"] == [0.0, 70.0, 16.0, 20.0]
    assert (t.n_kept, t.n_cut, t.n_dropped) == (5, 1, 0)
    # a stricter rule: 0.6 is not enough, and 'drop' leaves the pieces out
    strict = tile_coco(data, 256, 56, min_visible=0.7, cut="drop")
    kept = {(a["image_id"], a["source_ann"]) for a in strict.coco["annotations"]}
    assert kept == {(1, 8), (1, 9), (2, 7)} and strict.n_dropped == 3
    assert cut_box((0, 0, 10, 10), (10, 0, 20, 10)) is None  # touching is not overlapping


def load_coco_dict(d: dict, tmp_path: Path):
    p = tmp_path / "in.json"
    save_coco(p, d)
    return load_coco(p)


# --------------------------------------------------------------------------------------------- data tile (CLI)
def test_data_tile_round_trips_coordinates_exactly_and_keeps_empty_images(tmp_path, capsys):
    a_img, a_objs = scene(700, 500, cell=100, fill=0.6, sizes=(15, 60), seed=3)
    b_img = np.zeros((300, 260, 3), np.uint8)  # an image with no boxes
    (tmp_path / "src" / "sub").mkdir(parents=True)
    Image.fromarray(a_img).save(tmp_path / "src" / "sub" / "a.png")
    Image.fromarray(b_img).save(tmp_path / "src" / "b.png")
    # a non-integer box too: the shift by the integer tile offset must be exact
    d = coco_of([("sub/a.png", a_img, a_objs), ("b.png", b_img, [])])
    d["annotations"].append({"id": 999, "image_id": 1, "category_id": 2, "bbox": [300.1, 220.7, 10.3, 10.9], "iscrowd": 0})
    save_coco(tmp_path / "in.json", d)
    out = tmp_path / "tiles"
    assert main(["data", "tile", str(tmp_path / "in.json"), "--images", str(tmp_path / "src"), "--size", "128",
                 "--overlap", "32", "--out", str(out)]) == 0
    assert "tiles.json" in capsys.readouterr().out
    tiled = load_coco(out / "tiles.json", image_root=out, check_images=True)  # every tile PNG exists, right size
    src = {im["id"]: im for im in d["images"]}
    boxes = {a["id"]: a["bbox"] for a in d["annotations"]}
    pixels = {1: a_img, 2: b_img}
    seen_whole: set[int] = set()
    for im in tiled.images:
        t = tile_of(im)
        # the tile PNG is exactly the big image's window
        got = np.asarray(Image.open(out / im["file_name"]).convert("RGB"))
        assert np.array_equal(got, pixels[t.source][t.y:t.y + t.height, t.x:t.x + t.width])
        assert src[t.source]["file_name"] == im["tile"]["source_file"]
        for a in tiled.anns_by_image[im["id"]]:
            x, y, w, h = a["bbox"]
            if a["visible"] == 1.0:  # a whole box maps back exactly
                assert [x + t.x, y + t.y, w, h] == boxes[a["source_ann"]]
                seen_whole.add(a["source_ann"])
    assert seen_whole == set(boxes)  # overlap 32 > every object: each is whole in some tile
    b_tiles = [im for im in tiled.images if im["tile"]["source"] == 2]
    assert len(b_tiles) == len(tile_grid(260, 300, 128, 32)) == 9 and all(not tiled.anns_by_image[im["id"]] for im in b_tiles)  # 3 x 2 tiles, no boxes
    # training sees the same boxes: the dataset's targets (tile pixels) + the manifest = the big image's boxes
    ds = DetectionDataset(tiled, out)
    for i, im in enumerate(tiled.images):
        tgt = ds[i]["views"]["o"].target
        t = tile_of(im)
        whole = [a for a in tiled.anns_by_image[im["id"]] if a["visible"] == 1.0 and not a["iscrowd"]]
        mapped = t.to_source(tgt.boxes.double()).tolist()
        for a in whole:
            x, y, w, h = boxes[a["source_ann"]]
            assert any(np.allclose(m, [x, y, x + w, y + h], atol=1e-4) for m in mapped)


def test_tile_train_predict_round_trip(tmp_path, capsys, monkeypatch):
    """tile -> train (from the tiled COCO file, no extra step) -> predict --tile on the big image."""
    img, objs = scene(400, 260, cell=80, fill=0.8, sizes=(12, 40), seed=5)
    Image.fromarray(img).save(tmp_path / "big.png")
    save_coco(tmp_path / "big.json", coco_of([("big.png", img, objs)]))
    out = tmp_path / "tiles"
    assert main(["data", "tile", str(tmp_path / "big.json"), "--images", str(tmp_path), "--size", "128",
                 "--overlap", "48", "--out", str(out)]) == 0
    cfg = {"data": {"train": str(out / "tiles.json"), "image_size": 128, "batch_size": 2, "flip": 0.5},
           "model": {"name": "retinanet", "backbone": "effnet_lite0", "pretrained": False, "levels": "p3p5",
                     "fpn_channels": 32, "anchor_scale": 2.0},
           "method": {"name": "supervised"},
           "train": {"max_steps": 2, "lr": 0.01, "warmup_steps": 1, "ckpt_every": 2, "log_every": 1, "progress": False,
                     "out_dir": str(tmp_path / "run"), "seed": 0}}
    import yaml

    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "cfg.yaml")]) == 0
    model = tmp_path / "run" / "model.pt"
    assert model.exists()
    # the trained model through predict --tile: boxes in the big image's pixels, the whole image reached
    assert main(["predict", str(model), str(tmp_path / "big.png"), "--tile", "128", "--overlap", "48", "--score", "0.0",
                 "--batch-size", "16", "--out", str(tmp_path / "pred"), "--no-render"]) == 0
    res = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert res["images"][0]["width"] == 400 and res["results"]
    xs = [r["bbox"][0] + r["bbox"][2] for r in res["results"]]
    assert max(xs) > 128 and all(0 <= r["bbox"][0] and r["bbox"][0] + r["bbox"][2] <= 400 + 1e-3 for r in res["results"])
    # ... and coordinates exactly: the tile files written above, predicted one by one by the oracle and
    # merged through their manifests, give back the big image's boxes
    tiled = load_coco(out / "tiles.json")
    oracle = OracleDetector()
    parts = [(tile_of(im), oracle.predict([load_image(out / im["file_name"])])[0]) for im in tiled.images]
    merged = merge_tile_detections(parts)
    assert as_set(merged.boxes, merged.labels) == {(float(a), float(b), float(c), float(d), k) for a, b, c, d, k in objs}


# --------------------------------------------------------------------------------------------- predict --tile
def test_predict_tile_finds_every_object_once_and_matches_whole_image(big_scene, tmp_path, monkeypatch):
    path, img, objs = big_scene
    oracle = OracleDetector()
    monkeypatch.setattr("minedet.engine.checkpoint.load_model", lambda *a, **k: (oracle, {}))
    assert main(["predict", "model.pt", str(path), "--tile", "512", "--overlap", "128", "--out", str(tmp_path / "t"),
                 "--no-render"]) == 0
    tiles = list(oracle.inputs)
    assert len(tiles) == 64 and set(tiles) == {(512, 512)}  # 8 x 8 tiles went through the detector
    assert main(["predict", "model.pt", str(path), "--out", str(tmp_path / "w"), "--no-render"]) == 0
    assert oracle.inputs[-1] == (3000, 3000)

    def found(folder):
        res = json.loads((tmp_path / folder / "detections.json").read_text())["results"]
        return [(x, y, x + w, y + h, r["category_id"] - 1) for r in res for x, y, w, h in [r["bbox"]]]

    tiled, whole = found("t"), found("w")
    truth = {tuple(float(v) for v in o[:4]) + (o[4],) for o in objs}
    assert len(objs) > 150
    edges = {e for t in tile_grid(3000, 3000, 512, 128) for e in (t.x, t.x + t.width)} - {0, 3000}
    assert sum(any(o[0] < e < o[2] for e in edges) for o in objs) > 20  # many objects lie across a tile edge
    assert len(tiled) == len(set(tiled)) == len(objs)  # every object once: no duplicate, no piece at a seam
    assert set(tiled) == truth == set(whole)


def test_eval_tile_scores_the_merged_big_image_detections(big_scene, tmp_path, monkeypatch, capsys):
    path, img, objs = big_scene
    blank = np.zeros((700, 900, 3), np.uint8)  # an image with no object: nothing found, nothing missed
    Image.fromarray(blank).save(path.parent / "blank.png")
    gt = coco_of([(path.name, img, objs), ("blank.png", blank, [])])
    save_coco(tmp_path / "big.json", gt)
    oracle = OracleDetector()
    monkeypatch.setattr("minedet.engine.checkpoint.load_model", lambda *a, **k: (oracle, {}))
    assert main(["eval", "model.pt", str(tmp_path / "big.json"), "--images", str(path.parent), "--tile", "512",
                 "--overlap", "128", "--out", str(tmp_path / "ev.json")]) == 0
    assert set(oracle.inputs) == {(512, 512)}
    assert len(oracle.inputs) == len(tile_grid(3000, 3000, 512, 128)) + len(tile_grid(900, 700, 512, 128))
    rep = json.loads((tmp_path / "ev.json").read_text())
    assert rep["ap"] == pytest.approx(1.0) and rep["n_detections"] == len(objs)  # every object once, at its place
    assert main(["eval", "model.pt", str(tmp_path / "big.json"), "--overlap", "8"]) == 2
    assert "--overlap needs --tile" in capsys.readouterr().err


def test_predict_tiled_equals_whole_image_prediction_of_a_real_detector_when_the_image_fits():
    from tests.helpers import tiny_detector

    det = tiny_detector("retinanet", num_classes=3, image_size=96).eval()
    img = torch.rand(3, 96, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = det.predict([img], score_thresh=0.0)[0]
    tiled = predict_tiled(det, img, 96, 16, score_thresh=0.0, nms=1.0)  # one tile; nms=1 keeps decode's output
    assert len(whole) > 0
    assert torch.allclose(tiled.boxes, whole.boxes, atol=1e-5)
    assert torch.equal(tiled.labels, whole.labels) and torch.allclose(tiled.scores, whole.scores)


def test_predict_tiled_without_detections_and_merge_of_nothing():
    oracle = OracleDetector()
    empty = predict_tiled(oracle, torch.zeros(3, 300, 500, dtype=torch.uint8), 128, 32)
    assert len(empty) == 0 and empty.boxes.shape == (0, 4) and len(oracle.inputs) == 3 * 5
    assert len(merge_tile_detections([])) == 0


def test_a_truncated_box_is_dropped_only_when_a_neighbour_sees_it_whole():
    a = Tile(0, 0, 0, 100, 100, 180, 100)  # right edge interior
    b = Tile(0, 80, 0, 100, 100, 180, 100)  # left edge interior
    t = lambda boxes, labels: Target(torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels), torch.tensor([0.9] * len(labels)))  # noqa: E731
    # object at big-image x 85..95: whole in both tiles -> once; object at x 90..130: cut in a, whole in b
    merged = merge_tile_detections([(a, t([[85, 10, 95, 20], [90, 40, 100, 50]], [0, 1])),
                                    (b, t([[5, 10, 15, 20], [10, 40, 50, 50]], [0, 1]))])
    assert as_set(merged.boxes, merged.labels) == {(85.0, 10.0, 95.0, 20.0, 0), (90.0, 40.0, 130.0, 50.0, 1)}
    # an object larger than the overlap is seen whole by no tile: its pieces stay (documented)
    merged = merge_tile_detections([(a, t([[60, 10, 100, 20]], [0])), (b, t([[0, 10, 60, 20]], [0]))])
    assert len(merged) == 2


# --------------------------------------------------------------------------------------------- mine per big image
def test_mine_on_tiles_reports_per_big_image(tmp_path, capsys, monkeypatch):
    img, objs = scene(640, 480, cell=100, fill=0.8, sizes=(15, 50), seed=7)
    Image.fromarray(img).save(tmp_path / "big.png")
    labelled, unlabelled = objs[::2], objs[1::2]
    save_coco(tmp_path / "big.json", coco_of([("big.png", img, labelled)]))
    out = tmp_path / "tiles"
    assert main(["data", "tile", str(tmp_path / "big.json"), "--images", str(tmp_path), "--size", "160",
                 "--overlap", "64", "--out", str(out)]) == 0
    monkeypatch.setattr("minedet.engine.checkpoint.load_model", lambda *a, **k: (OracleDetector(), {}))
    assert main(["mine", "model.pt", str(out / "tiles.json"), "--images", str(out), "--out", str(tmp_path / "done.json"),
                 "--quiet"]) == 0
    summary = json.loads((tmp_path / "done.summary.json").read_text())
    assert summary["per_source"] == [{"source": 1, "source_file": "big.png", "tiles": len(tile_grid(640, 480, 160, 64)),
                                      "labelled": len(labelled), "mined": len(unlabelled)}]
    assert "per big image" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv, needle", [
    (["--size", "64", "--overlap", "64"], "overlap (64 px) must be smaller than the tile size (64 px)"),
    (["--size", "0", "--overlap", "0"], "tile size must be >= 1"),
    (["--size", "64", "--overlap", "8", "--min-visible", "0"], "min_visible must be a number in (0, 1]"),
])
def test_bad_tile_settings_are_one_line(tmp_path, capsys, argv, needle):
    img, objs = scene(200, 200, seed=0)
    Image.fromarray(img).save(tmp_path / "a.png")
    save_coco(tmp_path / "a.json", coco_of([("a.png", img, objs)]))
    assert main(["data", "tile", str(tmp_path / "a.json"), "--images", str(tmp_path), *argv,
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o" / "tiles.json").exists()


def test_a_missing_big_image_is_one_line_and_nothing_is_written(tmp_path, capsys):
    img, objs = scene(200, 200, seed=0)
    Image.fromarray(img).save(tmp_path / "a.png")
    d = coco_of([("a.png", img, objs), ("gone.png", img, [])])
    save_coco(tmp_path / "a.json", d)
    assert main(["data", "tile", str(tmp_path / "a.json"), "--images", str(tmp_path), "--size", "64",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "gone.png" in err and "not found" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_predict_tile_bad_settings_are_one_line(tmp_path, capsys):
    for argv, needle in ((["--tile", "32", "--overlap", "40"], "must be smaller than the tile size"),
                         (["--overlap", "8"], "--overlap needs --tile")):
        assert main(["predict", "missing-model.pt", str(tmp_path), "--out", str(tmp_path / "p"), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1
