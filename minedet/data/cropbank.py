"""CropBank and adaptive class rebalancing (ACRST, sections "CropBank" and "Adaptive
Class-Rebalancing Self-Training", Eq. 8-9).

A :class:`CropBank` stores *instance records*, not pixels: for every instance, which image list it
comes from (``source`` 0 = labelled dataset, 1 = unlabelled dataset), the image's position in that
dataset's ``data.images`` list (``index``), its box ``[x1, y1, x2, y2]`` in the **file image's
pixels** (the image as decoded from disk, before any transform), its contiguous class label
``0..K-1`` and a score (1.0 for ground truth). Crops are cut from the file at paste time
(:mod:`minedet.data.paste`).

The labelled bank is built once from ground truth (:meth:`CropBank.from_targets`); the pseudo bank
keeps the latest pseudo-labels of each unlabelled image (:meth:`CropBank.set_image`). The training
process turns the bank into a frozen :class:`BankSnapshot` (flat arrays + the class sampling
probabilities of Eq. 9) and hands it to DataLoader workers through a file: :func:`publish` writes it
atomically, a :class:`SnapshotReader` in each worker (or in the main process, with ``workers=0``)
reloads it when the file changes.

This module knows no model: pseudo-labels arrive as :class:`~minedet.structures.Target`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from minedet.structures import Target

# One record per instance, packed: 16 + 2 + 4 = 22 bytes (source and index are the dict key).
_RECORD = np.dtype([("box", "<f4", (4,)), ("label", "<i2"), ("score", "<f4")])
# Bytes per record in the flat arrays: source int8 + index int32 + boxes 4*float32 + label int16 + score float32.
RECORD_BYTES = 1 + 4 + 16 + 2 + 4

_FIELDS = ("source", "index", "boxes", "labels", "scores")


def _empty_arrays() -> dict[str, np.ndarray]:
    return {
        "source": np.zeros(0, np.int8),
        "index": np.zeros(0, np.int32),
        "boxes": np.zeros((0, 4), np.float32),
        "labels": np.zeros(0, np.int16),
        "scores": np.zeros(0, np.float32),
    }


def _readonly(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    for a in arrays.values():
        a.setflags(write=False)
    return arrays


class CropBank:
    """Instance records of one or both image lists, grouped by image.

    Records live in a dict ``(source, index) -> structured array [n]`` so that replacing the
    pseudo-labels of a few images per step costs O(those images), whatever the bank size; the flat
    arrays of :meth:`arrays` are built lazily and cached until the next change.

    Args:
        num_classes: K; labels must lie in ``0..K-1``.
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes <= 0:
            raise ValueError(f"num_classes must be > 0, got {num_classes}")
        self.num_classes = int(num_classes)
        self._records: dict[tuple[int, int], np.ndarray] = {}
        self._counts = np.zeros(self.num_classes, np.int64)
        self._len = 0
        self._flat: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def from_targets(cls, num_classes: int, source: int, items: Iterable[tuple[int, Target]]) -> "CropBank":
        """A bank holding every box of ``items`` = ``(image index, Target in file pixels)``, e.g. the
        labelled bank from ground truth (``source=0``; crowd boxes are already left out of Targets)."""
        bank = cls(num_classes)
        for index, target in items:
            bank.set_image(source, index, target)
        return bank

    def _encode(self, target: Target) -> np.ndarray:
        n = len(target)
        rec = np.empty(n, _RECORD)
        if n == 0:
            return rec
        labels = target.labels.detach().cpu().numpy()
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"labels must lie in 0..{self.num_classes - 1}, got {labels.min()}..{labels.max()}")
        rec["box"] = target.boxes.detach().cpu().to(torch.float32).numpy()
        rec["label"] = labels
        rec["score"] = 1.0 if target.scores is None else target.scores.detach().cpu().to(torch.float32).numpy()
        return rec

    def _drop(self, key: tuple[int, int]) -> None:
        old = self._records.pop(key, None)
        if old is not None:
            np.subtract.at(self._counts, old["label"].astype(np.int64), 1)
            self._len -= len(old)

    def set_image(self, source: int, index: int, target: Target) -> None:
        """Replace every record of image ``(source, index)`` by the boxes of ``target``
        (boxes float[N, 4] xyxy in that image's file pixels; scores None means 1.0). An empty target
        removes the image from the bank (ACRST: the pseudo bank keeps the latest pseudo-labels)."""
        if source not in (0, 1):
            raise ValueError(f"source must be 0 (labelled) or 1 (unlabelled), got {source}")
        if not 0 <= index < 2**31:
            raise ValueError(f"index must be in [0, 2**31), got {index}")
        key = (int(source), int(index))
        rec = self._encode(target)
        self._drop(key)
        if len(rec):
            self._records[key] = rec
            np.add.at(self._counts, rec["label"].astype(np.int64), 1)
            self._len += len(rec)
        self._flat = None

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return self._len

    def num_images(self) -> int:
        return len(self._records)

    def class_counts(self) -> np.ndarray:
        """int64[K]: number of records of each class."""
        return self._counts.copy()

    def nbytes(self) -> int:
        """Bytes of the flat record arrays (``RECORD_BYTES`` = 27 per record)."""
        return self._len * RECORD_BYTES

    def arrays(self) -> dict[str, np.ndarray]:
        """Flat, read-only record arrays ordered by (source, index), then insertion order:
        ``source`` int8[N], ``index`` int32[N], ``boxes`` float32[N, 4] xyxy file pixels,
        ``labels`` int16[N], ``scores`` float32[N]."""
        if self._flat is None:
            if not self._records:
                self._flat = _readonly(_empty_arrays())
            else:
                keys = sorted(self._records)
                recs = [self._records[k] for k in keys]
                sizes = np.fromiter((len(r) for r in recs), np.int64, len(recs))
                keys_a = np.asarray(keys, np.int64)
                flat = np.concatenate(recs)
                self._flat = _readonly({
                    "source": np.repeat(keys_a[:, 0].astype(np.int8), sizes),
                    "index": np.repeat(keys_a[:, 1].astype(np.int32), sizes),
                    "boxes": np.ascontiguousarray(flat["box"]),
                    "labels": np.ascontiguousarray(flat["label"]),
                    "scores": np.ascontiguousarray(flat["score"]),
                })
        return self._flat

    def snapshot(self, class_probs: torch.Tensor | np.ndarray | None = None, version: int = 0) -> "BankSnapshot":
        """A frozen copy for sampling. ``class_probs`` float[K] (Eq. 9, :func:`class_probabilities`);
        None means uniform over the classes present (beta = 0, FBR)."""
        if class_probs is None:
            probs = np.ones(self.num_classes, np.float64)
        else:
            probs = np.asarray(torch.as_tensor(class_probs).detach().cpu().double().numpy())
        return BankSnapshot(**self.arrays(), class_probs=probs, version=int(version), num_classes=self.num_classes)

    # ------------------------------------------------------------------ (de)serialisation
    def state_dict(self) -> dict:
        """Plain tensors and ints (readable with ``torch.load(weights_only=True)``)."""
        a = self.arrays()
        state: dict = {"num_classes": self.num_classes}
        state.update({k: torch.from_numpy(a[k].copy()) for k in _FIELDS})
        return state

    def load_state_dict(self, state: dict) -> None:
        if int(state["num_classes"]) != self.num_classes:
            raise ValueError(f"bank has {self.num_classes} classes, state has {int(state['num_classes'])}")
        arrays = {k: torch.as_tensor(state[k]).numpy() for k in _FIELDS}
        self._records.clear()
        self._counts[:] = 0
        self._len = 0
        self._flat = None
        _add_flat(self, arrays)

    def merge(self, other: "CropBank") -> "CropBank":
        """``union(self, other)``."""
        return union(self, other)


def _add_flat(bank: CropBank, a: dict[str, np.ndarray]) -> None:
    """Add flat records to ``bank``, grouped by (source, index), keeping their order within an image."""
    n = len(a["labels"])
    if n == 0:
        return
    labels = a["labels"].astype(np.int64)
    if labels.min() < 0 or labels.max() >= bank.num_classes:
        raise ValueError(f"labels must lie in 0..{bank.num_classes - 1}")
    key = a["source"].astype(np.int64) * 2**32 + a["index"].astype(np.int64)
    order = np.argsort(key, kind="stable")
    key = key[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    ends = np.r_[starts[1:], n]
    rec = np.empty(n, _RECORD)
    rec["box"] = a["boxes"][order]
    rec["label"] = a["labels"][order]
    rec["score"] = a["scores"][order]
    for s, e in zip(starts.tolist(), ends.tolist()):
        k = (int(key[s] >> 32), int(key[s] & (2**32 - 1)))
        part = rec[s:e].copy()
        old = bank._records.get(k)
        bank._records[k] = part if old is None else np.concatenate([old, part])
    np.add.at(bank._counts, labels, 1)
    bank._len += n
    bank._flat = None


def union(*banks: CropBank) -> CropBank:
    """One bank with the records of all ``banks`` (same K); records of an image present in several
    banks are concatenated (e.g. labelled bank, source 0, ∪ pseudo bank, source 1 — ACRST samples
    from Φ_L ∪ Φ_U)."""
    if not banks:
        raise ValueError("union needs at least one bank")
    k = banks[0].num_classes
    if any(b.num_classes != k for b in banks):
        raise ValueError(f"cannot unite banks with {sorted({b.num_classes for b in banks})} classes")
    out = CropBank(k)
    for b in banks:
        _add_flat(out, b.arrays())
    return out


# ---------------------------------------------------------------------- AFFR (Eq. 8-9)
def pseudo_recall(targets: Iterable[Target], num_classes: int, thresh: float = 0.1) -> torch.Tensor:
    """Pseudo Recall (ACRST Eq. 8): ``PR_k`` = sum of the scores of the detections of class k
    whose score is > ``thresh`` (0.1 in the paper).

    Args:
        targets: the teacher's detections, one Target per image (``scores`` required).
        num_classes: K.
    Returns:
        float64[K] on the CPU.
    """
    pr = torch.zeros(num_classes, dtype=torch.float64)
    for t in targets:
        if len(t) == 0:
            continue
        if t.scores is None:
            raise ValueError("pseudo_recall needs detections with scores")
        labels = t.labels.detach().cpu()
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise ValueError(f"labels must lie in 0..{num_classes - 1}")
        scores = t.scores.detach().cpu()
        keep = scores > thresh  # compared in the scores' dtype: a float32 score of 0.1 is not > 0.1
        pr += torch.bincount(labels[keep], weights=scores[keep].double(), minlength=num_classes)
    return pr


def class_probabilities(pr: torch.Tensor, beta: float, present: torch.Tensor | None = None) -> torch.Tensor:
    """Class sampling probabilities of AFFR (ACRST Eq. 9): ``mu_k ∝ (1 / PR_k)^beta``.

    Floor rule for never-detected classes (``PR_k == 0``, where Eq. 9 is infinite): their PR is
    replaced by ``0.5 * min(PR_j > 0)``, so such a class weighs ``2^beta`` times the most neglected
    class that was detected — high but finite. If every PR is 0 the result is uniform; ``beta = 0``
    is uniform too (plain FBR).

    Args:
        pr: float[K] >= 0, Pseudo Recall per class (:func:`pseudo_recall`).
        beta: >= 0 (0.6 in the paper).
        present: bool[K] or None; classes with at least one record in the bank. Absent classes get 0
            and the rest is renormalised; if no class is present the result is all zeros.
    Returns:
        float64[K], summing to 1 (or all zeros, see ``present``).
    """
    pr = torch.as_tensor(pr).detach().cpu().double()
    if pr.ndim != 1:
        raise ValueError(f"pr must be [K], got {tuple(pr.shape)}")
    if not torch.isfinite(pr).all() or (pr < 0).any():
        raise ValueError("pr must be finite and >= 0")
    if not (beta >= 0 and np.isfinite(beta)):
        raise ValueError(f"beta must be finite and >= 0, got {beta}")
    positive = pr > 0
    if beta == 0 or not positive.any():
        w = torch.ones_like(pr)
    else:
        # ACRST Eq. 9 with a finite floor for PR_k = 0 (see the docstring); computed in log space.
        floor = 0.5 * pr[positive].min()
        logw = -beta * torch.where(positive, pr, floor).log()
        w = (logw - logw.max()).exp()
    if present is not None:
        present = torch.as_tensor(present, dtype=torch.bool).cpu()
        if present.shape != pr.shape:
            raise ValueError(f"present must be [{pr.shape[0]}], got {tuple(present.shape)}")
        w = w * present
    total = w.sum()
    return w / total if total > 0 else torch.zeros_like(pr)


# ---------------------------------------------------------------------- snapshot + hand-off
@dataclass(frozen=True, eq=False)
class BankSnapshot:
    """A frozen, picklable view of a bank for sampling in DataLoader workers.

    Attributes:
        source: int8[N] (0 labelled, 1 unlabelled); index: int32[N] image position in that list.
        boxes: float32[N, 4] xyxy in file-image pixels; labels: int16[N]; scores: float32[N].
        class_probs: float64[K], the class distribution to sample from (Eq. 9).
        version: int, bumped by the producer at each refresh.
        num_classes: K.
    """

    source: np.ndarray
    index: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    class_probs: np.ndarray
    version: int = 0
    num_classes: int = 0
    _order: np.ndarray = field(init=False, repr=False)
    _offsets: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        k = self.num_classes or len(self.class_probs)
        object.__setattr__(self, "num_classes", int(k))
        if len(self.class_probs) != k:
            raise ValueError(f"class_probs must be [{k}], got {len(self.class_probs)}")
        labels = self.labels.astype(np.int64)
        if len(labels) and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(f"labels must lie in 0..{k - 1}")
        object.__setattr__(self, "_order", np.argsort(labels, kind="stable").astype(np.int64))
        counts = np.bincount(labels, minlength=k)[:k]
        object.__setattr__(self, "_offsets", np.r_[0, np.cumsum(counts)].astype(np.int64))

    def __len__(self) -> int:
        return int(len(self.labels))

    def class_counts(self) -> np.ndarray:
        """int64[K]: records per class."""
        return np.diff(self._offsets)

    def sampling_probs(self) -> np.ndarray:
        """float64[K]: ``class_probs`` restricted to present classes and renormalised; uniform over
        present classes if that leaves nothing; all zeros for an empty bank."""
        present = self.class_counts() > 0
        p = np.where(present, np.clip(self.class_probs.astype(np.float64), 0, None), 0.0)
        if p.sum() <= 0:
            p = present.astype(np.float64)
        s = p.sum()
        return p / s if s > 0 else p

    def sample(self, n: int, g: torch.Generator) -> np.ndarray:
        """int64[n] record indices: n classes drawn from :meth:`sampling_probs` (AFFR, Eq. 9), then
        one record uniformly within each class; only ``g`` is used. Empty for n <= 0 or an empty bank."""
        if n <= 0 or len(self) == 0:
            return np.zeros(0, np.int64)
        p = torch.from_numpy(self.sampling_probs())
        classes = torch.multinomial(p, n, replacement=True, generator=g).numpy()
        u = torch.rand(n, generator=g, dtype=torch.float64).numpy()
        counts = self.class_counts()[classes]
        j = np.minimum((u * counts).astype(np.int64), counts - 1)
        return self._order[self._offsets[classes] + j]

    def state(self) -> dict:
        """Plain tensors and ints (for :func:`publish`)."""
        state: dict = {"version": int(self.version), "num_classes": int(self.num_classes),
                       "class_probs": torch.from_numpy(np.asarray(self.class_probs, np.float64).copy())}
        state.update({k: torch.from_numpy(np.array(getattr(self, k), copy=True)) for k in _FIELDS})
        return state

    @classmethod
    def from_state(cls, state: dict) -> "BankSnapshot":
        arrays = {k: torch.as_tensor(state[k]).numpy() for k in _FIELDS}
        return cls(**arrays, class_probs=torch.as_tensor(state["class_probs"]).double().numpy(),
                   version=int(state["version"]), num_classes=int(state["num_classes"]))


def publish(snapshot: BankSnapshot, path: str | Path) -> None:
    """Write ``snapshot`` to ``path`` atomically: a temporary file in the same folder, then
    ``os.replace`` (readers never see a half-written file)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(snapshot.state(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class SnapshotReader:
    """Reads the snapshot :func:`publish` writes; reloads only when the file's
    ``(st_mtime_ns, st_size)`` changes (one ``os.stat`` per call otherwise).

    Pickles without its cached snapshot, so each DataLoader worker loads its own copy.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._key: tuple[int, int] | None = None
        self._snap: BankSnapshot | None = None

    def current(self) -> BankSnapshot | None:
        """The latest published snapshot, or None while no file exists."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._key, self._snap = None, None
            return None
        if (st.st_mtime_ns, st.st_size) != self._key:
            try:
                with open(self.path, "rb") as f:
                    st = os.fstat(f.fileno())  # the key of the file actually read
                    state = torch.load(f, map_location="cpu", weights_only=True)
            except FileNotFoundError:
                self._key, self._snap = None, None
                return None
            self._snap = BankSnapshot.from_state(state)
            self._key = (st.st_mtime_ns, st.st_size)
        return self._snap

    def __getstate__(self) -> dict:
        return {"path": self.path, "_key": None, "_snap": None}


class BankChannel:
    """How the training step hands the data pipeline its CropBank snapshots, without temporary files.

    Before :meth:`open` (library use, tests) and while the loader runs in the training process, a published snapshot
    is held in memory. :meth:`open` names a file in the run's folder: each snapshot is then written there atomically
    (:func:`publish`) and DataLoader workers, which are other processes, read it back (:class:`SnapshotReader`)."""

    def __init__(self) -> None:
        self.reader: SnapshotReader | None = None
        self._snap: BankSnapshot | None = None

    def open(self, path: str | Path) -> None:
        """From now on snapshots go to ``path`` (and the one held in memory is written there first)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.reader = SnapshotReader(path)
        if self._snap is not None:
            publish(self._snap, path)
            self._snap = None

    @property
    def path(self) -> Path | None:
        return None if self.reader is None else self.reader.path

    def publish(self, snapshot: BankSnapshot) -> None:
        if self.reader is None:
            self._snap = snapshot
        else:
            publish(snapshot, self.reader.path)

    def current(self) -> BankSnapshot | None:
        return self._snap if self.reader is None else self.reader.current()

    def __getstate__(self) -> dict:
        if self.reader is None and self._snap is not None:
            raise RuntimeError("a CropBank held in memory cannot reach DataLoader worker processes: "
                               "open the channel on a file in the run's folder first (BankChannel.open)")
        return {"reader": self.reader, "_snap": None}
