"""Dataset statistics: what a COCO training set holds, per category and per image.

Box size is ``sqrt(area)`` with ``area`` the annotation's ``"area"`` field, the same number
pycocotools uses for its small / medium / large ranges (``area < 32**2``, ``32**2 <= area < 96**2``,
``area >= 96**2``; it equals ``w * h`` when the file gave no area). Crowd boxes are counted in the
totals and reported separately.
"""

from __future__ import annotations

import io
import math
import os
from collections import Counter
from typing import Any

from minedet.data.coco import CocoData
from minedet.data.mixed import is_mixed, kind_counts
from minedet.io import write_bytes_atomic

__all__ = ["dataset_stats", "format_stats", "plot_stats", "SIZE_BINS"]

# sqrt(area) bin edges in pixels; the last bin is open-ended
SIZE_BINS: tuple[float, ...] = (0, 8, 16, 32, 64, 96, 128, 256, 512)


def dataset_stats(data: CocoData) -> dict[str, Any]:
    """Summarise a dataset.

    Returns:
        a JSON-serialisable dict::

            {"file": str, "images": int, "annotations": int, "crowd": int, "categories": int,
             "images_without_boxes": int, "n_clipped": int, "n_dropped": int,
             "per_category": [{"id", "name", "instances", "images"}, ...]  (ascending id),
             "boxes_per_image": {"0": n_images, "1": ..., ...}  (every count 0..max present),
             "size_bins": [{"lo": px, "hi": px | None, "count": int}, ...]  (sqrt(area) bins),
             "coco_size": {"small": int, "medium": int, "large": int}}
    """
    per_cat_inst: Counter[int] = Counter()
    per_cat_imgs: Counter[int] = Counter()
    per_image: Counter[int] = Counter()
    sizes = [0] * len(SIZE_BINS)
    small = medium = large = crowd = n_ann = 0
    for im in data.images:
        anns = data.anns_by_image.get(im["id"], [])
        per_image[len(anns)] += 1
        for cid in {a["category_id"] for a in anns}:
            per_cat_imgs[cid] += 1
        for a in anns:
            n_ann += 1
            per_cat_inst[a["category_id"]] += 1
            crowd += int(bool(a.get("iscrowd", 0)))
            area = float(a["area"])
            s = math.sqrt(area)
            b = 0
            while b + 1 < len(SIZE_BINS) and s >= SIZE_BINS[b + 1]:
                b += 1
            sizes[b] += 1
            if area < 32**2:
                small += 1
            elif area < 96**2:
                medium += 1
            else:
                large += 1
    max_n = max(per_image) if per_image else 0
    return {
        "file": str(data.path),
        "images": len(data.images),
        "annotations": n_ann,
        "crowd": crowd,
        "categories": len(data.categories),
        "images_without_boxes": per_image.get(0, 0),
        "n_clipped": data.n_clipped,
        "n_dropped": data.n_dropped,
        "per_category": [
            {"id": c["id"], "name": c["name"], "instances": per_cat_inst[c["id"]], "images": per_cat_imgs[c["id"]]}
            for c in data.categories
        ],
        "boxes_per_image": {str(k): per_image.get(k, 0) for k in range(max_n + 1)},
        "size_bins": [
            {"lo": SIZE_BINS[i], "hi": SIZE_BINS[i + 1] if i + 1 < len(SIZE_BINS) else None, "count": sizes[i]}
            for i in range(len(SIZE_BINS))
        ],
        "coco_size": {"small": small, "medium": medium, "large": large},
        **({"labels": kind_counts(data)} if is_mixed(data) else {}),
    }


def format_stats(stats: dict[str, Any]) -> str:
    """A plain-text report of :func:`dataset_stats` output (one table per section)."""
    lines = [
        f"{stats['file']}",
        f"  images {stats['images']}  annotations {stats['annotations']}  (crowd {stats['crowd']})  "
        f"categories {stats['categories']}  images without boxes {stats['images_without_boxes']}",
    ]
    if stats.get("labels"):  # a mixed file: how completely each image was labelled
        mix = stats["labels"]
        lines.append("  labels: " + ", ".join(f"{v['images']} {k} ({v['boxes']} boxes)" for k, v in mix.items()))
    if stats.get("n_clipped") or stats.get("n_dropped"):
        lines.append(f"  boxes clipped to the image {stats['n_clipped']}, zero-area boxes dropped {stats['n_dropped']}")
    lines.append("")
    w = max([len("category")] + [len(c["name"]) for c in stats["per_category"]])
    lines.append(f"  {'id':>5}  {'category':<{w}}  {'instances':>9}  {'images':>7}")
    for c in stats["per_category"]:
        lines.append(f"  {c['id']:>5}  {c['name']:<{w}}  {c['instances']:>9}  {c['images']:>7}")
    lines.append("")
    lines.append("  boxes per image   images")
    for k, v in stats["boxes_per_image"].items():
        if v:
            lines.append(f"  {k:>15}   {v:>6}")
    lines.append("")
    lines.append("  sqrt(area) px     boxes")
    for b in stats["size_bins"]:
        rng = f"{b['lo']:g}-{b['hi']:g}" if b["hi"] is not None else f">={b['lo']:g}"
        lines.append(f"  {rng:>13}   {b['count']:>7}")
    s = stats["coco_size"]
    lines.append(f"  COCO sizes: small {s['small']}  medium {s['medium']}  large {s['large']}")
    return "\n".join(lines)


def plot_stats(stats: dict[str, Any], out_png: str | os.PathLike) -> None:
    """Draw three bar charts (instances per category, boxes per image, box sizes) into one PNG, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 4.2), dpi=100)
    FigureCanvasAgg(fig)  # the Agg backend for this figure only; no global pyplot state
    ax1, ax2, ax3 = fig.subplots(1, 3)
    cats = stats["per_category"]
    ax1.bar(range(len(cats)), [c["instances"] for c in cats], color="#4c72b0")
    ax1.set_xticks(range(len(cats)))
    ax1.set_xticklabels([c["name"] for c in cats], rotation=90 if len(cats) > 10 else 0, fontsize=7 if len(cats) > 20 else 9)
    ax1.set_title("instances per category")
    bpi = stats["boxes_per_image"]
    ax2.bar([int(k) for k in bpi], list(bpi.values()), color="#55a868")
    ax2.set_xlabel("boxes in the image")
    ax2.set_ylabel("images")
    ax2.set_title(f"boxes per image ({stats['images_without_boxes']} images without boxes)")
    bins = stats["size_bins"]
    labels = [f"{b['lo']:g}-{b['hi']:g}" if b["hi"] is not None else f">={b['lo']:g}" for b in bins]
    ax3.bar(range(len(bins)), [b["count"] for b in bins], color="#c44e52")
    ax3.set_xticks(range(len(bins)))
    ax3.set_xticklabels(labels, rotation=45, fontsize=8)
    ax3.set_xlabel("sqrt(area), pixels")
    s = stats["coco_size"]
    ax3.set_title(f"box size (COCO S/M/L {s['small']}/{s['medium']}/{s['large']})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes_atomic(out_png, buf.getvalue())
