"""What a review costs: the erased boxes a reviewer recovers per box shown, minedet's ranking against cleanlab's.

Usage:
  python benchmarks/bench_review_cost.py --seeds 0 --steps 600 --threads 1

One model (RetinaNet, EfficientNet-Lite0 FPN, BRL's loss: model.extra.cls_loss=brl, what own data trains on) is
trained once on digits `hard` (half of each image's boxes erased, the hidden truth kept) and kept in the work folder
(default .cache/bench_review_cost): a re-run measures again without training. On the same sparse training images,
each tool turns the model's predictions into one list of boxes to show, the most likely missing first:

- minedet: `mining.mine_dataset` candidates (the co-generation filters, boxes on labelled objects dropped) ranked by
  score, down to score 0.3; the score `propose_score_for` proposes is marked;
- cleanlab: `cleanlab.object_detection.rank.compute_overlooked_box_scores` (the per-box scores behind
  `find_label_issues`' "overlooked" issues) on the same model's predictions (decoded down to 0.05, as
  `propose_score_for` does), its boxes ranked by that score, lowest (most likely overlooked) first; with its default
  high-probability threshold (0.95: only predictions above it can be overlooked boxes) and with the threshold at 0.3
  (minedet's lowest score here), so that its list is not cut short by the default.

A scripted reviewer walks each list in order; a box shown recovers an erased box when it matches a not-yet-matched
erased box of the same class at IoU >= 0.5 (`minedet.pseudo.quality`'s greedy match, in review order). Recall (erased
boxes recovered / erased boxes) and precision (recovered / shown) are reported at equal numbers of boxes shown.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from common import ROOT, add_run_args, append_results, finished_run, latest, train_record

#: numbers of boxes shown every list is scored at (beside minedet's count at each score)
BUDGETS = (25, 50, 100, 200, 400, 1000, 2000, 4000)
#: minedet's scores marked on its list (mining.DEFAULT_THRESHOLDS)
SCORES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: the lowest score predictions are decoded at for cleanlab (as propose_score_for decodes)
PRED_FLOOR = 0.05
#: cleanlab's high-probability thresholds measured: its default, and minedet's lowest score
CLEANLAB_THRESHOLDS = (0.95, 0.3)


# ------------------------------------------------------------------------------------------------
# the pieces the test checks: cleanlab's input format and the ranked recall


def to_cleanlab(preds: list[dict], targets: list[dict], num_classes: int) -> tuple[list[dict], list[list]]:
    """(labels, predictions) in cleanlab's object-detection format from per-image dicts (xyxy pixels):
    ``preds[i]``: ``boxes`` float[M, 4], ``scores`` float[M], ``labels`` int[M]; ``targets[i]``: ``boxes``, ``labels``
    and optionally ``image_name``. ``labels[i]`` = ``{"bboxes": float32[L, 4], "labels": int64[L], "image_name"}``;
    ``predictions[i][k]`` = float32[M_k, 5] rows ``[x1, y1, x2, y2, score]`` of class k (every class present, possibly
    empty), in the image's prediction order within a class."""
    import numpy as np

    labels, predictions = [], []
    for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
        lb = np.asarray(t["boxes"], dtype=np.float32).reshape(-1, 4)
        labels.append({"bboxes": lb, "labels": np.asarray(t["labels"], dtype=np.int64).reshape(-1),
                       "image_name": str(t.get("image_name", i))})
        b = np.asarray(p["boxes"], dtype=np.float32).reshape(-1, 4)
        s = np.asarray(p["scores"], dtype=np.float32).reshape(-1, 1)
        k = np.asarray(p["labels"], dtype=np.int64).reshape(-1)
        predictions.append([np.concatenate([b[k == c], s[k == c]], axis=1) for c in range(num_classes)])
    return labels, predictions


def cleanlab_flat(prediction: list) -> tuple[list[list[float]], list[int], list[float]]:
    """One image's cleanlab predictions flattened in cleanlab's own per-box order (class by class): boxes, labels,
    scores; the order of its per-box score arrays."""
    boxes, labels, scores = [], [], []
    for c, rows in enumerate(prediction):
        for r in rows.tolist():
            boxes.append(r[:4])
            labels.append(c)
            scores.append(r[4])
    return boxes, labels, scores


def ranked_recall(shown: list[tuple], truth: dict, iou: float = 0.5) -> list[int]:
    """The cumulative number of erased boxes recovered after each box shown. ``shown``: the review list in order,
    ``(image id, [x1, y1, x2, y2], label, ...)``; ``truth``: image id -> Target of the erased boxes. A box recovers one
    when it matches a not-yet-matched erased box of its class at IoU >= ``iou`` (the best such, boxes taken in review
    order: ``minedet.pseudo.quality``'s greedy match)."""
    import torch

    from minedet.pseudo.quality import _greedy, _overlaps
    from minedet.structures import Target

    by_image: dict[int, list[int]] = {}
    for rank, row in enumerate(shown):
        by_image.setdefault(row[0], []).append(rank)
    hit = [0] * len(shown)
    for iid, ranks in by_image.items():
        t = truth.get(iid)
        if t is None or not len(t):
            continue
        mine = Target(torch.tensor([shown[r][1] for r in ranks], dtype=torch.float32).reshape(-1, 4),
                      torch.tensor([int(shown[r][2]) for r in ranks], dtype=torch.int64),
                      -torch.arange(len(ranks), dtype=torch.float32))  # review order as the greedy order
        matched, _ = _greedy(mine, *_overlaps(mine, t), iou)
        for r, m in zip(ranks, matched.tolist()):
            hit[r] = int(m)
    out, n = [], 0
    for h in hit:
        n += h
        out.append(n)
    return out


def curve(cum: list[int], n_hidden: int, budgets) -> list[dict]:
    """Recall and precision after each number of boxes shown in ``budgets`` (a list shorter than a budget is shown
    whole: ``shown`` < ``budget``)."""
    rows = []
    for b in sorted(set(int(x) for x in budgets)):
        shown = min(b, len(cum))
        tp = cum[shown - 1] if shown else 0
        rows.append({"budget": b, "shown": shown, "tp": tp, "recall": tp / n_hidden if n_hidden else None,
                     "precision": tp / shown if shown else None})
    return rows


# ------------------------------------------------------------------------------------------------
# the model, trained once


def config(args, work: Path, seed: int):
    from bench_co_mining import BY_LABEL, method_cfg
    from minedet.config import load_config, preset_path
    from minedet.data.split_files import sparse_copy
    from minedet.run import resolve_data

    over = [f"train.max_steps={args.steps}", f"train.seed={seed}", f"train.threads={args.threads}",
            f"data.digits.n_train={args.train_images}", f"data.digits.n_val={args.val_images}",
            f"data.digits.n_test={args.test_images}", f"data.cache_dir={work / 'cache'}"]
    cfg = resolve_data(load_config(preset_path("digits_retinanet"), over), quiet=True)
    cfg.data.train, cfg.data.hidden = sparse_copy(cfg, "hard", seed)
    cfg.method = method_cfg("brl", "hard")
    cfg.model.extra = {**cfg.model.extra, **BY_LABEL["brl"].model_extra}
    return cfg


def trained(cfg, out: Path, steps: int) -> dict:
    """The training record of the model in ``out``: trained now, or read back when a finished run is there."""
    saved = out / "train_record.json"
    if finished_run(out, steps) and (out / "model.pt").exists() and saved.exists():
        print(f"[review_cost] reusing the model in {out}", file=sys.stderr, flush=True)
        return {**json.loads(saved.read_text()), "reused_model": True}
    print(f"[review_cost] training {steps} steps into {out} ...", file=sys.stderr, flush=True)
    rec = train_record(cfg, label={}, out_dir=out)
    saved.write_text(json.dumps(rec))
    return rec


# ------------------------------------------------------------------------------------------------
# the two review lists


def minedet_list(det, data, root: str, agree: str = "none", detections: dict | None = None) -> tuple[list[tuple], dict]:
    """minedet's review list (candidates down to the lowest score, ranked by their gate: the score, or with ``agree``
    the lower of the two views' scores) and the score proposed on the labelled boxes (with the same agreement);
    ``detections``: image id -> the model's plain detections (:func:`predictions`), read instead of predicted again."""
    from minedet.mining import mine_dataset, propose_score_for

    t0 = time.perf_counter()
    res = mine_dataset(det, data, root, score=0.6, collect_down_to=min(SCORES), batch_size=16, agree=agree,
                       detections=detections)
    shown = [(iid, b, k, s) for iid, c in res.candidates.items()
             for b, k, s in zip(c.boxes.tolist(), c.labels.tolist(), res.gates[iid].tolist())]
    shown.sort(key=lambda r: (-r[3], r[0]))
    rank_s = time.perf_counter() - t0
    prop = propose_score_for(det, data, root, agree=agree)
    return shown, {"rank_s": round(rank_s, 1), "proposed_score": prop.score, "proposal_reason": prop.reason,
                   "result": res}


def predictions(det, data, root: str) -> tuple[list[dict], list[dict]]:
    """The model's detections on every image (down to PRED_FLOOR, as propose_score_for decodes; each with its
    ``image_id``) and the labelled boxes, per image: ``mining.calibration_detections`` over the whole set."""
    from minedet.mining import calibration_detections

    return calibration_detections(det, data, root, complete=True, floor=PRED_FLOOR, batch_size=16)


def cleanlab_list(preds: list[dict], targets: list[dict], num_classes: int, threshold: float) -> tuple[list[tuple], dict]:
    """cleanlab's review list: its overlooked-box candidates, lowest overlooked score (most likely missing) first."""
    import math

    from cleanlab.object_detection.filter import find_label_issues
    from cleanlab.object_detection.rank import compute_overlooked_box_scores

    t0 = time.perf_counter()
    labels, predictions_ = to_cleanlab(preds, targets, num_classes)
    scores = compute_overlooked_box_scores(labels=labels, predictions=predictions_, high_probability_threshold=threshold)
    shown = []
    for p, pred, sc in zip(preds, predictions_, scores):
        boxes, ks, probs = cleanlab_flat(pred)
        shown += [(p["image_id"], b, k, float(s), pr) for b, k, pr, s in zip(boxes, ks, probs, sc.tolist()) if not math.isnan(s)]
    shown.sort(key=lambda r: (r[3], -r[4], r[0]))
    rank_s = time.perf_counter() - t0
    info = {"rank_s": round(rank_s, 1), "high_probability_threshold": threshold,
            "ranked_by": (f"only predictions scoring >= {threshold:g} that overlap no labelled box are candidates, ranked by "
                          "their similarity to the nearest labelled box of their class, lowest first")}
    if threshold == CLEANLAB_THRESHOLDS[0]:  # its image-level verdict at its defaults, for context
        info["flagged_images"] = int(find_label_issues(labels, predictions_).sum())
    return shown, info


# ------------------------------------------------------------------------------------------------


def measure(det, cfg, n_classes: int, agrees: tuple[str, ...] = ("none",)) -> list[dict]:
    """One record per review list: its curve at every budget (and at minedet's scores), and its facts; minedet's list
    once per test-time agreement in ``agrees`` (``minedet mine --agree``; method ``minedet``, or ``minedet_flip``...)."""
    import cleanlab

    from minedet.data.coco import load_coco
    from minedet.data.datasets import coco_target
    from minedet.mining import pr_against_hidden

    data, hidden = load_coco(cfg.data.train), load_coco(cfg.data.hidden)
    truth = {int(im["id"]): coco_target(hidden, int(im["id"])) for im in data.images}
    n_hidden = sum(len(t) for t in truth.values())
    print("[review_cost] predictions ...", file=sys.stderr, flush=True)
    preds, targets = predictions(det, data, cfg.data.train_images)  # once: every list below reads them
    known = {p["image_id"]: p for p in preds}
    lists, at_score = [], {}
    for agree in agrees:
        print(f"[review_cost] minedet's list (agreement {agree}) ...", file=sys.stderr, flush=True)
        m_shown, m_info = minedet_list(det, data, cfg.data.train_images, agree, known)
        # the same count, another way: mining.pr_against_hidden at each score
        m_info["pr_against_hidden"] = pr_against_hidden(m_info.pop("result"), hidden, data, SCORES)
        m_info["agree"] = agree
        if agree == agrees[0]:  # the budgets marked: the first list's counts at minedet's scores
            at_score = {t: sum(1 for r in m_shown if r[3] > t) for t in SCORES}
            if m_info["proposed_score"] is not None:
                at_score[m_info["proposed_score"]] = sum(1 for r in m_shown if r[3] > m_info["proposed_score"])
        lists.append(("minedet" if agree == "none" else f"minedet_{agree}", f"minedet {_version()}", m_shown, m_info))
    budgets = sorted(set(BUDGETS) | {n for n in at_score.values() if n})
    for thr in CLEANLAB_THRESHOLDS:
        print(f"[review_cost] cleanlab's list (high-probability threshold {thr}) ...", file=sys.stderr, flush=True)
        shown, info = cleanlab_list(preds, targets, n_classes, thr)
        lists.append((f"cleanlab_overlooked_p{thr:g}", f"cleanlab {cleanlab.__version__}", shown, info))
    recs = []
    for method, tool, shown, info in lists:
        cum = ranked_recall(shown, truth)
        rows = curve(cum, n_hidden, budgets)
        for pr in info.get("pr_against_hidden", []):
            if pr["n_mined"] and pr["tp"] != cum[pr["n_mined"] - 1]:
                print(f"[review_cost] warning: at score {pr['threshold']} pr_against_hidden finds {pr['tp']} erased "
                      f"boxes, the ranked list {cum[pr['n_mined'] - 1]} (score ties)", file=sys.stderr, flush=True)
        for row in rows:
            row["at_score"] = sorted(t for t, n in at_score.items() if n == row["budget"]) or None
        recs.append({"method": method, "tool": tool, "list_length": len(shown), "n_hidden": n_hidden,
                     "images": len(data.images), "curve": rows, **info})
    return recs


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("minedet")
    except PackageNotFoundError:
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, default=600, help="training steps of the one model (default 600)")
    add_run_args(ap, train_images=4000, out_help="work folder, where the model is kept (default .cache/bench_review_cost)")
    args = ap.parse_args()
    work = Path(args.out or ROOT / ".cache" / "bench_review_cost")
    import torch

    from minedet.engine.checkpoint import load_model

    torch.set_num_threads(args.threads)
    for seed in args.seeds:
        cfg = config(args, work, seed)
        out = work / f"brl_hard_{args.steps}_s{seed}"
        rec = trained(cfg, out, args.steps)
        det, _ = load_model(out / "model.pt")
        label = {"split": "hard", "seed": seed, "steps": args.steps, "threads": args.threads, "what": "review_cost",
                 "model": "retinanet, cls_loss=brl", "model_ap50": rec.get("ap50"), "model_ap": rec.get("ap"),
                 "model_train_s": rec.get("train_s"), "model_reused": bool(rec.get("reused_model"))}
        recs = [{**label, **r} for r in measure(det, cfg, det.num_classes)]
        for r in recs:
            print(f"    {r['method']}: list {r['list_length']}, " + ", ".join(
                f"{c['shown']}: R {_pct(c['recall'])} P {_pct(c['precision'])}" for c in r["curve"]
                if c["budget"] in BUDGETS), file=sys.stderr, flush=True)
        append_results("review_cost", recs, note=note(args), derive=derived)
    return 0


def note(args) -> str:
    return (f"Digits {args.train_images} training images, `hard` labels (half of each image's boxes erased, hidden truth "
            f"kept); one RetinaNet on BRL's loss trained {args.steps} steps ({args.threads} torch thread(s)); both lists "
            "are measured on the sparse training images the model trained on. A box shown recovers an erased box at "
            "IoU >= 0.5 with a not-yet-matched erased box of its class.")


def derived(records: list[dict]) -> list[str]:
    """Recall at equal boxes shown, cleanlab's lists against minedet's (the latest record of each)."""
    recs = latest(records)
    lines = []
    for m in (r for r in recs if r["method"] == "minedet"):
        for c in (r for r in recs if r["method"].startswith("cleanlab") and r["seed"] == m["seed"]):
            both = [(a, b) for a, b in zip(m["curve"], c["curve"]) if a["budget"] == b["budget"]]
            better = sum(1 for a, b in both if b["recall"] > a["recall"])
            lines.append(f"seed {m['seed']}: {c['method']} recalls more than minedet at {better} of {len(both)} "
                         f"numbers of boxes shown (its list holds {c['list_length']} boxes, minedet's {m['list_length']})")
    return lines


if __name__ == "__main__":
    sys.exit(main())
