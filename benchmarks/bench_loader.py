"""Data-pipeline throughput vs the training step: is the data side ever the bottleneck?

Usage: python benchmarks/bench_loader.py [--batches 30] [--workers 0 1] [--steps 10]
Measures, on the digits dataset at the demo's settings (batch 16, 128 px):
  * images/s of the data pipeline alone (decode + flip + the views each method asks for), per
    number of DataLoader workers;
  * images/s of the supervised and Co-mining training steps (forward + backward + optimiser).
The ratio pipeline / step > 1 means the loader keeps up. (ACRST's FBR pasting joins this table
when the ACRST method lands.)
"""

from __future__ import annotations

import argparse
import sys
import time

from common import write_results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per method (after one warm-up step)")
    args = ap.parse_args()

    from minedet.cli.registry import build_method
    from minedet.cli.train import build_spec, make_dataset, resolve_data
    from minedet.config import load_config, preset_path
    from minedet.data.coco import load_coco
    from minedet.data.datasets import infinite_loader
    from minedet.engine.trainer import build_optimizer
    from minedet.models.build import build_detector

    cfg = resolve_data(load_config(preset_path("digits_retinanet")), quiet=True)
    bs = cfg.data.batch_size
    records = []
    runners = {}
    for method_name in ("supervised", "co_mining"):
        spec = build_spec(cfg, load_coco(cfg.data.train))
        method = build_method({"name": method_name}, build_detector(spec, pretrained=True))
        views = method.streams()["labelled"]
        ds = make_dataset(cfg.data.train, cfg.data.train_images, cfg, views=views, train=True)
        for w in args.workers:
            it = infinite_loader(ds, bs, seed=0, workers=w)
            next(it)  # start-up (workers spawn) is not throughput
            t0 = time.perf_counter()
            for _ in range(args.batches):
                next(it)
            dt = time.perf_counter() - t0
            records.append({"method": method_name, "what": f"pipeline, {w} workers", "workers": w,
                            "images_per_s": round(bs * args.batches / dt, 1), "views": list(views)})
            print(records[-1], file=sys.stderr)
        it = infinite_loader(ds, bs, seed=0, workers=0)
        batches = [{"labelled": next(it)} for _ in range(args.steps + 1)]
        opt = build_optimizer([p for p in method.parameters() if p.requires_grad], cfg.train)
        method.train()
        runners[method_name] = (method, opt, batches, [], [])
    # the two methods' steps alternate (A, B, A, B, ...) so that machine noise hits both alike
    for i in range(args.steps + 1):
        for method, opt, batches, times, cogen in runners.values():
            t0 = time.perf_counter()
            loss = sum(method.training_step(batches[i]).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i:  # the first step warms up
                times.append(time.perf_counter() - t0)
                cogen.append(method.log_metrics().get("time/cogeneration"))
    for method_name, (_, _, _, times, cogen) in runners.items():
        step = sorted(times)[len(times) // 2]
        rec = {"method": method_name, "what": "training step", "workers": None,
               "images_per_s": round(bs / step, 1), "step_s": round(step, 3)}
        if cogen[-1] is not None:  # co-mining times its co-generation inside the step
            share = sorted(c / t for c, t in zip(cogen, times))
            rec["cogeneration_share"] = round(share[len(share) // 2], 4)
        records.append(rec)
        print(records[-1], file=sys.stderr)
    steps = {r["method"]: r["step_s"] for r in records if r["workers"] is None}
    derived = []
    if {"supervised", "co_mining"} <= set(steps):
        derived.append(f"training step co-mining / supervised (same process, same batches, steps alternating): "
                       f"{steps['co_mining'] / steps['supervised']:.2f}x")
    for r in records:
        if r.get("cogeneration_share") is not None:
            derived.append(f"co-generation (decode + filters of both branches) takes {100 * r['cogeneration_share']:.1f}% "
                           f"of a co-mining training step (median of {args.steps} steps)")
    write_results("loader", records, note=f"digits, batch {bs}, 128 px; median of {args.steps} training steps; "
                                          f"{args.batches} batches per pipeline figure.", derived=derived)
    return 0


if __name__ == "__main__":
    sys.exit(main())
