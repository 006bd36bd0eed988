"""ONNX export: does the exported graph give PyTorch's detections, and how much faster is ONNX Runtime?

Usage: python benchmarks/bench_export.py [--steps 100] [--model MODEL.pt] [--reps 20] [--threads N]
       [--only parity|latency] [--out WORK]

1. Trains a small RetinaNet on the digits preset (``--steps``; or takes ``--model``) and exports it with
   ``minedet.export.export_onnx`` twice: at the training size and at 800 px (``--image-size 800``), both
   ``dynamic`` (any H, W).
2. Parity, per image, ONNX Runtime vs PyTorch eager (the ``model.pt`` path of ``minedet predict``): the same
   number of detections, matched one to one (same label, IoU >= 0.99; a detection tied with the 100th, where
   either side may keep either, is left out), the largest score difference, and pycocotools AP of both.
   On the digits val set (at the training size) and on 4 large 1024 px digits scenes (at 800 px: the images
   are resized to a short side of 800 inside both models).
3. Latency per image, batch 1, paired in one run: PyTorch eager and ONNX Runtime calls alternate on the same
   image; medians over ``--reps``; at the training size (a val image) and at 800 px (a large scene).
   Threads: ``--threads`` for both (torch.set_num_threads and ONNX Runtime's intra-op threads; default
   torch's default). On a machine shared with other jobs, 2 torch threads on 2 cores can wait seconds in
   OpenMP barriers: measure with --threads 1 there.
   With ``--out WORK`` holding ``run/model.pt`` from an earlier run, that model is reused (not retrained).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import append_results

TARGET_SPEEDUP = 1.5


def _digits_config(work: Path, over: list[str]):
    from minedet.run import resolve_data
    from minedet.config import load_config, preset_path

    return resolve_data(load_config(preset_path("digits_retinanet"), [*over, f"data.cache_dir={work / 'cache'}"]), quiet=True)


def _train(steps: int, work: Path, train_images: int, val_images: int) -> tuple[Path, object]:
    from minedet.run import run_training

    cfg = _digits_config(work, [f"train.max_steps={steps}", f"data.digits.n_train={train_images}",
                                f"data.digits.n_val={val_images}", "train.progress=false"])
    run_training(cfg, out_dir=work / "run", quiet=True)
    return work / "run" / "model.pt", cfg


def _steps_of(model_path: Path, trained_now: int | None) -> int | None:
    """The training steps of the model measured: those just trained, or, for a model reused from an earlier run of this
    script, its run's ``train.max_steps`` (``config.json`` beside it; None when absent)."""
    import json

    if trained_now is not None:
        return trained_now
    cfg = model_path.parent / "config.json"
    return json.loads(cfg.read_text())["train"]["max_steps"] if cfg.exists() else None


def _parity(det, onnx_det, dataset, data) -> dict:
    """ONNX vs PyTorch on every image of ``dataset``: match counts, worst IoU / score difference, AP of both."""
    import torch

    from minedet.engine.evaluate import coco_results, evaluate_detections
    from minedet.export import cut_score, match_detections

    max_det = det.spec.detections_per_img
    pt_dets, ox_dets = [], []
    n_ref = n_cmp = n_matched = same_count = 0
    min_iou, max_diff = 1.0, 0.0
    for i in range(len(dataset)):
        s = dataset[i]
        img = s["views"]["o"].image
        with torch.no_grad():
            a = det.predict([img])[0]
        b = onnx_det.predict([img])[0]
        above = cut_score(a, max_det)
        m = match_detections(a, b, iou=0.99, above=above)
        n_ref += len(a)
        same_count += int(len(a) == len(b))
        n_cmp += len(a) if above is None else int((a.scores > above).sum())
        n_matched += m["matched"]
        min_iou, max_diff = min(min_iou, m["min_iou"]), max(max_diff, m["max_score_diff"])
        pt_dets.append((s["image_id"], a))
        ox_dets.append((s["image_id"], b))
    aps = {}
    for key, dets in (("pytorch", pt_dets), ("onnx", ox_dets)):
        rep = evaluate_detections(data.raw, coco_results(dets, data.cat_ids), image_ids=dataset.ids,
                                  class_names=data.class_names)
        aps[key] = rep.as_dict()["ap"]
    return {"images": len(dataset), "detections": n_ref, "images_same_count": same_count, "compared": n_cmp,
            "matched": n_matched, "min_iou": round(min_iou, 6), "max_score_diff": float(f"{max_diff:.3g}"),
            "ap_pytorch": aps["pytorch"], "ap_onnx": aps["onnx"],
            "ap_diff_points": round(100 * abs(aps["pytorch"] - aps["onnx"]), 3),
            "same": n_matched == n_cmp and same_count == len(dataset) and max_diff <= 1e-3
            and round(100 * aps["pytorch"], 1) == round(100 * aps["onnx"], 1)}


def _latency(det, onnx_det, img, reps: int) -> dict:
    """Median seconds per image, PyTorch eager and ONNX Runtime calls alternating (2 warm-up calls each)."""
    import torch

    pt, ox = [], []
    for i in range(reps + 2):
        t0 = time.perf_counter()
        with torch.no_grad():
            det.predict([img])
        t1 = time.perf_counter()
        onnx_det.predict([img])
        t2 = time.perf_counter()
        if i >= 2:
            pt.append(t1 - t0)
            ox.append(t2 - t1)
    p, o = statistics.median(pt), statistics.median(ox)
    return {"reps": reps, "pytorch_ms": round(1000 * p, 2), "onnx_ms": round(1000 * o, 2), "speedup": round(p / o, 2),
            "pytorch_ms_iqr": [round(1000 * q, 2) for q in statistics.quantiles(pt, n=4)[::2]],
            "onnx_ms_iqr": [round(1000 * q, 2) for q in statistics.quantiles(ox, n=4)[::2]]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100, help="training steps of the benchmark's model")
    ap.add_argument("--train-images", type=int, default=2000)
    ap.add_argument("--val-images", type=int, default=300)
    ap.add_argument("--large-images", type=int, default=4, help="1024 px scenes for parity and the 800 px latency")
    ap.add_argument("--large-size", type=int, default=1024)
    ap.add_argument("--model", help="use this model.pt instead of training one (its val set: the digits preset's)")
    ap.add_argument("--reps", type=int, default=20, help="timed calls per runtime and size")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads of both runtimes (0: torch's default)")
    ap.add_argument("--only", choices=["parity", "latency"], help="run one half of the benchmark")
    ap.add_argument("--out", help="work folder (default: a temporary one); a model trained there before is reused")
    args = ap.parse_args()

    import torch

    from minedet.data.coco import load_coco
    from minedet.data.datasets import DetectionDataset
    from minedet.data.digits import build_digits
    from minedet.engine.checkpoint import load_model
    from minedet.export import OnnxDetector, export_onnx

    work = Path(args.out or tempfile.mkdtemp(prefix="bench_export_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    reused = not args.model and (work / "run" / "model.pt").exists()
    if args.model or reused:
        model_path, cfg = Path(args.model) if args.model else work / "run" / "model.pt", None
    else:
        model_path, cfg = _train(args.steps, work, args.train_images, args.val_images)
    train_s = round(time.perf_counter() - t0, 1)
    det, _ = load_model(model_path)
    train_size = det.spec.image_size
    if cfg is None:
        cfg = _digits_config(work, [f"data.digits.n_train={args.train_images}", f"data.digits.n_val={args.val_images}"])
    val = load_coco(cfg.data.val)
    val_ds = DetectionDataset(val, cfg.data.val_images)
    large = build_digits(work / "large", seed=1, n_train=0, n_val=args.large_images, image_size=args.large_size,
                         digits_per_image=(8, 16), digit_size=(args.large_size // 13, args.large_size // 5))
    large_data = load_coco(large.val_json)
    large_ds = DetectionDataset(large_data, large.image_root)

    records = []
    exports = {}
    for size in (train_size, 800):
        t = time.perf_counter()
        rep = export_onnx(det, work / f"model_{size}.onnx", image_size=size, dynamic=True, source=str(model_path))
        exports[size] = (OnnxDetector(work / f"model_{size}.onnx", threads=args.threads), round(time.perf_counter() - t, 1), rep.size_bytes)
    pt_800, _ = load_model(model_path)  # PyTorch at 800 px: the same weights, images resized to 800 inside
    pt_800.model.transform.min_size = (800,)
    ratio = det.model.transform.max_size / det.model.transform.min_size[-1]
    pt_800.model.transform.max_size = int(round(800 * ratio))
    base = {"detector": det.kind, "method": "onnx_vs_eager", "model_steps": _steps_of(model_path, args.steps if not reused else None)
            if not args.model else None, "train_size": train_size,
            "train_s": train_s, "model_reused": reused}
    for what, pt, (ox, export_s, nbytes), ds, data in () if args.only == "latency" else (
        ("digits val", det, exports[train_size], val_ds, val),
        (f"{args.large_images} large {args.large_size} px scenes", pt_800, exports[800], large_ds, large_data),
    ):
        size = train_size if pt is det else 800
        rec = {**base, "what": f"parity, {what}", "image_size": size, "export_s": export_s,
               "onnx_mb": round(nbytes / 1e6, 1), **_parity(pt, ox, ds, data)}
        records.append(rec)
        print(rec, file=sys.stderr)
    for size, pt, (ox, _, _), img in () if args.only == "parity" else (
            (train_size, det, exports[train_size], val_ds[0]["views"]["o"].image),
            (800, pt_800, exports[800], large_ds[0]["views"]["o"].image)):
        threads = f", {args.threads} thread{'s' if args.threads > 1 else ''}" if args.threads > 1 else ""
        rec = {**base, "what": f"latency, {size} px{threads}", "image_size": size, "input_shape": list(img.shape), "batch": 1,
               "torch_threads": torch.get_num_threads(), "onnx_threads": args.threads or "default",
               **_latency(pt, ox, img, args.reps)}
        rec["meets_target"] = rec["speedup"] >= TARGET_SPEEDUP
        records.append(rec)
        print(rec, file=sys.stderr)
    path = append_results("export", records, target=f"ONNX Runtime >= {TARGET_SPEEDUP}x faster than PyTorch eager at batch 1; "
                         "parity: matched boxes IoU >= 0.99 one to one, score difference <= 1e-3, AP equal to 0.1")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
