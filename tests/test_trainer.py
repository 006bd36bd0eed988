"""The training loop: runs, logs, checkpoints, resumes exactly, and never lets a NaN reach the weights."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from minedet.run import run_training
from minedet.config import TrainConfig
from minedet.engine.checkpoint import load_checkpoint, load_model
from minedet.engine.optim import lr_factor, optimizer_and_schedule
from minedet.engine.trainer import Trainer
from minedet.errors import MinedetError
from minedet.methods.base import Method
from tests.conftest import tiny_config
from tests.helpers import kill_mid_run


def _weights(path):
    return load_checkpoint(path)["method"]


def test_train_writes_model_metrics_and_eval(tiny_digits, tmp_path):
    cfg = tiny_config(tiny_digits, tmp_path / "run")
    result = run_training(cfg, quiet=True)
    assert result["steps"] == 4
    out = tmp_path / "run"
    assert (out / "model.pt").is_file() and (out / "checkpoints" / "last.pt").is_file()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert all(math.isfinite(r["sup/classification"]) for r in train)
    ev = json.loads((out / "eval.json").read_text())
    assert ev["roles"] == ["student"] and 0.0 <= ev["eval"]["student"]["ap"] <= 1.0
    det, meta = load_model(out / "model.pt")
    assert det.spec.class_names == [str(i) for i in range(10)] and meta["method"] == "supervised"
    assert not list(out.rglob("*.tmp")), "no temporary files are left behind"


def test_channels_last_trains_the_same_weights_and_a_bad_setting_is_refused(tiny_digits, tmp_path):
    """``train.channels_last`` (``auto``: on for the CPU) changes the memory order only: a run with it ends with the
    weights of a run without it, to float rounding; a setting other than auto, true or false is one clear error."""
    runs = {}
    for setting in (True, False):
        cfg = tiny_config(tiny_digits, tmp_path / str(setting), train__max_steps=3)
        cfg.train.channels_last = setting
        run_training(cfg, quiet=True)
        runs[setting] = _weights(tmp_path / str(setting) / "checkpoints" / "last.pt")
    assert runs[True].keys() == runs[False].keys()
    for k in runs[True]:
        if torch.is_floating_point(runs[True][k]):
            assert torch.allclose(runs[True][k], runs[False][k], rtol=1e-4, atol=1e-5), k
    cfg = tiny_config(tiny_digits, tmp_path / "bad", train__max_steps=1)
    cfg.train.channels_last = "yes"
    with pytest.raises(MinedetError, match="train.channels_last must be auto, true or false"):
        run_training(cfg, quiet=True)


def test_a_loaded_model_detects_the_same_in_either_memory_order(tiny_digits, tmp_path):
    """``load_model`` on the CPU runs the model channels-last (faster there): its detections are those of the same
    weights in the contiguous order, to float rounding."""
    import copy

    cfg = tiny_config(tiny_digits, tmp_path / "run", train__max_steps=2)
    run_training(cfg, quiet=True)
    from tests.test_mine import _confident

    det, _ = load_model(tmp_path / "run" / "model.pt")
    det = _confident(det, -2.0)  # scores spread over the images (two steps leave them tied at the prior)
    plain = copy.deepcopy(det).to(memory_format=torch.contiguous_format)
    images = [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(k)) for k in range(3)]
    with torch.no_grad():
        got, want = det.predict(images, score_thresh=0.01), plain.predict(images, score_thresh=0.01)
    assert sum(len(w.scores) for w in want) > 0
    for g, w in zip(got, want):
        assert len(g.scores) == len(w.scores)
        assert torch.allclose(g.scores, w.scores, atol=1e-5) and torch.allclose(g.boxes, w.boxes, atol=1e-3)


def test_sigkill_then_resume_reproduces_uninterrupted_run(tiny_digits, tmp_path):
    """A real process killed with SIGKILL mid-run, resumed from its last checkpoint, ends with the
    weights of an uninterrupted run (CPU, same config)."""
    steps = 8
    full = tiny_config(tiny_digits, tmp_path / "full", train__max_steps=steps)
    run_training(full, quiet=True)

    cfg = tiny_config(tiny_digits, tmp_path / "killed", train__max_steps=steps)
    last = tmp_path / "killed" / "checkpoints" / "last.pt"
    killed_at = kill_mid_run(cfg, tmp_path, min_saves=1)
    assert 0 < killed_at < steps, "the kill must land mid-run"
    run_training(tiny_config(tiny_digits, tmp_path / "killed", train__max_steps=steps), quiet=True, resume=str(last))
    a = _weights(tmp_path / "full" / "checkpoints" / "last.pt")
    b = _weights(last)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_a_resumed_or_restarted_run_logs_every_step_once(tiny_digits, tmp_path):
    """Steps an interrupted attempt logged after its last checkpoint are trained again on resume: metrics.jsonl keeps
    the new rows, not both; a run started again from step 0 in the same folder starts a new log."""
    out = tmp_path / "run"
    run_training(tiny_config(tiny_digits, out, train__max_steps=4), quiet=True)
    log = out / "metrics.jsonl"
    with open(log, "a") as f:  # what an attempt killed after step 6 had logged past its checkpoint at step 4
        f.writelines(json.dumps({"step": k, "kind": "train", "lost": 1}) + "\n" for k in (5, 6))
    run_training(tiny_config(tiny_digits, out, train__max_steps=8), quiet=True, resume=str(out / "checkpoints" / "last.pt"))
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, 9))
    assert not any("lost" in r for r in rows)
    run_training(tiny_config(tiny_digits, out, train__max_steps=2), quiet=True)  # a new run in the same folder
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]


def test_resume_rejects_checkpoint_of_another_model(tiny_digits, tmp_path):
    run_training(tiny_config(tiny_digits, tmp_path / "a", train__max_steps=1), quiet=True)
    other = tiny_config(tiny_digits, tmp_path / "b", model__fpn_channels=16)
    with pytest.raises(MinedetError, match="does not fit"):
        run_training(other, quiet=True, resume=str(tmp_path / "a" / "checkpoints" / "last.pt"))


class _Flaky(Method):
    """A one-parameter method whose loss is NaN on chosen steps."""

    name = "flaky"

    def __init__(self, bad_steps):
        torch.nn.Module.__init__(self)
        self.metrics = {}
        self.w = torch.nn.Parameter(torch.ones(3))
        self.bad = set(bad_steps)
        self.calls = 0

    def training_step(self, batch):
        self.calls += 1
        loss = (self.w ** 2).sum()
        if self.calls in self.bad:
            loss = loss * float("nan")
        return {"sup/x": loss}


def _batches(start):
    while True:
        yield {}


def _trainer(method, cfg, out_dir):
    """A Trainer of ``method`` with the optimiser and schedule ``cfg`` names, as a run assembles it."""
    optimizer, scheduler = optimizer_and_schedule(method, cfg)
    return Trainer(method, cfg, _batches, optimizer=optimizer, scheduler=scheduler, out_dir=out_dir)


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    m = _Flaky(bad_steps={2, 3})
    cfg = TrainConfig(max_steps=5, lr=0.1, warmup_steps=0, ckpt_every=0, progress=False, max_nonfinite=3, schedule="constant")
    res = _trainer(m, cfg, tmp_path).fit()
    assert res["nonfinite_steps"] == 2
    assert torch.isfinite(m.w).all()
    # three good steps of SGD with momentum moved the weights
    assert m.w.sum().item() < 3.0


def test_k_nonfinite_in_a_row_stop_with_clear_message(tmp_path):
    m = _Flaky(bad_steps=set(range(3, 100)))
    cfg = TrainConfig(max_steps=50, lr=0.1, warmup_steps=0, ckpt_every=1, progress=False, max_nonfinite=4)
    with pytest.raises(MinedetError, match="4 non-finite steps in a row.*last good checkpoint"):
        _trainer(m, cfg, tmp_path).fit()
    ck = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert ck["step"] == 2
    assert torch.isfinite(ck["method"]["w"]).all()


def test_the_trainer_steps_the_optimiser_and_schedule_it_is_given(tmp_path):
    m = _Flaky(bad_steps=set())
    optimizer = torch.optim.SGD(m.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (s + 1))
    cfg = TrainConfig(max_steps=2, lr=7.0, momentum=0.5, warmup_steps=0, ckpt_every=0, log_every=1, progress=False)
    Trainer(m, cfg, _batches, optimizer=optimizer, scheduler=scheduler, out_dir=tmp_path).fit()
    # loss = sum(w^2): w <- w - lr * 2w at lr 0.1 then 0.05 (not train.lr, train.momentum nor its schedule)
    assert m.w.tolist() == pytest.approx([0.72] * 3)
    logged = [json.loads(x)["lr"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == pytest.approx([0.05, 0.1 / 3])
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["optimizer_name"] == "sgd"


def test_resume_takes_only_a_checkpoint_of_the_optimiser_kind_it_is_given(tmp_path):
    cfg = TrainConfig(max_steps=1, warmup_steps=0, ckpt_every=0, progress=False, schedule="constant")  # says sgd
    m = _Flaky(bad_steps=set())
    adamw = torch.optim.AdamW(m.parameters(), lr=0.1)
    Trainer(m, cfg, _batches, optimizer=adamw, scheduler=torch.optim.lr_scheduler.LambdaLR(adamw, lambda s: 1.0),
            out_dir=tmp_path / "a").fit()
    last = tmp_path / "a" / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["optimizer_name"] == "adamw"
    with pytest.raises(MinedetError, match="trained with train.optimizer=adamw, this run uses sgd"):
        _trainer(_Flaky(bad_steps=set()), cfg, tmp_path / "b").resume(last)
    again = _Flaky(bad_steps=set())
    adamw = torch.optim.AdamW(again.parameters(), lr=0.1)
    tr = Trainer(again, cfg, _batches, optimizer=adamw, scheduler=torch.optim.lr_scheduler.LambdaLR(adamw, lambda s: 1.0),
                 out_dir=tmp_path / "c")
    tr.resume(last)
    assert tr.step == 1 and torch.equal(again.w, m.w)


def test_lr_schedule_warmup_then_decay():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, warmup_factor=0.1, schedule="cosine")
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(10, cfg) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert lr_factor(100, cfg) == pytest.approx(0.0, abs=1e-9)
    step = TrainConfig(max_steps=100, warmup_steps=0, schedule="step", milestones=[50, 80], gamma=0.1)
    assert [lr_factor(s, step) for s in (0, 50, 80)] == pytest.approx([1.0, 0.1, 0.01])


def test_progress_prints_the_runs_estimated_wall_time_after_its_first_steps(tmp_path, capsys):
    cfg = TrainConfig(max_steps=40, lr=0.1, warmup_steps=0, ckpt_every=0, progress=True, schedule="constant")
    _trainer(_Flaky(bad_steps=set()), cfg, tmp_path).fit()
    err = capsys.readouterr().err
    assert re.search(r"train: about \d+ s for 40 steps \([0-9.e-]+ s a step\)", err), err
    short = TrainConfig(max_steps=5, lr=0.1, warmup_steps=0, ckpt_every=0, progress=True, schedule="constant")
    _trainer(_Flaky(bad_steps=set()), short, tmp_path / "short").fit()
    assert "about" not in capsys.readouterr().err  # a run over before the estimate needs none
