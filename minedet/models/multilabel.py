"""ACRST's semi-supervised multi-label learning (SSMLL): an image-level "which classes are here"
classifier trained by Mean Teacher, whose *negative* labels veto pseudo boxes
(:func:`minedet.pseudo.filters.multilabel_veto`, the second stage of two-stage filtering).

Zhang et al., "Semi-Supervised Object Detection with Adaptive Class-Rebalancing Self-Training",
AAAI 2022, section "Two-stage Pseudo-label Filtering" and Implementation Details (SSMLL). The paper
builds on a ResNet-50 CTran; here the body is any :func:`build_classifier` network
(EfficientNet-Lite0 with the packaged ImageNet weights by default) with a K-way sigmoid head.

Training (:func:`train_multilabel`, :class:`MultiLabelTrainer`):

* burn-in: labelled images only, image-level targets from their boxes (:func:`image_labels`),
  focal binary cross-entropy (:func:`focal_bce`);
* labelled images get a random horizontal flip (the weak view; image-level labels do not change);
* at the end of burn-in the teacher becomes an exact copy of the student
  (:meth:`ModelEMA.copy_from`), then follows it by EMA after every step;
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
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from minedet.data.datasets import DetectionDataset, coco_target
from minedet.data.transforms import Compose, RandomHorizontalFlip, view_transform
from minedet.models.ema import ModelEMA
from minedet.errors import MinedetError
from minedet.io import load_checkpoint, save_torch_atomic
from minedet.models.backbones import build_classifier
from minedet.structures import Target

__all__ = [
    "MULTILABEL_FORMAT",
    "MultiLabelClassifier",
    "MultiLabelOptions",
    "MultiLabelTrainer",
    "focal_bce",
    "image_labels",
    "image_probabilities",
    "image_truth",
    "load_multilabel",
    "negative_label_quality",
    "save_multilabel",
    "train_multilabel",
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


def _epochs(n: int, g: torch.Generator) -> Iterator[int]:
    """Endless shuffled epochs of ``range(n)`` drawn from ``g``."""
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


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Global RNG (initialisation, dropout) seeded by ``seed`` inside, restored outside."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class MultiLabelTrainer:
    """Mean Teacher for image-level multi-label classification (ACRST SSMLL); one step at a time.

    Args:
        labelled: images with boxes (``labelled.target(image_id)`` gives the image-level targets;
            images without boxes are all-negative examples). Its views are ignored.
        unlabelled: images without labels, or None / empty (then labelled images only).
        num_classes: K.
        options: :class:`MultiLabelOptions`.
        device: where the student and the teacher live.
        model: the student to train (in place), instead of a new ``MultiLabelClassifier(num_classes,
            options.backbone, options.image_size, options.pretrained)`` initialised under
            ``options.seed``; its own ``image_size`` is used.

    Attributes: ``student`` (trained by Adam), ``ema`` (:class:`ModelEMA`; its ``module`` is the
    teacher, copied from the student when ``step`` reaches ``burn_in``), ``step`` (optimiser steps
    done). Steps ``0 .. burn_in - 1`` are labelled-only; from step ``burn_in`` on each step also has
    the unlabelled loss and ends with an EMA update.
    """

    def __init__(self, labelled: DetectionDataset, unlabelled: DetectionDataset | None, num_classes: int,
                 options: MultiLabelOptions | None = None, *, device: str | torch.device = "cpu",
                 model: MultiLabelClassifier | None = None) -> None:
        self.options = o = options or MultiLabelOptions()
        if len(labelled) == 0:
            raise MinedetError("multi-label training needs at least one labelled image")
        self.labelled = labelled
        self.unlabelled = unlabelled if unlabelled is not None and len(unlabelled) > 0 else None
        self.num_classes = num_classes
        self.device = torch.device(device)
        if model is None:
            with _seeded(o.seed, self.device):
                model = MultiLabelClassifier(num_classes, o.backbone, o.image_size, o.pretrained)
        elif model.num_classes != num_classes:
            raise ValueError(f"the model has {model.num_classes} classes, the data {num_classes}")
        self.student = model.to(self.device)
        self.image_size = model.image_size
        self.student.train()
        self.ema = ModelEMA(self.student, o.ema_decay)  # a copy already: burn_in == 0 needs no other
        self.optimizer = torch.optim.Adam([p for p in self.student.parameters() if p.requires_grad], lr=o.lr)
        self.step = 0
        base = o.seed * 1_000_003
        self._lab_order = _epochs(len(labelled), torch.Generator().manual_seed(base + 1))
        self._unl_order = _epochs(len(self.unlabelled), torch.Generator().manual_seed(base + 2)) if self.unlabelled else None
        self._aug = torch.Generator().manual_seed(base + 3)
        self._weak = Compose([RandomHorizontalFlip(0.5)])  # labelled images
        self._strong = Compose([RandomHorizontalFlip(0.5), *view_transform("strong").transforms])
        self._rng = torch.Generator().manual_seed(base + 4)  # global-RNG substitute for dropout etc.
        self._targets = {i: image_labels(labelled.target(i), num_classes) for i in labelled.ids}

    @property
    def burned_in(self) -> bool:
        """True once the teacher exists (``step >= burn_in``)."""
        return self.step >= self.options.burn_in

    @property
    def teacher(self) -> MultiLabelClassifier | None:
        """The EMA teacher once burn-in has passed, else None."""
        return self.ema.module if self.burned_in else None  # type: ignore[return-value]

    def _view(self, image: Tensor, tf: Compose) -> Tensor:
        image = _resize_one(image, self.image_size)
        return tf(image, Target.empty(), self._aug)[0]

    def labelled_batch(self) -> tuple[Tensor, Tensor]:
        """(weak views float[B, 3, S, S], image-level targets float[B, K])."""
        images, targets = [], []
        for _ in range(self.options.batch_size):
            index, image = _load(self.labelled, next(self._lab_order))
            images.append(self._view(image, self._weak))
            targets.append(self._targets[self.labelled.ids[index]])
        return torch.stack(images).to(self.device), torch.stack(targets).to(self.device)

    def unlabelled_batch(self) -> tuple[Tensor, Tensor]:
        """(weak views = the resized images, strong views), each float[B, 3, S, S]."""
        assert self.unlabelled is not None and self._unl_order is not None
        weak, strong = [], []
        for _ in range(self.options.batch_size):
            _, image = _load(self.unlabelled, next(self._unl_order))
            image = _resize_one(image, self.image_size)
            weak.append(image)
            strong.append(self._view(image, self._strong))
        return torch.stack(weak).to(self.device), torch.stack(strong).to(self.device)

    @torch.no_grad()
    def pseudo_labels(self, weak: Tensor) -> Tensor:
        """Binary image-level pseudo-labels float[B, K]: teacher probability >= ``pos_thresh``."""
        return (self.ema.module.probabilities(weak) >= self.options.pos_thresh).float()

    def losses(self) -> dict[str, Tensor]:
        """One batch's weighted losses: ``sup/ml`` (+ ``unsup/ml`` after burn-in with unlabelled data)."""
        o = self.options
        lab, y = self.labelled_batch()
        if not self.burned_in or self.unlabelled is None:
            return {"sup/ml": focal_bce(self.student(lab), y, o.gamma)}
        weak, strong = self.unlabelled_batch()
        pseudo = self.pseudo_labels(weak)
        logits = self.student(torch.cat([lab, strong]))  # one forward: BatchNorm sees both halves
        return {"sup/ml": focal_bce(logits[: len(lab)], y, o.gamma),
                "unsup/ml": focal_bce(logits[len(lab):], pseudo, o.gamma)}

    def train_step(self) -> dict[str, float]:
        """One optimiser step; then the teacher is copied from the student when this step ends
        burn-in (``step == burn_in``), or follows it by EMA after burn-in."""
        self.student.train()
        with _seeded(int(torch.randint(2**62, (), generator=self._rng)), self.device):
            losses = self.losses()
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        self.step += 1
        if self.step == self.options.burn_in:
            self.ema.copy_from(self.student)
        elif self.step > self.options.burn_in:
            self.ema.update(self.student)
        return {k: float(v.detach()) for k, v in losses.items()}

    def fit(self, *, progress: bool = False) -> MultiLabelClassifier:
        """Run the remaining ``options.steps - step`` steps; return :meth:`result`."""
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.options.steps, initial=self.step, desc="multi-label", unit="step",
                       dynamic_ncols=True, file=sys.stderr)
        try:
            while self.step < self.options.steps:
                losses = self.train_step()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.4f}" for k, v in losses.items()}, refresh=False)
        finally:
            if bar is not None:
                bar.close()
        return self.result()

    def result(self) -> MultiLabelClassifier:
        """The teacher (a copy, eval mode) once burn-in has passed, else the student (eval mode)."""
        if self.teacher is None:
            return self.student.eval()
        out = copy.deepcopy(self.teacher)
        for p in out.parameters():
            p.requires_grad_(True)
        return out.eval()


def train_multilabel(labelled: DetectionDataset, unlabelled: DetectionDataset | None, num_classes: int,
                     options: MultiLabelOptions | None = None, *, progress: bool = False,
                     device: str | torch.device = "cpu",
                     model: MultiLabelClassifier | None = None) -> MultiLabelClassifier:
    """Train the SSMLL classifier by Mean Teacher (see :class:`MultiLabelTrainer`; ``model``: an
    untrained student to use instead of building one from ``options``); returns the teacher (a
    copy, eval mode) once ``options.steps > options.burn_in``, else the student (eval mode)."""
    return MultiLabelTrainer(labelled, unlabelled, num_classes, options, device=device,
                             model=model).fit(progress=progress)


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
