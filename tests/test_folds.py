"""Held-out folds: ``minedet data folds`` and ``minedet mine --folds`` (each image mined by the model of
its fold, trained without it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from minedet.cli import main
from minedet.data.coco import load_coco, validate_coco
from minedet.data.folds import assign_folds, fold_training_set, read_folds
from minedet.errors import MinedetError
from minedet.mining import mine_dataset
from tests.helpers import tiny_detector
from tests.test_mine import DIGITS, _confident, _rows, _spread_bias, det, model_file, sparse  # noqa: F401 - fixtures


def _coco(tiles: dict[int, int | None]) -> dict:
    """Images id -> tile source (None: a plain image); one box on every odd id, none on even ids."""
    images = []
    for i, src in tiles.items():
        rec = {"id": i, "file_name": f"{i}.png", "width": 32, "height": 32}
        if src is not None:
            rec["tile"] = {"source": src, "x": 0, "y": 0, "source_file": f"big{src}.png", "source_width": 64,
                           "source_height": 64}
        images.append(rec)
    anns = [{"id": 100 + i, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}
            for i in tiles if i % 2]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}


def test_folds_cover_every_image_once_keep_tiles_of_one_image_together_and_are_seeded() -> None:
    tiles = {1: 7, 2: 7, 3: 7, 4: 8, 5: 8, 6: None, 7: None, 8: 9, 9: 9, 10: None}
    data = validate_coco(_coco(tiles), file="t.json")
    folds = assign_folds(data, 3, seed=0)
    assert sorted(i for f in folds for i in f) == sorted(tiles)
    for src in (7, 8, 9):
        owners = {f for f, ids in enumerate(folds) for i in ids if tiles[i] == src}
        assert len(owners) == 1, (src, folds)
    assert max(map(len, folds)) - min(map(len, folds)) <= 3  # the largest group has 3 images
    assert assign_folds(data, 3, seed=0) == folds
    assert any(assign_folds(data, 3, seed=s) != folds for s in range(1, 6))
    # plain images (with and without boxes) are dealt evenly
    plain = validate_coco(_coco({i: None for i in range(1, 8)}), file="p.json")
    assert sorted(map(len, assign_folds(plain, 2, seed=3))) == [3, 4]


def test_too_few_groups_or_folds_is_one_clear_error() -> None:
    one_big_image = validate_coco(_coco({1: 5, 2: 5, 3: 5}), file="tiles.json")
    with pytest.raises(MinedetError, match=r"tiles.json: 2 folds need at least 2 big images .* has 1"):
        assign_folds(one_big_image, 2)
    with pytest.raises(MinedetError, match="folds must be an integer >= 2"):
        assign_folds(validate_coco(_coco({1: None, 2: None}), file="x.json"), 1)


def test_training_set_of_a_fold_drops_its_images_and_their_boxes() -> None:
    src = _coco({i: None for i in range(1, 7)})
    src["info"] = {"v": 1}
    out = fold_training_set(src, [1, 2])
    assert [im["id"] for im in out["images"]] == [3, 4, 5, 6]
    assert sorted(a["image_id"] for a in out["annotations"]) == [3, 5]
    assert out["info"] == {"v": 1} and len(src["images"]) == 6  # input untouched


def _strip(xs: list[int], size: int, width: int, height: int = 200) -> dict:
    """One wide big image cut into tiles of ``size`` at the given x offsets (ids 1..), a box on every tile."""
    images = [{"id": i, "file_name": f"t{i}.png", "width": size, "height": height,
               "tile": {"source": 1, "x": x, "y": 0, "source_file": "mosaic.png", "source_width": width,
                        "source_height": height}} for i, x in enumerate(xs, 1)]
    anns = [{"id": 100 + i, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0}
            for i in range(1, len(xs) + 1)]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}]}


def test_strips_fill_folds_from_one_big_image_and_no_training_tile_overlaps_a_held_out_one() -> None:
    # an 800 px wide mosaic, 200 px tiles overlapping by 50: centres 100, 250 | 400, 550, 700 in strips 0 | 1
    src = _strip([0, 150, 300, 450, 600], 200, 800)
    data = validate_coco(src, file="mosaic.json")
    with pytest.raises(MinedetError, match=r"mosaic.json: 2 folds need at least 2 big images or strips .*--strips 1"):
        assign_folds(data, 2)
    folds = assign_folds(data, 2, seed=0, strips=2)
    assert sorted(map(sorted, folds)) == [[1, 2], [3, 4, 5]]
    window = {im["id"]: (im["tile"]["x"], im["tile"]["x"] + 200) for im in src["images"]}
    trained = {}
    for ids in folds:
        train = fold_training_set(src, ids)
        kept = [im["id"] for im in train["images"]]
        trained[tuple(sorted(ids))] = kept
        assert not set(kept) & set(ids)
        assert all(window[k][1] <= window[h][0] or window[h][1] <= window[k][0] for k in kept for h in ids)
        assert sorted(a["image_id"] for a in train["annotations"]) == sorted(kept)
    # the seam tile of each side (x 300 beside held-out x 150; x 150 beside held-out x 300) is left out
    assert trained == {(1, 2): [4, 5], (3, 4, 5): [1]}
    # tiles of one strip stay together; without overlap nothing beyond the held-out images is left out
    flush = _strip([0, 200, 400, 600], 200, 800)
    folds = assign_folds(validate_coco(flush, file="f.json"), 2, strips=2)
    assert sorted(map(sorted, folds)) == [[1, 2], [3, 4]]
    assert [im["id"] for im in fold_training_set(flush, [1, 2])["images"]] == [3, 4]
    with pytest.raises(MinedetError, match="strips must be an integer >= 1"):
        assign_folds(data, 2, strips=0)


def test_cli_folds_with_strips_writes_seam_free_training_sets_or_refuses_an_empty_one(tmp_path, capsys) -> None:
    src = tmp_path / "mosaic.json"
    src.write_text(json.dumps(_strip([0, 150, 300, 450, 600], 200, 800)))
    out = tmp_path / "folds"
    assert main(["data", "folds", str(src), "--strips", "2", "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "1 tiles overlapping a held-out one left out" in printed
    record = json.loads((out / "folds.json").read_text())
    assert record["strips"] == 2
    for f, fold in enumerate(record["folds"]):
        kept = {int(im["id"]) for im in load_coco(out / f"fold{f}.train.json").images}
        assert kept and not kept & set(fold["image_ids"]) and len(kept) + len(fold["image_ids"]) == 4
    # two tiles overlapping each other in two strips: holding either out leaves nothing to train on
    tight = tmp_path / "tight.json"
    tight.write_text(json.dumps(_strip([0, 100], 300, 400)))
    rc = main(["data", "folds", str(tight), "--strips", "2", "--out-dir", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "tight.json" in err and "no image to train on" in err
    assert not (tmp_path / "t").exists()


def test_read_folds_refuses_files_made_for_other_data() -> None:
    data = validate_coco(_coco({1: None, 2: None, 3: None}), file="d.json")
    good = {"folds": [{"image_ids": [1, 3]}, {"image_ids": [2]}]}
    assert read_folds(good, data, file="f.json") == {1: 0, 3: 0, 2: 1}
    bad = {
        "no image": ({"folds": [{"image_ids": [1]}, {"image_ids": [2]}]}, "image id 3 of d.json is in no fold"),
        "twice": ({"folds": [{"image_ids": [1, 2]}, {"image_ids": [2, 3]}]}, "image id 2 is in folds 0 and 1"),
        "extra": ({"folds": [{"image_ids": [1, 2]}, {"image_ids": [3, 4]}]}, "image id 4 is not in d.json"),
        "not folds": ({"k": 2}, "not a folds file"),
        "string id": ({"folds": [{"image_ids": ["1"]}, {"image_ids": [2, 3]}]}, "is not an integer"),
    }
    for rec, msg in bad.values():
        with pytest.raises(MinedetError, match=msg) as e:
            read_folds(rec, data, file="f.json")
        assert str(e.value).startswith("f.json")


def test_each_image_is_mined_by_the_detector_of_its_fold(det, sparse) -> None:
    data, _, _, root, _, _ = sparse
    silent = _confident(tiny_detector("retinanet", num_classes=10, image_size=64, class_names=DIGITS), -30.0)
    ids = sorted(int(im["id"]) for im in data.images)
    folds = {i: (0 if k % 2 == 0 else 1) for k, i in enumerate(ids)}
    res = mine_dataset([det, silent], data, root, score=0.6, folds=folds)
    alone = mine_dataset(det, data, root, score=0.6)
    for i in ids:
        if folds[i] == 0:
            assert _rows(res.mined[i]) == _rows(alone.mined[i])
        else:
            assert len(res.mined[i]) == 0
    assert any(len(res.mined[i]) for i in ids if folds[i] == 0)
    with pytest.raises(MinedetError, match="has fold 1, but there are 1 detectors"):
        mine_dataset([det], data, root, folds=folds)
    with pytest.raises(MinedetError, match="one detector per fold"):
        mine_dataset(det, data, root, folds=folds)


def test_cli_folds_then_mine_with_one_model_per_fold(model_file, sparse, tmp_path, capsys) -> None:  # noqa: F811
    data, _, source, root, sp, _ = sparse
    fdir = tmp_path / "folds"
    assert main(["data", "folds", str(sp), "--k", "2", "--seed", "1", "--out-dir", str(fdir)]) == 0
    record = json.loads((fdir / "folds.json").read_text())
    held = [set(f["image_ids"]) for f in record["folds"]]
    for f, ids in enumerate(held):
        train = load_coco(fdir / f"fold{f}.train.json")
        assert {int(im["id"]) for im in train.images} == {int(im["id"]) for im in data.images} - ids
        assert all(a["image_id"] not in ids for a in train.annotations)
    for f in (0, 1):  # the same model for both folds: the result must be plain mining's
        (tmp_path / f"run{f}").mkdir()
        shutil.copy(model_file, tmp_path / f"run{f}" / "model.pt")
    out, plain = tmp_path / "o" / "mined.json", tmp_path / "p" / "mined.json"
    common = ["--images", str(root), "--device", "cpu", "--quiet"]
    rc = main(["mine", str(tmp_path / "run{fold}" / "model.pt"), str(sp), "--folds", str(fdir / "folds.json"),
               "--out", str(out), *common])
    assert rc == 0, capsys.readouterr().err
    assert main(["mine", str(model_file), str(sp), "--out", str(plain), *common]) == 0
    assert json.loads(out.read_text())["annotations"] == json.loads(plain.read_text())["annotations"]
    assert sum(1 for a in json.loads(out.read_text())["annotations"] if a.get("mined")) > 0


@pytest.mark.parametrize("case", ["no_pattern", "other_data", "missing_model", "one_image"])
def test_cli_fold_mistakes_are_one_line_exit_2(case, model_file, sparse, tmp_path, capsys) -> None:  # noqa: F811
    data, _, source, root, sp, _ = sparse
    fdir = tmp_path / "folds"
    assert main(["data", "folds", str(sp), "--k", "2", "--out-dir", str(fdir)]) == 0
    capsys.readouterr()
    (tmp_path / "run0").mkdir()
    shutil.copy(model_file, tmp_path / "run0" / "model.pt")
    pattern, folds = str(tmp_path / "run{fold}" / "model.pt"), fdir / "folds.json"
    out = tmp_path / "o.json"
    if case == "one_image":
        one = tmp_path / "one.json"
        one.write_text(json.dumps({**source, "images": source["images"][:1],
                                   "annotations": [a for a in source["annotations"]
                                                   if a["image_id"] == source["images"][0]["id"]]}))
        rc = main(["data", "folds", str(one), "--out-dir", str(tmp_path / "f1")])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "2 folds need at least 2 images" in err
        assert not (tmp_path / "f1").exists()
        return
    if case == "no_pattern":
        pattern = str(model_file)
    elif case == "other_data":
        rec = json.loads(folds.read_text())
        rec["folds"][0]["image_ids"] = rec["folds"][0]["image_ids"][1:]
        folds = tmp_path / "stale.json"
        folds.write_text(json.dumps(rec))
    elif case == "missing_model":
        pass  # run1/model.pt does not exist
    rc = main(["mine", pattern, str(sp), "--folds", str(folds), "--out", str(out), "--images", str(root),
               "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert {"no_pattern": "{fold}", "other_data": "is in no fold", "missing_model": "run1"}[case] in err
    assert not out.exists()


def _export_with_train_images(model_file: Path, path: Path, names: list[str]) -> Path:
    from minedet.engine.checkpoint import export_model, load_model

    det, _ = load_model(model_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    export_model(path, det, {"train_images": sorted(names)})
    return path


def test_mine_warns_when_a_model_mines_images_it_trained_on(model_file, sparse, tmp_path, capsys) -> None:  # noqa: F811
    data, _, _, root, sp, _ = sparse
    names = [str(im["file_name"]) for im in data.images]
    common = ["--images", str(root), "--device", "cpu", "--quiet"]
    seen = _export_with_train_images(model_file, tmp_path / "seen" / "model.pt", names[:3])
    assert main(["mine", str(seen), str(sp), "--out", str(tmp_path / "a.json"), *common]) == 0
    err = capsys.readouterr().err
    assert f"trained on 3 of these {len(names)} images" in err and "minedet data folds" in err
    unseen = _export_with_train_images(model_file, tmp_path / "unseen" / "model.pt", ["elsewhere.png"])
    assert main(["mine", str(unseen), str(sp), "--out", str(tmp_path / "b.json"), *common]) == 0
    assert "warning" not in capsys.readouterr().err

    fdir = tmp_path / "folds"
    assert main(["data", "folds", str(sp), "--k", "2", "--out-dir", str(fdir)]) == 0
    held = [f["image_ids"] for f in json.loads((fdir / "folds.json").read_text())["folds"]]
    name_of = {int(im["id"]): str(im["file_name"]) for im in data.images}
    for swap in (False, True):  # each fold's model trained on the other fold's images (right), or on its own (wrong)
        for f in (0, 1):
            other = held[f if swap else 1 - f]
            _export_with_train_images(model_file, tmp_path / f"s{swap}" / f"fold{f}" / "model.pt", [name_of[i] for i in other])
        capsys.readouterr()
        rc = main(["mine", str(tmp_path / f"s{swap}" / "fold{fold}" / "model.pt"), str(sp), "--folds", str(fdir / "folds.json"),
                   "--out", str(tmp_path / f"f{swap}.json"), *common])
        err = capsys.readouterr().err
        assert rc == 0
        assert ("of its fold" in err) == swap, err


def test_a_trained_model_records_the_images_it_trained_on_and_its_flips(tiny_digits, tmp_path) -> None:
    from minedet.engine.checkpoint import load_model
    from minedet.run import run_training
    from tests.conftest import tiny_config

    cfg = tiny_config(tiny_digits, tmp_path / "run", train__max_steps=1, train__ckpt_every=1, data__flip=0.25)
    res = run_training(cfg, quiet=True)
    _, meta = load_model(res["model"])
    assert meta["train_images"] == sorted(str(im["file_name"]) for im in load_coco(tiny_digits.train_json).images)
    assert meta["flip"] == 0.25  # what `minedet mine --agree auto` reads


def test_a_malformed_tile_block_is_one_line_naming_the_file_and_the_image() -> None:
    src = _strip([0, 200], 200, 400)
    del src["images"][1]["tile"]["source_width"]
    data = validate_coco(src, file="mosaic.json")
    with pytest.raises(MinedetError, match=r'^mosaic.json: image id=2: "tile" must be an object with .*source_width'):
        assign_folds(data, 2, strips=2)
