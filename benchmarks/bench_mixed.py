"""Mixed supervision on digits: 10 % of the images completely labelled, 30 % `hard`-sparse, 60 %
unlabelled; every column trains at the same number of steps (RetinaNet, EfficientNet-Lite0 FPN, CPU).

Usage:
  python benchmarks/bench_mixed.py                       # every column, 3 seeds
  python benchmarks/bench_mixed.py --seeds 0 --methods mixed mean_teacher

Columns (what each method can make of the same data):
  supervised_complete  supervised on the complete 10 %
  supervised_sparse    supervised on complete + sparse (missing boxes taught as background)
  co_mining            co-mining on complete + sparse (the release's settings: tau 0.6, method.paper=true)
  mean_teacher         complete as labelled; sparse + unlabelled images as unlabelled (their boxes unused), the papers' rule
  mean_teacher_ignore  the same with the uncertain band (ignore_below 0.3), the mixed method's default
  mixed                the mixed method: complete, sparse and unlabelled streams (8 / 4 / 4 images per step),
                       burn-in on complete + sparse images (sparse_burn_in=true, as first measured)
  mixed_adaptive       the same with per-class thresholds from the teacher's scores on labelled boxes (adaptive)
  mixed_late_sparse    mixed with burn-in on the complete images only (sparse_burn_in=false, the default): the sparse
                       images' missing boxes are never taught as background before the teacher labels them
  full                 supervised on every image with its full labels (the ceiling)
  supervised_sparse_brl, mixed_late_sparse_brl
                       those two on BRL's loss (model.extra.cls_loss=brl): an anchor far from every label that the
                       model scores high is not taught as background (the co-mining preset's loss on RetinaNet)

The split is `minedet data split-semi --percent 10 --sparse 30 --mode hard --seed SEED` (re-drawn per
seed). Schedule: the digits_mean_teacher preset (long-tailed digits, imbalance 10) with --steps steps,
half of them burn-in for the teacher-student methods.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from common import add_run_args, append_results, latest, train_record

COLUMNS = ["supervised_complete", "supervised_sparse", "co_mining", "mean_teacher", "mean_teacher_ignore", "mixed",
           "mixed_adaptive", "mixed_late_sparse", "full", "supervised_sparse_brl", "mixed_late_sparse_brl"]


def parts(mixed_json: Path, hidden_json: Path, out: Path) -> dict[str, Path]:
    """The files of the single-kind columns, cut from the mixed file: the complete images; the sparse
    and unlabelled images without boxes (for Mean Teacher) and their whole truth."""
    from minedet.data.coco import load_coco, save_coco
    from minedet.data.mixed import select_kinds, select_images

    mixed, hidden = load_coco(mixed_json), load_coco(hidden_json)
    paths = {k: out / f"{k}.json" for k in ("complete", "unlabelled", "unlabelled_hidden")}
    if not all(p.exists() for p in paths.values()):
        rest = select_kinds(mixed, ["sparse", "none"])
        ids = [im["id"] for im in rest.images]
        truth = {**select_images(hidden, ids, what="truth").raw}
        truth["annotations"] = truth["annotations"] + rest.raw["annotations"]  # erased + kept boxes: all of them
        save_coco(paths["complete"], select_kinds(mixed, ["complete"]).raw)
        save_coco(paths["unlabelled"], {**rest.raw, "annotations": []})
        save_coco(paths["unlabelled_hidden"], truth)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=None, choices=COLUMNS, help="only these columns")
    ap.add_argument("--steps", type=int, default=800, help="training steps per run (teacher-student methods: half burn-in)")
    add_run_args(ap, train_images=2000)
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from minedet.config import load_config, preset_path
    from minedet.run import resolve_data

    work = Path(args.out or tempfile.mkdtemp(prefix="minedet-mixed-"))
    co_mining = load_config(preset_path("digits_co_mining")).method

    def config(seed: int, label: str):
        if label.endswith("_brl"):  # the column without the suffix, on BRL's loss (which normalises per image)
            cfg = config(seed, label[:-len("_brl")])
            cfg.model.extra = {**cfg.model.extra, "cls_loss": "brl", "loss_norm": "image"}
            return cfg
        digits = {"seed": 0, "n_train": args.train_images, "n_val": args.val_images, "n_test": args.test_images,
                  "image_size": 128, "imbalance": 10.0}
        over = [f"train.max_steps={args.steps}", f"train.seed={seed}", f"train.threads={args.threads}",
                f"data.cache_dir={work / 'cache'}", f"method.burn_in={args.steps // 2}"]
        cfg = load_config(preset_path("digits_mean_teacher"), over)
        cfg.data.digits, cfg.data.semi = digits, None
        if label != "full":
            cfg.data.mixed = {"percent": 10, "sparse": 30, "mode": "hard", "seed": seed}
        cfg = resolve_data(cfg, quiet=True)
        mt = dict(cfg.method)
        if label == "full":
            cfg.method, cfg.data.hidden = {"name": "supervised"}, None
            return cfg
        p = parts(Path(cfg.data.train), Path(cfg.data.hidden), Path(cfg.data.train).parent)
        if label == "supervised_complete":
            cfg.data.train, cfg.data.hidden, cfg.method = str(p["complete"]), None, {"name": "supervised"}
        elif label == "supervised_sparse":  # the flagged file: a one-stream method trains on complete + sparse
            cfg.data.hidden, cfg.method = None, {"name": "supervised"}
        elif label == "co_mining":
            cfg.method = {**co_mining, "paper": True}  # the release's behaviour, as in the papers' tables
        elif label.startswith("mean_teacher"):
            cfg.data.train, cfg.data.unlabelled, cfg.data.hidden = str(p["complete"]), str(p["unlabelled"]), str(p["unlabelled_hidden"])
            cfg.data.unlabelled_images = cfg.data.train_images
            cfg.method = {**mt, **({"ignore_below": 0.3} if label == "mean_teacher_ignore" else {"paper": True})}
        else:
            # mixed and mixed_adaptive as first measured (sparse images in burn-in); sparse_burn_in=false is the default since
            extra = {"mixed": {"sparse_burn_in": True}, "mixed_adaptive": {"adaptive": True, "sparse_burn_in": True},
                     "mixed_late_sparse": {"sparse_burn_in": False}}.get(label, {})
            cfg.method = {**mt, "name": "mixed", **extra}
            cfg.data.sparse_batch_size = cfg.data.unlabelled_batch_size = 4
        return cfg

    for seed in args.seeds:
        for label in [c for c in COLUMNS if args.methods is None or c in args.methods]:
            key = {"method": label, "seed": seed}
            out = work / f"{label}-{seed}"
            print(f"[mixed] seed {seed} {label} ...", file=sys.stderr, flush=True)
            rec = train_record(config(seed, label), label=key, out_dir=out)
            print(f"    AP {100 * rec['ap']:.1f} ({rec['wall_s']:.0f} s)", file=sys.stderr, flush=True)
            append_results("mixed", [rec], note=note(args), derive=derived)
    return 0


def note(args) -> str:
    return (f"Long-tailed digits (imbalance 10), {args.train_images} training images of 128 px: 10 % complete, 30 % "
            f"hard-sparse, 60 % unlabelled (split re-drawn per seed); val {args.val_images} images with full labels; "
            f"{args.steps} steps per run ({args.steps // 2} burn-in for the teacher-student methods), batch 8 labelled "
            "(Mean Teacher + 8 unlabelled; mixed + 4 sparse + 4 unlabelled), AdamW lr 1e-3, 1 torch thread.")


def derived(records: list[dict]) -> list[str]:
    """The mixed method against the best other column, and the share of the gap to full labels it closes."""
    recs = latest(records)

    def mean(m):
        v = [r["ap"] for r in recs if r["method"] == m]
        return (statistics.mean(v), len(v)) if v else (None, 0)

    mixed, n = mean("mixed")
    full, _ = mean("full")
    others = {m: mean(m)[0] for m in COLUMNS if not m.startswith("mixed") and m != "full" and mean(m)[0] is not None}
    if mixed is None or not others:
        return []
    best = max(others, key=others.get)
    lines = [f"mixed {100 * mixed:.1f} vs the best other column, {best} {100 * others[best]:.1f} (means over {n} seed(s))"]
    if full is not None and full > others[best]:
        lines.append(f"mixed closes {100 * (mixed - others[best]) / (full - others[best]):.0f}% of the gap between "
                     f"{best} and full labels ({100 * full:.1f})")
    return lines


if __name__ == "__main__":
    sys.exit(main())
