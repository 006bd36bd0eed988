"""Run a minedet ONNX export with ONNX Runtime: numpy in, numpy out, no PyTorch.

:class:`OnnxModel` is what ``minedet predict model.onnx`` runs (the deployment path: ``onnxruntime``,
numpy and Pillow only; importing this module never imports torch).
:class:`minedet.export.OnnxDetector` wraps it with the PyTorch adapter's ``predict`` interface for
the rest of the library (``minedet eval``, tiled prediction).

The graph (see :mod:`minedet.export`) takes **one** image per run: input ``image`` float32[3, H, W],
RGB in [0, 1]; it resizes internally, so a dynamic export takes any H and W (a static one only its
export size). It has no batch axis: a batch is one run per image (a 4-D input is refused in one line,
not passed to ONNX Runtime). Outputs ``boxes`` float32[D, 4] (x1, y1, x2, y2, input-image pixels),
``scores`` float32[D], ``labels`` int64[D] (class index 0..K-1), best first.

Devices (``device``): ``"cpu"`` runs ONNX Runtime's CPUExecutionProvider; ``"cuda"`` asks for its
CUDAExecutionProvider and **refuses** in one line when this onnxruntime has none (the CPU build;
``pip install onnxruntime-gpu``) or the session could not start it, rather than running on the CPU
unasked; ``"auto"`` takes CUDA when the session starts it, else the CPU.

Score threshold: the graph drops detections scoring at or below the threshold it was exported
with (``score_thresh`` in the metadata). :meth:`OnnxModel.run` keeps every detection the graph
returns when given no threshold, and refuses a threshold below the graph's (detections the graph
already dropped cannot come back).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from minedet.errors import MinedetError

ONNX_FORMAT = "minedet-onnx"
DEVICES = ("auto", "cpu", "cuda")
_CUDA, _CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def need_onnxruntime():
    """The ``onnxruntime`` module, or one MinedetError saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise MinedetError("running an .onnx model needs onnxruntime: pip install 'minedet[onnx]'") from None
    return onnxruntime


def _providers(ort, device: str, file: str) -> list[str]:
    if device not in DEVICES:
        raise MinedetError(f"device must be one of {', '.join(DEVICES)}, got {device!r}", file=file)
    has_cuda = _CUDA in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise MinedetError("--device cuda: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu, "
                           "or use --device cpu)", file=file)
    return [_CUDA, _CPU] if device in ("cuda", "auto") and has_cuda else [_CPU]


class OnnxModel:
    """An ``.onnx`` file written by ``minedet export``, run by ONNX Runtime.

    Args:
        path: the file.
        device: "cpu" | "cuda" | "auto" (module docstring).
        threads: ONNX Runtime intra-op threads (0 = its default, all cores).

    Attributes:
        metadata: the model's ``metadata_props`` (strings).
        spec: the exported detector's spec as a dict (``minedet.models.spec.DetectorSpec`` fields).
        class_names, kind: from the metadata.
        input_shape: [3, N, N] (static export) or [3, "height", "width"] (dynamic).
        score_thresh: the graph drops detections scoring at or below it.
        device: "cuda" or "cpu", where the session runs.
    """

    def __init__(self, path: str | Path, *, device: str = "cpu", threads: int = 0) -> None:
        self.path = Path(path)
        f = str(self.path)
        if not self.path.is_file():
            raise MinedetError("ONNX model file not found", file=f)
        ort = need_onnxruntime()
        providers = _providers(ort, device, f)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(f, sess_options=opts, providers=providers)
        except Exception as e:  # noqa: BLE001 - any unreadable file is one line
            msg = str(e).splitlines()[0][:160] if str(e) else ""
            raise MinedetError(f"not a readable ONNX model ({e.__class__.__name__}: {msg})", file=f) from None
        self.device = "cuda" if _CUDA in self.session.get_providers() else "cpu"
        if device == "cuda" and self.device != "cuda":  # the provider exists but could not start (no GPU, no CUDA libs)
            raise MinedetError("--device cuda: ONNX Runtime could not start its CUDAExecutionProvider here "
                               "(no GPU or CUDA libraries); use --device cpu", file=f)
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        if self.metadata.get("minedet_format") != ONNX_FORMAT:
            raise MinedetError("not an ONNX model exported by minedet (no minedet_format in its metadata; "
                               "write one with minedet export MODEL.pt --format onnx)", file=f)
        try:
            self.spec: dict[str, Any] = dict(json.loads(self.metadata["spec"]))
            self.input_shape: list = list(json.loads(self.metadata["input_shape"]))
            self.score_thresh = float(self.metadata["score_thresh"])
            self.class_names = [str(n) for n in self.spec["class_names"]]
        except (KeyError, TypeError, ValueError) as e:
            raise MinedetError(f"the minedet metadata of this ONNX model is not understood ({e.__class__.__name__}: {e})",
                               file=f) from None
        self.kind = self.metadata.get("kind", str(self.spec.get("name", "?")))

    def check_image(self, shape: tuple[int, ...] | list[int]) -> None:
        """MinedetError unless an image of ``shape`` is one the graph takes (one float[3, H, W])."""
        shape = [int(s) for s in shape]
        static = all(isinstance(s, int) for s in self.input_shape)
        if len(shape) == 4:
            rule = "takes one image [3, H, W] per run (no batch axis); run it once per image"
        elif len(shape) != 3 or shape[0] != 3 or (static and shape != list(self.input_shape)):
            rule = (f"takes images of shape {self.input_shape} only (re-export without --no-dynamic for any size)"
                    if static else "takes images of shape [3, H, W]")
        else:
            return
        raise MinedetError(f"the model {rule}; this image is {shape}", file=str(self.path))

    def check_score(self, score_thresh: float | None) -> None:
        """MinedetError when ``score_thresh`` is below the graph's own threshold (module docstring)."""
        if score_thresh is not None and score_thresh < self.score_thresh:
            raise MinedetError(f"the graph drops detections scoring <= {self.score_thresh:g}; a score threshold of "
                               f"{score_thresh:g} needs a model exported with a lower model score_thresh "
                               f"(leave --score out to use the graph's {self.score_thresh:g})", file=str(self.path))

    def run(self, image: np.ndarray, *, score_thresh: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Detections of one image float32[3, H, W] in [0, 1]: ``(boxes float32[D, 4] xyxy input-image
        pixels, scores float32[D], labels int64[D] in 0..K-1)``, best first; with ``score_thresh``
        only those scoring above it."""
        self.check_image(image.shape)
        self.check_score(score_thresh)
        arr = np.ascontiguousarray(image, dtype=np.float32)
        boxes, scores, labels = self.session.run(None, {"image": arr})
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        scores = np.asarray(scores, np.float32).reshape(-1)
        labels = np.asarray(labels).astype(np.int64).reshape(-1)
        if score_thresh is not None:
            keep = scores > score_thresh
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        return boxes, scores, labels
