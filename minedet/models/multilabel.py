"""ACRST's semi-supervised multi-label learning (SSMLL): an image-level "which classes are here"
classifier trained by Mean Teacher, whose *negative* labels veto pseudo boxes
(:func:`minedet.pseudo.filters.multilabel_veto`, the second stage of two-stage filtering).

Zhang et al., "Semi-Supervised Object Detection with Adaptive Class-Rebalancing Self-Training",
AAAI 2022, section "Two-stage Pseudo-label Filtering" and Implementation Details (SSMLL). The paper
builds on a ResNet-50 CTran; here the body is any :func:`build_classifier` network
(EfficientNet-Lite0 with the packaged ImageNet weights by default) with a K-way sigmoid head.

Training (:class:`MultiLabelMeanTeacher` over :class:`MultiLabelBatches`, run by minedet's one
training loop as ACRST's pre-stage, with its DDP, AMP, checkpoints and resume):

* burn-in: labelled images only, image-level targets from their boxes (:func:`image_labels`),
  focal binary cross-entropy (:func:`focal_bce`);
* labelled images get a random horizontal flip (the weak view; image-level labels do not change);
* at the end of burn-in the teacher becomes an exact copy of the student
  (:class:`~minedet.models.ema.BurnInTeacher`, the detector's schedule), then follows it by EMA after every step;
* afterwards each step also draws unlabelled images: the teacher's probabilities on the weak view
  (the image itself, no flip) become binary pseudo-labels (``p >= pos_thresh``), which supervise the
  student's strong view (flip + :func:`view_transform("strong")`: colour jitter, blur, cutout) with
  the same focal BCE. Losses ``{"sup/ml", "unsup/ml"}`` are summed unweighted (1:1 batches).

Images are resized to ``image_size x image_size`` (bilinear, antialiased when shrinking) before any
augmentation, as the paper resizes to 576 x 576; image-level labels are invariant to the flip.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from minedet.data.datasets import DetectionDataset, coco_target
from minedet.data.transforms import Compose, RandomHorizontalFlip, view_transform
from minedet.models.ema import BurnInTeacher
from minedet.errors import MinedetError
from minedet.io import load_checkpoint, save_torch_atomic
from minedet.models.backbones import build_classifier
from minedet.seeding import seeded
from minedet.structures import Target

__all__ = [
    "MULTILABEL_FORMAT",
    "MultiLabelClassifier",
    "MultiLabelOptions",
    "MultiLabelBatches",
    "MultiLabelMeanTeacher",
    "focal_bce",
    "image_labels",
    "image_probabilities",
    "image_truth",
    "load_multilabel",
    "negative_label_quality",
    "new_classifier",
    "save_multilabel",
    "seeded",
]

#: ``"format"`` entry of a file written by :func:`save_multilabel`
MULTILABEL_FORMAT = "minedet-multilabel"


# --------------------------------------------------------------------------------------- model


class MultiLabelClassifier(nn.Module):
    """An image-level multi-label classifier: ``forward(images) -> logits float[B, K]``.

    Args:
        num_classes: K, one sigmoid output per class (contiguous labels ``0..K-1``).
        backbone: a :func:`build_classifier` name (``"effnet_lite0"``, ``"resnet50"``, ...).
        image_size: every image is resized to ``image_size x image_size`` pixels.
        pretrained: load the backbone's packaged ImageNet weights (the head is always new).
        net: a prebuilt network to use instead of building ``backbone`` (another body, or a tiny one
            in tests): ``float[B, 3, S, S] -> logits[B, num_classes]``, carrying ``.image_mean`` and
            ``.image_std`` (lists of 3 floats, 0..1 pixels); ``backbone`` then only names it.

    ``images``: a list of float[3, H_i, W_i] (sizes may differ) or a float[B, 3, H, W] batch, RGB
    in [0, 1]. Each is resized (bilinear, antialiased) to the square input and normalised with the
    backbone's ``image_mean`` / ``image_std``; inputs are moved to the model's device.
    """

    def __init__(self, num_classes: int, backbone: str = "effnet_lite0", image_size: int = 64,
                 pretrained: bool = True, *, net: nn.Module | None = None) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise MinedetError(f"num_classes must be a positive integer, got {num_classes!r}")
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise MinedetError(f"image_size must be a positive integer, got {image_size!r}")
        self.num_classes = num_classes
        self.backbone = backbone
        self.image_size = image_size
        if net is None:
            net = build_classifier(backbone, num_classes=num_classes, pretrained=pretrained)
        elif not (hasattr(net, "image_mean") and hasattr(net, "image_std")):
            raise ValueError("a prebuilt net must carry .image_mean and .image_std")
        self.net = net
        # non-persistent: the state dict holds the network's weights only
        self.register_buffer("mean", torch.tensor(self.net.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.net.image_std).view(1, 3, 1, 1), persistent=False)

    def resize(self, images: Sequence[Tensor] | Tensor) -> Tensor:
        """float[B, 3, S, S] (``S = image_size``), on the model's device, still in [0, 1]."""
        size = (self.image_size, self.image_size)
        device = self.mean.device
        if isinstance(images, Tensor):
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(f"images must be float[B, 3, H, W], got {tuple(images.shape)}")
            x = images.to(device=device, dtype=torch.float32)
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            return x
        out = []
        for im in images:
            if im.ndim != 3 or im.shape[0] != 3:
                raise ValueError(f"each image must be float[3, H, W], got {tuple(im.shape)}")
            out.append(_resize_one(im.to(device=device, dtype=torch.float32), self.image_size))
        if not out:
            return torch.zeros((0, 3, *size), device=device)
        return torch.stack(out)

    def forward(self, images: Sequence[Tensor] | Tensor) -> Tensor:
        x = self.resize(images)
        return self.net((x - self.mean) / self.std)

    @torch.no_grad()
    def probabilities(self, images: Sequence[Tensor] | Tensor) -> Tensor:
        """``sigmoid(logits)`` float[B, K] in eval mode (BatchNorm running statistics); the
        previous train/eval mode is restored afterwards."""
        was = self.training
        self.eval()
        try:
            return torch.sigmoid(self(images))
        finally:
            self.train(was)


def _resize_one(image: Tensor, size: int) -> Tensor:
    if tuple(image.shape[-2:]) == (size, size):
        return image
    return F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


# --------------------------------------------------------------------------------------- loss


def focal_bce(logits: Tensor, targets: Tensor, gamma: float = 2.0, alpha: float | None = None,
              mask: Tensor | None = None) -> Tensor:
    """Focal binary cross-entropy (ACRST's SSMLL loss), the mean over the unmasked entries.

    ``loss = w * (1 - p_t)**gamma * BCE(logits, targets)`` per entry (Lin et al. 2017;
    torchvision's :func:`sigmoid_focal_loss`), with ``p_t`` the probability of the target class and
    ``w = alpha`` for positive, ``1 - alpha`` for negative targets, or 1 when ``alpha is None``.

    ``alpha`` defaults to None (no class weighting): the paper names only "a focal binary cross
    entropy loss"; RetinaNet's alpha = 0.25 balances ~1:1000 anchor-level positives against
    background, whereas image-level labels are far less skewed, and a down-weighted positive term
    would make the classifier shyer about presence — the opposite of what a *negative*-label veto
    needs (a missed positive becomes a wrongly vetoed box). With gamma = 0 and alpha None this is
    plain BCE.

    Args:
        logits: float[B, K].
        targets: float[B, K] in [0, 1] (binary labels or pseudo-labels).
        gamma: focusing exponent (>= 0).
        alpha: positive-class weight in [0, 1], or None.
        mask: float or bool [B, K]; 0 ignores an entry (e.g. an uncertain pseudo-label), other
            values weight it. The result is ``sum(mask * loss) / sum(mask)``, and 0 (finite, with
            a graph) when everything is masked.

    Returns:
        a scalar tensor.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] or None, got {alpha}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    targets = targets.to(logits.dtype)
    loss = sigmoid_focal_loss(logits, targets, alpha=-1.0 if alpha is None else float(alpha),
                              gamma=float(gamma), reduction="none")
    if mask is None:
        return loss.mean() if loss.numel() else loss.sum()
    if mask.shape != logits.shape:
        raise ValueError(f"mask {tuple(mask.shape)} and logits {tuple(logits.shape)} differ in shape")
    w = mask.to(loss.dtype)
    # where(): a NaN loss under a zero mask must not leak into the sum
    total = torch.where(w != 0, loss * w, torch.zeros_like(loss)).sum()
    return total / w.sum().clamp_min(torch.finfo(loss.dtype).tiny)


# --------------------------------------------------------------------------------------- labels


def image_labels(target: Target, num_classes: int) -> Tensor:
    """float[K]: 1 where ``target`` has at least one box of class k, else 0 (all 0 for no boxes).

    Raises ValueError when a label lies outside ``0..num_classes-1``.
    """
    out = torch.zeros(num_classes, dtype=torch.float32)
    labels = target.labels.detach().cpu().long()
    if labels.numel():
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise ValueError(f"labels {sorted(set(labels.tolist()))} outside 0..{num_classes - 1}")
        out[labels] = 1.0
    return out


def image_truth(dataset: DetectionDataset) -> dict[int, Tensor]:
    """image id -> float[K] image-level truth: the dataset's own annotations (whatever
    ``with_targets`` says) together with its hidden (erased) ones. For measurement only."""
    k = dataset.data.num_classes
    return {i: image_labels(Target.cat([coco_target(dataset.data, i), dataset.hidden_target(i)]), k)
            for i in dataset.ids}


# --------------------------------------------------------------------------------------- training


@dataclass
class MultiLabelOptions:
    """SSMLL training options.

    ``image_size`` 64, ``steps`` 300, ``burn_in`` 100, ``batch_size`` 16 labelled + 16 unlabelled
    (1:1, as the paper's 64 + 64), ``lr`` 1e-3 (Adam), ``ema_decay`` 0.99: a short CPU schedule.
    The paper trains 36k steps (2k burn-in) at 576 px with Adam lr 1e-5 on COCO-standard; with a few
    hundred steps at 64 px that rate barely moves a fresh head, hence 1e-3, and the teacher must
    follow within tens of steps, hence 0.99 rather than a 0.9996-style keep rate. ``pos_thresh``:
    teacher probability >= 0.5 is a positive image-level pseudo-label, else negative. ``gamma``:
    the focal exponent (2, Lin et al.). ``seed`` fixes initialisation, sampling and augmentation.
    ``pretrained``: start from the backbone's packaged ImageNet weights.
    """

    image_size: int = 64
    steps: int = 300
    burn_in: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    ema_decay: float = 0.99
    pos_thresh: float = 0.5
    gamma: float = 2.0
    seed: int = 0
    backbone: str = "effnet_lite0"
    pretrained: bool = True

    def __post_init__(self) -> None:
        ints = {"image_size": 1, "steps": 0, "burn_in": 0, "batch_size": 1}
        for name, lo in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise MinedetError(f"multi-label {name} must be an integer >= {lo}, got {v!r}")
        checks = {"lr": (0.0, math.inf, False), "ema_decay": (0.0, 1.0, True),
                  "pos_thresh": (0.0, 1.0, True), "gamma": (0.0, math.inf, True)}
        for name, (lo, hi, lo_ok) in checks.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or not (lo <= v if lo_ok else lo < v) or v > hi:
                raise MinedetError(f"multi-label {name} must be a number in {'[' if lo_ok else '('}{lo}, {hi}], got {v!r}")


def _order(n: int, seed: int, skip: int) -> Iterator[int]:
    """Endless shuffled epochs of ``range(n)`` (``torch.randperm`` under ``seed``), from draw ``skip`` on."""
    g = torch.Generator().manual_seed(seed)
    epochs, skip = divmod(skip, n)
    for _ in range(epochs):  # a few hundred permutations at most: cheap to replay
        torch.randperm(n, generator=g)
    first = torch.randperm(n, generator=g).tolist()[skip:]
    yield from first
    while True:
        yield from torch.randperm(n, generator=g).tolist()


def _load(dataset: DetectionDataset, index: int) -> tuple[int, Tensor]:
    """(index actually loaded, file image float[3, H, W]); an undecodable image is replaced by the
    next one when the dataset skips bad images (as :meth:`DetectionDataset.__getitem__` does)."""
    tries = 0
    while True:
        try:
            return index, dataset.load(index)
        except MinedetError as e:
            if not dataset.skip_bad_images or tries >= 10:
                raise
            dataset.bad_images += 1
            if index not in dataset._warned:
                dataset._warned.add(index)
                print(f"minedet: warning: {e}; skipped (bad images so far: {dataset.bad_images})", file=sys.stderr)
            tries += 1
            index = (index + 1) % len(dataset)


def new_classifier(num_classes: int, options: MultiLabelOptions) -> MultiLabelClassifier:
    """The untrained student of ``options`` (backbone, image size, packaged weights), initialised
    under ``options.seed`` without touching the caller's global RNG."""
    with seeded(options.seed):
        return MultiLabelClassifier(num_classes, options.backbone, options.image_size, options.pretrained)


class MultiLabelBatches:
    """The SSMLL training batches, one per step: ``batches(start_step) -> iterator`` (the shape a
    training loop resumes from: from ``start_step`` on it yields exactly what an uninterrupted run
    would).

    Each batch is ``{"labelled": (weak views float[b, 3, S, S], image-level targets float[b, K])}``
    and, from step ``burn_in`` on with unlabelled images, ``"unlabelled": (weak views = the resized
    images, strong views)``. Labelled views get a random horizontal flip; strong views a flip and
    :func:`view_transform("strong")` (colour jitter, blur, cutout). ``S`` is ``image_size``.

    The global batch (``options.batch_size`` per stream) is drawn from shuffled epochs seeded by
    ``options.seed``; each image's augmentation has its own generator seeded by (seed, step,
    position), so a batch does not depend on what came before it. Process ``rank`` of ``world``
    (DDP) takes positions ``rank::world`` of every global batch, which must divide evenly.
    """

    def __init__(self, labelled: DetectionDataset, unlabelled: DetectionDataset | None, num_classes: int,
                 options: MultiLabelOptions, *, image_size: int | None = None, rank: int = 0, world: int = 1) -> None:
        if len(labelled) == 0:
            raise MinedetError("multi-label training needs at least one labelled image")
        if options.batch_size % world:
            raise MinedetError(f"method.multilabel.batch_size={options.batch_size} is the global batch and must be "
                               f"a multiple of the {world} processes")
        self.labelled = labelled
        self.unlabelled = unlabelled if unlabelled is not None and len(unlabelled) > 0 else None
        self.o = options
        self.size = image_size or options.image_size
        self.rank, self.world = rank, world
        self.targets = {i: image_labels(labelled.target(i), num_classes) for i in labelled.ids}
        self._weak = Compose([RandomHorizontalFlip(0.5)])
        self._strong = Compose([RandomHorizontalFlip(0.5), *view_transform("strong").transforms])

    def _view(self, image: Tensor, tf: Compose, step: int, stream: int, pos: int) -> Tensor:
        g = torch.Generator().manual_seed(((self.o.seed * 1_000_003 + step) * 4 + stream) * 65_537 + pos)
        return tf(image, Target.empty(), g)[0]

    def __call__(self, start_step: int) -> Iterator[dict]:
        o, bs = self.o, self.o.batch_size
        base = o.seed * 1_000_003
        lab = _order(len(self.labelled), base + 1, start_step * bs)
        unl = None
        if self.unlabelled is not None:
            unl = _order(len(self.unlabelled), base + 2, max(0, start_step - o.burn_in) * bs)
        step = start_step
        while True:
            batch = {"labelled": self._labelled(step, [next(lab) for _ in range(bs)])}
            if unl is not None and step >= o.burn_in:
                batch["unlabelled"] = self._unlabelled(step, [next(unl) for _ in range(bs)])
            yield batch
            step += 1

    def _labelled(self, step: int, order: list[int]) -> tuple[Tensor, Tensor]:
        images, targets = [], []
        for pos in range(self.rank, len(order), self.world):
            index, image = _load(self.labelled, order[pos])
            images.append(self._view(_resize_one(image, self.size), self._weak, step, 0, pos))
            targets.append(self.targets[self.labelled.ids[index]])
        return torch.stack(images), torch.stack(targets)

    def _unlabelled(self, step: int, order: list[int]) -> tuple[Tensor, Tensor]:
        assert self.unlabelled is not None
        weak, strong = [], []
        for pos in range(self.rank, len(order), self.world):
            image = _resize_one(_load(self.unlabelled, order[pos])[1], self.size)
            weak.append(image)
            strong.append(self._view(image, self._strong, step, 1, pos))
        return torch.stack(weak), torch.stack(strong)


class MultiLabelMeanTeacher(nn.Module):
    """Mean Teacher for image-level multi-label classification (ACRST SSMLL), shaped for the one
    training loop (:class:`minedet.engine.trainer.Trainer`): ``forward(batch) -> losses``,
    ``after_step(step)``, ``extra_state`` / ``load_extra_state``.

    Args:
        student: the classifier to train (in place).
        options: :class:`MultiLabelOptions` (``burn_in``, ``ema_decay``, ``pos_thresh``, ``gamma``).

    Steps ``0 .. burn_in - 1`` see labelled images only (``sup/ml``); the step that ends burn-in
    copies the student into the teacher (:class:`~minedet.models.ema.BurnInTeacher`, the detector's schedule), every later step moves the
    teacher by EMA. After burn-in a batch also holds unlabelled images: the teacher's
    probabilities on the weak view, thresholded at ``pos_thresh``, supervise the student's strong
    view (``unsup/ml``, focal BCE; the two losses summed unweighted, 1:1 batches).
    """

    def __init__(self, student: MultiLabelClassifier, options: MultiLabelOptions | None = None) -> None:
        super().__init__()
        self.options = options or MultiLabelOptions()
        self.student = student
        self.ema = BurnInTeacher(student, self.options.ema_decay, self.options.burn_in)

    @property
    def steps_done(self) -> int:
        return self.ema.steps_done

    @property
    def teacher(self) -> MultiLabelClassifier | None:
        """The EMA teacher once burn-in has passed, else None."""
        return self.ema.module if self.ema.ready else None  # type: ignore[return-value]

    @torch.no_grad()
    def pseudo_labels(self, weak: Tensor) -> Tensor:
        """Binary image-level pseudo-labels float[B, K]: teacher probability >= ``pos_thresh``."""
        return (self.ema.module.probabilities(weak) >= self.options.pos_thresh).float()

    def forward(self, batch: dict) -> dict[str, Tensor]:
        g = self.options.gamma
        lab, y = batch["labelled"]
        y = y.to(self.student.mean.device)
        if "unlabelled" not in batch:
            return {"sup/ml": focal_bce(self.student(lab), y, g)}
        weak, strong = batch["unlabelled"]
        pseudo = self.pseudo_labels(weak)
        logits = self.student(torch.cat([lab, strong]))  # one forward: BatchNorm sees both halves
        return {"sup/ml": focal_bce(logits[: len(lab)], y, g), "unsup/ml": focal_bce(logits[len(lab):], pseudo, g)}

    def after_step(self, step: int) -> None:
        self.ema.follow(step, self.student)

    def log_metrics(self) -> dict[str, float]:
        return {}

    def extra_state(self) -> dict:
        return self.ema.extra_state()

    def load_extra_state(self, state: dict) -> None:
        self.ema.load_extra_state(state)

    def result(self) -> MultiLabelClassifier:
        """A trainable copy in eval mode of the teacher once burn-in has passed, else of the student."""
        out = copy.deepcopy(self.teacher if self.teacher is not None else self.student)
        for p in out.parameters():
            p.requires_grad_(True)
        return out.eval()


# --------------------------------------------------------------------------------------- inference


@torch.no_grad()
def image_probabilities(classifier: MultiLabelClassifier, dataset: DetectionDataset, *, batch_size: int = 32,
                        device: str | torch.device = "cpu", progress: bool = False, rank: int = 0,
                        world: int = 1) -> dict[int, Tensor]:
    """image id -> class probabilities float[K] (CPU) for the file images of ``dataset`` (no
    augmentation; the dataset's views are ignored). ``classifier`` is moved to ``device``.

    Rank ``rank`` of ``world`` computes every world-th image (positions ``rank::world``); the caller
    gathers the dicts. An undecodable image raises MinedetError (a measurement must not skip).
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, world), got rank={rank}, world={world}")
    classifier.to(device)
    mine = list(range(len(dataset)))[rank::world]
    out: dict[int, Tensor] = {}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mine), desc="multi-label", unit="img", leave=False, file=sys.stderr)
    try:
        for start in range(0, len(mine), batch_size):
            chunk = mine[start : start + batch_size]
            probs = classifier.probabilities([dataset.load(i) for i in chunk]).cpu()
            for i, p in zip(chunk, probs):
                out[dataset.ids[i]] = p
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return out


def negative_label_quality(probs: Mapping[int, Tensor], truth: Mapping[int, Tensor], tau_ml: float = 0.2,
                           pos_thresh: float = 0.7) -> dict[str, float]:
    """Accuracy and recall of image-level pseudo-labels against the truth (ACRST Table 9).

    Over every (image, class) pair of the images in ``probs`` (each must be in ``truth``):

    * negatives: predicted where ``p < tau_ml`` ("class absent"); ``neg_accuracy`` = share of
      predicted negatives that are truly absent, ``neg_recall`` = share of truly absent pairs that
      are predicted negative;
    * positives: predicted where ``p >= pos_thresh`` (the paper's note uses 0.7);
      ``pos_accuracy`` / ``pos_recall`` likewise for truly present pairs.

    A ratio with a zero denominator (no images, no predicted / true negatives) is NaN, as in
    :mod:`minedet.pseudo.quality`. Counts ``n_pairs``, ``n_neg_pred``, ``n_neg_true``,
    ``n_pos_pred``, ``n_pos_true`` and the thresholds come along.
    """
    ids = sorted(probs)
    missing = [i for i in ids if i not in truth]
    if missing:
        raise ValueError(f"no truth for image id(s) {missing[:5]}")
    if ids:
        p = torch.stack([probs[i].detach().float().cpu() for i in ids])
        t = torch.stack([truth[i].detach().float().cpu() for i in ids])
        if p.shape != t.shape:
            raise ValueError(f"probabilities {tuple(p.shape)} and truth {tuple(t.shape)} differ in shape")
    else:
        p = t = torch.zeros((0, 0))
    present = t > 0.5
    neg_pred, pos_pred = p < tau_ml, p >= pos_thresh

    def ratio(a: Tensor, b: Tensor) -> float:
        return float(a.sum()) / float(b.sum()) if int(b.sum()) else float("nan")

    return {
        "tau_ml": float(tau_ml),
        "pos_thresh": float(pos_thresh),
        "n_pairs": float(p.numel()),
        "neg_accuracy": ratio(neg_pred & ~present, neg_pred),
        "neg_recall": ratio(neg_pred & ~present, ~present),
        "n_neg_pred": float(neg_pred.sum()),
        "n_neg_true": float((~present).sum()),
        "pos_accuracy": ratio(pos_pred & present, pos_pred),
        "pos_recall": ratio(pos_pred & present, present),
        "n_pos_pred": float(pos_pred.sum()),
        "n_pos_true": float(present.sum()),
    }


# --------------------------------------------------------------------------------------- files


def save_multilabel(classifier: MultiLabelClassifier, path: str | Path) -> None:
    """Write ``{"format": "minedet-multilabel", "num_classes", "backbone", "image_size", "model":
    state_dict}`` atomically (temporary name, then rename)."""
    save_torch_atomic(path, {
        "format": MULTILABEL_FORMAT,
        "num_classes": int(classifier.num_classes),
        "backbone": str(classifier.backbone),
        "image_size": int(classifier.image_size),
        "model": {k: v.detach().cpu() for k, v in classifier.state_dict().items()},
    })


def load_multilabel(path: str | Path) -> MultiLabelClassifier:
    """A classifier written by :func:`save_multilabel`, on the CPU, in eval mode.

    Loads with ``torch.load(weights_only=True)`` (no code from the file runs). Any other file (an
    exported detector, a checkpoint, a corrupt or foreign file) is one MinedetError naming it.
    """
    ck = load_checkpoint(path)
    if ck.get("format") != MULTILABEL_FORMAT:
        raise MinedetError(f"not a minedet multi-label classifier (format {ck.get('format')!r}, "
                           f"expected {MULTILABEL_FORMAT!r})", file=str(path))
    try:
        model = MultiLabelClassifier(int(ck["num_classes"]), str(ck["backbone"]), int(ck["image_size"]),
                                     pretrained=False)
        model.load_state_dict(ck["model"])
    except MinedetError as e:
        raise MinedetError(e.rule, file=str(path)) from None
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0][:160] if str(e) else e.__class__.__name__
        raise MinedetError(f"multi-label classifier file does not fit its model ({msg})", file=str(path)) from None
    return model.eval()
