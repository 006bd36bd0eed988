"""One review round on digits `hard`: co-mining, `minedet mine`, a scripted reviewer, merge, train again;
against co-mining alone at the same total number of steps (RetinaNet, EfficientNet-Lite0 FPN, CPU).

Usage:
  python benchmarks/bench_review.py --seeds 0 --alone              # round 1: 900 steps, round 2: 300 steps, both arms

The loop a user runs, scripted:
1. round 1: co-mining on the sparse training set (the headline's setting) for --round1 steps;
2. `minedet mine` with that model (score 0.6, boxes on labelled objects of any class dropped);
3. the scripted reviewer sees every mined box: it accepts one that matches a hidden (erased) box of
   the same class at IoU >= 0.5 (each hidden box once, best score first) and deletes the rest;
   `minedet data merge-reviewed` semantics then give the completed dataset, deleted boxes in its
   "rejected" list;
4. round 2: co-mining on the completed dataset, starting from the round-1 model (model.init), for
   --round2 steps; boxes the reviewer rejected stay background (method.rejected_iou, default 0.5).
Effort is counted as the reviewer's clicks: each deleted box (accepting one is leaving it as shown).
--alone: co-mining alone at the same total steps, i.e. the same round 2 from the same round-1 model on
the unreviewed sparse labels. Round 1 is the headline's co-mining run (bench_co_mining.py, 900 steps):
a round-1 run found in --out (e.g. that run's folder, copied) is reused.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import add_run_args, append_results, latest, train_record


def scripted_review(mined, hidden) -> tuple[dict, dict[str, int]]:
    """The reviewer: image id -> reviewed boxes (labelled boxes kept as offered, matching mined boxes
    accepted, the rest deleted); and the counts (shown, accepted, deleted)."""
    import torch
    from torchvision.ops import box_iou

    from minedet.review import ReviewedBox

    def xyxy(a):
        x, y, w, h = a["bbox"]
        return (x, y, x + w, y + h)

    reviewed, counts = {}, {"shown": 0, "accepted": 0, "deleted": 0}
    for im in mined.images:
        iid = im["id"]
        anns = mined.anns_by_image.get(iid, [])
        boxes = [ReviewedBox(xyxy(a), mined.class_names[mined.label_of(a["category_id"])], f"l{a['id']}")
                 for a in anns if not a.get("mined")]
        offered = sorted((a for a in anns if a.get("mined")), key=lambda a: -a.get("score", 0.0))
        truth = [a for a in hidden.anns_by_image.get(iid, []) if not a.get("iscrowd")]
        used = set()
        for a in offered:
            counts["shown"] += 1
            hit = None
            if truth:
                iou = box_iou(torch.tensor([xyxy(a)]), torch.tensor([xyxy(t) for t in truth]))[0]
                for j in torch.argsort(iou, descending=True).tolist():
                    if iou[j] < 0.5:
                        break
                    if j not in used and truth[j]["category_id"] == a["category_id"]:
                        hit = j
                        break
            if hit is None:
                counts["deleted"] += 1
                continue
            used.add(hit)
            counts["accepted"] += 1
            boxes.append(ReviewedBox(xyxy(a), mined.class_names[mined.label_of(a["category_id"])], f"m{a['id']}"))
        reviewed[iid] = boxes
    return reviewed, counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--split", default="hard", choices=["easy", "hard", "extreme"])
    ap.add_argument("--round1", type=int, default=900, help="co-mining steps before the review (the headline's 900)")
    ap.add_argument("--round2", type=int, default=300, help="co-mining steps after it, from the round-1 model")
    ap.add_argument("--alone", action="store_true",
                    help="also run round 2 on the unreviewed labels (co-mining alone at the same total steps)")
    add_run_args(ap, train_images=4000, out_help="work folder (default: a temporary one); a round-1 run found there is reused")
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench_co_mining import method_cfg
    from minedet.data.split_files import sparse_copy
    from minedet.config import load_config, preset_path
    from minedet.data.coco import load_coco, save_coco
    from minedet.engine.checkpoint import load_model
    from minedet.mining import mine_dataset
    from minedet.review import merge_reviewed
    from minedet.run import resolve_data

    work = Path(args.out or tempfile.mkdtemp(prefix="minedet-review-"))

    def config(seed: int, steps: int):
        over = [f"train.max_steps={steps}", f"train.seed={seed}", f"train.threads={args.threads}",
                f"data.digits.n_train={args.train_images}", f"data.digits.n_val={args.val_images}",
                f"data.digits.n_test={args.test_images}", f"data.cache_dir={work / 'cache'}"]
        cfg = resolve_data(load_config(preset_path("digits_retinanet"), over), quiet=True)
        cfg.data.train, cfg.data.hidden = sparse_copy(cfg, args.split, seed)
        cfg.method = method_cfg("co_mining", args.split)
        return cfg

    for seed in args.seeds:
        r1 = work / f"round1_{args.split}_{args.round1}_s{seed}"
        cfg = config(seed, args.round1)
        if not (r1 / "model.pt").exists():
            print(f"[review] seed {seed} round 1: co-mining {args.round1} steps ...", file=sys.stderr, flush=True)
            r1_rec = train_record(cfg, label={}, out_dir=r1)
        else:
            import json

            r1_rec = {"ap": json.loads((r1 / "eval.json").read_text())["eval"]["student"]["ap"]}
        det, _ = load_model(r1 / "model.pt")
        data = load_coco(cfg.data.train)
        mined = mine_dataset(det, data, cfg.data.train_images, score=0.6)
        save_coco(r1 / "mined.json", mined.completed)
        mined_data = load_coco(r1 / "mined.json")
        reviewed, counts = scripted_review(mined_data, load_coco(cfg.data.hidden))
        merged = merge_reviewed(mined_data, reviewed)
        completed = r1 / "completed.json"
        save_coco(completed, merged.coco)
        print(f"    round 1 AP {100 * r1_rec['ap']:.1f}; review: {counts}", file=sys.stderr, flush=True)

        cfg2 = config(seed, args.round2)
        cfg2.data.train, cfg2.data.hidden, cfg2.model.init = str(completed), None, str(r1 / "model.pt")
        out = work / f"round2_{args.split}_{args.round1}+{args.round2}_s{seed}"
        print(f"[review] seed {seed} round 2: co-mining {args.round2} steps from the round-1 model ...", file=sys.stderr, flush=True)
        rec = train_record(cfg2, label={"method": "review_round", "split": args.split, "seed": seed,
                                        "what": f"{args.round1}+{args.round2}"}, out_dir=out)
        rec.update(round1_steps=args.round1, round2_steps=args.round2, total_steps=args.round1 + args.round2,
                   round1_ap=r1_rec["ap"], mined_shown=counts["shown"], mined_accepted=counts["accepted"],
                   reviewer_deletions=counts["deleted"], hidden_boxes=sum(len(v) for v in load_coco(cfg.data.hidden).anns_by_image.values()))
        print(f"    AP {100 * rec['ap']:.1f}", file=sys.stderr, flush=True)
        recs = [rec]
        if args.alone:
            cfg3 = config(seed, args.round2)
            cfg3.model.init = str(r1 / "model.pt")
            print(f"[review] seed {seed} co-mining alone: the same {args.round2} steps on the unreviewed labels ...",
                  file=sys.stderr, flush=True)
            alone = train_record(cfg3, label={"method": "co_mining_alone", "split": args.split, "seed": seed,
                                              "what": f"{args.round1}+{args.round2}"},
                                 out_dir=work / f"alone_{args.split}_{args.round1}+{args.round2}_s{seed}")
            print(f"    AP {100 * alone['ap']:.1f}", file=sys.stderr, flush=True)
            recs.append({**alone, "total_steps": args.round1 + args.round2})
        append_results("review", recs, note=note(args), derive=derived)
    return 0


def note(args) -> str:
    return (f"Digits {args.train_images} training images, `{args.split}` labels (re-drawn per seed), val {args.val_images} "
            f"images with full labels; co-mining as in the headline (tau 0.6); round 1 {args.round1} steps, the "
            f"scripted review, round 2 {args.round2} steps from the round-1 model; {args.threads} torch thread(s).")


def derived(records: list[dict]) -> list[str]:
    """Each review round against co-mining alone (the same round 2 on the unreviewed labels)."""
    lines = []
    recs = latest(records)
    for r in recs:
        if r["method"] != "review_round":
            continue
        alone = [a for a in recs if a["method"] == "co_mining_alone" and a["seed"] == r["seed"] and a.get("what") == r.get("what")]
        versus = f"co-mining alone {100 * alone[-1]['ap']:.1f}" if alone else "no co-mining-alone run at that budget"
        lines.append(f"seed {r['seed']}: review round {100 * r['ap']:.1f} ({r['round1_steps']} + {r['round2_steps']} steps; "
                     f"round 1 {100 * r['round1_ap']:.1f}) vs {versus} at the same steps; the reviewer saw "
                     f"{r['mined_shown']} mined boxes, accepted {r['mined_accepted']} and deleted {r['reviewer_deletions']} "
                     f"({r['hidden_boxes']} boxes were erased)")
    return lines


if __name__ == "__main__":
    sys.exit(main())
