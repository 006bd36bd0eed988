"""Big images as tiles: the tile grid, boxes cut at tile edges, the manifest back to the big image,
and the merge of per-tile detections across tile seams.

Frames. A *big image* (or *source*) is an image of the input COCO file; its pixels are the
**big-image frame**. A *tile* is a window ``[x, x + width) x [y, y + height)`` of it, cut out as
its own image; its pixels are the **tile frame**. A box ``[x1, y1, x2, y2]`` (xyxy, continuous
pixel coordinates, origin at the top-left corner of the top-left pixel) goes from the tile frame
to the big-image frame by adding ``(x, y)`` and back by subtracting it; nothing is rescaled, so
both directions are exact for integer offsets.

The grid (:func:`tile_grid`): tiles of ``size`` x ``size`` px whose neighbours overlap by at least
``overlap`` px (stride ``size - overlap``); the last tile of a row or column is moved back so it
ends on the image border, so a tile never extends past the image and every tile is full-size
unless the image itself is smaller than ``size`` along that axis (then the tile spans that axis).

Cut boxes (:func:`cut_box`): a box crossing a tile edge keeps ``visible = area(box ∩ tile) /
area(box)`` of itself in the tile. With ``visible >= min_visible`` it is kept, clipped to the tile;
below that it is either dropped (``cut="drop"``) or kept clipped as ``"iscrowd": 1`` (``cut="crowd"``,
the default): pycocotools then ignores detections on it instead of counting them as false
positives, ``minedet mine`` does not propose it as a missing box, and training treats it like any
crowd box (not a target: the fragment is neither taught as an object nor as a labelled box).

The manifest lives in each tile's image record, so the tiled COCO file trains, evaluates and mines
like any other with no extra step::

    "tile": {"source": <big image id>, "x": x0, "y": y0,
             "source_file": <big image file_name>, "source_width": W, "source_height": H}

and each tile annotation names the big-image annotation it was cut from (``"source_ann"``) and the
fraction of it that is visible (``"visible"``).

Merging (:func:`merge_tile_detections`): per-tile detections go to the big-image frame. Each tile
*owns* its window cut at the middle of every overlap with a neighbouring tile; a box whose centre lies
outside the part its tile owns (in the half of an overlap band nearer that tile's edge) is *truncated*:
an object no larger than the overlap that is cut by that edge lies whole in the neighbour, which owns
its centre. A truncated box is dropped when a detection of the same class from another tile, not
truncated (or truncated too but larger), grown by ``slack`` px (the box error tolerated), covers it
(intersection over the truncated box's area >= ``cover``): that neighbour saw the object whole. The rule reads box centres,
not box edges, so a detector whose box on a cut piece stops a few px short of the tile border (no
box touches the edge) still has its piece recognised. Then class-wise NMS removes the duplicates
of objects seen whole by several tiles. An object larger than the overlap may be seen whole by no tile; its pieces are kept (choose ``overlap`` larger
than the objects).
"""

from __future__ import annotations

import io
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping, Sequence

import torch
from torchvision.ops import batched_nms

from minedet.data.coco import CocoData, coco_dict
from minedet.errors import MinedetError
from minedet.structures import Target

__all__ = [
    "CUT_POLICIES",
    "Tile",
    "TiledCoco",
    "check_tiling",
    "cut_box",
    "merge_tile_detections",
    "per_source_summary",
    "tile_coco",
    "tile_grid",
    "tile_of",
    "write_tiles",
]

CUT_POLICIES = ("crowd", "drop")
_EPS = 1e-9


@dataclass(frozen=True)
class Tile:
    """A window of a big image, in big-image pixels.

    Attributes:
        source: the big image's COCO id (-1 when it has none, e.g. ``minedet predict``).
        x, y: the tile's top-left corner in big-image pixels (integers).
        width, height: the tile's size in pixels.
        source_width, source_height: the big image's size in pixels.
    """

    source: int
    x: int
    y: int
    width: int
    height: int
    source_width: int
    source_height: int

    @property
    def window(self) -> tuple[int, int, int, int]:
        """``(x1, y1, x2, y2)`` of the tile in big-image pixels."""
        return self.x, self.y, self.x + self.width, self.y + self.height

    def interior(self) -> tuple[bool, bool, bool, bool]:
        """Which edges (left, top, right, bottom) lie inside the big image (not on its border)."""
        return (self.x > 0, self.y > 0, self.x + self.width < self.source_width, self.y + self.height < self.source_height)

    def to_source(self, boxes: torch.Tensor) -> torch.Tensor:
        """Boxes [N, 4] xyxy from tile pixels to big-image pixels (a copy; exact)."""
        off = torch.tensor([self.x, self.y, self.x, self.y], dtype=boxes.dtype, device=boxes.device)
        return boxes + off


def check_tiling(size: Any, overlap: Any) -> tuple[int, int]:
    """Validate a tile size and overlap (integers, ``size >= 1``, ``0 <= overlap < size``)."""
    for name, v in (("tile size", size), ("overlap", overlap)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise MinedetError(f"{name} must be an integer number of pixels, got {v!r}")
    if size < 1:
        raise MinedetError(f"tile size must be >= 1 px, got {size}")
    if overlap < 0:
        raise MinedetError(f"overlap must be >= 0 px, got {overlap}")
    if overlap >= size:
        raise MinedetError(f"overlap ({overlap} px) must be smaller than the tile size ({size} px)")
    return size, overlap


def _starts(length: int, size: int, stride: int) -> list[int]:
    if length <= size:
        return [0]
    xs = list(range(0, length - size, stride))
    return xs + [length - size]


def tile_grid(width: int, height: int, size: int, overlap: int, *, source: int = -1) -> list[Tile]:
    """The tiles covering a ``width`` x ``height`` image, row by row (top to bottom, left to right).

    Neighbouring tiles overlap by at least ``overlap`` px (exactly, except before the last tile of a
    row or column, which ends on the border). See the module docstring.
    """
    size, overlap = check_tiling(size, overlap)
    if isinstance(width, bool) or isinstance(height, bool) or not (isinstance(width, int) and isinstance(height, int)) \
            or width < 1 or height < 1:
        raise MinedetError(f"image size must be positive integers, got {width!r}x{height!r}")
    stride = size - overlap
    tw, th = min(size, width), min(size, height)
    return [Tile(source, x, y, tw, th, width, height)
            for y in _starts(height, size, stride) for x in _starts(width, size, stride)]


def cut_box(box: Sequence[float], window: Sequence[float]) -> tuple[tuple[float, float, float, float], float] | None:
    """The part of ``box`` inside ``window`` (both xyxy in the same frame) and its visible fraction
    ``area(box ∩ window) / area(box)``; None when they share no area (touching edges share none)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    wx1, wy1, wx2, wy2 = (float(v) for v in window)
    cx1, cy1, cx2, cy2 = max(x1, wx1), max(y1, wy1), min(x2, wx2), min(y2, wy2)
    if cx2 <= cx1 or cy2 <= cy1:
        return None
    area = (x2 - x1) * (y2 - y1)
    vis = 1.0 if area <= 0 else ((cx2 - cx1) * (cy2 - cy1)) / area
    return (cx1, cy1, cx2, cy2), min(1.0, vis)


# --------------------------------------------------------------------------------------------------
# tiling a COCO dataset


@dataclass(frozen=True)
class TiledCoco:
    """What :func:`tile_coco` makes.

    Attributes:
        coco: the tiled COCO dict (tile images with their ``"tile"`` manifest, annotations in tile
            pixels, the input's categories, a top-level ``"tiling"`` record of the settings).
        crops: per tile image (same order as ``coco["images"]``): ``(source image record, Tile)``,
            what :func:`write_tiles` cuts out.
        n_kept, n_cut, n_dropped: tile annotations kept whole or clipped at ``visible >= min_visible``,
            kept as crowd because less was visible, and left out (``cut="drop"``).
    """

    coco: dict
    crops: list[tuple[dict, Tile]]
    n_kept: int
    n_cut: int
    n_dropped: int


def _tile_stems(images: Sequence[Mapping]) -> dict[int, str]:
    """Image id -> the stem its tiles are named by: ``<dir>/<stem>`` of its file name, or ``<dir>/<stem>_id<ID>``
    for every image whose ``<dir>/<stem>`` another image shares, compared case-insensitively (``a.png``,
    ``a.PNG`` and ``a.jpg`` would write onto the same tiles, on a case-insensitive file system too)."""
    stems = {int(im["id"]): str(PurePosixPath(str(im["file_name"]).replace("\\", "/")).with_suffix("")) for im in images}
    count: dict[str, int] = {}
    for s in stems.values():
        count[s.lower()] = count.get(s.lower(), 0) + 1
    return {i: (f"{s}_id{i}" if count[s.lower()] > 1 else s) for i, s in stems.items()}


def _tile_name(stem: str, t: Tile) -> str:
    return str(PurePosixPath("images") / f"{stem}_x{t.x}_y{t.y}.png")


def tile_coco(data: CocoData, size: int, overlap: int, *, min_visible: float = 0.5, cut: str = "crowd") -> TiledCoco:
    """Tile every image of a validated COCO dataset (pure: no file is read or written).

    Args:
        data: the big images and their annotations (:func:`~minedet.data.coco.load_coco`).
        size, overlap: the grid (:func:`tile_grid`).
        min_visible: a box cut by a tile edge is kept (clipped) in that tile when at least this
            fraction of its area is inside the tile; in (0, 1].
        cut: what happens to a box with less visible: ``"crowd"`` (kept clipped, ``"iscrowd": 1``)
            or ``"drop"``.

    Returns:
        :class:`TiledCoco`. Tile image ids are ``1..`` in big-image file order, then row by row;
        tile file names are ``images/<dir>/<stem>_x<X>_y<Y>.png`` (``<stem>_id<ID>`` when images share a stem,
        :func:`_tile_stems`); annotation ids are ``1..``.
        Annotation boxes are ``[x, y, w, h]`` in tile pixels; a box inside its tile is the big
        image's box minus the tile offset, exactly. Other annotation fields are copied, except
        ``segmentation`` (it would be in the wrong frame).
    """
    size, overlap = check_tiling(size, overlap)
    if isinstance(min_visible, bool) or not isinstance(min_visible, (int, float)) or not (0.0 < float(min_visible) <= 1.0):
        raise MinedetError(f"min_visible must be a number in (0, 1], got {min_visible!r}")
    if cut not in CUT_POLICIES:
        raise MinedetError(f"cut must be one of {', '.join(CUT_POLICIES)}, got {cut!r}")
    images: list[dict] = []
    anns: list[dict] = []
    crops: list[tuple[dict, Tile]] = []
    n_kept = n_cut = n_dropped = 0
    stems = _tile_stems(data.images)
    for src in data.images:
        sid, W, H = int(src["id"]), int(src["width"]), int(src["height"])
        src_anns = data.anns_by_image.get(sid, [])
        for t in tile_grid(W, H, size, overlap, source=sid):
            tid = len(images) + 1
            images.append({
                "id": tid, "file_name": _tile_name(stems[sid], t), "width": t.width, "height": t.height,
                "tile": {"source": sid, "x": t.x, "y": t.y, "source_file": src["file_name"],
                         "source_width": W, "source_height": H},
            })
            crops.append((src, t))
            for a in src_anns:
                x, y, w, h = a["bbox"]
                got = cut_box((x, y, x + w, y + h), t.window)
                if got is None:
                    continue
                (cx1, cy1, cx2, cy2), vis = got
                whole = vis >= 1.0 - _EPS
                crowd = int(a.get("iscrowd", 0))
                if not whole and vis < float(min_visible) - _EPS:
                    if cut == "drop":
                        n_dropped += 1
                        continue
                    crowd = 1
                    n_cut += 1
                else:
                    n_kept += 1
                if whole:  # exact: the box minus an integer offset
                    bbox = [x - t.x, y - t.y, w, h]
                else:
                    bbox = [cx1 - t.x, cy1 - t.y, cx2 - cx1, cy2 - cy1]
                out = {k: v for k, v in a.items() if k not in ("segmentation",)}
                out.update({"id": len(anns) + 1, "image_id": tid, "bbox": bbox, "area": bbox[2] * bbox[3],
                            "iscrowd": crowd, "source_ann": a["id"], "visible": round(vis, 4)})
                anns.append(out)
    extra = {k: v for k, v in data.raw.items() if k not in ("images", "annotations", "categories", "tiling")}
    extra["tiling"] = {"size": size, "overlap": overlap, "min_visible": float(min_visible), "cut": cut,
                       "source_file": str(data.path), "source_images": len(data.images)}
    return TiledCoco(coco_dict(images, anns, data.categories, **extra), crops, n_kept, n_cut, n_dropped)


def write_tiles(tiled: TiledCoco, image_root: str | os.PathLike, out_dir: str | os.PathLike, *,
                json_name: str = "tiles.json", progress: bool = False) -> Path:
    """Cut the tiles out of the big images (PNG, ``out_dir/<file_name>``) and write the tiled COCO
    JSON as ``out_dir/json_name`` last, so its ``file_name`` entries are relative to ``out_dir``.

    Every file is written atomically; a big image that is missing or cannot be decoded is a
    MinedetError (then no JSON is written). Returns the JSON path.
    """
    from minedet.data.coco import save_coco
    from minedet.data.images import open_image
    from minedet.io import write_bytes_atomic

    root, out = Path(image_root), Path(out_dir)
    by_source: dict[int, list[tuple[dict, dict, Tile]]] = {}
    for rec, (src, t) in zip(tiled.coco["images"], tiled.crops):
        by_source.setdefault(int(src["id"]), []).append((rec, src, t))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(tiled.crops), desc="tile", unit="tile", leave=False, file=sys.stderr)
    for items in by_source.values():
        src = items[0][1]
        path, where = root / str(src["file_name"]).replace("\\", "/"), f"image id={src['id']}"
        if not path.is_file():
            raise MinedetError(f"image file {str(path)!r} not found", record=where)
        with open_image(path, root=root, record=where) as im:
            im = im.convert("RGB")
        if im.size != (int(src["width"]), int(src["height"])):
            raise MinedetError(f"image file {str(path)!r} is {im.size[0]}x{im.size[1]} but the record says "
                               f"{src['width']}x{src['height']}", record=where)
        for rec, _, t in items:
            buf = io.BytesIO()
            im.crop(t.window).save(buf, format="PNG")
            write_bytes_atomic(out / rec["file_name"], buf.getvalue())
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    json_path = out / json_name
    save_coco(json_path, tiled.coco)
    return json_path


# --------------------------------------------------------------------------------------------------
# back to the big image


def tile_of(image: Mapping) -> Tile | None:
    """The :class:`Tile` of a tile image record (its ``"tile"`` manifest), or None for an ordinary image.

    A malformed manifest is a MinedetError naming the record.
    """
    m = image.get("tile")
    if m is None:
        return None
    rec = f"image id={image.get('id')}"
    keys = ("source", "x", "y", "source_width", "source_height")
    if not isinstance(m, Mapping) or any(k not in m for k in keys):
        raise MinedetError(f'"tile" must be an object with {", ".join(keys)}', record=rec)
    vals = [m[k] for k in keys]
    if any(isinstance(v, bool) or not isinstance(v, int) for v in vals):
        raise MinedetError('"tile" values must be integers', record=rec)
    t = Tile(int(m["source"]), int(m["x"]), int(m["y"]), int(image["width"]), int(image["height"]),
             int(m["source_width"]), int(m["source_height"]))
    if t.x < 0 or t.y < 0 or t.x + t.width > t.source_width or t.y + t.height > t.source_height:
        raise MinedetError(f"tile {t.window} lies outside its {t.source_width}x{t.source_height} source image", record=rec)
    return t


def _owned(spans: set[tuple[int, int]], start: int, end: int) -> tuple[float, float]:
    """Along one axis, the part ``[lo, hi)`` of a tile ``[start, end)`` that it owns: cut at the middle of its
    overlap with the previous and the next tile of ``spans`` (all tiles' ``(start, end)``); unbounded where
    no tile precedes or follows it."""
    before = [(s, e) for s, e in spans if s < start]
    after = [s for s, _ in spans if s > start]
    lo = -math.inf if not before else (start + max(before)[1]) / 2 if max(before)[1] > start else float(start)
    hi = math.inf if not after else (min(after) + end) / 2 if min(after) < end else float(end)
    return lo, hi


def _truncated(tile: Tile, tiles: Sequence[Tile], boxes: torch.Tensor) -> torch.Tensor:
    """bool[N]: the boxes (big-image pixels) of ``tile`` whose centre lies outside the part of the big image it
    owns (its window cut at the middle of each overlap with a neighbour, :func:`_owned`), i.e. in the half of an
    overlap band nearer its own edge: there a neighbouring tile sees a cut object whole."""
    x_lo, x_hi = _owned({(t.x, t.x + t.width) for t in tiles}, tile.x, tile.x + tile.width)
    y_lo, y_hi = _owned({(t.y, t.y + t.height) for t in tiles}, tile.y, tile.y + tile.height)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    return ~((cx >= x_lo) & (cx < x_hi) & (cy >= y_lo) & (cy < y_hi))


def merge_tile_detections(
    parts: Iterable[tuple[Tile, Target]],
    *,
    nms: float = 0.5,
    slack: float = 8.0,
    cover: float = 0.7,
    image_id: int = -1,
) -> Target:
    """Detections of the tiles of one big image -> detections of the big image.

    Args:
        parts: ``(tile, detections)`` per tile (every tile of the image, with or without detections: the
            tiles define the overlaps); detections are xyxy in **tile** pixels, with scores.
        nms: class-wise NMS IoU applied across all tiles (removes objects seen whole twice).
        slack: the box error tolerated, in px: a truncated box is compared with whole boxes grown by this
            much on every side (a detector's box on a cut piece may stop a few px short of the object).
        cover: a truncated box (centre outside its tile's own part, :func:`_truncated`) is dropped when a
            box of the same class from another tile, whole or larger than it, grown by ``slack``, covers at
            least this fraction of its area.
        image_id: the id the result carries.

    Returns:
        a Target in **big-image** pixels (boxes clipped to the big image), sorted by descending score.
    """
    parts = list(parts)
    tiles = [t for t, _ in parts]
    boxes, labels, scores, trunc, tile_idx = [], [], [], [], []
    for k, (t, d) in enumerate(parts):
        if len(d) == 0:
            continue
        b = d.boxes.detach().float().cpu()
        b = t.to_source(torch.stack([b[:, 0].clamp(0, t.width), b[:, 1].clamp(0, t.height),
                                     b[:, 2].clamp(0, t.width), b[:, 3].clamp(0, t.height)], 1))
        boxes.append(b)
        labels.append(d.labels.detach().cpu())
        scores.append(d.scores.detach().float().cpu() if d.scores is not None else torch.ones(len(b)))
        trunc.append(_truncated(t, tiles, b))
        tile_idx.append(torch.full((len(b),), k, dtype=torch.int64))
    if not boxes:
        out = Target.empty(image_id)
        return Target(out.boxes, out.labels, torch.zeros(0), image_id=image_id)
    B, L, S, T, K = (torch.cat(x) for x in (boxes, labels, scores, trunc, tile_idx))
    keep = torch.ones(len(B), dtype=torch.bool)
    ti = T.nonzero().flatten()
    if len(ti):
        bt, grown = B[ti], B + torch.tensor([-slack, -slack, slack, slack])
        ix1 = torch.maximum(bt[:, None, 0], grown[None, :, 0])
        iy1 = torch.maximum(bt[:, None, 1], grown[None, :, 1])
        ix2 = torch.minimum(bt[:, None, 2], grown[None, :, 2])
        iy2 = torch.minimum(bt[:, None, 3], grown[None, :, 3])
        inter = (ix2 - ix1).clamp(min=0) * (iy2 - iy1).clamp(min=0)
        area = ((B[:, 2] - B[:, 0]) * (B[:, 3] - B[:, 1])).clamp(min=1e-6)
        # the cover: another tile's box of the class, whole, or truncated too (an object in the middle of an
        # overlap band, whose box error puts its centre on the wrong side in both tiles) but larger: the view
        # that holds more of the object stays
        by = (~T[None, :] | (area[None, :] > area[ti][:, None])) & (K[ti][:, None] != K[None, :])
        ok = (inter / area[ti][:, None] >= cover) & (L[ti][:, None] == L[None, :]) & by
        keep[ti[ok.any(1)]] = False
    B, L, S = B[keep], L[keep], S[keep]
    kept = batched_nms(B, S, L, nms)  # sorted by descending score
    return Target(B[kept], L[kept], S[kept], image_id=image_id)


def per_source_summary(data: CocoData, mined: Mapping[int, Target], *, nms: float = 0.5) -> list[dict]:
    """Per big image of a tiled dataset: its tiles, its labelled objects (distinct ``source_ann``,
    crowd fragments left out) and its mined boxes after merging the tiles' overlaps
    (:func:`merge_tile_detections`; ``mined`` is image id -> Target in tile pixels).

    Returns ``[{"source", "source_file", "tiles", "labelled", "mined"}]`` in first-seen order;
    empty when ``data`` has no tile images.
    """
    groups: dict[int, list[tuple[dict, Tile]]] = {}
    for im in data.images:
        t = tile_of(im)
        if t is not None:
            groups.setdefault(t.source, []).append((im, t))
    out = []
    for sid, items in groups.items():
        labelled = {a.get("source_ann", ("tile", a["id"])) for im, _ in items
                    for a in data.anns_by_image.get(int(im["id"]), []) if not a.get("iscrowd", 0)}
        merged = merge_tile_detections(
            [(t, mined.get(int(im["id"]), Target.empty())) for im, t in items], nms=nms)
        out.append({"source": sid, "source_file": items[0][0]["tile"].get("source_file"), "tiles": len(items),
                    "labelled": len(labelled), "mined": len(merged)})
    return out
