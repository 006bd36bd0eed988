"""Seeding without side effects: the global RNG seeded inside a block and restored after it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Global RNG (CPU, and ``device``'s when it is a GPU) seeded by ``seed`` inside, restored outside:
    what runs inside (initialisation, dropout, augmentation) does not move the caller's random stream."""
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
