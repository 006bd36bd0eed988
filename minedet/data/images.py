"""Reading image files without PyTorch: one decoder guard that every image path goes through
(:func:`minedet.data.datasets.load_image` for training and evaluation, ``minedet predict`` on an
``.onnx`` model, which never imports torch)."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile

from minedet.errors import MinedetError


FOLLOW_LINKS_ENV = "MINEDET_FOLLOW_LINKS"
#: the most pixels an image may have (Pillow's bomb limit by default, about 89 Mpx); a larger orthomosaic meant for
#: ``minedet data tile`` is read after ``MINEDET_MAX_PIXELS=<n>`` raises it
MAX_PIXELS_ENV = "MINEDET_MAX_PIXELS"


def _max_pixels() -> int | None:
    raw = os.environ.get(MAX_PIXELS_ENV)
    if raw is None:
        return Image.MAX_IMAGE_PIXELS
    try:
        n = int(raw)
    except ValueError:
        raise MinedetError(f"{MAX_PIXELS_ENV}={raw!r} must be a whole number of pixels") from None
    if n < 1:
        raise MinedetError(f"{MAX_PIXELS_ENV}={raw!r} must be at least 1")
    return n


def _inside_root(path: Path, root: str | Path, file: str | None, record: str | None) -> None:
    """A file under an image root must stay there once symlinks are followed (as ``file_name`` may not
    climb out with ``..``): a link inside the root to a file outside it is refused, unless the environment
    sets MINEDET_FOLLOW_LINKS=1."""
    if os.environ.get(FOLLOW_LINKS_ENV) == "1":
        return
    real, real_root = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    if real != real_root and real_root not in real.parents:
        raise MinedetError(f"image {str(path)!r} is a symlink to {str(real)!r}, outside the image root {str(root)!r}: "
                           f"refused (copy the file in, or set {FOLLOW_LINKS_ENV}=1 to follow such links)",
                           file=file, record=record)


@contextlib.contextmanager
def open_image(path: str | Path, *, root: str | Path | None = None, file: str | None = None,
               record: str | None = None) -> Iterator[Image.Image]:
    """The one guard every image file goes through: ``with open_image(p) as im`` gives Pillow's image
    (header read; decode inside the block), and any failure is one MinedetError line naming the file:
    missing, not an image, truncated (Pillow's ``LOAD_TRUNCATED_IMAGES`` is off for the block), more pixels
    than ``MINEDET_MAX_PIXELS`` (default Pillow's ``Image.MAX_IMAGE_PIXELS``: a decompression bomb; Pillow's
    warning is an error here), a symlink out of ``root`` (:func:`_inside_root`)."""
    path = Path(path)
    if root is not None:
        _inside_root(path, root, file, record)
    limit = _max_pixels()
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        truncated, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, limit
        try:
            with Image.open(path) as im:
                yield im
        except MinedetError:
            raise
        except Exception as e:  # noqa: BLE001 - every decoder failure of an untrusted file is one line
            reason = str(e).splitlines()[0][:160] if str(e) else ""
            raise MinedetError(f"image file {str(path)!r} cannot be decoded ({e.__class__.__name__}"
                               + (f": {reason})" if reason else ")"), file=file, record=record) from None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = truncated
            Image.MAX_IMAGE_PIXELS = pillow_limit


def read_rgb(path: str | Path, *, root: str | Path | None = None, file: str | None = None,
             record: str | None = None) -> np.ndarray:
    """RGB uint8[H, W, 3] of an image file, fully decoded through :func:`open_image`."""
    with open_image(path, root=root, file=file, record=record) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_size(path: str | Path, *, root: str | Path | None = None, file: str | None = None, record: str | None = None,
              decode: bool = False) -> tuple[int, int]:
    """``(width, height)`` of an image file through :func:`open_image`: from its header, or with ``decode``
    after decoding every pixel (a truncated file fails here, not later)."""
    with open_image(path, root=root, file=file, record=record) as im:
        if decode:
            im.load()
        return im.size


def to_chw_float(arr: np.ndarray) -> np.ndarray:
    """uint8[H, W, 3] -> float32[3, H, W] in [0, 1] (the detector's input; ``load_image`` as numpy)."""
    return np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)
