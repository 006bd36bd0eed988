"""Ranks and devices: the leaf of the engine that methods may import (DESIGN.md, layering).

:class:`DistInfo` says which process this is; :func:`setup_device` picks the device and joins the
``torchrun`` process group; :func:`labelling_info` is where a method labels data outside the
training step (the GPU this process uses if any, sharded under DDP).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from minedet.errors import MinedetError
from minedet.io import atomic_open


# ------------------------------------------------------------------------------------------- devices
@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_device(kind: str = "auto", *, quiet: bool = False) -> DistInfo:
    """Pick the device and, under ``torchrun`` (WORLD_SIZE > 1), join the process group
    (NCCL on CUDA, gloo on CPU). With no GPU, ``auto`` falls back to CPU with one line."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if kind not in ("auto", "cpu", "cuda"):
        raise MinedetError(f"device must be auto, cpu or cuda, got {kind!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise MinedetError("device=cuda was asked for but no CUDA GPU is available")
    use_cuda = kind == "cuda" or (kind == "auto" and torch.cuda.is_available())
    if kind == "auto" and not use_cuda and rank == 0 and not quiet:
        print("minedet: no CUDA GPU found; training on the CPU", file=sys.stderr)
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local, device)


def channels_last(setting: bool | str, device: torch.device) -> bool:
    """Whether a model runs with its 4-D weights (so its activations) in channels-last order (``train.channels_last``
    when training; ``auto`` for a loaded model): ``auto`` is on for the CPU, where a RetinaNet + EfficientNet-Lite0
    training step takes about four fifths of the time (``benchmarks/bench_loader.py``: digits at 128 px; the same
    losses), and off for CUDA, not measured here."""
    if setting == "auto":
        return device.type == "cpu"
    if not isinstance(setting, bool):
        raise MinedetError(f"train.channels_last must be auto, true or false, got {setting!r}")
    return setting


def all_reduce_flag(flag: bool, info: DistInfo) -> bool:
    """True on every rank if it is True on any rank."""
    if info.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def labelling_info() -> DistInfo:
    """Where to label data outside the step: the GPU this process uses if there is one; the
    process group's rank and size under DDP."""
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), device.index or 0, device)
    return DistInfo(device=device)


def write_json_main(info: DistInfo, path: Path, obj: dict) -> None:
    if info.main:
        with atomic_open(path, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)


def is_main_process() -> bool:
    """Rank 0 of a DDP run, or the one process of a plain run (where a run writes what only one process may)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
