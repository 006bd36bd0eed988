"""Multi-process training (DDP, gloo on CPU) reproduces a one-process run with the same global batch.

Why the two runs must agree (and where they may not):

* ``data.batch_size`` is the *global* batch: each of ``W`` ranks loads ``B / W`` images
  (``run_training``). :class:`~minedet.data.datasets.InfiniteSampler` hands rank ``r`` the global
  sample positions ``i * W + r``, so at step ``s`` the ranks together see global positions
  ``s*B .. s*B + B - 1``: exactly the one-process batch of size ``B``. Every sample's augmentation is
  seeded by its key, not by the process that loads it.
* RetinaNet's losses are per-image means (each image normalised by its own foreground count), so
  the mean over ranks of the per-rank means (DDP averages gradients) is the one-process mean.
  Co-mining's branch losses and Mean Teacher's sup/unsup losses are RetinaNet losses over the
  rank's images, so the same holds. FCOS (torchvision) normalises by the foreground count of the
  whole *batch*: under DDP that is the rank's batch, so an FCOS run agrees only approximately
  (exactly when every rank has the same number of foreground locations); it is not compared here.
  Faster R-CNN samples anchors/RoIs with the global RNG, so it is not bit-comparable either.
* BatchNorm is frozen (``norm: frozen_bn``), so a rank's forward does not depend on the other
  images of the global batch.

What remains is float summation order (autograd over 4 images vs two ranks' 2-image gradients
summed by all-reduce, ~1e-7 relative), and the runs are built so that it stays that small:

* AdamW, lr 1e-3, constant schedule (a run stopped early and resumed follows the same lr). Adam
  divides by sqrt(v) + eps, so a parameter whose gradient is ~0 turns a rounding difference dg into
  a step difference of up to lr * dg / eps; and this tiny detector's early training is chaotic
  (gradient-norm spikes of 10-500), so differences grow with the number of steps compared. Runs
  compared tightly are therefore short: 4 supervised steps from scratch; 3 steps of co_mining and
  2 of Mean Teacher from a shared checkpoint.
* Pseudo-labels need separated scores: an untrained head scores every anchor 0.0100 +- 1e-8, so
  which boxes pass tau / NMS / max_dets would be decided by float ties. Co_mining therefore starts
  from an 8-step supervised checkpoint (``warm``; top scores 0.04-0.10, gaps ~1e-4) and Mean
  Teacher's burn-in is those 8 steps; tau = 0.03 gives pseudo-labels at every compared step.

Tolerances: ``ATOL`` = 1e-4 absolute on every float tensor of the checkpoint's method state (weights
of magnitude <~ 2; the largest differences seen are 9e-6 for Mean Teacher and <= 1e-6 for the
others, while the compared steps move weights by 2e-3 to 4e-3); ``LOSS_RTOL`` = 1e-4 on every logged loss term and the gradient norm. Losses are compared
as logged in metrics.jsonl: under DDP the trainer logs the mean over ranks. The full 9-step Mean
Teacher trajectory from scratch (burn-in, teacher copy, EMA, unsupervised step, all under DDP) is
compared tightly for its first 5 steps and with ``LOOSE_RTOL`` = 5e-2 after: the float noise grows
~10x per step from step 6 (relative loss differences seen: 2e-7, 3e-5, 6e-4, 1e-2 at steps 6-9),
while a wrong data split, loss normalisation or a rank's stale teacher changes losses by 10-100 %.

The multi-process side is one ``torchrun --nproc_per_node 2`` launch whose workers run this module
(``python -m tests.test_ddp JOBS.json``): each job is a ``minedet train`` command line run through
``minedet.cli.main`` inside the same process group (the CLI path of ``torchrun -m minedet train``,
without paying interpreter start-up per job).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
BATCH = 4  # global; 2 per rank
SUP_STEPS = 4  # supervised, from scratch, compared tightly
WARM = 8  # supervised steps of the shared warm checkpoint, and Mean Teacher's burn-in
PARTIAL = 9  # Mean Teacher checkpoint: teacher copied at step 8, EMA-updated and first unsup step at 9
STEPS = 11  # co_mining and Mean Teacher end here: 3 (2) compared steps with pseudo-labels
ATOL = 1e-4
LOSS_RTOL = 1e-4
LOOSE_RTOL = 5e-2
TIGHT_STEPS = 5  # steps of the from-scratch Mean Teacher run compared with LOSS_RTOL

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")

# method -> (method section, max_steps)
METHODS: dict[str, tuple[dict, int]] = {
    "supervised": ({"name": "supervised"}, SUP_STEPS),
    "co_mining": ({"name": "co_mining", "tau": 0.03, "max_dets": 5, "paper": True}, STEPS),
    "mean_teacher": ({"name": "mean_teacher", "burn_in": WARM, "ema_decay": 0.5, "tau": 0.03, "max_dets": 5, "paper": True}, STEPS),
}


def _config(paths, method: str, *, steps: int | None = None) -> dict:
    """The config dict of ``method`` on ``tiny_digits``: RetinaNet, global batch 4, AdamW 1e-3,
    constant lr (so a run stopped early and resumed follows the same schedule), CPU, 1 thread."""
    from tests.conftest import tiny_config

    section, default_steps = METHODS[method]
    over = dict(data__batch_size=BATCH, data__flip=0.5, train__optimizer="adamw", train__lr=1e-3,
                train__warmup_steps=0, train__schedule="constant", train__max_steps=steps or default_steps,
                train__ckpt_every=0, train__threads=1, train__device="cpu")
    if method != "supervised":
        over["data__val"] = None  # one distributed evaluation (supervised) is enough
    if method == "mean_teacher":
        over.update(data__unlabelled=str(paths.val_json), data__unlabelled_images=str(paths.image_root))
    cfg = tiny_config(paths, "unused", **over).as_dict()
    cfg["method"] = dict(section)
    return cfg


def _write_cfg(tmp: Path, name: str, cfg: dict) -> Path:
    import yaml

    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _argv(cfg: Path, out: Path, resume: Path | None = None) -> list[str]:
    return ["train", str(cfg), "--out", str(out)] + (["--resume", str(resume / "checkpoints" / "last.pt")] if resume else [])


def _train_1proc(argv: list[str]) -> None:
    """``minedet train`` in this process, with no torchrun environment (world = 1)."""
    from minedet.cli import main

    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        assert k not in os.environ
    assert main(argv) == 0


def _torchrun(jobs: list[list[str]], tmp: Path) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2`` (gloo, 127.0.0.1, a free port) running ``jobs`` in order."""
    jobs_path = tmp / "jobs.json"
    jobs_path.write_text(json.dumps(jobs))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "tests.test_ddp", str(jobs_path)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(tiny_digits, tmp_path_factory):
    """All runs, once: 1-process ones in this process, 2-process ones in one torchrun launch.

    Returns ``{name: output dir}`` plus ``"log"`` (torchrun's stdout + stderr). ``1/x`` and ``2/x``
    are the same job in one and two processes:

    * ``supervised``: 4 steps from scratch.            * ``warm`` (1 process): 8 supervised steps.
    * ``co_mining``: resumes ``warm``, steps 9-11.      * ``partial``: Mean Teacher from scratch to step 9.
    * ``mean_teacher``: resumes ``1/partial`` (a 1-process checkpoint), steps 10-11.
    * ``from2``: resumes ``2/partial`` (a checkpoint written by rank 0 of 2), steps 10-11.
    """
    tmp = tmp_path_factory.mktemp("ddp")
    threads = torch.get_num_threads()
    cfgs = {m: _write_cfg(tmp, m, _config(tiny_digits, m)) for m in METHODS}
    cfgs["warm"] = _write_cfg(tmp, "warm", _config(tiny_digits, "supervised", steps=WARM))
    cfgs["partial"] = _write_cfg(tmp, "partial", _config(tiny_digits, "mean_teacher", steps=PARTIAL))
    names = ("supervised", "co_mining", "partial", "mean_teacher", "from2")
    out: dict = {f"{w}/{m}": tmp / f"w{w}_{m}" for w in (1, 2) for m in names}
    out["warm"] = tmp / "warm"

    def jobs(w: int, names: tuple[str, ...]) -> list[list[str]]:
        spec = {"supervised": (cfgs["supervised"], None), "co_mining": (cfgs["co_mining"], out["warm"]),
                "partial": (cfgs["partial"], None), "mean_teacher": (cfgs["mean_teacher"], out["1/partial"]),
                "from2": (cfgs["mean_teacher"], out["2/partial"])}
        return [_argv(spec[m][0], out[f"{w}/{m}"], resume=spec[m][1]) for m in names]

    try:
        _train_1proc(_argv(cfgs["warm"], out["warm"]))
        for argv in jobs(1, names[:-1]):
            _train_1proc(argv)
        proc = _torchrun(jobs(2, names), tmp)
        assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        _train_1proc(jobs(1, ("from2",))[0])
    finally:
        torch.set_num_threads(threads)  # run_training set train.threads=1 in this process
    out["log"] = proc.stdout + proc.stderr
    return out


# ------------------------------------------------------------------------------------------ helpers
def _weights(run: Path) -> dict[str, torch.Tensor]:
    from minedet.engine.checkpoint import load_checkpoint

    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    return {k: v for k, v in ck["method"].items() if v.is_floating_point()}


def _max_diff(a: Path, b: Path, *, common: bool = False) -> tuple[float, str]:
    """Largest absolute difference between the float tensors of two runs' last checkpoints."""
    wa, wb = _weights(a), _weights(b)
    if common:
        wa = {k: v for k, v in wa.items() if k in wb}
    else:
        assert wa.keys() == wb.keys()
    diffs = {k: float((wa[k] - wb[k]).abs().max()) if wa[k].numel() else 0.0 for k in wa}
    key = max(diffs, key=diffs.get)
    return diffs[key], key


def _train_log(run: Path) -> list[dict]:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["kind"] == "train"]


def _loss_terms(rec: dict) -> dict[str, float]:
    """The loss terms of a logged step: the methods' prefixes (timings, counts and quality are not losses)."""
    return {k: v for k, v in rec.items() if k.startswith(("sup/", "unsup/", "o/", "a/"))}


# ------------------------------------------------------------------------------------------ tests
def test_ranks_together_see_the_one_process_batch(tiny_digits):
    """Global positions: rank r of W takes i*W + r; at every step (and from any resume point) the
    union of the ranks' batches of B/W is the one-process batch of B: same keys, same images,
    same augmented pixels and boxes."""
    from minedet.run import make_dataset
    from minedet.config import build_config
    from minedet.data.datasets import InfiniteSampler, infinite_loader
    from minedet.methods.co_mining import CoMining
    from tests.helpers import tiny_detector

    n, world = 12, 2
    one = InfiniteSampler(n, seed=3, world=1)
    ranks = [InfiniteSampler(n, seed=3, rank=r, world=world) for r in range(world)]
    it1 = iter(one)
    seq = [next(it1) for _ in range(40)]
    for r, s in enumerate(ranks):
        it = iter(s)
        assert [next(it) for _ in range(20)] == seq[r::world]
    # resume: a rank restarted at start = k * (B / W) samples continues global position k*B + r...
    for r in range(world):
        it = iter(InfiniteSampler(n, seed=3, rank=r, world=world, start=3 * (BATCH // world)))
        assert next(it) == seq[3 * BATCH + r]
    # ...and one process restarted at k*B continues where the ranks would have gone on
    it = iter(InfiniteSampler(n, seed=3, world=1, start=3 * BATCH))
    assert next(it) == seq[3 * BATCH]

    cfg = build_config(_config(tiny_digits, "co_mining"))
    views = CoMining(tiny_detector("retinanet", num_classes=10)).streams()["labelled"]
    ds = make_dataset(cfg.data.train, cfg.data.train_images, cfg, views=views, train=True)
    full = infinite_loader(ds, BATCH, seed=5)
    shards = [infinite_loader(ds, BATCH // world, seed=5, rank=r, world=world) for r in range(world)]
    empties = 0
    for _ in range(4):  # > one epoch of 12 images
        b = next(full)
        parts = [next(s) for s in shards]
        ids = sorted(i for p in parts for i in p.image_ids)
        assert sorted(b.image_ids) == ids
        got = {iid: (p.views["a"][j].image, p.views["a"][j].target.boxes)
               for p in parts for j, iid in enumerate(p.image_ids)}
        for j, iid in enumerate(b.image_ids):
            img, boxes = got[iid]
            assert torch.equal(img, b.views["a"][j].image), "the colour view is seeded by the sample key"
            assert torch.equal(boxes, b.views["a"][j].target.boxes)
            empties += int(boxes.numel() == 0)
    assert empties > 0, "images with no boxes take part"


def _assert_same_run(one: Path, two: Path, rtol: float = LOSS_RTOL, atol: float | None = ATOL,
                     steps: int | None = None) -> None:
    """Same steps, same loss terms and gradient norms (``rtol``; the first ``steps`` only if given),
    same final weights (``atol``; skipped if None)."""
    log1, log2 = _train_log(one)[:steps], _train_log(two)[:steps]
    assert [r["step"] for r in log1] == [r["step"] for r in log2] and log1
    for r1, r2 in zip(log1, log2):
        t1, t2 = _loss_terms(r1), _loss_terms(r2)
        assert t1.keys() == t2.keys() and t1
        for k in t1:
            assert math.isclose(t1[k], t2[k], rel_tol=rtol, abs_tol=1e-7), (r1["step"], k, t1[k], t2[k])
        assert math.isclose(r1["grad_norm"], r2["grad_norm"], rel_tol=rtol), (r1["step"], r1["grad_norm"], r2["grad_norm"])
    if atol is not None:
        diff, key = _max_diff(one, two)
        assert diff <= atol, f"weights differ by {diff:.3g} at {key}"


@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_reproduce_one_process(runs, method):
    """Same global batch => the same per-step losses (as logged: the mean over ranks), the same
    gradient norm and the same final weights (student and, for Mean Teacher, teacher). The
    co_mining and Mean Teacher runs resume a 1-process checkpoint in both modes."""
    one, two = runs[f"1/{method}"], runs[f"2/{method}"]
    _assert_same_run(one, two)
    log1, log2 = _train_log(one), _train_log(two)
    start = {"supervised": 0, "co_mining": WARM, "mean_teacher": PARTIAL}[method]
    assert [r["step"] for r in log1] == list(range(start + 1, METHODS[method][1] + 1))
    # not vacuous: the compared steps moved the weights by far more than ATOL
    before = {"supervised": runs["warm"], "co_mining": runs["warm"], "mean_teacher": runs["1/partial"]}[method]
    assert _max_diff(one, before, common=True)[0] > 10 * ATOL
    if method == "co_mining":
        for log in (log1, log2):
            assert all(r["pseudo/o_boxes_per_image"] > 0 and r["pseudo/a_boxes_per_image"] > 0 for r in log), \
                "both branches mined boxes at every step"
    if method == "mean_teacher":
        for log in (log1, log2):
            assert all(r["pseudo/boxes_per_image"] > 0 and "unsup/classification" in r for r in log), \
                "the teacher's pseudo-labels supervise the student"
        assert any(k.startswith("source.ema.") for k in _weights(one)), "the teacher is part of the compared state"


def test_mean_teacher_from_scratch_under_ddp_follows_the_one_process_run(runs):
    """Burn-in, teacher copy at step 8, first EMA update and unsupervised step at 9, all under DDP:
    the same trajectory as one process (``LOSS_RTOL`` for 5 steps, then ``LOOSE_RTOL``: this
    tiny detector's training is chaotic and grows the float noise ~10x per step)."""
    one, two = runs["1/partial"], runs["2/partial"]
    _assert_same_run(one, two, rtol=LOOSE_RTOL, atol=None)
    _assert_same_run(one, two, rtol=LOSS_RTOL, atol=None, steps=TIGHT_STEPS)
    for run in (one, two):
        log = _train_log(run)
        assert [r["step"] for r in log] == list(range(1, PARTIAL + 1))
        assert not any("unsup/classification" in r for r in log[:WARM]), "burn-in: supervised only"
        assert "unsup/classification" in log[WARM] and log[WARM]["pseudo/boxes_per_image"] > 0


def test_two_process_checkpoint_resumes_in_one_process(runs):
    """The checkpoint rank 0 wrote at step 9 (teacher copied and EMA-updated, unsupervised path on)
    continues in one process exactly as in two: the sampler skips ``step * per-rank batch`` per
    rank, i.e. the same ``step * B`` global positions either way."""
    one, two = runs["1/from2"], runs["2/from2"]
    assert [r["step"] for r in _train_log(one)] == list(range(PARTIAL + 1, STEPS + 1))
    _assert_same_run(one, two)


def test_distributed_evaluation_and_rank0_outputs(runs):
    """Rank 0 alone writes the outputs and prints the report; evaluation gathers every val image
    from both ranks (same AP as one process)."""
    one, two = runs["1/supervised"], runs["2/supervised"]
    for run in (one, two):
        assert (run / "model.pt").is_file() and (run / "eval.json").is_file()
        assert not list(run.rglob("*.tmp"))
    e1, e2 = (json.loads((r / "eval.json").read_text())["eval"]["student"] for r in (one, two))
    assert e1["ap"] == pytest.approx(e2["ap"], abs=1e-6) and e1["ap50"] == pytest.approx(e2["ap50"], abs=1e-6)
    assert runs["log"].count("== student (saved model)") == 1, "the report is printed by rank 0 only"


def test_global_batch_must_split_evenly_over_the_processes(tiny_digits, tmp_path):
    """``data.batch_size`` is the global batch: 3 images on 2 processes cannot be that (it used to
    become 2 silently, and a batch smaller than the process count grew to one image per rank)."""
    from minedet.run import run_training
    from minedet.config import build_config
    from minedet.engine.dist import DistInfo
    from minedet.errors import MinedetError

    threads = torch.get_num_threads()
    try:
        for batch in (3, 1):
            cfg = _config(tiny_digits, "supervised")
            cfg["data"]["batch_size"] = batch
            with pytest.raises(MinedetError, match=f"data.batch_size={batch} .* 2 processes"):
                run_training(build_config(cfg), out_dir=tmp_path / "b", quiet=True, info=DistInfo(rank=0, world=2))
        cfg = _config(tiny_digits, "mean_teacher")
        cfg["data"]["unlabelled_batch_size"] = 5
        with pytest.raises(MinedetError, match="data.unlabelled_batch_size=5"):
            run_training(build_config(cfg), out_dir=tmp_path / "u", quiet=True, info=DistInfo(rank=0, world=2))
    finally:
        torch.set_num_threads(threads)
    assert not (tmp_path / "b").exists(), "nothing is written before the check"


@pytest.mark.parametrize("preset", ["coco_retinanet_co_mining", "coco_fcos_co_mining", "coco_faster_rcnn_mean_teacher",
                                    "coco_faster_rcnn_acrst"])
def test_coco_presets_are_valid(preset):
    """The multi-GPU COCO presets (docs/reproduce-coco.md) parse, keep the papers' schedule, and
    their method options build on a (tiny) detector of the preset's kind."""
    from minedet.registry import build_method
    from minedet.config import load_config, preset_path
    from tests.helpers import tiny_detector

    cfg = load_config(preset_path(preset), [])
    assert cfg.model.backbone == "resnet50" and cfg.model.weights and cfg.train.amp == "bf16"
    assert (cfg.data.image_size, cfg.train.lr, cfg.train.warmup_steps) == (800, 0.01, 1000)
    if "co_mining" in preset:
        assert (cfg.train.max_steps, cfg.data.batch_size, cfg.train.milestones) == (90000, 16, [60000, 80000])
    else:
        assert (cfg.train.max_steps, cfg.data.batch_size, cfg.data.unlabelled_batch_size) == (180000, 32, 32)
    for world in (1, 2, 4, 8):
        assert cfg.data.batch_size % world == 0
    method = build_method(cfg.method, tiny_detector(cfg.model.name, num_classes=3))
    assert method.name == cfg.method["name"]


# ------------------------------------------------------------------------------------------ worker
def _worker(jobs_path: str) -> int:
    """One torchrun worker: run every ``minedet train`` command line of JOBS.json in this process
    group (``setup_device`` joins it once, from the torchrun environment)."""
    from minedet.cli import main

    rc = 0
    for argv in json.loads(Path(jobs_path).read_text()):
        rc = main(argv)
        if rc:
            break
    if dist.is_initialized():
        dist.destroy_process_group()
    return rc


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))


def test_mixed_runs_under_ddp_with_all_three_streams(tiny_digits, tmp_path):
    """The mixed method (complete, sparse and unlabelled streams cut from one flagged file) trains past
    burn-in in two processes; both ranks see batches of every stream and the run exports its teacher."""
    cfg = _config(tiny_digits, "supervised", steps=4)
    cfg["data"].update(mixed={"percent": 25, "sparse": 50, "mode": "hard", "seed": 0}, cache_dir=str(tmp_path / "cache"),
                       sparse_batch_size=2, unlabelled_batch_size=2, val=None)
    cfg["method"] = {"name": "mixed", "burn_in": 2, "tau": 0.03, "ignore_below": 0.01, "max_dets": 5}
    out = tmp_path / "mixed"
    proc = _torchrun([_argv(_write_cfg(tmp_path, "mixed", cfg), out)], tmp_path)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in rows if r["kind"] == "train"}
    assert "sparse/classification" not in train[1], "burn-in trains on the complete images (sparse_burn_in=false)"
    assert "sparse/classification" in train[4] and "unsup/classification" in train[4]
    assert (out / "model.pt").exists()


def test_acrst_classifier_prestage_trains_under_ddp(tiny_digits, tmp_path):
    """ACRST's image-level classifier is a pre-stage of the run: in two processes it trains through the
    one training loop (DDP, its own checkpoints and metrics under OUT/multilabel/), rank 0 writes
    multilabel.pt, and the detector's training follows in the same launch."""
    cfg = _config(tiny_digits, "mean_teacher", steps=2)
    cfg["method"] = {"name": "acrst", "burn_in": 1, "tau": 0.03, "ignore_below": 0.01, "max_dets": 5, "fbr": False,
                     "multilabel": {"steps": 4, "burn_in": 2, "batch_size": 4, "image_size": 64, "pretrained": False}}
    out = tmp_path / "acrst"
    proc = _torchrun([_argv(_write_cfg(tmp_path, "acrst", cfg), out)], tmp_path)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    rows = [json.loads(x) for x in (out / "multilabel" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and {"sup/ml", "unsup/ml"} <= set(rows[-1])
    assert (out / "multilabel.pt").is_file() and (out / "multilabel" / "checkpoints" / "last.pt").is_file()
    assert _train_log(out)[-1]["step"] == 2 and (out / "model.pt").exists()
