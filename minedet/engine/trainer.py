"""One training loop for every method: the optimiser and schedule it is given (:mod:`minedet.engine.optim`
builds them), gradient clipping and accumulation, a non-finite guard, periodic evaluation, atomic checkpoints
with exact resume, TensorBoard + JSONL metrics, a progress bar, AMP and PyTorch DDP (``torchrun``).

The loop knows nothing about teachers or branches::

    losses = model(batch)              # Method.training_step: weighted, prefixed losses
    total = sum(losses.values())
    ... guard non-finite, backward, clip, step ...
    method.after_step(step)
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from minedet.config import TrainConfig
from minedet.engine.checkpoint import load_training_checkpoint, save_checkpoint
from minedet.engine.optim import optimizer_name
from minedet.errors import MinedetError
from minedet.io import write_text_atomic
from minedet.engine.dist import DistInfo, all_reduce_flag, channels_last
from minedet.methods.base import Method


ESTIMATE_AFTER = 10  # steps timed (after the first) before the progress prints the run's estimated wall time


def _duration(seconds: float) -> str:
    """``40 s``, ``14 min``, ``2.5 h``: a wall time as a reader estimates it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ------------------------------------------------------------------------------------------- logging
class MetricLog:
    """JSONL + TensorBoard on the main process; nothing elsewhere. :meth:`start` opens it at the step training starts
    from: what an earlier attempt logged after that step (an interrupted run resumed from its last checkpoint, or
    started again from step 0) is dropped, so every step is logged once."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.out_dir = out_dir
        self.path = out_dir / "metrics.jsonl"
        self.tb = None
        self.started = False

    def start(self, step: int | None) -> None:
        """Open the log for a run starting after ``step`` (0: a new run): earlier rows past it are dropped, and
        TensorBoard purges its events past it (None: append to whatever is there)."""
        if not self.enabled or self.started:
            return
        self.started = True
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= step] if step else []
            write_text_atomic(self.path, "".join(f"{line}\n" for line in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out_dir / "tb"), purge_step=step + 1 if step else None)
        except ImportError:  # tensorboard is a dependency; keep training if it is broken
            self.tb = None

    def write(self, step: int, values: dict[str, float], kind: str = "train") -> None:
        if not self.enabled:
            return
        if not self.started:  # written outside fit (nothing trains): add to the log as it is
            self.start(None)
        rec = {"step": step, "kind": kind, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()}}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(float(v)):
                    self.tb.add_scalar(f"{kind}/{k}", float(v), step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ------------------------------------------------------------------------------------------- trainer
@dataclass
class _Accumulated:
    """What :meth:`Trainer._accumulate` gathered over one step's micro-batches: the logged loss
    terms (mean over micro-batches), their names, seconds spent waiting for data, whether the step
    must be skipped (a non-finite loss on some rank) and the non-finite terms on this rank."""

    logged: dict[str, float] = field(default_factory=dict)
    loss_keys: set[str] = field(default_factory=set)
    data_time: float = 0.0
    skip: bool = False
    bad_terms: list[str] = field(default_factory=list)


class Trainer:
    """Runs ``method`` for ``cfg.max_steps`` optimiser steps.

    Args:
        method: the training method (an ``nn.Module``); it is wrapped in DDP when ``world > 1``.
        cfg: the ``train`` config section (steps, accumulation, clipping, AMP, intervals).
        optimizer: over ``method``'s trainable parameters (the same parameter objects: moving the method to the
            device and converting to SyncBatchNorm keep them); its kind is recorded in every checkpoint and a
            checkpoint of another kind is not resumed.
        scheduler: ``optimizer``'s learning-rate schedule, stepped once per optimiser step.
        batches: ``batches(start_step) -> iterator`` of batches; it must yield, from
            ``start_step`` on, exactly what an uninterrupted run would (micro-batches when
            ``accumulate > 1``).
        evaluate: ``evaluate(method, step) -> {name: value}`` (called on every rank; it may
            gather), or None.
        out_dir: where checkpoints, metrics.jsonl and tb/ go.
        info: device and process group.
        meta: stored in every checkpoint (config dict, detector spec, class names).
        name: the progress bar's label (``train``, or a pre-stage's name).
    """

    def __init__(
        self,
        method: Method,
        cfg: TrainConfig,
        batches: Callable[[int], Iterator[dict]],
        *,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        out_dir: str | Path,
        info: DistInfo | None = None,
        evaluate: Callable[[Method, int], dict[str, float]] | None = None,
        meta: dict | None = None,
        name: str = "train",
    ) -> None:
        self.method = method
        self.cfg = cfg
        self.batches = batches
        self.evaluate = evaluate
        self.info = info or DistInfo()
        self.out_dir = Path(out_dir)
        self.meta = meta or {}
        self.name = name
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.method.to(self.info.device)
        if channels_last(cfg.channels_last, self.info.device):
            self.method.to(memory_format=torch.channels_last)
        if cfg.sync_bn and self.info.world > 1:
            self.method = nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.model: nn.Module = self.method
        if self.info.world > 1:
            ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.method, device_ids=ids, find_unused_parameters=True)
        self.amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp, "bad")
        if self.amp_dtype == "bad":
            raise MinedetError(f"train.amp must be off, bf16 or fp16, got {cfg.amp!r}")
        if self.info.device.type != "cuda":
            self.amp_dtype = None  # autocast is a CUDA feature here; CPU runs in fp32
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_run = 0
        self.log = MetricLog(self.out_dir, self.info.main)
        self.history: list[dict] = []

    # ---------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {
            "step": self.step,
            "method": self.method.state_dict(),
            "method_extra": self.method.extra_state(),
            "optimizer": self.optimizer.state_dict(),
            "optimizer_name": optimizer_name(self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            "nonfinite_total": self.nonfinite_total,
            "meta": self.meta,
        }

    def save(self, name: str = "last.pt") -> Path | None:
        if not self.info.main:
            return None
        path = self.ckpt_dir / name
        save_checkpoint(path, self.state())
        return path

    def resume(self, path: str | Path) -> None:
        ck = load_training_checkpoint(path)
        saved_opt = ck.get("optimizer_name")
        if saved_opt is None:  # older files: tell the optimiser by its hyper-parameter names
            groups = ck["optimizer"].get("param_groups") or [{}]
            saved_opt = "adamw" if "betas" in groups[0] else "sgd"
        if saved_opt != optimizer_name(self.optimizer):
            raise MinedetError(f"checkpoint was trained with train.optimizer={saved_opt}, this run uses "
                               f"{optimizer_name(self.optimizer)}; resume with the same optimizer", file=str(path))
        try:
            self.method.load_state_dict(ck["method"])
        except RuntimeError as e:
            first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
            raise MinedetError(f"checkpoint does not fit this model ({first})", file=str(path)) from None
        self.method.load_extra_state(ck.get("method_extra", {}))
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.step = int(ck["step"])
        self.nonfinite_total = int(ck.get("nonfinite_total", 0))
        self._rng = ck["rng"]

    def _restore_rng(self) -> None:
        rng = getattr(self, "_rng", None)
        if rng is None:
            return
        torch.set_rng_state(rng["torch"])
        random.setstate((3, tuple(rng["python"]), rng["python_pos"]))
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    # ---------------------------------------------------------------- the loop
    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.info.device.type, dtype=self.amp_dtype)

    def fit(self) -> dict:
        """Train from ``self.step`` to ``cfg.max_steps`` (:meth:`_train_step` each), then save
        ``last.pt`` and evaluate once more when an ``evaluate`` was given. With the progress bar on, the
        run's estimated wall time is printed once, after the first step and :data:`ESTIMATE_AFTER` more.

        Returns:
            ``{"steps", "wall_s", "nonfinite_steps"}`` plus ``"eval"`` (the final metrics) when evaluating.
        """
        cfg = self.cfg
        self.log.start(self.step)
        it = self.batches(self.step)
        self._restore_rng()  # after the loader is made: its creation draws from the global RNG
        bar = None
        if self.info.main and cfg.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.step, desc=self.name, unit="step", dynamic_ncols=True, file=sys.stderr)
        last_eval: dict[str, float] = {}
        t0 = time.perf_counter()
        first, t_first = self.step + 1, None
        try:
            while self.step < cfg.max_steps:
                last_eval = self._train_step(it, bar, last_eval)
                if self.step == first:  # the first step pays for start-up: time the steps after it
                    t_first = time.perf_counter()
                elif self.step == first + ESTIMATE_AFTER and bar is not None:
                    bar.write(self._estimate(time.perf_counter() - t_first, time.perf_counter() - t0), file=sys.stderr)
        finally:
            if bar is not None:
                bar.close()
        self.save()
        result = {"steps": self.step, "wall_s": time.perf_counter() - t0, "nonfinite_steps": self.nonfinite_total}
        if self.evaluate:
            result["eval"] = self._evaluate()
        self.log.close()
        return result

    def _estimate(self, timed: float, elapsed: float) -> str:
        """The run's wall time from :data:`ESTIMATE_AFTER` timed steps (``timed`` seconds) and the ``elapsed`` seconds
        so far, one line: ``train: about 14 min for 300 steps (2.7 s a step; evaluations come on top)``."""
        per_step = timed / ESTIMATE_AFTER
        total = elapsed + per_step * (self.cfg.max_steps - self.step)
        extra = "; evaluations come on top" if self.evaluate and self.cfg.eval_every else ""
        return f"{self.name}: about {_duration(total)} for {self.cfg.max_steps} steps ({per_step:.2g} s a step{extra})"

    def _train_step(self, it: Iterator[dict], bar: Any, last_eval: dict[str, float]) -> dict[str, float]:
        """One optimiser step: gradients over ``cfg.accumulate`` micro-batches (:meth:`_accumulate`),
        the guarded update (:meth:`_apply_gradients`), the schedule, ``method.after_step``, logging,
        and the periodic evaluation and checkpoint. Returns the latest evaluation metrics
        (``last_eval`` unless this step evaluated)."""
        cfg = self.cfg
        t_step = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        acc = self._accumulate(it)
        skip = self._apply_gradients(acc)
        self.scheduler.step()
        self.step += 1
        self.method.after_step(self.step)
        logged = acc.logged
        logged.update(self.method.log_metrics())
        logged["lr"] = self.optimizer.param_groups[0]["lr"]
        logged["step_time"] = time.perf_counter() - t_step
        logged["data_time"] = acc.data_time  # waiting for the loader (all of its work when data.workers=0)
        logged["loss"] = sum(logged[k] for k in acc.loss_keys)
        if self.step % max(1, cfg.log_every) == 0 or self.step == cfg.max_steps:
            self.log.write(self.step, self._mean_over_ranks(logged, acc.loss_keys | {"loss"}))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{logged['loss']:.3f}", **({"AP": f"{last_eval.get('ap', float('nan')):.3f}"} if last_eval else {}))
        if cfg.eval_every and self.evaluate and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
            last_eval = self._evaluate()
        if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 and not skip:
            self.save()
        return last_eval

    def _accumulate(self, it: Iterator[dict]) -> _Accumulated:
        """Forward and backward ``cfg.accumulate`` micro-batches (DDP gradient sync on the last
        only). A non-finite total loss on any rank stops it with ``skip`` set (and the terms that
        were non-finite on this rank); loss terms are logged as their mean over micro-batches."""
        cfg = self.cfg
        acc = _Accumulated()
        for micro in range(cfg.accumulate):
            t_data = time.perf_counter()
            batch = next(it)
            acc.data_time += time.perf_counter() - t_data
            sync = micro == cfg.accumulate - 1 or self.info.world == 1
            ctx = nullcontext() if sync else self.model.no_sync()
            with ctx:
                with self._autocast():
                    losses = self.model(batch)
                total = sum(losses.values())
                finite = bool(torch.isfinite(total.detach()).item())
                if not finite:
                    acc.bad_terms = [k for k, v in losses.items() if not torch.isfinite(v.detach()).item()]
                if all_reduce_flag(not finite, self.info):
                    acc.skip = True
                    break
                self.scaler.scale(total / cfg.accumulate).backward()
            for k, v in losses.items():
                acc.logged[k] = acc.logged.get(k, 0.0) + float(v.detach()) / cfg.accumulate
            acc.loss_keys.update(losses)
        return acc

    def _apply_gradients(self, acc: _Accumulated) -> bool:
        """Unscale and clip (or measure) the gradients, logging ``grad_norm``; a non-finite norm on
        any rank skips the step like a non-finite loss. A skipped step zeroes the gradients and
        counts it (:meth:`_nonfinite`); otherwise the optimiser steps. Returns whether it skipped."""
        skip, bad_terms = acc.skip, acc.bad_terms
        if not skip:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            if self.cfg.clip_grad:
                gnorm = torch.nn.utils.clip_grad_norm_(params, self.cfg.clip_grad)
            else:
                gnorm = torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in params])) if params else torch.zeros(())
            if all_reduce_flag(not bool(torch.isfinite(gnorm).item()), self.info):
                skip = True
                bad_terms = bad_terms or ["gradient"]
            else:
                acc.logged["grad_norm"] = float(gnorm)
        if skip:
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler.is_enabled():
                self.scaler.update()
            self._nonfinite(bad_terms)
        else:
            self.nonfinite_run = 0
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return skip

    def _mean_over_ranks(self, logged: dict[str, float], keys: set[str]) -> dict[str, float]:
        """``logged`` with the loss terms ``keys`` averaged over DDP ranks: each rank's value is the
        mean over its share of the global batch, so the average is what one process with the whole
        batch logs. Other values (pseudo/, quality/, step_time) stay rank 0's. Called on every rank."""
        if self.info.world == 1:
            return logged
        mine = {k: v for k, v in logged.items() if k in keys}
        parts: list = [None] * self.info.world
        dist.all_gather_object(parts, mine)  # objects, not a tensor: ranks may disagree on the keys
        out = dict(logged)
        for k in mine:
            vals = [p[k] for p in parts if k in p]
            out[k] = sum(vals) / len(vals)
        out["loss"] = sum(out[k] for k in mine)
        return out

    def _evaluate(self) -> dict[str, float]:
        metrics = self.evaluate(self.method, self.step) or {}
        self.log.write(self.step, metrics, kind="eval")
        return metrics

    def _nonfinite(self, terms: list[str]) -> None:
        self.nonfinite_total += 1
        self.nonfinite_run += 1
        where = ", ".join(terms) or "loss"
        if self.info.main:
            print(f"minedet: step {self.step + 1}: non-finite {where}; step skipped "
                  f"({self.nonfinite_run} in a row, {self.nonfinite_total} in all)", file=sys.stderr)
        self.log.write(self.step + 1, {"nonfinite_steps": float(self.nonfinite_total)})
        if self.nonfinite_run >= self.cfg.max_nonfinite:
            last = self.ckpt_dir / "last.pt"
            keep = f"; the last good checkpoint is {last}" if last.exists() else "; no checkpoint was written yet"
            raise MinedetError(
                f"training stopped: {self.nonfinite_run} non-finite steps in a row at step {self.step + 1} "
                f"(terms: {where}){keep}. Lower train.lr or raise the pseudo-label threshold."
            )
