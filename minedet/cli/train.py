"""``minedet train``: parse the arguments and run :func:`minedet.run.run_training`."""

from __future__ import annotations

import argparse
import os

from minedet.cli.registry import method_options_help
from minedet.config import load_config, preset_path
from minedet.run import print_reports, run_training


# --------------------------------------------------------------------------------------------- CLI
def _cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(preset_path(args.config), args.overrides)
    if args.out:
        cfg.train.out_dir = args.out
    if args.device:
        cfg.train.device = args.device
    result = run_training(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print_reports(result)
        print(f"\nmodel: {result['model']}\nlogs: {result['out_dir']}/metrics.jsonl, TensorBoard: {result['out_dir']}/tb")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a detector with a method from a YAML config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train a detector from a YAML config (sections data/model/method/train) or a preset name\n"
            "shipped with minedet (e.g. digits_retinanet, digits_fcos, digits_faster_rcnn).\n"
            "Writes OUT/checkpoints/last.pt (resumable), OUT/model.pt (the plain detector),\n"
            "OUT/metrics.jsonl, OUT/tb (TensorBoard) and OUT/eval.json.\n"
            "Multi-GPU: torchrun --nproc_per_node N -m minedet train CONFIG ...\n\n"
            "Methods and their options (set with method.KEY=VALUE):\n" + method_options_help()
        ),
    )
    p.add_argument("config", help="YAML config file or preset name")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. train.max_steps=500 method.name=co_mining")
    p.add_argument("--out", help="output directory (default: train.out_dir)")
    p.add_argument("--resume", metavar="CKPT", help="resume from a training checkpoint (OUT/checkpoints/last.pt)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override train.device")
    p.set_defaults(func=_cmd_train)
