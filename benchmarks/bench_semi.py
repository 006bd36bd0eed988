"""Semi-supervised detection on long-tailed digits: supervised vs STAC vs Mean Teacher vs ACRST,
and ACRST's ablations in miniature (RetinaNet, EfficientNet-Lite0 FPN, CPU).

Usage:
  python benchmarks/bench_semi.py                            # headline: supervised / STAC / Mean Teacher / ACRST x fractions x 3 seeds
  python benchmarks/bench_semi.py --table ablation           # ACRST Table 4: FBR / AFFR / two-stage / SS switched on one by one
  python benchmarks/bench_semi.py --table bank               # Table 5: CropBank type and crops per image
  python benchmarks/bench_semi.py --table beta               # Table 6: AFFR beta
  python benchmarks/bench_semi.py --table detectors          # ACRST on FCOS and Faster R-CNN vs Mean Teacher
  python benchmarks/bench_semi.py --table stac               # Table 7: STAC + ACRST, + two-stage, + selective supervision

Scale-down (stated in docs/benchmarks.md): digits scenes stand in for COCO, with a long-tailed
class distribution (class "0" --imbalance times as frequent as "9"); the labelled fractions are
drawn with `minedet data split-semi` (COCO-standard protocol) per seed. Every run has the same
number of steps; semi-supervised runs spend the first half in supervised burn-in. "supervised
(all labels)" trains on every training image with its labels: the ceiling ACRST's gap-closing
target is measured against.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from common import add_test_arg, append_results, train_record

ACRST_OFF = {"fbr": False, "affr": False, "two_stage": False, "selective_supervision": False}
METHODS = {
    "supervised": {"name": "supervised"},
    "stac": {"name": "stac"},  # teacher = this seed/fraction's supervised model
    "mean_teacher": {"name": "mean_teacher"},
    "acrst": {"name": "acrst"},
    # Table 4 (ACRST's ablation): Mean Teacher = ACRST with everything off
    "two_stage": {"name": "acrst", **ACRST_OFF, "two_stage": True},
    "fbr": {"name": "acrst", **ACRST_OFF, "fbr": True},
    "fbr+affr": {"name": "acrst", **ACRST_OFF, "fbr": True, "affr": True},
    "fbr+affr+two_stage": {"name": "acrst", **ACRST_OFF, "fbr": True, "affr": True, "two_stage": True},
    # Table 5
    "bank_labelled": {"name": "acrst", "bank": "labelled"},
    "bank_pseudo": {"name": "acrst", "bank": "pseudo"},
    "n0-5": {"name": "acrst", "n_max": 5},
    "n10-10": {"name": "acrst", "n_min": 10, "n_max": 10},
    # Table 7: STAC + ACRST
    "stac+acrst": {"name": "stac_acrst", **ACRST_OFF, "fbr": True, "affr": True},
    "stac+acrst+two_stage": {"name": "stac_acrst", **ACRST_OFF, "fbr": True, "affr": True, "two_stage": True},
    "stac+acrst+two_stage+ss": {"name": "stac_acrst"},
}

#: the papers' pseudo-label rule, pinned on every semi-supervised column (Mean Teacher's default has the band),
#: and for ACRST the paper's occlusion rule alone (Eq. 7; minedet's default also ignores half-hidden instances)
PAPER_RULE = {"ignore_below": None}
ACRST_PAPER_RULE = {**PAPER_RULE, "occlusion_ignore": None}


def paper_rule(name: str) -> dict:
    return ACRST_PAPER_RULE if name in ("acrst", "stac_acrst") else PAPER_RULE

TABLES = {
    "headline": ["supervised", "stac", "mean_teacher", "acrst"],
    "ablation": ["mean_teacher", "two_stage", "fbr", "fbr+affr", "fbr+affr+two_stage", "acrst"],
    "bank": ["bank_labelled", "bank_pseudo", "n0-5", "acrst", "n10-10"],
    "beta": ["beta0", "beta0.2", "beta0.4", "acrst", "beta0.8"],
    "detectors": ["mean_teacher", "acrst"],
    "stac": ["supervised", "stac", "stac+acrst", "stac+acrst+two_stage", "stac+acrst+two_stage+ss"],
}


def method_cfg(label: str) -> dict:
    if label.startswith("beta"):
        return {"name": "acrst", "beta": float(label[4:])}
    return dict(METHODS[label])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default="headline", choices=list(TABLES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fractions", type=float, nargs="+", default=None,
                    help="labelled percent(s) (default: 2 5 10 for the headline, 2 for the ablations)")
    ap.add_argument("--steps", type=int, default=800, help="training steps per run (half of them burn-in)")
    ap.add_argument("--train-images", type=int, default=2000)
    ap.add_argument("--val-images", type=int, default=300)
    add_test_arg(ap)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per run (default 1): a same-seed re-run reproduces its record only at the same count")
    ap.add_argument("--imbalance", type=float, default=10.0)
    ap.add_argument("--detectors", nargs="+", default=None, help="for --table detectors (default: fcos faster_rcnn)")
    ap.add_argument("--methods", nargs="+", default=None, help="only these methods of the table")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the supervised-on-all-labels run per seed")
    ap.add_argument("--append", action="store_true",
                    help="accepted for old command lines: results files are always appended to (a re-run is a new record)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    ap.add_argument("--name", default=None, help="results file name (default: semi for the headline, semi_TABLE otherwise)")
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from minedet.run import resolve_data
    from minedet.config import apply_overrides, load_config, preset_path

    # the tables reproduce the papers: their pseudo-label rule (no ignored band) unless --set method.* says otherwise
    set_method = apply_overrides({}, [o for o in args.set if o.startswith("method.")]).get("method", {})
    fractions = args.fractions or ([2.0, 5.0, 10.0] if args.table == "headline" else [2.0])
    methods = [m for m in TABLES[args.table] if args.methods is None or m in args.methods]
    detectors = (args.detectors or ["fcos", "faster_rcnn"]) if args.table == "detectors" else ["retinanet"]
    work = Path(args.out or tempfile.mkdtemp(prefix="minedet-semi-"))
    name = args.name or ("semi" if args.table == "headline" else f"semi_{args.table}")

    def config(seed: int, detector: str, semi: dict | None):
        digits = {"seed": 0, "n_train": args.train_images, "n_val": args.val_images, "n_test": args.test_images,
                  "image_size": 128, "imbalance": args.imbalance}
        over = [f"train.max_steps={args.steps}", f"train.seed={seed}", f"model.name={detector}", f"train.threads={args.threads}",
                f"data.cache_dir={work / 'cache'}", f"method.burn_in={args.steps // 2}", *args.set]
        cfg = load_config(preset_path("digits_mean_teacher"), over)
        cfg.data.digits = digits
        cfg.data.semi = semi
        return resolve_data(cfg, quiet=True)

    def run(label: str, seed: int, fraction: float | None, detector: str, cfg) -> dict:
        key = {"method": label, "fraction": fraction, "seed": seed, "detector": detector}
        out = work / "-".join(str(v) for v in key.values())
        print(f"[{args.table}] {detector} {fraction}% seed {seed} {label} ...", file=sys.stderr, flush=True)
        rec = train_record(cfg, label=key, out_dir=out)
        print(f"    AP {100 * rec['ap']:.1f} ({rec['wall_s']:.0f} s, {rec.get('step_time_s', 0):.2f} s/step)",
              file=sys.stderr, flush=True)
        append_results(name, [rec], note=note(args), derive=derived)
        return rec

    for seed in args.seeds:
        for detector in detectors:
            if args.table == "headline" and not args.no_ceiling:
                cfg = config(seed, detector, None)
                cfg.method = {"name": "supervised"}
                run("supervised_all", seed, 100.0, detector, cfg)
            for fraction in fractions:
                sup_model = None
                for label in methods:
                    cfg = config(seed, detector, {"percent": fraction, "seed": seed})
                    m = method_cfg(label)
                    if m["name"] == "supervised":
                        cfg.data.unlabelled = cfg.data.hidden = None
                    elif m["name"] in ("stac", "stac_acrst"):
                        if sup_model is None:
                            raise SystemExit("stac needs the supervised run of the same seed and fraction first")
                        m = {**paper_rule(m["name"]), **m, "teacher": sup_model, **set_method}
                    else:
                        m = {**cfg.method, **paper_rule(m["name"]), **m, **set_method}
                    cfg.method = m
                    rec = run(label, seed, fraction, detector, cfg)
                    if label == "supervised":
                        sup_model = str(work / "-".join(str(v) for v in (label, fraction, seed, detector)) / "model.pt")
                    del rec
    return 0


def note(args) -> str:
    return (f"Digits train split of {args.train_images} images (128 px) with class imbalance {args.imbalance:g} "
            f"(class 0 most frequent, 9 rarest), val {args.val_images} images with full labels; {args.steps} steps per run "
            f"(semi-supervised: {args.steps // 2} burn-in), batch 8 labelled (+ 8 unlabelled), AdamW lr 1e-3; "
            f"the labelled fraction re-drawn with the run's seed.")


def derived(records: list[dict]) -> list[str]:
    """Gaps closed and step-time ratios from the records."""
    def vals(method, fraction, key="ap", detector="retinanet"):
        return [r[key] for r in records if r["method"] == method and r.get("fraction") == fraction
                and r.get("detector", "retinanet") == detector and r.get(key) is not None]

    lines = []
    ceiling = vals("supervised_all", 100.0)
    fractions = sorted({r["fraction"] for r in records if r.get("fraction") not in (None, 100.0)})
    for f in fractions:
        sup, mt, ac = vals("supervised", f), vals("mean_teacher", f), vals("acrst", f)
        if ceiling and sup and ac:
            c, s, a = statistics.mean(ceiling), statistics.mean(sup), statistics.mean(ac)
            if c > s:
                lines.append(f"{f:g}%: ACRST closes {100 * (a - s) / (c - s):.0f}% of the gap between supervised on the "
                             f"labelled fraction ({100 * s:.1f}) and on all labels ({100 * c:.1f}): {100 * a:.1f}")
        if ceiling and sup and mt:
            c, s, m = statistics.mean(ceiling), statistics.mean(sup), statistics.mean(mt)
            if c > s:
                lines.append(f"{f:g}%: Mean Teacher closes {100 * (m - s) / (c - s):.0f}% of that gap: {100 * m:.1f}")
    for a, b in (("mean_teacher", "supervised"), ("acrst", "mean_teacher")):
        ta = [r["step_time_s"] for r in records if r["method"] == a and r.get("step_time_s")]
        tb = [r["step_time_s"] for r in records if r["method"] == b and r.get("step_time_s")]
        if ta and tb:
            lines.append(f"step time {a} / {b}: {statistics.mean(ta) / statistics.mean(tb):.2f}x (means over all runs)")
    ca = [r["compute_time_s"] for r in records if r["method"] == "acrst" and r.get("compute_time_s")]
    cm = [r["compute_time_s"] for r in records if r["method"] == "mean_teacher" and r.get("compute_time_s")]
    if ca and cm:
        lines.append(f"step time without waiting for data, acrst / mean_teacher: {statistics.mean(ca) / statistics.mean(cm):.2f}x "
                     "(the crop-paste runs in the data pipeline; with data.workers=0 it runs between steps)")
    return lines


if __name__ == "__main__":
    sys.exit(main())
