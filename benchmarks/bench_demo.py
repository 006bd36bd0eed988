"""The demo's acceptance numbers: wall time of `minedet demo` end to end (fresh dataset cache) and its AP.

Usage: python benchmarks/bench_demo.py [--keep-cache]
Target (foundation issue): <= 15 minutes on 2 CPU cores, AP50 >= 0.70 and AP >= 0.40 on digits val.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, append_results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keep-cache", action="store_true", help="reuse the dataset cache (skips the build)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="minedet-demo-"))
    cmd = [sys.executable, "-m", "minedet", "demo", "--out", str(work / "demo")]
    if not args.keep_cache:
        cmd.append(f"data.cache_dir={work / 'cache'}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return proc.returncode
    ev = json.loads((work / "demo" / "eval.json").read_text())
    rep = ev["eval"][ev["roles"][0]]
    rec = {"method": "supervised", "detector": "retinanet", "backbone": "effnet_lite0", "split": "full",
           "seed": 0, "steps": ev["steps"], "wall_s": round(wall, 1), "train_s": round(ev["wall_s"], 1),
           "ap": rep["ap"], "ap50": rep["ap50"], "ap75": rep["ap75"], "per_class": rep["per_class"],
           "demo_command": "minedet demo", "fresh_cache": not args.keep_cache,
           "meets_target": bool(wall <= 900 and rep["ap50"] >= 0.70 and rep["ap"] >= 0.40)}
    print(proc.stdout)
    print(json.dumps({k: rec[k] for k in ("wall_s", "ap", "ap50", "meets_target")}))
    append_results("demo", [rec], target="<= 900 s wall, AP50 >= 0.70, AP >= 0.40")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
