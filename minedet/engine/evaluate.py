"""COCO-style box evaluation with pycocotools (AP is pycocotools' AP, nothing re-implemented).

Detections arrive as :class:`~minedet.structures.Target` objects whose boxes are
``[x1, y1, x2, y2]`` in **original-image pixels** (the frame of the ground-truth JSON); they are
converted to COCO result records (``bbox = [x, y, w, h]``) by :func:`coco_results` and scored
against an in-memory COCO ground-truth dict by :func:`evaluate_detections`.

Neither function mutates its inputs: pycocotools writes into the annotation and result dicts it
is given (``ignore``, ``area``, ``id``, ``segmentation``), so both are copied first.
"""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from minedet.errors import MinedetError
from minedet.structures import Target

__all__ = ["EvalReport", "coco_results", "confusion_matrix", "evaluate_detections", "merge_results"]

_SUMMARY_KEYS = ("ap", "ap50", "ap75", "aps", "apm", "apl")
_SUMMARY_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


# ---------------------------------------------------------------------------------------------- results


def coco_results(
    detections: Iterable[tuple[int, Target]],
    label_to_cat_id: Callable[[int], int] | Sequence[int],
) -> list[dict]:
    """COCO result records from detections.

    Args:
        detections: ``(image_id, target)`` pairs; ``target.boxes`` is FloatTensor[N, 4] in
            ``[x1, y1, x2, y2]``, **original-image pixels**; ``target.labels`` are contiguous class
            indices ``0..K-1``; ``target.scores`` FloatTensor[N] (``None`` counts as score 1.0).
        label_to_cat_id: maps a contiguous label to its COCO category id — a callable or a
            sequence indexed by label.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``, plain Python numbers,
        in input order.
    """
    if callable(label_to_cat_id):
        to_cat: Callable[[int], int] = label_to_cat_id
    else:
        table = list(label_to_cat_id)

        def to_cat(label: int) -> int:
            if not 0 <= label < len(table):
                raise ValueError(f"label {label} has no category id (table has {len(table)} entries)")
            return table[label]

    out: list[dict] = []
    for image_id, target in detections:
        n = len(target)
        if n == 0:
            continue
        boxes = target.boxes.detach().to("cpu", dtype=torch.float64).numpy()
        labels = target.labels.detach().cpu().tolist()
        scores = [1.0] * n if target.scores is None else target.scores.detach().cpu().double().tolist()
        for (x1, y1, x2, y2), label, score in zip(boxes.tolist(), labels, scores):
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(to_cat(int(label))),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score),
                }
            )
    return out


def merge_results(parts: list[list[dict]]) -> list[dict]:
    """Concatenate result lists gathered from several processes (order kept; no de-duplication)."""
    return [dict(r) for part in parts for r in part]


# ---------------------------------------------------------------------------------------------- report


def _nan_if_negative(x: float) -> float:
    x = float(x)
    return float("nan") if x < 0 else x


@dataclass
class EvalReport:
    """pycocotools box AP, in [0, 1]; ``nan`` where pycocotools reports -1 (nothing to measure).

    Attributes:
        ap: AP averaged over IoU 0.50:0.95 (COCO's headline number).
        ap50, ap75: AP at IoU 0.50 / 0.75.
        aps, apm, apl: AP for small / medium / large ground truth.
        per_class: class name -> AP (IoU 0.50:0.95, area all, maxDets 100).
        per_class_ap50: class name -> AP at IoU 0.50.
        pr50: class name -> precision at pycocotools' 101 recall points (0, 0.01, ..., 1) at IoU 0.50
            (area all, maxDets 100), whose mean is the class's AP50; a class with no ground truth is left out.
        confusion: [K + 1, K + 1] counts, rows the true class, columns the detected class, the last row and
            column "background": detections scoring at least ``CONFUSION_SCORE`` matched one to one to the
            ground truth by IoU >= 0.5 whatever their classes (the best overlaps first); a missed box counts in
            its class's last column, a detection on no box in the last row (see :func:`confusion_matrix`).
        n_images: number of images evaluated.
        n_detections: number of result records on those images.
    """

    ap: float
    ap50: float
    ap75: float
    aps: float
    apm: float
    apl: float
    per_class: dict[str, float] = field(default_factory=dict)
    per_class_ap50: dict[str, float] = field(default_factory=dict)
    pr50: dict[str, list[float]] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)
    n_images: int = 0
    n_detections: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``nan`` becomes ``None``, since JSON has no NaN)."""

        def clean(v: Any) -> Any:
            if isinstance(v, float) and math.isnan(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return v

        return {k: clean(v) for k, v in asdict(self).items()}

    def plot(self, folder: str | Path, what: str) -> dict[str, Path]:
        """Draw the precision-recall curves (``pr_curve.png``) and the confusion matrix (``confusion.png``) into
        ``folder``; ``what`` names the model and data in the titles. Returns the two paths by name."""
        from minedet.viz import plot_confusion, plot_pr

        folder = Path(folder)
        paths = {"curves": folder / "pr_curve.png", "confusion": folder / "confusion.png"}
        plot_pr(self.pr50, paths["curves"], title=f"{what}: precision-recall, IoU 0.5")  # as ``pr50``
        plot_confusion(self.confusion, list(self.per_class), paths["confusion"],
                       title=f"{what}: detections scoring >= {CONFUSION_SCORE}, IoU >= {CONFUSION_IOU}")
        return paths

    def table(self) -> str:
        """A fixed-width text table (values in percent): the summary line, then one row per class (AP, AP50)."""

        def f(v: float) -> str:  # percent, fixed width
            return "  nan" if math.isnan(v) else f"{100 * v:5.1f}"

        head = "  ".join(f"{n} {f(getattr(self, k))}" for k, n in zip(_SUMMARY_KEYS, _SUMMARY_NAMES))
        lines = [f"{head}  ({self.n_images} images, {self.n_detections} detections)"]
        if self.per_class:
            width = max(8, max(len(n) for n in self.per_class))
            lines.append(f"{'class':<{width}}     AP   AP50")
            for name, ap in self.per_class.items():
                lines.append(f"{name:<{width}}  {f(ap)}  {f(self.per_class_ap50.get(name, float('nan')))}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- evaluation


def _prepared_gt(gt: dict) -> dict:
    """A copy of ``gt`` with ``id``, ``iscrowd`` and ``area`` on every annotation."""
    for key in ("images", "categories"):
        if key not in gt:
            raise MinedetError(f"ground truth has no {key!r} list", record="ground truth")
    anns_in = gt.get("annotations", [])
    used = {a["id"] for a in anns_in if "id" in a}
    next_id = max(used, default=0) + 1
    anns = []
    for i, a in enumerate(anns_in):
        a = dict(a)
        if "bbox" not in a or len(a["bbox"]) != 4:
            raise MinedetError("annotation has no bbox [x, y, w, h]", record=f"annotation #{i}")
        a["bbox"] = [float(v) for v in a["bbox"]]
        if "id" not in a:
            a["id"] = next_id
            next_id += 1
        a.setdefault("iscrowd", 0)
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
        anns.append(a)
    out = {k: v for k, v in gt.items() if k not in ("images", "categories", "annotations")}
    out["images"] = [dict(im) for im in gt["images"]]
    out["categories"] = [dict(c) for c in gt["categories"]]
    out["annotations"] = anns
    return out


@contextlib.contextmanager
def _maybe_quiet(quiet: bool) -> Iterator[None]:
    if quiet:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    else:
        yield


def _coco_from_dict(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def evaluate_detections(
    gt: dict,
    results: list[dict],
    *,
    image_ids: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    quiet: bool = True,
) -> EvalReport:
    """Box AP of ``results`` against ``gt`` with pycocotools' ``COCOeval``.

    Args:
        gt: a COCO dict (``images``, ``annotations`` with ``bbox`` ``[x, y, w, h]`` in image
            pixels, ``categories``). Missing ``iscrowd`` (0), ``area`` (w*h) and ``id`` are filled
            on a copy; ``gt`` itself is never modified.
        results: COCO result records (see :func:`coco_results`); not modified. Zero results is
            valid (AP 0 where there is ground truth).
        image_ids: evaluate only these images (COCOeval ``params.imgIds``); results on other
            images are ignored. Default: every image in ``gt``.
        class_names: names of the categories in ascending category-id order (i.e. by contiguous
            label); default: each category's ``name``.
        quiet: swallow pycocotools' printing.

    Raises:
        MinedetError: a result or ``image_ids`` names an image that ``gt`` does not have.
    """
    dataset = _prepared_gt(gt)
    known_images = {int(im["id"]) for im in dataset["images"]}
    img_ids = _selected_image_ids(known_images, image_ids)
    res = _selected_results(results, known_images, set(img_ids))
    cats = sorted(dataset["categories"], key=lambda c: c["id"])
    names = _category_names(cats, class_names)
    ev = _run_cocoeval(dataset, res, img_ids, [c["id"] for c in cats], quiet)
    stats = [_nan_if_negative(s) for s in ev.stats[:6]]
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    per_class: dict[str, float] = {}
    per_class_ap50: dict[str, float] = {}
    pr50: dict[str, list[float]] = {}
    for k, name in enumerate(names):
        per_class[name] = _mean_valid(precision[:, :, k, 0, -1])
        per_class_ap50[name] = _mean_valid(precision[0, :, k, 0, -1])
        if (precision[0, :, k, 0, -1] > -1).all():  # -1: the class has no ground truth on these images
            pr50[name] = [round(float(x), 4) for x in precision[0, :, k, 0, -1]]
    return EvalReport(
        *stats,
        per_class=per_class,
        per_class_ap50=per_class_ap50,
        pr50=pr50,
        confusion=confusion_matrix(dataset, res, img_ids, [c["id"] for c in cats]),
        n_images=len(img_ids),
        n_detections=len(res),
    )


#: the score a detection needs to count in the confusion matrix (``minedet predict``'s render threshold)
CONFUSION_SCORE = 0.3
#: the overlap that pairs a detection with a ground-truth box in the confusion matrix
CONFUSION_IOU = 0.5


def confusion_matrix(dataset: dict, res: list[dict], img_ids: Sequence[int], cat_ids: Sequence[int], *,
                     score: float = CONFUSION_SCORE, iou: float = CONFUSION_IOU) -> list[list[int]]:
    """Class confusion of the detections ``res`` (COCO result records) scoring at least ``score`` against the
    ground truth of ``dataset`` on ``img_ids``: ``[K + 1, K + 1]`` counts, rows the true class (``cat_ids``
    order), columns the detected class, index K "background". Per image, detections and boxes are paired one to
    one by IoU >= ``iou`` whatever their classes, the best overlaps first; an unpaired box counts as missed
    (column K), an unpaired detection as a false one (row K). Crowd boxes pair with detections (which then
    count nowhere) but are never missed."""
    from torchvision.ops import box_iou

    k = len(cat_ids)
    index = {c: i for i, c in enumerate(cat_ids)}
    m = np.zeros((k + 1, k + 1), dtype=np.int64)
    gts: dict[int, list[dict]] = {}
    for a in dataset["annotations"]:
        if a["category_id"] in index:
            gts.setdefault(int(a["image_id"]), []).append(a)
    dets: dict[int, list[dict]] = {}
    for r in res:
        if r["score"] >= score and r["category_id"] in index:
            dets.setdefault(int(r["image_id"]), []).append(r)

    def xyxy(records: list[dict]) -> torch.Tensor:
        b = torch.tensor([r["bbox"] for r in records], dtype=torch.float64).reshape(-1, 4)
        return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)

    for image_id in img_ids:
        g, d = gts.get(image_id, []), dets.get(image_id, [])
        paired_g, paired_d = set(), set()
        if g and d:
            ious = box_iou(xyxy(g), xyxy(d))
            for flat in torch.argsort(ious.flatten(), descending=True, stable=True).tolist():
                gi, di = divmod(flat, len(d))
                if ious[gi, di] < iou:
                    break
                if gi in paired_g or di in paired_d:
                    continue
                paired_g.add(gi)
                paired_d.add(di)
                if not g[gi].get("iscrowd"):
                    m[index[g[gi]["category_id"]], index[d[di]["category_id"]]] += 1
        for gi, a in enumerate(g):
            if gi not in paired_g and not a.get("iscrowd"):
                m[index[a["category_id"]], k] += 1
        for di, r in enumerate(d):
            if di not in paired_d:
                m[k, index[r["category_id"]]] += 1
    return m.tolist()


def _selected_image_ids(known_images: set[int], image_ids: Sequence[int] | None) -> list[int]:
    """The sorted ids of the images to evaluate: ``image_ids`` (each must be in ``known_images``),
    or every known image when None."""
    if image_ids is None:
        return sorted(known_images)
    img_ids = sorted({int(i) for i in image_ids})
    unknown = [i for i in img_ids if i not in known_images]
    if unknown:
        raise MinedetError(f"image ids not in the ground truth: {unknown[:5]}", record="image_ids")
    return img_ids


def _selected_results(results: list[dict], known_images: set[int], selected: set[int]) -> list[dict]:
    """Copies of the result records on ``selected`` images, ``bbox`` as floats (input order).
    A record naming an image outside ``known_images`` is an error."""
    res = []
    for i, r in enumerate(results):
        if int(r["image_id"]) not in known_images:
            raise MinedetError(
                f"result refers to image_id {r['image_id']}, which the ground truth does not have",
                record=f"result #{i}",
            )
        if int(r["image_id"]) in selected:
            res.append({**r, "bbox": [float(v) for v in r["bbox"]]})
    return res


def _category_names(cats: list[dict], class_names: Sequence[str] | None) -> list[str]:
    """Names of ``cats`` (sorted by id): ``class_names`` (one per category) or each category's name (else id)."""
    if class_names is None:
        return [str(c.get("name", c["id"])) for c in cats]
    names = [str(n) for n in class_names]
    if len(names) != len(cats):
        raise ValueError(f"{len(names)} class names for {len(cats)} categories")
    return names


def _run_cocoeval(dataset: dict, res: list[dict], img_ids: list[int], cat_ids: list[int], quiet: bool) -> Any:
    """pycocotools ``COCOeval`` (bbox) of ``res`` against ``dataset`` on ``img_ids`` x ``cat_ids``,
    evaluated, accumulated and summarised. An empty ``res`` is a result set with no detections."""
    from pycocotools.cocoeval import COCOeval

    with _maybe_quiet(quiet):
        coco_gt = _coco_from_dict(dataset)
        if res:
            coco_dt = coco_gt.loadRes(res)
        else:  # loadRes rejects an empty list: an empty result set is a COCO with no annotations
            coco_dt = _coco_from_dict(
                {"images": dataset["images"], "categories": dataset["categories"], "annotations": []}
            )
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = img_ids
        ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _mean_valid(p: np.ndarray) -> float:
    p = p[p > -1]
    return float(np.mean(p)) if p.size else float("nan")
