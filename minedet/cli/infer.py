"""``minedet eval`` and ``minedet predict``: use an exported model (``OUT/model.pt``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from minedet.errors import MinedetError
from minedet.io import check_outputs, write_json_atomic

def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a batch of 0 or fewer images runs nothing)."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def _is_onnx(model: str) -> bool:
    return Path(model).suffix.lower() == ".onnx"


def _load(model: str, device: str):
    """``(detector, meta, device info)``: ``model.pt`` through :func:`load_model`, or a ``.onnx`` file
    (``minedet export``) through ONNX Runtime on ``device`` ("auto" | "cpu" | "cuda")."""
    from minedet.engine.checkpoint import load_model
    from minedet.engine.dist import setup_device

    if _is_onnx(model):
        from minedet.export import load_onnx_detector

        return (*load_onnx_detector(model, device), setup_device("cpu", quiet=True))
    info = setup_device(device, quiet=True)
    return (*load_model(model, device=info.device), info)


def _cmd_eval(args: argparse.Namespace) -> int:
    images = args.images or str(Path(args.data).parent)
    plots = [Path(args.plot) / n for n in ("pr_curve.png", "confusion.png")] if args.plot else []
    check_outputs([args.model, args.data, images], files=[p for p in [args.out, *plots] if p],
                  folders=[args.plot] if args.plot else [])
    from minedet.data.coco import load_coco
    from minedet.data.datasets import DetectionDataset
    from minedet.engine.inference import evaluate_detector
    from minedet.engine.tiled import evaluate_tiled

    _check_tile_args(args)
    det, meta, info = _load(args.model, args.device)
    data = load_coco(args.data)
    if data.class_names != list(det.spec.class_names):
        raise MinedetError(
            f"the model was trained on classes {det.spec.class_names} but the data has {data.class_names}", file=args.data
        )
    ds = DetectionDataset(data, images)
    if args.tile is not None:  # big images: each predicted tile by tile, in its own pixels
        rep = evaluate_tiled(det, ds, args.tile, args.overlap, batch_size=args.batch_size, progress=True)
    else:
        rep = evaluate_detector(det, ds, batch_size=args.batch_size, info=info, progress=True)
    role = meta.get("role", "model")
    print(f"== {args.model} ({meta.get('method', '?')}, {role}) on {args.data} ==")
    print(rep.table())
    if args.out:
        write_json_atomic(args.out, {"model": args.model, "data": args.data, **rep.as_dict()}, indent=2)
    if args.plot:
        for name, path in rep.plot(args.plot, f"{Path(args.model).name} on {Path(args.data).name}").items():
            print(f"{name}: {path}")
    return 0


def _list_images(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise MinedetError("no such image or directory", file=str(p))
    if not out:
        raise MinedetError("no images found in " + ", ".join(paths))
    return out


def _check_tile_args(args: argparse.Namespace) -> None:
    """--tile SIZE [--overlap PX]: a valid grid, before any work."""
    if args.tile is None and args.overlap is not None:
        raise MinedetError("--overlap needs --tile SIZE")
    if args.tile is not None:
        from minedet.data.tiles import check_tiling
        from minedet.engine.tiled import default_overlap

        check_tiling(args.tile, default_overlap(args.tile) if args.overlap is None else args.overlap)


def _detector(args: argparse.Namespace):
    """``(detect, class names)``; ``detect(image uint8[H, W, 3], path)`` -> numpy ``(boxes float32[D, 4] xyxy
    image pixels, scores [D], labels int64[D] 0..K-1)``. An ``.onnx`` model without --tile runs in ONNX
    Runtime on numpy alone (torch is never imported); --score left out keeps what the graph returns (its
    own exported threshold) and is 0.05 for a model.pt."""
    if _is_onnx(args.model) and args.tile is None:
        from minedet.data.images import to_chw_float
        from minedet.onnx_runtime import OnnxModel

        m = OnnxModel(args.model, device=args.device)
        m.check_score(args.score)
        return (lambda img, path: m.run(to_chw_float(img), score_thresh=args.score)), m.class_names
    import torch

    from minedet.engine.tiled import predict_tiled

    det, _, info = _load(args.model, args.device)
    score = 0.05 if args.score is None and not _is_onnx(args.model) else args.score
    if _is_onnx(args.model):
        det.model.check_score(score)

    def detect(img, path):
        t = torch.from_numpy(img.copy()).permute(2, 0, 1).float().div_(255.0)
        with torch.no_grad():
            if args.tile is not None:  # big images: predict tile by tile, merge into the image's pixels
                d = predict_tiled(det, t, args.tile, args.overlap, batch_size=args.batch_size, progress=True,
                                  desc=path.name, score_thresh=score)
            else:
                d = det.predict([t.to(info.device)], score_thresh=score)[0].to("cpu")
        return d.boxes.numpy(), d.scores.numpy(), d.labels.numpy()

    return detect, list(det.spec.class_names)


def _coco_records(image_id: int, boxes, scores, labels) -> list[dict]:
    """COCO result records of one image's detections (numpy; boxes xyxy -> bbox [x, y, w, h]),
    category id = label + 1."""
    return [{"image_id": int(image_id), "category_id": int(k) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(sc)}
            for (x1, y1, x2, y2), sc, k in zip(boxes.astype("float64").tolist(), scores.tolist(), labels.tolist())]


def _cmd_predict(args: argparse.Namespace) -> int:
    from minedet.data.images import read_rgb
    from minedet.viz import BoxGroup, draw_boxes, save_png

    _check_tile_args(args)
    detect, names = _detector(args)
    paths = _list_images(args.images)
    out_dir = Path(args.out)
    renders = [] if args.no_render else [out_dir / f"{p.stem}.png" for p in paths]
    check_outputs([args.model, *args.images, *paths], files=[out_dir / "detections.json", *renders], folders=[out_dir])
    results, images_json = [], []
    for i, path in enumerate(paths, start=1):
        img = read_rgb(path, file=str(path))
        boxes, scores, labels = detect(img, path)
        images_json.append({"id": i, "file_name": str(path), "height": int(img.shape[0]), "width": int(img.shape[1])})
        results += _coco_records(i, boxes, scores, labels)
        if not args.no_render:
            keep = scores >= args.render_score
            render = draw_boxes(img, [BoxGroup(boxes[keep], [names[int(k)] for k in labels[keep]], scores[keep].tolist(),
                                               color=(255, 40, 40))])
            save_png(render, renders[i - 1])
    write_json_atomic(out_dir / "detections.json", {
        "images": images_json,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
        "results": results,
    })
    print(f"{len(results)} detections on {len(paths)} images -> {out_dir / 'detections.json'}"
          + ("" if args.no_render else f" (+ renders in {out_dir})"))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="pycocotools AP of an exported model on a COCO dataset",
                       description="Evaluate an exported model (OUT/model.pt of minedet train) on a COCO JSON: "
                                   "AP, AP50, AP75, APs/m/l and per-class AP, computed by pycocotools.")
    p.add_argument("model", help="exported model file (model.pt, or model.onnx from minedet export)")
    p.add_argument("data", help="COCO JSON with the ground truth")
    p.add_argument("--images", help="image root the file_name entries are relative to (default: the JSON's folder)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images (with --tile: tiles) per forward pass (default 8)")
    p.add_argument("--out", help="also write the report as JSON here")
    p.add_argument("--plot", metavar="DIR", help="also draw the precision-recall curve of each class (pr_curve.png) and "
                   "the class confusion matrix (confusion.png) into this folder")
    p.add_argument("--tile", type=int, default=None, metavar="SIZE",
                   help="big images: predict each on SIZE x SIZE tiles merged into its pixels, as 'minedet predict "
                        "--tile' does, and score that (default: each image whole, resized to the model's size)")
    p.add_argument("--overlap", type=int, default=None, metavar="PX",
                   help="with --tile: minimum overlap of neighbouring tiles (default SIZE/4); larger than the objects")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default auto)")
    p.set_defaults(func=_cmd_eval)

    q = sub.add_parser("predict", help="detect objects in images; write COCO results JSON and renders",
                       description="Run an exported model on images (files or folders). Writes OUT/detections.json "
                                   "(COCO results, boxes [x,y,w,h] in image pixels, category ids 1..K in the model's "
                                   "class order) and OUT/<name>.png with the boxes drawn.")
    q.add_argument("model", help="exported model file (model.pt, or model.onnx from minedet export)")
    q.add_argument("images", nargs="+", help="image files or folders")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--score", type=float, default=None,
                   help="keep detections above this score in the JSON (default: 0.05 for a model.pt; for a model.onnx "
                        "the score threshold its graph was exported with, below which it cannot go)")
    q.add_argument("--render-score", type=float, default=0.3, help="draw detections above this score (default 0.3)")
    q.add_argument("--no-render", action="store_true", help="write only the JSON")
    q.add_argument("--tile", type=int, default=None, metavar="SIZE",
                   help="big images: predict on SIZE x SIZE tiles and merge the detections into the image's pixels "
                        "(NMS across tile seams); train on tiles of this size ('minedet data tile')")
    q.add_argument("--overlap", type=int, default=None, metavar="PX",
                   help="with --tile: minimum overlap of neighbouring tiles (default SIZE/4); larger than the objects")
    q.add_argument("--batch-size", type=positive_int, default=8,
                   help="with --tile: tiles per forward pass (default 8); an .onnx graph takes one image per run "
                        "(no batch axis), so with a model.onnx each tile is one run")
    q.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run (default auto). With a model.onnx: ONNX Runtime's CUDAExecutionProvider for "
                        "cuda (refused in one line when this onnxruntime has none: pip install onnxruntime-gpu), "
                        "the CPU for cpu, CUDA when available for auto; predict on a model.onnx never imports torch "
                        "(except with --tile)")
    q.set_defaults(func=_cmd_predict)



