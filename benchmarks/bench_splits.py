"""Benchmark the annotation-degradation tools at COCO train2017 scale.

Times :func:`minedet.data.splits.sparsify` in every mode and :func:`split_semi` on a synthetic COCO
dict the size of train2017 (118,287 images, 860,001 boxes, 80 categories by default), each in a
fresh child process so its peak resident memory is its own. Requirement: each < 60 s and < 4 GB.

Appends to ``benchmarks/results/splits.json`` (each record with its origin: command, date, git commit, machine:
Python, torch, numpy versions) and one record per operation with wall seconds for the operation,
wall seconds to generate the data, and peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``)
after generating the data and after the operation.

    python benchmarks/bench_splits.py                      # full size
    python benchmarks/bench_splits.py --images 2000 --boxes 15000 --name splits_quick   # quick
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OPS = ["sparsify:easy", "sparsify:hard", "sparsify:extreme", "sparsify:missing", "sparsify:keep1", "split_semi:1", "split_semi:10"]


def _rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


def run_one(op: str, n_images: int, n_boxes: int, n_categories: int, seed: int) -> dict:
    """Generate the data, run one operation, return its record (runs inside the child process)."""
    from minedet.data.splits import sparsify, split_semi, synthetic_coco

    t0 = time.perf_counter()
    d = synthetic_coco(n_images, n_boxes, n_categories, seed)
    gen_s = time.perf_counter() - t0
    rss_data = _rss_mb()
    kind, arg = op.split(":")
    t0 = time.perf_counter()
    if kind == "sparsify":
        r = sparsify(d, arg, seed, 0.5 if arg == "missing" else None)
        counts = r.manifest["annotations"]
    else:
        s = split_semi(d, float(arg), seed)
        counts = {"labelled_images": s.manifest["labelled"], "unlabelled_images": s.manifest["unlabelled"]}
    wall = time.perf_counter() - t0
    return {
        "op": op,
        "mode": arg if kind == "sparsify" else None,
        "percent": float(arg) if kind == "split_semi" else None,
        "rate": 0.5 if op == "sparsify:missing" else None,
        "seed": seed,
        "images": n_images,
        "boxes": n_boxes,
        "categories": n_categories,
        "wall_s": round(wall, 3),
        "generate_s": round(gen_s, 3),
        "peak_rss_mb_after_generate": round(rss_data, 1),
        "peak_rss_mb": round(_rss_mb(), 1),
        "counts": counts,
        "within_limits": wall < 60 and _rss_mb() < 4096,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=118_287)
    ap.add_argument("--boxes", type=int, default=860_001)
    ap.add_argument("--categories", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of " + ",".join(OPS))
    ap.add_argument("--name", default="splits", help="results file name (benchmarks/results/NAME.json, appended to)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.child, args.images, args.boxes, args.categories, args.seed)))
        return 0

    from common import append_results

    records = []
    for op in args.ops.split(","):
        cmd = [sys.executable, __file__, "--child", op, "--images", str(args.images), "--boxes", str(args.boxes),
               "--categories", str(args.categories), "--seed", str(args.seed)]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if res.returncode != 0:
            sys.stderr.write(res.stderr)
            return 1
        rec = json.loads(res.stdout.strip().splitlines()[-1])
        records.append(rec)
        print(f"{op:18s} {rec['wall_s']:7.2f} s   peak RSS {rec['peak_rss_mb']:7.1f} MB "
              f"(data alone {rec['peak_rss_mb_after_generate']:.1f} MB)", flush=True)
    from minedet import __version__

    path = append_results(args.name, [{**r, "minedet_version": __version__} for r in records],
                          limits={"wall_s": 60, "peak_rss_mb": 4096})
    print(f"wrote {path}")
    return 0 if all(r["within_limits"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
