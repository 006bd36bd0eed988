"""The Method interface: what a training method gives the one training loop.

A method is an ``nn.Module`` (so DDP can wrap it whole) whose ``forward(batch)`` is
:meth:`Method.training_step`: a flat dict of *weighted, prefixed* losses (``"sup/classification"``,
``"o/bbox_regression"``, ...). The trainer sums the values in one line. Weights are applied where
each loss is made, never chosen later by key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from torch import Tensor, nn

from minedet.data.transforms import Compose
from minedet.errors import MinedetError
from minedet.models.detector import DetectorAdapter
from minedet.pseudo import semantics


def detectors_own(default=None):
    """An option whose default (``None``, or a word such as ``"auto"`` where ``None`` already means off) stands
    for the detector adapter's own value; ``--help`` says so."""
    return field(default=default, metadata={"none": "the detector's"})


def check_share(key: str, value, shown=None, words: str = "") -> None:
    """A ``method.<key>`` that is a share: a number in (0, 1] or None; else one clear error (``shown``: the value as
    the user wrote it, when ``value`` was resolved from it; ``words``: other values it may take)."""
    if value is not None and (isinstance(value, (str, bool)) or not 0.0 < value <= 1.0):
        raise MinedetError(f"method.{key} must be in (0, 1]{words} or null, got {value if shown is None else shown!r}")


def prefixed(losses: dict[str, Tensor], prefix: str, weight: float = 1.0) -> dict[str, Tensor]:
    """``{prefix + "/" + k: weight * v}`` (MMDetection's ``rename_loss_dict(reweight_loss_dict(...))``)."""
    return {f"{prefix}/{k}": v * weight for k, v in losses.items()}


@dataclass
class PreStage:
    """Something a method trains before its own training, by the same training loop (the run
    assembles it: :func:`minedet.run.run_prestages`), e.g. ACRST's image-level classifier.

    Fields:
        name: its sub-folder of the run (``OUT/NAME/``: checkpoints, metrics) and its result file
            ``OUT/NAME.pt``; a run whose result file exists loads it instead of training again.
        module: an ``nn.Module`` the loop can train: ``forward(batch) -> {name: weighted loss}``,
            ``after_step(step)``, ``log_metrics()``, ``extra_state()`` / ``load_extra_state(state)``.
        batches: ``batches(start_step, rank, world) -> iterator`` of this process's batches, from
            ``start_step`` on exactly what an uninterrupted run would see.
        steps, lr: its schedule (AdamW without weight decay, constant rate).
        seed: the global RNG seed of its loop (dropout and the like), plus the process's rank.
        result: ``result(module) -> artefact`` once trained; ``save(artefact, path)`` and
            ``load(path) -> artefact`` write and read the result file; ``use(artefact)`` hands it
            to the method (on every process).
        meta: what identifies this training (its options, the data sizes); a checkpoint left in
            the sub-folder by another configuration is not resumed.
    """

    name: str
    module: nn.Module
    batches: Callable[[int, int, int], Iterator[Any]]
    steps: int
    lr: float
    seed: int
    result: Callable[[nn.Module], Any]
    save: Callable[[Any, Path], None]
    load: Callable[[Path], Any]
    use: Callable[[Any], None]
    meta: dict = field(default_factory=dict)


class Method(nn.Module):
    """Base class. Subclasses set ``name`` and implement :meth:`training_step`.

    Args:
        detector: the student detector (the model being trained).

    Data contract: :meth:`streams` names the data streams the method consumes and, per stream,
    the views each sample must carry (name -> photometric/geometric transform applied after the
    shared base transform). A batch is ``{stream: collated batch}``.
    """

    name = "method"
    #: options this method trains best with on the user's own data, per detector (``model.name`` -> ``{key: value}``;
    #: ``"*"``: on any detector, a detector's own entry winning): ``minedet train METHOD --train ...`` proposes them
    #: (printed) unless the command line sets the key or ``method.paper=true``; presets name their own
    own_data: dict[str, dict[str, str]] = {}

    def __init__(self, detector: DetectorAdapter) -> None:
        super().__init__()
        self.detector = detector
        self.metrics: dict[str, float] = {}
        self.datasets: dict = {}  # stream -> dataset, from bind

    # ---------------------------------------------------------------- data contract
    def streams(self) -> dict[str, dict[str, Compose]]:
        return {"labelled": {"o": Compose([])}}

    def bind(self, datasets: dict, out_dir: str | None = None) -> None:
        """Called once before training, on every process, with the stream datasets and the run's output folder
        (for measurement against hidden truth, renders, ACRST's bank snapshots). Default: keeps the datasets
        (:meth:`known_background` reads the boxes a reviewer rejected from them); a subclass calls it."""
        self.datasets.clear()
        self.datasets.update(datasets)

    def known_background(self, stream: str, image_ids: list[int], views: list) -> list | None:
        """The boxes a reviewer rejected on each view's image (``image_ids[i]`` is ``views[i]``'s), in that view's
        frame, for :meth:`DetectorAdapter.loss`'s ``background``; None where the stream's data rejected none."""
        ds = self.datasets.get(stream)
        if not getattr(getattr(ds, "data", None), "rejected_by_image", None):
            return None
        return semantics.known_background(ds, image_ids, [v.map for v in views])

    def bind_val(self, val) -> None:
        """Called once before training, on every process, with the validation dataset (None without ``data.val``),
        for a method that checks itself on it (co-mining's ``method.min_val_precision``). Default: nothing."""

    def prestages(self) -> list[PreStage]:
        """What must be trained before this method's first step (after :meth:`bind`). Default: nothing."""
        return []

    def schedule_warnings(self, max_steps: int) -> list[str]:
        """What in this method's options does not fit a run of ``max_steps`` steps (one line each; the run
        prints them and goes on). Default: nothing."""
        return []

    def budget_notes(self, passes: dict[str, float]) -> list[str]:
        """What the measurements say about spending this run's compute otherwise (one line each; the run prints
        them and goes on). ``passes[stream]``: how many times the run goes over that stream's images (steps x
        global batch x accumulation / images). Default: nothing."""
        return []

    # ---------------------------------------------------------------- the step
    def training_step(self, batch: dict) -> dict[str, Tensor]:
        """The step's losses (a configuration of the self-training template also returns its step record)."""
        raise NotImplementedError  # abstract

    def forward(self, batch: dict) -> dict[str, Tensor]:
        return self.training_step(batch)

    def after_step(self, step: int) -> None:
        """Called after each optimiser step (the self-training template runs its source, parts and hooks)."""

    def log_metrics(self) -> dict[str, float]:
        """Scalars to log for the last step (pseudo-label counts, quality, ...); cleared on read."""
        m, self.metrics = self.metrics, {}
        return m

    # ---------------------------------------------------------------- evaluation / export
    def eval_models(self) -> dict[str, DetectorAdapter]:
        """The detectors to evaluate, by role; the first one is the default export."""
        return {"student": self.detector}

    def export_model(self) -> DetectorAdapter:
        return next(iter(self.eval_models().values()))

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    @staticmethod
    def images(views: list) -> list[Tensor]:
        return [v.image for v in views]

    @staticmethod
    def targets(views: list) -> list:
        return [v.target for v in views]
