"""YAML configuration: typed sections, ``key=value`` overrides, unknown keys rejected with a suggestion.

A config file has the sections ``data``, ``model``, ``method``, ``train``. ``method`` holds
``name`` plus that method's own options (validated by the method's options dataclass). Overrides
on the command line use dotted keys: ``train.max_steps=500 method.tau=0.5``; values are parsed
as YAML scalars (``true``, ``0.1``, ``[60, 80]``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from minedet.errors import MinedetError
from minedet.models.spec import DetectorSettings
from minedet.options import from_dict, suggest_key


@dataclass
class DataConfig:
    """Where the data is and how batches are made.

    ``digits`` (a dict of ``build_digits`` arguments) builds the embedded dataset into
    ``cache_dir`` when the paths are not given. ``semi`` (``{percent: P, seed: S}``) splits the
    training set into labelled / unlabelled images (``minedet data split-semi``) into ``cache_dir``
    and sets ``train``, ``unlabelled`` and ``hidden`` (the unlabelled images' erased boxes, for
    measurement only) unless ``unlabelled`` is given. ``mixed`` (``{percent: P, sparse: S, mode: M,
    seed: N}``) flags the training images complete / sparse / none (``minedet data split-semi
    --sparse``) into ``cache_dir`` and sets ``train`` and ``hidden``. A training file whose images
    carry ``"labels"`` flags feeds each stream the images of its kind (see ``minedet.run.stream_data``).
    ``unflagged`` says what the images of a training file with no such flag are: ``complete`` (the default) or
    ``sparse`` (the boxes present are true, some objects unboxed: what ``minedet train mixed --train ...`` proposes
    for your own data). ``sparse`` names a separate file of sparsely labelled images.
    """

    train: str | None = None
    train_images: str | None = None
    val: str | None = None
    val_images: str | None = None
    unlabelled: str | None = None
    unlabelled_images: str | None = None
    hidden: str | None = None
    sparse: str | None = None
    sparse_images: str | None = None
    unflagged: str = "complete"
    digits: dict | None = None
    semi: dict | None = None
    mixed: dict | None = None
    cache_dir: str = ".cache/minedet"
    image_size: int = 128
    flip: float = 0.5
    batch_size: int = 8
    unlabelled_batch_size: int | None = None
    sparse_batch_size: int | None = None
    workers: int = 0
    strict: bool = False


@dataclass(kw_only=True)
class ModelConfig(DetectorSettings):
    """The detector to train: its settings (:class:`~minedet.models.spec.DetectorSettings`, whose defaults every
    spec shares) and where its weights come from.

    Attributes (besides the settings'):
        name: the detector ("retinanet" | "fcos" | "faster_rcnn").
        pretrained: load the backbone's ImageNet weights (shipped, offline).
        weights: a backbone weights file to load instead of the shipped ones.
        init: start from the weights of an exported ``model.pt`` (train again after a review).
    """

    name: str = "retinanet"
    pretrained: bool = True
    weights: str | None = None
    init: str | None = None


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. ``lr`` is for the whole (global) batch."""

    max_steps: int = 1000
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    warmup_factor: float = 0.001
    schedule: str = "cosine"
    milestones: list = field(default_factory=list)
    gamma: float = 0.1
    clip_grad: float | None = 10.0
    accumulate: int = 1
    seed: int = 0
    device: str = "auto"
    amp: str = "off"
    channels_last: bool | str = "auto"
    sync_bn: bool = False
    deterministic: bool = False
    eval_every: int = 0
    ckpt_every: int = 200
    log_every: int = 10
    max_nonfinite: int = 5
    out_dir: str = "runs/minedet"
    progress: bool = True
    threads: int = 0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: dict = field(default_factory=lambda: {"name": "supervised"})
    train: TrainConfig = field(default_factory=TrainConfig)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise MinedetError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """A copy of ``d`` with dotted overrides applied (``method.*`` keys may be new: the method validates them)."""
    import copy

    d = copy.deepcopy(d)
    for text in overrides:
        path, value = parse_override(text)
        node = d
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MinedetError(f"override {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return d


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise MinedetError(f"cannot read config: {e.strerror}", file=str(path)) from None
    try:
        d = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else None
        raise MinedetError(f"not valid YAML ({getattr(e, 'problem', e)})", file=str(path), record=where) from None
    if not isinstance(d, dict):
        raise MinedetError("a config must be a mapping of sections", file=str(path))
    return d


def build_config(d: dict, *, file: str | None = None) -> Config:
    known = [f.name for f in dataclasses.fields(Config)]
    for key in d:
        if key not in known:
            raise MinedetError(f"unknown section {key!r}{suggest_key(str(key), known)}", file=file)
    method = d.get("method") or {"name": "supervised"}
    if not isinstance(method, dict) or "name" not in method:
        raise MinedetError("section 'method' needs a 'name'", file=file)
    return Config(
        data=from_dict(DataConfig, d.get("data"), where="data", file=file),
        model=from_dict(ModelConfig, d.get("model"), where="model", file=file),
        method=dict(method),
        train=from_dict(TrainConfig, d.get("train"), where="train", file=file),
    )


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None), apply overrides, validate."""
    d = {} if path is None else load_yaml(path)
    d = apply_overrides(d, list(overrides))
    return build_config(d, file=None if path is None else str(path))


PRESETS_DIR = Path(__file__).parent / "configs"


def preset_path(name: str) -> Path:
    """A config shipped with the package (``minedet/configs/NAME.yaml``) or a file path (YAML, or the JSON a run
    writes as ``OUT/config.json``: JSON is YAML)."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml", ".json") and p.exists():
        return p
    q = PRESETS_DIR / f"{name}.yaml"
    if q.exists():
        return q
    known = sorted(x.stem for x in PRESETS_DIR.glob("*.yaml"))
    raise MinedetError(f"no config file or preset named {name!r}{suggest_key(name, known)}")
