"""Data-pipeline throughput vs the training step: is the data side ever the bottleneck?

Usage: python benchmarks/bench_loader.py [--batches 30] [--workers 0 1] [--steps 10]
       python benchmarks/bench_loader.py --detector faster_rcnn --split hard --init MODEL.pt   # results: loader_faster_rcnn
Measures, on the digits dataset at the demo's settings (batch 16, 128 px; RetinaNet unless --detector):
  * images/s of the data pipeline alone (decode + flip + the views each method asks for), per
    number of DataLoader workers;
  * images/s of the supervised and Co-mining training steps (forward + backward + optimiser),
    and of a supervised step on twice the batch: the cost of two views without co-mining's own
    work, the floor under the co-mining / supervised step ratio; and of a supervised step with its weights
    channels-last (train.channels_last).
The ratio pipeline / step > 1 means the loader keeps up.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import sys
import time
from typing import Any, NamedTuple

from common import append_results


class Runner(NamedTuple):
    """One method ready to time: its method and optimiser, the batches it trains on, its step and co-generation
    times (filled by :func:`time_steps`) and its images per batch."""

    method: Any
    opt: Any
    batches: list[dict]
    times: list[float]
    cogen: list[float | None]
    batch: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per method (after one warm-up step)")
    ap.add_argument("--init", default=None, metavar="MODEL.pt",
                    help="start every method from this trained digits model (so that co-generation and the guards "
                         "beyond the paper see real detections), and also time co-mining with those guards")
    ap.add_argument("--detector", default="retinanet", choices=["retinanet", "fcos", "faster_rcnn"],
                    help="the detector (default retinanet; another writes the results file loader_DETECTOR)")
    ap.add_argument("--split", default="full", choices=["full", "easy", "hard", "extreme"],
                    help="the training labels (default full; a sparse split is drawn with seed 0, so that co-mining "
                         "mines what the benchmarks' runs mine)")
    return ap.parse_args(argv)


def setups(args, bs: int) -> list[tuple[str, dict, int]]:
    """(label, method block, images per batch) of each timed method: supervised at 2x the batch sees as many images as
    co-mining's two views, and 'joint' (two views, no co-generation) shows what co-generation itself adds; co_mining
    and joint run the release's behaviour (method.paper), as in the papers' tables."""
    out = [("supervised", {"name": "supervised"}, bs), ("co_mining", {"name": "co_mining", "paper": True}, bs),
           ("joint", {"name": "co_mining", "cogeneration": False, "paper": True}, bs),
           ("supervised_2x_batch", {"name": "supervised"}, 2 * bs),
           ("supervised_channels_last", {"name": "supervised"}, bs)]
    if args.init:  # the mechanisms beyond the paper (minedet's defaults), acting from the first step (no warm-up)
        out += [("co_mining_guarded", {"name": "co_mining", "mine_after": 0}, bs),
                ("co_mining_adaptive", {"name": "co_mining", "paper": True, "adaptive": True}, bs)]
    return out


def runner(args, cfg, label: str, method_cfg: dict, batch: int, records: list[dict]) -> Runner:
    """Build one method and its batches (``batch`` images each) to time its training step. The data pipeline of
    supervised and co_mining is timed here, per number of workers, into ``records``."""
    from bench_co_mining import FRCNN_COGEN_PROPOSALS
    from minedet.data.coco import load_coco
    from minedet.data.datasets import infinite_loader
    from minedet.engine.optim import build_optimizer
    from minedet.models.build import build_detector
    from minedet.registry import build_method
    from minedet.run import build_spec, init_from, make_dataset

    bs = cfg.data.batch_size
    spec = build_spec(cfg, load_coco(cfg.data.train))
    detector = build_detector(spec, pretrained=True)
    if args.init:
        init_from(detector, args.init)
    if args.detector == "faster_rcnn" and method_cfg["name"] == "co_mining":
        method_cfg = {**method_cfg, "topk": FRCNN_COGEN_PROPOSALS}  # as bench_co_mining.py's Faster R-CNN runs
    method = build_method(method_cfg, detector)
    if label.endswith("_channels_last"):  # the 4-D weights (so the activations) channels-last: train.channels_last
        import torch

        method.to(memory_format=torch.channels_last)
    views = method.streams()["labelled"]
    ds = make_dataset(cfg.data.train, cfg.data.train_images, cfg, views=views, train=True)
    method.bind({"labelled": ds})  # the drift cap reads the labelled density
    for w in args.workers if label in ("supervised", "co_mining") else ():
        it = infinite_loader(ds, bs, seed=0, workers=w)
        next(it)  # start-up (workers spawn) is not throughput
        t0 = time.perf_counter()
        for _ in range(args.batches):
            next(it)
        dt = time.perf_counter() - t0
        records.append({"method": label, "what": f"pipeline, {w} workers", "workers": w,
                        "images_per_s": round(bs * args.batches / dt, 1), "views": list(views)})
        print(records[-1], file=sys.stderr)
    it = infinite_loader(ds, batch, seed=0, workers=0)
    batches = [{"labelled": next(it)} for _ in range(args.steps + 1)]
    opt = build_optimizer([p for p in method.parameters() if p.requires_grad], cfg.train)
    method.train()
    return Runner(method, opt, batches, [], [], batch)


def time_steps(runners: dict[str, Runner], steps: int) -> None:
    """Train every runner ``steps`` + 1 steps, the runners' steps alternating (A, B, C, A, B, C, ...) so that machine
    noise hits them alike; each step's time (and co-generation time) is appended to its runner's lists, the first
    step (warm-up) left out."""
    for i in range(steps + 1):
        for r in runners.values():
            t0 = time.perf_counter()
            loss = sum(r.method(r.batches[i]).values())  # the trainer's call: every method returns its losses
            r.opt.zero_grad()
            loss.backward()
            r.opt.step()
            r.method.after_step(i + 1)
            if i:  # the first step warms up
                r.times.append(time.perf_counter() - t0)
                r.cogen.append(r.method.log_metrics().get("time/cogeneration"))


def step_record(method_name: str, times: list[float], cogen: list, batch: int) -> dict:
    """The record of one method's timed training steps: the median step, and co-generation's median share of it."""
    step = sorted(times)[len(times) // 2]
    rec = {"method": method_name, "what": f"training step, batch {batch}", "workers": None,
           "images_per_s": round(batch / step, 1), "step_s": round(step, 3)}
    if cogen[-1] is not None:  # co-mining times its co-generation inside the step
        share = sorted(c / t for c, t in zip(cogen, times))
        rec["cogeneration_share"] = round(share[len(share) // 2], 4)
    return rec


def derived_lines(records: list[dict], args) -> list[str]:
    """The step-time ratios between the methods (same process, same batches) and co-generation's share of a step."""
    steps = {r["method"]: r["step_s"] for r in records if r["workers"] is None}
    derived = []
    if {"supervised", "co_mining"} <= set(steps):
        derived.append(f"training step co-mining / supervised (same process, same batches, steps alternating): "
                       f"{steps['co_mining'] / steps['supervised']:.2f}x")
    if {"supervised", "supervised_2x_batch", "co_mining"} <= set(steps):
        derived.append(f"supervised step on twice the batch / supervised: {steps['supervised_2x_batch'] / steps['supervised']:.2f}x "
                       f"(the cost of twice the images alone); co-mining / supervised on twice the batch: "
                       f"{steps['co_mining'] / steps['supervised_2x_batch']:.2f}x (co-mining's own overhead)")
    if {"supervised", "joint", "co_mining"} <= set(steps):
        derived.append(f"joint (two views, no co-generation) / supervised: {steps['joint'] / steps['supervised']:.2f}x; "
                       f"co-mining / joint: {steps['co_mining'] / steps['joint']:.2f}x")
    if {"supervised", "supervised_channels_last"} <= set(steps):
        derived.append(f"supervised step with channels-last weights / supervised (train.channels_last): "
                       f"{steps['supervised_channels_last'] / steps['supervised']:.2f}x")
    for label in ("co_mining_guarded", "co_mining_adaptive"):
        if {label, "co_mining"} <= set(steps):
            derived.append(f"{label} / co_mining step (from {Path(args.init).name}, same batches, steps alternating): "
                           f"{steps[label] / steps['co_mining']:.3f}x")
    for r in records:
        if r.get("cogeneration_share") is not None:
            derived.append(f"co-generation (decode + filters of both branches) takes {100 * r['cogeneration_share']:.1f}% "
                           f"of a {r['method']} training step (median of {args.steps} steps)")
    return derived


def main() -> int:
    args = parse_args()
    from minedet.config import load_config, preset_path
    from minedet.data.split_files import sparse_copy
    from minedet.run import resolve_data

    cfg = resolve_data(load_config(preset_path("digits_retinanet"), [f"model.name={args.detector}"]), quiet=True)
    if args.split != "full":
        cfg.data.train, cfg.data.hidden = sparse_copy(cfg, args.split, 0)
    bs = cfg.data.batch_size
    records: list[dict] = []
    runners = {label: runner(args, cfg, label, method_cfg, batch, records) for label, method_cfg, batch in setups(args, bs)}
    time_steps(runners, args.steps)
    for method_name, r in runners.items():
        records.append(step_record(method_name, r.times, r.cogen, r.batch))
        print(records[-1], file=sys.stderr)
    start = f"; every method starts from the trained model {Path(args.init).name}" if args.init else ""
    labels = "full labels" if args.split == "full" else f"the `{args.split}` split (seed 0)"
    name = "loader" if args.detector == "retinanet" else f"loader_{args.detector}"
    append_results(name, records, note=f"digits, {args.detector}, {labels}, batch {bs}, 128 px; median of {args.steps} "
                                       f"training steps; {args.batches} batches per pipeline figure{start}.",
                   derived=derived_lines(records, args))
    return 0

if __name__ == "__main__":
    sys.exit(main())
