"""Small builders shared by the tests: a tiny FPN backbone and tiny detectors that run in milliseconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch
import yaml
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from minedet.engine.checkpoint import load_checkpoint
from minedet.models.build import DetectorSpec, build_detector
from minedet.structures import Target


class TinyFPN(nn.Module):
    """Three conv stages (strides 8, 16, 32) + torchvision's FPN; ``extra`` = "p6p7" or "pool"."""

    def __init__(self, channels: int = 16, extra: str = "p6p7") -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, 4, 1), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2, 1), nn.ReLU())
        self.s16 = nn.Sequential(nn.Conv2d(channels, channels, 3, 2, 1), nn.ReLU())
        self.s32 = nn.Sequential(nn.Conv2d(channels, channels, 3, 2, 1), nn.ReLU())
        block = LastLevelP6P7(channels, channels) if extra == "p6p7" else LastLevelMaxPool()
        self.fpn = FeaturePyramidNetwork([channels] * 3, channels, extra_blocks=block)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        c3 = self.stem(x)
        c4 = self.s16(c3)
        c5 = self.s32(c4)
        return self.fpn(OrderedDict([("0", c3), ("1", c4), ("2", c5)]))


def tiny_detector(name: str, num_classes: int = 3, image_size: int = 64, seed: int = 0, **spec_kw):
    torch.manual_seed(seed)
    extra = "pool" if name == "faster_rcnn" else "p6p7"
    spec = DetectorSpec(name=name, num_classes=num_classes, image_size=image_size, max_size=image_size,
                        fpn_channels=32, anchor_scale=2.0, **spec_kw)
    return build_detector(spec, backbone=TinyFPN(32, extra))


def random_targets(n_images: int, image_size: int = 64, num_classes: int = 3, seed: int = 0, empty: tuple[int, ...] = ()):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_images):
        n = 0 if i in empty else int(torch.randint(1, 4, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * (image_size * 0.6)
        wh = 8 + torch.rand(n, 2, generator=g) * (image_size * 0.35)
        boxes = torch.cat([xy, (xy + wh).clamp(max=image_size - 1)], 1)
        labels = torch.randint(0, num_classes, (n,), generator=g)
        out.append(Target(boxes, labels, image_id=i))
    return out


def kill_mid_run(cfg, tmp_path: Path, *, min_saves: int) -> int:
    """Run ``python -m minedet train`` on ``cfg`` and SIGKILL it once ``min_saves`` checkpoints have
    been written (seen as new files replacing ``last.pt``). Returns the step of the checkpoint left."""
    cfg_path = tmp_path / "killed.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.as_dict()))
    last = Path(cfg.train.out_dir) / "checkpoints" / "last.pt"
    # the same torch thread count as this process (which resumes the run): float sums depend on it
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "minedet", "train", str(cfg_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    seen: set[int] = set()
    try:
        deadline = time.time() + 240
        while len(seen) < min_saves and time.time() < deadline and proc.poll() is None:
            try:
                seen.add(os.stat(last).st_ino)  # atomic rename: every save is a new inode
            except FileNotFoundError:
                pass
            if len(seen) < min_saves:
                time.sleep(0.02)
        assert last.exists(), "the run never wrote a checkpoint"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    return int(load_checkpoint(last)["step"])
