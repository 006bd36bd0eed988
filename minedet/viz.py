"""Box renders, image grids and plots (PNG), for docs, reviews of mined boxes and PR curves.

Boxes are ``[x1, y1, x2, y2]`` in the pixels of the image they are drawn on (before any upscaling
done here). Every file is written atomically through :mod:`minedet.io`. Plots use matplotlib's
object API (``Figure`` + Agg canvas), so no display is needed and pyplot's global state and the
process-wide backend are left untouched.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from typing import Sequence

import sys
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from minedet.io import write_bytes_atomic

if TYPE_CHECKING:
    import torch


def _is_tensor(x: object) -> bool:
    """A torch tensor, without importing torch (``minedet predict model.onnx`` runs without it)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)

__all__ = ["BoxGroup", "draw_boxes", "grid", "plot_bars", "plot_curves", "plot_confusion", "plot_pr", "save_png", "to_pil"]


@dataclass(frozen=True)
class BoxGroup:
    """A set of boxes drawn in one colour.

    Attributes:
        boxes: array-like [N, 4] (numpy or torch), ``[x1, y1, x2, y2]`` in the input image's pixels.
        labels: N strings shown at each box (e.g. class names), or None.
        scores: N floats shown after the label as ``0.92``, or None.
        color: RGB outline / text colour.
        width: outline width in output pixels.
    """

    boxes: np.ndarray | torch.Tensor | Sequence[Sequence[float]]
    labels: Sequence[str] | None = None
    scores: Sequence[float] | np.ndarray | torch.Tensor | None = None
    color: tuple[int, int, int] = (255, 0, 0)
    width: int = 1


def to_pil(image: np.ndarray | torch.Tensor | Image.Image) -> Image.Image:
    """An RGB PIL copy of ``image``.

    Accepts numpy uint8 ``[H, W, 3]`` / ``[H, W]``, numpy float ``[H, W(, 3)]`` in [0, 1], torch float
    ``[3, H, W]`` / ``[1, H, W]`` in [0, 1] (uint8 tensors as 0..255), or a PIL image.
    """
    if isinstance(image, Image.Image):
        return image.convert("RGB")  # convert always returns a new image
    if _is_tensor(image):
        t = image.detach().cpu()
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"tensor image must be [3, H, W] or [1, H, W], got {tuple(t.shape)}")
        if str(t.dtype) != "torch.uint8":
            t = (t.float().clamp(0, 1) * 255).round().byte()
        arr = t.permute(1, 2, 0).numpy()
    else:
        arr = np.asarray(image)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image must be [H, W, 3] or [H, W], got {arr.shape}")
    return Image.fromarray(np.ascontiguousarray(arr))


def _as_boxes(boxes: np.ndarray | torch.Tensor | Sequence[Sequence[float]]) -> np.ndarray:
    if _is_tensor(boxes):
        boxes = boxes.detach().cpu().double().numpy()
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must be [N, 4], got {arr.shape}")
    return arr


def _text(label: str | None, score: float | None) -> str:
    parts = []
    if label is not None:
        parts.append(str(label))
    if score is not None:
        parts.append(f"{float(score):.2f}")
    return " ".join(parts)


def draw_boxes(
    image: np.ndarray | torch.Tensor | Image.Image,
    groups: Sequence[BoxGroup],
    *,
    min_side: int = 256,
) -> Image.Image:
    """Render box groups on a copy of ``image``.

    Small images are upscaled (nearest, by the integer factor ``ceil(min_side / short side)``) so
    text stays legible; boxes are scaled by the same factor. A box ``[x1, y1, x2, y2]`` (pixel
    edges) is outlined on output pixels ``round(x1*s) .. round(x2*s) - 1``. Non-finite boxes are
    skipped. Labels ("3 0.92") use PIL's default font, on a black strip above the box (inside
    it when there is no room above).

    Returns:
        a new RGB PIL image of size ``(W*s, H*s)``; the input is not modified.
    """
    img = to_pil(image)
    w0, h0 = img.size
    scale = max(1, math.ceil(min_side / max(1, min(w0, h0))))
    if scale > 1:
        img = img.resize((w0 * scale, h0 * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    labels_to_draw: list[tuple[tuple[int, int, int, int], str, tuple[int, int, int], int]] = []
    for g in groups:
        boxes = _as_boxes(g.boxes)
        n = len(boxes)
        labels = list(g.labels) if g.labels is not None else None
        scores = g.scores
        if _is_tensor(scores):
            scores = scores.detach().cpu().tolist()
        scores = list(scores) if scores is not None else None
        for name, seq in (("labels", labels), ("scores", scores)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{name} has {len(seq)} entries for {n} boxes")
        color = tuple(int(c) for c in g.color)
        for i, box in enumerate(boxes):
            if not np.all(np.isfinite(box)):
                continue
            x1, y1 = round(box[0] * scale), round(box[1] * scale)
            x2, y2 = round(box[2] * scale) - 1, round(box[3] * scale) - 1
            x2, y2 = max(x1, x2), max(y1, y2)
            draw.rectangle((x1, y1, x2, y2), outline=color, width=max(1, int(g.width)))
            text = _text(labels[i] if labels else None, scores[i] if scores else None)
            if text:
                labels_to_draw.append(((x1, y1, x2, y2), text, color, max(1, int(g.width))))
    # Text after every outline so no label is crossed by a later box's edges of its own group.
    for (x1, y1, x2, y2), text, color, width in labels_to_draw:
        l, t, r, b = draw.textbbox((0, 0), text, font=font)
        tw, th = r - l + 2, b - t + 2
        ty = y1 - th - 1 if y1 - th - 1 >= 0 else y1 + width
        tx = min(max(0, x1), max(0, img.width - tw))
        draw.rectangle((tx, ty, tx + tw - 1, ty + th - 1), fill=(0, 0, 0))
        draw.text((tx + 1 - l, ty + 1 - t), text, fill=color, font=font)
    return img


def save_png(img: Image.Image, path: str | os.PathLike) -> None:
    """Write ``img`` as a PNG at ``path`` atomically (encoded in memory, then temp file + rename)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())


def grid(
    images: Sequence[Image.Image],
    ncols: int,
    *,
    pad: int = 4,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Tile images row by row into one RGB image; each cell is the largest image's size, images top-left."""
    if not images:
        raise ValueError("grid needs at least one image")
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)
    cw = max(im.width for im in images)
    ch = max(im.height for im in images)
    out = Image.new("RGB", (ncols * cw + (ncols + 1) * pad, nrows * ch + (nrows + 1) * pad), background)
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        out.paste(im.convert("RGB"), (pad + c * (cw + pad), pad + r * (ch + pad)))
    return out


def _figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    write_bytes_atomic(path, buf.getvalue())


def plot_curves(
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    colors: dict[str, str] | None = None,
) -> None:
    """Line plot of named ``(xs, ys)`` series (e.g. precision vs recall, AP vs step) to a PNG; ``colors`` fixes a
    series' colour by its name (the same thing one colour across plots), the others take the next of the cycle."""
    fig = _figure((6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    for name, (xs, ys) in series.items():
        xs, ys = list(xs), list(ys)
        if len(xs) != len(ys):
            raise ValueError(f"series {name!r}: {len(xs)} x values, {len(ys)} y values")
        style = {"color": colors[name]} if colors and name in colors else {}
        ax.plot(xs, ys, label=name, marker="o" if len(xs) <= 20 else None, markersize=3, **style)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(loc="best", fontsize="small")
    _save_figure(fig, path)


#: up to this many classes get a coloured line and a legend entry each; more are drawn thin and grey
PR_LEGEND_MAX = 12


def plot_pr(curves: dict[str, Sequence[float]], path: str | os.PathLike, *, title: str) -> None:
    """Precision-recall curves (precision at evenly spaced recall points from 0 to 1, as pycocotools samples them)
    to a PNG: one line per class with its AP (the curve's mean) in the legend, and their mean curve in black."""
    fig = _figure((6.0, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    if curves:
        ys = np.asarray([list(c) for c in curves.values()], dtype=float)
        xs = np.linspace(0.0, 1.0, ys.shape[1])
        few = len(curves) <= PR_LEGEND_MAX
        for name, y in zip(curves, ys):
            if few:
                ax.plot(xs, y, linewidth=1.2, label=f"{name} {y.mean():.3f}")
            else:
                ax.plot(xs, y, linewidth=0.6, color="#999999")
        mean = ys.mean(axis=0)
        ax.plot(xs, mean, linewidth=2.5, color="black", label=f"all classes {mean.mean():.3f}")
        ax.legend(loc="lower left", fontsize="small", title="AP50", title_fontsize="small")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _save_figure(fig, path)


#: up to this many classes get their counts written in the confusion matrix's cells
CONFUSION_NUMBERS_MAX = 20


def plot_confusion(matrix: Sequence[Sequence[int]], names: Sequence[str], path: str | os.PathLike, *, title: str) -> None:
    """A class confusion matrix (rows: true class, columns: detected class, each with a last "background"
    entry) to a PNG: cells shaded by their share of the row (of the detections, for the background row), counts
    written in when there are few classes."""
    m = np.asarray(matrix, dtype=float).reshape(len(names) + 1, len(names) + 1)
    labels = [*names, "background"]
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1.0)
    side = max(4.0, 0.45 * len(labels) + 2.0)
    fig = _figure((side + 1.0, side))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    if len(labels) <= CONFUSION_NUMBERS_MAX + 1:
        for (i, j), n in np.ndenumerate(m):
            if n:
                ax.text(j, i, f"{int(n)}", ha="center", va="center", fontsize="small",
                        color="white" if share[i, j] > 0.5 else "black")
    ticks = range(len(labels))
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, rotation=90 if len(labels) > 6 else 0)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels)
    ax.set_xlabel("detected")
    ax.set_ylabel("true")
    ax.set_title(title)
    _save_figure(fig, path)


def plot_bars(values: dict[str, float], path: str | os.PathLike, *, ylabel: str, title: str) -> None:
    """Bar chart of named values (e.g. per-class AP) to a PNG, each bar labelled with its value."""
    fig = _figure((max(4.0, 0.6 * len(values) + 2.0), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    names = list(values)
    heights = [float(values[n]) for n in names]
    bars = ax.bar(range(len(names)), heights, color="#4c72b0")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    for bar, h in zip(bars, heights):
        if math.isfinite(h):
            ax.annotate(f"{h:.3g}", (bar.get_x() + bar.get_width() / 2, h), ha="center", va="bottom", fontsize="small")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    _save_figure(fig, path)
