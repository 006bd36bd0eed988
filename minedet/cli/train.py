"""``minedet train``: parse the arguments and run :func:`minedet.run.run_training`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from minedet.registry import METHODS, method_options_help
from minedet.config import load_config, preset_path
from minedet.errors import MinedetError
from minedet.io import check_outputs
from minedet.run import own_data_config, print_outputs, print_reports, run_training, unused_out_dir

_DATA_FLAGS = {"images": "train_images", "val_images": "val_images", "unlabelled": "unlabelled",
               "unlabelled_images": "unlabelled_images", "hidden": "hidden"}


# --------------------------------------------------------------------------------------------- CLI
def _config(args: argparse.Namespace):
    """A method name with --train: your own data, no YAML; otherwise a YAML file or preset, whose data
    paths the flags replace."""
    paths = {key: getattr(args, flag) for flag, key in _DATA_FLAGS.items()}
    if args.config in METHODS and not args.config.endswith((".yaml", ".yml")):
        if args.train is None:
            raise MinedetError(f"minedet train {args.config} trains on your data: give --train TRAIN.json "
                               "(and --images, --val); or name a preset such as digits_co_mining")
        return own_data_config(args.config, train=args.train, val=args.val, overrides=args.overrides, **paths)
    cfg = load_config(preset_path(args.config), args.overrides)
    for key, value in {"train": args.train, "val": args.val, **paths}.items():
        if value is not None:
            setattr(cfg.data, key, value)
    return cfg


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = _config(args)
    main = int(os.environ.get("RANK", "0")) == 0
    if args.out:
        cfg.train.out_dir = args.out
    if args.device:
        cfg.train.device = args.device
    if not args.resume:  # a second round never replaces the first: a finished run's folder gets a numbered sibling
        fresh = unused_out_dir(cfg.train.out_dir)
        if main and fresh != Path(cfg.train.out_dir):
            print(f"minedet: {cfg.train.out_dir} holds the model.pt of an earlier run; this run writes to {fresh} "
                  "(--out DIR names the folder; --resume CKPT continues a run in place)", file=sys.stderr)
        cfg.train.out_dir = str(fresh)
    d = cfg.data  # the run folder is never one the run reads from (a model and logs among the user's images)
    check_outputs([d.train, d.val, d.train_images, d.val_images, d.unlabelled, d.unlabelled_images, d.hidden],
                  folders=[cfg.train.out_dir])
    result = run_training(cfg, resume=args.resume)
    if main:
        print_reports(result)
        print()
        print_outputs(result)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a detector with a method from a YAML config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train a detector from a YAML config (sections data/model/method/train) or a preset name\n"
            "shipped with minedet (e.g. digits_retinanet, digits_co_mining, digits_acrst), or on your own\n"
            "COCO data with no YAML: minedet train supervised --train train.json --images DIR --val val.json\n"
            "(the method name as the config; image size and anchor scale proposed from the boxes, steps from\n"
            "the number of images (100 passes, 600..10000 steps), a teacher's burn-in a sixth of them. On\n"
            "RetinaNet, supervised trains on BRL's loss at batch 16 (the sparse-label default;\n"
            "model.extra.cls_loss=focal data.batch_size=8: plain); mixed takes a file without \"labels\" flags\n"
            "as sparse (data.unflagged=sparse: the boxes present are true) and lets an EMA teacher fill the\n"
            "missing ones, on BRL's loss too; co_mining on BRL's loss too, and pauses its mining while its\n"
            "confident val detections are mostly wrong, method.min_val_precision=null to mine anyway;\n"
            "method.paper=true: the release's settings).\n"
            "Writes OUT/checkpoints/last.pt (resumable), OUT/model.pt (the plain detector),\n"
            "OUT/metrics.jsonl, OUT/tb (TensorBoard), OUT/eval.json, OUT/pr_curve.png and OUT/confusion.png (on val).\n"
            "Multi-GPU: torchrun --nproc_per_node N -m minedet train CONFIG ...\n\n"
            "Methods and their options (set with method.KEY=VALUE):\n" + method_options_help()
        ),
    )
    p.add_argument("config", help="YAML config file, preset name, or a method name with --train")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.max_steps=500 method.name=co_mining")
    p.add_argument("--train", metavar="JSON", help="training COCO JSON (data.train)")
    p.add_argument("--images", metavar="DIR", help="its image folder (data.train_images; default: the JSON's folder)")
    p.add_argument("--val", metavar="JSON", help="validation COCO JSON with complete labels (data.val)")
    p.add_argument("--val-images", metavar="DIR", help="data.val_images (default: the JSON's folder)")
    p.add_argument("--unlabelled", metavar="JSON", help="COCO JSON of unlabelled images (mean_teacher, stac, acrst)")
    p.add_argument("--unlabelled-images", metavar="DIR", help="data.unlabelled_images")
    p.add_argument("--hidden", metavar="JSON", help="erased boxes, to measure mined-box quality only (data.hidden)")
    p.add_argument("--out", help="output directory (default: train.out_dir); one holding a model.pt is kept: the run "
                                 "writes to OUT-2, OUT-3, ... instead")
    p.add_argument("--resume", metavar="CKPT", help="resume from a training checkpoint (OUT/checkpoints/last.pt), "
                                                    "writing in place")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override train.device")
    p.set_defaults(func=_cmd_train)
