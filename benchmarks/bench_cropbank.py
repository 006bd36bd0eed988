"""ACRST's CropBank at COCO scale, and the cost of FBR crop-pasting in the data pipeline.

Usage: python benchmarks/bench_cropbank.py [--images 117266] [--per-image 7] [--batches 20]

1. Memory and time of a pseudo bank holding R pseudo-labels for each of N unlabelled images (the
   COCO-standard 1 % split leaves 117,266 - 1,172 unlabelled train2017 images; COCO averages 7.3
   boxes per image): Python heap growth (tracemalloc), the flat record arrays, the published
   snapshot file, the time to refresh (snapshot + publish), to load it in a worker, and to draw 10
   crops.
2. Data-pipeline throughput on the digits dataset (batch 8, 128 px): the ACRST strong view with
   and without the Paste transform (N ~ U{0..10} crops from a labelled bank), DataLoader workers 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from common import append_results


def bank_at_scale(n_images: int, per_image: int, k: int = 80) -> dict:
    import torch

    from minedet.data.cropbank import CropBank, SnapshotReader, publish
    from minedet.structures import Target

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(per_image, 2, generator=g) * 500
    boxes = torch.cat([xy, xy + 20 + torch.rand(per_image, 2, generator=g) * 100], 1)
    labels = torch.randint(0, k, (per_image,), generator=g)
    t = Target(boxes, labels, torch.rand(per_image, generator=g))
    tracemalloc.start()
    bank = CropBank(k)
    t0 = time.perf_counter()
    for i in range(n_images):
        bank.set_image(1, i, t)
    fill = time.perf_counter() - t0
    heap = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    t0 = time.perf_counter()
    snap = bank.snapshot(None, 1)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "snapshot.pt"
        publish(snap, path)
        refresh = time.perf_counter() - t0
        size = path.stat().st_size
        t0 = time.perf_counter()
        loaded = SnapshotReader(path).current()
        load = time.perf_counter() - t0
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(1)
    for _ in range(100):
        loaded.sample(10, gen)
    sample = (time.perf_counter() - t0) / 100
    n = len(bank)
    return {"what": "pseudo bank at COCO scale", "images": n_images, "records": n, "heap_mb": round(heap / 2**20, 1),
            "bytes_per_record_heap": round(heap / n, 1), "flat_mb": round(bank.nbytes() / 2**20, 1),
            "snapshot_file_mb": round(size / 2**20, 1), "fill_s": round(fill, 2), "refresh_s": round(refresh, 2),
            "worker_load_s": round(load, 3), "sample10_ms": round(1000 * sample, 3)}


def pipeline(batches: int) -> list[dict]:
    from minedet.registry import build_method
    from minedet.run import make_dataset, resolve_data
    from minedet.config import load_config, preset_path
    from minedet.data.datasets import infinite_loader
    from minedet.models.build import DetectorSpec, build_detector

    cfg = resolve_data(load_config(preset_path("digits_acrst")), quiet=True)
    det = build_detector(DetectorSpec(name="retinanet", num_classes=10, levels="p3p5", fpn_channels=64), pretrained=False)
    out = []
    for fbr in (False, True):
        method = build_method({"name": "acrst", "fbr": fbr, "two_stage": False, "n_min": 0, "n_max": 10}, det)
        streams = method.streams()
        lab = make_dataset(cfg.data.train, cfg.data.train_images, cfg, views=streams["labelled"], train=True)
        unl = make_dataset(cfg.data.unlabelled, cfg.data.unlabelled_images, cfg, views=streams["unlabelled"], train=True,
                           with_targets=False)
        method.bind({"labelled": lab, "unlabelled": unl}, None)
        for name, ds in (("labelled", lab), ("unlabelled", unl)):
            it = infinite_loader(ds, 8, seed=0, workers=0)
            next(it)
            t0 = time.perf_counter()
            pasted = 0
            for _ in range(batches):
                b = next(it)
                pasted += sum(int(v.target.flag("pasted").sum()) for v in b.views["strong"])
            dt = time.perf_counter() - t0
            out.append({"what": f"{name} stream, {'with' if fbr else 'without'} FBR paste", "fbr": fbr, "stream": name,
                        "images_per_s": round(8 * batches / dt, 1), "pasted_per_image": round(pasted / (8 * batches), 2),
                        "views": list(ds.views)})
            print(out[-1], file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=117_266 - 1_172)
    ap.add_argument("--per-image", type=int, default=7)
    ap.add_argument("--batches", type=int, default=20)
    args = ap.parse_args()
    records = [bank_at_scale(args.images, args.per_image)]
    print(records[0], file=sys.stderr)
    records += pipeline(args.batches)
    append_results("cropbank", records, note="Pipeline rows: the digits_acrst preset's data (10 % of 2,000 long-tailed "
                                              "images labelled), batch 8, 128 px, DataLoader workers 0, N ~ U{0..10} crops "
                                              "drawn from the labelled bank.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
