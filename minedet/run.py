"""A run assembled from a Config: data, detector, method, trainer, evaluation, export.

The library entry point: ``minedet train``, ``minedet demo``, the benchmarks and the tests call
:func:`run_training`. Concrete methods are named only through the library's registry
(:mod:`minedet.registry`), which turns ``method.name`` into a :class:`~minedet.methods.base.Method`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from minedet.config import Config, DataConfig, TrainConfig
from minedet.data.coco import CocoData, load_coco
from minedet.data.datasets import DetectionDataset, infinite_loader
from minedet.data.splits import check_hidden_matches
from minedet.data.transforms import Compose, RandomHorizontalFlip
from minedet.engine.checkpoint import export_model
from minedet.engine.dist import DistInfo, setup_device, write_json_main
from minedet.engine.inference import evaluate_detector
from minedet.engine.optim import optimizer_and_schedule
from minedet.engine.trainer import Trainer
from minedet.errors import MinedetError
from minedet.methods.base import Method, PreStage
from minedet.models.build import build_detector
from minedet.models.spec import DetectorSpec
from minedet.seeding import seeded


# --------------------------------------------------------------------------------------------- data
def resolve_data(cfg: Config, *, quiet: bool = False) -> Config:
    """Fill missing data paths from ``data.digits`` (building the embedded dataset once into the
    cache): a preset's train/val split is used unless ``data.train`` / ``data.val`` are given."""
    d = cfg.data
    if d.digits is None or (d.train is not None and d.val is not None):
        if d.train is None:
            raise MinedetError("config needs data.train (a COCO JSON) or data.digits")
        return _resolve_semi(_resolve_mixed(cfg, quiet), quiet)
    from minedet.data.digits import build_digits

    args = dict(d.digits)
    key = "digits-" + "-".join(f"{k}{args[k]}" for k in sorted(args))
    root = Path(d.cache_dir) / key
    marker = root / "annotations" / "val.json"
    if not marker.exists():
        if not quiet:
            print(f"minedet: building the digits dataset in {root}", file=sys.stderr)
        try:
            build_digits(root, progress=not quiet, **args)
        except TypeError as e:
            raise MinedetError(f"data.digits: {e}") from None
    if d.train is None:
        d.train, d.train_images = str(root / "annotations" / "train.json"), d.train_images or str(root / "images")
    if d.val is None:
        d.val, d.val_images = str(root / "annotations" / "val.json"), d.val_images or str(root / "images")
    return _resolve_semi(_resolve_mixed(cfg, quiet), quiet)


def _cached_split(d, kind: str, tag: str, names: tuple[str, ...], make, quiet: bool) -> dict[str, Path]:
    """Split ``d.train`` once into the cache (``cache_dir/kind/STEM-SHA-tag/NAME.json``, keyed by the
    source's content hash): ``make(raw) -> (result, manifest)``, each ``NAME`` an attribute of the
    result; returns the paths of the parts."""
    import hashlib

    from minedet.data.coco import save_coco
    from minedet.io import write_json_atomic

    src = Path(d.train)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()[:12]
    root = Path(d.cache_dir) / kind / f"{src.stem}-{sha}-{tag}"
    paths = {k: root / f"{k}.json" for k in names}
    if not all(p.exists() for p in paths.values()):
        res, manifest = make(load_coco(src, strict=d.strict).raw)
        for k in names:
            save_coco(paths[k], getattr(res, k), validate=False)
        write_json_atomic(root / "manifest.json", {**manifest, "source_file": str(src)}, indent=1)
        if not quiet:
            print(f"minedet: {kind} split {tag} of {src} in {root}", file=sys.stderr)
    return paths


def _resolve_mixed(cfg: Config, quiet: bool) -> Config:
    """``data.mixed = {percent, sparse, mode, seed}``: flag ``data.train``'s images complete / sparse /
    none once (cached) and point ``data.train`` / ``data.hidden`` at the flagged file and its hidden truth."""
    d = cfg.data
    if d.mixed is None:
        return cfg
    from minedet.data.mixed import split_mixed

    unknown = set(d.mixed) - {"percent", "sparse", "mode", "seed"}
    if unknown or not {"percent", "sparse", "mode"} <= set(d.mixed):
        raise MinedetError(f"data.mixed takes percent, sparse, mode (required) and seed, got {sorted(d.mixed)}")
    m = {**d.mixed, "seed": int(d.mixed.get("seed", 0))}
    tag = f"c{m['percent']:g}-s{m['sparse']:g}-{m['mode']}-s{m['seed']}"

    def make(raw):
        res = split_mixed(raw, float(m["percent"]), float(m["sparse"]), str(m["mode"]), m["seed"])
        return res, res.manifest

    paths = _cached_split(d, "mixed", tag, ("hidden", "mixed"), make, quiet)
    d.train_images = _images_dir(d.train, d.train_images)
    d.train, d.hidden, d.mixed = str(paths["mixed"]), str(paths["hidden"]), None
    return cfg


def _resolve_semi(cfg: Config, quiet: bool) -> Config:
    """``data.semi = {percent, seed}``: split ``data.train`` into labelled / unlabelled images once
    (cached) and point ``data.train`` / ``data.unlabelled`` / ``data.hidden`` at the parts."""
    d = cfg.data
    if d.semi is None or d.unlabelled is not None:
        return cfg
    from minedet.data.splits import split_semi

    unknown = set(d.semi) - {"percent", "seed"}
    if unknown or "percent" not in d.semi:
        raise MinedetError(f"data.semi takes percent (required) and seed, got {sorted(d.semi)}")
    percent, seed = float(d.semi["percent"]), int(d.semi.get("seed", 0))

    def make(raw):
        res = split_semi(raw, percent, seed)
        return res, res.manifest

    paths = _cached_split(d, "semi", f"p{percent:g}-s{seed}", ("hidden", "unlabelled", "labelled"), make, quiet)
    images = _images_dir(d.train, d.train_images)
    d.train, d.train_images = str(paths["labelled"]), images
    d.unlabelled, d.unlabelled_images = str(paths["unlabelled"]), d.unlabelled_images or images
    d.hidden = str(paths["hidden"])
    d.semi = None  # resolved: the paths above are the split (their folder holds its manifest.json)
    return cfg


def _images_dir(json_path: str, given: str | None) -> str:
    return given if given is not None else str(Path(json_path).parent)


def make_dataset(path: str | CocoData, images: str | None, cfg: Config, *, views=None, train: bool,
                 with_targets: bool = True, hidden: str | CocoData | None = None) -> DetectionDataset:
    """A dataset of a COCO file (or loaded data, with its image folder) with the views asked for; ``hidden`` (a file or
    loaded data holding at least these images) is cut to these images and checked against them."""
    data = path if isinstance(path, CocoData) else load_coco(path, strict=cfg.data.strict)
    hidden_data = _hidden_for(data, hidden)
    base = Compose([RandomHorizontalFlip(cfg.data.flip)]) if train and cfg.data.flip > 0 else Compose([])
    return DetectionDataset(
        data,
        images if isinstance(path, CocoData) else _images_dir(path, images),
        base=base,
        views=views,
        seed=cfg.train.seed,
        with_targets=with_targets,
        hidden=hidden_data,
        skip_bad_images=not cfg.data.strict,
    )


def _hidden_for(data: CocoData, hidden: str | CocoData | None) -> CocoData | None:
    """The hidden truth of ``data``'s images; a hidden truth of another split would make every quality
    number silently wrong, so ids, categories and annotation ids are checked."""
    if hidden is None:
        return None
    from minedet.data.mixed import select_images

    h = hidden if isinstance(hidden, CocoData) else load_coco(hidden)
    ids = {int(im["id"]) for im in data.images}
    if ids < {int(im["id"]) for im in h.images}:  # one hidden file of a mixed dataset: this stream's part
        h = select_images(h, ids, what="hidden truth of " + str(data.path))
    check_hidden_matches(data.raw, h.raw, kept_file=str(data.path), hidden_file=str(h.path))
    return h


def build_spec(cfg: Config, data: CocoData) -> DetectorSpec:
    """The detector's spec: the ``model`` section's settings, the classes of ``data`` and ``data.image_size``."""
    m = cfg.model
    return DetectorSpec.from_settings(m, name=m.name, num_classes=data.num_classes, class_names=data.class_names,
                                      image_size=cfg.data.image_size)


# --------------------------------------------------------------------------------------------- own data
def own_data_config(method: str, *, train: str, val: str | None, overrides: list[str] = (), quiet: bool = False,
                    **paths: str | None) -> Config:
    """The config for ``minedet train METHOD --train ... --val ...``: the ``own_data`` preset with
    ``method.name=METHOD`` and the data paths (``train_images``, ``val_images``, ``unlabelled``,
    ``unlabelled_images``, ``hidden``), ``data.image_size`` and ``model.anchor_scale`` proposed from the
    training boxes, the method's own-data options for the detector (``Method.own_data``: the mixed method takes
    every image of an unflagged file as sparse, on RetinaNet on BRL's loss; the supervised method trains on BRL's
    loss at batch 16, co-mining on BRL's loss and checks its mining on the val set) and a teacher's burn-in (a
    sixth of the steps) unless overridden; the run writes into ``runs/METHOD`` unless told otherwise.
    Data that cannot support the run is one :class:`MinedetError`."""
    from minedet.config import apply_overrides, build_config, load_yaml, preset_path

    if val is None:
        raise MinedetError(f"training {method} on your data needs --val: a COCO JSON of validation images with "
                           "complete labels (split some off with minedet data split-semi or by hand)")
    data = load_coco(train)
    counts = {name: 0 for name in data.class_names}
    for a in data.annotations:
        if not a.get("iscrowd"):
            counts[data.class_names[data.label_of(a["category_id"])]] += 1
    empty = [name for name, n in counts.items() if n == 0]
    if empty:
        raise MinedetError(f"class {empty[0]!r} has no box in the training data, so nothing can learn it "
                           "(remove the category or label some instances)", file=train)
    proposed = propose_sizes(data)
    given = {o.split("=", 1)[0] for o in overrides}
    auto = [f"{k}={v}" for k, v in proposed.items() if k not in given]
    preset = preset_path("own_data")
    d = apply_overrides(load_yaml(preset), [f"method.name={method}", *auto, *overrides])
    for_method = _method_proposals(d, given)
    d = apply_overrides(d, for_method)  # the method's batch counts in the proposed steps
    steps, steps_why = _step_proposals(d, len(data.images), given)
    d = apply_overrides(d, steps)
    burn_in = _burn_in_proposal(d, given)
    cfg = build_config(apply_overrides(d, burn_in), file=str(preset))
    if "train.out_dir" not in given:  # one folder per method, so a second method does not overwrite the first
        cfg.train.out_dir = f"runs/{method}"
    d = cfg.data
    d.train, d.val = train, val
    for key, value in paths.items():
        if value is not None:
            setattr(d, key, value)
    if not quiet and auto:
        print("minedet: from the training boxes: " + ", ".join(auto) + " (override with KEY=VALUE)", file=sys.stderr)
    if not quiet and for_method:
        print(f"minedet: {method} on {cfg.model.name} trains best with " + ", ".join(for_method) +
              " (override with KEY=VALUE)", file=sys.stderr)
    if not quiet and steps:
        print(f"minedet: {steps_why}: " + ", ".join(steps) + " (override with KEY=VALUE)", file=sys.stderr)
    if not quiet and burn_in:
        print(f"minedet: the teacher starts after a sixth of the {cfg.train.max_steps} steps: " + ", ".join(burn_in) +
              " (override with KEY=VALUE)", file=sys.stderr)
    return cfg


OWN_DATA_PASSES = 100  # passes over the training images (Ultralytics' default epochs=100)
#: the proposal's bounds: a useful minimum, and hours rather than days on one GPU. The minimum is the tree-crown
#: benchmark's budget, chosen on its dev tiles (36 training tiles, full labels, seed 0: dev AP50 31.9 at 300 steps,
#: 41.1 at 600); so a small dataset like those tiles trains as long as the benchmark measured
OWN_DATA_STEPS = (600, 10000)
#: a teacher method's burn-in on your own data, as a share of the run's steps: the tree-crown benchmark's self-training
#: columns (burn-in 100 of 600 steps; a method's own default, e.g. Mean Teacher's 2000, would outlast a small run)
OWN_DATA_BURN_IN = 1 / 6


def _step_proposals(d: dict, n_images: int, given: set[str]) -> tuple[list[str], str]:
    """``train.max_steps``: :data:`OWN_DATA_PASSES` over ``n_images`` at the run's global batch x accumulation,
    kept in :data:`OWN_DATA_STEPS`; ``train.warmup_steps``: the preset's, scaled with the steps (never more). As
    ``KEY=VALUE`` less those the command line sets (``d``: the preset as a dict, overrides applied), and why.
    An explicit ``train.max_steps`` wins: nothing is proposed."""
    t = d.get("train") or {}
    if "train.max_steps" in given:
        return [], ""
    per_step = int((d.get("data") or {}).get("batch_size") or 1) * int(t.get("accumulate") or 1)
    steps = math.ceil(OWN_DATA_PASSES * max(1, n_images) / max(1, per_step))
    steps = min(OWN_DATA_STEPS[1], max(OWN_DATA_STEPS[0], steps))
    preset_warmup = int(t.get("warmup_steps") or 0)
    warmup = min(preset_warmup, round(preset_warmup * steps / max(1, int(t.get("max_steps") or 1))))
    out = [f"{k}={v}" for k, v in (("train.max_steps", steps), ("train.warmup_steps", warmup)) if k not in given]
    why = f"{steps * per_step / max(1, n_images):.0f} passes over the {n_images} training images at batch {per_step}"
    return out, why


def _burn_in_proposal(d: dict, given: set[str]) -> list[str]:
    """``method.burn_in``: :data:`OWN_DATA_BURN_IN` of the run's ``train.max_steps`` for a method whose teacher is
    copied from the student after a burn-in (``d``: the config as a dict, the steps applied), as ``KEY=VALUE``;
    nothing when the command line sets it or the method has no burn-in."""
    from dataclasses import fields

    from minedet.registry import METHODS

    options = METHODS.get((d.get("method") or {}).get("name"), (None, None))[1]
    if options is None or "method.burn_in" in given or "burn_in" not in {f.name for f in fields(options)}:
        return []
    return [f"method.burn_in={round(int((d.get('train') or {}).get('max_steps') or 0) * OWN_DATA_BURN_IN)}"]


def _method_proposals(d: dict, given: set[str]) -> list[str]:
    """The method's ``own_data`` options for the run's detector (``d``: the config as a dict, overrides
    applied), as ``KEY=VALUE``, less those the command line sets (or a whole ``model.extra`` it sets) and none at
    all under ``method.paper=true``."""
    from minedet.registry import METHODS

    method = d.get("method") or {}
    cls = METHODS.get(method.get("name"), (None,))[0]
    if cls is None or method.get("paper"):
        return []
    options = {**cls.own_data.get("*", {}), **cls.own_data.get((d.get("model") or {}).get("name"), {})}
    return [f"{k}={v}" for k, v in options.items() if k not in given and k.rsplit(".", 1)[0] not in given]


def propose_sizes(data: CocoData) -> dict[str, float | int]:
    """``data.image_size``: the median short side of the images, rounded up to a multiple of 32 (no detail is
    shrunk away: 400 px -> 416) and kept in [128, 1024];
    ``model.anchor_scale``: the smallest anchors (stride 8) match the 5th percentile of box sides after
    that resize, in [1, 8] by halves. Crowd boxes are left out: they are ignored regions, often the thin slivers a
    tiler leaves at tile edges (on the tree-crown tiles they halved the proposal, and the detector barely trained)."""
    import statistics

    shorts = [min(int(im["width"]), int(im["height"])) for im in data.images]
    size = int(min(1024, max(128, math.ceil(statistics.median(shorts) / 32) * 32))) if shorts else 512
    scale = {im["id"]: size / max(1, min(int(im["width"]), int(im["height"]))) for im in data.images}
    sides = sorted(min(a["bbox"][2], a["bbox"][3]) * scale[i] for i, anns in data.anns_by_image.items() for a in anns
                   if not a.get("iscrowd"))
    anchor = 4.0
    if sides:
        p5 = sides[int(0.05 * (len(sides) - 1))]
        anchor = min(8.0, max(1.0, round(2 * p5 / 8) / 2))
    return {"data.image_size": size, "model.anchor_scale": anchor}


# --------------------------------------------------------------------------------------------- run
@dataclass
class Run:
    """A run assembled from a Config: what :func:`run_training` trains.

    Attributes:
        cfg: the resolved config; spec: the detector's spec; method: the method holding the detector;
        datasets: one dataset per stream the method names; val: the validation dataset or None;
        info: this process; out: the output folder.
    """

    cfg: Config
    spec: DetectorSpec
    method: Method
    datasets: dict[str, DetectionDataset]
    val: DetectionDataset | None
    info: DistInfo
    out: Path


def build_run(cfg: Config, *, out_dir: str | Path | None = None, quiet: bool = False, info: DistInfo | None = None) -> Run:
    """Data paths, detector, method (by ``method.name`` through :mod:`minedet.registry`), stream datasets."""
    from minedet.registry import build_method

    cfg = resolve_data(cfg, quiet=quiet)
    t = cfg.train
    out = Path(out_dir or t.out_dir)
    _refuse_replacing_init(cfg.model.init, out)
    info = info or setup_device(t.device, quiet=quiet)
    if t.threads:
        torch.set_num_threads(t.threads)
    if t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(t.seed + info.rank)
    spec = build_spec(cfg, load_coco(cfg.data.train, strict=cfg.data.strict))
    torch.manual_seed(t.seed)  # the same initial weights on every rank
    detector = build_detector(spec, pretrained=cfg.model.pretrained, weights_path=cfg.model.weights)
    if cfg.model.init:
        init_from(detector, cfg.model.init)
    method = build_method(cfg.method, detector)
    schedule_lines = clamp_warmup(t) + method.schedule_warnings(t.max_steps)
    if info.main:
        for line in schedule_lines:
            print(f"minedet: warning: {line}", file=sys.stderr)
    torch.manual_seed(t.seed + info.rank)
    datasets = stream_datasets(cfg, method)
    if info.main and not quiet:
        for line in method.budget_notes(passes(cfg, datasets)):
            print(f"minedet: note: {line}", file=sys.stderr)
    method.bind(datasets, out)  # every rank: ACRST's bank snapshots for its loader workers; renders check the rank
    run_prestages(method, t, out, info)
    val = make_dataset(cfg.data.val, cfg.data.val_images, cfg, train=False) if cfg.data.val else None
    method.bind_val(val)
    return Run(cfg, spec, method, datasets, val, info, out)


def clamp_warmup(t: TrainConfig) -> list[str]:
    """A warm-up as long as the run never reaches ``train.lr``: ``t.warmup_steps >= t.max_steps`` is cut to a tenth
    of the run (``t`` is changed). Returns the warning line, or nothing when the warm-up fits."""
    if t.warmup_steps < t.max_steps or t.warmup_steps == 0:
        return []
    given, t.warmup_steps = t.warmup_steps, t.max_steps // 10
    return [f"train.warmup_steps={given} >= train.max_steps={t.max_steps}: the learning rate would never reach "
            f"train.lr; warm-up cut to {t.warmup_steps} steps (a tenth of the run)"]


def _refuse_replacing_init(init: str | None, out: Path) -> None:
    """A run must not replace the model it starts from: ``model.init`` may not be ``OUT/model.pt``."""
    if init is None:
        return
    mine, theirs = (out / "model.pt").resolve(), Path(init).resolve()
    if mine == theirs or (mine.exists() and theirs.exists() and mine.samefile(theirs)):
        raise MinedetError(f"model.init is this run's own output {out / 'model.pt'}, which the run would replace: "
                           "write the run to another folder (--out DIR)", file=init)


def unused_out_dir(out: str | Path) -> Path:
    """``out``, or when it holds the ``model.pt`` of an earlier run the first ``OUT-2``, ``OUT-3``, ... that does not
    exist (Ultralytics' ``exp2``): what ``minedet train`` writes to, so a second round never replaces the first."""
    out = Path(out)
    if not (out / "model.pt").exists():
        return out
    n = 2
    while out.with_name(f"{out.name}-{n}").exists():
        n += 1
    return out.with_name(f"{out.name}-{n}")


def run_prestages(method: Method, train: TrainConfig, out: Path, info: DistInfo) -> None:
    """Train what ``method`` needs before its first step (:meth:`Method.prestages`, e.g. ACRST's
    image-level classifier) and hand each result to it (:func:`train_prestage`)."""
    for st in method.prestages():
        st.use(train_prestage(st, train, out, info))


def train_prestage(st: PreStage, train: TrainConfig, out: Path, info: DistInfo):
    """One pre-stage through the one :class:`Trainer`: the run's device, DDP, AMP, checkpoint
    interval, logging and progress bar; AdamW without weight decay at the stage's constant rate,
    no clipping. Checkpoints and metrics go to ``OUT/NAME/``, the result to ``OUT/NAME.pt``
    (written by the main process). A result file that exists is loaded instead; a
    ``OUT/NAME/checkpoints/last.pt`` of the same stage configuration (``st.meta``) is resumed. The
    global RNG is the stage's own (``st.seed`` + rank), restored afterwards. Returns the result."""
    from dataclasses import replace

    from minedet.engine.checkpoint import load_training_checkpoint

    result = Path(out) / f"{st.name}.pt"
    if result.is_file():
        return st.load(result)
    cfg = replace(train, max_steps=st.steps, optimizer="adamw", lr=st.lr, weight_decay=0.0, warmup_steps=0,
                  schedule="constant", clip_grad=None, accumulate=1, eval_every=0)
    optimizer, scheduler = optimizer_and_schedule(st.module, cfg)
    with seeded(st.seed + info.rank, info.device):
        trainer = Trainer(st.module, cfg, lambda start: st.batches(start, info.rank, info.world), optimizer=optimizer,
                          scheduler=scheduler, out_dir=Path(out) / st.name, info=info,
                          meta={"prestage": st.name, **st.meta}, name=st.name)
        last = trainer.ckpt_dir / "last.pt"
        if last.is_file() and load_training_checkpoint(last).get("meta") == trainer.meta:
            trainer.resume(last)
        trainer.fit()
    artefact = st.result(st.module)
    if info.main:
        st.save(artefact, result)
    return artefact


def init_from(detector, path: str) -> None:
    """Load the weights of an exported model (``model.pt``) into ``detector``; a model of another
    detector, backbone or class list is a one-line :class:`MinedetError`."""
    from minedet.engine.checkpoint import load_model

    src, _ = load_model(path)
    mine, theirs = detector.spec, src.spec
    for key in ("name", "backbone", "num_classes", "class_names", "levels", "fpn_channels", "anchor_scale"):
        if getattr(mine, key) != getattr(theirs, key):
            raise MinedetError(f"model.init: the model has {key}={getattr(theirs, key)!r} but this run builds "
                               f"{getattr(mine, key)!r}", file=path)
    detector.model.load_state_dict(src.model.state_dict())


def stream_data(cfg: Config, streams: Iterable[str]) -> dict[str, tuple[CocoData, str]]:
    """Where each stream's images come from: ``{stream: (data, image folder)}``.

    ``labelled`` is ``data.train``, ``sparse`` is ``data.sparse``, ``unlabelled`` is ``data.unlabelled``.
    When ``data.train``'s images carry ``"labels"`` flags (:mod:`minedet.data.mixed`), it is cut by kind:
    complete -> ``labelled``, sparse -> ``sparse``, none -> ``unlabelled`` (unless those files are given). A file
    with no flag holds images of kind ``data.unflagged`` (``complete``: every image ``labelled``).
    A method without a ``sparse`` stream trains its ``labelled`` stream on the sparse images too when it
    reads no unlabelled images (Co-mining, supervised); otherwise the kinds it has no stream for are
    left out, with a note. Empty streams are left out.
    """
    from minedet.data.mixed import is_mixed, kind_counts, select_kinds

    d, streams = cfg.data, list(streams)
    if d.unflagged not in ("complete", "sparse"):
        raise MinedetError(f"data.unflagged must be 'complete' or 'sparse', not {d.unflagged!r}")
    train = load_coco(d.train, strict=d.strict)
    out: dict[str, tuple[CocoData, str]] = {}
    folder = _images_dir(d.train, d.train_images)
    flagged = is_mixed(train)
    missing = "complete" if flagged else d.unflagged  # the kind of an image without a flag
    if not flagged and missing == "complete":
        out["labelled"] = (train, folder)
    else:
        kinds = {"labelled": ["complete"], "sparse": ["sparse"], "unlabelled": ["none"]}
        if "sparse" not in streams and "unlabelled" not in streams:
            kinds["labelled"] = ["complete", "sparse"]
        unused = [k for s, ks in kinds.items() if s not in streams for k in ks if k not in kinds["labelled"]]
        counts = kind_counts(train, missing)
        for s in streams:
            if not (s == "sparse" and d.sparse) and not (s == "unlabelled" and d.unlabelled):
                out[s] = (select_kinds(train, kinds[s], missing), folder)
        words = {"sparse": "sparsely labelled", "none": "unlabelled"}
        left = [f"{counts[k]['images']} {words[k]}" for k in unused if counts[k]["images"]]
        if left:
            print(f"minedet: this method reads no {' and no '.join(left)} images of {d.train}: they are left out "
                  "(the mixed method reads every kind)", file=sys.stderr)
    for s, path, images in (("sparse", d.sparse, d.sparse_images), ("unlabelled", d.unlabelled, d.unlabelled_images)):
        if s in streams and path is not None:
            out[s] = (load_coco(path, strict=d.strict), _images_dir(path, images))
    return {s: v for s, v in out.items() if v[0].images}


def stream_datasets(cfg: Config, method: Method) -> dict[str, DetectionDataset]:
    """One dataset per stream the method declares, with the views it asks for (see :func:`stream_data`);
    a stream the method cannot do without and the data lacks is a :class:`MinedetError`."""
    streams = method.streams()
    unknown = set(streams) - {"labelled", "sparse", "unlabelled"}
    if unknown:
        raise MinedetError(f"method {method.name!r} asks for an unknown data stream {sorted(unknown)[0]!r}")
    sources = stream_data(cfg, streams)
    optional = getattr(method, "optional_streams", frozenset())
    missing = [s for s in streams if s not in sources and s not in optional]
    if missing:
        need = {"labelled": "data.train (a COCO JSON with labelled images)",
                "sparse": "sparsely labelled images (data.sparse, images flagged \"labels\": \"sparse\" in data.train, "
                              "or data.unflagged=sparse for a data.train without flags)",
                "unlabelled": "data.unlabelled (a COCO JSON of unlabelled images)"}[missing[0]]
        raise MinedetError(f"method {method.name!r} needs {need}")
    measured = {"sparse", "unlabelled"} & set(sources) or {"labelled"}  # where hidden truth is measured
    hidden = load_coco(cfg.data.hidden) if cfg.data.hidden else None  # read once, cut per stream
    return {
        s: make_dataset(data, images, cfg, views=streams[s], train=True, with_targets=s != "unlabelled",
                        hidden=hidden if s in measured else None)
        for s, (data, images) in sources.items()
    }


def passes(cfg: Config, datasets: dict[str, DetectionDataset]) -> dict[str, float]:
    """How many times a run of ``cfg`` goes over each stream's images: steps x global batch x accumulation /
    images (the batch sizes as :func:`batch_stream` reads them)."""
    keys, t = batch_keys(cfg.data), cfg.train
    return {s: t.max_steps * t.accumulate * getattr(cfg.data, keys[s]) / len(ds) for s, ds in datasets.items() if len(ds)}


def batch_keys(d: DataConfig) -> dict[str, str]:
    """The ``data.*`` key that holds each stream's global batch size (``batch_size`` where a stream's own is unset)."""
    keys = {"labelled": "batch_size", "unlabelled": "unlabelled_batch_size", "sparse": "sparse_batch_size"}
    return {s: k if getattr(d, k) is not None else "batch_size" for s, k in keys.items()}


def batch_stream(run: Run) -> Callable[[int], Iterator[dict]]:
    """``batches(start_step)``: one batch per step, ``{stream: collated batch}``, on the run's device."""
    cfg, info, t = run.cfg, run.info, run.cfg.train
    d = cfg.data
    keys = batch_keys(d)
    bs = {s: getattr(d, k) for s, k in keys.items()}
    for k in run.datasets:  # the batch sizes are global: each rank loads bs / world
        if bs[k] % info.world:
            raise MinedetError(f"data.{keys[k]}={bs[k]} is the global batch and must be a multiple of the {info.world} processes")
    per_rank = {k: max(1, bs[k] // info.world) for k in run.datasets}

    def batches(start_step: int) -> Iterator[dict]:
        its = {
            k: infinite_loader(ds, per_rank[k], seed=t.seed + 17 * i, rank=info.rank, world=info.world,
                               start_batches=start_step * t.accumulate, workers=cfg.data.workers,
                               pin_memory=info.device.type == "cuda")
            for i, (k, ds) in enumerate(run.datasets.items())
        }
        while True:
            yield to_device({k: next(it) for k, it in its.items()}, info.device)

    return batches


def evaluator(run: Run, reports: dict, *, quiet: bool) -> Callable[[Method, int], dict[str, float]]:
    """``evaluate(method, step)``: pycocotools AP of every model the method names on the val split
    (the first one unprefixed); the reports of the last call land in ``reports``."""
    cfg = run.cfg

    def evaluate(m: Method, step: int) -> dict[str, float]:
        if run.val is None:
            return {}
        res: dict[str, float] = {}
        reports.clear()
        for i, (role, det) in enumerate(m.eval_models().items()):
            rep = evaluate_detector(det, run.val, batch_size=max(8, cfg.data.batch_size), info=run.info,
                                    progress=cfg.train.progress and not quiet)
            prefix = "" if i == 0 else f"{role}/"
            for k, v in rep.as_dict().items():
                if isinstance(v, (int, float)) and v is not None:
                    res[prefix + k] = v
            for name, v in rep.per_class.items():  # per-class AP over training (TensorBoard: eval/ap_class/NAME)
                if not math.isnan(v):
                    res[f"{prefix}ap_class/{name}"] = v
            reports[role] = rep
        return res

    return evaluate


def trained_on(run: Run) -> list[str]:
    """The file names of every image the run trained on, all streams (sorted; ``minedet mine`` warns when a
    model mines the images it trained on)."""
    return sorted({str(im["file_name"]) for ds in run.datasets.values() for im in ds.data.images})


def run_training(cfg: Config, *, out_dir: str | Path | None = None, resume: str | None = None,
                 quiet: bool = False, info: DistInfo | None = None) -> dict:
    """Train ``cfg`` end to end: assemble, train, evaluate, export ``OUT/model.pt``, ``OUT/eval.json`` and (with a
    val split) ``OUT/pr_curve.png`` and ``OUT/confusion.png``.
    Returns ``{"steps", "wall_s", "nonfinite_steps", "out_dir", "model", "reports"}``."""
    run = build_run(cfg, out_dir=out_dir, quiet=quiet, info=info)
    cfg, info, out, method = run.cfg, run.info, run.out, run.method
    reports: dict = {}
    meta = {"config": cfg.as_dict(), "spec": run.spec.as_dict(), "method": method.name}
    optimizer, scheduler = optimizer_and_schedule(method, cfg.train)
    trainer = Trainer(method, cfg.train, batch_stream(run), optimizer=optimizer, scheduler=scheduler, out_dir=out,
                      info=info, evaluate=evaluator(run, reports, quiet=quiet), meta=meta)
    if resume:
        trainer.resume(resume)
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_main(info, out / "config.json", cfg.as_dict())
    result = trainer.fit()
    model_path = out / "model.pt"
    if info.main:
        export_model(model_path, method.export_model(), meta={"method": method.name, "role": next(iter(method.eval_models())),
                                                              "steps": result["steps"], "train_images": trained_on(run),
                                                              "flip": cfg.data.flip})
        summary = {
            "steps": result["steps"], "wall_s": result["wall_s"], "nonfinite_steps": result["nonfinite_steps"],
            "eval": {role: rep.as_dict() for role, rep in reports.items()}, "model": str(model_path),
            "roles": list(reports), "method": method.name,
        }
        write_json_main(info, out / "eval.json", summary)
        if reports:  # the saved model's precision-recall curves and confusion matrix on the val split
            role, rep = next(iter(reports.items()))
            rep.plot(out, f"{method.name} ({role}) on val")
    result.update({"out_dir": str(out), "model": str(model_path), "reports": reports})
    return result


def to_device(batch: dict, device: torch.device) -> dict:
    if device.type == "cpu":
        return batch
    from dataclasses import replace

    def move(v):
        return replace(v, image=v.image.to(device, non_blocking=True), target=v.target.to(device))

    return {name: stream.map_views(move) for name, stream in batch.items()}


def print_outputs(result: dict, extra: dict[str, str] | None = None, file=None) -> None:
    """Where a finished run put what it wrote, one aligned line each (``extra``: name -> line, after the model),
    and the command that continues it from its own ``config.json``."""
    out = result["out_dir"]
    lines = {"model": result["model"], **(extra or {})}
    if result.get("reports"):
        lines["curves"] = f"{out}/pr_curve.png  (precision-recall of each class on val)  {out}/confusion.png"
    lines["logs"] = f"{out}/metrics.jsonl   TensorBoard: tensorboard --logdir {out}/tb"
    lines["resume"] = f"minedet train {out}/config.json --resume {out}/checkpoints/last.pt"
    for name, line in lines.items():
        print(f"{name + ':':<9} {line}", file=file or sys.stdout)


def print_reports(result: dict, file=None) -> None:
    file = file or sys.stdout
    reports = result.get("reports", {})
    for i, (role, rep) in enumerate(reports.items()):
        tag = f"{role} (saved model)" if i == 0 else role
        print(f"\n== {tag}: pycocotools AP on the val split ==", file=file)
        print(rep.table(), file=file)


