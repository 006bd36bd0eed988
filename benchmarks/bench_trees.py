"""Real images decide: sparse tree-crown labels on NEON aerial scenes, chosen on dev, reported on test.

Usage:
  python benchmarks/bench_trees.py --protocol random --columns original co_mining --seeds 0 1 2 --jobs 2
  python benchmarks/bench_trees.py --list                     # the declared columns and what each means
  python benchmarks/bench_trees.py --data-only                # fetch the wheel, convert, cut bands, tile; no training

Data: the RGB scenes with human crown boxes (Pascal VOC XML beside each PNG) that ship in the ``deepforest``
wheel on PyPI (MIT). On first use the wheel is fetched with ``pip download --no-deps`` into
``CACHE/deepforest-<version>/`` (default cache ``.cache/minedet``); deepforest is not installed, nothing is
vendored, and the library never reads it at run time. The boxes go through minedet's own
``minedet data convert --from voc`` and ``minedet data tile``: the benchmark is also a test of that path.

Protocol (written on docs/benchmarks.md before the first run):
  * each YELL scene is cut into bands (``BANDS``): the large one into vertical bands, left to right, train (60 % of
    its width), dev (20 %), test (20 %); the small one into its top 60 % (train) and its bottom 40 %, halved left
    (dev) and right (test), as a 20 % band of it would be under 400 px and the detector's resize would upscale it;
    no pixel is in two bands; a crown cut by a band edge is kept in neither band's truth as a box: on each side its
    visible part is an ``iscrowd`` region (training ignores it, pycocotools ignores detections on it). ``OSBS_029``
    and ``SOAP_061`` (other sites) join test whole. One class: SOAP_061's Alive / Dead crowns count as trees.
  * ``minedet data tile`` cuts every band into 400 px tiles: training tiles overlap by 50 px; dev and test are
    tiled with overlap 0 and keep the tiles of the 400 px grid only (the tiler's extra tile ending on the border
    would score some crowns twice; the strip under 400 px it covers is not scored).
  * two ways of losing training boxes, each its own table, the erased crowns kept as the hidden truth:
    ``random``: 50 % of the training crowns erased at random (``minedet data sparsify --mode missing
    --rate 0.5`` on the bands, seeded with the run's seed, so a crown is erased in every tile it is in);
    ``partial``: the training bands are cut into 400 px cells (by crown centre); a seeded quarter of the cells were labelled
    in a hurry: in them only the largest third of the crowns (by box area) is boxed; every other cell is
    complete.
  * every column trains what ``minedet train METHOD --train tiles.json --val dev.json`` does for a user who
    says nothing, with the benchmark's budget pinned for every column alike: ``data.image_size=416``,
    ``model.anchor_scale=2`` (what the library proposes for the complete training tiles; a sparse file would get
    another proposal, which would mix the anchors into every comparison), ``train.max_steps``,
    ``train.warmup_steps=50``, 1 torch thread per run. A column adds its own
    ``KEY=VALUE`` overrides (declared in ``COLUMNS``) and may double the batch (the compute of a two-view step).
  * AP / AP50 (pycocotools) on dev at the end of every run; on test only for the columns declared ``final``
    (the page's columns) at the protocol's budget (``STEPS``). Every choice is made on dev.
  * mining: ``minedet mine``'s filter (score > t, NMS 0.5, IoU <= 0.4 with any labelled box) over the sparse
    training tiles with the run's model, scored against the erased crowns (IoU >= 0.5) at t = 0.3 .. 0.9, and
    at the scores ``minedet mine`` proposes from the model itself (``minedet.mining.propose_score_for``, no hidden
    truth): calibrated on the labelled boxes (``mine``'s default), and on the dev tiles with every detection judged
    (``mine --calibrate dev.json``); the same again (``_flip`` keys) with agreement with a flipped view (what
    ``mine --agree auto`` does with these models, trained on flips), calibrated on the dev tiles; and, for every
    column, the model's own precision and recall on the dev tiles, every detection judged
    (``minedet.mining.precision_recall``), without and with the flipped view's agreement: what mining with it can
    show at best.
  * held-out-fold mining (a column declaring ``folds``): ``minedet data folds --k 2 --strips 2`` on the column's
    sparse training tiles, one model per fold trained on its fold's file (``--fold F`` trains one alone, so the two
    run side by side), then the mining above with ``minedet mine --folds`` (each tile mined and each training-tile
    calibration made by the model that did not train on it; the dev calibration reads both models' detections).

Records go to ``benchmarks/results/real_trees.json``: one per run and split (``dev``, ``test``, ``train``
for the mining curve, and ``dev`` with ``"what": "pr"`` for the dev precision-recall), each naming its ``column``, ``protocol``, ``split`` and ``seed``; the records of the
column that is what ``minedet train`` does by default carry ``"default": true``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import common
from common import ROOT, Column

NAME = "real_trees"
DEEPFOREST = "2.1.0"
TILE, TRAIN_OVERLAP, EVAL_OVERLAP = 400, 50, 0
#: each YELL scene is cut into bands (windows x0, y0, x1, y1 as fractions of its width and height), so that every
#: dev and test band is at least 400 px on both sides (a smaller tile would be upscaled by the detector's resize)
BANDED = ("2019_YELL_2_528000_4978000_image_crop2", "2019_YELL_2_541000_4977000_image_crop")
BANDS = {
    BANDED[0]: {"train": (0.0, 0.0, 0.6, 1.0), "dev": (0.6, 0.0, 0.8, 1.0), "test": (0.8, 0.0, 1.0, 1.0)},
    BANDED[1]: {"train": (0.0, 0.0, 1.0, 0.6), "dev": (0.0, 0.6, 0.5, 1.0), "test": (0.5, 0.6, 1.0, 1.0)},
}
SPLITS = ("train", "dev", "test")
WHOLE_TEST = ("OSBS_029", "SOAP_061")
MIN_VISIBLE = 0.5
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PROTOCOLS = ("random", "partial")
#: the protocol's budget, chosen on dev with full labels (seed 0, anchors 2): 150 steps dev AP50 3.9, 300 steps 31.9,
#: 600 steps 41.1
STEPS = 600
#: the IoU at which DeepForest judges a predicted crown right (``validation.iou_threshold: 0.4`` in the deepforest 2.1.0
#: wheel's config): mining and dev precision are also measured there, as context; the targets stay at IoU 0.5
FIELD_IOU = 0.4
#: the budget every column shares, as command-line overrides
BUDGET = ("data.image_size=416", "model.anchor_scale=2", "train.warmup_steps=50", "train.eval_every=0", "train.log_every=10", "train.threads=1")
HURRIED_CELLS, HURRIED_KEEP = 0.25, 1 / 3


@dataclass(frozen=True)
class TreeColumn(Column):
    """A tree-crown column: a declared :class:`common.Column` with what this benchmark's runner reads besides.

    Attributes:
        overrides: its ``KEY=VALUE`` beyond the budget;
        labels: ``sparse`` (the protocol's) or ``full`` (every training crown: the ceiling);
        flag_sparse: image records flagged ``"labels": "sparse"`` (the mixed method's own-data input);
        default: what ``minedet train`` does on sparse own data when the user says nothing;
        final: a page column (test is scored); exploratory columns are scored on dev only;
        folds: held-out mining (0: off): the column trains one model per fold, each the way its overrides say, on
            the training tiles ``minedet data folds --k FOLDS --strips FOLDS`` leaves it, and mines with all of them
            (``minedet mine --folds``): a mining column, its fold models' dev AP recorded apart (``"what": "foldF"``).
    """

    overrides: tuple[str, ...] = ()
    labels: str = "sparse"
    flag_sparse: bool = False
    default: bool = False
    final: bool = True
    folds: int = 0


#: the supervised method's own-data options are BRL's loss on twice the batch: the focal-loss columns say so
FOCAL = ("model.extra.cls_loss=focal",)
#: self-training at the protocol's budget: burn-in a sixth of the 600 steps, a teacher averaging about 100 steps
SELF_TRAINING = ("method.burn_in=100", "method.ema_decay=0.99")
COLUMNS: tuple[TreeColumn, ...] = (
    TreeColumn("full", "every training crown labelled (the ceiling)", "supervised", FOCAL, labels="full",
               short="full labels"),
    TreeColumn("original", "plain training on the sparse labels (focal loss)", "supervised", FOCAL, short="original"),
    TreeColumn("original_2x", "the same on twice the batch (a two-view step's compute)", "supervised", FOCAL, batch=2,
               short="original on twice the batch"),
    TreeColumn("brl", "BRL's loss (background recalibration) on the sparse labels", "supervised",
               ("model.extra.cls_loss=brl",), short="BRL's loss"),
    TreeColumn("brl_2x", "`minedet train supervised` as shipped: BRL's loss on twice the batch (a two-view step's "
               "compute)", "supervised", ("model.extra.cls_loss=brl",), batch=2, default=True,
               short="BRL's loss on twice the batch (the default)"),
    TreeColumn("joint", "co-mining's two views on BRL's loss, no co-generation", "co_mining", ("method.cogeneration=false",),
               short="joint"),
    TreeColumn("co_mining", "co-mining on BRL's loss with the guards, no val check (`minedet train co_mining` as "
               "shipped until the trees chose the val check)", "co_mining", ("method.min_val_precision=null",),
               short="co-mining, no val check"),
    TreeColumn("self_training", "an EMA teacher fills the missing boxes (the mixed method, every image sparse; "
               "burn-in 100 of the 600 steps, teacher decay 0.99)", "mixed",
               SELF_TRAINING, flag_sparse=True, short="self-training"),
    TreeColumn("self_training_brl", "the same self-training on BRL's loss (the teacher's uncertain band ignored, "
               "its confident boxes taught, the rest of the background recalibrated; what `minedet train mixed` "
               "proposes for an unflagged file)", "mixed",
               (*SELF_TRAINING, "model.extra.cls_loss=brl"), flag_sparse=True,
               short="self-training on BRL's loss"),
    TreeColumn("co_mining_valcheck", "`minedet train co_mining` as shipped (the default until the trees chose BRL's "
               "loss on twice the batch): co-mining on BRL's loss with the guards, its mining paused while the "
               "student's detections above tau on the dev tiles are under 70 % right (`method.min_val_precision=0.7`: "
               "it reads the dev labels while training)", "co_mining", ("method.min_val_precision=0.7",),
               short="co-mining with the val check"),
)
#: exploratory columns: scored on dev only, to make a choice there
PROBES: tuple[TreeColumn, ...] = (
    TreeColumn("full_anchor2", "every training crown, anchor scale 2 instead of the proposed 1 (a probe)", "supervised",
               ("model.anchor_scale=2", *FOCAL), labels="full", final=False),
    TreeColumn("full_anchor2_lr3", "every training crown, anchor scale 2, learning rate 0.003 instead of 0.001 (a probe)",
               "supervised", ("model.anchor_scale=2", "train.lr=0.003", *FOCAL), labels="full", final=False),
)
#: held-out-fold mining columns: scored on mining (the training tiles' erased crowns) and on dev, never on test
PROBES += (
    TreeColumn("self_training_brl_folds", "held-out folds: each training tile mined by one of two models trained as "
               "`self_training_brl` on the other half of the training area (`minedet data folds --strips 2`, each "
               "big image's tiles in two strips, a tile overlapping the held-out strip left out; `minedet mine "
               "--folds`); a mining column", "mixed", (*SELF_TRAINING, "model.extra.cls_loss=brl"),
               flag_sparse=True, final=False, folds=2),
)
BY_LABEL = {c.label: c for c in COLUMNS + PROBES}


# --------------------------------------------------------------------------------------------- data
def fetch_scenes(cache: Path) -> dict[str, bytes]:
    """file name -> bytes: each labelled scene's VOC XML and the image file it names, read from the deepforest wheel."""
    from defusedxml import ElementTree

    wheel = common.fetch_wheel("deepforest", DEEPFOREST, cache)
    out: dict[str, bytes] = {}
    with zipfile.ZipFile(wheel) as z:
        for name in BANDED + WHOLE_TEST:
            xml = z.read(f"deepforest/data/{name}.xml")
            image = ElementTree.fromstring(xml).findtext("filename")
            out[f"{name}.xml"], out[image] = xml, z.read(f"deepforest/data/{image}")
    return out


def cli(*args: str) -> None:
    """Run ``minedet ARGS`` in a subprocess (the user's path); one clear line if it fails."""
    proc = subprocess.run([sys.executable, "-m", "minedet", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench_trees: minedet {' '.join(args[:2])} failed: {proc.stderr.strip()[-400:]}")


def band_coco(scenes: dict, band: str) -> tuple[dict, list[tuple[str, tuple[int, int, int, int]]]]:
    """The COCO dict of one band over every banded scene (crowns cut by a band edge: crowd), and the crops."""
    from minedet.data.tiles import cut_box

    images, anns, crops = [], [], []
    for im in scenes["images"]:
        stem = Path(im["file_name"]).stem
        if stem not in BANDS:
            continue
        W, H = im["width"], im["height"]
        fx0, fy0, fx1, fy1 = BANDS[stem][band]
        x0, y0, x1, y1 = round(fx0 * W), round(fy0 * H), round(fx1 * W), round(fy1 * H)
        iid = len(images) + 1
        images.append({"id": iid, "file_name": f"{stem}_{band}.png", "width": x1 - x0, "height": y1 - y0})
        crops.append((im["file_name"], (x0, y0, x1, y1)))
        for a in (a for a in scenes["annotations"] if a["image_id"] == im["id"]):
            x, y, w, h = a["bbox"]
            got = cut_box((x, y, x + w, y + h), (x0, y0, x1, y1))
            if got is None:
                continue
            (cx1, cy1, cx2, cy2), vis = got
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": a["category_id"],
                         "bbox": [cx1 - x0, cy1 - y0, cx2 - cx1, cy2 - cy1], "area": (cx2 - cx1) * (cy2 - cy1),
                         "iscrowd": 0 if vis >= 1.0 - 1e-9 else 1})
    return {"images": images, "annotations": anns, "categories": scenes["categories"]}, crops


def drop_seam_tiles(path: Path) -> None:
    """Keep the tiles of the non-overlapping 400 px grid (``data tile --overlap 0`` makes them, then one more tile per
    row and column ending on the border, overlapping its neighbour): nothing is scored twice; that strip is not scored."""
    tiles = json.loads(path.read_text())
    keep = {im["id"] for im in tiles["images"] if im["tile"]["x"] % TILE == 0 and im["tile"]["y"] % TILE == 0
            and im["width"] == TILE and im["height"] == TILE}
    tiles["images"] = [im for im in tiles["images"] if im["id"] in keep]
    tiles["annotations"] = [a for a in tiles["annotations"] if a["image_id"] in keep]
    path.write_text(json.dumps(tiles))


def build_data(cache: Path) -> dict:
    """Scenes -> COCO (``data convert --from voc``) -> bands -> tiles (``data tile``), once, in the cache."""
    from PIL import Image

    from minedet.io import write_json_atomic

    root = cache / f"real_trees-deepforest{DEEPFOREST}-t{TILE}"
    info_path = root / "info.json"
    if info_path.exists():
        return json.loads(info_path.read_text())
    raw = fetch_scenes(cache)
    scenes_dir, bands_dir = root / "scenes", root / "bands"
    scenes_dir.mkdir(parents=True, exist_ok=True)
    bands_dir.mkdir(parents=True, exist_ok=True)
    for name, data in raw.items():
        (scenes_dir / name).write_bytes(data)
    cli("data", "convert", "--from", "voc", *sorted(str(p) for p in scenes_dir.glob("*.xml")),
        "--images", str(scenes_dir), "--out", str(root / "scenes.json"))
    scenes = json.loads((root / "scenes.json").read_text())
    # one class: SOAP_061's crowns are labelled Alive / Dead, every other scene's Tree; all are tree crowns here
    scenes = {**scenes, "categories": [{"id": 1, "name": "tree"}],
              "annotations": [{**a, "category_id": 1} for a in scenes["annotations"]]}
    counts = {}
    for band in SPLITS:
        coco, crops = band_coco(scenes, band)
        for rec, (src, window) in zip(coco["images"], crops):
            with Image.open(scenes_dir / src) as im:
                im.convert("RGB").crop(window).save(bands_dir / rec["file_name"])
        if band == "test":
            coco = add_whole_scenes(coco, scenes, scenes_dir, bands_dir)
        (root / f"{band}.json").write_text(json.dumps(coco))
        overlap = TRAIN_OVERLAP if band == "train" else EVAL_OVERLAP
        cli("data", "tile", str(root / f"{band}.json"), "--images", str(bands_dir), "--size", str(TILE),
            "--overlap", str(overlap), "--out", str(root / "tiles" / band))
        if band != "train":
            drop_seam_tiles(root / "tiles" / band / "tiles.json")
        tiles = json.loads((root / "tiles" / band / "tiles.json").read_text())
        counts[band] = {"bands": len(coco["images"]), "crowns": sum(1 for a in coco["annotations"] if not a["iscrowd"]),
                        "tiles": len(tiles["images"]), "tile_boxes": sum(1 for a in tiles["annotations"] if not a["iscrowd"])}
    info = {"root": str(root), "wheel": f"deepforest=={DEEPFOREST}", "scenes": len(scenes["images"]), "classes": ["tree"],
            "crowns": len(scenes["annotations"]), "splits": counts}
    write_json_atomic(info_path, info, indent=1)
    return info


def add_whole_scenes(coco: dict, scenes: dict, scenes_dir: Path, bands_dir: Path) -> dict:
    """The test band's COCO dict with OSBS_029 and SOAP_061 added whole (images copied beside the bands)."""
    from PIL import Image

    images, anns = list(coco["images"]), list(coco["annotations"])
    for im in scenes["images"]:
        if Path(im["file_name"]).stem not in WHOLE_TEST:
            continue
        iid = len(images) + 1
        images.append({**im, "id": iid, "file_name": Path(im["file_name"]).stem + ".png"})
        with Image.open(scenes_dir / im["file_name"]) as src:  # one format for every band image
            src.convert("RGB").save(bands_dir / images[-1]["file_name"])
        for a in (a for a in scenes["annotations"] if a["image_id"] == im["id"]):
            anns.append({**a, "id": len(anns) + 1, "image_id": iid, "iscrowd": 0})
    return {**coco, "images": images, "annotations": anns}


# --------------------------------------------------------------------------------------------- losing boxes
def erased_crowns(info: dict, protocol: str, seed: int) -> set[int]:
    """Ids of the training-band crowns the protocol erases (the hidden truth), seeded."""
    from minedet.data.splits import sparsify

    band = json.loads((Path(info["root"]) / "train.json").read_text())
    whole = {**band, "annotations": [a for a in band["annotations"] if not a["iscrowd"]]}
    if protocol == "random":
        return {a["id"] for a in sparsify(whole, "missing", seed, rate=0.5).hidden["annotations"]}
    rng = random.Random(seed)
    cells: dict[tuple, list[dict]] = {}
    for a in whole["annotations"]:
        x, y, w, h = a["bbox"]
        cells.setdefault((a["image_id"], int((x + w / 2) // TILE), int((y + h / 2) // TILE)), []).append(a)
    keys = sorted(cells)
    hurried = rng.sample(keys, max(1, round(HURRIED_CELLS * len(keys))))
    erased = set()
    for k in hurried:
        by_area = sorted(cells[k], key=lambda a: -a["bbox"][2] * a["bbox"][3])
        erased |= {a["id"] for a in by_area[max(1, round(HURRIED_KEEP * len(by_area))):]}
    return erased


def training_files(info: dict, protocol: str, seed: int, flag_sparse: bool) -> tuple[str, str]:
    """(kept tiles JSON, hidden tiles JSON) of a protocol and seed; image records flagged sparse on request."""
    root = Path(info["root"])
    tag = f"{protocol}_s{seed}{'_flagged' if flag_sparse else ''}"
    kept_p, hidden_p = root / f"train_{tag}.json", root / f"train_{tag}.hidden.json"
    if not (kept_p.exists() and hidden_p.exists()):
        erased = erased_crowns(info, protocol, seed)
        tiles = json.loads((root / "tiles" / "train" / "tiles.json").read_text())
        images = [{**im, "labels": "sparse"} for im in tiles["images"]] if flag_sparse else tiles["images"]
        part = lambda hide: {**tiles, "images": images, "annotations": [  # noqa: E731
            a for a in tiles["annotations"] if (a["source_ann"] in erased) == hide]}
        hidden_p.write_text(json.dumps(part(True)))
        kept_p.write_text(json.dumps(part(False)))
    return str(kept_p), str(hidden_p)


# --------------------------------------------------------------------------------------------- runs
def make_config(info: dict, col: TreeColumn, protocol: str, seed: int, steps: int = STEPS, train: str | None = None):
    """What ``minedet train METHOD --train ... --val dev ...`` builds, with the budget and the column's overrides
    (``train``: another training file than the protocol's, e.g. a fold's)."""
    from minedet.run import own_data_config

    root = Path(info["root"])
    hidden = None
    if col.labels == "full":
        train = str(root / "tiles" / "train" / "tiles.json")
    else:
        kept, hidden = training_files(info, protocol, seed, col.flag_sparse)
        train = train or kept
    over = [*BUDGET, f"train.max_steps={steps}", f"train.ckpt_every={min(steps, 100)}", f"train.seed={seed}", f"data.batch_size={8 * col.batch}", *col.overrides]
    return own_data_config(col.method, train=train, val=str(root / "tiles" / "dev" / "tiles.json"), overrides=over,
                           quiet=True, train_images=str(root / "tiles" / "train"),
                           val_images=str(root / "tiles" / "dev"), hidden=hidden)


def score_split(det, info: dict, split: str, cfg) -> dict:
    """AP, AP50, AP75 of a run's model on the dev or test tiles (pycocotools)."""
    from minedet.engine.inference import evaluate_detector
    from minedet.run import make_dataset

    tiles = Path(info["root"]) / "tiles" / split
    rep = evaluate_detector(det, make_dataset(str(tiles / "tiles.json"), str(tiles), cfg, train=False)).as_dict()
    return {k: rep[k] for k in ("ap", "ap50", "ap75", "aps", "apm", "apl")}


#: the test-time agreements measured: record key suffix -> ``minedet mine --agree`` (flip: what ``--agree auto``
#: picks for a model trained on flipped images, as every tree column is)
AGREEMENTS = {"": "none", "_flip": "flip"}


def dev_detections(det, cfg) -> dict[str, tuple[list[dict], list[dict]]]:
    """Per agreement (:data:`AGREEMENTS`), the model's detections on the dev tiles and their labels, every detection
    to be judged (what ``minedet mine --calibrate dev.json`` reads; with agreement, the agreed boxes at their gates):
    shared by the dev precision-recall and the dev-calibrated mining score. ``det``: a model, or a list of fold
    models, each then on every dev tile, their detections together (as ``mine --folds --calibrate`` reads them)."""
    import minedet.mining as mining
    from minedet.data.coco import load_coco

    dev = load_coco(cfg.data.val)
    out = {}
    for tag, agree in AGREEMENTS.items():
        got = [mining.calibration_detections(d, dev, cfg.data.val_images, complete=True, agree=agree)
               for d in (det if isinstance(det, list) else [det])]
        out[tag] = ([x for dets, _ in got for x in dets], [t for _, targets in got for t in targets])
    return out


def mining_curve(det, cfg, dev: dict[str, tuple[list[dict], list[dict]]], folds: dict[int, int] | None = None) -> dict:
    """Per agreement (:data:`AGREEMENTS`, its key suffix), ``minedet mine``'s filter over the sparse training tiles,
    scored against the erased crowns at each threshold, and at the score the library proposes from the model itself
    (where it offers one): on the dev tiles (``mine --calibrate``), and without agreement also on the training tiles'
    labelled boxes (``mine``'s proposal without ``--calibrate``); ``dev``: its :func:`dev_detections`. The training
    tiles' plain detections are predicted once, down to the lowest threshold or proposed score, for every pass.
    ``folds``: image id -> fold, ``det`` then the fold models (``mine --folds``: each tile by the model that did not
    train on it)."""
    import minedet.mining as mining
    from minedet.data.coco import load_coco

    data, hidden = load_coco(cfg.data.train), load_coco(cfg.data.hidden)
    proposals = {suffix: {f"_dev{suffix}": mining.propose_score(*dev[suffix], complete=True)}  # no hidden truth
                 for suffix in AGREEMENTS}
    proposals[""][""] = mining.propose_score_for(det, data, cfg.data.train_images, folds=folds)
    scores = [p.score for ps in proposals.values() for p in ps.values() if p.score is not None]
    floor = min([*THRESHOLDS, *scores])
    plain, _ = mining.calibration_detections(det, data, cfg.data.train_images, complete=True, floor=floor, folds=folds)
    plain = {d["image_id"]: d for d in plain}  # predicted once: each agreement's pass reads them
    out: dict = {}
    for suffix, agree in AGREEMENTS.items():
        res = mining.mine_dataset(det, data, cfg.data.train_images, collect_down_to=floor, agree=agree, detections=plain,
                                  folds=folds)
        out[f"mine_pr{suffix}"] = mining.pr_against_hidden(res, hidden, data, THRESHOLDS)
        out[f"mine_pr{suffix}_iou40"] = mining.pr_against_hidden(res, hidden, data, THRESHOLDS, iou=FIELD_IOU)
        for tag, p in proposals[suffix].items():
            out[f"proposed_score{tag}"] = p.score
            out[f"proposal{tag}"] = {"precision": p.precision, "precision_all": p.precision_all,
                                     "n_region": p.n_region, "reason": p.reason}
            if p.score is not None:
                out[f"mine_at_proposed{tag}"] = mining.pr_against_hidden(res, hidden, data, (p.score,))[0]
                out[f"mine_at_proposed{tag}_iou40"] = mining.pr_against_hidden(res, hidden, data, (p.score,),
                                                                               iou=FIELD_IOU)[0]
    return out


def dev_pr(dev: dict[str, tuple[list[dict], list[dict]]]) -> dict:
    """The model's precision and recall on the dev tiles (its :func:`dev_detections`, per agreement), every detection
    judged (``mining.precision_recall``): what mining with it can show at best, since its detections on unseen
    complete tiles are right no more often."""
    import minedet.mining as mining

    out = {}
    for suffix, (dets, targets) in dev.items():
        out[f"dev_pr{suffix}"] = mining.precision_recall(dets, targets, THRESHOLDS)
        out[f"dev_pr{suffix}_iou40"] = mining.precision_recall(dets, targets, THRESHOLDS, match_iou=FIELD_IOU)
    return out


def measure_model(model_path: Path | list[Path], col: TreeColumn, cfg, base: dict,
                  folds: dict[int, int] | None = None) -> list[dict]:
    """The records every finished run gets from its saved model: the dev precision-recall, and for a sparse column
    the mining curve and (one model) the review lists beside cleanlab's (the model loaded once, its dev detections
    computed once). ``folds``: image id -> fold, ``model_path`` then the fold models' paths."""
    from minedet.engine.checkpoint import load_model

    det = [load_model(p)[0] for p in model_path] if folds is not None else load_model(model_path)[0]
    dev = dev_detections(det, cfg)
    recs = [{**base, "split": "dev", "what": "pr", **dev_pr(dev)}]
    if col.labels != "full":
        recs.append({**base, "split": "train", "what": "mine", **mining_curve(det, cfg, dev, folds)})
    if col.labels != "full" and folds is None:
        recs.append({**base, "split": "train", "what": "review", "lists": review_lists(det, cfg)})
    return recs


def review_lists(det, cfg) -> list[dict]:
    """What a review costs on the sparse training tiles, the peer beside ``minedet mine`` (``bench_review_cost``):
    the erased crowns recovered per box shown down minedet's list (without agreement and with the flipped view's) and
    down cleanlab's overlooked-box lists of the same model's predictions (its default high-probability threshold
    0.95, and 0.3). Each list: its method, length and curve at each number of boxes shown."""
    import bench_review_cost as rc

    keep = ("method", "tool", "list_length", "n_hidden", "images", "curve", "agree", "proposed_score",
            "high_probability_threshold", "flagged_images")
    return [{k: r[k] for k in keep if k in r} for r in rc.measure(det, cfg, 1, agrees=tuple(AGREEMENTS.values()))]


def run_dir(work: Path, protocol: str, label: str, seed: int, cfg) -> Path:
    """A run's folder names its whole budget (steps, anchors): a finished run is reused only by the same setting."""
    return work / protocol / label / f"s{seed}" / f"{cfg.train.max_steps}steps_anchor{cfg.model.anchor_scale:g}"


def _train(cfg, label: dict, out_dir: Path) -> dict:
    """Train into ``out_dir`` (a finished run is measured again, an interrupted one continued); its record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    resume = common.finished_run(out_dir, cfg.train.max_steps)
    part = None if resume else common.interrupted_run(out_dir, cfg.train.max_steps)
    return common.train_record(cfg, label=label, out_dir=out_dir, resume=resume, continue_from=part)


def _base(col: TreeColumn, protocol: str, seed: int, cfg, others: int) -> dict:
    return {"column": col.label, "protocol": protocol, "seed": seed, "method": col.label, "default": col.default,
            "meaning": col.meaning, "threads": cfg.train.threads, "other_benchmarks_at_start": others,
            "image_size": cfg.data.image_size, "anchor_scale": cfg.model.anchor_scale,
            "batch_size": cfg.data.batch_size, "cls_loss": cfg.model.extra.get("cls_loss", "focal")}


def held_out_ap(models: list[Path], folds: dict[int, int], info: dict, cfg) -> dict:
    """AP of the fold models on the training tiles, each tile predicted by the model that did not train on it,
    pooled, against every crown of the tiles (the labelled and the erased): a cross-validated score on 36 tiles, the
    dev tiles being 7."""
    from minedet.engine.checkpoint import load_model
    from minedet.engine.evaluate import coco_results, evaluate_detections
    from minedet.engine.inference import predict_dataset
    from minedet.run import make_dataset

    tiles = Path(info["root"]) / "tiles" / "train"
    ds = make_dataset(str(tiles / "tiles.json"), str(tiles), cfg, train=False)
    dets = []
    for f, path in enumerate(models):
        det, _ = load_model(path)
        dets += predict_dataset(det, ds, indices=[i for i, iid in enumerate(ds.ids) if folds[int(iid)] == f])
    rep = evaluate_detections(ds.data.raw, coco_results(dets, ds.data.cat_ids), image_ids=ds.ids).as_dict()
    crowns = sum(1 for a in ds.data.raw["annotations"] if not a.get("iscrowd"))
    return {**{f"held_out_{k}": rep[k] for k in ("ap", "ap50", "ap75")}, "held_out_tiles": len(ds.ids),
            "held_out_crowns": crowns}


def make_folds(cfg, col: TreeColumn, seed: int, out_dir: Path) -> dict:
    """The folds file of the column's training tiles (``minedet data folds``, made once per run folder)."""
    where = out_dir / "folds"
    if not (where / "folds.json").exists():
        cli("data", "folds", cfg.data.train, "--k", str(col.folds), "--strips", str(col.folds), "--seed", str(seed),
            "--out-dir", str(where))
    return json.loads((where / "folds.json").read_text())


def run_folds(info: dict, col: TreeColumn, protocol: str, seed: int, work: Path, others: int, steps: int = STEPS,
              only: int | None = None) -> list[dict]:
    """A held-out-fold column (``col.folds``): one model per fold (``only``: that fold's alone, no measurement, to
    train the folds in parallel processes), each a dev record (``"what": "foldF"``); with every fold model trained, the
    mining records of ``minedet mine --folds``."""
    from minedet.data.coco import load_coco
    from minedet.data.folds import read_folds

    cfg = make_config(info, col, protocol, seed, steps)
    out_dir = run_dir(work, protocol, col.label, seed, cfg)
    record = make_folds(cfg, col, seed, out_dir)
    base = _base(col, protocol, seed, cfg, others)
    recs = []
    for f, fold in enumerate(record["folds"]):
        if only is not None and f != only:
            continue
        fcfg = make_config(info, col, protocol, seed, steps, train=fold["train"])
        rec = _train(fcfg, {**base, "split": "dev", "what": f"fold{f}", "fold": f,
                            "train_images": len(load_coco(fold["train"]).images),
                            "held_out_images": len(fold["image_ids"])}, out_dir / f"fold{f}")
        recs.append(rec)
    if only is not None:
        return recs
    folds = read_folds(record, load_coco(cfg.data.train), file=str(out_dir / "folds" / "folds.json"))
    models = [out_dir / f"fold{f}" / "model.pt" for f in range(len(record["folds"]))]
    base = {**base, "steps": recs[0]["steps"]}
    return recs + [{**base, "split": "train", "what": "held_out_ap", **held_out_ap(models, folds, info, cfg)}] + \
        measure_model(models, col, cfg, base, folds)


def run_one(info: dict, col: TreeColumn, protocol: str, seed: int, work: Path, others: int, steps: int = STEPS,
            fold: int | None = None) -> list[dict]:
    """Train one column on one protocol and seed; its records (dev, test for final columns, train for mining)."""
    if col.folds:
        return run_folds(info, col, protocol, seed, work, others, steps, fold)
    cfg = make_config(info, col, protocol, seed, steps)
    out_dir = run_dir(work, protocol, col.label, seed, cfg)
    base = _base(col, protocol, seed, cfg, others)
    rec = _train(cfg, {**base, "split": "dev"}, out_dir)
    recs = [rec]
    model = out_dir / "model.pt"
    if col.final and steps == STEPS:  # test: the page's columns at the protocol's budget only, never a probe
        from minedet.engine.checkpoint import load_model

        recs.append({**base, "split": "test", "steps": rec["steps"],
                     **score_split(load_model(model)[0], info, "test", cfg)})
    return recs + measure_model(model, col, cfg, {**base, "steps": rec["steps"]})


def remine(info: dict, args, work: Path) -> int:
    """New mining and dev precision-recall records for each finished run of the columns and seeds asked (the same
    saved model, measured with the library as it is now: e.g. after ``minedet mine`` learnt to propose its score)."""
    for seed in args.seeds:
        for label in args.columns:
            col = BY_LABEL[label]
            cfg = make_config(info, col, args.protocol, seed, args.steps)
            out_dir = run_dir(work, args.protocol, label, seed, cfg)
            runs = [out_dir / f"fold{f}" for f in range(col.folds)] if col.folds else [out_dir]
            if any(common.finished_run(r, args.steps) is None for r in runs):
                continue
            origin = common.run_origin()
            if col.folds:  # the fold models measured again (each a rebuilt dev record), then the mining
                recs = run_folds(info, col, args.protocol, seed, work, origin["other_benchmarks"], args.steps)
                common.append_records(NAME, [{**r, "remined_from_checkpoint": True, "origin": origin} for r in recs])
                continue
            base = {"column": label, "protocol": args.protocol, "seed": seed, "method": label, "default": col.default,
                    "threads": cfg.train.threads, "steps": args.steps, "remined_from_checkpoint": True,
                    "origin": origin}
            common.append_records(NAME, measure_model(out_dir / "model.pt", col, cfg, base))
            print(f"[trees] remined {args.protocol} {label} s{seed}", file=sys.stderr)
    return 0


def run_jobs(args, argv: list[str]) -> int:
    """``--jobs N``: each (column, seed) in its own process (``--jobs 1`` of this script), N at a time, seeds outermost
    (seed 0 of every column first); each appends its records as it finishes. The exit status is the worst child's."""
    import subprocess

    base = [a for i, a in enumerate(argv) if a != "--jobs" and (i == 0 or argv[i - 1] != "--jobs")]
    base = [a for a in base if not a.startswith("--jobs=")]
    keep = _without(base, ("--columns", "--seeds"))
    todo = [(label, seed) for seed in args.seeds for label in args.columns]
    running: list[subprocess.Popen] = []
    worst = 0
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    while todo or running:
        while todo and len(running) < args.jobs:
            label, seed = todo.pop(0)
            cmd = [sys.executable, __file__, *keep, "--columns", label, "--seeds", str(seed)]
            running.append(subprocess.Popen(cmd, env=env))
        time.sleep(5)
        for proc in [p for p in running if p.poll() is not None]:
            worst = max(worst, proc.returncode)
            running.remove(proc)
    return worst


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` without the given options and the values that follow each."""
    out, skip = [], False
    for a in argv:
        if a in options:
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        out.append(a)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", choices=PROTOCOLS, default="random")
    ap.add_argument("--columns", nargs="+", default=[c.label for c in COLUMNS], choices=list(BY_LABEL), metavar="COLUMN")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=STEPS, help=f"training steps of every column (default {STEPS})")
    ap.add_argument("--fold", type=int, default=None,
                    help="a held-out-fold column: train this fold's model alone and record it, no mining (one process "
                         "per fold; the run without --fold then measures the mining)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at a time, each its own process with OMP_NUM_THREADS=1 (default 1; 2 on a 2-core machine)")
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "minedet"))
    ap.add_argument("--work", default=None, help="run folders (default CACHE/real_trees-runs; a finished run is reused)")
    ap.add_argument("--list", action="store_true", help="print the declared columns and exit")
    ap.add_argument("--data-only", action="store_true", help="build the data and exit")
    ap.add_argument("--remine", action="store_true",
                    help="measure the mining again with the finished runs' saved models (a new train record each)")
    args = ap.parse_args(argv)
    if args.jobs < 1:
        ap.error("--jobs must be at least 1")
    if args.fold is not None and not all(0 <= args.fold < BY_LABEL[c].folds for c in args.columns):
        ap.error("--fold F needs columns with held-out folds (and F below their number of folds)")
    if args.list:
        for c in COLUMNS + PROBES:
            print(f"{c.label:14s} minedet train {c.method} {' '.join(c.overrides)}"
                  f"{' (x2 batch)' if c.batch > 1 else ''}{' [default]' if c.default else ''}\n{'':14s} {c.meaning}")
        return 0
    info = build_data(Path(args.cache))
    print(json.dumps(info["splits"]), file=sys.stderr)
    if args.data_only:
        return 0
    if args.jobs > 1 and not args.remine:
        return run_jobs(args, argv)
    work = Path(args.work or Path(args.cache) / "real_trees-runs")
    if args.remine:
        return remine(info, args, work)
    for seed in args.seeds:
        for label in args.columns:
            origin = common.run_origin()  # the commit and neighbours the run started with
            t0 = time.time()
            recs = run_one(info, BY_LABEL[label], args.protocol, seed, work, origin["other_benchmarks"], args.steps,
                           args.fold)
            common.append_records(NAME, [{**r, "origin": origin} for r in recs],
                                  protocol_doc="docs/benchmarks.md#real-images-tree-crowns-neon-chosen-on-dev-reported-on-test")
            dev = recs[0]
            print(f"[trees] {args.protocol} {label} s{seed}: dev AP {100 * dev['ap']:.1f} AP50 {100 * dev['ap50']:.1f} "
                  f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
