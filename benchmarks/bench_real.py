"""Real images: sparse labels on a fluorescence microscopy image of nuclei, trained on tiles.

Usage:
  OMP_NUM_THREADS=1 python benchmarks/bench_real.py                     # every column, seeds 0 1 2
  python benchmarks/bench_real.py --methods co_mining_best --seeds 0 1 2  # one column again (appended)
  python benchmarks/bench_real.py --list                                  # the declared columns and what each trains

Data: the 2D nuclei image and its instance mask that ship inside the ``stardist`` wheel on PyPI
(``stardist/data/images/img2d.tif``, ``mask2d.tif``: 512 x 512 px, 125 nuclei). On first use the
wheel is fetched with ``pip download --no-deps`` into ``CACHE/stardist-<version>/`` (default cache
``.cache/minedet``, like the digits dataset) and the two files are read from the zip; stardist is
not installed. No network afterwards.

Protocol:
  * one box per nucleus: the bounding box of its mask (xyxy pixel edges);
  * train = the left 3/4 of the image (x < 384), val = the right 1/4 (x >= 384): no pixel in both.
    A nucleus crossing x = 384 goes to each side by the visible-fraction rule (>= 0.5 of its box:
    kept, clipped; less: crowd, ignored by pycocotools);
  * per seed, 50 % of the training nuclei are erased (``minedet data sparsify --mode missing
    --rate 0.5``, on the whole training region, so an erased nucleus is erased in every tile);
  * training on ``minedet data tile`` tiles of the training region (128 px, overlap 48 px, larger
    than any nucleus), RetinaNet + EfficientNet-Lite0 FPN (ImageNet weights), 128 px input;
  * AP / AP50 on the val region, predicted with ``predict_tiled`` (the same tiles, merged);
  * mined boxes: ``predict_tiled`` on the training region, detections that do not overlap a labelled
    box (IoU <= 0.4), scored against the erased nuclei (IoU >= 0.5) at score thresholds 0.3..0.9;
    co-mining's own mined-box quality over training is logged when data.hidden is set.

Held-out folds (columns folds_*): the training region is cut into 2 vertical bands of 192 px, each tiled
on its own (the same tile size and overlap, 12 tiles each); ``minedet.data.folds`` deals the bands to
2 folds; the model of fold f trains 250 steps on the other band's (sparse) tiles and mines band f
(tiled prediction, merged); the mined boxes of both bands are scored like every column's. Then the
boxes mined at score > 0.5 (IoU and part rules) join the labels of the ordinary tiles and a supervised
model is retrained on them: the column's AP is that model's (the fold models' own AP is kept as
``fold_ap``). Three trainings per seed.

Columns: every column is declared once in ``COLUMNS`` (a ``NucleiColumn``: label, meaning, method, the page's
heading, labels, method options, loss, batch, held-out folds); the runner and ``report.py`` read the declaration, never
the label's spelling. Records are keyed by the label, so a declared column is never changed: another setting is another
column. ``--list`` prints each column, the method block it trains with and what it means. Every column's mined
boxes are scored twice: with the IoU rule alone (``mine_pr``) and with the part rule too (``mine_pr_part``, as
``minedet mine --part 0.3``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import common
from common import ROOT, Column, finished_run, train_record

STARDIST = "0.9.2"  # the wheel the data is read from (the two files are the same in every wheel of it)
PLATFORM = "manylinux_2_28_x86_64"  # pinned so everyone fetches the same file, whatever their machine
MEMBERS = {"image": "stardist/data/images/img2d.tif", "mask": "stardist/data/images/mask2d.tif"}
SPLIT_X = 384  # train: x < 384, val: x >= 384
TILE, OVERLAP = 128, 48
MIN_VISIBLE = 0.5
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

# the Co-mining release's settings (Wang et al., AAAI 2021; see DESIGN.md), pinned here so a change
# of minedet's defaults does not move this column
PAPER = {"name": "co_mining", "tau": 0.6, "iou_gt": 0.4, "view": "color", "gt_match": "same", "max_dets": 100,
         "topk": 1000, "siamese": True, "cogeneration": True, "pseudo_regress": True, "paper": True}
#: the classification loss of the BRL columns (background recalibration; on it co-mining's ignored band is off by
#: default): co_mining_brl is the digits_co_mining preset whole (its method block and this model option)
BRL_MODEL = {"cls_loss": "brl"}
#: the part rule (drop a box with this share of its own area on labelled nuclei): co_mining_part trains with it,
#: and every column's mined boxes are also scored with it (``mine_pr_part``, as ``minedet mine --part 0.3``)
PART = 0.3
#: held-out folds (``minedet data folds`` + ``minedet mine --folds``): the training region is cut into this many
#: vertical bands, each tiled on its own, so a band's tiles share no pixel with the other band's; the model of
#: fold f trains on the other band's tiles and mines band f
BANDS = 2
#: after held-out mining, the boxes mined above this score (IoU and part rules applied) join the labels and a
#: supervised model is retrained on the completed tiles: the column's AP is that model's
RETRAIN_SCORE = 0.5


@dataclass(frozen=True)
class NucleiColumn(Column):
    """A column of the nuclei table: a declared :class:`common.Column` with what this script's runner and the page read.

    ``method`` is what a held-out fold column's fold models train as (its retrained model is supervised).

    Attributes:
        heading: the name the page's tables give it;
        labels: ``sparse`` (the protocol's: half the training nuclei erased) or ``full`` (every training nucleus
            labelled: the ceiling, nothing to mine);
        preset: a co-mining block starts from the digits_co_mining preset's as it is when run (True) or from the
            release's settings pinned here (:data:`PAPER`; False); a supervised column's block is ``{"name": "supervised"}``;
        settings: the method options beyond that block, exactly as the column's records ran;
        model_extra: its model.extra (BRL's loss);
        folds: held-out folds (:func:`held_out_folds`): the label of the column the fold models train as (then a
            supervised model is retrained on the tiles completed with their mined boxes), or None;
        skip_if_paper: not run while its method block resolves to the paper's setting (it would repeat co_mining);
        figure: its model of the first seed draws the page's mined-boxes figure (docs/img/real_nuclei_mined.png).
    """

    heading: str
    labels: str = "sparse"
    preset: bool = False
    settings: Mapping[str, Any] = field(default_factory=dict)
    model_extra: Mapping[str, Any] = field(default_factory=dict)
    folds: str | None = None
    skip_if_paper: bool = False
    figure: bool = False

    def __post_init__(self) -> None:
        if self.labels not in ("sparse", "full"):
            raise ValueError(f"column {self.label}: labels {self.labels!r} is not 'sparse' or 'full'")

    @property
    def on_brl(self) -> bool:
        """Whether the column trains on BRL's loss."""
        return self.model_extra.get("cls_loss") == "brl"


FULL = NucleiColumn("full", "every training nucleus labelled (the ceiling)", "supervised", heading="full labels",
                    labels="full", short="full labels")
ORIGINAL = NucleiColumn("original", "supervised on the sparse labels", "supervised", heading="original", short="original")
BRL_ALONE = NucleiColumn("brl", "original on BRL's loss (model.extra.cls_loss=brl)", "supervised",
                         heading="original on BRL's loss", model_extra=BRL_MODEL, short="BRL's loss")
#: the digits_co_mining preset's method block on BRL's loss: the preset whole
CO_MINING_BRL = NucleiColumn("co_mining_brl", "the digits_co_mining preset whole: its method block on BRL's loss",
                             "co_mining", heading="co-mining on BRL's loss (the `digits_co_mining` preset)", preset=True,
                             model_extra=BRL_MODEL, short="co-mining on BRL's loss (the preset)")
#: the preset's two views on BRL's loss without co-generation: what the mined boxes add on top of the second view
JOINT_BRL = replace(CO_MINING_BRL, label="joint_brl", settings={"cogeneration": False}, short="joint on BRL's loss",
                    heading="joint on BRL's loss (the preset, `method.cogeneration=false`)",
                    meaning="the digits_co_mining preset's two views on BRL's loss without co-generation "
                            "(method.cogeneration=false)")
#: a grey fluorescence image's colour view changes only its brightness and contrast, a blur more
CO_MINING_BRL_BLUR = replace(CO_MINING_BRL, label="co_mining_brl_blur", settings={"view": "blur"},
                             heading="co-mining on BRL's loss, blurred second view (`method.view=blur`)",
                             short="co-mining on BRL's loss, blurred view",
                             meaning="co_mining_brl with a blurred second view (method.view=blur), as a grey image's "
                                     "colour view changes only its brightness and contrast")
#: every column of the nuclei table, each declared once (its label keys its records for good), in the page's order;
#: the *_2x columns train on twice the tiles per step, the compute of a two-view step (the equal-compute rivals of
#: joint and co-mining)
COLUMNS: tuple[NucleiColumn, ...] = (
    FULL,
    ORIGINAL,
    BRL_ALONE,
    replace(FULL, label="full_2x", heading="full labels, twice the batch", batch=2, short=None,
            meaning="full labels on twice the tiles per step (the compute of a two-view step)"),
    replace(ORIGINAL, label="original_2x", heading="original, twice the batch (equal compute)", batch=2, short=None,
            meaning="original on twice the tiles per step (the compute of a two-view step: equal compute)"),
    replace(BRL_ALONE, label="brl_2x", heading="original on BRL's loss, twice the batch (equal compute)", batch=2,
            short="BRL's loss on twice the batch",
            meaning="original on BRL's loss on twice the tiles per step (equal compute)"),
    NucleiColumn("joint", "the Siamese detector on two views without co-generation, the release's settings otherwise",
                 "co_mining", heading="joint", settings={"cogeneration": False}),
    NucleiColumn("co_mining", "co-mining with the paper's / release's settings, pinned here (a change of minedet's "
                 "defaults does not move it)", "co_mining", heading="co-mining (paper)", figure=True),
    NucleiColumn("co_mining_best", "the digits_co_mining preset's method block as it is when run (rerun it after the "
                 "preset's defaults change)", "co_mining", heading="co-mining (best defaults)", preset=True,
                 skip_if_paper=True),
    NucleiColumn("co_mining_part", "co_mining_best with method.part 0.3: mined boxes lying mostly on labelled nuclei are "
                 "not mined", "co_mining", heading="co-mining (best defaults + part 0.3)", preset=True,
                 settings={"part": PART}),
    JOINT_BRL,
    CO_MINING_BRL,
    replace(JOINT_BRL, label="joint_brl_blur", settings={"cogeneration": False, "view": "blur"}, short=None,
            heading="joint on BRL's loss, blurred second view",
            meaning="joint_brl with a blurred second view (method.view=blur)"),
    CO_MINING_BRL_BLUR,
    replace(CO_MINING_BRL_BLUR, label="co_mining_brl_blur_noreg", settings={"view": "blur", "pseudo_regress": False},
            short=None, heading="the same, mined boxes teaching no box regression (`method.pseudo_regress=false`)",
            meaning="co_mining_brl_blur with mined boxes teaching classification only, not box regression "
                    "(method.pseudo_regress=false, as FCOS's default)"),
    NucleiColumn("folds_original", "held-out folds: each band mined by a model trained as original on the other band, "
                 "then a supervised model retrained on the tiles completed with the mined boxes", "supervised",
                 heading="held-out folds, original, retrained", folds="original"),
    NucleiColumn("folds_co_mining", "held-out folds with the fold models trained as co_mining_part, then a supervised "
                 "model retrained on the completed tiles", "co_mining", heading="held-out folds, co-mining + part, retrained",
                 folds="co_mining_part"),
)
BY_LABEL = {c.label: c for c in COLUMNS}


# --------------------------------------------------------------------------------------------- data
def fetch_wheel(cache: Path) -> Path:
    """The stardist wheel in the cache (:func:`common.fetch_wheel`)."""
    return common.fetch_wheel("stardist", STARDIST, cache, platform=PLATFORM)


def read_nuclei(wheel: Path):
    """(image uint8 [H, W], mask int [H, W], sha256 of the two files) from the wheel."""
    import numpy as np
    from PIL import Image

    with zipfile.ZipFile(wheel) as z:
        raw = {k: z.read(v) for k, v in MEMBERS.items()}
    img = np.asarray(Image.open(io.BytesIO(raw["image"])), dtype=np.float64)
    mask = np.asarray(Image.open(io.BytesIO(raw["mask"]))).astype(np.int64)
    lo, hi = np.percentile(img, [1, 99.8])  # the usual fluorescence normalisation (StarDist's)
    img8 = (np.clip((img - lo) / max(hi - lo, 1e-9), 0, 1) * 255).round().astype(np.uint8)
    return img8, mask, {k: hashlib.sha256(v).hexdigest() for k, v in raw.items()}


def region_coco(boxes: list[list[int]], x0: int, x1: int, height: int, file_name: str) -> dict:
    """The nuclei of the region x0 <= x < x1 as one image's COCO dict (boxes by the visible rule)."""
    from minedet.data.tiles import cut_box

    anns = []
    for b in boxes:
        got = cut_box(b, (x0, 0, x1, height))
        if got is None:
            continue
        (cx1, cy1, cx2, cy2), vis = got
        whole = vis >= 1.0
        x, y, w, h = (b[0] - x0, b[1], b[2] - b[0], b[3] - b[1]) if whole else (cx1 - x0, cy1, cx2 - cx1, cy2 - cy1)
        anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": 1, "bbox": [x, y, w, h], "area": w * h,
                     "iscrowd": 0 if vis >= MIN_VISIBLE else 1, "visible": round(vis, 4)})
    return {"images": [{"id": 1, "file_name": file_name, "width": x1 - x0, "height": height}],
            "annotations": anns, "categories": [{"id": 1, "name": "nucleus"}]}


def build_data(cache: Path) -> dict:
    """The regions, their COCO files and the training tiles, once, in CACHE/real_nuclei-<version>/."""
    import numpy as np
    from PIL import Image
    from scipy import ndimage

    from minedet.data.coco import load_coco, save_coco
    from minedet.data.tiles import tile_coco, write_tiles
    from minedet.io import write_json_atomic

    root = cache / f"real_nuclei-stardist{STARDIST}-t{TILE}o{OVERLAP}"
    info_path = root / "info.json"
    if info_path.exists():
        return json.loads(info_path.read_text())
    img8, mask, sha = read_nuclei(fetch_wheel(cache))
    H, W = mask.shape
    boxes = [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(mask) if s is not None]
    rgb = np.repeat(img8[:, :, None], 3, axis=2)
    root.mkdir(parents=True, exist_ok=True)
    for name, (x0, x1) in {"train": (0, SPLIT_X), "val": (SPLIT_X, W)}.items():
        Image.fromarray(rgb[:, x0:x1]).save(root / f"{name}_region.png")
        save_coco(root / f"{name}_region.json", region_coco(boxes, x0, x1, H, f"{name}_region.png"))
    tiled = tile_coco(load_coco(root / "train_region.json"), TILE, OVERLAP, min_visible=MIN_VISIBLE)
    write_tiles(tiled, root, root / "tiles")
    info = {"root": str(root), "sha256": sha, "wheel": f"stardist=={STARDIST}", "nuclei": len(boxes),
            "image": [W, H], "box_side_px": [int(np.min([b[2] - b[0] for b in boxes])), int(np.max([b[2] - b[0] for b in boxes]))],
            "train_region": [0, SPLIT_X], "val_region": [SPLIT_X, W], "tiles": len(tiled.coco["images"]),
            "train_boxes": sum(1 for a in load_coco(root / "train_region.json").annotations if not a["iscrowd"]),
            "val_boxes": sum(1 for a in load_coco(root / "val_region.json").annotations if not a["iscrowd"])}
    write_json_atomic(info_path, info, indent=1)
    return info


def sparse_tiles(info: dict, seed: int) -> tuple[str, str, int, int]:
    """Erase 50 % of the training region's nuclei (seeded) and split the tiles' annotations alike:
    (kept tiles JSON, hidden tiles JSON, kept nuclei, erased nuclei)."""
    from minedet.data.coco import load_coco, save_coco
    from minedet.data.splits import sparsify

    root = Path(info["root"])
    kept_p, hidden_p = root / f"tiles_sparse_s{seed}.json", root / f"tiles_sparse_s{seed}.hidden.json"
    region = load_coco(root / "train_region.json").raw
    whole = {**region, "annotations": [a for a in region["annotations"] if not a["iscrowd"]]}
    erased = {a["id"] for a in sparsify(whole, "missing", seed, rate=0.5).hidden["annotations"]}
    if not (kept_p.exists() and hidden_p.exists()):
        tiles = load_coco(root / "tiles" / "tiles.json").raw
        part = lambda hide: {**tiles, "annotations": [a for a in tiles["annotations"] if (a["source_ann"] in erased) == hide]}  # noqa: E731
        save_coco(hidden_p, part(True))
        save_coco(kept_p, part(False))
    return str(kept_p), str(hidden_p), len(whole["annotations"]) - len(erased), len(erased)


# --------------------------------------------------------------------------------------------- runs
def resolved(method: dict) -> dict:
    """The method block with every option filled in (to tell whether two columns are one setting)."""
    try:
        from minedet.options import from_dict
        from minedet.registry import METHODS as REG

        opts = from_dict(REG[method["name"]][1], {k: v for k, v in method.items() if k != "name"}, where="method")
        d = {"name": method["name"], **dataclasses.asdict(opts)}
        return {k: v for k, v in d.items() if not k.startswith("render")}
    except Exception:  # noqa: BLE001 - a registry under refactor: compare the blocks as written
        return dict(method)


def method_block(col: NucleiColumn) -> dict:
    """The method block column ``col`` trains with (a held-out fold column: its fold models')."""
    from minedet.config import load_config, preset_path

    if col.folds is not None:  # the fold models' method (the retrained model is supervised)
        return method_block(BY_LABEL[col.folds])
    if col.method == "supervised":
        return {"name": "supervised", **col.settings}
    # the preset's block (the BRL columns train on its loss too) or the release's settings pinned here
    start = dict(load_config(preset_path("digits_co_mining")).method) if col.preset else dict(PAPER)
    return {**start, **col.settings}


def make_config(info: dict, col: NucleiColumn, seed: int, steps: int, batch: int):
    """The config of one run of column ``col`` (a held-out fold column: use its fold column, see held_out_folds)."""
    from minedet.config import load_config, preset_path

    cfg = load_config(preset_path("digits_retinanet"))
    root = Path(info["root"])
    cfg.data.digits = None
    cfg.data.val = cfg.data.val_images = None
    cfg.data.image_size, cfg.data.batch_size, cfg.data.flip = TILE, batch * col.batch, 0.5  # *_2x: twice the tiles
    cfg.data.train_images = str(root / "tiles")
    if col.labels == "full":
        cfg.data.train = str(root / "tiles" / "tiles.json")
    else:
        cfg.data.train, cfg.data.hidden, _, _ = sparse_tiles(info, seed)
    cfg.method = method_block(col)
    cfg.model.extra = dict(col.model_extra)
    cfg.train.max_steps, cfg.train.seed = steps, seed
    cfg.train.warmup_steps = min(cfg.train.warmup_steps, max(1, steps // 5))
    cfg.train.ckpt_every, cfg.train.log_every, cfg.train.eval_every = max(steps, 1), 10, 0
    return cfg


def region_predictions(model_path: Path, info: dict, name: str):
    """Detections of the model on a region (tiled prediction, boxes in region pixels), its COCO dict."""
    from minedet.data.coco import load_coco
    from minedet.data.datasets import load_image
    from minedet.engine.checkpoint import load_model
    from minedet.engine.tiled import predict_tiled

    root = Path(info["root"])
    det, _ = load_model(model_path)
    img = load_image(root / f"{name}_region.png")
    d = predict_tiled(det, img, TILE, OVERLAP, score_thresh=0.05, image_id=1)
    return d, load_coco(root / f"{name}_region.json")


def evaluate(model_path: Path, info: dict) -> dict:
    from minedet.engine.evaluate import coco_results, evaluate_detections

    d, gt = region_predictions(model_path, info, "val")
    rep = evaluate_detections(gt.raw, coco_results([(1, d)], gt.cat_ids), image_ids=[1], class_names=gt.class_names)
    return {"ap": rep.ap, "ap50": rep.ap50, "ap75": rep.ap75, "val_detections": len(d)}


def mined_quality(model_path: Path | None, info: dict, seed: int, detections=None) -> dict:
    """Mine the training region (tiled prediction, merged; or ``detections`` in region pixels) and score it
    against the erased nuclei."""
    from minedet.data.coco import load_coco
    from minedet.data.splits import sparsify
    from minedet.mining import gt_target
    from minedet.pseudo.filters import drop_overlapping, drop_parts
    from minedet.pseudo.quality import match

    if detections is None:
        d, region = region_predictions(model_path, info, "train")
    else:
        d, region = detections, load_coco(Path(info["root"]) / "train_region.json")
    whole = {**region.raw, "annotations": [a for a in region.raw["annotations"] if not a["iscrowd"]]}
    erased = {a["id"] for a in sparsify(whole, "missing", seed, rate=0.5).hidden["annotations"]}
    labelled = gt_target(_subset(region, lambda a: a["id"] not in erased), 1)  # crowd pieces count as labelled
    hidden = gt_target(_subset(region, lambda a: a["id"] in erased and not a["iscrowd"]), 1)
    cand = drop_overlapping(d, labelled, 0.4, same_class=False)

    def rows(c):
        out = []
        for t in THRESHOLDS:
            m = c.select(c.scores > t)
            tp, _ = match(m, hidden)
            out.append({"threshold": t, "n_mined": len(m), "tp": tp, "n_hidden": len(hidden),
                        "precision": tp / len(m) if len(m) else None, "recall": tp / len(hidden) if len(hidden) else None})
        return out

    return {"mine_pr": rows(cand), "mine_pr_part": rows(drop_parts(cand, labelled, PART)),
            "_mined_part": drop_parts(cand, labelled, PART)}


def band_tiles(info: dict) -> dict:
    """The training region cut into BANDS vertical bands (one image each, boxes by the visible rule, each
    box naming its region nucleus as ``"nucleus"``), tiled band by band: {"root", "bands": [(x0, x1)]}."""
    from PIL import Image

    from minedet.data.coco import load_coco, save_coco
    from minedet.data.tiles import cut_box, tile_coco, write_tiles

    root = Path(info["root"])
    out = root / f"bands{BANDS}"
    width, height = SPLIT_X, info["image"][1]
    edges = [round(width * b / BANDS) for b in range(BANDS + 1)]
    bands = list(zip(edges[:-1], edges[1:]))
    if (out / "tiles" / "tiles.json").exists():
        return {"root": str(out), "bands": bands}
    region = load_coco(root / "train_region.json").raw
    img = Image.open(root / "train_region.png")
    (out / "src").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for b, (x0, x1) in enumerate(bands):
        img.crop((x0, 0, x1, height)).save(out / "src" / f"band{b}.png")
        images.append({"id": b + 1, "file_name": f"band{b}.png", "width": x1 - x0, "height": height})
        for a in region["annotations"]:
            x, y, w, h = a["bbox"]
            got = cut_box([x, y, x + w, y + h], (x0, 0, x1, height))
            if got is None:
                continue
            (cx1, cy1, cx2, cy2), vis = got
            anns.append({"id": len(anns) + 1, "image_id": b + 1, "category_id": 1,
                         "bbox": [cx1 - x0, cy1, cx2 - cx1, cy2 - cy1], "area": (cx2 - cx1) * (cy2 - cy1),
                         "iscrowd": int(bool(a["iscrowd"]) or vis < MIN_VISIBLE), "nucleus": a["id"]})
    save_coco(out / "bands.json", {"images": images, "annotations": anns, "categories": region["categories"]})
    tiled = tile_coco(load_coco(out / "bands.json"), TILE, OVERLAP, min_visible=MIN_VISIBLE)
    write_tiles(tiled, out / "src", out / "tiles")
    return {"root": str(out), "bands": bands}


def _erased(info: dict, seed: int) -> set[int]:
    from minedet.data.coco import load_coco
    from minedet.data.splits import sparsify

    region = load_coco(Path(info["root"]) / "train_region.json").raw
    whole = {**region, "annotations": [a for a in region["annotations"] if not a["iscrowd"]]}
    return {a["id"] for a in sparsify(whole, "missing", seed, rate=0.5).hidden["annotations"]}


def retrain_suffix(score: float) -> str:
    """What a held-out fold column's label and retraining folder add for a retraining on the boxes mined above
    ``score``: nothing at :data:`RETRAIN_SCORE`, ``_rNN`` at another (NN: the score in hundredths; the same fold
    models retrained again, recorded as another column)."""
    return "" if score == RETRAIN_SCORE else f"_r{round(100 * score)}"


def held_out_folds(info: dict, col: NucleiColumn, seed: int, args, out: Path) -> dict:
    """Mine each band with the model trained on the other (minedet.data.folds + minedet mine --folds, at region
    level) as ``col.folds`` declares, score the mined boxes, retrain on the tiles completed with them; the record."""
    import torch

    from minedet.data.coco import load_coco, save_coco
    from minedet.data.datasets import load_image
    from minedet.data.folds import assign_folds, fold_training_set
    from minedet.engine.checkpoint import load_model
    from minedet.engine.tiled import predict_tiled
    from minedet.structures import Target

    bt = band_tiles(info)
    broot = Path(bt["root"])
    tiles = load_coco(broot / "tiles" / "tiles.json").raw
    erased = _erased(info, seed)
    kept = {**tiles, "annotations": [a for a in tiles["annotations"] if a["nucleus"] not in erased]}
    kept_p = out / "band_tiles_sparse.json"
    out.mkdir(parents=True, exist_ok=True)
    save_coco(kept_p, kept)
    folds = assign_folds(load_coco(kept_p), BANDS, seed)
    band_of_image = {int(im["id"]): int(im["tile"]["source"]) - 1 for im in tiles["images"]}
    fold_band = [band_of_image[ids[0]] for ids in folds]
    found, fold_ap, walls = [], [], []
    score = args.retrain_score
    suffix = retrain_suffix(score)  # another retraining of the same fold models
    fold_method = col.folds
    for f, ids in enumerate(folds):
        train_p = out / f"fold{f}.train.json"
        save_coco(train_p, fold_training_set(kept, ids))
        cfg = make_config(info, BY_LABEL[fold_method], seed, args.steps, args.batch_size)
        cfg.data.train, cfg.data.train_images, cfg.data.hidden = str(train_p), str(broot / "tiles"), None
        run = out / f"fold{f}"
        r = train_record(cfg, label={}, out_dir=run, resume=finished_run(run, args.steps) if args.reuse_finished else None)
        walls.append(r["wall_s"])
        fold_ap.append(evaluate(run / "model.pt", info)["ap"])
        det, _ = load_model(run / "model.pt")
        b = fold_band[f]
        x0 = bt["bands"][b][0]
        d = predict_tiled(det, load_image(broot / "src" / f"band{b}.png"), TILE, OVERLAP, score_thresh=0.05, image_id=1)
        found.append(Target(d.boxes + torch.tensor([x0, 0, x0, 0], dtype=d.boxes.dtype), d.labels, d.scores))
    merged = Target(torch.cat([t.boxes for t in found]), torch.cat([t.labels for t in found]),
                    torch.cat([t.scores for t in found]))
    q = mined_quality(None, info, seed, detections=merged)
    mined = q.pop("_mined_part")
    mined = mined.select(mined.scores > score)
    # retrain: the ordinary sparse tiles + the mined boxes cut into them
    completed_p = out / "completed_tiles.json"
    sparse_p, _, _, _ = sparse_tiles(info, seed)
    save_coco(completed_p, completed_tiles(load_coco(sparse_p).raw, mined))
    cfg = make_config(info, ORIGINAL, seed, args.steps, args.batch_size)  # the retrained model: supervised
    cfg.data.train, cfg.data.hidden = str(completed_p), None
    rec = train_record(cfg, label={"method": col.label + suffix, "split": "missing50", "seed": seed, "detector": "retinanet",
                                   "run": out.name}, out_dir=(retrained := out / f"retrain{suffix}"))
    rec.pop("curve", None)
    rec.update(evaluate(retrained / "model.pt", info))
    rec.update(q)
    rec.update(fold_ap=fold_ap, fold_method=fold_method, fold_wall_s=walls, retrain_score=score,
               mined_added=len(mined), bands=bt["bands"])
    return rec


def completed_tiles(sparse: dict, mined) -> dict:
    """The sparse tiles' COCO dict plus each mined region box cut into every tile it lies in (visible rule;
    ``"mined": true``; less visible: left out)."""
    from minedet.data.tiles import cut_box

    anns = list(sparse["annotations"])
    next_id = max((a["id"] for a in anns), default=0) + 1
    for im in sparse["images"]:
        t = im["tile"]
        window = (t["x"], t["y"], t["x"] + im["width"], t["y"] + im["height"])
        for box in mined.boxes.tolist():
            got = cut_box(box, window)
            if got is None or got[1] < MIN_VISIBLE:
                continue
            (x1, y1, x2, y2), _ = got
            anns.append({"id": next_id, "image_id": im["id"], "category_id": 1, "iscrowd": 0, "mined": True,
                         "bbox": [x1 - t["x"], y1 - t["y"], x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
            next_id += 1
    return {**sparse, "annotations": anns}


def _subset(data, keep):
    from minedet.data.coco import validate_coco

    raw = {**data.raw, "annotations": [a for a in data.raw["annotations"] if keep(a)]}
    return validate_coco(raw, file=str(data.path))


def figure(model_path: Path, info: dict, seed: int, out: Path) -> str:
    """Mined boxes on the training tile with the most erased nuclei: labelled green, erased blue,
    mined (score > 0.5, not on a labelled box) red."""
    from minedet.data.coco import load_coco
    from minedet.data.datasets import coco_target, load_image
    from minedet.engine.checkpoint import load_model
    from minedet.mining import gt_target
    from minedet.pseudo.filters import drop_overlapping
    from minedet.viz import BoxGroup, draw_boxes, save_png

    kept_p, hidden_p, _, _ = sparse_tiles(info, seed)
    kept, hidden = load_coco(kept_p), load_coco(hidden_p)
    best = max(kept.images, key=lambda im: (sum(1 for a in hidden.anns_by_image[im["id"]] if not a["iscrowd"]), -im["id"]))
    iid = int(best["id"])
    det, _ = load_model(model_path)
    img = load_image(Path(info["root"]) / "tiles" / best["file_name"])
    d = det.eval().predict([img], score_thresh=0.5)[0]
    mined = drop_overlapping(d, gt_target(kept, iid), 0.4, same_class=False)
    lab, hid = coco_target(kept, iid), coco_target(hidden, iid)
    pic = draw_boxes(img, [BoxGroup(hid.boxes, None, None, (80, 140, 255), 1),
                           BoxGroup(mined.boxes, None, mined.scores, (255, 40, 40), 1),
                           BoxGroup(lab.boxes, None, None, (40, 220, 40), 1)], min_side=384)
    save_png(pic, out)
    return (f"tile {best['file_name']} (seed {seed}): {len(lab)} labelled (green), {len(hid)} erased (blue), "
            f"{len(mined)} mined at score > 0.5 (red, with scores)")


def save(records: list[dict], new: list[dict], **extra) -> None:
    """Append to benchmarks/results/real_nuclei.json (append_results where common has it)."""
    if hasattr(common, "append_results"):
        common.append_results("real_nuclei", new, **extra)
    else:
        common.write_results("real_nuclei", records + new, **extra)
    records.extend(new)


def run_column(info: dict, col: NucleiColumn, seed: int, args, out: Path) -> dict:
    """Train column ``col`` on the split of ``seed`` (held-out folds: :func:`held_out_folds`), evaluate it on val and
    score its mined boxes; the record, without its method block and times."""
    if col.folds is not None:
        return held_out_folds(info, col, seed, args, out)
    cfg = make_config(info, col, seed, args.steps, args.batch_size)
    rec = train_record(cfg, label={"method": col.label, "split": "missing50", "seed": seed, "detector": "retinanet",
                                   "run": out.name}, out_dir=out)
    rec.pop("curve", None)
    rec["model_extra"] = dict(cfg.model.extra)  # the classification loss the column trained on
    rec["batch_size"] = cfg.data.batch_size  # tiles per step (twice --batch-size for the *_2x columns)
    rec.update(evaluate(out / "model.pt", info))
    if col.labels != "full":
        rec.update(mined_quality(out / "model.pt", info, seed))
        rec.pop("_mined_part")
    return rec


def print_columns() -> None:
    """--list: each declared column, the method block it trains with and what it means."""
    for c in COLUMNS:
        extra = "".join(f" model.extra.{k}={v}" for k, v in c.model_extra.items())
        how = f"held-out folds, fold models as {c.folds}: " if c.folds else ""
        print(f"{c.label:26s} {how}{json.dumps(method_block(c))}{extra}{' (x2 batch)' if c.batch > 1 else ''}"
              f"{' [full labels]' if c.labels == 'full' else ''}\n{'':26s} {c.meaning}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=[c.label for c in COLUMNS], choices=list(BY_LABEL), metavar="COLUMN",
                    help="columns to run (default: every declared column; --list shows each and what it trains)")
    ap.add_argument("--list", action="store_true", help="print the declared columns and exit")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=250, help="training steps per run (default 250, the steps of every recorded column)")
    ap.add_argument("--batch-size", type=int, default=8, help="tiles per step (default 8)")
    ap.add_argument("--cache-dir", default=".cache/minedet", help="where the wheel and the tiles are kept")
    ap.add_argument("--out", default=None, help="work folder for the runs (default: a temporary one)")
    ap.add_argument("--retrain-score", type=float, default=RETRAIN_SCORE,
                    help=f"held-out fold columns: retrain on the boxes mined above this score (default {RETRAIN_SCORE}); "
                         "another score is recorded as its own column, METHOD_rNN")
    ap.add_argument("--reuse-finished", action="store_true",
                    help="held-out fold columns: a fold model in --out that trained all its steps is evaluated again from "
                         "its final checkpoint instead of retrained (the same seed trains the same model)")
    ap.add_argument("--no-figure", action="store_true", help="do not draw docs/img/real_nuclei_mined.png")
    args = ap.parse_args()
    if args.list:
        print_columns()
        return 0

    info = build_data(Path(args.cache_dir))
    work = Path(args.out or tempfile.mkdtemp(prefix="minedet-real-"))
    old = (common.load_results("real_nuclei") if hasattr(common, "load_results") else None) or {}
    records: list[dict] = list(old.get("records", []))
    figure_line = old.get("figure")
    docs = Path(os.environ.get("MINEDET_BENCH_DOCS") or ROOT / "docs")
    paper = resolved(PAPER)
    for seed in args.seeds:
        for col in (BY_LABEL[m] for m in args.methods):
            block = method_block(col)
            res_block = resolved(block)
            if col.skip_if_paper and res_block == paper:
                print(f"[real] seed {seed} {col.label}: the preset's method block is the paper's setting; "
                      "not run twice", file=sys.stderr, flush=True)
                continue
            out = work / f"{col.label}_s{seed}"
            print(f"[real] seed {seed} {col.label:<15} ...", file=sys.stderr, flush=True)
            t0, c0 = time.perf_counter(), time.process_time()
            rec = run_column(info, col, seed, args, out)
            rec["method_block"] = block
            rec["method_resolved"] = res_block
            if col.labels != "full":
                _, _, n_kept, n_erased = sparse_tiles(info, seed)
                rec["train_nuclei_labelled"], rec["train_nuclei_erased"] = n_kept, n_erased
            rec["wall_s"] = round(time.perf_counter() - t0, 1)
            rec["cpu_s"] = round(time.process_time() - c0, 1)  # this process's CPU time (the budget is CPU minutes)
            extra = {}
            if col.figure and seed == min(args.seeds) and not args.no_figure:
                img = docs / "img" / "real_nuclei_mined.png"
                figure_line = figure(out / "model.pt", info, seed, img)
                extra["figure"] = figure_line
            print(f"    AP {100 * rec['ap']:.1f} AP50 {100 * rec['ap50']:.1f} ({rec['wall_s']:.0f} s)", file=sys.stderr, flush=True)
            save(records, [rec], note=note(args, info), data=info_public(info), paper_settings=PAPER, **extra)
    return 0


def info_public(info: dict) -> dict:
    return {k: v for k, v in info.items() if k != "root"}


def note(args, info: dict) -> str:
    return (f"StarDist's 2D nuclei image ({info['image'][0]} x {info['image'][1]} px, {info['nuclei']} nuclei, boxes from the "
            f"instance mask, {info['box_side_px'][0]}-{info['box_side_px'][1]} px wide). Train: the left {SPLIT_X} px "
            f"({info['train_boxes']} nuclei, {info['tiles']} tiles of {TILE} px with {OVERLAP} px overlap), val: the right "
            f"{info['image'][0] - SPLIT_X} px ({info['val_boxes']} nuclei, predicted tile by tile and merged). 50 % of the "
            f"training nuclei erased per seed (sparsify missing 0.5). RetinaNet + EfficientNet-Lite0 FPN (ImageNet "
            f"weights), {args.steps} steps of {args.batch_size} tiles, 128 px, one torch thread.")


if __name__ == "__main__":
    sys.exit(main())
