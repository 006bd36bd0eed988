"""A same-seed re-run reproduces its numbers bit for bit at the same torch thread count (the
benchmarks pin it with --threads and record it in each record's origin)."""

from __future__ import annotations

import json

import torch


def _losses(out) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]


def test_same_seed_and_threads_give_identical_training(tiny_digits, tmp_path):
    from minedet.run import run_training
    from tests.conftest import tiny_config

    threads = torch.get_num_threads()
    try:
        runs = []
        for name in ("a", "b"):
            cfg = tiny_config(tiny_digits, tmp_path / name, train__threads=1, train__ckpt_every=0, train__max_steps=3)
            run_training(cfg, quiet=True)
            runs.append(_losses(tmp_path / name))
        assert len(runs[0]) == 3 and runs[0] == runs[1]
        other = tiny_config(tiny_digits, tmp_path / "c", train__threads=1, train__ckpt_every=0, train__max_steps=3,
                            train__seed=1)
        run_training(other, quiet=True)
        assert _losses(tmp_path / "c") != runs[0], "the seed matters"
    finally:
        torch.set_num_threads(threads)
