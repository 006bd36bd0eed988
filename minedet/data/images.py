"""Reading image files without PyTorch: one decoder guard that every image path goes through
(:func:`minedet.data.datasets.load_image` for training and evaluation, ``minedet predict`` on an
``.onnx`` model, which never imports torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from minedet.errors import MinedetError


def read_rgb(path: str | Path, *, file: str | None = None, record: str | None = None) -> np.ndarray:
    """RGB uint8[H, W, 3] of an image file; a missing or undecodable file is a MinedetError.

    Any decoder failure counts: besides ``OSError`` (truncated / unidentified files) Pillow raises
    ``SyntaxError`` for some broken PNG chunks and ``DecompressionBombError`` for images declaring
    more than twice ``Image.MAX_IMAGE_PIXELS``; all are a bad *file*, not a bug.
    """
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - every decoder failure of an untrusted file is one line
        reason = str(e).splitlines()[0][:120] if str(e) else ""
        raise MinedetError(f"cannot read image {path}: {e.__class__.__name__}" + (f" ({reason})" if reason else ""),
                           file=file, record=record) from None
    return arr


def to_chw_float(arr: np.ndarray) -> np.ndarray:
    """uint8[H, W, 3] -> float32[3, H, W] in [0, 1] (the detector's input; ``load_image`` as numpy)."""
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)
