"""``minedet mine``: complete a sparsely labelled COCO dataset with mined boxes, for human review."""

from __future__ import annotations

import argparse
import html
import math
import sys
from pathlib import Path

from minedet.cli.infer import positive_int
from minedet.errors import MinedetError
from minedet.review import review_file_paths

_RAW = argparse.RawDescriptionHelpFormatter

MINE_HELP = """\
Run an exported model (model.pt of 'minedet train') over every image of a labelled COCO dataset and
hand back the boxes its labels miss (Co-mining's co-generation rules, Wang et al., AAAI 2021):

  1. keep detections with score > --score, class-wise NMS at --nms, at most --max-dets per image;
  2. drop a detection whose IoU with a labelled box (of any class; --gt-match same: of its own class,
     Co-mining's training rule) is > --iou-gt, or with a box a reviewer rejected (the "rejected" list
     of 'minedet data merge-reviewed', any class): a reviewed box is not offered again; --part SHARE
     also drops a detection with at least SHARE of its own area on labelled boxes (a shifted or partial
     box on a labelled object: on small, crowded objects such boxes keep an IoU under --iou-gt);
  3. test-time agreement: also run the model on a horizontally flipped (--agree flip) or colour-jittered
     (--agree color, seeded per image) copy; keep a box only when that copy has a detection of the same
     class with IoU >= --agree-iou whose score is also > --score. The kept box's score is the mean of
     both. Default (auto): flip when the model was trained on flipped images (data.flip > 0, the
     default for your own data), else none; on the tree-crown dev tiles it made every model but one more
     precise at equal recall (docs/benchmarks.md). --agree none turns it off.

Without --score, the score is proposed from the model itself, printed with its reason: it runs over the
images with labelled boxes (with --folds, each by its fold's model) and calibrates its detections on
labelled boxes (right = matches the box, IoU >= 0.5, same class; with agreement, only the detections the
view agrees with, at the score mining compares: the lower of the two); the proposal is the lowest score from
which they are right --target-precision of the time. Precision against sparse labels is only a lower
bound (an unlabelled object counts as wrong), so it is printed beside it, not used. Those detections
never judge a box on the background (a shadow, a look-alike): with --calibrate VAL.json
--calibrate-images DIR the proposal is made on a fully labelled set instead, where every detection is
judged (crowd regions aside); with --folds every fold's model predicts every image of that set (none
trained on it) and their detections are calibrated together. When nothing is mined, mine says which --score would mine something, or
to train longer.

Writes OUT: the input JSON with every original annotation unchanged (same ids, same fields) plus one
annotation per mined box (new ids after the largest one, "mined": true, "score", "iscrowd": 0,
"area"). OUT loads like any COCO file, e.g. as data.train of 'minedet train'.

Beside OUT it writes the review files, for the images that gained mined boxes, so the mined boxes open
as pre-annotations in the tool you label with: OUT_STEM.labelstudio.json (Label Studio tasks, each with
one prediction: its labelled and mined boxes as RectangleLabels in percent coordinates, a score per
mined box, model_version), OUT_STEM.labelstudio.xml (the labelling config those tasks fit) and
OUT_STEM.cvat.xml (CVAT for images 1.1; attribute minedet = mined or labelled on every box). In Label
Studio the labelled boxes are grey and read-only (their own control), the mined ones the boxes to check.
Task images are served by Label Studio's local files: URL /data/local-files/?d=<image path relative to
--review-root>, the folder Label Studio is started with as LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT
(default: the parent of --images; --images must lie under it, not be it). mine prints the two
environment variables and the storage step. After the review, 'minedet data merge-reviewed OUT EXPORT
--format labelstudio|cvat|coco --out COMPLETED.json' writes the reviewed dataset.

Held-out mining (--folds): a model mining its own training images has learnt that their unlabelled
objects are background. 'minedet data folds' splits the data into K folds; train one model per fold
on OUTDIR/foldF.train.json, then mine with MODEL = 'runs/fold{fold}/model.pt' and --folds
OUTDIR/folds.json: each image is mined by the model that did not train on it. A model trained by
minedet records its training images' file names: mine warns (one line) when a model is about to mine
images it trained on, and, with --folds, when a fold's model trained on its own fold.

Also writes a per-class summary (printed, and summary.json), and with --gallery DIR the review pages:
DIR/NNN_image<ID>.png for the images that gained most (labelled boxes green, mined boxes red with
class and score) and DIR/index.html listing them. With --hidden (OUT.hidden.json of 'minedet data
sparsify') it reports precision and recall of the mined boxes against the erased truth at thresholds
0.3..0.9 (and --score), the recall at precision >= 0.9, and writes pr.json and pr.png. The report files
go into the gallery folder, or beside OUT as OUT_STEM.summary.json / .pr.json / .pr.png.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mine", help="propose the missing boxes of a labelled dataset for review",
                       description=MINE_HELP, formatter_class=_RAW)
    p.add_argument("model", help="exported model file (model.pt); with --folds a pattern with {fold}, e.g. runs/fold{fold}/model.pt")
    p.add_argument("data", help="labelled COCO JSON to complete")
    p.add_argument("--images", required=True, help="image root the file_name entries are relative to")
    p.add_argument("--out", required=True, help="completed COCO JSON to write")
    p.add_argument("--score", type=float, default=None,
                   help="score threshold tau (default: proposed from the model on the labelled boxes, see "
                        "--target-precision; 0.6 when they cannot support a proposal)")
    p.add_argument("--target-precision", type=float, default=0.7, metavar="P",
                   help="without --score: the lowest score at which the model's detections on labelled boxes match "
                        "them P of the time (default 0.7)")
    p.add_argument("--calibrate", metavar="VAL.json",
                   help="without --score: propose the score on this fully labelled set (your val set) instead of the "
                        "labelled boxes of DATA: every detection there is judged, so boxes on look-alikes and background "
                        "count as wrong, which sparse labels cannot tell (needs --calibrate-images; with --folds, "
                        "every fold's model on every image of it, calibrated together)")
    p.add_argument("--calibrate-images", metavar="DIR", help="image root of --calibrate")
    p.add_argument("--nms", type=float, default=0.5, help="class-wise NMS IoU (default 0.5)")
    p.add_argument("--iou-gt", type=float, default=0.4,
                   help="drop a box whose IoU with a labelled box is above this (default 0.4)")
    p.add_argument("--gt-match", choices=["any", "same"], default="any",
                   help="compare with labelled boxes of any class (default: a labelled object is not missing, whatever "
                        "the detector calls it) or of the same class only (Co-mining's training rule)")
    p.add_argument("--part", type=float, default=None, metavar="SHARE",
                   help="also drop a box with at least this share of its own area on labelled boxes (default: off; "
                        "try 0.3 on small, crowded objects)")
    p.add_argument("--max-dets", type=int, default=100, help="at most this many mined boxes per image (default 100)")
    p.add_argument("--agree", choices=["auto", "none", "color", "flip"], default="auto",
                   help="test-time agreement with an augmented view (default auto: flip when the model was trained on "
                        "flipped images, else none)")
    p.add_argument("--agree-iou", type=float, default=0.5, help="IoU needed for agreement (default 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the colour view (default 0)")
    p.add_argument("--folds", metavar="FOLDS.json",
                   help="held-out mining: the folds file of 'minedet data folds'; each image is mined by the model of its "
                        "fold (MODEL with {fold} replaced by the fold number), trained without that fold's images")
    p.add_argument("--hidden", help="hidden-truth COCO JSON (OUT.hidden.json of 'minedet data sparsify')")
    p.add_argument("--gallery", help="folder for the review gallery (PNGs + index.html)")
    p.add_argument("--gallery-images", type=int, default=24, help="images in the gallery (default 24)")
    p.add_argument("--review-root", default=None, metavar="DIR",
                   help="Label Studio's LOCAL_FILES_DOCUMENT_ROOT; task image URLs are /data/local-files/?d=<path under DIR> "
                        "(default: the parent folder of --images)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_mine, agree_note="")  # agree_note: what --agree auto chose, said with the results


def _num(v: float) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None or not math.isfinite(v) else format(v, spec)


def _cmd_mine(args: argparse.Namespace) -> int:
    from minedet.data.coco import save_coco
    from minedet.mining import DEFAULT_THRESHOLDS, mine_dataset, nothing_mined_hint, pr_against_hidden, write_gallery

    data_path, out, gallery = _check_paths(args)
    source, data, hidden, det, device, folds = _load_inputs(args, data_path)
    args.score, known = _score(args, det, data, device, folds)
    thresholds = sorted({*DEFAULT_THRESHOLDS, round(float(args.score), 6)}) if hidden is not None else None
    res = mine_dataset(
        det, data, args.images, score=args.score, nms=args.nms, iou_gt=args.iou_gt, max_dets=args.max_dets,
        agree=args.agree, agree_iou=args.agree_iou, gt_match=args.gt_match, part=args.part, batch_size=args.batch_size,
        device=device,
        progress=not args.quiet, collect_down_to=min(thresholds) if thresholds else HINT_FLOOR, seed=args.seed,
        source=source, folds=folds, detections=known if args.score >= HINT_FLOOR else None,  # each image predicted once
    )
    pr_rows = None
    if hidden is not None:  # check before anything is written
        pr_rows = pr_against_hidden(res, hidden, data, thresholds)

    save_coco(out, res.completed)
    review = _write_review_files(args, res, out)
    report_dir = gallery if gallery is not None else out.parent
    prefix = "" if gallery is not None else f"{out.stem}."
    original = _summary(args, res, data, data_path, out, report_dir / f"{prefix}summary.json")
    extra_html = _class_table_html(data.class_names, original, res.per_class())
    if pr_rows is not None:
        extra_html += _pr_report(args, res, pr_rows, data_path, report_dir, prefix, with_plot_link=gallery is not None)
    if gallery is not None:
        entries = write_gallery(res, data, args.images, gallery, max_images=args.gallery_images, extra_html=extra_html)
        print(f"gallery: {len(entries)} images -> {gallery / 'index.html'}")
    print(f"review: {review['images']} images -> {review['labelstudio']} (config {review['config']}), {review['cvat']}")
    print("Label Studio (images open from local files):\n" + "\n".join(f"  {x}" for x in review["setup"]))
    print(f"{res.n_mined} mined boxes added to {len(data.annotations)} labelled ones -> {out}")
    if args.agree_note:
        print(args.agree_note)
    if not res.n_mined:
        print(f"minedet: {nothing_mined_hint(res)}", file=sys.stderr)
    return 0


HINT_FLOOR = 0.05  # candidates are collected down to this score, so that mining nothing can say what would mine


def _score(args: argparse.Namespace, det, data, device, folds) -> tuple[float, dict[int, dict]]:
    """``--score``, or the score :func:`~minedet.mining.propose_score` proposes from the model on the labelled boxes
    (each image by its fold's model with ``--folds``), printed with its reason; 0.6 when none can be proposed. With it,
    the detections the proposal made on the mined images (decoded down to :data:`HINT_FLOOR`, below any score mining
    decodes at when the score is above it) by image id, for mining to reuse."""
    from minedet.mining import DEFAULT_SCORE, calibration_detections, propose_score

    known: dict[int, dict] = {}
    if args.score is not None:
        return args.score, known
    agree = dict(agree=args.agree, agree_iou=args.agree_iou, seed=args.seed)
    if args.calibrate:
        from minedet.data.coco import load_coco

        val, dets, targets = load_coco(args.calibrate), [], []
        for d in (det if folds is not None else [det]):  # with folds: every fold's model on every val image
            a, b = calibration_detections(d, val, args.calibrate_images, complete=True, nms=args.nms,
                                          max_dets=args.max_dets, batch_size=args.batch_size, device=device, **agree)
            dets, targets = dets + a, targets + b
        p = propose_score(dets, targets, target_precision=args.target_precision, complete=True)
        source = f"the {'fold models' if folds is not None else 'model'} on {args.calibrate}"
    else:
        dets, targets = calibration_detections(det, data, args.images, folds=folds, nms=args.nms, max_dets=args.max_dets,
                                               floor=HINT_FLOOR, batch_size=args.batch_size, device=device, **agree)
        p = propose_score(dets, targets, target_precision=args.target_precision)
        if args.agree == "none":  # agreed detections carry their gates as scores: mining predicts afresh
            known = {d["image_id"]: d for d in dets}
        source = "the model"
    if p.score is None:
        print(f"minedet: no score proposed ({p.reason}); mining at --score {DEFAULT_SCORE:g}", file=sys.stderr)
        return DEFAULT_SCORE, known
    print(f"minedet: --score {p.score:g} proposed from {source}: {p.reason}", file=sys.stderr)
    return p.score, known


def _check_paths(args: argparse.Namespace) -> tuple[Path, Path, Path | None]:
    """(data path, output path, gallery folder or None), refusing bad combinations before any work."""
    from minedet.io import check_outputs

    data_path, out = Path(args.data), Path(args.out)
    if args.gallery_images < 0:
        raise MinedetError(f"--gallery-images must be >= 0, got {args.gallery_images}")
    if args.calibrate and (args.score is not None or not args.calibrate_images):
        why = "--score is given, so nothing is calibrated" if args.score is not None else "it needs --calibrate-images DIR"
        raise MinedetError(f"--calibrate {args.calibrate}: {why}")
    if args.calibrate_images and not args.calibrate:
        raise MinedetError("--calibrate-images without --calibrate: give the fully labelled set it holds the images of")
    if args.calibrate_images and not Path(args.calibrate_images).is_dir():
        raise MinedetError("image folder not found", file=str(args.calibrate_images))
    if not Path(args.images).is_dir():
        raise MinedetError("image folder not found", file=str(args.images))
    from minedet.review import local_files_dir

    local_files_dir(args.images, args.review_root)
    gallery = Path(args.gallery) if args.gallery else None
    report_dir, prefix = (gallery, "") if gallery is not None else (out.parent, f"{out.stem}.")
    reports = [report_dir / f"{prefix}{n}" for n in ("summary.json", "pr.json", "pr.png")]
    check_outputs([data_path, args.images, args.hidden, args.folds, args.model, args.calibrate, args.calibrate_images],
                  files=[out, *review_file_paths(out).values(), *reports, *([gallery / "index.html"] if gallery else [])],
                  folders=[gallery] if gallery is not None else [])
    return data_path, out, gallery


def _load_inputs(args: argparse.Namespace, data_path: Path):
    """(source dict as read, validated CocoData, hidden CocoData or None, detector (a list with --folds),
    device, image id -> fold or None)."""
    from minedet.data.coco import load_coco, read_json_file, validate_coco
    from minedet.engine.checkpoint import load_model
    from minedet.engine.dist import setup_device

    source = read_json_file(data_path)
    data = validate_coco(source, file=str(data_path))
    hidden = load_coco(args.hidden) if args.hidden else None
    folds, models = None, [args.model]
    if args.folds:
        from minedet.data.folds import read_folds

        folds = read_folds(read_json_file(args.folds), data, file=str(args.folds))
        if "{fold}" not in args.model:
            raise MinedetError("with --folds the model must be a pattern with {fold} (e.g. runs/fold{fold}/model.pt)",
                               file=str(args.model))
        models = [args.model.replace("{fold}", str(f)) for f in range(max(folds.values()) + 1)]
    info = setup_device(args.device, quiet=True)
    dets, flips = [], []
    for f, path in enumerate(models):
        det, meta = load_model(path, device=info.device)
        _warn_if_trained_on(meta, data, path, None if folds is None else [i for i, g in folds.items() if g == f])
        if list(det.spec.class_names) != data.class_names:
            raise MinedetError(
                f"the model {path} was trained on classes {list(det.spec.class_names)} but the data has {data.class_names}",
                file=str(data_path),
            )
        dets.append(det)
        flips.append(float(meta.get("flip") or 0.0) > 0)
    if args.agree == "auto":  # said with the results (an input error later stays one line)
        args.agree = "flip" if all(flips) else "none"
        args.agree_note = ("kept only boxes a flipped view agrees with (--agree auto: the model trained on flipped "
                           "images; --agree none turns it off)" if args.agree == "flip" else "")
    return source, data, hidden, (dets if folds is not None else dets[0]), info.device, folds


def _warn_if_trained_on(meta: dict, data, model: str, fold_ids: list[int] | None) -> None:
    """One warning line when the model trained on images (by file name) it is about to mine: it has been taught
    that their unlabelled objects are background and scores them low."""
    seen = set(meta.get("train_images") or [])
    if not seen:
        return  # a model exported before the record existed, or by other code
    ids = set(fold_ids) if fold_ids is not None else None
    recs = [im for im in data.images if ids is None or int(im["id"]) in ids]
    both = sum(1 for im in recs if str(im["file_name"]) in seen)
    if not both:
        return
    if fold_ids is not None:
        print(f"minedet: warning: {model} trained on {both} of the {len(recs)} images of its fold (by file name): "
              "the fold's model must be trained on its foldF.train.json, without them", file=sys.stderr)
    else:
        print(f"minedet: warning: {model} trained on {both} of these {len(recs)} images (by file name): it learnt their "
              "unlabelled objects as background and will miss many; held-out folds mine more ('minedet data folds')",
              file=sys.stderr)


def _write_review_files(args: argparse.Namespace, res, out: Path) -> dict:
    """The Label Studio tasks + config and the CVAT XML of the images that gained boxes, beside ``out``."""
    from minedet.data.coco import validate_coco
    from minedet.io import write_bytes_atomic, write_json_atomic, write_text_atomic
    from minedet.review import (images_to_review, labelstudio_config, labelstudio_setup, labelstudio_tasks, local_files_dir,
                                review_cvat_xml)

    completed = validate_coco(res.completed, file=str(out))
    ids = images_to_review(completed)
    s = res.settings
    version = f"minedet mine {Path(args.model).name} score>{s.score:g} agree={s.agree}"
    paths = review_file_paths(out)
    write_json_atomic(paths["labelstudio.json"], labelstudio_tasks(
        completed, image_ids=ids, image_dir=local_files_dir(args.images, args.review_root), model_version=version), indent=1)
    write_text_atomic(paths["labelstudio.xml"], labelstudio_config(completed.class_names))
    write_bytes_atomic(paths["cvat.xml"], review_cvat_xml(completed, image_ids=ids, task_name=f"minedet review of {out.name}"))
    return {"images": len(ids), "labelstudio": paths["labelstudio.json"], "config": paths["labelstudio.xml"],
            "cvat": paths["cvat.xml"], "setup": labelstudio_setup(args.images, args.review_root)}


def _summary(args: argparse.Namespace, res, data, data_path: Path, out: Path, path: Path) -> dict[str, int]:
    """Print the per-class table, write summary.json; the labelled boxes per class."""
    from minedet.io import write_json_atomic

    per_class = res.per_class()
    original = {n: 0 for n in data.class_names}
    for a in data.annotations:
        original[data.class_names[data.label_of(a["category_id"])]] += 1
    width = max([5, *(len(n) for n in data.class_names)])
    lines = [f"{'class':<{width}}  {'labelled':>8}  {'mined':>6}"]
    lines += [f"{n:<{width}}  {original[n]:>8}  {per_class[n]:>6}" for n in data.class_names]
    lines.append(f"{'total':<{width}}  {sum(original.values()):>8}  {res.n_mined:>6}")
    print(f"== mined boxes per class ({len(res.gains())} of {len(data.images)} images gained boxes) ==")
    print("\n".join(lines))
    summary = {
        "model": str(args.model), "data": str(data_path), "out": str(out),
        "settings": res.settings.as_dict(),
        "images": len(data.images), "images_with_mined": len(res.gains()),
        "labelled_boxes": sum(original.values()), "mined_boxes": res.n_mined,
        "per_class": [{"class": n, "labelled": original[n], "mined": per_class[n]} for n in data.class_names],
        "gains": [{"image_id": i, "mined": g} for i, g in res.gains()],
    }
    from minedet.data.tiles import per_source_summary

    per_source = per_source_summary(data, res.mined, nms=args.nms)  # tiled data: per big image, overlaps merged
    if per_source:
        print("== per big image (mined boxes merged across tile overlaps) ==")
        for r in per_source:
            print(f"image id={r['source']} {r['source_file']}: {r['tiles']} tiles, {r['labelled']} labelled, {r['mined']} mined")
        summary["per_source"] = per_source
    write_json_atomic(path, summary, indent=2)
    return original


def _class_table_html(names: list[str], original: dict[str, int], per_class: dict[str, int]) -> str:
    return "<h2>Mined boxes per class</h2><table><tr><th>class</th><th>labelled</th><th>mined</th></tr>" + "".join(
        f"<tr><td>{html.escape(n)}</td><td>{original[n]}</td><td>{per_class[n]}</td></tr>" for n in names
    ) + "</table>"


def _pr_report(args: argparse.Namespace, res, pr_rows: list[dict], data_path: Path, report_dir: Path, prefix: str,
               *, with_plot_link: bool) -> str:
    """Print precision / recall against the hidden truth, write pr.json and pr.png; the HTML table."""
    from minedet.io import write_json_atomic
    from minedet.mining import recall_at_precision
    from minedet.viz import plot_curves

    best = recall_at_precision(pr_rows, 0.9)
    print(f"== mined boxes vs the hidden truth ({args.hidden}, IoU >= 0.5, same class) ==")
    print(f"{'score >':>8}  {'mined':>6}  {'correct':>7}  {'hidden':>6}  {'precision':>9}  {'recall':>6}")
    for r in pr_rows:
        print(f"{r['threshold']:>8.2f}  {r['n_mined']:>6}  {r['tp']:>7}  {r['n_hidden']:>6}  "
              f"{_fmt(r['precision']):>9}  {_fmt(r['recall']):>6}")
    if best is None:
        print("recall at precision >= 0.9: - (no threshold reaches precision 0.9)")
    else:
        print(f"recall at precision >= 0.9: {best['recall']:.3f} (score > {best['threshold']:.2f}, "
              f"precision {best['precision']:.3f})")
    write_json_atomic(report_dir / f"{prefix}pr.json", {
        "model": str(args.model), "data": str(data_path), "hidden": str(args.hidden), "iou": 0.5,
        "settings": res.settings.as_dict(),
        "rows": [{k: (_num(v) if k in ("precision", "recall", "miou") else v) for k, v in r.items()} for r in pr_rows],
        "recall_at_precision_0.9": None if best is None else {k: _num(v) for k, v in best.items()},
    }, indent=2)
    plot_curves({"mined boxes": ([r["recall"] for r in pr_rows], [r["precision"] for r in pr_rows])},
                report_dir / f"{prefix}pr.png", xlabel="recall (of hidden boxes)", ylabel="precision",
                title="mined boxes vs hidden truth (score thresholds 0.3-0.9)")
    table = "<h2>Against the hidden truth</h2><table><tr><th>score &gt;</th><th>mined</th><th>correct</th>" \
            "<th>hidden</th><th>precision</th><th>recall</th></tr>" + "".join(
        f"<tr><td>{r['threshold']:.2f}</td><td>{r['n_mined']}</td><td>{r['tp']}</td><td>{r['n_hidden']}</td>"
        f"<td>{_fmt(r['precision'])}</td><td>{_fmt(r['recall'])}</td></tr>" for r in pr_rows
    ) + "</table>"
    if with_plot_link:
        table += f'<p><img src="{prefix}pr.png" alt="precision-recall curve"></p>'
    return table
