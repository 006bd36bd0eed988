"""Mixed supervision on digits: 10 % of the images completely labelled, 30 % `hard`-sparse, 60 %
unlabelled; every column trains at the same number of steps (RetinaNet, EfficientNet-Lite0 FPN, CPU).

Usage:
  python benchmarks/bench_mixed.py                       # every column, 3 seeds
  python benchmarks/bench_mixed.py --seeds 0 --methods mixed mean_teacher
  python benchmarks/bench_mixed.py --list                # the declared columns and what each trains

Columns: every column is declared once in ``COLUMNS`` (a ``MixedColumn``: label, meaning, method, the parts of the
split it trains on, its method options and loss); the runner and ``report.py`` read the declaration, never the label's
spelling. Records are keyed by the label, so a declared column is never changed: another setting is another column.
``--list`` prints each column and what it trains.

The split is `minedet data split-semi --percent 10 --sparse 30 --mode hard --seed SEED` (re-drawn per
seed). Schedule: the digits_mean_teacher preset (long-tailed digits, imbalance 10) with --steps steps,
half of them burn-in for the teacher-student methods.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from common import Column, add_run_args, append_results, latest, train_record

#: the parts of the mixed split a column can train on (:attr:`MixedColumn.data`)
DATA = ("full", "complete", "flagged", "split")
#: the loss of the columns on BRL's (background recalibration), which normalises per image
BRL = {"cls_loss": "brl", "loss_norm": "image"}


@dataclass(frozen=True)
class MixedColumn(Column):
    """A column of the mixed-supervision table: a declared :class:`common.Column` with what this script's runner reads.

    Every column starts from the digits_mean_teacher preset's schedule (``--steps``, burn-in half of them); its method
    block starts from that schedule's for ``mean_teacher`` and ``mixed``, from the digits_co_mining preset's as shipped
    for ``co_mining``, from nothing for ``supervised`` (:func:`method_block`).

    Attributes:
        data: the part of the training images it trains on: ``full`` (every image with its full labels, no split: the
            ceiling), ``complete`` (the complete images alone), ``flagged`` (the mixed file, each image flagged
            complete / sparse / unlabelled: a one-stream method trains on complete + sparse), ``split`` (the complete
            images as labelled, the sparse and unlabelled ones as unlabelled, their boxes unused);
        settings: the method options beyond the block it starts from, exactly as its records ran;
        model_extra: model.extra beyond the preset's (BRL's loss);
        streams: sparse and unlabelled images per step beside the labelled batch (the mixed method's streams), or None.
    """

    data: str = "flagged"
    settings: Mapping[str, Any] = field(default_factory=dict)
    model_extra: Mapping[str, Any] = field(default_factory=dict)
    streams: int | None = None

    def __post_init__(self) -> None:
        if self.data not in DATA:
            raise ValueError(f"column {self.label}: data {self.data!r} is not one of {DATA}")

    @property
    def scored(self) -> bool:
        """Whether the run is given the erased boxes (``data.hidden``) to score the boxes it makes: every method but
        plain supervision, which makes none."""
        return self.method != "supervised"


SUPERVISED_SPARSE = MixedColumn("supervised_sparse", "supervised on complete + sparse images (their missing boxes taught as "
                                "background)", "supervised", short="supervised on complete + sparse")
#: the mixed method as first measured: the sparse images in burn-in (``sparse_burn_in=false`` is the default since)
MIXED = MixedColumn("mixed", "the mixed method: complete, sparse and unlabelled streams (8 / 4 / 4 images per step), "
                    "burn-in on complete + sparse images (sparse_burn_in=true, as first measured)", "mixed",
                    settings={"sparse_burn_in": True}, streams=4)
MIXED_LATE_SPARSE = replace(MIXED, label="mixed_late_sparse", settings={"sparse_burn_in": False},
                            short="mixed (its default: burn-in on the complete images only)",
                            meaning="the mixed method with burn-in on the complete images only (sparse_burn_in=false, the "
                                    "default): the sparse images' missing boxes are never taught as background before the "
                                    "teacher labels them")
#: every column of the mixed-supervision table, each declared once (its label keys its records for good)
COLUMNS: tuple[MixedColumn, ...] = (
    MixedColumn("supervised_complete", "supervised on the complete 10 % alone", "supervised", data="complete",
                short="supervised on the complete images"),
    SUPERVISED_SPARSE,
    MixedColumn("co_mining", "co-mining on complete + sparse images (the release's settings: tau 0.6, method.paper=true)",
                "co_mining", settings={"paper": True}, short="co-mining (paper)"),
    MixedColumn("mean_teacher", "Mean Teacher with the complete images as labelled and the sparse + unlabelled images as "
                "unlabelled (their boxes unused), the papers' rule (method.paper=true)", "mean_teacher", data="split",
                settings={"paper": True}),
    MixedColumn("mean_teacher_ignore", "Mean Teacher on the same data with the uncertain band (ignore_below 0.3), the "
                "mixed method's default", "mean_teacher", data="split", settings={"ignore_below": 0.3},
                short=None),
    MIXED,
    replace(MIXED, label="mixed_adaptive", settings={"adaptive": True, "sparse_burn_in": True},
            short=None,
            meaning="mixed with per-class thresholds from the teacher's scores on labelled boxes (adaptive)"),
    MIXED_LATE_SPARSE,
    MixedColumn("full", "supervised on every image with its full labels (the ceiling)", "supervised", data="full",
                short="full labels"),
    replace(SUPERVISED_SPARSE, label="supervised_sparse_brl", model_extra=BRL,
            short=None,
            meaning="supervised_sparse on BRL's loss (model.extra.cls_loss=brl, per-image normaliser): an anchor far from "
                    "every label that the model scores high is not taught as background"),
    replace(MIXED_LATE_SPARSE, label="mixed_late_sparse_brl", model_extra=BRL,
            short=None,
            meaning="mixed_late_sparse on BRL's loss (model.extra.cls_loss=brl, per-image normaliser, the co-mining "
                    "preset's loss on RetinaNet)"),
)
BY_LABEL = {c.label: c for c in COLUMNS}


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


def method_block(col: MixedColumn, schedule: dict, co_mining: dict) -> dict:
    """The method block column ``col`` trains with: ``schedule`` (the digits_mean_teacher block of this run's schedule)
    for mean_teacher and mixed, ``co_mining`` (the digits_co_mining preset's) for co_mining, nothing for supervised;
    then the column's own settings."""
    start = {"mean_teacher": schedule, "mixed": schedule, "co_mining": co_mining}.get(col.method, {})
    return {**start, "name": col.method, **col.settings}


def config(args, work: Path, seed: int, col: MixedColumn, co_mining: dict):
    """The run's config: the digits_mean_teacher schedule on the digits split of ``seed``, trained as ``col`` declares."""
    from minedet.config import load_config, preset_path
    from minedet.run import resolve_data

    digits = {"seed": 0, "n_train": args.train_images, "n_val": args.val_images, "n_test": args.test_images,
              "image_size": 128, "imbalance": 10.0}
    over = [f"train.max_steps={args.steps}", f"train.seed={seed}", f"train.threads={args.threads}",
            f"data.cache_dir={work / 'cache'}", f"method.burn_in={args.steps // 2}"]
    cfg = load_config(preset_path("digits_mean_teacher"), over)
    cfg.data.digits, cfg.data.semi = digits, None
    if col.data != "full":
        cfg.data.mixed = {"percent": 10, "sparse": 30, "mode": "hard", "seed": seed}
    cfg = resolve_data(cfg, quiet=True)
    cfg.method = method_block(col, dict(cfg.method), co_mining)
    if col.data == "full":
        cfg.data.hidden = None
    else:
        p = parts(Path(cfg.data.train), Path(cfg.data.hidden), Path(cfg.data.train).parent)
        if col.data == "complete":
            cfg.data.train = str(p["complete"])
        elif col.data == "split":  # the sparse images' kept boxes unused; the truth of both is the hidden file
            cfg.data.train, cfg.data.unlabelled, cfg.data.hidden = str(p["complete"]), str(p["unlabelled"]), str(p["unlabelled_hidden"])
            cfg.data.unlabelled_images = cfg.data.train_images
        if not col.scored:
            cfg.data.hidden = None
    if col.streams is not None:
        cfg.data.sparse_batch_size = cfg.data.unlabelled_batch_size = col.streams
    if col.model_extra:
        cfg.model.extra = {**cfg.model.extra, **col.model_extra}
    return cfg


def print_columns() -> None:
    """--list: each declared column, the method and options it trains with, the data it reads and what it means."""
    for c in COLUMNS:
        extra = "".join(f" model.extra.{k}={v}" for k, v in c.model_extra.items())
        print(f"{c.label:22s} {c.method} {json.dumps(dict(c.settings))} data={c.data}{extra}\n{'':22s} {c.meaning}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=None, choices=list(BY_LABEL), metavar="COLUMN",
                    help="only these columns (--list shows each and what it trains)")
    ap.add_argument("--list", action="store_true", help="print the declared columns and exit")
    ap.add_argument("--steps", type=int, default=800, help="training steps per run (teacher-student methods: half burn-in)")
    add_run_args(ap, train_images=2000)
    args = ap.parse_args()
    if args.list:
        print_columns()
        return 0

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from minedet.config import load_config, preset_path

    work = Path(args.out or tempfile.mkdtemp(prefix="minedet-mixed-"))
    co_mining = load_config(preset_path("digits_co_mining")).method
    for seed in args.seeds:
        for col in [c for c in COLUMNS if args.methods is None or c.label in args.methods]:
            key = {"method": col.label, "seed": seed}
            out = work / f"{col.label}-{seed}"
            print(f"[mixed] seed {seed} {col.label} ...", file=sys.stderr, flush=True)
            rec = train_record(config(args, work, seed, col, co_mining), label=key, out_dir=out)
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
    rivals = [c.label for c in COLUMNS if c.method != "mixed" and c.data != "full"]  # every other column but the ceiling
    others = {m: mean(m)[0] for m in rivals if mean(m)[0] is not None}
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
