"""Checkpoints: atomic writes, safe loads (``weights_only=True``), and the exported plain detector.

Two kinds of file:

* a *training checkpoint* (``checkpoints/last.pt``): method state (student, teacher, ...),
  optimiser, scheduler, RNG states and step — what ``--resume`` needs;
* an *exported model* (``model.pt``): ``{"format": "minedet-model", "spec": DetectorSpec dict,
  "model": torchvision detector state_dict, "meta": {...}}`` — what eval / predict / mine load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from minedet.engine.dist import channels_last
from minedet.errors import MinedetError
from minedet.io import load_checkpoint, save_torch_atomic

MODEL_FORMAT = "minedet-model"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    save_torch_atomic(path, state)


#: what a training checkpoint (``OUT/checkpoints/last.pt``) must hold for ``--resume``
TRAINING_KEYS = ("step", "method", "optimizer", "scheduler")


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """:func:`load_checkpoint`, then check the file is a *training* checkpoint (not an exported
    ``model.pt``, not some other torch file); otherwise one MinedetError saying what to pass."""
    ck = load_checkpoint(path)
    if ck.get("format") == MODEL_FORMAT:
        raise MinedetError("this is an exported model (for eval / predict / method.teacher), not a training "
                           "checkpoint: resume from OUT/checkpoints/last.pt", file=str(path))
    missing = [k for k in TRAINING_KEYS if k not in ck]
    if missing:
        raise MinedetError(f"not a minedet training checkpoint (no {', '.join(missing)})", file=str(path))
    return ck


def export_model(path: str | Path, detector, meta: dict | None = None) -> None:
    """Write the plain detector (the one used at inference) with its spec."""
    save_torch_atomic(path, {
        "format": MODEL_FORMAT,
        "spec": detector.spec.as_dict(),
        "model": detector.model.state_dict(),
        "meta": meta or {},
    })


def load_model(path: str | Path, *, device: str | torch.device = "cpu"):
    """Rebuild a detector from an exported model file (or from a training checkpoint's
    exported copy). A file for another model or class count is a one-line MinedetError."""
    from minedet.models.build import build_detector
    from minedet.models.spec import DetectorSpec

    obj = load_checkpoint(path)
    if obj.get("format") != MODEL_FORMAT:
        raise MinedetError(
            "not an exported minedet model (train writes one as model.pt beside checkpoints/)", file=str(path)
        )
    if not isinstance(obj.get("spec"), dict) or not isinstance(obj.get("model"), dict):
        raise MinedetError("exported model lacks its spec or its weights (keys 'spec' and 'model')", file=str(path))
    try:
        spec = DetectorSpec.from_saved(obj["spec"])
        names = list(spec.class_names)
        if names and len(names) != spec.num_classes:
            raise MinedetError(f"num_classes={spec.num_classes} but {len(names)} class names")
        det = build_detector(spec, pretrained=False)
    except MinedetError as e:
        raise MinedetError(f"model spec is not understood ({e})", file=str(path)) from None
    except (TypeError, ValueError, KeyError) as e:
        raise MinedetError(f"model spec is not understood ({e.__class__.__name__}: {e})", file=str(path)) from None
    try:
        det.model.load_state_dict(obj["model"])
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise MinedetError(f"weights do not fit the model in the spec ({lines[1] if len(lines) > 1 else lines[0]})", file=str(path)) from None
    det.to(device)
    if channels_last("auto", torch.device(device)):  # faster on the CPU, the same detections to float rounding
        det.to(memory_format=torch.channels_last)
    return det.eval(), obj.get("meta", {})
