"""``minedet export``: write an exported model (``OUT/model.pt``) in a deployment format (ONNX)."""

from __future__ import annotations

import argparse

from minedet.errors import MinedetError


def _cmd_export(args: argparse.Namespace) -> int:
    from minedet.export import export_model_file
    from minedet.io import check_outputs

    check_outputs([args.model], files=[args.out])
    size = None if args.image_size is None else _image_size(args.image_size)
    rep = export_model_file(args.model, args.out, fmt=args.format, image_size=size, dynamic=args.dynamic)
    shape = "x".join(str(s) for s in rep.input_shape)
    check = ("" if rep.check_max_score_diff is None else
             f"; ONNX Runtime = PyTorch on {'2 check images' if args.dynamic else 'a check image'} "
             f"({rep.check_detections} detections, max score difference {rep.check_max_score_diff:.1g})")
    print(f"{rep.kind} -> {rep.path} ({rep.size_bytes / 1e6:.1f} MB, input float32[{shape}] RGB in [0, 1], "
          f"short side resized to {rep.image_size} px{check})")
    return 0


def _image_size(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise MinedetError(f"--image-size must be a whole number of pixels, got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a trained model as ONNX (runs in ONNX Runtime, no PyTorch)",
                       description="Export OUT/model.pt of minedet train as one ONNX graph: resize + normalisation, "
                                   "backbone, heads, box decoding and NMS. Input 'image' float32[3, H, W] RGB in [0, 1], "
                                   "any H and W (the graph resizes internally; --no-dynamic fixes it to N x N), ONE image "
                                   "per run: the graph has no batch axis, so run it once per image (minedet predict "
                                   "does; a [B, 3, H, W] input is refused). Outputs 'boxes' [D, 4] (x1, y1, x2, y2 in "
                                   "input-image pixels), 'scores' [D], 'labels' [D] (0..K-1 in the model's class "
                                   "order); the graph drops detections at or below the model's score_thresh (metadata "
                                   "'score_thresh'). Class names and the minedet version are in the model's metadata. "
                                   "Needs pip install 'minedet[onnx]'.")
    p.add_argument("model", help="exported model file (model.pt)")
    p.add_argument("--format", default="onnx", help="output format (only 'onnx' for now; default onnx)")
    p.add_argument("--out", required=True, help="the file to write (e.g. model.onnx)")
    p.add_argument("--image-size", default=None, metavar="N",
                   help="short side the graph resizes images to (default: the model's training size); "
                        "with --no-dynamic the graph takes N x N images only")
    p.add_argument("--dynamic", action=argparse.BooleanOptionalAction, default=True,
                   help="accept images of any height and width (default); --no-dynamic: N x N images only")
    p.set_defaults(func=_cmd_export)
