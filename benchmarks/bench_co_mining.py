"""Co-mining on digits: the paper's tables in miniature (RetinaNet, EfficientNet-Lite0 FPN, CPU).

Usage:
  python benchmarks/bench_co_mining.py                      # headline: original vs co-mining on hard (+ original on full), 3 seeds
  python benchmarks/bench_co_mining.py --table extreme --append   # the same on extreme, into the headline's results
  python benchmarks/bench_co_mining.py --table table1       # Table 1: original/augmented/joint/co-mining x full/easy/hard/extreme
  python benchmarks/bench_co_mining.py --table table1 --splits hard --methods augmented joint --append   # its hard row, added
  python benchmarks/bench_co_mining.py --table tau          # Table 3: tau in {0.4..0.8} on hard
  python benchmarks/bench_co_mining.py --table aug          # Table 4: second view none/blur/color on hard
  python benchmarks/bench_co_mining.py --table fcos         # Table 5: FCOS original vs co-mining
  python benchmarks/bench_co_mining.py --table frcnn        # Faster R-CNN original vs co-mining (the paper's future work)
  python benchmarks/bench_co_mining.py --table baselines    # BRL and pseudo-label retraining vs co-mining (Table 6's rivals)
  python benchmarks/bench_co_mining.py --table gt_match     # beyond the paper: drop pseudo boxes on labelled objects of any class
  python benchmarks/bench_co_mining.py --list               # the declared columns and what each trains

Scale-down (stated in docs/benchmarks.md): the digits scenes stand in for COCO; the sparse
splits follow the papers' protocols exactly (minedet data sparsify); each split is re-drawn per seed.
The schedule is the demo preset's with fewer steps (--steps) so the headline fits 60 CPU minutes.

Columns: every column is declared once in ``COLUMNS`` (a ``CoMiningColumn``: label, meaning, method block, tau,
model.extra, batch); the runner and ``report.py`` read the declaration, never the label's spelling. Records are keyed
by the label, so a declared column is never changed: another setting is another column.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from common import (Column, add_test_arg, append_results, finished_run, latest, load_results, threads_of, train_record,
                    write_json)

#: the guards beyond the paper, spelled out (they are also minedet's defaults) so a record names what it ran;
#: with mined boxes regressing, as every guarded record so far ran (the default on RetinaNet and Faster R-CNN;
#: FCOS's default, mined boxes teaching classification only, is ``co_mining_guarded_noreg``) and without the part
#: rule (Faster R-CNN's default, method.part=0.5, is ``co_mining_guarded_part0.5``)
GUARDS = {"ignore_below": 0.3, "contain": 0.8, "cap_ratio": 1.0, "mine_after": 100, "pseudo_regress": True,
          "part": None}
#: a column's tau is the digits_co_mining preset's (the release's 0.6), 0.1 lower on the extreme split as in the
#: release (0.5) ...
SPLIT_TAU = "preset, 0.1 lower on extreme"
#: ... or the preset's on every split (the second-view columns of Table 4, as they ran), or a number (every split)
PRESET_TAU = "preset"
#: the model.extra of the columns on BRL's loss (background recalibration, Zhang et al. 2020)
BRL = {"cls_loss": "brl"}
#: what a column on Unbiased Teacher's strong view adds to its meaning
STRONG_VIEW = " (colour jitter, blur and cutout: Unbiased Teacher's strong view)"


@dataclass(frozen=True)
class CoMiningColumn(Column):
    """A column of the co-mining tables: a declared :class:`common.Column` with the run settings this script reads.

    Attributes:
        settings: the method block beyond its ``name`` and ``tau``, exactly as the column's records ran (the paper's
            columns pin the release's behaviour with ``paper: True``; the guards beyond it are spelled out);
        tau: :data:`SPLIT_TAU`, :data:`PRESET_TAU`, a number (the same on every split), or None (a block without
            tau: no co-generation);
        model_extra: model.extra beyond ``--model-extra`` (BRL's loss and its options);
        completed_by: the column whose model, mining at score 0.6, completes the labels this one trains on (pseudo-label
            retraining); its run of the same table, split and seed must exist;
        view_of: the column this one re-runs on another second view (``settings["view"]``); a co-mining column on a
            view also meets ``joint`` on that view.
    """

    settings: Mapping[str, Any] = field(default_factory=dict)
    tau: float | str | None = None
    model_extra: Mapping[str, Any] = field(default_factory=dict)
    completed_by: str | None = None
    view_of: str | None = None

    @property
    def on_brl(self) -> bool:
        """Whether the column trains on BRL's loss: it then meets the rivals on that loss."""
        return self.model_extra.get("cls_loss") == "brl"

    def method_block(self, split: str, preset_tau: float) -> dict:
        """The run's method block on ``split``; ``preset_tau``: the digits_co_mining preset's tau (:func:`preset_tau`)."""
        if self.tau == SPLIT_TAU:
            tau = round(preset_tau - 0.1, 2) if split == "extreme" else preset_tau
        else:
            tau = preset_tau if self.tau == PRESET_TAU else self.tau
        return {"name": self.method, **self.settings, **({} if tau is None else {"tau": tau})}


def view_label(label: str, view: str) -> str:
    """The label of column ``label`` on the second view ``view`` (``joint_brl`` on ``strong``: ``joint_brl_view_strong``)."""
    return f"{label}_view_{view}"


def on_view(col: CoMiningColumn, view: str) -> CoMiningColumn:
    """Column ``col`` with another second view (``method.view``), everything else as declared."""
    return replace(col, label=view_label(col.label, view), short=None, view_of=col.label,
                   meaning=f"{col.meaning}, the second view {view}" + (STRONG_VIEW if view == "strong" else ""),
                   settings={**col.settings, "view": view})


def paper_at_tau(tau: float) -> CoMiningColumn:
    """The paper's co-mining at another tau, on every split (Table 3)."""
    return CoMiningColumn(f"tau{tau:g}", f"the paper's co-mining at tau {tau:g}", "co_mining",
                          settings={"paper": True}, tau=tau)


def paper_on_view(view: str) -> CoMiningColumn:
    """The paper's co-mining with another second view, at the preset's tau on every split (Table 4)."""
    return CoMiningColumn(f"view_{view}", f"the paper's co-mining with the second view {view}", "co_mining",
                          settings={"view": view, "paper": True}, tau=PRESET_TAU)


ORIGINAL = CoMiningColumn("original", "the detector on the split's labels alone", "supervised",
                          settings={"view": "none"}, short="original")
JOINT = CoMiningColumn("joint", "the Siamese detector on two views, no co-generation (Table 1's joint)", "co_mining",
                       settings={"cogeneration": False, "paper": True})
#: beyond the paper: uncertain detections ignored, containment rule, drift cap at the labelled density, warm-up
GUARDED = CoMiningColumn("co_mining_guarded",
                         "co-mining with the guards beyond the paper (ignored band, containment, cap, warm-up)",
                         "co_mining", settings=GUARDS, tau=SPLIT_TAU)
BRL_ALONE = CoMiningColumn("brl", "original on BRL's loss (model.extra.cls_loss=brl)", "supervised",
                           settings={"view": "none"}, model_extra=BRL, short="BRL's loss")
#: the two views without co-generation on BRL's loss: what the second view alone does to BRL
JOINT_BRL = CoMiningColumn("joint_brl", "joint on BRL's loss", "co_mining", settings={"cogeneration": False, "paper": True},
                           model_extra=BRL, short="`joint` on BRL's loss (two views, no mining)")
#: the guards on BRL's loss without the ignored band: BRL already treats the uncertain far negatives (its mirrored
#: branch), which the band would take out of the loss; the digits_co_mining preset
PRESET = CoMiningColumn("co_mining_brl_noib",
                        "the guards on BRL's loss without the ignored band (the digits_co_mining preset)", "co_mining",
                        settings={**GUARDS, "ignore_below": None}, tau=SPLIT_TAU, model_extra=BRL,
                        short="co-mining on BRL's loss (the `digits_co_mining` preset)")

#: every column the co-mining tables train, each declared once (its label keys its records for good)
COLUMNS: tuple[CoMiningColumn, ...] = (
    ORIGINAL,
    # the equal-compute rival: twice the batch, so it sees as many images per step as co-mining's two views
    CoMiningColumn("original_2x", "original on twice the batch (as many images per step as the two-view methods: "
                   "equal compute)", "supervised", settings={"view": "none"}, batch=2),
    CoMiningColumn("augmented", "original trained on the colour-jittered view", "supervised", settings={"view": "color"}),
    JOINT,
    CoMiningColumn("co_mining", "the paper's co-mining (the release's rule, method.paper=true)", "co_mining",
                   settings={"paper": True}, tau=SPLIT_TAU),
    # beyond the paper: drop pseudo boxes on GT of any class
    CoMiningColumn("co_mining_any", "co-mining dropping mined boxes on labelled objects of any class", "co_mining",
                   settings={"gt_match": "any", "paper": True}, tau=SPLIT_TAU),
    *(paper_at_tau(t) for t in (0.4, 0.5, 0.6, 0.7, 0.8)),
    CoMiningColumn("tau0.5_any", "co-mining at tau 0.5, dropping mined boxes on labelled objects of any class",
                   "co_mining", settings={"paper": True, "gt_match": "any"}, tau=0.5),
    *(paper_on_view(v) for v in ("none", "blur", "color")),
    GUARDED,
    *(replace(GUARDED, label=f"co_mining_guarded_tau{t:g}", meaning=f"the guards at tau {t:g}", tau=t) for t in (0.4, 0.5)),
    # the guards with the mined boxes teaching classification only: a mined box's localisation is the model's own
    # guess, and regressing towards it cannot sharpen the boxes (FCOS hard: the guards gained AP50, not AP)
    replace(GUARDED, label="co_mining_guarded_noreg", meaning="the guards, mined boxes teaching no box regression",
            settings={**GUARDS, "pseudo_regress": False}),
    replace(GUARDED, label="co_mining_guarded_ib0.1", meaning="the guards ignoring detections from score 0.1 up to tau",
            settings={**GUARDS, "ignore_below": 0.1}),
    # the part rule as Faster R-CNN's default runs it
    replace(GUARDED, label="co_mining_guarded_part0.5", settings={**GUARDS, "part": 0.5},
            meaning="the guards, dropping mined boxes with a share >= 0.5 of their area on labelled boxes"),
    # the guards with per-class thresholds from the scores the model gives labelled boxes (method.adaptive)
    replace(GUARDED, label="co_mining_adaptive", meaning="the guards with per-class thresholds (method.adaptive)",
            settings={**GUARDS, "adaptive": True}),
    BRL_ALONE,
    # the equal-compute rival on BRL's loss: twice the batch, as original_2x on the focal loss
    replace(BRL_ALONE, label="brl_2x", meaning="BRL's loss on twice the batch (equal compute)", batch=2,
            short="BRL's loss on twice the batch"),
    JOINT_BRL,
    on_view(JOINT_BRL, "strong"),
    # co-mining with the guards on the BRL loss: confusing anchors of the second view's negatives recalibrated too
    replace(GUARDED, label="co_mining_brl", meaning="the guards on BRL's loss", model_extra=BRL),
    # co-mining on BRL's loss with the release's rule: what co-generation itself does to BRL
    CoMiningColumn("co_mining_brl_paper", "the release's co-mining on BRL's loss", "co_mining", settings={"paper": True},
                   tau=SPLIT_TAU, model_extra=BRL),
    PRESET,
    replace(PRESET, label="co_mining_brl_noib_tau0.5", meaning="the preset at tau 0.5", tau=0.5, short=None),
    on_view(PRESET, "strong"),
    # the preset with a mined box's positives out of BRL's per-image normaliser, and with a mined box adding only its
    # positives, the anchors near it left to BRL's recalibration
    replace(PRESET, label="co_mining_brl_nonorm", short=None, model_extra={**BRL, "brl_pseudo": "no_norm"},
            meaning="the preset, mined boxes out of BRL's normaliser (model.extra.brl_pseudo=no_norm)"),
    replace(PRESET, label="co_mining_brl_pos", short=None, model_extra={**BRL, "brl_pseudo": "positive"},
            meaning="the preset, mined boxes adding positives only (model.extra.brl_pseudo=positive)"),
    replace(PRESET, label="co_mining_brl_adaptive", short=None, settings={**PRESET.settings, "adaptive": True},
            meaning="the preset with per-class thresholds (method.adaptive)"),
    # the preset with a mined box another class contests (in either view, at >= half its score) ignored, not taught
    replace(PRESET, label="co_mining_brl_dispute", short=None, settings={**PRESET.settings, "dispute": 0.5},
            meaning="the preset, a mined box another class contests ignored (method.dispute=0.5)"),
    # on the 'original' model's mined completion (Niitani et al. 2019)
    replace(ORIGINAL, label="retrain", short=None, completed_by="original",
            meaning="pseudo-label retraining: original's boxes mined at score 0.6 added to the labels, trained again"),
)
BY_LABEL = {c.label: c for c in COLUMNS}

TABLES = {
    "headline": (["full", "hard"], ["original", "co_mining"]),
    "extreme": (["extreme"], ["original", "co_mining"]),
    "table1": (["full", "easy", "hard", "extreme"], ["original", "augmented", "joint", "co_mining"]),
    "baselines": (["hard", "extreme"], ["original", "brl", "retrain", "co_mining"]),
    "tau": (["hard"], ["original", "tau0.4", "tau0.5", "tau0.6", "tau0.7", "tau0.8"]),
    "gt_match": (["hard"], ["original", "co_mining", "co_mining_any", "tau0.5_any"]),
    "aug": (["hard"], ["original", "view_none", "view_blur", "co_mining"]),
    "fcos": (["full", "hard", "extreme"], ["original", "co_mining"]),
    "frcnn": (["full", "hard", "extreme"], ["original", "co_mining"]),
}
# the full split is the ceiling of the recovery ratio: the headline trains only 'original' on it
FULL_METHODS = {"headline": ("original",)}


# Faster R-CNN co-generation decodes the RoI head on the best RPN proposals only (method.topk). Digits'
# 128-px images leave about 900 proposals per image after the RPN's NMS; on 32 training images of the
# trained `original` model (a one-off check, not a benchmark) the best 300 gave the same detections above
# tau as all of them, in a fraction of the RoI-head time.
FRCNN_COGEN_PROPOSALS = 300


def preset_tau() -> float:
    """The digits_co_mining preset's tau (the release's 0.6): the tau of a column that names none."""
    from minedet.config import load_config, preset_path

    return float(load_config(preset_path("digits_co_mining")).method["tau"])


def method_cfg(label: str, split: str) -> dict:
    """The method block declared column ``label`` trains with on ``split`` (other benchmarks train these columns too)."""
    return BY_LABEL[label].method_block(split, preset_tau())


def run_name(table: str, split: str, label: str, seed: int) -> str:
    """The work folder of one run: its table, split, column and seed."""
    return f"{table}_{split}_{label}_s{seed}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--model-extra`` pairs read into a dict (a bad pair is refused before anything trains)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default="headline", choices=list(TABLES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=900, help="training steps per run (default: 900, so the headline fits 60 CPU minutes)")
    ap.add_argument("--train-images", type=int, default=4000)
    ap.add_argument("--splits", nargs="+", default=None, help="these splits (default: the table's; may name one it lacks, e.g. --table baselines --splits full --methods brl)")
    ap.add_argument("--methods", nargs="+", default=None, choices=list(BY_LABEL), metavar="COLUMN",
                    help="these columns instead of the table's: any declared column (--list shows each and what it trains)")
    ap.add_argument("--list", action="store_true", help="print the declared columns and exit")
    ap.add_argument("--model-extra", nargs="+", default=[], metavar="KEY=VALUE",
                    help="model.extra settings for every column (a cheaper detector, stated in the page's note), e.g. "
                         "--table frcnn --model-extra box_batch_size_per_image=128 rpn_post_nms_top_n_train=500 "
                         "--name co_mining_frcnn_light; each record carries them")
    ap.add_argument("--val-images", type=int, default=300)
    add_test_arg(ap)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per run (default 1): a same-seed re-run reproduces its record only at the same count")
    ap.add_argument("--append", action="store_true",
                    help="accepted for old command lines: results files are always appended to (a re-run is a new record)")
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--name", default=None, help="results file name (default: co_mining for the headline, co_mining_TABLE otherwise)")
    ap.add_argument("--reuse-finished", action="store_true",
                    help="a run in --out that trained all its steps but has no record (the benchmark was stopped while "
                         "measuring) is evaluated and measured again from its final checkpoint instead of retrained")
    ap.add_argument("--latency-only", action="store_true", help="with --remine: only re-measure predict latency")
    ap.add_argument("--remine", action="store_true",
                    help="do not train: re-measure mining quality and predict latency of the runs kept in --out "
                         "(after a change to minedet mine); each re-measured run is a new record")
    ap.add_argument("--rederive", action="store_true",
                    help="do not train: recompute the derived lines (recovery, ratios, wall time) of the results file")
    args = ap.parse_args(argv)
    args.model_extra = model_extras(ap, args.model_extra)
    return args


def print_columns() -> None:
    """--list: each declared column, the method block it trains on ``hard`` and what it means."""
    tau = preset_tau()
    for c in COLUMNS:
        extra = "".join(f" model.extra.{k}={v}" for k, v in c.model_extra.items())
        print(f"{c.label:32s} {json.dumps(c.method_block('hard', tau))}{extra}{' (x2 batch)' if c.batch > 1 else ''}\n"
              f"{'':32s} {c.meaning}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        print_columns()
        return 0
    splits, methods = TABLES[args.table]
    splits = splits if args.splits is None else args.splits  # --splits may add one the table lacks (brl on full)
    methods = methods if args.methods is None else args.methods  # any declared column (tau0.5, view_blur, ...)
    detector = {"fcos": "fcos", "frcnn": "faster_rcnn"}.get(args.table, "retinanet")
    work = Path(args.out or tempfile.mkdtemp(prefix="minedet-cm-"))
    # headline, extreme and Table 1 share one RetinaNet setting and seeds: one results file, Table 1 grows in it
    name = args.name or ("co_mining" if args.table in ("headline", "extreme", "table1") else f"co_mining_{args.table}")
    if args.rederive:
        return rederive(name)
    if args.remine:
        return remine(args, work, name)
    for seed in args.seeds:
        for split in splits:
            for label in methods:
                if split == "full" and args.methods is None and label not in FULL_METHODS.get(args.table, ("original", "co_mining")):
                    continue
                rec = run_column(args, work, BY_LABEL[label], split, seed, detector)
                append_results(name, [rec], note=note(args, args.steps), derive=derived)
    return 0


def rederive(name: str) -> int:
    """--rederive: recompute the derived lines of results file ``name`` from its records."""
    old = load_results(name)
    if old is None:
        raise SystemExit(f"no results file {name}.json")
    write_json(name, {**old, "derived": derived(latest(old["records"]))})
    print("\n".join(derived(latest(old["records"]))))
    return 0


def remine(args, work: Path, name: str) -> int:
    """--remine: measure mining quality and predict latency again with the models kept in ``work``, without training;
    each re-measured run is a new record naming the commit of its training run."""
    from minedet.config import build_config

    if not args.out:
        raise SystemExit("--remine needs --out, the work folder of the runs")
    old = load_results(name)
    fresh = []
    for rec in latest(old["records"] if old else []):
        run = work / rec.get("run", run_name(args.table, rec["split"], rec["method"], rec["seed"]))
        if not (run / "model.pt").exists():
            continue
        cfg = build_config(json.loads((run / "config.json").read_text()))
        # latency pairs co-mining with the original; mining is scored on a sparse split with hidden truth
        # (retrain's completed file has none)
        if args.latency_only:
            wanted = rec["method"] in ("original", "co_mining")
        else:
            wanted = rec["split"] != "full" and bool(cfg.data.hidden)
        if not wanted:
            continue
        print(f"[remine] {run.name}", file=sys.stderr, flush=True)
        made_at = (rec.get("origin") or old).get("git_commit") or "?"
        rec = {k: v for k, v in rec.items() if k not in ("origin", "predict_s")}
        rec["remeasure_of"] = made_at[:10]  # the training run's commit; this record's origin is now
        if not args.latency_only:
            rec.update(mining_quality(run, cfg))
        fresh.append(rec)
    add_latency(fresh, work, args.table)
    append_results(name, fresh, note=note(args, args.steps), derive=derived)
    return 0


def column_config(args, work: Path, col: CoMiningColumn, split: str, seed: int, detector: str):
    """The config of one run: the digits_retinanet preset at the benchmark's scale and seed, the split's labels (drawn
    with the seed), then the column's method block, batch multiplier and model.extra (after ``--model-extra``)."""
    from minedet.config import load_config, preset_path
    from minedet.data.split_files import sparse_copy
    from minedet.run import resolve_data

    over = [f"train.max_steps={args.steps}", f"train.seed={seed}", f"model.name={detector}", f"train.threads={args.threads}",
            f"data.digits.n_train={args.train_images}", f"data.digits.n_val={args.val_images}",
            f"data.digits.n_test={args.test_images}", f"data.cache_dir={work / 'cache'}"]
    cfg = resolve_data(load_config(preset_path("digits_retinanet"), over), quiet=True)
    if split != "full":
        cfg.data.train, cfg.data.hidden = sparse_copy(cfg, split, seed)
    cfg.method = col.method_block(split, preset_tau())
    if detector == "faster_rcnn" and cfg.method["name"] == "co_mining":
        cfg.method["topk"] = FRCNN_COGEN_PROPOSALS
    cfg.data.batch_size *= col.batch
    cfg.model.extra = {**cfg.model.extra, **args.model_extra, **col.model_extra}
    return cfg


def run_column(args, work: Path, col: CoMiningColumn, split: str, seed: int, detector: str) -> dict:
    """Train column ``col`` on ``split`` with ``seed`` and measure it: its record (mining quality on a sparse split with
    hidden truth, predict latency for co_mining against original)."""
    cfg = column_config(args, work, col, split, seed, detector)
    mined = None
    if col.completed_by:
        cfg.data.train, mined = completed_by_mining(work / run_name(args.table, split, col.completed_by, seed), cfg)
        # the mined boxes' new ids may equal erased boxes' ids: no hidden truth for the completed file
        cfg.data.hidden = None
    out = work / run_name(args.table, split, col.label, seed)
    print(f"[{args.table}] seed {seed} {split:<8} {col.label:<10} ...", file=sys.stderr, flush=True)
    done = finished_run(out, args.steps) if args.reuse_finished else None
    rec = train_record(cfg, label={"method": col.label, "split": split, "seed": seed, "detector": detector,
                                   "run": out.name, **({"model_extra": args.model_extra} if args.model_extra else {})},
                       out_dir=out, resume=done)
    if split != "full" and cfg.data.hidden:  # every sparse run but retrain (its file has no hidden truth)
        rec.update(mining_quality(out, cfg))
    if mined is not None:
        rec["retrain_mined"] = mined
    if col.label == "co_mining":
        add_latency([rec], work, args.table)
    print(f"    AP {100 * rec['ap']:.1f} AP50 {100 * rec['ap50']:.1f} ({rec['wall_s']:.0f} s)", file=sys.stderr, flush=True)
    return rec


def completed_by_mining(original_run: Path, cfg) -> tuple[str, int]:
    """Pseudo-label retraining: label the training set with the 'original' model (co-generation
    filters, score 0.6), keep every annotation and add the mined boxes; return the new JSON and how
    many boxes were added (the file's ``"mined": true`` annotations)."""
    from minedet.data.coco import load_coco, save_coco
    from minedet.engine.checkpoint import load_model
    from minedet.mining import mine_dataset

    out = original_run / "completed.json"
    if out.exists():
        completed = json.loads(out.read_text())
    else:
        det, _ = load_model(original_run / "model.pt")
        completed = mine_dataset(det, load_coco(cfg.data.train), cfg.data.train_images, score=0.6).completed
        save_coco(out, completed)
    return str(out), sum(1 for a in completed["annotations"] if a.get("mined"))


def mining_quality(run: Path, cfg) -> dict:
    """`minedet mine` with the run's model on its own sparse training set, scored against the
    hidden truth: the share of erased boxes recovered at precision >= 0.9 (the mine issue's metric)."""
    from minedet.data.coco import load_coco
    from minedet.engine.checkpoint import load_model
    from minedet.mining import DEFAULT_THRESHOLDS, mine_dataset, pr_against_hidden, recall_at_precision

    det, _ = load_model(run / "model.pt")
    data = load_coco(cfg.data.train)
    res = mine_dataset(det, data, cfg.data.train_images, score=0.6, collect_down_to=min(DEFAULT_THRESHOLDS))
    rows = pr_against_hidden(res, load_coco(cfg.data.hidden), data)
    return {"mine_pr": rows, "mine_recall_at_p90": recall_at_precision(rows, 0.9)}


def predict_latency(model_paths: list[Path], cfg, rounds: int = 12, batch_size: int = 8) -> list[float]:
    """Median seconds of one ``predict`` call on ``batch_size`` val images for each exported model,
    the models called in turn (A, B, A, B, ...) so that machine noise hits them alike. Co-mining
    exports the plain detector, so its latency should equal the original model's."""
    import time

    import torch

    from minedet.data.coco import load_coco
    from minedet.data.datasets import DetectionDataset
    from minedet.engine.checkpoint import load_model

    dets = [load_model(p)[0].eval() for p in model_paths]
    ds = DetectionDataset(load_coco(cfg.data.val), cfg.data.val_images)
    images = [ds[i]["views"]["o"].image for i in range(batch_size)]
    times: list[list[float]] = [[] for _ in dets]
    with torch.no_grad():
        for r in range(rounds + 2):
            for i, det in enumerate(dets):
                t0 = time.perf_counter()
                det.predict(images)
                if r >= 2:  # two warm-up rounds
                    times[i].append(time.perf_counter() - t0)
    return [round(sorted(t)[len(t) // 2], 5) for t in times]


def add_latency(records: list[dict], work: Path, table: str) -> None:
    """Pairwise predict latency (co-mining model vs the original model of the same split and seed)."""
    from minedet.config import build_config

    for rec in records:
        if rec["method"] != "co_mining":
            continue
        base = work / run_name(table, rec["split"], "original", rec["seed"]) / "model.pt"
        run = work / run_name(table, rec["split"], "co_mining", rec["seed"])
        if not (base.exists() and (run / "model.pt").exists()):
            continue
        cfg = build_config(json.loads((run / "config.json").read_text()))
        rec["predict_s"], rec["predict_base_s"] = predict_latency([run / "model.pt", base], cfg)


def model_extras(ap, pairs: list[str]) -> dict:
    """--model-extra KEY=VALUE pairs as a dict, each value read as a config override's (128 -> int, 0.5 -> float)."""
    from minedet.config import parse_override

    out = {}
    for pair in pairs:
        if not pair.partition("=")[0].strip() or "=" not in pair:
            ap.error(f"--model-extra {pair!r}: expected KEY=VALUE")
        key, value = parse_override(pair)
        out[".".join(key)] = value
    return out


def note(args, steps: int) -> str:
    extra = (" Every column's detector runs with model.extra " + ", ".join(f"{k}={v}" for k, v in args.model_extra.items())
             + " (beyond the preset)." if getattr(args, "model_extra", None) else "")
    return (f"Digits train split of {args.train_images} images (128 px), val {args.val_images} images with full labels; "
            f"{steps} steps of batch 16 per run (each image seen about {steps * 16 / max(1, args.train_images):.1f} times); "
            f"each sparse split re-drawn with the run's seed. A run with the same seed and the same number of torch threads "
            f"reproduces bit for bit on one machine (tests/test_reproducible.py); another thread count, or a machine whose "
            f"CPU runs other float kernels (records name the kernels since 2026-12-02), changes the float sums and so the "
            f"result; re-runs differ from older records for these reasons or for code changed since (see the settings run "
            f"more than once).{extra}")


#: the rivals a co-mining column must beat, on its own loss (keyed by :attr:`CoMiningColumn.on_brl`)
RIVALS = {False: ("original", "original_2x", "augmented", "joint"), True: ("brl", "brl_2x", "joint_brl")}
#: the two views without co-generation, on each loss: a co-mining column on another second view also meets it on that view
JOINT_ON = {False: JOINT.label, True: JOINT_BRL.label}


def rivals_of(col: CoMiningColumn) -> tuple[str, ...]:
    """The labels co-mining column ``col`` is checked against: the rivals on its loss, and joint on its second view
    where it runs on another one (so a gain from the view alone is not credited to co-generation)."""
    view = (view_label(JOINT_ON[col.on_brl], col.settings["view"]),) if col.view_of else ()
    return RIVALS[col.on_brl] + view


def checked_against_rivals(col: CoMiningColumn) -> bool:
    """Whether column ``col`` is a co-mining variant checked against the rivals: it runs co-mining and is no rival
    itself (nor a rival on another second view)."""
    every_rival = RIVALS[False] + RIVALS[True]
    return col.method == "co_mining" and (col.view_of or col.label) not in every_rival


def beats_rivals(records: list[dict]) -> list[str]:
    """The issue's target, checked per split: co-mining's mean AP (and that of each co-mining variant
    in the records: tau0.5, co_mining_any, ...) beats each rival's mean by more than one standard
    deviation over seeds (the larger of the two methods' stds), on the seeds both methods ran. A
    column on BRL's loss meets the rivals on that loss (BRL alone, on twice the batch, two views)."""
    lines = []
    for split in ("full", "easy", "hard", "extreme"):
        aps: dict[str, dict[int, float]] = defaultdict(dict)
        for r in records:
            if r["split"] == split:
                aps[r["method"]][r["seed"]] = r["ap"]
        for c in [m for m in aps if checked_against_rivals(BY_LABEL[m])]:
            for m in rivals_of(BY_LABEL[c]):
                seeds = sorted(set(aps[c]) & set(aps.get(m, {})))
                if not seeds:
                    continue
                cm, xs = [aps[c][k] for k in seeds], [aps[m][k] for k in seeds]
                gap = statistics.mean(cm) - statistics.mean(xs)
                if len(seeds) < 2:
                    verdict = "one seed, no std"
                else:
                    sd = max(statistics.stdev(cm), statistics.stdev(xs))
                    verdict = ("above by more than one std" if gap > sd else "below by more than one std" if gap < -sd
                               else "within one std") + f" ({100 * sd:.1f})"
                lines.append(f"{split}: {c} - {m} = {100 * gap:+.1f} AP on seeds {seeds}: {verdict}")
    return lines


def _mining_line(split: str, m: str, rs: list[dict], threads: int | None) -> str:
    """The derived line of one column's `minedet mine` recall at precision 0.9 over runs ``rs`` of one thread count
    (``threads``: named when the column has runs of other counts; 0 when it has not)."""
    xs = [(r.get("mine_recall_at_p90") or {}).get("recall", 0.0) for r in rs]
    reached = sum(1 for r in rs if r.get("mine_recall_at_p90"))
    best = max((row for r in rs for row in r["mine_pr"] if row["precision"] == row["precision"]),
               key=lambda row: row["precision"], default=None)
    count = "" if threads == 0 else ("threads not recorded; " if threads is None else
                                     f"{threads} thread{'s' * (threads != 1)}; ")
    seeds = ", ".join(str(s) for s in sorted(r["seed"] for r in rs))
    line = (f"{split}: `minedet mine` with the {m} model recovers {100 * statistics.mean(xs):.1f}% of the erased boxes "
            f"at precision >= 0.9 ({count}mean of {len(rs)} seed{'s' * (len(rs) != 1)} ({seeds}); {reached} reach that "
            f"precision at some threshold, the others count 0)")
    if best is not None:
        line += (f"; its most precise threshold: {100 * best['precision']:.0f}% precision at score {best['threshold']} "
                 f"recovering {100 * best['recall']:.1f}%")
    return line


def derived(records: list[dict]) -> list[str]:
    """Recovery of the AP lost to missing labels, and the step-time ratio, from the records."""
    def ap(method, split, seeds=None):
        xs = [r["ap"] for r in records if r["method"] == method and r["split"] == split and (seeds is None or r["seed"] in seeds)]
        return statistics.mean(xs) if xs else None

    lines = []
    full, full_2x = ap("original", "full"), ap("original_2x", "full")
    full_seeds = {r["seed"] for r in records if (r["method"], r["split"]) == ("original", "full")}
    for split in ("easy", "hard", "extreme"):
        # on the seeds the full-label run covers (a file with full labels on fewer seeds pairs them, and says so)
        seeds = full_seeds if full_seeds < {r["seed"] for r in records if r["split"] == split} else None
        for m in dict.fromkeys(r["method"] for r in records if r["split"] == split and r["method"] != "original"):
            o, c = ap("original", split, seeds), ap(m, split, seeds)
            # a twice-the-batch column against the full-label run at twice the batch where the file has it
            twice = BY_LABEL[m].batch == 2
            paired_2x = twice and full_2x is not None
            ceiling, name = (full_2x, "AP_full_2x") if paired_2x else (full, "AP_full")
            if None not in (ceiling, o, c) and ceiling > o:
                lines.append(f"{split}: {m} recovers {100 * (c - o) / (ceiling - o):.0f}% of the AP lost to missing labels "
                             f"((AP_{m} {100 * c:.1f} - AP_orig {100 * o:.1f}) / ({name} {100 * ceiling:.1f} - AP_orig {100 * o:.1f})"
                             + (f", seeds {sorted(seeds)} only)" if seeds else ")")
                             # the ceiling trained on the table's batch: twice the batch may pass it
                             + ("; the full-label run trains on half its batch" if twice and not paired_2x else ""))
    lines += beats_rivals(records)
    for split in ("easy", "hard", "extreme"):
        added = {r["seed"]: r["retrain_mined"] for r in records if r["split"] == split and "retrain_mined" in r}
        if added:
            lines.append(f"{split}: retrain trains on the labels plus the boxes the original model mines at score 0.6: "
                         + ", ".join(f"seed {k}: {v} box{'es' * (v != 1)}" for k, v in sorted(added.items())))
    for split in ("easy", "hard", "extreme"):
        for m in dict.fromkeys(r["method"] for r in records):
            rs = [r for r in records if r["method"] == m and r["split"] == split and r.get("mine_pr")]
            counts = sorted({threads_of(r) for r in rs}, key=lambda n: (n is None, n or 0))
            for n in counts:  # records of different thread counts never share a figure
                lines.append(_mining_line(split, m, [r for r in rs if threads_of(r) == n], n if len(counts) > 1 else 0))
    per_seed = defaultdict(float)
    for r in records:
        if r.get("wall_s") and (r["method"], r["split"]) in (("original", "full"), ("original", "hard"), ("co_mining", "hard")):
            per_seed[r["seed"]] += r["wall_s"]
    if per_seed and any((r["method"], r["split"]) == ("original", "full") for r in records):
        lines.append(f"wall time of the headline's three runs (original on full and hard, co-mining on hard, with evaluation and "
                     f"mining): {', '.join(f'seed {k} {v / 60:.1f} min' for k, v in sorted(per_seed.items()))}; "
                     f"{sum(per_seed.values()) / 60:.0f} min in all")
    shares: dict[str, list[float]] = {}
    for r in records:
        if r.get("cogeneration_share"):
            shares.setdefault(r["method"], []).append(r["cogeneration_share"])
    if shares:  # each run times its mining beside its own step time (paired); the guards run inside the mining
        lines.append("co-generation share of a co-mining step (decode, filters and, where on, the guards; mean over runs): "
                     + ", ".join(f"{m} {100 * statistics.mean(v):.1f}% ({len(v)} runs)" for m, v in shares.items()))
    pairs = [(r["predict_s"], r["predict_base_s"]) for r in records if r.get("predict_s") and r.get("predict_base_s")]
    if pairs:
        c, o = statistics.mean(p[0] for p in pairs), statistics.mean(p[1] for p in pairs)
        lines.append(f"predict latency co-mining model / original model: {c / o:.2f}x ({1000 * c:.0f} ms vs {1000 * o:.0f} ms "
                     f"per 8 images, medians of alternating calls, {len(pairs)} pairs)")
    t_o = [r["step_time_s"] for r in records if r["method"] == "original" and r.get("step_time_s")]
    t_c = [r["step_time_s"] for r in records if r["method"] == "co_mining" and r.get("step_time_s")]
    if t_o and t_c:
        lines.append(f"step time co-mining / original: {statistics.mean(t_c) / statistics.mean(t_o):.2f}x")
    c_o = [r["compute_time_s"] for r in records if r["method"] == "original" and r.get("compute_time_s")]
    c_c = [r["compute_time_s"] for r in records if r["method"] == "co_mining" and r.get("compute_time_s")]
    if c_o and c_c:
        lines.append(f"step time without data wait, co-mining / original: {statistics.mean(c_c) / statistics.mean(c_o):.2f}x "
                     f"({1000 * statistics.mean(c_c):.0f} ms vs {1000 * statistics.mean(c_o):.0f} ms)")
    return lines


if __name__ == "__main__":
    sys.exit(main())
