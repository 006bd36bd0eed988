"""``minedet demo``: the main job on the embedded digits dataset, on a laptop CPU.

Builds the digits dataset into a cache folder if absent, trains supervised RetinaNet with an
EfficientNet-Lite0 FPN (ImageNet weights shipped in a PyPI package), evaluates it with pycocotools,
prints the AP table and where the logs, model and renders are.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minedet.config import load_config, preset_path
from minedet.data.split_files import sparse_copy


def _renders(result: dict, cfg, n: int = 8) -> Path:
    """Draw the saved model's detections on the first ``n`` val images into OUT/renders/."""
    import torch

    from minedet.data.coco import load_coco
    from minedet.data.datasets import DetectionDataset
    from minedet.engine.checkpoint import load_model
    from minedet.viz import BoxGroup, draw_boxes, grid, save_png

    det, _ = load_model(result["model"])
    data = load_coco(cfg.data.val)
    ds = DetectionDataset(data, cfg.data.val_images)
    names = data.class_names
    tiles = []
    for i in range(min(n, len(ds))):
        s = ds[i]
        v = s["views"]["o"]
        with torch.no_grad():
            d = det.predict([v.image])[0]
        keep = d.scores >= 0.4
        tiles.append(draw_boxes(v.image, [
            BoxGroup(v.target.boxes.numpy(), None, None, color=(40, 200, 40)),
            BoxGroup(d.boxes[keep].numpy(), [names[int(k)] for k in d.labels[keep]], d.scores[keep].tolist(), color=(255, 40, 40)),
        ]))
    out = Path(result["out_dir"]) / "renders" / "val_detections.png"
    save_png(grid(tiles, 4), out)
    return out


def sparse_methods(mode: str, overrides: list[str]) -> dict[str, tuple[dict, dict]]:
    """The two sides of ``demo --sparse`` as (method block, ``model.extra``): the plain detector, and co-mining
    as the ``digits_co_mining`` preset trains it (its options and its loss, BRL's; tau 0.5 on the extreme
    split, as in the release). ``method.*`` overrides on the command line go to co-mining only; ``model.extra.*``
    ones to both sides, over the preset's."""
    method_overrides = [o for o in overrides if o.startswith("method.")]
    if mode == "extreme" and not any(o.startswith("method.tau=") for o in method_overrides):
        method_overrides.insert(0, "method.tau=0.5")
    preset = load_config(preset_path("digits_co_mining"), method_overrides)
    return {"supervised": ({"name": "supervised"}, {}), "co_mining": (preset.method, dict(preset.model.extra))}


def _cmd_sparse(args: argparse.Namespace, overrides: list[str]) -> int:
    """Baseline vs Co-mining on the same sparse labels, AP side by side."""
    from minedet.run import resolve_data, run_training

    results, losses = {}, {}
    data_overrides = [o for o in overrides if not o.startswith("method.")]  # method.* went to sparse_methods
    for method, (block, extra) in sparse_methods(args.sparse, overrides).items():
        cfg = resolve_data(load_config(preset_path("digits_retinanet"), data_overrides))
        train, hidden = sparse_copy(cfg, args.sparse)
        cfg.data.train, cfg.data.hidden = train, hidden
        cfg.method = block
        cfg.model.extra = {**extra, **cfg.model.extra}
        losses[method] = cfg.model.extra.get("cls_loss", "focal")
        cfg.train.out_dir = str(Path(args.out) / f"{args.sparse}_{method}")
        print(f"minedet demo: {method} on the '{args.sparse}' sparse labels ({cfg.train.max_steps} steps, "
              f"{losses[method]} loss)", file=sys.stderr)
        results[method] = run_training(cfg)
    print(f"\n== digits, '{args.sparse}' labels (pycocotools, val split with full labels) ==")
    print(f"{'method':<12} {'loss':<6} {'AP':>6} {'AP50':>6} {'AP75':>6}  model")
    for method, r in results.items():
        rep = next(iter(r["reports"].values()))
        print(f"{method:<12} {losses[method]:<6} {100 * rep.ap:6.1f} {100 * rep.ap50:6.1f} {100 * rep.ap75:6.1f}  {r['model']}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from minedet.run import print_outputs, print_reports, run_training

    overrides = list(args.overrides)
    if args.steps:
        overrides.append(f"train.max_steps={args.steps}")
    if args.sparse:
        return _cmd_sparse(args, overrides)
    cfg = load_config(preset_path("digits_retinanet"), overrides)
    cfg.train.out_dir = args.out
    print(f"minedet demo: supervised RetinaNet (EfficientNet-Lite0 FPN) on the digits dataset, "
          f"{cfg.train.max_steps} steps of batch {cfg.data.batch_size} at {cfg.data.image_size} px", file=sys.stderr)
    result = run_training(cfg)
    print_reports(result)
    render = _renders(result, cfg)
    print(f"\ntrained in {result['wall_s'] / 60:.1f} min ({result['steps']} steps)")
    print_outputs(result, {"renders": f"{render}  (green: ground truth, red: detections)"})
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train and evaluate a detector on the embedded digits dataset (CPU, ~10 minutes)",
        description=(
            "The main job on the embedded default dataset: build the digits dataset (handwritten digits "
            "from scikit-learn composed into scenes) if absent, train supervised RetinaNet with an "
            "EfficientNet-Lite0 FPN, evaluate with pycocotools and print the AP table."
        ),
    )
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.max_steps=300")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--steps", type=int, help="training steps (default: the preset's)")
    p.add_argument("--sparse", choices=["easy", "hard", "extreme", "missing", "keep1"],
                   help="erase labels of the train split with this protocol (kept as hidden truth) and compare "
                        "supervised training with Co-mining (as the digits_co_mining preset trains it, on BRL's loss) on the same "
                        "sparse labels (about three times the demo's time); "
                        "method.KEY=VALUE overrides go to Co-mining")
    p.set_defaults(func=_cmd_demo)
