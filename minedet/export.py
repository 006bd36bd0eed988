"""Ship a trained detector: export to ONNX and run the exported file with ONNX Runtime.

:func:`export_onnx` writes the *whole* detector as one ONNX graph: torchvision's own inference
forward (``GeneralizedRCNNTransform`` resize + normalisation, backbone, heads, box decoding,
score threshold, per-level top-k, class-wise NMS, the resize of the boxes back to the input
frame), traced by PyTorch's TorchScript-based ONNX exporter (``torch.onnx.export(dynamo=False)``,
opset 17); torchvision's detection code is written to be traced by it (``_script_if_tracing``
NMS, ONNX-friendly top-k). Nothing runs outside the graph. One piece is replaced: the resize
(:class:`_InferenceGraph` computes the resized size in float64 as eager PyTorch does; torchvision's
traced resize computes it in float32 and lands one pixel off whenever ``side * scale`` is near an
integer, which moves every box).

The graph, for one image:

* input ``image``: float32[3, H, W], RGB in [0, 1] (what :func:`minedet.data.datasets.load_image`
  returns), **one image per run** (no batch axis: run the graph once per image); any H and W by
  default (``dynamic=True``: the graph resizes internally), only ``[3, N, N]`` with ``dynamic=False``.
* outputs ``boxes`` float32[D, 4] ([x1, y1, x2, y2] in input-image pixels), ``scores``
  float32[D] and ``labels`` int64[D] (class index ``0..K-1``, the order of the class names), best
  first, D <= ``detections_per_img``.

The model's metadata (``metadata_props``) holds ``minedet_format`` (``"minedet-onnx"``),
``minedet_version``, ``class_names`` (JSON list), ``spec`` (the :class:`DetectorSpec` as JSON),
``image_size``, ``input_shape`` (JSON ``[3, N, N]`` or ``[3, "height", "width"]``) and
``score_thresh`` (the score below which the graph drops detections).

:class:`minedet.onnx_runtime.OnnxModel` runs such a file through ``onnxruntime`` (``pip install
'minedet[onnx]'``) with numpy only: ``minedet predict model.onnx`` never imports torch.
:class:`OnnxDetector` wraps it and returns the same :class:`~minedet.structures.Target` detections as
the PyTorch adapter's ``predict``, so ``minedet eval`` and tiled prediction take a ``.onnx`` file as
they take a ``model.pt``.

Why not the dynamo exporter (``dynamo=True``): with the pinned torch, ``torch.export`` fails on
torchvision's RetinaNet (a guard on data-dependent shapes in the post-processing); the
TorchScript exporter traces all three detectors, and :func:`export_onnx` checks the written file
against PyTorch before it keeps it.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from minedet.errors import MinedetError
from minedet.onnx_runtime import ONNX_FORMAT, need_onnxruntime
from minedet.structures import Target

#: the ONNX opset the graph is written in (ONNX Runtime >= 1.12 runs it)
OPSET = 17
#: export formats ``minedet export --format`` knows
FORMATS = ("onnx",)
#: the smallest image size (short side, px) an export accepts: one block of the 32-px padding
#: torchvision's transform applies; a smaller image leaves the stride-32 map without a cell of image
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 4096


def _need_onnx():
    try:
        import onnx
    except ImportError:
        raise MinedetError("ONNX export needs the onnx package: pip install 'minedet[onnx]'") from None
    return onnx


class _PresizedTransform(GeneralizedRCNNTransform):
    """torchvision's transform (normalise, pad, map boxes back) without its resize: the graph resizes
    first, computing the size as eager PyTorch does (float64), which the traced float32 arithmetic of
    torchvision's resize does not (it lands one pixel off whenever ``side * scale`` is near an integer)."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        return image, target


class _InferenceGraph(nn.Module):
    """torchvision's eval forward for one image, as three tensors (what the ONNX graph computes).

    ``image`` float[3, H, W] in [0, 1] -> (boxes float[D, 4] xyxy input-image pixels,
    scores float[D], labels int64[D] in 0..K-1).
    """

    def __init__(self, model: nn.Module, label_offset: int) -> None:
        super().__init__()
        t = model.transform
        # float64 tensors of shape [1], not Python floats or 0-dim tensors: the exporter types those as
        # float32 scalars, and float32 lands a side one pixel off eager PyTorch's float64 size
        self.register_buffer("min_size", torch.tensor([float(t.min_size[-1])], dtype=torch.float64), persistent=False)
        self.register_buffer("max_size", torch.tensor([float(t.max_size)], dtype=torch.float64), persistent=False)
        model.transform = _PresizedTransform(t.min_size, t.max_size, t.image_mean, t.image_std,
                                             size_divisible=t.size_divisible, fixed_size=t.fixed_size)
        self.model = model
        self.label_offset = label_offset

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        hw = torch._shape_as_tensor(image)[-2:]
        hw64 = hw.to(torch.float64)
        # torchvision's resize rule: short side to min_size, long side at most max_size, sizes floored
        scale = torch.minimum(self.min_size / hw64.amin(0, keepdim=True), self.max_size / hw64.amax(0, keepdim=True))
        new_hw = torch.floor(hw64 * scale).clamp(min=1.0).to(torch.int64)  # a 1 x 3000 image keeps 1 px, as the adapter
        size = (new_hw[0], new_hw[1]) if torch.jit.is_tracing() else (int(new_hw[0]), int(new_hw[1]))
        resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        d = self.model([resized])[0]
        ratio = hw.to(torch.float32) / new_hw.to(torch.float32)  # (h, w) input / resized, as resize_boxes
        boxes = d["boxes"] * torch.stack([ratio[1], ratio[0], ratio[1], ratio[0]])
        return boxes, d["scores"], d["labels"] - self.label_offset


def check_image_size(size: int, *, file: str | None = None) -> int:
    """``size`` if the detector can run at it (a whole number in [32, 4096] px), else MinedetError."""
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise MinedetError(
            f"--image-size must be a whole number of pixels in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] (the detector pads "
            f"images to multiples of {MIN_IMAGE_SIZE} px), got {size!r}", file=file)
    return size


def at_image_size(detector, image_size: int | None) -> nn.Module:
    """A copy of ``detector.model`` (the torchvision detector, eval mode) that resizes images so their
    short side is ``image_size`` px (long side at most ``image_size`` * the spec's max/min ratio);
    ``None`` keeps the model's own (training) size. The adapter and its weights are not changed."""
    model = copy.deepcopy(detector.model).eval()
    if image_size is not None:
        t = model.transform
        ratio = t.max_size / t.min_size[0]
        t.min_size = (int(image_size),)
        t.max_size = int(round(image_size * ratio))
    return model


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how the file compares with PyTorch on a check image.

    Attributes:
        path: the ONNX file.
        kind: "retinanet" | "fcos" | "faster_rcnn".
        image_size: short side (px) the graph resizes images to.
        input_shape: [3, N, N], or [3, "height", "width"] for a dynamic export.
        size_bytes: file size.
        check_detections: detections PyTorch found on the check image (random noise).
        check_max_score_diff: max |score difference| between ONNX Runtime and PyTorch on it
            (None when the counts differ).
        check_min_iou: smallest IoU of corresponding boxes (1.0 when there are none).
    """

    path: Path
    kind: str
    image_size: int
    input_shape: list
    size_bytes: int
    check_detections: int
    check_max_score_diff: float | None
    check_min_iou: float | None


def export_onnx(
    detector,
    out: str | Path,
    *,
    image_size: int | None = None,
    dynamic: bool = True,
    source: str | None = None,
    verify: bool = True,
) -> ExportReport:
    """Write ``detector`` (a :class:`~minedet.models.detector.DetectorAdapter` with ``.spec``) as one
    ONNX graph to ``out`` (atomically: a failure leaves no file, and an existing ``out`` untouched).

    Args:
        detector: the detector; its wrapped torchvision model is exported in eval mode (a copy).
        out: the ``.onnx`` file to write.
        image_size: short side (px) the graph resizes images to; default the model's training size.
        dynamic: the graph takes images of any H and W (the default: it resizes internally);
            ``False``: only [3, N, N] with N = ``image_size``.
        source: the file the detector came from (named in errors).
        verify: run the written file once with ONNX Runtime against PyTorch on a noise image.
    """
    spec = getattr(detector, "spec", None)
    if spec is None:
        raise MinedetError("the detector has no spec (load it with minedet.engine.checkpoint.load_model)", file=source)
    if getattr(detector, "threshold_on", "score") != "score":
        raise MinedetError("an FCOS detector that gates on the class probability (model.extra.threshold_on=class_prob) "
                           "cannot be exported: torchvision's post-processing gates on the rescored score", file=source)
    onnx = _need_onnx()
    size = check_image_size(int(spec.image_size) if image_size is None else image_size, file=source)
    model = at_image_size(detector, size)
    label_offset = 1 if detector.kind == "faster_rcnn" else 0
    graph = _InferenceGraph(copy.deepcopy(model), label_offset).eval()
    g = torch.Generator().manual_seed(0)
    # traced on an image the detector does not resize or pad: the constants torchvision's RoI pooling
    # infers from the first image it sees (feature map / image scales) are then the true strides
    example = torch.rand(3, size, size, generator=g)
    proto = _trace(graph, example, dynamic, onnx, source)
    input_shape: list = [3, "height", "width"] if dynamic else [3, size, size]
    _stamp(proto, detector.kind, spec, size, input_shape, source)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    report = ExportReport(Path(out), detector.kind, size, input_shape, len(data), 0, None, None)
    if verify:
        checks = [example]
        if dynamic:  # and an image of another shape, which the resize and the padding change
            checks.append(torch.rand(3, size * 3 // 4 + 5, size + 13, generator=g))
        _verify(data, model, label_offset, checks, report, source)
    from minedet.io import write_bytes_atomic

    write_bytes_atomic(out, data)
    return report


def _trace(graph: nn.Module, example: Tensor, dynamic: bool, onnx, source: str | None):
    """Trace ``graph`` on ``example`` into an ONNX ModelProto (an exporter failure is one line)."""
    axes = {"boxes": {0: "detections"}, "scores": {0: "detections"}, "labels": {0: "detections"}}
    if dynamic:
        axes["image"] = {1: "height", 2: "width"}
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's notes on torchvision's ONNX-aware code
            torch.onnx.export(graph, (example,), buf, dynamo=False, opset_version=OPSET, input_names=["image"],
                              output_names=["boxes", "scores", "labels"], dynamic_axes=axes, do_constant_folding=True)
    except MinedetError:
        raise
    except Exception as e:  # noqa: BLE001 - an exporter failure is one line naming the model
        msg = str(e).splitlines()[0][:200] if str(e) else ""
        raise MinedetError(f"the ONNX exporter failed ({e.__class__.__name__}: {msg})", file=source) from None
    return onnx.load_from_string(buf.getvalue())


def _stamp(proto, kind: str, spec, size: int, input_shape: list, source: str | None) -> None:
    """The file's metadata: what ``minedet predict`` and other runtimes need to use the graph."""
    from minedet import __version__

    meta = {
        "minedet_format": ONNX_FORMAT,
        "minedet_version": __version__,
        "kind": kind,
        "class_names": json.dumps(list(spec.class_names)),
        "spec": json.dumps(spec.as_dict()),
        "image_size": str(size),
        "input_shape": json.dumps(input_shape),
        "score_thresh": repr(float(spec.score_thresh)),
        "source": "" if source is None else Path(source).name,
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "minedet"
    proto.producer_version = __version__


def _verify(data: bytes, model: nn.Module, label_offset: int, images: list[Tensor], report: ExportReport,
            source: str | None) -> None:
    """Fill the report's check fields: ONNX Runtime on ``data`` vs PyTorch ``model`` on ``images``; a
    disagreement (other counts, a box with IoU < 0.99 or a score off by > 1e-3) is a MinedetError."""
    ort = need_onnxruntime()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    report.check_detections, report.check_max_score_diff, report.check_min_iou = 0, 0.0, 1.0
    max_det = model.roi_heads.detections_per_img if hasattr(model, "roi_heads") else model.detections_per_img
    for image in images:
        boxes, scores, labels = sess.run(None, {"image": image.numpy()})
        with torch.no_grad():
            ref = model([image])[0]
        ref_t = Target(ref["boxes"], ref["labels"] - label_offset, ref["scores"])
        got = Target(torch.from_numpy(boxes), torch.from_numpy(labels), torch.from_numpy(scores))
        if len(got) != len(ref_t):
            raise MinedetError(f"the exported graph disagrees with PyTorch on a check image of shape {list(image.shape)} "
                               f"({len(got)} vs {len(ref_t)} detections); nothing written", file=source)
        m = match_detections(ref_t, got, above=cut_score(ref_t, max_det))
        report.check_detections += m["a"]
        report.check_max_score_diff = max(report.check_max_score_diff, m["max_score_diff"])
        report.check_min_iou = min(report.check_min_iou, m["min_iou"])
        if not m["a"] == m["b"] == m["matched"] or m["max_score_diff"] > 1e-3:
            raise MinedetError(f"the exported graph disagrees with PyTorch on a check image of shape {list(image.shape)} "
                               f"({m['b']} vs {m['a']} detections, {m['matched']} matched, max score difference "
                               f"{m['max_score_diff']:.2g}); nothing written", file=source)


def match_detections(
    a: Target, b: Target, *, iou: float = 0.99, atol: float = 0.01, above: float | None = None
) -> dict[str, Any]:
    """Match two detection sets of one image one to one: greedily by IoU, same label, pairs >= ``iou``.

    Args:
        a, b: detections (boxes xyxy in the same pixel frame, labels, scores).
        iou: a pair is the same box when its IoU is at least this ...
        atol: ... or when all four corners agree to ``atol`` px (a sliver 0.01 px wide has IoU 0.5
            with itself moved by 0.005 px, and 0/0 when it has no area); such a pair counts as IoU 1.
        above: compare only the detections scoring above this in both sets: when ``a`` is cut at
            ``detections_per_img``, detections tied with the last one are kept by either side at random,
            so a comparison skips those within a hair of the cut (see :func:`cut_score`).
    Returns:
        ``{"a": len(a), "b": len(b), "matched": pairs, "min_iou": smallest IoU of a pair (1.0 if none),
        "max_score_diff": largest |score difference| of a pair (0.0 if none)}``; the sets are the same
        when ``matched == a == b``.
    """
    from torchvision.ops import box_iou

    if above is not None:
        a, b = (Target(t.boxes[t.scores > above], t.labels[t.scores > above], t.scores[t.scores > above]) for t in (a, b))
    out: dict[str, Any] = {"a": len(a), "b": len(b), "matched": 0, "min_iou": 1.0, "max_score_diff": 0.0}
    if len(a) == 0 or len(b) == 0:
        return out
    m = box_iou(a.boxes.float(), b.boxes.float())
    close = (a.boxes.float()[:, None, :] - b.boxes.float()[None, :, :]).abs().amax(-1) <= atol
    m = torch.where(close, torch.ones_like(m), torch.nan_to_num(m, nan=0.0))
    m[a.labels[:, None] != b.labels[None, :]] = -1.0
    ious, diffs = [], []
    while True:
        best = int(torch.argmax(m))
        i, j = divmod(best, m.shape[1])
        if float(m[i, j]) < iou:
            break
        ious.append(float(m[i, j]))
        diffs.append(abs(float(a.scores[i]) - float(b.scores[j])))
        m[i, :] = -1.0
        m[:, j] = -1.0
    out.update(matched=len(ious), min_iou=min(ious, default=1.0), max_score_diff=max(diffs, default=0.0))
    return out


def cut_score(reference: Target, detections_per_img: int, margin: float = 1e-3) -> float | None:
    """The score below which a comparison with ``reference`` is unreliable: ``margin`` above its lowest
    score when it holds ``detections_per_img`` detections (it was cut there), else None (nothing cut)."""
    if len(reference) < detections_per_img or len(reference) == 0:
        return None
    return float(reference.scores.min()) + margin


class OnnxDetector:
    """An exported ``.onnx`` detector (:class:`minedet.onnx_runtime.OnnxModel`, which runs it without
    PyTorch) with the adapter's ``predict`` interface: torch images in, :class:`Target` out.

    Args:
        path: a file written by :func:`export_onnx`.
        device: "cpu" | "cuda" | "auto" (:mod:`minedet.onnx_runtime`).
        threads: ONNX Runtime intra-op threads (0 = its default, all cores).

    Attributes:
        model: the :class:`~minedet.onnx_runtime.OnnxModel`.
        spec: the :class:`~minedet.models.spec.DetectorSpec` of the exported detector.
        kind, metadata, input_shape, score_thresh, path: the model's.
    """

    training = False

    def __init__(self, path: str | Path, *, device: str = "cpu", threads: int = 0) -> None:
        from minedet.models.spec import DetectorSpec
        from minedet.onnx_runtime import OnnxModel

        self.model = OnnxModel(path, device=device, threads=threads)
        try:
            self.spec = DetectorSpec.from_saved(self.model.spec)
        except (TypeError, ValueError) as e:
            raise MinedetError(f"the minedet metadata of this ONNX model is not understood ({e.__class__.__name__}: {e})",
                               file=str(self.model.path)) from None
        self.path, self.kind, self.metadata = self.model.path, self.model.kind, self.model.metadata
        self.input_shape, self.score_thresh = self.model.input_shape, self.model.score_thresh
        self.num_classes = self.spec.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names)

    def eval(self) -> "OnnxDetector":
        return self

    def train(self, mode: bool = True) -> "OnnxDetector":
        return self

    def to(self, device: Any) -> "OnnxDetector":
        return self

    def check_image(self, image: Tensor) -> None:
        """MinedetError unless ``image`` is float[3, H, W] of a shape the graph takes."""
        self.model.check_image(tuple(image.shape))

    def predict(self, images: Sequence[Tensor], *, score_thresh: float | None = None, **unused: Any) -> list[Target]:
        """Detections per image float[3, H, W] in [0, 1] (one graph run each): boxes xyxy in input-image
        pixels, labels 0..K-1, scores, best first. ``score_thresh`` keeps detections scoring above it; it
        cannot be lower than the threshold baked into the graph (``self.score_thresh``); None keeps all
        the graph returns."""
        if unused:
            raise MinedetError(f"an ONNX model's decoding is fixed in its graph; cannot set {', '.join(sorted(unused))}",
                               file=str(self.path))
        self.model.check_score(score_thresh)
        out = []
        for image in images:
            self.check_image(image)
            boxes, scores, labels = self.model.run(image.detach().to("cpu", torch.float32).numpy(), score_thresh=score_thresh)
            out.append(Target(torch.from_numpy(boxes), torch.from_numpy(labels), torch.from_numpy(scores)))
        return out

    __call__ = predict


def load_onnx_detector(path: str | Path, device: str = "cpu") -> tuple[OnnxDetector, dict[str, str]]:
    """``(OnnxDetector(path, device=device), meta)`` for ``minedet eval`` and tiled ``predict`` (meta as
    :func:`load_model` returns it)."""
    det = OnnxDetector(path, device=device)
    return det, {"method": "onnx export of " + (det.metadata.get("source") or "?"), "role": "onnx"}


def export_model_file(
    model: str | Path, out: str | Path, *, fmt: str = "onnx", image_size: int | None = None, dynamic: bool = True
) -> ExportReport:
    """``minedet export``: load an exported ``model.pt`` and write it in ``fmt`` to ``out``."""
    if fmt not in FORMATS:
        raise MinedetError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}", file=str(model))
    if image_size is not None:
        check_image_size(image_size, file=str(model))
    if Path(out).resolve() == Path(model).resolve():
        raise MinedetError("--out is the model file itself; choose another path", file=str(out))
    from minedet.engine.checkpoint import load_model

    det, _ = load_model(model)
    return export_onnx(det, out, image_size=image_size, dynamic=dynamic, source=str(model))
